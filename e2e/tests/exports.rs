//! The exports `make wasm` removes (tools/strip-exports, filters/<module>/stripped-exports.txt):
//! the modules the tests and the bench load lack them, and what moved out of `proxy_on_done`
//! still runs in real Envoy.

use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};
use wasmesh_controller::{bootstrap, module};
use wasmesh_e2e::envoy::Envoy;
use wasmesh_e2e::{free_port, http, paths, App};
use wasmesh_istio::module::Variant;
use wasmesh_istio::Resources;
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

// ---------------------------------------------------------------------------------------------
// wasmesh-request.wasm: wasmesh.wasm without the response-side callbacks (wasmesh_istio::module)

/// The request-side module exports what wasmesh.wasm does minus exactly its list's extra names.
#[test]
fn the_request_side_module_lacks_exactly_the_response_callbacks() {
    let variant = Variant::RequestSide;
    let full = exports(&std::fs::read(paths::wasm("wasmesh")).unwrap()).unwrap();
    let lean = exports(&std::fs::read(paths::wasm_dir().join(variant.file_name())).unwrap()).unwrap();
    let list = std::fs::read_to_string(
        paths::repo_root().join("filters/wasmesh").join(format!("stripped-exports-{}.txt", variant.name())),
    )
    .unwrap();
    let names = parse_list(&list).unwrap();
    let want: Vec<&String> = full.iter().filter(|e| !names.contains(&e.as_str())).collect();
    assert_eq!(lean.iter().collect::<Vec<_>>(), want, "run `make wasm`");
    for lacked in variant.lacks().exports() {
        assert!(full.iter().any(|e| e == lacked), "wasmesh.wasm lacks {lacked}");
        assert!(!lean.iter().any(|e| e == lacked), "{} still exports {lacked}", variant.file_name());
    }
}

/// A sidecar as wasmeshctl builds it (one Envoy filter per wasmesh filter) without its stats
/// filters: authn + authz on the inbound listener, the router on the outbound one. `vs_headers` is
/// the `headers` of the VirtualService's route to `ratings` (the app).
#[allow(clippy::unwrap_used)]
fn request_side_sidecar(app_port: u16, vs_headers: &str) -> (Value, u16, u16) {
    let (inbound, outbound) = (free_port(), free_port());
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: {inbound}, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: reviews}}, serviceAccount: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {app_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings, namespace: default}}
spec:
  hosts: [ratings]
  http:
  - match: [{{uri: {{prefix: /teapot}}}}]
    directResponse: {{status: 418}}
  - headers: {vs_headers}
    route: [{{destination: {{host: ratings}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules: [{{issuer: "https://issuer.example", jwks: '{{"keys": []}}'}}]
"#
    );
    let res = Resources { items: wasmesh_istio::load_str(&yaml, "lean.yaml").unwrap() };
    let (workload, _) = bootstrap::workload_from_entry(&res, "default/reviews").unwrap();
    let spec = bootstrap::ProxySpec {
        workload,
        inbound: vec![bootstrap::Inbound { port: inbound, app_port }],
        outbound_port: Some(outbound),
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: free_port(),
        wasm_dir: paths::wasm_dir(),
        mesh: wasmesh_controller::MeshConfig::default(),
        certs_dir: None,
        envoy_access_log: None,
        credentials_dir: None,
    };
    let mut boot =
        bootstrap::build_with(&spec, &res, bootstrap::Slots::AsNeeded, wasmesh_controller::Layout::PerFilter).unwrap();
    // With its stats filters every wasmeshctl Envoy needs the full module.
    assert_eq!(module::pick(&mut boot.clone()), Variant::Full);
    fn drop_stats(v: &mut Value) {
        match v {
            Value::Array(items) => {
                items.retain(|f| !f["name"].as_str().is_some_and(|n| n.starts_with("wasmesh.stats")));
                items.iter_mut().for_each(drop_stats);
            }
            Value::Object(map) => map.values_mut().for_each(drop_stats),
            _ => {}
        }
    }
    drop_stats(&mut boot);
    let ids: Vec<String> = module::plugins(&boot).into_iter().map(|(id, _)| id).collect();
    for want in ["wasmesh.authn", "wasmesh.authz", "wasmesh.router"] {
        assert!(ids.iter().any(|i| i == want), "{want} not in {ids:?}");
    }
    (boot, inbound, outbound)
}

/// wasmeshctl's rule picks the request-side module for authn + authz + router without response
/// header operations, and the filters behave there as in wasmesh.wasm: authz denies, the router
/// answers and routes, the allowed requests reach the app.
#[test]
fn router_authn_and_authz_run_from_the_request_side_module() {
    let app = App::new("ratings", "v1").start();
    let (mut boot, inbound, outbound) = request_side_sidecar(app.port, r#"{request: {set: {x-a: "1"}}}"#);
    assert_eq!(module::pick(&mut boot), Variant::RequestSide);
    let text = boot.to_string();
    assert!(text.contains("wasmesh-request.wasm") && !text.contains("/wasmesh.wasm"), "{text}");
    let envoy = Envoy::start("lean", &boot);
    assert_eq!(http::get(inbound, "reviews", "/admin", &[]).status, 403, "{}", envoy.failure_summary());
    assert_eq!(http::get(inbound, "reviews", "/", &[]).status, 200, "{}", envoy.failure_summary());
    assert_eq!(http::get(outbound, "ratings:9080", "/teapot", &[]).status, 418, "{}", envoy.failure_summary());
    let routed = http::get(outbound, "ratings:9080", "/", &[]);
    assert_eq!(routed.status, 200, "{}", envoy.failure_summary());
    assert_eq!(http::get(outbound, "unknown:9080", "/", &[]).status, 404);
    // A token authn cannot verify is refused (RequestAuthentication: an invalid token is 401).
    assert_eq!(http::get(inbound, "reviews", "/", &[("authorization", "Bearer x.y.z")]).status, 401);
    assert!(app.served() >= 2);
    assert!(!envoy.log().contains("configuration rejected"), "{}", envoy.failure_summary());
}

/// A route with response header operations: the request-side module refuses the configuration
/// at start (Envoy rejects the plugin), naming the phase, the callback and the module to use;
/// wasmeshctl's rule picks wasmesh.wasm for it, which applies the header.
#[test]
fn a_response_header_route_is_refused_by_the_request_side_module_and_runs_on_the_full_one() {
    let app = App::new("ratings", "v1").start();
    let (boot, _, outbound) = request_side_sidecar(app.port, r#"{response: {set: {x-resp: "1"}}}"#);
    let mut forced = boot.clone();
    module::point_at(&mut forced, Variant::RequestSide);
    let err = match Envoy::start_with("lean-refused", &forced, 1) {
        Ok(envoy) => panic!("the request-side module accepted a response header route:\n{}", envoy.log_tail(30)),
        Err(e) => e,
    };
    assert!(
        err.contains("the router phase's configuration needs the response headers callback (proxy_on_response_headers), which this module (wasmesh-request.wasm) does not export; run it from wasmesh.wasm"),
        "{err}"
    );
    let mut picked = boot;
    assert_eq!(module::pick(&mut picked), Variant::Full);
    let envoy = Envoy::start("lean-full", &picked);
    let r = http::get(outbound, "ratings:9080", "/", &[]);
    assert_eq!(r.status, 200, "{}", envoy.failure_summary());
    assert!(r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("x-resp") && v == "1"), "{:?}", r.headers);
}
