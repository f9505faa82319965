//! The network authorization filter of a TCP port (`stage: tcp`), Istio's network RBAC and
//! network ext_authz: it decides on the connection's first bytes from the client — when the TLS
//! handshake is done and the peer certificate is known, as Envoy's network RBAC and ext_authz
//! filters do — and closes a denied connection, whose bytes never reach `tcp_proxy` (and so never
//! the app).
//!
//! A CUSTOM rule of an `envoyExtAuthzGrpc` provider that matches the connection sends the
//! provider a gRPC `Check` (Envoy's `createTcpCheck`) and holds the client's bytes until the
//! answer: OK (or an error with `failOpen`) goes on with the rest of the chain and resumes the
//! connection; a denial or an error without `failOpen` (the call's `timeout` included) closes it.

use super::{Envoy, Shared};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::{Action, BufferType, PeerType};
use std::rc::Rc;
use wasmesh_authz::decision::ConnectionStep;
use wasmesh_authz::ext_authz::{on_check_unsent, CheckAction, CheckOutcome, CheckResult};
use wasmesh_authz::ext_authz_grpc::{self as grpc, TcpCheckInputs};
use wasmesh_authz::view::HostView;
use wasmesh_authz::{RuleId, RuleRef, Verdict};

/// Largest gRPC `CheckResponse` read (as the HTTP phase; a larger answer is a provider error).
const MAX_CHECK_RESPONSE_MESSAGE_BYTES: usize = super::http::MAX_CHECK_RESPONSE_MESSAGE_BYTES;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No byte from the client yet.
    Undecided,
    /// A CUSTOM check is in flight: its token, the rule that asked, the provider's place in the
    /// CUSTOM chain. The client's bytes are held.
    Checking {
        token: u32,
        rule: RuleId,
        index: usize,
    },
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

impl Context for AuthzTcp {
    /// The provider's answer to the connection's check (`status_code` 0 with the message, or
    /// the call's failure: unreachable, timed out, a gRPC error status).
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let State::Checking { token, rule, index } = self.state else { return };
        if token != token_id {
            return;
        }
        let Some(shared) = self.shared.clone() else { return };
        let message = if status_code != 0 || response_size > MAX_CHECK_RESPONSE_MESSAGE_BYTES {
            None
        } else if response_size == 0 {
            Some(Vec::new())
        } else {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size).ok().flatten()
        };
        let outcome = match shared.authz.custom_provider(index) {
            Some(provider) => grpc::on_check_response(provider, status_code, message.as_deref()),
            None => {
                // Fail closed: a check whose provider is gone closes the connection.
                self.deny_after_check(&shared, rule, "no provider");
                self.state = State::Denied;
                close();
                return;
            }
        };
        self.state = self.apply(&shared, rule, index, outcome);
        match self.state {
            State::Allowed => {
                if let Err(e) = hostcalls::resume_downstream() {
                    wasmesh_proxy::log_error(&format!(
                        "wasmesh authz: cannot resume an allowed connection: {}",
                        wasmesh_proxy::status_text(e)
                    ));
                }
            }
            State::Denied => close(),
            State::Undecided | State::Checking { .. } => {}
        }
    }
}

impl StreamContext for AuthzTcp {
    /// Envoy's network RBAC and ext_authz decide on the first data, not here: the TLS handshake
    /// (and with it the peer certificate) is not done when the connection is accepted.
    fn on_new_connection(&mut self) -> Action {
        Action::Continue
    }

    fn on_downstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Undecided {
            self.state = self.decide();
            if self.state == State::Denied {
                close();
            }
        }
        match self.state {
            State::Allowed => Action::Continue,
            // Held back: the bytes never reach tcp_proxy (and so never the app) until the
            // provider allows; Envoy keeps them in the connection's read buffer.
            State::Undecided | State::Checking { .. } | State::Denied => Action::Pause,
        }
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {
        // Envoy's network ext_authz cancels the check of a connection that goes away.
        if let State::Checking { token, .. } = self.state {
            let _ = hostcalls::cancel_grpc_call(token);
            self.state = State::Denied;
        }
    }

    fn on_upstream_data(&mut self, _data_size: usize, _end_of_stream: bool) -> Action {
        if self.state == State::Allowed {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}

fn close() {
    if let Err(e) = hostcalls::close_downstream() {
        wasmesh_proxy::log_error(&format!(
            "wasmesh authz: cannot close a denied connection: {}",
            wasmesh_proxy::status_text(e)
        ));
    }
}

impl AuthzTcp {
    /// Evaluates the connection (PeerAuthentication, CUSTOM, AUDIT/DENY/ALLOW) on its first
    /// bytes.
    fn decide(&self) -> State {
        let Some(shared) = &self.shared else {
            wasmesh_proxy::log_error("wasmesh authz: not configured for TCP; closing the connection");
            return State::Denied;
        };
        let view = HostView::new(Envoy, &shared.authz);
        let step = shared.authz.on_connection_step(&view);
        self.step(shared, step)
    }

    /// Acts on a step: a decision, or a check sent to the provider.
    fn step(&self, shared: &Shared, step: ConnectionStep<'_>) -> State {
        match step {
            ConnectionStep::Decided { verdict, peer_authn } => {
                if peer_authn {
                    shared.metrics.peer_authn_denied.bump();
                }
                finish(shared, &verdict)
            }
            ConnectionStep::Check { provider, rule, index } => {
                let message = grpc::tcp_check_request(&check_inputs());
                let sent = hostcalls::dispatch_grpc_call(
                    &grpc::grpc_service(provider),
                    grpc::SERVICE,
                    grpc::METHOD,
                    Vec::new(),
                    Some(&message),
                    provider.timeout,
                );
                match sent {
                    Ok(token) => State::Checking { token, rule: rule.id, index },
                    Err(e) => {
                        let outcome = on_check_unsent(provider, &wasmesh_proxy::status_text(e));
                        self.apply(shared, rule.id, index, outcome)
                    }
                }
            }
        }
    }

    /// The provider's answer (or its absence): OK or an error with `failOpen` goes on with the
    /// chain; a denial or an error without `failOpen` closes the connection (Envoy's
    /// `Filter::onComplete`).
    fn apply(&self, shared: &Shared, rule: RuleId, index: usize, outcome: CheckOutcome) -> State {
        let m = &shared.metrics;
        match outcome.result {
            CheckResult::Ok => m.custom_ok.bump(),
            CheckResult::Denied => m.custom_denied.bump(),
            CheckResult::Error => m.custom_error.bump(),
        }
        let provider = shared.authz.custom_provider(index).map(|p| p.name.as_str()).unwrap_or_default();
        if let Some(error) = &outcome.error {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh authz: CUSTOM provider {provider} failed on a TCP connection ({error}); {}",
                if matches!(outcome.action, CheckAction::Allow { .. }) { "failOpen: allowing" } else { "closing it" }
            ));
        }
        match outcome.action {
            CheckAction::Allow { .. } => {
                let view = HostView::new(Envoy, &shared.authz);
                let step = shared.authz.after_connection_allow(&view, index);
                self.step(shared, step)
            }
            CheckAction::Deny { why, .. } => {
                self.deny_after_check(shared, rule, why);
                State::Denied
            }
        }
    }

    fn deny_after_check(&self, shared: &Shared, rule: RuleId, why: &str) {
        let rule = RuleRef { id: rule, name: shared.authz.rule_name(rule).unwrap_or_default() };
        wasmesh_proxy::log_debug(&format!("wasmesh authz: closing TCP connection: {why} ({})", rule.name));
        shared.metrics.custom_denied(rule);
    }
}

/// Counts a decision; the state it leaves the connection in.
fn finish(shared: &Shared, verdict: &Verdict<'_>) -> State {
    shared.metrics.account(&shared.authz, verdict);
    if verdict.allowed {
        State::Allowed
    } else {
        wasmesh_proxy::log_debug(&format!("wasmesh authz: closing TCP connection: {}", verdict.explain()));
        State::Denied
    }
}

/// The attributes of a TCP check, read from the connection (Envoy's `createTcpCheck`).
fn check_inputs() -> TcpCheckInputs {
    let text = |path: &[&str]| -> Option<String> {
        wasmesh_proxy::try_property(path)
            .ok()
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|t| !t.is_empty())
    };
    let principal = |side: &str| {
        ["uri_san", "dns_san", "subject"]
            .iter()
            .find_map(|k| text(&["connection", &format!("{k}_{side}_certificate")]))
            .unwrap_or_default()
    };
    TcpCheckInputs {
        source_address: text(&["source", "address"]),
        destination_address: text(&["destination", "address"]),
        source_principal: principal("peer"),
        destination_principal: principal("local"),
        sni: text(&["connection", "requested_server_name"]).unwrap_or_default(),
    }
}
