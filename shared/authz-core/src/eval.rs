//! Per-request evaluation, as Envoy's RBAC filters evaluate istiod's output: AUDIT (LOG), DENY
//! and ALLOW filters in that order, each with enforced and shadow (dry-run) rules, policies in
//! lexicographic name order, the first match deciding.

use crate::matcher::HeaderMatch;
use crate::matcher::StrMatch;
use crate::model::{Atom, CRule, Cond, Custom, MetaMatch, RuleRef, RuleSet};
use crate::{strip_query, Authz, MetaValue, Provider, View};
use serde_json::Value;

/// An input a rule needed that the filter could not provide. The request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing(pub &'static str);

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason<'e> {
    /// Allowed: no enforced ALLOW policy applies and no DENY policy matched.
    NoAllowPolicy,
    /// Allowed by this ALLOW rule.
    Allowed { rule: RuleRef<'e> },
    /// Denied: ALLOW policies apply but none matched.
    NoAllowMatch,
    /// Denied by this DENY rule.
    Denied { rule: RuleRef<'e> },
    /// Denied: a CUSTOM rule matched but its provider is unusable.
    BadCustom { rule: RuleRef<'e>, reason: &'e str },
    /// Denied: PeerAuthentication STRICT on this port and the connection is not mutual TLS.
    PeerAuthnStrict { port: u32, policy: Option<String> },
    /// Denied: an input the policies need was unavailable (fail closed).
    Missing(Missing),
}

/// A dry-run (shadow) result: what the dry-run policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadow<'e> {
    pub allowed: bool,
    /// The dry-run rule that matched, if any.
    pub rule: Option<RuleRef<'e>>,
}

/// The decision and what it is based on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'e> {
    pub allowed: bool,
    pub reason: Reason<'e>,
    /// Matching AUDIT rules (they never change the decision).
    pub audit: Vec<RuleRef<'e>>,
    pub dry_run_deny: Option<Shadow<'e>>,
    pub dry_run_allow: Option<Shadow<'e>>,
}

impl<'e> Verdict<'e> {
    fn new(allowed: bool, reason: Reason<'e>) -> Self {
        Verdict { allowed, reason, audit: Vec::new(), dry_run_deny: None, dry_run_allow: None }
    }

    /// `ALLOW`, `DENY`, `CUSTOM`, `PEER_AUTHN`, `ERROR` or `DEFAULT` (no rule decided).
    pub fn action(&self) -> &'static str {
        match self.reason {
            Reason::NoAllowPolicy | Reason::NoAllowMatch => "DEFAULT",
            Reason::Allowed { .. } => "ALLOW",
            Reason::Denied { .. } => "DENY",
            Reason::BadCustom { .. } => "CUSTOM",
            Reason::PeerAuthnStrict { .. } => "PEER_AUTHN",
            Reason::Missing(_) => "ERROR",
        }
    }

    /// The rule that decided, Istio's RBAC policy name.
    pub fn rule(&self) -> Option<&'e str> {
        self.rule_ref().map(|r| r.name)
    }

    /// The rule that decided, with its id.
    pub fn rule_ref(&self) -> Option<RuleRef<'e>> {
        match self.reason {
            Reason::Allowed { rule } | Reason::Denied { rule } | Reason::BadCustom { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// A verdict decided by `reason` alone (no audit, no dry-run).
    pub fn deny(reason: Reason<'e>) -> Self {
        Verdict::new(false, reason)
    }

    /// A sentence for logs and `wasmeshctl check`.
    pub fn explain(&self) -> String {
        let verdict = if self.allowed { "ALLOW" } else { "DENY" };
        let why = match &self.reason {
            Reason::NoAllowPolicy => "no ALLOW policy applies to the workload and no DENY policy matched".to_string(),
            Reason::Allowed { rule } => format!("ALLOW rule {rule} matched"),
            Reason::NoAllowMatch => "ALLOW policies apply to the workload but none matched".to_string(),
            Reason::Denied { rule } => format!("DENY rule {rule} matched"),
            Reason::BadCustom { rule, reason } => {
                format!("CUSTOM rule {rule} matched but the provider is unusable: {reason}")
            }
            Reason::PeerAuthnStrict { port, policy } => format!(
                "PeerAuthentication is STRICT on port {port} ({}) and the connection is not mutual TLS",
                policy.as_deref().unwrap_or("default")
            ),
            Reason::Missing(Missing(what)) => format!("{what} is unavailable to the filter; failing closed"),
        };
        let mut s = format!("{verdict}: {why}");
        if !self.audit.is_empty() {
            let names: Vec<&str> = self.audit.iter().map(|r| r.name).collect();
            s.push_str(&format!("; audited by {}", names.join(", ")));
        }
        for (name, sh) in [("DENY", &self.dry_run_deny), ("ALLOW", &self.dry_run_allow)] {
            if let Some(sh) = sh {
                s.push_str(&format!(
                    "; dry-run {name} policies would {}{}",
                    if sh.allowed { "allow" } else { "deny" },
                    sh.rule.map(|r| format!(" ({r})")).unwrap_or_default()
                ));
            }
        }
        s
    }

    /// A short text for the `AUTHZ_DECISION` hand-over `shadow` field.
    pub fn shadow_text(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (name, sh) in [("deny", &self.dry_run_deny), ("allow", &self.dry_run_allow)] {
            if let Some(sh) = sh {
                parts.push(format!(
                    "dry-run {name}: {}{}",
                    if sh.allowed { "allowed" } else { "denied" },
                    sh.rule.map(|r| format!(" by {r}")).unwrap_or_default()
                ));
            }
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// What the CUSTOM stage asks of the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomOutcome<'e> {
    /// No CUSTOM rule matched: go on.
    Continue,
    /// Ask the provider; its answer decides (deny, or go on).
    Check { provider: &'e Provider, rule: RuleRef<'e> },
    /// Deny now (bad provider, or a missing input).
    Deny(Verdict<'e>),
}

impl Authz {
    /// PeerAuthentication: STRICT on the destination port refuses plaintext.
    pub fn peer_authn<'e, V: View + ?Sized>(&'e self, req: &V) -> Option<Verdict<'e>> {
        let p = self.peer_authn.as_ref()?;
        match req.mtls() {
            Ok(true) => return None,
            Ok(false) => {}
            Err(m) => return Some(Verdict::new(false, Reason::Missing(m))),
        }
        let Some(port) = req.destination_port() else {
            if self.needs.mtls {
                return Some(Verdict::new(false, Reason::Missing(Missing("destination.port"))));
            }
            return None;
        };
        if p.admits(port, false) {
            return None;
        }
        Some(Verdict::new(false, Reason::PeerAuthnStrict { port, policy: p.explain(port).policy.clone() }))
    }

    /// The CUSTOM stage (istiod's shadow RBAC + ext_authz pair).
    pub fn custom<'e, V: View + ?Sized>(&'e self, req: &V) -> CustomOutcome<'e> {
        self.custom_at(req, 0).0
    }

    /// The CUSTOM stage from provider `from` of the chain on (with `multipleCustomProviders`,
    /// istiod's pairs in provider-name order; without, `from` 0 is [`Authz::custom`] and any
    /// later one has nothing left). Returns the outcome and, for a check, the index of the
    /// provider asked ([`Authz::custom_provider`]): after it allows, the chain goes on at the
    /// next index, its rules matched against the request as that provider left it.
    pub fn custom_at<'e, V: View + ?Sized>(&'e self, req: &V, from: usize) -> (CustomOutcome<'e>, usize) {
        match &self.custom {
            Custom::Chain(chain) => {
                for (i, c) in chain.iter().enumerate().skip(from) {
                    match custom_one(c, req) {
                        CustomOutcome::Continue => {}
                        other => return (other, i),
                    }
                }
                (CustomOutcome::Continue, chain.len())
            }
            other if from == 0 => (custom_one(other, req), 0),
            _ => (CustomOutcome::Continue, from),
        }
    }

    /// AUDIT, DENY and ALLOW, as three RBAC filters in Istio's order.
    pub fn rbac<'e, V: View + ?Sized>(&'e self, req: &V) -> Verdict<'e> {
        let mut audit = Vec::new();
        for r in &self.audit {
            if matches(r, req).unwrap_or(false) {
                audit.push(r.as_ref());
            }
        }
        let dry_run_deny = shadow(&self.deny, req, true);
        let mut v = match deny_filter(&self.deny, req) {
            Err(m) => Verdict::new(false, Reason::Missing(m)),
            Ok(Some(rule)) => Verdict::new(false, Reason::Denied { rule }),
            Ok(None) => {
                let dry_run_allow = shadow(&self.allow, req, false);
                let mut v = match &self.allow.rules {
                    None => Verdict::new(true, Reason::NoAllowPolicy),
                    Some(rules) => match first_match(rules, req) {
                        Err(m) => Verdict::new(false, Reason::Missing(m)),
                        Ok(Some(rule)) => Verdict::new(true, Reason::Allowed { rule }),
                        Ok(None) => Verdict::new(false, Reason::NoAllowMatch),
                    },
                };
                v.dry_run_allow = dry_run_allow;
                v
            }
        };
        v.audit = audit;
        v.dry_run_deny = dry_run_deny;
        v
    }

    /// The whole chain without an extension provider (for `wasmeshctl check` and tests): a
    /// matching CUSTOM rule is reported through `custom` and treated as allowed by the provider.
    pub fn evaluate<'e, V: View + ?Sized>(&'e self, req: &V) -> (Option<CustomOutcome<'e>>, Verdict<'e>) {
        if let Some(v) = self.peer_authn(req) {
            return (None, v);
        }
        let c = self.custom(req);
        if let CustomOutcome::Deny(v) = c {
            return (None, v);
        }
        let c = if c == CustomOutcome::Continue { None } else { Some(c) };
        (c, self.rbac(req))
    }
}

fn deny_filter<'e, V: View + ?Sized>(set: &'e RuleSet, req: &V) -> Result<Option<RuleRef<'e>>, Missing> {
    match &set.rules {
        None => Ok(None),
        Some(rules) => first_match(rules, req),
    }
}

/// Envoy `shadow_rules`: the result the dry-run rules alone would give.
fn shadow<'e, V: View + ?Sized>(set: &'e RuleSet, req: &V, deny: bool) -> Option<Shadow<'e>> {
    let rules = set.shadow.as_ref()?;
    let hit = first_match(rules, req).unwrap_or(None);
    Some(Shadow { allowed: if deny { hit.is_none() } else { hit.is_some() }, rule: hit })
}

/// The first rule that matches for certain; when none does and some rule could not be evaluated
/// (an input is missing), that input: a rule that matches whatever the missing input holds still
/// decides, as Envoy would decide it, and only an outcome that depends on it fails closed.
fn first_match<'e, V: View + ?Sized>(rules: &'e [CRule], req: &V) -> Result<Option<RuleRef<'e>>, Missing> {
    let mut missing = None;
    for r in rules {
        match matches(r, req) {
            Ok(true) => return Ok(Some(r.as_ref())),
            Ok(false) => {}
            Err(m) => missing = missing.or(Some(m)),
        }
    }
    missing.map_or(Ok(None), Err)
}

/// Envoy `PolicyMatcher`: any permission AND any principal.
pub(crate) fn matches<V: View + ?Sized>(r: &CRule, req: &V) -> Result<bool, Missing> {
    and(any_and(&r.permissions, req), || any_and(&r.principals, req))
}

/// Three-valued AND: false when either side is false for certain, else the missing input.
fn and(a: Result<bool, Missing>, b: impl FnOnce() -> Result<bool, Missing>) -> Result<bool, Missing> {
    match a {
        Ok(false) => Ok(false),
        Ok(true) => b(),
        Err(m) => match b() {
            Ok(false) => Ok(false),
            _ => Err(m),
        },
    }
}

/// Three-valued OR over `items`: true when one is true for certain, else the first missing input.
fn any<T>(items: &[T], mut f: impl FnMut(&T) -> Result<bool, Missing>) -> Result<bool, Missing> {
    let mut missing = None;
    for i in items {
        match f(i) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(m) => missing = missing.or(Some(m)),
        }
    }
    missing.map_or(Ok(false), Err)
}

fn any_and<V: View + ?Sized>(list: &[Vec<Cond>], req: &V) -> Result<bool, Missing> {
    any(list, |and_list| {
        // Three-valued AND of the conditions.
        let mut missing = None;
        for c in and_list {
            match cond(c, req) {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(m) => missing = missing.or(Some(m)),
            }
        }
        missing.map_or(Ok(true), Err)
    })
}

fn cond<V: View + ?Sized>(c: &Cond, req: &V) -> Result<bool, Missing> {
    let (atoms, negate) = match c {
        Cond::Or(a) => (a, false),
        Cond::NotOr(a) => (a, true),
    };
    // A peer name among the first ones decides the OR without reading every SAN.
    if atoms.iter().any(|a| matches!(a, Atom::Peer(m) if first_names_match(m, req))) {
        return Ok(!negate);
    }
    any(atoms, |a| atom(a, req)).map(|m| m != negate)
}

fn first_names_match<V: View + ?Sized>(m: &StrMatch, req: &V) -> bool {
    req.mtls() == Ok(true) && req.peer().is_ok_and(|p| p.iter().any(|n| m.matches(n)))
}

/// Envoy `authenticated.principal_name`: each URI SAN, each DNS SAN, then the subject. The first
/// names decide a match without more reads; a miss needs every SAN ([`View::peer_sans`]).
fn peer<V: View + ?Sized>(m: &StrMatch, req: &V) -> Result<bool, Missing> {
    if !req.mtls()? {
        return Ok(false);
    }
    if req.peer()?.iter().any(|n| m.matches(n)) {
        return Ok(true);
    }
    Ok(req.peer_sans()?.iter().any(|n| m.matches(n)))
}

fn atom<V: View + ?Sized>(a: &Atom, req: &V) -> Result<bool, Missing> {
    Ok(match a {
        Atom::Host(m) => m.matches(req.pseudo(":authority")?),
        Atom::Method(m) => m.matches(req.pseudo(":method")?),
        Atom::Path(m) => req.pseudo(":path")?.and_then(strip_query).is_some_and(|p| m.matches(p)),
        Atom::DestPort(p) => req.destination_port().ok_or(Missing("destination.port"))? == *p,
        Atom::DestIp(c) => c.contains(req.destination_ip().ok_or(Missing("destination.address"))?),
        Atom::Sni(m) => m.matches(req.sni()?),
        Atom::Metadata { slot, values, .. } => {
            let Some(e) = req.metadata()?.iter().find(|e| e.slot == *slot) else {
                return Ok(false);
            };
            values.iter().any(|m| match (m, &e.value) {
                (MetaMatch::String(s), MetaValue::String(v)) => s.matches(v),
                (MetaMatch::ListOneOf(s), MetaValue::List(items)) => {
                    items.iter().any(|i| matches!(i, MetaValue::String(v) if s.matches(v)))
                }
                _ => false,
            })
        }
        Atom::Peer(m) => peer(m, req)?,
        Atom::DirectIp(c) => c.contains(req.source_ip().ok_or(Missing("the direct peer address (source.ip)"))?),
        Atom::RemoteIp(c) => c.contains(req.remote_ip().ok_or(Missing("source.address (remote.ip)"))?),
        Atom::Header { name, m } => match m {
            HeaderMatch::Present => req.any_header(name, &mut |_| true)?,
            HeaderMatch::Str(s) => req.any_header(name, &mut |v| s.matches(v))?,
        },
        Atom::Jwt { iss, sub } => {
            let Some(id) = req.identity()? else { return Ok(false) };
            let (i, s) = if id.claims.is_empty() {
                (Some(id.issuer.as_str()), Some(id.subject.as_str()))
            } else {
                (id.claims.get("iss").and_then(Value::as_str), id.claims.get("sub").and_then(Value::as_str))
            };
            i.is_some_and(|i| iss.matches(i.as_bytes())) && s.is_some_and(|s| sub.matches(s.as_bytes()))
        }
        Atom::Claim { path, values } => {
            let Some(id) = req.identity()? else { return Ok(false) };
            // A hand-over without claims carries `aud` and `azp` in their own fields.
            if id.claims.is_empty() {
                match path.as_slice() {
                    [p] if p == "aud" => return Ok(id.audiences.iter().any(|a| any_str(values, a))),
                    [p] if p == "azp" => return Ok(id.presenter.as_deref().is_some_and(|a| any_str(values, a))),
                    _ => {}
                }
            }
            match claim(&id.claims, path) {
                Some(Value::String(s)) => any_str(values, s),
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str().is_some_and(|s| any_str(values, s))),
                _ => false,
            }
        }
    })
}

fn any_str(values: &[StrMatch], s: &str) -> bool {
    values.iter().any(|m| m.matches(s.as_bytes()))
}

/// Envoy metadata path traversal: through objects only.
fn claim<'v>(claims: &'v serde_json::Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for k in rest {
        v = v.as_object()?.get(k)?;
    }
    Some(v)
}

/// One shadow-RBAC + ext_authz pair (a chain of them is walked by [`Authz::custom_at`]).
fn custom_one<'e, V: View + ?Sized>(custom: &'e Custom, req: &V) -> CustomOutcome<'e> {
    match custom {
        Custom::None | Custom::Chain(_) => CustomOutcome::Continue,
        Custom::Ext { provider, rules } => match first_match(rules, req) {
            Ok(Some(rule)) => CustomOutcome::Check { provider, rule },
            Ok(None) => CustomOutcome::Continue,
            Err(m) => CustomOutcome::Deny(Verdict::new(false, Reason::Missing(m))),
        },
        Custom::Bad { reason, rules } => match first_match(rules, req) {
            Ok(Some(rule)) => CustomOutcome::Deny(Verdict::new(false, Reason::BadCustom { rule, reason })),
            Ok(None) => CustomOutcome::Continue,
            Err(m) => CustomOutcome::Deny(Verdict::new(false, Reason::Missing(m))),
        },
    }
}
