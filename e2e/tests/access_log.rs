//! wasmesh's access log against Envoy's own file access logger, in one Envoy: every listener runs
//! the `wasmesh.access_log` phase and Envoy's logger with the same format (Istio's default TEXT,
//! Istio's default JSON, and a custom TEXT format with more operators) on the same connection
//! manager, over varied traffic: 2xx/4xx/5xx from the upstream, local replies (404 no route, 403
//! from wasmesh authz), upstream connect failure and reset, a route timeout, large bodies,
//! HTTP/1.1 and HTTP/2, plaintext and mutual TLS. The bar: zero differing lines (TEXT) and zero
//! differing fields (JSON).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use wasmesh_accesslog::{istio_json, ISTIO_TEXT};
use wasmesh_controller::bootstrap::wasm_http_filter;
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::Direction;
use wasmesh_e2e::access_log::{self as al, Logs};
use wasmesh_e2e::{free_port, App, Envoy};
use wasmesh_istio::{load_str, Resources, Workload};

/// More operators than Istio's default uses (custom formats users write).
const CUSTOM_TEXT: &str = "%START_TIME(%s.%3f)% %START_TIME(%Y/%m/%d %T.%6f)% %REQ(:PATH):6% \
%REQ(X-MISSING?USER-AGENT):4% %RESP(CONTENT-TYPE)% %RESP(X-APP)% %TRAILER(GRPC-STATUS)% \
%UPSTREAM_CLUSTER% %UPSTREAM_REQUEST_ATTEMPT_COUNT% %DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% \
%DOWNSTREAM_TLS_VERSION% %RESPONSE_FLAGS% %CONNECTION_TERMINATION_DETAILS%\n";

/// An upstream that accepts, reads the request and closes without answering (Envoy: 503 UC).
fn resetting_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(b"");
            drop(c);
        }
    });
    port
}

fn routes() -> Value {
    json!({"name": "local_route", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"name": "timeout", "match": {"prefix": "/delay"}, "route": {"cluster": "app", "timeout": "0.3s"}},
        {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"name": "reset", "match": {"prefix": "/reset"}, "route": {"cluster": "reset"}},
        {"name": "app", "match": {"prefix": "/status"}, "route": {"cluster": "app"}},
        {"match": {"prefix": "/unnamed"}, "route": {"cluster": "app"}},
    ]}]})
}

fn curl(args: &[&str]) {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "--max-time", "10"]).args(args).output().unwrap();
    assert!(out.status.success() || out.status.code() == Some(52), "curl {args:?}: {out:?}");
}

/// Sends the varied traffic to `base` (`http://127.0.0.1:port` or `https://...`), `extra` curl
/// arguments (protocol, TLS) on every request. Returns the number of requests.
fn traffic(base: &str, extra: &[&str]) -> usize {
    let big = "x".repeat(300_000);
    let big_file = std::env::temp_dir().join(format!("al-big-{}", std::process::id()));
    std::fs::write(&big_file, &big).unwrap();
    let big_arg = format!("@{}", big_file.display());
    let cases: Vec<Vec<String>> = vec![
        vec!["-A".into(), "curl/test \"quoted\"".into(), format!("{base}/status/200")],
        vec![format!("{base}/status/404?q=1")],
        vec!["-H".into(), "x-forwarded-for: 10.1.2.3".into(), format!("{base}/status/503")],
        vec![format!("{base}/nope")],
        vec![format!("{base}/dead")],
        vec![format!("{base}/reset")],
        vec![format!("{base}/delay/1")],
        vec!["-X".into(), "POST".into(), "--data-binary".into(), big_arg, format!("{base}/status/201")],
        vec![
            "-H".into(),
            "x-request-id: fixed-id".into(),
            "-H".into(),
            "user-agent:".into(),
            format!("{base}/unnamed/x"),
        ],
        vec!["-H".into(), "x-deny: yes".into(), format!("{base}/status/200")],
    ];
    for c in &cases {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(c.iter().map(String::as_str));
        curl(&args);
    }
    let _ = std::fs::remove_file(&big_file);
    cases.len()
}

/// wasmesh's authz filter (as wasmeshctl writes it) before the access log: `x-deny` requests get
/// its 403.
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
    let res = Resources { items: load_str(policy, "access-log-test.yaml").unwrap() };
    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.service_account = "httpbin".into();
    let c = wasmesh_e2e::authz::plugin_filters(&wl, &res, &MeshConfig::default(), Direction::Inbound, port).unwrap();
    c.http_filters.iter().map(|f| wasm_http_filter(f, &wasmesh_e2e::paths::wasm_dir())).collect()
}

fn compare_text(name: &str, files: &al::Files, n: usize) -> Vec<String> {
    let (envoy, wasmesh) = al::wait_lines(files, n);
    assert_eq!(envoy.len(), n, "{name}: Envoy's logger wrote {} lines for {n} requests:\n{envoy:#?}", envoy.len());
    assert_eq!(wasmesh.len(), n, "{name}: wasmesh wrote {} lines for {n} requests:\n{wasmesh:#?}", wasmesh.len());
    let diff: Vec<String> = envoy
        .iter()
        .zip(&wasmesh)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("envoy:   {a}\nwasmesh: {b}"))
        .collect();
    diff.into_iter().map(|d| format!("{name}: {d}")).collect()
}

fn compare_json(name: &str, files: &al::Files, n: usize) -> Vec<String> {
    let (envoy, wasmesh) = al::wait_lines(files, n);
    assert_eq!((envoy.len(), wasmesh.len()), (n, n), "{name}: line counts\n{envoy:#?}\n{wasmesh:#?}");
    let mut diff = Vec::new();
    for (a, b) in envoy.iter().zip(&wasmesh) {
        let (va, vb): (Value, Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
        let (oa, ob) = (va.as_object().unwrap(), vb.as_object().unwrap());
        assert_eq!(oa.keys().collect::<Vec<_>>(), ob.keys().collect::<Vec<_>>(), "{name}: keys\n{a}\n{b}");
        for (k, x) in oa {
            if ob.get(k) != Some(x) {
                diff.push(format!("{k}: envoy {x} wasmesh {}", ob.get(k).unwrap_or(&Value::Null)));
            }
        }
        // Byte for byte too: key order, number and null rendering, escaping.
        if a != b && diff.is_empty() {
            diff.push(format!("same fields, different text:\nenvoy:   {a}\nwasmesh: {b}"));
        }
    }
    diff.into_iter().map(|d| format!("{name}: {d}")).collect()
}

#[test]
fn wasmesh_access_log_lines_equal_envoys_file_logger_text_and_json() {
    let app = App::new("app", "v1").start();
    let reset_port = resetting_upstream();
    let dead_port = free_port();
    let dir = al::log_dir();
    let certs = wasmesh_e2e::paths::TempDir::new("al-certs");
    let ids = [
        wasmesh_controller::certs::WorkloadIdentity::new("cluster.local", "default", "app"),
        wasmesh_controller::certs::WorkloadIdentity::new("cluster.local", "default", "client"),
    ];
    wasmesh_controller::certs::run(certs.path(), &ids, &Default::default()).unwrap();
    let server = wasmesh_controller::certs::CertPaths::for_workload(certs.path(), "default", "app");
    let client = wasmesh_controller::certs::CertPaths::for_workload(certs.path(), "default", "client");
    let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": server.cert_chain.display().to_string()},
                "private_key": {"filename": server.private_key.display().to_string()}}],
            "validation_context": {"trusted_ca": {"filename": server.root_cert.display().to_string()}},
        }
    }});

    let istio_json = istio_json();
    let mut custom_json: BTreeMap<String, String> = BTreeMap::new();
    custom_json.insert("code".into(), "%RESPONSE_CODE%".into());
    custom_json.insert("mixed".into(), "%REQ(:METHOD)% %REQ(x-missing)% %DURATION%".into());
    custom_json.insert("peer".into(), "%DOWNSTREAM_PEER_URI_SAN%".into());
    custom_json.insert("attempts".into(), "%UPSTREAM_REQUEST_ATTEMPT_COUNT%".into());
    custom_json.insert("path6".into(), "%REQ(:PATH):6%".into());

    // (listener name, text format, JSON fields, TLS)
    let plans: Vec<(&str, &str, &BTreeMap<String, String>, bool)> = vec![
        ("istio", ISTIO_TEXT, &istio_json, false),
        ("istio_mtls", ISTIO_TEXT, &istio_json, true),
        ("custom", CUSTOM_TEXT, &custom_json, false),
        ("custom_mtls", CUSTOM_TEXT, &custom_json, true),
    ];
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    let mut logs = Vec::new();
    for (name, text, fields, mtls) in &plans {
        let port = free_port();
        let l = Logs::in_dir(dir.path(), name);
        listeners.push(al::listener(
            name,
            port,
            authz_filters(port),
            &routes(),
            al::loggers(&l, text, fields),
            &al::phase_config(text, fields),
            mtls.then(|| tls.clone()),
        ));
        ports.push(port);
        logs.push(l);
    }
    let boot = al::bootstrap(
        listeners,
        vec![al::cluster("app", app.port), al::cluster("dead", dead_port), al::cluster("reset", reset_port)],
    );
    let envoy = Envoy::start("access-log", &boot);

    let client_tls =
        ["-k", "--cert", client.cert_chain.to_str().unwrap(), "--key", client.private_key.to_str().unwrap()];
    let mut differences = Vec::new();
    for ((name, _, _, mtls), (port, l)) in plans.iter().zip(ports.iter().zip(&logs)) {
        let mut n = 0;
        for proto in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
            let (base, mut extra) = if *mtls {
                let mut e = client_tls.to_vec();
                // Over TLS, HTTP/2 is negotiated by ALPN.
                e.push(if proto == ["--http1.1"] { "--http1.1" } else { "--http2" });
                (format!("https://127.0.0.1:{port}"), e)
            } else {
                (format!("http://127.0.0.1:{port}"), proto.to_vec())
            };
            extra.push("-H");
            extra.push("x-test: 1");
            n += traffic(&base, &extra);
        }
        // The traffic did what it is for: every kind of answer is in Envoy's own lines.
        let envoy_text = al::lines(&l.text.envoy).join("\n");
        let wants: &[&str] = if name.starts_with("istio") {
            &[
                " 200 - via_upstream",
                " 404 NR route_not_found",
                " 503 UF ",
                " 503 UC ",
                " 504 UT ",
                " 403 - ",
                " 201 ",
                "HTTP/2",
                "HTTP/1.1",
                "10.1.2.3",
            ]
        } else {
            &["UF", "UC", "UT", "NR"]
        };
        for want in wants {
            assert!(envoy_text.contains(want), "{name}: no {want:?} in Envoy's lines:\n{envoy_text}");
        }
        if *mtls && name.starts_with("custom") {
            assert!(envoy_text.contains("spiffe://cluster.local/ns/default/sa/client"), "{envoy_text}");
        }
        differences.extend(compare_text(&format!("{name} TEXT"), &l.text, n));
        differences.extend(compare_json(&format!("{name} JSON"), &l.json, n));
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    drop(envoy);
}

/// Several response flags on one request print in the order Envoy SET them (its stream info
/// keeps a vector), not in the flags' table order: a dead upstream behind Istio's default retry
/// policy (as wasmeshctl writes it: 2 retries on connect-failure, ...) is `URX,UF` (the router
/// decides "retry limit exceeded" before it aborts with the reset's UF), and with Envoy's fault
/// filter delaying it first `DI,URX,UF`; per-try timeouts that use up the retries `URX,UT`.
/// Envoy's file logger and wasmesh's log on the same
/// connection manager, same requests: the lines must be equal.
#[test]
fn response_flags_print_in_the_order_envoy_set_them() {
    let app = App::new("app", "v1").start();
    let dead_port = free_port();
    let dir = al::log_dir();
    let retry = wasmesh_router::istio_default_retry_policy();
    let routes = json!({"name": "local_route", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"name": "retry", "match": {"prefix": "/retry"}, "route": {"cluster": "dead", "timeout": "0s", "retry_policy": retry}},
        {"name": "dead", "match": {"prefix": "/dead"}, "route": {"cluster": "dead", "timeout": "0s"}},
        {"name": "app", "match": {"prefix": "/status"}, "route": {"cluster": "app", "timeout": "0s", "retry_policy": retry}},
        // A VirtualService `retries: {attempts: 1, perTryTimeout: 0.1s, retryOn: 5xx}` on a slow
        // upstream: each try times out; the last one's UT comes after the router's URX.
        {"name": "per_try", "match": {"prefix": "/delay"}, "route": {"cluster": "app", "timeout": "0s",
            "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"}}},
    ]}]});
    // Envoy's fault filter as wasmeshctl puts it in the chain: it delays a request that carries
    // `x-envoy-fault-delay-request` (wasmesh's router sets that header; here the client does).
    let fault = json!({"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "delay": {"header_delay": {}, "percentage": {"numerator": 100, "denominator": "HUNDRED"}},
    }});
    let istio_json = istio_json();
    let l = Logs::in_dir(dir.path(), "flags");
    let port = free_port();
    let listener = al::listener(
        "flags",
        port,
        vec![fault],
        &routes,
        al::loggers(&l, ISTIO_TEXT, &istio_json),
        &al::phase_config(ISTIO_TEXT, &istio_json),
        None,
    );
    let boot = al::bootstrap(vec![listener], vec![al::cluster("app", app.port), al::cluster("dead", dead_port)]);
    let envoy = Envoy::start("access-log-flags", &boot);
    let base = format!("http://127.0.0.1:{port}");
    let delay = "x-envoy-fault-delay-request: 50";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("{base}/retry")], " 503 URX,UF "),
        (vec!["-H".into(), delay.into(), format!("{base}/retry")], " 503 DI,URX,UF "),
        (vec![format!("{base}/dead")], " 503 UF "),
        (vec!["-H".into(), delay.into(), format!("{base}/dead")], " 503 DI,UF "),
        (vec!["-H".into(), delay.into(), format!("{base}/status/200")], " 200 DI "),
        (vec!["--http2-prior-knowledge".into(), "-H".into(), delay.into(), format!("{base}/retry")], " 503 DI,URX,UF "),
        (vec![format!("{base}/delay/1")], " 504 URX,UT "),
    ];
    for (args, _) in &cases {
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let n = cases.len();
    let mut differences = compare_text("flags TEXT", &l.text, n);
    differences.extend(compare_json("flags JSON", &l.json, n));
    // Envoy's own lines say the order, request by request (sequential requests, one line each).
    let (envoy_lines, _) = al::wait_lines(&l.text, n);
    for ((_, want), line) in cases.iter().zip(&envoy_lines) {
        assert!(line.contains(want), "Envoy's line has no {want:?}:\n{line}");
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    drop(envoy);
}

/// What `wasmeshctl envoy` writes for Telemetry `accessLogging` (one-pass layout, with the stats
/// phase): two providers from the mesh config, one with a CEL filter and Istio JSON labels; every
/// request in the first, only the failed ones in the second.
#[test]
fn wasmeshctl_envoy_writes_the_telemetry_access_logs_with_their_filter() {
    use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
    let app = App::new("httpbin", "v1").start();
    let dir = al::log_dir();
    let port = free_port();
    let all = dir.path().join("all.log");
    let errors = dir.path().join("errors.log");
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
  - providers: [{{name: all}}]
  - providers: [{{name: errors}}]
    filter: {{expression: "response.code >= 400"}}
    match: {{mode: SERVER}}
"#
    );
    let mesh: MeshConfig = MeshConfig::load(
        &format!(
            "extensionProviders:\n- name: all\n  envoyFileAccessLog: {{path: {}}}\n- name: errors\n  envoyFileAccessLog:\n    path: {}\n    logFormat: {{labels: {{code: '%RESPONSE_CODE%', path: '%REQ(:PATH)%', flags: '%RESPONSE_FLAGS%'}}}}\n",
            all.display(),
            errors.display()
        ),
        "mesh.yaml",
    )
    .unwrap();
    let res = Resources { items: load_str(&yaml, "access-log.yaml").unwrap() };
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
    assert!(text.contains("wasmesh.access_log") && text.contains("wasmesh.chain"), "one-pass chain with the phase");
    let envoy = Envoy::start("access-log-ctl", &boot);
    // The stats phase sets Istio's build gauge (Istio's mesh dashboard reads it).
    let prom = envoy.admin("/stats/prometheus");
    let build = format!("istio_build{{component=\"proxy\",tag=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(
        prom.lines().any(|l| l == build),
        "{build} in:\n{}",
        prom.lines().filter(|l| l.contains("istio_build")).collect::<Vec<_>>().join("\n")
    );
    for code in [200, 404, 503, 201] {
        let r = wasmesh_e2e::http::get(port, "httpbin.default.svc.cluster.local", &format!("/status/{code}"), &[]);
        assert_eq!(r.status, code);
    }
    let files = al::Files { envoy: all.clone(), wasmesh: errors.clone() };
    let (all_lines, error_lines) = al::wait_lines(&files, 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (all_lines, error_lines) = if all_lines.len() < 4 {
        al::wait_lines(&al::Files { envoy: all, wasmesh: errors }, 4)
    } else {
        (all_lines, error_lines)
    };
    assert_eq!(all_lines.len(), 4, "{all_lines:#?}");
    for (line, code) in all_lines.iter().zip([200, 404, 503, 201]) {
        assert!(line.contains(&format!("\"GET /status/{code} HTTP/1.1\" {code} - via_upstream")), "{line}");
        assert!(line.contains("inbound|"), "Istio's default format names the cluster: {line}");
        // `wasmeshctl logs` reads the real lines.
        let pretty = wasmesh_controller::plugins::accesslog::pretty(line);
        assert!(pretty.contains(&format!(" {code} GET    /status/{code} HTTP/1.1")), "{pretty}");
        assert!(pretty.contains("cluster=inbound|"), "{pretty}");
    }
    for line in &error_lines {
        assert!(wasmesh_controller::plugins::accesslog::pretty(line).starts_with("code="), "{line}");
    }
    let codes: Vec<Value> = error_lines.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
    assert_eq!(
        codes,
        vec![
            json!({"code": 404, "flags": "-", "path": "/status/404"}),
            json!({"code": 503, "flags": "-", "path": "/status/503"})
        ]
    );
}
