//! The proxy's identity as Istio's proxies carry it in the Envoy node: the node id
//! (`<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`) and the node metadata the sidecar
//! injector and pilot-agent write (`NAMESPACE`, `WORKLOAD_NAME`, `LABELS`, `SERVICE_ACCOUNT`,
//! `CLUSTER_ID`, `MESH_ID`, ...). Under Istio one WasmPlugin configuration serves every proxy its
//! selector matches, so a filter configured without a `workload` builds it from here.
//!
//! How Envoy hands these to a wasm filter (verified in Envoy 1.40.0 with a probe filter reading
//! `get_property`; the path prefix is `xds.node`, the bare `node` path returns nothing in 1.40):
//!
//! | property | bytes |
//! |---|---|
//! | `xds.node.id`, `xds.node.cluster` | the string, UTF-8, no terminator |
//! | `xds.node.metadata.<KEY>` string value | the string, UTF-8, no terminator |
//! | `xds.node.metadata.<KEY>` number value | 8 bytes, the `double`, little-endian |
//! | `xds.node.metadata.<KEY>` bool value | 1 byte, 0 or 1 |
//! | `xds.node.metadata.<KEY>` Struct value (`LABELS`) | a proxy-wasm *pairs map* (see [`decode_pairs`]) whose values are each encoded by these same rules (a nested Struct value is itself a pairs map) |
//! | `xds.node.metadata.<KEY>` list value | a pairs map with each element as a *key* and empty values |
//! | `xds.node.metadata.<KEY>.<field>` | a Struct is also traversed by path: `LABELS.app` gives the string |
//! | `xds.node.metadata` | the whole Struct as a pairs map |
//! | a key that is absent | no value (`Ok(None)`) |
//!
//! Not protobuf, not flatbuffers, not JSON: map-valued CEL attributes are serialised as pairs,
//! the order of the entries is not the order of the bootstrap (it is a hash map's order).

use crate::workload::{ProxyMode, Workload};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The mesh-wide facts a node-derived workload needs and the node does not carry (top-level
/// `mesh` of every filter configuration). Defaults are Istio's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MeshIdentity {
    /// meshConfig `trustDomain`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// meshConfig `rootNamespace`.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// The cluster's DNS suffix (Istio's `--domain`, `cluster.local`).
    #[serde(default = "default_domain_suffix")]
    pub domain_suffix: String,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_root_namespace() -> String {
    crate::DEFAULT_ROOT_NAMESPACE.into()
}
fn default_domain_suffix() -> String {
    crate::DEFAULT_DOMAIN_SUFFIX.into()
}

impl Default for MeshIdentity {
    fn default() -> Self {
        MeshIdentity {
            trust_domain: default_trust_domain(),
            root_namespace: default_root_namespace(),
            domain_suffix: default_domain_suffix(),
        }
    }
}

/// What the node says, as read from Envoy (each `None` when the node does not carry it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    /// `xds.node.id`.
    pub id: Option<String>,
    pub namespace: Option<String>,
    pub workload_name: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub service_account: Option<String>,
    pub cluster_id: Option<String>,
    /// Values that are present but not what Istio writes there (e.g. `LABELS` not a map of
    /// strings), each naming the key and what was found.
    pub problems: Vec<String>,
}

/// How a filter treats a node without the metadata it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Security and routing filters: refuse to configure (fail closed). Needs a node id of type
    /// `sidecar` or `router`, `NAMESPACE` and `LABELS`.
    Required,
    /// Telemetry: report `unknown` for what is missing (fail open).
    BestEffort,
}

/// The node metadata keys read (Istio's `NodeMetadata` JSON names).
pub const NAMESPACE: &str = "NAMESPACE";
pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
pub const LABELS: &str = "LABELS";
pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
pub const CLUSTER_ID: &str = "CLUSTER_ID";
/// The value telemetry reports for what the node does not say.
pub const UNKNOWN: &str = "unknown";

/// The parts of an Istio node id, `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>`
/// (istio/istio `model.ParseServiceNodeWithMetadata`; the types are `sidecar`, `router` for
/// gateways, `waypoint`, `ztunnel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId<'a> {
    pub kind: &'a str,
    pub ip: &'a str,
    /// `<pod>.<namespace>`.
    pub id: &'a str,
    pub domain: &'a str,
}

impl<'a> NodeId<'a> {
    pub fn parse(s: &'a str) -> Result<NodeId<'a>, String> {
        let parts: Vec<&str> = s.split('~').collect();
        match parts.as_slice() {
            [kind, ip, id, domain] if !kind.is_empty() => Ok(NodeId { kind, ip, id, domain }),
            _ => Err(format!("node id {s:?} is not Istio's <type>~<ip>~<pod>.<namespace>~<domain>")),
        }
    }

    /// `sidecar` → sidecar, `router` → gateway; other types are not proxies wasmesh serves.
    pub fn mode(&self) -> Result<ProxyMode, String> {
        match self.kind {
            "sidecar" => Ok(ProxyMode::Sidecar),
            "router" => Ok(ProxyMode::Gateway),
            other => Err(format!("node id type {other:?} is neither \"sidecar\" nor \"router\" (gateway)")),
        }
    }

    /// The pod name (`reviews-v1-abc` of `reviews-v1-abc.default`).
    pub fn pod(&self) -> &'a str {
        self.id.split('.').next().unwrap_or(self.id)
    }
}

impl NodeMetadata {
    /// The proxy's [`Workload`]. `Required`: everything a policy selects on must be there, else
    /// an error naming each missing or malformed key. `BestEffort`: `unknown` stands in.
    /// `WORKLOAD_NAME` falls back to the pod name of the node id, `SERVICE_ACCOUNT` to
    /// `default`, `CLUSTER_ID` to `Kubernetes` (Istio's defaults).
    pub fn workload(&self, mesh: &MeshIdentity, strictness: Strictness) -> Result<Workload, String> {
        let mut missing: Vec<String> = self.problems.clone();
        let node_id = match self.id.as_deref().map(NodeId::parse) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                missing.push(e);
                None
            }
            None => {
                missing.push("the node has no id".into());
                None
            }
        };
        let mode = match node_id.as_ref().map(NodeId::mode) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                missing.push(e);
                None
            }
            None => None,
        };
        let namespace = non_empty(&self.namespace);
        if namespace.is_none() {
            missing.push(format!("node metadata has no {NAMESPACE}"));
        }
        if self.labels.is_none() {
            missing.push(format!("node metadata has no {LABELS}"));
        }
        if strictness == Strictness::Required && !missing.is_empty() {
            return Err(missing.join("; "));
        }
        let name = non_empty(&self.workload_name)
            .or_else(|| node_id.as_ref().map(|n| n.pod().to_string()).filter(|p| !p.is_empty()))
            .unwrap_or_else(|| UNKNOWN.to_string());
        let mut wl = Workload::new(name, namespace.unwrap_or_else(|| UNKNOWN.to_string()));
        wl.labels = self.labels.clone().unwrap_or_default();
        if let Some(sa) = non_empty(&self.service_account) {
            wl.service_account = sa;
        }
        if let Some(c) = non_empty(&self.cluster_id) {
            wl.cluster_id = c;
        }
        wl.mode = mode.unwrap_or(ProxyMode::Sidecar);
        wl.trust_domain = mesh.trust_domain.clone();
        wl.root_namespace = mesh.root_namespace.clone();
        wl.domain_suffix = mesh.domain_suffix.clone();
        Ok(wl)
    }

    /// Sets a metadata value from the bytes `get_property(["xds","node","metadata",key])`
    /// returned (`None`: the key is absent). Unknown keys are ignored.
    pub fn set(&mut self, key: &str, bytes: Option<&[u8]>) {
        let Some(bytes) = bytes else { return };
        if key == LABELS {
            match decode_string_map(bytes) {
                Ok(m) => self.labels = Some(m),
                Err(e) => self.problems.push(format!("node metadata {LABELS}: {e}")),
            }
            return;
        }
        let slot = match key {
            NAMESPACE => &mut self.namespace,
            WORKLOAD_NAME => &mut self.workload_name,
            SERVICE_ACCOUNT => &mut self.service_account,
            CLUSTER_ID => &mut self.cluster_id,
            _ => return,
        };
        match std::str::from_utf8(bytes) {
            Ok(s) => *slot = Some(s.to_string()),
            Err(_) => self.problems.push(format!("node metadata {key} is not a UTF-8 string")),
        }
    }
}

/// The string keys [`NodeMetadata::set`] understands, in the order they are read.
pub const KEYS: [&str; 5] = [NAMESPACE, WORKLOAD_NAME, LABELS, SERVICE_ACCOUNT, CLUSTER_ID];

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref().filter(|s| !s.is_empty()).cloned()
}

/// Decodes the proxy-wasm "pairs" encoding Envoy uses for map-valued properties and header
/// maps: `u32 N`, N × (`u32 key_len`, `u32 value_len`), then each `key \0 value \0`; all
/// integers little-endian. `None` when the bytes are truncated or inconsistent.
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let read_u32 = |at: usize| -> Option<usize> {
        let arr: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u32::from_le_bytes(arr) as usize)
    };
    let n = read_u32(0)?;
    if n > bytes.len() / 8 {
        return None;
    }
    let mut sizes = Vec::with_capacity(n);
    for i in 0..n {
        sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
    }
    let mut at = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for (k, v) in sizes {
        let key = bytes.get(at..at.checked_add(k)?)?;
        at = at.checked_add(k)?.checked_add(1)?;
        let value = bytes.get(at..at.checked_add(v)?)?;
        at = at.checked_add(v)?.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

/// A Struct of strings (node metadata `LABELS`) as Envoy returns it: a pairs map.
pub fn decode_string_map(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let pairs =
        decode_pairs(bytes).ok_or_else(|| format!("{} bytes that are not a proxy-wasm pairs map", bytes.len()))?;
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        let key = std::str::from_utf8(k).map_err(|_| "a key is not UTF-8".to_string())?;
        let value = std::str::from_utf8(v).map_err(|_| format!("the value of {key:?} is not a UTF-8 string"))?;
        out.insert(key.to_string(), value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The bytes Envoy 1.40 returned for `LABELS: {app: reviews, version: v1,
    /// security.istio.io/tlsMode: istio}` (captured from a probe filter).
    const ENVOY_LABELS: &str = "0300000019000000050000000700000002000000030000000700000073656375726974792e697374696f2e696f2f746c734d6f646500697374696f0076657273696f6e00763100617070007265766965777300";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn istio_node() -> NodeMetadata {
        let mut n = NodeMetadata {
            id: Some("sidecar~10.0.0.1~reviews-v1-abc.default~default.svc.cluster.local".into()),
            ..Default::default()
        };
        n.set(NAMESPACE, Some(b"default"));
        n.set(WORKLOAD_NAME, Some(b"reviews-v1"));
        n.set(LABELS, Some(&hex(ENVOY_LABELS)));
        n.set(SERVICE_ACCOUNT, Some(b"bookinfo-reviews"));
        n.set(CLUSTER_ID, Some(b"Kubernetes"));
        n.set("ISTIO_VERSION", Some(b"1.30.3"));
        n
    }

    #[test]
    fn decodes_the_labels_envoy_returned() {
        let m = decode_string_map(&hex(ENVOY_LABELS)).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["app"], "reviews");
        assert_eq!(m["version"], "v1");
        assert_eq!(m["security.istio.io/tlsMode"], "istio");
    }

    #[test]
    fn builds_the_workload_istio_describes() {
        let wl = istio_node().workload(&MeshIdentity::default(), Strictness::Required).unwrap();
        assert_eq!((wl.name.as_str(), wl.namespace.as_str()), ("reviews-v1", "default"));
        assert_eq!(wl.labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(wl.principal(), "cluster.local/ns/default/sa/bookinfo-reviews");
        assert_eq!(wl.mode, ProxyMode::Sidecar);
        assert_eq!(wl.cluster_id, "Kubernetes");
        let mesh = MeshIdentity {
            trust_domain: "td.example".into(),
            root_namespace: "mesh-root".into(),
            domain_suffix: "corp".into(),
        };
        let wl = istio_node().workload(&mesh, Strictness::Required).unwrap();
        assert_eq!(
            (wl.trust_domain.as_str(), wl.root_namespace.as_str(), wl.domain_suffix.as_str()),
            ("td.example", "mesh-root", "corp")
        );
    }

    #[test]
    fn a_router_node_is_a_gateway_and_defaults_fill_the_rest() {
        let mut n = NodeMetadata {
            id: Some("router~10.0.0.9~istio-ingressgateway-5d7.istio-system~istio-system.svc.cluster.local".into()),
            ..Default::default()
        };
        n.set(NAMESPACE, Some(b"istio-system"));
        // An empty LABELS map is still a map.
        n.set(LABELS, Some(&0u32.to_le_bytes()));
        let wl = n.workload(&MeshIdentity::default(), Strictness::Required).unwrap();
        assert_eq!(wl.mode, ProxyMode::Gateway);
        assert_eq!(wl.name, "istio-ingressgateway-5d7", "WORKLOAD_NAME absent: the pod name of the node id");
        assert_eq!(wl.service_account, "default");
        assert!(wl.labels.is_empty());
    }

    #[test]
    fn security_filters_refuse_a_node_without_identity() {
        let n = NodeMetadata { id: Some("sidecar~10.0.0.1~x.y~y.svc.cluster.local".into()), ..Default::default() };
        let e = n.workload(&MeshIdentity::default(), Strictness::Required).unwrap_err();
        assert!(e.contains("no NAMESPACE") && e.contains("no LABELS"), "{e}");
        let e = NodeMetadata::default().workload(&MeshIdentity::default(), Strictness::Required).unwrap_err();
        assert!(e.contains("no id"), "{e}");
        let mut n = istio_node();
        n.id = Some("waypoint~10.0.0.1~w.default~default.svc.cluster.local".into());
        let e = n.workload(&MeshIdentity::default(), Strictness::Required).unwrap_err();
        assert!(e.contains("\"waypoint\""), "{e}");
        let mut n = istio_node();
        n.set(LABELS, Some(b"v1"));
        let e = n.workload(&MeshIdentity::default(), Strictness::Required).unwrap_err();
        assert!(e.contains("LABELS") && e.contains("pairs"), "{e}");
    }

    #[test]
    fn telemetry_reports_unknown_for_what_is_missing() {
        let wl = NodeMetadata::default().workload(&MeshIdentity::default(), Strictness::BestEffort).unwrap();
        assert_eq!((wl.name.as_str(), wl.namespace.as_str()), (UNKNOWN, UNKNOWN));
        assert_eq!(wl.mode, ProxyMode::Sidecar);
        assert!(wl.labels.is_empty());
    }

    #[test]
    fn parses_node_ids() {
        let id = NodeId::parse("sidecar~10.0.0.1~reviews-v1-abc.default~default.svc.cluster.local").unwrap();
        assert_eq!(
            (id.kind, id.ip, id.pod(), id.domain),
            ("sidecar", "10.0.0.1", "reviews-v1-abc", "default.svc.cluster.local")
        );
        assert!(NodeId::parse("sidecar~10.0.0.1").is_err());
        assert!(NodeId::parse("").is_err());
    }

    #[test]
    fn decodes_pairs_and_rejects_truncation() {
        let mut b = Vec::new();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"a\0bc\0\0xyz\0");
        let pairs = decode_pairs(&b).unwrap();
        assert_eq!(pairs, vec![(&b"a"[..], &b"bc"[..]), (&b""[..], &b"xyz"[..])]);
        assert!(decode_pairs(&b[..b.len() - 3]).is_none());
        assert!(decode_pairs(&[0xff, 0xff, 0xff, 0x7f]).is_none());
        assert!(decode_pairs(&[]).is_none());
    }
}
