//! The authz filter's configuration as `wasmeshctl` writes it: the proxy, the Istio resources,
//! meshConfig's trust-domain aliases and extension providers, and which part of Istio's authz
//! chain this filter instance implements.

use crate::{Authz, CompileError};
use serde::{Deserialize, Serialize};
use wasmesh_istio::{FilterConfig, MeshIdentity, Workload};

/// The authz filter's configuration, as `wasmeshctl` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthzConfig {
    /// The proxy. Absent: the filter builds it from the Envoy node metadata Istio writes (one
    /// configuration for every proxy a WasmPlugin selects), completed by `mesh`; a node without
    /// that identity makes the filter refuse to configure (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Trust domain, root namespace and DNS suffix for a node-derived workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshIdentity>,
    /// AuthorizationPolicies (and PeerAuthentications) in Istio's JSON form. The filter
    /// selects the ones that apply to `workload` itself (namespace, selector, targetRefs), so a
    /// superset is fine.
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
    /// meshConfig `trustDomainAliases` (the workload's `trustDomain` is the first trust domain).
    #[serde(default)]
    pub trust_domain_aliases: Vec<String>,
    /// meshConfig `extensionProviders` (Istio field names); only `envoyExtAuthzHttp` ones are
    /// used, for CUSTOM policies.
    #[serde(default)]
    pub extension_providers: Vec<serde_json::Value>,
    /// Which part of Istio's authz chain this filter instance implements.
    #[serde(default)]
    pub stage: Stage,
    /// Istio's `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS` (Istio 1.30; default false: a
    /// workload whose CUSTOM policies name several providers denies the requests they match).
    /// True: each provider whose rules match is asked in turn, in provider-name order, on the
    /// request as the providers before it left it; the first denial answers the request.
    #[serde(default)]
    pub multiple_custom_providers: bool,
    /// Write every decision to filter state `wasmesh.authz.decision` for access logs (default
    /// true; one hostcall per request).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub decision_filter_state: bool,
    /// Every peer certificate the listener trusts carries at most one URI SAN and one DNS SAN,
    /// so the first ones Envoy reports are all of them (`wasmeshctl envoy` sets it when the
    /// mesh root is `wasmeshctl certs`' own CA, which issues one URI SAN per workload). Without
    /// it an HTTP filter reads the other SANs from `x-forwarded-client-cert` and a TCP filter,
    /// which cannot see them, fails closed where they could change the decision.
    #[serde(default, skip_serializing_if = "is_false")]
    pub single_san_peers: bool,
    /// A CUSTOM provider of this filter's policies has `includeRequestBodyInCheck`: the filter
    /// holds the request headers while it buffers the body for the check. `wasmeshctl` sets it
    /// together with Envoy's `PluginConfig.allow_on_headers_stop_iteration` (Envoy 1.35+), without
    /// which a wasm filter gets no body while it holds the headers; without it, a check that
    /// needs the body fails closed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub request_body: bool,
    /// Sidecars only: the listener's filter chains enforce this workload's PeerAuthentication
    /// mode on every port themselves (`wasmeshctl envoy` writes each inbound listener's chains
    /// from the same policies: STRICT accepts TLS with a client certificate only, PERMISSIVE
    /// both, DISABLE plaintext), so the filter does not check it again on each request (reading
    /// `connection.mtls`, and on plaintext the destination port: one or two `get_property`,
    /// ~11–17k instructions per request). Rules that name peers still read what they need.
    /// Refused for a gateway, to which PeerAuthentication does not apply.
    #[serde(default, skip_serializing_if = "is_false")]
    pub peer_authentication_by_transport: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Istio runs CUSTOM (rbac + ext_authz) before the JWT filter and AUDIT/DENY/ALLOW after it.
/// With CUSTOM policies, wasmeshctl inserts one instance per side; otherwise one `All`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Stage {
    #[default]
    All,
    /// CUSTOM only, before authn; also PeerAuthentication when a CUSTOM policy applies.
    Custom,
    /// AUDIT, DENY and ALLOW, after authn; also PeerAuthentication when no CUSTOM policy
    /// applies (then there is no CUSTOM instance).
    Rbac,
    /// The network (L4) filter of a TCP port, Istio's network RBAC (`buildTCP`): AUDIT, DENY and
    /// ALLOW (and PeerAuthentication) on connection attributes only. HTTP-only fields drop the
    /// ALLOW rule that holds them (an ALLOW policy left without rules denies every connection)
    /// and are removed from DENY/AUDIT rules (which then match more); CUSTOM with an HTTP
    /// ext_authz provider does not apply. `experimental.envoy.filters.*` conditions are refused.
    Tcp,
}

wasmesh_istio::filter_config!(AuthzConfig, "authz");

impl AuthzConfig {
    /// Parses the filter configuration and compiles it.
    pub fn compile_json(bytes: &[u8]) -> Result<Authz, CompileError> {
        let cfg = AuthzConfig::parse_json(bytes)?;
        cfg.compile(&cfg.parsed_resources()?)
    }
}
