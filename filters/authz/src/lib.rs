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
use std::cell::{Cell, OnceCell, RefCell};
use std::net::IpAddr;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use wasmesh_authz::metadata::decode_metadata;
use wasmesh_authz::provider::Provider;
use wasmesh_authz::{
    parse_socket_address, Authz, AuthzConfig, CustomOutcome, MetadataEntry, Missing, PeerNames, Reason, Stage, Verdict, View,
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

impl Context for AuthzRoot {
    fn on_done(&mut self) -> bool {
        if let Some(Role::Http(s)) = &self.role {
            s.metrics.flush();
        }
        true
    }
}

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
                if hostcalls::set_tick_period(FLUSH_PERIOD).is_err() {
                    wasmesh_proxy::log_warn("wasmesh authz: no tick; counters are flushed when the VM stops");
                }
                true
            }
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh authz: configuration rejected: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(Role::Http(s)) = &self.role {
            s.metrics.flush();
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

/// A counter whose increments are kept in the VM and handed to Envoy on the next tick (every
/// [`FLUSH_PERIOD`]), so a request costs no metric hostcall.
#[derive(Default)]
struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    fn new(name: &str) -> Counter {
        Counter { id: hostcalls::define_metric(MetricType::Counter, name).ok(), pending: Cell::new(0) }
    }
    fn bump(&self) {
        self.pending.set(self.pending.get() + 1);
    }
    fn flush(&self) {
        let n = self.pending.replace(0);
        if n > 0 {
            if let Some(id) = self.id {
                let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }
}

/// How often counters are handed to Envoy.
const FLUSH_PERIOD: Duration = Duration::from_millis(250);

/// Counters (`wasmcustom.wasmesh.authz.*`), defined once per VM; per-rule ones on first use
/// and then found without allocating.
struct Metrics {
    allowed: Counter,
    denied: Counter,
    audit: Counter,
    error: Counter,
    peer_authn_denied: Counter,
    custom_ok: Counter,
    custom_denied: Counter,
    custom_error: Counter,
    dry_run: RefCell<HashMap<&'static str, Counter>>,
    /// Per rule: one counter per [`RULE_OUTCOMES`] entry, defined on first use.
    rules: RefCell<HashMap<String, [Counter; 5]>>,
    /// Encoded `AuthzDecision`s for the common verdicts (a rule or the default decided, no
    /// audit, no dry-run): [denied, allowed], keyed by rule name ("" for the default).
    decisions: RefCell<[HashMap<String, Rc<[u8]>>; 2]>,
}

const RULE_OUTCOMES: [&str; 5] = ["allowed", "denied", "audited", "custom", "dry_run_matched"];

fn bump(c: &Counter) {
    c.bump();
}

impl Metrics {
    fn define() -> Self {
        Metrics {
            allowed: Counter::new("wasmesh.authz.allowed"),
            denied: Counter::new("wasmesh.authz.denied"),
            audit: Counter::new("wasmesh.authz.audit"),
            error: Counter::new("wasmesh.authz.error"),
            peer_authn_denied: Counter::new("wasmesh.authz.peer_authn_denied"),
            custom_ok: Counter::new("wasmesh.authz.custom.ok"),
            custom_denied: Counter::new("wasmesh.authz.custom.denied"),
            custom_error: Counter::new("wasmesh.authz.custom.error"),
            dry_run: RefCell::new(HashMap::new()),
            rules: RefCell::new(HashMap::new()),
            decisions: RefCell::new([HashMap::new(), HashMap::new()]),
        }
    }

    /// Hands every pending increment to Envoy.
    fn flush(&self) {
        for c in [&self.allowed, &self.denied, &self.audit, &self.error, &self.peer_authn_denied, &self.custom_ok, &self.custom_denied, &self.custom_error] {
            c.flush();
        }
        for c in self.dry_run.borrow().values() {
            c.flush();
        }
        for cs in self.rules.borrow().values() {
            for c in cs {
                c.flush();
            }
        }
    }

    /// Envoy RBAC's shadow counters with Istio's dry-run prefixes.
    fn dry_run(&self, name: &'static str) {
        let mut m = self.dry_run.borrow_mut();
        m.entry(name).or_insert_with(|| Counter::new(&format!("wasmesh.authz.{name}"))).bump();
    }

    /// `wasmesh.authz.policy.<outcome>.<rule>`; the plugin's stats tag turns the rule into the
    /// `authz_rule` label.
    fn rule(&self, outcome: &'static str, rule: &str) {
        let Some(slot) = RULE_OUTCOMES.iter().position(|o| *o == outcome) else { return };
        let mut m = self.rules.borrow_mut();
        if !m.contains_key(rule) {
            m.insert(rule.to_string(), Default::default());
        }
        let Some(counters) = m.get_mut(rule) else { return };
        let Some(c) = counters.get_mut(slot) else { return };
        if c.id.is_none() {
            c.id = hostcalls::define_metric(MetricType::Counter, &format!("wasmesh.authz.policy.{outcome}.{rule}")).ok();
        }
        c.bump();
    }

    /// The encoded decision, cached for the common shapes.
    fn decision(&self, v: &Verdict<'_>) -> Rc<[u8]> {
        let encode = || -> Rc<[u8]> {
            Rc::from(wasmesh_handover::encode(&AuthzDecision {
                allowed: v.allowed,
                action: v.action().to_string(),
                policy: v.rule().map(str::to_string),
                audit: v.audit.iter().map(|s| s.to_string()).collect(),
                shadow: v.shadow_text(),
            }))
        };
        let cacheable = v.audit.is_empty()
            && v.dry_run_allow.is_none()
            && v.dry_run_deny.is_none()
            && matches!(v.reason, Reason::Allowed { .. } | Reason::Denied { .. } | Reason::NoAllowMatch | Reason::NoAllowPolicy);
        if !cacheable {
            return encode();
        }
        let rule = v.rule().unwrap_or("");
        let mut all = self.decisions.borrow_mut();
        let m = &mut all[usize::from(v.allowed)];
        if let Some(found) = m.get(rule) {
            return found.clone();
        }
        let bytes = encode();
        m.insert(rule.to_string(), bytes.clone());
        bytes
    }
}

/// The peer certificate's first URI SAN, first DNS SAN and subject.
type PeerCert = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// What the policies read from Envoy for one evaluation: the request headers up front, every
/// other input fetched on first use (most requests are decided on headers alone), then kept.
struct Inputs {
    /// Every request header, fetched when a rule looks at a non-pseudo header (or for CUSTOM).
    headers: OnceCell<Vec<(String, Vec<u8>)>>,
    method: OnceCell<Option<Vec<u8>>>,
    path: OnceCell<Option<Vec<u8>>>,
    authority: OnceCell<Option<Vec<u8>>>,
    source_ip: OnceCell<Option<IpAddr>>,
    remote_ip: OnceCell<Option<IpAddr>>,
    destination_ip: OnceCell<Option<IpAddr>>,
    destination_port: OnceCell<Option<u32>>,
    sni: OnceCell<Vec<u8>>,
    mtls: OnceCell<bool>,
    peer: OnceCell<PeerCert>,
    identity: OnceCell<Result<Option<RequestIdentity>, Missing>>,
    metadata: OnceCell<Result<Vec<MetadataEntry>, Missing>>,
    /// `(filter, key)` pairs to decode from dynamic metadata.
    metadata_keys: Vec<(String, String)>,
}

fn addr(path: &[&str]) -> Option<IpAddr> {
    wasmesh_proxy::property(path).and_then(|b| parse_socket_address(&b))
}

impl Inputs {
    fn new(authz: &Authz) -> Inputs {
        Inputs {
            headers: OnceCell::new(),
            method: OnceCell::new(),
            path: OnceCell::new(),
            authority: OnceCell::new(),
            source_ip: OnceCell::new(),
            remote_ip: OnceCell::new(),
            destination_ip: OnceCell::new(),
            destination_port: OnceCell::new(),
            sni: OnceCell::new(),
            mtls: OnceCell::new(),
            peer: OnceCell::new(),
            identity: OnceCell::new(),
            metadata: OnceCell::new(),
            metadata_keys: authz.needs().metadata.clone(),
        }
    }
}

impl Inputs {
    fn all_headers(&self) -> &[(String, Vec<u8>)] {
        self.headers.get_or_init(wasmesh_proxy::request_headers)
    }
}

impl View for Inputs {
    fn pseudo(&self, name: &str) -> Option<&[u8]> {
        let cell = match name {
            ":method" => &self.method,
            ":path" => &self.path,
            ":authority" => &self.authority,
            _ => return self.all_headers().iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice()),
        };
        cell.get_or_init(|| match self.headers.get() {
            Some(all) => all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            None => wasmesh_proxy::request_header(name),
        })
        .as_deref()
    }
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.all_headers().iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).any(|(_, v)| f(v))
    }
    fn source_ip(&self) -> Option<IpAddr> {
        *self.source_ip.get_or_init(|| wasmesh_proxy::filter_state(PEER_ADDRESS_KEY).and_then(|b| parse_socket_address(&b)))
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        *self.remote_ip.get_or_init(|| addr(&["source", "address"]))
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        *self.destination_ip.get_or_init(|| addr(&["destination", "address"]))
    }
    fn destination_port(&self) -> Option<u32> {
        *self
            .destination_port
            .get_or_init(|| wasmesh_proxy::property_u64(&["destination", "port"]).and_then(|p| u32::try_from(p).ok()))
    }
    fn sni(&self) -> &[u8] {
        self.sni.get_or_init(|| wasmesh_proxy::property(&["connection", "requested_server_name"]).unwrap_or_default())
    }
    fn mtls(&self) -> bool {
        *self.mtls.get_or_init(|| wasmesh_proxy::property_bool(&["connection", "mtls"]).unwrap_or(false))
    }
    fn peer(&self) -> PeerNames<'_> {
        let (u, d, s) = self.peer.get_or_init(|| {
            (
                wasmesh_proxy::property(&["connection", "uri_san_peer_certificate"]),
                wasmesh_proxy::property(&["connection", "dns_san_peer_certificate"]),
                wasmesh_proxy::property(&["connection", "subject_peer_certificate"]),
            )
        });
        PeerNames { uri_san: u.as_deref(), dns_san: d.as_deref(), subject: s.as_deref() }
    }
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing> {
        self.identity
            .get_or_init(|| match wasmesh_proxy::filter_state(wasmesh_handover::AUTHN_IDENTITY) {
                None => Ok(None),
                Some(b) if b.is_empty() => Ok(None),
                Some(b) => wasmesh_handover::decode::<RequestIdentity>(&b)
                    .map(Some)
                    .ok_or(Missing("the authn identity hand-over (undecodable)")),
            })
            .as_ref()
            .map(Option::as_ref)
            .map_err(|m| *m)
    }
    fn metadata(&self) -> Result<&[MetadataEntry], Missing> {
        self.metadata
            .get_or_init(|| match wasmesh_proxy::property(&["metadata"]) {
                None => Ok(Vec::new()),
                Some(b) => decode_metadata(&b, &self.metadata_keys).ok_or(Missing("dynamic metadata (undecodable)")),
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(|m| *m)
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
                bump(&shared.metrics.custom_ok);
                self.ext_allowed(&shared, provider, &headers);
            }
            Some(s) if (100..500).contains(&s) => {
                bump(&shared.metrics.custom_denied);
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
                bump(&shared.metrics.custom_error);
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
        let inputs = Inputs::new(authz);
        let req = &inputs;
        if let Some(v) = authz.peer_authn(req) {
            bump(&shared.metrics.peer_authn_denied);
            return self.finish(&shared, &v);
        }
        match authz.custom(req) {
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
        let v = authz.rbac(req);
        self.finish(&shared, &v)
    }

    /// While a CUSTOM check is in flight the body waits (Envoy buffers it): continuing here would
    /// let Envoy forward the request before the provider answered.
    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.pending.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.pending.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
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
            bump(&m.audit);
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
            bump(&m.error);
            wasmesh_proxy::log_warn(&format!("wasmesh authz: denying: {} is unavailable", what.0));
        }
        if let Some(rule) = v.rule() {
            m.rule(if v.allowed { "allowed" } else { "denied" }, rule);
        }
        if shared.authz.decision_filter_state() {
            let decision = m.decision(v);
            if !wasmesh_proxy::set_filter_state(wasmesh_handover::AUTHZ_DECISION, &decision) {
                wasmesh_proxy::log_debug("wasmesh authz: could not write the decision to filter state");
            }
        }
        if v.allowed {
            bump(&m.allowed);
            Action::Continue
        } else {
            bump(&m.denied);
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            Action::Pause
        }
    }

    /// Sends the check request as Envoy's HTTP ext_authz client builds it.
    fn dispatch(&mut self, shared: &Shared, provider: &Provider, inputs: &Inputs, rule: &str) -> Action {
        let mut merged: Vec<(String, String)> = Vec::new();
        for (k, v) in inputs.all_headers() {
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
                bump(&shared.metrics.custom_error);
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
        // Read after the provider's headers were applied: ALLOW/DENY see them, as in Istio.
        let inputs = Inputs::new(&shared.authz);
        let v = shared.authz.rbac(&inputs);
        self.finish(shared, &v)
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
        bump(&shared.metrics.denied);
        wasmesh_proxy::send_response(status, headers, body);
    }
}

fn record(d: &AuthzDecision) {
    if !wasmesh_proxy::set_filter_state(wasmesh_handover::AUTHZ_DECISION, &wasmesh_handover::encode(d)) {
        wasmesh_proxy::log_debug("wasmesh authz: could not write the decision to filter state");
    }
}
