//! security.istio.io: AuthorizationPolicy, RequestAuthentication, PeerAuthentication
//! (`security/v1beta1/*.proto`; the v1 CRDs alias these).

use crate::{PolicyTargetReference, WorkloadSelector};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `None` = no `rules` field; `Some(vec![])` = `rules: []`. Istio treats them alike
    /// (an ALLOW policy without rules matches nothing), but the difference is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Option<Rule>>>,
    #[serde(default)]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Vec<Condition>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

/// `from.source`. Each field is `None` when absent: Istio distinguishes "not set" (matches
/// anything) from a set list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_request_principals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_service_accounts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_trust_domains: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ip_blocks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_blocks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `to.operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ports: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_paths: Option<Vec<String>>,
}

/// `when` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_values: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// RequestAuthentication

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtRule {
    #[serde(default)]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Deprecated spelling still accepted by Istio's CRD.
    #[serde(default, rename = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri_snake: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_cookies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub space_delimited_claims: Vec<String>,
}

impl JwtRule {
    /// `jwksUri`, or its deprecated snake_case spelling.
    pub fn jwks_uri(&self) -> Option<&str> {
        self.jwks_uri.as_deref().or(self.jwks_uri_snake.as_deref())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

/// `PeerAuthentication.spec` (`security/v1beta1/peer_authentication.proto`). The semantics
/// (scope, inheritance, port-level overrides) live in `wasmesh_authz::peer_authentication`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `None` = no `mtls` field (the mode is inherited, like `mode: UNSET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Keyed by the workload (container) port. YAML keys may be integers (`8080:`) or strings
    /// (`"8080":`, what `kubectl get -o yaml` prints); both are accepted. `None` = no field,
    /// `Some(empty)` = `portLevelMtls: {}`, which Istio rejects.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "port_map::deserialize")]
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

impl PeerAuthentication {
    /// Istio treats a selector with no `matchLabels` like no selector: the policy is then
    /// namespace-wide (or mesh-wide in the root namespace).
    pub fn has_workload_selector(&self) -> bool {
        self.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
    }

    /// The declared mode, `Unset` when `mtls` or `mtls.mode` is absent.
    pub fn mode(&self) -> MtlsMode {
        self.mtls.map(|m| m.mode).unwrap_or_default()
    }
}

/// `PeerAuthentication.MutualTLS`. A YAML `null` (`8080:` with nothing after it) is `mode: UNSET`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (workload → namespace → mesh → PERMISSIVE).
    #[default]
    Unset,
    /// Plaintext only: the sidecar accepts no mTLS.
    Disable,
    /// Both mTLS and plaintext are accepted.
    Permissive,
    /// mTLS only: plaintext connections are refused.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

impl std::fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `portLevelMtls` keys: integers or decimal strings; values: a `MutualTls` or `null`.
mod port_map {
    use super::MutualTls;
    use serde::de::{self, Deserializer, MapAccess, Visitor};
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::fmt;

    struct Port(u32);

    impl<'de> Deserialize<'de> for Port {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Port;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a port number (1-65535) as the key")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                    u32::try_from(v).map(Port).map_err(|_| E::custom(format!("port {v} is not in 1-65535")))
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                    u32::try_from(v).map(Port).map_err(|_| E::custom(format!("port {v} is not in 1-65535")))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Port, E> {
                    match v.parse::<u32>() {
                        Ok(p) if !v.starts_with('+') => Ok(Port(p)),
                        _ => Err(E::custom(format!("{v:?} is not a port number (1-65535)"))),
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<u32, MutualTls>>, D::Error> {
        struct M;
        impl<'de> Visitor<'de> for M {
            type Value = Option<BTreeMap<u32, MutualTls>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from port number to {mode: ...}")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(Port(port)) = map.next_key::<Port>()? {
                    let value: Option<MutualTls> = map.next_value()?;
                    if out.insert(port, value.unwrap_or_default()).is_some() {
                        return Err(de::Error::custom(format!("port {port} is listed twice")));
                    }
                }
                Ok(Some(out))
            }
        }
        d.deserialize_any(M)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod peer_authentication_tests {
    use super::*;

    fn pa(yaml: &str) -> Result<PeerAuthentication, String> {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: foo}}\nspec:\n{yaml}"
        );
        let r = crate::load_str(&text, "pa.yaml").map_err(|e| e.to_string())?;
        match &r[0].spec {
            crate::Spec::PeerAuthentication(p) => Ok(p.clone()),
            _ => Err("not a PeerAuthentication".into()),
        }
    }

    #[test]
    fn port_keys_may_be_integers_or_strings_and_values_null() {
        let p = pa("  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    \"9090\": {mode: STRICT}\n    7070:\n").unwrap();
        let m = p.port_level_mtls.clone().unwrap();
        assert_eq!(m[&8080].mode, MtlsMode::Disable);
        assert_eq!(m[&9090].mode, MtlsMode::Strict);
        assert_eq!(m[&7070].mode, MtlsMode::Unset);
        assert!(p.has_workload_selector());
        assert_eq!(p.mode(), MtlsMode::Unset);
    }

    #[test]
    fn absent_and_empty_port_maps_differ() {
        assert_eq!(pa("  mtls: {mode: STRICT}\n").unwrap().port_level_mtls, None);
        assert_eq!(pa("  portLevelMtls: {}\n").unwrap().port_level_mtls, Some(BTreeMap::new()));
    }

    #[test]
    fn bad_keys_and_modes_are_errors_naming_the_field() {
        let e = pa("  portLevelMtls:\n    http: {mode: STRICT}\n").unwrap_err();
        assert!(e.contains("spec.portLevelMtls") && e.contains("\"http\" is not a port number"), "{e}");
        let e = pa("  portLevelMtls:\n    -1: {mode: STRICT}\n").unwrap_err();
        assert!(e.contains("port -1"), "{e}");
        let e = pa("  mtls: {mode: strict}\n").unwrap_err();
        assert!(e.contains("spec.mtls.mode") && e.contains("STRICT"), "{e}");
        let e = pa("  mtls: {mode: STRICT, disabled: true}\n").unwrap_err();
        assert!(e.contains("unknown field `disabled`"), "{e}");
    }

    #[test]
    fn json_round_trip_keeps_port_keys() {
        let r = crate::load_str(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\nspec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n",
            "pa.yaml",
        )
        .unwrap();
        let mut plain = r[0].clone();
        plain.location = Default::default();
        let json = serde_json::to_vec(&[plain]).unwrap();
        let back = crate::resources_from_json(&json).unwrap();
        assert_eq!(back[0].spec, r[0].spec);
    }

    #[test]
    fn empty_selector_is_not_a_workload_selector() {
        assert!(!pa("  selector: {}\n").unwrap().has_workload_selector());
        assert!(!pa("  selector: {matchLabels: {}}\n").unwrap().has_workload_selector());
        assert!(!pa("  mtls: {}\n").unwrap().has_workload_selector());
    }
}
