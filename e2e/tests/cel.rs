//! `Stream::properties` in real Envoy: the attributes read in one CEL `expr_evaluate` are,
//! byte for byte, what one `get_property` each returns, present and absent alike.
//!
//! Two sidecars as `wasmeshctl envoy` writes them (mutual TLS between them), with their wasmesh
//! filters taken out and the test-only `cel_probe` filter (`shared/proxy/examples/cel_probe.rs`)
//! put first in the server's inbound and the client's outbound listener. The probe reads the
//! attributes the stats phase reads on_log (and a few at request-headers time) both ways and logs
//! both answers; this test holds them against each other and against what each attribute must be
//! on each side (the peer's SPIFFE identity downstream on the server, upstream on the client...).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
use wasmesh_controller::MeshConfig;
use wasmesh_e2e::http::get;
use wasmesh_e2e::mtls::{resources, MeshCa};
use wasmesh_e2e::{free_port, paths, App, AppHandle, Envoy};
use wasmesh_istio::{ProxyMode, Resources};

const WORKLOAD_METADATA: &str = "httpbin-v1;default;httpbin;v1;Kubernetes";

fn mesh_yaml(http: u16) -> String {
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
  resolution: STATIC
  workloadSelector: {{labels: {{app: httpbin}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: httpbin-v1, namespace: default}}
spec:
  address: 127.0.0.1
  ports: {{http: {http}}}
  labels: {{app: httpbin, version: v1}}
  serviceAccount: httpbin
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep}}, serviceAccount: sleep}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
"#
    )
}

/// Builds the probe module (an example of wasmesh-proxy) and returns its path.
fn probe_wasm() -> PathBuf {
    let root = paths::repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip1", "-p", "wasmesh-proxy", "--example", "cel_probe"])
        .status()
        .expect("cargo build of the cel_probe example");
    assert!(status.success(), "cargo build --example cel_probe failed");
    let wasm = paths::wasm_dir().join("examples").join("cel_probe.wasm");
    assert!(wasm.exists(), "{} missing after the build", wasm.display());
    wasm
}

fn is_wasm(filter: &Value) -> bool {
    filter.pointer("/typed_config/@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".wasm.v3.Wasm"))
}

/// The bootstrap `wasmeshctl envoy` writes for `workload`, without its wasm filters, with the
/// probe first in the HTTP filters of the listeners `listener` selects by name.
fn bootstrap_with_probe(
    res: &Resources,
    workload: &str,
    app: Option<&AppHandle>,
    certs: &Path,
    probe: &Path,
    listener: impl Fn(&str) -> bool,
) -> (Value, u16) {
    let (mut wl, we) = bootstrap::workload_from_entry(res, workload).unwrap();
    wl.mode = ProxyMode::Sidecar;
    let inbound: Vec<Inbound> = match app {
        Some(a) => we.ports.values().map(|p| Inbound { port: *p as u16, app_port: a.port }).collect(),
        None => Vec::new(),
    };
    let outbound_port = free_port();
    let spec = ProxySpec {
        workload: wl,
        inbound,
        outbound_port: Some(outbound_port),
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: free_port(),
        wasm_dir: paths::wasm_dir(),
        mesh: MeshConfig::default(),
        certs_dir: Some(certs.to_path_buf()),
        envoy_access_log: None,
        credentials_dir: None,
    };
    let mut config = bootstrap::build(&spec, res).unwrap_or_else(|e| panic!("wasmeshctl envoy for {workload}: {e:?}"));
    let probe_filter = json!({
        "name": "cel-probe",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "cel-probe",
                "vm_config": {"vm_id": "cel-probe", "runtime": "envoy.wasm.runtime.v8",
                              "code": {"local": {"filename": probe.display().to_string()}}},
            }
        }
    });
    let mut probed = 0;
    for l in config.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).unwrap() {
        let name = l["name"].as_str().unwrap_or_default().to_string();
        for chain in l.get_mut("filter_chains").and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(filters) = chain.get_mut("filters").and_then(Value::as_array_mut) else { continue };
            filters.retain(|f| !is_wasm(f));
            for f in filters.iter_mut() {
                if let Some(http) = f.pointer_mut("/typed_config/http_filters").and_then(Value::as_array_mut) {
                    http.retain(|f| !is_wasm(f));
                    if listener(&name) {
                        http.insert(0, probe_filter.clone());
                        probed += 1;
                    }
                }
            }
        }
    }
    assert!(probed > 0, "no listener of {workload} took the probe");
    (config, outbound_port)
}

/// `phase -> path -> (batch, single)` and `phase -> answered` from an Envoy log (the last
/// request's lines win).
type Probe = (BTreeMap<(String, String), (String, String)>, BTreeMap<String, bool>);

fn probe_lines(log: &str) -> Probe {
    let mut values = BTreeMap::new();
    let mut answered = BTreeMap::new();
    for line in log.lines() {
        let Some(rest) = line.split_once(": cel-probe ").map(|(_, r)| r) else { continue };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            [phase, a] if a.starts_with("answered=") => {
                answered.insert(phase.to_string(), *a == "answered=true");
            }
            [phase, path, b, s] => {
                let b = b.strip_prefix("batch=").unwrap().to_string();
                let s = s.strip_prefix("single=").unwrap().to_string();
                values.insert((phase.to_string(), path.to_string()), (b, s));
            }
            _ => panic!("unexpected probe line {line:?}"),
        }
    }
    (values, answered)
}

fn hex(s: &str) -> String {
    s.bytes().map(|x| format!("{x:02x}")).collect()
}

/// Waits until Envoy's log has the `log` phase's verdict of both requests (on_log runs after
/// the response).
fn wait_probe(envoy: &Envoy) -> Probe {
    let start = Instant::now();
    loop {
        let log = envoy.log();
        if log.matches(": cel-probe log answered=").count() >= 2 || start.elapsed() > Duration::from_secs(10) {
            return probe_lines(&log);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check(side: &str, probe: &Probe, expect: &[(&str, &str, Option<String>)]) {
    let (values, answered) = probe;
    for phase in ["headers", "log"] {
        assert_eq!(answered.get(phase), Some(&true), "{side}: the {phase} batch was not answered by one expression");
    }
    for ((phase, path), (batch, single)) in values {
        assert_eq!(batch, single, "{side} {phase} {path}: the batch and get_property disagree");
    }
    for (phase, path, want) in expect {
        let got = values.get(&(phase.to_string(), path.to_string())).map(|(b, _)| b.clone());
        let want = want.clone().unwrap_or_else(|| "-".to_string());
        assert_eq!(got, Some(want), "{side} {phase} {path}");
    }
    // From the stream one expression answers the xds.* reads; from a root callback (effective
    // context the stream) it must not: CEL would evaluate them for the root.
    assert_eq!(answered.get("xds-stream"), Some(&true), "{side}: xds.* from the stream");
    assert_eq!(answered.get("xds-root"), Some(&false), "{side}: xds.* from a root callback were batched");
    for path in ["xds.listener_direction", "xds.route_name"] {
        let stream = &values[&("xds-stream".to_string(), path.to_string())].0;
        let root = &values[&("xds-root".to_string(), path.to_string())].0;
        assert_eq!(root, stream, "{side}: {path} read from the root callback");
    }
    assert_ne!(values[&("xds-root".to_string(), "xds.listener_direction".to_string())].0, "-", "{side}");
    // The same with an unguarded `request.total_size` in the list (its marker without a test of
    // `request`): one expression from the stream, none from the root callback.
    assert_eq!(answered.get("mixed-stream"), Some(&true), "{side}: the mixed list from the stream");
    assert_eq!(answered.get("mixed-root"), Some(&false), "{side}: the mixed list from a root callback was batched");
    for path in ["xds.listener_direction", "xds.route_name", "xds.virtual_host_name", "xds.node.id"] {
        let stream = &values[&("mixed-stream".to_string(), path.to_string())].0;
        let root = &values[&("mixed-root".to_string(), path.to_string())].0;
        assert_eq!(root, stream, "{side}: {path} of the mixed list read from the root callback");
    }
    assert_eq!(values.len(), 39, "{side}: {values:?}");
}

#[test]
fn batched_attributes_are_byte_for_byte_what_get_property_returns_present_or_absent() {
    let probe = probe_wasm();
    let app = App::new("httpbin", "v1").start();
    let http = free_port();
    let res = resources(&mesh_yaml(http));
    let ca = MeshCa::for_resources(&res);

    let (server_boot, _) =
        bootstrap_with_probe(&res, "default/httpbin-v1", Some(&app), ca.path(), &probe, |n| n.starts_with("inbound_"));
    let (mut client_boot, client_out) =
        bootstrap_with_probe(&res, "default/sleep", None, ca.path(), &probe, |n| n.starts_with("outbound"));
    // The upstream host metadata Istio's telemetry reads (`istio.workload`), on the client's
    // endpoints of httpbin.
    let mut endpoints = 0;
    for c in client_boot.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut).unwrap() {
        if !c["name"].as_str().unwrap_or_default().contains("httpbin") {
            continue;
        }
        for e in c.pointer_mut("/load_assignment/endpoints").and_then(Value::as_array_mut).into_iter().flatten() {
            for lb in e.get_mut("lb_endpoints").and_then(Value::as_array_mut).into_iter().flatten() {
                lb["metadata"]["filter_metadata"]["istio"] = json!({"workload": WORKLOAD_METADATA});
                endpoints += 1;
            }
        }
    }
    assert!(endpoints > 0, "the client has no httpbin endpoint to put metadata on");
    // Without the wasmesh router phase nothing sets the cluster header the outbound route
    // reads: route straight to httpbin's cluster.
    let cluster = client_boot
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .find(|n| n.starts_with("outbound|8000||httpbin"))
        .expect("the client's httpbin cluster")
        .to_string();
    for l in client_boot.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).unwrap() {
        for chain in l.get_mut("filter_chains").and_then(Value::as_array_mut).into_iter().flatten() {
            for f in chain.get_mut("filters").and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(hosts) =
                    f.pointer_mut("/typed_config/route_config/virtual_hosts").and_then(Value::as_array_mut)
                else {
                    continue;
                };
                for route in
                    hosts.iter_mut().filter_map(|h| h.get_mut("routes")).filter_map(Value::as_array_mut).flatten()
                {
                    if let Some(r) = route.get_mut("route").and_then(Value::as_object_mut) {
                        if r.remove("cluster_header").is_some() {
                            r.insert("cluster".to_string(), json!(cluster));
                        }
                    }
                }
            }
        }
    }

    let server = Envoy::start("cel-server", &server_boot);
    let client = Envoy::start("cel-client", &client_boot);
    // First a request the probe reads again from a root callback (its `xds-*` phases)...
    let r = get(client_out, "httpbin:8000", "/root", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    // ...then the one whose headers and log phases are checked below: a gRPC request with one
    // (empty) message, so that istiod's `grpc_stats` filter in each chain (as `wasmeshctl envoy`
    // writes it) leaves its message counts in filter state, which the stats phase reads in its
    // batch (Envoy writes the object once it has seen a message).
    let r = wasmesh_e2e::http::request(
        client_out,
        "POST",
        "/headers",
        &[("host", "httpbin:8000"), ("content-type", "application/grpc")],
        &[0, 0, 0, 0, 0],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let spiffe = |sa: &str| Some(hex(&format!("spiffe://cluster.local/ns/default/sa/{sa}")));
    let code = Some("c800000000000000".to_string());
    let server_probe = wait_probe(&server);
    check(
        "server inbound",
        &server_probe,
        &[
            ("log", "response.code", code.clone()),
            ("log", "connection.uri_san_peer_certificate", spiffe("sleep")),
            ("log", "connection.uri_san_local_certificate", spiffe("httpbin")),
            ("log", "upstream.uri_san_peer_certificate", None),
            ("log", "upstream.uri_san_local_certificate", None),
            // the inbound cluster's host has no metadata at all (null in CEL)
            ("log", "xds.upstream_host_metadata.filter_metadata.istio.workload", None),
            ("headers", "connection.mtls", Some("01".to_string())),
            ("headers", "upstream.address", None),
            ("headers", "response.code", None),
            ("headers", "request.url_path", Some(hex("/headers"))),
        ],
    );
    let client_probe = wait_probe(&client);
    check(
        "client outbound",
        &client_probe,
        &[
            ("log", "response.code", code),
            ("log", "connection.uri_san_peer_certificate", None),
            ("log", "connection.uri_san_local_certificate", None),
            ("log", "upstream.uri_san_peer_certificate", spiffe("httpbin")),
            ("log", "upstream.uri_san_local_certificate", spiffe("sleep")),
            ("log", "xds.upstream_host_metadata.filter_metadata.istio.workload", Some(hex(WORKLOAD_METADATA))),
            ("headers", "connection.mtls", Some("00".to_string())),
        ],
    );
    // `grpc_stats` filter state, as its textual `<requests>,<responses>` on both sides (the same
    // bytes both ways: `check`).
    for (side, probe) in [("server", &server_probe), ("client", &client_probe)] {
        let (b, _) = &probe.0[&("log".to_string(), "filter_state.envoy.filters.http.grpc_stats".to_string())];
        let text: Vec<u8> = (0..b.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(b.get(i..i + 2).unwrap_or("zz"), 16).unwrap_or(b'?'))
            .collect();
        let messages = wasmesh_controller::plugins::stats::core::grpc::GrpcMessages::parse(&text);
        assert_eq!(messages.map(|m| m.request), Some(1), "{side} grpc_stats {:?}", String::from_utf8_lossy(&text));
    }
    // Present integers really are the 8-byte little-endian numbers both ways.
    let (values, _) = &client_probe;
    for path in
        ["request.duration", "request.total_size", "response.total_size", "response.flags", "response.grpc_status"]
    {
        let (b, _) = &values[&("log".to_string(), path.to_string())];
        assert_eq!(b.len(), 16, "client log {path} = {b}");
    }
    let cluster = &values[&("log".to_string(), "xds.cluster_name".to_string())].0;
    assert!(cluster.starts_with(&hex("outbound|8000||httpbin")), "xds.cluster_name = {cluster}");
    drop(client);
    drop(server);
    drop(ca);
}
