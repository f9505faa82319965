//! Helpers for `e2e/tests/authz_tcp.rs`: certificates with chosen URI SANs (openssl, one CA per
//! test), TCP and HTTPS listeners that accept mutual TLS and plaintext on one port (as Istio
//! PERMISSIVE), a one-shot echo upstream, and clients that tell an accepted connection or request
//! from a refused one.

// A test harness: a broken setup is a test failure, reported by panicking with the reason.
#![allow(clippy::panic)]

use crate::paths::TempDir;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A CA and certificates it signed, in a temporary directory.
pub struct SanCa {
    dir: TempDir,
}

/// One certificate and its key.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    if !out.status.success() {
        panic!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl SanCa {
    pub fn new() -> SanCa {
        let dir = TempDir::new("san-ca");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/O=wasmesh-e2e",
                "-days",
                "2",
            ],
            dir.path(),
        );
        SanCa { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate named `name` whose SANs are `sans` (`URI:…`, `DNS:…`), usable as a server
    /// and as a client certificate.
    pub fn issue(&self, name: &str, sans: &[&str]) -> Leaf {
        let d = self.dir.path();
        let ext = format!(
            "[e]\nsubjectAltName = {}\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth, clientAuth\n",
            sans.join(", ")
        );
        std::fs::write(d.join(format!("{name}.cnf")), ext).unwrap_or_else(|e| panic!("{e}"));
        let (key, csr, pem, cnf) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.cnf"));
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/O=wasmesh-e2e/CN={name}"),
            ],
            d,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &cnf,
                "-extensions",
                "e",
            ],
            d,
        );
        Leaf { cert: d.join(pem), key: d.join(key) }
    }
}

impl Default for SanCa {
    fn default() -> Self {
        SanCa::new()
    }
}

fn downstream_tls(server: &Leaf, root: &Path) -> Value {
    json!({"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": false,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": server.cert.display().to_string()}, "private_key": {"filename": server.key.display().to_string()}}],
            "validation_context": {"trusted_ca": {"filename": root.display().to_string()}},
        }
    }})
}

/// A listener on `port` running `filters` behind TLS (a client certificate optional, verified
/// against `root`) and in plaintext on the same port.
pub fn listener(name: &str, port: u16, filters: Vec<Value>, server: &Leaf, root: &Path) -> Value {
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}],
        "filter_chains": [
            {"filter_chain_match": {"transport_protocol": "tls"}, "filters": filters.clone(), "transport_socket": downstream_tls(server, root)},
            {"filter_chain_match": {"transport_protocol": "raw_buffer"}, "filters": filters},
        ],
    })
}

/// `tcp_proxy` to `cluster`.
pub fn tcp_proxy(cluster: &str) -> Value {
    json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster, "cluster": cluster,
    }})
}

/// An HCM answering `200 ok`, with `http_filters` before the router. `xfcc`: the inbound
/// sidecar's client-certificate settings (istiod's and `wasmeshctl envoy`'s: APPEND_FORWARD with
/// subject, URI and DNS); without it the HCM forwards nothing about the peer.
pub fn hcm(name: &str, http_filters: Vec<Value>, xfcc: bool) -> Value {
    let mut filters = http_filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": filters,
    });
    if xfcc {
        hcm["forward_client_cert_details"] = json!("APPEND_FORWARD");
        hcm["set_current_client_cert_details"] = json!({"subject": true, "uri": true, "dns": true});
    } else {
        hcm["forward_client_cert_details"] = json!("SANITIZE");
    }
    json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm})
}

/// A plain cluster to a loopback port.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    })
}

/// An upstream that answers the first chunk of each connection with `echo:` + the chunk and
/// closes, so a client knows at once whether its bytes got through. Stops when dropped.
pub struct OneShotEcho {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl OneShotEcho {
    pub fn start() -> OneShotEcho {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = conn.read(&mut buf) {
                        let mut out = b"echo:".to_vec();
                        out.extend_from_slice(buf.get(..n).unwrap_or_default());
                        let _ = conn.write_all(&out);
                    }
                });
            }
        });
        OneShotEcho { port, stop }
    }
}

impl Drop for OneShotEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Whether a TCP connection to `port` (mutual TLS with `cert`, or plaintext) gets `hello`
/// through to the echo and its answer back.
pub fn tcp_passes(port: u16, cert: Option<&Leaf>) -> bool {
    let reply = match cert {
        None => {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(b"hello").is_err() {
                return false;
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        }
        Some(c) => {
            let mut child = Command::new("timeout")
                .args(["10", "openssl", "s_client", "-quiet", "-no_ign_eof", "-connect"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-cert")
                .arg(&c.cert)
                .arg("-key")
                .arg(&c.key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run openssl s_client: {e}"));
            // Keep stdin open until the server answers or closes: s_client stops at its EOF.
            let mut stdin = child.stdin.take();
            if let Some(s) = stdin.as_mut() {
                let _ = s.write_all(b"hello");
            }
            let out = child.wait_with_output().map(|o| o.stdout).unwrap_or_default();
            drop(stdin);
            out
        }
    };
    let text = String::from_utf8_lossy(&reply);
    text.contains("echo:hello")
}

/// The status of `GET /` over HTTPS to `port` with client certificate `cert` (or plaintext).
pub fn http_status(port: u16, cert: Option<&Leaf>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]);
    match cert {
        Some(c) => {
            cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key).arg(format!("https://127.0.0.1:{port}/"));
        }
        None => {
            cmd.arg(format!("http://127.0.0.1:{port}/"));
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}
