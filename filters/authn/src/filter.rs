//! wasmesh authn: Istio RequestAuthentication (JWT) in any Envoy, with the answers of Envoy's
//! `jwt_authn` as Istio configures it. A thin proxy-wasm adapter over `wasmesh-authn`:
//!
//! * per request: read the few headers the token locations name, evaluate, then either continue
//!   (writing the verified identity to filter state `wasmesh.authn.identity` for the authz
//!   filter, removing the token and client-sent output headers, adding configured ones), answer
//!   401/403 like Envoy, or pause while keys are being fetched;
//! * verified tokens are cached in proxy-wasm shared data, so every worker VM reuses a
//!   verification any of them made;
//! * `jwksUri` keys are fetched by each VM's root context with `dispatch_http_call` (at start,
//!   every `jwksRefreshSeconds`, on an unknown `kid` at most every
//!   `jwksRefetchMinIntervalSeconds`, retried with backoff on failure, last good keys kept);
//!   paused requests are resumed (or refused) when the fetch finishes, and refused with 401 if
//!   they wait longer than `jwksMaxWaitMs`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};
use wasmesh_authn::remote::{FetchOutcome, Stage, MAX_BODY_BYTES};
use wasmesh_authn::verify::JwksSource;
use wasmesh_authn::verify::{Denied, EvalStats, Mutation, Outcome, RequestHeaders};
use wasmesh_authn::{Authn, AuthnConfig, Status, TokenCache};
use wasmesh_handover::{AUTHN_EVALUATED, AUTHN_IDENTITY};
use wasmesh_istio::FilterConfig;
use wasmesh_proxy::metrics::Counter;

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    Box::new(AuthnRoot { id: context_id, shared: Rc::new(RefCell::new(Shared::default())) })
}

/// Tick while requests wait for keys (and right after start-up).
const FAST_TICK: Duration = Duration::from_millis(20);
/// Tick otherwise (refresh and retry times are checked on each tick).
const SLOW_TICK: Duration = Duration::from_millis(500);

/// The filter's counters, `wasmesh.authn.<event>` (Prometheus: `wasmesh_authn_<event>`). Per-request
/// counts stay in the VM and reach Envoy's stats on each tick (at most 0.5 s late): a hostcall per
/// counter per request would cost more than the cache hit itself.
#[derive(Default)]
struct Metrics {
    allowed: Counter,
    denied: Counter,
    cors_bypassed: Counter,
    cache_hit: Counter,
    cache_miss: Counter,
    signature_checks: Counter,
    paused: Counter,
    jwks_fetch_success: Counter,
    jwks_fetch_failed: Counter,
    /// Bounds crossed (see the core's `MAX_*` limits): each is also answered or logged.
    token_too_large: Counter,
    json_too_deep: Counter,
    cache_entry_too_large: Counter,
    jwks_keys_skipped: Counter,
}

impl Metrics {
    fn define() -> Metrics {
        let c = |event: &str| Counter::new("authn", event);
        Metrics {
            allowed: c("allowed"),
            denied: c("denied"),
            cors_bypassed: c("cors_preflight_bypassed"),
            cache_hit: c("jwt_cache_hit"),
            cache_miss: c("jwt_cache_miss"),
            signature_checks: c("signature_checks"),
            paused: c("paused_for_jwks"),
            jwks_fetch_success: c("jwks_fetch_success"),
            jwks_fetch_failed: c("jwks_fetch_failed"),
            token_too_large: c("token_too_large"),
            json_too_deep: c("json_too_deep"),
            cache_entry_too_large: c("cache_entry_too_large"),
            jwks_keys_skipped: c("jwks_keys_skipped"),
        }
    }

    fn flush(&self) {
        for c in [
            &self.allowed,
            &self.denied,
            &self.cors_bypassed,
            &self.cache_hit,
            &self.cache_miss,
            &self.signature_checks,
            &self.paused,
            &self.jwks_fetch_success,
            &self.jwks_fetch_failed,
            &self.token_too_large,
            &self.json_too_deep,
            &self.cache_entry_too_large,
            &self.jwks_keys_skipped,
        ] {
            c.flush();
        }
    }
}

/// Shared-data key of the secret all VMs hash tokens with.
const SECRET_KEY: &str = "wasmesh.authn.secret";

/// The process-wide cache secret: created by the first VM, read by the others. Two VMs racing
/// at start-up may briefly disagree (last writer wins; each re-reads it on every slow tick),
/// which only costs a few cache misses.
fn shared_secret() -> Option<[u8; 16]> {
    let read = || match hostcalls::get_shared_data(SECRET_KEY) {
        Ok((Some(b), _)) => <[u8; 16]>::try_from(b.as_slice()).ok(),
        _ => None,
    };
    if let Some(s) = read() {
        return Some(s);
    }
    let mut secret = [0u8; 16];
    secret[..8].copy_from_slice(&wasmesh_proxy::random_seed().to_le_bytes());
    secret[8..].copy_from_slice(&wasmesh_proxy::random_seed().to_le_bytes());
    let _ = hostcalls::set_shared_data(SECRET_KEY, Some(&secret), None);
    read()
}

struct Waiter {
    context_id: u32,
    since_ms: u64,
}

#[derive(Default)]
struct Shared {
    engine: Option<Authn>,
    metrics: Metrics,
    /// Requests paused until keys arrive.
    waiting: Vec<Waiter>,
    /// Fetches in flight: (call token, provider index).
    calls: Vec<(u32, usize)>,
    /// Paused requests the root context refused (their body must stay held).
    refused: Vec<u32>,
}

type SharedRc = Rc<RefCell<Shared>>;

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Request headers read on demand, one hostcall each (the engine asks only for what the
/// configured locations need).
struct HostHeaders;

impl RequestHeaders for HostHeaders {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        wasmesh_proxy::request_header(name)
    }
}

/// The verified-token cache in proxy-wasm shared data (process-wide: all worker VMs).
struct SharedData;

impl TokenCache for SharedData {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), _)) => Some(bytes),
            _ => None,
        }
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        let _ = hostcalls::set_shared_data(key, Some(value), None);
    }
}

/// What to do with the stream once the engine has answered.
enum Step {
    Continue,
    Respond(Denied),
    Wait,
}

/// Evaluates the current stream (the effective context) and applies the result's filter state
/// and header changes. The caller continues or pauses the stream.
fn process(shared: &SharedRc, context_id: u32, since_ms: Option<u64>) -> Step {
    if shared.try_borrow().map(|s| s.engine.as_ref().is_some_and(|e| !e.is_configured())).unwrap_or(false) {
        return Step::Continue;
    }
    let now = now_ms();
    let mut stats = EvalStats::default();
    let outcome = {
        let Ok(s) = shared.try_borrow() else {
            wasmesh_proxy::log_error("wasmesh authn: re-entrant evaluation; refusing the request");
            return Step::Respond(internal_denial());
        };
        let Some(engine) = s.engine.as_ref() else {
            // Never configured: Envoy would not have created this context; fail closed.
            return Step::Respond(internal_denial());
        };
        if engine.options().cache_slots == 0 {
            engine.evaluate(&HostHeaders, now, &mut wasmesh_authn::NoCache, &mut stats)
        } else {
            engine.evaluate(&HostHeaders, now, &mut SharedData, &mut stats)
        }
    };
    let Ok(mut s) = shared.try_borrow_mut() else {
        return Step::Respond(internal_denial());
    };
    s.metrics.cache_hit.add(u64::from(stats.cache_hits));
    s.metrics.cache_miss.add(u64::from(stats.cache_misses));
    s.metrics.signature_checks.add(u64::from(stats.signature_checks));
    s.metrics.token_too_large.add(u64::from(stats.tokens_too_large));
    s.metrics.json_too_deep.add(u64::from(stats.json_too_deep));
    s.metrics.cache_entry_too_large.add(u64::from(stats.cache_entries_too_large));
    match outcome {
        Outcome::NotConfigured => Step::Continue,
        Outcome::CorsBypass => {
            wasmesh_proxy::set_filter_state(AUTHN_EVALUATED, b"1");
            s.metrics.cors_bypassed.bump();
            Step::Continue
        }
        Outcome::Allow(allowed) => {
            for m in &allowed.mutations {
                match m {
                    Mutation::Remove(h) => {
                        wasmesh_proxy::remove_request_header(h);
                    }
                    Mutation::Add(h, v) => {
                        wasmesh_proxy::add_request_header(h, v);
                    }
                }
            }
            match &allowed.identity {
                Some(id) => {
                    if !wasmesh_proxy::set_filter_state(AUTHN_IDENTITY, id) {
                        // The identity cannot be handed over: refuse rather than let authz see
                        // an anonymous request that presented a valid token.
                        wasmesh_proxy::log_error("wasmesh authn: cannot write the identity to filter state");
                        return Step::Respond(internal_denial());
                    }
                }
                // An identity implies evaluation; without one, tell authz the request was
                // evaluated and carried no (valid) token.
                None => {
                    wasmesh_proxy::set_filter_state(AUTHN_EVALUATED, b"1");
                }
            }
            if allowed.clear_route_cache {
                wasmesh_proxy::clear_route_cache();
            }
            s.metrics.allowed.bump();
            Step::Continue
        }
        Outcome::Deny(d) => {
            s.metrics.denied.bump();
            Step::Respond(d)
        }
        Outcome::Wait(waits) => {
            if let Some(engine) = s.engine.as_mut() {
                for w in &waits {
                    engine.want_keys(*w, now);
                }
            }
            if since_ms.is_none() {
                s.metrics.paused.bump();
            }
            s.waiting.push(Waiter { context_id, since_ms: since_ms.unwrap_or(now) });
            // Wake the root context soon: it starts the fetch.
            let _ = hostcalls::set_tick_period(FAST_TICK);
            Step::Wait
        }
    }
}

fn internal_denial() -> Denied {
    Denied {
        status: Status::JwtVerificationFail,
        code: 401,
        body: Status::JwtVerificationFail.message(),
        www_authenticate: "Bearer realm=\"\", error=\"invalid_token\"".into(),
    }
}

fn respond(d: &Denied) {
    let headers = [("www-authenticate", d.www_authenticate.as_str())];
    if !wasmesh_proxy::send_response(d.code, &headers, Some(d.body.as_bytes())) {
        wasmesh_proxy::log_error("wasmesh authn: could not send the local reply");
    }
}

struct AuthnRoot {
    id: u32,
    shared: SharedRc,
}

impl AuthnRoot {
    /// Starts every fetch that is due.
    fn dispatch_due(&self) {
        let now = now_ms();
        let requests = match self.shared.try_borrow_mut() {
            Ok(mut s) => match s.engine.as_mut() {
                Some(e) => e.poll_fetches(now),
                None => return,
            },
            Err(_) => return,
        };
        for (provider, req) in requests {
            let headers = vec![
                (":method", "GET"),
                (":path", req.path.as_str()),
                (":authority", req.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "wasmesh-authn"),
            ];
            let what = if req.stage == Stage::Discovery { "OpenID configuration" } else { "JWKS" };
            match self.dispatch_http_call(&req.cluster, headers, None, vec![], Duration::from_millis(req.timeout_ms)) {
                Ok(token) => {
                    wasmesh_proxy::log_debug(&format!(
                        "wasmesh authn: fetching {what} {} via cluster {}",
                        req.uri, req.cluster
                    ));
                    if let Ok(mut s) = self.shared.try_borrow_mut() {
                        s.calls.push((token, provider));
                    }
                }
                Err(status) => {
                    let reason = format!("cannot call cluster {:?}: {status:?}", req.cluster);
                    self.finish_fetch(provider, None, &[], Some(reason));
                }
            }
        }
    }

    /// Records a fetch result, then re-evaluates every paused request.
    fn finish_fetch(&self, provider: usize, status: Option<u32>, body: &[u8], call_error: Option<String>) {
        let now = now_ms();
        let outcome = match self.shared.try_borrow_mut() {
            Ok(mut s) => {
                let source = s
                    .engine
                    .as_ref()
                    .and_then(|e| e.providers().get(provider))
                    .map(|p| format!("{} (issuer {:?})", p.source, p.issuer))
                    .unwrap_or_default();
                let outcome = s.engine.as_mut().and_then(|e| e.on_fetch_response(provider, now, status, body));
                match &outcome {
                    Some(FetchOutcome::Updated { keys, skipped }) => {
                        // Counted at once: a fetch is rare and tests and operators wait for it.
                        s.metrics.jwks_fetch_success.bump();
                        s.metrics.jwks_fetch_success.flush();
                        wasmesh_proxy::log_info(&format!("wasmesh authn: {source}: JWKS fetched, {keys} keys in use"));
                        s.metrics.jwks_keys_skipped.add(skipped.len() as u64);
                        for why in skipped {
                            wasmesh_proxy::log_warn(&format!("wasmesh authn: {source}: JWKS key skipped: {why}"));
                        }
                    }
                    Some(FetchOutcome::Discovered(uri)) => {
                        wasmesh_proxy::log_info(&format!("wasmesh authn: {source}: OpenID discovery: jwks_uri {uri}"));
                    }
                    Some(FetchOutcome::Failed { reason, retry_in_ms }) => {
                        s.metrics.jwks_fetch_failed.bump();
                        s.metrics.jwks_fetch_failed.flush();
                        let reason = call_error.clone().unwrap_or_else(|| reason.clone());
                        wasmesh_proxy::log_warn(&format!(
                            "wasmesh authn: {source}: JWKS fetch failed: {reason}; retrying in {retry_in_ms} ms, keeping the last good keys if any"
                        ));
                    }
                    None => {}
                }
                outcome
            }
            Err(_) => None,
        };
        if matches!(outcome, Some(FetchOutcome::Discovered(_))) {
            self.dispatch_due();
        }
        self.run_waiters(false);
    }

    /// Re-evaluates paused requests; with `sweep`, also refuses those that waited too long.
    fn run_waiters(&self, sweep: bool) {
        let now = now_ms();
        let (waiters, max_wait) = match self.shared.try_borrow_mut() {
            Ok(mut s) => {
                let max = s.engine.as_ref().map(|e| e.options().jwks_max_wait_ms).unwrap_or(10_000);
                (std::mem::take(&mut s.waiting), max)
            }
            Err(_) => return,
        };
        for w in waiters {
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue; // the stream is gone
            }
            if sweep && now.saturating_sub(w.since_ms) > max_wait {
                let denial = match self.shared.try_borrow() {
                    Ok(s) => s.engine.as_ref().map(|e| e.deny_with(Status::JwksFetchFail, &HostHeaders)),
                    Err(_) => None,
                };
                wasmesh_proxy::log_warn("wasmesh authn: request waited too long for JWKS keys; refusing it");
                if let Ok(mut s) = self.shared.try_borrow_mut() {
                    s.metrics.denied.bump();
                    s.refused.push(w.context_id);
                }
                respond(&denial.unwrap_or_else(internal_denial));
                continue;
            }
            if sweep {
                // Not yet decided and not timed out: keep waiting without re-evaluating.
                if let Ok(mut s) = self.shared.try_borrow_mut() {
                    s.waiting.push(w);
                }
                continue;
            }
            match process(&self.shared, w.context_id, Some(w.since_ms)) {
                Step::Continue => {
                    let _ = hostcalls::resume_http_request();
                }
                Step::Respond(d) => {
                    if let Ok(mut s) = self.shared.try_borrow_mut() {
                        s.refused.push(w.context_id);
                    }
                    respond(&d)
                }
                Step::Wait => {}
            }
        }
        let _ = hostcalls::set_effective_context(self.id);
    }
}

impl Context for AuthnRoot {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let provider = match self.shared.try_borrow_mut() {
            Ok(mut s) => {
                let at = s.calls.iter().position(|(t, _)| *t == token_id);
                at.map(|i| s.calls.remove(i).1)
            }
            Err(_) => None,
        };
        let Some(provider) = provider else { return };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        if body_size > MAX_BODY_BYTES {
            self.finish_fetch(provider, status, &[], Some(format!("JWKS body of {body_size} bytes is too large")));
            return;
        }
        let body = if body_size == 0 {
            Vec::new()
        } else {
            hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let call_error = if status.is_none() {
            Some("no response (connection failure, timeout or missing cluster)".to_string())
        } else {
            None
        };
        self.finish_fetch(provider, status, &body, call_error);
    }
}

/// Compiles the configuration; without a `workload` the proxy's identity comes from the Envoy
/// node metadata, and a node that does not carry it refuses the configuration (fail closed).
fn compile(bytes: &[u8]) -> Result<Authn, String> {
    let mut cfg = AuthnConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    wasmesh_proxy::complete_workload_from_node(&mut cfg)?;
    cfg.compile_parsed(bytes).map_err(|e| e.to_string())
}

impl RootContext for AuthnRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = wasmesh_proxy::plugin_configuration() else {
            wasmesh_proxy::log_error("wasmesh authn: no plugin configuration; expected the JSON wasmeshctl writes");
            return false;
        };
        let engine = match compile(&bytes) {
            Ok(e) => e,
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh authn: configuration rejected: {e}"));
                return false;
            }
        };
        for p in engine.providers() {
            let keys = match &p.jwks {
                JwksSource::Inline(k) => {
                    for why in &k.skipped {
                        wasmesh_proxy::log_warn(&format!(
                            "wasmesh authn: {}: inline JWKS key skipped: {why}",
                            p.source
                        ));
                    }
                    format!("inline JWKS with {} usable keys", k.keys.len())
                }
                JwksSource::Remote(r) => format!("keys from {} via cluster {}", r.endpoint.uri, r.endpoint.cluster),
            };
            wasmesh_proxy::log_info(&format!("wasmesh authn: {}: issuer {:?}, {keys}", p.source, p.issuer));
        }
        let mut engine = engine;
        if let Some(secret) = shared_secret() {
            engine.set_cache_secret(&secret);
        }
        let remote = engine.has_remote_jwks();
        match self.shared.try_borrow_mut() {
            Ok(mut s) => {
                s.engine = Some(engine);
                s.metrics = Metrics::define();
            }
            Err(_) => return false,
        }
        // The first tick starts the fetches (clusters are not usable during configuration);
        // ticks also flush the counters and refresh the shared cache secret.
        let _ = hostcalls::set_tick_period(if remote { FAST_TICK } else { SLOW_TICK });
        true
    }

    fn on_tick(&mut self) {
        self.dispatch_due();
        self.run_waiters(true);
        let secret = shared_secret();
        if let Ok(mut s) = self.shared.try_borrow_mut() {
            let s = &mut *s;
            s.metrics.flush();
            if let (Some(secret), Some(engine)) = (secret, s.engine.as_mut()) {
                engine.set_cache_secret(&secret);
            }
        }
        let busy = self.shared.try_borrow().map(|s| !s.waiting.is_empty()).unwrap_or(false);
        let _ = hostcalls::set_tick_period(if busy { FAST_TICK } else { SLOW_TICK });
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthnStream { id: context_id, shared: self.shared.clone(), refused: false, paused: false }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthnStream {
    id: u32,
    shared: SharedRc,
    /// Refused here: body and trailers must not pass.
    refused: bool,
    /// Paused here; the root context may since have resumed or refused it.
    paused: bool,
}

impl AuthnStream {
    /// Still paused, or refused after a pause.
    fn is_held(&self) -> bool {
        self.shared
            .try_borrow()
            .map(|s| s.waiting.iter().any(|w| w.context_id == self.id) || s.refused.contains(&self.id))
            .unwrap_or(true)
    }
}

impl Context for AuthnStream {
    fn on_done(&mut self) -> bool {
        if let Ok(mut s) = self.shared.try_borrow_mut() {
            s.waiting.retain(|w| w.context_id != self.id);
            s.refused.retain(|id| *id != self.id);
        }
        true
    }
}

impl HttpContext for AuthnStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match process(&self.shared, self.id, None) {
            Step::Continue => Action::Continue,
            Step::Respond(d) => {
                self.refused = true;
                respond(&d);
                Action::Pause
            }
            Step::Wait => {
                self.paused = true;
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // While the headers wait for keys (or were refused) the body must not be let through:
        // continuing here would release the request to later filters unauthenticated.
        if self.refused || (self.paused && self.is_held()) {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.refused || (self.paused && self.is_held()) {
            return Action::Pause;
        }
        Action::Continue
    }
}

/// The authn phase (for the one-pass chain): being written; until then `wasmesh.chain` refuses it.
pub fn build(
    _config: &[u8],
    _resumer: &wasmesh_proxy::phase::Resumer,
) -> Result<Vec<std::rc::Rc<dyn wasmesh_proxy::phase::Phase>>, String> {
    Err("authn does not run as a phase yet".into())
}
