//! What a matched route does besides picking a cluster: redirect, direct response, rewrite,
//! header operations and fault injection, compiled once from Istio's HTTPRoute fields and
//! evaluated per request as Envoy evaluates the configuration istiod writes for them
//! (istio/istio `route.go`: `ApplyRedirect`, `applyDirectResponse`, `TranslateHeadersOperations`,
//! `TranslateFault`; Envoy `Utility::newUri`, `currentUrlPathAfterRewriteWithMatchedPath`).
//!
//! Everything here reads bytes a client sent: no indexing that could panic.
#![deny(clippy::indexing_slicing)]

use crate::request::{split_host_port, split_path};
use regex::bytes::Regex;
use std::rc::Rc;
use wasmesh_istio::networking::{HeaderOperations, HttpDirectResponse, HttpFaultInjection, HttpRedirect, HttpRewrite};

/// Istio raises Envoy's direct-response body limit to 1 MiB (`applyDirectResponse`).
pub const MAX_DIRECT_RESPONSE_BODY: usize = 1 << 20;
/// Longest fixed delay accepted: the fault filter's header takes milliseconds as a u64, and a
/// day is far beyond any test fault.
pub const MAX_FAULT_DELAY_MS: u64 = 86_400_000;

/// Request headers Envoy's fault filter reads when it is configured with `header_delay`/
/// `header_abort` (envoy `fault_filter.rst`). wasmeshctl configures it so, after the router, only
/// where faults cannot be carried out by routes (served live, without `faultRoutes`); the router
/// then sets them only when its own decision says so, and a client's copies are removed.
pub const FAULT_HEADERS: [&str; 5] = [
    "x-envoy-fault-delay-request",
    "x-envoy-fault-delay-request-percentage",
    "x-envoy-fault-abort-request",
    "x-envoy-fault-abort-grpc-request",
    "x-envoy-fault-abort-request-percentage",
];

/// A redirect: Envoy `RedirectAction` as istiod writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub status: u32,
    pub scheme: Option<String>,
    pub host: Option<String>,
    /// `port` or `derivePort: FROM_REQUEST_PORT` (the route's port).
    pub port: Option<PortRedirect>,
    pub path: PathRedirect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRedirect {
    Fixed(u32),
    /// `derivePort: FROM_REQUEST_PORT`: istiod writes the port of the route table (the listener
    /// or service port the request came for).
    RequestPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRedirect {
    /// Keep the request's path.
    Keep,
    /// `uri`: replaces the whole path (the request's query is kept unless `uri` has one).
    Replace(String),
    /// `uri: "%PREFIX()%/new"`: replaces the matched prefix (Envoy `prefix_rewrite`).
    Prefix(String),
}

impl Redirect {
    /// The `Location` Envoy writes (`Utility::newUri`). `scheme`, `authority` and `path` are
    /// the request's; `matched` is how much of the path the route's match covered (see
    /// [`Matched`]); `route_port` is the port of the route table.
    pub fn location(&self, scheme: &[u8], authority: &[u8], path: &[u8], matched: Matched, route_port: u32) -> String {
        let request_scheme = String::from_utf8_lossy(scheme);
        let scheme = match &self.scheme {
            Some(s) => s.as_str().to_string(),
            None => request_scheme.to_string(),
        };
        let port = self.port.map(|p| match p {
            PortRedirect::Fixed(p) => p,
            PortRedirect::RequestPort => route_port,
        });
        let mut out = String::with_capacity(scheme.len() + authority.len() + path.len() + 16);
        out.push_str(&scheme);
        out.push_str("://");
        match &self.host {
            Some(h) => out.push_str(h),
            None => out.push_str(&String::from_utf8_lossy(request_host(
                authority,
                &request_scheme,
                &scheme,
                port.is_some(),
            ))),
        }
        if let Some(p) = port {
            out.push(':');
            out.push_str(&p.to_string());
        }
        let new_path: Vec<u8> = match &self.path {
            PathRedirect::Keep => path.to_vec(),
            PathRedirect::Replace(p) if p.contains('?') => p.as_bytes().to_vec(),
            PathRedirect::Replace(p) => {
                let (just, _) = split_path(path);
                let mut v = p.as_bytes().to_vec();
                v.extend_from_slice(path.get(just.len()..).unwrap_or_default());
                // The fragment never reaches Envoy; only the query is carried over.
                v
            }
            PathRedirect::Prefix(prefix) => prefix_rewrite(path, prefix.as_bytes(), matched),
        };
        if new_path.first() != Some(&b'/') {
            out.push('/');
        }
        out.push_str(&String::from_utf8_lossy(&new_path));
        out
    }
}

/// Envoy `processRequestHost`: the request's host, without its port when a new port is set, or
/// when the scheme changes and the port is the old scheme's default (`http://a:80` becomes
/// `https://a`; checked against Envoy 1.40's redirect action, which keeps `https://a:443` from an
/// `http` request and `http://a:80` when the scheme stays).
fn request_host<'a>(authority: &'a [u8], old_scheme: &str, new_scheme: &str, new_port: bool) -> &'a [u8] {
    let (host, port) = split_host_port(authority);
    let Some(port) = port else { return authority };
    let default = (old_scheme == "http" && port == 80) || (old_scheme == "https" && port == 443);
    if new_port || (default && old_scheme != new_scheme) {
        host
    } else {
        authority
    }
}

/// How much of the path a route's match covered, for `prefix_rewrite`: a prefix match covers its
/// prefix; an exact or regex match covers the whole path; no `uri` match is Istio's
/// `prefix: "/"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched {
    Prefix(usize),
    Whole,
}

/// Envoy's `prefix_rewrite`: the matched part of the path (without query) replaced, the rest and
/// the query kept.
pub fn prefix_rewrite(full: &[u8], prefix: &[u8], matched: Matched) -> Vec<u8> {
    let (just, _) = split_path(full);
    let covered = match matched {
        Matched::Prefix(n) => n.min(just.len()),
        Matched::Whole => just.len(),
    };
    let mut out = Vec::with_capacity(full.len() + prefix.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(full.get(covered..).unwrap_or_default());
    out
}

/// A path rewrite (`rewrite.uri` or `rewrite.uriRegexRewrite`).
#[derive(Debug, Clone)]
pub enum PathRewrite {
    Prefix(String),
    /// Envoy `regex_rewrite`: every match in the path (not the query) replaced; the
    /// substitution is already in the `regex` crate's syntax.
    Regex {
        re: Regex,
        with: Vec<u8>,
    },
}

impl PathRewrite {
    /// The new `:path` for `full` (path and query as the request has them).
    pub fn apply(&self, full: &[u8], matched: Matched) -> Vec<u8> {
        match self {
            PathRewrite::Prefix(p) => prefix_rewrite(full, p.as_bytes(), matched),
            PathRewrite::Regex { re, with } => {
                let (just, _) = split_path(full);
                let mut out = re.replace_all(just, with.as_slice()).into_owned();
                out.extend_from_slice(full.get(just.len()..).unwrap_or_default());
                out
            }
        }
    }
}

/// Header operations of one level (route or destination), for requests or responses, in the
/// order Envoy's header parser applies them: removals, then `set`, then `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Header operations of a route or of one destination, with the authority a `set` of `host`
/// turns into (istiod: `host_rewrite_literal`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderActions {
    pub request: HeaderOps,
    pub response: HeaderOps,
    pub authority: Option<String>,
}

impl HeaderActions {
    pub fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty() && self.authority.is_none()
    }
}

/// A fault decision's abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(u32),
    /// gRPC status code (numeric).
    Grpc(u32),
}

/// Istio's fault: each part applies to its own share of requests, drawn independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// (delay in ms, share in millionths).
    pub delay: Option<(u64, u32)>,
    pub abort: Option<(Abort, u32)>,
}

/// What the fault part of a route decides for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultDecision {
    pub delay_ms: Option<u64>,
    pub abort: Option<Abort>,
}

impl Fault {
    /// Draws the delay and the abort independently from `random` (two 32-bit halves), as
    /// Envoy's fault filter draws each from its own random number; a share of 1,000,000 always
    /// fires, 0 never.
    pub fn decide(&self, random: u64) -> FaultDecision {
        let fires = |share: u32, r: u64| (r % 1_000_000) < u64::from(share);
        FaultDecision {
            delay_ms: self.delay.filter(|(_, share)| fires(*share, random & 0xffff_ffff)).map(|(ms, _)| ms),
            abort: self.abort.filter(|(_, share)| fires(*share, random >> 32)).map(|(a, _)| a),
        }
    }
}

impl Fault {
    /// Envoy's per-route `HTTPFault` carrying out `decision` (the parts that fired, each at
    /// 100 %: the draw is already made): a fixed delay, an HTTP abort or a gRPC abort (Envoy
    /// answers 200 with that `grpc-status`), as istiod's `TranslateFault` writes them.
    pub fn envoy_config(decision: FaultDecision) -> serde_json::Value {
        let all = serde_json::json!({"numerator": 100, "denominator": "HUNDRED"});
        let mut out = serde_json::Map::new();
        out.insert("@type".into(), "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault".into());
        if let Some(ms) = decision.delay_ms {
            let delay = format!("{}.{:03}s", ms / 1000, ms % 1000);
            out.insert("delay".into(), serde_json::json!({"fixed_delay": delay, "percentage": all}));
        }
        match decision.abort {
            Some(Abort::Http(code)) => {
                out.insert("abort".into(), serde_json::json!({"http_status": code, "percentage": all}));
            }
            Some(Abort::Grpc(code)) => {
                out.insert("abort".into(), serde_json::json!({"grpc_status": code, "percentage": all}));
            }
            None => {}
        }
        serde_json::Value::Object(out)
    }
}

/// A route's fault carried out by Envoy routes: one per outcome of the draw that injects
/// something (delay alone, abort alone, both), each the route's own policy (its `timeout`,
/// `retries`, mirrors, CORS; Istio's defaults without them) with Envoy's per-route fault
/// configuration for that outcome at 100 %. The router draws (pure core, [`Fault::decide`]) and
/// names the outcome's route in the policy filter state; Envoy's fault filter, configured empty
/// as istiod configures it, reads no request header, so requests that draw no fault and
/// client-sent `x-envoy-fault-*` headers cost it nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRoutes {
    pub delay: Option<Rc<crate::policy::RoutePolicy>>,
    pub abort: Option<Rc<crate::policy::RoutePolicy>>,
    pub both: Option<Rc<crate::policy::RoutePolicy>>,
}

impl FaultRoutes {
    /// The routes of `fault` over `base` (the route's policy as configured): an outcome that
    /// cannot happen (its share is 0) gets none.
    pub fn new(fault: &Fault, base: &crate::policy::RoutePolicy) -> FaultRoutes {
        let delay = fault.delay.filter(|(_, share)| *share > 0).map(|(ms, _)| ms);
        let abort = fault.abort.filter(|(_, share)| *share > 0).map(|(a, _)| a);
        let route = |delay_ms: Option<u64>, abort: Option<Abort>| {
            Rc::new(base.with_fault(Fault::envoy_config(FaultDecision { delay_ms, abort })))
        };
        FaultRoutes {
            delay: delay.map(|ms| route(Some(ms), None)),
            abort: abort.map(|a| route(None, Some(a))),
            both: delay.zip(abort).map(|(ms, a)| route(Some(ms), Some(a))),
        }
    }

    /// The route for `decision`; `None` when it injects nothing.
    pub fn select(&self, decision: FaultDecision) -> Option<&Rc<crate::policy::RoutePolicy>> {
        match (decision.delay_ms.is_some(), decision.abort.is_some()) {
            (true, true) => self.both.as_ref(),
            (true, false) => self.delay.as_ref(),
            (false, true) => self.abort.as_ref(),
            (false, false) => None,
        }
    }

    /// Every route, for the Envoy route configuration.
    pub fn all(&self) -> impl Iterator<Item = &Rc<crate::policy::RoutePolicy>> {
        [&self.delay, &self.abort, &self.both].into_iter().flatten()
    }
}

/// Everything a forwarding route does besides choosing the cluster. Absent (`None` on the
/// route) for a plain route, so routes without actions cost nothing per request.
#[derive(Debug, Clone, Default)]
pub struct RouteOps {
    pub headers: HeaderActions,
    pub path: Option<PathRewrite>,
    pub fault: Option<Fault>,
    /// `timeout`, `retries`, mirrors and `corsPolicy`, carried out by Envoy's route for
    /// the policy (see [`crate::policy`]).
    pub policy: Option<Rc<crate::policy::RoutePolicy>>,
    /// The Envoy routes that carry out `fault` (the router configuration's `faultRoutes`);
    /// `None`: the router sets the fault filter's `x-envoy-fault-*` headers instead.
    pub fault_routes: Option<FaultRoutes>,
}

impl RouteOps {
    /// What the fault part decides for the request drawn `random` (nothing without a fault).
    pub fn fault_decision(&self, random: u64) -> FaultDecision {
        self.fault.map(|f| f.decide(crate::Rng::new(random).next_u64())).unwrap_or_default()
    }

    /// The Envoy route policy the request takes for `decision`: the fault route of what was
    /// decided, else the route's own policy (`None`: Envoy's catch-all route).
    pub fn envoy_route(&self, decision: FaultDecision) -> Option<&Rc<crate::policy::RoutePolicy>> {
        self.fault_routes.as_ref().and_then(|f| f.select(decision)).or(self.policy.as_ref())
    }
}

/// Route operations compare by identity (a decision names the route's own operations).
impl PartialEq for RouteOps {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for RouteOps {}

/// What a matched route does.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Forward,
    Redirect(Rc<Redirect>),
    Direct { status: u32, body: Rc<[u8]> },
}

// ---- compiling ------------------------------------------------------------------------------

/// An error: (sub-field, message).
pub(crate) type FieldError = (String, String);

pub(crate) fn compile_redirect(r: &HttpRedirect) -> Result<Redirect, FieldError> {
    let status = match r.redirect_code {
        None | Some(0) => 301,
        Some(c @ (301 | 302 | 303 | 307 | 308)) => c,
        Some(c) => {
            return Err((
                ".redirectCode".into(),
                format!("{c} is not a redirect code Envoy can send; expected 301, 302, 303, 307 or 308"),
            ))
        }
    };
    let port = match (r.port, r.derive_port.as_deref()) {
        (Some(_), Some(_)) => return Err((String::new(), "set port or derivePort, not both".into())),
        (Some(p), None) if p == 0 || p > 65535 => {
            return Err((".port".into(), format!("{p} is not a port; expected 1-65535")))
        }
        (Some(p), None) => Some(PortRedirect::Fixed(p)),
        (None, Some("FROM_REQUEST_PORT")) => Some(PortRedirect::RequestPort),
        (None, Some("FROM_PROTOCOL_DEFAULT")) | (None, None) => None,
        (None, Some(other)) => {
            return Err((
                ".derivePort".into(),
                format!("{other:?} is not a derivePort; expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"),
            ))
        }
    };
    let scheme = match r.scheme.as_deref() {
        None | Some("") => None,
        Some(s) if s.bytes().all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(&c)) => Some(s.to_string()),
        Some(s) => return Err((".scheme".into(), format!("{s:?} is not a URI scheme"))),
    };
    let host = match r.authority.as_deref() {
        None | Some("") => None,
        Some(a) if a.bytes().all(|c| c.is_ascii_graphic() && c != b'/' && c != b'?' && c != b'#') => {
            Some(a.to_string())
        }
        Some(a) => return Err((".authority".into(), format!("{a:?} is not an authority"))),
    };
    let path = match r.uri.as_deref() {
        None | Some("") => PathRedirect::Keep,
        Some(u) if !is_uri_text(u) => return Err((".uri".into(), format!("{u:?} is not a URI path"))),
        Some(u) => match u.strip_prefix("%PREFIX()%") {
            Some(rest) => PathRedirect::Prefix(rest.to_string()),
            None => PathRedirect::Replace(u.to_string()),
        },
    };
    Ok(Redirect { status, scheme, host, port, path })
}

fn is_uri_text(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_graphic())
}

pub(crate) fn compile_direct_response(d: &HttpDirectResponse) -> Result<(u32, Vec<u8>), FieldError> {
    if !(200..=599).contains(&d.status) {
        return Err((".status".into(), format!("{} is not an HTTP status; expected 200-599", d.status)));
    }
    let body = match &d.body {
        None => Vec::new(),
        Some(b) => match (&b.string, &b.bytes) {
            (Some(_), Some(_)) => return Err((".body".into(), "set string or bytes, not both".into())),
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(b64)) => base64_decode(b64)
                .ok_or_else(|| (".body.bytes".into(), "is not base64 (RFC 4648, padded)".to_string()))?,
            (None, None) => Vec::new(),
        },
    };
    if body.len() > MAX_DIRECT_RESPONSE_BODY {
        return Err((
            ".body".into(),
            format!("{} bytes; at most {MAX_DIRECT_RESPONSE_BODY} (Istio's limit) are supported", body.len()),
        ));
    }
    Ok((d.status, body))
}

/// Standard base64 with padding (what a protobuf `bytes` field holds in JSON).
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let trimmed: &[u8] = {
        let mut end = bytes.len();
        while end > 0 && bytes.get(end - 1) == Some(&b'=') {
            end -= 1;
        }
        bytes.get(..end)?
    };
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.chunks(4) {
        let mut acc: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i as u32);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

pub(crate) fn compile_rewrite(r: &HttpRewrite) -> Result<(Option<PathRewrite>, Option<String>), FieldError> {
    let path = match (r.uri.as_deref(), &r.uri_regex_rewrite) {
        (Some(u), Some(_)) if !u.is_empty() => {
            return Err((String::new(), "set uri or uriRegexRewrite, not both".into()));
        }
        (_, Some(rr)) => {
            let re = crate::matcher::wasmesh_regex(&rr.pattern).map_err(|e| {
                (".uriRegexRewrite.match".to_string(), format!("invalid RE2 regex {:?}: {e}", rr.pattern))
            })?;
            let with = re2_substitution(&rr.rewrite, re.captures_len())
                .map_err(|e| (".uriRegexRewrite.rewrite".to_string(), e))?;
            Some(PathRewrite::Regex { re, with })
        }
        (Some(u), None) if !u.is_empty() => {
            if !is_uri_text(u) {
                return Err((".uri".into(), format!("{u:?} is not a URI path")));
            }
            Some(PathRewrite::Prefix(u.to_string()))
        }
        _ => None,
    };
    let authority = match r.authority.as_deref() {
        None | Some("") => None,
        Some(a) if a.bytes().all(|c| c.is_ascii_graphic() && c != b'/') => Some(a.to_string()),
        Some(a) => return Err((".authority".into(), format!("{a:?} is not an authority"))),
    };
    Ok((path, authority))
}

/// RE2's substitution syntax (`\1`, `\\`) in the `regex` crate's (`${1}`, `$$`).
fn re2_substitution(text: &str, groups: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut chars = text.bytes().peekable();
    while let Some(c) = chars.next() {
        match c {
            b'\\' => match chars.next() {
                Some(d @ b'0'..=b'9') => {
                    let n = usize::from(d - b'0');
                    if n >= groups {
                        return Err(format!("{text:?} refers to group \\{n}; the regex has {} groups", groups - 1));
                    }
                    out.extend_from_slice(format!("${{{n}}}").as_bytes());
                }
                Some(b'\\') => out.push(b'\\'),
                _ => return Err(format!("{text:?}: a backslash must be followed by a digit or a backslash")),
            },
            b'$' => out.extend_from_slice(b"$$"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Istio's HeaderOperations for one direction. `request`: a `set` of `host`/`:authority`
/// becomes the authority rewrite (istiod does the same).
pub(crate) fn compile_header_ops(
    ops: &HeaderOperations,
    request: bool,
    authority: &mut Option<String>,
) -> Result<HeaderOps, FieldError> {
    let mut out = HeaderOps::default();
    for name in &ops.remove {
        let lname = header_name(name, ".remove")?;
        out.remove.push(lname);
    }
    for (kind, map, target) in [(".set", &ops.set, &mut out.set), (".add", &ops.add, &mut out.add)] {
        for (name, value) in map {
            let lname = name.to_ascii_lowercase();
            if request && kind == ".set" && (lname == "host" || lname == ":authority") {
                *authority = Some(literal(value).map_err(|e| (format!("{kind}.{name}"), e))?);
                continue;
            }
            let lname = header_name(name, kind)?;
            let value = literal(value).map_err(|e| (format!("{kind}.{name}"), e))?;
            if value.is_empty() {
                continue; // Envoy adds no header with an empty value (keep_empty_value: false).
            }
            target.push((lname, value));
        }
    }
    Ok(out)
}

fn header_name(name: &str, kind: &str) -> Result<String, FieldError> {
    let lname = name.to_ascii_lowercase();
    let ok = !lname.is_empty()
        && lname.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.!#$%&'*+^`|~".contains(&c));
    if !ok || lname == "host" {
        return Err((
            format!("{kind}.{name}"),
            format!("{name:?} cannot be changed: expected an HTTP header name (not a pseudo-header or host)"),
        ));
    }
    Ok(lname)
}

/// An Envoy header value is a format string: `%%` is a literal `%`, other `%…%` are command
/// operators, which wasmesh does not evaluate.
fn literal(value: &str) -> Result<String, String> {
    if value.bytes().any(|c| c == b'\r' || c == b'\n' || c == 0) {
        return Err(format!("{value:?} contains a line break or NUL"));
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        out.push_str(rest.get(..i).unwrap_or_default());
        let after = rest.get(i + 1..).unwrap_or_default();
        match after.strip_prefix('%') {
            Some(more) => {
                out.push('%');
                rest = more;
            }
            None => {
                return Err(format!(
                    "{value:?} uses an Envoy command operator (%…%), which wasmesh does not evaluate; write %% for a literal %"
                ))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// gRPC status names (grpc `doc/statuscodes.md`) to their codes.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// Istio's `percentage.value` (0-100, double) as Envoy's FractionalPercent over a million
/// (`value * 10000`, truncated as istiod's uint32 conversion). Absent: no request. istiod then
/// leaves Envoy's percentage unset, which is 0% (istio/api #2522 documents it: "If not
/// specified, no request will be aborted"; istio/istio #39969).
fn share(p: Option<f64>, field: &str) -> Result<u32, FieldError> {
    match p {
        None => Ok(0),
        Some(v) if !(0.0..=100.0).contains(&v) || v.is_nan() => {
            Err((field.to_string(), format!("{v} is not a percentage; expected 0-100")))
        }
        Some(v) => Ok((v * 10_000.0) as u32),
    }
}

pub(crate) fn compile_fault(f: &HttpFaultInjection) -> Result<Fault, FieldError> {
    let delay = match &f.delay {
        None => None,
        Some(d) => {
            if d.exponential_delay.is_some() {
                return Err((".delay.exponentialDelay".into(), "is not supported by Istio (fixedDelay is)".into()));
            }
            let text = d.fixed_delay.as_deref().ok_or((".delay.fixedDelay".to_string(), "is required".to_string()))?;
            let dur = wasmesh_istio::parse_duration(text).map_err(|e| (".delay.fixedDelay".to_string(), e))?;
            let ms = u64::try_from(dur.as_millis()).unwrap_or(u64::MAX);
            if dur.as_nanos() < 1_000_000 || ms > MAX_FAULT_DELAY_MS {
                return Err((
                    ".delay.fixedDelay".into(),
                    format!("{text:?}: expected a duration from 1ms to {MAX_FAULT_DELAY_MS}ms"),
                ));
            }
            let share = match (d.percentage, d.percent) {
                (Some(p), _) => share(Some(p.value), ".delay.percentage.value")?,
                (None, Some(p)) if (0..=100).contains(&p) => (p as u32) * 10_000,
                (None, Some(p)) => {
                    return Err((".delay.percent".into(), format!("{p} is not a percentage; expected 0-100")))
                }
                (None, None) => share(None, "")?,
            };
            Some((ms, share))
        }
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let what = match (a.http_status, a.grpc_status.as_deref(), a.http2_error.as_deref()) {
                (Some(s), None, None) if (200..=599).contains(&s) => Abort::Http(s as u32),
                (Some(s), None, None) => {
                    return Err((".abort.httpStatus".into(), format!("{s} is not an HTTP status; expected 200-599")))
                }
                (None, Some(g), None) => Abort::Grpc(grpc_code(g).ok_or((
                    ".abort.grpcStatus".to_string(),
                    format!("{g:?} is not a gRPC status name (e.g. UNAVAILABLE)"),
                ))?),
                (None, None, Some(_)) => {
                    return Err((
                        ".abort.http2Error".into(),
                        "is not supported by Istio (httpStatus and grpcStatus are)".into(),
                    ))
                }
                _ => return Err((".abort".into(), "set exactly one of httpStatus, grpcStatus".into())),
            };
            Some((what, share(a.percentage.map(|p| p.value), ".abort.percentage.value")?))
        }
    };
    Ok(Fault { delay, abort })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(json: &str) -> Redirect {
        compile_redirect(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn redirect_locations_follow_envoy_new_uri() {
        let r = redirect(r#"{"uri":"/v1/bookRatings","authority":"newratings.default.svc.cluster.local"}"#);
        assert_eq!(r.status, 301);
        assert_eq!(
            r.location(b"http", b"ratings:9080", b"/v1/getProductRatings?x=1", Matched::Whole, 9080),
            "http://newratings.default.svc.cluster.local/v1/bookRatings?x=1"
        );
        // Only the path: host and port kept.
        let r = redirect(r#"{"uri":"/new","redirectCode":308}"#);
        assert_eq!(r.status, 308);
        assert_eq!(r.location(b"http", b"a:8080", b"/old", Matched::Whole, 8080), "http://a:8080/new");
        // A uri with a query replaces the request's query.
        let r = redirect(r#"{"uri":"/new?a=b"}"#);
        assert_eq!(r.location(b"http", b"a", b"/old?x", Matched::Whole, 80), "http://a/new?a=b");
        // Scheme: the port goes only when it is the old scheme's default (Envoy 1.40, checked).
        let r = redirect(r#"{"scheme":"https"}"#);
        assert_eq!(r.location(b"http", b"a:80", b"/p", Matched::Whole, 80), "https://a/p");
        assert_eq!(r.location(b"http", b"a:443", b"/p", Matched::Whole, 80), "https://a:443/p");
        assert_eq!(r.location(b"http", b"a:8000", b"/p", Matched::Whole, 80), "https://a:8000/p");
        assert_eq!(r.location(b"http", b"a", b"/p", Matched::Whole, 80), "https://a/p");
        let r = redirect(r#"{"uri":"/n"}"#);
        assert_eq!(r.location(b"http", b"a:80", b"/p", Matched::Whole, 80), "http://a:80/n", "same scheme: kept");
        let r = redirect(r#"{"port":80}"#);
        assert_eq!(r.location(b"http", b"a:8080", b"/p", Matched::Whole, 80), "http://a:80/p");
        // Port: replaces the request's port; derivePort FROM_REQUEST_PORT is the route's port.
        let r = redirect(r#"{"port":8443,"scheme":"https"}"#);
        assert_eq!(r.location(b"http", b"a:9080", b"/p", Matched::Whole, 9080), "https://a:8443/p");
        let r = redirect(r#"{"derivePort":"FROM_REQUEST_PORT","authority":"b"}"#);
        assert_eq!(r.location(b"http", b"a:1", b"/p", Matched::Whole, 9080), "http://b:9080/p");
        let r = redirect(r#"{"derivePort":"FROM_PROTOCOL_DEFAULT","scheme":"https"}"#);
        assert_eq!(r.location(b"http", b"a:80", b"/p", Matched::Whole, 80), "https://a/p");
        // The Gateway API's prefix form.
        let r = redirect(r#"{"uri":"%PREFIX()%/bar"}"#);
        assert_eq!(r.location(b"http", b"a", b"/foo/baz?q", Matched::Prefix(4), 80), "http://a/bar/baz?q");
        for bad in
            [r#"{"redirectCode":200}"#, r#"{"port":1,"derivePort":"FROM_REQUEST_PORT"}"#, r#"{"derivePort":"X"}"#]
        {
            assert!(compile_redirect(&serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrites_follow_envoy() {
        assert_eq!(prefix_rewrite(b"/foo/bar?x=1", b"/v2", Matched::Prefix(4)), b"/v2/bar?x=1");
        assert_eq!(prefix_rewrite(b"/foo?x=1", b"/new", Matched::Whole), b"/new?x=1");
        assert_eq!(prefix_rewrite(b"/abc", b"/x", Matched::Prefix(1)), b"/xabc", "no uri match: prefix \"/\"");
        let (path, auth) = compile_rewrite(
            &serde_json::from_str(
                r#"{"uriRegexRewrite":{"match":"^/service/([^/]+)(/.*)$","rewrite":"/customprefix\\2/\\1"},"authority":"x"}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(auth.as_deref(), Some("x"));
        assert_eq!(path.unwrap().apply(b"/service/foo/v1/api?q=$1", Matched::Whole), b"/customprefix/v1/api/foo?q=$1");
        assert!(re2_substitution("\\3", 2).is_err());
        assert_eq!(re2_substitution("a$b\\\\", 1).unwrap(), b"a$$b\\");
    }

    #[test]
    fn header_values_and_names() {
        let mut auth = None;
        let ops: HeaderOperations = serde_json::from_str(
            r#"{"set":{"X-A":"1","Host":"h.example","x-empty":""},"add":{"x-b":"50%%"},"remove":["X-C"]}"#,
        )
        .unwrap();
        let h = compile_header_ops(&ops, true, &mut auth).unwrap();
        assert_eq!(auth.as_deref(), Some("h.example"));
        assert_eq!(h.set, vec![("x-a".to_string(), "1".to_string())]);
        assert_eq!(h.add, vec![("x-b".to_string(), "50%".to_string())]);
        assert_eq!(h.remove, vec!["x-c".to_string()]);
        for bad in [r#"{"set":{"x":"%REQ(x)%"}}"#, r#"{"remove":[":path"]}"#, r#"{"add":{"host":"a"}}"#] {
            let ops: HeaderOperations = serde_json::from_str(bad).unwrap();
            assert!(compile_header_ops(&ops, true, &mut None).is_err(), "{bad}");
        }
    }

    #[test]
    fn direct_response_bodies() {
        let d: HttpDirectResponse = serde_json::from_str(r#"{"status":503,"body":{"bytes":"aGVsbG8="}}"#).unwrap();
        assert_eq!(compile_direct_response(&d).unwrap(), (503, b"hello".to_vec()));
        assert_eq!(base64_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64_decode("a"), None);
        let d: HttpDirectResponse = serde_json::from_str(r#"{"status":99}"#).unwrap();
        assert!(compile_direct_response(&d).is_err());
    }

    #[test]
    fn fault_shares_follow_istio() {
        let f: HttpFaultInjection = serde_json::from_str(
            r#"{"delay":{"fixedDelay":"7s","percentage":{"value":100}},"abort":{"httpStatus":500,"percentage":{"value":0}}}"#,
        )
        .unwrap();
        let f = compile_fault(&f).unwrap();
        for r in [0, 1, u64::MAX, 999_999, 1 << 40] {
            assert_eq!(f.decide(r), FaultDecision { delay_ms: Some(7000), abort: None });
        }
        // No percentage: no request, as istiod's configuration does in Envoy.
        let f: HttpFaultInjection = serde_json::from_str(r#"{"abort":{"grpcStatus":"UNAVAILABLE"}}"#).unwrap();
        let f = compile_fault(&f).unwrap();
        assert_eq!(f.abort, Some((Abort::Grpc(14), 0)));
        assert_eq!(f.decide(0).abort, None);
        // The deprecated integer `percent` of a delay still counts.
        let f: HttpFaultInjection = serde_json::from_str(r#"{"delay":{"fixedDelay":"1s","percent":100}}"#).unwrap();
        assert_eq!(compile_fault(&f).unwrap().decide(999_999).delay_ms, Some(1000));
        // 50%: about half of uniformly drawn numbers.
        let f: HttpFaultInjection =
            serde_json::from_str(r#"{"abort":{"httpStatus":503,"percentage":{"value":50}}}"#).unwrap();
        let f = compile_fault(&f).unwrap();
        let mut rng = crate::Rng::new(7);
        let hits = (0..10_000).filter(|_| f.decide(rng.next_u64()).abort.is_some()).count();
        assert!((4_700..5_300).contains(&hits), "{hits}");
        for bad in [
            r#"{"abort":{"httpStatus":700}}"#,
            r#"{"abort":{"grpcStatus":"NOPE"}}"#,
            r#"{"delay":{"fixedDelay":"0s"}}"#,
            r#"{"delay":{"exponentialDelay":"1s"}}"#,
            r#"{"abort":{"httpStatus":500,"percentage":{"value":101}}}"#,
        ] {
            assert!(compile_fault(&serde_json::from_str(bad).unwrap()).is_err(), "{bad}");
        }
    }
}
