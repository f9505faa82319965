//! What `make bench` measures: each wasmesh filter alone against no filter, Envoy's native
//! equivalent and a no-op wasm filter; N no-op wasm filters; and the sidecar inbound, sidecar
//! outbound and gateway chains exactly as `wasmeshctl envoy` generates them (the controller's
//! bootstrap builder, every filter from the one module `wasmesh.wasm`, or `wasmesh-request.wasm` where
//! wasmeshctl's rule picks it: [`picked_module`]), each against no filter,
//! the native equivalent chain and as many no-op wasm filters as the chain has filters; and the
//! sidecar inbound chain again over mutual TLS (`sidecar_inbound_mtls`), h2load's requests
//! carried by a front Envoy presenting a mesh caller's certificate.

use super::{derive, noop_filters, wasm_filter, Group, Scenario, Variant};
use crate::authn::{self, NativeJwks};
use serde_json::{json, Value};
use wasmesh_controller::bootstrap;
use wasmesh_controller::plugins::WasmFilter;
use wasmesh_istio::{ProxyMode, Resources, Workload};

/// Every group; `app_port` is the upstream's port (the generated clusters' endpoints).
pub fn all(app_port: u16) -> Result<Vec<Group>, String> {
    let mut filters = vec![router()?, vs_actions()?, authz()?];
    filters.extend(authn::bench_scenarios().into_iter().map(with_noop));
    filters.push(with_noop(crate::stats::bench_scenario()));
    filters.push(crate::access_log::bench_scenario());
    filters.push(super::tracing::scenario());
    filters.push(super::tracing::together());
    filters.push(noops());
    let filters = filters.into_iter().map(picked_module).collect();
    Ok(vec![Group { name: "filters".into(), scenarios: filters, base: None }, sidecar(app_port)?, gateway(app_port)?])
}

fn wasmesh_filter(name: &str, config: Value) -> Value {
    bootstrap::wasm_http_filter(&WasmFilter { name: name.into(), config, fail_open: false }, &crate::paths::wasm_dir())
}

/// The router's bench service: 10 routes with a header regex each and a default route.
const SERVICE: &str = "bench";
fn header_routes(ns: &str) -> (Vec<Value>, Vec<Value>, Vec<String>) {
    let host = format!("{SERVICE}.{ns}.svc.cluster.local");
    let mut http = Vec::new();
    let mut native = Vec::new();
    let mut clusters = Vec::new();
    for i in 0..10 {
        let subset = format!("s{i}");
        http.push(json!({
            "match": [{"headers": {"x-route": {"regex": format!("v{i}-[a-z]+")}}}],
            "route": [{"destination": {"host": SERVICE, "subset": subset}}]
        }));
        let cluster = format!("outbound|80|{subset}|{host}");
        native.push(json!({
            "match": {"prefix": "/", "headers": [{"name": "x-route", "string_match": {"safe_regex": {"regex": format!("v{i}-[a-z]+")}}}]},
            "route": {"cluster": cluster, "timeout": "0s"}
        }));
        clusters.push(cluster);
    }
    http.push(json!({"route": [{"destination": {"host": SERVICE}}]}));
    let default_cluster = format!("outbound|80||{host}");
    native.push(json!({"match": {"prefix": "/"}, "route": {"cluster": default_cluster, "timeout": "0s"}}));
    clusters.push(default_cluster);
    (http, native, clusters)
}

/// The request that matches the 10th route: every regex is evaluated.
fn route_header() -> (String, String) {
    ("x-route".into(), "v9-match".into())
}

/// A variant of the router scenarios: the request carries the route header, to the service's
/// authority, over the scenario's app clusters.
fn routed_variant(name: &str, filters: Vec<Value>, route: Option<Value>, clusters: &[String]) -> Variant {
    Variant {
        http_filters: filters,
        route_config: route,
        app_clusters: clusters.to_vec(),
        headers: vec![route_header()],
        authority: SERVICE.into(),
        ..Variant::new(name)
    }
}

/// A 10-route VirtualService with header regexes; the request matches the 10th route. Native:
/// the same routes in Envoy's route config, as istiod would write them.
fn router() -> Result<Scenario, String> {
    let host = format!("{SERVICE}.default.svc.cluster.local");
    let (http, native_routes, clusters) = header_routes("default");
    let config = router_config(&host, http);
    let by_header = by_header_route();
    let with = |name: &str, filters: Vec<Value>, route: Option<Value>| routed_variant(name, filters, route, &clusters);
    Ok(Scenario {
        name: "router".into(),
        target: "router ≤ 35k instructions/request over no filter".into(),
        variants: vec![
            with("none", vec![], None),
            with(
                "native route table",
                vec![],
                Some(json!({"virtual_hosts": [{"name": "bench", "domains": ["*"], "routes": native_routes}]})),
            ),
            with("no-op wasm filter", noop_filters(1), None),
            with("wasmesh", vec![wasmesh_filter("wasmesh.router", config)], Some(by_header)),
        ],
        modules: vec!["wasmesh".into(), "noop".into()],
    })
}

fn router_config(host: &str, http: Vec<Value>) -> Value {
    let resources = json!([
        {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "bench", "namespace": "default"},
         "spec": {"hosts": [host], "ports": [{"number": 80, "name": "http"}], "resolution": "STATIC"}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "bench", "namespace": "default"},
         "spec": {"hosts": [SERVICE], "http": http}},
    ]);
    json!({"workload": {"name": "bench-client", "namespace": "default"}, "resources": resources})
}

fn by_header_route() -> Value {
    json!({"virtual_hosts": [{"name": "wasmesh", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster_header": wasmesh_router::DEFAULT_CLUSTER_HEADER, "timeout": "0s"}}]}]})
}

/// The router scenario's table with every VirtualService action (redirect, directResponse,
/// rewrite, request/response headers per route and destination, fault, timeout, retries,
/// mirror, corsPolicy) configured on routes before the matched one, none triggered; Envoy's CORS
/// and fault filters after the router and the policy and fault routes as wasmeshctl generates
/// them. Against the plain table: what configuring the actions costs a request.
fn vs_actions() -> Result<Scenario, String> {
    let host = format!("{SERVICE}.default.svc.cluster.local");
    let (http, _, clusters) = header_routes("default");
    let plain = router_config(&host, http.clone());
    let mut acting = vec![
        json!({"match": [{"headers": {"x-action": {"exact": "redirect"}}}],
               "redirect": {"uri": "/moved", "authority": "elsewhere", "redirectCode": 302}}),
        json!({"match": [{"headers": {"x-action": {"exact": "direct"}}}],
               "directResponse": {"status": 503, "body": {"string": "down"}}}),
        json!({"match": [{"headers": {"x-action": {"exact": "rewrite"}}}],
               "rewrite": {"uri": "/v2", "authority": "new"},
               "headers": {"request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]},
                           "response": {"set": {"x-d": "1"}}},
               "route": [{"destination": {"host": SERVICE}, "headers": {"request": {"set": {"x-e": "1"}}}}]}),
        json!({"match": [{"headers": {"x-action": {"exact": "fault"}}}],
               "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 100}},
                         "abort": {"httpStatus": 500, "percentage": {"value": 100}}},
               "route": [{"destination": {"host": SERVICE}}]}),
        json!({"match": [{"headers": {"x-action": {"exact": "policy"}}}],
               "timeout": "2s", "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,503"},
               "mirror": {"host": SERVICE}, "mirrorPercentage": {"value": 10},
               "corsPolicy": {"allowOrigins": [{"exact": "http://a.example"}], "allowMethods": ["GET"], "maxAge": "1h"},
               "route": [{"destination": {"host": SERVICE}}]}),
    ];
    acting.extend(http);
    let mut all = router_config(&host, acting);
    all["faultFilter"] = json!(true);
    all["faultRoutes"] = json!(true);
    all["routePolicies"] = json!(true);
    let policy_routes = policy_route_config(&all)?;
    // Configured empty, as istiod configures it: the fault routes carry the faults.
    let fault_filter = json!({"name": wasmesh_router::FAULT_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}});
    let cors_filter = json!({"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}});
    let with = |name: &str, filters: Vec<Value>, route: Option<Value>| routed_variant(name, filters, route, &clusters);
    let every = with(
        "wasmesh, every action configured",
        vec![wasmesh_filter("wasmesh.router", all), cors_filter, fault_filter],
        Some(policy_routes),
    );
    Ok(Scenario {
        name: "vs actions".into(),
        target: "configured, untriggered actions cost the router nothing measurable".into(),
        variants: vec![
            with("none", vec![], None),
            with("wasmesh", vec![wasmesh_filter("wasmesh.router", plain)], Some(by_header_route())),
            every,
        ],
        modules: vec!["wasmesh".into(), "noop".into()],
    })
}

/// The by-header route with one route per route policy of `config` before it, as wasmeshctl
/// writes them (matched on the policy filter state, the policy's route action and CORS policy).
fn policy_route_config(config: &Value) -> Result<Value, String> {
    use wasmesh_istio::FilterConfig;
    let cfg: wasmesh_router::RouterConfig = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
    let router = cfg.compile(&cfg.parsed_resources().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let mut routes: Vec<Value> = Vec::new();
    for p in router.policies() {
        let mut action = json!({"cluster_header": wasmesh_router::DEFAULT_CLUSTER_HEADER});
        for (k, v) in &p.route_action {
            action[k] = v.clone();
        }
        let mut r = json!({"match": {"prefix": "/", "filter_state": [{"key": wasmesh_router::POLICY_FILTER_STATE_KEY, "string_match": {"exact": p.id}}]},
                           "route": action});
        if let Some(c) = &p.cors {
            r["typed_per_filter_config"]["envoy.filters.http.cors"] = c.clone();
        }
        if let Some(f) = &p.fault {
            r["typed_per_filter_config"][wasmesh_router::FAULT_FILTER] = f.clone();
        }
        routes.push(r);
    }
    let mut by_header = by_header_route();
    if let Some(list) = by_header.pointer_mut("/virtual_hosts/0/routes").and_then(Value::as_array_mut) {
        routes.append(list);
        *list = routes;
    }
    Ok(by_header)
}

/// A DENY on admin paths and a 3-rule ALLOW (`authz::BENCH_POLICIES`): Envoy's native rbac
/// filters as istiod writes them vs wasmesh authz.
fn authz() -> Result<Scenario, String> {
    let filters = crate::authz::bench_filters(crate::authz::BENCH_POLICIES, &crate::authz::bench_workload())?;
    let with = |name: &str, http: Vec<Value>, network: Vec<Value>| Variant {
        http_filters: http,
        network_filters: network,
        authority: "httpbin.foo.svc.cluster.local".into(),
        path: "/api/items".into(),
        ..Variant::new(name)
    };
    Ok(Scenario {
        name: "authz".into(),
        target: "authz ≤ 35k instructions/request over no filter".into(),
        variants: vec![
            with("none", vec![], vec![]),
            with("native rbac", filters.native, vec![]),
            with("no-op wasm filter", noop_filters(1), vec![]),
            with("wasmesh", filters.wasm, filters.wasm_network),
        ],
        modules: vec!["wasmesh".into(), "noop".into()],
    })
}

/// 1, 2, 4 and 8 no-op wasm filters: what the boundary alone costs.
fn noops() -> Scenario {
    let mut variants = vec![Variant::new("none")];
    for n in [1, 2, 4, 8] {
        let name = if n == 1 { "no-op wasm filter".to_string() } else { format!("{n} no-op wasm filters") };
        variants.push(Variant { http_filters: noop_filters(n), ..Variant::new(&name) });
    }
    Scenario {
        name: "no-op".into(),
        target: "(the boundary alone: the cost of each wasm filter before it does anything)".into(),
        variants,
        modules: vec!["noop".into()],
    }
}

/// Each variant of a single-filter scenario runs from the module wasmeshctl picks for its wasmesh
/// filters ([`wasmesh_controller::module`], the same function): `wasmesh-request.wasm` where none
/// needs a response-side callback (router without response header operations, authz, authn),
/// `wasmesh.wasm` otherwise (stats, access log, tracing). The chains keep what `wasmeshctl envoy`
/// wrote for their whole Envoy.
fn picked_module(mut s: Scenario) -> Scenario {
    use wasmesh_controller::module;
    for v in &mut s.variants {
        let parts = v.http_filters.iter().chain(&v.network_filters).chain(v.listener.iter().map(|(_, l)| l));
        let found: Vec<(String, Value)> = parts.flat_map(module::plugins).collect();
        if found.is_empty() {
            continue;
        }
        let picked = module::variant_for(found.iter().map(|(id, c)| (id.as_str(), c)));
        for f in v.http_filters.iter_mut().chain(v.network_filters.iter_mut()) {
            module::point_at(f, picked);
        }
        if let Some((_, l)) = &mut v.listener {
            module::point_at(l, picked);
        }
        let name = picked.file_name().trim_end_matches(".wasm");
        if !s.modules.iter().any(|m| m == name) {
            s.modules.push(name.into());
        }
    }
    s
}

/// Adds the no-op wasm filter after a scenario's baseline.
fn with_noop(mut s: Scenario) -> Scenario {
    if let Some(base) = s.variants.first().cloned() {
        s.variants.retain(|v| !v.name.starts_with("no-op"));
        let noop = Variant {
            name: "no-op wasm filter".into(),
            http_filters: vec![wasm_filter("wasmesh.noop", "noop", &json!({}))],
            network_filters: vec![],
            ..base
        };
        s.variants.insert(1, noop);
        if !s.modules.iter().any(|m| m == "noop") {
            s.modules.push("noop".into());
        }
    }
    for v in &mut s.variants {
        if v.name.starts_with("wasmesh") && !s.modules.iter().any(|m| m == "wasmesh") {
            s.modules.insert(0, "wasmesh".into());
        }
    }
    s.modules.retain(|m| m == "wasmesh" || m == "noop");
    s
}

// ---------------------------------------------------------------------------------------------
// The chains, as `wasmeshctl envoy` writes them

/// The bench mesh: the workload `foo/httpbin` (inbound: RequestAuthentication + DENY and 3-rule
/// ALLOW policies, as the authn and authz scenarios) calling the service `bench.foo` (outbound:
/// the router's 10 header-regex routes to DestinationRule subsets), and an ingress gateway in
/// `istio-system` with the same kind of policies and the same routes bound to it.
fn mesh_yaml(app_port: u16) -> String {
    let rs = authn::Signer::new("RS256", authn::TestKey::Rsa1, Some("rs"));
    let doc = authn::jwks(&[rs.jwk(false)]);
    let iss = authn::BENCH_ISSUER;
    let (http, _, _) = header_routes("foo");
    let mut gw_http = http.clone();
    for r in &mut gw_http {
        if let Some(d) = r.pointer_mut("/route/0/destination/host") {
            *d = json!(format!("{SERVICE}.foo.svc.cluster.local"));
        }
    }
    let subsets: Vec<Value> =
        (0..10).map(|i| json!({"name": format!("s{i}"), "labels": {"version": format!("s{i}")}})).collect();
    let endpoints: Vec<Value> = (0..10)
        .map(|i| json!({"address": "127.0.0.1", "ports": {"http": app_port}, "labels": {"version": format!("s{i}")}}))
        .collect();
    let policies = |ns: &str, selector: &str| {
        format!(
            r#"
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  jwtRules:
  - issuer: {iss}
    audiences: [bench]
    jwks: '{doc}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/admin*", "/debug/*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-api, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{{selector}}}}}
  rules:
  - to: [{{operation: {{methods: [GET, POST], paths: ["/api/*", "/"]}}}}]
  - from: [{{source: {{namespaces: [bar]}}}}]
  - when: [{{key: "request.headers[x-bench]", values: ["1"]}}]
"#
        )
    };
    let docs = [
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": SERVICE, "namespace": "foo"},
            "spec": {"hosts": [format!("{SERVICE}.foo.svc.cluster.local")], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                     "resolution": "STATIC", "endpoints": endpoints}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule", "metadata": {"name": SERVICE, "namespace": "foo"},
            "spec": {"host": SERVICE, "subsets": subsets}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": SERVICE, "namespace": "foo"},
            "spec": {"hosts": [SERVICE], "http": http}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "bench-gateway", "namespace": "istio-system"},
            "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]}}),
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "bench-ingress", "namespace": "foo"},
            "spec": {"hosts": [GATEWAY_HOST], "gateways": ["istio-system/bench-gateway"], "http": gw_http}}),
    ];
    let mut yaml = String::new();
    for d in docs {
        yaml.push_str("---\n");
        yaml.push_str(&serde_json::to_string(&d).unwrap_or_default());
        yaml.push('\n');
    }
    yaml.push_str(&policies("foo", "app: httpbin"));
    yaml.push_str(&policies("istio-system", "istio: ingressgateway"));
    yaml
}

const GATEWAY_HOST: &str = "bench.example.com";

fn mesh(app_port: u16) -> Result<Resources, String> {
    let items =
        wasmesh_istio::load_str(&mesh_yaml(app_port), "bench-mesh.yaml").map_err(|e| format!("bench mesh: {e}"))?;
    Ok(Resources { items })
}

/// The bench mesh's WorkloadEntries: the sidecar's workload and the gateway's (what
/// `wasmeshctl envoy --workload` names).
fn workload_entries() -> String {
    let entry = |ns: &str, name: &str, labels: &[(&str, &str)]| {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry", "metadata": {"name": name, "namespace": ns},
               "spec": {"address": "127.0.0.1", "labels": labels}})
    };
    let mut yaml = String::new();
    for e in [
        entry("foo", "httpbin", &[("app", "httpbin"), ("version", "v1")]),
        entry("istio-system", "istio-ingressgateway", &[("istio", "ingressgateway"), ("app", "istio-ingressgateway")]),
    ] {
        yaml.push_str("---\n");
        yaml.push_str(&serde_json::to_string(&e).unwrap_or_default());
        yaml.push('\n');
    }
    yaml
}

/// The filter layouts `wasmeshctl envoy` can generate: `--layout one-pass` (one `wasmesh.chain`
/// filter) and `--layout per-filter` when its `--help` lists `--layout`; before that flag existed
/// it wrote one filter per phase, which is `per-filter` (`None`: no flag passed).
pub fn layouts() -> Result<Vec<(&'static str, Option<&'static str>)>, String> {
    let out = crate::oci::wasmeshctl(&["envoy", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("wasmeshctl envoy --help: {}{}", help, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(if help.contains("--layout") {
        vec![("one-pass", Some("one-pass")), ("per-filter", Some("per-filter"))]
    } else {
        vec![("per-filter", None)]
    })
}

/// `wasmeshctl envoy -f <bench mesh> --workload <ns/name> -o json <args> [--layout L]`: the
/// bootstrap exactly as the command line writes it.
/// `extra` is YAML added to the bench mesh.
fn wasmeshctl_envoy(
    app_port: u16,
    workload: &str,
    args: &[String],
    layout: Option<&str>,
    extra: &str,
) -> Result<Value, String> {
    let dir = crate::paths::TempDir::new("bench-mesh");
    let file = dir.path().join("bench-mesh.yaml");
    std::fs::write(&file, mesh_yaml(app_port) + &workload_entries() + extra)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let wasm_dir = crate::paths::wasm_dir().display().to_string();
    let file = file.display().to_string();
    let admin = crate::free_port().to_string();
    let mut all: Vec<&str> = vec![
        "envoy",
        "-f",
        &file,
        "--workload",
        workload,
        "--wasm-dir",
        &wasm_dir,
        "--admin-port",
        &admin,
        "-o",
        "json",
    ];
    all.extend(args.iter().map(String::as_str));
    if let Some(l) = layout {
        all.extend(["--layout", l]);
    }
    let out = crate::oci::wasmeshctl(&all);
    if !out.status.success() {
        return Err(format!("wasmeshctl {}: {}", all.join(" "), String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("wasmeshctl {}: output is not JSON: {e}", all.join(" ")))
}

/// The generated listener on `port`, taken out of the bootstrap.
fn take_listener(boot: &mut Value, port: u16) -> Result<Value, String> {
    let ls = boot
        .pointer_mut("/static_resources/listeners")
        .and_then(Value::as_array_mut)
        .ok_or("bootstrap without listeners")?;
    let i = ls
        .iter()
        .position(|l| l.pointer("/address/socket_address/port_value").and_then(Value::as_u64) == Some(u64::from(port)))
        .ok_or(format!("the generated bootstrap has no listener on port {port}"))?;
    Ok(ls.remove(i))
}

/// The phases of a listener's wasm HTTP filters in order: a `wasmesh.chain` filter's phases
/// (its configuration's `phases[].rootId`), else each filter's name.
fn phase_names(l: &Value) -> Vec<String> {
    let Some(fs) = super::hcm(l).and_then(|h| h.get("http_filters")).and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for f in fs.iter().filter(|f| super::is_wasm(f)) {
        let config = f
            .pointer("/typed_config/config/configuration/value")
            .and_then(Value::as_str)
            .and_then(|c| serde_json::from_str::<Value>(c).ok());
        let phases: Vec<String> = config
            .as_ref()
            .and_then(|c| c.get("phases"))
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p.get("rootId").and_then(Value::as_str)).map(short).collect())
            .unwrap_or_default();
        if phases.is_empty() {
            names.extend(f.get("name").and_then(Value::as_str).map(short));
        } else {
            names.extend(phases);
        }
    }
    names
}

fn short(n: &str) -> String {
    n.trim_start_matches("wasmesh.").to_string()
}

/// One layout's generated listener.
struct Generated {
    layout: &'static str,
    listener: Value,
    port: u16,
    /// The clusters of its bootstrap (the same names in every layout).
    clusters: Vec<Value>,
}

/// The chain scenario for one listener generated in each layout.
fn chain(
    name: &str,
    target: &str,
    generated: Vec<Generated>,
    native: Vec<Value>,
    native_routes: Option<Value>,
    plain_route: Option<Value>,
    request: &Variant,
) -> Result<Scenario, String> {
    let first = generated.first().ok_or(format!("{name}: no generated listener"))?;
    let like = |v: Variant| Variant {
        headers: request.headers.clone(),
        authority: request.authority.clone(),
        path: request.path.clone(),
        ..v
    };
    let mut native_names: Vec<&str> = native
        .iter()
        .filter_map(|f| f.get("name").and_then(Value::as_str))
        .map(|n| n.trim_start_matches("envoy.filters.http."))
        .collect();
    if native_routes.is_some() {
        native_names.push("route table");
    }
    let native_name = format!("native: {}", native_names.join(" + "));
    let mut variants = vec![
        like(derive("none", &first.listener, vec![], plain_route.clone())),
        like(derive(&native_name, &first.listener, native, native_routes.or(plain_route.clone()))),
    ];
    // The boundary alone: as many no-op filters as each layout has wasm HTTP filters.
    let mut counts: Vec<usize> = generated
        .iter()
        .map(|g| Variant { listener: Some((g.port, g.listener.clone())), ..Variant::new("") }.wasm_http_filters())
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for n in counts {
        let noop_name = if n == 1 { "no-op wasm filter".to_string() } else { format!("{n} no-op wasm filters") };
        variants.push(like(derive(&noop_name, &first.listener, noop_filters(n), plain_route.clone())));
    }
    for g in generated {
        let phases = phase_names(&g.listener);
        variants.push(like(Variant {
            listener: Some((g.port, g.listener)),
            clusters: g.clusters,
            ..Variant::new(&format!("wasmesh {}: {}", g.layout, phases.join(" + ")))
        }));
    }
    Ok(Scenario { name: name.into(), target: target.into(), variants, modules: vec!["wasmesh".into(), "noop".into()] })
}

/// The bootstrap's clusters.
fn clusters_of(boot: &Value) -> Vec<Value> {
    boot.pointer("/static_resources/clusters").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// The route of the plain variants of an outbound or gateway listener: everything to the bench
/// service's default cluster (the generated route reads the cluster the wasm router names).
fn default_route() -> Value {
    json!({"virtual_hosts": [{"name": "plain", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": format!("outbound|80||{SERVICE}.foo.svc.cluster.local"), "timeout": "0s"}}]}]})
}

fn native_routes() -> Value {
    let (_, routes, _) = header_routes("foo");
    json!({"virtual_hosts": [{"name": "native", "domains": ["*"], "routes": routes}]})
}

/// A sidecar for `foo/httpbin`: its inbound listener (stats + authn + authz) and its outbound
/// listener (stats + router), from `wasmeshctl envoy --role sidecar`, in each layout.
fn sidecar(app_port: u16) -> Result<Group, String> {
    let res = mesh(app_port)?;
    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.labels.insert("version".into(), "v1".into());
    let mut base = None;
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    for (layout, flag) in layouts()? {
        let (inbound_port, outbound_port) = (crate::free_port(), crate::free_port());
        let args: Vec<String> = [
            "--role",
            "sidecar",
            "--inbound-port",
            &inbound_port.to_string(),
            "--app-port",
            &app_port.to_string(),
            "--outbound-port",
            &outbound_port.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut boot = wasmeshctl_envoy(app_port, "foo/httpbin", &args, flag, "")?;
        let clusters = clusters_of(&boot);
        inbound.push(Generated {
            layout,
            listener: take_listener(&mut boot, inbound_port)?,
            port: inbound_port,
            clusters: clusters.clone(),
        });
        outbound.push(Generated {
            layout,
            listener: take_listener(&mut boot, outbound_port)?,
            port: outbound_port,
            clusters,
        });
        base.get_or_insert(boot);
    }

    // A mesh caller (productpage) with its peer metadata and a token.
    let mut caller = Workload::new("productpage-v1", "default");
    caller.labels.insert("app".into(), "productpage".into());
    caller.labels.insert("version".into(), "v1".into());
    let peer = wasmesh_controller::plugins::stats::core::LocalInfo::from_workload(&caller);
    let token = authn::bench_token("RS256");
    let inbound_request = Variant {
        headers: vec![
            ("authorization".into(), format!("Bearer {token}")),
            ("x-envoy-peer-metadata".into(), peer.header_value()),
            ("x-envoy-peer-metadata-id".into(), peer.node_id.clone()),
        ],
        authority: "httpbin.foo.svc.cluster.local:8000".into(),
        path: "/api/items".into(),
        ..Variant::new("request")
    };
    let mut native = vec![authn::native_jwt_authn(&wl, &res, &NativeJwks::Remote, true)];
    native.extend(crate::authz::istiod::http_filters(&res, &wl, &[]));
    let inbound_mtls = sidecar_inbound_mtls(app_port, &caller, native.clone(), &inbound_request)?;
    let inbound_chain = chain(
        "sidecar inbound",
        "≤ 135k instructions/request over no filter (2× native), aim ≤ 100k",
        inbound,
        native,
        None,
        None,
        &inbound_request,
    )?;
    let outbound_request = Variant {
        headers: vec![route_header()],
        authority: format!("{SERVICE}.foo.svc.cluster.local"),
        ..Variant::new("request")
    };
    let outbound_chain = chain(
        "sidecar outbound",
        "(no target in the issue)",
        outbound,
        vec![],
        Some(native_routes()),
        Some(default_route()),
        &outbound_request,
    )?;
    Ok(Group { name: "sidecar".into(), scenarios: vec![inbound_chain, outbound_chain, inbound_mtls], base })
}

/// The bench mesh's server port of `foo/httpbin` (the authority the inbound request names).
const HTTPBIN_PORT: u16 = 8000;

/// "sidecar inbound mTLS": the sidecar inbound chain as a mesh caller reaches it, over mutual
/// TLS. The bench mesh with a STRICT PeerAuthentication for `foo/httpbin` (the inbound listener
/// has only the mTLS chain) and certificates from the mesh CA (`wasmeshctl certs`' function) for
/// `foo/httpbin` and the caller; the listener as `wasmeshctl envoy --role sidecar --certs DIR`
/// writes it in each layout, the plain, native and no-op variants on the same TLS listener
/// ([`derive`] keeps its transport). The client is a front Envoy ([`super::Front`]) presenting
/// the caller's certificate, offering Istio's client ALPN, sending the plaintext scenario's
/// request.
fn sidecar_inbound_mtls(
    app_port: u16,
    caller: &Workload,
    native: Vec<Value>,
    request: &Variant,
) -> Result<Scenario, String> {
    use wasmesh_controller::certs::{self, CaOptions, CertPaths, WorkloadIdentity};
    use wasmesh_controller::plugins::mtls;
    let strict = r#"
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
"#;
    let files = std::sync::Arc::new(crate::paths::TempDir::new("bench-certs"));
    let yaml = mesh_yaml(app_port) + &workload_entries() + strict;
    let res =
        Resources { items: wasmesh_istio::load_str(&yaml, "bench-mesh.yaml").map_err(|e| format!("bench mesh: {e}"))? };
    let mut ids = certs::identities_in(&res, &caller.trust_domain);
    ids.push(WorkloadIdentity::of(caller));
    certs::run(files.path(), &ids, &CaOptions::default()).map_err(|e| format!("bench certificates: {e}"))?;
    let server =
        ids.iter().find(|id| id.namespace == "foo").ok_or("the bench mesh has no identity in foo")?.spiffe_uri();

    let mut generated = Vec::new();
    for (layout, flag) in layouts()? {
        let port = crate::free_port();
        let args: Vec<String> = [
            "--role",
            "sidecar",
            "--inbound-port",
            &port.to_string(),
            "--app-port",
            &app_port.to_string(),
            "--certs",
            &files.path().display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut boot = wasmeshctl_envoy(app_port, "foo/httpbin", &args, flag, strict)?;
        let clusters = clusters_of(&boot);
        let listener = take_listener(&mut boot, port)?;
        let chains = listener.get("filter_chains").and_then(Value::as_array).map_or(0, Vec::len);
        if chains != 1 || listener.pointer("/filter_chains/0/transport_socket").is_none() {
            return Err(format!("sidecar inbound mTLS: expected one mTLS filter chain, got {listener}"));
        }
        generated.push(Generated { layout, listener, port, clusters });
    }
    let mut s = chain(
        "sidecar inbound mTLS",
        "the sidecar inbound chain over mutual TLS: what a mesh caller's request costs",
        generated,
        native,
        None,
        None,
        request,
    )?;
    let own = CertPaths::for_workload(files.path(), &caller.namespace, &caller.service_account);
    let sni = format!("outbound_.{HTTPBIN_PORT}_._.httpbin.foo.svc.cluster.local");
    let socket = mtls::upstream_transport_socket(&own, &[server], &sni);
    for v in &mut s.variants {
        v.front =
            Some(super::Front { port: crate::free_port(), transport_socket: socket.clone(), files: files.clone() });
    }
    Ok(s)
}

/// An ingress gateway (`istio-system/istio-ingressgateway`) serving Gateway port 80: stats +
/// authn + authz + router, from `wasmeshctl envoy --role gateway`, in each layout.
fn gateway(app_port: u16) -> Result<Group, String> {
    let res = mesh(app_port)?;
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.labels.insert("istio".into(), "ingressgateway".into());
    wl.labels.insert("app".into(), "istio-ingressgateway".into());
    wl.mode = ProxyMode::Gateway;
    let mut base = None;
    let mut generated = Vec::new();
    for (layout, flag) in layouts()? {
        let port = crate::free_port();
        let args: Vec<String> = vec!["--role".into(), "gateway".into(), "--port".into(), format!("80={port}")];
        let mut boot = wasmeshctl_envoy(app_port, "istio-system/istio-ingressgateway", &args, flag, "")?;
        let clusters = clusters_of(&boot);
        generated.push(Generated { layout, listener: take_listener(&mut boot, port)?, port, clusters });
        base.get_or_insert(boot);
    }
    let token = authn::bench_token("RS256");
    let request = Variant {
        headers: vec![("authorization".into(), format!("Bearer {token}")), route_header()],
        authority: GATEWAY_HOST.into(),
        path: "/api/items".into(),
        ..Variant::new("request")
    };
    let mut native = vec![authn::native_jwt_authn(&wl, &res, &NativeJwks::Remote, true)];
    native.extend(crate::authz::istiod::http_filters(&res, &wl, &[]));
    let gw = chain(
        "gateway",
        "≤ 135k instructions/request over no filter, aim ≤ 100k",
        generated,
        native,
        Some(native_routes()),
        Some(default_route()),
        &request,
    )?;
    Ok(Group { name: "gateway".into(), scenarios: vec![gw], base })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(filters: Vec<Value>) -> Value {
        json!({"filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
            "typed_config": {"http_filters": filters}}]}]})
    }

    fn wasm(name: &str, config: &Value) -> Value {
        json!({"name": name, "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"configuration": {"value": config.to_string()}}}})
    }

    #[test]
    fn phases_of_a_one_pass_chain_and_of_per_filter_filters() {
        let chain = json!({"phases": [{"rootId": "wasmesh.stats", "configuration": {}}, {"rootId": "wasmesh.authn"}, {"rootId": "wasmesh.authz"}]});
        let one_pass = listener(vec![wasm("wasmesh.chain", &chain), json!({"name": "envoy.filters.http.router"})]);
        assert_eq!(phase_names(&one_pass), ["stats", "authn", "authz"]);
        let per_filter = listener(vec![wasm("wasmesh.stats", &json!({"x": 1})), wasm("wasmesh.router", &json!({}))]);
        assert_eq!(phase_names(&per_filter), ["stats", "router"]);
    }
}
