//! The HTTP filter: per request, Istio's chain as the core orders it (PeerAuthentication,
//! CUSTOM, AUDIT/DENY/ALLOW). A CUSTOM check pauses the request, sends the check the core built
//! and resumes or answers when the provider's answer arrives (below the request path).

use super::metrics::RuleOutcome;
use super::{Envoy, Shared};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;
use wasmesh_authz::decision::RequestStep;
use wasmesh_authz::ext_authz::{on_check_response, on_check_unsent, CheckAction, CheckOutcome, CheckResult, Mutation};
use wasmesh_authz::view::HostView;
use wasmesh_authz::{Provider, Reason, RuleId, RuleRef, Verdict, DENY_BODY, DENY_STATUS};

/// One per request.
pub struct AuthzHttp {
    /// `None` when the plugin is not an HTTP authorization filter: every request is denied.
    shared: Option<Rc<Shared>>,
    /// The CUSTOM check in flight: its token and the rule that asked for it.
    pending: Option<(u32, RuleId)>,
    /// `headersToDownstreamOnAllow` from the provider, added to the response.
    allow_response_headers: Vec<(String, Vec<u8>)>,
}

impl AuthzHttp {
    pub fn new(shared: Option<Rc<Shared>>) -> AuthzHttp {
        AuthzHttp { shared, pending: None, allow_response_headers: Vec::new() }
    }
}

impl HttpContext for AuthzHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            return Action::Pause;
        };
        let view = HostView::new(Envoy, &shared.authz);
        match shared.authz.on_request(&view) {
            RequestStep::Decided { verdict, peer_authn } => {
                if peer_authn {
                    shared.metrics.peer_authn_denied.bump();
                }
                finish(&shared, &verdict)
            }
            RequestStep::Continue => Action::Continue,
            RequestStep::Check { provider, rule, headers } => {
                shared.metrics.rule(RuleOutcome::Custom, rule.id);
                match headers {
                    Ok(headers) => self.dispatch(&shared, provider, rule, &headers),
                    // The check request cannot be built: fail closed.
                    Err(m) => finish(&shared, &Verdict::deny(Reason::Missing(m))),
                }
            }
        }
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

/// Counts the verdict and acts on it.
fn finish(shared: &Shared, v: &Verdict<'_>) -> Action {
    shared.metrics.account(&shared.authz, v);
    if v.allowed {
        Action::Continue
    } else {
        wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
        Action::Pause
    }
}

impl AuthzHttp {
    /// Sends the check request; the request waits for [`Context::on_http_call_response`].
    fn dispatch(
        &mut self,
        shared: &Shared,
        provider: &Provider,
        rule: RuleRef<'_>,
        headers: &[(String, String)],
    ) -> Action {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match hostcalls::dispatch_http_call(&provider.cluster, headers, None, Vec::new(), provider.timeout) {
            Ok(token) => {
                self.pending = Some((token, rule.id));
                Action::Pause
            }
            Err(e) => {
                let outcome = on_check_unsent(provider, &wasmesh_proxy::status_text(e));
                self.apply(shared, provider, rule, outcome, false)
            }
        }
    }

    /// Acts on the provider's answer (or on its absence). `resume`: the request is paused
    /// waiting for the answer and must be resumed when it goes on.
    fn apply(
        &mut self,
        shared: &Shared,
        provider: &Provider,
        rule: RuleRef<'_>,
        outcome: CheckOutcome,
        resume: bool,
    ) -> Action {
        let m = &shared.metrics;
        match outcome.result {
            CheckResult::Ok => m.custom_ok.bump(),
            CheckResult::Denied => m.custom_denied.bump(),
            CheckResult::Error => m.custom_error.bump(),
        }
        if outcome.headers_dropped > 0 || outcome.body_truncated {
            m.custom_truncated.bump();
            wasmesh_proxy::log_warn(&format!(
                "wasmesh authz: CUSTOM provider {}: answer past the filter's bounds ({} headers ignored, body truncated: {})",
                provider.name, outcome.headers_dropped, outcome.body_truncated
            ));
        }
        if let Some(error) = &outcome.error {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh authz: CUSTOM provider {} failed ({error}); {}",
                provider.name,
                if provider.fail_open { "failOpen: allowing" } else { "denying" }
            ));
        }
        match outcome.action {
            CheckAction::Allow { request, response_headers } => {
                for change in &request {
                    match change {
                        Mutation::Set(k, v) => wasmesh_proxy::set_request_header(k, v),
                        Mutation::Remove(k) => wasmesh_proxy::remove_request_header(k),
                    };
                }
                self.allow_response_headers.extend(response_headers);
                // Read after the provider's headers were applied: ALLOW/DENY see them, as in Istio.
                let view = HostView::new(Envoy, &shared.authz);
                let action = match shared.authz.after_check(&view) {
                    Some(v) => finish(shared, &v),
                    None => Action::Continue,
                };
                if resume && matches!(action, Action::Continue) {
                    let _ = hostcalls::resume_http_request();
                }
                action
            }
            CheckAction::Deny { status, headers, body, why } => {
                wasmesh_proxy::log_debug(&format!("wasmesh authz: {status}: {why}"));
                m.custom_denied(rule);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                wasmesh_proxy::send_response(status, &headers, body.as_deref());
                Action::Pause
            }
        }
    }
}

impl Context for AuthzHttp {
    /// The provider's answer to the check sent by [`AuthzHttp::dispatch`].
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(shared) = self.shared.clone() else { return };
        let Some((token, rule)) = self.pending.take() else { return };
        if token != token_id {
            return;
        }
        let authz = &shared.authz;
        let name = authz.rule_name(rule).unwrap_or_default();
        let rule = RuleRef { id: rule, name };
        let Some(provider) = authz.provider() else {
            wasmesh_proxy::log_debug(&format!("wasmesh authz: {DENY_STATUS}: no provider"));
            shared.metrics.custom_denied(rule);
            wasmesh_proxy::send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            return;
        };
        let headers = if num_headers == 0 {
            Vec::new()
        } else {
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
        };
        let read_body = |n: usize| hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n).ok().flatten();
        let outcome = on_check_response(provider, &headers, body_size, read_body);
        self.apply(&shared, provider, rule, outcome, true);
    }
}
