//! The exports `make wasm` removes (tools/strip-exports, filters/<module>/stripped-exports.txt):
//! the modules the tests and the bench load lack them, and what moved out of `proxy_on_done`
//! still runs in real Envoy.

use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use wasmesh_e2e::envoy::Envoy;
use wasmesh_e2e::{free_port, http, paths};
use wasmesh_strip_exports::{exports, parse_list, strip, Stripped};

const MODULES: [&str; 7] = ["router", "authz", "authn", "stats", "noop", "oidc", "wasmesh"];

/// Every module in the directory the tests load lacks the exports its list names, and keeps the
/// ones Envoy cannot do without.
#[test]
fn the_built_modules_lack_the_exports_their_lists_name() {
    for m in MODULES {
        let list =
            std::fs::read_to_string(paths::repo_root().join("filters").join(m).join("stripped-exports.txt")).unwrap();
        let names = parse_list(&list).unwrap();
        let wasm = std::fs::read(paths::wasm(m)).unwrap();
        let have = exports(&wasm).unwrap();
        for n in &names {
            assert!(!have.iter().any(|h| h == n), "{m}.wasm still exports {n}: run `make wasm`");
        }
        for keep in ["proxy_on_context_create", "proxy_on_delete", "proxy_on_configure", "proxy_on_request_headers"] {
            assert!(have.iter().any(|h| h == keep), "{m}.wasm lacks {keep}");
        }
    }
}

/// The phases' end-of-plugin flush (`Phase::done`) runs when Envoy shuts the plugin down, in a
/// module without `proxy_on_done`: Envoy's `onDone` is then `true` and it deletes the root context,
/// where the driver's `ChainRoot` flushes (shared/proxy/examples/drop_probe.rs logs from there).
#[test]
fn phases_flush_at_shutdown_without_proxy_on_done() {
    let root = paths::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip1", "-p", "wasmesh-proxy", "--example", "drop_probe"])
        .status()
        .expect("cargo build of the drop_probe example");
    assert!(status.success(), "cargo build --example drop_probe failed");
    let built = std::fs::read(paths::wasm_dir().join("examples").join("drop_probe.wasm")).unwrap();
    let Stripped::Module { removed, wasm } = strip(&built, &["proxy_on_done"]).unwrap() else {
        panic!("the probe as cargo builds it exports no proxy_on_done")
    };
    assert_eq!(removed, ["proxy_on_done"]);
    let dir = paths::TempDir::new("exports");
    let module = dir.path().join("drop_probe.wasm");
    std::fs::write(&module, wasm).unwrap();

    let (port, admin) = (free_port(), free_port());
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "probe",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "probe",
                    "route_config": {"virtual_hosts": [{"name": "probe", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
                    "http_filters": [
                        {"name": "drop-probe", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": {
                                "name": "drop-probe",
                                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "{}"},
                                "vm_config": {"vm_id": "drop-probe", "runtime": "envoy.wasm.runtime.v8",
                                              "code": {"local": {"filename": module.display().to_string()}}}}}},
                        {"name": "envoy.filters.http.router",
                         "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }
            }]}]
        }]}
    });
    let envoy = Envoy::start("drop-probe", &bootstrap);
    assert_eq!(http::get(port, "probe", "/", &[]).status, 200);
    assert!(!envoy.log().contains("drop-probe: done"), "done ran before the shutdown:\n{}", envoy.log_tail(20));
    let term = Command::new("kill").args(["-TERM", &envoy.pid().to_string()]).status().unwrap();
    assert!(term.success());
    let start = Instant::now();
    // One root context per VM: the main thread's and the worker's (--concurrency 1).
    while envoy.log().matches("drop-probe: done").count() < 2 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(envoy.log().matches("drop-probe: done").count(), 2, "{}", envoy.failure_summary());
}
