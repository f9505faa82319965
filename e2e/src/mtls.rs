//! Helpers for the mutual-TLS tests: a mesh CA per test (what `wasmeshctl certs` writes) and
//! sidecars whose Envoy bootstrap is what `wasmeshctl envoy` writes (mTLS included: the bootstrap
//! builder asks the transport plugin, `wasmesh_controller::plugins::mtls`).

#![allow(clippy::panic)]

use crate::app::{App, AppHandle};
use crate::envoy::Envoy;
use crate::free_port;
use crate::paths::TempDir;
use std::path::Path;
use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
use wasmesh_controller::certs::{self, CaOptions, WorkloadIdentity};
use wasmesh_controller::MeshConfig;
use wasmesh_istio::{load_str, ProxyMode, Resources};

/// A certificate directory with a root and a certificate for each identity; removed on drop.
pub struct MeshCa {
    dir: TempDir,
}

impl MeshCa {
    /// A new root, and a certificate for every WorkloadEntry identity in `resources`.
    pub fn for_resources(resources: &Resources) -> MeshCa {
        let dir = TempDir::new("mesh-ca");
        let ids = certs::identities_in(resources, "cluster.local");
        certs::run(dir.path(), &ids, &CaOptions::default()).unwrap_or_else(|e| panic!("wasmeshctl certs: {e}"));
        MeshCa { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues (or keeps) the certificate of one more identity.
    pub fn issue(&self, namespace: &str, service_account: &str) {
        let id = WorkloadIdentity::new("cluster.local", namespace, service_account);
        certs::run(self.path(), &[id], &CaOptions::default()).unwrap_or_else(|e| panic!("wasmeshctl certs: {e}"));
    }
}

/// A running sidecar: its Envoy and the app behind it. Envoy stops before the app.
pub struct Sidecar {
    pub envoy: Envoy,
    pub app: Option<AppHandle>,
    /// Where the app's outbound calls go (plaintext, as in a pod).
    pub outbound_port: u16,
    /// The workload ports (inbound listeners), as in the WorkloadEntry.
    pub inbound_ports: Vec<u16>,
    /// The bootstrap it runs.
    pub bootstrap: serde_json::Value,
}

/// Parses test YAML.
pub fn resources(yaml: &str) -> Resources {
    Resources { items: load_str(yaml, "mtls-test.yaml").unwrap_or_else(|e| panic!("{e}")) }
}

/// Starts the sidecar of WorkloadEntry `ns/name` with `app` behind its inbound listeners (one
/// per WorkloadEntry port; none when `app` is `None`) and certificates from `certs`.
pub fn sidecar(
    resources: &Resources,
    workload: &str,
    app: Option<App>,
    certs: Option<&Path>,
) -> Result<Sidecar, String> {
    let (mut wl, we) = bootstrap::workload_from_entry(resources, workload).map_err(|e| e.to_string())?;
    wl.mode = ProxyMode::Sidecar;
    let app = app.map(App::start);
    let inbound: Vec<Inbound> = match &app {
        Some(handle) => we.ports.values().map(|p| Inbound { port: *p as u16, app_port: handle.port }).collect(),
        None => Vec::new(),
    };
    let outbound_port = free_port();
    let spec = ProxySpec {
        workload: wl.clone(),
        inbound: inbound.clone(),
        outbound_port: Some(outbound_port),
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: free_port(),
        wasm_dir: crate::paths::wasm_dir(),
        mesh: MeshConfig::default(),
        certs_dir: certs.map(Path::to_path_buf),
        envoy_access_log: None,
        credentials_dir: None,
    };
    let fail = |errors: Vec<wasmesh_istio::Error>| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        format!("wasmeshctl envoy for {workload}:\n{}", lines.join("\n"))
    };
    let mut config = bootstrap::build(&spec, resources).map_err(fail)?;
    add_authz_filter(&spec, resources, &mut config).map_err(fail)?;
    let envoy = Envoy::start_with(workload, &config, 1)?;
    Ok(Sidecar {
        envoy,
        app,
        outbound_port,
        inbound_ports: inbound.iter().map(|i| i.port).collect(),
        bootstrap: config,
    })
}

/// Puts the authz filter (`wasmesh.authz`, its plugin's contribution) before the router of each
/// inbound listener, unless the bootstrap builder already did (once it wires the authz plugin).
fn add_authz_filter(
    spec: &ProxySpec,
    resources: &Resources,
    config: &mut serde_json::Value,
) -> Result<(), Vec<wasmesh_istio::Error>> {
    use wasmesh_controller::plugins::{authz, Direction, ListenerContext};
    let mut wl = spec.workload.clone();
    wl.trust_domain = spec.mesh.trust_domain.clone().unwrap_or(wl.trust_domain);
    for listener in
        config.pointer_mut("/static_resources/listeners").and_then(|l| l.as_array_mut()).into_iter().flatten()
    {
        let Some(port) =
            listener["name"].as_str().and_then(|n| n.strip_prefix("inbound_")).and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let ctx = ListenerContext {
            workload: &wl,
            resources,
            direction: Direction::Inbound,
            bind_port: port,
            mesh: &spec.mesh,
        };
        let contribution = authz::contribute(&ctx)?;
        let Some(filters) = listener.pointer_mut("/filter_chains/0/filters").and_then(|f| f.as_array_mut()) else {
            continue;
        };
        let Some(http) = filters
            .last_mut()
            .and_then(|hcm| hcm.pointer_mut("/typed_config/http_filters"))
            .and_then(|h| h.as_array_mut())
        else {
            continue;
        };
        if http.iter().any(|f| f["name"] == authz::FILTER_NAME || chain_has_authz(f)) {
            continue;
        }
        let router = http.len().saturating_sub(1);
        for (i, f) in contribution.http_filters.iter().enumerate() {
            http.insert(router + i, bootstrap::wasm_http_filter(f, &spec.wasm_dir));
        }
    }
    Ok(())
}

/// A one-pass `wasmesh.chain` filter with an authz phase.
fn chain_has_authz(filter: &serde_json::Value) -> bool {
    if filter["name"] != wasmesh_controller::layout::CHAIN_ROOT_ID {
        return false;
    }
    let config = filter.pointer("/typed_config/config/configuration/value").and_then(|v| v.as_str()).unwrap_or("");
    let Ok(config) = serde_json::from_str::<serde_json::Value>(config) else { return false };
    config["phases"].as_array().is_some_and(|phases| {
        phases.iter().any(|p| p["rootId"].as_str() == Some(wasmesh_controller::plugins::authz::FILTER_NAME))
    })
}

/// Runs `envoy --mode validate` on a bootstrap; the error text when Envoy rejects it.
pub fn envoy_validate(bootstrap: &serde_json::Value) -> Result<(), String> {
    let dir = TempDir::new("validate");
    let file = dir.path().join("envoy.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bootstrap).unwrap_or_default()).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(crate::paths::envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-l", "error", "--config-path"])
        .arg(&file)
        .output()
        .map_err(|e| format!("cannot run Envoy: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}
