//! Istio peer metadata exchange over HTTP: the `x-envoy-peer-metadata` header (base64 of a
//! deterministically serialized `google.protobuf.Struct`) and `x-envoy-peer-metadata-id` (the
//! sender's Envoy node id).
//!
//! Keys follow istio/proxy `extensions/common/metadata_object.cc`
//! (`convertWorkloadMetadataToStruct` / `convertStructToWorkloadMetadata`): `NAME`, `NAMESPACE`,
//! `WORKLOAD_NAME`, `CLUSTER_ID`, `OWNER` and a `LABELS` struct holding
//! `service.istio.io/canonical-name`, `service.istio.io/canonical-revision`, `app`, `version`.
//! So a wasmesh sidecar and an Istio sidecar understand each other's headers.
#![deny(clippy::indexing_slicing)]

use crate::proto::{Struct, Value};
use base64::Engine;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use wasmesh_istio::{ProxyMode, Workload};

pub const HEADER_METADATA: &str = "x-envoy-peer-metadata";
pub const HEADER_METADATA_ID: &str = "x-envoy-peer-metadata-id";

/// Largest `x-envoy-peer-metadata` value decoded; anything longer is ignored (Envoy's default
/// request-header limit is 60 KiB; a real peer's metadata is a few hundred bytes).
pub const MAX_METADATA_HEADER_BYTES: usize = 8 * 1024;
/// Largest `x-envoy-peer-metadata-id` kept (an Istio node id,
/// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.<suffix>`, is well under 300 bytes); a longer id is dropped,
/// the metadata kept.
pub const MAX_ID_BYTES: usize = 512;
/// Most labels kept from a peer's `LABELS` (Kubernetes pods carry a handful; Istio keeps them
/// all, bounded only by the header). Only the access log reads them; the metric labels use the
/// four Istio names, which are always read.
pub const MAX_PEER_LABELS: usize = 64;

pub const LABEL_CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const LABEL_CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";
const LABEL_APP: &str = "app";
const LABEL_VERSION: &str = "version";
const LABEL_K8S_NAME: &str = "app.kubernetes.io/name";
const LABEL_K8S_VERSION: &str = "app.kubernetes.io/version";

/// A workload as metadata exchange describes it. Also the JSON written to the filter state
/// `PEER_DOWNSTREAM` / `PEER_UPSTREAM` (see `wasmesh-handover`) for the access-log filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerMetadata {
    /// `NAME`: the instance (pod) name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `NAMESPACE`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `WORKLOAD_NAME`, e.g. `reviews-v2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// `CLUSTER_ID`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// `OWNER`, e.g. `kubernetes://apis/apps/v1/namespaces/ns/deployments/reviews-v2`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// `LABELS["app"]` (or `app.kubernetes.io/name`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// `LABELS["version"]` (or `app.kubernetes.io/version`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `LABELS["service.istio.io/canonical-name"]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_service: String,
    /// `LABELS["service.istio.io/canonical-revision"]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canonical_revision: String,
    /// Every string label the peer sent (bounded), for access logs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The peer's `x-envoy-peer-metadata-id` (its Envoy node id), when it sent one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
}

/// This proxy's own values, as Istio reads them from the node metadata (`WORKLOAD_NAME`,
/// `NAMESPACE`, `CLUSTER_ID`, `LABELS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    pub workload: String,
    pub namespace: String,
    pub cluster: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    /// The Envoy node id Istio would give this proxy
    /// (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.<suffix>`, `router~…` for a gateway).
    pub node_id: String,
}

impl LocalInfo {
    /// The values the sidecar injector would put on the pod: canonical name from
    /// `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`, else the
    /// workload name; canonical revision from `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn from_workload(w: &Workload) -> LocalInfo {
        let label = |k: &str| w.labels.get(k).filter(|v| !v.is_empty()).cloned();
        let canonical_service = label(LABEL_CANONICAL_NAME)
            .or_else(|| label(LABEL_K8S_NAME))
            .or_else(|| label(LABEL_APP))
            .unwrap_or_else(|| w.name.clone());
        let canonical_revision = label(LABEL_CANONICAL_REVISION)
            .or_else(|| label(LABEL_K8S_VERSION))
            .or_else(|| label(LABEL_VERSION))
            .unwrap_or_else(|| "latest".to_string());
        let kind = match w.mode {
            ProxyMode::Sidecar => "sidecar",
            ProxyMode::Gateway => "router",
        };
        LocalInfo {
            workload: w.name.clone(),
            namespace: w.namespace.clone(),
            cluster: w.cluster_id.clone(),
            app: label(LABEL_APP).unwrap_or_default(),
            version: label(LABEL_VERSION).unwrap_or_default(),
            canonical_service,
            canonical_revision,
            node_id: format!("{kind}~127.0.0.1~{}.{}~{}.svc.{}", w.name, w.namespace, w.namespace, w.domain_suffix),
        }
    }

    /// The metadata this proxy announces, in Istio's Struct form.
    pub fn to_struct(&self) -> Struct {
        let mut labels = Struct::default();
        let put = |s: &mut Struct, k: &str, v: &str| {
            if !v.is_empty() {
                s.fields.insert(k.to_string(), Value::string(v));
            }
        };
        put(&mut labels, LABEL_CANONICAL_NAME, &self.canonical_service);
        put(&mut labels, LABEL_CANONICAL_REVISION, &self.canonical_revision);
        put(&mut labels, LABEL_APP, &self.app);
        put(&mut labels, LABEL_VERSION, &self.version);
        let mut s = Struct::default();
        put(&mut s, "NAME", &self.workload);
        put(&mut s, "NAMESPACE", &self.namespace);
        put(&mut s, "WORKLOAD_NAME", &self.workload);
        put(&mut s, "CLUSTER_ID", &self.cluster);
        put(
            &mut s,
            "OWNER",
            &format!("kubernetes://apis/apps/v1/namespaces/{}/deployments/{}", self.namespace, self.workload),
        );
        s.fields.insert("LABELS".to_string(), Value::structure(labels));
        s
    }

    /// The `x-envoy-peer-metadata` value this proxy sends (standard base64 with padding, as
    /// Envoy's `Base64::encode`).
    pub fn header_value(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_struct().encode_to_vec())
    }
}

/// Base64 that accepts input with or without padding (Istio decodes with
/// `Base64::decodeWithoutPadding`).
const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes a peer's `x-envoy-peer-metadata` (and optional id). Anything oversized, not base64,
/// not a `Struct`, or without a single known field gives `None`; nothing here can panic.
pub fn decode_peer(metadata: &[u8], id: Option<&[u8]>) -> Option<PeerMetadata> {
    if metadata.is_empty() || metadata.len() > MAX_METADATA_HEADER_BYTES {
        return None;
    }
    let trimmed = trim_ascii(metadata);
    let bytes = LENIENT.decode(trimmed).ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let mut peer = from_struct(&s);
    if peer == PeerMetadata::default() {
        return None;
    }
    if let Some(id) = id {
        if id.len() <= MAX_ID_BYTES {
            if let Ok(id) = std::str::from_utf8(trim_ascii(id)) {
                peer.id = id.to_string();
            }
        }
    }
    Some(peer)
}

/// Reads Istio's keys out of a peer Struct (unknown keys are ignored, non-strings are empty).
pub fn from_struct(s: &Struct) -> PeerMetadata {
    let get = |k: &str| s.get_str(k).unwrap_or_default().to_string();
    let mut peer = PeerMetadata {
        name: get("NAME"),
        namespace: get("NAMESPACE"),
        workload: get("WORKLOAD_NAME"),
        cluster: get("CLUSTER_ID"),
        owner: get("OWNER"),
        ..PeerMetadata::default()
    };
    if let Some(labels) = s.get_struct("LABELS") {
        for (k, v) in labels.fields.iter().take(MAX_PEER_LABELS) {
            if let Some(v) = v.as_str() {
                peer.labels.insert(k.clone(), v.to_string());
            }
        }
        let l = |k: &str| labels.get_str(k).filter(|v| !v.is_empty());
        peer.canonical_service = l(LABEL_CANONICAL_NAME).unwrap_or_default().to_string();
        peer.canonical_revision = l(LABEL_CANONICAL_REVISION).unwrap_or_default().to_string();
        peer.app = l(LABEL_K8S_NAME).or_else(|| l(LABEL_APP)).unwrap_or_default().to_string();
        peer.version = l(LABEL_K8S_VERSION).or_else(|| l(LABEL_VERSION)).unwrap_or_default().to_string();
    }
    peer
}

/// Istio's endpoint-metadata fallback (`filter_metadata.istio.workload` on the upstream host):
/// `workload;namespace;canonical_name;canonical_revision;cluster`.
pub fn from_endpoint_metadata(encoded: &str) -> Option<PeerMetadata> {
    let mut parts = encoded.split(';');
    let mut next = || parts.next().map(str::to_string);
    Some(PeerMetadata {
        workload: next()?,
        namespace: next()?,
        canonical_service: next()?,
        canonical_revision: next()?,
        cluster: next()?,
        ..PeerMetadata::default()
    })
}

pub(crate) fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map(|e| e + 1).unwrap_or(start);
    b.get(start..end).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// reviews-v2 in bookinfo, as the injector labels it (shared with the peer cache's tests).
    pub(crate) fn reviews_v2() -> Workload {
        let mut w = Workload::new("reviews-v2", "bookinfo");
        w.labels.insert("app".into(), "reviews".into());
        w.labels.insert("version".into(), "v2".into());
        w
    }

    #[test]
    fn local_values_follow_the_injector_defaults() {
        let l = LocalInfo::from_workload(&reviews_v2());
        assert_eq!(l.canonical_service, "reviews");
        assert_eq!(l.canonical_revision, "v2");
        assert_eq!(l.app, "reviews");
        assert_eq!(l.version, "v2");
        assert_eq!(l.cluster, "Kubernetes");
        assert_eq!(l.node_id, "sidecar~127.0.0.1~reviews-v2.bookinfo~bookinfo.svc.cluster.local");

        let bare = LocalInfo::from_workload(&Workload::new("job-1", "ns"));
        assert_eq!(bare.canonical_service, "job-1");
        assert_eq!(bare.canonical_revision, "latest");
        assert_eq!(bare.app, "");

        let mut w = Workload::new("x", "ns");
        w.labels.insert(LABEL_CANONICAL_NAME.into(), "canon".into());
        w.labels.insert("app".into(), "app".into());
        w.labels.insert(LABEL_K8S_VERSION.into(), "k8sv".into());
        w.mode = ProxyMode::Gateway;
        let l = LocalInfo::from_workload(&w);
        assert_eq!(l.canonical_service, "canon");
        assert_eq!(l.canonical_revision, "k8sv");
        assert!(l.node_id.starts_with("router~"));
    }

    #[test]
    fn header_round_trips_and_is_deterministic() {
        let l = LocalInfo::from_workload(&reviews_v2());
        let h1 = l.header_value();
        assert_eq!(h1, l.header_value());
        let peer = decode_peer(h1.as_bytes(), Some(l.node_id.as_bytes())).unwrap();
        assert_eq!(peer.workload, "reviews-v2");
        assert_eq!(peer.namespace, "bookinfo");
        assert_eq!(peer.app, "reviews");
        assert_eq!(peer.version, "v2");
        assert_eq!(peer.canonical_service, "reviews");
        assert_eq!(peer.canonical_revision, "v2");
        assert_eq!(peer.cluster, "Kubernetes");
        assert_eq!(peer.owner, "kubernetes://apis/apps/v1/namespaces/bookinfo/deployments/reviews-v2");
        assert_eq!(peer.id, l.node_id);
        // Unpadded input decodes too.
        let unpadded = h1.trim_end_matches('=');
        assert_eq!(decode_peer(unpadded.as_bytes(), None).map(|p| p.workload), Some("reviews-v2".into()));
    }

    #[test]
    fn reads_istio_struct_with_kubernetes_labels_first() {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), Value::string("old"));
        labels.fields.insert(LABEL_K8S_NAME.into(), Value::string("new"));
        labels.fields.insert("version".into(), Value::string("v1"));
        labels.fields.insert("number".into(), Value { kind: Some(crate::proto::value::Kind::NumberValue(1.0)) });
        let mut s = Struct::default();
        s.fields.insert("WORKLOAD_NAME".into(), Value::string("w"));
        s.fields.insert("LABELS".into(), Value::structure(labels));
        s.fields.insert("ISTIO_VERSION".into(), Value::string("1.22"));
        let p = from_struct(&s);
        assert_eq!(p.app, "new");
        assert_eq!(p.version, "v1");
        assert_eq!(p.labels.len(), 3, "non-string labels are dropped");
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(decode_peer(b"", None), None);
        assert_eq!(decode_peer(b"!!!not base64!!!", None), None);
        assert_eq!(decode_peer(b"aGVsbG8gd29ybGQ=", None), None, "base64 of text, not a Struct");
        assert_eq!(decode_peer(b"CgA=", None), None, "a Struct with no known key");
        let huge = vec![b'A'; MAX_METADATA_HEADER_BYTES + 1];
        assert_eq!(decode_peer(&huge, None), None);
        // A valid header with an oversized id keeps the metadata and drops the id.
        let h = LocalInfo::from_workload(&reviews_v2()).header_value();
        let id = vec![b'x'; MAX_ID_BYTES + 1];
        let p = decode_peer(h.as_bytes(), Some(&id)).unwrap();
        assert_eq!(p.id, "");
        // Arbitrary bytes never panic.
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="[(seed % 65) as usize]
                })
                .collect();
            let _ = decode_peer(&bytes, Some(&bytes));
        }
    }

    #[test]
    fn peer_labels_are_bounded() {
        let mut labels = Struct::default();
        for i in 0..MAX_PEER_LABELS + 10 {
            labels.fields.insert(format!("l{i:03}"), Value::string("v"));
        }
        // The Istio labels sort after `l…`, past the bound, and are still read.
        labels.fields.insert("version".into(), Value::string("v9"));
        labels.fields.insert(LABEL_CANONICAL_NAME.into(), Value::string("canon"));
        let mut s = Struct::default();
        s.fields.insert("WORKLOAD_NAME".into(), Value::string("w"));
        s.fields.insert("LABELS".into(), Value::structure(labels));
        let p = from_struct(&s);
        assert_eq!(p.labels.len(), MAX_PEER_LABELS);
        assert_eq!((p.version.as_str(), p.canonical_service.as_str()), ("v9", "canon"));
    }

    #[test]
    fn endpoint_metadata_fallback() {
        let p = from_endpoint_metadata("reviews-v1;bookinfo;reviews;v1;Kubernetes").unwrap();
        assert_eq!(p.workload, "reviews-v1");
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.canonical_service, "reviews");
        assert_eq!(p.canonical_revision, "v1");
        assert_eq!(p.cluster, "Kubernetes");
        assert!(from_endpoint_metadata("a;b").is_none());
    }

    #[test]
    fn peer_json_for_filter_state() {
        let p = decode_peer(LocalInfo::from_workload(&reviews_v2()).header_value().as_bytes(), None).unwrap();
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["workload"], "reviews-v2");
        assert_eq!(json["canonicalService"], "reviews");
        let back: PeerMetadata = wasmesh_handover::decode(&wasmesh_handover::encode(&p)).unwrap();
        assert_eq!(back, p);
    }
}
