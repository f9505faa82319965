//! wasmesh router: Istio VirtualService HTTP routing in any Envoy.
//!
//! Per request it asks the router core for the Istio-named cluster
//! (`outbound|<port>|<subset>|<fqdn>`) and writes it into the cluster header that Envoy's own
//! route reads with `cluster_header`; setting a request header makes Envoy re-select the route
//! (ABI 0.2.1). The client's own copy of that header is replaced, so it cannot steer traffic.
//! No matching route: a 404 local reply, as Istio.
//!
//! A matched route may also redirect or answer directly (a local reply with the `Location`,
//! status and body Envoy's redirect and direct-response actions give), rewrite the path and
//! authority, edit request and response headers (per destination, then per route, as Envoy
//! applies the configuration istiod writes), and inject faults. Wasm cannot sleep, so a fault is
//! decided here and carried out by Envoy's fault filter after this one (wasmeshctl generates it;
//! a configuration with a fault and without `faultFilter: true` is refused). Likewise
//! `timeout`, `retries`, mirrors and `corsPolicy` are carried out by Envoy: the router names the
//! matched route's policy in filter state `wasmesh.route_policy` (only when the route has one: a
//! client cannot write filter state, so nothing is removed on other requests) and Envoy's route
//! for that policy, written by wasmeshctl as istiod writes the route (`routePolicies: true`,
//! matched on that filter state), does the rest. A fault that fires is named the same way
//! (`faultRoutes: true`): the policy names the Envoy route whose per-route fault configuration
//! is the decided delay and/or abort, and the fault filter, configured empty as istiod configures
//! it, reads no header. Without fault routes (served live) the router sets the fault filter's
//! `x-envoy-fault-*` headers instead; client-sent copies are then removed by Envoy before the
//! filters where wasmeshctl configured it so (`faultHeadersRemoved: true`), otherwise here.
//!
//! With tracing on the listener (`traceOperations: true`), the matched route's operation as
//! istiod names it (`decorator.operation`) goes to the tracing phase in filter state
//! `wasmesh.router.decision` (in memory within a chain) and, for a forwarded request, upstream as
//! `x-envoy-decorator-operation`, as Envoy's connection manager sends a route's decorator from a
//! client-side listener with tracing.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::traits::RootContext;
use std::cell::Cell;
use std::rc::Rc;
use wasmesh_istio::module::Callbacks;
use wasmesh_istio::FilterConfig;
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};
use wasmesh_router::{
    Abort, Decision, FaultDecision, HeaderActions, HeaderOps, Matched, RequestView, Rng, RouteOps, Router,
    RouterConfig, Tables, FAULT_HEADERS, POLICY_STATE,
};

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh router", build))
}

/// The router phase from its plugin configuration.
pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let (routes, removed_by_envoy, trace_operations) = configure(config)?;
    // With fault routes the client's fault headers are inert (the fault filter reads none).
    let faults = routes.has_faults() && !removed_by_envoy;
    Ok(vec![Rc::new(RouterPhase { routes, faults, trace_operations, rng: Cell::new(wasmesh_proxy::random_seed()) })])
}

struct RouterPhase {
    routes: Tables,
    /// A route injects faults and Envoy does not remove client-sent fault headers before the
    /// filters (`faultHeadersRemoved`): the router removes them from every request.
    faults: bool,
    /// Tracing is on: hand over the route's operation and send it upstream (`traceOperations`).
    trace_operations: bool,
    /// Per-VM PRNG state, seeded from the host's entropy.
    rng: Cell<u64>,
}

/// The table for this request: per-port tables by the port it arrived on (`destination.port`,
/// read only then).
fn table_for<'a>(routes: &'a Tables, s: &Stream) -> Option<&'a Router> {
    routes.for_port(|| s.property_u64(&["destination", "port"]))
}

impl Phase for RouterPhase {
    fn name(&self) -> &'static str {
        "router"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        let mut rng = Rng::new(self.rng.get());
        let random = rng.next_u64();
        self.rng.set(random);
        Box::new(RouterRequest { phase: self, random, response: None })
    }

    /// Response headers only when a route or destination has response header operations.
    fn callbacks(&self) -> Callbacks {
        self.routes.callbacks()
    }

    /// Alone in its filter, a table that examines at most [`FETCH_ONE_BY_ONE`] header fetches it
    /// when a route first examines it; a table that can examine more reads the whole map once.
    /// Measured (BENCHMARKS.md, "The request-header map read in place"): each single read is a
    /// hostcall (~10.6k instructions), the whole map one hostcall too (~11k with Envoy's
    /// serialization, read in place since: no copy or allocation per header), so two single reads
    /// already cost more than the map. One by one, Envoy returns the first value of a repeated
    /// header, so a header sent several times would be matched on its first value only; the map
    /// (every table that examines two headers or more, and the one-pass chain) matches every value
    /// as Envoy's own route matcher does.
    fn header_reads(&self) -> HeaderReads {
        // With faults by headers and no early removal, every request is checked for client-sent
        // fault headers: one read of the map.
        if self.faults || self.routes.most_headers() > FETCH_ONE_BY_ONE {
            HeaderReads::Map
        } else {
            HeaderReads::OneByOne
        }
    }
}

/// The route tables, whether Envoy removes client-sent fault headers before the filters, and
/// whether tracing wants the routes' operations.
fn configure(bytes: &[u8]) -> Result<(Tables, bool, bool), String> {
    let mut cfg = RouterConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    let removed_by_envoy = cfg.fault_headers_removed || cfg.fault_routes;
    let trace_operations = cfg.trace_operations;
    // Routing fails closed like the security filters: a wrong namespace or label set would
    // route by the wrong VirtualServices, so the node must identify the proxy.
    wasmesh_proxy::complete_workload_from_node(&mut cfg)?;
    let resources = cfg.parsed_resources().map_err(|e| e.to_string())?;
    let tables = cfg.compile_tables(&resources)?;
    if matches!(&tables, Tables::PerPort(t) if t.is_empty()) {
        wasmesh_proxy::log_warn("wasmesh router: no Gateway selects this gateway; every request gets 404");
    }
    for (port, router) in tables.iter() {
        let port = port.map(|p| format!("gateway port {p}: ")).unwrap_or_default();
        wasmesh_proxy::log_info(&format!(
            "wasmesh router: {port}configured {} virtual hosts",
            router.virtual_host_count()
        ));
    }
    Ok((tables, removed_by_envoy, trace_operations))
}

struct RouterRequest {
    phase: Rc<RouterPhase>,
    random: u64,
    /// Response header operations of the chosen destination and route, applied in that order.
    response: Option<ResponseOps>,
}

impl PhaseRequest for RouterRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let Some(router) = table_for(&self.phase.routes, s) else {
            // A gateway port no Gateway server of this proxy declares: no route, as Istio.
            return answer(s, self.phase.routes.cluster_header(), 404, &[], None);
        };
        if self.phase.faults {
            strip_fault_headers(s);
        }
        let needed = router.needed_headers();
        let decision = if self.phase.faults || needed.len() > FETCH_ONE_BY_ONE {
            s.with_request_headers(|all| {
                let view = match all {
                    Ok(all) => RequestView::from_pairs(router.header_slots(), all.iter()),
                    Err(_) => RequestView::from_pairs(router.header_slots(), std::iter::empty()),
                };
                router.route_view(&view, self.random)
            })
        } else {
            // Each header when a route condition first examines it: one a walk never reaches
            // (another host's routes, behind a condition that already failed) costs no hostcall.
            let fetch = |name: &str| s.request_header(name).ok().flatten();
            router.route_view(&RequestView::lazy(router.header_slots(), &fetch), self.random)
        };
        if self.phase.trace_operations {
            hand_over_operation(s, &decision);
        }
        match decision {
            Decision::Forward { cluster, ops, destination_headers, matched, .. } => {
                if ops.is_some() || destination_headers.is_some() {
                    self.response = apply(s, ops, destination_headers, matched);
                }
                // The draw: a fault that fires goes by its Envoy route (fault routes) or by the
                // fault filter's request headers.
                let fault = ops.map(|o| o.fault_decision(self.random)).unwrap_or_default();
                let by_headers = ops.is_some_and(|o| o.fault_routes.is_none());
                if by_headers {
                    set_fault_headers(s, fault);
                }
                if let Some(p) = ops.and_then(|o| o.envoy_route(fault)) {
                    // Envoy's route for the policy times out, retries, mirrors, answers CORS. Set
                    // before the cluster header, whose change makes Envoy select the route again.
                    if !s.set_filter_state(POLICY_STATE, p.id.as_bytes()) {
                        wasmesh_proxy::log_error("wasmesh router: could not set the route policy");
                        return answer(s, router.cluster_header(), 500, &[], None);
                    }
                }
                // Replacing the header also drops any copy the client sent.
                if s.set_request_header(router.cluster_header(), cluster.as_bytes()) {
                    Flow::Continue
                } else {
                    wasmesh_proxy::log_error("wasmesh router: could not set the cluster header");
                    answer(s, router.cluster_header(), 500, &[], None)
                }
            }
            Decision::Redirect { redirect, matched, port, .. } => {
                // Envoy strips a default port by the forwarded protocol (the connection's scheme).
                let scheme = s
                    .request_header("x-forwarded-proto")
                    .ok()
                    .flatten()
                    .or_else(|| s.request_header(":scheme").ok().flatten())
                    .unwrap_or_else(|| b"http".to_vec());
                let path = s.request_header(":path").ok().flatten().unwrap_or_default();
                let authority = s.request_header(":authority").ok().flatten().unwrap_or_default();
                let location = redirect.location(&scheme, &authority, &path, matched, port);
                answer(s, router.cluster_header(), redirect.status, &[("location", &location)], None)
            }
            Decision::Direct { status, body, .. } => {
                answer(s, router.cluster_header(), status, &[], (!body.is_empty()).then_some(body))
            }
            Decision::NotFound => answer(s, router.cluster_header(), 404, &[], None),
        }
    }

    fn response_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        if let Some((dest, route)) = self.response.take() {
            if let Some(d) = dest {
                apply_response(s, &d.response);
            }
            if let Some(r) = route {
                apply_response(s, &r.headers.response);
            }
        }
        Flow::Continue
    }
}

/// The header Envoy's connection manager sends a route's decorator operation upstream in.
pub const DECORATOR_HEADER: &str = "x-envoy-decorator-operation";

/// Tracing is on: the matched route's operation goes to the tracing phase (filter state
/// [`wasmesh_handover::ROUTE_DECISION`]) and, for a forwarded request, upstream in
/// [`DECORATOR_HEADER`] (Envoy sets it on a client-side listener whenever the route has a
/// decorator, sampled or not). No route or the catch-all: nothing, as those have no decorator.
fn hand_over_operation(s: &Stream, decision: &Decision<'_>) {
    let Some(operation) = decision.operation() else { return };
    let handed = match decision {
        Decision::Forward { cluster, virtual_service, route, .. } => {
            s.set_request_header(DECORATOR_HEADER, operation.as_bytes());
            wasmesh_handover::RouteDecision {
                virtual_service: (*virtual_service).to_string(),
                route: (*route).to_string(),
                cluster: cluster.to_string(),
                operation: Some(operation),
            }
        }
        _ => wasmesh_handover::RouteDecision { operation: Some(operation), ..Default::default() },
    };
    // Telemetry fails open: a span without the route's name is no reason to fail the request.
    s.set_filter_state(wasmesh_handover::ROUTE_DECISION, &wasmesh_handover::encode(&handed));
}

/// Response header operations kept for the response: the destination's, then the route's.
type ResponseOps = (Option<Rc<HeaderActions>>, Option<Rc<RouteOps>>);

/// The route's and destination's request actions, in Envoy's order: the destination's headers
/// and authority, the route's headers and authority, the path rewrite. Returns the response
/// header operations to apply later.
fn apply(
    s: &Stream,
    ops: Option<&Rc<RouteOps>>,
    dest: Option<&Rc<HeaderActions>>,
    matched: Matched,
) -> Option<ResponseOps> {
    if let Some(d) = dest {
        apply_request(s, &d.request, d.authority.as_deref());
    }
    if let Some(o) = ops {
        apply_request(s, &o.headers.request, o.headers.authority.as_deref());
        if let Some(rewrite) = &o.path {
            if let Ok(Some(path)) = s.request_header(":path") {
                let new = rewrite.apply(&path, matched);
                s.set_request_header(":path", &new);
                s.set_request_header("x-envoy-original-path", &path);
            }
        }
    }
    let dest_response = dest.filter(|d| !d.response.is_empty()).cloned();
    let route_response = ops.filter(|o| !o.headers.response.is_empty()).cloned();
    (dest_response.is_some() || route_response.is_some()).then_some((dest_response, route_response))
}

/// Without fault routes: the decided fault as the fault filter's request headers.
fn set_fault_headers(s: &Stream, decision: FaultDecision) {
    if let Some(ms) = decision.delay_ms {
        s.set_request_header("x-envoy-fault-delay-request", ms.to_string().as_bytes());
    }
    match decision.abort {
        Some(Abort::Http(code)) => {
            s.set_request_header("x-envoy-fault-abort-request", code.to_string().as_bytes());
        }
        Some(Abort::Grpc(code)) => {
            s.set_request_header("x-envoy-fault-abort-grpc-request", code.to_string().as_bytes());
        }
        None => {}
    }
}

fn apply_request(s: &Stream, ops: &HeaderOps, authority: Option<&str>) {
    for name in &ops.remove {
        s.remove_request_header(name);
    }
    for (name, value) in &ops.set {
        s.set_request_header(name, value.as_bytes());
    }
    for (name, value) in &ops.add {
        s.add_request_header(name, value.as_bytes());
    }
    if let Some(a) = authority {
        // Envoy keeps the authority it replaces in x-envoy-original-host (checked against 1.40).
        if let Ok(Some(old)) = s.request_header(":authority") {
            s.set_request_header("x-envoy-original-host", &old);
        }
        s.set_request_header(":authority", a.as_bytes());
    }
}

fn apply_response(s: &Stream, ops: &HeaderOps) {
    for name in &ops.remove {
        s.remove_response_header(name);
    }
    for (name, value) in &ops.set {
        s.set_response_header(name, value.as_bytes());
    }
    for (name, value) in &ops.add {
        s.add_response_header(name, value.as_bytes());
    }
}

/// Removes client-sent `x-envoy-fault-*` headers (read from the kept header map: a hostcall only
/// for a header that is there), so only the router's decision reaches the fault filter.
fn strip_fault_headers(s: &Stream) {
    let present: Vec<&str> = s.with_request_headers(|all| match all {
        Ok(all) => FAULT_HEADERS.iter().copied().filter(|f| all.contains_ignore_case(f)).collect(),
        Err(_) => Vec::new(),
    });
    for name in present {
        s.remove_request_header(name);
    }
}

/// The cluster header of any table (they all share the configuration's).
/// A local reply from the router. A client-sent copy of the cluster header is removed first, so
/// the route Envoy resolved from it before the filters ran does not name the request's
/// destination (the `destination_service` of a 404) for the telemetry filters.
fn answer(s: &Stream, cluster_header: &str, status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) -> Flow {
    s.remove_request_header(cluster_header);
    s.send_response(status, headers, body);
    Flow::Answered
}

/// Up to this many headers are fetched one by one (see [`RouterPhase::header_reads`]): a table
/// that examines a single header (`:authority` of a one-host table) reads just it; from two on,
/// the map (one hostcall, read in place) is cheaper than the single reads.
const FETCH_ONE_BY_ONE: usize = 1;
