//! VirtualService HTTP routing, compiled once at configure time and evaluated per request.
//!
//! The router picks, for each request, the Envoy cluster Istio would send it to
//! (`outbound|<port>|<subset>|<fqdn>`), or says that no route matches (Istio answers 404).
//! It knows nothing of proxy-wasm: the filter hands it a [`Request`] view and acts on the
//! [`Decision`].
#![forbid(unsafe_code)]

mod compile;
mod hosts;
pub mod matcher;
mod rng;

pub use compile::{validate, RouterConfig};
pub use rng::Rng;
pub use wasmesh_istio::CompileError;

use hosts::HostTable;
use matcher::StrMatcher;
use std::borrow::Cow;
use wasmesh_istio::ProxyMode;

/// The header the router filter sets and Envoy's route reads with `cluster_header`.
pub const DEFAULT_CLUSTER_HEADER: &str = "x-wasmesh-cluster";

/// The request as the router sees it. Header names are lower-case; pseudo-headers
/// (`:authority`, `:path`, `:method`, `:scheme`) are in `headers` as Envoy gives them.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> Request<'a> {
    pub fn new(headers: &'a [(String, Vec<u8>)]) -> Self {
        Request { headers }
    }

    /// Every value of a header (names compare case-insensitively), in order.
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    /// Whether some value of the header matches. Envoy 1.40 tests each value of a repeated
    /// header on its own (checked against its native route matcher), it does not join them.
    fn any_value(&self, name: &str, m: &StrMatcher) -> Option<bool> {
        let mut present = false;
        for v in self.values(name) {
            present = true;
            if m.matches(v) {
                return Some(true);
            }
        }
        present.then_some(false)
    }

    fn first(&self, name: &str) -> &'a [u8] {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice()).unwrap_or(b"")
    }

    pub fn authority(&self) -> &'a [u8] {
        self.first(":authority")
    }

    /// `:path` without query and fragment: what Envoy's path matchers compare.
    pub fn path(&self) -> &'a [u8] {
        let full = self.first(":path");
        let end = full.iter().position(|c| *c == b'?' || *c == b'#').unwrap_or(full.len());
        &full[..end]
    }

    /// The query string (after `?`, before `#`), empty when there is none.
    pub fn query(&self) -> &'a [u8] {
        let full = self.first(":path");
        match full.iter().position(|c| *c == b'?') {
            None => b"",
            Some(q) => {
                let rest = &full[q + 1..];
                let end = rest.iter().position(|c| *c == b'#').unwrap_or(rest.len());
                &rest[..end]
            }
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'r> {
    /// Send it to this Envoy cluster.
    Forward {
        cluster: Cow<'r, str>,
        /// `namespace/name` of the VirtualService, empty for a service's default route.
        virtual_service: &'r str,
        /// The route's name, or `#<index>` when it has none.
        route: &'r str,
    },
    /// No virtual host or no route matched: Istio answers 404.
    NotFound,
}

/// A compiled route table.
#[derive(Debug)]
pub struct Router {
    mode: ProxyMode,
    gateway_port: Option<u32>,
    hosts: HostTable,
    vhosts: Vec<VirtualHost>,
    /// Gateway mode: request hosts the selected Gateway servers accept.
    gateway_hosts: Option<HostTable>,
    cluster_header: String,
    /// Every request header a route can look at (`:authority` first), lower-case.
    needed_headers: Vec<String>,
    namespace: String,
    domain_suffix: String,
}

#[derive(Debug)]
struct VirtualHost {
    /// The service's ports, used when the request names no port.
    service_ports: Vec<u32>,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    virtual_service: String,
    name: String,
    /// Alternatives (OR); empty means "match everything".
    matches: Vec<Match>,
    destinations: Vec<WeightedDestination>,
    total_weight: u32,
}

#[derive(Debug)]
struct WeightedDestination {
    weight: u32,
    cluster: ClusterName,
}

#[derive(Debug)]
enum ClusterName {
    /// Port known at configure time.
    Fixed(String),
    /// Port taken from the request: `outbound|<port>|<subset>|<host>`.
    PerPort { subset: String, host: String },
}

/// One HTTPMatchRequest: every condition must hold.
#[derive(Debug, Default)]
struct Match {
    uri: Option<StrMatcher>,
    scheme: Option<StrMatcher>,
    method: Option<StrMatcher>,
    authority: Option<StrMatcher>,
    headers: Vec<(String, StrMatcher)>,
    without_headers: Vec<(String, StrMatcher)>,
    query_params: Vec<(String, StrMatcher)>,
    port: Option<u32>,
}

impl Router {
    /// The header the filter must set (and strip from clients).
    pub fn cluster_header(&self) -> &str {
        &self.cluster_header
    }

    /// The request headers routing can depend on (`:authority`, `:path` when a route matches on
    /// the URI or query, `:method`, `:scheme`, and every header a `headers`/`withoutHeaders`
    /// match names). A filter may hand [`Router::route`] just these.
    pub fn needed_headers(&self) -> &[String] {
        &self.needed_headers
    }

    /// Picks the destination for a request. `random` is a uniformly distributed number used
    /// for weighted destinations.
    pub fn route<'r>(&'r self, req: &Request<'_>, random: u64) -> Decision<'r> {
        let authority = req.authority();
        let (host, port_in_authority) = split_host_port(authority);
        let mut host_buf = [0u8; 256];
        let Some(host) = lowercase_into(host, &mut host_buf) else {
            return Decision::NotFound;
        };
        if let Some(gw) = &self.gateway_hosts {
            if gw.lookup(host).is_none() {
                return Decision::NotFound;
            }
        }
        let Some(vh_index) = self.lookup_vhost(host) else {
            return Decision::NotFound;
        };
        let Some(vh) = self.vhosts.get(vh_index) else {
            return Decision::NotFound;
        };
        let port = match self.mode {
            ProxyMode::Gateway => self.gateway_port.unwrap_or(80),
            ProxyMode::Sidecar => port_in_authority.unwrap_or(match vh.service_ports.as_slice() {
                [only] => *only,
                _ => 80,
            }),
        };
        for route in &vh.routes {
            let matched = route.matches.is_empty() || route.matches.iter().any(|m| m.matches(req, port));
            if !matched {
                continue;
            }
            let Some(dest) = route.pick(random) else {
                return Decision::NotFound;
            };
            let cluster = match &dest.cluster {
                ClusterName::Fixed(name) => Cow::Borrowed(name.as_str()),
                ClusterName::PerPort { subset, host } => Cow::Owned(format!("outbound|{port}|{subset}|{host}")),
            };
            return Decision::Forward { cluster, virtual_service: &route.virtual_service, route: &route.name };
        }
        Decision::NotFound
    }

    /// Host lookup. Short forms of known services are indexed at compile time; a short form that
    /// only a wildcard VirtualService host covers is expanded here (the rare, allocating path).
    fn lookup_vhost(&self, host: &str) -> Option<usize> {
        if let Some(i) = self.hosts.lookup(host) {
            return Some(i);
        }
        if self.mode == ProxyMode::Gateway {
            return None;
        }
        let dots = host.bytes().filter(|c| *c == b'.').count();
        let expanded = match dots {
            0 => format!("{host}.{}.svc.{}", self.namespace, self.domain_suffix),
            1 => format!("{host}.svc.{}", self.domain_suffix),
            _ if host.ends_with(".svc") => format!("{host}.{}", self.domain_suffix),
            _ => return None,
        };
        self.hosts.lookup(&expanded)
    }

    /// Number of virtual hosts (for logs and tests).
    pub fn virtual_host_count(&self) -> usize {
        self.vhosts.len()
    }
}

impl Route {
    fn pick(&self, random: u64) -> Option<&WeightedDestination> {
        if self.destinations.len() == 1 {
            return self.destinations.first();
        }
        if self.total_weight == 0 {
            return None;
        }
        let mut point = (random % u64::from(self.total_weight)) as u32;
        for d in &self.destinations {
            if point < d.weight {
                return Some(d);
            }
            point -= d.weight;
        }
        self.destinations.last()
    }
}

impl Match {
    /// The request headers this match reads.
    fn headers_read(&self, out: &mut Vec<String>) {
        let mut add = |name: &str| {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        };
        if self.uri.is_some() || !self.query_params.is_empty() {
            add(":path");
        }
        if self.scheme.is_some() {
            add(":scheme");
        }
        if self.method.is_some() {
            add(":method");
        }
        for (name, _) in self.headers.iter().chain(&self.without_headers) {
            add(name);
        }
    }

    fn matches(&self, req: &Request<'_>, port: u32) -> bool {
        if let Some(p) = self.port {
            if p != port {
                return false;
            }
        }
        if let Some(m) = &self.uri {
            if !m.matches(req.path()) {
                return false;
            }
        }
        for (m, name) in [(&self.scheme, ":scheme"), (&self.method, ":method"), (&self.authority, ":authority")] {
            if let Some(m) = m {
                if req.any_value(name, m) != Some(true) {
                    return false;
                }
            }
        }
        for (name, m) in &self.headers {
            if req.any_value(name, m) != Some(true) {
                return false;
            }
        }
        for (name, m) in &self.without_headers {
            // Envoy: invert_match, and a missing header counts as "" for non-presence matchers.
            let hit = match req.any_value(name, m) {
                Some(hit) => hit,
                None => !m.is_presence() && m.matches(b""),
            };
            if hit {
                return false;
            }
        }
        if !self.query_params.is_empty() {
            let query = req.query();
            for (name, m) in &self.query_params {
                match query_param(query, name.as_bytes()) {
                    Some(v) if m.matches(v) => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

/// The first value of query parameter `name`, `Some("")` for `?name`. Like Envoy 1.40's route
/// matcher (checked against it), names and values are compared as sent, not percent-decoded.
fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    for pair in query.split(|c| *c == b'&') {
        let (k, v) = match pair.iter().position(|c| *c == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        };
        if k == name {
            return Some(v);
        }
    }
    None
}

/// Splits `host:port` (and `[v6]:port`); the port is `None` when absent or not a number.
fn split_host_port(authority: &[u8]) -> (&[u8], Option<u32>) {
    if authority.first() == Some(&b'[') {
        if let Some(close) = authority.iter().position(|c| *c == b']') {
            let host = &authority[..=close];
            let port = authority.get(close + 1..).and_then(|r| r.strip_prefix(b":")).and_then(parse_port);
            return (host, port);
        }
        return (authority, None);
    }
    match authority.iter().rposition(|c| *c == b':') {
        Some(colon) => match parse_port(&authority[colon + 1..]) {
            Some(p) => (&authority[..colon], Some(p)),
            None => (authority, None),
        },
        None => (authority, None),
    }
}

fn parse_port(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse::<u32>().ok().filter(|p| *p <= 65535)
}

/// Lower-cases a host into `buf` without allocating; `None` if it is too long or not UTF-8.
fn lowercase_into<'b>(host: &[u8], buf: &'b mut [u8; 256]) -> Option<&'b str> {
    if host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, c) in out.iter_mut().zip(host) {
        *o = c.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
