//! wasmesh router: Istio VirtualService HTTP routing in any Envoy.
//!
//! Per request it asks the router core for the Istio-named cluster
//! (`outbound|<port>|<subset>|<fqdn>`) and writes it into the cluster header that Envoy's own
//! route reads with `cluster_header`; setting a request header makes Envoy re-select the route
//! (ABI 0.2.1). The client's own copy of that header is replaced, so it cannot steer traffic.
//! No matching route: a 404 local reply, as Istio.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::traits::RootContext;
use std::cell::Cell;
use std::rc::Rc;
use wasmesh_istio::{FilterConfig, ProxyMode};
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};
use wasmesh_router::{Decision, RequestView, Rng, Router, RouterConfig};

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh router", build))
}

/// The router phase from its plugin configuration.
pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let routes = configure(config)?;
    Ok(vec![Rc::new(RouterPhase { routes, rng: Cell::new(wasmesh_proxy::random_seed()) })])
}

struct RouterPhase {
    routes: Routes,
    /// Per-VM PRNG state, seeded from the host's entropy.
    rng: Cell<u64>,
}

/// The compiled route tables of one plugin.
enum Routes {
    /// A sidecar, or a gateway listener whose configuration names its `gatewayPort`.
    One(Box<Router>),
    /// A gateway configured without `gatewayPort` (one configuration for every listener of the
    /// gateway, as a WasmPlugin gives it): one table per Gateway server port that selects this
    /// proxy, picked by the port the request arrived on (`destination.port`, the listener's
    /// local port). That port is the Gateway's `servers[].port.number` when the gateway listens
    /// on the server port (wasmeshctl's gateways, Envoy Gateway, hostNetwork gateways); a
    /// Kubernetes gateway behind a Service that maps port 80 to targetPort 8080 listens on 8080,
    /// so give such a listener its `gatewayPort` in the configuration.
    PerPort(Vec<(u32, Router)>),
}

impl Routes {
    fn for_request(&self, s: &Stream) -> Option<&Router> {
        match self {
            Routes::One(r) => Some(r),
            Routes::PerPort(tables) => {
                let port = s.property_u64(&["destination", "port"])?;
                tables.iter().find(|(p, _)| u64::from(*p) == port).map(|(_, r)| r)
            }
        }
    }

    /// The most headers any table reads.
    fn most_headers(&self) -> usize {
        match self {
            Routes::One(r) => r.needed_headers().len(),
            Routes::PerPort(tables) => tables.iter().map(|(_, r)| r.needed_headers().len()).max().unwrap_or(0),
        }
    }
}

impl Phase for RouterPhase {
    fn name(&self) -> &'static str {
        "router"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        let mut rng = Rng::new(self.rng.get());
        let random = rng.next_u64();
        self.rng.set(random);
        Box::new(RouterRequest { phase: self, random })
    }

    /// Alone in its filter, up to [`FETCH_ONE_BY_ONE`] headers are fetched one by one, by slot;
    /// more, and one call for the whole map is cheaper. Each hostcall costs, and the whole map
    /// costs a copy and an allocation per header. One by one, Envoy returns the first value of a
    /// repeated header, so a header sent several times is matched on its first value (the whole
    /// map, used for larger route tables and in the one-pass chain, matches every value as
    /// Envoy's own route matcher does).
    fn header_reads(&self) -> HeaderReads {
        if self.routes.most_headers() > FETCH_ONE_BY_ONE {
            HeaderReads::Map
        } else {
            HeaderReads::OneByOne
        }
    }
}

fn configure(bytes: &[u8]) -> Result<Routes, String> {
    let mut cfg = RouterConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    // Routing fails closed like the security filters: a wrong namespace or label set would
    // route by the wrong VirtualServices, so the node must identify the proxy.
    wasmesh_proxy::complete_workload_from_node(&mut cfg)?;
    let resources = cfg.parsed_resources().map_err(|e| e.to_string())?;
    let gateway = cfg.workload.as_ref().is_some_and(|w| w.mode == ProxyMode::Gateway);
    if gateway && cfg.gateway_port.is_none() {
        let ports = cfg.gateway_ports(&resources);
        if ports.is_empty() {
            wasmesh_proxy::log_warn("wasmesh router: no Gateway selects this gateway; every request gets 404");
        }
        let mut tables = Vec::with_capacity(ports.len());
        for port in ports {
            let per_port = RouterConfig { gateway_port: Some(port), ..cfg.clone() };
            let router = per_port.compile(&resources).map_err(|e| format!("gateway port {port}: {e}"))?;
            wasmesh_proxy::log_info(&format!(
                "wasmesh router: gateway port {port}: configured {} virtual hosts",
                router.virtual_host_count()
            ));
            tables.push((port, router));
        }
        return Ok(Routes::PerPort(tables));
    }
    let router = cfg.compile(&resources).map_err(|e| e.to_string())?;
    wasmesh_proxy::log_info(&format!("wasmesh router: configured {} virtual hosts", router.virtual_host_count()));
    Ok(Routes::One(Box::new(router)))
}

struct RouterRequest {
    phase: Rc<RouterPhase>,
    random: u64,
}

impl PhaseRequest for RouterRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let Some(router) = self.phase.routes.for_request(s) else {
            // A gateway port no Gateway server of this proxy declares: no route, as Istio.
            s.send_response(404, &[], None);
            return Flow::Answered;
        };
        let needed = router.needed_headers();
        let decision = if needed.len() > FETCH_ONE_BY_ONE {
            s.with_request_headers(|all| {
                let all = all.unwrap_or_default();
                router.route_view(&RequestView::from_headers(router.header_slots(), all), self.random)
            })
        } else {
            let by_slot = needed.iter().map(|name| s.request_header(name).ok().flatten()).collect::<Vec<_>>();
            router.route_view(&RequestView::from_values(router.header_slots(), &by_slot), self.random)
        };
        match decision {
            Decision::Forward { cluster, .. } => {
                // Replacing the header also drops any copy the client sent.
                if s.set_request_header(router.cluster_header(), cluster.as_bytes()) {
                    Flow::Continue
                } else {
                    wasmesh_proxy::log_error("wasmesh router: could not set the cluster header");
                    s.send_response(500, &[], None);
                    Flow::Answered
                }
            }
            Decision::NotFound => {
                s.send_response(404, &[], None);
                Flow::Answered
            }
        }
    }
}

/// Up to this many headers are fetched one by one (see [`RouterPhase::header_reads`]).
const FETCH_ONE_BY_ONE: usize = 4;
