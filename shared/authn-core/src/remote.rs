//! Remote JWKS (`jwksUri`, or OpenID discovery from the issuer) as a small state machine the
//! filter drives: fetch at start, refresh periodically, refetch (rate-limited) when a token names
//! an unknown `kid`, retry failures with exponential backoff while keeping the last good keys.
//! Pure: the adapter performs the HTTP calls and reports the results; times are milliseconds.

#![deny(clippy::indexing_slicing)]

use crate::jwks::{parse_jwks, KeySet};
use serde::Serialize;
use std::net::IpAddr;

/// First retry delay after a failed fetch; doubles per consecutive failure.
pub const BACKOFF_MIN_MS: u64 = 1_000;
/// Longest retry delay (istiod retries a failed JWKS every minute).
pub const BACKOFF_MAX_MS: u64 = 60_000;
/// Longest `jwksUri` accepted (configuration: the value becomes a `:path` and a cluster name;
/// browsers and proxies commonly cap URLs near 2 KiB).
pub const MAX_JWKS_URI_BYTES: usize = 2048;
/// Largest fetched body accepted.
pub const MAX_BODY_BYTES: usize = crate::jwks::MAX_JWKS_BYTES;

/// Where a `jwksUri` (or the issuer's OpenID discovery document) is fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwksEndpoint {
    pub uri: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` (non-default port), the `:authority` of the fetch.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// The Envoy cluster the fetch goes through (see [`jwks_cluster_name`]).
    pub cluster: String,
}

/// Most CIDR blocks in a [`BlockedCidrs`] list (configuration; each fetch walks the list once).
pub const MAX_BLOCKED_CIDRS: usize = 256;

/// Istio's `BLOCKED_CIDRS_IN_JWKS_URIS` (istiod environment variable, Istio 1.29): CIDR blocks
/// a JWKS or OpenID discovery fetch must never connect to. istiod checks the address it dials
/// (after DNS, for the `jwksUri`, the issuer's discovery document and the discovered
/// `jwks_uri`); when it is inside a block it does not fetch and every token of that issuer is
/// rejected. wasmeshctl checks the same at generate time (it resolves host names); the filter
/// checks every fetch whose host is an IP address (it cannot see what Envoy's DNS resolves a
/// cluster's host name to).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockedCidrs(Vec<(IpAddr, u8, String)>);

impl BlockedCidrs {
    /// Parses CIDR blocks (`10.0.0.0/8`, `fd00::/8`; a bare address is a single host).
    pub fn parse<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in items {
            let text = item.as_ref().trim();
            if text.is_empty() {
                continue;
            }
            if out.len() >= MAX_BLOCKED_CIDRS {
                return Err(format!("more than {MAX_BLOCKED_CIDRS} CIDR blocks"));
            }
            let (addr, bits) = match text.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (text, None),
            };
            let ip: IpAddr =
                addr.parse().map_err(|_| format!("{text:?} is not a CIDR block (expected e.g. 10.0.0.0/8)"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{text:?}: prefix length must be 0-{max}"))?,
            };
            out.push((ip, bits, text.to_string()));
        }
        Ok(BlockedCidrs(out))
    }

    /// The comma-separated form istiod reads from `BLOCKED_CIDRS_IN_JWKS_URIS`.
    pub fn parse_env(value: &str) -> Result<Self, String> {
        Self::parse(value.split(','))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The blocks as written.
    pub fn blocks(&self) -> Vec<String> {
        self.0.iter().map(|(_, _, t)| t.clone()).collect()
    }

    /// The block `ip` is inside, as written (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn block_of(&self, ip: IpAddr) -> Option<&str> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.iter().find(|(net, bits, _)| in_block(ip, *net, *bits)).map(|(_, _, t)| t.as_str())
    }

    /// Why a fetch of `ep` is refused: its host is an IP address inside a block.
    pub fn refuses(&self, ep: &JwksEndpoint) -> Option<String> {
        let ip: IpAddr = ep.host.parse().ok()?;
        self.block_of(ip)
            .map(|block| format!("{} is not fetched: {ip} is inside {block} of BLOCKED_CIDRS_IN_JWKS_URIS", ep.uri))
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The dedicated cluster wasmeshctl generates for a JWKS server:
/// `wasmesh-jwks|<http|https>|<host>|<port>`. One per distinct server, shared by all rules.
pub fn jwks_cluster_name(tls: bool, host: &str, port: u16) -> String {
    format!("wasmesh-jwks|{}|{}|{}", if tls { "https" } else { "http" }, host, port)
}

/// Parses a `jwksUri` as Istio's `security.ParseJwksURI` does: http or https, a host, the
/// scheme's default port when none is given.
pub fn parse_jwks_uri(uri: &str) -> Result<JwksEndpoint, String> {
    if uri.len() > MAX_JWKS_URI_BYTES {
        return Err(format!("jwksUri is {} characters; at most {MAX_JWKS_URI_BYTES} are allowed", uri.len()));
    }
    let (tls, rest) = if let Some(r) = uri.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = uri.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("URI scheme of {uri:?} is not supported; expected http:// or https://"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (hostport, mut path) = rest.split_at(end);
    if let Some(hash) = path.find('#') {
        path = &path[..hash];
    }
    let hostport = hostport.rsplit_once('@').map(|(_, h)| h).unwrap_or(hostport);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6.find(']').ok_or_else(|| format!("jwksUri {uri:?} has an unterminated IPv6 address"))?;
        let host = &v6[..close];
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("jwksUri {uri:?} has garbage after the IPv6 address")),
        };
        (host.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("jwksUri {uri:?} has no host"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("jwksUri {uri:?} has an invalid host"));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("jwksUri {uri:?} has an invalid port {p:?}"))?,
    };
    let host = host.to_ascii_lowercase();
    let bracketed = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let authority = if port == default_port { bracketed } else { format!("{bracketed}:{port}") };
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let cluster = jwks_cluster_name(tls, &host, port);
    Ok(JwksEndpoint { uri: uri.to_string(), tls, host, port, authority, path, cluster })
}

/// OpenID discovery document location for an issuer (istiod's `jwks_resolver.go`).
pub fn discovery_uri(issuer: &str) -> String {
    format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `<issuer>/.well-known/openid-configuration`, to learn `jwks_uri`.
    Discovery,
    Jwks,
}

/// One HTTP GET the adapter must make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub stage: Stage,
    pub uri: String,
}

/// The key situation a request sees.
pub enum KeyState<'a> {
    Ready(&'a KeySet),
    /// No keys yet and a fetch is coming (start-up, or one in flight): wait for it.
    Pending,
    /// No keys and the last fetch failed: every presented token fails.
    Failed,
}

pub struct RemoteJwks {
    pub endpoint: JwksEndpoint,
    pub discovery: bool,
    /// `jwks_uri` learnt by discovery.
    pub resolved: Option<JwksEndpoint>,
    pub timeout_ms: u64,
    refresh_ms: u64,
    kid_refetch_min_ms: u64,
    keys: Option<KeySet>,
    in_flight: Option<(u64, Stage)>,
    next_fetch_ms: u64,
    failures: u32,
    wanted: bool,
    last_kid_refetch_ms: Option<u64>,
    attempted: bool,
    pub last_error: Option<String>,
    pub fetched_at_ms: Option<u64>,
    blocked: BlockedCidrs,
    /// The last fetch [`Self::poll`] refused without making it (a blocked address), until the
    /// filter takes it to log and count it: at most one per provider.
    refused: Option<FetchOutcome>,
}

/// What a finished fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// New keys are in use (`skipped` lists keys that could not be used).
    Updated { keys: usize, skipped: Vec<String> },
    /// Discovery gave the JWKS location; the JWKS fetch follows immediately.
    Discovered(String),
    /// The fetch failed; the last good keys (if any) stay in use; retry after `retry_in_ms`.
    Failed { reason: String, retry_in_ms: u64 },
}

impl RemoteJwks {
    pub fn new(
        endpoint: JwksEndpoint,
        discovery: bool,
        timeout_ms: u64,
        refresh_ms: u64,
        kid_refetch_min_ms: u64,
    ) -> Self {
        RemoteJwks {
            endpoint,
            discovery,
            resolved: None,
            timeout_ms,
            refresh_ms: refresh_ms.max(1000),
            kid_refetch_min_ms,
            keys: None,
            in_flight: None,
            next_fetch_ms: 0,
            failures: 0,
            wanted: false,
            last_kid_refetch_ms: None,
            attempted: false,
            last_error: None,
            fetched_at_ms: None,
            blocked: BlockedCidrs::default(),
            refused: None,
        }
    }

    /// Refuses every fetch (discovery, JWKS, discovered JWKS) whose host is an IP address in
    /// `blocked`: the fetch fails, so no key is ever used and presented tokens are rejected.
    pub fn with_blocked(mut self, blocked: BlockedCidrs) -> Self {
        self.blocked = blocked;
        self
    }

    /// The fetch the last [`Self::poll`] refused (a [`FetchOutcome::Failed`]), once: the filter
    /// logs and counts it as it does a fetch that failed on the wire.
    pub fn take_refused(&mut self) -> Option<FetchOutcome> {
        self.refused.take()
    }

    pub fn key_state(&self) -> KeyState<'_> {
        match &self.keys {
            Some(k) => KeyState::Ready(k),
            None if !self.attempted || self.in_flight.is_some() || self.wanted => KeyState::Pending,
            None => KeyState::Failed,
        }
    }

    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.as_ref()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// No fetch is in flight or wanted, and one was tried: a request that waited for these keys
    /// gets its answer when evaluated now (the keys, or `Jwks remote fetch is failed`).
    pub fn settled(&self) -> bool {
        self.attempted && self.in_flight.is_none() && !self.wanted
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Whether a token with an unknown `kid` should wait for a refetch rather than fail now.
    pub fn kid_refetch_allowed(&self, now_ms: u64) -> bool {
        self.in_flight.is_some()
            || self.wanted
            || self.last_kid_refetch_ms.is_none_or(|t| now_ms.saturating_sub(t) >= self.kid_refetch_min_ms)
    }

    /// A request saw an unknown `kid`: fetch now (if allowed by the rate limit).
    pub fn request_kid_refetch(&mut self, now_ms: u64) {
        if self.in_flight.is_some() || self.wanted {
            return;
        }
        if self.last_kid_refetch_ms.is_none_or(|t| now_ms.saturating_sub(t) >= self.kid_refetch_min_ms) {
            self.wanted = true;
            self.last_kid_refetch_ms = Some(now_ms);
        }
    }

    /// The fetch to start now, if one is due; it is then in flight until [`Self::on_response`].
    /// A fetch whose answer never came (`timeout + 5 s`) counts as failed.
    pub fn poll(&mut self, now_ms: u64) -> Option<FetchRequest> {
        if let Some((since, _)) = self.in_flight {
            if now_ms.saturating_sub(since) > self.timeout_ms.saturating_add(5_000) {
                self.fail(now_ms, "no response from the JWKS server".into());
            } else {
                return None;
            }
        }
        if !(self.wanted || now_ms >= self.next_fetch_ms) {
            return None;
        }
        let stage = if self.discovery && self.resolved.is_none() { Stage::Discovery } else { Stage::Jwks };
        let ep = match (stage, &self.resolved) {
            (Stage::Jwks, Some(r)) => r,
            _ => &self.endpoint,
        };
        if let Some(reason) = self.blocked.refuses(ep) {
            self.refused = Some(self.fail(now_ms, reason));
            return None;
        }
        let req = FetchRequest {
            cluster: ep.cluster.clone(),
            authority: ep.authority.clone(),
            path: ep.path.clone(),
            timeout_ms: self.timeout_ms,
            stage,
            uri: ep.uri.clone(),
        };
        self.in_flight = Some((now_ms, stage));
        self.wanted = false;
        Some(req)
    }

    /// The response to the fetch in flight: `status` is the HTTP status (`None` when the call
    /// failed: no cluster, reset, timeout).
    pub fn on_response(&mut self, now_ms: u64, status: Option<u32>, body: &[u8]) -> FetchOutcome {
        let stage = match self.in_flight.take() {
            Some((_, stage)) => stage,
            None => Stage::Jwks,
        };
        let status = match status {
            None => return self.fail(now_ms, "the HTTP call failed (no healthy upstream, reset or timeout)".into()),
            Some(s) => s,
        };
        if status != 200 {
            return self.fail(now_ms, format!("HTTP status {status}"));
        }
        if body.len() > MAX_BODY_BYTES {
            return self.fail(now_ms, format!("body of {} bytes is larger than {MAX_BODY_BYTES}", body.len()));
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return self.fail(now_ms, "body is not UTF-8".into());
        };
        match stage {
            Stage::Discovery => {
                let doc: serde_json::Value = match serde_json::from_str(text) {
                    Ok(v) => v,
                    Err(e) => return self.fail(now_ms, format!("OpenID configuration is not JSON: {e}")),
                };
                let Some(uri) = doc.get("jwks_uri").and_then(|v| v.as_str()) else {
                    return self.fail(now_ms, "OpenID configuration has no \"jwks_uri\" string".into());
                };
                match parse_jwks_uri(uri) {
                    Ok(mut ep) => {
                        // The discovered server is reached through the issuer's cluster when it
                        // is the same server; otherwise through its own (which the controller
                        // cannot know in advance: see the README).
                        if ep.host == self.endpoint.host && ep.port == self.endpoint.port && ep.tls == self.endpoint.tls
                        {
                            ep.cluster = self.endpoint.cluster.clone();
                        }
                        let uri = ep.uri.clone();
                        self.resolved = Some(ep);
                        self.wanted = true;
                        FetchOutcome::Discovered(uri)
                    }
                    Err(e) => self.fail(now_ms, format!("OpenID configuration jwks_uri: {e}")),
                }
            }
            Stage::Jwks => match parse_jwks(text) {
                Err(e) => self.fail(now_ms, e.to_string()),
                Ok(set) if set.keys.is_empty() => {
                    let why = if set.skipped.is_empty() { "no keys".to_string() } else { set.skipped.join("; ") };
                    self.fail(now_ms, format!("JWKS has no usable key ({why})"))
                }
                Ok(set) => {
                    let outcome = FetchOutcome::Updated { keys: set.keys.len(), skipped: set.skipped.clone() };
                    self.keys = Some(set);
                    self.failures = 0;
                    self.attempted = true;
                    self.last_error = None;
                    self.fetched_at_ms = Some(now_ms);
                    self.next_fetch_ms = now_ms.saturating_add(self.refresh_ms);
                    outcome
                }
            },
        }
    }

    fn fail(&mut self, now_ms: u64, reason: String) -> FetchOutcome {
        self.in_flight = None;
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(16);
        let retry = BACKOFF_MIN_MS.saturating_mul(1 << shift).min(BACKOFF_MAX_MS);
        self.next_fetch_ms = now_ms.saturating_add(retry);
        self.attempted = true;
        self.wanted = false;
        self.last_error = Some(reason.clone());
        FetchOutcome::Failed { reason, retry_in_ms: retry }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const JWKS: &str =
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn remote(discovery: bool) -> RemoteJwks {
        let ep = parse_jwks_uri(if discovery {
            "https://idp.example/.well-known/openid-configuration"
        } else {
            "http://127.0.0.1:9000/jwks"
        })
        .unwrap();
        RemoteJwks::new(ep, discovery, 5000, 300_000, 10_000)
    }

    #[test]
    fn fetches_at_start_then_refreshes() {
        let mut r = remote(false);
        assert!(matches!(r.key_state(), KeyState::Pending));
        let req = r.poll(0).unwrap();
        assert_eq!(
            (req.cluster.as_str(), req.path.as_str(), req.authority.as_str()),
            ("wasmesh-jwks|http|127.0.0.1|9000", "/jwks", "127.0.0.1:9000")
        );
        assert!(r.poll(10).is_none(), "one fetch at a time");
        assert!(matches!(r.key_state(), KeyState::Pending));
        assert!(matches!(r.on_response(20, Some(200), JWKS.as_bytes()), FetchOutcome::Updated { keys: 1, .. }));
        assert!(matches!(r.key_state(), KeyState::Ready(_)));
        assert!(r.poll(299_000).is_none());
        assert!(r.poll(300_020).is_some(), "refresh after the cache duration");
    }

    #[test]
    fn failures_back_off_and_keep_the_last_good_keys() {
        let mut r = remote(false);
        r.poll(0);
        assert!(matches!(r.on_response(1, None, b""), FetchOutcome::Failed { retry_in_ms: 1000, .. }));
        assert!(matches!(r.key_state(), KeyState::Failed), "no keys at all: presented tokens fail");
        assert!(r.poll(500).is_none());
        r.poll(1001).unwrap();
        assert!(matches!(r.on_response(1002, Some(503), b""), FetchOutcome::Failed { retry_in_ms: 2000, .. }));
        r.poll(3002).unwrap();
        assert!(matches!(r.on_response(3003, Some(200), JWKS.as_bytes()), FetchOutcome::Updated { .. }));
        r.poll(400_000).unwrap();
        assert!(matches!(r.on_response(400_001, Some(200), b"not json"), FetchOutcome::Failed { .. }));
        assert!(matches!(r.key_state(), KeyState::Ready(_)), "last good keys kept");
        r.poll(401_001).unwrap();
        assert!(matches!(
            r.on_response(401_002, Some(200), br#"{"keys":[]}"#),
            FetchOutcome::Failed { retry_in_ms: 2000, .. }
        ));
        assert!(matches!(r.key_state(), KeyState::Ready(_)));
        // The backoff is capped.
        for _ in 0..20 {
            let t = r.next_fetch_ms;
            r.poll(t).unwrap();
            r.on_response(t, None, b"");
        }
        assert!(r.next_fetch_ms - r.fetched_at_ms.unwrap() > 0);
        assert!(matches!(r.on_response(0, None, b""), FetchOutcome::Failed { retry_in_ms: BACKOFF_MAX_MS, .. }));
    }

    #[test]
    fn lost_responses_count_as_failures() {
        let mut r = remote(false);
        r.poll(0).unwrap();
        assert!(r.poll(9_000).is_none(), "still within timeout + 5s");
        assert!(r.poll(10_001).is_none(), "marked failed, retry after backoff");
        assert_eq!(r.consecutive_failures(), 1);
        assert!(r.poll(11_001).is_some());
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let mut r = remote(false);
        r.poll(0);
        r.on_response(0, Some(200), JWKS.as_bytes());
        assert!(r.kid_refetch_allowed(1000));
        r.request_kid_refetch(1000);
        assert!(r.poll(1000).is_some(), "refetch now, not at the refresh time");
        r.on_response(1010, Some(200), JWKS.as_bytes());
        assert!(!r.kid_refetch_allowed(5000));
        r.request_kid_refetch(5000);
        assert!(r.poll(5000).is_none());
        assert!(r.kid_refetch_allowed(11_000));
    }

    #[test]
    fn keys_settle_when_no_fetch_is_in_flight_or_wanted() {
        let mut r = remote(true);
        assert!(!r.settled(), "never tried: the first fetch is coming");
        r.poll(0).unwrap();
        assert!(!r.settled(), "discovery in flight");
        let doc = br#"{"jwks_uri":"https://idp.example/keys"}"#;
        r.on_response(1, Some(200), doc);
        assert!(!r.settled(), "discovered: the JWKS fetch follows");
        r.poll(2).unwrap();
        assert!(!r.settled());
        r.on_response(3, Some(503), b"");
        assert!(r.settled(), "failed: a waiting request is refused now");
        r.poll(10_000).unwrap();
        r.on_response(10_001, Some(200), JWKS.as_bytes());
        assert!(r.settled());
        r.request_kid_refetch(20_000);
        assert!(!r.settled(), "an unknown kid wants a refetch");
        r.poll(20_000).unwrap();
        assert!(!r.settled());
        r.on_response(20_001, Some(200), JWKS.as_bytes());
        assert!(r.settled());
    }

    #[test]
    fn discovery_then_jwks() {
        let mut r = remote(true);
        let req = r.poll(0).unwrap();
        assert_eq!(req.stage, Stage::Discovery);
        assert_eq!(req.path, "/.well-known/openid-configuration");
        let doc = br#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/keys"}"#;
        assert_eq!(r.on_response(1, Some(200), doc), FetchOutcome::Discovered("https://idp.example/keys".into()));
        assert!(matches!(r.key_state(), KeyState::Pending));
        let req = r.poll(2).unwrap();
        assert_eq!(
            (req.stage, req.path.as_str(), req.cluster.as_str()),
            (Stage::Jwks, "/keys", "wasmesh-jwks|https|idp.example|443")
        );
        assert!(matches!(r.on_response(3, Some(200), JWKS.as_bytes()), FetchOutcome::Updated { .. }));
        let req = r.poll(400_000).unwrap();
        assert_eq!(req.stage, Stage::Jwks, "refresh keeps the discovered location");
    }

    /// Never a fallback key: whatever way the first fetch fails, no key is in use afterwards and
    /// the key state is `Failed` (presented tokens get `Jwks remote fetch is failed`, as Envoy's
    /// remote JWKS answers). istiod once filled a failed fetch with a fixed "fake" JWKS whose
    /// private key was public (CVE-2026-31837); nothing here may ever produce a key that was not
    /// fetched from the configured server. Any new failure path must be added to this table.
    #[test]
    fn a_failed_fetch_never_leaves_a_key_in_use() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        #[allow(clippy::type_complexity)]
        let cases: Vec<(&str, bool, Box<dyn Fn(&mut RemoteJwks) -> Option<FetchOutcome>>)> = vec![
            ("call failed", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, None, b"")))),
            ("HTTP 503", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(503), JWKS.as_bytes())))),
            ("HTTP 302", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(302), JWKS.as_bytes())))),
            ("too large", false, Box::new(move |r: &mut RemoteJwks| Some(r.on_response(1, Some(200), &big)))),
            ("not UTF-8", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(200), b"\xff\xfe")))),
            ("not JSON", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(200), b"<html>")))),
            ("no keys", false, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(200), br#"{"keys":[]}"#)))),
            (
                "no usable key",
                false,
                Box::new(|r: &mut RemoteJwks| {
                    Some(r.on_response(1, Some(200), br#"{"keys":[{"kty":"XYZ","kid":"x"}]}"#))
                }),
            ),
            (
                "lost response",
                false,
                Box::new(|r: &mut RemoteJwks| {
                    r.poll(60_000);
                    None
                }),
            ),
            ("discovery failed", true, Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(404), b"")))),
            (
                "discovery without jwks_uri",
                true,
                Box::new(|r: &mut RemoteJwks| Some(r.on_response(1, Some(200), br#"{"issuer":"x"}"#))),
            ),
            (
                "discovered JWKS fails",
                true,
                Box::new(|r: &mut RemoteJwks| {
                    r.on_response(1, Some(200), br#"{"jwks_uri":"https://idp.example/keys"}"#);
                    r.poll(2)?;
                    Some(r.on_response(3, Some(500), b""))
                }),
            ),
        ];
        for (name, discovery, step) in cases {
            let mut r = remote(discovery);
            r.poll(0).unwrap();
            if let Some(outcome) = step(&mut r) {
                assert!(matches!(outcome, FetchOutcome::Failed { .. }), "{name}: {outcome:?}");
            }
            assert!(r.keys().is_none(), "{name}: a key is in use after a failed fetch");
            assert!(matches!(r.key_state(), KeyState::Failed), "{name}: tokens must fail");
            assert!(r.last_error.is_some(), "{name}: the failure is kept for the log");
        }
    }

    #[test]
    fn blocked_cidrs_parse_and_match_as_istio_reads_them() {
        let b = BlockedCidrs::parse_env("10.0.0.0/8, 169.254.169.254/32,fd00::/8,,192.0.2.7").unwrap();
        assert_eq!(b.blocks(), ["10.0.0.0/8", "169.254.169.254/32", "fd00::/8", "192.0.2.7"]);
        assert_eq!(b.block_of("10.1.2.3".parse().unwrap()), Some("10.0.0.0/8"));
        assert_eq!(b.block_of("11.0.0.1".parse().unwrap()), None);
        assert_eq!(b.block_of("169.254.169.254".parse().unwrap()), Some("169.254.169.254/32"));
        assert_eq!(b.block_of("169.254.169.253".parse().unwrap()), None);
        assert_eq!(b.block_of("fd12::1".parse().unwrap()), Some("fd00::/8"));
        assert_eq!(b.block_of("::ffff:10.9.9.9".parse().unwrap()), Some("10.0.0.0/8"), "IPv4-mapped");
        assert_eq!(b.block_of("192.0.2.7".parse().unwrap()), Some("192.0.2.7"));
        assert!(BlockedCidrs::parse_env("0.0.0.0/0").unwrap().block_of("8.8.8.8".parse().unwrap()).is_some());
        assert!(BlockedCidrs::parse_env("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "example.com/8", "10.0.0/8", "::/129"] {
            assert!(BlockedCidrs::parse_env(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_BLOCKED_CIDRS).map(|i| format!("10.0.{}.{}/32", i / 256, i % 256)).collect();
        assert!(BlockedCidrs::parse(&many).is_err(), "bounded");
    }

    #[test]
    fn a_jwks_uri_in_a_blocked_cidr_is_never_fetched_and_tokens_fail() {
        let blocked = BlockedCidrs::parse_env("127.0.0.0/8").unwrap();
        let mut r = remote(false).with_blocked(blocked.clone());
        assert!(r.poll(0).is_none(), "no fetch goes out");
        assert!(matches!(r.key_state(), KeyState::Failed));
        assert!(r.settled(), "a waiting request is answered now");
        assert!(r.last_error.as_deref().unwrap().contains("127.0.0.1 is inside 127.0.0.0/8"), "{:?}", r.last_error);
        // Handed to the filter once, to log and count like a failed fetch.
        assert!(
            matches!(r.take_refused(), Some(FetchOutcome::Failed { reason, .. }) if reason.contains("127.0.0.0/8"))
        );
        assert!(r.take_refused().is_none());
        assert!(r.poll(120_000).is_none(), "retries are refused too");
        assert!(r.take_refused().is_some(), "each refused retry is reported");
        // Another address is fetched.
        let mut ok = remote(false).with_blocked(BlockedCidrs::parse_env("10.0.0.0/8").unwrap());
        assert!(ok.poll(0).is_some());
        // A discovered jwks_uri inside a block is refused (istiod checks every dial, the
        // discovered location included).
        let mut d = remote(true).with_blocked(blocked);
        d.poll(0).unwrap();
        d.on_response(1, Some(200), br#"{"jwks_uri":"http://127.0.0.2:8080/keys"}"#);
        assert!(d.poll(2).is_none());
        assert!(d.keys().is_none() && matches!(d.key_state(), KeyState::Failed));
        assert!(d.last_error.as_deref().unwrap().contains("127.0.0.2"), "{:?}", d.last_error);
    }
}
