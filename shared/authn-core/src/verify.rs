//! Evaluating one request: Envoy jwt_authn's verifier tree (`verifier.cc`) over Istio's
//! requirement, each provider's check in Envoy's order (`authenticator.cc`: parse, issuer, time,
//! audience, key, signature), the status Envoy answers, and what a success writes.

use crate::cache::{hash_key, slot_key, token_hash, Entry, TokenCache, L1, MAX_ENTRY_BYTES};
use crate::extract::{extract, parse_cookies, parse_query, query_of, Found, Gathered, Location};
use crate::identity::{claim_header_value, identity};
use crate::jwks::KeySet;
use crate::jwt::{parse, time_constraint, Jwt, Status};
use crate::remote::{FetchOutcome, FetchRequest, KeyState, RemoteJwks};
use std::cell::RefCell;
use std::rc::Rc;

/// Where a provider's keys come from.
pub enum JwksSource {
    Inline(KeySet),
    Remote(Box<RemoteJwks>),
}

/// Envoy's `CheckAudience` sanitising: `http://` / `https://` prefix and one trailing `/` are
/// ignored on both sides.
pub fn sanitize_audience(aud: &str) -> &str {
    let a = aud.strip_prefix("http://").or_else(|| aud.strip_prefix("https://")).unwrap_or(aud);
    a.strip_suffix('/').unwrap_or(a)
}

/// Envoy's default `clock_skew_seconds` (Istio does not change it).
pub const CLOCK_SKEW_SECS: u64 = 60;
/// `Http::Utility::buildOriginalUri` truncates the path to this many bytes in the realm.
const MAX_REALM_PATH: usize = 256;

/// One `jwtRules` entry, compiled.
pub struct Provider {
    pub index: usize,
    /// `RequestAuthentication ns/name spec.jwtRules[i]`, for logs.
    pub source: String,
    /// Empty: any issuer (Envoy `JwtIssuerChecker` allow-all).
    pub issuer: String,
    /// Sanitized as Envoy's `CheckAudience`; empty: audience not checked.
    pub audiences: Vec<String>,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    pub claim_to_headers: Vec<(String, String)>,
    pub space_delimited: Vec<String>,
    pub jwks: JwksSource,
}

impl Provider {
    fn key_still_served(&self, fp: u64) -> bool {
        match &self.jwks {
            JwksSource::Inline(set) => set.contains_fingerprint(fp),
            JwksSource::Remote(r) => r.keys().is_some_and(|k| k.contains_fingerprint(fp)),
        }
    }

    fn audience_allowed(&self, token_auds: &[String]) -> bool {
        self.audiences.is_empty() || token_auds.iter().any(|a| self.audiences.iter().any(|c| c == sanitize_audience(a)))
    }
}

/// Envoy `JwtRequirement` (the subset Istio emits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    AllowAll,
    Provider(usize),
    Any { children: Vec<Requirement>, allow_missing: bool },
    All(Vec<Requirement>),
}

pub struct Options {
    pub max_token_bytes: usize,
    pub cache_slots: u32,
    /// Configuration fingerprint: cache entries of another configuration are never used.
    pub cache_salt: [u8; 16],
    /// Gateways: ask Envoy to recompute the route after success (Istio `clear_route_cache`).
    pub clear_route_cache: bool,
    pub jwks_max_wait_ms: u64,
    /// Write the verified identity (and "evaluated") to Envoy filter state for readers outside
    /// this filter; off, it is kept for the later phases of the same chain only.
    pub identity_filter_state: bool,
}

/// How the engine reads the request. Header names are lower case; pseudo-headers `:method`,
/// `:path`, `:authority` included. Only the first value of a header is needed.
pub trait RequestHeaders {
    fn header(&self, name: &str) -> Option<Vec<u8>>;
}

/// A request-header change to apply (in order) when the request is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Remove(String),
    /// Appends a value (Envoy `addCopy`).
    Add(String, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Encoded `wasmesh_handover::RequestIdentity` of the last verified token, if any.
    pub identity: Option<Vec<u8>>,
    pub mutations: Vec<Mutation>,
    pub clear_route_cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub status: Status,
    pub code: u32,
    pub body: &'static str,
    pub www_authenticate: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitFor {
    pub provider: usize,
    /// The token's `kid` is not among the keys: refetch (rate-limited) rather than the refresh.
    pub unknown_kid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No RequestAuthentication applies to this proxy.
    NotConfigured,
    /// CORS preflight (`OPTIONS` + `Origin` + `Access-Control-Request-Method`): passes
    /// regardless of tokens (Istio sets `bypass_cors_preflight`).
    CorsBypass,
    Allow(Allowed),
    Deny(Denied),
    /// Keys are being fetched: pause the request and evaluate it again when they arrive.
    Wait(Vec<WaitFor>),
}

/// Counters for one evaluation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EvalStats {
    pub cache_hits: u32,
    pub cache_misses: u32,
    pub signature_checks: u32,
    /// Tokens over `maxTokenBytes` (refused, 401 `Jwt is too large`).
    pub tokens_too_large: u32,
    /// Tokens whose header or payload nests deeper than [`crate::jwt::MAX_JSON_DEPTH`]
    /// (refused as bad JSON).
    pub json_too_deep: u32,
    /// Verified tokens not cached because their entry exceeds [`crate::cache::MAX_ENTRY_BYTES`].
    pub cache_entries_too_large: u32,
}

pub struct Authn {
    providers: Vec<Provider>,
    requirement: Requirement,
    opts: Options,
    /// Output headers removed from every request before extraction (client cannot forge them).
    sanitized: Vec<String>,
    /// Header names token locations read.
    token_headers: Vec<String>,
    /// The `fromParams` / `fromCookies` names of every rule (only these are kept when a
    /// request's query string or cookies are parsed).
    param_names: Vec<String>,
    cookie_names: Vec<String>,
    /// Key of the token hash: the VMs' shared secret mixed with the configuration salt.
    hash_key: [u8; 16],
    /// Per-VM decoded entries in front of the shared cache.
    l1: RefCell<L1>,
}

enum R {
    Ok,
    Err(Status),
    Wait,
}

struct Success<'g> {
    provider: usize,
    header: Option<&'g str>,
    entry: Rc<Entry>,
}

/// A token's cache lookup, remembered for the rest of the request.
type LookedUp<'g> = (&'g str, [u8; 16], Option<Rc<Entry>>);

struct Ctx<'g, 'c> {
    /// The time (Unix ms), asked of the clock the first time a token needs it.
    clock: &'c dyn Fn() -> u64,
    now_ms: Option<u64>,
    cache: &'c mut dyn TokenCache,
    parsed: Vec<(&'g str, Result<Jwt, Status>)>,
    looked_up: Vec<LookedUp<'g>>,
    successes: Vec<Success<'g>>,
    waits: Vec<WaitFor>,
    stats: &'c mut EvalStats,
}

impl Authn {
    pub fn new(providers: Vec<Provider>, requirement: Requirement, opts: Options) -> Self {
        let mut sanitized: Vec<String> = Vec::new();
        let mut token_headers: Vec<String> = Vec::new();
        let mut param_names: Vec<String> = Vec::new();
        let mut cookie_names: Vec<String> = Vec::new();
        for p in &providers {
            if let Some(h) = &p.forward_payload_header {
                sanitized.push(h.clone());
            }
            for (h, _) in &p.claim_to_headers {
                sanitized.push(h.clone());
            }
            for loc in &p.locations {
                match loc {
                    Location::Header { name, .. } => token_headers.push(name.clone()),
                    Location::Param(name) => param_names.push(name.clone()),
                    Location::Cookie(name) => cookie_names.push(name.clone()),
                }
            }
        }
        sanitized.sort();
        sanitized.dedup();
        token_headers.sort();
        token_headers.dedup();
        token_headers.retain(|h| !sanitized.contains(h));
        for names in [&mut param_names, &mut cookie_names] {
            names.sort();
            names.dedup();
        }
        let hash_key = opts.cache_salt;
        Authn {
            providers,
            requirement,
            opts,
            sanitized,
            token_headers,
            param_names,
            cookie_names,
            hash_key,
            l1: RefCell::new(L1::default()),
        }
    }

    /// Sets the secret all VMs of the process share (kept in proxy-wasm shared data), so they
    /// hash tokens alike and use each other's cache entries.
    pub fn set_cache_secret(&mut self, secret: &[u8; 16]) {
        let key = hash_key(secret, &self.opts.cache_salt);
        if key != self.hash_key {
            self.hash_key = key;
            self.l1 = RefCell::new(L1::default());
        }
    }

    /// Entries in this VM's L1 cache.
    pub fn l1_len(&self) -> usize {
        self.l1.try_borrow().map(|l| l.len()).unwrap_or(0)
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    pub fn requirement(&self) -> &Requirement {
        &self.requirement
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub fn is_configured(&self) -> bool {
        !self.providers.is_empty()
    }

    pub fn has_remote_jwks(&self) -> bool {
        self.providers.iter().any(|p| matches!(p.jwks, JwksSource::Remote(_)))
    }

    /// The inline key set of a provider (tests, diagnostics).
    pub fn inline_keys(&self, provider: usize) -> Option<&KeySet> {
        match &self.providers.get(provider)?.jwks {
            JwksSource::Inline(k) => Some(k),
            JwksSource::Remote(r) => r.keys(),
        }
    }

    /// Whether the keys of these providers are settled (see [`RemoteJwks::settled`]): a request
    /// that waited for them can be evaluated again without waiting again. Inline keys always are.
    pub fn keys_settled(&self, providers: &[usize]) -> bool {
        providers.iter().all(|i| match self.providers.get(*i).map(|p| &p.jwks) {
            Some(JwksSource::Remote(r)) => r.settled(),
            Some(JwksSource::Inline(_)) | None => true,
        })
    }

    /// Whether a fetch is in flight, wanted, or not yet tried for any provider (the adapter
    /// checks more often meanwhile).
    pub fn fetches_pending(&self) -> bool {
        self.providers.iter().any(|p| matches!(&p.jwks, JwksSource::Remote(r) if !r.settled()))
    }

    /// JWKS fetches to start now (start-up, refresh, retry after backoff, unknown `kid`).
    pub fn poll_fetches(&mut self, now_ms: u64) -> Vec<(usize, FetchRequest)> {
        let mut out = Vec::new();
        for p in &mut self.providers {
            if let JwksSource::Remote(r) = &mut p.jwks {
                if let Some(req) = r.poll(now_ms) {
                    out.push((p.index, req));
                }
            }
        }
        out
    }

    /// The fetches the last [`Self::poll_fetches`] refused without making them (an address in
    /// `BLOCKED_CIDRS_IN_JWKS_URIS`), each once, with the provider's index.
    pub fn take_refused_fetches(&mut self) -> Vec<(usize, FetchOutcome)> {
        let mut out = Vec::new();
        for p in &mut self.providers {
            if let JwksSource::Remote(r) = &mut p.jwks {
                if let Some(outcome) = r.take_refused() {
                    out.push((p.index, outcome));
                }
            }
        }
        out
    }

    /// The answer to a fetch started by [`Self::poll_fetches`].
    pub fn on_fetch_response(
        &mut self,
        provider: usize,
        now_ms: u64,
        status: Option<u32>,
        body: &[u8],
    ) -> Option<FetchOutcome> {
        match &mut self.providers.get_mut(provider)?.jwks {
            JwksSource::Remote(r) => Some(r.on_response(now_ms, status, body)),
            JwksSource::Inline(_) => None,
        }
    }

    /// A paused request is waiting for this provider's keys.
    pub fn want_keys(&mut self, w: WaitFor, now_ms: u64) {
        if let Some(JwksSource::Remote(r)) = self.providers.get_mut(w.provider).map(|p| &mut p.jwks) {
            if w.unknown_kid {
                r.request_kid_refetch(now_ms);
            }
        }
    }

    /// Evaluates a request at `now_ms` (Unix time in milliseconds).
    pub fn evaluate(
        &self,
        req: &dyn RequestHeaders,
        now_ms: u64,
        cache: &mut dyn TokenCache,
        stats: &mut EvalStats,
    ) -> Outcome {
        self.evaluate_with_clock(req, &|| now_ms, cache, stats)
    }

    /// Evaluates a request, asking `clock` for the time (Unix ms) only when a token is checked,
    /// and then once: a request without a token (or a CORS preflight) needs no clock read.
    pub fn evaluate_with_clock(
        &self,
        req: &dyn RequestHeaders,
        clock: &dyn Fn() -> u64,
        cache: &mut dyn TokenCache,
        stats: &mut EvalStats,
    ) -> Outcome {
        if self.providers.is_empty() {
            return Outcome::NotConfigured;
        }
        // The three conditions of a CORS preflight, the one most requests lack first: an absent
        // header is the cheapest read for a host that reads headers one by one.
        if req.header("access-control-request-method").is_some_and(|v| !v.is_empty())
            && req.header(":method").is_some_and(|m| m == b"OPTIONS")
            && req.header("origin").is_some_and(|v| !v.is_empty())
        {
            return Outcome::CorsBypass;
        }
        let mut gathered = Gathered::default();
        for h in &self.token_headers {
            gathered.headers.push((h.clone(), req.header(h).map(Gathered::text)));
        }
        let mut path: Option<Vec<u8>> = None;
        if !self.param_names.is_empty() {
            let p = req.header(":path").unwrap_or_default();
            gathered.params = parse_query(query_of(&p), |k| self.param_names.iter().any(|n| n == k));
            path = Some(p);
        }
        if !self.cookie_names.is_empty() {
            if let Some(c) = req.header("cookie") {
                gathered.cookies = parse_cookies(&c, |k| self.cookie_names.iter().any(|n| n == k));
            }
        }
        let gathered = gathered;
        let mut ctx = Ctx {
            clock,
            now_ms: None,
            cache,
            parsed: Vec::new(),
            looked_up: Vec::new(),
            successes: Vec::new(),
            waits: Vec::new(),
            stats,
        };
        match self.eval(&self.requirement, &gathered, &mut ctx) {
            R::Ok => {
                let mut mutations: Vec<Mutation> = self.sanitized.iter().map(|h| Mutation::Remove(h.clone())).collect();
                for s in &ctx.successes {
                    let Some(p) = self.providers.get(s.provider) else { continue };
                    if let (Some(h), Some(payload)) = (&p.forward_payload_header, &s.entry.payload_b64) {
                        mutations.push(Mutation::Add(h.clone(), payload.as_bytes().to_vec()));
                    }
                    for (h, v) in &s.entry.claim_headers {
                        mutations.push(Mutation::Add(h.clone(), v.as_bytes().to_vec()));
                    }
                    if !p.forward {
                        if let Some(h) = s.header {
                            let m = Mutation::Remove(h.to_string());
                            if !mutations.contains(&m) {
                                mutations.push(m);
                            }
                        }
                    }
                }
                let verified = !ctx.successes.is_empty();
                Outcome::Allow(Allowed {
                    identity: ctx.successes.pop().map(|s| s.entry.identity.clone()),
                    mutations,
                    clear_route_cache: verified && self.opts.clear_route_cache,
                })
            }
            R::Wait => {
                let mut waits = ctx.waits;
                waits.sort_by_key(|w| (w.provider, w.unknown_kid));
                waits.dedup();
                Outcome::Wait(waits)
            }
            R::Err(status) => Outcome::Deny(self.deny(status, req, path)),
        }
    }

    /// The local reply for `status` on this request (e.g. a request that waited too long).
    pub fn deny_with(&self, status: Status, req: &dyn RequestHeaders) -> Denied {
        self.deny(status, req, None)
    }

    /// The local reply Envoy sends (`filter.cc` `onComplete`).
    fn deny(&self, status: Status, req: &dyn RequestHeaders, path: Option<Vec<u8>>) -> Denied {
        let scheme = req.header("x-forwarded-proto").unwrap_or_default();
        let host = req.header(":authority").unwrap_or_default();
        let path = match req.header("x-envoy-original-path") {
            Some(p) => p,
            None => path.or_else(|| req.header(":path")).unwrap_or_default(),
        };
        let path = &path[..path.len().min(MAX_REALM_PATH)];
        let mut uri = Vec::with_capacity(scheme.len() + host.len() + path.len() + 3);
        uri.extend_from_slice(&scheme);
        uri.extend_from_slice(b"://");
        uri.extend_from_slice(&host);
        uri.extend_from_slice(path);
        let mut value = format!("Bearer realm=\"{}\"", String::from_utf8_lossy(&uri));
        if status != Status::JwtMissed {
            value.push_str(", error=\"invalid_token\"");
        }
        Denied { status, code: status.http_status(), body: status.message(), www_authenticate: value }
    }

    fn eval<'g>(&'g self, r: &Requirement, g: &'g Gathered, ctx: &mut Ctx<'g, '_>) -> R {
        match r {
            Requirement::AllowAll => R::Ok,
            Requirement::Provider(i) => self.eval_provider(*i, g, ctx),
            Requirement::Any { children, allow_missing } => {
                let mut statuses = Vec::with_capacity(children.len());
                let mut waiting = false;
                for child in children {
                    match self.eval(child, g, ctx) {
                        R::Ok => return R::Ok,
                        R::Wait => waiting = true,
                        R::Err(s) => statuses.push(s),
                    }
                }
                if waiting {
                    return R::Wait;
                }
                // Envoy's aggregation: prefer a real error over JwtUnknownIssuer over JwtMissed.
                let mut fin = Status::JwtMissed;
                for s in statuses {
                    if (s != Status::JwtMissed && s != Status::JwtUnknownIssuer) || fin == Status::JwtMissed {
                        fin = s;
                    }
                }
                if *allow_missing && fin == Status::JwtMissed {
                    R::Ok
                } else {
                    R::Err(fin)
                }
            }
            Requirement::All(children) => {
                let mut waiting = false;
                for child in children {
                    match self.eval(child, g, ctx) {
                        R::Ok => {}
                        R::Wait => waiting = true,
                        R::Err(s) => return R::Err(s),
                    }
                }
                if waiting {
                    R::Wait
                } else {
                    R::Ok
                }
            }
        }
    }

    /// One provider: every token found at its locations must verify (Envoy processes them from
    /// the last found to the first and stops at the first failure).
    fn eval_provider<'g>(&'g self, index: usize, g: &'g Gathered, ctx: &mut Ctx<'g, '_>) -> R {
        let Some(p) = self.providers.get(index) else { return R::Err(Status::JwtUnknownIssuer) };
        let found = extract(&p.locations, g, &self.sanitized);
        if found.is_empty() {
            return R::Err(Status::JwtMissed);
        }
        for f in found.iter().rev() {
            match self.verify_one(p, f, ctx) {
                R::Ok => {}
                other => return other,
            }
        }
        R::Ok
    }

    /// The cached verification of a token, if any: this VM's L1, then the shared cache.
    fn lookup<'g>(&self, token: &'g str, ctx: &mut Ctx<'g, '_>) -> Option<([u8; 16], Option<Rc<Entry>>)> {
        if self.opts.cache_slots == 0 {
            return None;
        }
        if let Some((_, h, e)) = ctx.looked_up.iter().find(|(t, _, _)| *t == token) {
            return Some((*h, e.clone()));
        }
        let hash = token_hash(&self.hash_key, token);
        let mut entry = self.l1.try_borrow().ok().and_then(|l1| l1.get(&hash));
        if entry.is_none() {
            entry = ctx
                .cache
                .get(&slot_key(&self.opts.cache_salt, &hash, self.opts.cache_slots))
                .and_then(|b| Entry::decode(&b))
                .filter(|e| e.hash == hash)
                .map(Rc::new);
            if let (Some(e), Ok(mut l1)) = (&entry, self.l1.try_borrow_mut()) {
                l1.insert(e.clone());
            }
        }
        ctx.looked_up.push((token, hash, entry.clone()));
        Some((hash, entry))
    }

    fn verify_one<'g>(&'g self, p: &Provider, found: &Found<'g>, ctx: &mut Ctx<'g, '_>) -> R {
        let token: &'g str = found.token;
        if token.len() > self.opts.max_token_bytes {
            ctx.stats.tokens_too_large += 1;
            return R::Err(Status::JwtTooLarge);
        }
        let now_ms = *ctx.now_ms.get_or_insert_with(|| (ctx.clock)());
        let now = now_ms / 1000;
        let looked = self.lookup(token, ctx);
        if let Some((_, Some(e))) = &looked {
            // Same hash: same token, so its issuer is known without parsing.
            if !p.issuer.is_empty() && e.iss != p.issuer {
                return R::Err(Status::JwtUnknownIssuer);
            }
            if e.provider as usize == p.index && e.fresh(now) && p.key_still_served(e.key_fp) {
                let t = time_constraint(e.nbf, e.exp, now, CLOCK_SKEW_SECS);
                if t != Status::Ok {
                    return R::Err(t);
                }
                if !p.audience_allowed(&e.audiences) {
                    return R::Err(Status::JwtAudienceNotAllowed);
                }
                ctx.stats.cache_hits += 1;
                ctx.successes.push(Success { provider: p.index, header: found.header, entry: e.clone() });
                return R::Ok;
            }
        }
        if !ctx.parsed.iter().any(|(t, _)| *t == token) {
            let parsed = parse(token, self.opts.max_token_bytes);
            if matches!(parsed, Err(Status::JwtHeaderParseErrorBadJson | Status::JwtPayloadParseErrorBadJson))
                && crate::jwt::exceeds_json_depth(token)
            {
                ctx.stats.json_too_deep += 1;
            }
            ctx.parsed.push((token, parsed));
        }
        let Some((_, parsed)) = ctx.parsed.iter().find(|(t, _)| *t == token) else {
            return R::Err(Status::JwtBadFormat);
        };
        let jwt = match parsed {
            Ok(j) => j,
            Err(s) => return R::Err(*s),
        };
        if !p.issuer.is_empty() && jwt.iss != p.issuer {
            return R::Err(Status::JwtUnknownIssuer);
        }
        let t = jwt.verify_time(now, CLOCK_SKEW_SECS);
        if t != Status::Ok {
            return R::Err(t);
        }
        if !p.audience_allowed(&jwt.audiences) {
            return R::Err(Status::JwtAudienceNotAllowed);
        }
        let keys = match &p.jwks {
            JwksSource::Inline(set) => set,
            JwksSource::Remote(r) => match r.key_state() {
                KeyState::Ready(set) => {
                    if !set.has_candidate(jwt) && r.kid_refetch_allowed(now_ms) {
                        ctx.waits.push(WaitFor { provider: p.index, unknown_kid: true });
                        return R::Wait;
                    }
                    set
                }
                KeyState::Pending => {
                    ctx.waits.push(WaitFor { provider: p.index, unknown_kid: false });
                    return R::Wait;
                }
                KeyState::Failed => return R::Err(Status::JwksFetchFail),
            },
        };
        ctx.stats.signature_checks += 1;
        let fp = match keys.verify(token, jwt, now, CLOCK_SKEW_SECS, self.opts.max_token_bytes) {
            Ok(fp) => fp,
            Err(s) => return R::Err(s),
        };
        if looked.is_some() {
            ctx.stats.cache_misses += 1;
        }
        let id = identity(&jwt.iss, jwt.sub.as_deref(), &jwt.audiences, &jwt.payload, &p.space_delimited);
        let encoded = wasmesh_handover::encode(&id);
        let claim_headers: Vec<(String, String)> = p
            .claim_to_headers
            .iter()
            .filter_map(|(h, c)| claim_header_value(&jwt.payload, c).map(|v| (h.clone(), v)))
            .collect();
        let payload_b64 = p.forward_payload_header.as_ref().map(|_| jwt.payload_b64.clone());
        let entry = Rc::new(Entry {
            hash: looked.as_ref().map(|(h, _)| *h).unwrap_or_default(),
            provider: p.index as u32,
            key_fp: fp,
            iss: jwt.iss.clone(),
            nbf: jwt.nbf,
            exp: jwt.exp,
            verified_at: now,
            audiences: jwt.audiences.clone(),
            identity: encoded,
            claim_headers,
            payload_b64,
        });
        if let Some((hash, _)) = looked {
            let bytes = entry.encode();
            if bytes.len() <= MAX_ENTRY_BYTES {
                ctx.cache.put(&slot_key(&self.opts.cache_salt, &hash, self.opts.cache_slots), &bytes);
                if let Ok(mut l1) = self.l1.try_borrow_mut() {
                    l1.insert(entry.clone());
                }
            } else {
                ctx.stats.cache_entries_too_large += 1;
            }
        }
        ctx.successes.push(Success { provider: p.index, header: found.header, entry });
        R::Ok
    }
}
