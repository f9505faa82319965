//! From Istio resources to compiled rules, once, at configure time: istiod's
//! `pilot/pkg/security/authz/{builder,model}` translation, kept rule for rule.

use crate::matcher::{contains_path_template, path_template, Cidr, Class, Glob, HeaderMatch, StrMatch};
use crate::model::{Atom, Authz, CRule, Cond, Custom, MetaMatch, RuleSet, MAX_CUSTOM_PROVIDERS};
use crate::peer_authentication::PeerAuthnPolicy;
use crate::provider::{parse_providers, Provider, Transport};
use crate::trust_domain::{expand_trust_domain_aliases, replace_trust_domain_aliases};
use crate::{scope, AuthzConfig, CompileError, Needs, Stage, DRY_RUN_ANNOTATION};
use std::collections::BTreeSet;
use wasmesh_istio::security::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};
use wasmesh_istio::{Error, FilterConfig, ProxyMode, Resource, Resources};

impl AuthzConfig {
    /// Compiles from already-parsed resources (the `resources` field is not read).
    pub fn compile(&self, resources: &Resources) -> Result<Authz, CompileError> {
        let wl = self.require_workload()?;
        let mut warnings = Vec::new();
        let mut bundle = vec![wl.trust_domain.clone()];
        bundle.extend(self.trust_domain_aliases.iter().cloned());
        let providers = parse_providers(&self.extension_providers);

        let mut custom_policies: Vec<(&Resource, &AuthorizationPolicy)> = Vec::new();
        let mut audit = Vec::new();
        let mut deny = RuleSet::default();
        let mut allow = RuleSet::default();
        let mut applied = Vec::new();
        let mut errors = Vec::new();

        for (res, ap) in resources.authorization_policies() {
            if !scope::applies(wl, res, &ap.selector, &ap.target_ref, &ap.target_refs) {
                continue;
            }
            applied.push(format!("{} ({})", res.display_name(), action_name(ap.action)));
            let dry_run = dry_run(res, &mut warnings);
            check_bounds(res, ap, &mut errors);
            let ctx = PolicyCtx { res, ap, bundle: &bundle, prefix: String::new(), tcp: self.stage == Stage::Tcp };
            match ap.action {
                Action::Custom => custom_policies.push((res, ap)),
                Action::Audit => {
                    if dry_run {
                        warnings.push(Error::at(
                            res,
                            "metadata.annotations",
                            "istio.io/dry-run applies to ALLOW and DENY only; this AUDIT policy has no effect",
                        ));
                    } else {
                        audit.extend(ctx.rules(&mut warnings));
                    }
                }
                Action::Deny | Action::Allow => {
                    let set = if ap.action == Action::Deny { &mut deny } else { &mut allow };
                    let target = if dry_run { &mut set.shadow } else { &mut set.rules };
                    target.get_or_insert_with(Vec::new).extend(ctx.rules(&mut warnings));
                }
            }
        }

        if !errors.is_empty() {
            return Err(CompileError(errors));
        }
        let mut custom = self.custom(&custom_policies, &providers, &bundle, &mut warnings);
        if self.stage == Stage::Tcp {
            custom = self.custom_on_tcp(custom, &mut warnings);
        }

        if self.peer_authentication_by_transport && wl.mode != ProxyMode::Sidecar {
            return Err(CompileError(vec![Error::new(
                "authz configuration: peerAuthenticationByTransport is for sidecars: PeerAuthentication does not apply to a gateway's listeners",
            )]));
        }
        // Enforced by the listener's filter chains where the configuration says so.
        let peer_authn = if wl.mode == ProxyMode::Sidecar
            && !self.peer_authentication_by_transport
            && resources.peer_authentications().next().is_some()
        {
            Some(PeerAuthnPolicy::compile(wl, resources).map_err(CompileError)?)
        } else {
            None
        };

        for set in [&mut deny, &mut allow] {
            for rules in [&mut set.rules, &mut set.shadow].into_iter().flatten() {
                rules.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
        audit.sort_by(|a, b| a.name.cmp(&b.name));

        let mut authz = Authz {
            decision_filter_state: self.decision_filter_state,
            single_san_peers: self.single_san_peers,
            request_body: self.request_body,
            body_cap: 0,
            stage: self.stage,
            custom,
            audit,
            deny,
            allow,
            peer_authn,
            needs: Needs::default(),
            warnings,
            applied,
            rule_names: Vec::new(),
        };
        // PeerAuthentication is enforced once, by the first instance on the chain: the CUSTOM
        // instance when a CUSTOM policy applies (it runs first), else the RBAC instance, so a
        // STRICT PeerAuthentication alone installs one filter, not two.
        let has_custom = !matches!(authz.custom, Custom::None);
        if authz.stage == Stage::Custom {
            authz.audit.clear();
            authz.deny = RuleSet::default();
            authz.allow = RuleSet::default();
            if !has_custom {
                authz.peer_authn = None;
            }
        } else if authz.stage == Stage::Rbac {
            authz.custom = Custom::None;
            if has_custom {
                authz.peer_authn = None;
            }
        }
        authz.finish();
        if authz.request_body {
            authz.body_cap = authz.max_request_body();
        }
        Ok(authz)
    }

    /// istiod's `buildTCP` for the CUSTOM builder: a provider without a TCP ext_authz filter
    /// (`envoyExtAuthzHttp`) leaves TCP traffic alone; a bad provider keeps its rules as deny
    /// rules (`getBadCustomDenyRules`); an `envoyExtAuthzGrpc` provider checks each connection
    /// whose CUSTOM rules match, as Envoy's network ext_authz filter istiod writes for it (its
    /// `timeout` and `failOpen` apply; `statusOnError` and `includeRequestBodyInCheck` are not
    /// part of istiod's network filter and mean nothing to a connection).
    fn custom_on_tcp(&self, custom: Custom, warnings: &mut Vec<Error>) -> Custom {
        if let Custom::Chain(chain) = custom {
            // Per provider, as istiod's `buildTCP` loops over them.
            let mut chain: Vec<Custom> = chain
                .into_iter()
                .map(|c| self.custom_on_tcp(c, warnings))
                .filter(|c| !matches!(c, Custom::None))
                .collect();
            return match chain.len() {
                0 => Custom::None,
                1 => chain.pop().unwrap_or(Custom::None),
                _ => Custom::Chain(chain),
            };
        }
        match custom {
            Custom::Ext { provider, .. } if provider.transport == Transport::Http => {
                warnings.push(Error::new(format!(
                    "CUSTOM provider {:?} is an HTTP ext_authz provider; its policies do not apply to TCP traffic (as in Istio)",
                    provider.name
                )));
                Custom::None
            }
            other => other,
        }
    }

    fn custom(
        &self,
        policies: &[(&Resource, &AuthorizationPolicy)],
        providers: &std::collections::BTreeMap<String, Result<Provider, String>>,
        bundle: &[String],
        warnings: &mut Vec<Error>,
    ) -> Custom {
        if policies.is_empty() {
            return Custom::None;
        }
        let names: BTreeSet<String> =
            policies.iter().map(|(_, ap)| ap.provider.as_ref().map(|p| p.name.clone()).unwrap_or_default()).collect();
        let mut enforced: Vec<(String, CRule)> = Vec::new();
        for (res, ap) in policies {
            let provider = ap.provider.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            let prefix = if provider.is_empty() {
                "istio-ext-authz-".to_string()
            } else {
                format!("istio-ext-authz-{provider}-")
            };
            if dry_run(res, warnings) {
                warnings.push(Error::at(res, "metadata.annotations", "istio.io/dry-run is not supported for CUSTOM policies (Istio rejects it); the policy is not enforced"));
                continue;
            }
            let ctx = PolicyCtx { res, ap, bundle, prefix, tcp: self.stage == Stage::Tcp };
            enforced.extend(ctx.rules(warnings).into_iter().map(|r| (provider.clone(), r)));
        }
        let bad = |reason: String, rules: Vec<(String, CRule)>, warnings: &mut Vec<Error>| {
            warnings.push(Error::new(format!(
                "CUSTOM authorization: {reason}; requests matching the CUSTOM rules are denied"
            )));
            let mut rules: Vec<CRule> = rules
                .into_iter()
                .map(|(_, mut r)| {
                    r.name.push_str("-deny-due-to-bad-CUSTOM-action");
                    r
                })
                .collect();
            rules.sort_by(|a, b| a.name.cmp(&b.name));
            Custom::Bad { reason, rules }
        };
        if names.len() > 1 && !self.multiple_custom_providers {
            let list: Vec<&str> = names.iter().map(String::as_str).collect();
            return bad(
                format!("multiple CUSTOM providers per workload need multipleCustomProviders (PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS), found {list:?}"),
                enforced,
                warnings,
            );
        }
        if names.len() > MAX_CUSTOM_PROVIDERS {
            return bad(
                format!(
                    "{} CUSTOM providers for one workload; at most {MAX_CUSTOM_PROVIDERS} are accepted",
                    names.len()
                ),
                enforced,
                warnings,
            );
        }
        // istiod's `buildHTTP`: one shadow-RBAC + ext_authz pair per provider, providers in
        // name order (Go `sort.Strings`, bytewise like `BTreeSet<String>`), each pair holding
        // only its provider's rules; an invalid provider's pair is a deny RBAC filter.
        let mut chain: Vec<Custom> = names
            .into_iter()
            .map(|name| {
                let (mine, _): (Vec<_>, Vec<_>) = enforced.iter().cloned().partition(|(p, _)| *p == name);
                match providers.get(&name) {
                    Some(Ok(p)) => {
                        let mut rules: Vec<CRule> = mine.into_iter().map(|(_, r)| r).collect();
                        rules.sort_by(|a, b| a.name.cmp(&b.name));
                        Custom::Ext { provider: Box::new(p.clone()), rules }
                    }
                    Some(Err(e)) => bad(format!("extension provider {name:?} is invalid: {e}"), mine, warnings),
                    None => {
                        let known: Vec<&String> = providers.keys().collect();
                        bad(format!("available providers are {known:?} but found {name:?}"), mine, warnings)
                    }
                }
            })
            .collect();
        if chain.len() == 1 {
            chain.pop().unwrap_or(Custom::None)
        } else {
            Custom::Chain(chain)
        }
    }
}

/// `istio.io/dry-run` as istiod parses it (Go `strconv.ParseBool`; invalid → not dry-run).
fn dry_run(res: &Resource, warnings: &mut Vec<Error>) -> bool {
    match res.metadata.annotations.get(DRY_RUN_ANNOTATION).map(String::as_str) {
        None => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => {
            warnings.push(Error::at(
                res,
                "metadata.annotations[istio.io/dry-run]",
                format!("{other:?} is not a boolean; the policy is enforced"),
            ));
            false
        }
    }
}

struct PolicyCtx<'a> {
    res: &'a Resource,
    ap: &'a AuthorizationPolicy,
    bundle: &'a [String],
    prefix: String,
    /// Generating for a TCP port (istiod `forTCP`): HTTP-only keys are generator errors.
    tcp: bool,
}

/// Most values in one list of a policy (`principals`, `paths`, a condition's `values`, … and
/// each `not` list). Envoy's RBAC filter puts no bound of its own (its configuration is bounded
/// by the xDS message size); wasmesh evaluates every value per request, so an unbounded list is
/// per-request work without bound: a policy past it refuses the configuration.
pub const MAX_FIELD_VALUES: usize = 1024;

/// Longest value in a policy (a principal, path, host, header or claim value, a condition key).
/// The matcher a value becomes is linear in its length, the analogue of the program-size bound
/// Envoy's RE2 matchers have (`re2.max_program_size.error_level`, 100 by default). Every glob
/// made from such a value fits [`crate::matcher::STACK_GLOB_ITEMS`], so matching allocates nothing.
pub const MAX_VALUE_BYTES: usize = 900;

/// [`MAX_FIELD_VALUES`] and [`MAX_VALUE_BYTES`] for every list of a policy, reported by field.
fn check_bounds(res: &Resource, ap: &AuthorizationPolicy, errors: &mut Vec<Error>) {
    for (i, rule) in ap.rules.as_deref().unwrap_or_default().iter().enumerate() {
        let Some(rule) = rule else { continue };
        let field = format!("spec.rules[{i}]");
        let mut kvs = Vec::new();
        for (j, from) in rule.from.as_deref().unwrap_or_default().iter().enumerate() {
            kvs.extend(source_kvs(from.source.as_ref(), &format!("{field}.from[{j}].source")));
        }
        for (j, to) in rule.to.as_deref().unwrap_or_default().iter().enumerate() {
            kvs.extend(operation_kvs(to.operation.as_ref(), &format!("{field}.to[{j}].operation")));
        }
        for (j, cond) in rule.when.as_deref().unwrap_or_default().iter().enumerate() {
            let at = format!("{field}.when[{j}]");
            if cond.key.len() > MAX_VALUE_BYTES {
                errors.push(Error::at(
                    res,
                    format!("{at}.key"),
                    format!("{} bytes; at most {MAX_VALUE_BYTES} are accepted", cond.key.len()),
                ));
            }
            kvs.extend(kv(Key::Host, at, cond.values.as_deref(), cond.not_values.as_deref()));
        }
        for kv in kvs {
            for (list, name) in [(&kv.values, "values"), (&kv.not_values, "values in its not-list")] {
                if list.len() > MAX_FIELD_VALUES {
                    errors.push(Error::at(
                        res,
                        kv.field.clone(),
                        format!("{} {name}; at most {MAX_FIELD_VALUES} are accepted per list", list.len()),
                    ));
                }
                if let Some(long) = list.iter().find(|v| v.len() > MAX_VALUE_BYTES) {
                    errors.push(Error::at(
                        res,
                        kv.field.clone(),
                        format!(
                            "a value of {} bytes ({:?}…); at most {MAX_VALUE_BYTES} are accepted",
                            long.len(),
                            long.chars().take(32).collect::<String>()
                        ),
                    ));
                }
            }
        }
    }
}

/// One `key`'s values in a model rule list.
#[derive(Clone)]
struct Kv {
    key: Key,
    /// The Istio field it came from, for warnings.
    field: String,
    values: Vec<String>,
    not_values: Vec<String>,
}

#[derive(Clone, PartialEq)]
enum Key {
    Host,
    Method,
    Path,
    Port,
    DestIp,
    Sni,
    EnvoyFilter(String),
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcTrustDomain,
    SrcServiceAccount,
    SrcPrincipal,
    RequestPrincipal,
    Audiences,
    Presenter,
    Header(String),
    Claims(String),
}

impl Key {
    /// Keys whose values istiod turns into one matcher (`extendedGenerator`).
    fn extended(&self) -> bool {
        matches!(self, Key::EnvoyFilter(_) | Key::RequestPrincipal | Key::Audiences | Key::Presenter | Key::Claims(_))
    }
}

impl PolicyCtx<'_> {
    fn name(&self, i: usize) -> String {
        format!("{}ns[{}]-policy[{}]-rule[{}]", self.prefix, self.res.namespace(), self.res.name(), i)
    }

    /// The RBAC policies of this AuthorizationPolicy (istiod `Builder.build` for one policy).
    fn rules(&self, warnings: &mut Vec<Error>) -> Vec<CRule> {
        let rules = self.ap.rules.as_deref().unwrap_or_default();
        if rules.is_empty() {
            // rbacPolicyMatchNever.
            return vec![CRule::new(self.name(0), Vec::new(), Vec::new())];
        }
        let mut out = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let Some(rule) = rule else {
                warnings.push(Error::at(self.res, field, "a null rule is skipped (Istio rejects it)"));
                continue;
            };
            match self.rule(rule, &field, warnings) {
                Ok((permissions, principals)) => out.push(CRule::new(self.name(i), permissions, principals)),
                Err(e) => warnings.push(Error::at(self.res, field, format!("rule skipped: {e}"))),
            }
        }
        out
    }

    /// istiod `model.New` + `Generate`.
    #[allow(clippy::type_complexity)]
    fn rule(
        &self,
        rule: &Rule,
        field: &str,
        warnings: &mut Vec<Error>,
    ) -> Result<(Vec<Vec<Cond>>, Vec<Vec<Cond>>), String> {
        let mut base_perm: Vec<Kv> = Vec::new();
        let mut base_princ: Vec<Kv> = Vec::new();
        for (j, c) in rule.when.as_deref().unwrap_or_default().iter().enumerate() {
            let (key, perm) = when_key(c).ok_or_else(|| format!("{field}.when[{j}]: unknown attribute {:?}", c.key))?;
            let kv = kv(key, format!("{field}.when[{j}]"), c.values.as_deref(), c.not_values.as_deref());
            if let Some(kv) = kv {
                if perm {
                    base_perm.push(kv);
                } else {
                    base_princ.push(kv);
                }
            }
        }
        let mut principals = Vec::new();
        let froms = rule.from.as_deref().unwrap_or_default();
        for (j, from) in froms.iter().enumerate() {
            let mut list = source_kvs(from.source.as_ref(), &format!("{field}.from[{j}].source"));
            list.extend(base_princ.iter().cloned());
            principals.push(list);
        }
        if froms.is_empty() {
            principals.push(base_princ.clone());
        }
        let mut permissions = Vec::new();
        let tos = rule.to.as_deref().unwrap_or_default();
        for (j, to) in tos.iter().enumerate() {
            let mut list = operation_kvs(to.operation.as_ref(), &format!("{field}.to[{j}].operation"));
            list.extend(base_perm.iter().cloned());
            permissions.push(list);
        }
        if tos.is_empty() {
            permissions.push(base_perm.clone());
        }
        let gen = |lists: Vec<Vec<Kv>>, warnings: &mut Vec<Error>| -> Result<Vec<Vec<Cond>>, String> {
            let mut out = Vec::new();
            for list in lists {
                let mut and = Vec::new();
                for kv in list {
                    and.extend(self.generate(kv, warnings)?);
                }
                out.push(and);
            }
            Ok(out)
        };
        let permissions = gen(permissions, warnings)?;
        let principals = gen(principals, warnings)?;
        Ok((permissions, principals))
    }

    /// istiod `rule.permission/principal` with `checkError`: for ALLOW an error drops the rule
    /// (returned), otherwise the offending value is dropped and reported.
    fn generate(&self, kv: Kv, warnings: &mut Vec<Error>) -> Result<Vec<Cond>, String> {
        let kv = self.migrate_trust_domain(kv);
        let mut out = Vec::new();
        fn check<T>(
            ctx: &PolicyCtx<'_>,
            kv: &Kv,
            r: Result<T, String>,
            value: &str,
            warnings: &mut Vec<Error>,
        ) -> Result<Option<T>, String> {
            match r {
                Ok(a) => Ok(Some(a)),
                Err(e) => {
                    let msg = format!("{:?}: {e}", value);
                    if ctx.ap.action == Action::Allow {
                        Err(format!("{}: {msg}", kv.field))
                    } else {
                        warnings.push(Error::at(
                            ctx.res,
                            kv.field.clone(),
                            format!("value ignored (a {} policy then matches more): {msg}", action_name(ctx.ap.action)),
                        ));
                        Ok(None)
                    }
                }
            }
        }
        for (values, negate) in [(&kv.values, false), (&kv.not_values, true)] {
            if values.is_empty() {
                continue;
            }
            let atoms: Vec<Atom> = if kv.key.extended() {
                check(self, &kv, self.extended(&kv.key, values), &values.join(","), warnings)?.unwrap_or_default()
            } else {
                let mut v = Vec::new();
                for value in values {
                    if let Some(a) = check(self, &kv, self.atom(&kv.key, value), value, warnings)? {
                        v.push(a);
                    }
                }
                v
            };
            if !atoms.is_empty() {
                out.push(if negate { Cond::NotOr(atoms) } else { Cond::Or(atoms) });
            }
        }
        Ok(out)
    }

    /// istiod's generators refuse HTTP-only keys for TCP (`"<key>" is HTTP only`).
    fn http_only(&self, key: &Key) -> Result<(), String> {
        if !self.tcp {
            return Ok(());
        }
        let name = match key {
            Key::Host => "hosts",
            Key::Method => "methods",
            Key::Path => "paths",
            Key::RequestPrincipal => "requestPrincipals / request.auth.principal",
            Key::Audiences => "request.auth.audiences",
            Key::Presenter => "request.auth.presenter",
            Key::Header(k) | Key::Claims(k) => k,
            _ => return Ok(()),
        };
        Err(format!("{name} is HTTP only and this is a TCP port"))
    }

    /// `MigrateTrustDomain`: principals get every bundle trust domain, trust domains expand.
    fn migrate_trust_domain(&self, mut kv: Kv) -> Kv {
        match kv.key {
            Key::SrcPrincipal => {
                kv.values = replace_trust_domain_aliases(self.bundle, &kv.values);
                kv.not_values = replace_trust_domain_aliases(self.bundle, &kv.not_values);
            }
            Key::SrcTrustDomain => {
                kv.values = expand_trust_domain_aliases(self.bundle, &kv.values);
                kv.not_values = expand_trust_domain_aliases(self.bundle, &kv.not_values);
            }
            _ => {}
        }
        kv
    }

    /// Generators for one value.
    fn atom(&self, key: &Key, v: &str) -> Result<Atom, String> {
        self.http_only(key)?;
        Ok(match key {
            Key::Host => Atom::Host(HeaderMatch::istio(v, true)),
            Key::Method => Atom::Method(HeaderMatch::istio(v, false)),
            Key::Path => {
                if contains_path_template(v) {
                    Atom::Path(StrMatch::glob(path_template(v)?))
                } else {
                    Atom::Path(StrMatch::istio(v, ""))
                }
            }
            Key::Port => Atom::DestPort(port(v)?),
            Key::DestIp => Atom::DestIp(Cidr::parse(v)?),
            Key::Sni => Atom::Sni(StrMatch::istio(v, "")),
            Key::SrcIp => Atom::DirectIp(Cidr::parse(v)?),
            Key::RemoteIp => Atom::RemoteIp(Cidr::parse(v)?),
            Key::SrcNamespace => {
                // `.*/ns/<v with * → .*>/.*`
                let mut g = Glob::new().star(Class::AnyButNewline).lit(b"/ns/");
                for (i, part) in v.split('*').enumerate() {
                    if i > 0 {
                        g = g.star(Class::AnyButNewline);
                    }
                    g = g.lit(part.as_bytes());
                }
                Atom::Peer(StrMatch::glob(g.lit(b"/").star(Class::AnyButNewline)))
            }
            Key::SrcServiceAccount => {
                // `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`
                let (ns, sa) = v.split_once('/').unwrap_or((self.res.namespace(), v));
                let head =
                    || Glob::new().lit(b"spiffe://").plus(Class::AnyButNewline).lit(format!("/ns/{ns}/").as_bytes());
                let mut globs = Vec::new();
                for middle in [false, true] {
                    for tail in [false, true] {
                        let mut g = head();
                        if middle {
                            g = g.plus(Class::AnyButNewline).lit(b"/");
                        }
                        g = g.lit(format!("sa/{sa}").as_bytes());
                        if tail {
                            g = g.lit(b"/").plus(Class::AnyButNewline);
                        }
                        globs.push(g);
                    }
                }
                Atom::Peer(StrMatch::Globs(globs.into_boxed_slice()))
            }
            Key::SrcTrustDomain => Atom::Peer(if v == "*" {
                StrMatch::Prefix(b"spiffe://".as_slice().into())
            } else if !v.contains('*') {
                StrMatch::Prefix(format!("spiffe://{v}/").into_bytes().into())
            } else {
                let (a, b) = v.split_once('*').unwrap_or((v, ""));
                StrMatch::glob(
                    Glob::new()
                        .lit(b"spiffe://")
                        .lit(a.as_bytes())
                        .star(Class::NotSlash)
                        .lit(b.as_bytes())
                        .lit(b"/")
                        .star(Class::AnyButNewline),
                )
            }),
            Key::SrcPrincipal => Atom::Peer(StrMatch::istio(v, "spiffe://")),
            Key::Header(k) => {
                let name = bracket(k.strip_prefix("request.headers").unwrap_or(k))?;
                if name.is_empty() {
                    return Err(format!("empty header name in {k:?}"));
                }
                Atom::Header { name: name.to_ascii_lowercase(), m: HeaderMatch::istio(v, false) }
            }
            Key::EnvoyFilter(_) | Key::RequestPrincipal | Key::Audiences | Key::Presenter | Key::Claims(_) => {
                return Err("internal: extended key generated per value".into())
            }
        })
    }

    /// Extended generators: all values of a key into one matcher.
    fn extended(&self, key: &Key, values: &[String]) -> Result<Vec<Atom>, String> {
        self.http_only(key)?;
        Ok(vec![match key {
            Key::RequestPrincipal => return Ok(values.iter().map(|v| request_principal(v)).collect()),
            Key::Audiences => Atom::Claim {
                path: vec!["aud".into()],
                values: values.iter().map(|v| StrMatch::istio(v, "")).collect(),
            },
            Key::Presenter => Atom::Claim {
                path: vec!["azp".into()],
                values: values.iter().map(|v| StrMatch::istio(v, "")).collect(),
            },
            Key::Claims(k) => {
                let path = nested_brackets(k.strip_prefix("request.auth.claims").unwrap_or(k))?;
                Atom::Claim { path, values: values.iter().map(|v| StrMatch::istio(v, "")).collect() }
            }
            Key::EnvoyFilter(k) => {
                // "experimental.envoy.filters.a.b[c]" → filter "envoy.filters.a.b", key "c".
                let body = k.strip_prefix("experimental.").unwrap_or(k);
                let body = body.strip_suffix(']').unwrap_or(body);
                let (filter, key) = body.split_once('[').ok_or_else(|| format!("invalid key: {k}"))?;
                let values = values
                    .iter()
                    .map(|v| {
                        if v.starts_with('[') && v.ends_with(']') {
                            MetaMatch::ListOneOf(StrMatch::istio(v.trim_matches(|c| c == '[' || c == ']'), ""))
                        } else {
                            MetaMatch::String(StrMatch::istio(v, ""))
                        }
                    })
                    .collect();
                Atom::Metadata { filter: filter.to_string(), key: key.to_string(), slot: 0, values }
            }
            _ => return Err("internal: not an extended key".into()),
        }])
    }
}

/// istiod `requestPrincipalGenerator`: split at the last `/` into issuer and subject.
fn request_principal(value: &str) -> Atom {
    let any = StrMatch::NonEmpty;
    let (found, iss, sub) = match value.rfind('/') {
        Some(i) => (true, &value[..i], &value[i + 1..]),
        None => (false, value, ""),
    };
    let (iss_m, sub_m) = if value == "*" {
        (any.clone(), any)
    } else if value.starts_with('*') {
        if found {
            let iss_m =
                if iss == "*" { any } else { StrMatch::Suffix(iss.strip_prefix('*').unwrap_or(iss).as_bytes().into()) };
            (iss_m, StrMatch::Exact(sub.as_bytes().into()))
        } else {
            (any, StrMatch::Suffix(value.strip_prefix('*').unwrap_or(value).as_bytes().into()))
        }
    } else if value.ends_with('*') {
        if found {
            let sub_m =
                if sub == "*" { any } else { StrMatch::Prefix(sub.strip_suffix('*').unwrap_or(sub).as_bytes().into()) };
            (StrMatch::Exact(iss.as_bytes().into()), sub_m)
        } else {
            (StrMatch::Prefix(value.strip_suffix('*').unwrap_or(value).as_bytes().into()), any)
        }
    } else {
        (StrMatch::Exact(iss.as_bytes().into()), StrMatch::Exact(sub.as_bytes().into()))
    };
    Atom::Jwt { iss: iss_m, sub: sub_m }
}

fn kv(key: Key, field: String, values: Option<&[String]>, not_values: Option<&[String]>) -> Option<Kv> {
    let values = values.unwrap_or_default().to_vec();
    let not_values = not_values.unwrap_or_default().to_vec();
    if values.is_empty() && not_values.is_empty() {
        return None;
    }
    Some(Kv { key, field, values, not_values })
}

/// `when` key → (key, is permission side). `None` = unknown attribute (the rule is skipped).
fn when_key(c: &Condition) -> Option<(Key, bool)> {
    let k = c.key.as_str();
    Some(match k {
        "destination.ip" => (Key::DestIp, true),
        "destination.port" => (Key::Port, true),
        "connection.sni" => (Key::Sni, true),
        _ if k.starts_with("experimental.envoy.filters.") => (Key::EnvoyFilter(k.to_string()), true),
        "source.ip" => (Key::SrcIp, false),
        "remote.ip" => (Key::RemoteIp, false),
        "source.namespace" => (Key::SrcNamespace, false),
        "source.trustDomain" => (Key::SrcTrustDomain, false),
        "source.serviceAccount" => (Key::SrcServiceAccount, false),
        "source.principal" => (Key::SrcPrincipal, false),
        "request.auth.principal" => (Key::RequestPrincipal, false),
        "request.auth.audiences" => (Key::Audiences, false),
        "request.auth.presenter" => (Key::Presenter, false),
        _ if k.starts_with("request.headers") => (Key::Header(k.to_string()), false),
        _ if k.starts_with("request.auth.claims") => (Key::Claims(k.to_string()), false),
        _ => return None,
    })
}

/// Principal-side model entries of one `from.source`, in istiod's order.
fn source_kvs(s: Option<&Source>, field: &str) -> Vec<Kv> {
    let Some(s) = s else { return Vec::new() };
    let f = |name: &str| format!("{field}.{name}");
    [
        kv(Key::SrcPrincipal, f("principals"), s.principals.as_deref(), s.not_principals.as_deref()),
        kv(
            Key::RequestPrincipal,
            f("requestPrincipals"),
            s.request_principals.as_deref(),
            s.not_request_principals.as_deref(),
        ),
        kv(
            Key::SrcServiceAccount,
            f("serviceAccounts"),
            s.service_accounts.as_deref(),
            s.not_service_accounts.as_deref(),
        ),
        kv(Key::SrcTrustDomain, f("trustDomains"), s.trust_domains.as_deref(), s.not_trust_domains.as_deref()),
        kv(Key::SrcNamespace, f("namespaces"), s.namespaces.as_deref(), s.not_namespaces.as_deref()),
        kv(Key::RemoteIp, f("remoteIpBlocks"), s.remote_ip_blocks.as_deref(), s.not_remote_ip_blocks.as_deref()),
        kv(Key::SrcIp, f("ipBlocks"), s.ip_blocks.as_deref(), s.not_ip_blocks.as_deref()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Permission-side model entries of one `to.operation`, in istiod's order.
fn operation_kvs(o: Option<&Operation>, field: &str) -> Vec<Kv> {
    let Some(o) = o else { return Vec::new() };
    let f = |name: &str| format!("{field}.{name}");
    [
        kv(Key::Host, f("hosts"), o.hosts.as_deref(), o.not_hosts.as_deref()),
        kv(Key::Method, f("methods"), o.methods.as_deref(), o.not_methods.as_deref()),
        kv(Key::Path, f("paths"), o.paths.as_deref(), o.not_paths.as_deref()),
        kv(Key::Port, f("ports"), o.ports.as_deref(), o.not_ports.as_deref()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn port(v: &str) -> Result<u32, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {v}: not a number"));
    }
    match v.parse::<u64>() {
        Ok(p) if p <= 65535 => Ok(p as u32),
        _ => Err(format!("invalid port {v}: must be in [0, 65535]")),
    }
}

/// istiod `extractNameInBrackets`: `[name]`.
fn bracket(s: &str) -> Result<&str, String> {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| format!("expecting format [<NAME>], but found {s}"))
}

/// istiod `extractNameInNestedBrackets`: `[a][b]` → [a, b]; anything else falls back to the
/// single bracket content (`[foo.com/name]`).
fn nested_brackets(s: &str) -> Result<Vec<String>, String> {
    let bytes = s.as_bytes();
    let find_end = |begin: usize| -> Option<usize> {
        if bytes.get(begin) != Some(&b'[') {
            return None;
        }
        for (i, c) in bytes.iter().enumerate().skip(begin + 1) {
            if *c == b'[' {
                return None;
            }
            if *c == b']' {
                return Some(i);
            }
        }
        None
    };
    let mut claims = Vec::new();
    let mut begin = 0;
    while begin < s.len() {
        match find_end(begin) {
            Some(end) => {
                claims.push(s[begin + 1..end].to_string());
                begin = end + 1;
            }
            None => return Ok(vec![bracket(s)?.to_string()]),
        }
    }
    Ok(claims)
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "ALLOW",
        Action::Deny => "DENY",
        Action::Audit => "AUDIT",
        Action::Custom => "CUSTOM",
    }
}
