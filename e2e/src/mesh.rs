//! A mesh on loopback: Istio YAML in, a running set of Envoys (sidecars and gateways, generated
//! by wasmeshctl's bootstrap builder) and apps out. Dropping the [`Mesh`] stops everything.

use crate::app::{App, AppHandle};
use crate::envoy::Envoy;
use crate::free_port;
use std::collections::BTreeMap;
use wasmesh_controller::bootstrap::{self, Inbound, ProxySpec};
use wasmesh_controller::{Layout, MeshConfig};
use wasmesh_istio::{load_str, ProxyMode, Resources, Spec};

/// What runs behind a sidecar's inbound listeners.
enum AppPlan {
    /// An HTTP app the mesh starts.
    Http(App),
    /// A server the test runs itself on this loopback port (e.g. a TCP echo).
    Port(u16),
}

struct SidecarPlan {
    workload: String,
    /// What runs behind the inbound listeners; `None`: a client-only sidecar (no inbound).
    app: Option<AppPlan>,
    /// TCP service ports (host, port) the app calls, each through its own outbound listener.
    tcp_outbound: Vec<(String, u32)>,
    /// No HTTP outbound listener (a client that only calls TCP services).
    no_http_outbound: bool,
}

impl SidecarPlan {
    fn new(workload: &str, app: Option<AppPlan>, no_http_outbound: bool) -> Self {
        SidecarPlan { workload: workload.into(), app, tcp_outbound: Vec::new(), no_http_outbound }
    }
}

struct GatewayPlan {
    workload: String,
    /// (Gateway server port, loopback port to bind or 0 for a free one).
    ports: Vec<(u32, u16)>,
}

pub struct MeshBuilder {
    yaml: Vec<String>,
    mesh: MeshConfig,
    sidecars: Vec<SidecarPlan>,
    gateways: Vec<GatewayPlan>,
    remap_ports: bool,
    certs_dir: Option<std::path::PathBuf>,
    /// Gateways' `--credentials` (Gateway `tls.credentialName` files).
    credentials_dir: Option<std::path::PathBuf>,
    concurrency: u32,
    write_configs: Option<std::path::PathBuf>,
    /// Serve filter configurations and clusters from `wasmeshctl serve` watching this directory.
    xds: Option<std::path::PathBuf>,
    /// `wasmeshctl envoy --layout` (default: one pass).
    layout: Layout,
    /// Edits each proxy's bootstrap before its Envoy starts (a test's hand-made variant).
    edit: Option<BootstrapEdit>,
    /// Each proxy's `--mesh-config` file, by workload ([`MeshBuilder::mesh_config_files`]).
    mesh_config_files: Option<MeshConfigFiles>,
}

/// [`MeshBuilder::mesh_config_files`]: the meshConfig file of a proxy, by its workload.
pub type MeshConfigFiles = Box<dyn Fn(&str) -> std::path::PathBuf>;

/// [`MeshBuilder::edit_bootstraps`]: called with the proxy's workload and its bootstrap.
pub type BootstrapEdit = Box<dyn Fn(&str, &mut serde_json::Value)>;

/// A running mesh.
pub struct Mesh {
    // Field order: Envoys stop before apps.
    envoys: BTreeMap<String, Envoy>,
    apps: BTreeMap<String, AppHandle>,
    outbound_ports: BTreeMap<String, u16>,
    tcp_outbound_ports: BTreeMap<(String, String, u32), u16>,
    inbound_ports: BTreeMap<String, Vec<u16>>,
    gateway_ports: BTreeMap<(String, u32), u16>,
    pub resources: Resources,
    port_map: BTreeMap<u32, u16>,
    commands: Vec<String>,
    /// The live controller, when the mesh runs on it (stopped after the Envoys).
    server: Option<wasmesh_controller::xds::Server>,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            yaml: Vec::new(),
            mesh: MeshConfig::default(),
            sidecars: Vec::new(),
            gateways: Vec::new(),
            remap_ports: true,
            certs_dir: None,
            credentials_dir: None,
            concurrency: 1,
            layout: Layout::default(),
            edit: None,
            write_configs: None,
            xds: None,
            mesh_config_files: None,
        }
    }

    /// The command lines and bootstraps of every proxy, as `wasmeshctl envoy` would write them.
    pub fn commands(&self) -> &[String] {
        &self.commands
    }

    /// The Envoy of a workload (`ns/name` of its WorkloadEntry).
    pub fn envoy(&self, workload: &str) -> &Envoy {
        self.envoys.get(workload).unwrap_or_else(|| panic!("no Envoy for {workload}"))
    }

    pub fn app(&self, workload: &str) -> &AppHandle {
        self.apps.get(workload).unwrap_or_else(|| panic!("no app for {workload}"))
    }

    /// Where a workload's app sends outbound calls (its sidecar's outbound listener).
    pub fn outbound_port(&self, workload: &str) -> u16 {
        *self.outbound_ports.get(workload).unwrap_or_else(|| panic!("no outbound listener for {workload}"))
    }

    /// Where a workload's app connects to reach the TCP service port `host:port` (its sidecar's
    /// outbound TCP listener for it, see [`MeshBuilder::tcp_outbound`]).
    pub fn tcp_outbound_port(&self, workload: &str, host: &str, port: u32) -> u16 {
        *self
            .tcp_outbound_ports
            .get(&(workload.to_string(), host.to_string(), port))
            .unwrap_or_else(|| panic!("no outbound TCP listener for {host}:{port} on {workload}"))
    }

    /// A sidecar's (first) inbound listener: the workload's port.
    pub fn inbound_port(&self, workload: &str) -> u16 {
        *self
            .inbound_ports
            .get(workload)
            .and_then(|p| p.first())
            .unwrap_or_else(|| panic!("no inbound listener for {workload}"))
    }

    /// The loopback port bound for a gateway's Gateway server port.
    pub fn gateway_port(&self, workload: &str, port: u32) -> u16 {
        *self
            .gateway_ports
            .get(&(workload.to_string(), port))
            .unwrap_or_else(|| panic!("no gateway port {port} on {workload}"))
    }

    /// The loopback port a WorkloadEntry port number in the YAML was moved to.
    pub fn mapped_port(&self, yaml_port: u32) -> u16 {
        self.port_map.get(&yaml_port).copied().unwrap_or(yaml_port as u16)
    }

    /// The live controller the Envoys take their configuration from ([`MeshBuilder::xds`]).
    pub fn server(&self) -> Option<&wasmesh_controller::xds::Server> {
        self.server.as_ref()
    }

    pub fn envoys(&self) -> impl Iterator<Item = (&String, &Envoy)> {
        self.envoys.iter()
    }
}

impl MeshBuilder {
    /// Istio resources (several documents allowed). Call as often as needed.
    pub fn yaml(mut self, yaml: &str) -> Self {
        self.yaml.push(yaml.to_string());
        self
    }

    pub fn mesh_config(mut self, mesh: MeshConfig) -> Self {
        self.mesh = mesh;
        self
    }

    pub fn certs_dir(mut self, dir: &std::path::Path) -> Self {
        self.certs_dir = Some(dir.to_path_buf());
        self
    }

    /// Every gateway's `--credentials DIR` (Gateway `tls.credentialName` files).
    pub fn credentials_dir(mut self, dir: &std::path::Path) -> Self {
        self.credentials_dir = Some(dir.to_path_buf());
        self
    }

    /// Keep WorkloadEntry ports as written (the test picked free ports itself).
    pub fn keep_ports(mut self) -> Self {
        self.remap_ports = false;
        self
    }

    /// Envoy worker threads for every proxy (default 1).
    /// Every proxy's listeners in this layout (`wasmeshctl envoy --layout`; default one pass).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Edits every bootstrap before its Envoy starts: a variant `wasmeshctl envoy` does not write.
    pub fn edit_bootstraps(mut self, edit: impl Fn(&str, &mut serde_json::Value) + 'static) -> Self {
        self.edit = Some(Box::new(edit));
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// A sidecar for WorkloadEntry `ns/name`, with `app` behind it. Calls in the app with
    /// `via_port == 0` go through this sidecar's outbound listener.
    pub fn sidecar(mut self, workload: &str, app: App) -> Self {
        self.sidecars.push(SidecarPlan::new(workload, Some(AppPlan::Http(app)), false));
        self
    }

    /// A sidecar for WorkloadEntry `ns/name` in front of a server the test runs itself on
    /// `127.0.0.1:app_port` (a TCP server behind a TCP port, say). That server makes no calls:
    /// the sidecar has no HTTP outbound listener.
    pub fn sidecar_to_port(mut self, workload: &str, app_port: u16) -> Self {
        self.sidecars.push(SidecarPlan::new(workload, Some(AppPlan::Port(app_port)), true));
        self
    }

    /// A client-only sidecar (outbound listener, no app behind it), e.g. `sleep`.
    pub fn client(mut self, workload: &str) -> Self {
        self.sidecars.push(SidecarPlan::new(workload, None, false));
        self
    }

    /// A client-only sidecar with no HTTP outbound listener, only the TCP ones added with
    /// [`Self::tcp_outbound`] (`wasmeshctl envoy --tcp-outbound` without `--outbound-port`).
    pub fn tcp_client(mut self, workload: &str) -> Self {
        self.sidecars.push(SidecarPlan::new(workload, None, true));
        self
    }

    /// An outbound TCP listener on the sidecar of `workload` (added before with [`Self::sidecar`]
    /// or [`Self::client`]) for the TCP service port `host:port` (`wasmeshctl envoy
    /// --tcp-outbound`); its loopback port is [`Mesh::tcp_outbound_port`].
    pub fn tcp_outbound(mut self, workload: &str, host: &str, port: u32) -> Self {
        match self.sidecars.iter_mut().rev().find(|s| s.workload == workload) {
            Some(plan) => plan.tcp_outbound.push((host.to_string(), port)),
            None => panic!("tcp_outbound: add the sidecar of {workload} first"),
        }
        self
    }

    /// A gateway for WorkloadEntry `ns/name` serving these Gateway server ports (on free ports).
    pub fn gateway(mut self, workload: &str, ports: &[u32]) -> Self {
        self.gateways.push(GatewayPlan { workload: workload.into(), ports: ports.iter().map(|p| (*p, 0)).collect() });
        self
    }

    /// A gateway with chosen loopback ports: (Gateway server port, bind port).
    pub fn gateway_bound(mut self, workload: &str, ports: &[(u32, u16)]) -> Self {
        self.gateways.push(GatewayPlan { workload: workload.into(), ports: ports.to_vec() });
        self
    }

    /// Run on the live controller: `wasmeshctl serve` watches `dir` (the same YAML as given with
    /// [`Self::yaml`], whose ports are then used as they are) and every Envoy starts from a
    /// `wasmeshctl envoy --xds` bootstrap, so editing the files there changes the running mesh.
    pub fn xds(mut self, dir: &std::path::Path) -> Self {
        self.xds = Some(dir.to_path_buf());
        self.remap_ports = false;
        self
    }

    /// Every proxy reads its meshConfig from the file `file(workload)` names, as `wasmeshctl envoy
    /// --mesh-config FILE` does; on the live controller the server re-reads it for each build
    /// (the node names it), so it may be given with [`Self::xds`].
    pub fn mesh_config_files(mut self, file: impl Fn(&str) -> std::path::PathBuf + 'static) -> Self {
        self.mesh_config_files = Some(Box::new(file));
        self
    }

    /// Also write every bootstrap to `dir/<ns>.<name>.yaml`.
    pub fn write_configs(mut self, dir: &std::path::Path) -> Self {
        self.write_configs = Some(dir.to_path_buf());
        self
    }

    pub fn start(self) -> Mesh {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(self) -> Result<Mesh, String> {
        let mut items = Vec::new();
        for (i, y) in self.yaml.iter().enumerate() {
            items.extend(load_str(y, &format!("test-yaml-{i}")).map_err(|e| e.to_string())?);
        }
        let mut port_map: BTreeMap<u32, u16> = BTreeMap::new();
        if self.remap_ports {
            for r in &mut items {
                let entries: Vec<&mut wasmesh_istio::WorkloadEntry> = match &mut r.spec {
                    Spec::WorkloadEntry(we) => vec![we],
                    Spec::ServiceEntry(se) => se.endpoints.iter_mut().collect(),
                    _ => vec![],
                };
                for we in entries {
                    for p in we.ports.values_mut() {
                        *p = u32::from(*port_map.entry(*p).or_insert_with(free_port));
                    }
                }
            }
        }
        let resources = Resources { items };
        let wasm_dir = crate::paths::wasm_dir();
        let mut mesh = Mesh {
            envoys: BTreeMap::new(),
            apps: BTreeMap::new(),
            outbound_ports: BTreeMap::new(),
            tcp_outbound_ports: BTreeMap::new(),
            inbound_ports: BTreeMap::new(),
            gateway_ports: BTreeMap::new(),
            resources: Resources::default(),
            port_map,
            commands: Vec::new(),
            server: None,
        };
        if let Some(dir) = &self.xds {
            if self.mesh != MeshConfig::default() {
                // The server reads a proxy's MeshConfig from the file its node names; a value built
                // in code has no file, so the served configuration would differ from the bootstrap.
                return Err(
                    "MeshBuilder::xds takes no mesh_config: the live controller reads MeshConfig from a file".into()
                );
            }
            let opts = wasmesh_controller::xds::ServeOptions {
                watch: dir.clone(),
                listen: ([127, 0, 0, 1], 0).into(),
                http: None,
                wasm_dir: wasm_dir.clone(),
                poll: std::time::Duration::from_millis(200),
            };
            mesh.server = Some(wasmesh_controller::xds::Server::start(&opts)?);
        }
        let mut plans = Vec::new();
        for plan in self.sidecars {
            let (mut wl, we) = bootstrap::workload_from_entry(&resources, &plan.workload).map_err(|e| e.to_string())?;
            wl.mode = ProxyMode::Sidecar;
            let outbound = (!plan.no_http_outbound).then(free_port);
            if let Some(port) = outbound {
                mesh.outbound_ports.insert(plan.workload.clone(), port);
            }
            let mut tcp_outbound = Vec::new();
            for (host, port) in &plan.tcp_outbound {
                let bind_port = free_port();
                mesh.tcp_outbound_ports.insert((plan.workload.clone(), host.clone(), *port), bind_port);
                tcp_outbound.push(bootstrap::TcpOutbound { bind_port, host: host.clone(), port: *port });
            }
            let inbound: Vec<u16> = if plan.app.is_some() {
                let ports: Vec<u16> = we.ports.values().map(|p| *p as u16).collect();
                if ports.is_empty() {
                    return Err(format!(
                        "WorkloadEntry {} has no ports for its sidecar's inbound listener",
                        plan.workload
                    ));
                }
                mesh.inbound_ports.insert(plan.workload.clone(), ports.clone());
                ports
            } else {
                Vec::new()
            };
            plans.push((plan.workload, wl, plan.app, inbound, outbound, tcp_outbound));
        }
        let mut specs = Vec::new();
        for (name, wl, app, inbound, outbound, tcp_outbound) in plans {
            let inbound = match app {
                Some(AppPlan::Port(app_port)) if !inbound.is_empty() => {
                    inbound.iter().map(|port| Inbound { port: *port, app_port }).collect()
                }
                Some(AppPlan::Http(mut app)) if !inbound.is_empty() => {
                    for c in &mut app.calls {
                        if let (0, Some(port)) = (c.via_port, outbound) {
                            c.via_port = port;
                        }
                    }
                    let handle = app.start();
                    let app_port = handle.port;
                    mesh.apps.insert(name.clone(), handle);
                    inbound.iter().map(|port| Inbound { port: *port, app_port }).collect()
                }
                _ => Vec::new(),
            };
            specs.push((
                name,
                ProxySpec {
                    workload: wl,
                    inbound,
                    outbound_port: outbound,
                    tcp_outbound,
                    gateway_ports: Vec::new(),
                    admin_port: free_port(),
                    wasm_dir: wasm_dir.clone(),
                    mesh: self.mesh.clone(),
                    certs_dir: self.certs_dir.clone(),
                    envoy_access_log: None,
                    credentials_dir: None,
                },
            ));
        }
        for plan in self.gateways {
            let (mut wl, _) = bootstrap::workload_from_entry(&resources, &plan.workload).map_err(|e| e.to_string())?;
            wl.mode = ProxyMode::Gateway;
            let mut ports = Vec::new();
            for (p, wanted) in &plan.ports {
                let bind = if *wanted == 0 { free_port() } else { *wanted };
                mesh.gateway_ports.insert((plan.workload.clone(), *p), bind);
                ports.push((*p, bind));
            }
            specs.push((
                plan.workload,
                ProxySpec {
                    workload: wl,
                    inbound: Vec::new(),
                    outbound_port: None,
                    tcp_outbound: Vec::new(),
                    gateway_ports: ports,
                    admin_port: free_port(),
                    wasm_dir: wasm_dir.clone(),
                    mesh: self.mesh.clone(),
                    certs_dir: self.certs_dir.clone(),
                    envoy_access_log: None,
                    credentials_dir: self.credentials_dir.clone(),
                },
            ));
        }
        let live = match (&mesh.server, &self.xds) {
            (Some(server), Some(dir)) => {
                let served = wasmesh_controller::xds::watch::load(dir).map_err(|errors| {
                    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                    format!("{}:\n{}", dir.display(), lines.join("\n"))
                })?;
                Some((server.xds_addr.to_string(), served))
            }
            _ => None,
        };
        for (name, mut spec) in specs {
            let mesh_file = self.mesh_config_files.as_ref().map(|f| f(&name));
            if let Some(file) = &mesh_file {
                let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
                spec.mesh = MeshConfig::load(&text, &file.display().to_string()).map_err(|e| e.to_string())?;
            }
            let built = match &live {
                None => bootstrap::build_with(&spec, &resources, bootstrap::Slots::AsNeeded, self.layout),
                Some((addr, served)) => {
                    let node = wasmesh_controller::xds::NodeSpec::from_spec(&spec, &name, mesh_file.clone());
                    wasmesh_controller::xds::xds_bootstrap_in(&node, self.layout, served, addr)
                }
            };
            let mut config = built.map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                format!("wasmeshctl envoy for {name}:\n{}", lines.join("\n"))
            })?;
            if let Some(edit) = &self.edit {
                edit(&name, &mut config);
            }
            if let Some(dir) = &self.write_configs {
                let file = dir.join(format!("{}.yaml", name.replace('/', ".")));
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let yaml = yaml_serde::to_string(&config).map_err(|e| e.to_string())?;
                std::fs::write(&file, yaml).map_err(|e| format!("{}: {e}", file.display()))?;
                let mut command = command_line(&name, &spec, &file);
                if self.layout != Layout::default() {
                    command.push_str(&format!(" --layout {}", self.layout.as_str()));
                }
                if let Some(f) = &mesh_file {
                    command.push_str(&format!(" --mesh-config {}", f.display()));
                }
                if let Some((addr, _)) = &live {
                    command.push_str(&format!(" --xds {addr}"));
                }
                mesh.commands.push(command);
            }
            let envoy = Envoy::start_with(&name, &config, self.concurrency)?;
            mesh.envoys.insert(name, envoy);
        }
        mesh.resources = resources;
        Ok(mesh)
    }
}

/// The `wasmeshctl envoy` command that writes the same bootstrap.
fn command_line(name: &str, spec: &ProxySpec, out: &std::path::Path) -> String {
    let mut c = format!("wasmeshctl envoy -f <files> --workload {name}");
    match spec.workload.mode {
        ProxyMode::Sidecar => {
            c.push_str(" --role sidecar");
            for i in &spec.inbound {
                c.push_str(&format!(" --inbound-port {}", i.port));
            }
            if let Some(i) = spec.inbound.first() {
                c.push_str(&format!(" --app-port {}", i.app_port));
            }
            if let Some(p) = spec.outbound_port {
                c.push_str(&format!(" --outbound-port {p}"));
            }
            for t in &spec.tcp_outbound {
                c.push_str(&format!(" --tcp-outbound {}={}:{}", t.bind_port, t.host, t.port));
            }
        }
        ProxyMode::Gateway => {
            c.push_str(" --role gateway");
            for (g, b) in &spec.gateway_ports {
                c.push_str(&format!(" --port {g}={b}"));
            }
        }
    }
    c.push_str(&format!(" --admin-port {} --output-file {}", spec.admin_port, out.display()));
    c
}
