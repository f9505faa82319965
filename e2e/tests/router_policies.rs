//! VirtualService `timeout`, `retries`, `mirror`/`mirrorPercentage` and `corsPolicy` in real
//! Envoy. The router decides the route; Envoy's route for the route's policy (written by
//! wasmeshctl as istiod writes the route) times out, retries, mirrors and answers CORS. One mesh:
//! echo's sidecar (its outbound listener calls its own app), httpbin v1 (an app) and httpbin v2 (a
//! recorder the test runs, slow to answer) as in Istio's "Mirroring" task with the task's YAML.
//! The CORS answers are compared header by header with Envoy's CORS filter configured by hand on a
//! second listener of the same Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmesh_e2e::http::{get, request, Response};
use wasmesh_e2e::{free_port, App, Mesh};

const MESH: &str = r#"
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
kind: WorkloadEntry
metadata: {name: httpbin-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19392}
  labels: {app: httpbin, version: v1}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin-v2, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19393}
  labels: {app: httpbin, version: v2}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - name: retry-status
    match: [{uri: {prefix: /retry3}}]
    rewrite: {uri: /status}
    retries: {attempts: 3, retryOn: "503"}
    route: [{destination: {host: echo}}]
  - name: retry-off
    match: [{uri: {prefix: /noretry}}]
    rewrite: {uri: /status}
    retries: {attempts: 0}
    route: [{destination: {host: echo}}]
  - name: per-try
    match: [{uri: {prefix: /pertry}}]
    rewrite: {uri: /delay}
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: echo}}]
  - name: timeout
    match: [{uri: {prefix: /timeout}}]
    rewrite: {uri: /delay}
    timeout: 0.5s
    route: [{destination: {host: echo}}]
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: "http://allowed.example"}, {prefix: "http://pre."}, {regex: ".*\\.rx\\.example"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-app]
      maxAge: 10m
      allowCredentials: true
    route: [{destination: {host: echo}}]
  - name: browser
    match: [{uri: {prefix: /browser}}]
    corsPolicy:
      allowOrigins: [{prefix: "http://127.0.0.1:"}]
      allowMethods: [GET, PUT]
      allowHeaders: [x-custom, content-type]
      exposeHeaders: [x-app]
      allowCredentials: true
    route: [{destination: {host: echo}}]
  - name: cors-ignore
    match: [{uri: {prefix: /strict}}]
    corsPolicy:
      allowOrigins: [{exact: "http://allowed.example"}]
      allowMethods: [GET]
      unmatchedPreflights: IGNORE
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
---
# A gRPC service (port protocol GRPC: HTTP/2 upstream) answering with the gRPC status the
# request asks for; the retryOn gRPC codes, and Istio's default policy on the catch-all.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: grpc-app, namespace: default}
spec:
  hosts: [grpc-app.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9000, name: grpc, protocol: GRPC}]
  resolution: STATIC
  workloadSelector: {labels: {app: grpc-app}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: grpc-app, namespace: default}
spec:
  address: 127.0.0.1
  ports: {grpc: 19394}
  labels: {app: grpc-app}
  serviceAccount: grpc-app
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: grpc-app, namespace: default}
spec:
  hosts: [grpc-app]
  http:
  - match: [{headers: {x-retry: {exact: codes}}}]
    retries: {attempts: 2, retryOn: "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"}
    route: [{destination: {host: grpc-app}}]
  - route: [{destination: {host: grpc-app}}]
---
# Istio's "Mirroring" task (samples/httpbin; the task's DestinationRule and VirtualService).
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin, namespace: default}
spec:
  host: httpbin
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts:
  - httpbin
  http:
  - match: [{uri: {prefix: /half}}]
    route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 50.0
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"#;

const HOST: &str = "echo:8000";

/// The CORS policies of the `cors` and `cors-ignore` routes as istiod's `TranslateCORSPolicy`
/// writes them, written here by hand for the native listener (the oracle).
fn native_cors(ignore: bool) -> Value {
    let mut p = if ignore {
        json!({
            "allow_origin_string_match": [{"exact": "http://allowed.example"}],
            "allow_methods": "GET",
        })
    } else {
        json!({
            "allow_origin_string_match": [
                {"exact": "http://allowed.example"}, {"prefix": "http://pre."}, {"safe_regex": {"regex": ".*\\.rx\\.example"}}
            ],
            "allow_methods": "GET,POST",
            "allow_headers": "x-custom,content-type",
            "expose_headers": "x-app",
            "max_age": "600",
            "allow_credentials": true,
        })
    };
    p["@type"] = json!("type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy");
    p["forward_not_matching_preflights"] = json!(!ignore);
    p["filter_enabled"] = json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}});
    p
}

/// Adds a listener to echo's Envoy with Envoy's own CORS filter and router, the CORS policies per
/// route as istiod writes them, and the same cluster (no wasm).
fn add_native_listener(boot: &mut Value, port: u16) {
    let outbound = boot["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str().is_some_and(|n| n.starts_with("outbound")))
        .cloned()
        .expect("an outbound listener");
    let cluster = "outbound|8000||echo.default.svc.cluster.local";
    let route = |prefix: &str, cors: Value| {
        json!({"match": {"prefix": prefix}, "route": {"cluster": cluster, "timeout": "0s"},
               "typed_per_filter_config": {"envoy.filters.http.cors": cors}})
    };
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "native",
        "route_config": {"name": "native", "virtual_hosts": [{"name": "native", "domains": ["*"], "routes": [
            route("/cors", native_cors(false)),
            route("/strict", native_cors(true)),
            {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}},
        ]}]},
        "http_filters": [
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    });
    let mut native = outbound.clone();
    native["name"] = json!("native");
    native["address"]["socket_address"]["port_value"] = json!(port);
    native["filter_chains"] =
        json!([{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]);
    native.as_object_mut().unwrap().remove("listener_filters");
    boot["static_resources"]["listeners"].as_array_mut().unwrap().push(native);
}

/// The requests a recorder received: head (lower-cased) and body.
type Recorded = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// One CORS case: method, path, request headers.
type CorsCase<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

/// httpbin v2 in the Mirroring task: records every request (head and body) and answers after
/// 1 s, so a delayed original would show.
fn recorder(port: u16) -> Recorded {
    let seen: Recorded = Arc::default();
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    out.lock().unwrap().push((head.to_ascii_lowercase(), body));
                    std::thread::sleep(Duration::from_secs(1));
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-app: httpbin-v2\r\n\r\nshadow";
                    if w.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    seen
}

/// A page for the browser on every path, on both loopback origins (127.0.0.1 and localhost).
fn page_server() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = conn.try_clone().unwrap();
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let body = "<!doctype html><title>page</title>";
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A gRPC server (the ext_authz `Check` method, any unary method would do) that fails every call
/// with the gRPC status named by the request's `x-grpc-status` metadata (a trailers-only answer,
/// which Envoy's gRPC retry conditions read) and counts the calls per `x-key`.
struct GrpcStatusServer {
    calls: Arc<Mutex<std::collections::HashMap<String, u32>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct GrpcStatusService {
    calls: Arc<Mutex<std::collections::HashMap<String, u32>>>,
}

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization for GrpcStatusService {
    async fn check(
        &self,
        request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>, tonic::Status> {
        let meta = |k: &str| request.metadata().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        *self.calls.lock().unwrap().entry(meta("x-key")).or_default() += 1;
        let code: i32 = meta("x-grpc-status").parse().unwrap_or(2);
        Err(tonic::Status::new(tonic::Code::from_i32(code), "as asked"))
    }
}

impl GrpcStatusServer {
    fn start(port: u16) -> GrpcStatusServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let calls = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let service = GrpcStatusService { calls: calls.clone() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let server = tonic::transport::Server::builder()
                    .add_service(
                        envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(
                            service,
                        ),
                    )
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    });
                let _ = server.await;
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        GrpcStatusServer { calls, stop: Some(stop) }
    }

    fn calls(&self, key: &str) -> u32 {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

impl Drop for GrpcStatusServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One unary gRPC call (an empty message) over h2c through the sidecar's outbound listener; the
/// `grpc-status` the client got.
fn grpc_call(out: u16, headers: &[(&str, &str)]) -> String {
    let frame = std::env::temp_dir().join(format!("wasmesh-grpc-frame-{}", std::process::id()));
    std::fs::write(&frame, [0u8; 5]).unwrap();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-D", "-", "--http2-prior-knowledge", "--max-time", "10"]);
    cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers", "-H", "host: grpc-app:9000"]);
    for (k, v) in headers {
        cmd.args(["-H", &format!("{k}: {v}")]);
    }
    cmd.arg("--data-binary").arg(format!("@{}", frame.display()));
    cmd.arg(format!("http://127.0.0.1:{out}/envoy.service.auth.v3.Authorization/Check"));
    let o = cmd.output().unwrap();
    let head = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(head.starts_with("HTTP/2 200"), "{head}{}", String::from_utf8_lossy(&o.stderr));
    head.lines()
        .find_map(|l| l.strip_prefix("grpc-status: "))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no grpc-status in {head}"))
}

fn timed(f: impl FnOnce() -> Response) -> (Response, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[test]
fn timeouts_retries_mirrors_and_cors_as_istio() {
    let native_port = free_port();
    let mesh = Mesh::builder()
        .yaml(MESH)
        .concurrency(1)
        .sidecar("default/echo-v1", App::new("echo", "v1"))
        .edit_bootstraps(move |name, boot| {
            if name.contains("echo-v1") {
                add_native_listener(boot, native_port);
            }
        })
        .start();
    // httpbin v1 and v2 without sidecars of their own (one Envoy for the whole test).
    let v1 = App::new("httpbin", "v1").start_on(mesh.mapped_port(19392)).unwrap();
    let seen = recorder(mesh.mapped_port(19393));
    let out = mesh.outbound_port("default/echo-v1");
    let app = mesh.app("default/echo-v1");
    let served = || app.served();

    // --- retries: the app receives the first try and every retry.
    let before = served();
    assert_eq!(get(out, HOST, "/retry3/503", &[]).status, 503);
    assert_eq!(served() - before, 4, "attempts: 3 on 503: one try and 3 retries reach the app");
    let before = served();
    assert_eq!(get(out, HOST, "/status/503", &[]).status, 503);
    assert_eq!(served() - before, 1, "Istio's default policy does not retry a 503 answer");
    let before = served();
    assert_eq!(get(out, HOST, "/noretry/503", &[]).status, 503);
    assert_eq!(served() - before, 1, "attempts: 0 disables retries");
    let before = served();
    assert_eq!(get(out, HOST, "/retry3/200", &[]).status, 200);
    assert_eq!(served() - before, 1, "a success is not retried");

    // --- gRPC: `retryOn` gRPC codes retry a trailers-only answer with that status (attempts: 2
    // is 3 calls at the upstream); other codes are not retried. Istio's default policy (the
    // catch-all, no `retries`) retries `unavailable` and `cancelled` twice, nothing else.
    let grpc = GrpcStatusServer::start(mesh.mapped_port(19394));
    let cases = [
        // (route, gRPC status, calls the upstream receives)
        ("codes", 1, 3),
        ("codes", 4, 3),
        ("codes", 13, 3),
        ("codes", 8, 3),
        ("codes", 14, 3),
        ("codes", 3, 1),
        ("codes", 2, 1),
        ("default", 14, 3),
        ("default", 1, 3),
        ("default", 13, 1),
        ("default", 4, 1),
        ("default", 8, 1),
    ];
    for (route, code, calls) in cases {
        let key = format!("{route}-{code}");
        let code_s = code.to_string();
        let status = grpc_call(out, &[("x-retry", route), ("x-grpc-status", &code_s), ("x-key", &key)]);
        assert_eq!(status, code_s, "{key}: the client gets the upstream's status");
        assert_eq!(grpc.calls(&key), calls, "{key}: calls at the upstream");
    }

    // --- perTryTimeout: each try gets 200 ms, a per-try timeout is retried (5xx), then 504.
    let before = served();
    let (r, took) = timed(|| get(out, HOST, "/pertry/1", &[]));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_millis(1500),
        "3 tries of 200 ms took {took:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(served() - before, 3, "every try reached the app");

    // --- timeout: a slow upstream gets 504 at the route timeout, with Istio's flag UT.
    let (r, took) = timed(|| get(out, HOST, "/timeout/2", &[]));
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text(), "upstream request timeout");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1500), "timeout after {took:?}");
    let (r, took) = timed(|| get(out, HOST, "/delay/1", &[]));
    assert_eq!(r.status, 200, "no timeout by default (Istio disables Envoy's 15 s default)");
    assert!(took >= Duration::from_millis(950), "{took:?}");

    // A client naming a policy (here the timeout route's) gets nothing from it; the app never
    // sees the policy header.
    let dump = mesh.envoy("default/echo-v1").admin("/config_dump");
    let mut ids: Vec<String> =
        dump.split("\"name\": \"policy-").skip(1).filter_map(|s| s.split('"').next().map(str::to_string)).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "one route per distinct policy: {ids:?}");
    let before = served();
    for id in &ids {
        let r = get(out, HOST, "/status/503", &[("x-wasmesh-route-policy", id)]);
        assert_eq!(r.status, 503, "forged policy {id}: {}", r.text());
        assert!(r.json()["headers"].get("x-wasmesh-route-policy").is_none());
    }
    assert_eq!(served() - before, ids.len() as u64, "no forged retries");

    // --- Istio's flags in the source metrics: UT for the timeouts.
    let prom = mesh.envoy("default/echo-v1").admin("/stats/prometheus");
    assert!(
        prom.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"source\"")
            && l.contains("response_code=\"504\"")
            && l.contains("response_flags=\"UT\"")),
        "{prom}"
    );

    // --- CORS: every answer equals Envoy's CORS filter's, header by header.
    let native = native_port;
    let cases: Vec<CorsCase> = vec![
        ("OPTIONS", "/cors/a", vec![("origin", "http://allowed.example"), ("access-control-request-method", "POST")]),
        (
            "OPTIONS",
            "/cors/a",
            vec![
                ("origin", "http://pre.x"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-custom"),
            ],
        ),
        ("OPTIONS", "/cors/a", vec![("origin", "http://a.rx.example"), ("access-control-request-method", "GET")]),
        ("OPTIONS", "/cors/a", vec![("origin", "http://evil.example"), ("access-control-request-method", "GET")]),
        ("OPTIONS", "/cors/a", vec![("origin", "http://allowed.example")]),
        ("GET", "/cors/a", vec![("origin", "http://allowed.example")]),
        ("GET", "/cors/a", vec![("origin", "http://evil.example")]),
        ("GET", "/cors/a", vec![]),
        ("POST", "/cors/a", vec![("origin", "http://pre.y"), ("content-type", "text/plain")]),
        ("OPTIONS", "/strict/a", vec![("origin", "http://allowed.example"), ("access-control-request-method", "GET")]),
        ("OPTIONS", "/strict/a", vec![("origin", "http://evil.example"), ("access-control-request-method", "GET")]),
        ("GET", "/strict/a", vec![("origin", "http://evil.example")]),
        ("OPTIONS", "/other", vec![("origin", "http://allowed.example"), ("access-control-request-method", "GET")]),
    ];
    let comparable = |r: &Response| -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time" | "content-length"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        h.sort();
        h
    };
    for (method, path, headers) in &cases {
        let mut with_host = headers.clone();
        with_host.push(("host", HOST));
        let ours = request(out, method, path, &with_host, b"").unwrap();
        let theirs = request(native, method, path, &with_host, b"").unwrap();
        assert_eq!(ours.status, theirs.status, "{method} {path} {headers:?}");
        assert_eq!(comparable(&ours), comparable(&theirs), "{method} {path} {headers:?}");
        assert_eq!(ours.body.is_empty(), theirs.body.is_empty(), "{method} {path} {headers:?}");
    }
    // What Envoy's answers are, so the comparison cannot pass on two empty answers.
    let with_host = |h: &[(&'static str, &'static str)]| [h, &[("host", HOST)]].concat();
    let r = request(
        out,
        "OPTIONS",
        "/cors/a",
        &with_host(&[("origin", "http://allowed.example"), ("access-control-request-method", "POST")]),
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://allowed.example"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-custom,content-type"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = request(out, "GET", "/cors/a", &with_host(&[("origin", "http://allowed.example")]), b"").unwrap();
    assert_eq!(r.header("access-control-expose-headers"), Some("x-app"));
    assert_eq!(r.header("x-app"), Some("echo-v1"));
    let r = request(
        out,
        "OPTIONS",
        "/cors/a",
        &with_host(&[("origin", "http://evil.example"), ("access-control-request-method", "GET")]),
        b"",
    )
    .unwrap();
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(r.header("x-app"), Some("echo-v1"), "unmatchedPreflights FORWARD: the app answers");
    let before = served();
    let r = request(
        out,
        "OPTIONS",
        "/strict/a",
        &with_host(&[("origin", "http://evil.example"), ("access-control-request-method", "GET")]),
        b"",
    )
    .unwrap();
    assert!(
        r.header("x-app").is_none() && r.header("access-control-allow-origin").is_none(),
        "IGNORE: {:?}",
        r.headers
    );
    assert_eq!(served(), before, "IGNORE: the unmatched preflight is not forwarded");

    // --- From headless Chromium: a page on an allowed origin reads the answers; a page on
    // another origin is refused by the browser (the mesh is http://echo:8000 through the sidecar
    // as the browser's HTTP proxy; loopback pages bypass it).
    let page_port = page_server();
    let result = wasmesh_e2e::browser::run_script(
        "cors.mjs",
        &[
            ("PROXY", &format!("http://127.0.0.1:{out}")),
            ("PAGES", &format!("http://127.0.0.1:{page_port}/,http://localhost:{page_port}/")),
            ("TARGET", "http://echo:8000/browser/a"),
        ],
        Duration::from_secs(60),
    );
    let result: Value = serde_json::from_str(result.trim()).unwrap_or_else(|e| panic!("{e}: {result}"));
    let allowed = &result[format!("http://127.0.0.1:{page_port}")];
    for call in ["simple", "preflighted", "credentials"] {
        assert_eq!(allowed[call]["status"], 200, "{call}: {result}");
        assert_eq!(allowed[call]["xApp"], "echo-v1", "{call}: exposeHeaders lets the page read x-app: {result}");
    }
    let denied = &result[format!("http://localhost:{page_port}")];
    for call in ["simple", "preflighted", "credentials"] {
        assert!(denied[call]["error"].as_str().is_some_and(|e| e.contains("Failed to fetch")), "{call}: {result}");
    }

    // --- Istio's Mirroring task: every request to httpbin goes to v1 and a copy, with its body,
    // to v2 with the `-shadow` host; v2's slow answer neither delays nor replaces v1's.
    let (r, took) = timed(|| {
        request(out, "POST", "/anything", &[("host", "httpbin:8000"), ("content-type", "text/plain")], b"mirror me")
            .unwrap()
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-app"), Some("httpbin-v1"));
    assert_eq!(r.json()["body_bytes"], 9);
    assert!(took < Duration::from_millis(700), "the original waited for the shadow: {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one copy reached v2");
        let (head, body) = &seen[0];
        assert!(head.starts_with("post /anything "), "{head}");
        assert!(head.contains("host: httpbin-shadow:8000") || head.contains("host: httpbin:8000-shadow"), "{head}");
        assert_eq!(body, b"mirror me");
    }
    for _ in 0..5 {
        assert_eq!(get(out, "httpbin:8000", "/get", &[]).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while seen.lock().unwrap().len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen.lock().unwrap().len(), 6, "mirrorPercentage 100: every request copied");
    // mirrorPercentage 50: about half of the /half requests are copied.
    let total = 60;
    for _ in 0..total {
        assert_eq!(get(out, "httpbin:8000", "/half", &[]).status, 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let copies = seen.lock().unwrap().len() - 6;
    assert!(v1.served() >= 66, "v1 served every request: {}", v1.served());
    assert!((10..=50).contains(&copies), "mirrorPercentage 50: {copies} of {total} copied");
}

/// Istio's "Request timeouts" task with its own YAML (samples/bookinfo
/// `virtual-service-all-v1.yaml`, then reviews → v2, ratings delayed 2 s, reviews `timeout:
/// 0.5s`), on the three bookinfo workloads the task's request path crosses: productpage →
/// reviews v2 → ratings. The reviews call gives up after 0.5 s (Istio's productpage retries once,
/// so the task sees about 1 s; the test app does not retry).
#[test]
fn istio_request_timeouts_task() {
    let dir = wasmesh_e2e::paths::repo_root().join("examples/bookinfo");
    let mut yaml = String::new();
    for f in ["services.yaml", "workloads.yaml", "destination-rules.yaml"] {
        yaml.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        yaml.push_str("\n---\n");
    }
    yaml.push_str(TASK_TIMEOUTS);
    let call = wasmesh_e2e::bookinfo::call;
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .sidecar("default/productpage-v1", App::new("productpage", "v1").calling(call("reviews", "/reviews/0")))
        .sidecar("default/reviews-v2", App::new("reviews", "v2").calling(call("ratings", "/ratings/0")))
        .start();
    // ratings without a sidecar of its own: the delay is injected by reviews' sidecar.
    let ratings_port = mesh.mapped_port(19085);
    let _ratings = App::new("ratings", "v1").start_on(ratings_port).unwrap();
    // The delay is in force: reviews' own call to ratings takes 2 s.
    let reviews_out = mesh.outbound_port("default/reviews-v2");
    let (r, took) = timed(|| get(reviews_out, "ratings:9080", "/ratings/0", &[]));
    assert_eq!(r.status, 200);
    assert!(took >= Duration::from_millis(1900), "ratings delayed 2 s: {took:?}");
    // The page: reviews times out after 0.5 s ("product reviews are currently unavailable").
    let page_in = mesh.inbound_port("default/productpage-v1");
    let (r, took) = timed(|| get(page_in, "productpage:9080", "/productpage", &[]));
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    let reviews = &page["calls"][0];
    assert_eq!(reviews["service"], "reviews", "{page}");
    assert_eq!(reviews["status"], 504, "{page}");
    assert_eq!(reviews["body"], "upstream request timeout", "{page}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(1800), "the page took {took:?}");
}

/// The task's VirtualServices: `virtual-service-all-v1.yaml` (productpage, details), reviews to
/// v2 with the 0.5 s timeout, and ratings with the 2 s delay, as the task writes them.
const TASK_TIMEOUTS: &str = r#"
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
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
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
  - fault:
      delay:
        percentage:
          value: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
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
        subset: v2
    timeout: 0.5s
"#;
