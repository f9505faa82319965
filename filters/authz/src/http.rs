//! The HTTP phase: per request, Istio's chain as the core orders it (PeerAuthentication,
//! CUSTOM, AUDIT/DENY/ALLOW). A CUSTOM check is sent on the request's stream and the phase waits
//! ([`Flow::Pause`]); the provider's answer comes to [`PhaseRequest::http_call_response`], whose
//! [`Flow`] the driver acts on (it resumes the request, or the phase answered it).

use super::metrics::RuleOutcome;
use super::{Shared, StreamHost};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::rc::Rc;
use wasmesh_authz::decision::RequestStep;
use wasmesh_authz::ext_authz::{
    add_body_headers, body_step, check_body, on_check_response, on_check_unsent, BodyStep, CheckAction, CheckBody,
    CheckOutcome, CheckResult, Mutation, TOO_LARGE_BODY, TOO_LARGE_STATUS,
};
use wasmesh_authz::ext_authz_grpc::{self as grpc, CheckInputs};
use wasmesh_authz::view::HostView;
use wasmesh_authz::{Provider, Reason, RuleId, RuleRef, Transport, Verdict, DENY_BODY, DENY_STATUS};
use wasmesh_proxy::phase::{Flow, PhaseRequest};
use wasmesh_proxy::stream::Stream;

/// Largest gRPC `CheckResponse` read (Envoy's gRPC client default message limit is 4 MiB; a
/// larger answer is a provider error here).
pub const MAX_CHECK_RESPONSE_MESSAGE_BYTES: usize = 1024 * 1024;

/// One per request.
pub struct AuthzRequest {
    shared: Rc<Shared>,
    /// The CUSTOM check in flight: its token, the rule that asked for it and the provider's
    /// place in the CUSTOM chain.
    pending: Option<(u32, RuleId, usize)>,
    /// Response header changes from the provider's OK answer.
    allow_response_headers: Vec<Mutation>,
    /// The request body kept for `includeRequestBodyInCheck` (only with a body cap, `Authz::body_cap`).
    body: BodyCopy,
}

/// What a request's body is to its CUSTOM checks (`includeRequestBodyInCheck`): Envoy hands the
/// filter the body while the headers are held; the first `body_cap` bytes are kept.
#[derive(Default)]
struct BodyCopy {
    /// The body is read (a body follows the headers and a provider may want it); false once
    /// no check needs it any more.
    reading: bool,
    /// No more body comes (end of stream or trailers).
    ended: bool,
    /// Body bytes Envoy has buffered so far.
    received: usize,
    /// The first bytes of it, at most the filter's body cap.
    bytes: Vec<u8>,
    /// The check that waits for the body: rule, provider index, check headers.
    waiting: Option<WaitingCheck>,
}

/// A check waiting for the body: its rule, the provider's place in the CUSTOM chain, its headers.
type WaitingCheck = (RuleId, usize, Vec<(String, String)>);

impl AuthzRequest {
    pub fn new(shared: Rc<Shared>) -> AuthzRequest {
        AuthzRequest { shared, pending: None, allow_response_headers: Vec::new(), body: BodyCopy::default() }
    }

    /// After a step: the body is read on only while a check is (or may be) still to come.
    fn settle(&mut self, flow: Flow) -> Flow {
        if flow != Flow::Pause {
            self.body.reading = false;
        }
        flow
    }

    /// A piece of body (`body_size` bytes buffered in all) or the trailers (`None`).
    fn on_body(&mut self, s: &Stream, body_size: Option<usize>, end_of_stream: bool) -> Flow {
        if !self.body.reading {
            return Flow::Continue;
        }
        let cap = self.shared.authz.body_cap();
        if let Some(size) = body_size {
            self.body.received = size;
            let have = self.body.bytes.len();
            let want = size.min(cap);
            if want > have {
                if let Ok(Some(more)) = hostcalls::get_buffer(BufferType::HttpRequestBody, have, want - have) {
                    self.body.bytes.extend_from_slice(more.get(..want - have).unwrap_or(&more));
                }
            }
        }
        if end_of_stream || body_size.is_none() {
            self.body.ended = true;
        }
        let Some((rule, index, headers)) = self.body.waiting.take() else { return Flow::Pause };
        let shared = self.shared.clone();
        let Some(provider) = shared.authz.custom_provider(index) else {
            s.send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            return self.settle(Flow::Answered);
        };
        let rule = RuleRef { id: rule, name: shared.authz.rule_name(rule).unwrap_or_default() };
        let flow = self.dispatch(s, &shared, provider, rule, headers, index);
        self.settle(flow)
    }
}

impl PhaseRequest for AuthzRequest {
    fn request_headers(&mut self, s: &Stream, end_of_stream: bool) -> Flow {
        let shared = self.shared.clone();
        if shared.authz.body_cap() > 0 {
            // Envoy's ext_authz buffers no body for a request without one or for an upgrade.
            self.body.reading = !end_of_stream && !is_upgrade(s);
            self.body.ended = !self.body.reading;
        }
        let view = HostView::new(StreamHost(s), &shared.authz);
        let step = shared.authz.on_request(&view);
        let flow = self.step(s, &shared, step);
        self.settle(flow)
    }

    fn wants_body(&self) -> bool {
        self.body.reading
    }

    // Otherwise body and trailers need nothing: the driver holds them while a check is in flight.
    fn request_body(&mut self, s: &Stream, body_size: usize, end_of_stream: bool) -> Flow {
        self.on_body(s, Some(body_size), end_of_stream)
    }

    fn request_trailers(&mut self, s: &Stream) -> Flow {
        self.on_body(s, None, true)
    }

    fn response_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        for m in std::mem::take(&mut self.allow_response_headers) {
            match m {
                Mutation::Set(k, v) => s.set_response_header(&k, &v),
                Mutation::Add(k, v) => s.add_response_header(&k, &v),
                _ => false,
            };
        }
        Flow::Continue
    }

    /// The gRPC provider's answer to the check sent by [`AuthzRequest::dispatch`].
    fn grpc_call_response(
        &mut self,
        s: &Stream,
        token_id: u32,
        status_code: u32,
        response_size: usize,
    ) -> Option<Flow> {
        self.answer(s, token_id, |provider| {
            let message = if status_code != 0 || response_size > MAX_CHECK_RESPONSE_MESSAGE_BYTES {
                None
            } else if response_size == 0 {
                Some(Vec::new())
            } else {
                hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size).ok().flatten()
            };
            grpc::on_check_response(provider, status_code, message.as_deref())
        })
    }

    /// The HTTP provider's answer to the check sent by [`AuthzRequest::dispatch`].
    fn http_call_response(
        &mut self,
        s: &Stream,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) -> Option<Flow> {
        self.answer(s, token_id, |provider| {
            let headers = if num_headers == 0 {
                Vec::new()
            } else {
                hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default()
            };
            let read_body = |n: usize| hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, n).ok().flatten();
            on_check_response(provider, &headers, body_size, read_body)
        })
    }
}

/// Counts the verdict and acts on it.
fn finish(s: &Stream, shared: &Shared, v: &Verdict<'_>) -> Flow {
    shared.metrics.account(&shared.authz, v);
    if v.allowed {
        Flow::Continue
    } else {
        s.send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
        Flow::Answered
    }
}

impl AuthzRequest {
    /// Acts on the core's next step: a decision, nothing more, or a check to send.
    fn step(&mut self, s: &Stream, shared: &Shared, step: RequestStep<'_>) -> Flow {
        match step {
            RequestStep::Decided { verdict, peer_authn } => {
                if peer_authn {
                    shared.metrics.peer_authn_denied.bump();
                }
                finish(s, shared, &verdict)
            }
            RequestStep::Continue => Flow::Continue,
            RequestStep::Check { provider, rule, headers, index } => {
                shared.metrics.rule(RuleOutcome::Custom, rule.id);
                match headers {
                    Ok(headers) => self.dispatch(s, shared, provider, rule, headers, index),
                    // The check request cannot be built: fail closed.
                    Err(m) => finish(s, shared, &Verdict::deny(Reason::Missing(m))),
                }
            }
        }
    }

    /// The answer to this request's check (`None`: another call's), read by `read` from the
    /// provider's response and acted on.
    fn answer(&mut self, s: &Stream, token_id: u32, read: impl FnOnce(&Provider) -> CheckOutcome) -> Option<Flow> {
        let (token, rule, index) = self.pending?;
        if token != token_id {
            return None;
        }
        self.pending = None;
        let shared = self.shared.clone();
        let authz = &shared.authz;
        let rule = RuleRef { id: rule, name: authz.rule_name(rule).unwrap_or_default() };
        let Some(provider) = authz.custom_provider(index) else {
            wasmesh_proxy::log_debug(&format!("wasmesh authz: {DENY_STATUS}: no provider"));
            shared.metrics.custom_denied(rule);
            s.send_response(DENY_STATUS, &[], Some(DENY_BODY.as_bytes()));
            return Some(Flow::Answered);
        };
        let outcome = read(provider);
        let flow = self.apply(s, &shared, provider, rule, index, outcome);
        Some(self.settle(flow))
    }

    /// Sends the check request; the request waits for [`PhaseRequest::http_call_response`] or
    /// [`PhaseRequest::grpc_call_response`].
    fn dispatch(
        &mut self,
        s: &Stream,
        shared: &Shared,
        provider: &Provider,
        rule: RuleRef<'_>,
        mut headers: Vec<(String, String)>,
        index: usize,
    ) -> Flow {
        let mut body: Option<CheckBody> = None;
        if let Some(cfg) = &provider.body {
            if shared.authz.body_cap() == 0 {
                // Configured by hand without `requestBody`: Envoy does not hand the filter the
                // body while it holds the headers, so the check cannot carry it. Fail closed.
                wasmesh_proxy::log_warn(&format!(
                    "wasmesh authz: CUSTOM provider {}: includeRequestBodyInCheck needs the filter's requestBody and Envoy's allow_on_headers_stop_iteration (wasmeshctl sets both); denying",
                    provider.name
                ));
                let reason = "includeRequestBodyInCheck without requestBody";
                return finish(s, shared, &Verdict::deny(Reason::BadCustom { rule, reason }));
            }
            if self.body.reading || self.body.received > 0 {
                // No more body comes when reading stopped (a check before this one took it).
                let ended = self.body.ended || !self.body.reading;
                let mut step = body_step(cfg, self.body.received, ended, false);
                if step == BodyStep::TooLarge && !is_http1(s) {
                    step = body_step(cfg, self.body.received, ended, true);
                }
                match step {
                    BodyStep::Wait => {
                        self.body.waiting = Some((rule.id, index, headers));
                        return Flow::Pause;
                    }
                    BodyStep::TooLarge => {
                        wasmesh_proxy::log_debug(&format!(
                            "wasmesh authz: {TOO_LARGE_STATUS}: request body past maxRequestBytes of CUSTOM provider {}",
                            provider.name
                        ));
                        s.send_response(TOO_LARGE_STATUS, &[], Some(TOO_LARGE_BODY.as_bytes()));
                        return Flow::Answered;
                    }
                    BodyStep::Send => {
                        let b = check_body(cfg, &self.body.bytes, self.body.received);
                        add_body_headers(provider, &mut headers, &b);
                        body = Some(b);
                    }
                }
            }
        }
        let sent = match provider.transport {
            Transport::Http => {
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let bytes = body.as_ref().map(|b| b.bytes.as_slice()).filter(|b| !b.is_empty());
                s.dispatch_http_call(&provider.cluster, &headers, bytes, provider.timeout)
            }
            Transport::Grpc => {
                let mut inputs = check_inputs(s, headers);
                inputs.body = body;
                let message = grpc::check_request(&inputs);
                s.dispatch_grpc_call(
                    &grpc::grpc_service(provider),
                    grpc::SERVICE,
                    grpc::METHOD,
                    &message,
                    provider.timeout,
                )
            }
        };
        match sent {
            Ok(token) => {
                self.pending = Some((token, rule.id, index));
                Flow::Pause
            }
            Err(e) => {
                let outcome = on_check_unsent(provider, &wasmesh_proxy::status_text(e));
                self.apply(s, shared, provider, rule, index, outcome)
            }
        }
    }

    /// Acts on the provider's answer (or on its absence): [`Flow::Continue`] lets the request
    /// go on (the driver resumes it when it waited), [`Flow::Answered`] when it was denied.
    fn apply(
        &mut self,
        s: &Stream,
        shared: &Shared,
        provider: &Provider,
        rule: RuleRef<'_>,
        index: usize,
        outcome: CheckOutcome,
    ) -> Flow {
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
                // Through the stream: Envoy gets the change and later phases see it.
                for change in &request {
                    apply_request_change(s, change);
                }
                self.allow_response_headers.extend(response_headers);
                // Read after the provider's headers were applied: the next CUSTOM provider's
                // rules and ALLOW/DENY see them, as in Istio.
                let view = HostView::new(StreamHost(s), &shared.authz);
                let step = shared.authz.after_allow(&view, index);
                self.step(s, shared, step)
            }
            CheckAction::Deny { status, headers, body, why } => {
                wasmesh_proxy::log_debug(&format!("wasmesh authz: {status}: {why}"));
                m.custom_denied(rule);
                let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                s.send_response(status, &headers, body.as_deref());
                Flow::Answered
            }
        }
    }
}

/// One change of the provider's OK answer to the request, as Envoy's ext_authz filter makes it.
fn apply_request_change(s: &Stream, change: &Mutation) {
    let present = |k: &str| s.request_header(k).ok().flatten();
    match change {
        Mutation::Set(k, v) => {
            s.set_request_header(k, v);
        }
        Mutation::Add(k, v) => {
            s.add_request_header(k, v);
        }
        Mutation::Append(k, v) => {
            // Envoy's `appendCopy`: `existing,value` on a present header; nothing otherwise.
            if let Some(mut old) = present(k) {
                old.push(b',');
                old.extend_from_slice(v);
                s.set_request_header(k, &old);
            }
        }
        Mutation::AddIfAbsent(k, v) => {
            if present(k).is_none() {
                s.add_request_header(k, v);
            }
        }
        Mutation::OverwriteIfExists(k, v) => {
            if present(k).is_some() {
                s.set_request_header(k, v);
            }
        }
        Mutation::Remove(k) => {
            s.remove_request_header(k);
        }
    }
}

/// Whether the request came over HTTP/1 (read only when its body is past a provider's limit).
fn is_http1(s: &Stream) -> bool {
    s.property_or_none(&["request", "protocol"]).is_none_or(|p| p.starts_with(b"HTTP/1"))
}

/// Whether the request is an upgrade (WebSocket, or HTTP/2 extended CONNECT): Envoy's ext_authz
/// buffers no body for one.
fn is_upgrade(s: &Stream) -> bool {
    let h = |k: &str| s.request_header(k).ok().flatten();
    h("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"))
        || (h(":method").is_some_and(|m| m == b"CONNECT") && h(":protocol").is_some())
}

/// The attributes of a gRPC check, read from the stream (Envoy's `CheckRequestUtils`).
fn check_inputs(s: &Stream, headers: Vec<(String, String)>) -> CheckInputs {
    let values = s.properties(&[
        &["source", "address"],
        &["destination", "address"],
        &["request", "time"],
        &["request", "protocol"],
        &["connection", "uri_san_peer_certificate"],
        &["connection", "dns_san_peer_certificate"],
        &["connection", "subject_peer_certificate"],
        &["connection", "uri_san_local_certificate"],
        &["connection", "dns_san_local_certificate"],
        &["connection", "subject_local_certificate"],
    ]);
    let text = |i: usize| -> Option<String> {
        values.get(i).cloned().flatten().and_then(|b| String::from_utf8(b).ok()).filter(|t| !t.is_empty())
    };
    let principal = |from: usize| (from..from + 3).find_map(text).unwrap_or_default();
    let id = headers.iter().find(|(k, _)| k == "x-request-id").map(|(_, v)| grpc::stream_id(v)).unwrap_or_default();
    CheckInputs {
        source_address: text(0),
        destination_address: text(1),
        time_nanos: values.get(2).cloned().flatten().and_then(|b| wasmesh_proxy::decode_u64(&b)),
        protocol: text(3).unwrap_or_default(),
        source_principal: principal(4),
        destination_principal: principal(7),
        // Envoy's ext_authz sends `tls_session` only with `include_tls_session`, which istiod
        // never sets (checked side by side over mutual TLS with SNI, e2e `ext_authz.rs`).
        sni: None,
        id,
        headers,
        body: None,
    }
}
