//! The network authorization filter of a TCP port (`stage: tcp`), Istio's network RBAC: it
//! decides on the connection's first bytes from the client — when the TLS handshake is done and
//! the peer certificate is known, as Envoy's network RBAC filter does — and closes a denied
//! connection, whose bytes never reach `tcp_proxy` (and so never the app).

use super::{Envoy, Shared};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;
use std::rc::Rc;
use wasmesh_authz::view::HostView;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No byte from the client yet.
    Undecided,
    Allowed,
    /// Closed by the filter; nothing more is passed on.
    Denied,
}

/// One per connection.
pub struct AuthzTcp {
    /// `None` when the module is not configured as a network authorization filter: every
    /// connection is refused.
    shared: Option<Rc<Shared>>,
    state: State,
}

impl AuthzTcp {
    pub fn new(shared: Option<Rc<Shared>>) -> AuthzTcp {
        AuthzTcp { shared, state: State::Undecided }
    }
}

impl Context for AuthzTcp {}

impl StreamContext for AuthzTcp {
    /// Envoy's network RBAC decides on the first data, not here: the TLS handshake (and with it
    /// the peer certificate) is not done when the connection is accepted.
    fn on_new_connection(&mut self) -> Action {
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Undecided {
            self.state = self.decide();
            if self.state == State::Denied {
                if let Err(e) = hostcalls::close_downstream() {
                    wasmesh_proxy::log_error(&format!(
                        "wasmesh authz: cannot close a denied connection: {}",
                        wasmesh_proxy::status_text(e)
                    ));
                }
            }
        }
        match self.state {
            State::Allowed => Action::Continue,
            // Held back: the bytes never reach tcp_proxy (and so never the app).
            State::Undecided | State::Denied => Action::Pause,
        }
    }

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Denied {
            Action::Pause
        } else {
            Action::Continue
        }
    }
}

impl AuthzTcp {
    /// Evaluates the connection (PeerAuthentication, a bad CUSTOM provider, AUDIT/DENY/ALLOW).
    fn decide(&self) -> State {
        let Some(shared) = &self.shared else {
            wasmesh_proxy::log_error("wasmesh authz: not configured for TCP; closing the connection");
            return State::Denied;
        };
        let view = HostView::new(Envoy, &shared.authz);
        let (verdict, peer_authn) = shared.authz.on_connection(&view);
        if peer_authn {
            shared.metrics.peer_authn_denied.bump();
        }
        shared.metrics.account(&shared.authz, &verdict);
        if verdict.allowed {
            State::Allowed
        } else {
            wasmesh_proxy::log_debug(&format!("wasmesh authz: closing TCP connection: {}", verdict.explain()));
            State::Denied
        }
    }
}
