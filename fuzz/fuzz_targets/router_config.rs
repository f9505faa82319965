//! VirtualService (with Gateways and ServiceEntries) compilation from arbitrary YAML/JSON (istio
//! loader + router-core `RouterConfig::compile`, `validate`) and routing of fixed and generated
//! requests through every compiled table (`Router::route`).
//! Input: the resources as YAML or JSON, then optionally a NUL and bytes the requests are
//! generated from.
//! Properties: compiling and validating never panic, for a sidecar and a gateway; a compiled
//! router routes any request without panicking, the same way for the same random number.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_fuzz::{fixed_requests, generated_requests, resources, split_nul, workloads};
use wasmesh_router::{Request, RouterConfig};

fuzz_target!(|data: &[u8]| {
    let (text, rest) = split_nul(data);
    let text = String::from_utf8_lossy(text);

    if let Ok(cfg) = serde_json::from_str::<RouterConfig>(&text) {
        if let Ok(items) = wasmesh_istio::resources_from_values(cfg.resources.clone()) {
            let _ = cfg.compile(&wasmesh_istio::Resources { items });
        }
    }

    let Some(res) = resources(&text) else { return };
    let _ = wasmesh_router::validate(&res);
    let mut requests = fixed_requests();
    requests.extend(generated_requests(rest));
    let randoms = [0u64, 1, 4_999, u64::MAX / 2, u64::MAX, (rest.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)];
    for wl in workloads() {
        let gateway = wl.mode == wasmesh_istio::ProxyMode::Gateway;
        let mut cfgs = vec![RouterConfig {
            workload: Some(wl.clone()),
            mesh: None,
            gateway_port: gateway.then_some(80),
            cluster_header: wasmesh_router::DEFAULT_CLUSTER_HEADER.to_string(),
            fault_filter: true,
            fault_headers_removed: false,
            fault_routes: false,
            outbound_traffic_policy: None,
            route_policies: true,
            trace_operations: false,
            resources: Vec::new(),
        }];
        if gateway {
            let mut all_ports = cfgs[0].clone();
            all_ports.gateway_port = None;
            let _ = all_ports.gateway_ports(&res);
            cfgs.push(all_ports);
        }
        for cfg in cfgs {
            let Ok(router) = cfg.compile(&res) else { continue };
            let _ = router.needed_headers();
            let _ = router.cluster_header();
            for h in &requests {
                let req = Request::new(h);
                for r in randoms {
                    let d = router.route(&req, r);
                    assert_eq!(d, router.route(&req, r));
                }
            }
        }
    }
});
