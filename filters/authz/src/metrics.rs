//! The filter's counters (`wasmcustom.wasmesh.authz.*`, through `wasmesh_proxy::metrics`) and
//! the access-log hand-over of each decision. Per-rule counters are a `Vec` indexed by
//! [`RuleId`] (bounded by [`MAX_RULE_METRICS`], the rest under the `other` label), defined on
//! first use; a request counts without a hostcall and without looking a name up.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Duration;
use wasmesh_authz::decision::{rule_metric_slot, MAX_RULE_METRICS, OVERFLOW_RULE_LABEL};
use wasmesh_authz::{Authz, Reason, RuleId, RuleRef, Verdict};
use wasmesh_handover::AuthzDecision;
use wasmesh_proxy::metrics::{metric_name, Counter};

/// How often counters are handed to Envoy.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(250);

const FILTER: &str = "authz";

/// What a rule did, the `<outcome>` of `wasmesh.authz.policy.<outcome>.<rule>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    Allowed = 0,
    Denied = 1,
    Audited = 2,
    Custom = 3,
    DryRunMatched = 4,
}

impl RuleOutcome {
    fn name(self) -> &'static str {
        match self {
            RuleOutcome::Allowed => "allowed",
            RuleOutcome::Denied => "denied",
            RuleOutcome::Audited => "audited",
            RuleOutcome::Custom => "custom",
            RuleOutcome::DryRunMatched => "dry_run_matched",
        }
    }
}

/// Envoy RBAC's shadow counters with Istio's dry-run prefixes, in this order.
const DRY_RUN: [&str; 4] = [
    "istio_dry_run_deny_shadow_allowed",
    "istio_dry_run_deny_shadow_denied",
    "istio_dry_run_allow_shadow_allowed",
    "istio_dry_run_allow_shadow_denied",
];

/// Defined once per VM (the per-rule and dry-run ones on first use).
pub struct Metrics {
    pub allowed: Counter,
    pub denied: Counter,
    pub audit: Counter,
    pub error: Counter,
    pub peer_authn_denied: Counter,
    pub custom_ok: Counter,
    pub custom_denied: Counter,
    pub custom_error: Counter,
    /// Provider answers whose headers or denial body went past the core's bounds.
    pub custom_truncated: Counter,
    dry_run: [OnceCell<Counter>; 4],
    /// Per rule slot ([`rule_metric_slot`]): one counter per [`RuleOutcome`].
    rules: Vec<[OnceCell<Counter>; 5]>,
    /// Rule names by slot (the last one is the overflow label).
    labels: Vec<String>,
    /// Encoded decisions for the common verdicts, by `(allowed, rule)`: index
    /// `2 * (rule id + 1) + allowed`, rule 0 being "no rule decided".
    decisions: Vec<OnceCell<Rc<[u8]>>>,
}

impl Metrics {
    pub fn define(authz: &Authz) -> Metrics {
        let c = |event: &str| Counter::new(FILTER, event);
        let mut labels: Vec<String> = authz.rule_names().into_iter().take(MAX_RULE_METRICS).collect();
        if authz.rule_count() > MAX_RULE_METRICS {
            labels.push(OVERFLOW_RULE_LABEL.to_string());
        }
        Metrics {
            allowed: c("allowed"),
            denied: c("denied"),
            audit: c("audit"),
            error: c("error"),
            peer_authn_denied: c("peer_authn_denied"),
            custom_ok: c("custom.ok"),
            custom_denied: c("custom.denied"),
            custom_error: c("custom.error"),
            custom_truncated: c("custom.truncated"),
            dry_run: Default::default(),
            rules: labels.iter().map(|_| Default::default()).collect(),
            labels,
            decisions: (0..2 * (authz.rule_count() + 1)).map(|_| OnceCell::new()).collect(),
        }
    }

    /// Hands every pending increment to Envoy.
    pub fn flush(&self) {
        for c in [
            &self.allowed,
            &self.denied,
            &self.audit,
            &self.error,
            &self.peer_authn_denied,
            &self.custom_ok,
            &self.custom_denied,
            &self.custom_error,
            &self.custom_truncated,
        ] {
            c.flush();
        }
        for c in self.dry_run.iter().chain(self.rules.iter().flatten()).filter_map(OnceCell::get) {
            c.flush();
        }
    }

    /// `wasmesh.authz.policy.<outcome>.<rule>`; the plugin's stats tag turns the rule into the
    /// `authz_rule` label.
    pub fn rule(&self, outcome: RuleOutcome, rule: RuleId) {
        let slot = rule_metric_slot(rule);
        let (Some(counters), Some(label)) = (self.rules.get(slot), self.labels.get(slot)) else { return };
        let Some(cell) = counters.get(outcome as usize) else { return };
        cell.get_or_init(|| Counter::named(&metric_name(FILTER, &format!("policy.{}.{label}", outcome.name())))).bump();
    }

    fn dry_run(&self, i: usize) {
        if let (Some(cell), Some(name)) = (self.dry_run.get(i), DRY_RUN.get(i)) {
            cell.get_or_init(|| Counter::new(FILTER, name)).bump();
        }
    }

    /// Counts a verdict (totals, per rule, AUDIT, dry-run, errors) and hands it to the access
    /// log through filter state: the same for HTTP requests and TCP connections.
    pub fn account(&self, authz: &Authz, v: &Verdict<'_>) {
        if !v.audit.is_empty() {
            self.audit.bump();
            for r in &v.audit {
                self.rule(RuleOutcome::Audited, r.id);
            }
        }
        for (base, sh) in [(0, &v.dry_run_deny), (2, &v.dry_run_allow)] {
            if let Some(sh) = sh {
                self.dry_run(base + usize::from(!sh.allowed));
                if let Some(r) = sh.rule {
                    self.rule(RuleOutcome::DryRunMatched, r.id);
                }
            }
        }
        if let Reason::Missing(what) = &v.reason {
            self.error.bump();
            wasmesh_proxy::log_warn(&format!("wasmesh authz: denying: {} is unavailable", what.0));
        }
        if let Some(rule) = v.rule_ref() {
            self.rule(if v.allowed { RuleOutcome::Allowed } else { RuleOutcome::Denied }, rule.id);
        }
        if authz.decision_filter_state() {
            write_decision(&self.decision(v));
        }
        if v.allowed { &self.allowed } else { &self.denied }.bump();
    }

    /// A denial the filter answers itself after a CUSTOM check (the provider denied, failed
    /// closed or was unreachable).
    pub fn custom_denied(&self, rule: RuleRef<'_>) {
        self.rule(RuleOutcome::Denied, rule.id);
        write_decision(&wasmesh_handover::encode(&wasmesh_authz::decision::custom_denial_record(Some(rule.name))));
        self.denied.bump();
    }

    /// The encoded decision, cached for the common shapes.
    fn decision(&self, v: &Verdict<'_>) -> Rc<[u8]> {
        let encode = |d: AuthzDecision| -> Rc<[u8]> { Rc::from(wasmesh_handover::encode(&d)) };
        let Some((allowed, rule)) = v.record_key() else { return encode(v.record()) };
        let index = 2 * rule.map_or(0, |r| r.index() + 1) + usize::from(allowed);
        match self.decisions.get(index) {
            Some(cell) => cell.get_or_init(|| encode(v.record())).clone(),
            None => encode(v.record()),
        }
    }
}

fn write_decision(bytes: &[u8]) {
    if !wasmesh_proxy::set_filter_state(wasmesh_handover::AUTHZ_DECISION, bytes) {
        wasmesh_proxy::log_debug("wasmesh authz: could not write the decision to filter state");
    }
}
