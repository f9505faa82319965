//! Envoy RBAC configuration from Istio AuthorizationPolicies, generated the way istiod does
//! (`pilot/pkg/security/authz/{builder,model,matcher}` at istio/istio@86c9f01f): the reference
//! side of the differential runner and of the benchmark.
//!
//! This is deliberately a separate translation from `wasmesh-authz` (which evaluates policies
//! itself): it emits istiod's protobuf JSON and lets Envoy's native `envoy.filters.http.rbac`
//! evaluate it, so the two sides share no matching code. CUSTOM policies are not generated
//! (they need ext_authz; the e2e tests cover CUSTOM against a real ext-authz server).

use serde_json::{json, Map, Value};
use wasmesh_istio::security::{Action, AuthorizationPolicy, Rule};
use wasmesh_istio::{Resource, Resources, Workload};

const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

type Applied<'r> = (&'r Resource, &'r AuthorizationPolicy);

/// The HTTP RBAC filters istiod puts on a workload's inbound (or gateway) chain, in order
/// AUDIT, DENY, ALLOW. Empty when no (non-CUSTOM) policy applies.
pub fn http_filters(resources: &Resources, workload: &Workload, trust_domain_aliases: &[String]) -> Vec<Value> {
    rbac_filters(resources, workload, trust_domain_aliases, false)
}

/// The network RBAC filters istiod puts on a workload's inbound TCP filter chain (`BuildTCP`:
/// AUDIT, DENY, ALLOW, each rule generated `forTCP`: an HTTP-only field drops the rule of an
/// ALLOW policy and only its own values elsewhere). CUSTOM policies are not generated here: an
/// `envoyExtAuthzHttp` provider has no TCP filter (istiod generates nothing).
pub fn network_filters(resources: &Resources, workload: &Workload, trust_domain_aliases: &[String]) -> Vec<Value> {
    rbac_filters(resources, workload, trust_domain_aliases, true)
}

fn rbac_filters(resources: &Resources, workload: &Workload, trust_domain_aliases: &[String], tcp: bool) -> Vec<Value> {
    let mut bundle = vec![workload.trust_domain.clone()];
    bundle.extend(trust_domain_aliases.iter().cloned());
    let mut by_action: [(Action, &str, Vec<Applied<'_>>); 3] =
        [(Action::Audit, "LOG", Vec::new()), (Action::Deny, "DENY", Vec::new()), (Action::Allow, "ALLOW", Vec::new())];
    for (res, ap) in resources.authorization_policies() {
        if !should_attach(workload, res, ap) {
            continue;
        }
        for (action, _, list) in by_action.iter_mut() {
            if *action == ap.action {
                list.push((res, ap));
            }
        }
    }
    let mut out = Vec::new();
    for (action, rbac_action, policies) in by_action {
        if policies.is_empty() {
            continue;
        }
        let mut enforce = Map::new();
        let mut shadow = Map::new();
        let (mut has_enforce, mut has_shadow) = (false, false);
        for (res, ap) in policies {
            let dry = is_dry_run(res);
            let target = if dry {
                has_shadow = true;
                &mut shadow
            } else {
                has_enforce = true;
                &mut enforce
            };
            let rules = ap.rules.as_deref().unwrap_or_default();
            for (i, rule) in rules.iter().enumerate() {
                let name = format!("ns[{}]-policy[{}]-rule[{}]", res.namespace(), res.name(), i);
                let Some(rule) = rule else { continue };
                let Ok(mut m) = Model::new(res.namespace(), rule) else { continue };
                m.for_tcp = tcp;
                m.migrate_trust_domain(&bundle);
                if let Ok(policy) = m.generate(action) {
                    target.insert(name, policy);
                }
            }
            if rules.is_empty() {
                let name = format!("ns[{}]-policy[{}]-rule[0]", res.namespace(), res.name());
                target.insert(
                    name,
                    json!({"permissions": [{"not_rule": {"any": true}}], "principals": [{"not_id": {"any": true}}]}),
                );
            }
        }
        let mut rbac = if tcp {
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "tcp."})
        } else {
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"})
        };
        if has_enforce {
            rbac["rules"] = json!({"action": rbac_action, "policies": enforce});
        }
        if has_shadow {
            rbac["shadow_rules"] = json!({"action": rbac_action, "policies": shadow});
        }
        // istiod's `shadowRuleStatPrefix(shadowRules)`: a nil RBAC reads as action ALLOW, so the
        // allow prefix is written whenever there are no shadow rules.
        match (has_shadow, rbac_action) {
            (false, _) | (true, "ALLOW") => rbac["shadow_rules_stat_prefix"] = json!("istio_dry_run_allow_"),
            (true, "DENY") => rbac["shadow_rules_stat_prefix"] = json!("istio_dry_run_deny_"),
            _ => {}
        }
        let name = if tcp { "envoy.filters.network.rbac" } else { "envoy.filters.http.rbac" };
        out.push(json!({"name": name, "typed_config": rbac}));
    }
    out
}

/// istiod's CUSTOM pair for one `envoyExtAuthzHttp` provider: an RBAC filter holding the CUSTOM
/// rules as shadow rules (stat prefix `istio_ext_authz_`) and Envoy's `ext_authz` filter enabled
/// by the shadow effective policy id (`builder.go` `buildHTTP`, `extauthz.go`). `cluster` is the
/// Envoy cluster of the provider's service.
pub fn custom_http_filters(resources: &Resources, workload: &Workload, provider: &Value, cluster: &str) -> Vec<Value> {
    let name = provider["name"].as_str().unwrap_or_default();
    let http = &provider["envoyExtAuthzHttp"];
    let mut shadow = Map::new();
    for (res, ap) in resources.authorization_policies() {
        if ap.action != Action::Custom || !should_attach(workload, res, ap) {
            continue;
        }
        if ap.provider.as_ref().map(|p| p.name.as_str()) != Some(name) {
            continue;
        }
        let rules = ap.rules.as_deref().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let Some(rule) = rule else { continue };
            let Ok(m) = Model::new(res.namespace(), rule) else { continue };
            if let Ok(policy) = m.generate(Action::Deny) {
                shadow.insert(
                    format!("istio-ext-authz-{name}-ns[{}]-policy[{}]-rule[{i}]", res.namespace(), res.name()),
                    policy,
                );
            }
        }
    }
    let list = |v: &Value| -> Option<Value> {
        let items: Vec<Value> = v
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .map(|h| {
                if let Some(rest) = h.strip_prefix('*') {
                    json!({"suffix": rest, "ignore_case": true})
                } else if let Some(rest) = h.strip_suffix('*') {
                    json!({"prefix": rest, "ignore_case": true})
                } else {
                    json!({"exact": h, "ignore_case": true})
                }
            })
            .collect();
        (!items.is_empty()).then(|| json!({"patterns": items}))
    };
    let host = http["service"].as_str().unwrap_or_default();
    let host = host.split_once('/').map(|(_, h)| h).unwrap_or(host);
    let mut service = json!({
        "server_uri": {"uri": format!("http://{host}"), "cluster": cluster, "timeout": http.get("timeout").and_then(Value::as_str).unwrap_or("600s")},
    });
    if let Some(p) = http.get("pathPrefix").and_then(Value::as_str) {
        service["path_prefix"] = json!(p);
    }
    if let Some(add) = http.get("includeAdditionalHeadersInCheck").and_then(Value::as_object) {
        let mut keys: Vec<&String> = add.keys().collect();
        keys.sort();
        service["authorization_request"] =
            json!({"headers_to_add": keys.iter().map(|k| json!({"key": k, "value": add[*k]})).collect::<Vec<_>>()});
    }
    let (up, deny, allow) = (
        list(&http["headersToUpstreamOnAllow"]),
        list(&http["headersToDownstreamOnDeny"]),
        list(&http["headersToDownstreamOnAllow"]),
    );
    if up.is_some() || deny.is_some() || allow.is_some() {
        let mut r = json!({});
        if let Some(v) = up {
            r["allowed_upstream_headers"] = v;
        }
        if let Some(v) = deny {
            r["allowed_client_headers"] = v;
        }
        if let Some(v) = allow {
            r["allowed_client_headers_on_success"] = v;
        }
        service["authorization_response"] = r;
    }
    let mut ext = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": http.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
        "http_service": service,
        "filter_enabled_metadata": {
            "filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": format!("istio-ext-authz-{name}")}},
        },
    });
    if let Some(code) = http.get("statusOnError").and_then(Value::as_str).and_then(|c| c.parse::<u32>().ok()) {
        ext["status_on_error"] = json!({"code": code});
    }
    if let Some(h) = list(&http["includeRequestHeadersInCheck"]) {
        ext["allowed_headers"] = h;
    }
    vec![
        json!({"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "shadow_rules": {"action": "DENY", "policies": shadow},
            "shadow_rules_stat_prefix": "istio_ext_authz_",
        }}),
        json!({"name": "envoy.filters.http.ext_authz", "typed_config": ext}),
    ]
}

/// istiod's CUSTOM pair on a TCP port for one `envoyExtAuthzGrpc` provider (`builder.go`
/// `buildTCP`, `extauthz.go` `generateGRPCConfig`): a network RBAC filter holding the CUSTOM
/// rules (generated for TCP) as shadow rules (stat prefix `istio_ext_authz_`), then Envoy's
/// network `ext_authz` (`stat_prefix` `tcp.`, `failure_mode_allow` = `failOpen`, the gRPC
/// service with the host as authority and `timeout`, V3) enabled by the shadow effective policy
/// id. `cluster` is the Envoy cluster of the provider's service.
pub fn custom_network_filters(
    resources: &Resources,
    workload: &Workload,
    provider: &Value,
    cluster: &str,
) -> Vec<Value> {
    let name = provider["name"].as_str().unwrap_or_default();
    let g = &provider["envoyExtAuthzGrpc"];
    let mut shadow = Map::new();
    for (res, ap) in resources.authorization_policies() {
        if ap.action != Action::Custom || !should_attach(workload, res, ap) {
            continue;
        }
        if ap.provider.as_ref().map(|p| p.name.as_str()) != Some(name) {
            continue;
        }
        let rules = ap.rules.as_deref().unwrap_or_default();
        for (i, rule) in rules.iter().enumerate() {
            let Some(rule) = rule else { continue };
            let Ok(mut m) = Model::new(res.namespace(), rule) else { continue };
            m.for_tcp = true;
            if let Ok(policy) = m.generate(Action::Deny) {
                shadow.insert(
                    format!("istio-ext-authz-{name}-ns[{}]-policy[{}]-rule[{i}]", res.namespace(), res.name()),
                    policy,
                );
            }
        }
    }
    let host = g["service"].as_str().unwrap_or_default();
    let host = host.split_once('/').map(|(_, h)| h).unwrap_or(host);
    vec![
        json!({"name": "envoy.filters.network.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC",
            "stat_prefix": "tcp.",
            "shadow_rules": {"action": "DENY", "policies": shadow},
            "shadow_rules_stat_prefix": "istio_ext_authz_",
        }}),
        json!({"name": "envoy.filters.network.ext_authz", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz",
            "stat_prefix": "tcp.",
            "transport_api_version": "V3",
            "failure_mode_allow": g.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
            "grpc_service": {
                "envoy_grpc": {"cluster_name": cluster, "authority": host},
                "timeout": g.get("timeout").and_then(Value::as_str).unwrap_or("600s"),
            },
            "filter_enabled_metadata": {
                "filter": "envoy.filters.network.rbac",
                "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
                "value": {"string_match": {"prefix": format!("istio-ext-authz-{name}")}},
            },
        }}),
    ]
}

/// Whether any CUSTOM policy applies (the runner does not generate ext_authz).
pub fn has_custom(resources: &Resources, workload: &Workload) -> bool {
    resources.authorization_policies().any(|(r, ap)| ap.action == Action::Custom && should_attach(workload, r, ap))
}

fn is_dry_run(res: &Resource) -> bool {
    matches!(
        res.metadata.annotations.get("istio.io/dry-run").map(String::as_str),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True")
    )
}

/// `ListAuthorizationPolicies` + `ShouldAttachPolicy`.
fn should_attach(wl: &Workload, res: &Resource, ap: &AuthorizationPolicy) -> bool {
    let ns = res.namespace();
    if ns != wl.root_namespace && ns != wl.namespace {
        return false;
    }
    let refs: Vec<&wasmesh_istio::PolicyTargetReference> =
        if ap.target_refs.is_empty() { ap.target_ref.iter().collect() } else { ap.target_refs.iter().collect() };
    let selected =
        ap.selector.as_ref().map(|s| s.match_labels.iter().all(|(k, v)| wl.labels.get(k) == Some(v))).unwrap_or(true);
    match wl.labels.get("gateway.networking.k8s.io/gateway-name") {
        None => refs.is_empty() && selected,
        Some(_) if refs.is_empty() => selected,
        Some(gw) => refs.iter().any(|r| {
            ns == wl.namespace
                && (r.namespace.is_empty() || r.namespace == wl.namespace)
                && r.group == "gateway.networking.k8s.io"
                && r.kind == "Gateway"
                && &r.name == gw
        }),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Gen {
    DestIp,
    DestPort,
    ConnSni,
    EnvoyFilter,
    SrcIp,
    RemoteIp,
    SrcNamespace,
    SrcTrustDomain,
    SrcServiceAccount,
    SrcPrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    RequestHeader,
    RequestClaims,
    Host,
    Path,
    Method,
}

impl Gen {
    /// The generators that return `"<key>" is HTTP only` for TCP (every one but the
    /// `experimental.envoy.filters.*` and the L4/peer ones).
    fn http_only(self) -> bool {
        matches!(
            self,
            Gen::RequestPrincipal
                | Gen::RequestAudiences
                | Gen::RequestPresenter
                | Gen::RequestHeader
                | Gen::RequestClaims
                | Gen::Host
                | Gen::Path
                | Gen::Method
        )
    }

    fn extended(self) -> bool {
        matches!(
            self,
            Gen::EnvoyFilter
                | Gen::RequestPrincipal
                | Gen::RequestAudiences
                | Gen::RequestPresenter
                | Gen::RequestClaims
        )
    }
}

#[derive(Clone)]
struct ModelRule {
    key: String,
    values: Vec<String>,
    not_values: Vec<String>,
    g: Gen,
}

/// istiod `model.Model`: permissions and principals as rule lists.
struct Model {
    permissions: Vec<Vec<ModelRule>>,
    principals: Vec<Vec<ModelRule>>,
    policy_namespace: String,
    /// Generating for a TCP filter chain (`Generate(forTCP)`): HTTP-only generators fail.
    for_tcp: bool,
}

fn mr(g: Gen, key: &str, values: &Option<Vec<String>>, not_values: &Option<Vec<String>>) -> Option<ModelRule> {
    let values = values.clone().unwrap_or_default();
    let not_values = not_values.clone().unwrap_or_default();
    if values.is_empty() && not_values.is_empty() {
        None
    } else {
        Some(ModelRule { key: key.to_string(), values, not_values, g })
    }
}

impl Model {
    /// `model.New`: an unknown `when` key fails the rule.
    fn new(policy_namespace: &str, r: &Rule) -> Result<Model, String> {
        let mut base_perm: Vec<ModelRule> = Vec::new();
        let mut base_princ: Vec<ModelRule> = Vec::new();
        for w in r.when.as_deref().unwrap_or_default() {
            let k = w.key.as_str();
            let (g, perm) = match k {
                "destination.ip" => (Gen::DestIp, true),
                "destination.port" => (Gen::DestPort, true),
                "connection.sni" => (Gen::ConnSni, true),
                _ if k.starts_with("experimental.envoy.filters.") => (Gen::EnvoyFilter, true),
                "source.ip" => (Gen::SrcIp, false),
                "remote.ip" => (Gen::RemoteIp, false),
                "source.namespace" => (Gen::SrcNamespace, false),
                "source.trustDomain" => (Gen::SrcTrustDomain, false),
                "source.serviceAccount" => (Gen::SrcServiceAccount, false),
                "source.principal" => (Gen::SrcPrincipal, false),
                "request.auth.principal" => (Gen::RequestPrincipal, false),
                "request.auth.audiences" => (Gen::RequestAudiences, false),
                "request.auth.presenter" => (Gen::RequestPresenter, false),
                _ if k.starts_with("request.headers") => (Gen::RequestHeader, false),
                _ if k.starts_with("request.auth.claims") => (Gen::RequestClaims, false),
                _ => return Err(format!("unknown attribute {k}")),
            };
            if let Some(rule) = mr(g, k, &w.values, &w.not_values) {
                if perm {
                    base_perm.push(rule);
                } else {
                    base_princ.push(rule);
                }
            }
        }
        let mut principals = Vec::new();
        for from in r.from.as_deref().unwrap_or_default() {
            let mut merged = base_princ.clone();
            if let Some(s) = &from.source {
                // insertFront in istiod's order; the resulting order is the reverse.
                let front = [
                    mr(Gen::SrcPrincipal, "source.principal", &s.principals, &s.not_principals),
                    mr(
                        Gen::RequestPrincipal,
                        "request.auth.principal",
                        &s.request_principals,
                        &s.not_request_principals,
                    ),
                    mr(Gen::SrcServiceAccount, "source.serviceAccount", &s.service_accounts, &s.not_service_accounts),
                    mr(Gen::SrcTrustDomain, "source.trustDomain", &s.trust_domains, &s.not_trust_domains),
                    mr(Gen::SrcNamespace, "source.namespace", &s.namespaces, &s.not_namespaces),
                    mr(Gen::RemoteIp, "remote.ip", &s.remote_ip_blocks, &s.not_remote_ip_blocks),
                    mr(Gen::SrcIp, "source.ip", &s.ip_blocks, &s.not_ip_blocks),
                ];
                let mut v: Vec<ModelRule> = front.into_iter().flatten().collect();
                v.append(&mut merged);
                merged = v;
            }
            principals.push(merged);
        }
        if principals.is_empty() {
            principals.push(base_princ);
        }
        let mut permissions = Vec::new();
        for to in r.to.as_deref().unwrap_or_default() {
            let mut merged = base_perm.clone();
            if let Some(o) = &to.operation {
                let front = [
                    mr(Gen::Host, ":authority", &o.hosts, &o.not_hosts),
                    mr(Gen::Method, ":method", &o.methods, &o.not_methods),
                    mr(Gen::Path, "path-matcher", &o.paths, &o.not_paths),
                    mr(Gen::DestPort, "destination.port", &o.ports, &o.not_ports),
                ];
                let mut v: Vec<ModelRule> = front.into_iter().flatten().collect();
                v.append(&mut merged);
                merged = v;
            }
            permissions.push(merged);
        }
        if permissions.is_empty() {
            permissions.push(base_perm);
        }
        Ok(Model { permissions, principals, policy_namespace: policy_namespace.to_string(), for_tcp: false })
    }

    fn migrate_trust_domain(&mut self, bundle: &[String]) {
        for list in &mut self.principals {
            for r in list.iter_mut() {
                if r.g == Gen::SrcPrincipal {
                    r.values = replace_aliases(bundle, &r.values);
                    r.not_values = replace_aliases(bundle, &r.not_values);
                } else if r.g == Gen::SrcTrustDomain {
                    r.values = expand_aliases(bundle, &r.values);
                    r.not_values = expand_aliases(bundle, &r.not_values);
                }
            }
        }
    }

    fn generate(&self, action: Action) -> Result<Value, String> {
        let mut permissions = Vec::new();
        for rl in &self.permissions {
            let mut and = Vec::new();
            for r in rl {
                and.extend(self.rule_json(r, action, true)?);
            }
            if and.is_empty() {
                and.push(json!({"any": true}));
            }
            permissions.push(json!({"and_rules": {"rules": and}}));
        }
        let mut principals = Vec::new();
        for rl in &self.principals {
            let mut and = Vec::new();
            for r in rl {
                and.extend(self.rule_json(r, action, false)?);
            }
            if and.is_empty() {
                and.push(json!({"any": true}));
            }
            principals.push(json!({"and_ids": {"ids": and}}));
        }
        Ok(json!({"permissions": permissions, "principals": principals}))
    }

    /// `rule.permission` / `rule.principal` with `checkError`.
    fn rule_json(&self, r: &ModelRule, action: Action, permission: bool) -> Result<Vec<Value>, String> {
        let check = |res: Result<Value, String>| -> Result<Option<Value>, String> {
            match res {
                Ok(v) => Ok(Some(v)),
                Err(e) if action == Action::Allow => Err(e),
                Err(_) => Ok(None),
            }
        };
        let (or_key, not_key) = if permission { ("or_rules", "not_rule") } else { ("or_ids", "not_id") };
        let set = |v: Vec<Value>| if permission { json!({or_key: {"rules": v}}) } else { json!({or_key: {"ids": v}}) };
        let mut out = Vec::new();
        for (values, negate) in [(&r.values, false), (&r.not_values, true)] {
            if values.is_empty() {
                continue;
            }
            let m = if self.for_tcp && r.g.http_only() {
                check(Err(format!("{:?} is HTTP only", r.key)))?;
                None
            } else if r.g.extended() {
                check(self.extended(r, values))?
            } else {
                let mut or = Vec::new();
                for v in values {
                    if let Some(x) = check(self.single(r, v))? {
                        or.push(x);
                    }
                }
                (!or.is_empty()).then(|| set(or))
            };
            if let Some(m) = m {
                out.push(if negate { json!({not_key: m}) } else { m });
            }
        }
        Ok(out)
    }

    fn single(&self, r: &ModelRule, v: &str) -> Result<Value, String> {
        Ok(match r.g {
            Gen::DestIp => json!({"destination_ip": cidr(v)?}),
            Gen::DestPort => json!({"destination_port": port(v)?}),
            Gen::ConnSni => json!({"requested_server_name": string_matcher(v, "")}),
            Gen::SrcIp => json!({"direct_remote_ip": cidr(v)?}),
            Gen::RemoteIp => json!({"remote_ip": cidr(v)?}),
            Gen::SrcNamespace => {
                let parts: Vec<String> = v.split('*').map(quote_meta).collect();
                authenticated(json!({"safe_regex": {"regex": format!(".*/ns/{}/.*", parts.join(".*"))}}))
            }
            Gen::SrcServiceAccount => {
                let (ns, sa) = v.split_once('/').unwrap_or((self.policy_namespace.as_str(), v));
                authenticated(
                    json!({"safe_regex": {"regex": format!("spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?", quote_meta(ns), quote_meta(sa))}}),
                )
            }
            Gen::SrcTrustDomain => authenticated(if v == "*" {
                json!({"prefix": "spiffe://"})
            } else if !v.contains('*') {
                json!({"prefix": format!("spiffe://{v}/")})
            } else {
                let (a, b) = v.split_once('*').unwrap_or((v, ""));
                json!({"safe_regex": {"regex": format!("spiffe://{}[^/]*{}/.*", quote_meta(a), quote_meta(b))}})
            }),
            Gen::SrcPrincipal => authenticated(string_matcher(v, "spiffe://")),
            Gen::RequestHeader => {
                let name = brackets(r.key.strip_prefix("request.headers").unwrap_or(&r.key))?;
                json!({"header": header_matcher(&name, v, false)})
            }
            Gen::Host => json!({"header": header_matcher(":authority", v, true)}),
            Gen::Method => json!({"header": header_matcher(":method", v, false)}),
            Gen::Path => {
                if v.contains("{*}") || v.contains("{**}") {
                    json!({"uri_template": {"name": "uri-template", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
                        "path_template": v.replace("{**}", "**").replace("{*}", "*"),
                    }}})
                } else {
                    json!({"url_path": {"path": string_matcher(v, "")}})
                }
            }
            _ => return Err("unimplemented".into()),
        })
    }

    fn extended(&self, r: &ModelRule, values: &[String]) -> Result<Value, String> {
        Ok(match r.g {
            Gen::RequestPrincipal => {
                let mut or = Vec::new();
                for v in values {
                    let (iss, sub) = request_principal(v);
                    or.push(json!({"and_ids": {"ids": [jwt_claim("iss", iss), jwt_claim("sub", sub)]}}));
                }
                if or.len() == 1 {
                    or.remove(0)
                } else {
                    json!({"or_ids": {"ids": or}})
                }
            }
            Gen::RequestAudiences => json!({"metadata": jwt_list(&["aud".to_string()], values)}),
            Gen::RequestPresenter => json!({"metadata": jwt_list(&["azp".to_string()], values)}),
            Gen::RequestClaims => {
                let claims = nested_brackets(r.key.strip_prefix("request.auth.claims").unwrap_or(&r.key))?;
                json!({"metadata": jwt_list(&claims, values)})
            }
            Gen::EnvoyFilter => {
                let body = r.key.strip_prefix("experimental.").unwrap_or(&r.key);
                let body = body.strip_suffix(']').unwrap_or(body);
                let (filter, key) = body.split_once('[').ok_or_else(|| format!("invalid key: {}", r.key))?;
                let matchers: Vec<Value> = values
                    .iter()
                    .map(|v| {
                        if v.starts_with('[') && v.ends_with(']') {
                            json!({"list_match": {"one_of": {"string_match": string_matcher(v.trim_matches(|c| c == '[' || c == ']'), "")}}})
                        } else {
                            json!({"string_match": string_matcher(v, "")})
                        }
                    })
                    .collect();
                json!({"metadata": {"filter": filter, "path": [{"key": key}], "value": or_matcher(matchers)}})
            }
            _ => return Err("unimplemented".into()),
        })
    }
}

fn authenticated(m: Value) -> Value {
    json!({"authenticated": {"principal_name": m}})
}

fn jwt_claim(claim: &str, m: Value) -> Value {
    json!({"metadata": {"filter": JWT_FILTER, "path": [{"key": "payload"}, {"key": claim}], "value": {"string_match": m}}})
}

/// `MetadataListValueMatcherForJWTClaims` with `StringOrMatcher`.
fn jwt_list(claims: &[String], values: &[String]) -> Value {
    let v = or_matcher(values.iter().map(|v| json!({"string_match": string_matcher(v, "")})).collect());
    let mut path = vec![json!({"key": "payload"})];
    path.extend(claims.iter().map(|c| json!({"key": c})));
    json!({"filter": JWT_FILTER, "path": path, "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": v.clone()}}, v]}}})
}

fn or_matcher(mut matchers: Vec<Value>) -> Value {
    if matchers.len() == 1 {
        matchers.remove(0)
    } else {
        json!({"or_match": {"value_matchers": matchers}})
    }
}

fn request_principal(value: &str) -> (Value, Value) {
    let any = json!({"safe_regex": {"regex": ".+"}});
    let (found, iss, sub) = match value.rfind('/') {
        Some(i) => (true, &value[..i], &value[i + 1..]),
        None => (false, value, ""),
    };
    if value == "*" {
        (any.clone(), any)
    } else if let Some(rest) = value.strip_prefix('*') {
        if found {
            let iss_m = if iss == "*" { any } else { json!({"suffix": iss.strip_prefix('*').unwrap_or(iss)}) };
            (iss_m, json!({"exact": sub}))
        } else {
            (any, json!({"suffix": rest}))
        }
    } else if let Some(rest) = value.strip_suffix('*') {
        if found {
            let sub_m = if sub == "*" { any } else { json!({"prefix": sub.strip_suffix('*').unwrap_or(sub)}) };
            (json!({"exact": iss}), sub_m)
        } else {
            (json!({"prefix": rest}), any)
        }
    } else {
        (json!({"exact": iss}), json!({"exact": sub}))
    }
}

/// `matcher.StringMatcherWithPrefix`.
fn string_matcher(v: &str, prefix: &str) -> Value {
    if v == "*" {
        json!({"safe_regex": {"regex": ".+"}})
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            json!({"suffix": rest})
        } else {
            json!({"safe_regex": {"regex": format!("{prefix}.*{}", quote_meta(rest))}})
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"prefix": format!("{prefix}{rest}")})
    } else {
        json!({"exact": format!("{prefix}{v}")})
    }
}

/// `matcher.HeaderMatcher` / `HostMatcher`.
fn header_matcher(name: &str, v: &str, ignore_case: bool) -> Value {
    if v == "*" {
        json!({"name": name, "present_match": true})
    } else if let Some(rest) = v.strip_prefix('*') {
        json!({"name": name, "string_match": {"suffix": rest, "ignore_case": ignore_case}})
    } else if let Some(rest) = v.strip_suffix('*') {
        json!({"name": name, "string_match": {"prefix": rest, "ignore_case": ignore_case}})
    } else {
        json!({"name": name, "string_match": {"exact": v, "ignore_case": ignore_case}})
    }
}

/// Go `regexp.QuoteMeta`.
fn quote_meta(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// istiod `util.AddrStrToCidrRange`.
fn cidr(v: &str) -> Result<Value, String> {
    let (ip, len) = match v.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (v, None),
    };
    let addr: std::net::IpAddr = ip.parse().map_err(|_| format!("bad IP {v}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = match len {
        None => max,
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| *n <= max && (l == "0" || !l.starts_with('0')))
            .ok_or_else(|| format!("bad CIDR {v}"))?,
    };
    Ok(json!({"address_prefix": addr.to_string(), "prefix_len": len}))
}

fn port(v: &str) -> Result<u32, String> {
    v.parse::<u64>()
        .ok()
        .filter(|p| *p <= 65535 && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|p| p as u32)
        .ok_or_else(|| format!("invalid port {v}"))
}

fn brackets(s: &str) -> Result<String, String> {
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .map(str::to_string)
        .ok_or_else(|| format!("expecting format [<NAME>], but found {s}"))
}

fn nested_brackets(s: &str) -> Result<Vec<String>, String> {
    let b = s.as_bytes();
    let mut claims = Vec::new();
    let mut begin = 0;
    while begin < b.len() {
        let end = if b[begin] == b'[' {
            let mut found = None;
            for (i, c) in b.iter().enumerate().skip(begin + 1) {
                if *c == b'[' {
                    break;
                }
                if *c == b']' {
                    found = Some(i);
                    break;
                }
            }
            found
        } else {
            None
        };
        match end {
            Some(e) => {
                claims.push(s[begin + 1..e].to_string());
                begin = e + 1;
            }
            None => return Ok(vec![brackets(s)?]),
        }
    }
    Ok(claims)
}

// Trust-domain migration, written for this oracle from istiod's documented behaviour
// (`pilot/pkg/security/trustdomain`), independently of wasmesh-authz's code so an alias bug there
// shows up as a difference:
//
// - the bundle is meshConfig `trustDomain` followed by `trustDomainAliases`, in that order;
// - a principal names a trust domain only in SPIFFE form `<td>/ns/<ns>/sa/<sa>` (exactly five
//   `/`-separated parts) with `<td>` other than `*`; any other principal is left alone;
// - its trust domain is "known" when it equals, or wildcard-matches in either direction (`*`,
//   `x*`, `*x` on either side), any bundle entry, or is `cluster.local` (which stands for the
//   local trust domain whatever the mesh calls it); an unknown one is left alone;
// - a known principal is replaced by one principal per bundle entry, in bundle order: the entry
//   in place of `<td>`, except that a `*x` trust domain the entry ends in stays as written;
//   duplicates among these are dropped (not across different principals);
// - a `trustDomains` value equal to a bundle entry becomes the whole bundle; then every
//   duplicate in the list is dropped (first one kept). No `cluster.local` special case there.

/// The trust domain of a SPIFFE-form principal istiod migrates, with the rest after it.
fn enforced_trust_domain(principal: &str) -> Option<(&str, &str)> {
    if principal.bytes().filter(|b| *b == b'/').count() != 4 {
        return None;
    }
    let (td, rest) = principal.split_once('/')?;
    (td != "*").then_some((td, rest))
}

/// `text` against a pattern that may start or end with `*` (or be `*`).
fn wildcard(text: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(tail), _) if text.ends_with(tail) => true,
        (_, Some(head)) if text.starts_with(head) => true,
        _ => text == pattern,
    }
}

fn replace_aliases(bundle: &[String], principals: &[String]) -> Vec<String> {
    let known = |td: &str| td == "cluster.local" || bundle.iter().any(|b| wildcard(td, b) || wildcard(b, td));
    principals
        .iter()
        .flat_map(|principal| match enforced_trust_domain(principal) {
            Some((td, rest)) if known(td) => {
                let mut each: Vec<String> = Vec::with_capacity(bundle.len());
                for entry in bundle {
                    let keeps_pattern = td.starts_with('*') && entry.ends_with(&td[1..]);
                    let p = if keeps_pattern { principal.clone() } else { [entry.as_str(), rest].join("/") };
                    if !each.contains(&p) {
                        each.push(p);
                    }
                }
                each
            }
            _ => vec![principal.clone()],
        })
        .collect()
}

fn expand_aliases(bundle: &[String], values: &[String]) -> Vec<String> {
    let all = values.iter().flat_map(|v| if bundle.iter().any(|b| b == v) { bundle } else { std::slice::from_ref(v) });
    let mut seen = std::collections::HashSet::new();
    all.filter(|v| seen.insert(v.as_str())).cloned().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The examples of istiod's trustdomain package documentation, worked by hand.
    #[test]
    fn trust_domain_migration_follows_istiod() {
        let bundle = strings(&["td2", "td1", "*-legacy"]);
        assert_eq!(
            replace_aliases(&bundle, &strings(&["td1/ns/foo/sa/bar"])),
            strings(&["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar", "*-legacy/ns/foo/sa/bar"])
        );
        assert_eq!(
            replace_aliases(&bundle, &strings(&["cluster.local/ns/foo/sa/bar"])),
            strings(&["td2/ns/foo/sa/bar", "td1/ns/foo/sa/bar", "*-legacy/ns/foo/sa/bar"]),
            "cluster.local stands for the local trust domain and is not kept"
        );
        assert_eq!(
            replace_aliases(&strings(&["new-td", "old-td", "x"]), &strings(&["*-td/ns/foo/sa/bar"])),
            strings(&["*-td/ns/foo/sa/bar", "x/ns/foo/sa/bar"]),
            "a *x trust domain stays as written for the entries it matches, once"
        );
        for untouched in ["*/ns/foo/sa/bar", "other/ns/foo/sa/bar", "td1/ns/foo", "td1/ns/foo/sa/bar/x"] {
            assert_eq!(replace_aliases(&bundle, &strings(&[untouched])), strings(&[untouched]));
        }
        assert_eq!(
            expand_aliases(&bundle, &strings(&["td1", "other", "td2", "cluster.local"])),
            strings(&["td2", "td1", "*-legacy", "other", "cluster.local"])
        );
    }

    #[test]
    fn generates_istiod_shapes() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/a/sa/b], namespaces: ['ns-*']}}]
    to: [{operation: {methods: [GET], paths: ['/x/{*}']}}]
    when: [{key: 'request.auth.claims[groups]', values: [admin]}]
"#;
        let res = Resources { items: wasmesh_istio::load_str(yaml, "t").unwrap() };
        let wl = Workload::new("w", "foo");
        let f = http_filters(&res, &wl, &[]);
        assert_eq!(f.len(), 1);
        let p = &f[0]["typed_config"]["rules"]["policies"]["ns[foo]-policy[p]-rule[0]"];
        let ids = &p["principals"][0]["and_ids"]["ids"];
        assert_eq!(
            ids[0]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["exact"],
            "spiffe://cluster.local/ns/a/sa/b"
        );
        assert_eq!(
            ids[1]["or_ids"]["ids"][0]["authenticated"]["principal_name"]["safe_regex"]["regex"],
            ".*/ns/ns-.*/.*"
        );
        assert_eq!(ids[2]["metadata"]["path"][1]["key"], "groups");
        let rules = &p["permissions"][0]["and_rules"]["rules"];
        assert_eq!(rules[0]["or_rules"]["rules"][0]["header"]["name"], ":method");
        assert_eq!(rules[1]["or_rules"]["rules"][0]["uri_template"]["typed_config"]["path_template"], "/x/*");
    }
}
