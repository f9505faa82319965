//! Istio AuthorizationPolicy, compiled once per proxy and evaluated per request.
//!
//! The semantics are istiod's translation to Envoy's RBAC filter (`pilot/pkg/security/authz`)
//! and Envoy's evaluation of it, reproduced rule for rule:
//!
//! - **Order** CUSTOM → DENY → ALLOW; AUDIT never changes the decision. No ALLOW policy for the
//!   workload → allow; ALLOW policies but none matches → deny.
//! - **Scope**: policies of the root namespace and of the workload's namespace; `selector` ⊆
//!   workload labels; `targetRef(s)` only for Gateway-API gateways (label
//!   `gateway.networking.k8s.io/gateway-name`) — see [`scope`].
//! - **Rules**: `from` OR, `to` OR, `when` AND; fields of one Source/Operation AND, values OR,
//!   `notX` = NOT(OR); `when` conditions are copied into every `from`/`to` entry as istiod does.
//! - **Empty**: no `rules` (or `rules: []`) never matches (ALLOW → deny all); `rules: [{}]`
//!   always matches. `istio.io/dry-run: "true"` policies are evaluated but not enforced.
//! - **Invalid values** that got past validation (a bad CIDR, port or key) are handled as
//!   istiod does: in an ALLOW policy the whole rule is dropped (narrower), in DENY/AUDIT/CUSTOM
//!   only the value (wider); an unknown `when` key drops the rule for every action. Each case
//!   is reported in [`Authz::warnings`]. [`validate`] rejects all of them up front, as Istio's
//!   admission webhook does; `wasmeshctl` refuses to deploy such policies.
//!
//! Where things are: [`AuthzConfig`] (`config.rs`) is what `wasmeshctl` writes; `compile.rs`
//! turns it into the [`model`] that `eval.rs` walks ([`trust_domain`] migrates principals);
//! [`decision`] orders Istio's chain and says what the filter records and counts; [`ext_authz`]
//! builds the CUSTOM check and reads the provider's answer; [`view`] is the request as the filter
//! reads it lazily from the host ([`Request`] is the same, filled up front, for `wasmeshctl
//! check` and the tests). The filter applies the outcomes: it decides nothing itself.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod compile;
mod config;
pub mod decision;
mod eval;
pub mod ext_authz;
pub mod ext_authz_grpc;
pub mod matcher;
pub mod metadata;
pub mod model;
pub mod peer_authentication;
pub mod peer_sans;
pub mod provider;
pub mod scope;
pub mod trust_domain;
pub mod validate;
pub mod view;

#[cfg(test)]
mod tcp_table;
#[cfg(test)]
mod tests;

pub use config::{AuthzConfig, Stage};
pub use eval::{CustomOutcome, Missing, Reason, Shadow, Verdict};
pub use model::{Authz, RuleId, RuleRef};
pub use wasmesh_istio::CompileError;

pub use provider::{ExtAuthzGrpc, ExtAuthzHttp, Provider, Transport};
pub use validate::{validate, validate_all};

use std::net::IpAddr;
pub use wasmesh_handover::RequestIdentity;

/// The filter-state key each decision is written to when `decisionFilterState` is on (access
/// logs read it as `%FILTER_STATE(wasm.wasmesh.authz.decision:PLAIN)%`).
pub const DECISION_FILTER_STATE_KEY: &str = wasmesh_handover::AUTHZ_DECISION;

/// The deny response Istio's RBAC filter sends.
pub const DENY_STATUS: u32 = 403;
pub const DENY_BODY: &str = "RBAC: access denied";
/// The annotation that turns a policy into a dry-run (shadow) policy.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// The workload label that makes a proxy a Gateway-API gateway (targetRef attachment).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The request as the policy sees it. Everything is raw bytes as Envoy hands it over.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// Request headers, names lower-case, pseudo-headers (`:method`, `:authority`, `:path`)
    /// included, in arrival order; repeated names appear repeatedly.
    pub headers: &'a [(String, Vec<u8>)],
    /// The physical peer address (`ipBlocks`, `source.ip`; Envoy's `direct_remote_ip`).
    /// `None` when the filter could not learn it: rules that need it fail closed.
    pub source_ip: Option<IpAddr>,
    /// The client address as the HCM derived it from `x-forwarded-for` and
    /// `xff_num_trusted_hops` (`remoteIpBlocks`, `remote.ip`; Envoy's `remote_ip`).
    pub remote_ip: Option<IpAddr>,
    /// The local address the connection arrived on (`destination.ip`).
    pub destination_ip: Option<IpAddr>,
    /// The local port the connection arrived on (`ports`, `destination.port`).
    pub destination_port: Option<u32>,
    /// SNI of the downstream TLS connection, empty without TLS or SNI (`connection.sni`).
    pub sni: &'a [u8],
    /// Whether the peer presented a certificate (mutual TLS).
    pub mtls: bool,
    /// The peer certificate's names, when `mtls`.
    pub peer: PeerNames<'a>,
    /// The verified JWT identity handed over by the authn filter, if a token was validated.
    pub identity: Option<&'a RequestIdentity>,
    /// Dynamic metadata values read for `experimental.envoy.filters.*` conditions.
    pub metadata: &'a [MetadataEntry],
}

/// The names Envoy's `authenticated` principal matcher looks at, in its order: the URI SANs,
/// the DNS SANs, then the subject. Envoy exposes the first URI SAN and the first DNS SAN to wasm.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerNames<'a> {
    /// e.g. `spiffe://cluster.local/ns/default/sa/sleep`
    pub uri_san: Option<&'a [u8]>,
    pub dns_san: Option<&'a [u8]>,
    pub subject: Option<&'a [u8]>,
}

impl<'a> PeerNames<'a> {
    pub fn spiffe(uri: &'a str) -> Self {
        PeerNames { uri_san: Some(uri.as_bytes()), dns_san: None, subject: None }
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> {
        [self.uri_san, self.dns_san, self.subject].into_iter().flatten()
    }
}

/// One dynamic-metadata value (`filter_metadata[filter][key]`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataEntry {
    /// Index of `(filter, key)` in [`Needs::metadata`] (the list the filter decoded).
    pub slot: usize,
    pub value: MetaValue,
}

/// A `google.protobuf.Value` as far as Envoy's RBAC metadata matcher distinguishes it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    String(Vec<u8>),
    List(Vec<MetaValue>),
    /// number, bool, null or struct: never matches a string matcher.
    Other,
}

impl<'a> Request<'a> {
    /// Every value of a header, in order (names compare case-insensitively). Envoy 1.40's
    /// header matcher tests each value on its own and matches when any value matches
    /// (CVE-2026-26308 changed it from matching the comma-joined values), verified in Envoy.
    pub fn header_values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a [u8]> + 's {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn first(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// `:path` without query and fragment (Envoy `PathUtil::removeQueryAndFragment`), what
    /// `paths` match. `None` when the request has no `:path`.
    pub fn url_path(&self) -> Option<&'a [u8]> {
        url_path(self.headers)
    }

    pub fn method(&self) -> Option<&'a [u8]> {
        self.first(":method")
    }

    pub fn authority(&self) -> Option<&'a [u8]> {
        self.first(":authority")
    }
}

/// Request headers as the host hands them: names lower-case, values raw, in arrival order (a
/// repeated header is several entries).
pub type HeaderList = [(String, Vec<u8>)];

/// Request headers borrowed from wherever the host keeps them: (name lower-case, value raw), in
/// arrival order. Names as bytes (Envoy's are ASCII tokens; not checked for UTF-8 on every walk).
pub type HeaderPairs<'h> = dyn Iterator<Item = (&'h [u8], &'h [u8])> + 'h;

/// What the evaluation reads from a request. [`Request`] holds it all up front; the filter
/// implements it lazily, so an input is fetched from Envoy only when a rule looks at it.
pub trait View {
    /// A pseudo-header (`:method`, `:path` or `:authority`, the ones policies match; one value each). `Ok(None)` when the
    /// request has none; `Err` when the headers could not be read (the request is denied).
    fn pseudo(&self, name: &str) -> Result<Option<&[u8]>, Missing>;
    /// Whether `f` holds for any value of the header `name` (lower-case), values in order;
    /// `Err` when the headers could not be read.
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, Missing>;
    fn source_ip(&self) -> Option<IpAddr>;
    fn remote_ip(&self) -> Option<IpAddr>;
    fn destination_ip(&self) -> Option<IpAddr>;
    fn destination_port(&self) -> Option<u32>;
    /// SNI, empty without TLS or SNI; `Err` when it could not be read.
    fn sni(&self) -> Result<&[u8], Missing>;
    /// Whether the connection is mutual TLS; `Err` when that could not be read.
    fn mtls(&self) -> Result<bool, Missing>;
    /// The peer certificate's names (only looked at when [`View::mtls`]); `Err` when they
    /// could not be read.
    fn peer(&self) -> Result<PeerNames<'_>, Missing>;
    /// Every URI SAN then every DNS SAN of the peer certificate (Envoy's `authenticated`
    /// matcher tries each), asked only when none of [`View::peer`]'s names matched. `Err` when
    /// the filter cannot know them (a network filter, or an HCM that does not hand them over in
    /// `x-forwarded-client-cert`, see [`peer_sans`]): a rule whose outcome depends on them fails
    /// closed. The default, for views filled up front, says the [`PeerNames`] are all the names.
    fn peer_sans(&self) -> Result<&[Vec<u8>], Missing> {
        Ok(&[])
    }
    /// The verified JWT identity; `Err` when a hand-over exists but cannot be read.
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing>;
    fn metadata(&self) -> Result<&[MetadataEntry], Missing>;
    /// Calls `f` with every request header, names lower-case, in arrival order (for a CUSTOM
    /// check request); `Err` (and `f` not called) when the headers could not be read.
    fn with_all_headers(&self, f: &mut dyn FnMut(&HeaderList)) -> Result<(), Missing>;
}

impl View for Request<'_> {
    fn pseudo(&self, name: &str) -> Result<Option<&[u8]>, Missing> {
        Ok(self.first(name))
    }
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, Missing> {
        Ok(header_values(self.headers, name).any(f))
    }
    fn source_ip(&self) -> Option<IpAddr> {
        self.source_ip
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        self.remote_ip
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        self.destination_ip
    }
    fn destination_port(&self) -> Option<u32> {
        self.destination_port
    }
    fn sni(&self) -> Result<&[u8], Missing> {
        Ok(self.sni)
    }
    fn mtls(&self) -> Result<bool, Missing> {
        Ok(self.mtls)
    }
    fn peer(&self) -> Result<PeerNames<'_>, Missing> {
        Ok(self.peer)
    }
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing> {
        Ok(self.identity)
    }
    fn metadata(&self) -> Result<&[MetadataEntry], Missing> {
        Ok(self.metadata)
    }
    fn with_all_headers(&self, f: &mut dyn FnMut(&HeaderList)) -> Result<(), Missing> {
        f(self.headers);
        Ok(())
    }
}

/// Every value of a header in `headers` (names compare case-insensitively).
pub fn header_values<'h>(headers: &'h [(String, Vec<u8>)], name: &'h str) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// `:path` without query and fragment (Envoy `PathUtil::removeQueryAndFragment`).
pub fn url_path(headers: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    strip_query(headers.iter().find(|(k, _)| k == ":path").map(|(_, v)| v.as_slice())?)
}

/// A `:path` value without query and fragment.
pub fn strip_query(full: &[u8]) -> Option<&[u8]> {
    let end = full.iter().position(|c| *c == b'?' || *c == b'#').unwrap_or(full.len());
    full.get(..end)
}

/// Parses an Envoy address property (`1.2.3.4:5678`, `[::1]:5678`, or a bare IP).
pub fn parse_socket_address(s: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(s).ok()?;
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok();
    }
    let (ip, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse().ok()
}

/// What the compiled policies need from the filter, so it makes only the hostcalls that matter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub source_ip: bool,
    pub remote_ip: bool,
    pub destination_ip: bool,
    pub destination_port: bool,
    pub sni: bool,
    /// Peer certificate names (principals, namespaces, serviceAccounts, trustDomains).
    pub peer: bool,
    /// `connection.mtls` (PeerAuthentication, or peer names).
    pub mtls: bool,
    pub identity: bool,
    /// `(filter, key)` pairs of `experimental.envoy.filters.*` conditions.
    pub metadata: Vec<(String, String)>,
    /// How many of the pseudo-headers `:method`, `:path` and `:authority` some rule reads.
    pub pseudo_headers: usize,
    /// Some rule reads another request header, or a CUSTOM check forwards them all.
    pub headers: bool,
}
