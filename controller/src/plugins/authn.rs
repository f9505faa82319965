//! The authn filter (`wasmesh.authn`): RequestAuthentication on sidecar inbound and gateway
//! listeners (Istio adds `jwt_authn` there, never on sidecar outbound), placed before authz as in
//! Istio's HTTP filter order, plus one cluster per JWKS server.
//!
//! JWKS clusters: `jwksUri` (or, without `jwks`/`jwksUri`, the issuer's OpenID discovery
//! document) is fetched by the filter with `dispatch_http_call` through a dedicated cluster
//! named `wasmesh-jwks|<http|https>|<host>|<port>` ([`wasmesh_authn::jwks_cluster_name`]):
//! `STATIC` for an IP address, `STRICT_DNS` for a name, TLS with SNI and the system CA bundle for
//! `https`. Dedicated clusters keep the fetch independent of mesh routing and TLS settings for
//! the same host (Istio's `outbound|<port>||<host>` would carry the mesh's DestinationRule).

use super::{resources_json, Contribution, Direction, ListenerContext, WasmFilter};
use serde_json::{json, Value};
use wasmesh_authn::config::selects;
use wasmesh_authn::{AuthnConfig, JwksEndpoint};
use wasmesh_istio::{Error, ProxyMode, Resource};

pub const FILTER_NAME: &str = "wasmesh.authn";
/// CA bundle for `https` JWKS servers (Debian/Ubuntu path; Istio's proxy image uses the same).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The authn filter for one listener, and its JWKS clusters. Nothing when no
/// RequestAuthentication with rules selects this proxy (Istio adds no `jwt_authn` then).
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    if ctx.direction == Direction::Outbound {
        return Ok(Contribution::default());
    }
    let mut workload = ctx.workload.clone();
    if let Direction::Gateway { .. } = ctx.direction {
        workload.mode = ProxyMode::Gateway;
    }
    let selected: Vec<(&Resource, usize)> = ctx
        .resources
        .request_authentications()
        .filter(|(res, ra)| selects(&workload, res, ra))
        .map(|(res, ra)| (res, ra.jwt_rules.len()))
        .collect();
    if selected.iter().all(|(_, rules)| *rules == 0) {
        return Ok(Contribution::default());
    }
    let mut cfg = AuthnConfig::new(workload.clone());
    cfg.resources = resources_json(selected.iter().map(|(res, _)| *res));
    cfg.blocked_cidrs_in_jwks_uris = crate::validate::blocked_cidrs_in_jwks_uris().map_err(|e| vec![e])?.blocks();
    let config = serde_json::to_value(&cfg).map_err(|e| vec![Error::new(format!("authn configuration: {e}"))])?;
    // Compile exactly what the filter will compile, so a bad policy fails here, not in Envoy.
    let bytes = serde_json::to_vec(&config).unwrap_or_default();
    AuthnConfig::compile_json(&bytes).map_err(|e| e.0)?;
    let clusters = wasmesh_authn::jwks_endpoints(&workload, ctx.resources).iter().map(jwks_cluster).collect();
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: false }],
        clusters,
        ..Contribution::default()
    })
}

/// The filter-state keys authn writes (`identityFilterState`).
/// (`wasmesh_handover::AUTHN_IDENTITY` and `AUTHN_EVALUATED`.)
const HANDOVER_KEYS: [&str; 2] = ["wasmesh.authn.identity", "wasmesh.authn.evaluated"];
/// The root ids that read the identity from filter state without naming it in their configuration.
const IDENTITY_READERS: [&str; 2] = [super::authz::FILTER_NAME, super::authz::CUSTOM_FILTER_NAME];

/// The root ids a listener filter runs: its phases for a `wasmesh.chain`, else its own name.
fn root_ids(f: &WasmFilter) -> Vec<&str> {
    if f.name != crate::layout::CHAIN_ROOT_ID {
        return vec![f.name.as_str()];
    }
    let phases = f.config.get("phases").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    phases.iter().filter_map(|p| p.get("rootId").and_then(Value::as_str)).collect()
}

/// Whether a filter's configuration, authn's own left out (its resources are policies), names a
/// key authn writes.
fn names_handover(f: &WasmFilter) -> bool {
    if f.name == FILTER_NAME {
        return false;
    }
    let mut config = f.config.clone();
    if f.name == crate::layout::CHAIN_ROOT_ID {
        let phases = config.get_mut("phases").and_then(Value::as_array_mut).map(Vec::as_mut_slice).unwrap_or_default();
        for p in phases.iter_mut().filter(|p| p.get("rootId").and_then(Value::as_str) == Some(FILTER_NAME)) {
            if let Some(c) = p.get_mut("configuration") {
                *c = Value::Null;
            }
        }
    }
    let text = config.to_string();
    HANDOVER_KEYS.iter().any(|k| text.contains(k))
}

/// The authn configurations a listener filter carries (its own, or its authn phases').
fn authn_configs(f: &mut WasmFilter) -> Vec<&mut Value> {
    if f.name == FILTER_NAME {
        return vec![&mut f.config];
    }
    if f.name != crate::layout::CHAIN_ROOT_ID {
        return Vec::new();
    }
    let phases = f.config.get_mut("phases").and_then(Value::as_array_mut).map(Vec::as_mut_slice).unwrap_or_default();
    phases
        .iter_mut()
        .filter(|p| p.get("rootId").and_then(Value::as_str) == Some(FILTER_NAME))
        .filter_map(|p| p.get_mut("configuration"))
        .collect()
}

/// Turns authn's `identityFilterState` off on a listener where nothing outside authn's own
/// filter reads the identity: no authz filter other than phases of the same `wasmesh.chain` (they
/// get it in memory), and no configuration naming `wasmesh.authn.identity` or
/// `wasmesh.authn.evaluated` (the access-log phase's formats are the readers `wasmeshctl envoy`
/// writes). Writing it costs a hostcall and ~5k instructions per request. `filters` are the
/// listener's HTTP filters as laid out (after [`crate::layout::Layout::assemble`]). Only for a
/// bootstrap `wasmeshctl envoy` writes whole: under Istio (`generate`) a reader may come from
/// places wasmeshctl does not see, so the write stays on there.
pub fn identity_filter_state_when_read(filters: &mut [WasmFilter]) {
    let with_authn: Vec<usize> =
        filters.iter().enumerate().filter(|(_, f)| root_ids(f).contains(&FILTER_NAME)).map(|(i, _)| i).collect();
    if with_authn.len() != 1 {
        // None, or authn in several filters (never written so): leave it as it is.
        return;
    }
    let own = with_authn[0];
    let read_elsewhere = filters
        .iter()
        .enumerate()
        .any(|(i, f)| names_handover(f) || (i != own && root_ids(f).iter().any(|r| IDENTITY_READERS.contains(r))));
    if read_elsewhere {
        return;
    }
    if let Some(f) = filters.get_mut(own) {
        for c in authn_configs(f) {
            if let Some(o) = c.as_object_mut() {
                o.insert("identityFilterState".into(), Value::Bool(false));
            }
        }
    }
}

/// The Envoy cluster for one JWKS server.
pub fn jwks_cluster(ep: &JwksEndpoint) -> Value {
    let is_ip = ep.host.parse::<std::net::IpAddr>().is_ok();
    let mut cluster = json!({
        "name": ep.cluster,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "5s",
        "dns_lookup_family": "V4_PREFERRED",
        "load_assignment": {
            "cluster_name": ep.cluster,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": ep.host, "port_value": ep.port}}}}]}],
        },
    });
    if ep.tls {
        let san = if is_ip {
            json!({"san_type": "IP_ADDRESS", "matcher": {"exact": ep.host}})
        } else {
            json!({"san_type": "DNS", "matcher": {"exact": ep.host}})
        };
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": {"filename": SYSTEM_CA_BUNDLE},
                    "match_typed_subject_alt_names": [san],
                }
            },
        });
        if !is_ip {
            tls["sni"] = json!(ep.host);
        }
        cluster["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": tls});
    }
    cluster
}

/// The deliberate differences from Envoy's jwt_authn (README "JWT: differences from jwt_authn"),
/// each an RFC MUST on wasmesh's side: one note per RequestAuthentication with rules, printed by
/// `wasmeshctl validate`.
pub fn deliberate_difference_notes(resources: &wasmesh_istio::Resources) -> Vec<String> {
    resources
        .request_authentications()
        .filter(|(_, ra)| !ra.jwt_rules.is_empty())
        .map(|(res, _)| {
            format!(
                "{}: unlike Envoy's jwt_authn, wasmesh answers 401 to an ES*/EdDSA/HS* token with a non-empty `crit` \
                 (RFC 7515 §4.1.11) or `exp: 0` (RFC 7519 §4.1.4), and to an ECDSA signature that is not exactly r||s \
                 of the key's curve (RFC 7518 §3.4)",
                res.display_name()
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::plugins::ListenerContext;
    use wasmesh_istio::{Resources, Workload};

    fn wf(name: &str, config: Value) -> WasmFilter {
        WasmFilter { name: name.into(), config, fail_open: false }
    }

    /// `identityFilterState` of every authn configuration in `filters` (None: not set).
    fn switches(filters: &[WasmFilter]) -> Vec<Option<bool>> {
        let mut out = Vec::new();
        for f in filters {
            if f.name == FILTER_NAME {
                out.push(f.config.get("identityFilterState").and_then(Value::as_bool));
            }
            for p in f.config.get("phases").and_then(Value::as_array).into_iter().flatten() {
                if p["rootId"] == FILTER_NAME {
                    out.push(p["configuration"].get("identityFilterState").and_then(Value::as_bool));
                }
            }
        }
        out
    }

    fn laid_out(layout: Layout, filters: Vec<WasmFilter>) -> Vec<WasmFilter> {
        let mut out = layout.assemble(filters);
        identity_filter_state_when_read(&mut out);
        out
    }

    #[test]
    fn the_identity_stays_in_memory_only_where_nothing_outside_the_chain_reads_it() {
        let authn = || wf(FILTER_NAME, json!({"resources": []}));
        let authz = || wf(crate::plugins::authz::FILTER_NAME, json!({"stage": "ALLOW", "resources": []}));
        let stats = || wf("wasmesh.stats", json!({"direction": "inbound"}));
        // One pass, authz a phase of the same chain: off.
        let out = laid_out(Layout::OnePass, vec![stats(), authn(), authz()]);
        assert_eq!(switches(&out), [Some(false)]);
        // No authz at all and no reader: off too.
        assert_eq!(switches(&laid_out(Layout::OnePass, vec![stats(), authn()])), [Some(false)]);
        assert_eq!(switches(&laid_out(Layout::PerFilter, vec![authn()])), [Some(false)]);
        // A separate authz filter reads Envoy's filter state: on.
        assert_eq!(switches(&laid_out(Layout::PerFilter, vec![stats(), authn(), authz()])), [None]);
        let custom = wf(crate::plugins::authz::CUSTOM_FILTER_NAME, json!({"stage": "CUSTOM"}));
        let split = vec![authn(), wf("wasmesh.stats.tcp", json!({})), custom];
        assert_eq!(switches(&laid_out(Layout::OnePass, split)), [None], "authz.custom in another filter");
        // A configuration naming the key (an access-log format): on, in any layout.
        let log = wf("wasmesh.access_log", json!({"format": "%FILTER_STATE(wasm.wasmesh.authn.identity:PLAIN)%"}));
        assert_eq!(switches(&laid_out(Layout::OnePass, vec![authn(), authz(), log])), [None]);
        let log = wf("envoy.access_log", json!({"format": "%FILTER_STATE(wasm.wasmesh.authn.evaluated:PLAIN)%"}));
        assert_eq!(switches(&laid_out(Layout::OnePass, vec![authn(), authz(), log])), [None]);
        // authn's own policies naming the key do not count.
        let named = wf(FILTER_NAME, json!({"resources": [{"metadata": {"name": "wasmesh.authn.identity"}}]}));
        assert_eq!(switches(&laid_out(Layout::OnePass, vec![named, authz()])), [Some(false)]);
    }

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap() }
    }

    const RA: &str = r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  jwtRules:
  - issuer: https://idp.example.com
    jwksUri: https://idp.example.com/keys
  - issuer: local
    jwksUri: http://127.0.0.1:8081/jwks.json
"#;

    fn ctx<'a>(
        wl: &'a Workload,
        res: &'a Resources,
        direction: Direction,
        mesh: &'a crate::mesh::MeshConfig,
    ) -> ListenerContext<'a> {
        ListenerContext { workload: wl, resources: res, direction, bind_port: 8000, mesh }
    }

    #[test]
    fn inbound_and_gateway_get_the_filter_and_jwks_clusters() {
        let mut wl = Workload::new("httpbin-v1", "foo");
        wl.labels.insert("app".into(), "httpbin".into());
        let res = resources(RA);
        let mesh = crate::mesh::MeshConfig::default();
        let c = contribute(&ctx(&wl, &res, Direction::Inbound, &mesh)).unwrap();
        assert_eq!(c.http_filters.len(), 1);
        assert_eq!(c.http_filters[0].name, "wasmesh.authn");
        assert!(!c.http_filters[0].fail_open);
        let names: Vec<&str> = c.clusters.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["wasmesh-jwks|https|idp.example.com|443", "wasmesh-jwks|http|127.0.0.1|8081"]);
        assert_eq!(c.clusters[0]["type"], "STRICT_DNS");
        assert_eq!(c.clusters[0]["transport_socket"]["typed_config"]["sni"], "idp.example.com");
        assert_eq!(c.clusters[1]["type"], "STATIC");
        assert!(c.clusters[1].get("transport_socket").is_none());
        let g = contribute(&ctx(&wl, &res, Direction::Gateway { port: 80 }, &mesh)).unwrap();
        assert_eq!(g.http_filters[0].config["workload"]["mode"], "gateway");
        assert!(contribute(&ctx(&wl, &res, Direction::Outbound, &mesh)).unwrap().http_filters.is_empty());
    }

    #[test]
    fn nothing_when_no_policy_selects_the_workload() {
        let wl = Workload::new("other", "foo");
        let res = resources(RA);
        let mesh = crate::mesh::MeshConfig::default();
        let c = contribute(&ctx(&wl, &res, Direction::Inbound, &mesh)).unwrap();
        assert!(c.http_filters.is_empty() && c.clusters.is_empty());
    }

    #[test]
    fn invalid_policies_are_errors_naming_the_resource() {
        let mut wl = Workload::new("httpbin-v1", "foo");
        wl.labels.insert("app".into(), "httpbin".into());
        let res = resources(&RA.replace("jwksUri: https://idp.example.com/keys", "jwksUri: ftp://idp/keys"));
        let mesh = crate::mesh::MeshConfig::default();
        let errs = contribute(&ctx(&wl, &res, Direction::Inbound, &mesh)).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("RequestAuthentication foo/jwt") && t.contains("jwksUri")), "{text:?}");
    }
}
