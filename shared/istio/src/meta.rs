use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Kubernetes object metadata, as much of it as Istio semantics use.
///
/// Fields Kubernetes adds on read (`uid`, `resourceVersion`, `managedFields`, ...) are accepted
/// and dropped, so `kubectl get -o yaml` output can be fed in as it is; anything else unknown is
/// an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    uid: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    resource_version: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    generation: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    creation_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    managed_fields: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    finalizers: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    owner_references: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    self_link: Option<serde_json::Value>,
}

impl ObjectMeta {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        ObjectMeta { name: name.into(), namespace: Some(namespace.into()), ..Default::default() }
    }
}

/// `selector: {matchLabels: {...}}` (istio.type.v1beta1.WorkloadSelector).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Istio's rule: every `matchLabels` entry must be among the workload's labels (an empty
    /// selector selects every workload).
    pub fn selects(&self, workload_labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| workload_labels.get(k) == Some(v))
    }
}

/// `targetRef` / `targetRefs[]` (istio.type.v1beta1.PolicyTargetReference).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}
