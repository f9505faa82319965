//! What one router plugin configuration compiles to: one route table, or one per Gateway port.
//! The router filter and wasmeshctl (which picks the module by the callbacks the tables need)
//! compile a configuration through [`RouterConfig::compile_tables`], so they cannot disagree.

use crate::compile::{RouterConfig, DEFAULT_CLUSTER_HEADER};
use crate::table::Router;
use wasmesh_istio::module::Callbacks;
use wasmesh_istio::Resources;

/// The compiled route tables of one plugin.
pub enum Tables {
    /// A sidecar, or a gateway listener whose configuration names its `gatewayPort`.
    One(Box<Router>),
    /// A gateway configured without `gatewayPort` (one configuration for every listener of the
    /// gateway, as a WasmPlugin gives it): one table per Gateway server port that selects this
    /// proxy, picked by the port the request arrived on (`destination.port`, the listener's
    /// local port). That port is the Gateway's `servers[].port.number` when the gateway listens
    /// on the server port (wasmeshctl's gateways, Envoy Gateway, hostNetwork gateways); a
    /// Kubernetes gateway behind a Service that maps port 80 to targetPort 8080 listens on 8080,
    /// so give such a listener its `gatewayPort` in the configuration.
    PerPort(Vec<(u32, Router)>),
}

impl RouterConfig {
    /// The tables for this proxy: per Gateway port for a gateway configured without its port
    /// (none when no Gateway selects it: every request is then answered 404, as Istio), else one.
    /// A table that does not compile is named by its port.
    pub fn compile_tables(&self, resources: &Resources) -> Result<Tables, String> {
        let gateway = self.workload.as_ref().is_some_and(|w| w.mode == wasmesh_istio::ProxyMode::Gateway);
        if !gateway || self.gateway_port.is_some() {
            return self.compile(resources).map(|r| Tables::One(Box::new(r))).map_err(|e| e.to_string());
        }
        let mut tables = Vec::new();
        for port in self.gateway_ports(resources) {
            let per_port = RouterConfig { gateway_port: Some(port), ..self.clone() };
            let router = per_port.compile(resources).map_err(|e| format!("gateway port {port}: {e}"))?;
            tables.push((port, router));
        }
        Ok(Tables::PerPort(tables))
    }
}

impl Tables {
    /// The table for a request that arrived on `port` (`None`: read only for per-port tables).
    pub fn for_port(&self, port: impl FnOnce() -> Option<u64>) -> Option<&Router> {
        match self {
            Tables::One(r) => Some(r),
            Tables::PerPort(tables) => {
                let port = port()?;
                tables.iter().find(|(p, _)| u64::from(*p) == port).map(|(_, r)| r)
            }
        }
    }

    /// Every table, with its Gateway port when it has one.
    pub fn iter(&self) -> impl Iterator<Item = (Option<u32>, &Router)> {
        let (one, per_port) = match self {
            Tables::One(r) => (Some(&**r), &[][..]),
            Tables::PerPort(tables) => (None, tables.as_slice()),
        };
        one.map(|r| (None, r)).into_iter().chain(per_port.iter().map(|(p, r)| (Some(*p), r)))
    }

    /// Whether any route injects faults.
    pub fn has_faults(&self) -> bool {
        self.iter().any(|(_, r)| r.has_faults())
    }

    /// The response-side callbacks the tables need (each table decides, [`Router::callbacks`]).
    pub fn callbacks(&self) -> Callbacks {
        self.iter().fold(Callbacks::NONE, |c, (_, r)| c.union(r.callbacks()))
    }

    /// The most headers any table reads.
    pub fn most_headers(&self) -> usize {
        self.iter().map(|(_, r)| r.needed_headers().len()).max().unwrap_or(0)
    }

    /// The cluster header (the first table's; [`DEFAULT_CLUSTER_HEADER`] without any table).
    pub fn cluster_header(&self) -> &str {
        self.iter().next().map_or(DEFAULT_CLUSTER_HEADER, |(_, r)| r.cluster_header())
    }
}
