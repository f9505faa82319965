//! Turning the RequestAuthentications that select a workload into an [`Authn`] engine, once, at
//! configure time: selection and merge as istiod does (`pilot/pkg/model/authentication.go`,
//! `pilot/pkg/security/authn/policy_applier.go`), validation as Istio's webhook does
//! (`validateJwtRule`), providers and the requirement tree as `convertToEnvoyJwtConfig` emits
//! them.

use crate::cache::{MAX_CACHE_BYTES, MAX_ENTRY_BYTES};
use crate::extract::Location;
use crate::jwks::parse_jwks;
pub use crate::remote::discovery_uri;
use crate::remote::{parse_jwks_uri, BlockedCidrs, JwksEndpoint, RemoteJwks};
use crate::verify::{sanitize_audience, Authn, JwksSource, Provider, Requirement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmesh_istio::security::{JwtRule, RequestAuthentication};
use wasmesh_istio::{CompileError, Error, FilterConfig, MeshIdentity, ProxyMode, Resource, Resources, Workload};

/// Label Kubernetes Gateway API puts on the pods of a gateway (Istio's
/// `gateway.networking.k8s.io/gateway-name`).
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Most `jwtRules` (issuers) that may apply to one proxy. Istio and Envoy set no number, but
/// every request walks Istio's requirement tree over them (`requires_any` of all providers),
/// and each remote one keeps a key set and a fetch schedule; 128 is far above real meshes.
pub const MAX_JWT_RULES: usize = 128;

/// The authn filter's configuration, as `wasmeshctl` writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuthnConfig {
    /// The proxy. Absent: the filter builds it from the Envoy node metadata Istio writes (one
    /// configuration for every proxy a WasmPlugin selects), completed by `mesh`; a node without
    /// that identity makes the filter refuse to configure (fail closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Trust domain, root namespace and DNS suffix for a node-derived workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshIdentity>,
    /// RequestAuthentications in Istio's JSON form (others are ignored).
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
    /// Slots of the verified-token cache shared by all worker VMs; `0` disables it.
    #[serde(default = "default_cache_slots")]
    pub jwt_cache_slots: u32,
    /// Tokens longer than this are refused (401 `Jwt is too large`) without being parsed. The
    /// default, 64 KiB, is above Envoy's own bound on a request's headers (60 KiB by default,
    /// `max_request_headers_kb`), so every token that reaches the filter is read, as by
    /// jwt_authn, which has no bound of its own.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// How long fetched keys are used before they are fetched again (Envoy remote JWKS
    /// `cache_duration` as Istio sets it: 300 s).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_seconds: u64,
    /// A token whose `kid` is not in the keys triggers a refetch at most this often per issuer.
    #[serde(default = "default_kid_refetch")]
    pub jwks_refetch_min_interval_seconds: u64,
    /// Longest a request waits for keys that are being fetched before it fails with 401.
    #[serde(default = "default_max_wait_ms")]
    pub jwks_max_wait_ms: u64,
    /// Overrides the Envoy cluster used for a `jwksUri` (key: the URI as written).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jwks_clusters: BTreeMap<String, String>,
    /// CIDR blocks no JWKS or discovery fetch may connect to (istiod's
    /// `BLOCKED_CIDRS_IN_JWKS_URIS`; wasmeshctl copies that environment variable here). The filter
    /// refuses a fetch whose host is an IP address in a block: the issuer's tokens are rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_cidrs_in_jwks_uris: Vec<String>,
    /// Write the verified identity to Envoy filter state `wasmesh.authn.identity` (and
    /// `wasmesh.authn.evaluated` when a request carried no token) for a separate authz filter
    /// and access logs (default true; one hostcall, ~5k instructions per request). Off, the
    /// phases after authn in the same `wasmesh.chain` still get it (in memory); `wasmeshctl
    /// envoy` turns it off where nothing outside that chain reads it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub identity_filter_state: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

wasmesh_istio::filter_config!(AuthnConfig, "authn");

fn default_cache_slots() -> u32 {
    1024
}
fn default_max_token_bytes() -> usize {
    64 * 1024
}
fn default_refresh() -> u64 {
    300
}
fn default_kid_refetch() -> u64 {
    10
}
fn default_max_wait_ms() -> u64 {
    10_000
}

impl AuthnConfig {
    pub fn new(workload: Workload) -> Self {
        AuthnConfig {
            workload: Some(workload),
            mesh: None,
            resources: Vec::new(),
            jwt_cache_slots: default_cache_slots(),
            max_token_bytes: default_max_token_bytes(),
            jwks_refresh_seconds: default_refresh(),
            jwks_refetch_min_interval_seconds: default_kid_refetch(),
            jwks_max_wait_ms: default_max_wait_ms(),
            jwks_clusters: BTreeMap::new(),
            blocked_cidrs_in_jwks_uris: Vec::new(),
            identity_filter_state: true,
        }
    }

    /// Parses the filter configuration and compiles the engine.
    pub fn compile_json(bytes: &[u8]) -> Result<Authn, CompileError> {
        AuthnConfig::parse_json(bytes)?.compile_parsed(bytes)
    }

    /// Compiles a configuration parsed from `config_bytes` (and completed by the filter, e.g.
    /// with the node's workload). The verified-token cache is salted with those bytes, so every
    /// worker VM of one plugin shares entries and other configurations never see them.
    pub fn compile_parsed(&self, config_bytes: &[u8]) -> Result<Authn, CompileError> {
        let resources = self.parsed_resources()?;
        let fingerprint = blake2b_simd::Params::new().hash_length(16).hash(config_bytes);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(fingerprint.as_bytes());
        self.compile_with_salt(&resources, salt)
    }

    /// Compiles the engine from already-parsed resources.
    pub fn compile(&self, resources: &Resources) -> Result<Authn, CompileError> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let fingerprint = blake2b_simd::Params::new().hash_length(16).hash(&json);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(fingerprint.as_bytes());
        self.compile_with_salt(resources, salt)
    }

    fn compile_with_salt(&self, resources: &Resources, salt: [u8; 16]) -> Result<Authn, CompileError> {
        let workload = self.require_workload()?;
        let mut errors = Vec::new();
        if self.max_token_bytes < 64 || self.max_token_bytes > 64 * 1024 {
            errors.push(Error::new(format!(
                "authn configuration: maxTokenBytes {} is out of range; expected 64..=65536",
                self.max_token_bytes
            )));
        }
        let max_slots = MAX_CACHE_BYTES / MAX_ENTRY_BYTES;
        if self.jwt_cache_slots as usize > max_slots {
            errors.push(Error::new(format!(
                "authn configuration: jwtCacheSlots {} is too large; at most {max_slots} ({} MiB of shared data at {} KiB per entry)",
                self.jwt_cache_slots,
                MAX_CACHE_BYTES >> 20,
                MAX_ENTRY_BYTES >> 10
            )));
        }
        if self.jwks_refresh_seconds == 0 {
            errors.push(Error::new("authn configuration: jwksRefreshSeconds must be at least 1"));
        }
        // Validate every RequestAuthentication given, then keep the rules of those that select
        // this proxy.
        let mut selected: Vec<(&Resource, &RequestAuthentication)> = Vec::new();
        for (res, ra) in resources.request_authentications() {
            errors.extend(validate_request_authentication(res, ra));
            if selects(workload, res, ra) {
                selected.push((res, ra));
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }
        // Workload namespace first, then the root namespace, as istiod lists them; the merged
        // rules are then sorted by issuer (stable here; duplicates are kept, as in Istio).
        selected.sort_by_key(|(res, _)| res.namespace() != workload.namespace);
        let mut rules: Vec<(String, &JwtRule)> = Vec::new();
        for (res, ra) in &selected {
            for (i, rule) in ra.jwt_rules.iter().enumerate() {
                rules.push((format!("{} spec.jwtRules[{i}]", res.display_name()), rule));
            }
        }
        rules.sort_by(|a, b| a.1.issuer.cmp(&b.1.issuer));
        if rules.len() > MAX_JWT_RULES {
            return Err(CompileError::msg(format!(
                "authn configuration: {} jwtRules select workload {}/{}; at most {MAX_JWT_RULES} are supported",
                rules.len(),
                workload.namespace,
                workload.name
            )));
        }

        let mut providers = Vec::with_capacity(rules.len());
        for (index, (source, rule)) in rules.iter().enumerate() {
            match self.provider(index, source, rule) {
                Ok(p) => providers.push(p),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let requirement = istio_requirement(providers.len());
        Ok(Authn::new(
            providers,
            requirement,
            crate::verify::Options {
                max_token_bytes: self.max_token_bytes,
                cache_slots: self.jwt_cache_slots,
                cache_salt: salt,
                clear_route_cache: workload.mode == ProxyMode::Gateway,
                jwks_max_wait_ms: self.jwks_max_wait_ms,
                identity_filter_state: self.identity_filter_state,
            },
        ))
    }

    fn provider(&self, index: usize, source: &str, rule: &JwtRule) -> Result<Provider, Error> {
        let err = |field: &str, msg: String| Error::new(format!("{source}.{field}: {msg}"));
        let mut locations = Vec::new();
        for h in &rule.from_headers {
            locations.push(Location::Header { name: h.name.to_ascii_lowercase(), prefix: h.prefix.clone() });
        }
        for p in &rule.from_params {
            locations.push(Location::Param(p.clone()));
        }
        for c in &rule.from_cookies {
            locations.push(Location::Cookie(c.clone()));
        }
        if locations.is_empty() {
            locations.push(Location::Header { name: "authorization".into(), prefix: "Bearer ".into() });
            locations.push(Location::Param("access_token".into()));
        }
        let timeout_ms = match &rule.timeout {
            None => 5000,
            Some(t) => {
                let d = wasmesh_istio::parse_duration(t).map_err(|e| err("timeout", e))?;
                d.as_millis().clamp(1, u64::MAX as u128) as u64
            }
        };
        let jwks = if let Some(inline) = rule.jwks.as_deref().filter(|s| !s.is_empty()) {
            let set = parse_jwks(inline).map_err(|e| err("jwks", e.to_string()))?;
            JwksSource::Inline(set)
        } else {
            let (uri, discovery) = match rule.jwks_uri().filter(|s| !s.is_empty()) {
                Some(u) => (u.to_string(), false),
                None => (discovery_uri(&rule.issuer), true),
            };
            let mut ep = parse_jwks_uri(&uri).map_err(|e| {
                if discovery {
                    err("issuer", format!("neither jwks nor jwksUri is set, so the keys would be found by OpenID discovery at {uri:?}, but {e}"))
                } else {
                    err("jwksUri", e)
                }
            })?;
            if let Some(cluster) = self.jwks_clusters.get(&uri) {
                ep.cluster = cluster.clone();
            }
            let blocked = BlockedCidrs::parse(&self.blocked_cidrs_in_jwks_uris)
                .map_err(|e| err("jwksUri", format!("blockedCidrsInJwksUris: {e}")))?;
            JwksSource::Remote(Box::new(
                RemoteJwks::new(
                    ep,
                    discovery,
                    timeout_ms,
                    self.jwks_refresh_seconds * 1000,
                    self.jwks_refetch_min_interval_seconds * 1000,
                )
                .with_blocked(blocked),
            ))
        };
        let mut space_delimited: Vec<String> = vec!["permission".into(), "scope".into()];
        for c in &rule.space_delimited_claims {
            if !space_delimited.contains(c) {
                space_delimited.push(c.clone());
            }
        }
        Ok(Provider {
            index,
            source: source.to_string(),
            issuer: rule.issuer.clone(),
            audiences: rule.audiences.iter().map(|a| sanitize_audience(a).to_string()).collect(),
            locations: crate::extract::canonical_order(&locations),
            forward: rule.forward_original_token,
            forward_payload_header: rule
                .output_payload_to_header
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.to_ascii_lowercase()),
            claim_to_headers: rule
                .output_claim_to_headers
                .iter()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                .collect(),
            space_delimited,
            jwks,
        })
    }
}

/// Istio's requirement: one provider → `requires_any[P0, allow_missing]`; n providers →
/// `requires_any[P0..Pn-1, requires_all[requires_any[Pi, allow_missing]...]]`.
pub fn istio_requirement(n: usize) -> Requirement {
    match n {
        0 => Requirement::AllowAll,
        1 => Requirement::Any { children: vec![Requirement::Provider(0)], allow_missing: true },
        _ => {
            let mut outer: Vec<Requirement> = (0..n).map(Requirement::Provider).collect();
            let inner = (0..n)
                .map(|i| Requirement::Any { children: vec![Requirement::Provider(i)], allow_missing: true })
                .collect();
            outer.push(Requirement::All(inner));
            Requirement::Any { children: outer, allow_missing: false }
        }
    }
}

/// Whether a RequestAuthentication applies to this proxy (`ShouldAttachPolicy` + selector).
pub fn selects(wl: &Workload, res: &Resource, ra: &RequestAuthentication) -> bool {
    let ns = res.namespace();
    if ns != wl.namespace && ns != wl.root_namespace {
        return false;
    }
    let has_target = ra.target_ref.is_some() || !ra.target_refs.is_empty();
    let gateway_name = wl.labels.get(GATEWAY_NAME_LABEL);
    match gateway_name {
        // Gateway API gateway: targetRefs of kind Gateway naming it (same namespace); without
        // targetRefs, selector policies still apply (ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY).
        Some(gw) if has_target => ra.target_ref.iter().chain(ra.target_refs.iter()).any(|t| {
            t.kind == "Gateway"
                && (t.group.is_empty() || t.group == "gateway.networking.k8s.io")
                && t.name == *gw
                && ns == wl.namespace
                && (t.namespace.is_empty() || t.namespace == ns)
        }),
        // Sidecars and classic gateways ignore policies with targetRef(s).
        None if has_target => false,
        _ => ra.selector.as_ref().map(|s| s.selects(&wl.labels)).unwrap_or(true),
    }
}

fn is_strict_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Istio's webhook checks for a RequestAuthentication (`ValidateRequestAuthentication`).
pub fn validate_request_authentication(res: &Resource, ra: &RequestAuthentication) -> Vec<Error> {
    let mut errs = Vec::new();
    let e = |field: String, msg: String| Error::at(res, field, msg);
    let targets = ra.target_ref.is_some() as usize + (!ra.target_refs.is_empty()) as usize;
    if ra.selector.is_some() && targets > 0 {
        errs.push(e("spec".into(), "only one of selector, targetRef or targetRefs can be set".into()));
    }
    if ra.target_ref.is_some() && !ra.target_refs.is_empty() {
        errs.push(e("spec".into(), "only one of targetRef or targetRefs can be set".into()));
    }
    if ra.target_refs.len() > 16 {
        errs.push(e("spec.targetRefs".into(), format!("{} entries; at most 16 are allowed", ra.target_refs.len())));
    }
    if let Some(sel) = &ra.selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() || k.contains('*') || v.contains('*') {
                errs.push(e(
                    format!("spec.selector.matchLabels[{k}]"),
                    format!("invalid label {k:?}={v:?}; wildcards and empty keys are not allowed"),
                ));
            }
        }
    }
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let f = |name: &str| format!("spec.jwtRules[{i}].{name}");
        for (j, aud) in rule.audiences.iter().enumerate() {
            if aud.is_empty() {
                errs.push(e(f(&format!("audiences[{j}]")), "audience must be non-empty string".into()));
            }
        }
        let uri = rule.jwks_uri().unwrap_or_default();
        if rule.issuer.is_empty() && uri.is_empty() {
            errs.push(e(f("issuer"), "issuer or jwksUri must be non-empty string".into()));
        }
        if rule.jwks_uri.is_some() && rule.jwks_uri_snake.is_some() {
            errs.push(e(f("jwksUri"), "both jwksUri and jwks_uri are set; use jwksUri".into()));
        }
        if !uri.is_empty() {
            if let Err(msg) = parse_jwks_uri(uri) {
                errs.push(e(f("jwksUri"), msg));
            }
        }
        if let Some(jwks) = rule.jwks.as_deref().filter(|s| !s.is_empty()) {
            if !uri.is_empty() {
                errs.push(e(f("jwks"), "only one of jwks or jwksUri can be set".into()));
            }
            if let Err(msg) = parse_jwks(jwks) {
                errs.push(e(f("jwks"), format!("jwks parse error: {msg}")));
            }
        }
        for (j, h) in rule.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                errs.push(e(
                    f(&format!("fromHeaders[{j}].name")),
                    "location header name must be non-empty string".into(),
                ));
            }
        }
        for (j, p) in rule.from_params.iter().enumerate() {
            if p.is_empty() {
                errs.push(e(f(&format!("fromParams[{j}]")), "location query must be non-empty string".into()));
            }
        }
        for (j, c) in rule.from_cookies.iter().enumerate() {
            if c.is_empty() {
                errs.push(e(f(&format!("fromCookies[{j}]")), "cookie name must be non-empty string".into()));
            }
        }
        if let Some(h) = &rule.output_payload_to_header {
            if !h.is_empty() && !is_strict_header_name(h) {
                errs.push(e(
                    f("outputPayloadToHeader"),
                    format!("invalid header name {h:?}; expected ^[-_A-Za-z0-9]+$"),
                ));
            }
        }
        for (j, c) in rule.output_claim_to_headers.iter().enumerate() {
            let field = f(&format!("outputClaimToHeaders[{j}]"));
            if c.claim.is_empty() || c.header.is_empty() {
                errs.push(e(field, "outputClaimToHeaders header and claim value must be non-empty string".into()));
                continue;
            }
            if !is_strict_header_name(&c.header) {
                errs.push(e(
                    format!("{field}.header"),
                    format!("invalid header name {:?}; expected ^[-_A-Za-z0-9]+$", c.header),
                ));
            }
        }
        if let Some(t) = &rule.timeout {
            match wasmesh_istio::parse_duration(t) {
                Err(msg) => errs.push(e(f("timeout"), msg)),
                Ok(d) if d.as_millis() < 1 => {
                    errs.push(e(f("timeout"), format!("duration {t:?} must be at least 1ms")))
                }
                Ok(_) => {}
            }
        }
        for (j, c) in rule.space_delimited_claims.iter().enumerate() {
            if c.is_empty() {
                errs.push(e(f(&format!("spaceDelimitedClaims[{j}]")), "claim name must be non-empty string".into()));
            }
        }
    }
    errs
}

/// `wasmeshctl validate` entry point: every RequestAuthentication in the set.
pub fn validate(resources: &Resources) -> Vec<Error> {
    resources.request_authentications().flat_map(|(res, ra)| validate_request_authentication(res, ra)).collect()
}

/// The JWKS servers the filter will fetch from for this workload (for the controller's clusters).
pub fn jwks_endpoints(workload: &Workload, resources: &Resources) -> Vec<JwksEndpoint> {
    let mut out: Vec<JwksEndpoint> = Vec::new();
    for (res, ra) in resources.request_authentications() {
        if !selects(workload, res, ra) {
            continue;
        }
        for rule in &ra.jwt_rules {
            if rule.jwks.as_deref().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            let uri = match rule.jwks_uri().filter(|s| !s.is_empty()) {
                Some(u) => u.to_string(),
                None => discovery_uri(&rule.issuer),
            };
            if let Ok(ep) = parse_jwks_uri(&uri) {
                if !out.iter().any(|o| o.cluster == ep.cluster) {
                    out.push(ep);
                }
            }
        }
    }
    out
}
