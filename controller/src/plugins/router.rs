//! The router filter on sidecar outbound and gateway listeners: VirtualServices, Gateways and
//! ServiceEntries go to the filter, which compiles them for this proxy.

use super::{resources_json, Contribution, Direction, ListenerContext, WasmFilter};
use wasmesh_istio::{Error, Kind, ProxyMode, Resources};
use wasmesh_router::{RouterConfig, DEFAULT_CLUSTER_HEADER};

pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let gateway_port = match ctx.direction {
        Direction::Inbound => return Ok(Contribution::default()),
        Direction::Outbound => None,
        Direction::Gateway { port } => Some(port),
    };
    let mut workload = ctx.workload.clone();
    workload.mode = if gateway_port.is_some() { ProxyMode::Gateway } else { ProxyMode::Sidecar };
    let relevant = ctx
        .resources
        .items
        .iter()
        .filter(|r| matches!(r.kind(), Kind::VirtualService | Kind::Gateway | Kind::ServiceEntry));
    let mut config = RouterConfig {
        workload: Some(workload),
        mesh: None,
        gateway_port,
        cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
        fault_filter: true,
        fault_headers_removed: false,
        fault_routes: true,
        // Sidecars: Istio's catch-all for unknown hosts, when the mesh config names one
        // (without it: 404, see egress.rs).
        outbound_traffic_policy: if gateway_port.is_none() { ctx.mesh.outbound_traffic_policy } else { None },
        route_policies: true,
        // Tracing on the listener: the router names the route for it, as istiod's decorators.
        trace_operations: super::tracing::enabled(ctx),
        resources: resources_json(relevant.clone()),
    };
    // Compile here too, so a bad VirtualService fails `wasmeshctl envoy`, not Envoy's start.
    let router = config.compile(&Resources { items: relevant.cloned().collect() }).map_err(|e| e.0)?;
    // Envoy's fault filter goes after the router only where a route injects faults
    // (`bootstrap::with_fault_filter` reads this flag), configured empty as istiod configures
    // it: each fault is carried out by Envoy routes with the fault per route (`faultRoutes`),
    // which the router selects when its draw injects one. Client-sent fault headers are inert.
    config.fault_filter = router.has_faults();
    config.fault_routes = config.fault_filter;
    // One Envoy route per route policy and fault outcome, and the CORS filter where one has
    // CORS (`bootstrap::with_route_policies` reads this flag and the policies from the config).
    // (A fault whose every share is 0 % has no route, and its router still needs the flag.)
    config.route_policies = config.fault_routes || !router.policies().is_empty();
    let config = serde_json::to_value(&config).map_err(|e| vec![Error::new(format!("router config: {e}"))])?;
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: "wasmesh.router".into(), config, fail_open: false }],
        ..Contribution::default()
    })
}
