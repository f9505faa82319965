//! What the filter does with a request or a connection, decided in one place: the order of
//! Istio's chain (PeerAuthentication, CUSTOM, then AUDIT/DENY/ALLOW), what a decision hands to
//! the access log, and which metric label each rule counts under.

use crate::ext_authz::check_request_headers;
use crate::{Authz, CustomOutcome, Missing, Provider, Reason, RuleId, RuleRef, Stage, Transport, Verdict, View};
use wasmesh_handover::AuthzDecision;

/// Most rules with a metric label of their own (`wasmesh.authz.policy.<outcome>.<rule>`): each
/// label set is a new Envoy stat (Envoy's own RBAC filter names its per-policy stats by the
/// operator's `shadow_rules_stat_prefix` only, never one per rule). Rules past it are counted
/// under [`OVERFLOW_RULE_LABEL`], so nothing goes uncounted.
pub const MAX_RULE_METRICS: usize = 1000;

/// The label the rules past [`MAX_RULE_METRICS`] count under.
pub const OVERFLOW_RULE_LABEL: &str = "other";

/// The per-rule metric slot of a rule: its id below [`MAX_RULE_METRICS`], the overflow slot
/// ([`MAX_RULE_METRICS`]) otherwise.
pub fn rule_metric_slot(id: RuleId) -> usize {
    id.index().min(MAX_RULE_METRICS)
}

/// The next step for an HTTP request.
#[derive(Debug)]
pub enum RequestStep<'e> {
    /// Decided: allow (continue) or deny (403 `RBAC: access denied`).
    Decided {
        verdict: Verdict<'e>,
        /// PeerAuthentication refused the connection.
        peer_authn: bool,
    },
    /// A CUSTOM rule matched: send this check request to the provider; its answer decides.
    /// `headers` is `Err` when the request headers could not be read (the filter denies).
    /// `index` is the provider's place in the CUSTOM chain ([`Authz::custom_provider`]); after
    /// it allows, [`Authz::after_allow`] goes on from there.
    Check { provider: &'e Provider, rule: RuleRef<'e>, headers: Result<Vec<(String, String)>, Missing>, index: usize },
    /// The CUSTOM instance found nothing to check: continue without a decision.
    Continue,
}

impl Authz {
    /// Istio's chain for one HTTP request (every request header is read only when a CUSTOM
    /// check is sent).
    pub fn on_request<'e, V: View + ?Sized>(&'e self, req: &V) -> RequestStep<'e> {
        if let Some(verdict) = self.peer_authn(req) {
            return RequestStep::Decided { verdict, peer_authn: true };
        }
        self.step_from(req, 0)
    }

    /// After the CUSTOM provider at `index` allowed (or failed open): the next provider of the
    /// chain whose rules match the request as the provider left it (istiod's next shadow-RBAC +
    /// ext_authz pair), else AUDIT/DENY/ALLOW, or nothing more for the CUSTOM-only instance.
    pub fn after_allow<'e, V: View + ?Sized>(&'e self, req: &V, index: usize) -> RequestStep<'e> {
        self.step_from(req, index.saturating_add(1))
    }

    /// CUSTOM from provider `from` of the chain on, then the rest of the chain.
    fn step_from<'e, V: View + ?Sized>(&'e self, req: &V, from: usize) -> RequestStep<'e> {
        match self.custom_at(req, from) {
            (CustomOutcome::Continue, _) => {}
            (CustomOutcome::Deny(verdict), _) => return RequestStep::Decided { verdict, peer_authn: false },
            (CustomOutcome::Check { provider, rule }, index) => {
                let mut built = Vec::new();
                let headers =
                    req.with_all_headers(&mut |all| built = check_request_headers(provider, all)).map(|()| built);
                return RequestStep::Check { provider, rule, headers, index };
            }
        }
        if self.stage == Stage::Custom {
            return RequestStep::Continue;
        }
        RequestStep::Decided { verdict: self.rbac(req), peer_authn: false }
    }

    /// After the CUSTOM provider allowed (or failed open): AUDIT/DENY/ALLOW on the request as the
    /// provider left it, or nothing more for the CUSTOM-only instance.
    pub fn after_check<'e, V: View + ?Sized>(&'e self, req: &V) -> Option<Verdict<'e>> {
        (self.stage != Stage::Custom).then(|| self.rbac(req))
    }

    /// A TCP connection (the network filter), on its first bytes: PeerAuthentication, then
    /// istiod's TCP chain: per CUSTOM provider a shadow network RBAC + network ext_authz pair
    /// (a gRPC provider whose rules match is asked: [`ConnectionStep::Check`]; a bad provider's
    /// rules deny), then AUDIT/DENY/ALLOW.
    pub fn on_connection_step<'e, V: View + ?Sized>(&'e self, conn: &V) -> ConnectionStep<'e> {
        if let Some(verdict) = self.peer_authn(conn) {
            return ConnectionStep::Decided { verdict, peer_authn: true };
        }
        self.connection_from(conn, 0)
    }

    /// After the gRPC provider at `index` allowed the connection (or failed open): the next
    /// provider of the chain whose rules match, else AUDIT/DENY/ALLOW.
    pub fn after_connection_allow<'e, V: View + ?Sized>(&'e self, conn: &V, index: usize) -> ConnectionStep<'e> {
        self.connection_from(conn, index.saturating_add(1))
    }

    fn connection_from<'e, V: View + ?Sized>(&'e self, conn: &V, from: usize) -> ConnectionStep<'e> {
        let verdict = match self.custom_at(conn, from) {
            (CustomOutcome::Continue, _) => self.rbac(conn),
            (CustomOutcome::Deny(v), _) => v,
            (CustomOutcome::Check { provider, rule }, index) if provider.transport == Transport::Grpc => {
                return ConnectionStep::Check { provider, rule, index };
            }
            // Compile never keeps an HTTP provider for TCP (istiod writes no network filter for
            // one); should it, fail closed.
            (CustomOutcome::Check { rule, .. }, _) => Verdict::deny(Reason::BadCustom {
                rule,
                reason: "an HTTP ext_authz provider cannot check a TCP connection",
            }),
        };
        ConnectionStep::Decided { verdict, peer_authn: false }
    }

    /// [`Authz::on_connection_step`] for callers that cannot ask a provider (`wasmeshctl check`,
    /// the tests): a connection a gRPC provider would be asked about is reported as denied, with
    /// the rule that asks. The second value says whether PeerAuthentication refused it.
    pub fn on_connection<'e, V: View + ?Sized>(&'e self, conn: &V) -> (Verdict<'e>, bool) {
        match self.on_connection_step(conn) {
            ConnectionStep::Decided { verdict, peer_authn } => (verdict, peer_authn),
            ConnectionStep::Check { rule, .. } => (
                Verdict::deny(Reason::BadCustom { rule, reason: "the gRPC ext_authz provider's answer decides" }),
                false,
            ),
        }
    }
}

/// The next step for a TCP connection.
#[derive(Debug)]
pub enum ConnectionStep<'e> {
    /// Decided: allow (pass the bytes on) or deny (close the connection).
    Decided {
        verdict: Verdict<'e>,
        /// PeerAuthentication refused the connection.
        peer_authn: bool,
    },
    /// A CUSTOM rule of the gRPC provider at `index` of the CUSTOM chain matched: hold the
    /// connection's bytes and ask the provider ([`crate::ext_authz_grpc::tcp_check_request`]);
    /// OK (or an error with `failOpen`) goes on with [`Authz::after_connection_allow`], a denial
    /// or an error without `failOpen` closes the connection.
    Check { provider: &'e Provider, rule: RuleRef<'e>, index: usize },
}

impl Verdict<'_> {
    /// The hand-over for access logs (filter state `wasmesh.authz.decision`).
    pub fn record(&self) -> AuthzDecision {
        AuthzDecision {
            allowed: self.allowed,
            action: self.action().to_string(),
            policy: self.rule().map(str::to_string),
            audit: self.audit.iter().map(|r| r.name.to_string()).collect(),
            shadow: self.shadow_text(),
        }
    }

    /// For the common verdicts (a rule or the default decided, no audit, no dry-run) the record
    /// depends only on `(allowed, rule)`, so the filter may encode it once: that key, else `None`.
    pub fn record_key(&self) -> Option<(bool, Option<RuleId>)> {
        let plain = self.audit.is_empty()
            && self.dry_run_allow.is_none()
            && self.dry_run_deny.is_none()
            && matches!(
                self.reason,
                Reason::Allowed { .. } | Reason::Denied { .. } | Reason::NoAllowMatch | Reason::NoAllowPolicy
            );
        plain.then(|| (self.allowed, self.rule_ref().map(|r| r.id)))
    }
}

/// The record of a CUSTOM denial (the provider denied, failed closed, or was unreachable).
pub fn custom_denial_record(rule: Option<&str>) -> AuthzDecision {
    AuthzDecision {
        allowed: false,
        action: "CUSTOM".into(),
        policy: rule.map(str::to_string),
        audit: Vec::new(),
        shadow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthzConfig, Request};
    use serde_json::json;

    fn authz(stage: &str, policies: serde_json::Value) -> Authz {
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "stage": stage,
            "extensionProviders": [{"name": "ext", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 9000}}],
            "resources": policies,
        });
        AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap()
    }

    fn policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "foo"}, "spec": spec})
    }

    fn request(path: &'static str) -> Vec<(String, Vec<u8>)> {
        vec![(":method".into(), b"GET".to_vec()), (":path".into(), path.as_bytes().to_vec())]
    }

    #[test]
    fn custom_is_checked_before_deny_and_allow() {
        let a = authz(
            "all",
            json!([
                policy(
                    "c",
                    json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/ext"]}}]}]})
                ),
                policy(
                    "d",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/ext", "/deny"]}}]}]})
                ),
            ]),
        );
        let headers = request("/ext");
        let req = Request { headers: &headers, ..Default::default() };
        match a.on_request(&req) {
            RequestStep::Check { provider, rule, headers, .. } => {
                assert_eq!(provider.name, "ext");
                assert_eq!(rule, "istio-ext-authz-ext-ns[foo]-policy[c]-rule[0]");
                assert!(headers.unwrap().contains(&(":path".into(), "/ext".into())));
            }
            other => panic!("{other:?}"),
        }
        let v = a.after_check(&req).unwrap();
        assert!(!v.allowed, "DENY runs on the request the provider allowed");
        let headers = request("/deny");
        let req = Request { headers: &headers, ..Default::default() };
        assert!(matches!(a.on_request(&req), RequestStep::Decided { verdict, peer_authn: false } if !verdict.allowed));

        let custom_only = authz(
            "custom",
            json!([policy(
                "c",
                json!({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/ext"]}}]}]})
            )]),
        );
        assert!(matches!(custom_only.on_request(&req), RequestStep::Continue));
        assert!(custom_only.after_check(&req).is_none());
    }

    #[test]
    fn rule_ids_are_dense_and_records_keyed_by_them() {
        let a = authz(
            "all",
            json!([
                policy(
                    "a",
                    json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"paths": ["/a"]}}]}, {"to": [{"operation": {"paths": ["/b"]}}]}]})
                ),
                policy("d", json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/d"]}}]}]})),
            ]),
        );
        assert_eq!(a.rule_count(), 3);
        assert_eq!(
            a.rule_names(),
            vec!["ns[foo]-policy[d]-rule[0]", "ns[foo]-policy[a]-rule[0]", "ns[foo]-policy[a]-rule[1]"]
        );
        let headers = request("/b");
        let v = a.rbac(&Request { headers: &headers, ..Default::default() });
        let rule = v.rule_ref().unwrap();
        assert_eq!(a.rule_name(rule.id), Some("ns[foo]-policy[a]-rule[1]"));
        assert_eq!(v.record_key(), Some((true, Some(rule.id))));
        assert_eq!(v.record().policy.as_deref(), Some("ns[foo]-policy[a]-rule[1]"));
    }

    /// [`MAX_RULE_METRICS`]: rules past it share the overflow slot, so their counts still show.
    #[test]
    fn rule_metric_labels_are_bounded() {
        assert_eq!(rule_metric_slot(RuleId(0)), 0);
        assert_eq!(rule_metric_slot(RuleId(MAX_RULE_METRICS - 1)), MAX_RULE_METRICS - 1);
        assert_eq!(rule_metric_slot(RuleId(MAX_RULE_METRICS)), MAX_RULE_METRICS);
        assert_eq!(rule_metric_slot(RuleId(5 * MAX_RULE_METRICS)), MAX_RULE_METRICS);
    }
}
