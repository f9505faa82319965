//! Helpers for the stats filter's end-to-end tests and benchmark: a real Prometheus scraping the
//! Envoys' admin endpoints, PromQL over its HTTP API, a gRPC server and client (node's built-in
//! `http2`), a TCP echo server, and hand-written Envoy configurations for what the bootstrap
//! builder does not generate (TCP proxy listeners, HTTP/2 upstreams).

#![allow(clippy::panic)]

use crate::free_port;
use crate::paths::{repo_root, TempDir};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmesh_controller::bootstrap::{wasm_http_filter, wasm_network_filter};
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::{stats, Direction, ListenerContext, WasmFilter};
use wasmesh_istio::{Resources, Workload};

/// The Prometheus binary: `PROMETHEUS_BIN`, else `/usr/bin/prometheus` (Debian package
/// `prometheus`, installed by `make deps`), else `prometheus` on PATH.
pub fn prometheus_bin() -> std::path::PathBuf {
    if let Ok(bin) = std::env::var("PROMETHEUS_BIN") {
        return bin.into();
    }
    let debian = std::path::Path::new("/usr/bin/prometheus");
    if debian.exists() {
        return debian.to_path_buf();
    }
    "prometheus".into()
}

/// One series of a PromQL result: labels (with `__name__`, `job`, `instance`) and value.
pub type PromSeries = (serde_json::Map<String, Value>, f64);

/// A real Prometheus on loopback scraping Envoy admin endpoints (`/stats/prometheus`) every
/// 500 ms, with its data in a temporary directory. Killed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// `targets`: (job name, admin port) pairs.
    pub fn start(targets: &[(&str, u16)]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let mut cfg = String::from("global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  evaluation_interval: 500ms\nscrape_configs:\n");
        for (job, admin) in targets {
            cfg.push_str(&format!(
                "- job_name: '{job}'\n  metrics_path: /stats/prometheus\n  static_configs:\n  - targets: ['127.0.0.1:{admin}']\n"
            ));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, cfg).unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Prometheus {:?} (set PROMETHEUS_BIN or run `make deps`): {e}", prometheus_bin())
            });
        let mut p = Prometheus { child, port, dir };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("Prometheus exited ({status}):\n{}", p.log());
            }
            if crate::http::request(port, "GET", "/-/ready", &[], b"").map(|r| r.status == 200).unwrap_or(false) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "Prometheus not ready after 60s:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant PromQL query; returns (labels, value) per series of the vector result.
    pub fn query(&self, promql: &str) -> Result<Vec<PromSeries>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let r = crate::http::request(self.port, "GET", &path, &[], b"").map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
        if v["status"] != "success" {
            return Err(format!("query {promql:?} failed: {v}"));
        }
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1].as_str().and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The single value of a scalar-like query (`sum(...)`), `None` when the vector is empty.
    pub fn value(&self, promql: &str) -> Option<f64> {
        self.query(promql).ok().and_then(|v| v.first().map(|(_, x)| *x))
    }

    /// Waits until `promql` gives `expected` (scrapes are periodic); panics with the last value.
    pub fn wait_for(&self, promql: &str, expected: f64, limit: Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            last = self.value(promql);
            if last == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("PromQL {promql}\n  expected {expected}, last value {last:?}\nPrometheus log:\n{}", self.log());
    }

    /// Waits until every target has been scraped successfully at least once more after now.
    pub fn wait_scraped(&self, jobs: usize) {
        self.wait_for("count(up == 1)", jobs as f64, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(1200));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encoding for a query string value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The `wasmesh.stats` filter for a sidecar's inbound listener, as `wasmeshctl envoy` writes it
/// (the HTTP filter entry for the HCM's `http_filters`; its route removes the exchange headers,
/// see [`inbound_route`]). For the benchmark harness.
pub fn sidecar_inbound_filter_json(workload: &Workload, resources: &Resources) -> Value {
    let mut f = filter(workload, resources, Direction::Inbound, false);
    stats::exchange_headers_removed_by_route(std::slice::from_mut(&mut f));
    wasm_http_filter(&f, &crate::paths::wasm_dir())
}

/// The bench's route to its app as `wasmeshctl envoy` writes an inbound route: Envoy's router
/// removes the exchange headers the stats filter read.
pub fn inbound_route() -> Value {
    json!({
        "virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}],
        "request_headers_to_remove": [stats::core::peer::HEADER_METADATA, stats::core::peer::HEADER_METADATA_ID],
    })
}

/// The stats filter for a listener, built by the controller's plugin.
pub fn filter(workload: &Workload, resources: &Resources, direction: Direction, tcp: bool) -> WasmFilter {
    let mesh = MeshConfig::default();
    let ctx = ListenerContext { workload, resources, direction, bind_port: 0, mesh: &mesh };
    if tcp {
        stats::tcp_filter(&ctx).unwrap_or_else(|e| panic!("stats plugin: {e:?}"))
    } else {
        stats::contribute(&ctx).unwrap_or_else(|e| panic!("stats plugin: {e:?}")).http_filters.remove(0)
    }
}

/// The TCP stats filter with Istio's TCP metadata exchange, built by the controller's plugin.
pub fn tcp_filter_with_exchange(workload: &Workload, resources: &Resources, direction: Direction) -> WasmFilter {
    let mesh = MeshConfig::default();
    let ctx = ListenerContext { workload, resources, direction, bind_port: 0, mesh: &mesh };
    stats::tcp_filter_with_exchange(&ctx).unwrap_or_else(|e| panic!("stats plugin: {e:?}"))
}

/// `stats_config` with the plugin's tag extraction.
pub fn stats_config(resources: &Resources) -> Value {
    json!({"stats_tags": stats::stats_tags(resources), "use_all_default_tags": true})
}

fn static_cluster(name: &str, port: u16, http2: bool, endpoint_metadata: Option<Value>) -> Value {
    let mut endpoint =
        json!({"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}});
    if let Some(md) = endpoint_metadata {
        endpoint["metadata"] = md;
    }
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    c
}

/// An Envoy with one HTTP listener: the stats filter, istiod's `grpc_stats` filter (the message
/// counts the stats filter reads), then the router to `upstream_port`
/// (HTTP/2, for gRPC). The cluster is named as Istio names it.
pub fn http2_proxy_bootstrap(
    filter: &WasmFilter,
    resources: &Resources,
    listen: u16,
    upstream_port: u16,
    cluster: &str,
) -> Value {
    let wasm_dir = crate::paths::wasm_dir();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "stats_config": stats_config(resources),
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "l",
                    "codec_type": "AUTO",
                    "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
                    "http_filters": [
                        wasm_http_filter(filter, &wasm_dir),
                        stats::grpc_stats_filter(),
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ],
                }}]}],
            }],
            "clusters": [static_cluster(cluster, upstream_port, true, None)],
        }
    })
}

/// An Envoy with one TCP proxy listener: the stats network filter, then `tcp_proxy` to
/// `upstream_port`. `endpoint_workload` sets Istio's endpoint metadata
/// (`workload;namespace;canonical_name;canonical_revision;cluster`).
pub fn tcp_proxy_bootstrap(
    filter: &WasmFilter,
    resources: &Resources,
    listen: u16,
    upstream_port: u16,
    cluster: &str,
    endpoint_workload: Option<&str>,
) -> Value {
    let wasm_dir = crate::paths::wasm_dir();
    let md = endpoint_workload.map(|w| json!({"filter_metadata": {"istio": {"workload": w}}}));
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "stats_config": stats_config(resources),
        "static_resources": {
            "listeners": [{
                "name": "tcp",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "filter_chains": [{"filters": [
                    wasm_network_filter(filter, &wasm_dir),
                    {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "tcp",
                        "cluster": cluster,
                    }}
                ]}],
            }],
            "clusters": [static_cluster(cluster, upstream_port, false, md)],
        }
    })
}

/// A TCP server that answers each chunk it reads with `reply_prefix` + the chunk. Stops when
/// dropped. It keeps every byte it read and counts the connections it accepted.
pub struct TcpEcho {
    pub port: u16,
    stop: Arc<AtomicBool>,
    received: Arc<std::sync::Mutex<Vec<u8>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl TcpEcho {
    pub fn start(reply_prefix: &'static [u8]) -> TcpEcho {
        TcpEcho::start_with_greeting(reply_prefix, b"")
    }

    /// Like [`TcpEcho::start`], but the server speaks first: `greeting` as soon as a
    /// connection is accepted (a MySQL-like protocol).
    pub fn start_with_greeting(reply_prefix: &'static [u8], greeting: &'static [u8]) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let received: Arc<std::sync::Mutex<Vec<u8>>> = Arc::default();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (received2, accepted2) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let received = received2.clone();
                std::thread::spawn(move || {
                    if !greeting.is_empty() && conn.write_all(greeting).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if let Ok(mut r) = received.lock() {
                                    r.extend_from_slice(&buf[..n]);
                                }
                                let mut out = reply_prefix.to_vec();
                                out.extend_from_slice(&buf[..n]);
                                if conn.write_all(&out).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        TcpEcho { port, stop, received, accepted }
    }

    /// Every byte the server has read so far, all connections together.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// One TCP conversation: connect, send each message and read the echo, close.
pub fn tcp_conversation(port: u16, messages: &[&[u8]], reply_prefix: &[u8]) -> (usize, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let (mut sent, mut received) = (0, 0);
    for m in messages {
        s.write_all(m).unwrap_or_else(|e| panic!("write: {e}"));
        sent += m.len();
        let want = reply_prefix.len() + m.len();
        let mut got = vec![0u8; want];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("read echo: {e}"));
        received += want;
    }
    (sent, received)
}

/// One TCP conversation that checks every byte: read `greeting` first (if any), then for each
/// message the exact echo `reply_prefix + message`, and after a half-close nothing more. Any
/// preamble leaking to the application (which echoes it) or back to the client fails it.
/// Returns (bytes sent, bytes received).
pub fn tcp_conversation_exact(port: u16, greeting: &[u8], messages: &[&[u8]], reply_prefix: &[u8]) -> (usize, usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let read_exact = |s: &mut TcpStream, want: &[u8], what: &str| {
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("read {what}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "{what}: the client got other bytes than the application sent"
        );
    };
    let mut received = 0;
    if !greeting.is_empty() {
        read_exact(&mut s, greeting, "greeting");
        received += greeting.len();
    }
    let mut sent = 0;
    for m in messages {
        s.write_all(m).unwrap_or_else(|e| panic!("write: {e}"));
        sent += m.len();
        let mut want = reply_prefix.to_vec();
        want.extend_from_slice(m);
        read_exact(&mut s, &want, "echo");
        received += want.len();
    }
    s.shutdown(std::net::Shutdown::Write).ok();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "bytes after the conversation: {:?}", String::from_utf8_lossy(&rest));
    (sent, received)
}

fn with_alpn(mut transport_socket: Value, alpn: &[&str]) -> Value {
    transport_socket["typed_config"]["common_tls_context"]["alpn_protocols"] = json!(alpn);
    transport_socket
}

fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": cluster,
    }})
}

/// A client sidecar's outbound TCP listener: the stats filter, `tcp_proxy` to `upstream_port`.
/// With `certs` the cluster speaks Istio mTLS (the sidecar's certificate, the server's SPIFFE ID
/// checked) and offers `alpn` (e.g. [`stats::CLIENT_TCP_ALPN`]); without, plaintext.
pub fn tcp_client_bootstrap(
    filter: &WasmFilter,
    resources: &Resources,
    listen: u16,
    upstream_port: u16,
    cluster: &str,
    certs: Option<(&wasmesh_controller::certs::CertPaths, &str, &[&str])>,
) -> Value {
    let mut b = tcp_proxy_bootstrap(filter, resources, listen, upstream_port, cluster, None);
    if let Some((certs, server_id, alpn)) = certs {
        let ts = wasmesh_controller::plugins::mtls::upstream_transport_socket(certs, &[server_id.to_string()], "");
        b["static_resources"]["clusters"][0]["transport_socket"] = with_alpn(ts, alpn);
    }
    b
}

/// One inbound filter chain of [`tcp_server_bootstrap`].
pub struct InboundChain<'a> {
    pub name: &'a str,
    pub filter_chain_match: Option<Value>,
    /// mTLS with this workload's certificate and these ALPNs (client certificate required).
    pub tls: Option<(&'a wasmesh_controller::certs::CertPaths, &'a [&'a str])>,
    pub filter: &'a WasmFilter,
}

/// A server sidecar's inbound TCP listener with the `tls_inspector` and the given chains, each
/// running its stats filter and `tcp_proxy` to the application on `app_port`.
pub fn tcp_server_bootstrap(resources: &Resources, listen: u16, app_port: u16, chains: &[InboundChain<'_>]) -> Value {
    let wasm_dir = crate::paths::wasm_dir();
    let cluster = "inbound|9000||";
    let chains: Vec<Value> = chains
        .iter()
        .map(|c| {
            let mut chain =
                json!({"name": c.name, "filters": [wasm_network_filter(c.filter, &wasm_dir), tcp_proxy(cluster)]});
            if let Some(m) = &c.filter_chain_match {
                chain["filter_chain_match"] = m.clone();
            }
            if let Some((certs, alpn)) = c.tls {
                chain["transport_socket"] =
                    with_alpn(wasmesh_controller::plugins::mtls::downstream_transport_socket(certs), alpn);
            }
            chain
        })
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "stats_config": stats_config(resources),
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
                "listener_filters": [wasmesh_controller::plugins::mtls::tls_inspector()],
                "filter_chains": chains,
            }],
            "clusters": [static_cluster(cluster, app_port, false, None)],
        }
    })
}

/// Waits until the series of `metric` whose labels include all of `want` sum to `expected`
/// in the Envoy's `/stats/prometheus`; panics with what it saw.
pub fn wait_series(envoy: &crate::Envoy, metric: &str, want: &[(&str, &str)], expected: f64) {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < Duration::from_secs(15) {
        last = scrape(envoy, metric);
        let sum: f64 = last
            .iter()
            .filter(|(labels, _)| want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, v)| v)
            .sum();
        if sum == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{metric} with {want:?}: expected {expected}; series:\n{last:#?}");
}

const TLS_PEER_JS: &str = r#"
const tls = require('tls'), fs = require('fs');
const [port, ca, cert, key, preHex, chunk, msg] = process.argv.slice(2);
const pre = Buffer.from(preHex, 'hex'), n = parseInt(chunk);
const s = tls.connect({host: '127.0.0.1', port: parseInt(port), ca: fs.readFileSync(ca), cert: fs.readFileSync(cert),
  key: fs.readFileSync(key), ALPNProtocols: ['istio-peer-exchange', 'istio'], checkServerIdentity: () => undefined}, async () => {
  let got = Buffer.alloc(0);
  s.on('data', d => { got = Buffer.concat([got, d]); });
  for (let i = 0; i < pre.length; i += n) { s.write(pre.subarray(i, i + n)); await new Promise(r => setTimeout(r, 5)); }
  s.write(msg);
  setTimeout(() => { console.log(JSON.stringify({alpn: s.alpnProtocol, got: got.toString('hex')})); s.end(); }, 700);
});
s.on('error', e => { console.log(JSON.stringify({error: String(e)})); process.exit(0); });
"#;

/// A client sidecar played by node's `tls`: offers ALPN `istio-peer-exchange`, writes
/// `preamble` in `chunk`-byte TLS records a few ms apart (so Envoy reads it in pieces), then
/// `message`. Returns (negotiated ALPN, every byte it got back).
pub fn tls_peer_exchange(
    port: u16,
    certs: &wasmesh_controller::certs::CertPaths,
    preamble: &[u8],
    chunk: usize,
    message: &str,
) -> (String, Vec<u8>) {
    let dir = TempDir::new("tls-peer");
    let script = dir.path().join("peer.js");
    std::fs::write(&script, TLS_PEER_JS).unwrap_or_else(|e| panic!("write peer.js: {e}"));
    let hex: String = preamble.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("node")
        .arg(&script)
        .arg(port.to_string())
        .arg(&certs.root_cert)
        .arg(&certs.cert_chain)
        .arg(&certs.private_key)
        .args([hex.as_str(), &chunk.to_string(), message])
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("peer output {text:?} ({e}); stderr {}", String::from_utf8_lossy(&out.stderr)));
    assert!(v.get("error").is_none(), "TLS peer: {v}");
    let hex = v["got"].as_str().unwrap_or_default();
    let got = (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    (v["alpn"].as_str().unwrap_or_default().to_string(), got)
}

/// A gRPC server on node's built-in `http2` module: every call is answered with `replies`
/// length-prefixed messages and `grpc-status: <status>` in the trailers. Killed when dropped.
pub struct GrpcServer {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

const GRPC_JS: &str = r#"
const http2 = require('http2');
const [mode, port, a, b, c] = process.argv.slice(2);
function frames(n, size) {
  const parts = [];
  for (let i = 0; i < n; i++) {
    const h = Buffer.alloc(5); h.writeUInt32BE(size, 1);
    parts.push(h, Buffer.alloc(size, 0x61));
  }
  return Buffer.concat(parts);
}
if (mode === 'server') {
  const replies = parseInt(a), status = b;
  const server = http2.createServer();
  server.on('stream', (stream, headers) => {
    stream.on('data', () => {});
    stream.on('end', () => {
      stream.respond({':status': 200, 'content-type': 'application/grpc'}, {waitForTrailers: true});
      stream.on('wantTrailers', () => stream.sendTrailers({'grpc-status': status, 'grpc-message': 'done'}));
      stream.end(frames(replies, 10));
    });
  });
  server.listen(parseInt(port), '127.0.0.1', () => console.log('ready'));
} else {
  // client: port, messages, calls
  const messages = parseInt(a), calls = parseInt(b);
  const session = http2.connect('http://127.0.0.1:' + port);
  let done = 0; const results = [];
  for (let i = 0; i < calls; i++) {
    const req = session.request({':method': 'POST', ':path': '/wasmesh.Echo/Say', 'content-type': 'application/grpc', 'te': 'trailers', ':authority': c || 'echo.default.svc.cluster.local'});
    let status = null, got = 0;
    req.on('response', (h) => { if (h['grpc-status'] !== undefined) status = h['grpc-status']; });
    req.on('trailers', (t) => { status = t['grpc-status']; });
    req.on('data', (d) => { got += d.length; });
    req.on('end', () => { results.push({status, got}); if (++done === calls) { console.log(JSON.stringify(results)); session.close(); } });
    req.end(frames(messages, 7));
  }
}
"#;

fn node_script(dir: &TempDir) -> std::path::PathBuf {
    let script = dir.path().join("grpc.js");
    std::fs::write(&script, GRPC_JS).unwrap_or_else(|e| panic!("write grpc.js: {e}"));
    script
}

impl GrpcServer {
    pub fn start(replies: u32, grpc_status: u32) -> GrpcServer {
        let dir = TempDir::new("grpc");
        let script = node_script(&dir);
        let port = free_port();
        let mut child = Command::new("node")
            .arg(&script)
            .args(["server", &port.to_string(), &replies.to_string(), &grpc_status.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node: {e}"));
        let mut ready = [0u8; 5];
        if let Some(out) = child.stdout.as_mut() {
            let _ = out.read_exact(&mut ready);
        }
        assert_eq!(&ready, b"ready", "gRPC server did not start");
        GrpcServer { child, port, _dir: dir }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `calls` gRPC calls (each with `messages` request messages) over one HTTP/2 connection
/// to 127.0.0.1:`port`; returns each call's grpc-status.
pub fn grpc_calls(port: u16, messages: u32, calls: u32, authority: &str) -> Vec<Option<String>> {
    let dir = TempDir::new("grpc-client");
    let script = node_script(&dir);
    let out = Command::new("node")
        .arg(&script)
        .args(["client", &port.to_string(), &messages.to_string(), &calls.to_string(), authority])
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("gRPC client output {text:?} ({e}); stderr {}", String::from_utf8_lossy(&out.stderr))
    });
    v.as_array().cloned().unwrap_or_default().iter().map(|r| r["status"].as_str().map(str::to_string)).collect()
}

/// Series of one metric from an Envoy's `/stats/prometheus` text: (labels, value).
pub fn scrape(envoy: &crate::Envoy, metric: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let text = envoy.admin("/stats/prometheus");
    parse_series(&text, metric)
}

/// Parses `name{a="b",...} value` lines of one metric.
pub fn parse_series(text: &str, metric: &str) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else { continue };
        let Some(rest) = rest.strip_prefix('{') else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let mut map = std::collections::BTreeMap::new();
        let mut s = labels;
        while let Some((k, after)) = s.split_once("=\"") {
            let end = after.find('"').unwrap_or(after.len());
            map.insert(k.trim_start_matches(',').to_string(), after[..end].to_string());
            s = after.get(end + 1..).unwrap_or("");
        }
        out.push((map, value.trim().parse().unwrap_or(f64::NAN)));
    }
    out
}

/// The bookinfo example YAML (services, workloads, destination rules, gateway, virtual services).
pub fn bookinfo_yaml() -> String {
    let dir = repo_root().join("examples/bookinfo");
    let mut out = String::new();
    for f in ["services.yaml", "workloads.yaml", "destination-rules.yaml", "gateway.yaml", "virtual-services.yaml"] {
        out.push_str(&std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")));
        out.push_str("\n---\n");
    }
    out
}

/// The benchmark scenario for `make bench`: a sidecar inbound listener with the stats filter
/// (metadata exchange from a mesh peer, every metric recorded) and an outbound one, against the
/// same listener without a filter. Target: ≤ 4 µs Envoy CPU per request over no filter.
pub fn bench_scenario() -> crate::bench::Scenario {
    use crate::bench::{Scenario, Variant};
    let resources = Resources::default();
    let mut reviews = Workload::new("reviews-v2", "default");
    reviews.labels.insert("app".into(), "reviews".into());
    reviews.labels.insert("version".into(), "v2".into());
    let mut productpage = Workload::new("productpage-v1", "default");
    productpage.labels.insert("app".into(), "productpage".into());
    productpage.labels.insert("version".into(), "v1".into());
    let peer = stats::core::LocalInfo::from_workload(&productpage);
    let inbound = sidecar_inbound_filter_json(&reviews, &resources);
    let outbound =
        wasm_http_filter(&filter(&productpage, &resources, Direction::Outbound, false), &crate::paths::wasm_dir());
    let mesh_headers = vec![
        ("x-envoy-peer-metadata".to_string(), peer.header_value()),
        ("x-envoy-peer-metadata-id".to_string(), peer.node_id.clone()),
    ];
    let with = |name: &str, filters: Vec<Value>, headers: Vec<(String, String)>| Variant {
        http_filters: filters,
        headers,
        authority: "reviews.default.svc.cluster.local:9080".into(),
        ..Variant::new(name)
    };
    Scenario {
        name: "stats".into(),
        target: "wasmesh-inbound ≤ none + 4 µs Envoy CPU/request (a no-op wasm filter alone costs about 2.7 µs)".into(),
        variants: vec![
            with("none", vec![], mesh_headers.clone()),
            with(
                "no-op wasm filter",
                vec![crate::bench::wasm_filter("wasmesh.noop", "noop", &json!({}))],
                mesh_headers.clone(),
            ),
            // What istiod's `grpc_stats` filter alone costs on these (non-gRPC) requests: Istio's
            // chains always have it, and the wasmesh variants below carry it.
            with("native: grpc_stats (istiod's, alone)", vec![stats::grpc_stats_filter()], mesh_headers.clone()),
            // Each with istiod's `grpc_stats` filter after it, as `wasmeshctl envoy` writes every
            // HTTP chain: the stats phase reads gRPC message counts from its filter state.
            Variant {
                route_config: Some(inbound_route()),
                ..with("wasmesh-inbound", vec![inbound, stats::grpc_stats_filter()], mesh_headers)
            },
            with("wasmesh-outbound", vec![outbound, stats::grpc_stats_filter()], vec![]),
        ],
        modules: vec!["stats".into(), "noop".into()],
    }
}
