//! `wasmeshctl serve` and `wasmeshctl envoy --xds`: the live controller.
//!
//! One builder, two outputs. [`crate::bootstrap::build_with`] computes a proxy's listeners,
//! filters and clusters; a static bootstrap inlines them, while [`split`] turns the same JSON into
//! an xDS bootstrap plus the resources the server sends:
//!
//! - every wasm HTTP and network filter becomes an ECDS slot (`config_discovery` over ADS) named
//!   `<listener>/<filter>` (`<listener>#<chain>/<filter>` for filter chains after the first), and
//!   its `Wasm` configuration a `TypedExtensionConfig` of that name;
//! - every cluster comes by CDS (the bootstrap keeps only the cluster of the xDS server).
//!
//! Listeners stay in the bootstrap: changing a filter's configuration (a policy, a route, a
//! subset) never drains a listener or a connection. The filter chain is therefore fixed when Envoy
//! starts, so in xDS mode every filter that any resource could need is present from the start
//! ([`crate::bootstrap::Slots::All`]); a filter with nothing to enforce is configured with an empty
//! policy set, Istio's meaning of "no policy" (authz allows, authn checks no token). When the YAML
//! changes what only a new bootstrap can carry (e.g. a PeerAuthentication that adds an mTLS filter
//! chain), the server says so for that proxy: the node carries a hash of its listeners.
//!
//! Fail closed: a filter slot has no default configuration. Envoy keeps the listener warming until
//! the first configuration arrives ([`INITIAL_FETCH_TIMEOUT`]); after that timeout an HTTP filter
//! without configuration answers 500 (`NFCF`) and a network filter closes the connection. A
//! security filter never runs unconfigured, and `apply_default_config_without_warming` is unset.
//!
//! Stateless per node: the node metadata `WASMESH_PROXY` carries the inputs of `wasmeshctl envoy`
//! (role, workload, ports, directories), so the server rebuilds exactly that proxy's
//! configuration from the current YAML for every stream; an Envoy that reconnects or restarts
//! gets the current state.

use crate::bootstrap::{self, Inbound, ProxySpec, Slots, TcpOutbound};
use crate::layout::Layout;
use crate::mesh::MeshConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use wasmesh_istio::{Error, ProxyMode, Resources};

pub mod http;
pub mod proto;
pub mod server;
pub mod watch;

pub use server::{serve, ServeOptions, Server};

/// The node metadata key holding the [`NodeSpec`] (JSON text).
pub const NODE_SPEC_KEY: &str = "WASMESH_PROXY";
/// The node metadata key holding the layout (`one-pass` or `per-filter`, [`Layout`]) the
/// bootstrap's listeners were written in; absent means the default. Beside [`NODE_SPEC_KEY`]
/// rather than in it, so that [`NodeSpec`] stays the proxy's ports and identity.
pub const LAYOUT_KEY: &str = "WASMESH_LAYOUT";
/// The node metadata key holding the sha256 of the listeners the bootstrap was written with.
pub const LISTENERS_HASH_KEY: &str = "WASMESH_LISTENERS";
/// The bootstrap cluster of the xDS server.
pub const XDS_CLUSTER: &str = "wasmesh-xds";
/// How long a listener waits for its first filter configurations and Envoy for its clusters.
pub const INITIAL_FETCH_TIMEOUT: &str = "15s";

pub const HTTP_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const NETWORK_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ECDS_TYPE: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const HCM_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// What `wasmeshctl envoy` was told about one proxy: carried in its node metadata so the server
/// can rebuild that proxy's configuration from the current YAML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeSpec {
    /// `sidecar` or `gateway`.
    pub role: String,
    /// The WorkloadEntry `namespace/name` giving the proxy's identity.
    pub workload: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<InboundPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_port: Option<u16>,
    /// `BIND=HOST:PORT`, as `--tcp-outbound`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_outbound: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_ports: Vec<GatewayPort>,
    pub admin_port: u16,
    /// Absolute paths: the server may run in another directory than `wasmeshctl envoy` did.
    pub wasm_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_config: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_access_log: Option<PathBuf>,
    /// Gateway `credentialName` files (`--credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundPort {
    pub port: u16,
    pub app_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// The Gateway server port.
    pub port: u32,
    /// The loopback port Envoy binds.
    pub bind: u16,
}

impl NodeSpec {
    /// The proxy description [`bootstrap::build_with`] takes, resolved against `resources`.
    pub fn to_spec(&self, resources: &Resources) -> Result<ProxySpec, Vec<Error>> {
        let mode = match self.role.as_str() {
            "sidecar" => ProxyMode::Sidecar,
            "gateway" => ProxyMode::Gateway,
            other => return Err(vec![Error::new(format!("node role {other:?}: expected sidecar or gateway"))]),
        };
        let (mut workload, _) = bootstrap::workload_from_entry(resources, &self.workload).map_err(|e| vec![e])?;
        workload.mode = mode;
        let mesh = match &self.mesh_config {
            Some(file) => {
                let name = file.display().to_string();
                let text =
                    std::fs::read_to_string(file).map_err(|e| vec![Error::new(format!("mesh config {name}: {e}"))])?;
                MeshConfig::load(&text, &name).map_err(|e| vec![e])?
            }
            None => MeshConfig::default(),
        };
        let tcp_outbound = self
            .tcp_outbound
            .iter()
            .map(|t| t.parse::<TcpOutbound>().map_err(Error::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| vec![e])?;
        Ok(ProxySpec {
            workload,
            inbound: self.inbound.iter().map(|i| Inbound { port: i.port, app_port: i.app_port }).collect(),
            outbound_port: self.outbound_port,
            tcp_outbound,
            gateway_ports: self.gateway_ports.iter().map(|g| (g.port, g.bind)).collect(),
            admin_port: self.admin_port,
            wasm_dir: self.wasm_dir.clone(),
            mesh,
            certs_dir: self.certs_dir.clone(),
            envoy_access_log: self.envoy_access_log.clone(),
            credentials_dir: self.credentials_dir.clone(),
        })
    }

    /// The spec of a proxy from a [`ProxySpec`] and the `--mesh-config` file it was read from.
    pub fn from_spec(spec: &ProxySpec, workload_ref: &str, mesh_config: Option<PathBuf>) -> NodeSpec {
        let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        NodeSpec {
            role: match spec.workload.mode {
                ProxyMode::Sidecar => "sidecar".into(),
                ProxyMode::Gateway => "gateway".into(),
            },
            workload: workload_ref.to_string(),
            inbound: spec.inbound.iter().map(|i| InboundPort { port: i.port, app_port: i.app_port }).collect(),
            outbound_port: spec.outbound_port,
            tcp_outbound: spec.tcp_outbound.iter().map(|t| format!("{}={}:{}", t.bind_port, t.host, t.port)).collect(),
            gateway_ports: spec
                .gateway_ports
                .iter()
                .map(|(port, bind)| GatewayPort { port: *port, bind: *bind })
                .collect(),
            admin_port: spec.admin_port,
            wasm_dir: abs(&spec.wasm_dir),
            mesh_config: mesh_config.as_ref().map(abs),
            certs_dir: spec.certs_dir.as_ref().map(abs),
            envoy_access_log: spec.envoy_access_log.clone(),
            credentials_dir: spec.credentials_dir.as_ref().map(abs),
        }
    }
}

/// One proxy's configuration in xDS form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyResources {
    /// The bootstrap's listeners, every wasm filter an ECDS reference.
    pub listeners: Vec<Value>,
    /// ECDS: `TypedExtensionConfig` JSON by resource name.
    pub extension_configs: BTreeMap<String, Value>,
    /// CDS: cluster JSON by name.
    pub clusters: BTreeMap<String, Value>,
    /// The rest of the bootstrap (node, admin, stats_config) without `static_resources`.
    pub bootstrap: Value,
}

impl ProxyResources {
    /// sha256 (hex) of the listeners: what a running Envoy has and the server can compare.
    pub fn listeners_hash(&self) -> String {
        sha256_hex(serde_json::to_string(&self.listeners).unwrap_or_default().as_bytes())
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration of the proxy `node` from `resources`, in xDS form, in the default layout.
pub fn build(node: &NodeSpec, resources: &Resources) -> Result<ProxyResources, Vec<Error>> {
    build_in(node, Layout::default(), resources)
}

/// [`build`] in `layout`. In the one-pass layout a listener's chain is one ECDS resource
/// (`<listener>/wasmesh.chain`): a policy change re-sends the whole chain's configuration.
pub fn build_in(node: &NodeSpec, layout: Layout, resources: &Resources) -> Result<ProxyResources, Vec<Error>> {
    let spec = node.to_spec(resources)?;
    let boot = bootstrap::build_with(&spec, resources, Slots::All, layout)?;
    Ok(split(boot))
}

/// The ECDS resource name of wasm filter `filter` in chain `chain` of listener `listener`.
pub fn extension_config_name(listener: &str, chain: usize, filter: &str) -> String {
    if chain == 0 {
        format!("{listener}/{filter}")
    } else {
        format!("{listener}#{chain}/{filter}")
    }
}

/// Moves the wasm filter configurations and clusters of a [`Slots::All`] bootstrap out into
/// xDS resources, leaving ECDS references in the listeners.
pub fn split(mut boot: Value) -> ProxyResources {
    let mut out = ProxyResources::default();
    let statics = boot.as_object_mut().and_then(|b| b.remove("static_resources")).unwrap_or(Value::Null);
    let (listeners, clusters) = match statics {
        Value::Object(mut m) => (m.remove("listeners"), m.remove("clusters")),
        _ => (None, None),
    };
    for c in clusters.and_then(|c| if let Value::Array(a) = c { Some(a) } else { None }).unwrap_or_default() {
        if let Some(name) = c.get("name").and_then(Value::as_str) {
            out.clusters.insert(name.to_string(), c.clone());
        }
    }
    for mut listener in listeners.and_then(|l| if let Value::Array(a) = l { Some(a) } else { None }).unwrap_or_default()
    {
        let lname = listener.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        let chains = listener.get_mut("filter_chains").and_then(Value::as_array_mut);
        for (ci, chain) in chains.into_iter().flatten().enumerate() {
            for filter in chain.get_mut("filters").and_then(Value::as_array_mut).into_iter().flatten() {
                let ty = filter.pointer("/typed_config/@type").and_then(Value::as_str).unwrap_or_default().to_string();
                if ty == NETWORK_WASM_TYPE {
                    to_slot(filter, &lname, ci, NETWORK_WASM_TYPE, &mut out.extension_configs);
                } else if ty == HCM_TYPE {
                    let hcm = filter.get_mut("typed_config");
                    // Clusters arrive by CDS after the listeners are read: the inline route table
                    // must not require them at load time (Envoy checks them as they are used).
                    if let Some(rc) = hcm.as_deref().and_then(|h| h.get("route_config")).cloned() {
                        if let Some(h) = filter.get_mut("typed_config") {
                            let mut rc = rc;
                            rc["validate_clusters"] = json!(false);
                            h["route_config"] = rc;
                        }
                    }
                    let http = filter.pointer_mut("/typed_config/http_filters").and_then(Value::as_array_mut);
                    for hf in http.into_iter().flatten() {
                        if hf.pointer("/typed_config/@type").and_then(Value::as_str) == Some(HTTP_WASM_TYPE) {
                            to_slot(hf, &lname, ci, HTTP_WASM_TYPE, &mut out.extension_configs);
                        }
                    }
                }
            }
        }
        out.listeners.push(listener);
    }
    out.bootstrap = boot;
    out
}

fn to_slot(filter: &mut Value, listener: &str, chain: usize, type_url: &str, configs: &mut BTreeMap<String, Value>) {
    let fname = filter.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = extension_config_name(listener, chain, &fname);
    let typed = filter.get("typed_config").cloned().unwrap_or(Value::Null);
    configs.insert(name.clone(), json!({"name": name, "typed_config": typed}));
    *filter = json!({
        "name": name,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT},
            "type_urls": [type_url],
        }
    });
}

/// `wasmeshctl envoy --xds ADDR`: the bootstrap of proxy `node` whose filter configurations and
/// clusters come from the server at `xds` (`HOST:PORT`), in the default layout.
pub fn xds_bootstrap(node: &NodeSpec, resources: &Resources, xds: &str) -> Result<Value, Vec<Error>> {
    xds_bootstrap_in(node, Layout::default(), resources, xds)
}

/// [`xds_bootstrap`] in `layout`, which the node metadata carries ([`LAYOUT_KEY`]) so the
/// server builds the same filter slots.
pub fn xds_bootstrap_in(
    node: &NodeSpec,
    layout: Layout,
    resources: &Resources,
    xds: &str,
) -> Result<Value, Vec<Error>> {
    let (host, port) = xds
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| vec![Error::new(format!("--xds {xds:?}: expected HOST:PORT of `wasmeshctl serve --listen`"))])?;
    let pr = build_in(node, layout, resources)?;
    let mut boot = pr.bootstrap.clone();
    let meta = boot.pointer_mut("/node/metadata").and_then(Value::as_object_mut);
    if let Some(meta) = meta {
        meta.insert(NODE_SPEC_KEY.into(), Value::String(serde_json::to_string(node).unwrap_or_default()));
        meta.insert(LAYOUT_KEY.into(), Value::String(layout.as_str().into()));
        meta.insert(LISTENERS_HASH_KEY.into(), Value::String(pr.listeners_hash()));
    }
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let xds_cluster = json!({
        "name": XDS_CLUSTER,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        ]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
    });
    let mut statics = Map::new();
    statics.insert("listeners".into(), Value::Array(pr.listeners));
    statics.insert("clusters".into(), json!([xds_cluster]));
    boot["static_resources"] = Value::Object(statics);
    boot["dynamic_resources"] = json!({
        "ads_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            "set_node_on_first_message_only": true,
        },
        "cds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": INITIAL_FETCH_TIMEOUT},
    });
    Ok(boot)
}

/// `wasmeshctl serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The directory of Istio YAML (every *.yaml) to keep the Envoys in step with.
    #[arg(long, value_name = "DIR")]
    pub watch: PathBuf,

    /// Where the xDS (gRPC ADS) server listens; `wasmeshctl envoy --xds` points Envoys here.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    pub listen: std::net::SocketAddr,

    /// Also serve the built .wasm modules over HTTP here (GET /wasm/ lists them, GET /wasm/NAME.wasm
    /// returns one with its sha256 in `x-wasm-sha256`), for the remote-code EnvoyFilter.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,

    /// Where the wasm modules are (for --http). Default: as `wasmeshctl envoy --wasm-dir`.
    #[arg(long, value_name = "DIR", env = "WASMESH_WASM_DIR")]
    pub wasm_dir: Option<PathBuf>,

    /// How often the directory is polled, in milliseconds (a change applies once two polls agree).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub poll_ms: u64,
}

/// `wasmeshctl serve`: runs until stopped. `wasm_dir` is the resolved `--wasm-dir`.
pub fn run(args: ServeArgs) -> Result<(), String> {
    let watch = std::path::absolute(&args.watch).map_err(|e| format!("--watch {}: {e}", args.watch.display()))?;
    if !watch.is_dir() {
        return Err(format!("--watch {}: not a directory", watch.display()));
    }
    serve(&ServeOptions {
        watch,
        listen: args.listen,
        http: args.http,
        wasm_dir: args.wasm_dir.unwrap_or_default(),
        poll: std::time::Duration::from_millis(args.poll_ms.max(10)),
    })
}

/// The [`NodeSpec`] in an Envoy node's metadata, as the server receives it.
pub fn node_spec_from_metadata(metadata: &Value) -> Result<NodeSpec, String> {
    let text = metadata.get(NODE_SPEC_KEY).and_then(Value::as_str).ok_or(format!(
        "node metadata has no {NODE_SPEC_KEY}: this Envoy's bootstrap was not written by `wasmeshctl envoy --xds`"
    ))?;
    serde_json::from_str(text).map_err(|e| format!("node metadata {NODE_SPEC_KEY}: {e}"))
}

/// The [`Layout`] in an Envoy node's metadata ([`LAYOUT_KEY`]; absent: the default).
pub fn layout_from_metadata(metadata: &Value) -> Result<Layout, String> {
    match metadata.get(LAYOUT_KEY) {
        None => Ok(Layout::default()),
        Some(Value::String(text)) => Layout::parse(text).map_err(|e| format!("node metadata {LAYOUT_KEY}: {e}")),
        Some(other) => Err(format!("node metadata {LAYOUT_KEY}: {other}; expected \"one-pass\" or \"per-filter\"")),
    }
}

/// A line on stderr with the UTC time, for the operator running `serve`; the last lines are also
/// kept in memory ([`recent_log`]).
pub fn log(message: impl std::fmt::Display) {
    let now = time::OffsetDateTime::now_utc();
    let (h, m, s, ms) = (now.hour(), now.minute(), now.second(), now.millisecond());
    let line = format!("{h:02}:{m:02}:{s:02}.{ms:03} wasmeshctl serve: {message}");
    eprintln!("{line}");
    if let Ok(mut recent) = RECENT.lock() {
        if recent.len() >= RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

const RECENT_LINES: usize = 2000;
static RECENT: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last lines [`log`] wrote in this process (for a host embedding the server, and tests).
pub fn recent_log() -> Vec<String> {
    RECENT.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
