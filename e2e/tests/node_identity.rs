//! One plugin configuration for many workloads (issue 8 point 2) and one module for every filter
//! (`wasmesh.wasm`), in real Envoy.
//!
//! The proxies' bootstraps carry the node id and metadata Istio's injector and pilot-agent write;
//! the filter configurations carry no `workload`, exactly what one WasmPlugin hands every proxy
//! it selects. Needs the filters built (`make wasm`), Envoy and `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::time::Duration;
use wasmesh_e2e::authz::{JwtIssuer, ISSUER};
use wasmesh_e2e::envoy::combine_bootstraps;
use wasmesh_e2e::http::{request, Response};
use wasmesh_e2e::node_identity::{
    bootstrap, cluster, http_listener, resources_json, route_by_cluster_header, route_to, rss_kib, IstioNode, Plugin,
};
use wasmesh_e2e::paths::wasm;
use wasmesh_e2e::{free_port, App, AppHandle, Envoy};

/// Only `version: v1` of reviews: no `/private` for anyone.
const V1_ONLY_POLICY: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-private-on-v1, namespace: default}
spec:
  selector: {matchLabels: {app: reviews, version: v1}}
  action: DENY
  rules:
  - to: [{operation: {paths: ['/private*']}}]
";

fn reviews(version: &str) -> IstioNode {
    IstioNode::sidecar(
        &format!("reviews-{version}-6f8b9c7d4-x2k9p"),
        "default",
        &format!("reviews-{version}"),
        &[("app", "reviews"), ("version", version)],
        "bookinfo-reviews",
    )
}

fn send(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all = vec![("host", host)];
    all.extend_from_slice(headers);
    request(port, "GET", path, &all, b"").unwrap_or_else(|e| panic!("GET {path} to {port}: {e}"))
}

/// A sidecar's inbound listener in front of `app_port`: authz and stats, one configuration each,
/// no workload and no direction in either.
fn inbound_sidecar(node: &IstioNode, module: &str, vm: &str, app_port: u16) -> (Value, u16) {
    let port = free_port();
    let authz = json!({"resources": resources_json(V1_ONLY_POLICY)});
    let stats = json!({});
    let (authz_id, stats_id) = ("wasmesh.authz", "wasmesh.stats");
    let module_of = |own: &str| if module == "wasmesh" { wasm("wasmesh") } else { wasm(own) };
    let vm_of = |own: &str| if vm.is_empty() { format!("wasmesh.{own}") } else { vm.to_string() };
    let plugins = [
        Plugin::new(authz_id, &vm_of("authz"), &module_of("authz"), authz),
        Plugin::new(stats_id, &vm_of("stats"), &module_of("stats"), stats),
    ];
    let listener = http_listener("inbound_9080", port, Some("INBOUND"), &plugins, route_to("inbound|9080||"));
    let mut inbound = cluster("inbound|9080||", app_port);
    // What istiod writes on a sidecar's inbound cluster: the services the workload backs.
    inbound["metadata"] = json!({"filter_metadata": {"istio": {"services": [
        {"host": "reviews.default.svc.cluster.local", "name": "reviews", "namespace": "default"}
    ]}}});
    let b = bootstrap(node.node(), free_port(), vec![listener], vec![inbound]);
    (b, port)
}

#[test]
fn one_configuration_two_proxies_two_decisions() {
    let app = App::new("reviews", "v").start();
    let (b1, p1) = inbound_sidecar(&reviews("v1"), "per-filter", "", app.port);
    let (b2, p2) = inbound_sidecar(&reviews("v2"), "per-filter", "", app.port);
    // The same filter configuration in both bootstraps, byte for byte.
    let configs = |b: &Value| -> Vec<String> {
        b.pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters")
            .and_then(Value::as_array)
            .unwrap()
            .iter()
            .filter_map(|f| {
                f.pointer("/typed_config/config/configuration/value").and_then(Value::as_str).map(str::to_string)
            })
            .collect()
    };
    assert_eq!(configs(&b1), configs(&b2));
    assert!(!configs(&b1).iter().any(|c| c.contains("workload")), "no workload in the configuration");

    let v1 = Envoy::start("reviews-v1", &b1);
    let v2 = Envoy::start("reviews-v2", &b2);
    let host = "reviews.default.svc.cluster.local:9080";

    let r = send(p1, host, "/private/x", &[]);
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"), "v1 is selected: denied");
    assert_eq!(send(p1, host, "/public", &[]).status, 200, "v1: other paths pass");
    assert_eq!(send(p2, host, "/private/x", &[]).status, 200, "v2 is not selected: allowed");
    assert_eq!(send(p2, host, "/public", &[]).status, 200);

    // The identity each filter took from its node, in its own words.
    for (envoy, name) in [(&v1, "reviews-v1"), (&v2, "reviews-v2")] {
        let log = envoy.log();
        assert!(
            log.contains(&format!("wasmesh authz: workload default/{name} (Sidecar")),
            "{}: authz names the node's workload:\n{}",
            envoy.name,
            envoy.failure_summary()
        );
    }
    assert!(v1.log().contains("policies: AuthorizationPolicy default/deny-private-on-v1"), "{}", v1.failure_summary());
    assert!(v2.log().contains("policies: none"), "{}", v2.failure_summary());

    // Stats: no workload, no direction: the inbound listener (INBOUND) reports as destination,
    // with the workload, app, version, principal and cluster of the node.
    for (envoy, version) in [(&v1, "v1"), (&v2, "v2")] {
        let line = wait_for_stat(envoy, "istio_requests_total", "response_code=.=200");
        for expected in [
            "reporter=.=destination".to_string(),
            format!("destination_workload=.=reviews-{version};"),
            "destination_workload_namespace=.=default;".to_string(),
            "destination_app=.=reviews;".to_string(),
            format!("destination_version=.={version};"),
            // From the inbound cluster's Istio metadata (no `services` in the configuration).
            "destination_service=.=reviews.default.svc.cluster.local;".to_string(),
            "destination_cluster=.=Kubernetes;".to_string(),
        ] {
            assert!(line.contains(&expected), "{}: {expected} in {line}", envoy.name);
        }
    }
}

/// The first `/stats` line of `metric` containing `needle` (the filter hands counters to Envoy
/// asynchronously).
fn wait_for_stat(envoy: &Envoy, metric: &str, needle: &str) -> String {
    for _ in 0..50 {
        let text = envoy.admin("/stats");
        if let Some(l) = text.lines().find(|l| l.contains(metric) && l.contains(needle)) {
            return l.to_string();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{}: no {metric} line with {needle}:\n{}", envoy.name, envoy.admin("/stats?filter=istio"));
}

#[test]
fn a_node_without_namespace_fails_closed_for_security_and_open_for_telemetry() {
    let app = App::new("reviews", "v").start();
    let mut node = reviews("v1");
    node.omit_namespace = true;

    // authz (fail closed): refuses its configuration, so Envoy does not start the listener.
    let (b, _) = inbound_sidecar(&node, "per-filter", "", app.port);
    let err = match Envoy::start_with("no-namespace", &b, 1) {
        Ok(_) => panic!("an authz filter without the node's namespace must not configure"),
        Err(e) => e,
    };
    assert!(
        err.contains("wasmesh authz: configuration rejected") && err.contains("node metadata has no NAMESPACE"),
        "{err}"
    );

    // stats alone (fail open): configures and reports `unknown` for the namespace.
    let port = free_port();
    let stats = Plugin::new("wasmesh.stats", "wasmesh.stats", &wasm("stats"), json!({}));
    let listener = http_listener("inbound_9080", port, Some("INBOUND"), &[stats], route_to("inbound|9080||"));
    let b = bootstrap(node.node(), free_port(), vec![listener], vec![cluster("inbound|9080||", app.port)]);
    let envoy = Envoy::start("stats-no-namespace", &b);
    assert_eq!(send(port, "reviews:9080", "/", &[]).status, 200);
    let line = wait_for_stat(&envoy, "istio_requests_total", "reporter=.=destination");
    assert!(line.contains("destination_workload_namespace=.=unknown;"), "{line}");
    assert!(line.contains("destination_workload=.=reviews-v1;"), "{line}");
    assert!(
        envoy.log().contains("reporting \"unknown\" for what the Envoy node lacks: node metadata has no NAMESPACE"),
        "{}",
        envoy.failure_summary()
    );
}

/// The resources for the one-module chain: a service, a route by header, a JWT issuer, a policy.
fn chain_resources(issuer: &JwtIssuer) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let router = resources_json(
        "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: ratings, subset: v2}}]
  - route: [{destination: {host: ratings, subset: v1}}]
",
    );
    let authn = resources_json(&issuer.request_authentication("default"));
    let authz = resources_json(&format!(
        "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ratings-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{requestPrincipals: ['{ISSUER}/*']}}}}]
"
    ));
    (router, authn, authz)
}

/// authn → authz → router → stats, every plugin given `module` under its own root id.
fn chain(
    node: &IstioNode,
    plugins: &dyn Fn(&str) -> (std::path::PathBuf, String),
    issuer: &JwtIssuer,
    v1: u16,
    v2: u16,
) -> (Value, u16) {
    let (router, authn, authz) = chain_resources(issuer);
    let plugin = |root: &str, own: &str, config: Value| {
        let (module, vm) = plugins(own);
        Plugin::new(root, &vm, &module, config)
    };
    let list = [
        plugin("wasmesh.authn", "authn", json!({"resources": authn})),
        plugin("wasmesh.authz", "authz", json!({"resources": authz})),
        plugin("wasmesh.router", "router", json!({"resources": router})),
        plugin("wasmesh.stats", "stats", json!({})),
    ];
    let port = free_port();
    let listener = http_listener("outbound_9080", port, Some("OUTBOUND"), &list, route_by_cluster_header());
    let clusters = vec![
        cluster("outbound|9080|v1|ratings.default.svc.cluster.local", v1),
        cluster("outbound|9080|v2|ratings.default.svc.cluster.local", v2),
    ];
    (bootstrap(node.node(), free_port(), vec![listener], clusters), port)
}

fn one_module(_own: &str) -> (std::path::PathBuf, String) {
    (wasm("wasmesh"), "wasmesh".to_string())
}

fn per_filter_modules(own: &str) -> (std::path::PathBuf, String) {
    (wasm(own), format!("wasmesh.{own}"))
}

/// Every HTTP filter in one chain and the TCP roles on two inbound TCP listeners, all from
/// `wasmesh.wasm` under one vm_id in one Envoy of one node (reviews-v1), as one sidecar's outbound
/// and inbound listeners would be: the module is compiled once for both.
#[test]
fn one_module_serves_every_filter_in_one_chain_and_the_tcp_roles_in_one_vm() {
    let issuer = JwtIssuer::new().unwrap();
    let v1 = App::new("ratings", "v1").start();
    let v2 = App::new("ratings", "v2").start();
    let (b, port) = chain(&reviews("v1"), &one_module, &issuer, v1.port, v2.port);
    // Every plugin: the same module file, the same vm_id.
    let filters =
        b.pointer("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters").unwrap();
    let wasm_filters: Vec<&Value> =
        filters.as_array().unwrap().iter().filter(|f| f.pointer("/typed_config/config").is_some()).collect();
    assert_eq!(wasm_filters.len(), 4);
    for f in &wasm_filters {
        assert_eq!(f.pointer("/typed_config/config/vm_config/vm_id"), Some(&json!("wasmesh")));
        assert!(f
            .pointer("/typed_config/config/vm_config/code/local/filename")
            .and_then(Value::as_str)
            .unwrap()
            .ends_with("/wasmesh.wasm"));
    }
    let (tcp_b, app, denied, allowed) = tcp_roles();
    let envoy = Envoy::start("one-module", &combine_bootstraps(&[b, tcp_b]));
    let host = "ratings:9080";
    let token = issuer.token(&json!({"iss": ISSUER, "sub": "alice"})).unwrap();
    let bearer = format!("Bearer {token}");

    // authn: a bad token is 401 (Envoy jwt_authn's answer).
    let r = send(port, host, "/ratings/0", &[("authorization", "Bearer not.a.jwt")]);
    assert_eq!(r.status, 401, "authn refuses a malformed token: {}", r.text());
    // authz: no token, no request principal: 403.
    let r = send(port, host, "/ratings/0", &[]);
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"));
    // router: valid token, then the VirtualService decides the subset.
    let served = (v1.served(), v2.served());
    assert_eq!(send(port, host, "/ratings/0", &[("authorization", &bearer)]).status, 200);
    assert_eq!(send(port, host, "/ratings/0", &[("authorization", &bearer), ("end-user", "jason")]).status, 200);
    assert_eq!((v1.served() - served.0, v2.served() - served.1), (1, 1), "one request to each subset");
    // router: an unknown host is Istio's 404.
    assert_eq!(send(port, "unknown.example", "/", &[("authorization", &bearer)]).status, 404);
    // stats: outbound listener, no direction configured: source reporter, node's workload.
    let line = wait_for_stat(&envoy, "istio_requests_total", "response_code=.=200");
    for expected in [
        "reporter=.=source",
        "source_workload=.=reviews-v1;",
        "source_app=.=reviews;",
        "destination_service=.=ratings.default.svc.cluster.local;",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
    // One VM per thread for all four plugins: the module is loaded once per thread, and each
    // filter said where its workload came from.
    let log = envoy.log();
    for filter in ["router", "authz", "authn"] {
        assert!(
            log.contains(&format!("wasmesh {filter}: workload default/reviews-v1")),
            "{filter}:\n{}",
            envoy.failure_summary()
        );
    }
    assert!(
        log.contains("wasmesh stats: Http Outbound listener of default/reviews-v1, reporter source"),
        "{}",
        envoy.failure_summary()
    );

    // The TCP roles (network filters `wasmesh.authz.tcp`, `wasmesh.stats.tcp`,
    // `wasmesh.authz.peer_address`), one configuration per role on two inbound TCP listeners.
    assert_eq!(send(allowed, "reviews:9080", "/", &[]).status, 200, "{}", envoy.failure_summary());
    let before = app.served();
    let r = request(denied, "GET", "/", &[("host", "reviews:9080")], b"");
    assert!(r.map(|r| r.status != 200).unwrap_or(true), "the DENY policy on port {denied} closes the connection");
    assert_eq!(app.served(), before, "no byte of a denied connection reaches the app");
    let line = wait_for_stat(&envoy, "istio_tcp_connections_opened_total", "reporter=.=destination");
    assert!(line.contains("destination_workload=.=reviews-v1;"), "{line}");
    assert!(
        envoy.log().contains(&format!("policies: AuthorizationPolicy default/no-tcp-{denied} (DENY)")),
        "{}",
        envoy.failure_summary()
    );
}

#[test]
fn unknown_root_id_is_refused_by_the_one_module() {
    let app = App::new("reviews", "v").start();
    let port = free_port();
    let p = Plugin::new("wasmesh.nothing", "wasmesh", &wasm("wasmesh"), json!({}));
    let listener = http_listener("l", port, None, &[p], route_to("app"));
    let b = bootstrap(reviews("v1").node(), free_port(), vec![listener], vec![cluster("app", app.port)]);
    let err = match Envoy::start_with("unknown-root-id", &b, 1) {
        Ok(_) => panic!("a root id naming no filter must not configure"),
        Err(e) => e,
    };
    assert!(err.contains("wasmesh: root_id \"wasmesh.nothing\" names no wasmesh filter"), "{err}");
}

/// Envoy's RSS after warm-up with the four filters from four modules (four VMs per thread) and
/// from `wasmesh.wasm` under one vm_id (one VM per thread), `--concurrency 1`.
#[test]
fn one_module_one_vm_costs_less_memory_than_four() {
    let issuer = JwtIssuer::new().unwrap();
    let v1 = App::new("ratings", "v1").start();
    let v2 = App::new("ratings", "v2").start();
    let token = issuer.token(&json!({"iss": ISSUER, "sub": "alice"})).unwrap();
    let bearer = format!("Bearer {token}");
    let mut rss = Vec::new();
    type Modules = dyn Fn(&str) -> (std::path::PathBuf, String);
    let layouts: [(&str, &Modules); 2] =
        [("4 per-filter modules, 4 vm_ids", &per_filter_modules), ("wasmesh.wasm, 1 vm_id", &one_module)];
    for (label, modules) in layouts {
        let (b, port) = chain(&reviews("v1"), modules, &issuer, v1.port, v2.port);
        let envoy = Envoy::start_with(label, &b, 1).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..300 {
            let user = if i % 2 == 0 { "jason" } else { "other" };
            assert_eq!(
                send(port, "ratings:9080", "/ratings/0", &[("authorization", &bearer), ("end-user", user)]).status,
                200
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        let kib = rss_kib(envoy.pid()).unwrap();
        eprintln!("RSS after 300 requests, --concurrency 1, {label}: {:.1} MiB", kib as f64 / 1024.0);
        rss.push(kib);
    }
    assert!(rss[1] + 10 * 1024 < rss[0], "one VM per thread should save well over 10 MiB: {rss:?} KiB");
}

/// A gateway (`router~` node) with one router configuration on two listeners and no
/// `gatewayPort`: each listener serves the Gateway servers of the port it listens on.
#[test]
fn gateway_router_takes_the_server_port_from_the_listener() {
    let v1 = App::new("ratings", "v1").start();
    let (public, internal) = (free_port(), free_port());
    let resources = resources_json(&format!(
        "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: ingress, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {public}, name: http, protocol: HTTP}}
    hosts: ['*/ratings.example.com']
  - port: {{number: {internal}, name: http-internal, protocol: HTTP}}
    hosts: ['*/internal.example.com']
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.example.com, internal.example.com]
  gateways: [istio-system/ingress]
  http:
  - route: [{{destination: {{host: ratings.default.svc.cluster.local, subset: v1, port: {{number: 9080}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
"
    ));
    let mut node = IstioNode::sidecar(
        "istio-ingressgateway-5c8d7b9f6-q7w2x",
        "istio-system",
        "istio-ingressgateway",
        &[("app", "istio-ingressgateway"), ("istio", "ingressgateway")],
        "istio-ingressgateway-service-account",
    );
    node.kind = "router".into();
    let plugins = [
        Plugin::new("wasmesh.router", "wasmesh", &wasm("wasmesh"), json!({"resources": resources})),
        Plugin::new("wasmesh.stats", "wasmesh", &wasm("wasmesh"), json!({})),
    ];
    // Istio's gateway listeners are OUTBOUND; the reporter comes from the node (a gateway).
    let listeners = vec![
        http_listener("gateway_public", public, Some("OUTBOUND"), &plugins, route_by_cluster_header()),
        http_listener("gateway_internal", internal, Some("OUTBOUND"), &plugins, route_by_cluster_header()),
    ];
    let b = bootstrap(
        node.node(),
        free_port(),
        listeners,
        vec![cluster("outbound|9080|v1|ratings.default.svc.cluster.local", v1.port)],
    );
    let envoy = Envoy::start("gateway", &b);

    assert_eq!(send(public, "ratings.example.com", "/ratings/0", &[]).status, 200, "{}", envoy.failure_summary());
    assert_eq!(
        send(public, "internal.example.com", "/ratings/0", &[]).status,
        404,
        "not a host of the server on this port"
    );
    assert_eq!(send(internal, "internal.example.com", "/ratings/0", &[]).status, 200);
    assert_eq!(
        send(internal, "ratings.example.com", "/ratings/0", &[]).status,
        404,
        "not a host of the server on this port"
    );
    assert_eq!(v1.served(), 2);
    let log = envoy.log();
    for port in [public, internal] {
        assert!(
            log.contains(&format!("wasmesh router: gateway port {port}: configured")),
            "{}",
            envoy.failure_summary()
        );
    }
    assert!(
        log.contains("wasmesh router: workload istio-system/istio-ingressgateway (Gateway"),
        "{}",
        envoy.failure_summary()
    );
    let line = wait_for_stat(&envoy, "istio_requests_total", "response_code=.=200");
    for expected in [
        "reporter=.=source;",
        "source_workload=.=istio-ingressgateway;",
        "source_workload_namespace=.=istio-system;",
        "source_app=.=istio-ingressgateway;",
    ] {
        assert!(line.contains(expected), "{expected} in {line}");
    }
}

/// The TCP roles from `wasmesh.wasm` (network filters `wasmesh.authz.tcp`, `wasmesh.stats.tcp`,
/// `wasmesh.authz.peer_address`), one configuration per role on two inbound TCP listeners of
/// reviews-v1 in front of its app: (bootstrap, app, port the policy denies, port it allows).
fn tcp_roles() -> (Value, AppHandle, u16, u16) {
    let app = App::new("reviews", "v1").start();
    let (denied, allowed) = (free_port(), free_port());
    let policy = resources_json(&format!(
        "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-tcp-{denied}, namespace: default}}
spec:
  selector: {{matchLabels: {{version: v1}}}}
  action: DENY
  rules:
  - to: [{{operation: {{ports: ['{denied}']}}}}]
"
    ));
    let module = wasm("wasmesh");
    let plugins = [
        Plugin::new("wasmesh.authz.peer_address", "wasmesh", &module, json!({"role": "peerAddress"})),
        Plugin::new("wasmesh.stats.tcp", "wasmesh", &module, json!({"protocol": "tcp"})),
        Plugin::new("wasmesh.authz.tcp", "wasmesh", &module, json!({"stage": "tcp", "resources": policy})),
    ];
    let listeners = vec![
        wasmesh_e2e::node_identity::tcp_listener("inbound_a", denied, Some("INBOUND"), &plugins, "inbound|9080||"),
        wasmesh_e2e::node_identity::tcp_listener("inbound_b", allowed, Some("INBOUND"), &plugins, "inbound|9080||"),
    ];
    let b = bootstrap(reviews("v1").node(), free_port(), listeners, vec![cluster("inbound|9080||", app.port)]);
    (b, app, denied, allowed)
}
