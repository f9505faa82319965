//! The router filter in real Envoy: VirtualService matching, subsets, weights, gateways, 404s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use wasmesh_e2e::http::get;
use wasmesh_e2e::{bookinfo, paths, App, Envoy, Mesh};

fn bookinfo_yaml() -> String {
    let dir = paths::repo_root().join("examples/bookinfo");
    let mut out = String::new();
    for f in ["services.yaml", "workloads.yaml", "destination-rules.yaml", "gateway.yaml", "virtual-services.yaml"] {
        out.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        out.push_str("\n---\n");
    }
    out
}

/// The bookinfo mesh: gateway → productpage → details, reviews (v1/v2/v3) → ratings.
fn bookinfo() -> Mesh {
    bookinfo::workloads(Mesh::builder().yaml(&bookinfo_yaml()).gateway("istio-system/istio-ingressgateway", &[80]))
        .start()
}

fn reviews_version(page: &serde_json::Value) -> String {
    let calls = page["calls"].as_array().expect("calls");
    let reviews = calls.iter().find(|c| c["service"] == "reviews").expect("reviews call");
    assert_eq!(reviews["status"], 200, "{page}");
    reviews["body"]["version"].as_str().unwrap_or("?").to_string()
}

#[test]
fn bookinfo_request_routing_through_the_gateway() {
    let mesh = bookinfo();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);

    // jason → reviews v2 (which calls ratings), everyone else → v3.
    for _ in 0..5 {
        let r = get(gw, "bookinfo.example.com", "/productpage", &[("end-user", "jason")]);
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        assert_eq!(page["service"], "productpage");
        assert_eq!(reviews_version(&page), "v2", "{page}");
        let reviews = page["calls"].as_array().unwrap().iter().find(|c| c["service"] == "reviews").unwrap().clone();
        assert_eq!(reviews["body"]["calls"][0]["body"]["service"], "ratings", "v2 calls ratings: {reviews}");
        assert_eq!(reviews["body"]["headers"]["end-user"], "jason", "end-user is forwarded");
        let details = page["calls"].as_array().unwrap().iter().find(|c| c["service"] == "details").unwrap().clone();
        assert_eq!(details["body"]["version"], "v1", "details has no VirtualService: default route");
    }
    for user in ["", "mary"] {
        let headers: Vec<(&str, &str)> = if user.is_empty() { vec![] } else { vec![("end-user", user)] };
        let r = get(gw, "bookinfo.example.com", "/productpage", &headers);
        assert_eq!(reviews_version(&r.json()), "v3", "user {user:?}");
    }

    // Only the gateway VirtualService's paths are exposed; others are 404 at the gateway.
    assert_eq!(get(gw, "anything", "/api/v1/products/1", &[]).status, 200);
    assert_eq!(get(gw, "anything", "/productpage/x", &[]).status, 404, "exact match only");
    assert_eq!(get(gw, "anything", "/admin", &[]).status, 404);
}

#[test]
fn a_client_cannot_steer_with_the_cluster_header() {
    let mesh = bookinfo();
    let out = mesh.outbound_port("default/productpage-v1");
    let forged = "outbound|9080|v1|reviews.default.svc.cluster.local";
    for _ in 0..5 {
        let r = get(out, "reviews:9080", "/reviews/0", &[("end-user", "jason"), ("x-wasmesh-cluster", forged)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["version"], "v2", "the forged header was replaced");
        assert!(
            r.json()["headers"].get("x-wasmesh-cluster").is_none(),
            "the steering header never reaches the app: {}",
            r.json()["headers"]
        );
    }
    // An unknown host from a sidecar is a 404, as Istio answers for a route it has not got.
    assert_eq!(get(out, "nope.example.com", "/", &[]).status, 404);
}

#[test]
fn httpbin_gateway_exposes_only_status_and_delay() {
    let yaml = std::fs::read_to_string(paths::repo_root().join("examples/httpbin/httpbin.yaml")).unwrap();
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .gateway("istio-system/istio-ingressgateway", &[80])
        .sidecar("default/httpbin-v1", App::new("httpbin", "v1"))
        .start();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let r = get(gw, "httpbin.example.com", "/status/200", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["service"], "httpbin");
    assert_eq!(get(gw, "httpbin.example.com", "/status/418", &[]).status, 418);
    assert_eq!(get(gw, "httpbin.example.com", "/delay/0.1", &[]).status, 200);
    assert_eq!(get(gw, "httpbin.example.com", "/headers", &[]).status, 404);
    assert_eq!(get(gw, "other.example.com", "/status/200", &[]).status, 404, "host not on the Gateway");
    assert_eq!(mesh.app("default/httpbin-v1").served(), 3);
}

const SPLIT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}
"#;

#[test]
fn weighted_split_90_10_within_a_binomial_bound() {
    let dir = paths::repo_root().join("examples/bookinfo");
    let base = ["services.yaml", "workloads.yaml", "destination-rules.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let mesh = Mesh::builder()
        .yaml(&base)
        .yaml(SPLIT)
        .client("default/sleep")
        .sidecar("default/reviews-v1", App::new("reviews", "v1"))
        .sidecar("default/reviews-v2", App::new("reviews", "v2"))
        .start();
    let out = mesh.outbound_port("default/sleep");
    let n = 2000u32;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..n {
        let r = get(out, "reviews.default.svc.cluster.local:9080", "/", &[]);
        assert_eq!(r.status, 200);
        *counts.entry(r.header("x-app").unwrap_or("?").to_string()).or_default() += 1;
    }
    let v2 = counts.get("reviews-v2").copied().unwrap_or(0);
    // Binomial(n=2000, p=0.1): mean 200, sd √(2000·0.1·0.9) ≈ 13.4; 99.9 % two-sided: ±3.29 sd.
    let (mean, sd) = (200.0, (2000.0f64 * 0.1 * 0.9).sqrt());
    let bound = 3.29 * sd;
    assert!((v2 as f64 - mean).abs() <= bound, "v2 got {v2} of {n} (expected {mean} ± {bound:.0}): {counts:?}");
    assert_eq!(counts.values().sum::<u32>(), n, "{counts:?}");
    assert_eq!(mesh.app("default/reviews-v1").served() + mesh.app("default/reviews-v2").served(), u64::from(n));
}

/// Istio's "Traffic shifting" task, its three steps with the task's own YAML
/// (samples/bookinfo/networking): `virtual-service-all-v1.yaml` (every request to reviews v1),
/// `virtual-service-reviews-50-v3.yaml` (half to v3), `virtual-service-reviews-v3.yaml` (all to v3).
/// The task watches the stars on the product page; here a sidecar client asks reviews itself.
const ALL_V1: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination:
        host: ratings
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
"#;

const REVIEWS_50_V3: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"#;

const REVIEWS_V3: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
"#;

/// Each step as the task applies it: the first file, then the reviews VirtualService replaced.
#[test]
fn istio_traffic_shifting_task() {
    let dir = paths::repo_root().join("examples/bookinfo");
    let base = ["services.yaml", "workloads.yaml", "destination-rules.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let sleep = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: sleep, namespace: default}\nspec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}\n";
    let others = ALL_V1.split("\n---\n").filter(|d| !d.contains("name: reviews")).collect::<Vec<_>>().join("\n---\n");
    for (step, vs, n) in [
        ("all-v1", ALL_V1.to_string(), 100u32),
        ("reviews-50-v3", format!("{others}\n---\n{REVIEWS_50_V3}"), 1000),
        ("reviews-v3", format!("{others}\n---\n{REVIEWS_V3}"), 100),
    ] {
        let mesh = Mesh::builder()
            .yaml(&base)
            .yaml(sleep)
            .yaml(&vs)
            .client("default/sleep")
            .sidecar("default/reviews-v1", App::new("reviews", "v1"))
            .sidecar("default/reviews-v3", App::new("reviews", "v3"))
            .start();
        let out = mesh.outbound_port("default/sleep");
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..n {
            let r = get(out, "reviews:9080", "/reviews/0", &[]);
            assert_eq!(r.status, 200, "{step}");
            *counts.entry(r.header("x-app").unwrap_or("?").to_string()).or_default() += 1;
        }
        let v3 = counts.get("reviews-v3").copied().unwrap_or(0);
        match step {
            "all-v1" => assert_eq!(counts.get("reviews-v1"), Some(&n), "{step}: {counts:?}"),
            "reviews-v3" => assert_eq!(v3, n, "{step}: {counts:?}"),
            _ => {
                // Binomial(1000, 0.5): sd √250 ≈ 15.8; 99.9 % two-sided: ±3.29 sd.
                let bound = 3.29 * (f64::from(n) * 0.25).sqrt();
                assert!(
                    (f64::from(v3) - 500.0).abs() <= bound,
                    "{step}: v3 got {v3} of {n} (500 ± {bound:.0}): {counts:?}"
                );
                assert_eq!(counts.get("reviews-v1").copied().unwrap_or(0) + v3, n, "{step}: {counts:?}");
            }
        }
    }
}

const MATCHES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{number: 80, name: http}, {number: 8080, name: http-alt}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-a, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 19201, http-alt: 19202}, labels: {app: echo, version: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-b, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 19203, http-alt: 19204}, labels: {app: echo, version: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {regex: '/items/[0-9]+'}, method: {exact: PUT}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{queryParams: {canary: {exact: "yes"}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{uri: {prefix: /CaseLess}, ignoreUriCase: true}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-debug: {}}, withoutHeaders: {x-skip: {exact: "1"}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{authority: {regex: 'echo\.default(:.*)?'}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{port: 8080}]
    route: [{destination: {host: echo, subset: b, port: {number: 8080}}}]
  - route: [{destination: {host: echo, subset: a}}]
"#;

#[test]
fn every_match_field_in_real_envoy() {
    let mesh = Mesh::builder()
        .yaml(MATCHES)
        .client("default/sleep")
        .sidecar("default/echo-a", App::new("echo", "a"))
        .sidecar("default/echo-b", App::new("echo", "b"))
        .start();
    let out = mesh.outbound_port("default/sleep");
    let version = |method: &str, host: &str, path: &str, headers: &[(&str, &str)]| -> String {
        let mut all = vec![("host", host)];
        all.extend_from_slice(headers);
        let r = wasmesh_e2e::request(out, method, path, &all, b"").unwrap();
        assert_eq!(r.status, 200, "{method} {host}{path} {headers:?}: {}", r.text());
        r.json()["version"].as_str().unwrap_or("?").to_string()
    };
    assert_eq!(version("PUT", "echo", "/items/42", &[]), "b", "uri regex AND method");
    assert_eq!(version("GET", "echo", "/items/42", &[]), "a", "method must match too");
    assert_eq!(version("PUT", "echo", "/items/42x", &[]), "a", "regex is a full match");
    assert_eq!(version("GET", "echo", "/x?a=1&canary=yes", &[]), "b", "queryParams");
    assert_eq!(version("GET", "echo", "/x?canary=no", &[]), "a");
    assert_eq!(version("GET", "echo", "/caseless/thing", &[]), "b", "ignoreUriCase");
    assert_eq!(version("GET", "echo", "/x", &[("x-debug", "1")]), "b", "header presence");
    assert_eq!(version("GET", "echo", "/x", &[("x-debug", "1"), ("x-skip", "1")]), "a", "withoutHeaders");
    assert_eq!(version("GET", "echo.default:80", "/x", &[]), "b", "authority regex");
    assert_eq!(version("GET", "echo:8080", "/x", &[]), "b", "port");
    assert_eq!(version("GET", "echo", "/x", &[]), "a", "fallback route");
    // The port-8080 route went to echo-b's http-alt workload port (19204 in the YAML), not its
    // http one: port-specific clusters, counted by echo-b's sidecar per inbound cluster.
    let inbound_rq = |yaml_port: u32| {
        let cluster = format!("cluster.inbound|{}||.upstream_rq_total", mesh.mapped_port(yaml_port));
        mesh.envoy("default/echo-b").stat(&cluster).unwrap_or(0)
    };
    let (alt, http) = (inbound_rq(19204), inbound_rq(19203));
    assert_eq!(get(out, "echo:8080", "/x", &[]).status, 200);
    assert_eq!((inbound_rq(19204), inbound_rq(19203)), (alt + 1, http), "echo:8080 reaches workload port 19204 only");
}

/// The rest of HTTPMatchRequest in real Envoy: scheme, header exact/prefix/regex, queryParams
/// prefix/regex, withoutHeaders presence, sourceLabels and sourceNamespace (per calling proxy),
/// wildcard VirtualService hosts and a service's short names. Each route is guarded by its own
/// header so that a miss falls through to subset a, and a hit goes to subset b.
const MORE_MATCHES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: other, namespace: default}
spec: {address: 127.0.0.1, labels: {app: other}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: remote, namespace: elsewhere}
spec: {address: 127.0.0.1, labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web, "*.echo.example"]
  exportTo: ["*"]
  http:
  - match: [{headers: {x-t: {exact: https}}, scheme: {exact: https}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-t: {exact: http}}, scheme: {exact: http}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-p: {prefix: pre}}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-r: {regex: 'v[0-9]+'}}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{queryParams: {q1: {prefix: ab}}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{queryParams: {q2: {regex: '[0-9]+'}}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-t: {exact: without}}, withoutHeaders: {x-w: {}}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-t: {exact: labels}}, sourceLabels: {app: sleep}}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - match: [{headers: {x-t: {exact: namespace}}, sourceNamespace: default}]
    route: [{destination: {host: echo.default.svc.cluster.local, subset: b}}]
  - route: [{destination: {host: echo.default.svc.cluster.local, subset: a}}]
"#;

#[test]
fn more_match_fields_hosts_and_sources_in_real_envoy() {
    let mesh = Mesh::builder()
        .yaml(MATCHES)
        .yaml(MORE_MATCHES)
        .client("default/sleep")
        .client("default/other")
        .client("elsewhere/remote")
        .sidecar("default/echo-a", App::new("echo", "a"))
        .sidecar("default/echo-b", App::new("echo", "b"))
        .start();
    let version_via = |client: &str, host: &str, path: &str, headers: &[(&str, &str)]| -> String {
        let r = get(mesh.outbound_port(client), host, path, headers);
        assert_eq!(r.status, 200, "{client}: {host}{path} {headers:?}: {}", r.text());
        r.json()["version"].as_str().unwrap_or("?").to_string()
    };
    let version = |path: &str, headers: &[(&str, &str)]| version_via("default/sleep", "web", path, headers);

    assert_eq!(version("/", &[("x-t", "https")]), "a", "scheme https does not match a plaintext request");
    assert_eq!(version("/", &[("x-t", "http")]), "b", "scheme http");
    assert_eq!(version("/", &[("x-p", "prefixed")]), "b", "header prefix");
    assert_eq!(version("/", &[("x-p", "xpre")]), "a", "header prefix is anchored");
    assert_eq!(version("/", &[("x-r", "v12")]), "b", "header regex");
    assert_eq!(version("/", &[("x-r", "v12x")]), "a", "header regex is a full match");
    assert_eq!(version("/?q1=abc", &[]), "b", "query prefix");
    assert_eq!(version("/?q1=xab", &[]), "a", "query prefix is anchored");
    assert_eq!(version("/?z=1&q2=42", &[]), "b", "query regex, any position");
    assert_eq!(version("/?q2=42a", &[]), "a", "query regex is a full match");
    assert_eq!(version("/", &[("x-t", "without")]), "b", "withoutHeaders: header absent");
    assert_eq!(version("/", &[("x-t", "without"), ("x-w", "")]), "a", "withoutHeaders presence: any value, even empty");

    // sourceLabels / sourceNamespace select by the calling proxy's own workload.
    assert_eq!(version_via("default/sleep", "web", "/", &[("x-t", "labels")]), "b", "sourceLabels app=sleep");
    assert_eq!(version_via("default/other", "web", "/", &[("x-t", "labels")]), "a", "another workload's proxy");
    assert_eq!(version_via("default/other", "web", "/", &[("x-t", "namespace")]), "b", "sourceNamespace default");
    assert_eq!(
        version_via("elsewhere/remote", "web.default", "/", &[("x-t", "namespace")]),
        "a",
        "a proxy in another namespace"
    );
    assert_eq!(
        version_via("elsewhere/remote", "web.default", "/", &[("x-t", "labels")]),
        "b",
        "labels match in any namespace"
    );

    // Hosts: the service's short names (the bare name only in its own namespace), the wildcard.
    for host in [
        "web",
        "web:80",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
        "api.echo.example",
        "a.b.echo.example",
    ] {
        assert_eq!(version_via("default/sleep", host, "/", &[("x-p", "pre")]), "b", "host {host}");
    }
    assert_eq!(
        get(mesh.outbound_port("elsewhere/remote"), "web", "/", &[("x-p", "pre")]).status,
        404,
        "`web` means web.elsewhere there"
    );
    assert_eq!(
        get(mesh.outbound_port("default/sleep"), "echo.example", "/", &[]).status,
        404,
        "*.echo.example needs a label before it"
    );
}

#[test]
fn a_bad_router_config_is_refused_with_one_clear_log_line() {
    let port = wasmesh_e2e::free_port();
    let admin = wasmesh_e2e::free_port();
    let config = serde_json::json!({
        "workload": {"name": "w", "namespace": "default"},
        "resources": [{
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"hosts": ["x"], "http": [{"match": [{"uri": {"regex": "(unclosed"}}], "route": [{"destination": {"host": "x"}}]}]}
        }]
    });
    let bootstrap = serde_json::json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "t", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": [
                    {"name": "wasmesh.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": {
                        "root_id": "wasmesh.router",
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()},
                        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": paths::wasm("router").display().to_string()}}}}}},
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                ]}}]}]
        }]}
    });
    let err = match Envoy::start_with("bad-router", &bootstrap, 1) {
        Ok(_) => panic!("Envoy accepted a router config with an invalid regex"),
        Err(e) => e,
    };
    assert!(
        err.contains("wasmesh router: configuration rejected: <filter config> (document 1): VirtualService default/bad: spec.http[0].match[0].uri.regex: invalid RE2 regex \"(unclosed\""),
        "{err}"
    );
}

/// RE2's Perl classes are ASCII: `\d` is [0-9], `\s` [\t\n\f\r ], `\w` [0-9A-Za-z_], `\b` an ASCII
/// word boundary. One route per class, each guarded by its own header (a hit goes to subset b,
/// a miss falls through to a), as a VirtualService and as istiod writes it for Envoy (`safe_regex`
/// in the route match and in `headers[].string_match`).
const RE2_CLASSES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-a, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 19211}, labels: {app: echo, version: a}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-b, namespace: default}
spec: {address: 127.0.0.1, ports: {http: 19213}, labels: {app: echo, version: b}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {regex: '/w/\w+'}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-d: {regex: '\d+'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-nd: {regex: 'x\D'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-s: {regex: 'a\sb'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-ns: {regex: 'a\Sb'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-w: {regex: '[\w-]+'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-nw: {regex: 'caf[^\w]'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-b: {regex: '.*\bx'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-nb: {regex: '.*\Bx'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-esc: {regex: '\\d'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - match: [{headers: {x-l: {regex: '\pL+'}}}]
    route: [{destination: {host: echo, subset: b}}]
  - route: [{destination: {host: echo, subset: a}}]
"#;

/// The VirtualService above as istiod writes its routes for Envoy, on a second listener of the
/// client's Envoy with the outbound listener's HTTP connection manager settings (path
/// normalisation included) and Envoy's router alone: the oracle.
fn add_native_regex_listener(boot: &mut serde_json::Value, port: u16) {
    use serde_json::json;
    let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
    let cluster = |subset: &str| {
        let name = format!("outbound|80|{subset}|echo.default.svc.cluster.local");
        assert!(clusters.iter().any(|c| c["name"] == name.as_str()), "no cluster {name}");
        name
    };
    let (a, b) = (cluster("a"), cluster("b"));
    let header = |name: &str, re: &str| {
        json!({"match": {"prefix": "/", "headers": [{"name": name, "string_match": {"safe_regex": {"regex": re}}}]},
               "route": {"cluster": b, "timeout": "0s"}})
    };
    let routes = json!([
        {"match": {"safe_regex": {"regex": r"/w/\w+"}}, "route": {"cluster": b, "timeout": "0s"}},
        header("x-d", r"\d+"),
        header("x-nd", r"x\D"),
        header("x-s", r"a\sb"),
        header("x-ns", r"a\Sb"),
        header("x-w", r"[\w-]+"),
        header("x-nw", r"caf[^\w]"),
        header("x-b", r".*\bx"),
        header("x-nb", r".*\Bx"),
        header("x-esc", r"\\d"),
        header("x-l", r"\pL+"),
        {"match": {"prefix": "/"}, "route": {"cluster": a, "timeout": "0s"}},
    ]);
    let outbound = boot["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["name"].as_str().is_some_and(|n| n.starts_with("outbound"))
                && l.to_string().contains("http_connection_manager")
        })
        .cloned()
        .expect("an outbound HTTP listener");
    let mut hcm = outbound["filter_chains"][0]["filters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .expect("an HTTP connection manager")["typed_config"]
        .clone();
    let o = hcm.as_object_mut().unwrap();
    o.remove("rds");
    o.insert("stat_prefix".into(), json!("native_re2"));
    o.insert(
        "route_config".into(),
        json!({"name": "native_re2", "virtual_hosts": [{"name": "echo", "domains": ["*"], "routes": routes}]}),
    );
    o.insert(
        "http_filters".into(),
        json!([{"name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]),
    );
    let mut native = outbound.clone();
    native["name"] = json!("native_re2");
    native["address"]["socket_address"]["port_value"] = json!(port);
    native["filter_chains"] =
        json!([{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]);
    native.as_object_mut().unwrap().remove("listener_filters");
    boot["static_resources"]["listeners"].as_array_mut().unwrap().push(native);
}

/// Path, request headers, the route RE2 picks (`a`, `b` or `400`).
type RouteCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn re2_perl_classes_are_ascii_as_in_envoys_own_routes() {
    let native_port = wasmesh_e2e::free_port();
    let mesh = Mesh::builder()
        .yaml(RE2_CLASSES)
        .client("default/sleep")
        .sidecar("default/echo-a", App::new("echo", "a"))
        .sidecar("default/echo-b", App::new("echo", "b"))
        .edit_bootstraps(move |name, boot| {
            if name.contains("sleep") {
                add_native_regex_listener(boot, native_port);
            }
        })
        .start();
    let out = mesh.outbound_port("default/sleep");
    let decide = |port: u16, path: &str, headers: &[(&str, &str)]| -> (&str, String) {
        let mut all = vec![("host", "echo")];
        all.extend_from_slice(headers);
        let r = wasmesh_e2e::request(port, "GET", path, &all, b"").unwrap();
        if r.status == 200 {
            ("200", r.json()["version"].as_str().unwrap_or("?").to_string())
        } else {
            (if r.status == 400 { "400" } else { "other" }, r.text())
        }
    };
    // (path, headers, RE2's decision): raw UTF-8 in header values; in the path Envoy's HTTP/1
    // codec refuses raw UTF-8 (400 before any route is chosen) and path normalisation keeps
    // `%C3%A9` encoded, so the regex sees the percent-encoding.
    // Not here: a header value whose match needs a non-ASCII character consumed by `\D`, `\S`,
    // `[^\w]` or `\pL` (`x\D` on "x٣", `\pL+` on "αβγ"): Envoy 1.40's own routes did not match
    // those in this test while wasmesh does, as RE2 in UTF-8 mode would; not explained yet.
    let cases: &[RouteCase] = &[
        ("/w/abc_9", &[], "b"),
        ("/w/café", &[], "400"),
        ("/w/caf%C3%A9", &[], "a"),
        ("/w/жж", &[], "400"),
        ("/w/caf%C3", &[], "a"),
        ("/x", &[("x-d", "0129")], "b"),
        ("/x", &[("x-d", "٣")], "a"),
        ("/x", &[("x-d", "１２")], "a"),
        ("/x", &[("x-nd", "x3")], "a"),
        ("/x", &[("x-s", "a b")], "b"),
        ("/x", &[("x-s", "a\tb")], "b"),
        ("/x", &[("x-s", "a\u{a0}b")], "a"),
        ("/x", &[("x-s", "a\u{3000}b")], "a"),
        ("/x", &[("x-ns", "a b")], "a"),
        ("/x", &[("x-w", "a-Z_0")], "b"),
        ("/x", &[("x-w", "café")], "a"),
        ("/x", &[("x-w", "ж")], "a"),
        ("/x", &[("x-nw", "cafe")], "a"),
        ("/x", &[("x-b", "éx")], "b"),
        ("/x", &[("x-b", "ax")], "a"),
        ("/x", &[("x-nb", "ax")], "b"),
        ("/x", &[("x-nb", "éx")], "a"),
        ("/x", &[("x-esc", r"\d")], "b"),
        ("/x", &[("x-esc", "7")], "a"),
        ("/x", &[("x-l", "a1")], "a"),
        ("/x", &[], "a"),
    ];
    for (path, headers, want) in cases {
        let native = decide(native_port, path, headers);
        let wasmesh = decide(out, path, headers);
        assert_eq!(wasmesh, native, "{path} {headers:?}: wasmesh's router and Envoy's routes decide differently");
        let decision = if native.0 == "200" { native.1.as_str() } else { native.0 };
        assert_eq!(decision, *want, "{path} {headers:?}: RE2's decision ({native:?})");
    }
}
