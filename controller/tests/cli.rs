//! wasmeshctl as a user runs it: its bootstraps pass `envoy --mode validate`, and its errors name
//! file, resource, field and value.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn envoy() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    for e in std::fs::read_dir(repo().join(".venv/lib")).expect("no .venv: run `make deps` or set ENVOY_BIN").flatten()
    {
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
    // Both layouts: one filter each, and one pass (the default, `wasmesh.chain`).
    for layout in ["per-filter", "one-pass"] {
        let sidecar = dir.join(format!("reviews-v2-{layout}.yaml"));
        let out = wasmeshctl(&[
            "envoy",
            "--layout",
            layout,
            "-f",
            "examples/bookinfo",
            "--role",
            "sidecar",
            "--workload",
            "default/reviews-v2",
            "--inbound-port",
            "19083",
            "--app-port",
            "29083",
            "--outbound-port",
            "15001",
            "--admin-port",
            "15000",
            "--certs",
            certs.to_str().unwrap(),
            "--output-file",
            sidecar.to_str().unwrap(),
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
        assert_eq!(text.contains("root_id: wasmesh.chain"), layout == "one-pass", "{layout}");
        assert_envoy_validates(&sidecar);

        let gateway = dir.join(format!("gateway-{layout}.yaml"));
        let out = wasmeshctl(&[
            "envoy",
            "--layout",
            layout,
            "-f",
            "examples/bookinfo",
            "--role",
            "gateway",
            "--workload",
            "istio-system/istio-ingressgateway",
            "--port",
            "80=18080",
            "--admin-port",
            "15010",
            "--certs",
            certs.to_str().unwrap(),
            "--output-file",
            gateway.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_envoy_validates(&gateway);
    }
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
    assert!(
        err.contains(
            "VirtualService default/reviews: spec.http[0].match[0].uri.regex: invalid RE2 regex \"(unclosed\""
        ),
        "{err}"
    );
    assert!(err.contains("spec.http[0].route[0].weight: -1 is negative"), "{err}");
    assert!(err.contains("bad.yaml (document 1)"), "{err}");

    std::fs::write(&bad, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: r\n  subsets:\n  - {name: v1, lables: {version: v1}}\n").unwrap();
    let out = wasmeshctl(&["validate", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.subsets[0]") && err.contains("unknown field `lables`"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn envoy_command_errors_are_for_people() {
    let out = wasmeshctl(&["envoy", "-f", "examples/bookinfo", "--role", "sidecar", "--workload", "default/nope"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no WorkloadEntry default/nope") && err.contains("default/reviews-v1"),
        "{err}"
    );
    let out = wasmeshctl(&[
        "envoy",
        "-f",
        "examples/bookinfo",
        "--role",
        "sidecar",
        "--workload",
        "default/reviews-v1",
        "--inbound-port",
        "x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid value 'x' for '--inbound-port <PORT>': expected a port number 1-65535"), "{err}");
    let out = wasmeshctl(&["envoy", "--bogus", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("unexpected argument '--bogus'")
            && err.contains("Usage: wasmeshctl envoy"),
        "{err}"
    );
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
        "envoy",
        "-f",
        mesh.to_str().unwrap(),
        "--role",
        "sidecar",
        "--workload",
        "default/db",
        "--inbound-port",
        "13306",
        "--app-port",
        "23306",
        "--admin-port",
        "15000",
        "--certs",
        certs.to_str().unwrap(),
        "--output-file",
        server.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&server).unwrap();
    for expected in [
        "envoy.filters.network.tcp_proxy",
        "wasmesh.authz.tcp",
        "wasmesh.stats.tcp",
        "require_client_certificate: true",
        "inbound|13306||",
    ] {
        assert!(text.contains(expected), "{expected} missing from the TCP sidecar bootstrap");
    }
    assert!(!text.contains("http_connection_manager"), "a TCP-only workload has no HCM");
    assert_envoy_validates(&server);

    let client = dir.join("sleep.yaml");
    let out = wasmeshctl(&[
        "envoy",
        "-f",
        mesh.to_str().unwrap(),
        "--role",
        "sidecar",
        "--workload",
        "default/sleep",
        "--tcp-outbound",
        "15306=db:3306",
        "--admin-port",
        "15001",
        "--certs",
        certs.to_str().unwrap(),
        "--output-file",
        client.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&client).unwrap();
    assert!(
        text.contains("outbound_tcp_15306") && text.contains("cluster: outbound|3306||db.default.svc.cluster.local")
    );
    assert!(text.contains("outbound_.3306_._.db.default.svc.cluster.local"), "auto mTLS SNI on the TCP cluster");
    assert_envoy_validates(&client);

    // An `experimental.envoy.filters.network.*` condition: istiod translates it on TCP ports too
    // (network RBAC metadata matcher), and so does wasmesh; the bootstrap loads in Envoy.
    let meta = dir.join("meta.yaml");
    std::fs::write(
        &meta,
        std::fs::read_to_string(&mesh).unwrap()
            + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: meta, namespace: default}\nspec: {action: DENY, rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.t]', values: ['[update]']}]}]}\n",
    )
    .unwrap();
    let with_meta = dir.join("db-meta.yaml");
    let out = wasmeshctl(&[
        "envoy",
        "-f",
        meta.to_str().unwrap(),
        "--role",
        "sidecar",
        "--workload",
        "default/db",
        "--inbound-port",
        "13306",
        "--app-port",
        "23306",
        "--admin-port",
        "15000",
        "--certs",
        certs.to_str().unwrap(),
        "--output-file",
        with_meta.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_envoy_validates(&with_meta);
    let out = wasmeshctl(&[
        "envoy",
        "-f",
        mesh.to_str().unwrap(),
        "--role",
        "sidecar",
        "--workload",
        "default/sleep",
        "--tcp-outbound",
        "db:3306",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("BIND_PORT=HOST:PORT"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `wasmeshctl check` as the README shows it: the decision and which policy and rule decided,
/// offline, for the demo mesh's policies.
#[test]
fn check_prints_the_decision_and_the_deciding_rule() {
    let check = |method: &str, principal: &str| -> String {
        let out = wasmeshctl(&[
            "check",
            "-f",
            "examples/bookinfo",
            "--workload",
            "default/reviews-v2",
            "--method",
            method,
            "--path",
            "/reviews/0",
            "--principal",
            principal,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let productpage = "cluster.local/ns/default/sa/bookinfo-productpage";
    let text = check("GET", productpage);
    assert!(text.contains("decision: ALLOW"), "{text}");
    assert!(
        text.contains(
            "decided by: AuthorizationPolicy default/reviews-viewer spec.rules[0] in examples/bookinfo/security.yaml"
        ),
        "{text}"
    );
    assert!(text.contains(productpage) && text.contains("- GET"), "the rule's YAML is printed: {text}");
    let text = check("POST", productpage);
    assert!(text.contains("decision: DENY (403 RBAC: access denied)") && text.contains("none matched"), "{text}");
    let text = check("GET", "cluster.local/ns/default/sa/bookinfo-ratings");
    assert!(text.contains("decision: DENY"), "another identity: {text}");
    let out = wasmeshctl(&[
        "check",
        "-f",
        "examples/bookinfo",
        "--workload",
        "default/nope",
        "--method",
        "GET",
        "--path",
        "/",
    ]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("default/nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs wasmeshctl with `stdin` on its standard input, from `dir`.
fn wasmeshctl_in(dir: &Path, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmeshctl"))
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run wasmeshctl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_command_has_help_version_and_completion() {
    for command in ["validate", "envoy", "check", "certs", "dashboard", "completion"] {
        let out = wasmeshctl(&[command, "--help"]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{command} --help: {stderr}");
        assert!(stdout.contains(&format!("Usage: wasmeshctl {command}")), "{command}: {stdout}");
        let out = wasmeshctl(&["help", command]);
        assert!(out.status.success() && text(&out).0.contains(&format!("Usage: wasmeshctl {command}")));
    }
    // What each command's help tells a user who has not read the README.
    let (help, _) = text(&wasmeshctl(&["envoy", "--help"]));
    for expected in [
        "-f, --filename <FILE|DIR|->",
        "-R, --recursive",
        "-o, --output <OUTPUT>",
        "--output-file <FILE>",
        "WASMESH_WASM_DIR",
        "--layout <LAYOUT>",
        "[default: one-pass]",
        "WasmPlugin",
    ] {
        assert!(help.contains(expected), "{expected} missing from envoy --help:\n{help}");
    }
    let (help, _) = text(&wasmeshctl(&["--help"]));
    for command in ["validate", "envoy", "check", "certs", "dashboard", "completion"] {
        assert!(help.contains(&format!("\n  {command} ")), "{command} missing from --help:\n{help}");
    }
    let out = wasmeshctl(&["--version"]);
    assert!(out.status.success());
    assert_eq!(text(&out).0.trim(), format!("wasmeshctl {}", env!("CARGO_PKG_VERSION")));
    // No command: usage on stderr and a failure (as clap does for a missing subcommand).
    let out = wasmeshctl(&[]);
    assert!(!out.status.success() && text(&out).1.contains("Usage: wasmeshctl <COMMAND>"));
    let out = wasmeshctl(&["frobnicate"]);
    assert!(!out.status.success() && text(&out).1.contains("unrecognized subcommand 'frobnicate'"));

    for (shell, marker) in
        [("bash", "complete -F _wasmeshctl"), ("zsh", "#compdef wasmeshctl"), ("fish", "complete -c wasmeshctl")]
    {
        let out = wasmeshctl(&["completion", shell]);
        let (script, stderr) = text(&out);
        assert!(out.status.success(), "{shell}: {stderr}");
        assert!(
            script.contains(marker) && script.contains("validate") && script.contains("filename"),
            "{shell}:\n{script}"
        );
    }
    // The bash script is valid bash that defines the completion function.
    let dir = tmp("completion");
    std::fs::write(dir.join("c.bash"), text(&wasmeshctl(&["completion", "bash"])).0).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p wasmeshctl", dir.join("c.bash").display()))
        .output()
        .unwrap();
    assert!(out.status.success() && text(&out).0.contains("_wasmeshctl"), "{:?}", text(&out));
    let out = wasmeshctl(&["completion", "tcsh"]);
    assert!(!out.status.success() && text(&out).1.contains("possible values: bash"), "{}", text(&out).1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn input_from_stdin_directories_and_recursion() {
    let dir = tmp("input");
    let all: String = ["services.yaml", "destination-rules.yaml", "virtual-services.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("examples/bookinfo").join(f)).unwrap() + "\n---\n")
        .collect();
    // `-f -`: stdin, named <stdin> in errors.
    let out = wasmeshctl_in(&dir, &["validate", "-f", "-"], all.as_bytes());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let count = all.matches("\nkind: ").count() + usize::from(all.starts_with("kind: "));
    assert!(stdout.contains(&format!("{count} resources valid")), "{count}: {stdout}");
    let out = wasmeshctl_in(
        &dir,
        &["validate", "-f", "-"],
        b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: {hosts: [r], htp: []}\n",
    );
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success()
            && stderr.contains("<stdin> (document 1): VirtualService default/r: spec")
            && stderr.contains("htp"),
        "{stderr}"
    );
    let out = wasmeshctl_in(&dir, &["validate", "-f", "-"], b"");
    assert!(!out.status.success() && text(&out).1.contains("no Istio resources in <stdin>"), "{}", text(&out).1);

    // -f DIR reads *.yaml, *.yml and *.json (not other files); -R its sub-directories.
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let vs = |name: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec: {{hosts: [{name}]}}\n")
    };
    std::fs::write(tree.join("a.yaml"), vs("a")).unwrap();
    std::fs::write(tree.join("b.yml"), vs("b")).unwrap();
    std::fs::write(tree.join("c.json"), r#"{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "c"}, "spec": {"hosts": ["c"]}}"#).unwrap();
    std::fs::write(tree.join("README.md"), "not: yaml: at: all: [").unwrap();
    std::fs::write(tree.join("sub/d.yaml"), vs("d")).unwrap();
    std::fs::write(tree.join("sub/deeper/e.yaml"), vs("e")).unwrap();
    let out = wasmeshctl(&["validate", "-f", tree.to_str().unwrap()]);
    assert!(out.status.success() && text(&out).0.contains("3 resources valid"), "{:?}", text(&out));
    let out = wasmeshctl(&["validate", "-R", "-f", tree.to_str().unwrap()]);
    assert!(out.status.success() && text(&out).0.contains("5 resources valid"), "{:?}", text(&out));
    // Overlapping inputs (a directory and a file in it) read each file once.
    let out =
        wasmeshctl(&["validate", "-R", "-f", tree.to_str().unwrap(), "-f", tree.join("sub/d.yaml").to_str().unwrap()]);
    assert!(out.status.success() && text(&out).0.contains("5 resources valid"), "{:?}", text(&out));

    // A directory with nothing to read is an error that says why, and hints at -R.
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("nested")).unwrap();
    std::fs::write(empty.join("nested/x.yaml"), vs("x")).unwrap();
    let out = wasmeshctl(&["validate", "-f", empty.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("no Istio resources in {}", empty.display())), "{stderr}");
    assert!(stderr.contains("holds no *.yaml, *.yml or *.json file (-R reads its sub-directories)"), "{stderr}");
    let out = wasmeshctl(&["validate"]);
    assert!(
        !out.status.success() && text(&out).1.contains("no input: give -f FILE, -f DIR or -f - (stdin)"),
        "{}",
        text(&out).1
    );
    let out = wasmeshctl(&["validate", "-f", dir.join("missing.yaml").to_str().unwrap()]);
    assert!(
        !out.status.success() && text(&out).1.contains("missing.yaml (document 1): cannot read file"),
        "{}",
        text(&out).1
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mixed_files_unsupported_kinds_and_duplicates() {
    let dir = tmp("mixed");
    // A file as people keep them: the app's Deployment and Service next to its Istio routing.
    let mixed = dir.join("reviews.yaml");
    std::fs::write(
        &mixed,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews-v1}\nspec: {replicas: 1}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews-v2}\nspec: {replicas: 1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 9080}]}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default}\nspec: {egress: [{hosts: ['./*']}]}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n\
         spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n",
    )
    .unwrap();
    let out = wasmeshctl(&["validate", "-f", mixed.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("1 resources valid"), "{stdout}");
    let file = mixed.display();
    assert!(
        stderr.contains(&format!("note: skipped 2 Deployment (apps/v1) in {file}: not an Istio resource")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("note: skipped 1 Service (v1) in {file}")), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "note: skipped 1 Sidecar (networking.istio.io/v1) in {file}: an Istio kind wasmesh does not implement"
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "one note per kind: {stderr}");

    // Gateway API: refused, named; --skip-unsupported skips with a note.
    let gwapi = dir.join("httproute.yaml");
    std::fs::write(
        &gwapi,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: reviews, namespace: default}\n\
         spec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: reviews, port: 9080}]}]}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: default}\n\
         spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}\n",
    )
    .unwrap();
    let out = wasmeshctl(&["validate", "-f", mixed.to_str().unwrap(), "-f", gwapi.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    let g = gwapi.display();
    assert!(stderr.contains(&format!("error: {g} (document 1): HTTPRoute default/reviews: kind: Gateway API (gateway.networking.k8s.io/v1) is not supported by wasmesh yet")), "{stderr}");
    assert!(stderr.contains(&format!("error: {g} (document 2): Gateway default/gw: kind: Gateway API")), "{stderr}");
    assert!(stderr.contains("--skip-unsupported") && stderr.contains("2 error(s)"), "{stderr}");
    let out =
        wasmeshctl(&["validate", "--skip-unsupported", "-f", mixed.to_str().unwrap(), "-f", gwapi.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("1 resources valid"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "note: skipped 1 HTTPRoute (gateway.networking.k8s.io/v1) in {g}: Gateway API is not supported"
        )),
        "{stderr}"
    );

    // The same resource twice: an error naming both places; --override = kubectl apply of both.
    let v3 = dir.join("reviews-v3.yaml");
    std::fs::write(
        &v3,
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\n\
         spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v3}\n",
    )
    .unwrap();
    let out = wasmeshctl(&["validate", "-f", "examples/bookinfo", "-f", v3.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {} (document 1): VirtualService default/reviews: given twice: also in examples/bookinfo/virtual-services.yaml (document ",
            v3.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--override") && stderr.contains("1 error(s)"), "{stderr}");
    let out = wasmeshctl(&["validate", "--override", "-f", "examples/bookinfo", "-f", v3.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("note: VirtualService default/reviews from {} (document 1) replaces the one from examples/bookinfo/virtual-services.yaml", v3.display())), "{stderr}");
    // What the override means for a request: `check` and `envoy` see the later VirtualService.
    let yaml = |extra: &[&str]| {
        let mut args = vec![
            "envoy",
            "-f",
            "examples/bookinfo",
            "-f",
            v3.to_str().unwrap(),
            "--role",
            "sidecar",
            "--workload",
            "default/productpage-v1",
            "--outbound-port",
            "15001",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        wasmeshctl(&args)
    };
    assert!(!yaml(&[]).status.success());
    let out = yaml(&["--override"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let bootstrap: serde_json::Value = serde_json::from_str(&stdout).expect("-o json prints JSON");
    let router = router_resources(&bootstrap);
    assert!(
        router.contains(r#"\"subset\":\"v3\""#) && !router.contains("end-user"),
        "the later VirtualService replaced bookinfo's: {router}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The router filter's configuration (a JSON string inside the bootstrap), as text.
fn router_resources(bootstrap: &serde_json::Value) -> String {
    let mut found = Vec::new();
    fn walk(v: &serde_json::Value, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                match m.get("root_id").and_then(|r| r.as_str()) {
                    Some("wasmesh.router") => found.push(serde_json::Value::Object(m.clone()).to_string()),
                    // One pass: the router phase of the chain, as the filter would have it.
                    Some("wasmesh.chain") => {
                        let value = m["configuration"]["value"].as_str().unwrap_or_default();
                        let chain: serde_json::Value = serde_json::from_str(value).unwrap_or_default();
                        for phase in chain["phases"].as_array().into_iter().flatten() {
                            if phase["rootId"] == "wasmesh.router" {
                                let config = phase["configuration"].to_string();
                                found.push(serde_json::json!({"configuration": {"value": config}}).to_string());
                            }
                        }
                    }
                    _ => {}
                }
                m.values().for_each(|v| walk(v, found));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    walk(bootstrap, &mut found);
    assert!(!found.is_empty(), "no wasmesh.router in the bootstrap");
    found.join("\n")
}

#[test]
fn every_broken_file_is_reported_with_the_count() {
    let dir = tmp("broken");
    std::fs::write(
        dir.join("1-syntax.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a\n",
    )
    .unwrap();
    std::fs::write(dir.join("2-field.yaml"), "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b}\nspec: {host: b, subsets: [{name: v1, lables: {}}]}\n").unwrap();
    std::fs::write(
        dir.join("3-two.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: c}\nspek: {}\n---\n\
         apiVersion: networking.istio.io/v1beta2\nkind: ServiceEntry\nmetadata: {name: d}\nspec: {hosts: [d]}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: fine}\nspec: {hosts: [fine]}\n",
    )
    .unwrap();
    let out = wasmeshctl(&["validate", "-f", dir.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    let d = dir.display();
    for expected in [
        format!("error: {d}/1-syntax.yaml (document 1): not valid YAML"),
        format!("error: {d}/2-field.yaml (document 1): DestinationRule default/b: spec.subsets[0].lables: unknown field `lables`"),
        format!("error: {d}/3-two.yaml (document 1): Gateway default/c: spek: unknown top-level field"),
        format!("error: {d}/3-two.yaml (document 2): apiVersion: \"networking.istio.io/v1beta2\" is not served for ServiceEntry"),
        "4 error(s)".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}\nmissing from:\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An installed wasmeshctl: the binary copied elsewhere with its modules in `wasm/` beside it,
/// run from an unrelated directory. And a clear error when a module is missing.
#[test]
fn installed_binary_finds_its_modules_and_says_when_one_is_missing() {
    let dir = tmp("installed");
    let bin = dir.join("bin");
    std::fs::create_dir_all(bin.join("wasm")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_wasmeshctl"), bin.join("wasmeshctl")).unwrap();
    let built = repo().join("target/wasm32-wasip1/release");
    assert!(built.join("wasmesh.wasm").exists(), "build the filters first: make wasm");
    std::fs::copy(built.join("wasmesh.wasm"), bin.join("wasm/wasmesh.wasm")).unwrap();
    let examples = repo().join("examples/bookinfo");
    let run = |env: Option<&Path>| {
        let mut cmd = Command::new(bin.join("wasmeshctl"));
        cmd.current_dir(&dir).env_remove("WASMESH_WASM_DIR");
        if let Some(wasm) = env {
            cmd.env("WASMESH_WASM_DIR", wasm);
        }
        cmd.args(["envoy", "-f", examples.to_str().unwrap(), "--role", "sidecar", "--workload", "default/reviews-v2"]);
        cmd.args(["--inbound-port", "19083", "--app-port", "29083", "--certs", "certs"]);
        cmd.output().unwrap()
    };
    let out = Command::new(bin.join("wasmeshctl"))
        .current_dir(&dir)
        .args(["certs", "--out-dir", "certs", "-f", examples.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    let out = run(None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let wasm = std::fs::canonicalize(bin.join("wasm")).unwrap();
    assert!(
        stdout.contains(&format!("filename: {}/wasmesh.wasm", wasm.display())),
        "the module from wasm/ beside the binary:\n{stdout}"
    );
    let certs = std::fs::canonicalize(dir.join("certs")).unwrap();
    assert!(
        stdout.contains(&format!("{}/default/bookinfo-reviews/cert-chain.pem", certs.display())),
        "absolute certificate paths"
    );
    // The bootstrap Envoy gets passes its validation from any working directory.
    let config = dir.join("reviews.yaml");
    std::fs::write(&config, &stdout).unwrap();
    let out = Command::new(envoy()).current_dir("/").args(["--mode", "validate", "-c"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);

    // WASMESH_WASM_DIR wins; a module the bootstrap needs that is not there is named.
    let empty = dir.join("no-modules");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(Some(&empty));
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    let e = empty.display();
    assert!(
        stderr.contains(&format!("the bootstrap needs wasm modules that are not there: {e}/wasmesh.wasm;")),
        "{stderr}"
    );
    assert!(stderr.contains("--wasm-dir"), "{stderr}");
    // Without wasm/ beside it (and no cargo target directory above it): told where to point.
    std::fs::remove_dir_all(bin.join("wasm")).unwrap();
    let out = run(None);
    let (_, stderr) = text(&out);
    assert!(
        !out.status.success()
            && stderr.contains("no wasm modules found: give --wasm-dir DIR (or set WASMESH_WASM_DIR)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs wasmeshctl and returns its output, the wall time and the CPU time (user + system) it
/// used, from bash's `times`.
fn timed(args: &[&str]) -> (std::process::Output, f64, f64) {
    let dir = tmp(&format!(
        "timed-{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let start = std::time::Instant::now();
    let shell = Command::new("bash")
        .current_dir(repo())
        .env("OUT", &stdout)
        .env("ERR", &stderr)
        .arg("-c")
        .arg(r#""$0" "$@" >"$OUT" 2>"$ERR"; status=$?; times; exit $status"#)
        .arg(env!("CARGO_BIN_EXE_wasmeshctl"))
        .args(args)
        .output()
        .expect("run bash");
    let wall = start.elapsed().as_secs_f64();
    // `times`: the shell's user and system time, then its children's: "0m6.046s 0m0.216s".
    let report = String::from_utf8_lossy(&shell.stdout).into_owned();
    let seconds = |t: &str| -> f64 {
        let (m, s) = t.trim_end_matches('s').split_once('m').unwrap_or_else(|| panic!("times: {report}"));
        m.parse::<f64>().unwrap() * 60.0 + s.parse::<f64>().unwrap()
    };
    let children = report.lines().nth(1).unwrap_or_else(|| panic!("times: {report}"));
    let cpu: f64 = children.split_whitespace().map(seconds).sum();
    let out = std::process::Output {
        status: shell.status,
        stdout: std::fs::read(&stdout).unwrap(),
        stderr: std::fs::read(&stderr).unwrap(),
    };
    let _ = std::fs::remove_dir_all(dir);
    (out, wall, cpu)
}

/// 10,000 resources of the four kinds people have most of, in 20 files over 50 namespaces:
/// `validate` reads and checks them in seconds (the figure is printed).
#[test]
fn validating_ten_thousand_resources_takes_seconds() {
    let dir = tmp("scale");
    let per_kind = 2500;
    let mut files = vec![String::new(); 20];
    for i in 0..per_kind {
        let ns = format!("ns{}", i % 50);
        let svc = format!("svc{i}");
        let doc = |s: String| s + "---\n";
        let vs = format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  hosts: [{svc}]\n  http:\n  - match:\n    - headers: {{end-user: {{exact: user{i}}}}}\n      uri: {{prefix: /api/v{}}}\n    route:\n    - destination: {{host: {svc}, subset: v2}}\n  - route:\n    - {{destination: {{host: {svc}, subset: v1}}, weight: 90}}\n    - {{destination: {{host: {svc}, subset: v2}}, weight: 10}}\n",
            i % 7
        );
        let dr = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  host: {svc}\n  trafficPolicy: {{loadBalancer: {{simple: {}}}}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n",
            ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"][i % 3]
        );
        let ap = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {svc}}}}}\n  action: {}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/caller{i}]}}}}]\n    to: [{{operation: {{methods: [GET, POST], paths: [/api/*, /healthz]}}}}]\n    when: [{{key: 'request.headers[x-tenant]', values: [t{i}]}}]\n",
            ["ALLOW", "DENY"][i % 2]
        );
        let se = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext{i}, namespace: {ns}}}\nspec:\n  hosts: [ext{i}.example.com]\n  location: MESH_EXTERNAL\n  ports: [{{number: 443, name: https, protocol: TLS}}, {{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
        );
        for (k, d) in [vs, dr, ap, se].into_iter().enumerate() {
            files[(i + k * 5) % 20].push_str(&doc(d));
        }
    }
    for (n, text) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("{n:02}.yaml")), text).unwrap();
    }
    let (out, wall, cpu) = timed(&["validate", "-f", dir.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{}", stderr.lines().take(20).collect::<Vec<_>>().join("\n"));
    assert!(stdout.contains(&format!("{} resources valid", 4 * per_kind)), "{stdout}");
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("wasmeshctl validate ({build}): {} resources in {cpu:.2} s CPU, {wall:.2} s wall", 4 * per_kind);
    // CPU time: the machine running the tests may be shared, wall time is not the program's.
    let bound = if cfg!(debug_assertions) { 10.0 } else { 3.0 };
    assert!(cpu < bound, "{} resources took {cpu:.2} s of CPU (bound {bound} s)", 4 * per_kind);

    // Duplicate detection is a map, not a scan: the same files again with every
    // DestinationRule changed are 2,500 duplicate errors (the other kinds are identical to
    // what was read and read once), also in seconds.
    let again = dir.join("again");
    std::fs::create_dir_all(&again).unwrap();
    for (n, text) in files.iter().enumerate() {
        std::fs::write(again.join(format!("{n:02}.yaml")), text.replace("version: v1}", "version: v1x}")).unwrap();
    }
    let (out, wall, cpu) = timed(&["validate", "-f", dir.to_str().unwrap(), "-f", again.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.ends_with(&format!("\n{per_kind} error(s)\n")), "{}", stderr.lines().last().unwrap_or_default());
    assert!(
        stderr.contains("DestinationRule ns0/svc0: given twice: also in"),
        "{}",
        stderr.lines().next().unwrap_or_default()
    );
    println!(
        "wasmeshctl validate ({build}): 2 x {} resources, {per_kind} duplicates, in {cpu:.2} s CPU, {wall:.2} s wall",
        4 * per_kind
    );
    assert!(cpu < 2.0 * bound, "{cpu:.2} s");
    let _ = std::fs::remove_dir_all(dir);
}
