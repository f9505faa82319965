//! wasmesh authz filter: Istio AuthorizationPolicy (and PeerAuthentication STRICT) in any Envoy.
//!
//! A thin adapter over `wasmesh-authz`: it reads what the compiled policies need (request
//! headers, addresses, the peer certificate's names, the verified JWT identity the authn filter
//! left in filter state), asks the core, and acts:
//!
//! - deny: `403 RBAC: access denied`, as Istio's RBAC filter;
//! - CUSTOM: an HTTP check to the `envoyExtAuthzHttp` provider with `dispatch_http_call`,
//!   reproducing Envoy's HTTP ext_authz client (headers sent, `pathPrefix`, header forwarding
//!   on allow and deny, `failOpen`, `statusOnError`, `timeout`);
//! - every decision is counted (`wasmcustom.wasmesh.authz.*`) and written to filter state
//!   `wasmesh.authz.decision` ([`wasmesh_handover::AuthzDecision`]) for access logs.
//!
//! The same module also runs as a *network* filter (configuration `{"role": "peerAddress"}`):
//! it records the connection's physical peer address in filter state, because an HTTP filter
//! only sees the address the HCM derived from `x-forwarded-for`, and `ipBlocks`/`source.ip`
//! match the physical peer (Envoy RBAC `direct_remote_ip`).
//!
//! Fail closed: a configuration that cannot be compiled refuses to load; an input the policies
//! need that cannot be read, an undecodable identity hand-over or a hostcall failure denies.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use wasmesh_authz::metadata::decode_metadata;
use wasmesh_authz::provider::Provider;
use wasmesh_authz::{
    parse_socket_address, Authz, AuthzConfig, CustomOutcome, MetadataEntry, PeerNames, Reason, Request, Stage, Verdict,
    DENY_BODY, DENY_STATUS,
};
use wasmesh_handover::{AuthzDecision, RequestIdentity};

/// Filter state written by the network role: the connection's physical peer `ip:port`.
pub const PEER_ADDRESS_KEY: &str = "wasmesh.authz.peer_address";
/// Largest ext-authz denial body relayed to the client.
const MAX_EXT_BODY: usize = 64 * 1024;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(AuthzRoot { role: None }) });
}}

enum Role {
    Http(Rc<Shared>),
    PeerAddress,
}

struct AuthzRoot {
    role: Option<Role>,
}

struct Shared {
    authz: Authz,
    metrics: Metrics,
}

impl Context for AuthzRoot {}

impl RootContext for AuthzRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = wasmesh_proxy::plugin_configuration() else {
            wasmesh_proxy::log_error("wasmesh authz: no plugin configuration; expected the JSON wasmeshctl writes");
            return false;
        };
        if is_peer_address_role(&bytes) {
            self.role = Some(Role::PeerAddress);
            return true;
        }
        match AuthzConfig::compile_json(&bytes) {
            Ok(authz) => {
                for w in authz.warnings() {
                    wasmesh_proxy::log_warn(&format!("wasmesh authz: {w}"));
                }
                wasmesh_proxy::log_info(&format!(
                    "wasmesh authz: configured ({:?} stage), policies: {}",
                    authz.stage(),
                    if authz.applied().is_empty() { "none".to_string() } else { authz.applied().join(", ") }
                ));
                let metrics = Metrics::define();
                self.role = Some(Role::Http(Rc::new(Shared { authz, metrics })));
                true
            }
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh authz: configuration rejected: {e}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.role {
            Some(Role::PeerAddress) => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = match &self.role {
            Some(Role::Http(s)) => Some(s.clone()),
            _ => None,
        };
        Some(Box::new(AuthzStream { shared, pending: None, allow_response_headers: Vec::new() }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(PeerAddress))
    }
}

fn is_peer_address_role(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("role").and_then(|r| r.as_str()).map(|r| r == "peerAddress"))
        .unwrap_or(false)
}

/// The network role: remembers the physical peer for the HTTP filter.
struct PeerAddress;

impl Context for PeerAddress {}

impl StreamContext for PeerAddress {
    fn on_new_connection(&mut self) -> Action {
        match wasmesh_proxy::property(&["source", "address"]) {
            Some(addr) => {
                if !wasmesh_proxy::set_filter_state(PEER_ADDRESS_KEY, &addr) {
                    wasmesh_proxy::log_error("wasmesh authz: could not record the peer address");
                }
            }
            None => wasmesh_proxy::log_error("wasmesh authz: the connection has no source.address"),
        }
        Action::Continue
    }
}

/// Counters (`wasmcustom.wasmesh.authz.*`), defined once per VM; per-rule ones on first use.
struct Metrics {
    allowed: Option<u32>,
    denied: Option<u32>,
    audit: Option<u32>,
    error: Option<u32>,
    peer_authn_denied: Option<u32>,
    custom_ok: Option<u32>,
    custom_denied: Option<u32>,
    custom_error: Option<u32>,
    dry_run: RefCell<HashMap<&'static str, u32>>,
    rules: RefCell<HashMap<(&'static str, String), u32>>,
}

fn counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

impl Metrics {
    fn define() -> Self {
        Metrics {
            allowed: counter("wasmesh.authz.allowed"),
            denied: counter("wasmesh.authz.denied"),
            audit: counter("wasmesh.authz.audit"),
            error: counter("wasmesh.authz.error"),
            peer_authn_denied: counter("wasmesh.authz.peer_authn_denied"),
            custom_ok: counter("wasmesh.authz.custom.ok"),
            custom_denied: counter("wasmesh.authz.custom.denied"),
            custom_error: counter("wasmesh.authz.custom.error"),
            dry_run: RefCell::new(HashMap::new()),
            rules: RefCell::new(HashMap::new()),
        }
    }

    /// Envoy RBAC's shadow counters with Istio's dry-run prefixes.
    fn dry_run(&self, name: &'static str) {
        let id = {
            let mut m = self.dry_run.borrow_mut();
            match m.get(name) {
                Some(id) => Some(*id),
                None => counter(&format!("wasmesh.authz.{name}")).inspect(|id| {
                    m.insert(name, *id);
                }),
            }
        };
        bump(id);
    }

    /// `wasmesh.authz.policy.<outcome>.<rule>`; the plugin's stats tag turns the rule into the
    /// `authz_rule` label.
    fn rule(&self, outcome: &'static str, rule: &str) {
        let id = {
            let mut m = self.rules.borrow_mut();
            match m.get(&(outcome, rule.to_string())) {
                Some(id) => Some(*id),
                None => counter(&format!("wasmesh.authz.policy.{outcome}.{rule}")).inspect(|id| {
                    m.insert((outcome, rule.to_string()), *id);
                }),
            }
        };
        bump(id);
    }
}

/// Everything read from Envoy for one evaluation, owned.
struct Inputs {
    headers: Vec<(String, Vec<u8>)>,
    source_ip: Option<std::net::IpAddr>,
    remote_ip: Option<std::net::IpAddr>,
    destination_ip: Option<std::net::IpAddr>,
    destination_port: Option<u32>,
    sni: Vec<u8>,
    mtls: bool,
    uri_san: Option<Vec<u8>>,
    dns_san: Option<Vec<u8>>,
    subject: Option<Vec<u8>>,
    identity: Option<RequestIdentity>,
    metadata: Vec<MetadataEntry>,
}

impl Inputs {
    /// Reads only what the policies need. `Err` names what could not be read (fail closed).
    fn gather(authz: &Authz) -> Result<Inputs, &'static str> {
        let n = authz.needs();
        let addr = |path: &[&str]| wasmesh_proxy::property(path).and_then(|b| parse_socket_address(&b));
        let source_ip = if n.source_ip { wasmesh_proxy::filter_state(PEER_ADDRESS_KEY).and_then(|b| parse_socket_address(&b)) } else { None };
        let remote_ip = if n.remote_ip { addr(&["source", "address"]) } else { None };
        let destination_ip = if n.destination_ip { addr(&["destination", "address"]) } else { None };
        let destination_port = if n.destination_port {
            wasmesh_proxy::property_u64(&["destination", "port"]).and_then(|p| u32::try_from(p).ok())
        } else {
            None
        };
        let sni = if n.sni { wasmesh_proxy::property(&["connection", "requested_server_name"]).unwrap_or_default() } else { Vec::new() };
        let mtls = n.mtls && wasmesh_proxy::property_bool(&["connection", "mtls"]).unwrap_or(false);
        let (uri_san, dns_san, subject) = if n.peer && mtls {
            (
                wasmesh_proxy::property(&["connection", "uri_san_peer_certificate"]),
                wasmesh_proxy::property(&["connection", "dns_san_peer_certificate"]),
                wasmesh_proxy::property(&["connection", "subject_peer_certificate"]),
            )
        } else {
            (None, None, None)
        };
        let identity = if n.identity {
            match wasmesh_proxy::filter_state(wasmesh_handover::AUTHN_IDENTITY) {
                None => None,
                Some(b) if b.is_empty() => None,
                Some(b) => Some(wasmesh_handover::decode::<RequestIdentity>(&b).ok_or("the authn identity hand-over (undecodable)")?),
            }
        } else {
            None
        };
        let metadata = if n.metadata.is_empty() {
            Vec::new()
        } else {
            match wasmesh_proxy::property(&["metadata"]) {
                None => Vec::new(),
                Some(b) => decode_metadata(&b, &n.metadata).ok_or("dynamic metadata (undecodable)")?,
            }
        };
        Ok(Inputs {
            headers: wasmesh_proxy::request_headers(),
            source_ip,
            remote_ip,
            destination_ip,
            destination_port,
            sni,
            mtls,
            uri_san,
            dns_san,
            subject,
            identity,
            metadata,
        })
    }

    fn view(&self) -> Request<'_> {
        Request {
            headers: &self.headers,
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            sni: &self.sni,
            mtls: self.mtls,
            peer: PeerNames { uri_san: self.uri_san.as_deref(), dns_san: self.dns_san.as_deref(), subject: self.subject.as_deref() },
            identity: self.identity.as_ref(),
            metadata: &self.metadata,
        }
    }
}

/// A CUSTOM check in flight.
struct Pending {
    token: u32,
    rule: String,
}

struct AuthzStream {
    shared: Option<Rc<Shared>>,
    pending: Option<Pending>,
    /// `headersToDownstreamOnAllow` from the provider, added to the response.
    allow_response_headers: Vec<(String, Vec<u8>)>,
}

impl Context for AuthzStream {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let Some(pending) = self.pending.take() else { return };
        if pending.token != token_id {
            return;
        }
        let Some(provider) = shared.authz.provider() else {
            self.deny_now(&shared, DENY_STATUS, &[], Some(DENY_BODY.as_bytes()), "CUSTOM", Some(pending.rule), "no provider");
            return;
        };
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
        };
        let status = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse::<u32>().ok());
        match status {
            Some(200) => {
                bump(shared.metrics.custom_ok);
                self.ext_allowed(&shared, provider, &headers);
            }
            Some(s) if (100..500).contains(&s) => {
                bump(shared.metrics.custom_denied);
                let body = if body_size == 0 {
                    None
                } else {
                    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_EXT_BODY)).ok().flatten()
                };
                let forwarded: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| !k.starts_with(':') && !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection"))
                    .filter(|(k, _)| provider.downstream_on_deny(k))
                    .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.clone(), v.to_string())))
                    .collect();
                let fwd: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                self.deny_now(&shared, s, &fwd, body.as_deref(), "CUSTOM", Some(pending.rule), "denied by the CUSTOM provider");
            }
            _ => {
                // No response (timeout, reset, no cluster) or 5xx: Envoy's ext_authz error path.
                bump(shared.metrics.custom_error);
                wasmesh_proxy::log_warn(&format!(
                    "wasmesh authz: CUSTOM provider {} failed ({}); {}",
                    provider.name,
                    status.map(|s| format!("status {s}")).unwrap_or_else(|| "no response".into()),
                    if provider.fail_open { "failOpen: allowing" } else { "denying" }
                ));
                if provider.fail_open {
                    self.ext_allowed(&shared, provider, &[]);
                } else {
                    self.deny_now(&shared, provider.status_on_error, &[], None, "CUSTOM", Some(pending.rule), "CUSTOM provider error");
                }
            }
        }
    }
}

impl HttpContext for AuthzStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            return Action::Pause;
        };
        let authz = &shared.authz;
        let inputs = match Inputs::gather(authz) {
            Ok(i) => i,
            Err(what) => {
                return self.fail_closed(&shared, what);
            }
        };
        let req = inputs.view();
        if let Some(v) = authz.peer_authn(&req) {
            bump(shared.metrics.peer_authn_denied);
            return self.finish(&shared, &v);
        }
        match authz.custom(&req) {
            CustomOutcome::Continue => {}
            CustomOutcome::Deny(v) => return self.finish(&shared, &v),
            CustomOutcome::Check { provider, rule } => {
                shared.metrics.rule("custom", rule);
                return self.dispatch(&shared, provider, &inputs, rule);
            }
        }
        if authz.stage() == Stage::Custom {
            return Action::Continue;
        }
        let v = authz.rbac(&req);
        self.finish(&shared, &v)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (k, v) in std::mem::take(&mut self.allow_response_headers) {
            wasmesh_proxy::add_response_header(&k, &v);
        }
        Action::Continue
    }
}

impl AuthzStream {
    /// Records the verdict and acts on it.
    fn finish(&mut self, shared: &Shared, v: &Verdict<'_>) -> Action {
        let m = &shared.metrics;
        if !v.audit.is_empty() {
            bump(m.audit);
            for r in &v.audit {
                m.rule("audited", r);
            }
        }
        for (prefix, sh) in [("istio_dry_run_deny_", &v.dry_run_deny), ("istio_dry_run_allow_", &v.dry_run_allow)] {
            if let Some(sh) = sh {
                m.dry_run(match (prefix, sh.allowed) {
                    ("istio_dry_run_deny_", true) => "istio_dry_run_deny_shadow_allowed",
                    ("istio_dry_run_deny_", false) => "istio_dry_run_deny_shadow_denied",
                    (_, true) => "istio_dry_run_allow_shadow_allowed",
                    (_, false) => "istio_dry_run_allow_shadow_denied",
                });
                if let Some(r) = sh.rule {
                    m.rule("dry_run_matched", r);
                }
            }
        }
        if let Reason::Missing(what) = &v.reason {
            bump(m.error);
            wasmesh_proxy::log_warn(&format!("wasmesh authz: denying: {} is unavailable", what.0));
        }
        if let Some(rule) = v.rule() {
            m.rule(if v.allowed { "allowed" } else { "denied" }, rule);
        }
        let decision = AuthzDecision {
            allowed: v.allowed,
            action: v.action().to_string(),
            policy: v.rule().map(str::to_string),
            audit: v.audit.iter().map(|s| s.to_string()).collect(),
            shadow: v.shadow_text(),
        };
        record(&decision);
        if v.allowed {
            bump(m.allowed);
            Action::Continue
        } else {
            bump(m.denied);
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            Action::Pause
        }
    }

    fn fail_closed(&mut self, shared: &Shared, what: &str) -> Action {
        bump(shared.metrics.error);
        wasmesh_proxy::log_warn(&format!("wasmesh authz: denying: could not read {what}"));
        record(&AuthzDecision { allowed: false, action: "ERROR".into(), policy: None, audit: Vec::new(), shadow: None });
        bump(shared.metrics.denied);
        wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
        Action::Pause
    }

    /// Sends the check request as Envoy's HTTP ext_authz client builds it.
    fn dispatch(&mut self, shared: &Shared, provider: &Provider, inputs: &Inputs, rule: &str) -> Action {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (k, v) in &inputs.headers {
            if k == "content-length" || !provider.forwards_request_header(k) {
                continue;
            }
            let Ok(v) = std::str::from_utf8(v) else { continue };
            let v = if k == ":path" { format!("{}{}", provider.path_prefix, v) } else { v.to_string() };
            match merged.iter_mut().find(|(mk, _)| mk == k) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(&v);
                }
                None => merged.push((k.clone(), v)),
            }
        }
        for (k, v) in &provider.additional_headers {
            merged.retain(|(mk, _)| mk != k);
            merged.push((k.clone(), v.clone()));
        }
        merged.push(("content-length".into(), "0".into()));
        for required in [":method", ":path", ":authority"] {
            if !merged.iter().any(|(k, _)| k == required) {
                let v = if required == ":path" { format!("{}/", provider.path_prefix) } else { String::new() };
                merged.push((required.to_string(), v));
            }
        }
        let headers: Vec<(&str, &str)> = merged.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match hostcalls::dispatch_http_call(&provider.cluster, headers, None, Vec::new(), provider.timeout) {
            Ok(token) => {
                self.pending = Some(Pending { token, rule: rule.to_string() });
                Action::Pause
            }
            Err(e) => {
                bump(shared.metrics.custom_error);
                wasmesh_proxy::log_error(&format!(
                    "wasmesh authz: cannot call CUSTOM provider {} (cluster {}): {}",
                    provider.name,
                    provider.cluster,
                    wasmesh_proxy::status_text(e)
                ));
                if provider.fail_open {
                    self.after_custom_allow(shared)
                } else {
                    self.deny_sync(shared, provider.status_on_error, rule, "CUSTOM provider unreachable")
                }
            }
        }
    }

    /// The provider allowed: apply its headers, then the rest of the chain.
    fn ext_allowed(&mut self, shared: &Shared, provider: &Provider, headers: &[(String, Vec<u8>)]) {
        for (k, v) in headers {
            if k.starts_with(':') {
                continue;
            }
            if provider.upstream_on_allow(k) {
                wasmesh_proxy::set_request_header(k, v);
            }
            if provider.downstream_on_allow(k) {
                self.allow_response_headers.push((k.clone(), v.clone()));
            }
        }
        if let Some((_, list)) = headers.iter().find(|(k, _)| k == "x-envoy-auth-headers-to-remove") {
            for name in String::from_utf8_lossy(list).split(',') {
                let name = name.trim().to_ascii_lowercase();
                if !name.is_empty() && !name.starts_with(':') && name != "host" {
                    wasmesh_proxy::remove_request_header(&name);
                }
            }
        }
        if let Action::Continue = self.after_custom_allow(shared) {
            let _ = hostcalls::resume_http_request();
        }
    }

    /// After CUSTOM allowed: in the `All` stage, AUDIT/DENY/ALLOW on the (possibly updated)
    /// request; in the `Custom` stage, continue.
    fn after_custom_allow(&mut self, shared: &Shared) -> Action {
        if shared.authz.stage() == Stage::Custom {
            return Action::Continue;
        }
        match Inputs::gather(&shared.authz) {
            Ok(inputs) => {
                let v = shared.authz.rbac(&inputs.view());
                self.finish(shared, &v)
            }
            Err(what) => self.fail_closed(shared, what),
        }
    }

    fn deny_sync(&mut self, shared: &Shared, status: u32, rule: &str, why: &str) -> Action {
        self.deny_now(shared, status, &[], None, "CUSTOM", Some(rule.to_string()), why);
        Action::Pause
    }

    #[allow(clippy::too_many_arguments)]
    fn deny_now(
        &mut self,
        shared: &Shared,
        status: u32,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        action: &str,
        rule: Option<String>,
        why: &str,
    ) {
        if let Some(r) = &rule {
            shared.metrics.rule("denied", r);
        }
        wasmesh_proxy::log_debug(&format!("wasmesh authz: {status}: {why}"));
        record(&AuthzDecision { allowed: false, action: action.into(), policy: rule, audit: Vec::new(), shadow: None });
        bump(shared.metrics.denied);
        wasmesh_proxy::send_response(status, headers, body);
    }
}

fn record(d: &AuthzDecision) {
    if !wasmesh_proxy::set_filter_state(wasmesh_handover::AUTHZ_DECISION, &wasmesh_handover::encode(d)) {
        wasmesh_proxy::log_debug("wasmesh authz: could not write the decision to filter state");
    }
}
