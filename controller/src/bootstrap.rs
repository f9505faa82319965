//! `wasmeshctl envoy`: a standalone Envoy bootstrap for one sidecar or gateway.
//!
//! Listeners: a sidecar gets an inbound listener (callers → the app) and an outbound listener
//! (the app → other services, routed by the wasm router); a gateway gets one listener per Gateway
//! server port. Clusters: one per service port and DestinationRule subset, named as Istio names
//! them (`outbound|<port>|<subset>|<fqdn>`), with endpoints from ServiceEntry `endpoints` and
//! the WorkloadEntries a ServiceEntry's `workloadSelector` selects.

use crate::mesh::MeshConfig;
use crate::plugins::{self, Contribution, Direction, ListenerContext, WasmFilter};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use wasmesh_istio::networking::{DestinationRule, SimpleLb, TrafficPolicy, WorkloadEntry};
use wasmesh_istio::{Error, ProxyMode, Resource, Resources, Workload};

/// The header the wasm router writes and Envoy's route reads.
pub const CLUSTER_HEADER: &str = "x-wasmesh-cluster";

/// What to generate for one proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub workload: Workload,
    /// Sidecar: inbound listeners, one per workload port, each forwarding to the app.
    pub inbound: Vec<Inbound>,
    /// Sidecar: the port the app sends its outbound calls to.
    pub outbound_port: Option<u16>,
    /// Gateway: (Gateway server port, loopback port to bind).
    pub gateway_ports: Vec<(u32, u16)>,
    pub admin_port: u16,
    /// Where `<module>.wasm` files are.
    pub wasm_dir: PathBuf,
    pub mesh: MeshConfig,
    /// Workload certificates written by `wasmeshctl certs`, for mutual TLS.
    pub certs_dir: Option<PathBuf>,
    /// Write Envoy's own access log (Istio TEXT format) to this file, for debugging.
    pub envoy_access_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub port: u16,
    pub app_port: u16,
}

/// Reads the proxy's identity from the WorkloadEntry `namespace/name` (or `name` in `default`).
pub fn workload_from_entry(resources: &Resources, reference: &str) -> Result<(Workload, WorkloadEntry), Error> {
    let (ns, name) = reference.split_once('/').unwrap_or(("default", reference));
    let found = resources.workload_entries().find(|(r, _)| r.namespace() == ns && r.name() == name);
    let Some((res, we)) = found else {
        let known: Vec<String> =
            resources.workload_entries().map(|(r, _)| format!("{}/{}", r.namespace(), r.name())).collect();
        return Err(Error::new(format!(
            "--workload {reference}: no WorkloadEntry {ns}/{name} in the given files; known: {}",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    let mut wl = Workload::new(res.name(), res.namespace());
    wl.labels = we.labels.clone();
    if !we.service_account.is_empty() {
        wl.service_account = we.service_account.clone();
    }
    Ok((wl, we.clone()))
}

/// Builds the bootstrap. Every problem found is returned, each naming resource and field.
pub fn build(spec: &ProxySpec, resources: &Resources) -> Result<Value, Vec<Error>> {
    let mut errors = Vec::new();
    let mut listeners = Vec::new();
    let mut clusters: BTreeMap<String, Value> = BTreeMap::new();
    let mut stats_tags: Vec<Value> = Vec::new();

    let mut wl = spec.workload.clone();
    if let Some(root) = &spec.mesh.root_namespace {
        wl.root_namespace = root.clone();
    }
    if let Some(td) = &spec.mesh.trust_domain {
        wl.trust_domain = td.clone();
    }

    let add = |direction: Direction, bind_port: u16, errors: &mut Vec<Error>| -> Contribution {
        let ctx = ListenerContext { workload: &wl, resources, direction, bind_port, mesh: &spec.mesh };
        let mut all = Contribution::default();
        for plugin in plugins::PLUGINS {
            match plugin(&ctx) {
                Ok(c) => {
                    all.http_filters.extend(c.http_filters);
                    all.network_filters.extend(c.network_filters);
                    all.clusters.extend(c.clusters);
                    all.stats_tags.extend(c.stats_tags);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        all
    };

    match wl.mode {
        ProxyMode::Sidecar => {
            for inb in &spec.inbound {
                let c = add(Direction::Inbound, inb.port, &mut errors);
                let cluster = format!("inbound|{}||", inb.port);
                listeners.push(listener(spec, "inbound", inb.port, &c, route_to(&cluster), false));
                let app = [("127.0.0.1".to_string(), u32::from(inb.app_port))];
                let mut app_cluster = static_cluster(&cluster, &app, "ROUND_ROBIN");
                // As Istio's inbound clusters: talk to the app in the caller's protocol (gRPC stays HTTP/2).
                app_cluster["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "use_downstream_protocol_config": {},
                    }
                });
                clusters.insert(cluster.clone(), app_cluster);
                merge(&mut clusters, &mut stats_tags, c);
            }
            if let Some(port) = spec.outbound_port {
                let c = add(Direction::Outbound, port, &mut errors);
                listeners.push(listener(spec, "outbound", port, &c, route_by_header(), false));
                merge(&mut clusters, &mut stats_tags, c);
            }
            if spec.inbound.is_empty() && spec.outbound_port.is_none() {
                errors.push(Error::new("a sidecar needs --inbound-port/--app-port, --outbound-port, or both"));
            }
        }
        ProxyMode::Gateway => {
            if spec.gateway_ports.is_empty() {
                errors.push(Error::new("a gateway needs at least one --port GATEWAY_PORT=BIND_PORT"));
            }
            for (gw_port, bind) in &spec.gateway_ports {
                let c = add(Direction::Gateway { port: *gw_port }, *bind, &mut errors);
                let name = format!("gateway_{gw_port}");
                listeners.push(listener(spec, &name, *bind, &c, route_by_header(), true));
                merge(&mut clusters, &mut stats_tags, c);
            }
        }
    }

    match outbound_clusters(resources, &wl) {
        Ok(cs) => {
            for c in cs {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    clusters.insert(name.to_string(), c.clone());
                }
            }
        }
        Err(mut e) => errors.append(&mut e),
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut bootstrap = json!({
        "node": {
            "id": format!("{}~127.0.0.1~{}.{}~{}.svc.{}", match wl.mode { ProxyMode::Sidecar => "sidecar", ProxyMode::Gateway => "router" }, wl.name, wl.namespace, wl.namespace, wl.domain_suffix),
            "cluster": format!("{}.{}", wl.name, wl.namespace),
            "metadata": {
                "NAME": wl.name,
                "NAMESPACE": wl.namespace,
                "WORKLOAD_NAME": wl.name,
                "CLUSTER_ID": wl.cluster_id,
                "SERVICE_ACCOUNT": wl.service_account,
                "LABELS": wl.labels,
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.admin_port}}},
        "stats_config": {"stats_tags": stats_tags, "use_all_default_tags": true},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters.into_values().collect::<Vec<_>>(),
        }
    });
    // Mutual TLS: PeerAuthentication decides each inbound port's filter chains; with
    // certificates, outbound clusters get Istio's auto mTLS.
    plugins::mtls::apply(&wl, resources, spec.certs_dir.as_deref(), &mut bootstrap)?;
    Ok(bootstrap)
}

fn merge(clusters: &mut BTreeMap<String, Value>, stats_tags: &mut Vec<Value>, c: Contribution) {
    for cluster in c.clusters {
        if let Some(name) = cluster.get("name").and_then(Value::as_str) {
            clusters.insert(name.to_string(), cluster.clone());
        }
    }
    for tag in c.stats_tags {
        let name = tag.get("tag_name").cloned();
        if !stats_tags.iter().any(|t| t.get("tag_name") == name.as_ref()) {
            stats_tags.push(tag);
        }
    }
}

/// Envoy's `envoy.filters.http.wasm` entry for one wasmesh filter.
pub fn wasm_http_filter(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    json!({
        "name": f.name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_plugin_config(f, wasm_dir),
        }
    })
}

/// Envoy's `envoy.filters.network.wasm` entry for one wasmesh network filter.
pub fn wasm_network_filter(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    json!({
        "name": f.name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": wasm_plugin_config(f, wasm_dir),
        }
    })
}

fn wasm_plugin_config(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    let file = wasm_dir.join(format!("{}.wasm", f.module));
    json!({
        "name": f.name,
        "root_id": f.name,
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": f.config.to_string(),
        },
        "vm_config": {
            "vm_id": format!("wasmesh.{}", f.module),
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": file.display().to_string()}},
        },
        // Telemetry fails open; security and routing fail closed and recover by reloading the VM.
        "failure_policy": if f.fail_open { "FAIL_OPEN" } else { "FAIL_RELOAD" },
    })
}

fn listener(spec: &ProxySpec, name: &str, port: u16, c: &Contribution, route_config: Value, edge: bool) -> Value {
    let (normalize_path, merge_slashes, escaped) = spec.mesh.normalization().hcm();
    let mut http_filters: Vec<Value> = c.http_filters.iter().map(|f| wasm_http_filter(f, &spec.wasm_dir)).collect();
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": format!("{name}_{port}"),
        "codec_type": "AUTO",
        "normalize_path": normalize_path,
        "merge_slashes": merge_slashes,
        "path_with_escaped_slashes_action": escaped,
        "use_remote_address": edge,
        "route_config": route_config,
        "http_filters": http_filters,
    });
    if edge {
        hcm["xff_num_trusted_hops"] = json!(spec.mesh.num_trusted_proxies());
    }
    if let Some(log) = &spec.envoy_access_log {
        hcm["access_log"] = json!([{
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log.display().to_string(),
            }
        }]);
    }
    let mut filters: Vec<Value> = c.network_filters.iter().map(|f| wasm_network_filter(f, &spec.wasm_dir)).collect();
    filters.push(json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}));
    json!({
        "name": format!("{name}_{port}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters}],
    })
}

/// Istio's default retry policy for routes without `retries` (spec: route/retry/retry.go).
fn istio_default_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
        }],
        "host_selection_retry_max_attempts": 5,
    })
}

/// The route for outbound and gateway listeners: Envoy sends the request to the cluster the wasm
/// router named. Istio disables the route timeout by default (`0s`).
fn route_by_header() -> Value {
    json!({
        "name": "wasmesh",
        "virtual_hosts": [{
            "name": "wasmesh",
            "domains": ["*"],
            "routes": [{
                "match": {"prefix": "/"},
                "route": {"cluster_header": CLUSTER_HEADER, "timeout": "0s", "retry_policy": istio_default_retry_policy()},
                // Read when the route picks the cluster, removed before the request goes
                // upstream: the app never sees wasmesh's steering header.
                "request_headers_to_remove": [CLUSTER_HEADER],
            }],
        }],
    })
}

/// The inbound route: everything to the app. The metadata-exchange headers never reach the
/// application (the stats filter reads them first; the router drops them when forwarding).
fn route_to(cluster: &str) -> Value {
    json!({
        "name": "inbound",
        "virtual_hosts": [{
            "name": "inbound",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
        }],
        "request_headers_to_remove": ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"],
    })
}

fn static_cluster(name: &str, endpoints: &[(String, u32)], lb: &str) -> Value {
    let all_ips = endpoints.iter().all(|(a, _)| a.parse::<std::net::IpAddr>().is_ok());
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, port)| json!({"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}}))
        .collect();
    json!({
        "name": name,
        "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "10s",
        "lb_policy": lb,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    })
}

/// One cluster per (service host, port) and per (DestinationRule subset, port).
pub fn outbound_clusters(resources: &Resources, wl: &Workload) -> Result<Vec<Value>, Vec<Error>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let rules: Vec<(&Resource, &DestinationRule)> = resources.destination_rules().collect();
    for (se_res, se) in resources.service_entries() {
        let ns = se_res.namespace();
        // Endpoints: inline, plus WorkloadEntries the workloadSelector selects (same namespace).
        let mut endpoints: Vec<&WorkloadEntry> = se.endpoints.iter().collect();
        if let Some(sel) = &se.workload_selector {
            endpoints.extend(
                resources
                    .workload_entries()
                    .filter(|(r, we)| r.namespace() == ns && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                    .map(|(_, we)| we),
            );
        }
        if se.resolution.as_deref().is_some_and(|r| r != "STATIC" && r != "DNS" && r != "DNS_ROUND_ROBIN") {
            errors.push(Error::at(se_res, "spec.resolution", format!("{:?} is not supported by wasmeshctl envoy; expected STATIC or DNS", se.resolution.as_deref().unwrap_or(""))));
            continue;
        }
        for host in &se.hosts {
            let fq = wl.fqdn(host, ns);
            let rule = rules.iter().find(|(r, dr)| wl.fqdn(&dr.host, r.namespace()) == fq);
            if let Some((dr_res, dr)) = rule {
                check_traffic_policy(dr_res, "spec.trafficPolicy", dr.traffic_policy.as_ref(), &mut errors);
                for (i, s) in dr.subsets.iter().enumerate() {
                    check_traffic_policy(dr_res, &format!("spec.subsets[{i}].trafficPolicy"), s.traffic_policy.as_ref(), &mut errors);
                }
            }
            for port in &se.ports {
                let addrs = |labels: &BTreeMap<String, String>| -> Vec<(String, u32)> {
                    endpoints
                        .iter()
                        .filter(|we| labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                        .map(|we| {
                            let p = we.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number);
                            let addr = if we.address.is_empty() { fq.clone() } else { we.address.clone() };
                            (addr, p)
                        })
                        .collect()
                };
                let default_lb = rule.map(|(_, dr)| lb_policy(dr.traffic_policy.as_ref())).unwrap_or("LEAST_REQUEST");
                let mut eps = addrs(&BTreeMap::new());
                if eps.is_empty() && se.resolution.as_deref() != Some("STATIC") {
                    eps.push((fq.clone(), port.target_port.unwrap_or(port.number)));
                }
                let name = format!("outbound|{}||{fq}", port.number);
                out.push(with_istio_metadata(static_cluster(&name, &eps, default_lb), &fq, ns));
                if let Some((_, dr)) = rule {
                    for subset in &dr.subsets {
                        // A subset's trafficPolicy overrides the rule's field by field: a subset
                        // policy without loadBalancer (e.g. only tls) keeps the rule's.
                        let lb = match subset.traffic_policy.as_ref() {
                            Some(tp) if tp.load_balancer.is_some() => lb_policy(Some(tp)),
                            _ => default_lb,
                        };
                        let name = format!("outbound|{}|{}|{fq}", port.number, subset.name);
                        out.push(with_istio_metadata(static_cluster(&name, &addrs(&subset.labels), lb), &fq, ns));
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Istio's cluster metadata (`filter_metadata.istio.services`), which telemetry reads for
/// `destination_service*` labels.
fn with_istio_metadata(mut cluster: Value, host: &str, ns: &str) -> Value {
    let name = host.split('.').next().unwrap_or(host);
    cluster["metadata"] = json!({"filter_metadata": {"istio": {"services": [{"host": host, "name": name, "namespace": ns}]}}});
    cluster
}

fn lb_policy(tp: Option<&TrafficPolicy>) -> &'static str {
    match tp.and_then(|t| t.load_balancer.as_ref()).and_then(|lb| lb.simple) {
        Some(SimpleLb::RoundRobin) => "ROUND_ROBIN",
        Some(SimpleLb::Random) => "RANDOM",
        // Istio's default, and LEAST_CONN is its deprecated alias.
        _ => "LEAST_REQUEST",
    }
}

fn check_traffic_policy(res: &Resource, field: &str, tp: Option<&TrafficPolicy>, errors: &mut Vec<Error>) {
    let Some(tp) = tp else { return };
    let unsupported: [(&str, bool); 6] = [
        ("connectionPool", tp.connection_pool.is_some()),
        ("outlierDetection", tp.outlier_detection.is_some()),
        // `tls` and `portLevelSettings[].tls` are interpreted by the mTLS plugin.
        ("portLevelSettings (other than tls)", tp.port_level_settings.iter().any(|p| p.as_object().is_some_and(|o| o.keys().any(|k| k != "port" && k != "tls")))),
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
        ("retryBudget", tp.retry_budget.is_some()),
    ];
    for (name, set) in unsupported {
        if set {
            errors.push(Error::at(res, format!("{field}.{name}"), "not supported by wasmeshctl envoy yet (loadBalancer.simple and tls are)"));
        }
    }
    if let Some(lb) = &tp.load_balancer {
        if lb.simple == Some(SimpleLb::Passthrough) {
            errors.push(Error::at(res, format!("{field}.loadBalancer.simple"), "PASSTHROUGH is not supported; expected ROUND_ROBIN, RANDOM, LEAST_REQUEST or LEAST_CONN"));
        }
        for (name, set) in [
            ("consistentHash", lb.consistent_hash.is_some()),
            ("localityLbSetting", lb.locality_lb_setting.is_some()),
            ("warmupDurationSecs", lb.warmup_duration_secs.is_some()),
            ("warmup", lb.warmup.is_some()),
        ] {
            if set {
                errors.push(Error::at(res, format!("{field}.loadBalancer.{name}"), "not supported by wasmeshctl envoy yet"));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn lb_of(clusters: &[Value], name: &str) -> String {
        let c = clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"));
        c["lb_policy"].as_str().unwrap_or_else(|| panic!("{c}")).to_string()
    }

    const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}, {address: 127.0.0.2, labels: {version: v2}}]
"#;

    /// One cluster per service port and subset, each with the DestinationRule's load balancer:
    /// a subset's own `loadBalancer` wins, a subset policy without one (only `tls`) inherits
    /// the rule's, and no DestinationRule means Istio's default LEAST_REQUEST.
    #[test]
    fn clusters_get_the_destination_rule_load_balancer_per_subset() {
        let wl = Workload::new("sleep", "default");
        let none = outbound_clusters(&resources(SERVICE), &wl).unwrap();
        assert_eq!(lb_of(&none, "outbound|9080||reviews.default.svc.cluster.local"), "LEAST_REQUEST");

        let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: DISABLE}}}
  - {name: all, labels: {}}
"#;
        let clusters = outbound_clusters(&resources(&(SERVICE.to_string() + dr)), &wl).unwrap();
        assert_eq!(lb_of(&clusters, "outbound|9080||reviews.default.svc.cluster.local"), "RANDOM");
        assert_eq!(lb_of(&clusters, "outbound|9080|v1|reviews.default.svc.cluster.local"), "ROUND_ROBIN");
        assert_eq!(lb_of(&clusters, "outbound|9080|v2|reviews.default.svc.cluster.local"), "RANDOM", "tls-only subset policy inherits");
        assert_eq!(lb_of(&clusters, "outbound|9080|all|reviews.default.svc.cluster.local"), "RANDOM");
        let v1 = clusters.iter().find(|c| c["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        let eps = &v1["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(eps.as_array().map(Vec::len), Some(1), "the v1 subset has the v1 endpoint only: {v1}");
        assert_eq!(eps[0]["endpoint"]["address"]["socket_address"]["address"], "127.0.0.1");
    }

    /// The steering header is read by the route and removed before the request leaves.
    #[test]
    fn the_cluster_header_route_removes_the_header() {
        let r = route_by_header();
        let route = &r["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["route"]["cluster_header"], CLUSTER_HEADER);
        assert_eq!(route["request_headers_to_remove"], json!([CLUSTER_HEADER]));
    }
}
