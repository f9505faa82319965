//! A sidecar's outbound TCP and TLS listeners in real Envoy, as istiod writes them
//! (controller/src/sidecar_l4.rs): Istio's "TCP Traffic Shifting" from the sidecar (the task's
//! DestinationRule, its 80/20 VirtualService bound to `mesh`), and the HTTPS part of "Accessing
//! External Services": under `REGISTRY_ONLY` the task's `www.google.com` ServiceEntry (HTTPS,
//! port 443) lets `curl https://www.google.com` through the sidecar by SNI, the TLS ending at the
//! "external" server (`openssl s_server` on loopback with its own certificate, which curl
//! verifies), while a host without a ServiceEntry has its connection closed (istiod's
//! BlackHoleCluster fallthrough chain). `ALLOW_ANY`: an unknown SNI name is passed through.
//! Two meshes, one sidecar Envoy each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use wasmesh_controller::MeshConfig;
use wasmesh_e2e::paths::TempDir;
use wasmesh_e2e::stats::TcpEcho;
use wasmesh_e2e::{free_port, Mesh};

const SLEEP: &str = "default/sleep";

/// A self-signed certificate for `host` (`host.crt`, `host.key` in `dir`).
fn certificate(dir: &Path, host: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509", "-sha256", "-nodes", "-days", "1", "-newkey", "rsa:2048"])
        .args(["-subj", &format!("/CN={host}"), "-addext", &format!("subjectAltName=DNS:{host}")])
        .args(["-keyout", &format!("{host}.key"), "-out", &format!("{host}.crt")])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl s_server -www` for `host` on `port`: stops when dropped.
struct TlsServer(std::process::Child);

impl TlsServer {
    fn start(dir: &Path, host: &str, port: u16) -> TlsServer {
        let child = Command::new("openssl")
            .current_dir(dir)
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .args(["-cert", &format!("{host}.crt"), "-key", &format!("{host}.key")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < std::time::Duration::from_secs(10), "s_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        TlsServer(child)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The app's `curl https://HOST:PORT/`, its connection sent to the sidecar's listener (the
/// iptables capture's part), verifying the server's certificate against `HOST.crt`.
fn curl_https(dir: &Path, host: &str, port: u32, sidecar: u16, ca: &str) -> String {
    let out = Command::new("curl")
        .current_dir(dir)
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .args(["--connect-to", &format!("{host}:{port}:127.0.0.1:{sidecar}"), "--cacert", ca])
        .arg(format!("https://{host}:{port}/"))
        .output()
        .expect("curl");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).to_string()
    } else {
        format!("curl failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// One `nc`-style exchange: the echo server's prefix says which version answered.
fn echo_once(port: u16, i: u32) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let msg = format!("world {i}\n");
    s.write_all(msg.as_bytes()).unwrap();
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    while got.len() < 4 + msg.len() {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "connection {i} closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..k]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.ends_with(&msg), "{text:?}");
    text
}

/// tcp-echo (v1, v2) behind loopback servers, `sleep`, and the task's `www.google.com`
/// ServiceEntry with a loopback endpoint standing in for Google.
fn services(echo_v1: u16, echo_v2: u16, google: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep}}, serviceAccount: sleep}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9000, name: tcp, protocol: TCP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: tcp-echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: tcp-echo-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{tcp: {echo_v1}}}, labels: {{app: tcp-echo, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: tcp-echo-v2, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{tcp: {echo_v2}}}, labels: {{app: tcp-echo, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints:
  - address: localhost
    ports: {{https: {google}}}
"#
    )
}

/// "TCP Traffic Shifting": tcp-echo-all-v1.yaml's DestinationRule and tcp-echo-20-v2.yaml's
/// 80/20 split, the VirtualService bound to the sidecars (`mesh`, host tcp-echo, its service port
/// 9000) instead of the task's gateway. Before it, two routes this sidecar must skip (istiod's
/// static `matchTCP`): one for other source labels, one for another port.
const TCP_ECHO_20_V2_MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - tcp-echo
  tcp:
  - match:
    - sourceLabels: {app: productpage}
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
  - match:
    - port: 31400
    route:
    - destination: {host: tcp-echo, port: {number: 9000}, subset: v2}
  - match:
    - port: 9000
      sourceNamespace: default
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
      weight: 80
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v2
      weight: 20
"#;

fn mode(mode: &str) -> MeshConfig {
    serde_json::from_value(serde_json::json!({"outboundTrafficPolicy": {"mode": mode}})).unwrap()
}

#[test]
fn tcp_traffic_shifting_and_https_to_external_services_from_the_sidecar() {
    let dir = TempDir::new("sidecar-tls");
    let d = dir.path();
    certificate(d, "www.google.com");
    certificate(d, "edition.cnn.com");
    let google_port = free_port();
    let _google = TlsServer::start(d, "www.google.com", google_port);
    let (one, two) = (TcpEcho::start(b"one "), TcpEcho::start(b"two "));

    let mesh = Mesh::builder()
        .yaml(&services(one.port, two.port, google_port))
        .yaml(TCP_ECHO_20_V2_MESH)
        .keep_ports()
        .mesh_config(mode("REGISTRY_ONLY"))
        .tcp_client(SLEEP)
        .tcp_outbound(SLEEP, "tcp-echo", 9000)
        .tcp_outbound(SLEEP, "*", 443)
        .start();

    // TCP traffic shifting, 80/20, from the sidecar: each connection answered by one version.
    let echo = mesh.tcp_outbound_port(SLEEP, "tcp-echo", 9000);
    let n = 200u32;
    let v2 = (0..n).filter(|i| echo_once(echo, *i).starts_with("two ")).count();
    // Binomial(200, 0.2): mean 40, sd ≈ 5.7; 99.9 % two-sided: ±3.29 sd. (The skipped routes
    // would send everything to v2.)
    assert!((21..=59).contains(&v2), "v2 answered {v2} of {n}, expected about 20 %");

    // HTTPS to the ServiceEntry's host: passed through by SNI, the TLS ends at the external
    // server (curl verifies its certificate for www.google.com).
    let tls = mesh.tcp_outbound_port(SLEEP, "*", 443);
    for _ in 0..3 {
        assert_eq!(curl_https(d, "www.google.com", 443, tls, "www.google.com.crt"), "200");
    }
    // REGISTRY_ONLY: a host without a ServiceEntry is refused: the
    // BlackHoleCluster chain closes the connection during the handshake.
    let refused = curl_https(d, "edition.cnn.com", 443, tls, "edition.cnn.com.crt");
    assert!(refused.starts_with("curl failed"), "{refused}");
    // No SNI at all: the fallthrough chain too.
    let raw = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{tls}"), "-noservername"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw.stdout).contains("CN = www.google.com"), "no SNI reached google");
    drop(mesh);

    // ALLOW_ANY: an unknown SNI name goes to PassthroughCluster, which resolves it and connects on
    // the listener's service port (here a free port the stand-in server listens on; the name
    // `localhost` stands for a resolvable external name).
    certificate(d, "localhost");
    let any_port = free_port();
    let _any = TlsServer::start(d, "localhost", any_port);
    let open = Mesh::builder()
        .yaml(&services(one.port, two.port, google_port))
        .keep_ports()
        .mesh_config(mode("ALLOW_ANY"))
        .tcp_client(SLEEP)
        .tcp_outbound(SLEEP, "*", u32::from(any_port))
        .start();
    let tls = open.tcp_outbound_port(SLEEP, "*", u32::from(any_port));
    let r = curl_https(d, "localhost", u32::from(any_port), tls, "localhost.crt");
    assert_eq!(r, "200", "{}", open.envoy(SLEEP).log_tail(40));
}
