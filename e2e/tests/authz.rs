//! The authz filter in real Envoy: Istio's AuthorizationPolicy answers, compared with Envoy's own
//! RBAC and ext_authz filters configured as istiod configures them, over real sockets.
//!
//! Needs the filters built (`make wasm`), Envoy, `curl` and `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::{self, Direction, ListenerContext, WasmFilter};
use wasmesh_e2e::authz::{self, istiod, ExtAuthz, ListenerSpec, Proxy};
use wasmesh_e2e::http::{request, Response};
use wasmesh_e2e::{App, Envoy};
use wasmesh_istio::{load_str, Resources, Workload};

fn res(yaml: &str) -> Resources {
    Resources { items: load_str(yaml, "authz-test.yaml").unwrap_or_else(|e| panic!("{e}")) }
}

fn workload() -> Workload {
    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.service_account = "httpbin".into();
    wl
}

/// A listener with what wasmeshctl's authz plugin writes for `yaml`, in front of `upstream`.
fn wasm_listener(name: &str, yaml: &str, mesh: &MeshConfig) -> (ListenerSpec, plugins::Contribution) {
    let mut l = ListenerSpec::new(name);
    let c = authz::plugin_filters(&workload(), &res(yaml), mesh, Direction::Inbound, l.port)
        .unwrap_or_else(|e| panic!("{e}"));
    l.network_filters = authz::network_filters(&c);
    for f in &c.http_filters {
        l = l.wasm(f);
    }
    l.upstream = Some("app".into());
    (l, c)
}

/// A listener with Envoy's RBAC filters as istiod generates them for `yaml`.
fn native_listener(name: &str, yaml: &str) -> ListenerSpec {
    let mut l = ListenerSpec::new(name);
    l.http_filters = istiod::http_filters(&res(yaml), &workload(), &[]);
    l.upstream = Some("app".into());
    l
}

fn send(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut all: Vec<(&str, &str)> = vec![("host", "httpbin.foo:8000")];
    all.extend_from_slice(headers);
    request(port, method, path, &all, b"").unwrap_or_else(|e| panic!("{method} {path} to {port}: {e}"))
}

/// A counter once the filter has handed its increments to Envoy (every 250 ms).
fn stat_settled(envoy: &Envoy, name: &str) -> u64 {
    // Every VM flushes within 250 ms; wait for two periods, then until it stops moving.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let mut last = envoy.stat(name);
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = envoy.stat(name);
        if now == last {
            break;
        }
        last = now;
    }
    last.unwrap_or(0)
}

fn start(name: &str, listeners: Vec<ListenerSpec>, clusters: Vec<Value>, stats_tags: Vec<Value>) -> Envoy {
    Proxy { listeners, clusters, stats_tags }.start(name)
}

const DENY_ADMIN: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: foo}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-api, namespace: foo}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/api/*"]}}]}]
"#;

#[test]
fn the_differential_corpus_has_no_difference_between_envoy_rbac_and_wasmesh() {
    let files = authz::corpus_files();
    assert!(files.len() >= 10, "the corpus is shipped in e2e/corpus/authz: {files:?}");
    let mut summary = String::new();
    let mut bad = false;
    let mut total = 0;
    // All corpora side by side in one Envoy (`diff_all`): one compilation of the module, not one
    // per file; each file still has its own native and wasmesh listeners.
    for (f, report) in files.iter().zip(authz::diff_all(&files)) {
        match report {
            Ok(r) => {
                summary.push_str(&r.render());
                total += r.requests;
                bad |= !r.differences.is_empty() || !r.unexpected.is_empty();
            }
            Err(e) => {
                summary.push_str(&format!("ERROR {}: {e}\n", f.display()));
                bad = true;
            }
        }
    }
    assert!(!bad, "differences between Envoy RBAC and wasmesh:\n{summary}");
    assert!(total > 300, "{summary}");
}

#[test]
fn a_denial_is_what_envoy_rbac_sends_and_an_allowed_request_reaches_the_app() {
    let app = App::new("httpbin", "v1").start();
    let (wasm, c) = wasm_listener("wasm", DENY_ADMIN, &MeshConfig::default());
    let native = native_listener("native", DENY_ADMIN);
    let (wp, np) = (wasm.port, native.port);
    let _envoy = start("authz-deny", vec![wasm, native], vec![authz::local_cluster("app", app.port)], c.stats_tags);
    for (method, path) in [("GET", "/admin"), ("POST", "/x"), ("GET", "/admin/../admin")] {
        let w = send(wp, method, path, &[]);
        let n = send(np, method, path, &[]);
        assert_eq!(w.status, 403, "{method} {path}");
        assert_eq!((w.status, w.text()), (n.status, n.text()), "{method} {path}");
        assert_eq!(w.text(), "RBAC: access denied");
        for h in ["content-type", "content-length"] {
            assert_eq!(w.header(h), n.header(h), "{h} of {method} {path}");
        }
        assert!(w.header("x-app").is_none(), "a denied request never reaches the app");
    }
    let w = send(wp, "GET", "/api/users?x=1", &[("x-custom", "kept")]);
    assert_eq!(w.status, 200, "{}", w.text());
    let body = w.json();
    assert_eq!(body["path"], "/api/users?x=1");
    assert_eq!(body["headers"]["x-custom"], "kept");
}

#[test]
fn every_decision_is_counted_and_written_for_the_access_log() {
    let app = App::new("httpbin", "v1").start();
    let dir = wasmesh_e2e::paths::TempDir::new("authz-log");
    let log = dir.path().join("access.log");
    let dry = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry-deny-b, namespace: foo, annotations: {istio.io/dry-run: "true"}}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/b"]}}]}]
"#;
    let yaml = format!("{DENY_ADMIN}{dry}");
    let (mut wasm, c) = wasm_listener("wasm", &yaml, &MeshConfig::default());
    wasm.access_log = Some(log.clone());
    let wp = wasm.port;
    let envoy = start("authz-log", vec![wasm], vec![authz::local_cluster("app", app.port)], c.stats_tags);
    assert_eq!(send(wp, "GET", "/api/a", &[]).status, 200);
    assert_eq!(send(wp, "GET", "/api/b", &[]).status, 200, "dry-run DENY is not enforced");
    assert_eq!(send(wp, "GET", "/admin", &[]).status, 403);
    assert_eq!(send(wp, "DELETE", "/x", &[]).status, 403);

    let stat = |n: &str| stat_settled(&envoy, &format!("wasmcustom.wasmesh.authz.{n}"));
    assert_eq!(stat("allowed"), 2);
    assert_eq!(stat("denied"), 2);
    assert_eq!(stat("audit"), 2, "both /api requests matched the AUDIT policy");
    assert_eq!(stat("istio_dry_run_deny_shadow_denied"), 1);
    assert_eq!(stat("istio_dry_run_deny_shadow_allowed"), 3);
    assert_eq!(stat("policy.denied.ns[foo]-policy[deny-admin]-rule[0]"), 1);
    assert_eq!(stat("policy.allowed.ns[foo]-policy[allow-get]-rule[0]"), 2);
    assert_eq!(stat("policy.audited.ns[foo]-policy[audit-api]-rule[0]"), 2);
    let prom = envoy.admin("/stats/prometheus");
    assert!(
        prom.lines()
            .any(|l| l.starts_with("wasmesh_authz_policy_denied{authz_rule=\"ns[foo]-policy[deny-admin]-rule[0]\"} 1")),
        "the rule is a Prometheus label:\n{}",
        prom.lines().filter(|l| l.contains("authz")).collect::<Vec<_>>().join("\n")
    );

    // The access log sees the decision through filter state.
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let decision = |line: &str| -> Value {
        let json = line.splitn(3, ' ').nth(2).unwrap_or("");
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let a = decision(lines[0]);
    assert_eq!(a["allowed"], true);
    assert_eq!(a["action"], "ALLOW");
    assert_eq!(a["policy"], "ns[foo]-policy[allow-get]-rule[0]");
    assert_eq!(a["audit"], json!(["ns[foo]-policy[audit-api]-rule[0]"]));
    let b = decision(lines[1]);
    assert_eq!(b["shadow"], "dry-run deny: denied by ns[foo]-policy[dry-deny-b]-rule[0]");
    let d = decision(lines[2]);
    assert!(lines[2].starts_with("403 /admin"), "{}", lines[2]);
    assert_eq!(
        (d["allowed"].clone(), d["action"].clone(), d["policy"].clone()),
        (json!(false), json!("DENY"), json!("ns[foo]-policy[deny-admin]-rule[0]"))
    );
    let e = decision(lines[3]);
    assert_eq!((e["action"].clone(), e.get("policy").cloned()), (json!("DEFAULT"), None), "no ALLOW rule matched");
}

#[test]
fn identity_comes_only_from_filter_state_never_from_a_header() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-or-peer, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
  - from: [{source: {principals: ["*"]}}]
  - when: [{key: "request.auth.claims[groups]", values: [admin]}]
"#;
    let app = App::new("httpbin", "v1").start();
    let (wasm, c) = wasm_listener("wasm", yaml, &MeshConfig::default());
    let wp = wasm.port;
    let _envoy = start("authz-forge", vec![wasm], vec![authz::local_cluster("app", app.port)], c.stats_tags);
    let identity = json!({"principal": "https://evil/alice", "issuer": "https://evil", "subject": "alice", "claims": {"iss": "https://evil", "sub": "alice", "groups": ["admin"]}}).to_string();
    let forged: Vec<(&str, &str)> = vec![
        ("wasmesh.authn.identity", &identity),
        ("x-wasmesh-authn-identity", &identity),
        ("wasm.wasmesh.authn.identity", &identity),
        ("x-jwt-payload", "eyJpc3MiOiJodHRwczovL2V2aWwiLCJzdWIiOiJhbGljZSJ9"),
        (
            "authorization",
            "Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2V2aWwiLCJzdWIiOiJhbGljZSIsImdyb3VwcyI6WyJhZG1pbiJdfQ.",
        ),
        (
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/foo/sa/httpbin;URI=spiffe://cluster.local/ns/bar/sa/sleep",
        ),
        ("x-spiffe-id", "spiffe://cluster.local/ns/bar/sa/sleep"),
    ];
    let r = send(wp, "GET", "/", &forged);
    assert_eq!(r.status, 403, "client headers are no identity: {}", r.text());
    for h in &forged {
        assert_eq!(send(wp, "GET", "/", &[*h]).status, 403, "{}", h.0);
    }
}

#[test]
fn ip_blocks_fail_closed_when_the_peer_address_is_unknown() {
    // Without the peer-address network filter the HTTP filter cannot know the physical peer;
    // a rule that needs it denies rather than guessing from x-forwarded-for.
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-blocked, namespace: foo}
spec:
  rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]
"#;
    let app = App::new("httpbin", "v1").start();
    let (mut without, c) = wasm_listener("without", yaml, &MeshConfig::default());
    assert_eq!(c.network_filters.len(), 1, "the plugin adds the peer-address filter for ipBlocks");
    without.network_filters.clear();
    let (with, _) = wasm_listener("with", yaml, &MeshConfig::default());
    let (p1, p2) = (without.port, with.port);
    let envoy = start("authz-peer", vec![without, with], vec![authz::local_cluster("app", app.port)], c.stats_tags);
    assert_eq!(send(p2, "GET", "/", &[]).status, 200);
    assert_eq!(send(p1, "GET", "/", &[]).status, 403);
    assert_eq!(stat_settled(&envoy, "wasmcustom.wasmesh.authz.error"), 1);
    // Envoy flushes its log file every few seconds.
    let said = (0..150).any(|_| {
        let found = envoy.log().contains("the direct peer address (source.ip) is unavailable");
        if !found {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        found
    });
    assert!(said, "the denial is logged with its reason:\n{}", envoy.log_tail(20));
}

#[test]
fn strict_peer_authentication_denies_plaintext_in_the_filter() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  mtls: {mode: STRICT}
"#;
    let app = App::new("httpbin", "v1").start();
    let (wasm, c) = wasm_listener("wasm", yaml, &MeshConfig::default());
    assert_eq!(c.http_filters.len(), 1, "STRICT alone installs the filter");
    let wp = wasm.port;
    let envoy = start("authz-strict", vec![wasm], vec![authz::local_cluster("app", app.port)], c.stats_tags);
    let r = send(wp, "GET", "/", &[("x-forwarded-client-cert", "URI=spiffe://cluster.local/ns/a/sa/b")]);
    assert_eq!(r.status, 403);
    assert_eq!(stat_settled(&envoy, "wasmcustom.wasmesh.authz.peer_authn_denied"), 1);
}

// ---------------------------------------------------------------------------------------------
// CUSTOM

fn provider(ext_port: u16, extra: Value) -> Value {
    let mut http = json!({
        "service": "127.0.0.1",
        "port": ext_port,
        "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-ext-authz", "x-user-in"],
        "includeAdditionalHeadersInCheck": {"x-added": "by-mesh-config"},
        "headersToUpstreamOnAllow": ["x-user", "x-ext-authz-check-result"],
        "headersToDownstreamOnDeny": ["x-reason"],
        "headersToDownstreamOnAllow": ["x-trace-out"],
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            http[k] = v;
        }
    }
    json!({"name": "ext", "envoyExtAuthzHttp": http})
}

const CUSTOM: &str = authz::CUSTOM_POLICY;

#[test]
fn custom_ext_authz_http_behaves_as_envoy_ext_authz() {
    let ext = ExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let prov = provider(ext.port, json!({}));
    let mesh = MeshConfig { extension_providers: vec![prov.clone()], ..MeshConfig::default() };
    let (wasm, c) = wasm_listener("wasm", CUSTOM, &mesh);
    assert_eq!(c.clusters[0]["name"], format!("outbound|{}||127.0.0.1", ext.port));
    let mut native = ListenerSpec::new("native");
    native.http_filters =
        istiod::custom_http_filters(&res(CUSTOM), &workload(), &prov, c.clusters[0]["name"].as_str().unwrap());
    native.upstream = Some("app".into());
    let (wp, np) = (wasm.port, native.port);
    let mut clusters = c.clusters.clone();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = start("authz-custom", vec![wasm, native], clusters, c.stats_tags);

    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "/protected/a?q=1",
            vec![
                ("x-ext-authz", "allow"),
                ("x-user-in", "alice"),
                ("authorization", "Basic xyz"),
                ("cookie", "c=1"),
                ("x-remove-me", "r"),
            ],
        ),
        ("/protected/b", vec![("x-ext-authz", "deny")]),
        ("/protected/c", vec![]),
        ("/public", vec![("x-ext-authz", "deny")]),
    ];
    for (path, headers) in &cases {
        let before = ext.checks().len();
        let w = send(wp, "GET", path, headers);
        let wasm_checks: Vec<authz::Check> = ext.checks()[before..].to_vec();
        let before = ext.checks().len();
        let n = send(np, "GET", path, headers);
        let native_checks: Vec<authz::Check> = ext.checks()[before..].to_vec();
        assert_eq!(w.status, n.status, "{path}: wasm {} native {}", w.text(), n.text());
        assert_eq!(wasm_checks.len(), native_checks.len(), "{path}: checks sent");
        if w.status == 200 {
            let (wb, nb) = (w.json(), n.json());
            for h in ["x-user", "x-ext-authz-check-result", "x-not-forwarded", "x-remove-me", "x-ext-authz", "cookie"] {
                assert_eq!(wb["headers"][h], nb["headers"][h], "{path}: upstream header {h}");
            }
            assert_eq!(w.header("x-trace-out"), n.header("x-trace-out"), "{path}: x-trace-out to the client");
        } else {
            assert_eq!(w.text(), n.text(), "{path}: body");
            for h in ["x-reason", "www-authenticate", "x-ext-authz-check-result", "content-type"] {
                assert_eq!(w.header(h), n.header(h), "{path}: client header {h}");
            }
        }
        for (wc, nc) in wasm_checks.iter().zip(native_checks.iter()) {
            assert_eq!(wc.method, nc.method, "{path}");
            assert_eq!(wc.path, nc.path, "{path}");
            assert_eq!(wc.body_len, 0);
            for h in [
                "host",
                "authorization",
                "x-ext-authz",
                "x-user-in",
                "x-added",
                "cookie",
                "content-length",
                "x-remove-me",
            ] {
                assert_eq!(wc.header(h), nc.header(h), "{path}: check header {h}");
            }
        }
    }
    // What the provider and the app saw, spelled out.
    let first = ext.checks().into_iter().find(|c| c.path.starts_with("/check/protected/a")).expect("check sent");
    assert_eq!(first.path, "/check/protected/a?q=1", "pathPrefix + the original path");
    assert_eq!(first.header("host"), Some("httpbin.foo:8000"));
    assert_eq!(first.header("authorization"), Some("Basic xyz"));
    assert_eq!(first.header("x-added"), Some("by-mesh-config"));
    assert_eq!(first.header("cookie"), None, "not in includeRequestHeadersInCheck");
    let ok = send(wp, "GET", "/protected/a", &[("x-ext-authz", "allow"), ("x-user-in", "bob"), ("x-remove-me", "r")]);
    let body = ok.json();
    assert_eq!(body["headers"]["x-user"], "bob", "headersToUpstreamOnAllow");
    assert_eq!(body["headers"]["x-not-forwarded"], Value::Null);
    assert_eq!(body["headers"]["x-remove-me"], Value::Null, "x-envoy-auth-headers-to-remove");
    assert_eq!(ok.header("x-trace-out"), Some("t1"), "headersToDownstreamOnAllow");
    let denied = send(wp, "GET", "/protected/b", &[("x-ext-authz", "deny")]);
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "denied by ext_authz for /check/protected/b");
    assert_eq!(denied.header("x-reason"), Some("policy"));
    assert_eq!(denied.header("x-ext-authz-check-result"), None, "not in headersToDownstreamOnDeny");
}

#[test]
fn custom_provider_failures_use_status_on_error_or_fail_open() {
    let ext = ExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let dead_port = wasmesh_e2e::free_port();
    let mut listeners = Vec::new();
    let mut clusters = vec![authz::local_cluster("app", app.port)];
    let mut tags = Vec::new();
    let mut ports = Vec::new();
    for (name, prov) in [
        ("closed", provider(ext.port, json!({"statusOnError": "503", "timeout": "0.5s"}))),
        ("open", provider(ext.port, json!({"failOpen": true, "timeout": "0.5s"}))),
        ("dead", provider(dead_port, json!({}))),
    ] {
        let mesh = MeshConfig { extension_providers: vec![prov], ..MeshConfig::default() };
        let (l, c) = wasm_listener(name, CUSTOM, &mesh);
        ports.push(l.port);
        listeners.push(l);
        for cl in c.clusters {
            if !clusters.iter().any(|x| x["name"] == cl["name"]) {
                clusters.push(cl);
            }
        }
        tags = c.stats_tags;
    }
    let envoy = start("authz-custom-errors", listeners, clusters, tags);
    let (closed, open, dead) = (ports[0], ports[1], ports[2]);
    let r = send(closed, "GET", "/protected", &[("x-ext-authz", "error")]);
    assert_eq!(r.status, 503, "5xx from the provider: statusOnError");
    assert_eq!(send(closed, "GET", "/protected", &[("x-ext-authz", "slow")]).status, 503, "timeout");
    assert_eq!(send(open, "GET", "/protected", &[("x-ext-authz", "error")]).status, 200, "failOpen");
    assert_eq!(
        send(open, "GET", "/protected", &[("x-ext-authz", "deny")]).status,
        403,
        "failOpen does not turn a denial into an allow"
    );
    assert_eq!(
        send(dead, "GET", "/protected", &[("x-ext-authz", "allow")]).status,
        403,
        "unreachable: Envoy's default 403"
    );
    assert_eq!(send(dead, "GET", "/public", &[]).status, 200, "no CUSTOM rule matched: no call");
    assert!(stat_settled(&envoy, "wasmcustom.wasmesh.authz.custom.error") >= 4);
}

#[test]
fn custom_runs_before_deny_and_allow_which_see_its_headers() {
    let yaml = format!(
        "{CUSTOM}---\n{}",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-x, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/protected/deny"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-alice, namespace: foo}
spec:
  rules: [{when: [{key: "request.headers[x-user]", values: [alice]}]}]
"#
    );
    let ext = ExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let mesh = MeshConfig { extension_providers: vec![provider(ext.port, json!({}))], ..MeshConfig::default() };
    // One instance (CUSTOM then AUDIT/DENY/ALLOW), and Istio's split around authn.
    let (single, c) = wasm_listener("single", &yaml, &mesh);
    let mut split = ListenerSpec::new("split");
    let wl = workload();
    let resources = res(&yaml);
    let ctx = ListenerContext {
        workload: &wl,
        resources: &resources,
        direction: Direction::Inbound,
        bind_port: split.port,
        mesh: &mesh,
    };
    let custom = plugins::authz::contribute_custom(&ctx).unwrap();
    let rbac = plugins::authz::contribute_rbac(&ctx).unwrap();
    assert_eq!(custom.http_filters[0].name, "wasmesh.authz.custom");
    assert_eq!(rbac.http_filters[0].name, "wasmesh.authz");
    let all: Vec<&WasmFilter> = custom.http_filters.iter().chain(rbac.http_filters.iter()).collect();
    for f in all {
        split = split.wasm(f);
    }
    split.upstream = Some("app".into());
    let (sp, tp) = (single.port, split.port);
    let mut clusters = c.clusters.clone();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = start("authz-custom-order", vec![single, split], clusters, c.stats_tags);
    for port in [sp, tp] {
        let ok = send(port, "GET", "/protected/x", &[("x-ext-authz", "allow"), ("x-user-in", "alice")]);
        assert_eq!(ok.status, 200, "ALLOW sees x-user set by the provider: {}", ok.text());
        assert_eq!(
            send(port, "GET", "/protected/x", &[("x-ext-authz", "allow"), ("x-user-in", "bob")]).status,
            403,
            "ALLOW does not match bob"
        );
        assert_eq!(
            send(port, "GET", "/protected/x", &[("x-ext-authz", "allow"), ("x-user", "alice")]).status,
            403,
            "the client's x-user is replaced by the provider's"
        );
        let d = send(port, "GET", "/protected/deny", &[("x-ext-authz", "allow"), ("x-user-in", "alice")]);
        assert_eq!((d.status, d.text()), (403, "RBAC: access denied".to_string()), "DENY after a CUSTOM allow");
        let c = send(port, "GET", "/protected/deny", &[("x-ext-authz", "deny")]);
        assert_eq!(c.text(), "denied by ext_authz for /check/protected/deny", "CUSTOM decides first");
    }
}

#[test]
fn a_request_body_waits_for_the_custom_decision() {
    // Without holding the body, Envoy would forward the request as soon as its first body
    // bytes arrive, before the provider answered.
    let ext = ExtAuthz::start();
    let app = App::new("httpbin", "v1").start();
    let mesh =
        MeshConfig { extension_providers: vec![provider(ext.port, json!({"timeout": "5s"}))], ..MeshConfig::default() };
    let (wasm, c) = wasm_listener("wasm", CUSTOM, &mesh);
    let wp = wasm.port;
    let mut clusters = c.clusters.clone();
    clusters.push(authz::local_cluster("app", app.port));
    let _envoy = start("authz-body", vec![wasm], clusters, c.stats_tags);
    let body = vec![b'x'; 200_000];
    let served = app.served();
    let r =
        request(wp, "POST", "/protected/upload", &[("host", "httpbin.foo:8000"), ("x-ext-authz", "slow-deny")], &body)
            .expect("response");
    assert_eq!(r.status, 403, "{}", r.text());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(app.served(), served, "a denied request never reaches the app, body or not");
    let r = request(wp, "POST", "/protected/upload", &[("host", "httpbin.foo:8000"), ("x-ext-authz", "slow")], &body)
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_bytes"], 200_000, "the whole body follows the allow");
}

// ---------------------------------------------------------------------------------------------
// Path normalization in `wasmeshctl envoy`'s own bootstrap

const DENY_ADMIN_PATHS: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: httpbin, namespace: foo}
spec: {address: 127.0.0.1, ports: {http: 8000}, labels: {app: httpbin}, serviceAccount: httpbin}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin", "/admin/*"]}}]}]
"#;

/// meshConfig.pathNormalization reaches the HCM of the bootstrap `wasmeshctl envoy` writes (the
/// e2e Mesh runs the same builder): a DENY on `/admin` cannot be bypassed by a path the mode
/// normalizes, and each request gets the status Istio gives (spec §1.13: BASE resolves dot
/// segments and decodes unreserved `%XX`, MERGE_SLASHES also merges `//`,
/// DECODE_AND_MERGE_SLASHES also decodes `%2F`/`%5C`; paths are case-sensitive). A request
/// that passes reaches the app with the path as normalized.
#[test]
fn wasmeshctl_bootstrap_applies_mesh_path_normalization_to_authz() {
    use wasmesh_controller::mesh::{Normalization, PathNormalization};
    use wasmesh_e2e::Mesh;
    // (request target, per mode [NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES]:
    // 403, or the path the app receives).
    let d = "403";
    #[rustfmt::skip]
    let cases: [(&str, [&str; 4]); 11] = [
        ("/admin",          [d, d, d, d]),
        ("/admin/x",        [d, d, d, d]),
        // NONE leaves it alone, but the raw path starts with `/admin/`.
        ("/admin/../admin", [d, d, d, d]),
        ("/x/../admin",     ["/x/../admin", d, d, d]),
        ("/./admin",        ["/./admin", d, d, d]),
        ("//admin",         ["//admin", "//admin", d, d]),
        ("/%61dmin",        ["/%61dmin", d, d, d]),
        ("/admin%2Fx",      ["/admin%2Fx", "/admin%2Fx", "/admin%2Fx", d]),
        ("/admin%2fx",      ["/admin%2fx", "/admin%2fx", "/admin%2fx", d]),
        ("/admin%5Cx",      ["/admin%5Cx", "/admin%5Cx", "/admin%5Cx", d]),
        ("/ADMIN",          ["/ADMIN", "/ADMIN", "/ADMIN", "/ADMIN"]),
    ];
    let modes = [
        (Some(Normalization::None), 0),
        (Some(Normalization::Base), 1),
        (None, 1), // no pathNormalization: Istio's DEFAULT is BASE
        (Some(Normalization::MergeSlashes), 2),
        (Some(Normalization::DecodeAndMergeSlashes), 3),
    ];
    let mut wrong = Vec::new();
    for (mode, col) in modes {
        let mesh_config = MeshConfig {
            path_normalization: mode.map(|normalization| PathNormalization { normalization }),
            ..MeshConfig::default()
        };
        let mesh = Mesh::builder()
            .yaml(DENY_ADMIN_PATHS)
            .mesh_config(mesh_config)
            .sidecar("foo/httpbin", App::new("httpbin", "v1"))
            .start();
        let port = mesh.inbound_port("foo/httpbin");
        for (target, want) in &cases {
            let want = want[col];
            let r = request(port, "GET", target, &[("host", "httpbin.foo:8000")], b"")
                .unwrap_or_else(|e| panic!("{mode:?} GET {target}: {e}"));
            let got = match r.status {
                403 => {
                    assert_eq!(r.text(), "RBAC: access denied", "{mode:?} {target}");
                    "403".to_string()
                }
                200 => r.json()["path"].as_str().unwrap_or("?").to_string(),
                s => format!("status {s}: {}", r.text()),
            };
            if got != want {
                wrong.push(format!("{mode:?} GET {target}: want {want}, got {got}"));
            }
        }
        let denied: usize = cases.iter().filter(|(_, w)| w[col] == d).count();
        assert_eq!(
            mesh.app("foo/httpbin").served(),
            (cases.len() - denied) as u64,
            "{mode:?}: a denied request never reaches the app"
        );
    }
    assert!(wrong.is_empty(), "path normalization differs from Istio:\n{}", wrong.join("\n"));
}
