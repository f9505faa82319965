//! Istio's standard metrics from the stats filter in real Envoy, scraped by a real Prometheus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;
use wasmesh_controller::plugins::Direction;
use wasmesh_e2e::envoy::combine_bootstraps;
use wasmesh_e2e::http::{get, request};
use wasmesh_e2e::stats::{self as st, Prometheus};
use wasmesh_e2e::{App, Envoy, Mesh};
use wasmesh_istio::{load_str, Resources, Workload};

const WAIT: Duration = Duration::from_secs(40);

fn targets(mesh: &Mesh) -> Vec<(String, u16)> {
    mesh.envoys().map(|(name, e)| (name.replace('/', "_"), e.admin_port)).collect()
}

fn start_prometheus(mesh: &Mesh) -> Prometheus {
    let t = targets(mesh);
    let refs: Vec<(&str, u16)> = t.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let p = Prometheus::start(&refs);
    p.wait_for("count(up == 1)", refs.len() as f64, WAIT);
    p
}

fn label<'a>(series: &'a (serde_json::Map<String, serde_json::Value>, f64), name: &str) -> &'a str {
    series.0.get(name).and_then(|v| v.as_str()).unwrap_or("<absent>")
}

/// The bookinfo mesh through its ingress gateway: every hop is reported by both sidecars with
/// both sides' workload metadata, and Prometheus sees Istio's labels.
#[test]
fn bookinfo_metrics_scraped_by_prometheus() {
    let mesh = wasmesh_e2e::bookinfo::workloads(
        Mesh::builder().yaml(&st::bookinfo_yaml()).gateway("istio-system/istio-ingressgateway", &[80]),
    )
    .start();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);

    // 6 requests as jason (→ reviews v2), 4 anonymous (→ v3).
    for i in 0..10 {
        let headers: Vec<(&str, &str)> = if i < 6 { vec![("end-user", "jason")] } else { vec![] };
        let r = get(gw, "bookinfo.example.com", "/productpage", &headers);
        assert_eq!(r.status, 200, "{}", r.text());
        // The exchange headers never reach a client outside the mesh…
        assert!(
            r.header("x-envoy-peer-metadata").is_none() && r.header("x-envoy-peer-metadata-id").is_none(),
            "{:?}",
            r.headers
        );
        // …nor an application.
        let page = r.json();
        let mut apps = vec![page.clone()];
        for c in page["calls"].as_array().unwrap() {
            apps.push(c["body"].clone());
            for cc in c["body"]["calls"].as_array().cloned().unwrap_or_default() {
                apps.push(cc["body"].clone());
            }
        }
        assert_eq!(apps.len(), 4, "productpage, details, reviews, ratings: {page}");
        for a in &apps {
            let h = a["headers"].as_object().unwrap();
            assert!(
                !h.contains_key("x-envoy-peer-metadata") && !h.contains_key("x-envoy-peer-metadata-id"),
                "{} got {:?}",
                a["service"],
                h.keys()
            );
        }
    }
    // A 404 at the gateway (no route) is counted too.
    assert_eq!(get(gw, "bookinfo.example.com", "/nothing-here", &[]).status, 404);

    // Label order on the wire is Istio's.
    let gw_series = st::scrape(mesh.envoy("default/reviews-v2"), "istio_requests_total");
    let text = mesh.envoy("default/reviews-v2").admin("/stats/prometheus");
    let line =
        text.lines().find(|l| l.starts_with("istio_requests_total{")).expect("istio_requests_total in reviews-v2");
    let names: Vec<&str> =
        line.split('{').nth(1).unwrap().split("\",").map(|kv| kv.split('=').next().unwrap()).collect();
    assert_eq!(names[..4], ["reporter", "source_workload", "source_canonical_service", "source_canonical_revision"]);
    assert_eq!(names.last().map(|n| n.trim_start_matches(',')), Some("connection_security_policy"));
    assert_eq!(names.len(), 25, "{line}");
    assert!(!gw_series.is_empty());

    let prom = start_prometheus(&mesh);
    // Server side (reporter=destination) knows its caller from metadata exchange.
    prom.wait_for(
        r#"sum(istio_requests_total{reporter="destination", destination_version="v2", response_code="200"})"#,
        6.0,
        WAIT,
    );
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", destination_workload="reviews-v3", source_workload="productpage-v1", source_app="productpage", source_version="v1", source_canonical_service="productpage", destination_service="reviews.default.svc.cluster.local"})"#, 4.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", destination_app="ratings", source_workload=~"reviews-v2|reviews-v3", destination_service_name="ratings"})"#, 10.0, WAIT);
    // Client side (reporter=source) knows the callee from the response's metadata.
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", source_workload="productpage-v1", destination_workload="reviews-v2", destination_version="v2", destination_canonical_revision="v2", destination_service="reviews.default.svc.cluster.local", destination_service_namespace="default", response_code="200"})"#, 6.0, WAIT);
    // The gateway reports as a client; destination_service comes from the cluster, never the Host.
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", source_workload="istio-ingressgateway", source_workload_namespace="istio-system", destination_workload="productpage-v1", destination_service="productpage.default.svc.cluster.local", request_protocol="http"})"#, 10.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", source_workload="istio-ingressgateway", response_code="404", destination_service="unknown", destination_workload="unknown", response_flags="NR"})"#, 1.0, WAIT);
    // Plain text between sidecars: Istio's `none` on the server, `unknown` on the client.
    assert_eq!(
        prom.query(r#"istio_requests_total{reporter="destination", connection_security_policy!="none"}"#)
            .unwrap()
            .len(),
        0
    );
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", destination_workload="details-v1", connection_security_policy="none", source_principal="unknown", grpc_response_status=""})"#, 10.0, WAIT);
    // Histograms (Envoy flushes them on its stats flush interval).
    prom.wait_for(
        r#"sum(istio_request_duration_milliseconds_count{reporter="destination", destination_workload="reviews-v2"})"#,
        6.0,
        WAIT,
    );
    prom.wait_for(r#"sum(istio_request_bytes_count{reporter="source", destination_workload="reviews-v3"})"#, 4.0, WAIT);
    prom.wait_for(
        r#"sum(istio_response_bytes_count{reporter="destination", destination_workload="productpage-v1"})"#,
        10.0,
        WAIT,
    );
    let p50 = prom.value(r#"histogram_quantile(0.5, sum(istio_request_duration_milliseconds_bucket{reporter="source", source_workload="istio-ingressgateway"}) by (le))"#);
    assert!(p50.is_some_and(|v| v.is_finite() && v > 0.0), "P50 from the buckets: {p50:?}");
    let bytes = prom
        .value(r#"sum(istio_response_bytes_sum{reporter="destination", destination_workload="productpage-v1"})"#)
        .unwrap_or(0.0);
    assert!(bytes > 10.0 * 200.0, "productpage pages are larger than 200 bytes: {bytes}");

    // The terminal dashboard, from the Envoys' admin endpoints and from Prometheus.
    dashboard_shows_the_mesh(&mesh, &prom, gw);

    // Every series of every sidecar carries all 25 labels (Prometheus drops empty ones).
    let all = prom.query(r#"istio_requests_total{reporter="destination"}"#).unwrap();
    for s in &all {
        for l in [
            "source_workload",
            "source_principal",
            "destination_principal",
            "destination_cluster",
            "response_flags",
            "request_protocol",
        ] {
            assert_ne!(label(s, l), "<absent>", "{l} in {:?}", s.0);
        }
    }
}

const SMALL_MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: dead, namespace: default}
spec:
  hosts: [dead.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 19999}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 19998}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19090}
  labels: {app: echo, version: v1}
  serviceAccount: echo
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec:
  address: 127.0.0.1
  labels: {app: sleep, version: v1}
  serviceAccount: sleep
"#;

const OVERRIDES: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        grpc_response_status: {operation: REMOVE}
        request_host: {value: request.host}
        user: {value: "request.headers['end-user']"}
        request_method: {value: request.method}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: echo, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_SIZE, mode: SERVER}
      disabled: true
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        source_app: {value: "'overridden'"}
"#;

/// Telemetry `metrics.overrides` (tag add, remove, override, metric disabled), response flags,
/// `unknown` for callers outside the mesh, and garbage metadata ignored.
#[test]
fn telemetry_overrides_flags_and_unknown_peers() {
    let mesh = Mesh::builder()
        .yaml(SMALL_MESH)
        .yaml(OVERRIDES)
        .client("default/sleep")
        .sidecar("default/echo-v1", App::new("echo", "v1"))
        .start();
    let out = mesh.outbound_port("default/sleep");
    for _ in 0..3 {
        let r = get(out, "echo:9080", "/get", &[("end-user", "alice")]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // A service outside the mesh: no workload metadata is sent to it.
    let _ext = App::new("ext", "v1").start_on(mesh.mapped_port(19998)).unwrap();
    let r = get(out, "ext.example.com", "/get", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json()["headers"].as_object().cloned().unwrap();
    assert!(
        !seen.contains_key("x-envoy-peer-metadata") && !seen.contains_key("x-envoy-peer-metadata-id"),
        "sent outside the mesh: {seen:?}"
    );
    // No route: the wasm router's 404 is reported as Envoy reports it, NR.
    assert_eq!(get(out, "nowhere.example.com", "/", &[]).status, 404);
    // The dead service: connection refused, Istio's default retries, 503 with URX,UF (Envoy's
    // set order: the router's retry verdict before the reset's flag; see access_log.rs).
    let r = get(out, "dead:9080", "/", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    // A caller outside the mesh, straight to echo's sidecar, with a forged and a garbage header.
    let inbound = mesh.inbound_port("default/echo-v1");
    let r = get(
        inbound,
        "echo:9080",
        "/direct",
        &[("x-envoy-peer-metadata", "!!not-base64!!"), ("x-envoy-peer-metadata-id", "forged")],
    );
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"].as_object().cloned().unwrap();
    assert!(!seen.contains_key("x-envoy-peer-metadata") && !seen.contains_key("x-envoy-peer-metadata-id"), "{seen:?}");
    let r = get(inbound, "echo:9080", "/direct", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-envoy-peer-metadata").is_none(), "no exchange with a caller that did not ask");

    let prom = start_prometheus(&mesh);
    // Added tags (values from the request), the removed tag is gone, the override applied.
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", request_host="echo:9080", user="alice", request_method="GET", destination_workload="echo-v1"})"#, 3.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", source_app="overridden", source_workload="sleep", user="alice", destination_service="echo.default.svc.cluster.local"})"#, 3.0, WAIT);
    let series = prom.query(r#"istio_requests_total{reporter="destination", source_workload="sleep"}"#).unwrap();
    assert!(!series.is_empty());
    for s in &series {
        assert_eq!(label(s, "grpc_response_status"), "<absent>");
        assert_eq!(label(s, "user"), "alice");
    }
    // An absent header evaluates to Istio's `unknown`.
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", source_workload="unknown", user="unknown", source_principal="unknown", source_app="overridden"})"#, 2.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", destination_service="ext.example.com", destination_service_name="ext", destination_workload="unknown", response_code="200"})"#, 1.0, WAIT);
    // No cluster, so no service: the catch-all, never the client's Host (a new Host per request
    // must not make a new series).
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", response_code="404", response_flags="NR", destination_service="unknown"})"#, 1.0, WAIT);
    assert_eq!(prom.value(r#"count(istio_requests_total{destination_service="nowhere.example.com"})"#), None);
    // The response flags of the refused connection, in the order Envoy's toShortString prints
    // them (Istio's stats plugin uses it).
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", destination_service="dead.default.svc.cluster.local", response_code="503", response_flags="URX,UF", destination_workload="unknown", destination_canonical_revision="latest"})"#, 1.0, WAIT);
    // REQUEST_SIZE is off on echo's server side only; the other histograms are on.
    prom.wait_for(
        r#"sum(istio_request_duration_milliseconds_count{reporter="destination", destination_workload="echo-v1"})"#,
        5.0,
        WAIT,
    );
    prom.wait_for(r#"sum(istio_request_bytes_count{reporter="source", destination_workload="echo-v1"})"#, 3.0, WAIT);
    assert_eq!(prom.value(r#"count(istio_request_bytes_count{reporter="destination"})"#), None);
    // Overrides apply to REQUEST_COUNT only: the duration histogram has no `user` tag.
    let d = prom.query(r#"istio_request_duration_milliseconds_count{reporter="destination"}"#).unwrap();
    assert!(d.iter().all(|s| label(s, "user") == "<absent>" && label(s, "source_app") != "overridden"), "{d:?}");
}

fn workload(name: &str, app: &str, version: &str) -> Workload {
    let mut w = Workload::new(name, "default");
    w.labels.insert("app".into(), app.into());
    w.labels.insert("version".into(), version.into());
    w
}

/// gRPC between two sidecars: `request_protocol="grpc"`, `grpc_response_status`, and the request
/// and response message counters. The client sidecars' outbound listeners and the server sidecars'
/// inbound listeners (each with its own workload and direction, as in a real sidecar) run in one
/// Envoy: every call still crosses a real HTTP/2 hop from a client listener to a server listener,
/// and Prometheus sums over the same series as it did over four Envoys. The message counts are
/// those of istiod's `grpc_stats` filter in each chain (its filter state, as Istio's stats filter
/// reads it); a third pair of listeners without that filter (server workload `echo-v2`) reports
/// its calls but adds no message, as Istio's stats filter does without it.
#[test]
fn grpc_status_and_message_counts() {
    let resources = Resources::default();
    let server = st::GrpcServer::start(3, 0);
    let failing = st::GrpcServer::start(1, 14);
    let (client_port, server_port, fail_port, fail_in) =
        (wasmesh_e2e::free_port(), wasmesh_e2e::free_port(), wasmesh_e2e::free_port(), wasmesh_e2e::free_port());
    let (bare_port, bare_in) = (wasmesh_e2e::free_port(), wasmesh_e2e::free_port());
    let client_filter =
        st::filter(&workload("grpc-client-v1", "grpc-client", "v1"), &resources, Direction::Outbound, false);
    let server_filter = st::filter(&workload("echo-v1", "echo", "v1"), &resources, Direction::Inbound, false);
    let bare_server_filter = st::filter(&workload("echo-v2", "echo", "v2"), &resources, Direction::Inbound, false);
    let without_grpc_stats = |mut boot: serde_json::Value| {
        let hcm = boot.pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config").unwrap();
        let filters = hcm["http_filters"].as_array_mut().unwrap();
        let before = filters.len();
        filters.retain(|f| f["name"] != "envoy.filters.http.grpc_stats");
        assert_eq!(filters.len(), before - 1, "the chain had istiod's grpc_stats filter");
        boot
    };
    // The failing pair's clusters are the same service under names of their own (a subset, another
    // inbound port): one Envoy cannot have two clusters of one name.
    let sidecars = Envoy::start(
        "grpc-sidecars",
        &combine_bootstraps(&[
            st::http2_proxy_bootstrap(
                &client_filter,
                &resources,
                client_port,
                server_port,
                "outbound|9090||echo.default.svc.cluster.local",
            ),
            st::http2_proxy_bootstrap(&server_filter, &resources, server_port, server.port, "inbound|9090||"),
            st::http2_proxy_bootstrap(
                &client_filter,
                &resources,
                fail_port,
                fail_in,
                "outbound|9090|failing|echo.default.svc.cluster.local",
            ),
            st::http2_proxy_bootstrap(&server_filter, &resources, fail_in, failing.port, "inbound|9091||"),
            without_grpc_stats(st::http2_proxy_bootstrap(
                &client_filter,
                &resources,
                bare_port,
                bare_in,
                "outbound|9090|bare|echo.default.svc.cluster.local",
            )),
            without_grpc_stats(st::http2_proxy_bootstrap(
                &bare_server_filter,
                &resources,
                bare_in,
                server.port,
                "inbound|9092||",
            )),
        ]),
    );

    let ok = st::grpc_calls(client_port, 2, 4, "echo.default.svc.cluster.local:9090");
    assert_eq!(ok, vec![Some("0".to_string()); 4]);
    let failed = st::grpc_calls(fail_port, 1, 2, "echo.default.svc.cluster.local:9090");
    assert_eq!(failed, vec![Some("14".to_string()); 2]);
    let bare = st::grpc_calls(bare_port, 2, 3, "echo.default.svc.cluster.local:9090");
    assert_eq!(bare, vec![Some("0".to_string()); 3]);

    let prom = Prometheus::start(&[("sidecars", sidecars.admin_port)]);
    prom.wait_for("count(up == 1)", 1.0, WAIT);
    for reporter in ["source", "destination"] {
        prom.wait_for(&format!(r#"sum(istio_requests_total{{reporter="{reporter}", request_protocol="grpc", grpc_response_status="0", response_code="200", source_workload="grpc-client-v1", destination_workload="echo-v1"}})"#), 4.0, WAIT);
        prom.wait_for(
            &format!(r#"sum(istio_request_messages_total{{reporter="{reporter}", grpc_response_status="0"}})"#),
            8.0,
            WAIT,
        );
        prom.wait_for(
            &format!(r#"sum(istio_response_messages_total{{reporter="{reporter}", grpc_response_status="0"}})"#),
            12.0,
            WAIT,
        );
        prom.wait_for(&format!(r#"sum(istio_requests_total{{reporter="{reporter}", request_protocol="grpc", grpc_response_status="14", response_code="200"}})"#), 2.0, WAIT);
    }
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", destination_service="echo.default.svc.cluster.local", destination_service_name="echo"})"#, 9.0, WAIT);
    // Without the grpc_stats filter: the calls, and not one message.
    for reporter in ["source", "destination"] {
        prom.wait_for(&format!(r#"sum(istio_requests_total{{reporter="{reporter}", request_protocol="grpc", grpc_response_status="0", destination_workload="echo-v2"}})"#), 3.0, WAIT);
        for metric in ["istio_request_messages_total", "istio_response_messages_total"] {
            let q = format!(r#"sum({metric}{{reporter="{reporter}", destination_workload="echo-v2"}})"#);
            assert_eq!(prom.value(&q).unwrap_or(0.0), 0.0, "{q}");
        }
    }
}

/// TCP metrics from the network filter between two sidecars; the client side names the server
/// workload from the endpoint's Istio metadata. The client's outbound and the server's inbound
/// listener run in one Envoy (each with its own workload and direction), the connection between
/// them a real one.
#[test]
fn tcp_connections_and_bytes() {
    let resources = Resources::default();
    let echo = st::TcpEcho::start(b"echo:");
    let (client_port, server_port) = (wasmesh_e2e::free_port(), wasmesh_e2e::free_port());
    let client_filter =
        st::filter(&workload("tcp-client-v1", "tcp-client", "v1"), &resources, Direction::Outbound, true);
    let server_filter = st::filter(&workload("tcp-echo-v1", "tcp-echo", "v1"), &resources, Direction::Inbound, true);
    let sidecars = Envoy::start(
        "tcp-sidecars",
        &combine_bootstraps(&[
            st::tcp_proxy_bootstrap(
                &client_filter,
                &resources,
                client_port,
                server_port,
                "outbound|9000||tcp-echo.default.svc.cluster.local",
                Some("tcp-echo-v1;default;tcp-echo;v1;Kubernetes"),
            ),
            st::tcp_proxy_bootstrap(&server_filter, &resources, server_port, echo.port, "inbound|9000||", None),
        ]),
    );

    let (mut sent, mut received) = (0, 0);
    for _ in 0..3 {
        let (s, r) = st::tcp_conversation(client_port, &[b"hello", b"wasmesh tcp"], b"echo:");
        sent += s;
        received += r;
    }
    let prom = Prometheus::start(&[("sidecars", sidecars.admin_port)]);
    prom.wait_for("count(up == 1)", 1.0, WAIT);
    for reporter in ["source", "destination"] {
        let sel = format!(r#"reporter="{reporter}", request_protocol="tcp""#);
        prom.wait_for(&format!("sum(istio_tcp_connections_opened_total{{{sel}}})"), 3.0, WAIT);
        prom.wait_for(&format!("sum(istio_tcp_connections_closed_total{{{sel}}})"), 3.0, WAIT);
        // Received = bytes from the downstream, sent = bytes back to it.
        prom.wait_for(&format!("sum(istio_tcp_received_bytes_total{{{sel}}})"), sent as f64, WAIT);
        prom.wait_for(&format!("sum(istio_tcp_sent_bytes_total{{{sel}}})"), received as f64, WAIT);
    }
    prom.wait_for(r#"sum(istio_tcp_connections_opened_total{reporter="source", source_workload="tcp-client-v1", destination_workload="tcp-echo-v1", destination_canonical_service="tcp-echo", destination_service="tcp-echo.default.svc.cluster.local", response_flags="-"})"#, 3.0, WAIT);
    prom.wait_for(r#"sum(istio_tcp_connections_closed_total{reporter="destination", destination_workload="tcp-echo-v1", source_workload="unknown", connection_security_policy="none"})"#, 3.0, WAIT);
    let series = prom.query("istio_tcp_sent_bytes_total").unwrap();
    assert!(series
        .iter()
        .all(|s| label(s, "response_code") == "<absent>" && label(s, "grpc_response_status") == "<absent>"));
}

/// A bad Telemetry is refused when the bootstrap is written, naming resource and field.
#[test]
fn bad_telemetry_is_refused_by_wasmeshctl_envoy() {
    let bad = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        who: {value: "request.headers['x'] + 'y'"}
"#;
    let err = Mesh::builder().yaml(SMALL_MESH).yaml(bad).client("default/sleep").try_start().err().expect("refused");
    assert!(err.contains("Telemetry istio-system/bad: spec.metrics[0].overrides[0].tagOverrides.who.value"), "{err}");
    let resources = Resources { items: load_str(bad, "bad.yaml").unwrap() };
    assert_eq!(wasmesh_controller::plugins::stats::validate(&resources).len(), 1);
}

/// Hammering the inbound side with random exchange headers never breaks the VM: every request
/// is answered and counted.
#[test]
fn garbage_metadata_never_breaks_the_filter() {
    let mesh = Mesh::builder().yaml(SMALL_MESH).sidecar("default/echo-v1", App::new("echo", "v1")).start();
    let inbound = mesh.inbound_port("default/echo-v1");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    for i in 0..60 {
        let len = (next() % 600) as usize;
        let value: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect();
        // Some valid prefixes: a real header with trailing garbage.
        let value = if i % 3 == 0 { format!("ChoKCkNMVVNURVJfSUQSDBoKS3ViZXJuZXRlcw{value}") } else { value };
        let r = request(inbound, "GET", "/", &[("host", "echo:9080"), ("x-envoy-peer-metadata", &value)], b"").unwrap();
        assert_eq!(r.status, 200, "request {i}");
    }
    // Counters reach Envoy at the filter's next flush (at most a second later).
    st::wait_series(mesh.envoy("default/echo-v1"), "istio_requests_total", &[], 60.0);
    assert!(mesh.envoy("default/echo-v1").log().lines().all(|l| !l.contains("panicked")), "no panic in the VM");
}

/// Mutual TLS between the sidecars (certificates from `wasmeshctl certs`, Istio's auto mTLS):
/// the server reports `connection_security_policy="mutual_tls"` and both principals; a plaintext
/// caller on the same PERMISSIVE port is `none`.
#[test]
fn mutual_tls_principals_and_security_policy() {
    let ca = wasmesh_e2e::mtls::MeshCa::for_resources(&wasmesh_e2e::mtls::resources(SMALL_MESH));
    let mesh = Mesh::builder()
        .yaml(SMALL_MESH)
        .certs_dir(ca.path())
        .client("default/sleep")
        .sidecar("default/echo-v1", App::new("echo", "v1"))
        .start();
    let out = mesh.outbound_port("default/sleep");
    for _ in 0..2 {
        let r = get(out, "echo:9080", "/mtls", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        let xfcc = r.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
        assert!(xfcc.contains("spiffe://cluster.local/ns/default/sa/sleep"), "the call went over mTLS: {xfcc:?}");
    }
    let plain = get(mesh.inbound_port("default/echo-v1"), "echo:9080", "/plain", &[]);
    assert_eq!(plain.status, 200);

    let prom = start_prometheus(&mesh);
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", connection_security_policy="mutual_tls", source_principal="spiffe://cluster.local/ns/default/sa/sleep", destination_principal="spiffe://cluster.local/ns/default/sa/echo", source_workload="sleep", source_workload_namespace="default"})"#, 2.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="source", connection_security_policy="unknown", source_principal="spiffe://cluster.local/ns/default/sa/sleep", destination_principal="spiffe://cluster.local/ns/default/sa/echo", destination_workload="echo-v1"})"#, 2.0, WAIT);
    prom.wait_for(r#"sum(istio_requests_total{reporter="destination", connection_security_policy="none", source_principal="unknown", destination_principal="unknown", source_workload="unknown"})"#, 1.0, WAIT);
}

fn dashboard_shows_the_mesh(mesh: &Mesh, prom: &Prometheus, gw: u16) {
    use wasmesh_controller::dashboard::{self, View};
    let admins: Vec<String> = mesh.envoys().map(|(_, e)| format!("127.0.0.1:{}", e.admin_port)).collect();
    // Totals since start (first frame).
    let snap = dashboard::scrape_admins(&admins).unwrap();
    let rows = dashboard::rows(None, &snap, Duration::ZERO);
    let row = |view: View, name: &str| {
        rows.iter()
            .find(|r| r.key.view == view && r.key.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}: {rows:?}"))
    };
    let reviews = row(View::Service, "reviews.default.svc.cluster.local");
    assert_eq!((reviews.requests, reviews.success), (10.0, Some(1.0)));
    assert!(reviews.p50.is_some_and(|v| v > 0.0) && reviews.p99 >= reviews.p50, "{reviews:?}");
    assert_eq!(row(View::Workload, "reviews-v2").requests, 6.0);
    assert_eq!(row(View::Workload, "productpage-v1").key.namespace, "default");
    // The 404 at the gateway has no destination workload: a service row "unknown", 100% success
    // (4xx is not a failure).
    assert_eq!(row(View::Service, "productpage.default.svc.cluster.local").requests, 10.0);

    // Live frames while traffic flows: the second frame has a rate.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = request(gw, "GET", "/productpage", &[("host", "bookinfo.example.com")], b"");
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    });
    let opts = dashboard::DashboardArgs::try_parse_args([
        "--admin".to_string(),
        admins.join(","),
        "--interval".into(),
        "1".into(),
        "--frames".into(),
        "2".into(),
        "--no-clear".into(),
    ])
    .unwrap()
    .options();
    let mut out = Vec::new();
    dashboard::run(&opts, &mut out).unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = load.join().unwrap();
    assert!(sent > 5);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("Istio Mesh Dashboard").count(), 2, "{text}");
    let second = text.split("frame 2").nth(1).unwrap();
    let line = second
        .lines()
        .find(|l| l.starts_with("productpage.default.svc.cluster.local"))
        .unwrap_or_else(|| panic!("{text}"));
    let rps: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap_or_else(|_| panic!("a rate in {line:?}"));
    assert!(rps > 1.0 && rps < 40.0, "about 20 req/s through the gateway: {line}");
    println!("{text}");

    // The same from Prometheus (rates over the last minute).
    let addr = format!("127.0.0.1:{}", prom.port);
    let mut rows = Vec::new();
    for _ in 0..40 {
        rows = dashboard::prometheus_rows(&addr, "1m").unwrap();
        if rows.iter().any(|r| r.key.name == "reviews-v3" && r.p50.is_some() && r.rps.is_some_and(|x| x > 0.0)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The load above went to reviews v3 (no end-user header); v2's counter did not move.
    let v3 = rows
        .iter()
        .find(|r| r.key.view == View::Workload && r.key.name == "reviews-v3")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(v3.rps.is_some_and(|x| x > 0.0) && v3.p50.is_some_and(|p| p > 0.0) && v3.success == Some(1.0), "{v3:?}");
    let v2 = rows
        .iter()
        .find(|r| r.key.view == View::Workload && r.key.name == "reviews-v2")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(v2.rps, Some(0.0));
    println!("{}", dashboard::render("from Prometheus", &rows));
}

/// Istio's TCP metadata exchange between two sidecars in real Envoy: the client's outbound
/// cluster speaks mTLS offering ALPN `istio-peer-exchange`, the server's inbound listener
/// selects the exchange chain on that ALPN (tls_inspector). The application sees exactly its own
/// bytes in both directions (a preamble that leaked would be echoed and fail the comparison),
/// also when the server speaks first, and `istio_tcp_*` name the peer workload on both sides.
/// A plaintext connection, and an mTLS one that did not offer the ALPN, pass bytes unchanged
/// and keep the peer `unknown`.
#[test]
fn tcp_metadata_exchange_over_mtls() {
    use wasmesh_controller::certs::CertPaths;
    use wasmesh_controller::plugins::{mtls, stats as sp};
    let resources = Resources::default();
    let ca = wasmesh_e2e::mtls::MeshCa::for_resources(&resources);
    ca.issue("default", "tcp-client");
    ca.issue("default", "tcp-echo");
    let client_certs = CertPaths::for_workload(ca.path(), "default", "tcp-client");
    let server_certs = CertPaths::for_workload(ca.path(), "default", "tcp-echo");
    let server_id = "spiffe://cluster.local/ns/default/sa/tcp-echo";
    let (client_wl, server_wl) =
        (workload("tcp-client-v1", "tcp-client", "v1"), workload("tcp-echo-v1", "tcp-echo", "v1"));

    let server_plain = st::filter(&server_wl, &resources, Direction::Inbound, true);
    let server_mx = st::tcp_filter_with_exchange(&server_wl, &resources, Direction::Inbound);
    let chains = [
        st::InboundChain {
            name: "exchange",
            filter_chain_match: Some(sp::exchange_filter_chain_match()),
            tls: Some((&server_certs, &sp::SERVER_TCP_ALPN)),
            filter: &server_mx,
        },
        st::InboundChain {
            name: "mtls",
            filter_chain_match: Some(serde_json::json!({"transport_protocol": "tls"})),
            tls: Some((&server_certs, &mtls::SERVER_ALPN)),
            filter: &server_plain,
        },
        st::InboundChain { name: "plaintext", filter_chain_match: None, tls: None, filter: &server_plain },
    ];
    let echo = st::TcpEcho::start(b"echo:");
    let greeter = st::TcpEcho::start_with_greeting(b"echo:", b"220 tcp-echo ready\r\n");
    let (server_port, greeter_port) = (wasmesh_e2e::free_port(), wasmesh_e2e::free_port());

    // Two Envoys, each a server sidecar's inbound listener plus client sidecars' outbound listeners
    // (each listener with its own filter configuration). Every assertion below is on one Envoy's
    // series of one reporter, and each such series has exactly one listener of that Envoy behind
    // it: the server's (reporter=destination), the exchanging client's (reporter=source, the server
    // named) and the client without exchange (reporter=source, the server `unknown`). Clients whose
    // upstream differs from the exchanging client's get a cluster of their own name (a subset).
    let client_mx = st::tcp_filter_with_exchange(&client_wl, &resources, Direction::Outbound);
    let client_plain_filter = st::filter(&client_wl, &resources, Direction::Outbound, true);
    let client = |filter, upstream, cluster: &str, tls: Option<&[&str]>| {
        let port = wasmesh_e2e::free_port();
        let tls = tls.map(|alpn| (&client_certs, server_id, alpn));
        (st::tcp_client_bootstrap(filter, &resources, port, upstream, cluster, tls), port)
    };
    let cluster = "outbound|9000||tcp-echo.default.svc.cluster.local";
    let (mx_client, mx_port) = client(&client_mx, server_port, cluster, Some(&sp::CLIENT_TCP_ALPN));
    let (mx_first_client, mx_first_port) = client(&client_mx, greeter_port, cluster, Some(&sp::CLIENT_TCP_ALPN));
    // The exchange filter on a plaintext upstream: no exchange.
    let (plain_client, plain_port) =
        client(&client_mx, server_port, "outbound|9000|plain|tcp-echo.default.svc.cluster.local", None);
    // mTLS without the exchange ALPN (the ordinary mTLS chain).
    let (no_alpn_client, no_alpn_port) = client(
        &client_plain_filter,
        server_port,
        "outbound|9000|mtls|tcp-echo.default.svc.cluster.local",
        Some(&mtls::CLIENT_ALPN),
    );
    // `server` and `mx` are one Envoy, `server_first` and `mx_first` (and `no_alpn`) the other.
    let server = Envoy::start(
        "mx-server",
        &combine_bootstraps(&[
            st::tcp_server_bootstrap(&resources, server_port, echo.port, &chains),
            mx_client,
            plain_client,
        ]),
    );
    let server_first = Envoy::start(
        "mx-server-first",
        &combine_bootstraps(&[
            st::tcp_server_bootstrap(&resources, greeter_port, greeter.port, &chains),
            mx_first_client,
            no_alpn_client,
        ]),
    );
    let (mx, plain, mx_first, no_alpn) = (&server, &server, &server_first, &server_first);

    let messages: [&[u8]; 3] = [b"hello", b"wasmesh tcp", &[0x3D, 0x23, 0x04, 0x67, 0, 0, 0, 1, b'x']];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..3 {
        let (s, r) = st::tcp_conversation_exact(mx_port, b"", &messages, b"echo:");
        sent += s;
        received += r;
    }
    for _ in 0..2 {
        st::tcp_conversation_exact(mx_first_port, b"220 tcp-echo ready\r\n", &messages[..1], b"echo:");
        st::tcp_conversation_exact(plain_port, b"", &messages, b"echo:");
        st::tcp_conversation_exact(no_alpn_port, b"", &messages, b"echo:");
    }

    let opened = "istio_tcp_connections_opened_total";
    let closed = "istio_tcp_connections_closed_total";
    let from_client = [
        ("reporter", "destination"),
        ("source_workload", "tcp-client-v1"),
        ("source_app", "tcp-client"),
        ("source_version", "v1"),
        ("source_canonical_service", "tcp-client"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "tcp-echo-v1"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/tcp-client"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let to_server = [
        ("reporter", "source"),
        ("source_workload", "tcp-client-v1"),
        ("destination_workload", "tcp-echo-v1"),
        ("destination_app", "tcp-echo"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "tcp-echo"),
        ("destination_workload_namespace", "default"),
        ("destination_principal", server_id),
    ];
    st::wait_series(&server, opened, &from_client, 3.0);
    st::wait_series(&server, closed, &from_client, 3.0);
    st::wait_series(mx, opened, &to_server, 3.0);
    st::wait_series(mx, closed, &to_server, 3.0);
    // Bytes are the application's: the preambles are not counted.
    st::wait_series(&server, "istio_tcp_received_bytes_total", &from_client, sent as f64);
    st::wait_series(&server, "istio_tcp_sent_bytes_total", &from_client, received as f64);
    st::wait_series(mx, "istio_tcp_received_bytes_total", &to_server, sent as f64);
    st::wait_series(mx, "istio_tcp_sent_bytes_total", &to_server, received as f64);
    // Server speaks first.
    st::wait_series(&server_first, opened, &from_client, 2.0);
    st::wait_series(mx_first, closed, &to_server, 2.0);
    // No exchange: plaintext, and mTLS without the ALPN.
    st::wait_series(
        &server,
        opened,
        &[("reporter", "destination"), ("source_workload", "unknown"), ("connection_security_policy", "none")],
        2.0,
    );
    st::wait_series(
        &server,
        opened,
        &[("reporter", "destination"), ("source_workload", "unknown"), ("connection_security_policy", "mutual_tls")],
        2.0,
    );
    st::wait_series(plain, opened, &[("reporter", "source"), ("destination_workload", "unknown")], 2.0);
    st::wait_series(no_alpn, opened, &[("reporter", "source"), ("destination_workload", "unknown")], 2.0);
    for e in [&server, &server_first] {
        assert!(e.log().lines().all(|l| !l.contains("panicked")), "no panic in the VM");
    }
}

/// The client's preamble arriving in many small TLS records (so Envoy's reads split it, the
/// header too): the server sidecar waits (`Pause`, Envoy keeps the bytes), strips it, the
/// application gets exactly the message, and the peer is named. The ALPN really is negotiated.
#[test]
fn tcp_metadata_exchange_preamble_split_across_reads() {
    use wasmesh_controller::certs::CertPaths;
    use wasmesh_controller::plugins::stats as sp;
    let resources = Resources::default();
    let ca = wasmesh_e2e::mtls::MeshCa::for_resources(&resources);
    ca.issue("default", "tcp-client");
    ca.issue("default", "tcp-echo");
    let server_certs = CertPaths::for_workload(ca.path(), "default", "tcp-echo");
    let server_mx =
        st::tcp_filter_with_exchange(&workload("tcp-echo-v1", "tcp-echo", "v1"), &resources, Direction::Inbound);
    let chains = [st::InboundChain {
        name: "exchange",
        filter_chain_match: Some(sp::exchange_filter_chain_match()),
        tls: Some((&server_certs, &sp::SERVER_TCP_ALPN)),
        filter: &server_mx,
    }];
    let echo = st::TcpEcho::start(b"echo:");
    let port = wasmesh_e2e::free_port();
    let server = Envoy::start("mx-split", &st::tcp_server_bootstrap(&resources, port, echo.port, &chains));
    let client = sp::core::LocalInfo::from_workload(&workload("tcp-client-v1", "tcp-client", "v1"));
    let preamble = sp::core::exchange::encode_preamble(&client);
    let server_preamble = sp::core::exchange::encode_preamble(&sp::core::LocalInfo::from_workload(&workload(
        "tcp-echo-v1",
        "tcp-echo",
        "v1",
    )));
    for chunk in [3, 50] {
        let (alpn, got) = st::tls_peer_exchange(
            port,
            &CertPaths::for_workload(ca.path(), "default", "tcp-client"),
            &preamble,
            chunk,
            "hello",
        );
        assert_eq!(alpn, "istio-peer-exchange");
        // The server's own preamble first, then exactly the application's answer.
        assert!(got.starts_with(&server_preamble), "server preamble first: {got:?}");
        assert_eq!(String::from_utf8_lossy(&got[server_preamble.len()..]), "echo:hello");
    }
    let from_client = [
        ("reporter", "destination"),
        ("source_workload", "tcp-client-v1"),
        ("source_app", "tcp-client"),
        ("destination_workload", "tcp-echo-v1"),
    ];
    st::wait_series(&server, "istio_tcp_connections_opened_total", &from_client, 2.0);
    st::wait_series(&server, "istio_tcp_received_bytes_total", &from_client, 10.0);
    assert!(server.log().lines().all(|l| !l.contains("panicked")));
}

/// The one-pass chain (`wasmesh.chain`) with stats as its first phase, on a sidecar's inbound
/// listener: a request a later phase answers (here the router phase's 404 for a host no
/// VirtualService names) is still counted, with the caller's labels from the metadata exchange
/// and the answer's response code, and the exchange headers never reach the application.
#[test]
fn the_one_pass_chain_counts_answered_requests_with_their_peer() {
    use serde_json::json;
    use wasmesh_e2e::node_identity::{
        bootstrap, cluster, http_listener, resources_json, route_by_cluster_header, IstioNode, Plugin,
    };
    let app = App::new("ratings", "v1").start();
    let node = IstioNode::sidecar(
        "ratings-v1-6f8b9c7d4-x2k9p",
        "default",
        "ratings-v1",
        &[("app", "ratings"), ("version", "v1")],
        "bookinfo-ratings",
    );
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
  - route: [{destination: {host: ratings, subset: v1}}]
",
    );
    let chain = json!({"phases": [
        {"rootId": "wasmesh.stats", "configuration": {}},
        {"rootId": "wasmesh.router", "configuration": {"resources": router}},
    ]});
    let plugin = Plugin::new("wasmesh.chain", "wasmesh", &wasmesh_e2e::paths::wasm("wasmesh"), chain);
    let port = wasmesh_e2e::free_port();
    let listener = http_listener("inbound_9080", port, Some("INBOUND"), &[plugin], route_by_cluster_header());
    let clusters = vec![cluster("outbound|9080|v1|ratings.default.svc.cluster.local", app.port)];
    let envoy =
        Envoy::start("stats-one-pass", &bootstrap(node.node(), wasmesh_e2e::free_port(), vec![listener], clusters));

    let mut caller = Workload::new("productpage-v1", "default");
    caller.labels.insert("app".into(), "productpage".into());
    caller.labels.insert("version".into(), "v1".into());
    let peer = wasmesh_controller::plugins::stats::core::LocalInfo::from_workload(&caller);
    let mx = [("x-envoy-peer-metadata", peer.header_value()), ("x-envoy-peer-metadata-id", peer.node_id.clone())];
    let send = |host: &str| {
        let mut headers = vec![("host", host)];
        headers.extend(mx.iter().map(|(k, v)| (*k, v.as_str())));
        request(port, "GET", "/ratings/0", &headers, b"").unwrap()
    };
    let served = app.served();
    let ok = send("ratings:9080");
    assert_eq!(ok.status, 200, "{}", envoy.log_tail(20));
    assert_eq!(app.served() - served, 1);
    let seen = ok.json()["headers"].as_object().unwrap().clone();
    assert!(!seen.contains_key("x-envoy-peer-metadata") && !seen.contains_key("x-envoy-peer-metadata-id"), "{seen:?}");
    // Istio's inbound side answers the exchange with its own metadata.
    assert!(ok.headers.iter().any(|(k, _)| k == "x-envoy-peer-metadata-id"), "{:?}", ok.headers);
    let answered = send("unknown.example");
    assert_eq!(answered.status, 404, "the router phase answers: {}", envoy.log_tail(20));

    for code in ["200", "404"] {
        let needles = [
            "reporter=.=destination;".to_string(),
            "source_workload=.=productpage-v1;".to_string(),
            "source_app=.=productpage;".to_string(),
            "destination_workload=.=ratings-v1;".to_string(),
            format!("response_code=.={code};"),
        ];
        wait_for_count(&envoy, &needles, 1.0);
    }
}

/// Waits until the `istio_requests_total` line holding every needle counts `expected`.
fn wait_for_count(envoy: &Envoy, needles: &[String], expected: f64) {
    let start = std::time::Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(15) {
        text = envoy.admin("/stats?filter=istio_requests_total");
        let found = text.lines().find(|l| needles.iter().all(|n| l.contains(n.as_str())));
        if found.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()) == Some(expected) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no istio_requests_total line with {needles:?} counting {expected}:\n{text}");
}

/// The request's exchange headers never reach the application, whether the inbound filter
/// removes them itself (no flag: a filter in an Envoy wasmeshctl did not configure, e.g. under
/// Istio) or Envoy's router does (`exchangeHeadersRemoved` with the route's
/// `request_headers_to_remove`, as `wasmeshctl envoy` writes the inbound listener); either way the
/// filter has read them first (the peer's labels are on the metric) and answers the exchange.
#[test]
fn exchange_headers_never_reach_the_app_in_either_mode() {
    let resources = Resources::default();
    let app = App::new("echo", "v1").start();
    let peer = wasmesh_controller::plugins::stats::core::LocalInfo::from_workload(&workload(
        "productpage-v1",
        "productpage",
        "v1",
    ));
    let mut boots = Vec::new();
    let mut ports = Vec::new();
    for (name, by_route) in [("echo-v1", false), ("echo-v2", true)] {
        let mut f = st::filter(&workload(name, "echo", &name[5..]), &resources, Direction::Inbound, false);
        let port = wasmesh_e2e::free_port();
        let cluster = format!("inbound|{}||", 9080 + ports.len());
        if by_route {
            wasmesh_controller::plugins::stats::exchange_headers_removed_by_route(std::slice::from_mut(&mut f));
            assert_eq!(f.config["exchangeHeadersRemoved"], true);
        }
        let mut b = st::http2_proxy_bootstrap(&f, &resources, port, app.port, &cluster);
        let hcm = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        if by_route {
            hcm["route_config"] = st::inbound_route();
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = cluster.clone().into();
        }
        // The app speaks HTTP/1.
        b["static_resources"]["clusters"][0].as_object_mut().unwrap().remove("typed_extension_protocol_options");
        boots.push(b);
        ports.push((name, port));
    }
    let envoy = Envoy::start("exchange-modes", &combine_bootstraps(&boots));
    for (name, port) in &ports {
        for _ in 0..2 {
            let r = get(
                *port,
                "echo:9080",
                "/get",
                &[("x-envoy-peer-metadata", &peer.header_value()), ("x-envoy-peer-metadata-id", &peer.node_id)],
            );
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            let seen = r.json()["headers"].as_object().cloned().unwrap();
            assert!(
                !seen.contains_key("x-envoy-peer-metadata") && !seen.contains_key("x-envoy-peer-metadata-id"),
                "{name}: the app saw {:?}",
                seen.keys()
            );
            assert!(r.header("x-envoy-peer-metadata").is_some(), "{name}: the exchange is answered");
        }
        st::wait_series(
            &envoy,
            "istio_requests_total",
            &[
                ("reporter", "destination"),
                ("destination_workload", name),
                ("source_workload", "productpage-v1"),
                ("source_app", "productpage"),
            ],
            2.0,
        );
    }
}

/// The HTTP stats configurations (filters or chain phases) and the route configuration of each
/// client-side (outbound, gateway) HTTP listener of a bootstrap.
fn client_side_listeners(boot: &serde_json::Value) -> Vec<(Vec<serde_json::Value>, serde_json::Value)> {
    fn stats_configs(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::String(s) if s.contains("\"metadataExchange\"") => {
                let c: serde_json::Value = serde_json::from_str(s).unwrap();
                match c.get("phases").and_then(serde_json::Value::as_array) {
                    Some(ps) => out.extend(
                        ps.iter().filter(|p| p["rootId"] == "wasmesh.stats").map(|p| p["configuration"].clone()),
                    ),
                    None => out.push(c),
                }
            }
            serde_json::Value::Object(m) => m.values().for_each(|v| stats_configs(v, out)),
            serde_json::Value::Array(a) => a.iter().for_each(|v| stats_configs(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for l in boot["static_resources"]["listeners"].as_array().unwrap() {
        for f in l["filter_chains"][0]["filters"].as_array().unwrap() {
            let hcm = &f["typed_config"];
            if hcm.get("route_config").is_none() {
                continue;
            }
            let mut configs = Vec::new();
            stats_configs(&hcm["http_filters"], &mut configs);
            if configs.iter().any(|c| c["direction"] == "outbound" || c["direction"] == "gateway") {
                out.push((configs, hcm["route_config"].clone()));
            }
        }
    }
    out
}

/// Where `wasmeshctl envoy` writes the outbound and gateway routes and no host is MESH_EXTERNAL,
/// Envoy's route adds the exchange headers instead of the stats phase (`exchangeHeadersAdded`):
/// an upstream outside the sidecars (a plain app behind a MESH_INTERNAL ServiceEntry, one behind
/// ALLOW_ANY's PassthroughCluster, and one behind the ingress gateway) receives both, with
/// exactly the values of the sending proxy's workload, replacing what the client sent, in both
/// layouts. With a MESH_EXTERNAL host in the mesh the route adds nothing and the phase writes
/// them as before: the external host gets neither, the mesh host both.
#[test]
fn routes_add_the_exchange_headers_and_external_hosts_get_none() {
    let plain = App::new("plain", "v1").start();
    let ext = App::new("ext", "v1").start();
    let passthrough = App::new("passthrough", "v1").start();
    let base = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: default}}
spec:
  hosts: [plain.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {plain}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep, version: v1}}, serviceAccount: sleep}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{istio: ingressgateway, app: istio-ingressgateway}}, serviceAccount: istio-ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: gw, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["gw.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: gw, namespace: istio-system}}
spec:
  hosts: [gw.example.com]
  gateways: [gw]
  http:
  - route: [{{destination: {{host: plain.default.svc.cluster.local, port: {{number: 80}}}}}}]
"#,
        plain = plain.port
    );
    let external = format!(
        r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext, namespace: default}}
spec:
  hosts: [ext.example.com]
  location: MESH_EXTERNAL
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {ext}}}}}]
"#,
        ext = ext.port
    );
    let allow_any: wasmesh_controller::MeshConfig =
        serde_json::from_value(serde_json::json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})).unwrap();
    let resources = Resources { items: load_str(&base, "t.yaml").unwrap() };
    let (sleep, _) = wasmesh_controller::bootstrap::workload_from_entry(&resources, "default/sleep").unwrap();
    let (mut gateway, _) =
        wasmesh_controller::bootstrap::workload_from_entry(&resources, "istio-system/istio-ingressgateway").unwrap();
    gateway.mode = wasmesh_istio::ProxyMode::Gateway;
    let local = wasmesh_controller::plugins::stats::core::LocalInfo::from_workload;
    let (sleep, gateway) = (local(&sleep), local(&gateway));
    let forged = [("x-envoy-peer-metadata", "forged"), ("x-envoy-peer-metadata-id", "forged-id")];
    let received = |r: &wasmesh_e2e::http::Response| -> (Option<String>, Option<String>) {
        assert_eq!(r.status, 200, "{}", r.text());
        let h = r.json()["headers"].clone();
        let get = |n: &str| h.get(n).and_then(|v| v.as_str()).map(str::to_string);
        (get("x-envoy-peer-metadata"), get("x-envoy-peer-metadata-id"))
    };
    let both =
        |l: &wasmesh_controller::plugins::stats::core::LocalInfo| (Some(l.header_value()), Some(l.node_id.clone()));

    for (layout, with_external) in [
        (wasmesh_controller::Layout::OnePass, false),
        (wasmesh_controller::Layout::PerFilter, false),
        (wasmesh_controller::Layout::OnePass, true),
    ] {
        let what = format!("{layout:?}, external host: {with_external}");
        let boots = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = boots.clone();
        let yaml = if with_external { format!("{base}{external}") } else { base.clone() };
        let mesh = Mesh::builder()
            .yaml(&yaml)
            .keep_ports()
            .layout(layout)
            .mesh_config(allow_any.clone())
            .edit_bootstraps(move |name, b| seen.borrow_mut().push((name.to_string(), b.clone())))
            .client("default/sleep")
            .gateway("istio-system/istio-ingressgateway", &[80])
            .start();
        // The generated configuration: the flag exactly where the route adds the headers.
        let boots = boots.borrow();
        assert_eq!(boots.len(), 2, "{what}");
        for (name, boot) in boots.iter() {
            let listeners = client_side_listeners(boot);
            assert_eq!(listeners.len(), 1, "{what}: {name}");
            for (configs, route) in &listeners {
                assert_eq!(configs.len(), 1, "{what}: {name}: {configs:?}");
                let flagged = configs[0].get("exchangeHeadersAdded") == Some(&serde_json::Value::Bool(true));
                let added = route.get("request_headers_to_add").is_some();
                assert_eq!((flagged, added), (!with_external, !with_external), "{what}: {name}: {route}");
            }
        }

        let out = mesh.outbound_port("default/sleep");
        let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
        for _ in 0..2 {
            // A mesh host behind a ServiceEntry, through the sidecar and through the gateway.
            assert_eq!(received(&get(out, "plain.default.svc.cluster.local", "/get", &forged)), both(&sleep), "{what}");
            assert_eq!(received(&get(gw, "gw.example.com", "/get", &forged)), both(&gateway), "{what}");
            // An unknown host through PassthroughCluster: the filter sent them there too.
            let host = format!("localhost:{}", passthrough.port);
            assert_eq!(received(&get(out, &host, "/get", &forged)), both(&sleep), "{what}: passthrough");
            if with_external {
                // Outside the mesh: neither header.
                let r = get(out, "ext.example.com", "/get", &[]);
                assert_eq!(received(&r), (None, None), "{what}: sent outside the mesh");
            }
        }
        // The stats phase still reads the response's exchange (none here: plain apps) and counts
        // every request it sent.
        st::wait_series(
            mesh.envoy("default/sleep"),
            "istio_requests_total",
            &[("reporter", "source"), ("source_workload", "sleep"), ("destination_service_name", "plain")],
            2.0,
        );
    }
}
