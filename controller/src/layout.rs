//! How a listener's wasmesh HTTP filters are laid out in Envoy: one Envoy filter per wasmesh
//! filter (`per-filter`), or all of them as phases of one filter, `wasmesh.chain` (`one-pass`,
//! the default).
//!
//! One pass costs one set of host→guest callbacks per request instead of one per filter, reads
//! the request headers once and hands the verified identity from authn to authz in memory (see
//! `filters/wasmesh/src/chain.rs`). The chain is assembled only from the filters the plugins
//! already wrote for the listener, in their order and with their configurations: a chain holds
//! nothing that the same filters would not have been configured with one by one, so a phase never
//! sees a configuration `wasmeshctl` would not have written for it alone. One setting follows
//! from the layout afterwards: authn's `identityFilterState` is off where the chain's own authz
//! phase is the only reader (`plugins::authn::identity_filter_state_when_read`).
//!
//! Network (TCP) filters are not phases and stay as they are. Istio's `WasmPlugin` manifests
//! (`wasmeshctl generate`) keep one plugin per filter: Istio places each plugin by its `phase`
//! (AUTHN, AUTHZ, STATS), which needs separate filters.

use crate::plugins::WasmFilter;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The root id (and Envoy filter name) of the one-pass filter.
pub const CHAIN_ROOT_ID: &str = "wasmesh.chain";

/// Most phases one chain takes (the module refuses more; `MAX_PHASES` in
/// `filters/wasmesh/src/chain.rs`).
pub const MAX_PHASES: usize = 8;

/// The root ids the module accepts as phases of a chain: its HTTP filters. Anything else (a
/// network filter's root id) is never put in a chain.
pub const PHASE_ROOT_IDS: [&str; 8] = [
    "wasmesh.stats",
    "wasmesh.tracing",
    "wasmesh.access_log",
    "wasmesh.oidc",
    "wasmesh.authz.custom",
    "wasmesh.authn",
    "wasmesh.authz",
    "wasmesh.router",
];

/// `wasmeshctl envoy --layout`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// The wasmesh HTTP filters of a listener run as phases of one filter, `wasmesh.chain`.
    #[default]
    OnePass,
    /// One Envoy HTTP filter per wasmesh filter, each a chain of one phase, handing over through
    /// filter state (what Istio's `WasmPlugin` phases give).
    PerFilter,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::OnePass => "one-pass",
            Layout::PerFilter => "per-filter",
        }
    }

    pub fn parse(text: &str) -> Result<Layout, String> {
        match text {
            "one-pass" => Ok(Layout::OnePass),
            "per-filter" => Ok(Layout::PerFilter),
            other => Err(format!("layout {other:?}: expected one-pass or per-filter")),
        }
    }

    /// The HTTP filters of one listener in this layout: per-filter, `filters` unchanged;
    /// one-pass, every run of consecutive phase filters ([`PHASE_ROOT_IDS`]) of two or more
    /// becomes one [`chain`] (a lone filter stays as it is).
    pub fn assemble(self, filters: Vec<WasmFilter>) -> Vec<WasmFilter> {
        if self == Layout::PerFilter {
            return filters;
        }
        let mut out = Vec::with_capacity(filters.len());
        let mut run: Vec<WasmFilter> = Vec::new();
        for f in filters {
            if PHASE_ROOT_IDS.contains(&f.name.as_str()) && run.len() < MAX_PHASES {
                run.push(f);
                continue;
            }
            flush(&mut run, &mut out);
            if PHASE_ROOT_IDS.contains(&f.name.as_str()) {
                run.push(f);
            } else {
                out.push(f);
            }
        }
        flush(&mut run, &mut out);
        out
    }
}

fn flush(run: &mut Vec<WasmFilter>, out: &mut Vec<WasmFilter>) {
    match run.len() {
        0 => {}
        1 => out.append(run),
        _ => {
            out.push(chain(run));
            run.clear();
        }
    }
}

/// The configuration of `wasmesh.chain`: the filters it replaces, in the order they would run
/// as separate filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// The phases, in request order (1 to 8): each HTTP filter of the listener with the root id and
    /// configuration it has in the per-filter layout. A configuration one phase refuses refuses
    /// the whole filter, naming the phase (`FAIL_RELOAD`: requests are refused, not let through).
    pub phases: Vec<ChainPhase>,
}

/// One phase of `wasmesh.chain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainPhase {
    /// The root id of the filter this phase runs: `wasmesh.stats`, `wasmesh.authz.custom`,
    /// `wasmesh.authn`, `wasmesh.authz` or `wasmesh.router`.
    #[serde(rename = "rootId")]
    pub root_id: String,
    /// That filter's configuration, as a JSON object (not a string), as documented for the filter.
    pub configuration: Value,
}

/// The one-pass filter running `phases` in order. It fails open only if every phase does: one
/// security or routing phase makes the whole chain fail closed.
pub fn chain(phases: &[WasmFilter]) -> WasmFilter {
    let config = ChainConfig {
        phases: phases
            .iter()
            .map(|f| ChainPhase { root_id: f.name.clone(), configuration: f.config.clone() })
            .collect(),
    };
    WasmFilter {
        name: CHAIN_ROOT_ID.into(),
        config: serde_json::to_value(&config).unwrap_or(Value::Null),
        fail_open: phases.iter().all(|f| f.fail_open),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str, fail_open: bool) -> WasmFilter {
        WasmFilter { name: name.into(), config: json!({"of": name}), fail_open }
    }

    fn names(fs: &[WasmFilter]) -> Vec<&str> {
        fs.iter().map(|f| f.name.as_str()).collect()
    }

    #[test]
    fn one_pass_runs_the_listener_filters_as_phases_in_their_order() {
        let listener = vec![
            f("wasmesh.stats", true),
            f("wasmesh.authz.custom", false),
            f("wasmesh.authn", false),
            f("wasmesh.authz", false),
            f("wasmesh.router", false),
        ];
        assert_eq!(Layout::PerFilter.assemble(listener.clone()), listener);
        let one = Layout::OnePass.assemble(listener.clone());
        assert_eq!(names(&one), [CHAIN_ROOT_ID]);
        assert!(!one[0].fail_open, "a security phase makes the chain fail closed");
        let cfg: ChainConfig = serde_json::from_value(one[0].config.clone()).unwrap();
        for (phase, filter) in cfg.phases.iter().zip(&listener) {
            assert_eq!(phase.root_id, filter.name);
            assert_eq!(phase.configuration, filter.config, "the configuration it has as a separate filter");
        }
        assert_eq!(cfg.phases.len(), listener.len());
        // Only telemetry inside: the chain fails open as its phases do.
        let only_stats = chain(&[f("wasmesh.stats", true), f("wasmesh.stats", true)]);
        assert!(only_stats.fail_open);
    }

    #[test]
    fn a_lone_filter_and_non_phases_stay_as_they_are() {
        let lone = vec![f("wasmesh.stats", true)];
        assert_eq!(Layout::OnePass.assemble(lone.clone()), lone);
        assert!(Layout::OnePass.assemble(Vec::new()).is_empty());
        // A filter that is not a phase splits the runs around it.
        let mixed = vec![
            f("wasmesh.stats", true),
            f("wasmesh.authn", false),
            f("wasmesh.stats.tcp", true),
            f("wasmesh.router", false),
        ];
        let out = Layout::OnePass.assemble(mixed);
        assert_eq!(names(&out), [CHAIN_ROOT_ID, "wasmesh.stats.tcp", "wasmesh.router"]);
        // More phases than a chain takes: a second chain.
        let many: Vec<WasmFilter> = (0..MAX_PHASES + 2).map(|_| f("wasmesh.stats", true)).collect();
        let out = Layout::OnePass.assemble(many);
        assert_eq!(names(&out), [CHAIN_ROOT_ID, CHAIN_ROOT_ID]);
        assert_eq!(out[0].config["phases"].as_array().unwrap().len(), MAX_PHASES);
    }

    #[test]
    fn the_layout_names_round_trip() {
        for l in [Layout::OnePass, Layout::PerFilter] {
            assert_eq!(Layout::parse(l.as_str()), Ok(l));
            assert_eq!(serde_json::to_value(l).unwrap(), json!(l.as_str()));
        }
        assert!(Layout::parse("both").unwrap_err().contains("one-pass or per-filter"));
        assert_eq!(Layout::default(), Layout::OnePass);
    }

    /// The module parses every chain the controller writes, with the root ids it accepts as phases.
    #[test]
    fn the_module_accepts_the_chains_written_here() {
        let all: Vec<WasmFilter> = PHASE_ROOT_IDS.iter().map(|id| f(id, false)).collect();
        let c = chain(&all);
        let parsed = wasmesh::chain::parse(c.config.to_string().as_bytes()).unwrap();
        let ids: Vec<&str> = parsed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, PHASE_ROOT_IDS);
        for (_, bytes) in &parsed {
            let v: Value = serde_json::from_slice(bytes).unwrap();
            assert!(v.get("of").is_some());
        }
        assert_eq!(wasmesh::chain::ROOT_ID, CHAIN_ROOT_ID);
        assert_eq!(wasmesh::chain::MAX_PHASES, MAX_PHASES);
        for id in ["wasmesh.stats.tcp", "wasmesh.authz.tcp", "wasmesh.authz.peer_address", CHAIN_ROOT_ID] {
            let text = json!({"phases": [{"rootId": id, "configuration": {}}]}).to_string();
            assert!(wasmesh::chain::parse(text.as_bytes()).is_err(), "{id} is no phase for the module");
            assert!(!PHASE_ROOT_IDS.contains(&id));
        }
    }
}
