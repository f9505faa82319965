//! Times `Router::route` for the benchmark's 10-route VirtualService (the request matches the
//! 10th route): `cargo run --release -p wasmesh-router --example route_speed`.
#![allow(clippy::expect_used)]
use wasmesh_istio::{load_str, Resources, Workload};
use wasmesh_router::{Request, RouterConfig};

fn main() {
    let mut yaml = String::from("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bench, namespace: default}\nspec: {hosts: [bench.default.svc.cluster.local], ports: [{number: 80, name: http}]}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bench, namespace: default}\nspec:\n  hosts: [bench]\n  http:\n");
    for i in 0..10 {
        yaml.push_str(&format!("  - match: [{{headers: {{x-route: {{regex: 'v{i}-[a-z]+'}}}}}}]\n    route: [{{destination: {{host: bench, subset: s{i}}}}}]\n"));
    }
    yaml.push_str("  - route: [{destination: {host: bench}}]\n");
    let items = load_str(&yaml, "bench").expect("yaml");
    let cfg = RouterConfig {
        workload: Some(Workload::new("w", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: wasmesh_router::DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let router = cfg.compile(&Resources { items }).expect("compile");
    let headers: Vec<(String, Vec<u8>)> = [
        (":authority", "bench"),
        (":path", "/"),
        (":method", "GET"),
        (":scheme", "http"),
        ("user-agent", "h2load"),
        ("x-route", "v9-match"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "0f0d3c1e-2b7a-4a55-9d0c-5d8c2f1b7e11"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let n = 200_000u32;
    let start = std::time::Instant::now();
    let mut hits = 0;
    for i in 0..n {
        if let wasmesh_router::Decision::Forward { cluster, .. } = router.route(&Request::new(&headers), u64::from(i)) {
            hits += cluster.len();
        }
    }
    let per = start.elapsed().as_secs_f64() * 1e9 / f64::from(n);
    println!("route(): {per:.0} ns per request ({hits} bytes of cluster names)");
}
