//! Mutual TLS between sidecars in real Envoy: certificates from `wasmeshctl certs`, bootstraps
//! from `wasmeshctl envoy`, PeerAuthentication STRICT / PERMISSIVE / DISABLE and `portLevelMtls`,
//! the client verifying the server's SPIFFE identity, and the server refusing foreign roots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wasmesh_e2e::http::{get, request};
use wasmesh_e2e::mtls::{envoy_validate, resources, sidecar, MeshCa, Sidecar};
use wasmesh_e2e::{free_port, paths, App, Mesh};

/// httpbin (two workload ports) behind a ServiceEntry, and the `sleep` and `other` clients.
fn mesh_yaml(http: u16, admin: u16, extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: httpbin, namespace: default}}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports:
  - {{number: 8000, name: http, protocol: HTTP}}
  - {{number: 9000, name: http-admin, protocol: HTTP}}
  resolution: STATIC
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {http}, http-admin: {admin}}}
  labels: {{app: httpbin, version: v1}}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep}}, serviceAccount: sleep}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: other, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: other}}, serviceAccount: other}}
{extra}"#
    )
}

const MESH_STRICT: &str = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";

struct World {
    // Field order: sidecars stop before the CA directory goes.
    server: Sidecar,
    sleep: Sidecar,
    ports: (u16, u16),
    _ca: MeshCa,
}

fn world(extra: &str) -> World {
    let ports = (free_port(), free_port());
    let res = resources(&mesh_yaml(ports.0, ports.1, extra));
    let ca = MeshCa::for_resources(&res);
    let server = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&res, "default/sleep", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));
    World { server, sleep, ports, _ca: ca }
}

/// A call from `client`'s app through its sidecar to httpbin's service port.
fn via(client: &Sidecar, service_port: u16) -> wasmesh_e2e::Response {
    get(client.outbound_port, &format!("httpbin:{service_port}"), "/headers", &[])
}

/// A plaintext request straight to a workload port (a client without a sidecar).
fn plaintext(port: u16) -> std::io::Result<wasmesh_e2e::Response> {
    request(port, "GET", "/headers", &[("host", "httpbin:8000")], b"")
}

fn xfcc(r: &wasmesh_e2e::Response) -> Option<String> {
    r.json()["headers"]["x-forwarded-client-cert"].as_str().map(str::to_string)
}

fn stat_sum(s: &Sidecar, suffix: &str) -> u64 {
    s.envoy
        .admin("/stats")
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn strict_accepts_mesh_clients_and_refuses_plaintext() {
    let w = world(MESH_STRICT);
    assert!(envoy_validate(&w.server.bootstrap).is_ok());

    let r = via(&w.sleep, 8000);
    assert_eq!(r.status, 200, "{}", r.text());
    let cert = xfcc(&r).expect("the app sees the peer identity in x-forwarded-client-cert");
    assert!(cert.contains("URI=spiffe://cluster.local/ns/default/sa/sleep"), "{cert}");
    assert!(cert.starts_with("By=spiffe://cluster.local/ns/default/sa/httpbin;"), "{cert}");
    assert!(stat_sum(&w.server, ".ssl.handshake") >= 1, "the server completed TLS handshakes");

    // A client without a sidecar: the TLS handshake fails, no HTTP response at all.
    for port in [w.ports.0, w.ports.1] {
        let before = stat_sum(&w.server, ".ssl.connection_error");
        let r = plaintext(port);
        assert!(r.is_err(), "plaintext to STRICT port {port} must be refused, got {:?}", r.map(|r| r.status));
        assert!(stat_sum(&w.server, ".ssl.connection_error") > before);
    }
    assert_eq!(w.server.app.as_ref().map(|a| a.served()), Some(1), "only the mTLS request reached the app");
}

#[test]
fn permissive_accepts_mtls_and_plaintext_on_one_port() {
    // No PeerAuthentication at all: Istio's default is PERMISSIVE.
    let w = world("");
    let listener = w.server.bootstrap["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == format!("inbound_{}", w.ports.0)))
        .cloned()
        .expect("inbound listener");
    assert_eq!(listener["filter_chains"].as_array().map(Vec::len), Some(2));
    assert_eq!(listener["listener_filters"][0]["name"], "envoy.filters.listener.tls_inspector");

    let r = via(&w.sleep, 8000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        xfcc(&r).is_some_and(|c| c.contains("URI=spiffe://cluster.local/ns/default/sa/sleep")),
        "mesh client used mTLS"
    );

    let r = plaintext(w.ports.0).expect("plaintext is accepted");
    assert_eq!(r.status, 200);
    assert_eq!(xfcc(&r), None, "no client certificate on plaintext");
    assert_eq!(stat_sum(&w.server, ".ssl.handshake"), 1, "one TLS connection (the mesh client), one plaintext");
}

#[test]
fn disable_serves_plaintext_and_clients_follow() {
    let w = world("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec: {mtls: {mode: DISABLE}}\n");
    let inbound = w.server.bootstrap["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == format!("inbound_{}", w.ports.0)))
        .cloned()
        .expect("inbound listener");
    assert!(inbound["filter_chains"][0].get("transport_socket").is_none());
    // The client's cluster follows the server's policy (Istio auto mTLS): plaintext.
    let r = via(&w.sleep, 8000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(xfcc(&r), None);
    assert_eq!(stat_sum(&w.server, ".ssl.handshake"), 0);
    assert_eq!(plaintext(w.ports.0).map(|r| r.status).ok(), Some(200));
}

#[test]
fn port_level_mtls_overrides_one_port() {
    // STRICT mesh-wide; httpbin's admin port is PERMISSIVE, its http port inherits STRICT.
    let (http, admin) = (free_port(), free_port());
    let extra = format!(
        "{MESH_STRICT}---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: httpbin, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  portLevelMtls:\n    {admin}: {{mode: PERMISSIVE}}\n    {http}: {{mode: UNSET}}\n"
    );
    let res = resources(&mesh_yaml(http, admin, &extra));
    let ca = MeshCa::for_resources(&res);
    let server = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&res, "default/sleep", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));

    assert!(plaintext(http).is_err(), "port {http} is STRICT (UNSET inherits)");
    assert_eq!(plaintext(admin).map(|r| r.status).ok(), Some(200), "port {admin} is PERMISSIVE");
    for port in [8000, 9000] {
        let r = via(&sleep, port);
        assert_eq!(r.status, 200, "service port {port}: {}", r.text());
        assert!(xfcc(&r).is_some(), "the mesh client uses mTLS on service port {port}");
    }
    drop(server);
}

#[test]
fn client_refuses_a_server_with_another_identity() {
    // The client's view: httpbin runs as sa/httpbin. The server actually holds sa/impostor's
    // certificate (its own WorkloadEntry says so).
    let (http, admin) = (free_port(), free_port());
    let client_view = resources(&mesh_yaml(http, admin, ""));
    let server_view =
        resources(&mesh_yaml(http, admin, "").replace("serviceAccount: httpbin", "serviceAccount: impostor"));
    let ca = MeshCa::for_resources(&server_view);
    ca.issue("default", "httpbin");
    let server = sidecar(&server_view, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&client_view, "default/sleep", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));
    let r = via(&sleep, 8000);
    assert_eq!(r.status, 503, "the SAN check must fail: {}", r.text());
    assert!(r.text().contains("upstream connect error"), "{}", r.text());
    assert!(stat_sum(&sleep, ".ssl.fail_verify_san") >= 1, "{}", sleep.envoy.admin("/stats?filter=ssl"));
    assert_eq!(server.app.as_ref().map(|a| a.served()), Some(0));
}

#[test]
fn server_refuses_certificates_from_another_root() {
    let (http, admin) = (free_port(), free_port());
    let res = resources(&mesh_yaml(http, admin, MESH_STRICT));
    let ca = MeshCa::for_resources(&res);
    let foreign = MeshCa::for_resources(&res);
    let server = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&res, "default/sleep", None, Some(foreign.path())).unwrap_or_else(|e| panic!("{e}"));
    let r = via(&sleep, 8000);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(server.app.as_ref().map(|a| a.served()), Some(0));
    assert!(stat_sum(&server, ".ssl.fail_verify_error") + stat_sum(&server, ".ssl.connection_error") >= 1);
}

#[test]
fn strict_needs_certificates_to_generate() {
    let res = resources(&mesh_yaml(free_port(), free_port(), MESH_STRICT));
    let e = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), None).err().expect("must fail");
    assert!(e.contains("is STRICT (PeerAuthentication istio-system/default)") && e.contains("wasmeshctl certs"), "{e}");
}

#[test]
fn principals_allow_the_sleep_identity_and_refuse_another() {
    let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: httpbin, namespace: default}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/sleep]}\n";
    let (http, admin) = (free_port(), free_port());
    let res = resources(&mesh_yaml(http, admin, &format!("{MESH_STRICT}{policy}")));
    let ca = MeshCa::for_resources(&res);
    let server = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&res, "default/sleep", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));
    let other = sidecar(&res, "default/other", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));

    let r = via(&sleep, 8000);
    assert_eq!(r.status, 200, "sleep is allowed: {}", r.text());
    assert_eq!(r.json()["service"], "httpbin");
    let r = via(&other, 8000);
    assert_eq!(r.status, 403, "other is refused: {}", r.text());
    assert_eq!(r.text(), "RBAC: access denied");
    assert_eq!(server.app.as_ref().map(|a| a.served()), Some(1));
}

#[test]
fn principals_refuse_plaintext_callers_under_permissive() {
    // PERMISSIVE lets a plaintext client in, but it has no identity: `principals` cannot match.
    let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: httpbin, namespace: default}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/sleep]}\n";
    let (http, admin) = (free_port(), free_port());
    let res = resources(&mesh_yaml(http, admin, policy));
    let ca = MeshCa::for_resources(&res);
    let _server = sidecar(&res, "default/httpbin-v1", Some(App::new("httpbin", "v1")), Some(ca.path()))
        .unwrap_or_else(|e| panic!("{e}"));
    let sleep = sidecar(&res, "default/sleep", None, Some(ca.path())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(via(&sleep, 8000).status, 200);
    let r = plaintext(http).expect("PERMISSIVE accepts the connection");
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"));
    // Forging the identity header does not help: the filter reads the connection's certificate.
    let forged = request(
        http,
        "GET",
        "/headers",
        &[("host", "httpbin:8000"), ("x-forwarded-client-cert", "By=x;URI=spiffe://cluster.local/ns/default/sa/sleep")],
        b"",
    )
    .expect("response");
    assert_eq!(forged.status, 403);
}

#[test]
fn ingress_gateway_reaches_a_strict_sidecar_over_mtls() {
    // Istio's httpbin example behind the ingress gateway, mesh-wide STRICT, through the shared
    // mesh harness (`wasmeshctl envoy --certs DIR` for every proxy).
    let yaml = std::fs::read_to_string(paths::repo_root().join("examples/httpbin/httpbin.yaml")).expect("example");
    let ca = MeshCa::for_resources(&resources(&yaml));
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .yaml(MESH_STRICT)
        .certs_dir(ca.path())
        .gateway("istio-system/istio-ingressgateway", &[80])
        .sidecar("default/httpbin-v1", App::new("httpbin", "v1"))
        .start();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let r = get(gw, "httpbin.example.com", "/status/200", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let cert = r.json()["headers"]["x-forwarded-client-cert"].as_str().unwrap_or_default().to_string();
    assert!(cert.contains("URI=spiffe://cluster.local/ns/istio-system/sa/default"), "the gateway's identity: {cert:?}");
    // The sidecar refuses the same request in plaintext.
    let port = mesh.inbound_port("default/httpbin-v1");
    assert!(request(port, "GET", "/status/200", &[("host", "httpbin.example.com")], b"").is_err());
}
