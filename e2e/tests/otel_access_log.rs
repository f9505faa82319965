//! `envoyOtelAls`: wasmesh's OTLP access-log export against Envoy's own
//! `envoy.access_loggers.open_telemetry` configured as istiod configures it (gRPC to the collector,
//! `disable_builtin_labels`, body = the text format, attributes = the labels), in one Envoy.
//! Envoy's loggers sit on the same connection manager as wasmesh's phase, so both see the same
//! request: every record is compared whole (body, attributes, time, severity, ids, flags, the
//! resource and the scope) with zero differences. Traffic: 2xx, upstream 404 and 503, 404 no
//! route, 403 from wasmesh authz, 503 connect failure, HTTP/1.1 and HTTP/2; a second log with the
//! Telemetry filter `response.code >= 400`; a listener exporting to a dead collector (requests
//! not delayed, drops counted in `/stats/prometheus`). With a tracer: the records' `trace_id` and
//! `span_id` are the span's each side's tracer made (Envoy's OpenTelemetry tracer on a native
//! listener, wasmesh's tracing phase in the same chain as its access log on the twin), sampled or
//! not, present and absent alike.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/collector.rs"]
mod collector;

use collector::{Collector, GrpcLog, GrpcLogs};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmesh_accesslog::ISTIO_TEXT;
use wasmesh_controller::bootstrap::wasm_http_filter;
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::Direction;
use wasmesh_e2e::access_log as al;
use wasmesh_e2e::{free_port, App, Envoy};
use wasmesh_istio::{load_str, Resources, Workload};

const AUTHORITY: &str = "otel-collector.observability.svc.cluster.local";
/// The second log's body (a custom `logFormat.text`: istiod adds no newline to it).
const ERRORS_TEXT: &str = "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:METHOD)% %REQ(:PATH)% %UPSTREAM_CLUSTER%";

fn labels() -> BTreeMap<String, String> {
    [
        ("code", "%RESPONSE_CODE%"),
        ("ua", "%REQ(USER-AGENT)%"),
        ("mixed", "%REQ(:METHOD)% %REQ(x-missing)% %PROTOCOL%"),
        ("start", "%START_TIME%"),
        ("route", "%ROUTE_NAME%"),
        ("flags", "%RESPONSE_FLAGS%"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn grpc_cluster(name: &str, port: u16) -> Value {
    al::grpc_cluster(name, port)
}

fn envoy_otel_logger(cluster: &str, body: &str, labels: &BTreeMap<String, String>, filter: Option<&str>) -> Value {
    al::otel_logger(cluster, AUTHORITY, body, labels, filter)
}

/// wasmesh's authz filter (as wasmeshctl writes it) before the access log: `x-deny` gets its 403.
fn authz_filters(port: u16) -> Vec<Value> {
    let policy = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-header, namespace: foo}
spec:
  action: DENY
  rules:
  - when:
    - key: request.headers[x-deny]
      values: ["yes"]
"#;
    let res = Resources { items: load_str(policy, "otel-access-log-test.yaml").unwrap() };
    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.service_account = "httpbin".into();
    let c = wasmesh_e2e::authz::plugin_filters(&wl, &res, &MeshConfig::default(), Direction::Inbound, port).unwrap();
    c.http_filters.iter().map(|f| wasm_http_filter(f, &wasmesh_e2e::paths::wasm_dir())).collect()
}

fn routes() -> Value {
    json!({"name": "local_route", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"name": "app", "match": {"prefix": "/status"}, "route": {"cluster": "app"}},
    ]}]})
}

fn curl(args: &[&str]) {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "--max-time", "10"]).args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
}

/// The varied traffic; returns (requests, of which answered >= 400).
fn traffic(port: u16) -> (usize, usize) {
    let base = format!("http://127.0.0.1:{port}");
    let cases: Vec<(Vec<String>, bool)> = vec![
        (vec!["-A".into(), "curl/otel \"q\"".into(), format!("{base}/status/200")], false),
        (vec![format!("{base}/status/404?q=1")], true),
        (vec!["-H".into(), "x-forwarded-for: 10.1.2.3".into(), format!("{base}/status/503")], true),
        (vec![format!("{base}/nope")], true),
        (vec![format!("{base}/dead")], true),
        (vec!["-H".into(), "x-deny: yes".into(), format!("{base}/status/200")], true),
        (vec!["-X".into(), "POST".into(), "-d".into(), "abc".into(), format!("{base}/status/201")], false),
    ];
    let mut n = (0, 0);
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        for (c, err) in &cases {
            let mut args = vec![proto];
            args.extend(c.iter().map(String::as_str));
            curl(&args);
            n.0 += 1;
            n.1 += usize::from(*err);
        }
    }
    n
}

/// Records in a stable order (request start time, then body).
fn sorted(mut v: Vec<GrpcLog>) -> Vec<GrpcLog> {
    v.sort_by(|a, b| {
        (a.record.time_unix_nano, format!("{:?}", a.record.body))
            .cmp(&(b.record.time_unix_nano, format!("{:?}", b.record.body)))
    });
    v
}

fn compare(name: &str, envoy: &[GrpcLog], wasmesh: &[GrpcLog]) -> Vec<String> {
    let mut d = Vec::new();
    if envoy.len() != wasmesh.len() {
        d.push(format!("{name}: Envoy sent {} records, wasmesh {}", envoy.len(), wasmesh.len()));
    }
    for (a, b) in envoy.iter().zip(wasmesh) {
        if a.record != b.record {
            d.push(format!("{name}: record\nenvoy:   {:?}\nwasmesh: {:?}", a.record, b.record));
        }
        if (&a.resource, &a.scope, &a.scope_schema_url, &a.resource_schema_url)
            != (&b.resource, &b.scope, &b.scope_schema_url, &b.resource_schema_url)
        {
            d.push(format!(
                "{name}: resource/scope\nenvoy:   {:?} {:?} {:?} {:?}\nwasmesh: {:?} {:?} {:?} {:?}",
                a.resource,
                a.scope,
                a.scope_schema_url,
                a.resource_schema_url,
                b.resource,
                b.scope,
                b.scope_schema_url,
                b.resource_schema_url
            ));
        }
    }
    d
}

fn body(l: &GrpcLog) -> String {
    match l.record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[test]
fn otel_access_log_records_equal_envoys_open_telemetry_logger() {
    let app = App::new("app", "v1").start();
    let dead_port = free_port();
    let dead_collector_port = free_port();
    let (envoy_all, envoy_err, wasmesh_all, wasmesh_err) =
        (GrpcLogs::start(), GrpcLogs::start(), GrpcLogs::start(), GrpcLogs::start());
    let labels = labels();
    let port = free_port();
    let quiet_port = free_port();

    let phase = json!({"logs": [
        {"filterStateKey": "wasmesh.access_log.otel", "otel": {"cluster": "c_wasmesh_all", "authority": AUTHORITY, "attributes": labels}},
        {"filterStateKey": "wasmesh.access_log.otel_errors", "text": ERRORS_TEXT, "filter": "response.code >= 400",
         "otel": {"cluster": "c_wasmesh_err", "authority": AUTHORITY}},
    ]});
    let loggers = vec![
        envoy_otel_logger("c_envoy_all", ISTIO_TEXT, &labels, None),
        envoy_otel_logger("c_envoy_err", ERRORS_TEXT, &BTreeMap::new(), Some("response.code >= 400")),
    ];
    let compared = al::listener("otel", port, authz_filters(port), &routes(), loggers, &phase, None);
    // A dead collector: a queue of one, so drops show at once.
    let dead_phase = json!({"logs": [{"filterStateKey": "wasmesh.access_log.dead",
        "otel": {"cluster": "c_dead_collector", "authority": AUTHORITY, "maxQueue": 1}}]});
    let quiet = al::listener("quiet", quiet_port, vec![], &routes(), vec![], &dead_phase, None);
    let boot = al::bootstrap(
        vec![compared, quiet],
        vec![
            al::cluster("app", app.port),
            al::cluster("dead", dead_port),
            grpc_cluster("c_envoy_all", envoy_all.port),
            grpc_cluster("c_envoy_err", envoy_err.port),
            grpc_cluster("c_wasmesh_all", wasmesh_all.port),
            grpc_cluster("c_wasmesh_err", wasmesh_err.port),
            grpc_cluster("c_dead_collector", dead_collector_port),
        ],
    );
    let envoy = Envoy::start("otel-access-log", &boot);

    // The dead collector first: 20 requests, none delayed.
    let start = Instant::now();
    for _ in 0..20 {
        let t = Instant::now();
        curl(&[&format!("http://127.0.0.1:{quiet_port}/status/200")]);
        assert!(t.elapsed() < Duration::from_secs(1), "a request took {:?} with a dead collector", t.elapsed());
    }
    let dead_elapsed = start.elapsed();

    let (n, errors) = traffic(port);
    let limit = Duration::from_secs(8);
    let ea = sorted(envoy_all.wait_for(n, limit));
    let ee = sorted(envoy_err.wait_for(errors, limit));
    let wa = sorted(wasmesh_all.wait_for(n, limit));
    let we = sorted(wasmesh_err.wait_for(errors, limit));
    assert_eq!((ea.len(), ee.len()), (n, errors), "Envoy's logger: records for {n} requests ({errors} failed)");
    // The traffic did what it is for: every kind of answer in Envoy's own records.
    let bodies = ea.iter().map(body).collect::<Vec<_>>().join("");
    for want in [
        " 200 - via_upstream",
        " 404 NR route_not_found",
        " 503 UF ",
        " 403 - ",
        " 404 - via_upstream",
        "HTTP/2",
        "HTTP/1.1",
    ] {
        assert!(bodies.contains(want), "no {want:?} in Envoy's records:\n{bodies}");
    }
    let mut differences = compare("all", &ea, &wa);
    differences.extend(compare("errors (filter response.code >= 400)", &ee, &we));
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));

    // Dead collector: drops counted in a metric, the requests were fast.
    let prom = || envoy.admin("/stats/prometheus");
    let value = |text: &str, name: &str| -> u64 {
        text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
    };
    // The counters are handed to Envoy on the root's tick after each call's answer.
    let t = Instant::now();
    while (value(&prom(), "wasmesh_access_log_records_dropped") == 0
        || value(&prom(), "wasmesh_access_log_records_exported") < (n + errors) as u64)
        && t.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = prom();
    assert!(value(&text, "wasmesh_access_log_records_dropped") > 0, "no drops counted:\n{text}");
    assert!(value(&text, "wasmesh_access_log_records_exported") >= (n + errors) as u64, "{text}");
    assert!(dead_elapsed < Duration::from_secs(10), "20 requests took {dead_elapsed:?}");
    drop(envoy);
}

/// What `wasmeshctl envoy` writes for an `envoyOtelAls` provider named by a Telemetry with a
/// filter (one-pass layout): the collector cluster in the bootstrap, the failed requests exported
/// with Istio's default body and the labels as attributes.
#[test]
fn wasmeshctl_envoy_exports_telemetry_access_logs_to_an_otel_collector() {
    use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
    let app = App::new("httpbin", "v1").start();
    let collector = GrpcLogs::start();
    let port = free_port();
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: httpbin}}, serviceAccount: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 8000, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: logs, namespace: default}}
spec:
  accessLogging:
  - providers: [{{name: otel}}]
    filter: {{expression: "response.code >= 400"}}
"#
    );
    let mesh: MeshConfig = MeshConfig::load(
        &format!(
            "extensionProviders:\n- name: otel\n  envoyOtelAls:\n    service: 127.0.0.1\n    port: {}\n    logFormat: {{labels: {{code: '%RESPONSE_CODE%', path: '%REQ(:PATH)%'}}}}\n",
            collector.port
        ),
        "mesh.yaml",
    )
    .unwrap();
    let res = Resources { items: load_str(&yaml, "otel-access-log.yaml").unwrap() };
    let (wl, _) = bootstrap::workload_from_entry(&res, "default/httpbin-v1").unwrap();
    let spec = ProxySpec {
        workload: wl,
        inbound: vec![Inbound { port, app_port: app.port }],
        outbound_port: Some(free_port()),
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: free_port(),
        wasm_dir: wasmesh_e2e::paths::wasm_dir(),
        mesh,
        certs_dir: None,
        envoy_access_log: None,
        credentials_dir: None,
    };
    let boot = bootstrap::build(&spec, &res).unwrap_or_else(|e| panic!("{e:?}"));
    let text = boot.to_string();
    assert!(text.contains("wasmesh-accesslog|otel") && text.contains("wasmesh.chain"), "{text}");
    let envoy = Envoy::start("otel-access-log-ctl", &boot);
    for code in [200, 404, 503, 201] {
        let r = wasmesh_e2e::http::get(port, "httpbin.default.svc.cluster.local", &format!("/status/{code}"), &[]);
        assert_eq!(r.status, code);
    }
    let logs = sorted(collector.wait_for(2, Duration::from_secs(8)));
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(collector.logs().len(), 2, "only the failed requests: {logs:#?}");
    for (l, code) in logs.iter().zip([404, 503]) {
        let b = body(l);
        assert!(b.contains(&format!("\"GET /status/{code} HTTP/1.1\" {code} - via_upstream")), "{b}");
        assert!(b.contains("inbound|") && b.ends_with('\n'), "Istio's default format: {b:?}");
        let attrs: Vec<(String, String)> = l
            .record
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), format!("{:?}", kv.value.as_ref().and_then(|v| v.value.as_ref()))))
            .collect();
        assert_eq!(attrs.len(), 2, "{attrs:?}");
        assert!(attrs[0].0 == "code" && attrs[0].1.contains(&format!("\"{code}\"")), "{attrs:?}");
        assert!(attrs[1].0 == "path" && attrs[1].1.contains(&format!("/status/{code}")), "{attrs:?}");
    }
    drop(envoy);
}

/// A W3C parent, sampled; and one not sampled (the span is made, not exported).
const SAMPLED_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const UNSAMPLED_PARENT: &str = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-00";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The OpenTelemetry tracer as istiod writes it (100 % sampling), exporting to `cluster`.
fn native_tracing(cluster: &str, port: u16) -> Value {
    json!({
        "random_sampling": {"value": 100},
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "httpbin.default",
            "http_service": {"http_uri": {"uri": format!("http://127.0.0.1:{port}/v1/traces"),
                "cluster": cluster, "timeout": "2s"}}
        }}
    })
}

/// A listener: `filters` before the router, `tracing` on the connection manager, `loggers`.
fn traced_listener(name: &str, port: u16, filters: Vec<Value>, tracing: Option<Value>, loggers: Vec<Value>) -> Value {
    let mut filters = filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": routes(),
        "http_filters": filters,
        "access_log": loggers,
    });
    if let Some(t) = tracing {
        hcm["tracing"] = t;
    }
    json!({"name": name, "traffic_direction": "INBOUND",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]})
}

/// wasmesh's one-pass filter running `phases` (root id, configuration).
fn chain(phases: &[(&str, Value)]) -> Value {
    let phases: Vec<Value> = phases.iter().map(|(id, c)| json!({"rootId": id, "configuration": c})).collect();
    json!({"name": "wasmesh.chain", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "wasmesh.chain",
            "root_id": "wasmesh.chain",
            "vm_config": {"vm_id": "wasmesh", "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": wasmesh_e2e::paths::wasm("wasmesh").display().to_string()}}},
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": json!({"phases": phases}).to_string()},
            "failure_policy": "FAIL_OPEN",
        }
    }})
}

/// Checks one side's records against the spans its tracer exported; returns, per request, whether
/// the record has a trace id, a span id, and its flags (to compare with the other side's).
fn check_ids(side: &str, records: &[GrpcLog], spans: &[collector::Received]) -> Vec<(bool, bool, u32)> {
    records
        .iter()
        .map(|l| {
            let r = &l.record;
            let (trace, span) = (hex(&r.trace_id), hex(&r.span_id));
            let b = body(l);
            if b.contains("unsampled") {
                assert_eq!(trace, UNSAMPLED_PARENT[3..35], "{side}: not sampled: the caller's trace id: {b}");
                assert_eq!(r.span_id.len(), 8, "{side}: not sampled: the span's id all the same: {b}");
                assert!(!spans.iter().any(|s| s.span_id == span), "{side}: a span not sampled was exported: {b}");
            } else {
                let s = spans.iter().find(|s| s.span_id == span);
                let s = s.unwrap_or_else(|| panic!("{side}: no exported span has the record's span id {span:?}: {b}"));
                assert_eq!(s.trace_id, trace, "{side}: the record's trace id is not its span's: {b}");
                if b.contains("sampled-parent") {
                    assert_eq!(trace, SAMPLED_PARENT[3..35], "{side}: {b}");
                    assert_eq!(s.parent_span_id, SAMPLED_PARENT[36..52], "{side}: {b}");
                }
            }
            (!r.trace_id.is_empty(), !r.span_id.is_empty(), r.flags)
        })
        .collect()
}

#[test]
fn otel_access_log_records_carry_the_span_ids_as_envoys() {
    let app = App::new("app", "v1").start();
    let traces = Collector::start();
    let (envoy_logs, wasmesh_logs) = (GrpcLogs::start(), GrpcLogs::start());
    let (native, twin) = (free_port(), free_port());
    let body_text = "%REQ(:PATH)% %RESPONSE_CODE%";
    let labels = BTreeMap::new();
    let tracing = json!({"provider": {"kind": "opentelemetry", "cluster": "traces", "authority": "collector:4318"},
        "randomSamplingPercentage": 100, "flushPeriodMs": 200});
    let access_log = json!({"logs": [{"filterStateKey": "wasmesh.access_log.otel", "text": body_text,
        "otel": {"cluster": "c_wasmesh", "authority": AUTHORITY}}]});
    let boot = json!({
        "node": {"id": "sidecar~127.0.0.1~httpbin-v1.default~default.svc.cluster.local", "cluster": "httpbin.default",
            "metadata": {"NAMESPACE": "default", "WORKLOAD_NAME": "httpbin-v1", "CLUSTER_ID": "Kubernetes",
                "LABELS": {"app": "httpbin", "version": "v1"}}},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {
            "listeners": [
                traced_listener("native", native, vec![], Some(native_tracing("traces", traces.port)),
                    vec![envoy_otel_logger("c_envoy", body_text, &labels, None)]),
                traced_listener("twin", twin,
                    vec![chain(&[("wasmesh.tracing", tracing), ("wasmesh.access_log", access_log)])], None, vec![]),
            ],
            "clusters": [
                al::cluster("app", app.port),
                al::cluster("dead", free_port()),
                al::cluster("traces", traces.port),
                grpc_cluster("c_envoy", envoy_logs.port),
                grpc_cluster("c_wasmesh", wasmesh_logs.port),
            ],
        }
    });
    let envoy = Envoy::start("otel-access-log-trace-ids", &boot);
    // Sampled (100 %), a sampled caller, a caller not sampled, a local 404 (no route), a 503.
    let cases: [(&str, Vec<(&str, &str)>); 5] = [
        ("/status/200?new", vec![]),
        ("/status/200?sampled-parent", vec![("traceparent", SAMPLED_PARENT)]),
        ("/status/200?unsampled", vec![("traceparent", UNSAMPLED_PARENT)]),
        ("/nope", vec![]),
        ("/dead", vec![]),
    ];
    for port in [native, twin] {
        for (path, headers) in &cases {
            wasmesh_e2e::http::get(port, "httpbin.default:8000", path, headers);
        }
    }
    let limit = Duration::from_secs(10);
    let (e, w) = (sorted(envoy_logs.wait_for(5, limit)), sorted(wasmesh_logs.wait_for(5, limit)));
    assert_eq!((e.len(), w.len()), (5, 5), "records: Envoy's {e:#?}\nwasmesh's {w:#?}");
    // Envoy's tracer flushes every 5 s (or 5 spans): 4 sampled spans per side.
    let wanted: Vec<String> =
        e.iter().chain(&w).filter(|l| !body(l).contains("unsampled")).map(|l| hex(&l.record.span_id)).collect();
    let spans =
        traces.wait_for(Duration::from_secs(12), |s| wanted.iter().all(|id| s.iter().any(|x| &x.span_id == id)));
    assert!(traces.errors().is_empty(), "{:?}", traces.errors());
    let envoy_ids = check_ids("Envoy", &e, &spans);
    let wasmesh_ids = check_ids("wasmesh", &w, &spans);
    assert_eq!(envoy_ids, wasmesh_ids, "which records carry ids (trace, span, flags), Envoy's then wasmesh's");
    assert!(envoy_ids.iter().all(|(t, s, f)| *t && *s && *f == 0), "{envoy_ids:?}");
    eprintln!(
        "trace ids: {} records per side, ids present in all, equal to the exported spans' ({} spans)",
        e.len(),
        spans.len()
    );
    drop(envoy);
}
