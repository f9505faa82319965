//! wasmesh oidc: OIDC login at the gateway (authorization code flow with PKCE, sealed session
//! cookie), the decisions in `wasmesh-oidc`; this adapter reads the request, calls the provider
//! and applies the decision.
//!
//! Root side: the discovery document (unless inline) and the JWKS are fetched through the
//! configured provider cluster on ticks, the JWKS again every [`JWKS_REFRESH`]. Until both are
//! known a request that needs a login decision waits, paused in Envoy, at most `readyWaitMs`
//! (and at most [`MAX_WAITERS`] of them per VM), and is decided as soon as the provider is
//! known; one that waited longer gets 503 with `Retry-After` (fail closed). Bypass paths pass.
//! Two phases do this: [`Gate`] pauses the request, the root side resumes it into [`OidcPhase`],
//! which decides every request.
//!
//! Request side: client-sent `claimHeaders` are removed from every request first. A code
//! exchange or refresh is a call on the stream's behalf (`dispatch_http_call`), the request
//! paused meanwhile. No answer within `timeoutMs`, a non-200 or an answer that does not parse: an
//! error page, the request never goes upstream. An ID token signed with a `kid` the JWKS does not
//! have makes the request fetch the JWKS again once (at most once per [`JWKS_REFETCH_MIN`] per
//! VM: the provider rotated its keys) before it is decided.
//! Log lines name what failed, never a token, code, cookie or secret.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasmesh_oidc::flow::{Decision, Pending, Reply};
use wasmesh_oidc::{Discovery, Oidc, OidcConfig, Provider, Request};
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::Stream;

/// Ticks while the provider is not known yet (and after a failed fetch, with back-off).
const FAST_TICK: Duration = Duration::from_millis(200);
/// How often the JWKS is fetched again once known (new signing keys of the provider).
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Largest provider answer read (discovery, JWKS, token endpoint).
const MAX_BODY: usize = 256 * 1024;
/// Longest back-off between failed fetches.
const MAX_BACKOFF_MS: u64 = 30_000;
/// Most requests waiting for the provider at once per VM; more get 503 at once.
pub const MAX_WAITERS: usize = 256;
/// Least time between two JWKS fetches asked for by an unknown `kid`.
pub const JWKS_REFETCH_MIN: Duration = Duration::from_secs(10);

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh oidc", build))
}

pub fn build(config: &[u8], resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let cfg = OidcConfig::parse_json(config)?;
    let discovery = cfg.inline_discovery()?;
    let oidc = Oidc::new(cfg)?;
    wasmesh_proxy::log_info(&format!(
        "wasmesh oidc: configured client {:?} of {:?}, callback {}",
        oidc.config.client_id,
        oidc.config.issuer,
        oidc.callback_path()
    ));
    let phase = Rc::new(OidcPhase {
        oidc: Rc::new(oidc),
        state: RefCell::new(Fetching { discovery, provider: None, call: None, next_ms: 0, failures: 0 }),
        waiting: RefCell::new(Vec::new()),
        resumer: resumer.clone(),
        last_refetch_ms: std::cell::Cell::new(0),
    });
    Ok(vec![Rc::new(Gate(phase.clone())), phase])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Discovery,
    Jwks,
}

struct Fetching {
    discovery: Option<Discovery>,
    provider: Option<Rc<Provider>>,
    call: Option<(u32, Fetch)>,
    next_ms: u64,
    failures: u32,
}

struct OidcPhase {
    oidc: Rc<Oidc>,
    state: RefCell<Fetching>,
    /// Requests paused until the provider is known: (context id, since when, ms).
    waiting: RefCell<Vec<(u32, u64)>>,
    resumer: Resumer,
    /// When an unknown `kid` last made a request fetch the JWKS (ms).
    last_refetch_ms: std::cell::Cell<u64>,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl OidcPhase {
    fn dispatch(&self, url: &str) -> Option<u32> {
        let (_, authority, path) = wasmesh_oidc::url::split(url)?;
        let headers =
            vec![(":method", "GET"), (":path", path), (":authority", authority), ("accept", "application/json")];
        hostcalls::dispatch_http_call(
            &self.oidc.config.provider_cluster,
            headers,
            None,
            Vec::new(),
            Duration::from_millis(self.oidc.config.timeout_ms),
        )
        .ok()
    }

    fn provider(&self) -> Option<Rc<Provider>> {
        self.state.try_borrow().ok().and_then(|st| st.provider.clone())
    }

    /// Resumes the waiting requests once the provider is known, and those that waited longer
    /// than `readyWaitMs` (the next phase answers them 503).
    fn wake(&self) {
        let ready = self.provider().is_some();
        let now = now_ms();
        let limit = self.oidc.config.ready_wait_ms;
        let resume: Vec<u32> = {
            let Ok(mut w) = self.waiting.try_borrow_mut() else { return };
            let mut out = Vec::new();
            w.retain(|(id, since)| {
                if ready || now.saturating_sub(*since) >= limit {
                    out.push(*id);
                    false
                } else {
                    true
                }
            });
            out
        };
        for id in resume {
            if hostcalls::set_effective_context(id).is_ok() {
                self.resumer.resume(id, Flow::Continue);
            }
        }
    }

    /// Whether a request may fetch the JWKS again for an unknown `kid` now (and notes it did).
    fn may_refetch(&self) -> bool {
        let now = now_ms();
        let last = self.last_refetch_ms.get();
        let min = u64::try_from(JWKS_REFETCH_MIN.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < min {
            return false;
        }
        self.last_refetch_ms.set(now);
        true
    }

    /// New keys fetched by a request: the provider from now on.
    fn learn_keys(&self, keys: wasmesh_authn::jwks::KeySet) -> Option<Rc<Provider>> {
        let mut st = self.state.try_borrow_mut().ok()?;
        let discovery = st.provider.as_ref()?.discovery.clone();
        let p = Rc::new(Provider { discovery, keys });
        st.provider = Some(p.clone());
        Some(p)
    }

    fn failed(&self, st: &mut Fetching, what: &str) {
        st.failures = st.failures.saturating_add(1);
        let backoff = 500u64.saturating_mul(1u64 << st.failures.min(6)).min(MAX_BACKOFF_MS);
        st.next_ms = now_ms().saturating_add(backoff);
        wasmesh_proxy::log_warn(&format!("wasmesh oidc: {what}; retrying in {backoff} ms"));
    }
}

impl Phase for OidcPhase {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(OidcRequest { phase: self, waiting: None, set_cookies: Vec::new() })
    }

    fn tick_period(&self) -> Option<Duration> {
        let ready = self.state.try_borrow().map(|s| s.provider.is_some()).unwrap_or(false);
        Some(if ready { JWKS_REFRESH } else { FAST_TICK })
    }

    fn tick(&self) {
        self.wake();
        let Ok(mut st) = self.state.try_borrow_mut() else { return };
        if st.call.is_some() || now_ms() < st.next_ms {
            return;
        }
        let (url, what) = match &st.discovery {
            None => (self.oidc.config.discovery_url(), Fetch::Discovery),
            Some(d) => (d.jwks_uri.clone(), Fetch::Jwks),
        };
        match self.dispatch(&url) {
            Some(token) => st.call = Some((token, what)),
            None => self.failed(&mut st, "could not call the provider cluster"),
        }
    }

    fn root_http_call_response(&self, token_id: u32, num_headers: usize, body_size: usize) -> bool {
        let mine = self.fetched(token_id, num_headers, body_size);
        if mine {
            self.wake();
        }
        mine
    }
}

impl OidcPhase {
    fn fetched(&self, token_id: u32, _num_headers: usize, body_size: usize) -> bool {
        let Ok(mut st) = self.state.try_borrow_mut() else { return false };
        let Some((_, what)) = st.call.filter(|(t, _)| *t == token_id) else { return false };
        st.call = None;
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_BODY))
            .ok()
            .flatten()
            .unwrap_or_default();
        if status.as_deref() != Some("200") {
            self.failed(&mut st, &format!("{what:?} fetch answered {}", status.as_deref().unwrap_or("nothing")));
            return true;
        }
        match what {
            Fetch::Discovery => match Discovery::parse(&body, &self.oidc.config.issuer) {
                Ok(d) => {
                    st.discovery = Some(d);
                    st.failures = 0;
                    st.next_ms = 0;
                }
                Err(e) => self.failed(&mut st, &e),
            },
            Fetch::Jwks => match std::str::from_utf8(&body).ok().map(wasmesh_authn::jwks::parse_jwks) {
                Some(Ok(keys)) if !keys.keys.is_empty() => {
                    if let Some(discovery) = st.discovery.clone() {
                        if st.provider.is_none() {
                            wasmesh_proxy::log_info(&format!(
                                "wasmesh oidc: provider ready ({} keys)",
                                keys.keys.len()
                            ));
                        }
                        st.provider = Some(Rc::new(Provider { discovery, keys }));
                        st.failures = 0;
                        st.next_ms = now_ms().saturating_add(u64::try_from(JWKS_REFRESH.as_millis()).unwrap_or(0));
                    }
                }
                _ => self.failed(&mut st, "the JWKS has no usable key"),
            },
        }
        true
    }
}

/// The first oidc phase: while the provider is not known, a request that needs a login decision
/// waits here (paused) until the root side resumes it into [`OidcPhase`].
struct Gate(Rc<OidcPhase>);

struct GateRequest {
    phase: Rc<OidcPhase>,
    context_id: u32,
}

impl Phase for Gate {
    fn name(&self) -> &'static str {
        "oidc-wait"
    }

    fn start(self: Rc<Self>, context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(GateRequest { phase: self.0.clone(), context_id })
    }
}

impl PhaseRequest for GateRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let p = &self.phase;
        if p.provider().is_some() || p.oidc.config.ready_wait_ms == 0 {
            return Flow::Continue;
        }
        let path = header_text(s, ":path").unwrap_or_default();
        if p.oidc.bypassed(&Request { path: &path, ..Default::default() }) {
            return Flow::Continue;
        }
        let Ok(mut w) = p.waiting.try_borrow_mut() else { return Flow::Continue };
        if w.len() >= MAX_WAITERS {
            return Flow::Continue; // the next phase answers 503
        }
        w.push((self.context_id, now_ms()));
        Flow::Pause
    }
}

impl Drop for GateRequest {
    /// A request that goes away while waiting leaves the list.
    fn drop(&mut self) {
        if let Ok(mut w) = self.phase.waiting.try_borrow_mut() {
            w.retain(|(id, _)| *id != self.context_id);
        }
    }
}

/// What a request waits for.
enum Waiting {
    /// The token endpoint's answer.
    Token(Pending),
    /// The JWKS again (the ID token names an unknown `kid`), with the token answer to finish.
    Keys { pending: Pending, status: Option<u32>, body: Vec<u8> },
}

struct OidcRequest {
    phase: Rc<OidcPhase>,
    waiting: Option<(u32, Waiting, Rc<Provider>)>,
    /// `Set-Cookie` for the response of a forwarded request (a refreshed session).
    set_cookies: Vec<String>,
}

fn header_text(s: &Stream, name: &str) -> Option<String> {
    s.request_header(name).ok().flatten().and_then(|v| String::from_utf8(v).ok())
}

fn send(s: &Stream, r: &Reply) -> Flow {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    s.send_response(r.status, &headers, Some(r.body.as_bytes()));
    Flow::Answered
}

fn error_page(s: &Stream, status: u32, message: &str) -> Flow {
    send(
        s,
        &Reply {
            status,
            headers: vec![
                ("content-type".into(), "text/plain; charset=utf-8".into()),
                ("cache-control".into(), "no-store".into()),
            ],
            body: format!("{message}\n"),
        },
    )
}

impl OidcRequest {
    fn apply(&mut self, s: &Stream, decision: Decision, provider: Rc<Provider>) -> Flow {
        match decision {
            Decision::Pass => Flow::Continue,
            Decision::Reply(r) => send(s, &r),
            Decision::Forward { authorization, cookie, set_cookies, claims } => {
                let ok = s.set_request_header("authorization", authorization.as_bytes())
                    && claims.iter().all(|(k, v)| s.set_request_header(k, v.as_bytes()))
                    && match cookie {
                        Some(c) => s.set_request_header("cookie", c.as_bytes()),
                        None => s.remove_request_header("cookie"),
                    };
                if !ok {
                    wasmesh_proxy::log_error("wasmesh oidc: could not set the request headers; refusing");
                    return error_page(s, 500, "login is not available");
                }
                self.set_cookies = set_cookies;
                Flow::Continue
            }
            Decision::Call { call, pending } => {
                let mut headers: Vec<(&str, &str)> =
                    vec![(":method", "POST"), (":path", &call.path), (":authority", &call.authority)];
                headers.extend(call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let timeout = Duration::from_millis(self.phase.oidc.config.timeout_ms);
                match s.dispatch_http_call(
                    &self.phase.oidc.config.provider_cluster,
                    &headers,
                    Some(call.body.as_bytes()),
                    timeout,
                ) {
                    Ok(token) => {
                        self.waiting = Some((token, Waiting::Token(*pending), provider));
                        Flow::Pause
                    }
                    Err(_) => {
                        wasmesh_proxy::log_warn("wasmesh oidc: could not call the token endpoint");
                        error_page(s, 502, "login failed: the provider cannot be reached")
                    }
                }
            }
        }
    }
}

impl OidcRequest {
    fn fetch_keys(&self, s: &Stream, provider: &Provider) -> Option<u32> {
        let (_, authority, path) = wasmesh_oidc::url::split(&provider.discovery.jwks_uri)?;
        let headers = [(":method", "GET"), (":path", path), (":authority", authority), ("accept", "application/json")];
        s.dispatch_http_call(
            &self.phase.oidc.config.provider_cluster,
            &headers,
            None,
            Duration::from_millis(self.phase.oidc.config.timeout_ms),
        )
        .ok()
    }
}

impl PhaseRequest for OidcRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        // A client cannot send its own claim headers, whatever the path.
        for name in self.phase.oidc.claim_header_names() {
            if s.has_request_header(name).unwrap_or(false) && !s.remove_request_header(name) {
                return error_page(s, 500, "login is not available");
            }
        }
        let provider = self.phase.provider();
        let method = header_text(s, ":method").unwrap_or_default();
        let path = header_text(s, ":path").unwrap_or_default();
        // HTTP/2 clients may send the cookies as several headers.
        let cookie = s.with_request_headers(|h| {
            let Ok(h) = h else { return None };
            let mut joined: Option<String> = None;
            for v in h.get_all("cookie") {
                let v = String::from_utf8_lossy(v);
                match &mut joined {
                    Some(j) => {
                        j.push_str("; ");
                        j.push_str(&v);
                    }
                    None => joined = Some(v.into_owned()),
                }
            }
            joined
        });
        let accept = header_text(s, "accept");
        let xrw = header_text(s, "x-requested-with");
        let mode = header_text(s, "sec-fetch-mode");
        let req = Request {
            method: &method,
            path: &path,
            cookie: cookie.as_deref(),
            accept: accept.as_deref(),
            x_requested_with: xrw.as_deref(),
            sec_fetch_mode: mode.as_deref(),
        };
        let Some(provider) = provider else {
            if self.phase.oidc.bypassed(&req) {
                return Flow::Continue;
            }
            return send(
                s,
                &Reply {
                    status: 503,
                    headers: vec![("retry-after".into(), "1".into()), ("cache-control".into(), "no-store".into())],
                    body: "login is not available yet: the OpenID provider has not answered\n".into(),
                },
            );
        };
        let now = now_ms() / 1000;
        let decision = self.phase.oidc.decide(&provider, &req, now);
        self.apply(s, decision, provider)
    }

    fn http_call_response(
        &mut self,
        s: &Stream,
        token_id: u32,
        _h: usize,
        body_size: usize,
        _t: usize,
    ) -> Option<Flow> {
        if self.waiting.as_ref().map(|(t, _, _)| *t) != Some(token_id) {
            return None;
        }
        let (_, waiting, provider) = self.waiting.take()?;
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u32>().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_BODY))
            .ok()
            .flatten()
            .unwrap_or_default();
        let oidc = self.phase.oidc.clone();
        let (pending, status, body, provider) = match waiting {
            Waiting::Token(pending) => {
                if status != Some(200) {
                    wasmesh_proxy::log_warn(&format!(
                        "wasmesh oidc: the token endpoint answered {}",
                        status.map_or("nothing (timeout or reset)".to_string(), |c| c.to_string())
                    ));
                }
                if oidc.needs_new_keys(&provider, status, &body) && self.phase.may_refetch() {
                    wasmesh_proxy::log_info(
                        "wasmesh oidc: the ID token names a key not in the JWKS; fetching it again",
                    );
                    if let Some(token) = self.fetch_keys(s, &provider) {
                        self.waiting = Some((token, Waiting::Keys { pending, status, body }, provider));
                        return Some(Flow::Pause);
                    }
                }
                (pending, status, body, provider)
            }
            Waiting::Keys { pending, status: token_status, body: token_body } => {
                let keys = match std::str::from_utf8(&body).ok().map(wasmesh_authn::jwks::parse_jwks) {
                    Some(Ok(keys)) if status == Some(200) && !keys.keys.is_empty() => Some(keys),
                    _ => None,
                };
                let provider = match keys.and_then(|k| self.phase.learn_keys(k)) {
                    Some(p) => {
                        wasmesh_proxy::log_info(&format!(
                            "wasmesh oidc: JWKS fetched again ({} keys)",
                            p.keys.keys.len()
                        ));
                        p
                    }
                    None => {
                        wasmesh_proxy::log_warn("wasmesh oidc: the JWKS fetched again has no usable key");
                        provider
                    }
                };
                (pending, token_status, token_body, provider)
            }
        };
        let decision = oidc.finish(&provider, pending, status, &body, now_ms() / 1000);
        if let Decision::Reply(r) = &decision {
            if r.status != 302 {
                wasmesh_proxy::log_warn(&format!("wasmesh oidc: login refused ({}): {}", r.status, r.body.trim_end()));
            }
        }
        Some(self.apply(s, decision, provider))
    }

    fn response_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        for c in self.set_cookies.drain(..) {
            s.add_response_header("set-cookie", c.as_bytes());
        }
        Flow::Continue
    }
}
