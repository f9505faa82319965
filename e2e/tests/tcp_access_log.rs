//! wasmesh's access log of TCP connections against Envoy's own file access logger on the same
//! `tcp_proxy` (where istiod puts the access log of a TCP listener), in one Envoy: every TCP
//! listener runs the `wasmesh.access_log` network filter (`"tcp": true`) and Envoy's logger with
//! the same formats (Istio's default TEXT, Istio's default JSON, a custom TEXT with the TLS
//! operators), over varied connections: echo with the client closing first, the upstream closing
//! first, no upstream (connect failure), a connection closed without data, large transfers, and a
//! TLS chain: plaintext origination with an upstream client certificate → TLS passthrough chosen
//! by SNI (`tls_inspector`) → mutual TLS termination. The bar: zero differing lines (TEXT) and
//! zero differing fields (JSON).
//!
//! `envoyOtelAls` over the same connections (a second Envoy): every `tcp_proxy` has Envoy's
//! OpenTelemetry access logger as istiod writes it (gRPC, Istio's default TEXT body, labels as
//! attributes) and the phase a log exporting over OTLP/gRPC to its own collector; every record
//! is compared whole (time, body, attributes, severity, trace and span ids, flags, resource,
//! scope) with zero differences but `%DURATION%`, never lower and at most a few ms higher in
//! Envoy's ([`OTEL_DURATION_SLACK_MS`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../src/collector.rs"]
mod collector;

use collector::{GrpcLog, GrpcLogs};

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;
use wasmesh_accesslog::{istio_json, ISTIO_TEXT};
use wasmesh_e2e::access_log::{self as al, Files, Logs};
use wasmesh_e2e::{free_port, Envoy};

/// Operators beyond Istio's default that make sense on a TCP connection.
const CUSTOM_TEXT: &str = "%START_TIME(%s.%3f)% %DURATION% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_FLAGS% \
%RESPONSE_CODE% %PROTOCOL% %REQ(:METHOD)% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %REQUESTED_SERVER_NAME% \
%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_TLS_VERSION% %UPSTREAM_PEER_URI_SAN% \
%UPSTREAM_TLS_VERSION% %CONNECTION_TERMINATION_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%\n";
const CUSTOM_KEY: &str = "wasmesh.access_log.custom";
const OTEL_KEY: &str = "wasmesh.access_log.otel";
const AUTHORITY: &str = "otel-collector.observability.svc.cluster.local";
const SNI: &str = "echo.example";

/// An echo upstream: every byte back, until the client closes.
fn echo_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// An upstream that speaks first and closes: `bye\n`, then close.
fn closing_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.write_all(b"bye\n");
            let _ = c.shutdown(Shutdown::Both);
        }
    });
    port
}

fn connect(port: u16) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c
}

/// Writes `payload`, reads as many bytes back, closes (the client closes first).
fn echo(port: u16, payload: &[u8]) {
    let mut c = connect(port);
    let mut w = c.try_clone().unwrap();
    let data = payload.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut got = vec![0u8; payload.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == payload, "echo through {port}: {} bytes back differ", got.len());
    drop(c);
}

/// Reads until the other side closes (the upstream closes first, or Envoy on a connect failure).
fn read_to_close(port: u16, send: &[u8]) -> Vec<u8> {
    let mut c = connect(port);
    if !send.is_empty() {
        let _ = c.write_all(send);
    }
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    got
}

fn tls_files(dir: &std::path::Path, workload: &str) -> wasmesh_controller::certs::CertPaths {
    wasmesh_controller::certs::CertPaths::for_workload(dir, "default", workload)
}

fn common_tls(p: &wasmesh_controller::certs::CertPaths) -> Value {
    json!({
        "tls_certificates": [{"certificate_chain": {"filename": p.cert_chain.display().to_string()},
            "private_key": {"filename": p.private_key.display().to_string()}}],
        "validation_context": {"trusted_ca": {"filename": p.root_cert.display().to_string()}},
    })
}

// How many `%DURATION%` values were 1 ms later in Envoy's line, per test (each runs on its own thread).
thread_local! {
    static DURATION_1MS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn duration_1ms() {
    DURATION_1MS.with(|c| c.set(c.get() + 1));
}

fn compare_text(name: &str, files: &Files, n: usize, duration_at: usize) -> Vec<String> {
    let (envoy, wasmesh) = al::wait_lines(files, n);
    assert_eq!(envoy.len(), n, "{name}: Envoy's logger wrote {} lines for {n} connections:\n{envoy:#?}", envoy.len());
    assert_eq!(wasmesh.len(), n, "{name}: wasmesh wrote {} lines for {n} connections:\n{wasmesh:#?}", wasmesh.len());
    let mut diff = Vec::new();
    for (a, b) in envoy.iter().zip(&wasmesh) {
        if a != b {
            match later_by(a, b, duration_at) {
                Some(d) => count_later(d),
                None => diff.push(format!("{name}:\nenvoy:   {a}\nwasmesh: {b}")),
            }
        }
    }
    diff
}

fn compare_json(name: &str, files: &Files, n: usize) -> Vec<String> {
    let (envoy, wasmesh) = al::wait_lines(files, n);
    assert_eq!((envoy.len(), wasmesh.len()), (n, n), "{name}: line counts\n{envoy:#?}\n{wasmesh:#?}");
    let mut diff = Vec::new();
    for (a, b) in envoy.iter().zip(&wasmesh) {
        let (va, vb): (Value, Value) = (serde_json::from_str(a).unwrap(), serde_json::from_str(b).unwrap());
        let (oa, ob) = (va.as_object().unwrap(), vb.as_object().unwrap());
        assert_eq!(oa.keys().collect::<Vec<_>>(), ob.keys().collect::<Vec<_>>(), "{name}: keys\n{a}\n{b}");
        for (k, x) in oa {
            let later = match (x.as_i64(), ob.get(k).and_then(Value::as_i64)) {
                (Some(e), Some(w)) if k == "duration" && e != w && al::tcp_duration_close(e, w) => Some(e - w),
                _ => None,
            };
            let duration_ms_later = later.is_some();
            if let Some(d) = later {
                count_later(d);
            }
            if ob.get(k) != Some(x) && !duration_ms_later {
                diff.push(format!("{name}: {k}: envoy {x} wasmesh {}", ob.get(k).unwrap_or(&Value::Null)));
            }
        }
        if a != b && diff.is_empty() && va.get("duration") == vb.get("duration") {
            diff.push(format!("{name}: same fields, different text:\nenvoy:   {a}\nwasmesh: {b}"));
        }
    }
    diff
}

/// What a run compares: file logs, or OpenTelemetry records.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Files,
    Otel,
}

/// One compared listener: its logs (Istio TEXT, Istio JSON, custom TEXT), or the collectors of
/// its OpenTelemetry records (Envoy's logger's, wasmesh's).
struct Compared {
    mode: Mode,
    name: &'static str,
    logs: Logs,
    custom: Files,
    envoy_otel: GrpcLogs,
    wasmesh_otel: GrpcLogs,
}

impl Compared {
    fn new(mode: Mode, dir: &std::path::Path, name: &'static str) -> Compared {
        let custom = Files {
            envoy: dir.join(format!("{name}-custom-envoy.log")),
            wasmesh: dir.join(format!("{name}-custom-wasmesh.log")),
        };
        Compared {
            mode,
            name,
            logs: Logs::in_dir(dir, name),
            custom,
            envoy_otel: GrpcLogs::start(),
            wasmesh_otel: GrpcLogs::start(),
        }
    }

    fn otel_clusters(&self) -> Vec<Value> {
        match self.mode {
            Mode::Files => Vec::new(),
            Mode::Otel => vec![
                al::grpc_cluster(&format!("c_envoy_{}", self.name), self.envoy_otel.port),
                al::grpc_cluster(&format!("c_wasmesh_{}", self.name), self.wasmesh_otel.port),
            ],
        }
    }

    /// The phase's configuration: the three file logs, or the exported one.
    fn phase(&self, json_fields: &BTreeMap<String, String>) -> Value {
        match self.mode {
            Mode::Files => phase_config(json_fields),
            Mode::Otel => json!({"tcp": true, "logs": [{"filterStateKey": OTEL_KEY, "otel": {
                "cluster": format!("c_wasmesh_{}", self.name), "authority": AUTHORITY, "attributes": otel_labels()}}]}),
        }
    }

    fn loggers(&self, json_fields: &BTreeMap<String, String>) -> Vec<Value> {
        if self.mode == Mode::Otel {
            let cluster = format!("c_envoy_{}", self.name);
            return vec![al::otel_logger(&cluster, AUTHORITY, ISTIO_TEXT, &otel_labels(), None)];
        }
        let mut l = al::loggers(&self.logs, ISTIO_TEXT, json_fields);
        l.push(json!({"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": self.custom.envoy.display().to_string(),
            "log_format": {"text_format_source": {"inline_string": CUSTOM_TEXT}},
        }}));
        l.push(al::sink_logger(&self.custom.wasmesh, CUSTOM_KEY));
        l
    }

    fn differences(&self, n: usize) -> Vec<String> {
        if self.mode == Mode::Otel {
            return self.otel_differences(n);
        }
        // %DURATION% is token 11 of Istio's TEXT format ("- - -" is three), 1 of the custom one.
        let mut d = compare_text(&format!("{} TEXT", self.name), &self.logs.text, n, 11);
        d.extend(compare_json(&format!("{} JSON", self.name), &self.logs.json, n));
        d.extend(compare_text(&format!("{} custom", self.name), &self.custom, n, 1));
        d
    }

    /// The OpenTelemetry records of `n` connections, Envoy's against wasmesh's.
    fn otel_differences(&self, n: usize) -> Vec<String> {
        let limit = Duration::from_secs(8);
        let (envoy, wasmesh) =
            (sorted(self.envoy_otel.wait_for(n, limit)), sorted(self.wasmesh_otel.wait_for(n, limit)));
        let name = format!("{} OpenTelemetry", self.name);
        assert_eq!(envoy.len(), n, "{name}: Envoy's logger sent {} records for {n} connections", envoy.len());
        assert_eq!(wasmesh.len(), n, "{name}: wasmesh sent {} records for {n} connections", wasmesh.len());
        envoy.iter().zip(&wasmesh).filter_map(|(a, b)| otel_difference(&name, a, b)).collect()
    }
}

/// The labels of the compared `envoyOtelAls` provider: what a TCP connection has.
fn otel_labels() -> BTreeMap<String, String> {
    [
        ("bytes", "%BYTES_RECEIVED% %BYTES_SENT%"),
        ("duration", "%DURATION%"),
        ("flags", "%RESPONSE_FLAGS%"),
        ("upstream", "%UPSTREAM_HOST% %UPSTREAM_CLUSTER%"),
        ("sni", "%REQUESTED_SERVER_NAME%"),
        ("peer", "%DOWNSTREAM_PEER_URI_SAN% %UPSTREAM_PEER_URI_SAN%"),
        ("start", "%START_TIME%"),
        ("method", "%REQ(:METHOD)%"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Records in a stable order (connection start time, then body).
fn sorted(mut v: Vec<GrpcLog>) -> Vec<GrpcLog> {
    v.sort_by_key(|l| (l.record.time_unix_nano, format!("{:?}", l.record.body)));
    v
}

fn string_value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// How much later Envoy's `%DURATION%` may be, ms ([`al::TCP_DURATION_SLACK_MS`]).
const OTEL_DURATION_SLACK_MS: i64 = al::TCP_DURATION_SLACK_MS;

thread_local! {
    /// Values more than 1 ms later in Envoy's record (within [`OTEL_DURATION_SLACK_MS`]).
    static DURATION_LATER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `Some(envoy - wasmesh)` when `envoy` and `wasmesh` are the same but for token `at`, where
/// Envoy's number is 0 to [`OTEL_DURATION_SLACK_MS`] higher.
fn later_by(envoy: &str, wasmesh: &str, at: usize) -> Option<i64> {
    let (a, b): (Vec<&str>, Vec<&str>) = (envoy.split(' ').collect(), wasmesh.split(' ').collect());
    if a.len() != b.len() || a.iter().zip(&b).enumerate().any(|(i, (x, y))| i != at && x != y) {
        return None;
    }
    let d = a.get(at)?.trim_end().parse::<i64>().ok()? - b.get(at)?.trim_end().parse::<i64>().ok()?;
    (0..=OTEL_DURATION_SLACK_MS).contains(&d).then_some(d)
}

fn count_later(d: i64) {
    match d {
        0 => {}
        1 => duration_1ms(),
        _ => DURATION_LATER.with(|c| c.set(c.get() + 1)),
    }
}

/// Whether Envoy's record `a` and wasmesh's `b` differ, but for `%DURATION%` (token 11 of the
/// body, the `duration` attribute) later in Envoy's ([`later_by`]).
fn otel_difference(name: &str, a: &GrpcLog, b: &GrpcLog) -> Option<String> {
    let mut b = b.clone();
    if let (Some(x), Some(y)) = (string_value(&a.record.body), string_value(&b.record.body)) {
        if let Some(d) = later_by(x, y, 11) {
            count_later(d);
            b.record.body = a.record.body.clone();
        }
    }
    let attr = |l: &GrpcLog| l.record.attributes.iter().position(|kv| kv.key == "duration");
    if let (Some(i), Some(j)) = (attr(a), attr(&b)) {
        let (x, y) = (string_value(&a.record.attributes[i].value), string_value(&b.record.attributes[j].value));
        if let Some(d) = x.zip(y).and_then(|(x, y)| later_by(x, y, 0)) {
            count_later(d);
            b.record.attributes[j].value = a.record.attributes[i].value.clone();
        }
    }
    (a != &b).then(|| format!("{name}:\nenvoy:   {a:?}\nwasmesh: {b:?}"))
}

fn phase_config(json_fields: &BTreeMap<String, String>) -> Value {
    json!({"tcp": true, "logs": [
        {"filterStateKey": al::TEXT_KEY, "text": ISTIO_TEXT},
        {"filterStateKey": al::JSON_KEY, "json": json_fields},
        {"filterStateKey": CUSTOM_KEY, "text": CUSTOM_TEXT},
    ]})
}

#[test]
fn wasmesh_tcp_access_log_lines_equal_envoys_file_logger_on_tcp_proxy() {
    run(Mode::Files);
}

/// `envoyOtelAls` on a TCP listener: wasmesh's records, exported from the network filter's root,
/// against Envoy's OpenTelemetry logger on the same `tcp_proxy`.
#[test]
fn wasmesh_tcp_otel_records_equal_envoys_open_telemetry_logger_on_tcp_proxy() {
    run(Mode::Otel);
}

fn run(mode: Mode) {
    let echo_port = echo_upstream();
    let closing_port = closing_upstream();
    let dead_port = free_port();
    let dir = al::log_dir();
    let certs = wasmesh_e2e::paths::TempDir::new("tcp-al-certs");
    let ids = [
        wasmesh_controller::certs::WorkloadIdentity::new("cluster.local", "default", "server"),
        wasmesh_controller::certs::WorkloadIdentity::new("cluster.local", "default", "client"),
    ];
    wasmesh_controller::certs::run(certs.path(), &ids, &Default::default()).unwrap();
    let (server, client) = (tls_files(certs.path(), "server"), tls_files(certs.path(), "client"));
    let json_fields = istio_json();

    // Plaintext listeners, one per upstream behaviour.
    let plain: Vec<(Compared, u16, &str)> = vec![
        (Compared::new(mode, dir.path(), "echo"), free_port(), "echo"),
        (Compared::new(mode, dir.path(), "closing"), free_port(), "closing"),
        (Compared::new(mode, dir.path(), "dead"), free_port(), "dead"),
    ];
    // The TLS chain: origin (plaintext in, TLS out with SNI and a client certificate) →
    // passthrough (SNI match) → mtls (terminates, requires the client certificate) → echo.
    let (origin, passthrough, mtls) = (
        Compared::new(mode, dir.path(), "origin"),
        Compared::new(mode, dir.path(), "passthrough"),
        Compared::new(mode, dir.path(), "mtls"),
    );
    let (origin_port, passthrough_port, mtls_port) = (free_port(), free_port(), free_port());

    let mut listeners: Vec<Value> = plain
        .iter()
        .map(|(c, port, cluster)| {
            al::tcp_listener(c.name, *port, cluster, c.loggers(&json_fields), &c.phase(&json_fields), None, None)
        })
        .collect();
    listeners.push(al::tcp_listener(
        origin.name,
        origin_port,
        "to_passthrough",
        origin.loggers(&json_fields),
        &origin.phase(&json_fields),
        None,
        None,
    ));
    listeners.push(al::tcp_listener(
        passthrough.name,
        passthrough_port,
        "to_mtls",
        passthrough.loggers(&json_fields),
        &passthrough.phase(&json_fields),
        None,
        Some(SNI),
    ));
    let downstream_tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": true,
        "common_tls_context": common_tls(&server),
    }});
    listeners.push(al::tcp_listener(
        mtls.name,
        mtls_port,
        "echo",
        mtls.loggers(&json_fields),
        &mtls.phase(&json_fields),
        Some(downstream_tls),
        None,
    ));
    let mut to_passthrough = al::cluster("to_passthrough", passthrough_port);
    to_passthrough["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": SNI,
        "common_tls_context": common_tls(&client),
    }});
    let mut clusters = vec![
        al::cluster("echo", echo_port),
        al::cluster("closing", closing_port),
        al::cluster("dead", dead_port),
        to_passthrough,
        al::cluster("to_mtls", mtls_port),
    ];
    for c in plain.iter().map(|(c, _, _)| c).chain([&origin, &passthrough, &mtls]) {
        clusters.extend(c.otel_clusters());
    }
    let boot = al::bootstrap(listeners, clusters);
    let envoy = Envoy::start("tcp-access-log", &boot);

    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    // echo: small, large, a connection closed without a byte.
    let echo_listener = plain[0].1;
    echo(echo_listener, b"hello");
    echo(echo_listener, &big);
    drop(connect(echo_listener));
    // closing: the upstream speaks and closes first (with and without client bytes).
    assert_eq!(read_to_close(plain[1].1, b""), b"bye\n");
    assert_eq!(read_to_close(plain[1].1, b"hi"), b"bye\n");
    // dead: no upstream (UF).
    assert!(read_to_close(plain[2].1, b"anyone?").is_empty());
    // TLS chain: each connection through origin is one line in origin, passthrough and mtls.
    echo(origin_port, b"over tls");
    echo(origin_port, &big);
    let counts = [("echo", 3), ("closing", 2), ("dead", 1)];

    // The connections did what they are for: Envoy's own lines show it.
    let text = |c: &Compared| al::lines(&c.logs.text.envoy).join("\n");
    let custom = |c: &Compared| al::lines(&c.custom.envoy).join("\n");
    std::thread::sleep(Duration::from_millis(500));
    let mut differences = Vec::new();
    for ((c, _, _), (_, n)) in plain.iter().zip(counts) {
        differences.extend(c.differences(n));
    }
    for c in [&origin, &passthrough, &mtls] {
        differences.extend(c.differences(2));
    }
    let (what, pairs) = match mode {
        Mode::Files => ("line pairs", 3 * (3 + 2 + 1 + 3 * 2)),
        Mode::Otel => ("OpenTelemetry record pairs", 3 + 2 + 1 + 3 * 2),
    };
    eprintln!(
        "TCP access log: {pairs} {what} compared, %DURATION% 1 ms later in Envoy's in {}, 2 to {OTEL_DURATION_SLACK_MS} ms later in {}",
        DURATION_1MS.with(std::cell::Cell::get),
        DURATION_LATER.with(std::cell::Cell::get)
    );
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
    if mode == Mode::Otel {
        // The records are the connections': Envoy's own show the upstream failure, the SNI and
        // the TLS peers.
        let bodies = |c: &Compared| c.envoy_otel.logs().iter().map(|l| format!("{:?}", l.record)).collect::<String>();
        assert!(bodies(&plain[2].0).contains(" UF,URX "), "dead: {}", bodies(&plain[2].0));
        assert!(bodies(&plain[0].0).contains(" 1000000 1000000 "), "echo: {}", bodies(&plain[0].0));
        assert!(bodies(&passthrough).contains(SNI), "passthrough: {}", bodies(&passthrough));
        assert!(bodies(&mtls).contains("spiffe://cluster.local/ns/default/sa/client"), "{}", bodies(&mtls));
        assert!(bodies(&origin).contains("spiffe://cluster.local/ns/default/sa/server"), "{}", bodies(&origin));
        return;
    }
    assert!(text(&plain[2].0).contains(" UF,URX "), "dead: no UF,URX:\n{}", text(&plain[2].0));
    assert!(text(&plain[0].0).contains(" 1000000 1000000 "), "echo: no 1 MB both ways:\n{}", text(&plain[0].0));
    assert!(custom(&passthrough).contains(SNI), "passthrough: no SNI:\n{}", custom(&passthrough));
    assert!(
        custom(&mtls).contains("spiffe://cluster.local/ns/default/sa/client"),
        "mtls: no peer SAN:\n{}",
        custom(&mtls)
    );
    assert!(
        custom(&origin).contains("spiffe://cluster.local/ns/default/sa/server"),
        "origin: no upstream peer SAN:\n{}",
        custom(&origin)
    );
    drop(envoy);
}
