//! AuthorizationPolicy on TCP ports as istiod translates them (issue 11, point 3; several CUSTOM
//! providers on a TCP port, point 7) and peer
//! certificates with several SANs (point 4), in one Envoy: each policy set runs on a listener
//! with the wasmesh filter `wasmeshctl` generates and on a listener with Envoy's native RBAC
//! filter configured as istiod configures it (`wasmesh_e2e::authz::istiod`), and the same
//! connections and requests go to both.
//!
//! Certificates come from a CA of the test's own (openssl) because `wasmeshctl certs` issues one
//! URI SAN per workload: `both` carries [allow, deny], `deny-first` [deny, allow].

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use wasmesh_controller::bootstrap::{wasm_http_filter, wasm_network_filter};
use wasmesh_controller::plugins::{self, Direction, ListenerContext};
use wasmesh_controller::MeshConfig;
use wasmesh_e2e::authz::istiod;
use wasmesh_e2e::authz_tcp::{cluster, hcm, http_status, listener, tcp_passes, tcp_proxy, Leaf, OneShotEcho, SanCa};
use wasmesh_e2e::envoy::Envoy;
use wasmesh_e2e::free_port;
use wasmesh_e2e::paths::wasm_dir;
use wasmesh_istio::{load_str, Resources, Workload};

const ALLOW: &str = "URI:spiffe://cluster.local/ns/foo/sa/allow";
const DENY: &str = "URI:spiffe://cluster.local/ns/foo/sa/deny";

fn workload() -> Workload {
    let mut wl = Workload::new("db", "foo");
    wl.labels = [("app".to_string(), "db".to_string())].into();
    wl
}

fn mesh() -> MeshConfig {
    MeshConfig {
        extension_providers: vec![
            json!({"name": "http", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 9000}}),
            json!({"name": "http2", "envoyExtAuthzHttp": {"service": "authz2.foo.svc.cluster.local", "port": 9000}}),
            json!({"name": "grpc", "envoyExtAuthzGrpc": {"service": "authz3.foo.svc.cluster.local", "port": 9000}}),
        ],
        ..MeshConfig::default()
    }
}

fn policy(name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo}}\nspec:\n{spec}\n")
}

fn dry_run(name: &str, spec: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo, annotations: {{istio.io/dry-run: 'true'}}}}\nspec:\n{spec}\n")
}

fn resources(yaml: &str) -> Resources {
    Resources { items: load_str(yaml, "authz-tcp.yaml").unwrap_or_else(|e| panic!("{e}")) }
}

/// The TCP translation table (README): one policy set per row and what every connection gets
/// from Envoy's native network RBAC (`P` passes, `R` refused), for [plaintext, mTLS `allow`].
/// `WASM_PORT` / `NATIVE_PORT` are the two listeners' ports.
fn tcp_rows() -> Vec<(&'static str, String, &'static str)> {
    let meta = "experimental.envoy.filters.network.wasmesh_test[k]";
    vec![
        ("allow rule with methods is dropped", policy("a", "  action: ALLOW\n  rules: [{to: [{operation: {methods: [GET]}}]}]"), "RR"),
        ("allow on ports", policy("a", "  action: ALLOW\n  rules: [{to: [{operation: {ports: ['WASM_PORT', 'NATIVE_PORT']}}]}]"), "PP"),
        ("allow: the rule with paths dropped, the other kept", policy("a", "  action: ALLOW\n  rules: [{to: [{operation: {paths: [/a]}}]}, {from: [{source: {ipBlocks: [127.0.0.1]}}]}]"), "PP"),
        ("deny rule of paths only matches everything", policy("d", "  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]"), "RR"),
        ("deny ipBlocks + methods: methods ignored", policy("d", "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [127.0.0.1/32]}}], to: [{operation: {methods: [POST]}}]}]"), "RR"),
        ("deny other ipBlocks + methods", policy("d", "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {methods: [POST]}}]}]"), "PP"),
        ("deny requestPrincipals + notIpBlocks", policy("d", "  action: DENY\n  rules: [{from: [{source: {requestPrincipals: ['*'], notIpBlocks: [127.0.0.0/8]}}]}]"), "PP"),
        ("custom with an HTTP provider: no TCP filter", policy("c", "  action: CUSTOM\n  provider: {name: http}\n  rules: [{}]"), "PP"),
        ("custom HTTP + allow requestPrincipals (dropped)", format!("{}{}", policy("c", "  action: CUSTOM\n  provider: {name: http}\n  rules: [{}]"), policy("a", "  action: ALLOW\n  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")), "RR"),
        ("audit with methods never refuses", policy("au", "  action: AUDIT\n  rules: [{to: [{operation: {methods: [GET]}}]}]"), "PP"),
        ("deny on absent dynamic metadata", policy("d", &format!("  action: DENY\n  rules: [{{when: [{{key: '{meta}', values: [x]}}]}}]")), "PP"),
        ("deny on notValues of absent dynamic metadata", policy("d", &format!("  action: DENY\n  rules: [{{when: [{{key: '{meta}', notValues: [x]}}]}}]")), "RR"),
        ("allow on absent dynamic metadata", policy("a", &format!("  action: ALLOW\n  rules: [{{when: [{{key: '{meta}', values: [x]}}]}}]")), "RR"),
        ("dry-run deny all", dry_run("d", "  action: DENY\n  rules: [{}]"), "PP"),
        ("allow ipBlocks, deny with notIpBlocks", format!("{}{}", policy("a", "  action: ALLOW\n  rules: [{from: [{source: {ipBlocks: [127.0.0.1]}}]}]"), policy("d", "  action: DENY\n  rules: [{to: [{operation: {notPorts: ['1']}}], from: [{source: {notIpBlocks: [127.0.0.1]}}]}]")), "PP"),
    ]
}

/// Principal rows for certificates with several SANs, clients [plaintext, `allow`, `both`
/// = [allow, deny], `deny-first` = [deny, allow], `dns` = [allow] + DNS [ok.example,
/// x/ns/evil/y]]: what Envoy's native RBAC does (and wasmesh with every SAN: HTTP behind an HCM
/// that forwards the client certificate details), and what a filter that sees only the first
/// SANs does (TCP; HTTP without the details): it decides what the first SAN decides and fails
/// closed (`R`) where another SAN could change the outcome.
fn principal_rows() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "deny principal deny",
            policy("d", "  action: DENY\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/deny]}}]}]"),
            "PPRRP",
            "PRRRR",
        ),
        (
            "allow principal deny",
            policy("a", "  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/deny]}}]}]"),
            "RRPPR",
            "RRRPR",
        ),
        (
            "allow notPrincipals deny",
            policy(
                "a",
                "  action: ALLOW\n  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/deny]}}]}]",
            ),
            "PPRRP",
            "PRRRR",
        ),
        (
            "deny namespace evil (a DNS SAN)",
            policy("d", "  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]"),
            "PPPPR",
            "PRRRR",
        ),
        (
            "allow principal allow",
            policy(
                "a",
                "  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/allow]}}]}]",
            ),
            "RPPPP",
            "RPPRP",
        ),
    ]
}

/// Several CUSTOM providers on a TCP port (Istio 1.30, `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`),
/// as istiod's `buildTCP` loops over them: an `envoyExtAuthzHttp` provider yields no network
/// filter (its rules do not touch TCP), an unknown provider's rules become DENY rules
/// (`getBadCustomDenyRules`, written before DENY/ALLOW), DENY/ALLOW then decide as usual. Rows:
/// (name, policies, what istiod's native filters hold for them, [plaintext, mTLS `allow`]).
/// A gRPC provider (Envoy's network `ext_authz`): `grpc_custom_on_tcp_next_to_native_network_ext_authz`.
fn multi_provider_rows() -> Vec<(&'static str, String, String, &'static str)> {
    let c = |name: &str, provider: &str, rules: &str| {
        policy(name, &format!("  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: {rules}"))
    };
    let two_http = format!("{}{}", c("c1", "http", "[{}]"), c("c2", "http2", "[{}]"));
    let deny_local = policy("d", "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [127.0.0.1]}}]}]");
    let allow_mtls =
        policy("a", "  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/allow]}}]}]");
    // An unknown provider's rules (CUSTOM takes no principals): one matching every local
    // connection, one matching none; istiod's deny-due-to-bad-CUSTOM-action rules are the same
    // rules as a DENY policy.
    let bad = |ip: &str| c("c3", "nope", &format!("[{{from: [{{source: {{ipBlocks: [{ip}]}}}}]}}]"));
    let bad_native =
        |ip: &str| policy("c3", &format!("  action: DENY\n  rules: [{{from: [{{source: {{ipBlocks: [{ip}]}}}}]}}]"));
    vec![
        ("two HTTP providers: no TCP filter", two_http.clone(), String::new(), "PP"),
        ("two HTTP providers + DENY", format!("{two_http}{deny_local}"), deny_local.clone(), "RR"),
        ("two HTTP providers + ALLOW principal", format!("{two_http}{allow_mtls}"), allow_mtls.clone(), "RP"),
        (
            "HTTP providers + an unknown provider's rule denies",
            format!("{two_http}{}", bad("127.0.0.1")),
            bad_native("127.0.0.1"),
            "RR",
        ),
        (
            "HTTP + unknown provider's rule not matching + ALLOW principal",
            format!("{two_http}{}{allow_mtls}", bad("10.0.0.0/8")),
            format!("{}{allow_mtls}", bad_native("10.0.0.0/8")),
            "RP",
        ),
    ]
}

fn outcomes(results: impl Iterator<Item = bool>) -> String {
    results.map(|p| if p { 'P' } else { 'R' }).collect()
}

#[test]
fn tcp_translation_and_several_sans_next_to_native_rbac() {
    let ca = SanCa::new();
    let server = ca.issue("server", &["URI:spiffe://cluster.local/ns/foo/sa/db"]);
    let clients: Vec<Option<Leaf>> = vec![
        None,
        Some(ca.issue("allow", &[ALLOW])),
        Some(ca.issue("both", &[ALLOW, DENY])),
        Some(ca.issue("deny-first", &[DENY, ALLOW])),
        Some(ca.issue("dns", &[ALLOW, "DNS:ok.example", "DNS:x/ns/evil/y"])),
    ];
    let echo = OneShotEcho::start();
    let wl = workload();
    let mesh = mesh();
    let root = ca.root();
    let wasm = wasm_dir();

    let mut listeners = Vec::new();
    // TCP rows: (name, wasm port, native port, expected).
    let mut tcp = Vec::new();
    for (name, yaml, expected) in tcp_rows() {
        let (wp, np) = (free_port(), free_port());
        let yaml = yaml.replace("WASM_PORT", &wp.to_string()).replace("NATIVE_PORT", &np.to_string());
        let res = resources(&yaml);
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: wp,
            mesh: &mesh,
        };
        let mut wasm_filters: Vec<_> = plugins::authz::tcp_filter(&ctx)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .iter()
            .map(|f| wasm_network_filter(f, &wasm))
            .collect();
        wasm_filters.push(tcp_proxy("echo"));
        let mut native = istiod::network_filters(&res, &wl, &[]);
        native.push(tcp_proxy("echo"));
        listeners.push(listener(&format!("wasm-{wp}"), wp, wasm_filters, &server, &root));
        listeners.push(listener(&format!("native-{np}"), np, native, &server, &root));
        tcp.push((name, wp, np, expected));
    }
    // Several CUSTOM providers: as istiod with PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS (read by
    // wasmeshctl from its environment, as istiod reads it; this binary has only this test).
    std::env::set_var("PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS", "true");
    for (name, yaml, native_yaml, expected) in multi_provider_rows() {
        let (wp, np) = (free_port(), free_port());
        let res = resources(&yaml);
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: wp,
            mesh: &mesh,
        };
        let mut wasm_filters: Vec<_> = plugins::authz::tcp_filter(&ctx)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .iter()
            .map(|f| wasm_network_filter(f, &wasm))
            .collect();
        wasm_filters.push(tcp_proxy("echo"));
        let native_res = resources(if native_yaml.is_empty() { "" } else { &native_yaml });
        let mut native = istiod::network_filters(&native_res, &wl, &[]);
        native.push(tcp_proxy("echo"));
        listeners.push(listener(&format!("wasm-{wp}"), wp, wasm_filters, &server, &root));
        listeners.push(listener(&format!("native-{np}"), np, native, &server, &root));
        tcp.push((name, wp, np, expected));
    }
    // A gRPC provider among them: istiod writes Envoy's network ext_authz for it; wasmesh's
    // network filter checks the connection (`grpc_custom_on_tcp_next_to_native_network_ext_authz`).
    {
        let yaml = format!(
            "{}{}",
            policy("c1", "  action: CUSTOM\n  provider: {name: http}\n  rules: [{}]"),
            policy("g", "  action: CUSTOM\n  provider: {name: grpc}\n  rules: [{}]")
        );
        let res = resources(&yaml);
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: 3306,
            mesh: &mesh,
        };
        let f = plugins::authz::tcp_filter(&ctx).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(f.is_some(), "the gRPC provider's policy gets the TCP filter");
    }
    // Principal rows: TCP wasm/native, HTTP wasm (with and without the client certificate
    // details)/native.
    let mut principals = Vec::new();
    for (name, yaml, every_san, first_san) in principal_rows() {
        let res = resources(&yaml);
        let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
        let [tw, tn, hw, hn, hw_bare] = ports.as_slice() else { unreachable!() };
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: *tw,
            mesh: &mesh,
        };
        let mut t =
            vec![wasm_network_filter(&plugins::authz::tcp_filter(&ctx).unwrap().expect("a policy applies"), &wasm)];
        t.push(tcp_proxy("echo"));
        let mut n = istiod::network_filters(&res, &wl, &[]);
        n.push(tcp_proxy("echo"));
        listeners.push(listener(&format!("tcp-wasm-{tw}"), *tw, t, &server, &root));
        listeners.push(listener(&format!("tcp-native-{tn}"), *tn, n, &server, &root));
        let c = wasmesh_e2e::authz::plugin_filters(&wl, &res, &mesh, Direction::Inbound, *hw).unwrap();
        let http_wasm: Vec<_> = c.http_filters.iter().map(|f| wasm_http_filter(f, &wasm)).collect();
        listeners.push(listener(
            &format!("http-wasm-{hw}"),
            *hw,
            vec![hcm("hw", http_wasm.clone(), true)],
            &server,
            &root,
        ));
        listeners.push(listener(
            &format!("http-bare-{hw_bare}"),
            *hw_bare,
            vec![hcm("hb", http_wasm, false)],
            &server,
            &root,
        ));
        let native_http = istiod::http_filters(&res, &wl, &[]);
        listeners.push(listener(&format!("http-native-{hn}"), *hn, vec![hcm("hn", native_http, true)], &server, &root));
        principals.push((name, *tw, *tn, *hw, *hn, *hw_bare, every_san, first_san));
    }
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": listeners, "clusters": [cluster("echo", echo.port)]},
    });
    let envoy = Envoy::start("authz-tcp", &bootstrap);

    let mut failures = Vec::new();
    let two = &clients[..2];
    for (name, wp, np, expected) in &tcp {
        let native = outcomes(two.iter().map(|c| tcp_passes(*np, c.as_ref())));
        let wasm = outcomes(two.iter().map(|c| tcp_passes(*wp, c.as_ref())));
        if native != *expected || wasm != native {
            failures.push(format!("TCP {name:?}: istiod/native {native}, wasmesh {wasm}, table {expected}"));
        }
    }
    for (name, tw, tn, hw, hn, hw_bare, every_san, first_san) in &principals {
        let tcp_native = outcomes(clients.iter().map(|c| tcp_passes(*tn, c.as_ref())));
        let tcp_wasm = outcomes(clients.iter().map(|c| tcp_passes(*tw, c.as_ref())));
        let status = |port: u16| outcomes(clients.iter().map(|c| http_status(port, c.as_ref()) == 200));
        let (http_native, http_wasm, http_bare) = (status(*hn), status(*hw), status(*hw_bare));
        let row = format!(
            "{name:?}: TCP native {tcp_native} wasmesh {tcp_wasm}; HTTP native {http_native} wasmesh {http_wasm} without XFCC {http_bare}; expected every SAN {every_san}, first SAN {first_san}"
        );
        if tcp_native != *every_san || http_native != *every_san {
            failures.push(format!("native RBAC differs from the table: {row}"));
        }
        if http_wasm != http_native {
            failures.push(format!("HTTP with the client certificate details differs from native: {row}"));
        }
        if tcp_wasm != *first_san || http_bare != *first_san {
            failures.push(format!("first-SAN-only filters differ from the documented fail-closed outcome: {row}"));
        }
    }
    // Every fail-closed refusal was counted and logged as an unavailable input.
    let log = envoy.log();
    assert!(log.contains("every SAN of the peer certificate"), "no log line names the missing SANs");
    assert!(envoy.stat("wasmcustom.wasmesh.authz.error").unwrap_or(0) > 0, "fail-closed refusals are counted");
    assert!(!log.contains("panicked"), "a wasm VM panicked: {}", envoy.log_tail(40));
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n"));
}

/// A CUSTOM policy with an `envoyExtAuthzGrpc` provider on a TCP port (issue 11, Security II):
/// istiod writes a shadow network RBAC and Envoy's network `ext_authz` for it; wasmesh's network
/// filter checks the connection itself. In one Envoy, each case has a wasmesh listener and a
/// native one configured as istiod configures it, both asking the same gRPC server, which
/// answers by the connection's destination port: allow, deny, error, hang (past the provider's
/// `timeout`), and providers that are gone (connection refused; accepted and hung up), each with
/// `failOpen` off and on, in plaintext and over mutual TLS. The connection's outcome (bytes
/// echoed or connection closed) must be the same, and so must every CheckRequest (field by
/// field but the ports). Then CUSTOM with DENY/ALLOW policies, as istiod orders them.
#[test]
fn grpc_custom_on_tcp_next_to_native_network_ext_authz() {
    use wasmesh_controller::plugins::authz::{grpc_cluster, provider_cluster};
    use wasmesh_e2e::ext_authz::{Check, Closer, GrpcExtAuthz};

    let ca = SanCa::new();
    let server = ca.issue("server", &["URI:spiffe://cluster.local/ns/foo/sa/db"]);
    let clients: Vec<Option<Leaf>> = vec![None, Some(ca.issue("allow", &[ALLOW]))];
    let echo = OneShotEcho::start();
    let ext = GrpcExtAuthz::start();
    let closer = Closer::start();
    let refused = free_port(); // nothing listens there
    let wl = workload();
    let root = ca.root();
    let wasm = wasm_dir();

    // Providers: (name, port, failOpen).
    let providers = [
        ("ok-closed", ext.port, false),
        ("ok-open", ext.port, true),
        ("gone-closed", refused, false),
        ("gone-open", refused, true),
        ("hup-closed", closer.port, false),
        ("hup-open", closer.port, true),
    ];
    let provider_json = |name: &str| {
        let (n, port, open) = providers.iter().find(|p| p.0 == name).copied().unwrap();
        json!({"name": n, "envoyExtAuthzGrpc": {"service": "127.0.0.1", "port": port, "failOpen": open, "timeout": "0.5s"}})
    };
    let mesh = MeshConfig {
        extension_providers: providers.iter().map(|p| provider_json(p.0)).collect(),
        ..MeshConfig::default()
    };
    let mut clusters = vec![cluster("echo", echo.port)];
    for port in [ext.port, refused, closer.port] {
        let mut c = provider_cluster(&format!("outbound|{port}||127.0.0.1"));
        grpc_cluster(&mut c);
        clusters.push(c);
    }

    let custom = |provider: &str| {
        policy("c", &format!("  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules: [{{to: [{{operation: {{ports: ['WASM_PORT', 'NATIVE_PORT']}}}}]}}]"))
    };
    let deny_local = policy("d", "  action: DENY\n  rules: [{from: [{source: {ipBlocks: [127.0.0.1]}}]}]");
    let allow_mtls =
        policy("a", "  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/allow]}}]}]");
    // (name, provider, server mode, extra policies, expected [plaintext, mTLS], checks sent).
    let mut rows: Vec<(String, &str, &str, String, &str, bool)> = Vec::new();
    for (mode, closed, open, checks) in [
        ("allow", "PP", "PP", true),
        ("deny", "RR", "RR", true),
        ("error", "RR", "PP", true),
        ("hang", "RR", "PP", true),
    ] {
        rows.push((format!("{mode}, failOpen off"), "ok-closed", mode, String::new(), closed, checks));
        rows.push((format!("{mode}, failOpen on"), "ok-open", mode, String::new(), open, checks));
    }
    rows.push(("connection refused, failOpen off".into(), "gone-closed", "", String::new(), "RR", false));
    rows.push(("connection refused, failOpen on".into(), "gone-open", "", String::new(), "PP", false));
    rows.push(("provider hangs up, failOpen off".into(), "hup-closed", "", String::new(), "RR", false));
    rows.push(("provider hangs up, failOpen on".into(), "hup-open", "", String::new(), "PP", false));
    rows.push(("allow, then DENY 127.0.0.1".into(), "ok-closed", "allow", deny_local, "RR", true));
    rows.push(("allow, then ALLOW principal".into(), "ok-closed", "allow", allow_mtls.clone(), "RP", true));
    rows.push(("deny, then ALLOW principal".into(), "ok-closed", "deny", allow_mtls, "RR", true));

    let mut listeners = Vec::new();
    let mut cases = Vec::new();
    for (name, provider, mode, extra, expected, checks) in &rows {
        let (wp, np) = (free_port(), free_port());
        let yaml = format!("{}{extra}", custom(provider))
            .replace("WASM_PORT", &wp.to_string())
            .replace("NATIVE_PORT", &np.to_string());
        let res = resources(&yaml);
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: wp,
            mesh: &mesh,
        };
        let filter =
            plugins::authz::tcp_filter(&ctx).unwrap_or_else(|e| panic!("{name}: {e:?}")).expect("a policy applies");
        let generated = plugins::authz::tcp_provider_clusters(&ctx);
        assert!(
            generated.iter().any(|c| c["name"]
                == format!("outbound|{}||127.0.0.1", provider_json(provider)["envoyExtAuthzGrpc"]["port"])),
            "{name}: wasmeshctl generates the provider's cluster: {generated:?}"
        );
        let w = vec![wasm_network_filter(&filter, &wasm), tcp_proxy("echo")];
        let p = provider_json(provider);
        let cluster_name = format!("outbound|{}||127.0.0.1", p["envoyExtAuthzGrpc"]["port"]);
        let mut n = wasmesh_e2e::authz::istiod::custom_network_filters(&res, &wl, &p, &cluster_name);
        n.extend(istiod::network_filters(&res, &wl, &[]));
        n.push(tcp_proxy("echo"));
        listeners.push(listener(&format!("wasm-{wp}"), wp, w, &server, &root));
        listeners.push(listener(&format!("native-{np}"), np, n, &server, &root));
        ext.set_tcp_mode(wp, mode);
        ext.set_tcp_mode(np, mode);
        cases.push((name.clone(), wp, np, *expected, *checks));
    }
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    let envoy = Envoy::start("authz-tcp-grpc", &bootstrap);

    let dest_port = |c: &Check| -> Option<u32> {
        use envoy_types::pb::envoy::config::core::v3::address::Address as A;
        use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier as P;
        match c.attributes.as_ref()?.destination.as_ref()?.address.as_ref()?.address.as_ref()? {
            A::SocketAddress(s) => match s.port_specifier {
                Some(P::PortValue(p)) => Some(p),
                _ => None,
            },
            _ => None,
        }
    };
    // Everything but the ports.
    let normalized = |mut c: Check| -> Check {
        use envoy_types::pb::envoy::config::core::v3::address::Address as A;
        if let Some(a) = c.attributes.as_mut() {
            for peer in [a.source.as_mut(), a.destination.as_mut()].into_iter().flatten() {
                if let Some(A::SocketAddress(s)) = peer.address.as_mut().and_then(|x| x.address.as_mut()) {
                    s.port_specifier = None;
                }
            }
        }
        c
    };
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, wp, np, expected, checks) in &cases {
        for (i, client) in clients.iter().enumerate() {
            let before = ext.checks().len();
            let native = tcp_passes(*np, client.as_ref());
            let wasm = tcp_passes(*wp, client.as_ref());
            let want = expected.as_bytes()[i] == b'P';
            let who = if client.is_some() { "mTLS" } else { "plaintext" };
            if native != want || wasm != native {
                failures.push(format!("{name} ({who}): native passes {native}, wasmesh {wasm}, expected {want}"));
            }
            let got: Vec<Check> = ext.checks().into_iter().skip(before).collect();
            let of =
                |port: u16| got.iter().filter(|c| dest_port(c) == Some(u32::from(port))).cloned().collect::<Vec<_>>();
            let (w, n) = (of(*wp), of(*np));
            if *checks && (n.len() != 1 || w.len() != 1) {
                failures.push(format!(
                    "{name} ({who}): {} native checks, {} wasmesh checks; one each expected",
                    n.len(),
                    w.len()
                ));
                continue;
            }
            if let (Some(w), Some(n)) = (w.first(), n.first()) {
                compared += 1;
                let (w, n) = (normalized(w.clone()), normalized(n.clone()));
                if w != n {
                    failures.push(format!("{name} ({who}): CheckRequests differ:\n  wasmesh {w:?}\n  native  {n:?}"));
                }
                let peer = w
                    .attributes
                    .as_ref()
                    .and_then(|a| a.source.as_ref())
                    .map(|s| s.principal.clone())
                    .unwrap_or_default();
                let want_peer = if client.is_some() { "spiffe://cluster.local/ns/foo/sa/allow" } else { "" };
                if peer != want_peer {
                    failures.push(format!("{name} ({who}): source principal {peer:?}, expected {want_peer:?}"));
                }
            }
        }
    }
    let log = envoy.log();
    assert!(!log.contains("panicked"), "a wasm VM panicked: {}", envoy.log_tail(40));
    assert!(failures.is_empty(), "{} differences:\n{}", failures.len(), failures.join("\n"));
    assert!(compared >= 20, "only {compared} CheckRequest pairs compared");
    // Native counters, to show the oracle took each path.
    for stat in ["ok", "denied", "error", "failure_mode_allowed", "cx_closed"] {
        // `ext_authz.<stat_prefix>.`: istiod's prefix `tcp.` makes an empty segment.
        let v =
            envoy.stat(&format!("ext_authz.tcp..{stat}")).or(envoy.stat(&format!("ext_authz.tcp.{stat}"))).unwrap_or(0);
        assert!(v > 0, "native ext_authz.tcp.{stat} is {v}");
    }
    eprintln!("{} cases x 2 clients, {compared} CheckRequest pairs equal", cases.len());
}
