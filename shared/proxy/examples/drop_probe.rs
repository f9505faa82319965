//! A test-only filter (e2e/tests/exports.rs): one phase in the driver's [`ChainRoot`] whose
//! [`Phase::done`] logs `drop-probe: done` (warn), so the test can see in real Envoy that the
//! phases' end-of-plugin flush runs in a module without the `proxy_on_done` export (`make wasm`
//! removes it from every wasmesh module, tools/strip-exports): Envoy deletes the root context and
//! the SDK drops it.
//!
//! Built with `cargo build --release --target wasm32-wasip1 -p wasmesh-proxy --example drop_probe`.

use proxy_wasm::traits::RootContext;
use std::rc::Rc;
use wasmesh_proxy::phase::{ChainRoot, Phase, PhaseRequest, Resumer};

struct Probe;
struct ProbeRequest;

impl PhaseRequest for ProbeRequest {}

impl Phase for Probe {
    fn name(&self) -> &'static str {
        "drop-probe"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(ProbeRequest)
    }

    fn done(&self) {
        wasmesh_proxy::log_warn("drop-probe: done");
    }
}

fn build(_config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    Ok(vec![Rc::new(Probe)])
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ChainRoot::new("drop-probe", build)) });
}}
