//! The router guest's per-request work, natively, for callgrind (BENCHMARKS.md, "The router's
//! own code per request"): the bench scenario "router"'s exact table (10 routes with a header
//! regex each and a default route, e2e/src/bench/scenarios.rs) and the bench's request as the
//! filter sees it (the header map Envoy hands over for h2load's HTTP/1.1 request plus the route
//! header), read into a `RequestView` from borrowed pairs and routed, as filters/router does.
//!
//! `cargo build --release -p wasmesh-router --example route_cost`, then
//! `valgrind --tool=callgrind target/release/examples/route_cost 10000` against `… 0`: the
//! difference divided by 10000 is the instructions per request. Run alone, it also prints the
//! wall time per request (noisy; the instruction count is the figure of record).
#![allow(clippy::expect_used)]
use wasmesh_istio::{load_str, Resources, Workload};
use wasmesh_router::{Decision, RequestView, RouterConfig};

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let mut yaml = String::from("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bench, namespace: default}\nspec: {hosts: [bench.default.svc.cluster.local], ports: [{number: 80, name: http}], resolution: STATIC}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bench, namespace: default}\nspec:\n  hosts: [bench]\n  http:\n");
    for i in 0..10 {
        yaml.push_str(&format!("  - match: [{{headers: {{x-route: {{regex: 'v{i}-[a-z]+'}}}}}}]\n    route: [{{destination: {{host: bench, subset: s{i}}}}}]\n"));
    }
    yaml.push_str("  - route: [{destination: {host: bench}}]\n");
    let items = load_str(&yaml, "bench").expect("yaml");
    let cfg = RouterConfig {
        workload: Some(Workload::new("bench-client", "default")),
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
    // h2load --h1 -H ':authority: bench' -H 'x-route: v9-match', as Envoy's request map holds it
    // when the filter runs.
    let map: &[(&[u8], &[u8])] = &[
        (b":authority", b"bench"),
        (b":path", b"/"),
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b"user-agent", b"h2load nghttp2/1.52.0"),
        (b"x-route", b"v9-match"),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"0f0d3c1e-2b7a-4a55-9d0c-5d8c2f1b7e11"),
    ];
    let mut hits = 0usize;
    let start = std::time::Instant::now();
    for i in 0..n {
        let view = RequestView::from_pairs(router.header_slots(), map.iter().copied());
        let decision = router.route_view(std::hint::black_box(&view), u64::from(i));
        if let Decision::Forward { cluster, .. } = decision {
            hits += cluster.len();
        }
    }
    let per = start.elapsed().as_secs_f64() * 1e9 / f64::from(n.max(1));
    println!("{n} requests, {per:.0} ns each, {hits} bytes of cluster names");
}
