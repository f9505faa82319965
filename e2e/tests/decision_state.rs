//! `wasmeshctl envoy` writes authz's decision to filter state (`decisionFilterState`) only on
//! listeners where something reads it: an access-log format naming
//! `%FILTER_STATE(wasm.wasmesh.authz.decision:PLAIN)%` still prints the decision of every request
//! (allowed and denied), and a listener whose logs do not name it has the write turned off (one
//! hostcall, ~5k instructions per request saved).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_e2e::access_log as al;
use wasmesh_e2e::{free_port, App, Envoy};
use wasmesh_istio::{load_str, Resources};

const DECISION: &str = "%FILTER_STATE(wasm.wasmesh.authz.decision:PLAIN)%";

fn resources(port: u16) -> Resources {
    let yaml = format!(
        r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{app: httpbin}}, serviceAccount: httpbin}}
---
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
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: default}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: logs, namespace: default}}
spec:
  accessLogging: [{{providers: [{{name: decisions}}]}}]
"#
    );
    Resources { items: load_str(&yaml, "decision-state.yaml").unwrap() }
}

fn spec(res: &Resources, port: u16, app_port: u16, format: &str, path: &std::path::Path) -> ProxySpec {
    let mesh = MeshConfig::load(
        &format!(
            "extensionProviders:\n- name: decisions\n  envoyFileAccessLog:\n    path: {}\n    logFormat: {{text: '{format}'}}\n",
            path.display()
        ),
        "mesh.yaml",
    )
    .unwrap();
    let (wl, _) = bootstrap::workload_from_entry(res, "default/httpbin-v1").unwrap();
    ProxySpec {
        workload: wl,
        inbound: vec![Inbound { port, app_port }],
        outbound_port: None,
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: free_port(),
        wasm_dir: wasmesh_e2e::paths::wasm_dir(),
        mesh,
        certs_dir: None,
        envoy_access_log: None,
        credentials_dir: None,
    }
}

/// Every `decisionFilterState` value written into the bootstrap's authz configurations.
fn switches(boot: &Value) -> Vec<Option<bool>> {
    let text = boot.to_string();
    let mut out = Vec::new();
    // The chain's phases carry their configuration as JSON text; look at every string too.
    fn walk(v: &Value, out: &mut Vec<Option<bool>>) {
        match v {
            Value::Object(m) => {
                if m.get("stage").is_some() && m.get("resources").is_some() {
                    out.push(m.get("decisionFilterState").and_then(Value::as_bool));
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::String(s) if s.starts_with('{') => {
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    walk(&inner, out);
                }
            }
            _ => {}
        }
    }
    walk(boot, &mut out);
    assert!(!out.is_empty(), "no authz configuration in the bootstrap: {text}");
    out
}

#[test]
fn the_decision_reaches_an_access_log_that_reads_it_and_is_not_written_otherwise() {
    let app = App::new("httpbin", "v1").start();
    let dir = al::log_dir();
    let port = free_port();
    let res = resources(port);

    // A format without the decision: the write is off on the listener.
    let unread = spec(&res, port, app.port, "%RESPONSE_CODE% %REQ(:PATH)%", &dir.path().join("unread.log"));
    let boot = bootstrap::build(&unread, &res).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(switches(&boot).iter().all(|s| *s == Some(false)), "{:?}", switches(&boot));

    // A format with it: left on, and every line carries the decision.
    let log = dir.path().join("decisions.log");
    let read = spec(&res, port, app.port, &format!("%RESPONSE_CODE% %REQ(:PATH)% {DECISION}"), &log);
    let boot = bootstrap::build(&read, &res).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(switches(&boot).iter().all(Option::is_none), "left at its default (on): {:?}", switches(&boot));
    let _envoy = Envoy::start("decision-state", &boot);
    for (path, code) in [("/status/200", 200), ("/admin/x", 403)] {
        let r = wasmesh_e2e::http::get(port, "httpbin.default.svc.cluster.local", path, &[]);
        assert_eq!(r.status, code, "{path}");
    }
    let files = al::Files { envoy: log.clone(), wasmesh: log };
    let (lines, _) = al::wait_lines(&files, 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let first = lines.first().unwrap();
    assert!(first.starts_with("200 /status/200 {\"allowed\":true,"), "{first}");
    let second = lines.get(1).unwrap();
    assert!(second.starts_with("403 /admin/x {\"allowed\":false,\"action\":\"DENY\","), "{second}");
    assert!(second.contains("ns[default]-policy[deny-admin]-rule[0]"), "{second}");
}
