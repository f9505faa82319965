//! The compiled route table (what [`crate::compile`] builds) and the per-request walk over it.
#![deny(clippy::indexing_slicing)]

use crate::actions::{Action, HeaderActions, Matched, Redirect, RouteOps};
use crate::hosts::HostTable;
use crate::matcher::StrMatcher;
use crate::request::{lowercase_into, query_param, split_host_port, HeaderSlots, Request, RequestView, MAX_HOST_BYTES};
use std::borrow::Cow;
use std::rc::Rc;
use wasmesh_istio::ProxyMode;

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
        /// The route's rewrite, header operations and fault (`None`: it has none).
        ops: Option<&'r Rc<RouteOps>>,
        /// The chosen destination's header operations (`None`: it has none).
        destination_headers: Option<&'r Rc<HeaderActions>>,
        /// How much of the path the matching `uri` condition covered (for a prefix rewrite).
        matched: Matched,
        /// What names the route for tracing (`None`: the sidecar's catch-all, which istiod
        /// gives no decorator).
        op: Option<RouteOp<'r>>,
    },
    /// Answer with a redirect; the filter builds the `Location` with [`Redirect::location`].
    Redirect {
        redirect: &'r Redirect,
        matched: Matched,
        /// The port of the route table (for `derivePort: FROM_REQUEST_PORT`).
        port: u32,
        op: RouteOp<'r>,
    },
    /// Answer with this status and body (`directResponse`).
    Direct { status: u32, body: &'r [u8], op: RouteOp<'r> },
    /// No virtual host or no route matched: Istio answers 404.
    NotFound,
}

/// What istiod's route operation ([`crate::operation`]) needs of the route that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOp<'r> {
    /// `namespace/name` of the VirtualService, empty for a default route.
    pub virtual_service: &'r str,
    /// The route has exactly one destination (istiod then writes `cluster`, which names it).
    pub single: bool,
    /// The listener's port: the port the request is for (sidecar) or the server's (gateway).
    pub port: u32,
    /// The path part of the matching condition (`/api*`, `/login`, a regex, `/*`).
    pub path: &'r str,
}

impl Decision<'_> {
    /// The operation istiod writes on the Envoy route this decision stands for
    /// (`decorator.operation`); `None` for no route or the catch-all, which have none.
    pub fn operation(&self) -> Option<String> {
        let (cluster, op) = match self {
            Decision::Forward { cluster, op: Some(op), .. } => (op.single.then_some(cluster.as_ref()), op),
            Decision::Redirect { op, .. } | Decision::Direct { op, .. } => (None, op),
            Decision::Forward { op: None, .. } | Decision::NotFound => return None,
        };
        Some(crate::operation::route(cluster, op.virtual_service, op.port, op.path))
    }
}

/// A compiled route table.
#[derive(Debug)]
pub struct Router {
    pub(crate) mode: ProxyMode,
    pub(crate) gateway_port: Option<u32>,
    pub(crate) hosts: HostTable,
    pub(crate) vhosts: Vec<VirtualHost>,
    /// Gateway mode: request hosts the selected Gateway servers accept.
    pub(crate) gateway_hosts: Option<HostTable>,
    pub(crate) cluster_header: String,
    /// Every request header a route can look at (`:authority` first), lower-case, by slot.
    pub(crate) slots: HeaderSlots,
    pub(crate) namespace: String,
    pub(crate) domain_suffix: String,
    /// Sidecar: (cluster, route name) for hosts no virtual host names ([`crate::egress`]).
    pub(crate) catch_all: Option<(&'static str, &'static str)>,
}

#[derive(Debug)]
pub(crate) struct VirtualHost {
    /// The service's ports, used when the request names no port.
    pub(crate) service_ports: Vec<u32>,
    pub(crate) routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) virtual_service: String,
    pub(crate) name: String,
    /// Alternatives (OR); empty means "match everything".
    pub(crate) matches: Vec<Match>,
    pub(crate) destinations: Vec<WeightedDestination>,
    pub(crate) total_weight: u32,
    pub(crate) action: Action,
    pub(crate) ops: Option<Rc<RouteOps>>,
}

#[derive(Debug, Clone)]
pub(crate) struct WeightedDestination {
    pub(crate) weight: u32,
    pub(crate) cluster: ClusterName,
    pub(crate) headers: Option<Rc<HeaderActions>>,
}

#[derive(Debug, Clone)]
pub(crate) enum ClusterName {
    /// Port known at configure time.
    Fixed(String),
    /// Port taken from the request: `outbound|<port>|<subset>|<host>`. `known` holds the name
    /// for every port a request can be given without naming one (the service's ports and 80),
    /// formatted once at configure time; only a port the request names itself is formatted
    /// per request.
    PerPort { subset: String, host: String, known: Vec<(u32, String)> },
}

impl ClusterName {
    pub(crate) fn per_port(subset: String, host: String, ports: &[u32]) -> ClusterName {
        let mut known: Vec<(u32, String)> = Vec::new();
        for p in ports.iter().copied().chain([80]) {
            if !known.iter().any(|(k, _)| *k == p) {
                known.push((p, format!("outbound|{p}|{subset}|{host}")));
            }
        }
        ClusterName::PerPort { subset, host, known }
    }

    fn for_port(&self, port: u32) -> Cow<'_, str> {
        match self {
            ClusterName::Fixed(name) => Cow::Borrowed(name),
            ClusterName::PerPort { subset, host, known } => match known.iter().find(|(p, _)| *p == port) {
                Some((_, name)) => Cow::Borrowed(name),
                None => Cow::Owned(format!("outbound|{port}|{subset}|{host}")),
            },
        }
    }
}

/// A `headers`/`withoutHeaders` condition on one header, read by its slot.
#[derive(Debug, Clone)]
pub(crate) struct HeaderMatch {
    pub(crate) name: String,
    /// Set once the table's [`HeaderSlots`] are known.
    pub(crate) slot: usize,
    pub(crate) matcher: StrMatcher,
}

/// One HTTPMatchRequest: every condition must hold.
#[derive(Debug, Default, Clone)]
pub(crate) struct Match {
    pub(crate) uri: Option<StrMatcher>,
    pub(crate) scheme: Option<StrMatcher>,
    pub(crate) method: Option<StrMatcher>,
    pub(crate) authority: Option<StrMatcher>,
    pub(crate) headers: Vec<HeaderMatch>,
    pub(crate) without_headers: Vec<HeaderMatch>,
    pub(crate) query_params: Vec<(String, StrMatcher)>,
    pub(crate) port: Option<u32>,
    /// What the `uri` condition covers of a matching path (Istio's default `prefix: "/"`).
    pub(crate) matched: Matched,
    /// The path part of the route operation istiod writes for this match ([`crate::operation::path`]).
    pub(crate) op_path: String,
}

impl Default for Matched {
    fn default() -> Self {
        Matched::Prefix(1)
    }
}

impl Router {
    /// The header the filter must set (and strip from clients).
    pub fn cluster_header(&self) -> &str {
        &self.cluster_header
    }

    /// The request headers routing can depend on (`:authority`, `:path` when a route matches on
    /// the URI or query, `:method`, `:scheme`, and every header a `headers`/`withoutHeaders`
    /// match names), in slot order. A filter may fetch just these, one by one, and hand them to
    /// [`RequestView::from_values`].
    pub fn needed_headers(&self) -> &[String] {
        self.slots.names()
    }

    /// The compiled header slots, to build a [`RequestView`].
    pub fn header_slots(&self) -> &HeaderSlots {
        &self.slots
    }

    /// Picks the destination for a request given as a header list. `random` is a uniformly
    /// distributed number used for weighted destinations.
    pub fn route<'r>(&'r self, req: &Request<'_>, random: u64) -> Decision<'r> {
        self.route_view(&RequestView::from_headers(&self.slots, req.headers), random)
    }

    /// Picks the destination for a request already read into its [`RequestView`].
    pub fn route_view<'r>(&'r self, req: &RequestView<'_>, random: u64) -> Decision<'r> {
        let (host, port_in_authority) = split_host_port(req.authority());
        let mut host_buf = [0u8; MAX_HOST_BYTES];
        let long;
        let host = match lowercase_into(host, &mut host_buf) {
            Some(h) => h,
            None => {
                // Longer than any DNS name (or not UTF-8): no exact name matches, but `*` and
                // wildcard suffixes still do, as in Envoy. The rare, allocating path.
                long = String::from_utf8_lossy(host).to_ascii_lowercase();
                long.as_str()
            }
        };
        if let Some(gw) = &self.gateway_hosts {
            if gw.lookup(host).is_none() {
                return Decision::NotFound;
            }
        }
        let Some(vh) = self.lookup_vhost(host).and_then(|i| self.vhosts.get(i)) else {
            return match self.catch_all {
                Some((cluster, route)) => Decision::Forward {
                    cluster: Cow::Borrowed(cluster),
                    virtual_service: "",
                    route,
                    ops: None,
                    destination_headers: None,
                    matched: Matched::default(),
                    op: None,
                },
                None => Decision::NotFound,
            };
        };
        let port = match self.mode {
            ProxyMode::Gateway => self.gateway_port.unwrap_or(80),
            ProxyMode::Sidecar => port_in_authority.unwrap_or(match vh.service_ports.as_slice() {
                [only] => *only,
                _ => 80,
            }),
        };
        for route in &vh.routes {
            let (matched, path) = if route.matches.is_empty() {
                (Matched::default(), "/*")
            } else {
                match route.matches.iter().find(|m| m.matches(req, &self.slots, port)) {
                    Some(m) => (m.matched, m.op_path.as_str()),
                    None => continue,
                }
            };
            let op =
                RouteOp { virtual_service: &route.virtual_service, single: route.destinations.len() == 1, port, path };
            match &route.action {
                Action::Forward => {}
                Action::Redirect(redirect) => return Decision::Redirect { redirect, matched, port, op },
                Action::Direct { status, body } => return Decision::Direct { status: *status, body, op },
            }
            let Some(dest) = route.pick(random) else {
                return Decision::NotFound;
            };
            return Decision::Forward {
                cluster: dest.cluster.for_port(port),
                virtual_service: &route.virtual_service,
                route: &route.name,
                ops: route.ops.as_ref(),
                destination_headers: dest.headers.as_ref(),
                matched,
                op: Some(op),
            };
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

    /// Every distinct route policy of the table (by id), fault routes included, for wasmeshctl's
    /// Envoy routes.
    pub fn policies(&self) -> Vec<Rc<crate::policy::RoutePolicy>> {
        let mut out: Vec<Rc<crate::policy::RoutePolicy>> = Vec::new();
        let ops = self.vhosts.iter().flat_map(|v| &v.routes).filter_map(|r| r.ops.as_ref());
        for p in ops.flat_map(|o| o.policy.iter().chain(o.fault_routes.iter().flat_map(|f| f.all()))) {
            if !out.iter().any(|o| o.id == p.id) {
                out.push(p.clone());
            }
        }
        out
    }

    /// The response-side callbacks the filter needs for this table ([`wasmesh_istio::module`]):
    /// response headers when a route or a destination has response header operations (the router
    /// applies them itself when the response comes), none otherwise: routing, rewrites, redirects,
    /// direct responses, faults and request header operations all happen on the request side.
    pub fn callbacks(&self) -> wasmesh_istio::module::Callbacks {
        let routes = self.vhosts.iter().flat_map(|v| &v.routes);
        let mut responses = routes
            .clone()
            .filter_map(|r| r.ops.as_ref())
            .map(|o| &o.headers.response)
            .chain(routes.flat_map(|r| &r.destinations).filter_map(|d| d.headers.as_ref()).map(|h| &h.response));
        if responses.any(|ops| !ops.is_empty()) {
            wasmesh_istio::module::Callbacks::RESPONSE_HEADERS
        } else {
            wasmesh_istio::module::Callbacks::NONE
        }
    }

    /// Whether a route of this table injects faults (the filter then needs Envoy's fault filter
    /// after it).
    pub fn has_faults(&self) -> bool {
        self.vhosts.iter().flat_map(|v| &v.routes).any(|r| r.ops.as_ref().is_some_and(|o| o.fault.is_some()))
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

/// Whether some value of the header in `slot` matches. Envoy 1.40 tests each value of a
/// repeated header on its own (checked against its native route matcher), it does not join
/// them. `None`: the header is absent.
fn any_value(req: &RequestView<'_>, slot: Option<usize>, m: &StrMatcher) -> Option<bool> {
    let slot = slot?;
    if !req.has_repeated() {
        // No header was sent twice (nearly every request): one value, no iterator chain.
        return req.first(slot).map(|v| m.matches(v));
    }
    let mut present = false;
    for v in req.values(slot) {
        present = true;
        if m.matches(v) {
            return Some(true);
        }
    }
    present.then_some(false)
}

impl Match {
    /// The request headers this match reads, added to `slots` in the order they are read.
    pub(crate) fn headers_read(&self, slots: &mut HeaderSlots) {
        if self.uri.is_some() || !self.query_params.is_empty() {
            slots.slot(":path");
        }
        if self.scheme.is_some() {
            slots.slot(":scheme");
        }
        if self.method.is_some() {
            slots.slot(":method");
        }
        for h in self.headers.iter().chain(&self.without_headers) {
            slots.slot(&h.name);
        }
    }

    /// Points every header condition at its slot (after [`Match::headers_read`] ran for the
    /// whole table).
    pub(crate) fn resolve_slots(&mut self, slots: &HeaderSlots) {
        for h in self.headers.iter_mut().chain(self.without_headers.iter_mut()) {
            h.slot = slots.find(&h.name).unwrap_or(usize::MAX);
        }
    }

    fn matches(&self, req: &RequestView<'_>, slots: &HeaderSlots, port: u32) -> bool {
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
        for (m, slot) in [(&self.scheme, slots.scheme()), (&self.method, slots.method()), (&self.authority, Some(0))] {
            if let Some(m) = m {
                if any_value(req, slot, m) != Some(true) {
                    return false;
                }
            }
        }
        for h in &self.headers {
            if any_value(req, Some(h.slot), &h.matcher) != Some(true) {
                return false;
            }
        }
        for h in &self.without_headers {
            // Envoy: invert_match, and a missing header counts as "" for non-presence matchers.
            let hit = match any_value(req, Some(h.slot), &h.matcher) {
                Some(hit) => hit,
                None => !h.matcher.is_presence() && h.matcher.matches(b""),
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
