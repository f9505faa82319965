//! wasmeshctl as a user runs it: its bootstraps pass `envoy --mode validate`, and its errors name
//! file, resource, field and value.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn envoy() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    for e in std::fs::read_dir(repo().join(".venv/lib")).expect("no .venv: run `make deps` or set ENVOY_BIN").flatten() {
        let p = e.path().join("site-packages/envoy/_bin/envoy");
        if p.exists() {
            return p;
        }
    }
    panic!("no Envoy: run `make deps` or set ENVOY_BIN");
}

fn wasmeshctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmeshctl")).current_dir(repo()).args(args).output().expect("run wasmeshctl")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wasmeshctl-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn assert_envoy_validates(config: &Path) {
    // `--mode validate` loads the wasm filters too (their on_configure runs).
    let wasm_dir = repo().join("target/wasm32-wasip1/release");
    assert!(wasm_dir.join("router.wasm").exists(), "build the filters first: make wasm");
    let out = Command::new(envoy()).args(["--mode", "validate", "-c"]).arg(config).output().expect("run envoy");
    let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && log.contains("OK"), "envoy --mode validate {}:\n{log}", config.display());
}

#[test]
fn sidecar_and_gateway_bootstraps_pass_envoy_validate() {
    let dir = tmp("validate");
    // bookinfo is STRICT mTLS: the mesh CA issues the workload certificates first.
    let certs = dir.join("certs");
    let out = wasmeshctl(&["certs", "--out-dir", certs.to_str().unwrap(), "-f", "examples/bookinfo"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(certs.join("default/bookinfo-reviews/cert-chain.pem").exists());
    let sidecar = dir.join("reviews-v2.yaml");
    let out = wasmeshctl(&[
        "envoy", "-f", "examples/bookinfo", "--role", "sidecar", "--workload", "default/reviews-v2",
        "--inbound-port", "19083", "--app-port", "29083", "--outbound-port", "15001", "--admin-port", "15000",
        "--certs", certs.to_str().unwrap(), "--output-file", sidecar.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&sidecar).unwrap();
    for expected in [
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "inbound|19083||",
        "wasmesh.router",
        "wasmesh.authz",
        "cluster_header: x-wasmesh-cluster",
        "require_client_certificate: true",
        "spiffe://cluster.local/ns/default/sa/bookinfo-ratings",
    ] {
        assert!(text.contains(expected), "{expected} missing from the sidecar bootstrap");
    }
    assert_envoy_validates(&sidecar);

    let gateway = dir.join("gateway.yaml");
    let out = wasmeshctl(&[
        "envoy", "-f", "examples/bookinfo", "--role", "gateway", "--workload", "istio-system/istio-ingressgateway",
        "--port", "80=18080", "--admin-port", "15010", "--certs", certs.to_str().unwrap(), "--output-file", gateway.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_envoy_validates(&gateway);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn validate_accepts_the_examples_and_names_every_bad_field() {
    for example in ["examples/bookinfo", "examples/httpbin"] {
        let out = wasmeshctl(&["validate", "-f", example]);
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("resources valid"));
    }

    let dir = tmp("bad");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {regex: '(unclosed'}}]\n    route:\n    - {destination: {host: reviews, subset: v1}, weight: -1}\n    - {destination: {host: reviews, subset: v2}, weight: 0}\n",
    )
    .unwrap();
    let out = wasmeshctl(&["validate", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VirtualService default/reviews: spec.http[0].match[0].uri.regex: invalid RE2 regex \"(unclosed\""), "{err}");
    assert!(err.contains("spec.http[0].route[0].weight: -1 is negative"), "{err}");
    assert!(err.contains("bad.yaml (document 1)"), "{err}");

    std::fs::write(&bad, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  subsets:\n  - {name: v1, lables: {version: v1}}\n").unwrap();
    let out = wasmeshctl(&["validate", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("spec.subsets[0]") && err.contains("unknown field `lables`"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn envoy_command_errors_are_for_people() {
    let out = wasmeshctl(&["envoy", "-f", "examples/bookinfo", "--role", "sidecar", "--workload", "default/nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no WorkloadEntry default/nope") && err.contains("default/reviews-v1"), "{err}");
    let out = wasmeshctl(&["envoy", "-f", "examples/bookinfo", "--role", "sidecar", "--workload", "default/reviews-v1", "--inbound-port", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'x' for '--inbound-port <PORT>': expected a port number 1-65535"), "{err}");
    let out = wasmeshctl(&["envoy", "--bogus", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("unexpected argument '--bogus'") && err.contains("Usage: wasmeshctl envoy"), "{err}");
}

#[test]
fn tcp_ports_pass_envoy_validate_and_unenforceable_policies_are_refused() {
    let dir = tmp("tcp");
    let mesh = dir.join("mesh.yaml");
    std::fs::write(
        &mesh,
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 3306, name: tcp-mysql}]
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: default}
spec: {address: 127.0.0.1, labels: {app: db}, serviceAccount: db, ports: {tcp-mysql: 13306}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: default}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]
  - to: [{operation: {paths: [/admin]}}]
"#,
    )
    .unwrap();
    let certs = dir.join("certs");
    let out = wasmeshctl(&["certs", "--out-dir", certs.to_str().unwrap(), "-f", mesh.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = dir.join("db.yaml");
    let out = wasmeshctl(&[
        "envoy", "-f", mesh.to_str().unwrap(), "--role", "sidecar", "--workload", "default/db", "--inbound-port", "13306",
        "--app-port", "23306", "--admin-port", "15000", "--certs", certs.to_str().unwrap(), "--output-file", server.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&server).unwrap();
    for expected in ["envoy.filters.network.tcp_proxy", "wasmesh.authz.tcp", "wasmesh.stats.tcp", "require_client_certificate: true", "inbound|13306||"] {
        assert!(text.contains(expected), "{expected} missing from the TCP sidecar bootstrap");
    }
    assert!(!text.contains("http_connection_manager"), "a TCP-only workload has no HCM");
    assert_envoy_validates(&server);

    let client = dir.join("sleep.yaml");
    let out = wasmeshctl(&[
        "envoy", "-f", mesh.to_str().unwrap(), "--role", "sidecar", "--workload", "default/sleep", "--tcp-outbound",
        "15306=db:3306", "--admin-port", "15001", "--certs", certs.to_str().unwrap(), "--output-file", client.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&client).unwrap();
    assert!(text.contains("outbound_tcp_15306") && text.contains("cluster: outbound|3306||db.default.svc.cluster.local"));
    assert!(text.contains("outbound_.3306_._.db.default.svc.cluster.local"), "auto mTLS SNI on the TCP cluster");
    assert_envoy_validates(&client);

    // A condition wasmesh cannot enforce on TCP: refused, naming resource and field.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&mesh).unwrap()
            + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: meta, namespace: default}\nspec: {action: DENY, rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.t]', values: ['[update]']}]}]}\n",
    )
    .unwrap();
    let out = wasmeshctl(&[
        "envoy", "-f", bad.to_str().unwrap(), "--role", "sidecar", "--workload", "default/db", "--inbound-port", "13306",
        "--app-port", "23306", "--certs", certs.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("AuthorizationPolicy default/meta") && err.contains("spec.rules[0].when[0].key"), "{err}");
    let out = wasmeshctl(&["envoy", "-f", mesh.to_str().unwrap(), "--role", "sidecar", "--workload", "default/sleep", "--tcp-outbound", "db:3306"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("BIND_PORT=HOST:PORT"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `wasmeshctl check` as the README shows it: the decision and which policy and rule decided,
/// offline, for the demo mesh's policies.
#[test]
fn check_prints_the_decision_and_the_deciding_rule() {
    let check = |method: &str, principal: &str| -> String {
        let out = wasmeshctl(&[
            "check", "-f", "examples/bookinfo", "--workload", "default/reviews-v2", "--method", method, "--path", "/reviews/0",
            "--principal", principal,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let productpage = "cluster.local/ns/default/sa/bookinfo-productpage";
    let text = check("GET", productpage);
    assert!(text.contains("decision: ALLOW"), "{text}");
    assert!(text.contains("decided by: AuthorizationPolicy default/reviews-viewer spec.rules[0] in examples/bookinfo/security.yaml"), "{text}");
    assert!(text.contains(productpage) && text.contains("- GET"), "the rule's YAML is printed: {text}");
    let text = check("POST", productpage);
    assert!(text.contains("decision: DENY (403 RBAC: access denied)") && text.contains("none matched"), "{text}");
    let text = check("GET", "cluster.local/ns/default/sa/bookinfo-ratings");
    assert!(text.contains("decision: DENY"), "another identity: {text}");
    let out = wasmeshctl(&["check", "-f", "examples/bookinfo", "--workload", "default/nope", "--method", "GET", "--path", "/"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("default/nope"), "{}", String::from_utf8_lossy(&out.stderr));
}
