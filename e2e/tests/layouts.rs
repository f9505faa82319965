//! Both layouts of `wasmeshctl envoy` in real Envoy: the one-pass filter (`wasmesh.chain`, the
//! default, which every other e2e test runs through `Mesh`) and one Envoy filter per wasmesh
//! filter (`--layout per-filter`). The bookinfo mesh (mutual TLS, the AuthorizationPolicies of
//! examples/bookinfo, a JWT required at the gateway) answers the same requests with the same
//! statuses and bodies and counts the same Istio metric series in both.
//!
//! Needs the filters built (`make wasm`) and Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wasmesh_controller::bootstrap::wasm_http_filter;
use wasmesh_controller::layout::{chain, ChainConfig, CHAIN_ROOT_ID};
use wasmesh_controller::plugins::WasmFilter;
use wasmesh_controller::Layout;
use wasmesh_e2e::authz::{JwtIssuer, ISSUER};
use wasmesh_e2e::mtls::MeshCa;
use wasmesh_e2e::stats::{bookinfo_yaml, scrape};
use wasmesh_e2e::{bookinfo, request, App, Envoy, Mesh};

const GATEWAY: &str = "istio-system/istio-ingressgateway";
const HOST: &str = "bookinfo.example.com";
const WASM_HTTP: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// bookinfo with examples/bookinfo/security.yaml, and the products API behind a JWT at the gateway.
fn yaml(issuer: &JwtIssuer) -> String {
    let security =
        std::fs::read_to_string(wasmesh_e2e::paths::repo_root().join("examples/bookinfo/security.yaml")).unwrap();
    let jwks = serde_json::to_string(&issuer.jwks).unwrap();
    format!(
        "{}\n---\n{security}\n---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: ingress-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  jwtRules:
  - issuer: {ISSUER}
    jwks: {jwks}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: products-need-a-jwt, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{notRequestPrincipals: ['*']}}}}]
    to: [{{operation: {{paths: ['/api/v1/products*']}}}}]
",
        bookinfo_yaml()
    )
}

/// The wasm HTTP filters of each HCM of each listener in an Envoy's config dump (what it runs).
fn wasm_http_filters(envoy: &Envoy) -> BTreeMap<String, Vec<String>> {
    wasm_http_configs(envoy)
        .into_iter()
        .map(|(l, fs)| (l, fs.iter().map(|f| f["name"].as_str().unwrap().to_string()).collect()))
        .collect()
}

/// [`wasm_http_filters`]: each filter's `Wasm.config` (name, root_id, configuration,
/// failure_policy) as the config dump shows it.
fn wasm_http_configs(envoy: &Envoy) -> BTreeMap<String, Vec<Value>> {
    let dump: Value = serde_json::from_str(&envoy.admin("/config_dump")).unwrap();
    let mut out = BTreeMap::new();
    for config in dump["configs"].as_array().unwrap() {
        for l in config["static_listeners"].as_array().into_iter().flatten() {
            let listener = &l["listener"];
            for (i, fc) in listener["filter_chains"].as_array().into_iter().flatten().enumerate() {
                for f in fc["filters"].as_array().into_iter().flatten() {
                    let Some(http) = f["typed_config"]["http_filters"].as_array() else { continue };
                    let names: Vec<Value> = http
                        .iter()
                        .filter(|h| h["typed_config"]["@type"] == WASM_HTTP)
                        .map(|h| h["typed_config"]["config"].clone())
                        .collect();
                    out.insert(format!("{}#{i}", listener["name"].as_str().unwrap()), names);
                }
            }
        }
    }
    out
}

/// The body without what differs per request (request ids, trace ids, certificate hashes).
fn stable(body: &Value) -> Value {
    match body {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| k.as_str() != "headers").map(|(k, v)| (k.clone(), stable(v))).collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(stable).collect()),
        other => other.clone(),
    }
}

/// A request: method, path, headers beside `host`.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

type Series = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Every `metric` series of every Envoy of the mesh, once they stopped moving for longer than
/// the stats phase keeps counters before flushing them (1 s, on its tick).
/// How long the scraped series must stay unchanged: longer than Envoy's stats flush interval (5 s),
/// at which histograms are merged into what the admin endpoint shows, while the stats phase's
/// counters move on its 1 s tick; a shorter window could read a request counted but not yet timed.
const STABLE_FOR: Duration = Duration::from_millis(5500);

fn series(mesh: &Mesh, metrics: &[&str]) -> Vec<Series> {
    let scrape_all = || -> Vec<Series> {
        metrics
            .iter()
            .map(|metric| {
                let mut out = Series::new();
                for (name, envoy) in mesh.envoys() {
                    for (labels, v) in scrape(envoy, metric) {
                        out.insert((name.clone(), labels), v);
                    }
                }
                out
            })
            .collect()
    };
    let start = Instant::now();
    let mut last = scrape_all();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = scrape_all();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() > STABLE_FOR || start.elapsed() > Duration::from_secs(40) {
            return now;
        }
    }
}

struct Run {
    /// (request, status, body without headers)
    answers: Vec<(String, u16, Value)>,
    requests_total: Series,
    duration_count: Series,
    /// Per Envoy: its listeners' wasm HTTP filters.
    filters: BTreeMap<String, BTreeMap<String, Vec<String>>>,
}

fn run(layout: Layout, issuer: &JwtIssuer) -> (Run, Mesh, MeshCa) {
    let yaml = yaml(issuer);
    let ca = MeshCa::for_resources(&wasmesh_e2e::mtls::resources(&yaml));
    let mesh = bookinfo::workloads(Mesh::builder().yaml(&yaml).certs_dir(ca.path()).layout(layout))
        .gateway(GATEWAY, &[80])
        .start();
    let gw = mesh.gateway_port(GATEWAY, 80);
    let token = issuer.token(&json!({"iss": ISSUER, "sub": "alice"})).unwrap();
    let bearer = format!("Bearer {token}");
    let cases: Vec<Case> = vec![
        ("GET", "/productpage", vec![]),
        ("GET", "/productpage", vec![("end-user", "jason")]),
        ("GET", "/admin", vec![]),
        ("POST", "/productpage", vec![]),
        ("GET", "/api/v1/products", vec![]),
        ("GET", "/api/v1/products", vec![("authorization", "Bearer invalidToken")]),
        ("GET", "/api/v1/products", vec![("authorization", bearer.as_str())]),
    ];
    let mut answers = Vec::new();
    for (method, path, headers) in &cases {
        let mut h = vec![("host", HOST)];
        h.extend_from_slice(headers);
        let r = request(gw, method, path, &h, b"").unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let body = serde_json::from_slice::<Value>(&r.body).unwrap_or_else(|_| Value::String(r.text()));
        let what = format!("{method} {path} {:?}", headers.iter().map(|(k, _)| *k).collect::<Vec<_>>());
        answers.push((what, r.status, stable(&body)));
    }
    let [requests_total, duration_count]: [Series; 2] =
        series(&mesh, &["istio_requests_total", "istio_request_duration_milliseconds_count"]).try_into().unwrap();
    // Every request counted is also timed: nothing still pending in one of them.
    let totals = |s: &Series| s.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>();
    assert_eq!(totals(&requests_total), totals(&duration_count), "{layout:?}: requests vs durations");
    let filters = mesh.envoys().map(|(n, e)| (n.clone(), wasm_http_filters(e))).collect();
    (Run { answers, requests_total, duration_count, filters }, mesh, ca)
}

#[test]
fn one_pass_and_per_filter_answer_and_count_the_same() {
    let issuer = JwtIssuer::new().unwrap();
    let (per, per_mesh, per_ca) = run(Layout::PerFilter, &issuer);
    drop(per_mesh);
    drop(per_ca);

    // What the requests get, in the per-filter layout (the reference).
    let status: Vec<u16> = per.answers.iter().map(|a| a.1).collect();
    assert_eq!(status, [200, 200, 404, 403, 403, 401, 200], "{:#?}", per.answers);
    let reviews = |a: &(String, u16, Value)| {
        a.2["calls"].as_array().and_then(|c| c.iter().find(|c| c["service"] == "reviews")).unwrap()["body"]["version"]
            .clone()
    };
    assert_eq!((reviews(&per.answers[0]), reviews(&per.answers[1])), (json!("v3"), json!("v2")));
    assert_eq!(per.answers[3].2, json!("RBAC: access denied"), "POST denied by productpage-viewer");
    assert_eq!(per.answers[4].2, json!("RBAC: access denied"), "no JWT: denied at the gateway");
    let gw_per = &per.filters[GATEWAY];
    assert_eq!(
        gw_per.values().next().unwrap(),
        &["wasmesh.stats", "wasmesh.authn", "wasmesh.authz", "wasmesh.router"],
        "{gw_per:?}"
    );

    let (one, mesh, _ca) = run(Layout::OnePass, &issuer);
    // The same in one pass: statuses, bodies (without per-request headers), metric series.
    for (p, o) in per.answers.iter().zip(&one.answers) {
        assert_eq!(p, o, "per-filter vs one-pass");
    }
    assert!(!per.requests_total.is_empty());
    assert_eq!(per.requests_total, one.requests_total, "istio_requests_total per-filter vs one-pass");
    assert_eq!(per.duration_count, one.duration_count, "istio_request_duration_milliseconds_count");

    // A denied request in one pass is counted with its code and the peer's labels (the stats
    // phase runs its log even though authz answered before the later phases).
    let denied: Vec<_> = one
        .requests_total
        .iter()
        .filter(|((envoy, l), _)| {
            envoy == "default/productpage-v1"
                && l.get("reporter").map(String::as_str) == Some("destination")
                && l.get("response_code").map(String::as_str) == Some("403")
        })
        .collect();
    assert_eq!(denied.len(), 1, "{:#?}", one.requests_total);
    let ((_, labels), count) = denied[0];
    assert_eq!(*count, 1.0);
    assert_eq!(labels["source_workload"], "istio-ingressgateway", "{labels:?}");
    assert_eq!(
        labels["source_principal"],
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
    );
    assert_eq!(labels["destination_workload"], "productpage-v1");
    assert_eq!(labels["response_flags"], "-", "{labels:?}");

    // In Envoy: each HTTP listener of the one-pass mesh has exactly one wasm HTTP filter, the
    // chain; the per-filter mesh had several where several filters apply.
    for (envoy, listeners) in &one.filters {
        assert!(!listeners.is_empty(), "{envoy}");
        for (listener, filters) in listeners {
            assert_eq!(filters, &[CHAIN_ROOT_ID], "{envoy} {listener}");
        }
    }
    // The gateway's chain holds those four, in that order, and fails closed.
    let configs = wasm_http_configs(mesh.envoy(GATEWAY));
    let gw_chain = &configs.values().next().unwrap()[0];
    assert_eq!((&gw_chain["root_id"], &gw_chain["failure_policy"]), (&json!(CHAIN_ROOT_ID), &json!("FAIL_RELOAD")));
    let chain: ChainConfig = serde_json::from_str(gw_chain["configuration"]["value"].as_str().unwrap()).unwrap();
    let ids: Vec<&str> = chain.phases.iter().map(|p| p.root_id.as_str()).collect();
    assert_eq!(ids, ["wasmesh.stats", "wasmesh.authn", "wasmesh.authz", "wasmesh.router"]);
}

/// A chain of the router alone, in place of the gateway's router filter, routes as the filter
/// does: the chain's root id, configuration format and failure policy in real Envoy, with the
/// one phase every build of the module has.
#[test]
fn a_chain_of_the_router_alone_routes_as_the_router_filter() {
    let httpbin =
        std::fs::read_to_string(wasmesh_e2e::paths::repo_root().join("examples/httpbin/httpbin.yaml")).unwrap();
    let wasm_dir = wasmesh_e2e::paths::wasm_dir();
    let mesh = Mesh::builder()
        .yaml(&httpbin)
        .layout(Layout::PerFilter)
        .gateway("istio-system/istio-ingressgateway", &[80])
        .sidecar("default/httpbin-v1", App::new("httpbin", "v1"))
        .edit_bootstraps(move |name, boot| {
            if name != "istio-system/istio-ingressgateway" {
                return;
            }
            let listeners = boot.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).unwrap();
            for l in listeners {
                let hcm = l.pointer_mut("/filter_chains/0/filters").and_then(Value::as_array_mut).unwrap();
                let http = hcm.last_mut().unwrap()["typed_config"]["http_filters"].as_array_mut().unwrap();
                for f in http.iter_mut().filter(|f| f["name"] == "wasmesh.router") {
                    let value = f["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
                    let router = WasmFilter {
                        name: "wasmesh.router".into(),
                        config: serde_json::from_str(value).unwrap(),
                        fail_open: false,
                    };
                    *f = wasm_http_filter(&chain(&[router]), &wasm_dir);
                }
            }
        })
        .start();
    let gw = mesh.envoy("istio-system/istio-ingressgateway");
    let listeners = wasm_http_filters(gw);
    assert_eq!(listeners.values().next().unwrap(), &["wasmesh.stats", CHAIN_ROOT_ID]);
    let port = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let get = |path: &str| request(port, "GET", path, &[("host", "httpbin.example.com")], b"").unwrap();
    let r = get("/status/200");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["service"], "httpbin");
    assert_eq!(get("/status/418").status, 418);
    assert_eq!(get("/headers").status, 404, "not on the VirtualService");
    let configs = wasm_http_configs(gw);
    let router_chain = &configs.values().next().unwrap()[1];
    assert_eq!(router_chain["root_id"], CHAIN_ROOT_ID);
    assert_eq!(router_chain["failure_policy"], "FAIL_RELOAD", "a routing phase inside: fails closed");
}
