//! Telemetry API `metrics` for one proxy: which Telemetry resources apply, how their overrides
//! merge, and the per-metric plan (disabled, tags removed, tags replaced, tags added).
//!
//! Follows istio/istio `pilot/pkg/model/telemetry.go`:
//! * applicable resources, in order: the first selector-less Telemetry of the root namespace, the
//!   first selector-less one of the proxy's namespace, then the first one in the proxy's namespace
//!   whose `selector.matchLabels` selects the proxy (`applicableTelemetries`);
//! * `mergeMetrics`: providers are inherited from the parent when a `metrics` entry names none;
//!   only entries for the `prometheus` provider act here; overrides apply in order, later entries
//!   win; `disabled: true` with `match.metric: ALL_METRICS` turns every metric off until any later
//!   override; `match.mode` picks CLIENT (outbound, gateway) or SERVER (inbound) or both;
//! * `istio_stats.cc` `overrideTags`: a standard tag is replaced in place or dropped; other tags are
//!   appended in name order.

use crate::expr::{self, Expr};
use crate::labels::{Label, Metric, METRIC_COUNT};
use std::collections::BTreeMap;
use wasmesh_istio::telemetry::{Metrics, MetricsOverrides};
use wasmesh_istio::{Error, Resource, Resources, Telemetry, Workload};

/// The provider wasmesh's Prometheus metrics answer to (Istio's default metrics provider).
pub const PROMETHEUS: &str = "prometheus";

/// Which listener class the plan is for (Istio `WorkloadMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Client,
    Server,
}

/// What happens to one standard tag of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Keep,
    Remove,
    /// Replaced by the value of expression i.
    Expr(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricPlan {
    pub enabled: bool,
    /// One slot per label of the metric's label list (`Metric::labels()`).
    pub slots: Vec<Slot>,
    /// Non-standard tags appended after the standard ones, in name order: (tag, expression).
    pub additions: Vec<(String, usize)>,
}

impl MetricPlan {
    fn standard(metric: Metric) -> Self {
        MetricPlan { enabled: true, slots: vec![Slot::Keep; metric.labels().len()], additions: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plans {
    /// Indexed by `Metric as usize`.
    pub metrics: Vec<MetricPlan>,
    /// Distinct expressions, evaluated once per request when any plan uses them.
    pub exprs: Vec<Expr>,
}

impl Plans {
    pub fn standard() -> Plans {
        Plans { metrics: Metric::ALL.iter().map(|m| MetricPlan::standard(*m)).collect(), exprs: Vec::new() }
    }

    pub fn plan(&self, m: Metric) -> &MetricPlan {
        &self.metrics[m.index()]
    }

    /// Expression indices that the given metrics use (the adapter evaluates only those).
    pub fn exprs_used_by(&self, metrics: &[Metric]) -> Vec<usize> {
        let mut used: Vec<usize> = Vec::new();
        for m in metrics {
            let p = self.plan(*m);
            if !p.enabled {
                continue;
            }
            for s in &p.slots {
                if let Slot::Expr(i) = s {
                    used.push(*i);
                }
            }
            used.extend(p.additions.iter().map(|(_, i)| *i));
        }
        used.sort_unstable();
        used.dedup();
        used
    }
}

/// The Telemetry resources that apply to this proxy, in merge order (root, namespace, workload).
pub fn applicable<'r>(resources: &'r Resources, workload: &Workload) -> Vec<(&'r Resource, &'r Telemetry)> {
    let all: Vec<(&Resource, &Telemetry)> =
        resources.telemetries().filter(|(_, t)| t.target_ref.is_none() && t.target_refs.is_empty()).collect();
    let no_selector = |t: &Telemetry| t.selector.as_ref().map(|s| s.match_labels.is_empty()).unwrap_or(true);
    let mut out = Vec::new();
    let root = workload.root_namespace.as_str();
    if let Some(found) = all.iter().find(|(r, t)| r.namespace() == root && no_selector(t)) {
        out.push(*found);
    }
    if workload.namespace != root {
        if let Some(found) = all.iter().find(|(r, t)| r.namespace() == workload.namespace && no_selector(t)) {
            out.push(*found);
        }
    }
    if let Some(found) = all.iter().find(|(r, t)| {
        r.namespace() == workload.namespace
            && t.selector.as_ref().map(|s| !s.match_labels.is_empty() && s.selects(&workload.labels)).unwrap_or(false)
    }) {
        out.push(*found);
    }
    out
}

/// Checks every Telemetry's `metrics` section, whatever proxy it applies to (for `validate`).
pub fn validate(resources: &Resources) -> Vec<Error> {
    let mut errors = Vec::new();
    for (res, t) in resources.telemetries() {
        let mut exprs = Vec::new();
        for (i, m) in t.metrics.iter().enumerate() {
            check_metrics(res, i, m, &mut exprs, &mut errors);
        }
    }
    errors
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

enum TagOp {
    Remove,
    Upsert(usize),
}

struct ParsedOverride {
    metrics: Vec<Metric>,
    all_metrics: bool,
    modes: Vec<Mode>,
    disabled: Option<bool>,
    tags: Vec<(String, TagOp)>,
}

fn intern(exprs: &mut Vec<Expr>, e: Expr) -> usize {
    match exprs.iter().position(|x| *x == e) {
        Some(i) => i,
        None => {
            exprs.push(e);
            exprs.len() - 1
        }
    }
}

fn parse_override(
    res: &Resource,
    field: &str,
    o: &MetricsOverrides,
    exprs: &mut Vec<Expr>,
    errors: &mut Vec<Error>,
) -> Option<ParsedOverride> {
    let before = errors.len();
    let mut metrics = Metric::ALL.to_vec();
    let mut all_metrics = false;
    let mut modes = vec![Mode::Client, Mode::Server];
    if let Some(sel) = &o.selector {
        if let Some(custom) = &sel.custom_metric {
            errors.push(Error::at(
                res,
                format!("{field}.match.customMetric"),
                format!("{custom:?}: custom metrics are not supported by wasmesh; use one of the standard metrics (REQUEST_COUNT, REQUEST_DURATION, ...)"),
            ));
        }
        if sel.custom_metric.is_some() && sel.metric.is_some() {
            errors.push(Error::at(res, format!("{field}.match"), "metric and customMetric are mutually exclusive"));
        }
        match sel.metric.as_deref() {
            None => {}
            Some("ALL_METRICS") => all_metrics = true,
            Some(name) => match Metric::from_api_name(name) {
                Some(m) => metrics = vec![m],
                None => errors.push(Error::at(
                    res,
                    format!("{field}.match.metric"),
                    format!(
                        "{name:?} is not an Istio metric; expected ALL_METRICS, {}",
                        Metric::ALL.iter().map(|m| m.api_name()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            },
        }
        match sel.mode.as_deref() {
            None | Some("CLIENT_AND_SERVER") => {}
            Some("CLIENT") => modes = vec![Mode::Client],
            Some("SERVER") => modes = vec![Mode::Server],
            Some(other) => errors.push(Error::at(
                res,
                format!("{field}.match.mode"),
                format!("{other:?}; expected CLIENT_AND_SERVER, CLIENT or SERVER"),
            )),
        }
    }
    let mut tags = Vec::new();
    for (name, t) in &o.tag_overrides {
        let tfield = format!("{field}.tagOverrides.{name}");
        if !is_label_name(name) {
            errors.push(Error::at(
                res,
                tfield.clone(),
                format!("{name:?} is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
            ));
            continue;
        }
        match t.operation.as_deref() {
            None | Some("UPSERT") => match t.value.as_deref() {
                None => errors.push(Error::at(res, format!("{tfield}.value"), "UPSERT needs a value expression")),
                Some(v) => match expr::parse(v) {
                    Ok(e) => tags.push((name.clone(), TagOp::Upsert(intern(exprs, e)))),
                    Err(msg) => errors.push(Error::at(res, format!("{tfield}.value"), msg)),
                },
            },
            Some("REMOVE") => tags.push((name.clone(), TagOp::Remove)),
            Some(other) => errors.push(Error::at(
                res,
                format!("{tfield}.operation"),
                format!("{other:?}; expected UPSERT or REMOVE"),
            )),
        }
    }
    if errors.len() != before {
        return None;
    }
    Some(ParsedOverride { metrics, all_metrics, modes, disabled: o.disabled, tags })
}

fn check_metrics(res: &Resource, i: usize, m: &Metrics, exprs: &mut Vec<Expr>, errors: &mut Vec<Error>) {
    for (j, p) in m.providers.iter().enumerate() {
        if p.name.is_empty() {
            errors.push(Error::at(
                res,
                format!("spec.metrics[{i}].providers[{j}].name"),
                "a provider name is required",
            ));
        }
    }
    if let Some(interval) = &m.reporting_interval {
        if let Err(e) = wasmesh_istio::parse_duration(interval) {
            errors.push(Error::at(res, format!("spec.metrics[{i}].reportingInterval"), e.to_string()));
        }
    }
    for (k, o) in m.overrides.iter().enumerate() {
        parse_override(res, &format!("spec.metrics[{i}].overrides[{k}]"), o, exprs, errors);
    }
}

#[derive(Default, Clone)]
struct Merged {
    disabled: Option<bool>,
    tags: BTreeMap<String, TagOpRef>,
}

#[derive(Clone, Copy)]
enum TagOpRef {
    Remove,
    Upsert(usize),
}

/// Compiles the plans for this proxy and listener class.
pub fn compile(resources: &Resources, workload: &Workload, mode: Mode) -> Result<Plans, Vec<Error>> {
    let telemetries = applicable(resources, workload);
    let mut errors = Vec::new();
    let mut exprs: Vec<Expr> = Vec::new();

    // Providers in scope: the last non-empty list wins over the mesh default (prometheus).
    let mut in_scope: Vec<&str> = vec![PROMETHEUS];
    for (_, t) in &telemetries {
        for m in &t.metrics {
            if !m.providers.is_empty() {
                in_scope = m.providers.iter().map(|p| p.name.as_str()).collect();
            }
        }
    }
    let mut merged: Vec<Merged> = vec![Merged::default(); METRIC_COUNT];
    let mut all_disabled = false;
    let mut parent: Vec<&str> = vec![PROMETHEUS];
    for (res, t) in &telemetries {
        for (i, m) in t.metrics.iter().enumerate() {
            check_metrics(res, i, m, &mut exprs, &mut errors);
            let names: Vec<&str> = if m.providers.is_empty() {
                parent.clone()
            } else {
                m.providers.iter().map(|p| p.name.as_str()).collect()
            };
            parent = names.clone();
            if !names.contains(&PROMETHEUS) || !in_scope.contains(&PROMETHEUS) {
                continue;
            }
            for (k, o) in m.overrides.iter().enumerate() {
                let mut scratch = Vec::new();
                let Some(p) =
                    parse_override(res, &format!("spec.metrics[{i}].overrides[{k}]"), o, &mut exprs, &mut scratch)
                else {
                    continue; // reported by check_metrics above
                };
                if p.all_metrics && p.disabled == Some(true) {
                    // Istio drops the whole filter, whatever the mode.
                    all_disabled = true;
                    continue;
                }
                all_disabled = false;
                if !p.modes.contains(&mode) {
                    continue;
                }
                for metric in &p.metrics {
                    let entry = &mut merged[metric.index()];
                    if p.disabled.is_some() {
                        entry.disabled = p.disabled;
                    }
                    for (name, op) in &p.tags {
                        let op = match op {
                            TagOp::Remove => TagOpRef::Remove,
                            TagOp::Upsert(e) => TagOpRef::Upsert(*e),
                        };
                        entry.tags.insert(name.clone(), op);
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let prometheus_off = !in_scope.contains(&PROMETHEUS);
    let metrics = Metric::ALL
        .iter()
        .map(|metric| {
            let m = &merged[metric.index()];
            let mut plan = MetricPlan::standard(*metric);
            plan.enabled = !(all_disabled || prometheus_off || m.disabled == Some(true));
            for (name, op) in &m.tags {
                match Label::from_name(name) {
                    Some(label) => {
                        // A standard tag the metric does not carry (response_code on TCP) is ignored.
                        if let Some(pos) = metric.labels().iter().position(|l| *l == label) {
                            plan.slots[pos] = match op {
                                TagOpRef::Remove => Slot::Remove,
                                TagOpRef::Upsert(e) => Slot::Expr(*e),
                            };
                        }
                    }
                    None => {
                        if let TagOpRef::Upsert(e) = op {
                            plan.additions.push((name.clone(), *e));
                        }
                    }
                }
            }
            plan
        })
        .collect();
    Ok(Plans { metrics, exprs })
}

/// Every non-standard tag name any Telemetry adds (so the bootstrap can extract it).
pub fn custom_tag_names(resources: &Resources) -> Vec<String> {
    let mut names: Vec<String> = resources
        .telemetries()
        .flat_map(|(_, t)| t.metrics.iter())
        .flat_map(|m| m.overrides.iter())
        .flat_map(|o| o.tag_overrides.keys())
        .filter(|n| Label::from_name(n).is_none() && is_label_name(n))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "test.yaml").unwrap() }
    }

    fn reviews() -> Workload {
        let mut w = Workload::new("reviews-v2", "bookinfo");
        w.labels.insert("app".into(), "reviews".into());
        w
    }

    const MESH_REMOVE: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: CLIENT_AND_SERVER}
      tagOverrides:
        grpc_response_status: {operation: REMOVE}
"#;

    #[test]
    fn no_telemetry_means_standard_metrics() {
        let p = compile(&Resources::default(), &reviews(), Mode::Server).unwrap();
        assert_eq!(p, Plans::standard());
        assert!(p.metrics.iter().all(|m| m.enabled));
    }

    #[test]
    fn remove_a_tag_from_one_metric() {
        let p = compile(&load(MESH_REMOVE), &reviews(), Mode::Server).unwrap();
        let rc = p.plan(Metric::RequestCount);
        assert_eq!(rc.slots[Label::GrpcResponseStatus as usize], Slot::Remove);
        assert_eq!(p.plan(Metric::RequestDuration), &MetricPlan::standard(Metric::RequestDuration));
    }

    #[test]
    fn upsert_standard_and_custom_tags_with_precedence() {
        let yaml = format!(
            "{MESH_REMOVE}---\n{}",
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: bookinfo}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        request_host: {value: request.host}
        destination_port: {value: "string(destination.port)"}
        source_app: {operation: UPSERT, value: "'override'"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: wl, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        request_host: {operation: REMOVE}
        grpc_response_status: {value: "'kept'"}
"#
        );
        let res = load(&yaml);
        let p = compile(&res, &reviews(), Mode::Server).unwrap();
        let rc = p.plan(Metric::RequestCount);
        // The workload-level REMOVE wins over the namespace-level UPSERT for request_host.
        assert_eq!(rc.additions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["destination_port"]);
        let Slot::Expr(g) = rc.slots[Label::GrpcResponseStatus as usize] else { panic!("expected expr") };
        assert_eq!(p.exprs[g], Expr::Literal("kept".into()));
        let Slot::Expr(a) = rc.slots[Label::SourceApp as usize] else { panic!("expected expr") };
        assert_eq!(p.exprs[a], Expr::Literal("override".into()));
        // Other metrics get the namespace-level additions, sorted by name.
        let d = p.plan(Metric::RequestDuration);
        assert_eq!(
            d.additions.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["destination_port", "request_host"]
        );
        // On the client side the SERVER-only override does not apply.
        let c = compile(&res, &reviews(), Mode::Client).unwrap();
        assert_eq!(c.plan(Metric::RequestCount).additions.len(), 2);
        assert_eq!(c.plan(Metric::RequestCount).slots[Label::GrpcResponseStatus as usize], Slot::Remove);
        // TCP metrics ignore standard tags they do not have and still get additions.
        let t = p.plan(Metric::TcpSentBytes);
        assert_eq!(t.slots.len(), 23);
        assert_eq!(t.additions.len(), 2);
        assert_eq!(custom_tag_names(&res), vec!["destination_port", "request_host"]);
        assert_eq!(p.exprs_used_by(&[Metric::RequestCount]).len(), 3);
    }

    #[test]
    fn disabling_metrics() {
        let res = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_DURATION}
      disabled: true
    - match: {metric: REQUEST_SIZE, mode: CLIENT}
      disabled: true
"#,
        );
        let s = compile(&res, &reviews(), Mode::Server).unwrap();
        assert!(!s.plan(Metric::RequestDuration).enabled);
        assert!(s.plan(Metric::RequestSize).enabled);
        assert!(s.plan(Metric::RequestCount).enabled);
        let c = compile(&res, &reviews(), Mode::Client).unwrap();
        assert!(!c.plan(Metric::RequestSize).enabled);

        let all_off = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: ALL_METRICS}
      disabled: true
"#,
        );
        let p = compile(&all_off, &reviews(), Mode::Server).unwrap();
        assert!(p.metrics.iter().all(|m| !m.enabled));

        // A namespace Telemetry re-enables after a mesh-wide ALL_METRICS disable (Istio quirk kept).
        let reenabled = format!(
            "{}---\n{}",
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - match: {metric: ALL_METRICS}
      disabled: true
"#,
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: bookinfo}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      disabled: false
"#
        );
        let p = compile(&load(&reenabled), &reviews(), Mode::Server).unwrap();
        assert!(p.metrics.iter().all(|m| m.enabled));
        // Another namespace's Telemetry does not apply.
        let other = Workload::new("x", "other");
        let p = compile(&load(&reenabled), &other, Mode::Server).unwrap();
        assert!(p.metrics.iter().all(|m| !m.enabled));
    }

    #[test]
    fn other_providers_do_not_touch_prometheus() {
        let res = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
  - providers: [{name: prometheus}, {name: stackdriver}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: bookinfo}
spec:
  metrics:
  - providers: [{name: stackdriver}]
    overrides:
    - match: {metric: REQUEST_DURATION}
      disabled: true
"#,
        );
        // The last providers list names only stackdriver: prometheus is out of scope entirely.
        let p = compile(&res, &reviews(), Mode::Server).unwrap();
        assert!(p.metrics.iter().all(|m| !m.enabled));
        // In another namespace only the mesh-wide resource applies.
        let p = compile(&res, &Workload::new("x", "other"), Mode::Server).unwrap();
        assert!(!p.plan(Metric::RequestCount).enabled);
        assert!(p.plan(Metric::RequestDuration).enabled);
    }

    #[test]
    fn selection_order_and_first_match() {
        let res = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: wl1, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: wl2, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics: [{overrides: [{match: {metric: REQUEST_SIZE}, disabled: true}]}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-selector, namespace: istio-system}
spec:
  selector: {matchLabels: {app: reviews}}
  metrics: [{overrides: [{match: {metric: RESPONSE_SIZE}, disabled: true}]}]
"#,
        );
        let sel: Vec<&str> = applicable(&res, &reviews()).iter().map(|(r, _)| r.name()).collect();
        assert_eq!(sel, vec!["wl1"]);
        let p = compile(&res, &reviews(), Mode::Server).unwrap();
        assert!(!p.plan(Metric::RequestCount).enabled);
        assert!(p.plan(Metric::RequestSize).enabled);
        assert!(p.plan(Metric::ResponseSize).enabled);
    }

    #[test]
    fn errors_name_resource_field_and_value() {
        let res = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: istio-system}
spec:
  metrics:
  - reportingInterval: 5 seconds
    overrides:
    - match: {metric: REQUEST_COUNTS, mode: BOTH}
      tagOverrides:
        "bad-name": {value: "'x'"}
        ok: {operation: MERGE}
        up: {operation: UPSERT}
        expr: {value: "request.host + 'x'"}
    - match: {customMetric: my_metric}
"#,
        );
        let errs = compile(&res, &reviews(), Mode::Server).unwrap_err();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        for needle in [
            "Telemetry istio-system/bad: spec.metrics[0].reportingInterval",
            "spec.metrics[0].overrides[0].match.metric: \"REQUEST_COUNTS\" is not an Istio metric",
            "spec.metrics[0].overrides[0].match.mode: \"BOTH\"",
            "tagOverrides.bad-name: \"bad-name\" is not a valid Prometheus label name",
            "tagOverrides.ok.operation: \"MERGE\"; expected UPSERT or REMOVE",
            "tagOverrides.up.value: UPSERT needs a value expression",
            "tagOverrides.expr.value: \"request.host + 'x'\" is not supported",
            "overrides[1].match.customMetric: \"my_metric\": custom metrics are not supported",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(validate(&res).len(), errs.len());
    }

    #[test]
    fn target_refs_do_not_select_sidecars() {
        let res = load(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: gw, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
  metrics: [{overrides: [{disabled: true}]}]
"#,
        );
        assert!(applicable(&res, &reviews()).is_empty());
    }
}
