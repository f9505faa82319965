//! `wasmeshctl check`: what the authz filter would decide for one request, offline.
//!
//! Given the Istio resources, the workload (a WorkloadEntry's identity) and a request
//! description (method, path, host, headers, peer principal, JWT claims, addresses), it compiles
//! the policies exactly as the filter does and prints the decision, the policy and rule that
//! decided, the matching AUDIT rules and dry-run results, and which policies applied at all.

use crate::mesh::MeshConfig;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use wasmesh_authz::RequestIdentity;
use wasmesh_authz::{AuthzConfig, CustomOutcome, PeerNames, Request, Stage};
use wasmesh_istio::{Error, Kind, ProxyMode, Resources, Workload};

/// A request to check. Every field but `path` is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CheckRequest {
    #[serde(default = "default_method")]
    pub method: String,
    /// The path as Envoy normalized it (query and fragment are ignored, as Istio does).
    pub path: String,
    /// `:authority`; default `<workload service>` is not guessed: no host unless given.
    #[serde(default)]
    pub host: Option<String>,
    /// `name: value` headers, in order.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The peer's identity from its mTLS certificate, `<td>/ns/<ns>/sa/<sa>` (with or without
    /// `spiffe://`); none means plaintext.
    #[serde(default)]
    pub principal: Option<String>,
    /// The verified JWT payload (`iss`, `sub`, `aud`, `azp`, any claim); none means no token.
    #[serde(default)]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// The physical peer address (`ipBlocks`, `source.ip`); default 127.0.0.1.
    #[serde(default)]
    pub source_ip: Option<String>,
    /// The client address Envoy derived from x-forwarded-for (`remoteIpBlocks`); default the source.
    #[serde(default)]
    pub remote_ip: Option<String>,
    /// Local address and port of the connection (`destination.ip`, `ports`).
    #[serde(default)]
    pub destination_ip: Option<String>,
    #[serde(default)]
    pub destination_port: Option<u32>,
    /// TLS SNI (`connection.sni`).
    #[serde(default)]
    pub sni: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

impl CheckRequest {
    /// Parses `name: value` (as `curl -H` takes it).
    pub fn parse_header(h: &str) -> Result<(String, String), String> {
        let (k, v) = h.split_once(':').ok_or_else(|| format!("header {h:?}: expected `name: value`"))?;
        let k = k.trim();
        if k.is_empty() || k.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(format!("header {h:?}: bad name {k:?}"));
        }
        Ok((k.to_ascii_lowercase(), v.trim().to_string()))
    }
}

/// The verdict text, or the configuration errors that stop the check (each naming resource and
/// field). `gateway` checks a gateway listener instead of a sidecar inbound one.
pub fn check(
    resources: &Resources,
    workload: &Workload,
    mesh: &MeshConfig,
    req: &CheckRequest,
    gateway: bool,
) -> Result<String, Vec<Error>> {
    let mut wl = workload.clone();
    if let Some(root) = &mesh.root_namespace {
        wl.root_namespace = root.clone();
    }
    if let Some(td) = &mesh.trust_domain {
        wl.trust_domain = td.clone();
    }
    wl.mode = if gateway { ProxyMode::Gateway } else { ProxyMode::Sidecar };
    let mut errors = wasmesh_authz::validate_all(resources);
    // What wasmeshctl refuses in AuthorizationPolicies beyond Istio (targetRefs to a waypoint).
    errors.extend(
        crate::validate::refusals(resources)
            .into_iter()
            .filter(|e| e.resource.as_deref().is_some_and(|r| r.starts_with("AuthorizationPolicy "))),
    );
    if !errors.is_empty() {
        return Err(errors);
    }
    let relevant = Resources {
        items: resources
            .items
            .iter()
            .filter(|r| r.kind() == Kind::AuthorizationPolicy || (r.kind() == Kind::PeerAuthentication && !gateway))
            .cloned()
            .collect(),
    };
    let cfg = AuthzConfig {
        workload: Some(wl.clone()),
        mesh: None,
        resources: Vec::new(),
        trust_domain_aliases: mesh.trust_domain_aliases.clone(),
        extension_providers: mesh.authz_extension_providers(),
        stage: Stage::All,
        multiple_custom_providers: crate::plugins::authz::multiple_custom_providers(),
        decision_filter_state: true,
        single_san_peers: false,
        request_body: false,
        peer_authentication_by_transport: false,
    };
    let authz = cfg.compile(&relevant).map_err(|e| e.0)?;

    let ip = |field: &str, v: &Option<String>, default: Option<IpAddr>| -> Result<Option<IpAddr>, Vec<Error>> {
        match v {
            None => Ok(default),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| vec![Error::new(format!("request {field}: {s:?} is not an IP address"))]),
        }
    };
    let source_ip = ip("sourceIp", &req.source_ip, "127.0.0.1".parse().ok())?;
    let remote_ip = ip("remoteIp", &req.remote_ip, source_ip)?;
    let destination_ip = ip("destinationIp", &req.destination_ip, "127.0.0.1".parse().ok())?;
    let mut headers: Vec<(String, Vec<u8>)> =
        vec![(":method".into(), req.method.clone().into_bytes()), (":path".into(), req.path.clone().into_bytes())];
    if let Some(h) = &req.host {
        headers.push((":authority".into(), h.clone().into_bytes()));
    }
    for (k, v) in &req.headers {
        headers.push((k.to_ascii_lowercase(), v.clone().into_bytes()));
    }
    let uri =
        req.principal.as_ref().map(|p| if p.starts_with("spiffe://") { p.clone() } else { format!("spiffe://{p}") });
    let identity = req.claims.as_ref().map(|claims| {
        let s = |k: &str| claims.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let audiences = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        RequestIdentity {
            principal: format!("{}/{}", s("iss"), s("sub")),
            issuer: s("iss"),
            subject: s("sub"),
            audiences,
            presenter: claims.get("azp").and_then(|v| v.as_str()).map(str::to_string),
            claims: claims.clone(),
        }
    });
    let sni = req.sni.clone().unwrap_or_default();
    let view = Request {
        headers: &headers,
        source_ip,
        remote_ip,
        destination_ip,
        destination_port: Some(req.destination_port.unwrap_or(8000)),
        sni: sni.as_bytes(),
        mtls: uri.is_some(),
        peer: PeerNames { uri_san: uri.as_deref().map(str::as_bytes), dns_san: None, subject: None },
        identity: identity.as_ref(),
        metadata: &[],
    };

    let mut out = String::new();
    out.push_str(&format!(
        "workload {}/{} ({}), request {} {}{}{}\n",
        wl.namespace,
        wl.name,
        if gateway { "gateway" } else { "sidecar inbound" },
        req.method,
        req.path,
        uri.as_ref().map(|u| format!(" from {u}")).unwrap_or_else(|| " over plaintext".into()),
        identity.as_ref().map(|i| format!(" with JWT {}", i.principal)).unwrap_or_default(),
    ));
    if authz.applied().is_empty() {
        out.push_str("policies: none apply to this workload\n");
    } else {
        out.push_str(&format!("policies: {}\n", authz.applied().join(", ")));
    }
    for w in authz.warnings() {
        out.push_str(&format!("warning: {w}\n"));
    }
    let (custom, verdict) = authz.evaluate(&view);
    if let Some(CustomOutcome::Check { provider, rule }) = &custom {
        out.push_str(&format!(
            "CUSTOM: rule {rule} ({}) matched: extension provider {:?} is asked first; if it denies, its answer is the response. Assuming it allows:\n",
            describe_rule(resources, rule.name),
            provider.name
        ));
    }
    out.push_str(&format!("decision: {}\n", if verdict.allowed { "ALLOW" } else { "DENY (403 RBAC: access denied)" }));
    out.push_str(&format!("reason: {}\n", verdict.explain()));
    if let Some(rule) = verdict.rule() {
        out.push_str(&format!("decided by: {}\n", describe_rule(resources, rule)));
        if let Some(yaml) = rule_yaml(resources, rule) {
            out.push_str("rule:\n");
            for line in yaml.lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    Ok(out)
}

/// `ns[foo]-policy[bar]-rule[2]` (with istiod's CUSTOM prefix/suffix) → (ns, name, index).
fn parse_rule_name(rule: &str) -> Option<(String, String, usize)> {
    let start = rule.find("ns[")?;
    let rest = &rule[start + 3..];
    let (ns, rest) = rest.split_once("]-policy[")?;
    let (name, rest) = rest.rsplit_once("]-rule[")?;
    let idx = rest.split(']').next()?.parse().ok()?;
    Some((ns.to_string(), name.to_string(), idx))
}

/// `AuthorizationPolicy ns/name spec.rules[i]` for a rule name.
pub fn describe_rule(resources: &Resources, rule: &str) -> String {
    match parse_rule_name(rule) {
        Some((ns, name, idx)) => {
            let loc = resources
                .authorization_policies()
                .find(|(r, _)| r.namespace() == ns && r.name() == name)
                .map(|(r, _)| if r.location.is_unknown() { String::new() } else { format!(" in {}", r.location) })
                .unwrap_or_default();
            format!("AuthorizationPolicy {ns}/{name} spec.rules[{idx}]{loc}")
        }
        None => rule.to_string(),
    }
}

fn rule_yaml(resources: &Resources, rule: &str) -> Option<String> {
    let (ns, name, idx) = parse_rule_name(rule)?;
    let (_, ap) = resources.authorization_policies().find(|(r, _)| r.namespace() == ns && r.name() == name)?;
    match ap.rules.as_ref() {
        Some(rules) => yaml_serde::to_string(rules.get(idx)?.as_ref()?).ok(),
        None => Some("(no rules: the policy matches nothing)\n".into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "policies.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn wl() -> Workload {
        let mut w = Workload::new("httpbin", "foo");
        w.labels.insert("app".into(), "httpbin".into());
        w
    }

    fn req(method: &str, path: &str) -> CheckRequest {
        CheckRequest { method: method.into(), path: path.into(), ..Default::default() }
    }

    const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
  - from: [{source: {requestPrincipals: ["https://accounts.example.com/*"]}}]
    when: [{key: "request.auth.claims[groups]", values: [admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
"#;

    #[test]
    fn names_the_policy_and_rule_that_denied() {
        let out = check(&resources(POLICIES), &wl(), &MeshConfig::default(), &req("GET", "/admin/x"), false).unwrap();
        assert!(out.contains("decision: DENY (403 RBAC: access denied)"), "{out}");
        assert!(out.contains("DENY rule ns[foo]-policy[deny-admin]-rule[0] matched"), "{out}");
        assert!(
            out.contains("decided by: AuthorizationPolicy foo/deny-admin spec.rules[0] in policies.yaml (document 1)"),
            "{out}"
        );
        assert!(out.contains("- /admin*"), "the rule is printed: {out}");
        assert!(out.contains("audited by ns[istio-system]-policy[audit-all]-rule[0]"), "{out}");
        assert!(out.contains("AuthorizationPolicy foo/allow-sleep (ALLOW)"), "{out}");
    }

    #[test]
    fn principal_and_claims_select_the_allow_rule() {
        let mut r = req("GET", "/x");
        r.principal = Some("cluster.local/ns/foo/sa/sleep".into());
        let out = check(&resources(POLICIES), &wl(), &MeshConfig::default(), &r, false).unwrap();
        assert!(out.contains("decision: ALLOW"), "{out}");
        assert!(out.contains("AuthorizationPolicy foo/allow-sleep spec.rules[0]"), "{out}");
        let mut r = req("GET", "/x");
        r.claims =
            serde_json::from_str(r#"{"iss": "https://accounts.example.com", "sub": "alice", "groups": ["admin"]}"#)
                .unwrap();
        let out = check(&resources(POLICIES), &wl(), &MeshConfig::default(), &r, false).unwrap();
        assert!(out.contains("spec.rules[1]"), "{out}");
        assert!(out.contains("with JWT https://accounts.example.com/alice"), "{out}");
        let out = check(&resources(POLICIES), &wl(), &MeshConfig::default(), &req("GET", "/x"), false).unwrap();
        assert!(out.contains("decision: DENY"), "{out}");
        assert!(out.contains("ALLOW policies apply to the workload but none matched"), "{out}");
    }

    #[test]
    fn headers_addresses_and_custom() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: foo}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {paths: ["/api*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ips, namespace: foo}
spec:
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}], when: [{key: "request.headers[x-env]", values: [prod]}]}]
"#;
        let mesh: MeshConfig = yaml_serde::from_str(
            "extensionProviders: [{name: opa, envoyExtAuthzHttp: {service: opa.foo.svc.cluster.local, port: 8181}}]",
        )
        .unwrap();
        let mut r = req("GET", "/api/v1");
        r.headers = vec![CheckRequest::parse_header("X-Env: prod").unwrap()];
        r.remote_ip = Some("203.0.113.7".into());
        let out = check(&resources(yaml), &wl(), &mesh, &r, false).unwrap();
        assert!(out.contains("CUSTOM: rule istio-ext-authz-opa-ns[foo]-policy[ext]-rule[0] (AuthorizationPolicy foo/ext spec.rules[0]"), "{out}");
        assert!(out.contains("extension provider \"opa\" is asked first"), "{out}");
        assert!(out.contains("DENY rule ns[foo]-policy[ips]-rule[0] matched"), "{out}");
        r.remote_ip = Some("198.51.100.1".into());
        let out = check(&resources(yaml), &wl(), &mesh, &r, false).unwrap();
        assert!(out.contains("decision: ALLOW"), "{out}");
        assert!(CheckRequest::parse_header("nocolon").is_err());
        r.source_ip = Some("not-an-ip".into());
        let e = check(&resources(yaml), &wl(), &mesh, &r, false).unwrap_err();
        assert!(e[0].to_string().contains("sourceIp"), "{e:?}");
    }

    #[test]
    fn invalid_policies_are_reported_not_evaluated() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: foo}\nspec: {action: DENY}\n";
        let e = check(&resources(yaml), &wl(), &MeshConfig::default(), &req("GET", "/"), false).unwrap_err();
        assert!(e[0].to_string().contains("AuthorizationPolicy foo/bad"), "{e:?}");
    }

    #[test]
    fn a_policy_attached_to_a_waypoint_is_refused_not_ignored() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: wp, namespace: foo}\nspec:\n  targetRefs: [{kind: Service, group: '', name: httpbin}]\n  action: DENY\n  rules: [{}]\n";
        let e = check(&resources(yaml), &wl(), &MeshConfig::default(), &req("GET", "/"), false).unwrap_err();
        assert!(e[0].to_string().contains("AuthorizationPolicy foo/wp: spec.targetRefs[0].kind"), "{e:?}");
        assert!(e[0].to_string().contains("waypoint"), "{e:?}");
    }

    #[test]
    fn no_policy_and_strict_peer_authentication() {
        let out = check(&Resources::default(), &wl(), &MeshConfig::default(), &req("GET", "/"), false).unwrap();
        assert!(out.contains("policies: none apply"), "{out}");
        assert!(out.contains("decision: ALLOW"), "{out}");
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
        let out = check(&resources(pa), &wl(), &MeshConfig::default(), &req("GET", "/"), false).unwrap();
        assert!(
            out.contains("PeerAuthentication is STRICT on port 8000 (PeerAuthentication istio-system/default)"),
            "{out}"
        );
        let mut r = req("GET", "/");
        r.principal = Some("spiffe://cluster.local/ns/a/sa/b".into());
        assert!(check(&resources(pa), &wl(), &MeshConfig::default(), &r, false).unwrap().contains("decision: ALLOW"));
    }

    #[test]
    fn request_description_reads_from_yaml() {
        let r: CheckRequest = yaml_serde::from_str(
            "path: /x\nprincipal: cluster.local/ns/a/sa/b\nclaims: {iss: i, sub: s}\nheaders: [[x-a, '1']]\n",
        )
        .unwrap();
        assert_eq!(r.method, "GET");
        assert!(yaml_serde::from_str::<CheckRequest>("path: /x\nprincpal: a\n").is_err(), "typos are errors");
    }
}
