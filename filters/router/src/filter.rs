//! wasmesh router: Istio VirtualService HTTP routing in any Envoy.
//!
//! Per request it asks the router core for the Istio-named cluster
//! (`outbound|<port>|<subset>|<fqdn>`) and writes it into the cluster header that Envoy's own
//! route reads with `cluster_header`; setting a request header makes Envoy re-select the route
//! (ABI 0.2.1). The client's own copy of that header is replaced, so it cannot steer traffic.
//! No matching route: a 404 local reply, as Istio.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::Cell;
use std::rc::Rc;
use wasmesh_router::{Decision, Request, Rng, Router, RouterConfig};

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(RouterRoot { router: None, rng: Cell::new(wasmesh_proxy::random_seed()) })
}

struct RouterRoot {
    router: Option<Rc<Router>>,
    /// Per-VM PRNG state, seeded from the host's entropy.
    rng: Cell<u64>,
}

impl Context for RouterRoot {}

impl RootContext for RouterRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = wasmesh_proxy::plugin_configuration() else {
            wasmesh_proxy::log_error("wasmesh router: no plugin configuration; expected the JSON wasmeshctl writes");
            return false;
        };
        match RouterConfig::compile_json(&bytes) {
            Ok(router) => {
                wasmesh_proxy::log_info(&format!(
                    "wasmesh router: configured {} virtual hosts",
                    router.virtual_host_count()
                ));
                self.router = Some(Rc::new(router));
                true
            }
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh router: configuration rejected: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let mut rng = Rng::new(self.rng.get());
        let random = rng.next_u64();
        self.rng.set(random);
        Some(Box::new(RouterStream { router: self.router.clone(), random }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RouterStream {
    router: Option<Rc<Router>>,
    random: u64,
}

impl Context for RouterStream {}

impl HttpContext for RouterStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(router) = self.router.as_deref() else {
            // Never configured: Envoy would not have created this context; refuse anyway.
            wasmesh_proxy::send_response(500, &[], Some(b"wasmesh router not configured"));
            return Action::Pause;
        };
        let headers = fetch_headers(router.needed_headers());
        match router.route(&Request::new(&headers), self.random) {
            Decision::Forward { cluster, .. } => {
                // Replacing the header also drops any copy the client sent.
                if wasmesh_proxy::set_request_header(router.cluster_header(), cluster.as_bytes()) {
                    Action::Continue
                } else {
                    wasmesh_proxy::log_error("wasmesh router: could not set the cluster header");
                    wasmesh_proxy::send_response(500, &[], None);
                    Action::Pause
                }
            }
            Decision::NotFound => {
                wasmesh_proxy::send_response(404, &[], None);
                Action::Pause
            }
        }
    }
}

/// Up to this many headers are fetched one by one; more, and one call for the whole map is
/// cheaper. Each hostcall costs, and the whole map costs a copy and an allocation per header.
const FETCH_ONE_BY_ONE: usize = 4;

/// The request headers the routes read. One by one, Envoy returns the first value of a repeated
/// header, so a header sent several times is matched on its first value (the whole map, used for
/// larger route tables, matches every value as Envoy's own route matcher does).
fn fetch_headers(needed: &[String]) -> Vec<(String, Vec<u8>)> {
    if needed.len() > FETCH_ONE_BY_ONE {
        return wasmesh_proxy::request_headers();
    }
    needed
        .iter()
        .filter_map(|name| wasmesh_proxy::request_header(name).map(|v| (name.clone(), v)))
        .collect()
}
