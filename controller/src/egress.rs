//! Sidecar egress to hosts the mesh does not know: Istio's `BlackHoleCluster` and
//! `PassthroughCluster`, as `meshConfig.outboundTrafficPolicy` selects them.
//!
//! The router filter names the catch-all cluster in its cluster header
//! ([`wasmesh_router::egress`]). `REGISTRY_ONLY`: the outbound route table starts with istiod's
//! `block_all` route (a 502 direct response) for requests the router sent to `BlackHoleCluster`;
//! the stats filter reads the route name and reports `destination_service_name="BlackHoleCluster"`.
//! `ALLOW_ANY`: `PassthroughCluster` forwards to the host and port the request names. istiod's
//! passthrough is an `ORIGINAL_DST` cluster behind iptables capture; wasmesh's sidecars are called
//! directly (the app sends its outbound calls to the outbound listener, no capture), so the
//! original destination is the `Host` header: a dynamic forward proxy cluster resolves it
//! (Envoy's DNS cache, IPv4 preferred; port 80 when the `Host` has none) and Envoy's dynamic
//! forward proxy filter, placed before the router on that listener only, does the lookup.
//!
//! Deliberate difference: istiod applies `ALLOW_ANY` when the mesh config says nothing; wasmesh
//! applies a policy only when `outboundTrafficPolicy` is written (without it, unknown hosts get
//! the router's 404). A passthrough here is an open forward proxy that resolves any `Host` the
//! app sends, which without iptables capture is a wider grant than Istio's, so it is opt-in.

use serde_json::{json, Value};
use wasmesh_router::{OutboundMode, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};

/// One DNS cache for the filter and the cluster (Envoy requires the same configuration in both).
pub(crate) fn dns_cache() -> Value {
    json!({"name": "wasmesh_passthrough", "dns_lookup_family": "V4_PREFERRED", "max_hosts": 1024})
}

/// istiod's two catch-all clusters on every sidecar: `BlackHoleCluster` (no endpoints) and
/// `PassthroughCluster` (here a dynamic forward proxy), with istiod's unlimited thresholds.
pub fn catch_all_clusters() -> Vec<Value> {
    let unlimited = json!({"thresholds": [{"max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
        "max_requests": 4294967295u32, "max_retries": 4294967295u32, "track_remaining": true}]});
    vec![
        json!({
            "name": BLACKHOLE_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "10s",
            "load_assignment": {"cluster_name": BLACKHOLE_CLUSTER, "endpoints": []},
        }),
        json!({
            "name": PASSTHROUGH_CLUSTER,
            "connect_timeout": "10s",
            "lb_policy": "CLUSTER_PROVIDED",
            "circuit_breakers": unlimited,
            "cluster_type": {
                "name": "envoy.clusters.dynamic_forward_proxy",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                    "dns_cache_config": dns_cache(),
                }
            },
        }),
    ]
}

/// The outbound route table of a sidecar: `REGISTRY_ONLY` puts istiod's `block_all` route (502)
/// first, for requests the router sent to `BlackHoleCluster`.
pub fn outbound_route(mode: OutboundMode, mut route_config: Value, cluster_header: &str) -> Value {
    if mode != OutboundMode::RegistryOnly {
        return route_config;
    }
    let block_all = json!({
        "name": wasmesh_router::egress::BLACKHOLE_ROUTE,
        "match": {"prefix": "/", "headers": [{"name": cluster_header, "string_match": {"exact": BLACKHOLE_CLUSTER}}]},
        "direct_response": {"status": 502},
    });
    if let Some(routes) = route_config.pointer_mut("/virtual_hosts/0/routes").and_then(Value::as_array_mut) {
        routes.insert(0, block_all);
    }
    route_config
}

/// `ALLOW_ANY`: Envoy's dynamic forward proxy filter just before the router of the listener's
/// HTTP connection manager (it acts only on requests routed to `PassthroughCluster`).
pub fn with_passthrough_filter(mode: OutboundMode, listener: &mut Value) {
    if mode != OutboundMode::AllowAny {
        return;
    }
    let filter = json!({
        "name": "envoy.filters.http.dynamic_forward_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": dns_cache(),
        }
    });
    let chains = listener.get_mut("filter_chains").and_then(Value::as_array_mut);
    for chain in chains.into_iter().flatten() {
        let filters = chain.get_mut("filters").and_then(Value::as_array_mut);
        for f in filters.into_iter().flatten() {
            if let Some(http) = f.pointer_mut("/typed_config/http_filters").and_then(Value::as_array_mut) {
                let at = http.len().saturating_sub(1);
                http.insert(at, filter.clone());
            }
        }
    }
}
