//! The compiled model: what [`crate::eval`] walks per request. Envoy RBAC's shapes as istiod
//! emits them — a rule is a `Policy` (any permission AND any principal), each permission or
//! principal an AND of [`Cond`]s, each `Cond` an OR (or NOT OR) of [`Atom`] matchers.
//!
//! Every rule gets a dense [`RuleId`] when compiling ends, so the filter keeps per-rule counters
//! in a `Vec` indexed by id instead of looking rule names up per request.

use crate::matcher::{Cidr, HeaderMatch, StrMatch};
use crate::peer_authentication::{MtlsMode, PeerAuthnPolicy};
use crate::provider::Provider;
use crate::{Needs, Stage};
use std::fmt;
use wasmesh_istio::Error;

/// A compiled rule's index: dense, `0..Authz::rule_count()`, in [`Authz::rule_names`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RuleId(pub(crate) usize);

impl RuleId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// A rule a decision names: its id (for indexed metrics) and Istio's RBAC policy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleRef<'e> {
    pub id: RuleId,
    pub name: &'e str,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A compiled rule: Envoy RBAC `Policy` (any permission AND any principal).
#[derive(Debug, Clone)]
pub(crate) struct CRule {
    /// Assigned when compiling ends.
    pub id: RuleId,
    /// `ns[<ns>]-policy[<name>]-rule[<i>]`, with istiod's prefix/suffix for CUSTOM.
    pub name: String,
    pub permissions: Vec<Vec<Cond>>,
    pub principals: Vec<Vec<Cond>>,
}

impl CRule {
    pub fn new(name: String, permissions: Vec<Vec<Cond>>, principals: Vec<Vec<Cond>>) -> CRule {
        CRule { id: RuleId::default(), name, permissions, principals }
    }

    pub fn as_ref(&self) -> RuleRef<'_> {
        RuleRef { id: self.id, name: &self.name }
    }

    fn atoms_mut(&mut self) -> impl Iterator<Item = &mut Atom> {
        self.permissions.iter_mut().chain(self.principals.iter_mut()).flatten().flat_map(|c| match c {
            Cond::Or(a) | Cond::NotOr(a) => a.iter_mut(),
        })
    }
}

/// One AND term: OR of atoms, or NOT of the OR.
#[derive(Debug, Clone)]
pub(crate) enum Cond {
    Or(Vec<Atom>),
    NotOr(Vec<Atom>),
}

/// The matchers istiod emits.
#[derive(Debug, Clone)]
pub(crate) enum Atom {
    // Permissions.
    Host(HeaderMatch),
    Method(HeaderMatch),
    Path(StrMatch),
    DestPort(u32),
    DestIp(Cidr),
    Sni(StrMatch),
    /// `experimental.envoy.filters.<f>[<k>]`: OR of value matchers on dynamic metadata.
    Metadata {
        filter: String,
        key: String,
        /// Index of `(filter, key)` in [`Needs::metadata`] (what the filter decodes), assigned
        /// when compiling ends.
        slot: usize,
        values: Vec<MetaMatch>,
    },
    // Principals.
    /// Envoy `authenticated.principal_name` on the peer certificate names.
    Peer(StrMatch),
    DirectIp(Cidr),
    RemoteIp(Cidr),
    Header {
        name: String,
        m: HeaderMatch,
    },
    /// `requestPrincipals`: `payload.iss` AND `payload.sub`.
    Jwt {
        iss: StrMatch,
        sub: StrMatch,
    },
    /// `request.auth.claims[...]` / audiences / presenter: a string claim matching one of the
    /// values, or a list claim with an element matching one of them.
    Claim {
        path: Vec<String>,
        values: Vec<StrMatch>,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum MetaMatch {
    String(StrMatch),
    /// `[v]`: a list value with an element matching.
    ListOneOf(StrMatch),
}

/// Enforced and dry-run rules of one RBAC filter (Envoy `rules` / `shadow_rules`).
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    /// `None`: no enforcement (Envoy `rules` absent).
    pub rules: Option<Vec<CRule>>,
    pub shadow: Option<Vec<CRule>>,
}

#[derive(Debug, Clone)]
pub(crate) enum Custom {
    None,
    Ext {
        provider: Box<Provider>,
        rules: Vec<CRule>,
    },
    /// Unknown or invalid provider, or several providers without
    /// `multipleCustomProviders`: the CUSTOM rules deny.
    Bad {
        reason: String,
        rules: Vec<CRule>,
    },
    /// Several providers with `multipleCustomProviders` (Istio 1.30's
    /// `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`): istiod writes one shadow-RBAC +
    /// ext_authz pair per provider, in provider-name order, so each provider whose rules match is
    /// asked in turn on the request as the providers before it left it; a denial ends the
    /// request. Each element is [`Custom::Ext`] or [`Custom::Bad`] (at most
    /// [`MAX_CUSTOM_PROVIDERS`]).
    Chain(Vec<Custom>),
}

/// Most CUSTOM providers one workload's policies may name with `multipleCustomProviders` (each
/// is a check in sequence per request; istiod puts no bound of its own beyond the meshConfig's
/// list of extension providers). More refuse the configuration.
pub const MAX_CUSTOM_PROVIDERS: usize = 16;

/// The compiled authorization for one proxy.
#[derive(Debug, Clone)]
pub struct Authz {
    pub(crate) decision_filter_state: bool,
    /// [`crate::AuthzConfig::single_san_peers`].
    pub(crate) single_san_peers: bool,
    /// [`crate::AuthzConfig::request_body`].
    pub(crate) request_body: bool,
    /// [`Authz::body_cap`].
    pub(crate) body_cap: usize,
    pub(crate) stage: Stage,
    pub(crate) custom: Custom,
    pub(crate) audit: Vec<CRule>,
    pub(crate) deny: RuleSet,
    pub(crate) allow: RuleSet,
    pub(crate) peer_authn: Option<PeerAuthnPolicy>,
    pub(crate) needs: Needs,
    pub(crate) warnings: Vec<Error>,
    pub(crate) applied: Vec<String>,
    /// Rule names by [`RuleId`].
    pub(crate) rule_names: Vec<String>,
}

impl Authz {
    /// Configuration problems that istiod would log and tolerate (the filter logs them).
    pub fn warnings(&self) -> &[Error] {
        &self.warnings
    }

    /// `Kind ns/name (ACTION)` of every AuthorizationPolicy that applies to the workload.
    pub fn applied(&self) -> &[String] {
        &self.applied
    }

    pub fn needs(&self) -> &Needs {
        &self.needs
    }

    /// Whether the first SANs Envoy reports are all of a peer certificate's SANs.
    pub fn single_san_peers(&self) -> bool {
        self.single_san_peers
    }

    /// Whether Envoy hands this filter the request body while it holds the headers
    /// ([`crate::AuthzConfig::request_body`]).
    pub fn request_body(&self) -> bool {
        self.request_body
    }

    /// How much of each request body the filter keeps for its checks: the largest
    /// `maxRequestBytes` of its providers when Envoy hands it the body ([`Authz::request_body`]),
    /// 0 otherwise (no body is read). Computed once, at compile time.
    pub fn body_cap(&self) -> usize {
        self.body_cap
    }

    /// The largest `maxRequestBytes` of this filter's CUSTOM providers (0: none reads the body).
    pub fn max_request_body(&self) -> usize {
        self.providers()
            .iter()
            .filter_map(|p| p.body.as_ref())
            .map(|b| usize::try_from(b.max_request_bytes).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(0)
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether the filter writes each decision to filter state for access logs.
    pub fn decision_filter_state(&self) -> bool {
        self.decision_filter_state
    }

    /// The CUSTOM provider this filter calls, if any CUSTOM policy applies.
    /// Whether the filter, alone, should read the request headers one by one rather than as one
    /// map: when the policies read at most [`FEW_HEADERS`] pseudo-header and no other header
    /// (nor forward them all to a CUSTOM provider). Each single read costs a hostcall and a guest
    /// allocation; the map costs one of each (read in place since, no copy per header: the
    /// figures below are from before, with the SDK's decoding). Measured under callgrind
    /// (the authz bench scenario, `:path` and `:method` read, ~10 small headers): one by one
    /// +51.2k instructions per request over no filter, the map +44.5k; with a sidecar's ~1.4 KB
    /// of headers two single reads (~21k) still cost as much as the map (~20k).
    pub fn reads_few_headers(&self) -> bool {
        self.needs.pseudo_headers <= FEW_HEADERS && !self.needs.headers
    }

    pub fn provider(&self) -> Option<&Provider> {
        self.custom_provider(0)
    }

    /// The response-side callbacks the filter needs ([`wasmesh_istio::module`]): response headers
    /// when a CUSTOM provider may add headers to the response of an allowed request
    /// (`headersToDownstreamOnAllow`), none otherwise (a denial is answered on the request side;
    /// the network stage has no HTTP response).
    pub fn callbacks(&self) -> wasmesh_istio::module::Callbacks {
        let adds = self.stage != Stage::Tcp && self.providers().iter().any(|p| !p.to_downstream_on_allow.is_empty());
        if adds {
            wasmesh_istio::module::Callbacks::RESPONSE_HEADERS
        } else {
            wasmesh_istio::module::Callbacks::NONE
        }
    }

    /// The CUSTOM provider at `index` of the chain (index 0 alone without
    /// `multipleCustomProviders`), if it is a usable one.
    pub fn custom_provider(&self, index: usize) -> Option<&Provider> {
        match &self.custom {
            Custom::Ext { provider, .. } if index == 0 => Some(provider),
            Custom::Chain(chain) => match chain.get(index) {
                Some(Custom::Ext { provider, .. }) => Some(provider),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every usable CUSTOM provider this filter may call, in the order it calls them.
    pub fn providers(&self) -> Vec<&Provider> {
        match &self.custom {
            Custom::Ext { provider, .. } => vec![provider],
            Custom::Chain(chain) => chain
                .iter()
                .filter_map(|c| match c {
                    Custom::Ext { provider, .. } => Some(&**provider),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Whether anything at all is enforced or observed (no policy → the filter is a no-op).
    pub fn is_empty(&self) -> bool {
        matches!(self.custom, Custom::None)
            && self.audit.is_empty()
            && self.deny.rules.is_none()
            && self.deny.shadow.is_none()
            && self.allow.rules.is_none()
            && self.allow.shadow.is_none()
            && self.peer_authn.as_ref().is_none_or(|p| !p_strict(p))
    }

    /// Every compiled rule name, indexed by [`RuleId`].
    pub fn rule_names(&self) -> Vec<String> {
        self.rule_names.clone()
    }

    /// How many rules were compiled: every [`RuleId`] is below it.
    pub fn rule_count(&self) -> usize {
        self.rule_names.len()
    }

    /// The name of a rule.
    pub fn rule_name(&self, id: RuleId) -> Option<&str> {
        self.rule_names.get(id.0).map(String::as_str)
    }

    /// Every rule, in id order: CUSTOM, AUDIT, DENY (enforced, dry-run), ALLOW (enforced, dry-run).
    fn rules_mut(&mut self) -> Vec<&mut CRule> {
        let mut out: Vec<&mut CRule> = Vec::new();
        match &mut self.custom {
            Custom::Ext { rules, .. } | Custom::Bad { rules, .. } => out.extend(rules.iter_mut()),
            Custom::Chain(chain) => {
                for c in chain {
                    if let Custom::Ext { rules, .. } | Custom::Bad { rules, .. } = c {
                        out.extend(rules.iter_mut());
                    }
                }
            }
            Custom::None => {}
        }
        out.extend(self.audit.iter_mut());
        for set in [&mut self.deny, &mut self.allow] {
            for rules in [&mut set.rules, &mut set.shadow].into_iter().flatten() {
                out.extend(rules.iter_mut());
            }
        }
        out
    }

    /// Ends compiling: numbers the rules, gives each metadata condition its slot and computes
    /// what the filter must read.
    pub(crate) fn finish(&mut self) {
        let mut names = Vec::new();
        let mut n = Needs::default();
        let mut pseudo = [false; 3];
        for (i, r) in self.rules_mut().into_iter().enumerate() {
            r.id = RuleId(i);
            names.push(r.name.clone());
            for a in r.atoms_mut() {
                match a {
                    Atom::DestPort(_) => n.destination_port = true,
                    Atom::DestIp(_) => n.destination_ip = true,
                    Atom::Sni(_) => n.sni = true,
                    Atom::Metadata { filter, key, slot, .. } => {
                        let k = (filter.clone(), key.clone());
                        *slot = match n.metadata.iter().position(|m| *m == k) {
                            Some(i) => i,
                            None => {
                                n.metadata.push(k);
                                n.metadata.len() - 1
                            }
                        };
                    }
                    Atom::Peer(_) => {
                        n.peer = true;
                        n.mtls = true;
                    }
                    Atom::DirectIp(_) => n.source_ip = true,
                    Atom::RemoteIp(_) => n.remote_ip = true,
                    Atom::Jwt { .. } | Atom::Claim { .. } => n.identity = true,
                    Atom::Host(_) => pseudo[0] = true,
                    Atom::Method(_) => pseudo[1] = true,
                    Atom::Path(_) => pseudo[2] = true,
                    Atom::Header { .. } => n.headers = true,
                }
            }
        }
        n.pseudo_headers = pseudo.iter().filter(|p| **p).count();
        if !self.providers().is_empty() {
            n.headers = true;
        }
        if let Some(p) = &self.peer_authn {
            if p_strict(p) {
                n.mtls = true;
                n.destination_port = true;
            }
        }
        self.rule_names = names;
        self.needs = n;
    }
}

/// Most pseudo-headers read one by one ([`Authz::reads_few_headers`]).
pub const FEW_HEADERS: usize = 1;

/// Whether a PeerAuthentication policy can refuse anything (a STRICT port somewhere).
fn p_strict(p: &PeerAuthnPolicy) -> bool {
    p.mode() == MtlsMode::Strict || p.port_overrides().any(|(_, m)| m == MtlsMode::Strict)
}

impl PartialEq<&str> for RuleRef<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.name == *other
    }
}
