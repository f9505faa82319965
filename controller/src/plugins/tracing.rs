//! The tracing filter (`wasmesh.tracing`): meshConfig `extensionProviders` (`opentelemetry`
//! over OTLP/HTTP, `zipkin`) and `defaultProviders.tracing`, and the Telemetry API `tracing`
//! (mesh, namespace and workload scope, the more specific overriding field by field, `match.mode`
//! choosing client and/or server side), turned into the phase's configuration and the
//! collector's Envoy cluster.
//!
//! What is not mapped is refused ([`refusals`]) naming the resource, field and value: OTLP over
//! gRPC (an `opentelemetry` provider without `http`), other provider kinds, `customTags`
//! `formatter`, `useRequestIdForTraceSampling: false`, `enableIstioTags: false`, provider
//! `headers`, `resourceDetectors`, `dynatraceSampler`.

use super::{Contribution, Direction, ListenerContext, WasmFilter};
use crate::mesh::MeshConfig;
use serde_json::{json, Map, Value};
use wasmesh_istio::{Error, Resource, Resources, Workload};

pub const FILTER_NAME: &str = "wasmesh.tracing";

/// Telemetry `tracing[]` fields wasmesh maps.
const TRACING_FIELDS: [&str; 8] = [
    "providers",
    "randomSamplingPercentage",
    "customTags",
    "disableSpanReporting",
    "disableContextPropagation",
    "match",
    "useRequestIdForTraceSampling",
    "enableIstioTags",
];

/// The tracing providers of meshConfig: name → (kind, its settings).
fn provider<'a>(mesh: &'a MeshConfig, name: &str) -> Option<(&'static str, &'a Value)> {
    let p = mesh.extension_providers.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name))?;
    for kind in ["opentelemetry", "zipkin"] {
        if let Some(v) = p.get(kind) {
            return Some((kind, v));
        }
    }
    None
}

/// Whether an extension provider entry is a tracing provider of a kind wasmesh cannot export to.
const OTHER_TRACING_KINDS: [&str; 5] = ["datadog", "lightstep", "skywalking", "stackdriver", "opencensus"];

/// The Telemetry tracing entries that apply to `wl`, least specific first (root namespace,
/// namespace, workload selector).
fn applicable<'a>(resources: &'a Resources, wl: &Workload) -> Vec<(&'a Resource, &'a Value)> {
    let mut scoped: Vec<(u8, &Resource, &Value)> = Vec::new();
    for (res, t) in resources.telemetries() {
        let ns = res.metadata.namespace.as_deref().unwrap_or("default");
        let rank = match (&t.selector, ns == wl.root_namespace, ns == wl.namespace) {
            (Some(sel), _, true) if sel.selects(&wl.labels) => 2,
            (Some(_), _, _) => continue,
            (None, true, _) => 0,
            (None, _, true) => 1,
            _ => continue,
        };
        for entry in &t.tracing {
            scoped.push((rank, res, entry));
        }
    }
    scoped.sort_by_key(|(rank, _, _)| *rank);
    scoped.into_iter().map(|(_, r, v)| (r, v)).collect()
}

/// Whether an entry's `match.mode` covers this side (`server`: a sidecar's inbound; istiod
/// applies the client side to outbound and gateway listeners, `configureTracingFromTelemetry`).
fn covers(entry: &Value, server: bool) -> bool {
    match entry.pointer("/match/mode").and_then(Value::as_str).unwrap_or("CLIENT_AND_SERVER") {
        "CLIENT" => !server,
        "SERVER" => server,
        _ => true,
    }
}

/// The merged tracing settings for one side of a workload and the provider they name (or the
/// mesh default), `None` when tracing is off (no Telemetry tracing applies and no default).
fn effective(ctx: &ListenerContext<'_>, server: bool) -> Option<(Map<String, Value>, Option<String>)> {
    let mut merged = Map::new();
    let mut any = false;
    for (_, entry) in applicable(ctx.resources, ctx.workload) {
        if !covers(entry, server) {
            continue;
        }
        any = true;
        if let Some(obj) = entry.as_object() {
            for (k, v) in obj {
                if k == "customTags" {
                    let tags = merged.entry("customTags").or_insert_with(|| json!({}));
                    if let (Some(into), Some(from)) = (tags.as_object_mut(), v.as_object()) {
                        for (tk, tv) in from {
                            into.insert(tk.clone(), tv.clone());
                        }
                    }
                } else {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let from_telemetry = merged
        .get("providers")
        .and_then(Value::as_array)
        .and_then(|p| p.first())
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let name = from_telemetry.or_else(|| default_provider(ctx.mesh));
    (any || name.is_some()).then_some((merged, name))
}

fn default_provider(mesh: &MeshConfig) -> Option<String> {
    mesh.default_providers.as_ref()?.get("tracing")?.as_array()?.first()?.as_str().map(str::to_string)
}

/// The collector cluster's name for a provider.
pub fn cluster_name(provider: &str) -> String {
    format!("wasmesh-tracing|{provider}")
}

/// The phase for one listener, and its collector cluster.
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let Some((merged, name)) = effective(ctx, server_side(ctx)) else { return Ok(Contribution::default()) };
    let server = !matches!(ctx.direction, Direction::Outbound);
    let Some(name) = name else {
        return Err(vec![Error::new(format!(
            "{}/{}: Telemetry tracing applies but names no tracing provider and meshConfig has no \
             defaultProviders.tracing: name one in providers (an extensionProviders entry)",
            ctx.workload.namespace, ctx.workload.name
        ))]);
    };
    let Some((kind, p)) = provider(ctx.mesh, &name) else {
        return Err(vec![Error::new(format!(
            "tracing provider {name:?}: no extensionProviders entry of that name with opentelemetry or zipkin"
        ))]);
    };
    let service = p.get("service").and_then(Value::as_str).unwrap_or_default().to_string();
    let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
    let path = match kind {
        "opentelemetry" => p.pointer("/http/path").and_then(Value::as_str).unwrap_or("/v1/traces").to_string(),
        _ => p.get("path").and_then(Value::as_str).unwrap_or("/api/v2/spans").to_string(),
    };
    let path = if path.starts_with('/') { path } else { format!("/{path}") };
    let cluster = cluster_name(&name);
    let mut config = json!({
        "provider": {"kind": kind, "cluster": cluster, "authority": format!("{service}:{port}"), "path": path},
        "meshId": ctx.workload.trust_domain,
        "kind": if server { "server" } else { "client" },
    });
    // Span names as istiod's route decorators give them: the router (outbound, gateway) hands
    // over the matched route's operation (its `traceOperations`, set by the router plugin from
    // [`enabled`]); a sidecar's inbound route is `<service host>:<service port>/*`.
    match ctx.direction {
        Direction::Inbound => {
            if let Some(op) = inbound_operation(ctx) {
                config["operation"] = json!(op);
            }
        }
        Direction::Outbound => config["routeOperations"] = json!(true),
        // istiod writes a gateway's listeners `traffic_direction: OUTBOUND`
        // (buildGatewayListeners), so Envoy's connection manager applies decorators there as
        // egress: the route's operation goes upstream, a client's header is not taken.
        //
        // istiod sets `spawn_upstream_span` on a gateway's connection manager
        // (`PILOT_SPAWN_UPSTREAM_SPAN_FOR_GATEWAY`, always on since Istio 1.31): Envoy reports the
        // downstream span as SERVER and an upstream span per upstream request under it.
        Direction::Gateway { .. } => {
            config["routeOperations"] = json!(true);
            config["decorators"] = json!("egress");
            config["spawnUpstreamSpan"] = json!(true);
            let (h2, downstream) = upstream_protocols(ctx);
            if h2.len() + downstream.len() > wasmesh_trace::config::MAX_PROTOCOL_CLUSTERS {
                return Err(vec![Error::new(format!(
                    "{}/{}: {} HTTP/2 and downstream-protocol clusters for the gateway's upstream spans; \
                     the tracing filter takes at most {}",
                    ctx.workload.namespace,
                    ctx.workload.name,
                    h2.len() + downstream.len(),
                    wasmesh_trace::config::MAX_PROTOCOL_CLUSTERS
                ))]);
            }
            if !h2.is_empty() {
                config["http2Clusters"] = json!(h2);
            }
            if !downstream.is_empty() {
                config["downstreamProtocolClusters"] = json!(downstream);
            }
        }
    }
    for k in ["randomSamplingPercentage", "disableSpanReporting", "disableContextPropagation", "customTags"] {
        if let Some(v) = merged.get(k) {
            config[k] = v.clone();
        }
    }
    let collector = json!({
        "name": cluster,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": service, "port_value": port}}}}]}]}
    });
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: true }],
        clusters: vec![collector],
        ..Contribution::default()
    })
}

/// The service clusters whose upstream protocol is HTTP/2, and those using the downstream's
/// (the upstream span's `http.protocol`, which the filter cannot read from Envoy).
fn upstream_protocols(ctx: &ListenerContext<'_>) -> (Vec<String>, Vec<String>) {
    let (mut h2, mut downstream) = (Vec::new(), Vec::new());
    let Ok(clusters) = crate::bootstrap::outbound_clusters(ctx.resources, ctx.workload) else {
        return (h2, downstream);
    };
    for c in clusters {
        let Some(name) = c.get("name").and_then(Value::as_str) else { continue };
        let Some(o) =
            c.pointer("/typed_extension_protocol_options/envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
        else {
            continue;
        };
        if o.get("use_downstream_protocol_config").is_some() {
            downstream.push(name.to_string());
        } else if o.pointer("/explicit_http_config/http2_protocol_options").is_some() {
            h2.push(name.to_string());
        }
    }
    (h2, downstream)
}

/// Whether the tracing filter goes on this listener (the router then hands it the routes'
/// operations).
pub fn enabled(ctx: &ListenerContext<'_>) -> bool {
    effective(ctx, server_side(ctx)).is_some()
}

/// The Telemetry side (`match.mode`) that applies: the server side on a sidecar's inbound
/// listener only.
fn server_side(ctx: &ListenerContext<'_>) -> bool {
    matches!(ctx.direction, Direction::Inbound)
}

/// The operation istiod writes on a sidecar's inbound route (`telemetry.TraceOperation`):
/// `<host>:<port>/*` of the service the listener's port belongs to (the first ServiceEntry
/// selecting the workload with a port whose workload port is that port: the WorkloadEntry's
/// `ports` by the port's name, else its `targetPort`, else its number, as Istio resolves an
/// endpoint's port), `None` when no service has it.
fn inbound_operation(ctx: &ListenerContext<'_>) -> Option<String> {
    let bind = u32::from(ctx.bind_port);
    let (wl, resources) = (ctx.workload, ctx.resources);
    let entry = resources.workload_entries().find(|(r, _)| r.namespace() == wl.namespace && r.name() == wl.name);
    let workload_port = |p: &wasmesh_istio::networking::ServicePort| {
        entry.and_then(|(_, we)| we.ports.get(&p.name).copied()).or(p.target_port).unwrap_or(p.number)
    };
    for (res, se) in resources.service_entries_selecting(wl) {
        let Some(port) = se.ports.iter().find(|p| workload_port(p) == bind) else { continue };
        let host = se.hosts.first()?;
        let fq = ctx.workload.fqdn(host, res.namespace());
        return Some(wasmesh_router::operation::default(&fq, port.number));
    }
    None
}

/// What wasmesh refuses in tracing configuration (`wasmeshctl validate`, `envoy`, `generate`).
pub fn refusals(resources: &Resources, mesh: &MeshConfig) -> Vec<Error> {
    let mut errors = Vec::new();
    let named_anywhere = resources.telemetries().any(|(_, t)| {
        t.tracing.iter().any(|e| e.get("providers").and_then(Value::as_array).is_some_and(|p| !p.is_empty()))
    });
    let default_named = default_provider(mesh).is_some();
    for (res, t) in resources.telemetries() {
        for (i, entry) in t.tracing.iter().enumerate() {
            if !named_anywhere && !default_named && entry.get("disableSpanReporting") != Some(&json!(true)) {
                errors.push(Error::at(
                    res,
                    format!("spec.tracing[{i}].providers"),
                    "no tracing provider: no Telemetry names one and meshConfig has no defaultProviders.tracing \
                     (name an extensionProviders opentelemetry or zipkin entry)",
                ));
            }
            let at = |f: &str| format!("spec.tracing[{i}].{f}");
            let Some(obj) = entry.as_object() else {
                errors.push(Error::at(res, format!("spec.tracing[{i}]"), "expected an object"));
                continue;
            };
            for (k, v) in obj {
                if !TRACING_FIELDS.contains(&k.as_str()) {
                    errors.push(Error::at(
                        res,
                        at(k),
                        format!("{v}: not mapped by wasmesh; expected only {TRACING_FIELDS:?}"),
                    ));
                }
            }
            if obj.get("useRequestIdForTraceSampling") == Some(&json!(false)) {
                errors.push(Error::at(
                    res,
                    at("useRequestIdForTraceSampling"),
                    "false: wasmesh samples on the request id as Istio's default (true) does",
                ));
            }
            if obj.get("enableIstioTags") == Some(&json!(false)) {
                errors.push(Error::at(res, at("enableIstioTags"), "false: wasmesh always adds Istio's tags"));
            }
            if let Some(p) = obj.get("randomSamplingPercentage") {
                if !p.as_f64().is_some_and(|p| (0.0..=100.0).contains(&p)) {
                    errors.push(Error::at(res, at("randomSamplingPercentage"), format!("{p}: expected 0 to 100")));
                }
            }
            let providers = obj.get("providers").and_then(Value::as_array).cloned().unwrap_or_default();
            if providers.len() > 1 {
                errors.push(Error::at(res, at("providers"), "more than one provider: Istio supports one; name one"));
            }
            for (j, p) in providers.iter().enumerate() {
                let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
                if provider(mesh, name).is_none() {
                    errors.push(Error::at(
                        res,
                        at(&format!("providers[{j}].name")),
                        format!("{name:?}: no meshConfig extensionProviders entry of that name with opentelemetry or zipkin"),
                    ));
                }
            }
            for (tag, spec) in obj.get("customTags").and_then(Value::as_object).into_iter().flatten() {
                let kinds: Vec<&String> = spec.as_object().map(|o| o.keys().collect()).unwrap_or_default();
                if kinds.len() != 1 || !["literal", "header", "environment"].contains(&kinds[0].as_str()) {
                    errors.push(Error::at(
                        res,
                        at(&format!("customTags.{tag}")),
                        format!(
                            "{spec}: expected exactly one of literal, header, environment (formatter is not mapped)"
                        ),
                    ));
                }
            }
        }
    }
    for (i, p) in mesh.extension_providers.iter().enumerate() {
        let at = |f: &str| format!("meshConfig.extensionProviders[{i}].{f}");
        if let Some(o) = p.get("opentelemetry") {
            if o.get("http").is_none() {
                errors.push(Error::new(format!(
                    "{}: OTLP over gRPC is not exported by wasmesh; set http.path (OTLP/HTTP, e.g. /v1/traces)",
                    at("opentelemetry")
                )));
            }
            for k in o.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                if !["service", "port", "http", "maxTagLength"].contains(&k.as_str()) {
                    errors.push(Error::new(format!(
                        "{}: {}: not mapped by wasmesh",
                        at(&format!("opentelemetry.{k}")),
                        o[&k]
                    )));
                }
            }
            for k in o
                .get("http")
                .and_then(Value::as_object)
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                if !["path", "timeout"].contains(&k.as_str()) {
                    errors
                        .push(Error::new(format!("{}: not mapped by wasmesh", at(&format!("opentelemetry.http.{k}")))));
                }
            }
        }
        if let Some(z) = p.get("zipkin") {
            for k in z.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
                if !["service", "port", "path", "maxTagLength"].contains(&k.as_str()) {
                    errors.push(Error::new(format!(
                        "{}: {}: not mapped by wasmesh",
                        at(&format!("zipkin.{k}")),
                        z[&k]
                    )));
                }
            }
        }
        for kind in OTHER_TRACING_KINDS {
            if p.get(kind).is_some() && default_provider(mesh).as_deref() == p.get("name").and_then(Value::as_str) {
                errors
                    .push(Error::new(format!("{}: wasmesh exports traces to opentelemetry and zipkin only", at(kind))));
            }
        }
    }
    if let Some(name) = default_provider(mesh) {
        if provider(mesh, &name).is_none() {
            errors.push(Error::new(format!(
                "meshConfig.defaultProviders.tracing: {name:?}: no extensionProviders entry of that name with opentelemetry or zipkin"
            )));
        }
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const YAML: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  ports: [{number: 8000, name: http, protocol: HTTP}, {number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
  - match: {mode: SERVER}
    customTags: {side: {literal: {value: server}}}
"#;

    #[test]
    fn gateways_spawn_an_upstream_span_and_take_the_client_side() {
        let res = Resources { items: wasmesh_istio::load_str(YAML, "t.yaml").unwrap_or_else(|e| panic!("{e}")) };
        let mesh: MeshConfig = serde_json::from_value(json!({
            "extensionProviders": [{"name": "otel", "opentelemetry": {"service": "c", "port": 4318,
                "http": {"path": "/v1/traces"}}}],
            "defaultProviders": {"tracing": ["otel"]}
        }))
        .unwrap();
        let wl = Workload::new("istio-ingressgateway", "istio-system");
        let ctx =
            |direction| ListenerContext { workload: &wl, resources: &res, direction, bind_port: 8080, mesh: &mesh };
        let config = |d| contribute(&ctx(d)).unwrap().http_filters[0].config.clone();
        let gw = config(Direction::Gateway { port: 80 });
        assert_eq!((gw["kind"].as_str(), gw["spawnUpstreamSpan"].as_bool()), (Some("server"), Some(true)));
        assert_eq!(gw["decorators"], "egress");
        assert_eq!(gw["http2Clusters"], json!(["outbound|9000||web.default.svc.cluster.local"]));
        assert!(gw.get("customTags").is_none(), "istiod gives a gateway the client side: {gw}");
        let out = config(Direction::Outbound);
        assert!(out.get("spawnUpstreamSpan").is_none() && out.get("customTags").is_none());
        let inbound = config(Direction::Inbound);
        assert!(inbound.get("spawnUpstreamSpan").is_none());
        assert_eq!(inbound["customTags"]["side"]["literal"]["value"], "server");
        // The filter accepts what the plugin writes.
        let checked = wasmesh_trace::config::parse(gw.to_string().as_bytes(), |_| None).unwrap();
        assert!(checked.spawn_upstream);
        assert_eq!(checked.upstream_protocol("outbound|9000||web.default.svc.cluster.local", "HTTP/1.1"), "HTTP/2");
    }
}
