//! wasmesh authz filter: Istio AuthorizationPolicy (and PeerAuthentication STRICT) in any Envoy.
//!
//! A thin adapter over `wasmesh-authz`, which decides everything (the order of Istio's chain,
//! the CUSTOM check request and what the provider's answer means, the hand-over for access
//! logs); this crate reads Envoy through the core's [`Host`] trait and acts:
//!
//! - [`http`]: the HTTP phase (alone in its filter, or one phase of `wasmesh.chain`). Deny is
//!   `403 RBAC: access denied`, as Istio's RBAC filter; CUSTOM is an HTTP check to the
//!   `envoyExtAuthzHttp` provider sent on the request's stream, reproducing Envoy's HTTP
//!   ext_authz client;
//! - [`tcp`]: on a TCP port (configuration `stage: tcp`) the network authorization filter,
//!   Istio's network RBAC, deciding on the connection's first bytes from the client (when the
//!   TLS handshake is done and the peer certificate is known, as Envoy's network RBAC filter
//!   does); a denied connection is closed and its bytes never reach `tcp_proxy`;
//! - [`peer_address`]: the network filter (configuration `{"role": "peerAddress"}`) recording
//!   the connection's physical peer address in filter state, because an HTTP filter only sees
//!   the address the HCM derived from `x-forwarded-for`, and `ipBlocks`/`source.ip` match the
//!   physical peer (Envoy RBAC `direct_remote_ip`);
//! - [`metrics`]: every decision is counted (`wasmcustom.wasmesh.authz.*`, flushed on the
//!   driver's tick) and written to filter state `wasmesh.authz.decision`
//!   ([`wasmesh_handover::AuthzDecision`]) for access logs.
//!
//! Every role is a [`Phase`] run by the one driver ([`ChainRoot`]): the TCP roles are network
//! phases ([`Phase::is_network`]) whose connections are the [`tcp`] and [`peer_address`] stream
//! contexts.
//!
//! Fail closed: a configuration that cannot be compiled refuses to load; an input the policies
//! need that cannot be read, an undecodable identity hand-over or a hostcall failure denies.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "http.rs"]
pub mod http;
#[path = "metrics.rs"]
pub mod metrics;
#[path = "peer_address.rs"]
pub mod peer_address;
#[path = "tcp.rs"]
pub mod tcp;

use metrics::Metrics;
use proxy_wasm::traits::{RootContext, StreamContext};
use std::rc::Rc;
use std::time::Duration;
use wasmesh_authz::view::{Host, HostFailure};
use wasmesh_authz::{Authz, AuthzConfig, HeaderPairs, Stage, DENY_BODY, DENY_STATUS};
use wasmesh_istio::module::Callbacks;
use wasmesh_istio::FilterConfig;
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};

pub use wasmesh_authz::view::PEER_ADDRESS_KEY;

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh authz", build))
}

/// The authz phase its plugin configuration asks for: the HTTP phase (stage `all`, `rbac` or
/// `custom`), the network RBAC of a TCP port (stage `tcp`), or the peer-address network role.
pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    if peer_address::is_peer_address_role(config) {
        return Ok(vec![Rc::new(PeerAddressPhase)]);
    }
    let authz = compile(config)?;
    for w in authz.warnings() {
        wasmesh_proxy::log_warn(&format!("wasmesh authz: {w}"));
    }
    wasmesh_proxy::log_info(&format!(
        "wasmesh authz: configured ({:?} stage), policies: {}",
        authz.stage(),
        if authz.applied().is_empty() { "none".to_string() } else { authz.applied().join(", ") }
    ));
    let metrics = Metrics::define(&authz);
    Ok(vec![Rc::new(AuthzPhase { shared: Rc::new(Shared { authz, metrics }) })])
}

/// The compiled policies and the counters, shared by every request or connection of the plugin.
pub struct Shared {
    pub authz: Authz,
    pub metrics: Metrics,
}

/// The authorization phase: HTTP, or (stage `tcp`) the network filter of a TCP port.
struct AuthzPhase {
    shared: Rc<Shared>,
}

impl Phase for AuthzPhase {
    fn name(&self) -> &'static str {
        match self.shared.authz.stage() {
            Stage::Custom => "authz custom",
            Stage::Tcp => "authz tcp",
            Stage::All | Stage::Rbac => "authz",
        }
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        if self.is_network() {
            // A network filter given an HTTP request (Envoy does not do this): refuse it.
            return Box::new(Refuse);
        }
        Box::new(http::AuthzRequest::new(self.shared.clone()))
    }

    /// Alone in its filter: one by one when the policies read few pseudo-headers and nothing
    /// else of the request (the core decides, [`Authz::reads_few_headers`]), the whole map
    /// otherwise.
    fn header_reads(&self) -> HeaderReads {
        if self.shared.authz.reads_few_headers() {
            HeaderReads::OneByOne
        } else {
            HeaderReads::Map
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(metrics::FLUSH_PERIOD)
    }

    /// Response headers only for a CUSTOM provider that adds some to an allowed request's
    /// response (the core decides, [`Authz::callbacks`]).
    fn callbacks(&self) -> Callbacks {
        self.shared.authz.callbacks()
    }

    fn tick(&self) {
        self.shared.metrics.flush();
    }

    fn done(&self) {
        self.shared.metrics.flush();
    }

    fn is_network(&self) -> bool {
        self.shared.authz.stage() == Stage::Tcp
    }

    fn stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        // An HTTP stage given a connection (not configured as a network filter): refuse it.
        let shared = self.is_network().then(|| self.shared.clone());
        Some(Box::new(tcp::AuthzTcp::new(shared)))
    }
}

/// The network role recording the connection's physical peer address.
struct PeerAddressPhase;

impl Phase for PeerAddressPhase {
    fn name(&self) -> &'static str {
        "authz peer address"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(Refuse)
    }

    fn callbacks(&self) -> Callbacks {
        Callbacks::NONE
    }

    fn is_network(&self) -> bool {
        true
    }

    fn stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(peer_address::PeerAddress))
    }
}

/// A request a network role was given: denied (fail closed).
struct Refuse;

impl PhaseRequest for Refuse {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        wasmesh_proxy::log_error("wasmesh authz: a network role was given an HTTP request; denying it");
        s.send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
        Flow::Answered
    }
}

/// Compiles the configuration; without a `workload` the proxy's identity comes from the Envoy
/// node metadata, and a node that does not carry it refuses the configuration (fail closed:
/// Envoy then does not install the filter, and `FAIL_CLOSE`/`FAIL_RELOAD` deny).
fn compile(bytes: &[u8]) -> Result<Authz, String> {
    let mut cfg = AuthzConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    wasmesh_proxy::complete_workload_from_node(&mut cfg)?;
    let resources = cfg.parsed_resources().map_err(|e| e.to_string())?;
    cfg.compile(&resources).map_err(|e| e.to_string())
}

/// The request as the HTTP phase reads it: through its stream, so each header and property is
/// asked of Envoy at most once per request whatever phase asks first (in the one-pass chain the
/// headers come from the one map and the identity authn handed over from memory).
pub struct StreamHost<'s>(pub &'s Stream);

impl Host for StreamHost<'_> {
    fn with_request_headers(&self, f: &mut dyn FnMut(&mut HeaderPairs<'_>)) -> Result<(), HostFailure> {
        self.0.with_request_headers(|h| h.map(|h| f(&mut h.iter())).map_err(|_| HostFailure))
    }
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        self.0.request_header(name).map_err(|_| HostFailure)
    }
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostFailure> {
        self.0.property(path).map_err(|_| HostFailure)
    }
}

/// The network roles' host: Envoy's hostcalls (a connection has no stream).
pub struct Envoy;

impl Host for Envoy {
    fn with_request_headers(&self, f: &mut dyn FnMut(&mut HeaderPairs<'_>)) -> Result<(), HostFailure> {
        let all = wasmesh_proxy::try_request_headers().map_err(|_| HostFailure)?;
        f(&mut all.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())));
        Ok(())
    }
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        wasmesh_proxy::try_request_header(name).map_err(|_| HostFailure)
    }
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostFailure> {
        wasmesh_proxy::try_property(path).map_err(|_| HostFailure)
    }
}
