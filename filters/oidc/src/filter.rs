//! wasmesh oidc: OIDC login at the gateway (authorization code flow with PKCE, sealed session
//! cookie), the decisions in `wasmesh-oidc`; this adapter reads the request, calls the provider
//! and applies the decision.
//!
//! Root side: the discovery document (unless inline) and the JWKS are fetched through the
//! configured provider cluster on ticks, the JWKS again every [`JWKS_REFRESH`]. Until both are
//! known every request that needs a login decision gets 503 (fail closed); bypass paths pass.
//!
//! Request side: a code exchange or refresh is a call on the stream's behalf
//! (`dispatch_http_call`), the request paused meanwhile. No answer within `timeoutMs`, a
//! non-200 or an answer that does not parse: an error page, the request never goes upstream.
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

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh oidc", build))
}

pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let cfg = OidcConfig::parse_json(config)?;
    let discovery = cfg.inline_discovery()?;
    let oidc = Oidc::new(cfg)?;
    wasmesh_proxy::log_info(&format!(
        "wasmesh oidc: configured client {:?} of {:?}, callback {}",
        oidc.config.client_id,
        oidc.config.issuer,
        oidc.callback_path()
    ));
    Ok(vec![Rc::new(OidcPhase {
        oidc: Rc::new(oidc),
        state: RefCell::new(Fetching { discovery, provider: None, call: None, next_ms: 0, failures: 0 }),
    })])
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

    fn root_http_call_response(&self, token_id: u32, _num_headers: usize, body_size: usize) -> bool {
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

struct OidcRequest {
    phase: Rc<OidcPhase>,
    waiting: Option<(u32, Pending, Rc<Provider>)>,
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
            Decision::Forward { authorization, cookie, set_cookies } => {
                let ok = s.set_request_header("authorization", authorization.as_bytes())
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
                        self.waiting = Some((token, *pending, provider));
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

impl PhaseRequest for OidcRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let provider = self.phase.state.try_borrow().ok().and_then(|st| st.provider.clone());
        let method = header_text(s, ":method").unwrap_or_default();
        let path = header_text(s, ":path").unwrap_or_default();
        // HTTP/2 clients may send the cookies as several headers.
        let cookie = s.with_request_headers(|h| {
            let parts: Vec<String> = h
                .unwrap_or_default()
                .iter()
                .filter(|(n, _)| n == "cookie")
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
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
        let (_, pending, provider) = self.waiting.take()?;
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u32>().ok());
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(MAX_BODY))
            .ok()
            .flatten()
            .unwrap_or_default();
        if status != Some(200) {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh oidc: the token endpoint answered {}",
                status.map_or("nothing (timeout or reset)".to_string(), |c| c.to_string())
            ));
        }
        let decision = self.phase.oidc.finish(&provider, pending, status, &body, now_ms() / 1000);
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
