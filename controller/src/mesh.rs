//! The part of Istio's MeshConfig that wasmesh reads (`--mesh-config FILE`, Istio field names).

use serde::{Deserialize, Serialize};
use wasmesh_istio::Error;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domain_aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_normalization: Option<PathNormalization>,
    /// Providers for CUSTOM authorization, tracing, access logs (Istio's `extensionProviders`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension_providers: Vec<serde_json::Value>,
    /// Istio `meshConfig.defaultProviders` (`tracing` is read: the provider when no Telemetry names one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_providers: Option<serde_json::Value>,
    /// Where sidecars send requests for hosts the mesh does not know (`ALLOW_ANY`, Istio's
    /// default: `PassthroughCluster`; `REGISTRY_ONLY`: 502 from `BlackHoleCluster`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<wasmesh_router::OutboundTrafficPolicy>,
    /// Istio `meshConfig.defaultConfig` (ProxyConfig); `gatewayTopology.numTrustedProxies` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_config: Option<ProxyConfig>,
    /// Istio `accessLogFile`: every request logged there (`/dev/stdout`: the proxy's output)
    /// when no Telemetry configures access logging (plugins::accesslog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_file: Option<String>,
    /// Istio `accessLogEncoding`: `TEXT` (default) or `JSON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_encoding: Option<String>,
    /// Istio `accessLogFormat`: Envoy command operators (TEXT) or a JSON object of fields (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log_format: Option<String>,
    /// Istio `disableEnvoyListenerLog`: no listener-level access log (the log of connections
    /// that match no filter chain, response flag `NR`; plugins::accesslog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_envoy_listener_log: Option<bool>,
}

impl MeshConfig {
    /// `extensionProviders` as the authz filter's configuration carries them: every entry keeps its
    /// place and name (the filter's messages say `extensionProviders[i]`, and names must stay
    /// unique), but a `wasmeshOidc` login entry is reduced to its name, so its client secret and
    /// cookie keys are written only into the oidc filter's configuration.
    pub fn authz_extension_providers(&self) -> Vec<serde_json::Value> {
        self.extension_providers
            .iter()
            .map(|p| match (p.get("wasmeshOidc"), p.get("name")) {
                (Some(_), Some(name)) => serde_json::json!({ "name": name }),
                (Some(_), None) => serde_json::json!({}),
                _ => p.clone(),
            })
            .collect()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathNormalization {
    #[serde(default)]
    pub normalization: Normalization,
}

/// meshConfig.pathNormalization.normalization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Normalization {
    #[default]
    Default,
    None,
    Base,
    MergeSlashes,
    DecodeAndMergeSlashes,
}

impl Normalization {
    /// HCM settings Istio writes for each mode: (normalize_path, merge_slashes,
    /// path_with_escaped_slashes_action).
    pub fn hcm(self) -> (bool, bool, &'static str) {
        match self {
            Normalization::None => (false, false, "KEEP_UNCHANGED"),
            Normalization::Default | Normalization::Base => (true, false, "KEEP_UNCHANGED"),
            Normalization::MergeSlashes => (true, true, "KEEP_UNCHANGED"),
            Normalization::DecodeAndMergeSlashes => (true, true, "UNESCAPE_AND_FORWARD"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_topology: Option<GatewayTopology>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayTopology {
    #[serde(default)]
    pub num_trusted_proxies: u32,
}

impl MeshConfig {
    pub fn load(text: &str, file: &str) -> Result<MeshConfig, Error> {
        // Accept either the MeshConfig itself or Istio's `meshConfig:` wrapper (IstioOperator style).
        let value: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| Error::new(format!("{file}: not valid YAML: {e}")))?;
        let value = match value.get("meshConfig") {
            Some(inner) => inner.clone(),
            None => value,
        };
        if value.is_null() {
            return Ok(MeshConfig::default());
        }
        serde_path_to_error_free(value).map_err(|e| Error::new(format!("{file}: meshConfig: {e}")))
    }

    pub fn num_trusted_proxies(&self) -> u32 {
        self.default_config
            .as_ref()
            .and_then(|d| d.gateway_topology.as_ref())
            .map(|g| g.num_trusted_proxies)
            .unwrap_or(0)
    }

    pub fn normalization(&self) -> Normalization {
        self.path_normalization.as_ref().map(|p| p.normalization).unwrap_or_default()
    }
}

fn serde_path_to_error_free(value: yaml_serde::Value) -> Result<MeshConfig, String> {
    yaml_serde::from_value(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mesh_config_and_wrapper() {
        let m = MeshConfig::load(
            "pathNormalization: {normalization: MERGE_SLASHES}\nrootNamespace: istio-system\n",
            "m.yaml",
        )
        .unwrap();
        assert_eq!(m.normalization(), Normalization::MergeSlashes);
        let m = MeshConfig::load("meshConfig:\n  defaultConfig: {gatewayTopology: {numTrustedProxies: 2}}\n", "m.yaml")
            .unwrap();
        assert_eq!(m.num_trusted_proxies(), 2);
        let e = MeshConfig::load("pathNormalisation: {}\n", "m.yaml").unwrap_err();
        assert!(e.to_string().contains("pathNormalisation"), "{e}");
    }

    #[test]
    fn the_authz_filter_never_receives_a_login_entry_s_secrets() {
        let m = MeshConfig::load(
            "extensionProviders:\n- {name: ext, envoyExtAuthzHttp: {service: a.b.svc.cluster.local, port: 80}}\n\
             - {name: login, wasmeshOidc: {clientSecret: s3cret, cookieKeys: [k3y]}}\n",
            "m.yaml",
        )
        .unwrap();
        let authz = m.authz_extension_providers();
        assert_eq!(authz.len(), 2, "every entry keeps its index");
        assert_eq!(authz[0], m.extension_providers[0]);
        assert_eq!(authz[1], serde_json::json!({"name": "login"}));
        let text = serde_json::to_string(&authz).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
    }

    #[test]
    fn normalization_modes_map_to_istio_hcm_settings() {
        assert_eq!(Normalization::Default.hcm(), (true, false, "KEEP_UNCHANGED"));
        assert_eq!(Normalization::None.hcm(), (false, false, "KEEP_UNCHANGED"));
        assert_eq!(Normalization::DecodeAndMergeSlashes.hcm(), (true, true, "UNESCAPE_AND_FORWARD"));
    }
}
