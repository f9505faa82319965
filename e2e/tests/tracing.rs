//! Distributed tracing (`wasmesh.tracing`) in real Envoy, one Envoy for every case: listeners
//! that differ only in their tracing configuration, one echo app behind them (it answers with
//! the headers it received, so the context sent upstream is visible), and one test collector
//! (`e2e/src/collector.rs`, OTLP decoded with the official `opentelemetry-proto` types).
//!
//! - `wasm`: the phase, OpenTelemetry provider, 100 % sampling;
//! - `native`: Envoy's own OpenTelemetry tracer (HCM tracing, `http_service` to the same
//!   collector) with Istio's custom tags as istiod writes them: the oracle for the span fields;
//! - `zipkin`: the phase, Zipkin provider, 0 % sampling (only an incoming sampled flag traces);
//! - `quiet`: `disableContextPropagation` and `disableSpanReporting`;
//! - `dead`: the collector cluster points at a closed port, the queue holds one span.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/collector.rs"]
mod collector;

use collector::{Collector, Received};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use wasmesh_e2e::http::get;
use wasmesh_e2e::{free_port, paths, App, Envoy};

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const ISTIO_TAGS: [(&str, &str); 5] = [
    ("istio.canonical_revision", "v1"),
    ("istio.canonical_service", "httpbin"),
    ("istio.cluster_id", "Kubernetes"),
    ("istio.mesh_id", "cluster.local"),
    ("istio.namespace", "default"),
];

fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    })
}

fn wasm_filter(name: &str, config: Value) -> Value {
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": "wasmesh.chain",
                "vm_config": {"vm_id": "wasmesh", "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": paths::wasm("wasmesh").display().to_string()}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json!({"phases": [{"rootId": "wasmesh.tracing", "configuration": config}]}).to_string()},
                "fail_open": true
            }
        }
    })
}

fn listener(name: &str, port: u16, filters: Vec<Value>, tracing: Option<Value>) -> Value {
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
        "http_filters": filters,
    });
    let mut http_filters = hcm["http_filters"].as_array().cloned().unwrap_or_default();
    http_filters.push(json!({"name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    hcm["http_filters"] = Value::Array(http_filters);
    if let Some(t) = tracing {
        hcm["tracing"] = t;
    }
    json!({
        "name": name,
        "traffic_direction": "INBOUND",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm}]}]
    })
}

struct Setup {
    envoy: Envoy,
    collector: Collector,
    _app: wasmesh_e2e::AppHandle,
    wasm: u16,
    native: u16,
    zipkin: u16,
    quiet: u16,
    dead: u16,
}

fn setup() -> Setup {
    let collector = Collector::start();
    let app = App::new("httpbin", "v1").start();
    let (wasm, native, zipkin, quiet, dead) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let closed = free_port();
    let otel =
        |cluster: &str, authority: &str| json!({"kind": "opentelemetry", "cluster": cluster, "authority": authority});
    let native_tracing = json!({
        "random_sampling": {"value": 100},
        "custom_tags": ISTIO_TAGS.iter().map(|(k, v)| json!({"tag": k, "literal": {"value": v}})).collect::<Vec<_>>(),
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "httpbin.default",
            "http_service": {"http_uri": {"uri": format!("http://127.0.0.1:{}/v1/traces", collector.port),
                "cluster": "collector", "timeout": "2s"}}
        }}
    });
    let bootstrap = json!({
        "node": {"id": "sidecar~127.0.0.1~httpbin-v1.default~default.svc.cluster.local", "cluster": "httpbin.default",
            "metadata": {"NAMESPACE": "default", "WORKLOAD_NAME": "httpbin-v1", "CLUSTER_ID": "Kubernetes",
                "LABELS": {"app": "httpbin", "version": "v1"}}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {
            "clusters": [cluster("app", app.port), cluster("collector", collector.port), cluster("nowhere", closed)],
            "listeners": [
                listener("wasm", wasm, vec![wasm_filter("t-wasm", json!({
                    "provider": otel("collector", "collector:4318"), "randomSamplingPercentage": 100,
                    "meshId": "cluster.local", "flushPeriodMs": 200}))], None),
                listener("native", native, vec![], Some(native_tracing)),
                listener("zipkin", zipkin, vec![wasm_filter("t-zipkin", json!({
                    "provider": {"kind": "zipkin", "cluster": "collector", "authority": "zipkin:9411"},
                    "randomSamplingPercentage": 0, "flushPeriodMs": 200,
                    "customTags": {"literal_tag": {"literal": {"value": "lit"}},
                                   "header_tag": {"header": {"name": "x-tag", "defaultValue": "none"}}}}))], None),
                listener("quiet", quiet, vec![wasm_filter("t-quiet", json!({
                    "disableContextPropagation": true, "disableSpanReporting": true,
                    "randomSamplingPercentage": 100}))], None),
                listener("dead", dead, vec![wasm_filter("t-dead", json!({
                    "provider": otel("nowhere", "nowhere:4318"), "randomSamplingPercentage": 100,
                    "maxQueue": 1, "batchSize": 1, "flushPeriodMs": 10}))], None),
            ]
        }
    });
    let envoy = Envoy::start("tracing", &bootstrap);
    Setup { envoy, collector, _app: app, wasm, native, zipkin, quiet, dead }
}

/// The headers the app received.
fn upstream(port: u16, headers: &[(&str, &str)]) -> Value {
    let r = get(port, "httpbin.default:8000", "/headers?x=1", headers);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"].clone()
}

fn h<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name].as_str().unwrap_or("<absent>")
}

/// traceparent → (trace, span, flags)
fn tp(v: &str) -> (String, String, String) {
    let p: Vec<&str> = v.split('-').collect();
    assert_eq!(p.len(), 4, "traceparent {v}");
    (p[1].into(), p[2].into(), p[3].into())
}

fn span_with_parent<'a>(spans: &'a [Received], format: &str, trace: &str, parent: &str) -> Option<&'a Received> {
    spans.iter().find(|s| s.format == format && s.trace_id == trace && s.parent_span_id == parent)
}

#[test]
fn trace_context_propagation_sampling_and_export() {
    let s = setup();
    let wait = Duration::from_secs(10);

    // 1. No context: a new 128-bit trace, both formats upstream and consistent, no parent.
    let got = upstream(s.wasm, &[]);
    let (trace, span, flags) = tp(h(&got, "traceparent"));
    assert_eq!(flags, "01");
    assert_eq!(h(&got, "x-b3-traceid"), trace);
    assert_eq!(h(&got, "x-b3-spanid"), span);
    assert_eq!(h(&got, "x-b3-sampled"), "1");
    assert_eq!(h(&got, "x-b3-parentspanid"), "<absent>");
    let rid = h(&got, "x-request-id").to_string();
    assert_eq!(rid.len(), 36, "Envoy's x-request-id reaches the app: {got}");
    assert_eq!(&rid[14..15], "9", "the sampled reason is packed into x-request-id as Envoy does: {rid}");
    let root_trace = trace.clone();

    // 2. B3 multi, 64-bit trace id, sampled: the proxy's span is the caller's child.
    let got = upstream(
        s.wasm,
        &[("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312"), ("x-b3-sampled", "1")],
    );
    assert_eq!(h(&got, "x-b3-traceid"), "463ac35c9f6413ad");
    assert_eq!(h(&got, "x-b3-parentspanid"), "a2fb4a1d1a96d312");
    assert_ne!(h(&got, "x-b3-spanid"), "a2fb4a1d1a96d312");
    assert_eq!(tp(h(&got, "traceparent")).0, "0000000000000000463ac35c9f6413ad");

    // 3. Single b3 (with a different multi-header context, which it overrides): rewritten.
    let got = upstream(
        s.wasm,
        &[
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ],
    );
    let b3 = h(&got, "b3").to_string();
    assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{b3}");
    assert!(b3.ends_with("-1-e457b5a2e4d86bd1"), "{b3}");
    assert_eq!(h(&got, "x-b3-traceid"), "80f198ee56343ba864fe8b2a57d3eff7");

    // 4. W3C with tracestate (and a B3 context, which the OpenTelemetry provider reads second).
    let got = upstream(
        s.wasm,
        &[
            ("traceparent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ],
    );
    let (trace, span4, flags) = tp(h(&got, "traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), ("0af7651916cd43dd8448eb211c80319c", "01"));
    assert_ne!(span4, "b7ad6b7169203331");
    assert_eq!(h(&got, "tracestate"), "congo=t61rcWkgMzE");
    assert_eq!(h(&got, "x-b3-parentspanid"), "b7ad6b7169203331");

    // 5. An invalid traceparent (upper-case hex) is ignored whole: a new trace, no tracestate.
    let got = upstream(
        s.wasm,
        &[("traceparent", "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"), ("tracestate", "a=b")],
    );
    assert_ne!(tp(h(&got, "traceparent")).0, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(h(&got, "tracestate"), "<absent>");

    // 6. The caller said "not sampled": respected, propagated, and no span.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    let got = upstream(s.wasm, &[("traceparent", unsampled)]);
    assert_eq!(tp(h(&got, "traceparent")).2, "00");
    assert_eq!(h(&got, "x-b3-sampled"), "0");

    // 7. The same W3C context through Envoy's own tracer (the oracle).
    let native = upstream(s.native, &[("traceparent", TP), ("tracestate", "congo=t61rcWkgMzE")]);
    let (ntrace, nspan, _) = tp(h(&native, "traceparent"));
    assert_eq!(ntrace, "0af7651916cd43dd8448eb211c80319c");

    // 8. Zipkin at 0 %: only the request whose caller sampled is traced.
    let z = upstream(
        s.zipkin,
        &[
            ("x-b3-traceid", "5af7183fb1d4cf5f"),
            ("x-b3-spanid", "6b221d5bc9e6496c"),
            ("x-b3-sampled", "1"),
            ("x-tag", "T"),
        ],
    );
    assert_eq!(h(&z, "x-b3-parentspanid"), "6b221d5bc9e6496c");
    let z0 = upstream(s.zipkin, &[]);
    assert_eq!(h(&z0, "x-b3-sampled"), "0", "0 % sampling: {z0}");

    // 9. disableContextPropagation: the app gets the caller's headers untouched.
    let q = upstream(s.quiet, &[("traceparent", TP)]);
    assert_eq!(h(&q, "traceparent"), TP);
    assert_eq!(h(&q, "x-b3-traceid"), "<absent>");

    // 10. A dead collector never delays or fails a request; what cannot be queued is counted.
    let start = Instant::now();
    for _ in 0..20 {
        upstream(s.dead, &[]);
    }
    assert!(start.elapsed() < Duration::from_secs(5), "20 requests took {:?}", start.elapsed());

    // --- what the collector received ---
    let spans = s.collector.wait_for(wait, |sp| {
        span_with_parent(sp, "otlp", &ntrace, "b7ad6b7169203331").is_some_and(|x| x.span_id == nspan)
            && span_with_parent(sp, "otlp", &trace, "b7ad6b7169203331").is_some()
            && span_with_parent(sp, "zipkin", "5af7183fb1d4cf5f", "6b221d5bc9e6496c").is_some()
            && sp.iter().any(|x| x.trace_id == root_trace)
    });
    assert_eq!(s.collector.errors(), Vec::<String>::new(), "the collector refused exports");
    let dump = || spans.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    let mine = span_with_parent(&spans, "otlp", &trace, "b7ad6b7169203331")
        .filter(|x| x.span_id == span4)
        .unwrap_or_else(|| panic!("no wasm span for case 4:\n{}", dump()));
    let theirs = spans
        .iter()
        .find(|x| x.trace_id == ntrace && x.span_id == nspan)
        .unwrap_or_else(|| panic!("no native span:\n{}", dump()));
    let root = spans.iter().find(|x| x.trace_id == root_trace).unwrap();
    assert_eq!(root.parent_span_id, "", "a new trace's span has no parent");
    assert_eq!(root.attr("guid:x-request-id"), Some(rid.as_str()));
    assert!(!spans.iter().any(|x| x.trace_id == "11111111111111111111111111111111"), "an unsampled trace was exported");
    assert!(
        !spans.iter().any(|x| x.format == "zipkin" && x.trace_id != "5af7183fb1d4cf5f"),
        "0 % sampling exported a span: {}",
        dump()
    );

    // The span compared field by field with Envoy's tracer's for the same hop.
    eprintln!("wasmesh: {mine:?}\nEnvoy:   {theirs:?}");
    assert_eq!(mine.service, theirs.service);
    assert_eq!(mine.name, theirs.name);
    assert_eq!(mine.kind, theirs.kind);
    assert_eq!(mine.status, theirs.status);
    assert_eq!(mine.trace_state, theirs.trace_state);
    let differ_per_request = ["guid:x-request-id", "response_size"];
    let keys = |r: &Received| {
        let mut k: Vec<String> = r.attributes.iter().map(|(k, _)| k.clone()).collect();
        k.sort();
        k
    };
    let mut diffs = Vec::new();
    for (k, v) in &theirs.attributes {
        let m = mine.attr(k);
        if differ_per_request.contains(&k.as_str()) {
            if m.is_none() {
                diffs.push(format!("{k}: missing (Envoy: {v:?})"));
            }
        } else if m != Some(v.as_str()) {
            diffs.push(format!("{k}: wasmesh {m:?}, Envoy {v:?}"));
        }
    }
    for (k, v) in &mine.attributes {
        if theirs.attr(k).is_none() {
            diffs.push(format!("{k}: wasmesh {v:?}, Envoy has none"));
        }
    }
    assert!(
        diffs.is_empty(),
        "span fields differ from Envoy's OpenTelemetry tracer:\n{}\nwasmesh keys {:?}\nEnvoy keys {:?}",
        diffs.join("\n"),
        keys(mine),
        keys(theirs)
    );
    for (k, v) in ISTIO_TAGS {
        assert_eq!(mine.attr(k), Some(v), "{k}");
    }

    // Zipkin: the custom tags, literal and header.
    let z = span_with_parent(&spans, "zipkin", "5af7183fb1d4cf5f", "6b221d5bc9e6496c").unwrap();
    assert_eq!(z.attr("literal_tag"), Some("lit"));
    assert_eq!(z.attr("header_tag"), Some("T"));
    assert_eq!(z.kind, "SERVER");

    // The dead collector: spans dropped (queue of one) and counted; nothing from `quiet`.
    let start = Instant::now();
    while s.envoy.stat("wasmcustom.wasmesh.tracing.spans_dropped").unwrap_or(0) == 0
        && start.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let dropped = s.envoy.stat("wasmcustom.wasmesh.tracing.spans_dropped").unwrap_or(0);
    assert!(dropped > 0, "no dropped spans counted:\n{}", s.envoy.admin("/stats?filter=tracing"));
    assert!(s.envoy.stat("wasmcustom.wasmesh.tracing.spans_exported").unwrap_or(0) >= 5);
}

/// gateway → productpage → reviews v2 → ratings, configured the Istio way (meshConfig
/// `extensionProviders` + `defaultProviders.tracing`, a mesh-wide Telemetry at 100 % with a
/// custom tag) through `wasmeshctl envoy`: one trace, each proxy's span the child of the one
/// before it (server then client span on each proxy: on the gateway the upstream span istiod's
/// `spawn_upstream_span` gives), Istio's tags naming each workload.
#[test]
fn bookinfo_is_one_trace() {
    use wasmesh_e2e::bookinfo::call;
    let collector = Collector::start();
    let mesh = otel_mesh(collector.port);
    let telemetry = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      team: {literal: {value: books}}
"#;
    let yaml = format!("{}\n---\n{telemetry}", wasmesh_e2e::stats::bookinfo_yaml());
    let m = wasmesh_e2e::Mesh::builder()
        .yaml(&yaml)
        .mesh_config(mesh)
        .gateway("istio-system/istio-ingressgateway", &[80])
        .sidecar("default/productpage-v1", App::new("productpage", "v1").calling(call("reviews", "/reviews/0")))
        .sidecar("default/reviews-v2", App::new("reviews", "v2").calling(call("ratings", "/ratings/0")))
        .sidecar("default/ratings-v1", App::new("ratings", "v1"))
        .start();
    let gw = m.gateway_port("istio-system/istio-ingressgateway", 80);
    // istiod's gateway listeners are OUTBOUND: Envoy does not name the gateway's span by a
    // client's decorator header, it sends the route's operation on to productpage instead.
    let r = get(
        gw,
        "bookinfo.example.com",
        "/productpage",
        &[("end-user", "jason"), ("x-envoy-decorator-operation", "client-op")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let trace = tp(h(&page["headers"], "traceparent")).0;
    let spans = collector.wait_for(Duration::from_secs(10), |s| s.iter().filter(|x| x.trace_id == trace).count() >= 7);
    assert_eq!(collector.errors(), Vec::<String>::new());
    let mine: Vec<&Received> = spans.iter().filter(|x| x.trace_id == trace).collect();
    let dump = mine.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    assert_eq!(mine.len(), 7, "gateway in/out, productpage in/out, reviews in/out, ratings in:\n{dump}");
    assert_eq!(spans.iter().filter(|x| x.trace_id != trace).count(), 0, "one trace only:\n{dump}");
    // The chain: every span but the gateway's is the child of another span of the trace.
    let root: Vec<&&Received> = mine.iter().filter(|x| x.parent_span_id.is_empty()).collect();
    assert_eq!(root.len(), 1, "{dump}");
    let mut at = *root[0];
    let mut order = vec![(at.attr("istio.canonical_service").unwrap_or_default().to_string(), at.kind.clone())];
    while let Some(child) = mine.iter().find(|x| x.parent_span_id == at.span_id) {
        at = child;
        order.push((at.attr("istio.canonical_service").unwrap_or_default().to_string(), at.kind.clone()));
    }
    let want: Vec<(String, String)> = [
        ("istio-ingressgateway", "SERVER"),
        ("istio-ingressgateway", "CLIENT"),
        ("productpage", "SERVER"),
        ("productpage", "CLIENT"),
        ("reviews", "SERVER"),
        ("reviews", "CLIENT"),
        ("ratings", "SERVER"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(order, want, "{dump}");
    let gateway = *root[0];
    let upstream = mine.iter().find(|x| x.parent_span_id == gateway.span_id).unwrap();
    assert_eq!(upstream.name, "router outbound|9080||productpage.default.svc.cluster.local egress", "{dump}");
    let page = mine.iter().find(|x| x.parent_span_id == upstream.span_id).unwrap();
    assert_eq!(
        gateway.name, "productpage.default.svc.cluster.local:9080/productpage",
        "the gateway route's operation:\n{dump}"
    );
    assert_eq!(page.name, gateway.name, "productpage's span is named by the gateway's decorator header:\n{dump}");
    for s in &mine {
        assert_eq!(s.attr("team"), Some("books"), "{dump}");
        assert_eq!(s.attr("istio.mesh_id"), Some("cluster.local"));
        assert_eq!(s.attr("http.status_code"), Some("200"));
        assert_eq!(s.attr("component"), Some("proxy"));
    }
}

/// The span-name oracle: istiod's route decorators on Envoy's own OpenTelemetry tracer next to
/// wasmesh's router and tracing, in the same Envoy (echo's sidecar), on the same requests.
const DECORATED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19391}
  labels: {app: echo, version: v1}
  serviceAccount: echo
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: plain, namespace: default}
spec:
  hosts: [plain.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19392}
  labels: {app: httpbin, version: v1}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: all, labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: httpbin}}]
  - match: [{uri: {exact: /login}}]
    route:
    - {destination: {host: httpbin, subset: v1}, weight: 50}
    - {destination: {host: httpbin, subset: all}, weight: 50}
  - match: [{uri: {regex: "/v[0-9]+/.*"}}]
    route: [{destination: {host: httpbin, subset: v1}}]
  - route: [{destination: {host: httpbin}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
"#;

const HTTPBIN: &str = "httpbin.default.svc.cluster.local";
const ECHO_OP: &str = "echo.default.svc.cluster.local:8000/*";

/// The names of a bootstrap's static clusters.
fn cluster_names(boot: &Value) -> Vec<String> {
    boot["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The cluster called `want` among `names` (the test fails when there is none).
fn named(names: &[String], want: &str) -> String {
    names.iter().find(|n| n.as_str() == want).cloned().unwrap_or_else(|| panic!("no cluster {want}: {names:?}"))
}

/// meshConfig whose default tracing provider `otel` exports OTLP/HTTP to the test collector on
/// `port`.
fn otel_mesh(port: u16) -> wasmesh_controller::MeshConfig {
    serde_json::from_value(json!({
        "extensionProviders": [{"name": "otel", "opentelemetry": {"service": "127.0.0.1", "port": port,
            "http": {"path": "/v1/traces"}}}],
        "defaultProviders": {"tracing": ["otel"]}
    }))
    .unwrap()
}

/// Envoy's own tracer as istiod configures it, on a twin of a wasmeshctl listener.
fn native_tracing(collector_cluster: &str, collector_port: u16) -> Value {
    json!({
        "random_sampling": {"value": 100},
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "echo.default",
            "http_service": {"http_uri": {"uri": format!("http://127.0.0.1:{collector_port}/v1/traces"),
                "cluster": collector_cluster, "timeout": "2s"}}
        }}
    })
}

/// A native listener (HCM tracing, routes with istiod's decorators) on `port`, direction as
/// istiod writes it.
fn native_listener(name: &str, port: u16, direction: &str, virtual_hosts: Value, tracing: Value) -> Value {
    json!({
        "name": name,
        "traffic_direction": direction,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {"name": name, "virtual_hosts": virtual_hosts},
            "tracing": tracing,
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config":
                {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        }}]}]
    })
}

fn decorated(m: Value, action: Value, op: &str) -> Value {
    json!({"match": m, "route": action, "decorator": {"operation": op}})
}

#[test]
fn span_names_and_decorator_headers_as_envoys_tracer() {
    let collector = Collector::start();
    let cport = collector.port;
    let mesh = otel_mesh(cport);
    let (native_out, native_in) = (free_port(), free_port());
    let m = wasmesh_e2e::Mesh::builder()
        .yaml(DECORATED)
        .mesh_config(mesh)
        .concurrency(1)
        .sidecar("default/echo-v1", App::new("echo", "v1"))
        .edit_bootstraps(move |name, boot| {
            if !name.contains("echo-v1") {
                return;
            }
            let names = cluster_names(boot);
            let find = |want: &str| named(&names, want);
            let collector = find("wasmesh-tracing|otel");
            let inbound = names.iter().find(|n| n.starts_with("inbound|")).cloned().expect("an inbound cluster");
            let one = |c: &str| json!({"cluster": find(c), "timeout": "0s"});
            let default = format!("outbound|8000||{HTTPBIN}");
            let v1 = format!("outbound|8000|v1|{HTTPBIN}");
            let all = format!("outbound|8000|all|{HTTPBIN}");
            let plain = "outbound|8000||plain.default.svc.cluster.local";
            // What istiod writes for DECORATED's VirtualService and the plain service.
            let out_hosts = json!([
                {"name": "plain", "domains": ["plain.default.svc.cluster.local:8000", "plain:8000"], "routes": [
                    decorated(json!({"prefix": "/"}), one(plain), "plain.default.svc.cluster.local:8000/*")]},
                {"name": "httpbin", "domains": ["*"], "routes": [
                    decorated(json!({"prefix": "/api"}), one(&default), &format!("{HTTPBIN}:8000/api*")),
                    decorated(json!({"path": "/login"}), json!({"weighted_clusters": {"clusters": [
                        {"name": find(&v1), "weight": 50}, {"name": find(&all), "weight": 50}]}, "timeout": "0s"}),
                        "httpbin:8000/login"),
                    decorated(json!({"safe_regex": {"regex": "/v[0-9]+/.*"}}), one(&v1),
                        &format!("{HTTPBIN}:8000/v[0-9]+/.*")),
                    decorated(json!({"prefix": "/"}), one(&default), &format!("{HTTPBIN}:8000/*")),
                ]},
            ]);
            let in_hosts = json!([{"name": "inbound", "domains": ["*"], "routes": [
                decorated(json!({"prefix": "/"}), json!({"cluster": inbound, "timeout": "0s"}), ECHO_OP)]}]);
            let listeners = boot["static_resources"]["listeners"].as_array_mut().unwrap();
            listeners.push(native_listener(
                "native-out",
                native_out,
                "OUTBOUND",
                out_hosts,
                native_tracing(&collector, cport),
            ));
            listeners.push(native_listener(
                "native-in",
                native_in,
                "INBOUND",
                in_hosts,
                native_tracing(&collector, cport),
            ));
        })
        .start();
    let _httpbin = App::new("httpbin", "v1").start_on(m.mapped_port(19392)).unwrap();
    let wasm_out = m.outbound_port("default/echo-v1");
    let wasm_in = m.inbound_port("default/echo-v1");

    // (host, path, the operation istiod's decorator names)
    let cases = [
        ("httpbin:8000", "/api/items", format!("{HTTPBIN}:8000/api*")),
        ("httpbin:8000", "/login", "httpbin:8000/login".to_string()),
        ("httpbin:8000", "/v2/things", format!("{HTTPBIN}:8000/v[0-9]+/.*")),
        ("httpbin:8000", "/other", format!("{HTTPBIN}:8000/*")),
        ("plain:8000", "/x", "plain.default.svc.cluster.local:8000/*".to_string()),
    ];
    // One trace per (case, listener): trace id NN0…0 for native, NN1…1 for wasmesh.
    let tid = |i: usize, wasm: bool| format!("{:02x}{}", i + 1, if wasm { "1" } else { "0" }.repeat(30));
    let parent = "b7ad6b7169203331";
    let mut want = Vec::new();
    for (i, (host, path, op)) in cases.iter().enumerate() {
        let mut seen = Vec::new();
        for (wasm, port) in [(false, native_out), (true, wasm_out)] {
            let tp = format!("00-{}-{parent}-01", tid(i, wasm));
            // A client's own decorator header does not name an egress span: the route's does.
            let r = get(port, host, path, &[("traceparent", &tp), ("x-envoy-decorator-operation", "client-op")]);
            assert_eq!(r.status, 200, "{host}{path} via {port}: {}", r.text());
            let got = r.json();
            assert_eq!(got["service"], "httpbin", "{host}{path}: {got}");
            seen.push(h(&got["headers"], "x-envoy-decorator-operation").to_string());
            assert_eq!(r.header("x-envoy-decorator-operation"), None, "{host}{path}: egress answers carry none");
        }
        assert_eq!(seen[0], *op, "{host}{path}: Envoy sends istiod's decorator upstream");
        assert_eq!(seen[1], seen[0], "{host}{path}: wasmesh sends what Envoy sends");
        want.push((tid(i, false), tid(i, true), op.clone()));
    }

    // Inbound: the caller's header names the span and the app never sees it; without one, the
    // inbound route's operation names it and goes back in the response.
    let mut inbound = Vec::new();
    for (k, (header, want_name)) in [
        (Some("reviews.default.svc.cluster.local:9080/*"), "reviews.default.svc.cluster.local:9080/*"),
        (None, ECHO_OP),
    ]
    .into_iter()
    .enumerate()
    {
        let mut answers = Vec::new();
        for (wasm, port) in [(false, native_in), (true, wasm_in)] {
            let trace = format!("{:02x}{}", 0xa0 + k, if wasm { "3" } else { "2" }.repeat(30));
            let tp = format!("00-{trace}-{parent}-01");
            let mut hs = vec![("traceparent", tp.as_str())];
            if let Some(v) = header {
                hs.push(("x-envoy-decorator-operation", v));
            }
            let r = get(port, "echo:8000", "/headers", &hs);
            assert_eq!(r.status, 200, "inbound via {port}: {}", r.text());
            assert_eq!(h(&r.json()["headers"], "x-envoy-decorator-operation"), "<absent>", "the app never sees it");
            answers.push(r.header("x-envoy-decorator-operation").map(str::to_string));
            inbound.push((trace, want_name.to_string()));
        }
        let back = if header.is_some() { None } else { Some(ECHO_OP.to_string()) };
        assert_eq!(answers[0], back, "Envoy's inbound answer (request header {header:?})");
        assert_eq!(answers[1], answers[0], "wasmesh's inbound answer as Envoy's (request header {header:?})");
    }

    let spans = collector.wait_for(Duration::from_secs(10), |sp| {
        want.iter().all(|(n, w, _)| sp.iter().any(|x| &x.trace_id == n) && sp.iter().any(|x| &x.trace_id == w))
            && inbound.iter().all(|(t, _)| sp.iter().any(|x| &x.trace_id == t))
    });
    assert_eq!(collector.errors(), Vec::<String>::new());
    let dump = spans.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    let one = |t: &str| -> &Received {
        let of: Vec<&Received> = spans.iter().filter(|x| x.trace_id == t).collect();
        assert_eq!(of.len(), 1, "one span for trace {t}:\n{dump}");
        of[0]
    };
    for (n, w, op) in &want {
        let (native, mine) = (one(n), one(w));
        eprintln!("egress {op}: Envoy {:?} {}, wasmesh {:?} {}", native.name, native.kind, mine.name, mine.kind);
        assert_eq!(native.name, *op, "Envoy names the egress span by the decorator:\n{dump}");
        assert_eq!(mine.name, native.name, "wasmesh names it as Envoy:\n{dump}");
        assert_eq!(mine.kind, native.kind);
    }
    for pair in inbound.chunks(2) {
        let (native, mine) = (one(&pair[0].0), one(&pair[1].0));
        eprintln!("ingress: Envoy {:?} {}, wasmesh {:?} {}", native.name, native.kind, mine.name, mine.kind);
        assert_eq!(native.name, pair[0].1, "Envoy's inbound span name:\n{dump}");
        assert_eq!(mine.name, native.name, "wasmesh's inbound span name as Envoy's:\n{dump}");
        assert_eq!(mine.kind, native.kind);
    }
}

/// A gateway as istiod 1.30 configures it: `spawn_upstream_span` on its OUTBOUND listener.
const GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19393}
  labels: {app: httpbin, version: v1}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: down, namespace: default}
spec:
  hosts: [down.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: down}}
---
# Nothing listens there: every attempt fails to connect.
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: down-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19394}
  labels: {app: down, version: v1}
  serviceAccount: down
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  address: 127.0.0.1
  labels: {istio: ingressgateway, app: istio-ingressgateway}
  serviceAccount: istio-ingressgateway-service-account
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - match: [{uri: {prefix: /down}}]
    route: [{destination: {host: down.default.svc.cluster.local, port: {number: 8000}}}]
  - route: [{destination: {host: httpbin.default.svc.cluster.local, port: {number: 8000}}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - randomSamplingPercentage: 100
    customTags:
      team: {literal: {value: books}}
      user: {header: {name: end-user, defaultValue: anonymous}}
"#;

/// The gateway's two spans (downstream SERVER, upstream CLIENT `router <cluster> egress`) and
/// the context its upstream receives, field by field against Envoy's own OpenTelemetry tracer
/// on a twin OUTBOUND listener of the same gateway Envoy with `spawn_upstream_span: true`, as
/// istiod 1.30 writes a gateway's connection manager (and its custom tags as istiod writes them).
/// Then a service nobody listens on, with Istio's default retries: Envoy reports one upstream span
/// per attempt, wasmesh one, equal to Envoy's last (`retry.count`, `error.reason`, `UF`).
#[test]
fn gateway_spans_as_envoys_tracer_with_spawn_upstream_span() {
    let collector = Collector::start();
    let cport = collector.port;
    let mesh = otel_mesh(cport);
    let native = free_port();
    let op = format!("{HTTPBIN}:8000/*");
    let op2 = op.clone();
    let m = wasmesh_e2e::Mesh::builder()
        .yaml(GATEWAY)
        .mesh_config(mesh)
        .concurrency(1)
        .gateway("istio-system/istio-ingressgateway", &[80])
        .edit_bootstraps(move |name, boot| {
            if !name.contains("ingressgateway") {
                return;
            }
            let names = cluster_names(boot);
            let find = |want: &str| named(&names, want);
            let mut tracing = native_tracing(&find("wasmesh-tracing|otel"), cport);
            tracing["provider"]["typed_config"]["service_name"] = json!("istio-ingressgateway.istio-system");
            tracing["spawn_upstream_span"] = json!(true);
            // istiod's custom tags: Istio's (as wasmesh's phase derives them for this gateway)
            // and the Telemetry's.
            let mut tags: Vec<Value> = [
                ("istio.canonical_revision", "latest"),
                ("istio.canonical_service", "istio-ingressgateway"),
                ("istio.cluster_id", "Kubernetes"),
                ("istio.mesh_id", "cluster.local"),
                ("istio.namespace", "istio-system"),
                ("team", "books"),
            ]
            .iter()
            .map(|(k, v)| json!({"tag": k, "literal": {"value": v}}))
            .collect();
            tags.push(json!({"tag": "user", "request_header": {"name": "end-user", "default_value": "anonymous"}}));
            tracing["custom_tags"] = Value::Array(tags);
            // The retries wasmeshctl writes on the gateway's route (Istio's default).
            fn retry_policy(v: &Value) -> Option<Value> {
                match v {
                    Value::Object(m) => m.get("retry_policy").cloned().or_else(|| m.values().find_map(retry_policy)),
                    Value::Array(a) => a.iter().find_map(retry_policy),
                    _ => None,
                }
            }
            let retries = retry_policy(&boot["static_resources"]["listeners"]).expect("a retry policy");
            let down = json!({"cluster": find("outbound|8000||down.default.svc.cluster.local"), "timeout": "0s",
                "retry_policy": retries});
            let hosts = json!([{"name": "gw", "domains": ["*"], "routes": [
                decorated(json!({"prefix": "/down"}), down, "down.default.svc.cluster.local:8000/down*"),
                decorated(json!({"prefix": "/"}),
                json!({"cluster": find(&format!("outbound|8000||{HTTPBIN}")), "timeout": "0s"}), &op2)]}]);
            let listeners = boot["static_resources"]["listeners"].as_array_mut().unwrap();
            listeners.push(native_listener("native-gw", native, "OUTBOUND", hosts, tracing));
        })
        .start();
    let _httpbin = App::new("httpbin", "v1").start_on(m.mapped_port(19393)).unwrap();
    let wasm = m.gateway_port("istio-system/istio-ingressgateway", 80);

    let parent = "b7ad6b7169203331";
    let tid = |wasm: bool| format!("ab{}", if wasm { "1" } else { "0" }.repeat(30));
    // What each upstream received: (traceparent span id, tracestate, x-b3-parentspanid).
    let mut sent = Vec::new();
    for (w, port) in [(false, native), (true, wasm)] {
        let caller = format!("00-{}-{parent}-01", tid(w));
        let hs = [("traceparent", caller.as_str()), ("tracestate", "congo=t61rcWkgMzE"), ("end-user", "jason")];
        let r = get(port, "web.example.com", "/headers?x=1", &hs);
        assert_eq!(r.status, 200, "via {port}: {}", r.text());
        let got = r.json()["headers"].clone();
        let (trace, span, flags) = tp(h(&got, "traceparent"));
        assert_eq!((trace.as_str(), flags.as_str()), (tid(w).as_str(), "01"), "{got}");
        assert_eq!(h(&got, "tracestate"), "congo=t61rcWkgMzE");
        assert_eq!(h(&got, "x-envoy-decorator-operation"), op, "the route's operation goes upstream: {got}");
        sent.push((span, h(&got, "x-b3-parentspanid").to_string()));
    }

    let spans = collector.wait_for(Duration::from_secs(10), |sp| {
        [tid(false), tid(true)].iter().all(|t| sp.iter().filter(|x| &x.trace_id == t).count() >= 2)
    });
    assert_eq!(collector.errors(), Vec::<String>::new());
    let dump = spans.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    // (server, client) of one trace, checked as a chain: caller → SERVER → CLIENT → upstream.
    let pair = |w: bool| -> (&Received, &Received) {
        let of: Vec<&Received> = spans.iter().filter(|x| x.trace_id == tid(w)).collect();
        assert_eq!(of.len(), 2, "two spans for trace {}:\n{dump}", tid(w));
        let server = of.iter().find(|x| x.kind == "SERVER").unwrap_or_else(|| panic!("no SERVER span:\n{dump}"));
        let client = of.iter().find(|x| x.kind == "CLIENT").unwrap_or_else(|| panic!("no CLIENT span:\n{dump}"));
        assert_eq!(server.parent_span_id, parent, "{dump}");
        assert_eq!(client.parent_span_id, server.span_id, "{dump}");
        assert_eq!(client.span_id, sent[usize::from(w)].0, "the upstream got the CLIENT span's context:\n{dump}");
        assert!(client.start_unix_nanos >= server.start_unix_nanos, "{client:?}\n{server:?}");
        assert!(client.end_unix_nanos <= server.end_unix_nanos, "{client:?}\n{server:?}");
        (server, client)
    };
    let (n_server, n_client) = pair(false);
    let (w_server, w_client) = pair(true);
    assert_eq!(sent[1].1, w_server.span_id, "wasmesh's B3 parent is its SERVER span");
    let compare = |what: &str, mine: &Received, theirs: &Received| {
        eprintln!("{what}:\n  wasmesh: {mine:?}\n  Envoy:   {theirs:?}");
        assert_eq!(mine.service, theirs.service, "{what}");
        assert_eq!(mine.name, theirs.name, "{what}");
        assert_eq!(mine.kind, theirs.kind, "{what}");
        assert_eq!(mine.status, theirs.status, "{what}");
        assert_eq!(mine.trace_state, theirs.trace_state, "{what}");
        let per_request = ["guid:x-request-id", "response_size"];
        // `response_flags` too, in the order Envoy set them (`URX,UF`).
        let mut diffs = Vec::new();
        for (k, v) in &theirs.attributes {
            let m = mine.attr(k);
            if per_request.contains(&k.as_str()) {
                if m.is_none() {
                    diffs.push(format!("{k}: missing (Envoy: {v:?})"));
                }
            } else if m != Some(v.as_str()) {
                diffs.push(format!("{k}: wasmesh {m:?}, Envoy {v:?}"));
            }
        }
        for (k, v) in &mine.attributes {
            if theirs.attr(k).is_none() {
                diffs.push(format!("{k}: wasmesh {v:?}, Envoy has none"));
            }
        }
        assert!(diffs.is_empty(), "{what}: fields differ from Envoy's OpenTelemetry tracer:\n{}", diffs.join("\n"));
    };
    compare("downstream span", w_server, n_server);
    compare("upstream span", w_client, n_client);
    assert_eq!(n_server.name, op, "Envoy names the downstream span by the route's decorator");
    assert_eq!(n_client.name, format!("router outbound|8000||{HTTPBIN} egress"));

    // Connection refused on every attempt: Envoy's last upstream span against wasmesh's one.
    let tid = |wasm: bool| format!("cd{}", if wasm { "1" } else { "0" }.repeat(30));
    for (w, port) in [(false, native), (true, wasm)] {
        let caller = format!("00-{}-{parent}-01", tid(w));
        let r = get(port, "web.example.com", "/down", &[("traceparent", caller.as_str()), ("end-user", "jason")]);
        assert_eq!(r.status, 503, "via {port}: {}", r.text());
    }
    let spans = collector.wait_for(Duration::from_secs(10), |sp| {
        [tid(false), tid(true)].iter().all(|t| sp.iter().filter(|x| &x.trace_id == t).count() >= 2)
    });
    let dump = spans.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    let of = |w: bool| -> Vec<&Received> { spans.iter().filter(|x| x.trace_id == tid(w)).collect() };
    let (native_spans, mine) = (of(false), of(true));
    let server = |v: &[&Received]| -> Received { (*v.iter().find(|x| x.kind == "SERVER").unwrap()).clone() };
    let (n_server, w_server) = (server(&native_spans), server(&mine));
    let attempts = native_spans.iter().filter(|x| x.kind == "CLIENT").count();
    assert!(attempts > 1, "Envoy retried (an upstream span per attempt):\n{dump}");
    let last = native_spans
        .iter()
        .filter(|x| x.kind == "CLIENT")
        .max_by_key(|x| x.attr("retry.count").and_then(|c| c.parse::<u32>().ok()).unwrap_or(0))
        .unwrap();
    assert_eq!(last.attr("retry.count"), Some((attempts - 1).to_string().as_str()), "{dump}");
    assert!(native_spans.iter().filter(|x| x.kind == "CLIENT").all(|x| x.parent_span_id == n_server.span_id));
    let clients: Vec<&&Received> = mine.iter().filter(|x| x.kind == "CLIENT").collect();
    assert_eq!(clients.len(), 1, "wasmesh reports one upstream span:\n{dump}");
    assert_eq!(clients[0].parent_span_id, w_server.span_id);
    compare("downstream span, upstream down", &w_server, &n_server);
    compare("last upstream span, upstream down", clients[0], last);
}

/// An upstream's `x-envoy-decorator-operation` response header on the egress side, against
/// Envoy's own tracer on a twin `OUTBOUND` listener (istiod's route decorator, same upstream, same
/// requests): it renames the client span and is removed before the client (Envoy's
/// `encodeHeaders` for egress); an empty one is removed and renames nothing. The upstream app
/// sets it because the request asks it to ([`wasmesh_e2e::app::RESPONSE_HEADER`]); a second
/// header it is asked for reaches the client on both sides (only the decorator is removed).
#[test]
fn upstream_decorator_response_header_renames_the_egress_span_as_envoys_tracer() {
    let collector = Collector::start();
    let cport = collector.port;
    let mesh = otel_mesh(cport);
    let native_out = free_port();
    let route_op = format!("{HTTPBIN}:8000/*");
    let op = route_op.clone();
    let m = wasmesh_e2e::Mesh::builder()
        .yaml(DECORATED)
        .mesh_config(mesh)
        .concurrency(1)
        .sidecar("default/echo-v1", App::new("echo", "v1"))
        .edit_bootstraps(move |name, boot| {
            if !name.contains("echo-v1") {
                return;
            }
            let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
            let has = |want: &str| clusters.iter().any(|c| c["name"] == want);
            assert!(has("wasmesh-tracing|otel"), "the tracing collector's cluster");
            let default = format!("outbound|8000||{HTTPBIN}");
            assert!(has(&default), "no cluster {default}");
            // istiod's catch-all route of the VirtualService, with its decorator.
            let hosts = json!([{"name": "httpbin", "domains": ["*"], "routes": [
                decorated(json!({"prefix": "/"}), json!({"cluster": default, "timeout": "0s"}), &op)]}]);
            let tracing = native_tracing("wasmesh-tracing|otel", cport);
            let listeners = boot["static_resources"]["listeners"].as_array_mut().unwrap();
            listeners.push(native_listener("native-out", native_out, "OUTBOUND", hosts, tracing));
        })
        .start();
    let _httpbin = App::new("httpbin", "v1").start_on(m.mapped_port(19392)).unwrap();
    let wasm_out = m.outbound_port("default/echo-v1");
    let ask = wasmesh_e2e::app::RESPONSE_HEADER;

    // (the upstream's header value, the span's name)
    let cases = [("upstream-op", "upstream-op".to_string()), ("", route_op.clone())];
    let tid = |i: usize, wasm: bool| format!("{:02x}{}", 0xc0 + i, if wasm { "5" } else { "4" }.repeat(30));
    let mut want = Vec::new();
    for (i, (value, name)) in cases.iter().enumerate() {
        for (wasm, port) in [(false, native_out), (true, wasm_out)] {
            let side = if wasm { "wasmesh" } else { "Envoy" };
            let tp = format!("00-{}-b7ad6b7169203331-01", tid(i, wasm));
            let decorator = format!("x-envoy-decorator-operation={value}");
            let hs = [("traceparent", tp.as_str()), (ask, decorator.as_str()), (ask, "x-kept=yes")];
            let r = get(port, "httpbin:8000", "/other", &hs);
            assert_eq!(r.status, 200, "{side}: {}", r.text());
            let got = r.json();
            assert_eq!(got["service"], "httpbin", "{side}: {got}");
            assert_eq!(
                h(&got["headers"], "x-envoy-decorator-operation"),
                route_op,
                "{side}: the route's goes upstream"
            );
            assert_eq!(r.header("x-envoy-decorator-operation"), None, "{side} ({value:?}): removed before the client");
            assert_eq!(r.header("x-kept"), Some("yes"), "{side}: the app's other response header arrives");
            want.push((tid(i, wasm), side, name.clone()));
        }
    }
    let spans = collector
        .wait_for(Duration::from_secs(10), |sp| want.iter().all(|(t, _, _)| sp.iter().any(|x| &x.trace_id == t)));
    assert_eq!(collector.errors(), Vec::<String>::new());
    let dump = spans.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join("\n");
    for pair in want.chunks(2) {
        let of = |t: &str| -> &Received {
            let of: Vec<&Received> = spans.iter().filter(|x| x.trace_id == t).collect();
            assert_eq!(of.len(), 1, "one span for trace {t}:\n{dump}");
            of[0]
        };
        let (native, mine) = (of(&pair[0].0), of(&pair[1].0));
        eprintln!(
            "egress, upstream header: Envoy {:?} {}, wasmesh {:?} {}",
            native.name, native.kind, mine.name, mine.kind
        );
        assert_eq!(native.name, pair[0].2, "Envoy's span name:\n{dump}");
        assert_eq!(mine.name, native.name, "wasmesh's span name as Envoy's:\n{dump}");
        assert_eq!(mine.kind, native.kind);
    }
}
