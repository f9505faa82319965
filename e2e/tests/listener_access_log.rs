//! Access logs of bootstraps written by `wasmeshctl envoy` with meshConfig `accessLogFile`, in
//! real Envoy:
//!
//! - A connection no filter chain of a listener takes (a TLS name no Gateway server has) is logged
//!   as istiod logs it: Envoy's own file logger at listener level, filtered to response flag `NR`,
//!   in the proxy's access-log path and format (Istio's TEXT, and a custom JSON format), once;
//!   the connections and requests the filter chains serve are logged once each, by wasmesh.
//! - The TCP access log as `wasmeshctl envoy` wires it (the `wasmesh.access_log` network filter,
//!   its line printed by a file logger on the `tcp_proxy`) on a sidecar's inbound TCP port and on
//!   a sidecar's outbound TLS listener with an SNI chain (`--tcp-outbound`), against Envoy's own
//!   file logger added on the same `tcp_proxy`s with the same format (istiod's TCP access log):
//!   every line equal (TEXT) or every field equal (JSON), `%DURATION%` allowed a few ms more in
//!   Envoy's (it runs a moment later at the same close).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/collector.rs"]
mod collector;

use collector::{GrpcLog, GrpcLogs};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wasmesh_e2e::paths::TempDir;
use wasmesh_e2e::{free_port, App, Mesh};

/// A self-signed certificate and key for `name` in `dir` (`<name>.crt`, `<name>.key`).
fn certificate(dir: &Path, name: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &format!("/CN={name}")])
        .args(["-keyout", &format!("{name}.key"), "-out", &format!("{name}.crt")])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TLS server (`openssl s_server -www`) with the certificate of `name`: stops when dropped.
struct TlsServer {
    port: u16,
    child: std::process::Child,
}

impl TlsServer {
    fn start(dir: &Path, name: &str) -> TlsServer {
        let port = free_port();
        let child = Command::new("openssl")
            .current_dir(dir)
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .args(["-cert", &format!("{name}.crt"), "-key", &format!("{name}.key")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "s_server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsServer { port, child }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TLS handshake with `sni` to `port` (`openssl s_client`, which closes at once): the
/// certificate the server presented (its subject line), or `None` when the handshake failed.
fn tls_hello(port: u16, sni: &str) -> Option<String> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", sni])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().find(|l| l.starts_with("subject=")).map(str::to_string)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// The lines of each file once it has at least `n`, and no more arrive for 1.5 s (Envoy flushes
/// access-log files about every second): a line logged twice shows as one too many.
fn settled(files: &[(&Path, usize)]) -> Vec<Vec<String>> {
    let start = Instant::now();
    while files.iter().any(|(p, n)| lines(p).len() < *n) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    files.iter().map(|(p, _)| lines(p)).collect()
}

fn write_mesh_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let f = dir.join(format!("{name}-mesh.yaml"));
    std::fs::write(&f, yaml).unwrap();
    f
}

const GATEWAYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: my-nginx, namespace: default}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  workloadSelector: {labels: {run: my-nginx}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: my-nginx, namespace: default}
spec: {address: 127.0.0.1, ports: {https: NGINX_PORT}, labels: {run: my-nginx}}
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
metadata: {name: httpbin, namespace: default}
spec: {address: 127.0.0.1, ports: {http: HTTPBIN_PORT}, labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gw-text, namespace: istio-system}
spec: {address: 127.0.0.1, labels: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gw-json, namespace: istio-system}
spec: {address: 127.0.0.1, labels: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8443, name: https, protocol: HTTPS}
    tls: {mode: PASSTHROUGH}
    hosts: [nginx.example.com]
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: default}
spec:
  hosts: [nginx.example.com]
  gateways: [gw]
  tls:
  - match: [{port: 8443, sniHosts: [nginx.example.com]}]
    route: [{destination: {host: my-nginx, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{route: [{destination: {host: httpbin, port: {number: 8000}}}]}]
"#;

/// A custom JSON format (meshConfig `accessLogFormat` with `accessLogEncoding: JSON`).
const JSON_FORMAT: &str = r#"{"code": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%", "sni": "%REQUESTED_SERVER_NAME%", "local": "%DOWNSTREAM_LOCAL_ADDRESS%", "cluster": "%UPSTREAM_CLUSTER%", "method": "%REQ(:METHOD)%", "bytes_sent": "%BYTES_SENT%"}"#;

#[test]
fn connections_no_filter_chain_takes_are_logged_once_as_istio_logs_them() {
    let dir = TempDir::new("listener-log");
    let d = dir.path();
    certificate(d, "nginx.example.com");
    let nginx = TlsServer::start(d, "nginx.example.com");
    let httpbin = App::new("httpbin", "v1").start();
    let text_log = d.join("gw-text.log");
    let json_log = d.join("gw-json.log");
    let text_mesh = write_mesh_config(d, "text", &format!("accessLogFile: {}\n", text_log.display()));
    let json_mesh = write_mesh_config(
        d,
        "json",
        &format!("accessLogFile: {}\naccessLogEncoding: JSON\naccessLogFormat: '{JSON_FORMAT}'\n", json_log.display()),
    );
    let yaml =
        GATEWAYS.replace("NGINX_PORT", &nginx.port.to_string()).replace("HTTPBIN_PORT", &httpbin.port.to_string());
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .keep_ports()
        .mesh_config_files(move |w| if w.ends_with("gw-json") { json_mesh.clone() } else { text_mesh.clone() })
        .gateway("istio-system/gw-text", &[8443, 8080])
        .gateway("istio-system/gw-json", &[8443, 8080])
        .start();

    for (gw, log) in [("istio-system/gw-text", &text_log), ("istio-system/gw-json", &json_log)] {
        let tls = mesh.gateway_port(gw, 8443);
        let http = mesh.gateway_port(gw, 8080);
        // No Gateway server has this name: no filter chain, the connection is closed.
        assert_eq!(tls_hello(tls, "nope.example.com"), None, "{gw}: an unknown name has no chain");
        // Served by the chains: TLS passed through to nginx (its certificate), an HTTP request.
        let seen = tls_hello(tls, "nginx.example.com").unwrap_or_default();
        assert!(seen.contains("nginx.example.com"), "{gw}: passthrough reached nginx: {seen:?}");
        let r = wasmesh_e2e::request(http, "GET", "/status/200", &[("host", "httpbin.example.com")], b"").unwrap();
        assert_eq!(r.status, 200, "{gw}");
        // Three lines: the refused connection (Envoy's listener log), the passed-through one (the
        // TCP log on the tcp_proxy) and the request (the HTTP log): nothing twice.
        let got = settled(&[(log.as_path(), 3)]).remove(0);
        eprintln!("{gw}:\n{}", got.join("\n"));
        assert_eq!(got.len(), 3, "{gw}: one line each for 3 connections:\n{}", got.join("\n"));
        let local = format!("127.0.0.1:{tls}");
        if gw.ends_with("gw-text") {
            // Istio's TEXT format as Envoy prints it for a connection no chain took.
            let nr: Vec<&String> = got.iter().filter(|l| l.contains(" NR ")).collect();
            assert_eq!(nr.len(), 1, "{gw}: one NR line:\n{}", got.join("\n"));
            let prefix = "\"- - -\" 0 NR filter_chain_not_found - \"-\" 0 0 ";
            assert!(nr[0].contains(prefix), "{gw}: {}", nr[0]);
            assert!(nr[0].contains(&format!(" {local} ")), "{gw}: the listener's address: {}", nr[0]);
            assert!(nr[0].ends_with(" nope.example.com -"), "{gw}: SNI and no route: {}", nr[0]);
            let passed = got.iter().find(|l| l.contains("outbound|443||my-nginx.default.svc.cluster.local"));
            let passed = passed.unwrap_or_else(|| panic!("{gw}: no passthrough line:\n{}", got.join("\n")));
            assert!(passed.contains("\"- - -\" 0 - - ") && passed.contains(" nginx.example.com "), "{passed}");
            assert_eq!(got.iter().filter(|l| l.contains("\"GET /status/200 HTTP/1.1\" 200 - via_upstream")).count(), 1);
        } else {
            let fields: Vec<Value> = got.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
            let nr: Vec<&Value> = fields.iter().filter(|f| f["flags"] == "NR").collect();
            assert_eq!(nr.len(), 1, "{gw}: one NR line:\n{}", got.join("\n"));
            assert_eq!(
                *nr[0],
                json!({"code": 0, "flags": "NR", "details": "filter_chain_not_found", "sni": "nope.example.com",
                    "local": local, "cluster": null, "method": null, "bytes_sent": 0}),
                "{gw}"
            );
            let passed = fields.iter().find(|f| f["cluster"] == "outbound|443||my-nginx.default.svc.cluster.local");
            let passed = passed.unwrap_or_else(|| panic!("{gw}: no passthrough line:\n{}", got.join("\n")));
            assert_eq!((&passed["flags"], &passed["sni"]), (&json!("-"), &json!("nginx.example.com")), "{passed}");
            let get = fields.iter().filter(|f| f["method"] == "GET" && f["code"] == 200).count();
            assert_eq!(get, 1, "{gw}:\n{}", got.join("\n"));
        }
    }
}

const DB: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 3306, name: tls-db, protocol: TLS}]
  resolution: STATIC
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: default}
spec: {address: 127.0.0.1, ports: {tls-db: 23306}, labels: {app: db}, serviceAccount: db}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  tls:
  - match: [{port: 3306, sniHosts: [db.default.svc.cluster.local]}]
    route: [{destination: {host: db.default.svc.cluster.local, port: {number: 3306}}}]
"#;

/// Adds Envoy's own file logger (`path`, `log_format`: istiod's TCP access log of meshConfig) to
/// every `tcp_proxy` of the bootstrap, after wasmesh's loggers.
fn add_envoy_tcp_logger(boot: &mut Value, path: &Path, log_format: &Value) {
    let logger = json!({"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.display().to_string(),
        "log_format": log_format,
    }});
    let listeners = boot.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).unwrap();
    let mut added = 0;
    for l in listeners {
        let Some(l) = l.as_object_mut() else { continue };
        let mut chains: Vec<&mut Value> = Vec::new();
        for (k, v) in l.iter_mut() {
            match k.as_str() {
                "filter_chains" => chains.extend(v.as_array_mut().unwrap().iter_mut()),
                "default_filter_chain" => chains.push(v),
                _ => {}
            }
        }
        for chain in chains {
            for f in chain["filters"].as_array_mut().unwrap() {
                if f["name"] == "envoy.filters.network.tcp_proxy" {
                    let logs = f["typed_config"]["access_log"].as_array_mut().expect("wasmesh's tcp_proxy loggers");
                    logs.push(logger.clone());
                    added += 1;
                }
            }
        }
    }
    assert!(added > 0, "no tcp_proxy in the bootstrap");
}

/// [`wasmesh_e2e::access_log::tcp_duration_close`]: both read the clock at the same close.
fn duration_close(envoy: i64, wasmesh: i64) -> bool {
    wasmesh_e2e::access_log::tcp_duration_close(envoy, wasmesh)
}

/// Whether two lines are the same but for one number token (`%DURATION%`), [`duration_close`].
fn same_but_duration(envoy: &str, wasmesh: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (envoy.split(' ').collect(), wasmesh.split(' ').collect());
    let differ: Vec<(&&str, &&str)> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
    a.len() == b.len()
        && differ.len() <= 1
        && differ
            .iter()
            .all(|(x, y)| matches!((x.parse::<i64>(), y.parse::<i64>()), (Ok(e), Ok(w)) if duration_close(e, w)))
}

#[test]
fn wasmeshctl_tcp_access_log_on_inbound_tcp_and_outbound_sni_equals_envoys() {
    let dir = TempDir::new("tcp-wired-log");
    let d = dir.path();
    certificate(d, "db.default.svc.cluster.local");
    let db_server = TlsServer::start(d, "db.default.svc.cluster.local");
    let (sleep_log, db_log) = (d.join("sleep.log"), d.join("db.log"));
    let (sleep_envoy, db_envoy) = (d.join("sleep-envoy.log"), d.join("db-envoy.log"));
    let sleep_mesh = write_mesh_config(d, "sleep", &format!("accessLogFile: {}\n", sleep_log.display()));
    let db_mesh =
        write_mesh_config(d, "db", &format!("accessLogFile: {}\naccessLogEncoding: JSON\n", db_log.display()));
    // Envoy's logger in the same formats: Istio's TEXT (sleep) and Istio's JSON (db).
    let text_format = json!({"text_format_source": {"inline_string": wasmesh_accesslog::ISTIO_TEXT}});
    let json_format =
        json!({"json_format": wasmesh_accesslog::istio_json(), "json_format_options": {"sort_properties": false}});
    let (se, de) = (sleep_envoy.clone(), db_envoy.clone());
    let mesh = Mesh::builder()
        .yaml(DB)
        .mesh_config_files(move |w| if w == "default/db" { db_mesh.clone() } else { sleep_mesh.clone() })
        .sidecar_to_port("default/db", db_server.port)
        .tcp_client("default/sleep")
        .tcp_outbound("default/sleep", "db.default.svc.cluster.local", 3306)
        .edit_bootstraps(move |w, boot| {
            if w == "default/db" {
                add_envoy_tcp_logger(boot, &de, &json_format);
            } else {
                add_envoy_tcp_logger(boot, &se, &text_format);
            }
        })
        .start();
    let out = mesh.tcp_outbound_port("default/sleep", "db.default.svc.cluster.local", 3306);
    let inbound = mesh.inbound_port("default/db");
    // The wiring: the sleep's listener chooses the chain by SNI, the db's is a TCP listener.
    let n = 3;
    for i in 0..n {
        let seen = tls_hello(out, "db.default.svc.cluster.local").unwrap_or_default();
        assert!(seen.contains("db.default.svc.cluster.local"), "connection {i} reached the db: {seen:?}");
    }
    // Another name: no chain on the sleep's listener (no outboundTrafficPolicy: no fallthrough).
    assert_eq!(tls_hello(out, "other.example.com"), None);
    let got = settled(&[(&sleep_log, n + 1), (&sleep_envoy, n), (&db_log, n), (&db_envoy, n)]);
    let (sleep_w, sleep_e, db_w, db_e) = (&got[0], &got[1], &got[2], &got[3]);
    assert_eq!((sleep_e.len(), db_w.len(), db_e.len()), (n, n, n), "one line per connection and proxy");

    // The sleep (TEXT): wasmesh's lines equal Envoy's, and the NR line of the unknown name.
    let (nr, served): (Vec<&String>, Vec<&String>) = sleep_w.iter().partition(|l| l.contains(" NR "));
    assert_eq!((nr.len(), served.len()), (1, n), "sleep:\n{}", sleep_w.join("\n"));
    assert!(nr[0].contains("\"- - -\" 0 NR filter_chain_not_found ") && nr[0].ends_with(" other.example.com -"));
    let mut later = 0;
    for (w, e) in served.iter().zip(sleep_e) {
        assert!(*w == e || same_but_duration(e, w), "sleep:\nenvoy:   {e}\nwasmesh: {w}");
        later += usize::from(*w != e);
        assert!(
            w.contains(" outbound|3306||db.default.svc.cluster.local ")
                && w.ends_with(" db.default.svc.cluster.local -"),
            "sleep: the SNI chain's cluster and the SNI: {w}"
        );
    }
    // The db (JSON): every field equal but duration ([`duration_close`]).
    for (w, e) in db_w.iter().zip(db_e) {
        let (w, e): (Value, Value) = (serde_json::from_str(w).unwrap(), serde_json::from_str(e).unwrap());
        for (k, ev) in e.as_object().unwrap() {
            let wv = &w[k.as_str()];
            let ok = ev == wv
                || (k == "duration"
                    && matches!((ev.as_i64(), wv.as_i64()), (Some(a), Some(b)) if duration_close(a, b)));
            assert!(ok, "db {k}: envoy {ev} wasmesh {wv}");
        }
        assert_eq!(w.as_object().map(|o| o.len()), e.as_object().map(|o| o.len()), "db: same fields");
        assert_eq!(w["upstream_cluster"], json!(format!("inbound|{inbound}||")), "{w}");
        assert_eq!(w["response_flags"], "-", "{w}");
        assert!(w["bytes_sent"].as_u64().unwrap_or(0) > 1000, "the db's certificate went back: {w}");
    }
    eprintln!("wasmeshctl TCP access log: {n} TEXT + {n} JSON lines equal Envoy's ({later} TEXT with %DURATION% later in Envoy's)");
}

const HTTPS_GATEWAY: &str = r#"
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
metadata: {name: httpbin, namespace: default}
spec: {address: 127.0.0.1, ports: {http: HTTPBIN_PORT}, labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec: {address: 127.0.0.1, labels: {istio: ingressgateway}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
    hosts: [httpbin.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.example.com]
  gateways: [gw]
  http: [{route: [{destination: {host: httpbin, port: {number: 8000}}}]}]
"#;

fn body(l: &GrpcLog) -> String {
    match l.record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn attributes(l: &GrpcLog) -> Vec<(String, String)> {
    l.record
        .attributes
        .iter()
        .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s)) => {
                (kv.key.clone(), s.clone())
            }
            other => (kv.key.clone(), format!("{other:?}")),
        })
        .collect()
}

#[test]
fn a_connection_no_chain_takes_is_exported_to_the_otel_provider_once() {
    let dir = TempDir::new("listener-otel");
    let d = dir.path();
    certificate(d, "httpbin.example.com");
    let creds = d.join("credentials").join("httpbin-credential");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::copy(d.join("httpbin.example.com.crt"), creds.join("tls.crt")).unwrap();
    std::fs::copy(d.join("httpbin.example.com.key"), creds.join("tls.key")).unwrap();
    let httpbin = App::new("httpbin", "v1").start();
    let collector = GrpcLogs::start();
    let mesh = wasmesh_controller::MeshConfig::load(
        &format!(
            "defaultProviders: {{accessLogging: [otel]}}\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    \
             service: 127.0.0.1\n    port: {}\n    logFormat: {{labels: {{flags: '%RESPONSE_FLAGS%'}}}}\n",
            collector.port
        ),
        "mesh.yaml",
    )
    .unwrap();
    let m = Mesh::builder()
        .yaml(&HTTPS_GATEWAY.replace("HTTPBIN_PORT", &httpbin.port.to_string()))
        .keep_ports()
        .mesh_config(mesh)
        .credentials_dir(&d.join("credentials"))
        .gateway("istio-system/istio-ingressgateway", &[443])
        .start();
    let port = m.gateway_port("istio-system/istio-ingressgateway", 443);
    assert_eq!(tls_hello(port, "nope.example.com"), None, "no server has this name");
    let resolve = format!("httpbin.example.com:{port}:127.0.0.1");
    let out = Command::new("curl")
        .args(["-sSk", "--http1.1", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--resolve", &resolve])
        .arg(format!("https://httpbin.example.com:{port}/status/200"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", String::from_utf8_lossy(&out.stderr));
    let logs = collector.wait_for(2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    let logs = if collector.logs().len() > logs.len() { collector.logs() } else { logs };
    let bodies: Vec<String> = logs.iter().map(body).collect();
    assert_eq!(logs.len(), 2, "the refused connection and the request, once each:\n{}", bodies.join(""));
    let nr: Vec<&GrpcLog> = logs.iter().filter(|l| body(l).contains(" NR ")).collect();
    assert_eq!(nr.len(), 1, "{}", bodies.join(""));
    let b = body(nr[0]);
    assert!(b.contains("\"- - -\" 0 NR filter_chain_not_found ") && b.ends_with(" nope.example.com -\n"), "{b:?}");
    assert_eq!(attributes(nr[0]), vec![("flags".to_string(), "NR".to_string())]);
    let served = logs.iter().find(|l| !body(l).contains(" NR ")).unwrap();
    assert!(body(served).contains("\"GET /status/200 HTTP/1.1\" 200 - via_upstream"), "{}", body(served));
    assert_eq!(attributes(served), vec![("flags".to_string(), "-".to_string())]);
}
