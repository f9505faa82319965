//! CUSTOM authorization with `envoyExtAuthzGrpc` providers in real Envoy: every wasm listener has a twin running Envoy's native `ext_authz` filter as
//! istiod configures it for the same provider, in the same Envoy, in front of the same app and
//! the same (real, gRPC or HTTP) authorization server. Each request goes to both; status, body,
//! client headers, the headers the app receives and the CheckRequest the server receives must
//! be the same, `includeRequestBodyInCheck` included.
//!
//! Needs the filters built (`make wasm`) and Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::Direction;
use wasmesh_e2e::authz::{self, istiod, ListenerSpec, Proxy};
use wasmesh_e2e::ext_authz::{istiod_grpc_ext_authz, Check, Closer, GrpcExtAuthz};
use wasmesh_e2e::http::{request, Response};
use wasmesh_e2e::App;
use wasmesh_istio::{load_str, Resources, Workload};

const CUSTOM: &str = authz::CUSTOM_POLICY;

fn res() -> Resources {
    Resources { items: load_str(CUSTOM, "ext-authz-test.yaml").unwrap() }
}

fn workload() -> Workload {
    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl
}

fn grpc(port: u16, extra: Value) -> Value {
    let mut g = json!({"service": "foo/127.0.0.1", "port": port});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            g[k] = v;
        }
    }
    json!({"name": "ext", "envoyExtAuthzGrpc": g})
}

/// The wasm listener (what wasmeshctl's authz plugin writes) and its native twin for `provider`.
fn pair(name: &str, provider: &Value, clusters: &mut BTreeMap<String, Value>) -> (ListenerSpec, ListenerSpec) {
    let mesh = MeshConfig { extension_providers: vec![provider.clone()], ..MeshConfig::default() };
    let mut wasm = ListenerSpec::new(&format!("{name}-wasm"));
    let c = authz::plugin_filters(&workload(), &res(), &mesh, Direction::Inbound, wasm.port)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for f in &c.http_filters {
        wasm = wasm.wasm(f);
    }
    wasm.upstream = Some("app".into());
    let cluster = c.clusters[0].clone();
    let cluster_name = cluster["name"].as_str().unwrap().to_string();
    clusters.insert(cluster_name.clone(), cluster);
    let mut native = ListenerSpec::new(&format!("{name}-native"));
    let mut filters = istiod::custom_http_filters(&res(), &workload(), provider, &cluster_name);
    filters[1] = istiod_grpc_ext_authz(provider, &cluster_name);
    native.http_filters = filters;
    native.upstream = Some("app".into());
    (wasm, native)
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut all: Vec<(&str, &str)> = vec![("host", "httpbin.foo:8000")];
    all.extend_from_slice(headers);
    request(port, method, path, &all, body).unwrap_or_else(|e| panic!("{method} {path} to {port}: {e}"))
}

/// What must be the same in the CheckRequests of the two listeners: everything but the time,
/// the request id (checked to be Envoy's stream id of it first) and the listener ports.
fn normalized(mut c: Check, what: &str) -> Check {
    let a = c.attributes.as_mut().unwrap();
    for peer in [a.source.as_mut(), a.destination.as_mut()].into_iter().flatten() {
        if let Some(sa) = peer.address.as_mut().and_then(|x| x.address.as_mut()) {
            use envoy_types::pb::envoy::config::core::v3::address::Address as A;
            if let A::SocketAddress(s) = sa {
                s.port_specifier = None;
            }
        }
    }
    let r = a.request.as_mut().unwrap();
    assert!(r.time.is_some(), "{what}: request time");
    r.time = None;
    let h = r.http.as_mut().unwrap();
    h.headers.remove("x-request-id");
    assert!(!h.id.is_empty() && h.id.bytes().all(|b| b.is_ascii_digit()), "{what}: id {:?} is a number", h.id);
    h.id.clear();
    // Compared in name order (a protobuf map has none).
    let sorted: BTreeMap<String, String> = std::mem::take(&mut h.headers).into_iter().collect();
    h.headers.insert("(sorted)".into(), format!("{sorted:?}"));
    c
}

/// Sends the same request to both listeners and compares everything; returns the wasm answer.
fn same(
    ext: &GrpcExtAuthz,
    (w, n): (u16, u16),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let what = format!("{method} {path} {headers:?} ({} body bytes)", body.len());
    let before = ext.checks().len();
    let wr = send(w, method, path, headers, body);
    let wc: Vec<Check> = ext.checks()[before..].to_vec();
    let before = ext.checks().len();
    let nr = send(n, method, path, headers, body);
    let nc: Vec<Check> = ext.checks()[before..].to_vec();
    assert_eq!(wr.status, nr.status, "{what}: status; wasm {:?} native {:?}", wr.text(), nr.text());
    assert_eq!(wc.len(), nc.len(), "{what}: checks sent");
    for (a, b) in wc.into_iter().zip(nc) {
        let (a, b) = (normalized(a, &what), normalized(b, &what));
        let (a, b) = (format!("{a:#?}"), format!("{b:#?}"));
        let diff: Vec<String> =
            a.lines().zip(b.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("wasm {x}\nnative {y}")).collect();
        assert!(a == b, "{what}: CheckRequest differs:\n{}", diff.join("\n"));
    }
    if wr.status == 200 {
        let (mut wb, mut nb) = (wr.json(), nr.json());
        for b in [&mut wb, &mut nb] {
            b["headers"]["x-request-id"] = Value::Null;
        }
        assert_eq!(wb["headers"], nb["headers"], "{what}: headers upstream (wasm left, native right)");
        assert_eq!(wb["body_bytes"], nb["body_bytes"], "{what}: body upstream");
    } else {
        assert_eq!(wr.text(), nr.text(), "{what}: body");
    }
    for h in ["x-reason", "www-authenticate", "content-type", "x-trace-out"] {
        assert_eq!(wr.header(h), nr.header(h), "{what}: client header {h}");
    }
    wr
}

#[test]
fn grpc_checks_answer_as_envoy_ext_authz() {
    let ext = GrpcExtAuthz::start();
    let closer = Closer::start();
    let app = App::new("httpbin", "v1").start();
    let mut clusters = BTreeMap::new();
    let cases = [
        ("g", grpc(ext.port, json!({"timeout": "0.5s"}))),
        ("gopen", grpc(ext.port, json!({"timeout": "0.5s", "failOpen": true}))),
        ("gclose", grpc(closer.port, json!({"statusOnError": "503"}))),
    ];
    let mut listeners = Vec::new();
    let mut ports = BTreeMap::new();
    for (name, prov) in &cases {
        let (w, n) = pair(name, prov, &mut clusters);
        ports.insert(*name, (w.port, n.port));
        listeners.push(w);
        listeners.push(n);
    }
    let mut clusters: Vec<Value> = clusters.into_values().collect();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = Proxy { listeners, clusters, stats_tags: Vec::new() }.start("ext-authz-grpc");

    // Allow: every kind of header change upstream, a removal, a response header.
    let allow_headers = [
        ("x-ext-authz", "allow"),
        ("x-user-in", "alice"),
        ("x-user", "forged"),
        ("x-appended", "client"),
        ("x-added", "client"),
        ("x-if-absent", "client"),
        ("x-overwrite", "client"),
        ("x-set", "client"),
        ("x-remove-me", "r"),
        ("authorization", "Bearer t"),
    ];
    let g = ports["g"];
    let ok = same(&ext, g, "GET", "/protected/a?q=1", &allow_headers, b"");
    assert_eq!(ok.status, 200);
    let up = &ok.json()["headers"];
    assert_eq!(up["x-user"], "alice", "append false: replaced");
    assert_eq!(up["x-remove-me"], Value::Null, "headers_to_remove");
    // Envoy's gRPC client looks at `append` only: true appends to a present header, anything
    // else sets (`append_action` ADD_IF_ABSENT / OVERWRITE_IF_EXISTS are not looked at).
    assert_eq!(up["x-appended"], "client,from-authz", "append true on a present header");
    assert_eq!(up["x-appended-absent"], Value::Null, "append true on an absent header");
    assert_eq!(up["x-added"], "from-authz", "append unset: set");
    assert_eq!(up["x-overwrite-absent"], "from-authz");
    assert_eq!(up["x-if-absent"], "from-authz");
    assert_eq!(ok.header("x-trace-out"), Some("t1"), "response_headers_to_add");
    let d = same(&ext, g, "GET", "/protected/b", &[("x-ext-authz", "deny")], b"");
    assert_eq!((d.status, d.text().as_str()), (401, "denied by ext_authz for /protected/b"));
    assert_eq!(d.header("x-reason"), Some("policy"));
    assert_eq!(same(&ext, g, "GET", "/protected/c", &[], b"").status, 403, "a bare denial: 403");
    assert_eq!(same(&ext, g, "GET", "/protected/e", &[("x-ext-authz", "error")], b"").status, 403, "error");
    assert_eq!(same(&ext, g, "GET", "/protected/h", &[("x-ext-authz", "hang")], b"").status, 403, "timeout");
    assert_eq!(same(&ext, g, "GET", "/public", &[("x-ext-authz", "deny")], b"").status, 200, "no rule: no check");
    // A body on a provider without includeRequestBodyInCheck: not sent, not waited for.
    assert_eq!(same(&ext, g, "POST", "/protected/p", &allow_headers, b"0123456789").status, 200);

    let open = ports["gopen"];
    assert_eq!(same(&ext, open, "GET", "/protected/e", &[("x-ext-authz", "error")], b"").status, 200, "failOpen");
    assert_eq!(same(&ext, open, "GET", "/protected/h", &[("x-ext-authz", "hang")], b"").status, 200, "failOpen");
    assert_eq!(same(&ext, open, "GET", "/protected/d", &[("x-ext-authz", "deny")], b"").status, 401);
    let close = ports["gclose"];
    assert_eq!(same(&ext, close, "GET", "/protected/x", &[("x-ext-authz", "allow")], b"").status, 503, "closed");
}

/// `includeRequestBodyInCheck` (HTTP and gRPC providers) with `maxRequestBytes: 0` (Envoy rejects
/// it) is refused by wasmeshctl with the policy, the field and why.
#[test]
fn include_request_body_in_check_is_refused() {
    let body = json!({"includeRequestBodyInCheck": {"maxRequestBytes": 0}});
    let mut h = json!({"service": "127.0.0.1", "port": 9000});
    h["includeRequestBodyInCheck"] = body["includeRequestBodyInCheck"].clone();
    for provider in [grpc(9000, body.clone()), json!({"name": "ext", "envoyExtAuthzHttp": h})] {
        let mesh = MeshConfig { extension_providers: vec![provider.clone()], ..MeshConfig::default() };
        let e = authz::plugin_filters(&workload(), &res(), &mesh, Direction::Inbound, 8000).unwrap_err();
        assert!(e.contains("AuthorizationPolicy foo/ext") && e.contains("spec.provider.name"), "{e}");
        assert!(
            e.contains("includeRequestBodyInCheck: includeRequestBodyInCheck.maxRequestBytes must be greater than 0"),
            "{e}"
        );
    }
}

/// Two CUSTOM providers on one workload (Istio 1.30, `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`):
/// an HTTP provider `a-http` and a gRPC provider `b-grpc`, each with its own policy, plus a DENY
/// policy. The native twin is istiod's chain for it: one shadow-RBAC + ext_authz pair per
/// provider in name order, then the DENY RBAC filter. Each request goes to both listeners; the
/// checks each server receives (which, how many, the gRPC CheckRequest whole), the status, the
/// body and the headers upstream must be the same.
#[test]
fn several_custom_providers_answer_as_istiod_pairs() {
    // What a user sets for wasmeshctl as for istiod; no other test in this file has two providers.
    std::env::set_var("PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS", "true");
    let http_ext = wasmesh_e2e::authz::ExtAuthz::start();
    let grpc_ext = GrpcExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let a = json!({"name": "a-http", "envoyExtAuthzHttp": {
        "service": "foo/127.0.0.1", "port": http_ext.port,
        "includeRequestHeadersInCheck": ["x-ext-authz", "x-user-in"],
        "headersToUpstreamOnAllow": ["x-user", "x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-reason"],
    }});
    let mut b = grpc(grpc_ext.port, json!({"timeout": "0.5s"}));
    b["name"] = json!("b-grpc");
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: h, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: a-http}
  rules: [{to: [{operation: {paths: ["/a*", "/both*", "/chain*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: g, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: b-grpc}
  rules:
  - to: [{operation: {paths: ["/b*", "/both*"]}}]
  - to: [{operation: {paths: ["/chain*"]}}]
    when: [{key: "request.headers[x-ext-authz-check-result]", values: [allowed]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: d, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/both/deny"]}}]}]
"#;
    let res = Resources { items: load_str(yaml, "two-providers.yaml").unwrap() };
    let mesh = MeshConfig { extension_providers: vec![b.clone(), a.clone()], ..MeshConfig::default() };
    let mut wasm = ListenerSpec::new("two-wasm");
    let c = authz::plugin_filters(&workload(), &res, &mesh, Direction::Inbound, wasm.port).unwrap();
    for f in &c.http_filters {
        wasm = wasm.wasm(f);
    }
    wasm.upstream = Some("app".into());
    let names: Vec<String> = c.clusters.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    let cluster = |port: u16| names.iter().find(|n| n.contains(&format!("|{port}|"))).unwrap().clone();
    assert_eq!(names.len(), 2, "one cluster per provider: {names:?}");
    let mut native = ListenerSpec::new("two-native");
    native.http_filters = istiod::custom_http_filters(&res, &workload(), &a, &cluster(http_ext.port));
    let mut pair = istiod::custom_http_filters(&res, &workload(), &b, &cluster(grpc_ext.port));
    pair[1] = istiod_grpc_ext_authz(&b, &cluster(grpc_ext.port));
    native.http_filters.extend(pair);
    native.http_filters.extend(istiod::http_filters(&res, &workload(), &[]));
    native.upstream = Some("app".into());
    let (wp, np) = (wasm.port, native.port);
    let mut clusters = c.clusters.clone();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = Proxy { listeners: vec![wasm, native], clusters, stats_tags: Vec::new() }.start("ext-authz-two");

    // (path, headers, status, HTTP checks, gRPC checks)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, usize, usize);
    let cases: [Case<'_>; 10] = [
        ("/a/1", &[("x-ext-authz", "allow"), ("x-user-in", "alice")], 200, 1, 0),
        ("/b/1", &[("x-ext-authz", "allow")], 200, 0, 1),
        ("/b/2", &[("x-ext-authz", "deny")], 401, 0, 1),
        ("/both/1", &[("x-ext-authz", "allow"), ("x-user-in", "bob")], 200, 1, 1),
        ("/both/2", &[("x-ext-authz", "deny")], 403, 1, 0),
        ("/both/3", &[("x-ext-authz", "error")], 403, 1, 0),
        ("/both/4", &[("x-ext-authz", "allow"), ("x-ext-authz-grpc", "deny")], 401, 1, 1),
        ("/both/deny", &[("x-ext-authz", "allow")], 403, 1, 1),
        // The gRPC provider's rule reads the header the HTTP provider set.
        ("/chain/1", &[("x-ext-authz", "allow"), ("x-ext-authz-grpc", "deny")], 401, 1, 1),
        ("/public", &[("x-ext-authz", "deny")], 200, 0, 0),
    ];
    for (path, headers, status, n_http, n_grpc) in cases {
        let what = format!("GET {path} {headers:?}");
        let mut answers = Vec::new();
        for port in [wp, np] {
            let (h0, g0) = (http_ext.checks().len(), grpc_ext.checks().len());
            let r = send(port, "GET", path, headers, b"");
            let hc = http_ext.checks()[h0..].to_vec();
            let gc = grpc_ext.checks()[g0..].to_vec();
            answers.push((r, hc, gc));
        }
        let (w, n) = (&answers[0], &answers[1]);
        assert_eq!((w.0.status, n.0.status), (status, status), "{what}: wasm {:?} native {:?}", w.0.text(), n.0.text());
        assert_eq!((w.1.len(), w.2.len()), (n_http, n_grpc), "{what}: checks sent by wasm (HTTP, gRPC)");
        assert_eq!((n.1.len(), n.2.len()), (n_http, n_grpc), "{what}: checks sent by native (HTTP, gRPC)");
        for (wc, nc) in w.1.iter().zip(&n.1) {
            assert_eq!((&wc.method, &wc.path), (&nc.method, &nc.path), "{what}");
            for h in ["host", "x-ext-authz", "x-user-in", "content-length", "x-ext-authz-check-result"] {
                assert_eq!(wc.header(h), nc.header(h), "{what}: HTTP check header {h}");
            }
        }
        for (wc, nc) in w.2.iter().zip(&n.2) {
            let (a, b) =
                (format!("{:#?}", normalized(wc.clone(), &what)), format!("{:#?}", normalized(nc.clone(), &what)));
            assert!(a == b, "{what}: CheckRequest differs:\nwasm {a}\nnative {b}");
        }
        if status == 200 {
            let (mut wb, mut nb) = (w.0.json(), n.0.json());
            for b in [&mut wb, &mut nb] {
                b["headers"]["x-request-id"] = Value::Null;
            }
            assert_eq!(wb["headers"], nb["headers"], "{what}: headers upstream (wasm left, native right)");
        } else {
            assert_eq!(w.0.text(), n.0.text(), "{what}: body");
            for h in ["x-reason", "www-authenticate", "content-type"] {
                assert_eq!(w.0.header(h), n.0.header(h), "{what}: client header {h}");
            }
        }
    }
    // The gRPC provider saw the HTTP provider's changes (istiod's pairs run in sequence).
    let seen = grpc_ext.checks().into_iter().find(|c| {
        c.attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .is_some_and(|h| h.path == "/both/1")
    });
    let h = seen.unwrap().attributes.unwrap().request.unwrap().http.unwrap().headers;
    assert_eq!(h.get("x-user").map(String::as_str), Some("bob"), "{h:?}");
    assert_eq!(h.get("x-ext-authz-check-result").map(String::as_str), Some("allowed"), "{h:?}");
}

/// `curl` over TLS (client certificate `cert`, SNI `sni` when given) or plaintext: the status.
fn curl_status(port: u16, cert: Option<&wasmesh_e2e::authz_tcp::Leaf>, sni: Option<&str>, path: &str) -> u16 {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"]);
    cmd.args(["-H", "host: httpbin.foo:8000", "-H", "x-ext-authz: allow"]);
    if let Some(c) = cert {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    let url = match (cert.is_some() || sni.is_some(), sni) {
        (false, _) => format!("http://127.0.0.1:{port}{path}"),
        (true, None) => format!("https://127.0.0.1:{port}{path}"),
        (true, Some(name)) => {
            cmd.arg("--resolve").arg(format!("{name}:{port}:127.0.0.1"));
            format!("https://{name}:{port}{path}")
        }
    };
    let out = cmd.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Issue 11 point 1: the gRPC CheckRequest for requests that arrive over mutual TLS, field by
/// field against Envoy's native ext_authz as istiod configures it (no `include_peer_certificate`,
/// no `include_tls_session`), on listeners that take TLS and plaintext on one port with the
/// inbound sidecar's client-certificate settings. Peers: a SPIFFE workload, a certificate with
/// two URI SANs (the first is the principal), one with DNS SANs only, TLS without a client
/// certificate, plaintext; with and without SNI. `source`/`destination` `principal`, addresses,
/// `tls_session`, `metadata_context`, the headers (with `x-forwarded-client-cert`) must all agree.
#[test]
fn grpc_check_over_mtls_matches_envoy_ext_authz() {
    use wasmesh_e2e::authz::ServerTls;
    use wasmesh_e2e::authz_tcp::SanCa;
    let ca = SanCa::new();
    let server = ca.issue("server", &["URI:spiffe://cluster.local/ns/foo/sa/httpbin"]);
    let sleep = ca.issue("sleep", &["URI:spiffe://cluster.local/ns/bar/sa/sleep"]);
    let two =
        ca.issue("two", &["URI:spiffe://cluster.local/ns/bar/sa/first", "URI:spiffe://cluster.local/ns/bar/sa/second"]);
    let dns = ca.issue("dns", &["DNS:client.example", "DNS:other.example"]);
    let ext = GrpcExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let mut clusters = BTreeMap::new();
    let (mut w, mut n) = pair("mtls", &grpc(ext.port, json!({"timeout": "0.5s"})), &mut clusters);
    let tls = ServerTls { cert_chain: server.cert.clone(), private_key: server.key.clone(), root_cert: ca.root() };
    w.tls = Some(tls.clone());
    n.tls = Some(tls);
    let ports = (w.port, n.port);
    let mut clusters: Vec<Value> = clusters.into_values().collect();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = Proxy { listeners: vec![w, n], clusters, stats_tags: Vec::new() }.start("ext-authz-mtls");

    let peer = |c: &Check, source: bool| {
        let a = c.attributes.as_ref().unwrap();
        let p = if source { a.source.as_ref() } else { a.destination.as_ref() };
        p.map(|p| p.principal.clone()).unwrap_or_default()
    };
    type Case<'a> = (&'a str, Option<&'a wasmesh_e2e::authz_tcp::Leaf>, Option<&'a str>, &'a str);
    let cases: [Case<'_>; 7] = [
        ("spiffe peer", Some(&sleep), None, "spiffe://cluster.local/ns/bar/sa/sleep"),
        (
            "spiffe peer with SNI",
            Some(&sleep),
            Some("httpbin.foo.svc.cluster.local"),
            "spiffe://cluster.local/ns/bar/sa/sleep",
        ),
        (
            "two URI SANs",
            Some(&two),
            Some("outbound_.8000_._.httpbin.foo.svc.cluster.local"),
            "spiffe://cluster.local/ns/bar/sa/first",
        ),
        ("DNS SANs only", Some(&dns), None, "client.example"),
        ("TLS without a client certificate", None, Some("httpbin.foo"), ""),
        ("plaintext", None, None, ""),
        ("DNS SANs with SNI", Some(&dns), Some("httpbin.foo"), "client.example"),
    ];
    for (i, (label, cert, sni, source)) in cases.into_iter().enumerate() {
        let path = format!("/protected/mtls/{i}");
        let mut seen = Vec::new();
        for port in [ports.0, ports.1] {
            let before = ext.checks().len();
            let status = curl_status(port, cert, sni, &path);
            let checks = ext.checks()[before..].to_vec();
            assert_eq!(checks.len(), 1, "{label}: one check per request (port {port}, status {status})");
            seen.push((status, checks.into_iter().next().unwrap()));
        }
        let ((ws, wc), (ns, nc)) = (seen[0].clone(), seen[1].clone());
        assert_eq!((ws, ns), (200, 200), "{label}: status (wasm, native)");
        assert_eq!(peer(&nc, true), source, "{label}: native source principal");
        let tls = cert.is_some() || sni.is_some();
        let local = if tls { "spiffe://cluster.local/ns/foo/sa/httpbin" } else { "" };
        assert_eq!(peer(&nc, false), local, "{label}: native destination principal");
        let (a, b) = (format!("{:#?}", normalized(wc, label)), format!("{:#?}", normalized(nc, label)));
        let diff: Vec<String> =
            a.lines().zip(b.lines()).filter(|(x, y)| x != y).map(|(x, y)| format!("wasm {x}\nnative {y}")).collect();
        assert!(a == b, "{label}: CheckRequest differs:\n{}\n--- wasm whole:\n{a}", diff.join("\n"));
    }
}

/// The wasm listener and istiod's native twin for an HTTP or gRPC `provider` with
/// `includeRequestBodyInCheck` (native: `with_request_body` as istiod writes it).
fn body_pair(name: &str, provider: &Value, clusters: &mut BTreeMap<String, Value>) -> (ListenerSpec, ListenerSpec) {
    let mesh = MeshConfig { extension_providers: vec![provider.clone()], ..MeshConfig::default() };
    let mut wasm = ListenerSpec::new(&format!("{name}-wasm"));
    let c = authz::plugin_filters(&workload(), &res(), &mesh, Direction::Inbound, wasm.port)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for f in &c.http_filters {
        assert_eq!(f.config["requestBody"], true, "{name}: the filter reads the body");
        wasm = wasm.wasm(f);
    }
    let flag = wasm.http_filters.iter().any(|f| f["typed_config"]["config"]["allow_on_headers_stop_iteration"] == true);
    assert!(flag, "{name}: allow_on_headers_stop_iteration set");
    wasm.upstream = Some("app".into());
    let cluster = c.clusters[0].clone();
    let cluster_name = cluster["name"].as_str().unwrap().to_string();
    clusters.insert(cluster_name.clone(), cluster);
    let mut native = ListenerSpec::new(&format!("{name}-native"));
    let mut filters = istiod::custom_http_filters(&res(), &workload(), provider, &cluster_name);
    if provider.get("envoyExtAuthzGrpc").is_some() {
        filters[1] = istiod_grpc_ext_authz(provider, &cluster_name);
    } else {
        wasmesh_e2e::ext_authz::with_request_body(&mut filters[1], provider);
    }
    native.http_filters = filters;
    native.upstream = Some("app".into());
    (wasm, native)
}

/// One request as sent: `Plain` through the test client (content-length), `Chunked` as
/// HTTP/1.1 chunked pieces, `H2` with curl over HTTP/2 (prior knowledge).
#[derive(Clone, Copy, Debug)]
enum Way {
    Plain,
    Chunked,
    H2,
}

/// Sends `body` to `port` in `way`: (status, response body).
fn send_body(port: u16, way: Way, path: &str, body: &[u8]) -> (u16, String) {
    match way {
        Way::Plain => {
            let r = send(port, "POST", path, &[("x-ext-authz", "allow")], body);
            (r.status, r.text())
        }
        Way::Chunked => {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut req = format!(
                "POST {path} HTTP/1.1\r\nhost: httpbin.foo:8000\r\nx-ext-authz: allow\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            .into_bytes();
            for piece in body.chunks(5) {
                req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                req.extend_from_slice(piece);
                req.extend_from_slice(b"\r\n");
            }
            req.extend_from_slice(b"0\r\n\r\n");
            c.write_all(&req).unwrap();
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out).to_string();
            let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            (status, body)
        }
        Way::H2 => {
            let file = std::env::temp_dir().join(format!("wasmesh-body-{}-{port}", std::process::id()));
            std::fs::write(&file, body).unwrap();
            let out = std::process::Command::new("curl")
                .args(["-s", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
                .args(["-H", "host: httpbin.foo:8000", "-H", "x-ext-authz: allow", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
            (code.trim().parse().unwrap_or(0), body.to_string())
        }
    }
}

/// `includeRequestBodyInCheck` with HTTP and gRPC providers, next to Envoy's native ext_authz
/// with istiod's `with_request_body`, in one Envoy: a small body, none, exactly the limit, past
/// it (413 without `allowPartialMessage` on HTTP/1, the first bytes and
/// `x-envoy-auth-partial-body: true` with it or on HTTP/2), binary, `packAsBytes`, chunked and
/// HTTP/2. Per request: status, what each authorization
/// server receives (HTTP: method, path, headers, body; gRPC: the whole CheckRequest) and what
/// the application receives must be the same.
#[test]
fn request_body_in_check_as_envoy_ext_authz() {
    let http_ext = wasmesh_e2e::authz::ExtAuthz::start();
    let grpc_ext = GrpcExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let http = |body: Value| {
        json!({"name": "ext", "envoyExtAuthzHttp": {"service": "foo/127.0.0.1", "port": http_ext.port,
            "includeRequestHeadersInCheck": ["x-ext-authz", "x-envoy-auth-partial-body", "transfer-encoding"],
            "includeRequestBodyInCheck": body}})
    };
    let cases = [
        ("hb", http(json!({"maxRequestBytes": 8}))),
        ("hp", http(json!({"maxRequestBytes": 8, "allowPartialMessage": true}))),
        ("hx", http(json!({"maxRequestBytes": 8, "allowPartialMessage": true, "packAsBytes": true}))),
        ("gb", grpc(grpc_ext.port, json!({"includeRequestBodyInCheck": {"maxRequestBytes": 8}}))),
        (
            "gp",
            grpc(
                grpc_ext.port,
                json!({"includeRequestBodyInCheck": {"maxRequestBytes": 8, "allowPartialMessage": true}}),
            ),
        ),
        (
            "gx",
            grpc(
                grpc_ext.port,
                json!({"includeRequestBodyInCheck": {"maxRequestBytes": 8, "allowPartialMessage": true, "packAsBytes": true}}),
            ),
        ),
    ];
    let mut clusters = BTreeMap::new();
    let mut listeners = Vec::new();
    let mut ports = Vec::new();
    for (name, prov) in &cases {
        let (w, n) = body_pair(name, prov, &mut clusters);
        ports.push((*name, w.port, n.port));
        listeners.push(w);
        listeners.push(n);
    }
    let mut clusters: Vec<Value> = clusters.into_values().collect();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = Proxy { listeners, clusters, stats_tags: Vec::new() }.start("ext-authz-body");

    let bodies: [(&str, &[u8]); 5] = [
        ("small", b"hello"),
        ("empty", b""),
        ("exact", b"01234567"),
        ("over", b"0123456789abcdefghij"),
        ("binary", b"\x00\xff\xfe1"),
    ];
    let mut statuses = BTreeMap::new();
    for (name, w, n) in &ports {
        for (what, body) in bodies {
            for way in [Way::Plain, Way::Chunked, Way::H2] {
                if name.starts_with('g') && !name.ends_with('x') && what == "binary" {
                    continue; // a proto string: Envoy sends the bytes, the test server's decoder wants UTF-8
                }
                let path = format!("/protected/{name}/{what}");
                let label = format!("{name} {what} {way:?}");
                let (h0, g0) = (http_ext.checks().len(), grpc_ext.checks().len());
                let (ws, wb) = send_body(*w, way, &path, body);
                let (h1, g1) = (http_ext.checks().len(), grpc_ext.checks().len());
                let (ns, nb) = send_body(*n, way, &path, body);
                let (hc, gc) = (http_ext.checks(), grpc_ext.checks());
                assert_eq!(
                    ws,
                    ns,
                    "{label}: status; wasm {wb:?} native {nb:?}; checks: HTTP {:?} gRPC {:?}",
                    &hc[h0..],
                    &gc[g0..]
                );
                statuses.insert(label.clone(), ws);
                let (wh, nh) = (&hc[h0..h1], &hc[h1..]);
                assert_eq!(wh.len(), nh.len(), "{label}: HTTP checks");
                for (a, b) in wh.iter().zip(nh) {
                    assert_eq!((&a.method, &a.path), (&b.method, &b.path), "{label}");
                    let pick = |c: &wasmesh_e2e::authz::Check| {
                        let mut h: Vec<(String, String)> = c
                            .headers
                            .iter()
                            .filter(|(k, _)| !matches!(k.as_str(), "x-request-id" | "x-envoy-expected-rq-timeout-ms"))
                            .cloned()
                            .collect();
                        h.sort();
                        h
                    };
                    assert_eq!(pick(a), pick(b), "{label}: HTTP check headers (wasm left, native right)");
                    assert_eq!(a.body, b.body, "{label}: HTTP check body");
                }
                let (wg, ng) = (&gc[g0..g1], &gc[g1..]);
                assert_eq!(wg.len(), ng.len(), "{label}: gRPC checks");
                for (a, b) in wg.iter().zip(ng) {
                    let (a, b) = (
                        format!("{:#?}", normalized(a.clone(), &label)),
                        format!("{:#?}", normalized(b.clone(), &label)),
                    );
                    let diff: Vec<String> = a
                        .lines()
                        .zip(b.lines())
                        .filter(|(x, y)| x != y)
                        .map(|(x, y)| format!("wasm {x}\nnative {y}"))
                        .collect();
                    assert!(a == b, "{label}: CheckRequest differs:\n{}", diff.join("\n"));
                }
                if ws == 200 {
                    let (wj, nj): (Value, Value) =
                        (serde_json::from_str(&wb).unwrap(), serde_json::from_str(&nb).unwrap());
                    assert_eq!(wj["body_bytes"], body.len(), "{label}: the application gets the whole body");
                    assert_eq!(wj["body_sum"], wasmesh_e2e::app::body_sum(body), "{label}: unchanged");
                    assert_eq!(wj["body_sum"], nj["body_sum"], "{label}");
                } else {
                    assert_eq!(wb, nb, "{label}: body");
                }
            }
        }
    }
    // What the cases must show, beyond "the same as Envoy".
    assert_eq!(statuses["hb over Plain"], 413, "past the limit without allowPartialMessage");
    assert_eq!(statuses["gb over Chunked"], 413);
    assert_eq!(statuses["hp over Plain"], 200, "allowPartialMessage");
    assert_eq!(statuses["hb over H2"], 200, "HTTP/2: flow control, not 413; the check is partial");
    assert_eq!(statuses["gx binary H2"], 200);
    let partial = http_ext.checks().into_iter().find(|c| c.path.ends_with("/hp/over")).unwrap();
    assert_eq!(
        (partial.body.as_slice(), partial.header("x-envoy-auth-partial-body")),
        (&b"01234567"[..], Some("true"))
    );
}
