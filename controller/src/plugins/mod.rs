//! One module per wasmesh filter: what that filter adds to a proxy's Envoy configuration.
//!
//! The bootstrap builder ([`crate::bootstrap`]) asks each plugin, for each listener it writes,
//! which wasm HTTP filters to insert (in Istio's filter order) and which extra clusters they need
//! (JWKS servers, ext-authz services, collectors). A plugin reads only the Istio resources and the
//! proxy description; it never writes files.

use serde_json::Value;
use wasmesh_istio::{Error, Resources, Workload};

pub mod authn;
pub mod authz;
pub mod mtls;
pub mod router;
pub mod stats;

/// Which traffic a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sidecar inbound: callers → this workload.
    Inbound,
    /// Sidecar outbound: this workload → other services.
    Outbound,
    /// Gateway listener for one Gateway server port.
    Gateway { port: u32 },
}

/// Everything a plugin may look at for one listener.
pub struct ListenerContext<'a> {
    pub workload: &'a Workload,
    pub resources: &'a Resources,
    pub direction: Direction,
    /// The port the listener binds on loopback. For a sidecar inbound listener this is the
    /// workload's port (what Istio's `ports`/`destination.port` mean).
    pub bind_port: u16,
    /// Istio MeshConfig (root namespace, trust domain, extension providers, normalization...).
    pub mesh: &'a crate::mesh::MeshConfig,
}

/// One wasm HTTP filter to insert into a listener's HCM.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmFilter {
    /// Envoy filter name, e.g. `wasmesh.authz`.
    pub name: String,
    /// The module's file stem: `authz` → `<wasm dir>/authz.wasm`.
    pub module: String,
    /// The plugin configuration (JSON) handed to `on_configure`.
    pub config: Value,
    /// Whether Envoy lets requests through when the VM fails (telemetry: true; security: false).
    pub fail_open: bool,
}

/// What a plugin contributes to one listener.
#[derive(Debug, Clone, Default)]
pub struct Contribution {
    /// Wasm HTTP filters, in order, before Envoy's router.
    pub http_filters: Vec<WasmFilter>,
    /// Wasm network (L4) filters before the HCM, e.g. TCP metrics.
    pub network_filters: Vec<WasmFilter>,
    /// Extra Envoy clusters (complete cluster JSON objects), de-duplicated by name.
    pub clusters: Vec<Value>,
    /// Bootstrap `stats_config.stats_tags` entries (tag extraction for wasm metrics).
    pub stats_tags: Vec<Value>,
}

/// Resources as the JSON list filters receive (`location` dropped).
pub fn resources_json<'a>(items: impl Iterator<Item = &'a wasmesh_istio::Resource>) -> Vec<Value> {
    items
        .map(|r| {
            let mut r = r.clone();
            r.location = Default::default();
            serde_json::to_value(r).unwrap_or(Value::Null)
        })
        .collect()
}

pub type Plugin = fn(&ListenerContext<'_>) -> Result<Contribution, Vec<Error>>;

/// Every plugin, in Istio's HTTP filter order: telemetry and metadata exchange, CUSTOM authz,
/// authn (JWT), AUDIT/DENY/ALLOW authz, then routing. Each decides from the listener's direction
/// whether it contributes (authz only on inbound and gateway listeners, the router only on
/// outbound and gateway listeners).
pub const PLUGINS: &[Plugin] =
    &[stats::contribute, authz::contribute_custom, authn::contribute, authz::contribute_rbac, router::contribute];
