//! Gateway servers in real Envoy: Istio's "Secure Gateways" task (SIMPLE with two hosts by SNI,
//! then MUTUAL) with its YAML and certificates made by openssl as the task makes them, reached
//! by curl with `--resolve`; "Ingress Gateways" with two Gateways on one gateway workload (a
//! VirtualService is served only on its Gateway's port); `httpsRedirect`; and Istio's "TCP
//! Traffic Shifting" task (80/20 over `tcp_proxy` weighted clusters). The upstreams are reached
//! directly (their WorkloadEntries name the apps' ports), so each mesh is one Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use wasmesh_e2e::http::get;
use wasmesh_e2e::paths::TempDir;
use wasmesh_e2e::stats::TcpEcho;
use wasmesh_e2e::{App, Mesh};

const GW: &str = "istio-system/istio-ingressgateway";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The task's certificates: the example.com root, a server certificate per host, a client one.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-sha256",
            "-nodes",
            "-days",
            "365",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/O=example Inc./CN=example.com",
            "-keyout",
            "example.com.key",
            "-out",
            "example.com.crt",
        ],
    );
    for name in ["httpbin.example.com", "helloworld.example.com", "client.example.com", "nginx.example.com"] {
        let (csr, key, crt) = (format!("{name}.csr"), format!("{name}.key"), format!("{name}.crt"));
        let subj = format!("/CN={name}/O={name} organization");
        openssl(dir, &["req", "-out", &csr, "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-subj", &subj]);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-sha256",
                "-days",
                "365",
                "-CA",
                "example.com.crt",
                "-CAkey",
                "example.com.key",
                "-set_serial",
                "0",
                "-in",
                &csr,
                "-out",
                &crt,
            ],
        );
    }
}

/// `kubectl create secret tls NAME --key --cert [ca.crt]`, as files under `creds`.
fn secret(dir: &Path, creds: &Path, name: &str, host: &str, with_ca: bool) {
    let d = creds.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(dir.join(format!("{host}.crt")), d.join("tls.crt")).unwrap();
    std::fs::copy(dir.join(format!("{host}.key")), d.join("tls.key")).unwrap();
    if with_ca {
        std::fs::copy(dir.join("example.com.crt"), d.join("ca.crt")).unwrap();
    }
}

/// curl as the task runs it; returns `<status> <redirect url>` or curl's error.
fn curl(dir: &Path, host: &str, port: u16, path: &str, extra: &[&str]) -> String {
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let out = Command::new("curl")
        .current_dir(dir)
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--resolve", &resolve])
        .args(["--cacert", "example.com.crt"])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl");
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).to_string()
    } else {
        format!("curl failed: {}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

/// Istio's services (httpbin 8000, helloworld 5000, tcp-echo 9000 v1/v2), each backed by a
/// WorkloadEntry at the port of the test's own server.
fn services(httpbin: u16, helloworld: u16, echo_v1: u16, echo_v2: u16, nginx: u16) -> String {
    format!(
        r#"
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
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {httpbin}}}, labels: {{app: httpbin, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: helloworld, namespace: default}}
spec:
  hosts: [helloworld.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 5000, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: helloworld}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: helloworld-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {helloworld}}}, labels: {{app: helloworld, version: v1}}}}
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
metadata: {{name: my-nginx, namespace: default}}
spec:
  hosts: [my-nginx.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  resolution: STATIC
  workloadSelector: {{labels: {{run: my-nginx}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: my-nginx, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{https: {nginx}}}, labels: {{run: my-nginx}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{istio: ingressgateway}}}}
"#
    )
}

/// Istio's "Ingress Gateway without TLS Termination" task's Gateway and VirtualService, on port
/// 8443 and with the Gateway named nginx-gateway (this Envoy serves the Secure Gateways task's
/// `mygateway` on 443).
const SNI_PASSTHROUGH: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: nginx-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8443
      name: https
      protocol: HTTPS
    tls:
      mode: PASSTHROUGH
    hosts:
    - nginx.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts:
  - nginx.example.com
  gateways:
  - nginx-gateway
  tls:
  - match:
    - port: 8443
      sniHosts:
      - nginx.example.com
    route:
    - destination:
        host: my-nginx
        port:
          number: 443
"#;

/// A TLS server with its own certificate (`openssl s_server -www`, the task's nginx): stops when
/// dropped.
struct TlsServer {
    port: u16,
    child: std::process::Child,
}

impl TlsServer {
    fn start(dir: &Path, name: &str) -> TlsServer {
        let port = wasmesh_e2e::free_port();
        let child = Command::new("openssl")
            .current_dir(dir)
            .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
            .args(["-cert", &format!("{name}.crt"), "-key", &format!("{name}.key")])
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
        TlsServer { port, child }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Secure Gateways: "Configure a TLS ingress gateway for multiple hosts" (mode SIMPLE).
const SECURE_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https-httpbin
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: httpbin-credential
    hosts:
    - httpbin.example.com
  - port:
      number: 443
      name: https-helloworld
      protocol: HTTPS
    tls:
      mode: SIMPLE
      credentialName: helloworld-credential
    hosts:
    - helloworld.example.com
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - "httpbin.example.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: /status
    - uri:
        prefix: /delay
    route:
    - destination:
        port:
          number: 8000
        host: httpbin
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld
spec:
  hosts:
  - helloworld.example.com
  gateways:
  - mygateway
  - redirect-gateway
  http:
  - match:
    - uri:
        exact: /hello
    route:
    - destination:
        host: helloworld
        port:
          number: 5000
"#;

/// Istio's Gateway `httpsRedirect` on a plaintext server, and the issue's two Gateways on one
/// workload: a VirtualService bound to the one on 8080 must not answer on the other's port 80.
const REDIRECT_AND_TWO_GATEWAYS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: redirect-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8000, name: http, protocol: HTTP}
    hosts: [helloworld.example.com]
    tls: {httpsRedirect: true}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-80, namespace: default}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - route: [{destination: {host: httpbin, port: {number: 8000}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other-8080, namespace: default}
spec:
  hosts: ["*"]
  gateways: [other-gateway]
  http:
  - route: [{destination: {host: helloworld, port: {number: 5000}}}]
"#;

/// Istio's "TCP Traffic Shifting" task: tcp-echo-all-v1.yaml's Gateway and DestinationRule with
/// tcp-echo-20-v2.yaml's VirtualService.
const TCP_ECHO_20_V2: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - "*"
---
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
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
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

#[test]
fn secure_ingress_two_gateways_https_redirect_and_tcp_traffic_shifting() {
    let dir = TempDir::new("gateway-tls");
    certificates(dir.path());
    let creds = dir.path().join("credentials");
    secret(dir.path(), &creds, "httpbin-credential", "httpbin.example.com", false);
    secret(dir.path(), &creds, "helloworld-credential", "helloworld.example.com", false);
    let httpbin = App::new("httpbin", "v1").start();
    let helloworld = App::new("helloworld", "v1").start();
    let (one, two) = (TcpEcho::start(b"one "), TcpEcho::start(b"two "));
    let nginx = TlsServer::start(dir.path(), "nginx.example.com");
    let mesh = Mesh::builder()
        .yaml(&services(httpbin.port, helloworld.port, one.port, two.port, nginx.port))
        .yaml(SNI_PASSTHROUGH)
        .yaml(SECURE_GATEWAY)
        .yaml(REDIRECT_AND_TWO_GATEWAYS)
        .yaml(TCP_ECHO_20_V2)
        .keep_ports()
        .credentials_dir(&creds)
        .gateway(GW, &[443, 8000, 80, 8080, 31400, 8443])
        .start();
    let https = mesh.gateway_port(GW, 443);
    let d = dir.path();

    // SIMPLE: each host by SNI with its own certificate, as the task's curls.
    assert_eq!(curl(d, "httpbin.example.com", https, "/status/418", &[]), "418");
    assert_eq!(curl(d, "helloworld.example.com", https, "/hello", &[]), "200");
    assert_eq!(curl(d, "httpbin.example.com", https, "/headers", &[]), "404", "path not in the VirtualService");
    // A name no server has: no filter chain, the handshake fails.
    assert!(curl(d, "nope.example.com", https, "/status/200", &[]).starts_with("curl failed"));
    // The certificate presented is the SNI host's: curl checks it against the name it asked for.
    let served = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{https}"), "-servername", "helloworld.example.com"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&served.stdout).contains("CN = helloworld.example.com"));

    // SNI passthrough: the TLS reaches the upstream, which answers with its own certificate.
    let passthrough = mesh.gateway_port(GW, 8443);
    assert_eq!(curl(d, "nginx.example.com", passthrough, "/", &[]), "200");
    let seen = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{passthrough}"), "-servername", "nginx.example.com"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&seen.stdout).contains("CN = nginx.example.com"));
    assert!(curl(d, "httpbin.example.com", passthrough, "/", &[]).starts_with("curl failed"), "no tls route");

    // httpsRedirect: 301 to https after the route matched; a host not on the server is 404.
    let plain = mesh.gateway_port(GW, 8000);
    let r = get(plain, "helloworld.example.com", "/hello", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://helloworld.example.com/hello"));
    assert_eq!(get(plain, "httpbin.example.com", "/status/200", &[]).status, 404);

    // Two Gateways on one workload: each port serves only its Gateway's VirtualServices.
    let (p80, p8080) = (mesh.gateway_port(GW, 80), mesh.gateway_port(GW, 8080));
    assert_eq!(get(p80, "httpbin.example.com", "/status/200", &[]).status, 200);
    let r = get(p8080, "anything.example.com", "/", &[]);
    assert_eq!((r.status, r.header("x-app")), (200, Some("helloworld-v1")));
    assert_eq!(get(p80, "anything.example.com", "/", &[]).status, 404, "other-8080 is not bound to port 80");
    assert_eq!(get(p8080, "httpbin.example.com", "/status/200", &[]).header("x-app"), Some("helloworld-v1"));

    // TCP traffic shifting, 80/20: the task's `nc` loop, each connection answered by one version.
    let tcp = mesh.gateway_port(GW, 31400);
    let n = 200u32;
    let mut v2 = 0;
    for i in 0..n {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
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
        assert!(text == format!("one {msg}") || text == format!("two {msg}"), "{text:?}");
        v2 += u32::from(text.starts_with("two "));
    }
    // Binomial(200, 0.2): mean 40, sd ≈ 5.7; 99.9 % two-sided: ±3.29 sd.
    assert!((21..=59).contains(&v2), "v2 answered {v2} of {n}, expected about 20 %");
}

#[test]
fn secure_gateway_mutual_tls_needs_a_client_certificate_from_the_ca() {
    let dir = TempDir::new("gateway-tls");
    certificates(dir.path());
    let creds = dir.path().join("credentials");
    // The task's step: the secret now carries ca.crt, and the Gateway says MUTUAL.
    secret(dir.path(), &creds, "httpbin-credential", "httpbin.example.com", true);
    let httpbin = App::new("httpbin", "v1").start();
    let gateway = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway # use istio default ingress gateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: MUTUAL
      credentialName: httpbin-credential # must be the same as secret
    hosts:
    - httpbin.example.com
"#;
    let vs = SECURE_GATEWAY.split("\n---\n").nth(1).unwrap();
    let mesh = Mesh::builder()
        .yaml(&services(httpbin.port, 1, 1, 1, 1))
        .yaml(gateway)
        .yaml(vs)
        .keep_ports()
        .credentials_dir(&creds)
        .gateway(GW, &[443])
        .start();
    let https = mesh.gateway_port(GW, 443);
    let d = dir.path();
    let without = curl(d, "httpbin.example.com", https, "/status/418", &[]);
    assert!(without.starts_with("curl failed"), "no client certificate: {without}");
    let with = ["--cert", "client.example.com.crt", "--key", "client.example.com.key"];
    assert_eq!(curl(d, "httpbin.example.com", https, "/status/418", &with), "418");
    // A client certificate from another CA is refused.
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-sha256",
            "-nodes",
            "-days",
            "1",
            "-newkey",
            "rsa:2048",
            "-subj",
            "/CN=rogue",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.crt",
        ],
    );
    let rogue = curl(d, "httpbin.example.com", https, "/status/418", &["--cert", "rogue.crt", "--key", "rogue.key"]);
    assert!(rogue.starts_with("curl failed") || rogue == "000", "{rogue}");
    assert_eq!(httpbin.served(), 1);
}
