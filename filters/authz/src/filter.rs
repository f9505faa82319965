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
//! On a TCP port (configuration `stage: tcp`) the module is the *network* authorization filter,
//! Istio's network RBAC: it decides on the connection's first bytes from the client (when the
//! TLS handshake is done and the peer certificate is known, as Envoy's network RBAC filter
//! does), on source/destination addresses, the peer certificate and SNI. A denied connection
//! is closed by the filter (`proxy_close_stream(downstream)`) and its bytes are never passed on
//! to `tcp_proxy`, so none reach the app.
//!
//! Fail closed: a configuration that cannot be compiled refuses to load; an input the policies
//! need that cannot be read, an undecodable identity hand-over or a hostcall failure denies.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType, Status};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;
use wasmesh_authz::metadata::decode_metadata;
use wasmesh_authz::provider::Provider;
use wasmesh_authz::{
    parse_socket_address, Authz, AuthzConfig, CustomOutcome, MetadataEntry, Missing, PeerNames, Reason, Stage, Verdict,
    View, DENY_BODY, DENY_STATUS,
};
use wasmesh_handover::{AuthzDecision, RequestIdentity};
use wasmesh_istio::Strictness;

/// Filter state written by the network role: the connection's physical peer `ip:port`.
pub const PEER_ADDRESS_KEY: &str = "wasmesh.authz.peer_address";
/// Largest ext-authz denial body relayed to the client.
const MAX_EXT_BODY: usize = 64 * 1024;

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(AuthzRoot { role: None })
}

enum Role {
    Http(Rc<Shared>),
    /// The network filter of a TCP port.
    Tcp(Rc<Shared>),
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
        if let Some(Role::Http(s) | Role::Tcp(s)) = &self.role {
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
        match compile(&bytes) {
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
                let shared = Rc::new(Shared { authz, metrics });
                self.role =
                    Some(if shared.authz.stage() == Stage::Tcp { Role::Tcp(shared) } else { Role::Http(shared) });
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
        if let Some(Role::Http(s) | Role::Tcp(s)) = &self.role {
            s.metrics.flush();
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.role {
            Some(Role::PeerAddress | Role::Tcp(_)) => Some(ContextType::StreamContext),
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
        match &self.role {
            Some(Role::PeerAddress) => Some(Box::new(PeerAddress)),
            Some(Role::Tcp(s)) => Some(Box::new(AuthzTcp { shared: Some(s.clone()), state: TcpState::Undecided })),
            // Not configured as a network filter: refuse the connection (fail closed).
            _ => Some(Box::new(AuthzTcp { shared: None, state: TcpState::Undecided })),
        }
    }
}

/// Compiles the configuration; without a `workload` the proxy's identity comes from the Envoy
/// node metadata, and a node that does not carry it refuses the configuration (fail closed:
/// Envoy then does not install the filter, and `FAIL_CLOSE`/`FAIL_RELOAD` deny).
fn compile(bytes: &[u8]) -> Result<wasmesh_authz::Authz, String> {
    let mut cfg = AuthzConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    if cfg.workload.is_none() {
        let wl = wasmesh_proxy::node_workload(&cfg.mesh(), Strictness::Required).map_err(|e| {
            format!("the configuration has no workload and the Envoy node does not identify the proxy: {e}")
        })?;
        wasmesh_proxy::log_info(&format!(
            "wasmesh authz: workload {}/{} ({:?}, labels {:?}) from the Envoy node metadata",
            wl.namespace, wl.name, wl.mode, wl.labels
        ));
        cfg.workload = Some(wl);
    }
    let resources = cfg.parsed_resources().map_err(|e| e.to_string())?;
    cfg.compile(&resources).map_err(|e| e.to_string())
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

/// Where a TCP connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TcpState {
    /// No byte from the client yet.
    Undecided,
    Allowed,
    /// Closed by the filter; nothing more is passed on.
    Denied,
}

/// The network authorization filter of a TCP port: one per connection.
struct AuthzTcp {
    /// `None` when the module is not configured as a network authorization filter: every
    /// connection is refused.
    shared: Option<Rc<Shared>>,
    state: TcpState,
}

impl Context for AuthzTcp {}

impl AuthzTcp {
    /// Evaluates the connection (PeerAuthentication, a bad CUSTOM provider, AUDIT/DENY/ALLOW).
    fn decide(&mut self) -> TcpState {
        let Some(shared) = self.shared.clone() else {
            wasmesh_proxy::log_error("wasmesh authz: not configured for TCP; closing the connection");
            return TcpState::Denied;
        };
        let authz = &shared.authz;
        let inputs = Inputs::new(Envoy, authz);
        let verdict = match authz.peer_authn(&inputs) {
            Some(v) => {
                bump(&shared.metrics.peer_authn_denied);
                v
            }
            None => match authz.custom(&inputs) {
                CustomOutcome::Deny(v) => v,
                CustomOutcome::Continue => authz.rbac(&inputs),
                // Compile never keeps an HTTP provider for TCP; should it, fail closed.
                CustomOutcome::Check { rule, .. } => Verdict {
                    allowed: false,
                    reason: Reason::BadCustom {
                        rule,
                        reason: "an HTTP ext_authz provider cannot check a TCP connection",
                    },
                    audit: Vec::new(),
                    dry_run_deny: None,
                    dry_run_allow: None,
                },
            },
        };
        account(&shared, &verdict);
        if verdict.allowed {
            TcpState::Allowed
        } else {
            wasmesh_proxy::log_debug(&format!("wasmesh authz: closing TCP connection: {}", verdict.explain()));
            TcpState::Denied
        }
    }
}

impl StreamContext for AuthzTcp {
    /// Envoy's network RBAC decides on the first data, not here: the TLS handshake (and with it
    /// the peer certificate) is not done when the connection is accepted.
    fn on_new_connection(&mut self) -> Action {
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == TcpState::Undecided {
            self.state = self.decide();
            if self.state == TcpState::Denied {
                if let Err(e) = hostcalls::close_downstream() {
                    wasmesh_proxy::log_error(&format!(
                        "wasmesh authz: cannot close a denied connection: {}",
                        wasmesh_proxy::status_text(e)
                    ));
                }
            }
        }
        match self.state {
            TcpState::Allowed => Action::Continue,
            // Held back: the bytes never reach tcp_proxy (and so never the app).
            TcpState::Undecided | TcpState::Denied => Action::Pause,
        }
    }

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == TcpState::Denied {
            Action::Pause
        } else {
            Action::Continue
        }
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
        for c in [
            &self.allowed,
            &self.denied,
            &self.audit,
            &self.error,
            &self.peer_authn_denied,
            &self.custom_ok,
            &self.custom_denied,
            &self.custom_error,
        ] {
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
            c.id =
                hostcalls::define_metric(MetricType::Counter, &format!("wasmesh.authz.policy.{outcome}.{rule}")).ok();
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
            && matches!(
                v.reason,
                Reason::Allowed { .. } | Reason::Denied { .. } | Reason::NoAllowMatch | Reason::NoAllowPolicy
            );
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

/// Request headers, names lower-case, in arrival order.
type Headers = Vec<(String, Vec<u8>)>;

/// The hostcalls [`Inputs`] makes: Envoy in the filter, a fake in the tests. Each keeps a
/// hostcall failure (`Err`) apart from absence (`Ok(None)`): an absent input is evaluated as
/// absent (a plaintext connection matches `notPrincipals`, as in Istio), an unreadable one
/// fails closed.
trait Host {
    fn request_headers(&self) -> Result<Vec<(String, Vec<u8>)>, Status>;
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status>;
    /// A property, or filter state when `path` is one key.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status>;
}

/// The real host.
struct Envoy;

impl Host for Envoy {
    fn request_headers(&self) -> Result<Vec<(String, Vec<u8>)>, Status> {
        wasmesh_proxy::try_request_headers()
    }
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
        wasmesh_proxy::try_request_header(name)
    }
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
        wasmesh_proxy::try_property(path)
    }
}

/// What the policies read from Envoy for one evaluation: every input fetched on first use
/// (most requests are decided on a pseudo-header or two), then kept. A hostcall error is kept
/// as [`Missing`], so the rule that needs the input denies instead of seeing it as absent.
struct Inputs<H: Host = Envoy> {
    host: H,
    /// Every request header, fetched when a rule looks at a non-pseudo header (or for CUSTOM).
    headers: OnceCell<Result<Headers, Missing>>,
    method: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    path: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    authority: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    source_ip: OnceCell<Option<IpAddr>>,
    remote_ip: OnceCell<Option<IpAddr>>,
    destination_ip: OnceCell<Option<IpAddr>>,
    destination_port: OnceCell<Option<u32>>,
    sni: OnceCell<Result<Vec<u8>, Missing>>,
    mtls: OnceCell<Result<bool, Missing>>,
    peer: OnceCell<Result<PeerCert, Missing>>,
    identity: OnceCell<Result<Option<RequestIdentity>, Missing>>,
    metadata: OnceCell<Result<Vec<MetadataEntry>, Missing>>,
    /// `(filter, key)` pairs to decode from dynamic metadata.
    metadata_keys: Vec<(String, String)>,
    /// A TCP connection: no headers, no JWT identity, the source address is the connection's.
    tcp: bool,
}

const HEADERS_MISSING: Missing = Missing("the request headers (hostcall failed)");

impl<H: Host> Inputs<H> {
    fn new(host: H, authz: &Authz) -> Inputs<H> {
        Inputs {
            host,
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
            tcp: authz.stage() == Stage::Tcp,
        }
    }

    fn all_headers(&self) -> Result<&[(String, Vec<u8>)], Missing> {
        if self.tcp {
            // A connection has no request headers: every header rule sees them absent.
            return Ok(&[]);
        }
        self.headers.get_or_init(|| self.host.request_headers().map_err(|_| HEADERS_MISSING)).as_deref().map_err(|m| *m)
    }

    /// A property where only a failed hostcall matters: absent and unreadable are both `None`,
    /// and every rule that needs an address or a port fails closed on `None`.
    fn optional(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.host.property(path).ok().flatten()
    }

    fn addr(&self, path: &[&str]) -> Option<IpAddr> {
        self.optional(path).and_then(|b| parse_socket_address(&b))
    }
}

impl<H: Host> View for Inputs<H> {
    fn pseudo(&self, name: &str) -> Result<Option<&[u8]>, Missing> {
        let (cell, what) = match name {
            ":method" => (&self.method, Missing(":method (hostcall failed)")),
            ":path" => (&self.path, Missing(":path (hostcall failed)")),
            ":authority" => (&self.authority, Missing(":authority (hostcall failed)")),
            _ => return Ok(self.all_headers()?.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())),
        };
        cell.get_or_init(|| match self.headers.get() {
            _ if self.tcp => Ok(None),
            Some(Ok(all)) => Ok(all.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())),
            Some(Err(m)) => Err(*m),
            None => self.host.request_header(name).map_err(|_| what),
        })
        .as_ref()
        .map(Option::as_deref)
        .map_err(|m| *m)
    }
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, Missing> {
        Ok(self.all_headers()?.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).any(|(_, v)| f(v)))
    }
    fn source_ip(&self) -> Option<IpAddr> {
        if self.tcp {
            // The connection's own peer (no x-forwarded-for on TCP): `remote.ip` is the same.
            return self.remote_ip();
        }
        *self.source_ip.get_or_init(|| self.addr(&[PEER_ADDRESS_KEY]))
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        *self.remote_ip.get_or_init(|| self.addr(&["source", "address"]))
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        *self.destination_ip.get_or_init(|| self.addr(&["destination", "address"]))
    }
    fn destination_port(&self) -> Option<u32> {
        *self.destination_port.get_or_init(|| {
            let port = wasmesh_proxy::decode_u64(&self.optional(&["destination", "port"])?)?;
            u32::try_from(port).ok()
        })
    }
    fn sni(&self) -> Result<&[u8], Missing> {
        self.sni
            .get_or_init(|| match self.host.property(&["connection", "requested_server_name"]) {
                Ok(b) => Ok(b.unwrap_or_default()),
                Err(_) => Err(Missing("connection.requested_server_name (hostcall failed)")),
            })
            .as_deref()
            .map_err(|m| *m)
    }
    fn mtls(&self) -> Result<bool, Missing> {
        *self.mtls.get_or_init(|| match self.host.property(&["connection", "mtls"]) {
            Ok(None) => Ok(false),
            Ok(Some(b)) => b.first().map(|v| *v != 0).ok_or(Missing("connection.mtls (undecodable)")),
            Err(_) => Err(Missing("connection.mtls (hostcall failed)")),
        })
    }
    fn peer(&self) -> Result<PeerNames<'_>, Missing> {
        let (u, d, s) = self
            .peer
            .get_or_init(|| {
                let get = |p: &str| {
                    self.host
                        .property(&["connection", p])
                        .map_err(|_| Missing("the peer certificate (hostcall failed)"))
                };
                Ok((
                    get("uri_san_peer_certificate")?,
                    get("dns_san_peer_certificate")?,
                    get("subject_peer_certificate")?,
                ))
            })
            .as_ref()
            .map_err(|m| *m)?;
        Ok(PeerNames { uri_san: u.as_deref(), dns_san: d.as_deref(), subject: s.as_deref() })
    }
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing> {
        if self.tcp {
            return Ok(None);
        }
        self.identity
            .get_or_init(|| match self.host.property(&[wasmesh_handover::AUTHN_IDENTITY]) {
                Err(_) => Err(Missing("the authn identity hand-over (hostcall failed)")),
                Ok(None) => Ok(None),
                Ok(Some(b)) if b.is_empty() => Ok(None),
                Ok(Some(b)) => wasmesh_handover::decode::<RequestIdentity>(&b)
                    .map(Some)
                    .ok_or(Missing("the authn identity hand-over (undecodable)")),
            })
            .as_ref()
            .map(Option::as_ref)
            .map_err(|m| *m)
    }
    fn metadata(&self) -> Result<&[MetadataEntry], Missing> {
        self.metadata
            .get_or_init(|| match self.host.property(&["metadata"]) {
                Err(_) => Err(Missing("dynamic metadata (hostcall failed)")),
                Ok(None) => Ok(Vec::new()),
                Ok(Some(b)) => {
                    decode_metadata(&b, &self.metadata_keys).ok_or(Missing("dynamic metadata (undecodable)"))
                }
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
            self.deny_now(
                &shared,
                DENY_STATUS,
                &[],
                Some(DENY_BODY.as_bytes()),
                "CUSTOM",
                Some(pending.rule),
                "no provider",
            );
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
                    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_EXT_BODY))
                        .ok()
                        .flatten()
                };
                let forwarded: Vec<(String, String)> = headers
                    .iter()
                    .filter(|(k, _)| {
                        !k.starts_with(':')
                            && !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection")
                    })
                    .filter(|(k, _)| provider.downstream_on_deny(k))
                    .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.clone(), v.to_string())))
                    .collect();
                let fwd: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                self.deny_now(
                    &shared,
                    s,
                    &fwd,
                    body.as_deref(),
                    "CUSTOM",
                    Some(pending.rule),
                    "denied by the CUSTOM provider",
                );
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
                    self.deny_now(
                        &shared,
                        provider.status_on_error,
                        &[],
                        None,
                        "CUSTOM",
                        Some(pending.rule),
                        "CUSTOM provider error",
                    );
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
        let inputs = Inputs::new(Envoy, authz);
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
        account(shared, v);
        if v.allowed {
            Action::Continue
        } else {
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            Action::Pause
        }
    }
}

/// Counts a verdict (totals, per rule, AUDIT, dry-run, errors) and hands it to the access log
/// through filter state: the same for HTTP requests and TCP connections.
fn account(shared: &Shared, v: &Verdict<'_>) {
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
    bump(if v.allowed { &m.allowed } else { &m.denied });
}

impl AuthzStream {
    /// Sends the check request as Envoy's HTTP ext_authz client builds it.
    fn dispatch(&mut self, shared: &Shared, provider: &Provider, inputs: &Inputs, rule: &str) -> Action {
        let all = match inputs.all_headers() {
            Ok(all) => all,
            Err(m) => {
                // The check request cannot be built: fail closed.
                let v = Verdict {
                    allowed: false,
                    reason: Reason::Missing(m),
                    audit: Vec::new(),
                    dry_run_deny: None,
                    dry_run_allow: None,
                };
                return self.finish(shared, &v);
            }
        };
        let mut merged: Vec<(String, String)> = Vec::new();
        for (k, v) in all {
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
        let inputs = Inputs::new(Envoy, &shared.authz);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    //! The adapter's reading of Envoy, against a fake host: an input that is absent is absent,
    //! an input whose hostcall fails denies (`Reason::Missing`), and an evaluation makes no more
    //! hostcalls than the rules need.
    use super::*;
    use serde_json::json;

    /// A host whose properties and headers are given, and where chosen paths fail.
    #[derive(Default)]
    struct Fake {
        headers: Vec<(String, Vec<u8>)>,
        props: HashMap<String, Vec<u8>>,
        /// Property paths (joined with `.`) whose hostcall fails; `"headers"` fails the header calls.
        failing: Vec<&'static str>,
        calls: Cell<usize>,
    }

    impl Fake {
        fn request(path: &str) -> Fake {
            Fake {
                headers: vec![
                    (":method".into(), b"GET".to_vec()),
                    (":path".into(), path.into()),
                    (":authority".into(), b"example.com".to_vec()),
                ],
                ..Fake::default()
            }
        }
        fn prop(mut self, path: &str, v: &[u8]) -> Fake {
            self.props.insert(path.into(), v.to_vec());
            self
        }
        fn header(mut self, k: &str, v: &str) -> Fake {
            self.headers.push((k.into(), v.into()));
            self
        }
        fn failing(mut self, path: &'static str) -> Fake {
            self.failing.push(path);
            self
        }
        fn mtls(self, uri: &str) -> Fake {
            self.prop("connection.mtls", &[1]).prop("connection.uri_san_peer_certificate", uri.as_bytes())
        }
    }

    impl Host for Fake {
        fn request_headers(&self) -> Result<Vec<(String, Vec<u8>)>, Status> {
            self.calls.set(self.calls.get() + 1);
            if self.failing.contains(&"headers") {
                return Err(Status::InternalFailure);
            }
            Ok(self.headers.clone())
        }
        fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, Status> {
            self.calls.set(self.calls.get() + 1);
            if self.failing.contains(&"headers") {
                return Err(Status::InternalFailure);
            }
            Ok(self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        }
        fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
            self.calls.set(self.calls.get() + 1);
            let key = path.join(".");
            if self.failing.contains(&key.as_str()) {
                return Err(Status::SerializationFailure);
            }
            Ok(self.props.get(&key).cloned())
        }
    }

    fn authz(spec: serde_json::Value) -> Authz {
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "foo"}, "spec": spec}],
        });
        AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap()
    }

    fn allow(rule: serde_json::Value) -> Authz {
        authz(json!({"action": "ALLOW", "rules": [rule]}))
    }

    /// The verdict and the number of hostcalls it took.
    fn decide(a: &Authz, host: Fake) -> (bool, String, usize) {
        let inputs = Inputs::new(host, a);
        let v = a.rbac(&inputs);
        let reason = match &v.reason {
            Reason::Missing(m) => format!("missing {}", m.0),
            other => format!("{other:?}"),
        };
        (v.allowed, reason, inputs.host.calls.get())
    }

    fn fails_closed(a: &Authz, host: Fake) {
        let (allowed, reason, _) = decide(a, host);
        assert!(!allowed && reason.starts_with("missing"), "want a fail-closed deny, got allowed={allowed} {reason}");
    }

    #[test]
    fn not_principals_absent_matches_unreadable_denies() {
        let a = allow(json!({"from": [{"source": {"notPrincipals": ["cluster.local/ns/foo/sa/bad"]}}]}));
        assert!(decide(&a, Fake::request("/")).0, "plaintext (mtls absent) matches notPrincipals, as in Istio");
        assert!(decide(&a, Fake::request("/").prop("connection.mtls", &[0])).0);
        assert!(decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/good")).0);
        assert!(!decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/bad")).0);
        fails_closed(&a, Fake::request("/").failing("connection.mtls"));
        fails_closed(&a, Fake::request("/").prop("connection.mtls", &[]));
        fails_closed(
            &a,
            Fake::request("/")
                .mtls("spiffe://cluster.local/ns/foo/sa/good")
                .failing("connection.uri_san_peer_certificate"),
        );
        fails_closed(
            &a,
            Fake::request("/")
                .mtls("spiffe://cluster.local/ns/foo/sa/good")
                .failing("connection.subject_peer_certificate"),
        );
    }

    #[test]
    fn peer_authentication_fails_closed_when_mtls_is_unreadable() {
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "foo"}, "spec": {"mtls": {"mode": "STRICT"}}}],
        });
        let a = AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap();
        let port = 8000u64.to_le_bytes();
        let ok = Inputs::new(
            Fake::request("/").prop("destination.port", &port).mtls("spiffe://cluster.local/ns/foo/sa/x"),
            &a,
        );
        assert!(a.peer_authn(&ok).is_none());
        let broken = Inputs::new(Fake::request("/").prop("destination.port", &port).failing("connection.mtls"), &a);
        let v = a.peer_authn(&broken).expect("denied");
        assert!(!v.allowed && matches!(v.reason, Reason::Missing(_)), "{v:?}");
    }

    #[test]
    fn sni_not_values_absent_matches_unreadable_denies() {
        let a = allow(json!({"when": [{"key": "connection.sni", "notValues": ["bad.example.com"]}]}));
        assert!(decide(&a, Fake::request("/")).0);
        assert!(!decide(&a, Fake::request("/").prop("connection.requested_server_name", b"bad.example.com")).0);
        fails_closed(&a, Fake::request("/").failing("connection.requested_server_name"));
    }

    #[test]
    fn not_request_principals_absent_matches_unreadable_denies() {
        let a = allow(json!({"from": [{"source": {"notRequestPrincipals": ["https://issuer/bad"]}}]}));
        assert!(decide(&a, Fake::request("/")).0, "no token matches notRequestPrincipals");
        fails_closed(&a, Fake::request("/").failing(wasmesh_handover::AUTHN_IDENTITY));
        fails_closed(&a, Fake::request("/").prop(wasmesh_handover::AUTHN_IDENTITY, b"\xff not a hand-over"));
    }

    #[test]
    fn headers_absent_match_not_values_unreadable_headers_deny() {
        let a = allow(json!({"when": [{"key": "request.headers[x-user]", "notValues": ["mallory"]}]}));
        assert!(decide(&a, Fake::request("/")).0);
        assert!(!decide(&a, Fake::request("/").header("x-user", "mallory")).0);
        fails_closed(&a, Fake::request("/").header("x-user", "mallory").failing("headers"));
        let paths = allow(
            json!({"to": [{"operation": {"notPaths": ["/admin"], "notHosts": ["evil.example.com"], "notMethods": ["DELETE"]}}]}),
        );
        assert!(decide(&paths, Fake::request("/x")).0);
        assert!(!decide(&paths, Fake::request("/admin")).0);
        fails_closed(&paths, Fake::request("/admin").failing("headers"));
    }

    #[test]
    fn metadata_unreadable_denies() {
        let a =
            allow(json!({"when": [{"key": "experimental.envoy.filters.http.wasmesh[role]", "notValues": ["guest"]}]}));
        assert!(decide(&a, Fake::request("/")).0, "no metadata matches notValues");
        fails_closed(&a, Fake::request("/").failing("metadata"));
    }

    /// The network filter (`stage: tcp`): no request headers and no JWT identity are read (a
    /// connection has none), the source address is the connection's peer, and a failing
    /// certificate hostcall still denies.
    #[test]
    fn tcp_reads_the_connection_only() {
        let tcp = |spec: serde_json::Value| {
            let cfg = json!({
                "workload": {"name": "httpbin", "namespace": "foo"},
                "stage": "tcp",
                "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "p", "namespace": "foo"}, "spec": spec}],
            });
            AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap()
        };
        let conn = || {
            let mut f =
                Fake::default().failing("headers").failing(wasmesh_handover::AUTHN_IDENTITY).failing(PEER_ADDRESS_KEY);
            f.props.insert("source.address".into(), b"10.1.2.3:5555".to_vec());
            f
        };
        let a = tcp(
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"ipBlocks": ["10.1.0.0/16"], "notPrincipals": ["cluster.local/ns/foo/sa/bad"]}}]}]}),
        );
        let (allowed, reason, _) = decide(&a, conn());
        assert!(allowed, "source.ip is the connection's peer; no header or identity hostcall: {reason}");
        assert!(!decide(&a, conn().mtls("spiffe://cluster.local/ns/foo/sa/bad")).0);
        fails_closed(&a, conn().failing("connection.uri_san_peer_certificate").prop("connection.mtls", &[1]));
        // DENY with an HTTP-only field: removed on TCP, the rest of the rule matches.
        let d = tcp(
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.1.2.3"]}}], "to": [{"operation": {"methods": ["POST"]}}]}]}),
        );
        assert!(!decide(&d, conn()).0);
    }

    #[test]
    fn unread_inputs_cost_nothing_and_cannot_fail_the_request() {
        // A paths-only policy reads `:path` with one hostcall; the other inputs are never read,
        // so their failing hostcalls do not matter.
        let a = allow(json!({"to": [{"operation": {"paths": ["/ok"]}}]}));
        let mut host = Fake::request("/ok");
        for p in ["connection.mtls", "connection.requested_server_name", "metadata", wasmesh_handover::AUTHN_IDENTITY] {
            host = host.failing(p);
        }
        let (allowed, _, calls) = decide(&a, host);
        assert!(allowed);
        assert_eq!(calls, 1);
        // Peer names: one call for mtls, three for the certificate, read once for all rules.
        let a = allow(
            json!({"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/a", "cluster.local/ns/foo/sa/b"]}}, {"source": {"notNamespaces": ["x"]}}]}),
        );
        let (allowed, _, calls) = decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/b"));
        assert!(allowed);
        assert_eq!(calls, 4);
    }
}
