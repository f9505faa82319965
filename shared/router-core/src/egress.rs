//! Requests for hosts the mesh does not know (no ServiceEntry, no VirtualService) on a sidecar:
//! Istio's `meshConfig.outboundTrafficPolicy`.
//!
//! istiod ends every sidecar outbound route table with a catch-all virtual host: `ALLOW_ANY`
//! (Istio's default) routes to `PassthroughCluster` (route `allow_any`), `REGISTRY_ONLY` answers
//! 502 (route `block_all`, reported with `destination_service_name="BlackHoleCluster"`). The
//! router names the same clusters in its cluster header; `wasmeshctl envoy` gives Envoy the
//! `block_all` route (502) and the two clusters. Gateways answer 404 for unknown hosts, as in
//! Istio. A configuration without `outboundTrafficPolicy` keeps the router's 404 (the filter
//! does not assume an Envoy it did not configure has either cluster).

use serde::{Deserialize, Serialize};

/// Istio's cluster for allowed traffic to unknown destinations.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Istio's cluster for blocked traffic to unknown destinations.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's route names for the two catch-alls (what telemetry reads on a direct response).
pub const PASSTHROUGH_ROUTE: &str = "allow_any";
pub const BLACKHOLE_ROUTE: &str = "block_all";

/// `meshConfig.outboundTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OutboundTrafficPolicy {
    #[serde(default)]
    pub mode: OutboundMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum OutboundMode {
    #[default]
    AllowAny,
    RegistryOnly,
}

impl OutboundMode {
    /// The (cluster, route name) a request for an unknown host goes to.
    pub fn catch_all(self) -> (&'static str, &'static str) {
        match self {
            OutboundMode::AllowAny => (PASSTHROUGH_CLUSTER, PASSTHROUGH_ROUTE),
            OutboundMode::RegistryOnly => (BLACKHOLE_CLUSTER, BLACKHOLE_ROUTE),
        }
    }
}
