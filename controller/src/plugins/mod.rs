//! One module per wasmesh filter: what that filter adds to a proxy's Envoy configuration.
//!
//! The bootstrap builder asks each plugin, for each listener it writes, which wasm HTTP filters to
//! insert (in Istio's filter order) and which extra clusters they need (JWKS servers, ext-authz
//! services, collectors); it asks the transport plugin ([`mtls`]) how each sidecar inbound listener
//! accepts connections ([`ListenerTransport`]) and how each outbound cluster connects
//! ([`ClusterTransport`]). A plugin reads only the Istio resources and the proxy description and
//! returns what it contributes; the builder writes the JSON. No plugin edits a finished bootstrap,
//! and no plugin depends on the builder.

use serde_json::Value;
use wasmesh_istio::{Error, Resources, Workload};

pub mod accesslog;
pub mod authn;
pub mod authz;
pub mod mtls;
pub mod oidc;
pub mod router;
pub mod stats;
pub mod tracing;

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
    /// Envoy filter name and the plugin's `root_id`, e.g. `wasmesh.authz`: the one module
    /// (`wasmesh.wasm`) serves the filter this id names.
    pub name: String,
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
    /// Envoy access loggers for the listener's HTTP connection manager (the file loggers that
    /// print the access-log phase's lines).
    pub access_logs: Vec<Value>,
}

/// How a listener accepts connections, as the transport plugin ([`mtls`]) contributes it: the
/// builder writes one filter chain per entry of `chains`, in order, each with the listener's
/// network filters (or their peer-exchange variant), and the HCM of each gets `hcm_fields`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTransport {
    pub chains: Vec<ChainTransport>,
    /// Envoy listener filters (the TLS inspector); empty for none.
    pub listener_filters: Vec<Value>,
    /// Fields set on the HttpConnectionManager of every chain (Istio's sidecar inbound HCM forwards
    /// the peer certificate to the app); no effect on a TCP listener.
    pub hcm_fields: Vec<(&'static str, Value)>,
}

/// One filter chain of a [`ListenerTransport`]: how Envoy picks it and what it decrypts with.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainTransport {
    pub name: &'static str,
    /// Envoy's `filter_chain_match`; `None` matches every connection.
    pub filter_chain_match: Option<Value>,
    /// Envoy's `transport_socket` (a DownstreamTlsContext); `None` is plaintext.
    pub transport_socket: Option<Value>,
    pub filters: ChainFilters,
}

/// Which network filters a chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFilters {
    /// The listener's filters.
    Listener,
    /// The TCP listener's filters with the stats filter that runs Istio's TCP metadata exchange.
    PeerExchange,
}

/// How an outbound cluster connects to its endpoints, as the transport plugin ([`mtls`])
/// contributes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterTransport {
    /// Plaintext to every endpoint (Envoy's default: nothing written).
    Plaintext,
    /// This `transport_socket` to every endpoint.
    All(Value),
    /// This `transport_socket` to the endpoints marked `true` (in the order of the endpoints the
    /// plugin was given), plaintext to the others: Istio's `transport_socket_matches` on the
    /// endpoint metadata `tlsMode: istio`.
    Some { socket: Value, endpoints: Vec<bool> },
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
pub const PLUGINS: &[Plugin] = &[
    stats::contribute,
    tracing::contribute,
    accesslog::contribute,
    oidc::contribute,
    authz::contribute_custom,
    authn::contribute,
    authz::contribute_rbac,
    router::contribute,
];

/// For xDS (every slot present): the filter the plugin at the same index of
/// [`PLUGINS`] inserts when no resource gives it anything to enforce, or nothing when the plugin
/// never runs on this listener. With ECDS the filter chain is fixed when Envoy starts and only
/// filter configurations change, so the first AuthorizationPolicy or RequestAuthentication for a
/// workload must find its filter already there. An empty slot carries the configuration of an
/// empty policy set, which is Istio's "no policy": authz allows, authn checks no token.
pub type EmptySlot = fn(&ListenerContext<'_>) -> Option<WasmFilter>;

/// Parallel to [`PLUGINS`].
pub const EMPTY_SLOTS: &[EmptySlot] =
    &[no_slot, no_slot, no_slot, no_slot, empty_authz_custom, empty_authn, empty_authz_rbac, no_slot];
// The two lists are walked together (`zip`), which would silently drop the plugins past the
// shorter one: a plugin added to one list only must not compile.
const _: () = assert!(PLUGINS.len() == EMPTY_SLOTS.len(), "PLUGINS and EMPTY_SLOTS are parallel");

fn no_slot(_: &ListenerContext<'_>) -> Option<WasmFilter> {
    None
}

fn empty_authz(ctx: &ListenerContext<'_>, stage: authz::Stage, name: &str) -> Option<WasmFilter> {
    if ctx.direction == Direction::Outbound {
        return None;
    }
    let (cfg, _) = authz::config(ctx, stage);
    let config = serde_json::to_value(&cfg).ok()?;
    Some(WasmFilter { name: name.into(), config, fail_open: false })
}

fn empty_authz_custom(ctx: &ListenerContext<'_>) -> Option<WasmFilter> {
    empty_authz(ctx, authz::Stage::Custom, authz::CUSTOM_FILTER_NAME)
}

fn empty_authz_rbac(ctx: &ListenerContext<'_>) -> Option<WasmFilter> {
    empty_authz(ctx, authz::Stage::Rbac, authz::FILTER_NAME)
}

fn empty_authn(ctx: &ListenerContext<'_>) -> Option<WasmFilter> {
    let mut workload = ctx.workload.clone();
    match ctx.direction {
        Direction::Outbound => return None,
        Direction::Gateway { .. } => workload.mode = wasmesh_istio::ProxyMode::Gateway,
        Direction::Inbound => {}
    }
    let config = serde_json::to_value(wasmesh_authn::AuthnConfig::new(workload)).ok()?;
    Some(WasmFilter { name: authn::FILTER_NAME.into(), config, fail_open: false })
}

/// The TCP authz slot of an inbound TCP listener (see [`EmptySlot`]).
pub fn empty_tcp_authz_slot(ctx: &ListenerContext<'_>) -> WasmFilter {
    let (cfg, _) = authz::config(ctx, authz::Stage::Tcp);
    let config = serde_json::to_value(&cfg).unwrap_or(Value::Null);
    WasmFilter { name: authz::TCP_FILTER_NAME.into(), config, fail_open: false }
}

/// Network slots of an HTTP listener in xDS mode: the peer-address recorder that `ipBlocks`
/// policies need, present wherever authz runs, and the authz stats tags.
pub fn fill_network_slots(ctx: &ListenerContext<'_>, c: &mut Contribution) {
    if ctx.direction == Direction::Outbound {
        return;
    }
    if !c.network_filters.iter().any(|f| f.name == authz::PEER_ADDRESS_FILTER_NAME) {
        c.network_filters.push(authz::peer_address_filter());
    }
    for tag in authz::stats_tags() {
        if !c.stats_tags.iter().any(|t| t.get("tag_name") == tag.get("tag_name")) {
            c.stats_tags.push(tag);
        }
    }
}
