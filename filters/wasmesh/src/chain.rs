//! `wasmesh.chain`: the one-pass layout. One Envoy HTTP filter runs several wasmesh filters as
//! phases of one HTTP context (see [`wasmesh_proxy::phase`]): one set of host→guest callbacks
//! per request instead of one per filter, the request headers read once, each property read
//! once, the verified identity handed from authn to authz in memory.
//!
//! Its configuration lists the filters it replaces, in the order they would run as separate
//! filters, each with the root id and the configuration it would have had:
//!
//! ```json
//! {"phases": [
//!   {"rootId": "wasmesh.stats", "configuration": {"direction": "inbound"}},
//!   {"rootId": "wasmesh.authn", "configuration": {"resources": []}},
//!   {"rootId": "wasmesh.authz", "configuration": {"resources": []}}
//! ]}
//! ```
//!
//! A configuration that one of its phases refuses refuses the whole filter (Envoy then does not
//! install it, and `FAIL_CLOSE` denies), naming the phase.

use crate::{filter_for, Filter};
use proxy_wasm::traits::RootContext;
use std::rc::Rc;
use wasmesh_proxy::phase::{Build, ChainRoot, Phase, Resumer};

/// The root id of the one-pass filter.
pub const ROOT_ID: &str = "wasmesh.chain";

/// Most phases in one chain (every HTTP role of every filter fits: CUSTOM, authn, authz, router,
/// stats).
pub const MAX_PHASES: usize = 8;

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh chain", build))
}

/// The builder of an HTTP filter's phase, by its root id.
fn phase_builder(root_id: &str) -> Result<Build, String> {
    Ok(match phase_filter(root_id)? {
        Filter::Router => crate::router::build,
        Filter::Authz => crate::authz::build,
        Filter::Authn => crate::authn::build,
        Filter::Stats => crate::stats::build,
        Filter::Oidc => crate::oidc::build,
        Filter::Tracing => crate::tracing::build,
        Filter::AccessLog => crate::access_log::build,
        Filter::Chain => return Err("a chain cannot be a phase of a chain".into()),
    })
}

/// The filter of a phase's root id: an HTTP filter of this module.
fn phase_filter(root_id: &str) -> Result<Filter, String> {
    match filter_for(root_id) {
        Some(f @ (Filter::Router | Filter::Authn | Filter::Oidc | Filter::Tracing | Filter::AccessLog)) => Ok(f),
        Some(Filter::Authz) if root_id != "wasmesh.authz.tcp" && root_id != "wasmesh.authz.peer_address" => {
            Ok(Filter::Authz)
        }
        Some(Filter::Stats) if root_id != "wasmesh.stats.tcp" => Ok(Filter::Stats),
        Some(Filter::Chain) => Err("a chain cannot be a phase of a chain".into()),
        _ => Err(format!(
            "{root_id:?} is not an HTTP filter of this module; expected one of wasmesh.stats, \
             wasmesh.tracing, wasmesh.authz.custom, wasmesh.oidc, wasmesh.authn, wasmesh.authz, wasmesh.router, \
             wasmesh.access_log"
        )),
    }
}

/// The phases of a `wasmesh.chain` configuration.
pub fn build(config: &[u8], resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let mut phases = Vec::new();
    for (i, (root_id, bytes)) in parse(config)?.into_iter().enumerate() {
        let build = phase_builder(&root_id).map_err(|e| format!("phases[{i}].rootId: {e}"))?;
        let built = build(&bytes, resumer).map_err(|e| format!("phases[{i}] ({root_id}): {e}"))?;
        for p in built {
            if p.is_network() {
                return Err(format!("phases[{i}] ({root_id}): its configuration makes it a network filter"));
            }
            phases.push(p);
        }
    }
    wasmesh_proxy::log_info(&format!(
        "wasmesh chain: configured phases {}",
        phases.iter().map(|p| p.name()).collect::<Vec<_>>().join(" → ")
    ));
    Ok(phases)
}

/// A `wasmesh.chain` configuration: each phase's root id and configuration bytes, in order.
pub fn parse(config: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| format!("the configuration is not JSON: {e}"))?;
    let Some(obj) = value.as_object() else {
        return Err("expected an object {\"phases\": [...]}".into());
    };
    if let Some(other) = obj.keys().find(|k| *k != "phases") {
        return Err(format!("unknown field {other:?}; expected only \"phases\""));
    }
    let Some(entries) = obj.get("phases").and_then(|p| p.as_array()) else {
        return Err("phases: expected a list of {\"rootId\", \"configuration\"}".into());
    };
    if entries.is_empty() || entries.len() > MAX_PHASES {
        return Err(format!("phases: {} entries; expected 1 to {MAX_PHASES}", entries.len()));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let (root_id, configuration) = phase_entry(entry).map_err(|e| format!("phases[{i}]: {e}"))?;
        phase_filter(root_id).map_err(|e| format!("phases[{i}].rootId: {e}"))?;
        let bytes = serde_json::to_vec(configuration).map_err(|e| format!("phases[{i}].configuration: {e}"))?;
        out.push((root_id.to_string(), bytes));
    }
    Ok(out)
}

fn phase_entry(entry: &serde_json::Value) -> Result<(&str, &serde_json::Value), String> {
    let Some(obj) = entry.as_object() else {
        return Err("expected {\"rootId\", \"configuration\"}".into());
    };
    if let Some(other) = obj.keys().find(|k| *k != "rootId" && *k != "configuration") {
        return Err(format!("unknown field {other:?}; expected rootId and configuration"));
    }
    let root_id = obj.get("rootId").and_then(|v| v.as_str()).ok_or("rootId: expected a string")?;
    let configuration = obj.get("configuration").ok_or("configuration: missing")?;
    Ok((root_id, configuration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_filters_are_phases() {
        for id in [
            "wasmesh.router",
            "wasmesh.authz",
            "wasmesh.authz.custom",
            "wasmesh.authn",
            "wasmesh.stats",
            "wasmesh.oidc",
            "wasmesh.tracing",
            "wasmesh.access_log",
        ] {
            assert!(phase_filter(id).is_ok(), "{id}");
        }
        for id in ["wasmesh.chain", "wasmesh.stats.tcp", "wasmesh.authz.tcp", "wasmesh.authz.peer_address", "x"] {
            assert!(phase_filter(id).is_err(), "{id}");
        }
    }

    #[test]
    fn phases_keep_their_order_and_configuration() {
        let config = r#"{"phases": [{"rootId": "wasmesh.stats", "configuration": {"a": 1}},
            {"rootId": "wasmesh.authz", "configuration": {"b": [2]}}]}"#;
        let parsed = parse(config.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("wasmesh.stats".to_string(), br#"{"a":1}"#.to_vec()),
                ("wasmesh.authz".to_string(), br#"{"b":[2]}"#.to_vec())
            ]
        );
    }

    #[test]
    fn a_malformed_chain_is_refused_naming_the_place() {
        let cases: [(&str, &str); 5] = [
            ("[]", "expected an object"),
            ("{\"phases\": []}", "1 to 8"),
            ("{\"phase\": []}", "unknown field \"phase\""),
            ("{\"phases\": [{\"rootId\": \"wasmesh.router\"}]}", "phases[0]: configuration: missing"),
            ("{\"phases\": [{\"rootId\": \"wasmesh.stats.tcp\", \"configuration\": {}}]}", "phases[0].rootId"),
        ];
        for (config, want) in cases {
            let err = parse(config.as_bytes()).err().unwrap_or_default();
            assert!(err.contains(want), "{config}: {err}");
        }
    }
}
