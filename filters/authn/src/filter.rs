//! wasmesh authn: Istio RequestAuthentication (JWT) in any Envoy, with the answers of Envoy's
//! `jwt_authn` as Istio configures it. A thin proxy-wasm adapter over `wasmesh-authn`, run as a
//! phase of the wasmesh driver ([`wasmesh_proxy::phase`]): alone in its filter (`wasmesh.authn`)
//! or in the one-pass chain (`wasmesh.chain`, before authz).
//!
//! * per request: read the few headers the token locations name from the [`Stream`], evaluate,
//!   then either continue (handing the verified identity to authz through the stream's filter
//!   state `wasmesh.authn.identity`, kept in memory for the chain's authz phase and written to
//!   Envoy for a separate authz filter; removing the token and client-sent output headers,
//!   adding configured ones), answer 401/403 like Envoy, or wait while keys are being fetched;
//! * verified tokens are cached per VM and in proxy-wasm shared data, so every worker VM reuses
//!   a verification any of them made (a repeated token costs no shared-data read);
//! * `jwksUri` keys are fetched by the root side with `dispatch_http_call` (at start, every
//!   `jwksRefreshSeconds`, on an unknown `kid` at most every `jwksRefetchMinIntervalSeconds`,
//!   retried with backoff on failure, last good keys kept). A request that needs keys not there
//!   yet waits ([`Flow::Pause`]; the driver holds its body); when its keys are settled, or it has
//!   waited `jwksMaxWaitMs`, the root side resumes it into the second phase of this filter,
//!   [`AfterKeys`], which evaluates it again (or refuses it) on its stream.
//!
//! Why a second phase: the driver resumes a waiting request by running the phases *after* the
//! one that waited, and only a phase callback gets the request's [`Stream`]. Evaluating on the
//! root side would change Envoy's headers behind the stream's kept copy, so authz (in the chain)
//! would see the client's forged `outputClaimToHeaders` headers and the token still present.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};
use wasmesh_authn::remote::{FetchOutcome, Stage, MAX_BODY_BYTES};
use wasmesh_authn::verify::{Denied, EvalStats, JwksSource, Mutation, Outcome, RequestHeaders};
use wasmesh_authn::{Authn, AuthnConfig, Status, TokenCache};
use wasmesh_handover::{AUTHN_EVALUATED, AUTHN_IDENTITY};
use wasmesh_istio::module::Callbacks;
use wasmesh_istio::FilterConfig;
use wasmesh_proxy::metrics::Counter;
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::Stream;

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh authn", build))
}

/// The authn phases from the plugin configuration: [`Authn`] evaluates each request,
/// [`AfterKeys`] evaluates again the requests that waited for keys.
pub fn build(config: &[u8], resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let mut engine = compile(config)?;
    log_providers(&engine);
    let secret = shared_secret();
    if let Some(secret) = &secret {
        engine.set_cache_secret(secret);
    }
    let remote = engine.has_remote_jwks();
    let shared = Rc::new(Shared {
        engine: RefCell::new(engine),
        metrics: Metrics::define(),
        remote,
        resumer: resumer.clone(),
        waits: RefCell::new(Waits::default()),
        secret: Cell::new(SecretCheck { secret, unchanged: 0, last_ms: 0 }),
    });
    Ok(vec![Rc::new(AuthnPhase(shared.clone())), Rc::new(AfterKeys(shared))])
}

/// Tick while requests wait for keys or fetches are due or in flight.
const FAST_TICK: Duration = Duration::from_millis(20);
/// Tick otherwise when keys come from a `jwksUri`: a request that starts waiting (an unknown
/// `kid`) has its fetch started on the next tick (the driver asks phases for their period only
/// after root-side callbacks, so a waiting request cannot make the next tick come sooner).
const REMOTE_IDLE_TICK: Duration = Duration::from_millis(100);
/// Tick otherwise (counters are flushed, refresh and retry times checked on each tick).
const SLOW_TICK: Duration = Duration::from_millis(500);

/// Most requests waiting for keys at once per VM; more are refused at once with 401
/// `Jwks remote fetch is failed` (counted as `denied`).
pub const MAX_WAITERS: usize = 4096;

/// The shared cache secret is read again (another VM may have won the start-up race) at most
/// this often, until it has been the same this many times in a row.
const SECRET_RECHECK_MS: u64 = 500;
const SECRET_STABLE_CHECKS: u32 = 20;

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

/// A request waiting for keys.
struct Waiter {
    context_id: u32,
    since_ms: u64,
    /// The providers whose keys it waits for.
    providers: Vec<usize>,
}

/// What the root side decided for a waiting request it resumes into [`AfterKeys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resumed {
    /// Its keys are settled: evaluate it again.
    Evaluate,
    /// It waited longer than `jwksMaxWaitMs`: refuse it.
    TimedOut,
}

#[derive(Default)]
struct Waits {
    /// Requests paused until keys arrive (at most [`MAX_WAITERS`]).
    waiting: Vec<Waiter>,
    /// Requests being resumed, read by [`AfterKeys`] (at most [`MAX_WAITERS`]: each was waiting).
    resumed: Vec<(u32, Resumed)>,
    /// Fetches in flight: (call token, provider index); at most one per provider.
    calls: Vec<(u32, usize)>,
}

#[derive(Clone, Copy)]
struct SecretCheck {
    secret: Option<[u8; 16]>,
    unchanged: u32,
    last_ms: u64,
}

/// What both phases and the root side share (per VM, per plugin). Borrows are never held
/// across a call into the driver ([`Resumer::resume`] runs later phases synchronously).
struct Shared {
    engine: RefCell<Authn>,
    metrics: Metrics,
    remote: bool,
    resumer: Resumer,
    waits: RefCell<Waits>,
    secret: Cell<SecretCheck>,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Request headers from the stream (read once per request, shared with the other phases). A
/// header Envoy could not produce is remembered: the request is then refused (fail closed)
/// rather than evaluated as if the header were absent.
struct StreamHeaders<'s> {
    stream: &'s Stream,
    failed: Cell<bool>,
}

impl RequestHeaders for StreamHeaders<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        match self.stream.request_header(name) {
            Ok(v) => v,
            Err(_) => {
                self.failed.set(true);
                None
            }
        }
    }
}

/// The verified-token cache in proxy-wasm shared data (process-wide: all worker VMs). The
/// engine keeps decoded entries per VM in front of it ([`wasmesh_authn::cache::L1`]), so it is
/// read only for tokens this VM has not seen.
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
    Wait { since_ms: u64, providers: Vec<usize> },
}

impl Shared {
    /// Evaluates the request and applies a success's filter state and header changes.
    fn evaluate(&self, s: &Stream) -> Step {
        let headers = StreamHeaders { stream: s, failed: Cell::new(false) };
        let mut stats = EvalStats::default();
        // The clock is a hostcall: read only when a token is checked, once per evaluation.
        let now = Cell::new(None);
        let clock = || match now.get() {
            Some(t) => t,
            None => {
                let t = now_ms();
                now.set(Some(t));
                t
            }
        };
        let outcome = {
            let Ok(engine) = self.engine.try_borrow() else {
                wasmesh_proxy::log_error("wasmesh authn: re-entrant evaluation; refusing the request");
                return Step::Respond(internal_denial());
            };
            if !engine.is_configured() {
                return Step::Continue;
            }
            if engine.options().cache_slots == 0 {
                engine.evaluate_with_clock(&headers, &clock, &mut wasmesh_authn::NoCache, &mut stats)
            } else {
                engine.evaluate_with_clock(&headers, &clock, &mut SharedData, &mut stats)
            }
        };
        let m = &self.metrics;
        m.cache_hit.add(u64::from(stats.cache_hits));
        m.cache_miss.add(u64::from(stats.cache_misses));
        m.signature_checks.add(u64::from(stats.signature_checks));
        m.token_too_large.add(u64::from(stats.tokens_too_large));
        m.json_too_deep.add(u64::from(stats.json_too_deep));
        m.cache_entry_too_large.add(u64::from(stats.cache_entries_too_large));
        if headers.failed.get() {
            wasmesh_proxy::log_error(
                "wasmesh authn: Envoy could not produce the request headers; refusing the request",
            );
            m.denied.bump();
            return Step::Respond(internal_denial());
        }
        match outcome {
            Outcome::NotConfigured => Step::Continue,
            Outcome::CorsBypass => {
                self.hand_over(s, AUTHN_EVALUATED, b"1");
                m.cors_bypassed.bump();
                Step::Continue
            }
            Outcome::Allow(allowed) => {
                match &allowed.identity {
                    Some(id) => {
                        if !self.hand_over(s, AUTHN_IDENTITY, id) {
                            // The identity cannot be handed over: refuse rather than let authz
                            // see an anonymous request that presented a valid token.
                            wasmesh_proxy::log_error("wasmesh authn: cannot write the identity to filter state");
                            m.denied.bump();
                            return Step::Respond(internal_denial());
                        }
                    }
                    // An identity implies evaluation; without one, tell authz the request was
                    // evaluated and carried no (valid) token.
                    None => {
                        self.hand_over(s, AUTHN_EVALUATED, b"1");
                    }
                }
                if allowed.clear_route_cache {
                    // Done at the end of the pass unless a header edit (below, or a later phase's)
                    // makes Envoy clear the route cache itself.
                    s.clear_route_cache();
                }
                // After the hand-over: Envoy selects the route again after the header edits, so
                // a route sees the verified request as a whole.
                for mutation in &allowed.mutations {
                    match mutation {
                        Mutation::Remove(h) => {
                            s.remove_request_header(h);
                        }
                        Mutation::Add(h, v) => {
                            s.add_request_header(h, v);
                        }
                    }
                }
                m.allowed.bump();
                Step::Continue
            }
            Outcome::Deny(d) => {
                m.denied.bump();
                Step::Respond(d)
            }
            Outcome::Wait(waits) => {
                let now = clock();
                if let Ok(mut engine) = self.engine.try_borrow_mut() {
                    for w in &waits {
                        engine.want_keys(*w, now);
                    }
                }
                Step::Wait { since_ms: now, providers: waits.iter().map(|w| w.provider).collect() }
            }
        }
    }

    /// The 401 for a request that waited too long for keys.
    /// Hands a value to the phases after this one: through Envoy filter state when
    /// `identityFilterState` is on (a separate authz filter or an access log may read it), in the
    /// stream's memory only when it is off. `false` when Envoy refused the write.
    fn hand_over(&self, s: &Stream, key: &str, value: &[u8]) -> bool {
        // Not borrowable (never expected): write it, which every reader sees.
        let to_envoy = self.engine.try_borrow().map_or(true, |e| e.options().identity_filter_state);
        if to_envoy {
            s.set_filter_state(key, value)
        } else {
            s.keep_filter_state(key, value);
            true
        }
    }

    fn timed_out(&self, s: &Stream) -> Denied {
        let headers = StreamHeaders { stream: s, failed: Cell::new(false) };
        self.metrics.denied.bump();
        match self.engine.try_borrow() {
            Ok(engine) => engine.deny_with(Status::JwksFetchFail, &headers),
            Err(_) => internal_denial(),
        }
    }

    /// Starts every fetch that is due (root side: the effective context is the root's).
    fn dispatch_due(&self) {
        let now = now_ms();
        let (requests, refused) = match self.engine.try_borrow_mut() {
            Ok(mut e) => (e.poll_fetches(now), e.take_refused_fetches()),
            Err(_) => return,
        };
        for (provider, outcome) in refused {
            if let FetchOutcome::Failed { reason, retry_in_ms } = outcome {
                self.fetch_failed(provider, &reason, retry_in_ms);
            }
        }
        for (provider, req) in requests {
            let headers = vec![
                (":method", "GET"),
                (":path", req.path.as_str()),
                (":authority", req.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "wasmesh-authn"),
            ];
            let what = if req.stage == Stage::Discovery { "OpenID configuration" } else { "JWKS" };
            let timeout = Duration::from_millis(req.timeout_ms);
            match hostcalls::dispatch_http_call(&req.cluster, headers, None, vec![], timeout) {
                Ok(token) => {
                    wasmesh_proxy::log_debug(&format!(
                        "wasmesh authn: fetching {what} {} via cluster {}",
                        req.uri, req.cluster
                    ));
                    if let Ok(mut w) = self.waits.try_borrow_mut() {
                        w.calls.push((token, provider));
                    }
                }
                Err(status) => {
                    let reason = format!("cannot call cluster {:?}: {status:?}", req.cluster);
                    self.record_fetch(provider, None, &[], Some(reason));
                }
            }
        }
    }

    /// Records a fetch result; `true` when another fetch follows at once (discovery).
    fn record_fetch(&self, provider: usize, status: Option<u32>, body: &[u8], call_error: Option<String>) -> bool {
        let now = now_ms();
        let Ok(mut engine) = self.engine.try_borrow_mut() else { return false };
        let source = engine
            .providers()
            .get(provider)
            .map(|p| format!("{} (issuer {:?})", p.source, p.issuer))
            .unwrap_or_default();
        let m = &self.metrics;
        match engine.on_fetch_response(provider, now, status, body) {
            Some(FetchOutcome::Updated { keys, skipped }) => {
                // Counted at once: a fetch is rare and tests and operators wait for it.
                m.jwks_fetch_success.bump();
                m.jwks_fetch_success.flush();
                wasmesh_proxy::log_info(&format!("wasmesh authn: {source}: JWKS fetched, {keys} keys in use"));
                m.jwks_keys_skipped.add(skipped.len() as u64);
                for why in skipped {
                    wasmesh_proxy::log_warn(&format!("wasmesh authn: {source}: JWKS key skipped: {why}"));
                }
                false
            }
            Some(FetchOutcome::Discovered(uri)) => {
                wasmesh_proxy::log_info(&format!("wasmesh authn: {source}: OpenID discovery: jwks_uri {uri}"));
                true
            }
            Some(FetchOutcome::Failed { reason, retry_in_ms }) => {
                drop(engine);
                self.fetch_failed(provider, &call_error.unwrap_or(reason), retry_in_ms);
                false
            }
            None => false,
        }
    }

    /// A fetch that failed, or that was refused before it went out (a blocked address): counted
    /// at once and logged with the provider.
    fn fetch_failed(&self, provider: usize, reason: &str, retry_in_ms: u64) {
        let source = self
            .engine
            .try_borrow()
            .ok()
            .and_then(|e| e.providers().get(provider).map(|p| format!("{} (issuer {:?})", p.source, p.issuer)))
            .unwrap_or_default();
        self.metrics.jwks_fetch_failed.bump();
        self.metrics.jwks_fetch_failed.flush();
        wasmesh_proxy::log_warn(&format!(
            "wasmesh authn: {source}: JWKS fetch failed: {reason}; retrying in {retry_in_ms} ms, keeping the last good keys if any"
        ));
    }

    /// Resumes the waiting requests whose keys are settled, and refuses those that waited
    /// longer than `jwksMaxWaitMs`. Root side, after every dispatch of this callback: each
    /// resumed request becomes the effective context (the host resets it when the callback
    /// returns; the phase API does not give the root context's id to set it back).
    fn wake(&self) {
        let now = now_ms();
        let ready: Vec<(u32, Resumed)> = {
            let (Ok(engine), Ok(mut w)) = (self.engine.try_borrow(), self.waits.try_borrow_mut()) else { return };
            let max_wait = engine.options().jwks_max_wait_ms;
            let mut ready = Vec::new();
            w.waiting.retain(|waiter| {
                let verdict = if now.saturating_sub(waiter.since_ms) > max_wait {
                    Resumed::TimedOut
                } else if engine.keys_settled(&waiter.providers) {
                    Resumed::Evaluate
                } else {
                    return true;
                };
                ready.push((waiter.context_id, verdict));
                false
            });
            ready
        };
        for (context_id, verdict) in ready {
            if hostcalls::set_effective_context(context_id).is_err() {
                continue; // the stream is gone
            }
            if verdict == Resumed::TimedOut {
                wasmesh_proxy::log_warn("wasmesh authn: request waited too long for JWKS keys; refusing it");
            }
            if let Ok(mut w) = self.waits.try_borrow_mut() {
                w.resumed.push((context_id, verdict));
            }
            // No borrow held: the driver runs AfterKeys and the later phases now.
            self.resumer.resume(context_id, Flow::Continue);
            if let Ok(mut w) = self.waits.try_borrow_mut() {
                w.resumed.retain(|(id, _)| *id != context_id);
            }
        }
    }

    /// Re-reads the cache secret shared by the VMs until it is stable.
    fn recheck_secret(&self) {
        let mut check = self.secret.get();
        if check.unchanged >= SECRET_STABLE_CHECKS {
            return;
        }
        let now = now_ms();
        if now.saturating_sub(check.last_ms) < SECRET_RECHECK_MS {
            return;
        }
        check.last_ms = now;
        let secret = shared_secret();
        if secret.is_some() && secret == check.secret {
            check.unchanged += 1;
        } else {
            check.unchanged = 0;
            if let (Some(s), Ok(mut engine)) = (&secret, self.engine.try_borrow_mut()) {
                engine.set_cache_secret(s);
            }
            check.secret = secret;
        }
        self.secret.set(check);
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

fn respond(s: &Stream, d: &Denied) -> Flow {
    let headers = [("www-authenticate", d.www_authenticate.as_str())];
    if !s.send_response(d.code, &headers, Some(d.body.as_bytes())) {
        wasmesh_proxy::log_error("wasmesh authn: could not send the local reply");
    }
    Flow::Answered
}

/// The authn phase: evaluates each request once its headers are in.
struct AuthnPhase(Rc<Shared>);

impl Phase for AuthnPhase {
    fn name(&self) -> &'static str {
        "authn"
    }

    fn start(self: Rc<Self>, context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(AuthnRequest { shared: self.0.clone(), context_id })
    }

    fn callbacks(&self) -> Callbacks {
        wasmesh_authn::HTTP_CALLBACKS
    }

    fn tick_period(&self) -> Option<Duration> {
        let busy = self.0.waits.try_borrow().map(|w| !w.waiting.is_empty() || !w.calls.is_empty()).unwrap_or(true)
            || self.0.engine.try_borrow().map(|e| e.fetches_pending()).unwrap_or(true);
        Some(if busy {
            FAST_TICK
        } else if self.0.remote {
            REMOTE_IDLE_TICK
        } else {
            SLOW_TICK
        })
    }

    fn tick(&self) {
        let shared = &self.0;
        shared.dispatch_due();
        shared.wake();
        shared.recheck_secret();
        shared.metrics.flush();
    }

    fn root_http_call_response(&self, token_id: u32, _num_headers: usize, body_size: usize) -> bool {
        let shared = &self.0;
        let provider = match shared.waits.try_borrow_mut() {
            Ok(mut w) => {
                let at = w.calls.iter().position(|(t, _)| *t == token_id);
                at.map(|i| w.calls.remove(i).1)
            }
            Err(_) => None,
        };
        let Some(provider) = provider else { return false };
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| s.parse::<u32>().ok());
        let follows = if body_size > MAX_BODY_BYTES {
            shared.record_fetch(provider, status, &[], Some(format!("JWKS body of {body_size} bytes is too large")))
        } else {
            let body = if body_size == 0 {
                Vec::new()
            } else {
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
            };
            let call_error =
                status.is_none().then(|| "no response (connection failure, timeout or missing cluster)".to_string());
            shared.record_fetch(provider, status, &body, call_error)
        };
        if follows {
            shared.dispatch_due();
        }
        shared.wake();
        true
    }

    fn done(&self) {
        self.0.metrics.flush();
    }
}

struct AuthnRequest {
    shared: Rc<Shared>,
    context_id: u32,
}

impl PhaseRequest for AuthnRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        match self.shared.evaluate(s) {
            Step::Continue => Flow::Continue,
            Step::Respond(d) => respond(s, &d),
            Step::Wait { since_ms, providers } => {
                let m = &self.shared.metrics;
                let Ok(mut w) = self.shared.waits.try_borrow_mut() else {
                    m.denied.bump();
                    return respond(s, &internal_denial());
                };
                if w.waiting.len() >= MAX_WAITERS {
                    drop(w);
                    wasmesh_proxy::log_warn(&format!(
                        "wasmesh authn: {MAX_WAITERS} requests already wait for JWKS keys; refusing this one"
                    ));
                    let d = self.shared.timed_out(s);
                    return respond(s, &d);
                }
                m.paused.bump();
                w.waiting.push(Waiter { context_id: self.context_id, since_ms, providers });
                Flow::Pause
            }
        }
    }
}

impl Drop for AuthnRequest {
    /// A request that goes away while waiting leaves the list.
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.waits.try_borrow_mut() {
            w.waiting.retain(|waiter| waiter.context_id != self.context_id);
        }
    }
}

/// The second authn phase: right after [`AuthnPhase`], it acts only on a request the root side
/// resumed after a wait for keys, on the request's stream: evaluates it again (keys settled) or
/// refuses it (waited too long). Other requests pass it without a hostcall.
struct AfterKeys(Rc<Shared>);

impl Phase for AfterKeys {
    fn name(&self) -> &'static str {
        "authn.after_keys"
    }

    fn start(self: Rc<Self>, context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(AfterKeysRequest { shared: self.0.clone(), context_id })
    }

    fn callbacks(&self) -> Callbacks {
        wasmesh_authn::HTTP_CALLBACKS
    }
}

struct AfterKeysRequest {
    shared: Rc<Shared>,
    context_id: u32,
}

impl PhaseRequest for AfterKeysRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let verdict = match self.shared.waits.try_borrow_mut() {
            Ok(mut w) => {
                let at = w.resumed.iter().position(|(id, _)| *id == self.context_id);
                at.map(|i| w.resumed.remove(i).1)
            }
            Err(_) => {
                self.shared.metrics.denied.bump();
                return respond(s, &internal_denial());
            }
        };
        match verdict {
            None => Flow::Continue,
            Some(Resumed::TimedOut) => {
                let d = self.shared.timed_out(s);
                respond(s, &d)
            }
            Some(Resumed::Evaluate) => match self.shared.evaluate(s) {
                Step::Continue => Flow::Continue,
                Step::Respond(d) => respond(s, &d),
                // The keys were settled: waiting again would resume past this phase, so the
                // request is refused instead (fail closed).
                Step::Wait { .. } => {
                    wasmesh_proxy::log_warn("wasmesh authn: keys still missing after the wait; refusing the request");
                    let d = self.shared.timed_out(s);
                    respond(s, &d)
                }
            },
        }
    }
}

/// Compiles the configuration; without a `workload` the proxy's identity comes from the Envoy
/// node metadata, and a node that does not carry it refuses the configuration (fail closed).
fn compile(bytes: &[u8]) -> Result<Authn, String> {
    let mut cfg = AuthnConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    wasmesh_proxy::complete_workload_from_node(&mut cfg)?;
    cfg.compile_parsed(bytes).map_err(|e| e.to_string())
}

fn log_providers(engine: &Authn) {
    for p in engine.providers() {
        let keys = match &p.jwks {
            JwksSource::Inline(k) => {
                for why in &k.skipped {
                    wasmesh_proxy::log_warn(&format!("wasmesh authn: {}: inline JWKS key skipped: {why}", p.source));
                }
                format!("inline JWKS with {} usable keys", k.keys.len())
            }
            JwksSource::Remote(r) => format!("keys from {} via cluster {}", r.endpoint.uri, r.endpoint.cluster),
        };
        wasmesh_proxy::log_info(&format!("wasmesh authn: {}: issuer {:?}, {keys}", p.source, p.issuer));
    }
}
