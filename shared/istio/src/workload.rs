//! The proxy's own identity: which workload it fronts. Every filter's configuration carries it
//! so that selectors (`selector.matchLabels`, `sourceLabels`, Gateway `selector`), namespaces and
//! short host names are resolved the way istiod would for that proxy.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ProxyMode {
    /// A sidecar in front of one workload (inbound and outbound).
    #[default]
    Sidecar,
    /// A standalone gateway (ingress or egress) that implements Gateway resources.
    Gateway,
}

/// The proxy's own identity: which workload it fronts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Workload {
    /// The workload name (e.g. `reviews-v1`), as Istio's `WORKLOAD_NAME`.
    pub name: String,
    /// The workload's namespace (Istio's `NAMESPACE`).
    pub namespace: String,
    /// The pod labels (Istio's `LABELS`): what `selector.matchLabels` and `sourceLabels` match.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The service account: the SPIFFE identity is `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    #[serde(default = "default_sa")]
    pub service_account: String,
    /// meshConfig `trustDomain`.
    #[serde(default = "default_td")]
    pub trust_domain: String,
    /// Sidecar or gateway.
    #[serde(default)]
    pub mode: ProxyMode,
    /// The cluster's DNS suffix, for short host names.
    #[serde(default = "default_suffix")]
    pub domain_suffix: String,
    /// meshConfig `rootNamespace`: its policies apply to every namespace.
    #[serde(default = "default_root")]
    pub root_namespace: String,
    /// Istio's `CLUSTER_ID` (the `source_cluster`/`destination_cluster` metric labels).
    #[serde(default = "default_cluster")]
    pub cluster_id: String,
}

fn default_sa() -> String {
    "default".into()
}
fn default_td() -> String {
    "cluster.local".into()
}
fn default_suffix() -> String {
    crate::DEFAULT_DOMAIN_SUFFIX.into()
}
fn default_root() -> String {
    crate::DEFAULT_ROOT_NAMESPACE.into()
}
fn default_cluster() -> String {
    "Kubernetes".into()
}

impl Workload {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Workload {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            service_account: default_sa(),
            trust_domain: default_td(),
            mode: ProxyMode::Sidecar,
            domain_suffix: default_suffix(),
            root_namespace: default_root(),
            cluster_id: default_cluster(),
        }
    }

    /// The workload's SPIFFE identity without scheme: `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    /// Expands a host as written in a resource of namespace `ns` to its FQDN, as istiod does:
    /// `reviews` → `reviews.<ns>.svc.<suffix>`; names with a dot and wildcards are kept.
    pub fn fqdn(&self, host: &str, ns: &str) -> String {
        fqdn(host, ns, &self.domain_suffix)
    }
}

/// See [`Workload::fqdn`].
pub fn fqdn(host: &str, ns: &str, domain_suffix: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "*" || host.contains('.') {
        host
    } else {
        format!("{host}.{ns}.svc.{domain_suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_with_the_resource_namespace() {
        assert_eq!(fqdn("reviews", "bookinfo", "cluster.local"), "reviews.bookinfo.svc.cluster.local");
        assert_eq!(fqdn("Reviews.Other.svc.cluster.local", "x", "cluster.local"), "reviews.other.svc.cluster.local");
        assert_eq!(fqdn("*.example.com", "x", "cluster.local"), "*.example.com");
        assert_eq!(fqdn("*", "x", "cluster.local"), "*");
    }
}
