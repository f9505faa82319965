//! wasmesh authz filter: Istio AuthorizationPolicy (and PeerAuthentication STRICT) in any Envoy.
//!
//! A thin adapter over `wasmesh-authz`, which decides everything (the order of Istio's chain,
//! the CUSTOM check request and what the provider's answer means, the hand-over for access
//! logs); this crate reads Envoy through the core's [`Host`] trait and acts:
//!
//! - [`http`]: the HTTP filter. Deny is `403 RBAC: access denied`, as Istio's RBAC filter;
//!   CUSTOM is an HTTP check to the `envoyExtAuthzHttp` provider with `dispatch_http_call`,
//!   reproducing Envoy's HTTP ext_authz client;
//! - [`tcp`]: on a TCP port (configuration `stage: tcp`) the network authorization filter,
//!   Istio's network RBAC, deciding on the connection's first bytes from the client (when the
//!   TLS handshake is done and the peer certificate is known, as Envoy's network RBAC filter
//!   does); a denied connection is closed and its bytes never reach `tcp_proxy`;
//! - [`peer_address`]: the network filter (configuration `{"role": "peerAddress"}`) recording
//!   the connection's physical peer address in filter state, because an HTTP filter only sees
//!   the address the HCM derived from `x-forwarded-for`, and `ipBlocks`/`source.ip` match the
//!   physical peer (Envoy RBAC `direct_remote_ip`);
//! - [`metrics`]: every decision is counted (`wasmcustom.wasmesh.authz.*`) and written to filter
//!   state `wasmesh.authz.decision` ([`wasmesh_handover::AuthzDecision`]) for access logs.
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
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;
use wasmesh_authz::view::{Host, HostFailure};
use wasmesh_authz::{Authz, AuthzConfig, Stage};
use wasmesh_istio::FilterConfig;

pub use wasmesh_authz::view::PEER_ADDRESS_KEY;

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(AuthzRoot { role: None })
}

/// What one plugin configuration makes of this module.
enum Role {
    Http(Rc<Shared>),
    /// The network filter of a TCP port.
    Tcp(Rc<Shared>),
    PeerAddress,
}

struct AuthzRoot {
    role: Option<Role>,
}

/// The compiled policies and the counters, shared by every stream of the plugin.
pub struct Shared {
    pub authz: Authz,
    pub metrics: Metrics,
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
        if peer_address::is_peer_address_role(&bytes) {
            self.role = Some(Role::PeerAddress);
            return true;
        }
        let authz = match compile(&bytes) {
            Ok(authz) => authz,
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh authz: configuration rejected: {e}"));
                return false;
            }
        };
        for w in authz.warnings() {
            wasmesh_proxy::log_warn(&format!("wasmesh authz: {w}"));
        }
        wasmesh_proxy::log_info(&format!(
            "wasmesh authz: configured ({:?} stage), policies: {}",
            authz.stage(),
            if authz.applied().is_empty() { "none".to_string() } else { authz.applied().join(", ") }
        ));
        let metrics = Metrics::define(&authz);
        let shared = Rc::new(Shared { authz, metrics });
        self.role = Some(if shared.authz.stage() == Stage::Tcp { Role::Tcp(shared) } else { Role::Http(shared) });
        if hostcalls::set_tick_period(metrics::FLUSH_PERIOD).is_err() {
            wasmesh_proxy::log_warn("wasmesh authz: no tick; counters are flushed when the VM stops");
        }
        true
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
        Some(Box::new(http::AuthzHttp::new(shared)))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        match &self.role {
            Some(Role::PeerAddress) => Some(Box::new(peer_address::PeerAddress)),
            Some(Role::Tcp(s)) => Some(Box::new(tcp::AuthzTcp::new(Some(s.clone())))),
            // Not configured as a network filter: refuse the connection (fail closed).
            _ => Some(Box::new(tcp::AuthzTcp::new(None))),
        }
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

/// The real host: Envoy's hostcalls.
pub struct Envoy;

impl Host for Envoy {
    fn request_headers(&self) -> Result<Vec<(String, Vec<u8>)>, HostFailure> {
        wasmesh_proxy::try_request_headers().map_err(|_| HostFailure)
    }
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
        wasmesh_proxy::try_request_header(name).map_err(|_| HostFailure)
    }
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostFailure> {
        wasmesh_proxy::try_property(path).map_err(|_| HostFailure)
    }
}

/// The authz phase (for the one-pass chain): being written; until then `wasmesh.chain` refuses it.
pub fn build(
    _config: &[u8],
    _resumer: &wasmesh_proxy::phase::Resumer,
) -> Result<Vec<std::rc::Rc<dyn wasmesh_proxy::phase::Phase>>, String> {
    Err("authz does not run as a phase yet".into())
}
