//! Behaviour tests: one or more per Istio field and rule, named after what a user observes.

use crate::*;
use serde_json::json;
use std::net::IpAddr;
use wasmesh_handover::RequestIdentity;
use wasmesh_istio::{load_str, FilterConfig, Resources, Workload};

fn workload() -> Workload {
    let mut wl = Workload::new("httpbin-v1", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.service_account = "httpbin".into();
    wl
}

fn compile_with(yaml: &str, wl: Workload, f: impl FnOnce(&mut AuthzConfig)) -> Authz {
    let resources = Resources { items: load_str(yaml, "test.yaml").expect("valid yaml") };
    let mut cfg = AuthzConfig {
        workload: Some(wl),
        mesh: None,
        resources: Vec::new(),
        trust_domain_aliases: Vec::new(),
        extension_providers: Vec::new(),
        stage: Stage::All,
        multiple_custom_providers: false,
        decision_filter_state: true,
        single_san_peers: false,
        request_body: false,
        peer_authentication_by_transport: false,
    };
    f(&mut cfg);
    cfg.compile(&resources).expect("compiles")
}

fn compile(yaml: &str) -> Authz {
    compile_with(yaml, workload(), |_| {})
}

/// A request under construction; `view()` borrows it as the filter would.
#[derive(Clone)]
struct Req {
    headers: Vec<(String, Vec<u8>)>,
    source_ip: Option<IpAddr>,
    remote_ip: Option<IpAddr>,
    dest_ip: Option<IpAddr>,
    dest_port: Option<u32>,
    sni: Vec<u8>,
    peer: Option<String>,
    identity: Option<RequestIdentity>,
    metadata: Vec<MetadataEntry>,
}

fn req(method: &str, path: &str) -> Req {
    Req {
        headers: vec![
            (":method".into(), method.as_bytes().to_vec()),
            (":path".into(), path.as_bytes().to_vec()),
            (":authority".into(), b"httpbin.foo:8000".to_vec()),
        ],
        source_ip: Some("10.0.0.1".parse().unwrap()),
        remote_ip: Some("10.0.0.1".parse().unwrap()),
        dest_ip: Some("10.0.0.9".parse().unwrap()),
        dest_port: Some(8000),
        sni: Vec::new(),
        peer: None,
        identity: None,
        metadata: Vec::new(),
    }
}

fn get(path: &str) -> Req {
    req("GET", path)
}

impl Req {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_ascii_lowercase(), v.as_bytes().to_vec()));
        self
    }
    fn host(mut self, h: &str) -> Self {
        self.headers.retain(|(k, _)| k != ":authority");
        self.headers.push((":authority".into(), h.as_bytes().to_vec()));
        self
    }
    fn from(mut self, principal: &str) -> Self {
        self.peer = Some(format!("spiffe://{principal}"));
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.source_ip = Some(ip.parse().unwrap());
        self
    }
    fn remote(mut self, ip: &str) -> Self {
        self.remote_ip = Some(ip.parse().unwrap());
        self
    }
    fn port(mut self, p: u32) -> Self {
        self.dest_port = Some(p);
        self
    }
    fn jwt(mut self, claims: serde_json::Value) -> Self {
        let claims = claims.as_object().unwrap().clone();
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("").to_string();
        self.identity = Some(RequestIdentity {
            principal: format!("{iss}/{sub}"),
            issuer: iss,
            subject: sub,
            audiences: Vec::new(),
            presenter: None,
            claims,
        });
        self
    }
    fn view(&self) -> Request<'_> {
        Request {
            headers: &self.headers,
            source_ip: self.source_ip,
            remote_ip: self.remote_ip,
            destination_ip: self.dest_ip,
            destination_port: self.dest_port,
            sni: &self.sni,
            mtls: self.peer.is_some(),
            peer: PeerNames { uri_san: self.peer.as_deref().map(str::as_bytes), dns_san: None, subject: None },
            identity: self.identity.as_ref(),
            metadata: &self.metadata,
        }
    }
}

fn allowed(a: &Authz, r: &Req) -> bool {
    let (custom, v) = a.evaluate(&r.view());
    assert!(custom.is_none(), "unexpected CUSTOM outcome {custom:?}");
    v.allowed
}

fn verdict(a: &Authz, r: &Req) -> String {
    a.evaluate(&r.view()).1.explain()
}

fn policy(name: &str, ns: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  action: {action}\n{rules}\n---\n"
    )
}

fn allow(rules: &str) -> Authz {
    compile(&policy("p", "foo", "ALLOW", rules))
}

fn deny(rules: &str) -> Authz {
    compile(&policy("p", "foo", "DENY", rules))
}

// ---------------------------------------------------------------------------------------------
// Actions, order, empty policies

#[test]
fn no_policy_allows_everything() {
    let a = compile("");
    assert!(allowed(&a, &get("/")));
    assert!(a.is_empty());
    assert!(verdict(&a, &get("/")).contains("no ALLOW policy applies"));
}

#[test]
fn allow_policy_without_rules_denies_everything() {
    for rules in ["", "  rules: []"] {
        let a = allow(rules);
        assert!(!allowed(&a, &get("/")), "{rules:?}");
        assert_eq!(a.evaluate(&get("/").view()).1.reason, Reason::NoAllowMatch);
    }
    let a = compile(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec: {}\n",
    );
    assert!(!allowed(&a, &get("/")), "spec: {{}} is ALLOW with no rules: deny all");
}

#[test]
fn allow_policy_with_one_empty_rule_allows_everything() {
    let a = allow("  rules: [{}]");
    let v = a.evaluate(&get("/x").view()).1;
    assert!(v.allowed);
    assert_eq!(v.rule(), Some("ns[foo]-policy[p]-rule[0]"));
}

#[test]
fn deny_with_empty_rule_denies_all_and_deny_without_rules_never_matches() {
    let a = deny("  rules: [{}]");
    let v = a.evaluate(&get("/").view()).1;
    assert!(!v.allowed);
    assert!(matches!(v.reason, Reason::Denied { rule } if rule == "ns[foo]-policy[p]-rule[0]"), "{v:?}");
    assert!(allowed(&deny(""), &get("/")), "DENY without rules never matches");
}

#[test]
fn deny_is_evaluated_before_allow() {
    let yaml = policy("a", "foo", "ALLOW", "  rules: [{}]")
        + &policy("d", "foo", "DENY", "  rules: [{to: [{operation: {paths: [/admin]}}]}]");
    let a = compile(&yaml);
    assert!(allowed(&a, &get("/x")));
    let v = a.evaluate(&get("/admin").view()).1;
    assert!(!v.allowed);
    assert_eq!(v.rule(), Some("ns[foo]-policy[d]-rule[0]"));
}

#[test]
fn allow_policies_are_additive_and_default_deny_applies_only_with_allow_policies() {
    let yaml = policy("a", "foo", "ALLOW", "  rules: [{to: [{operation: {paths: [/a]}}]}]")
        + &policy("b", "foo", "ALLOW", "  rules: [{to: [{operation: {paths: [/b]}}]}]");
    let a = compile(&yaml);
    assert!(allowed(&a, &get("/a")));
    assert!(allowed(&a, &get("/b")));
    assert!(!allowed(&a, &get("/c")));
    // Only a DENY policy: no default deny.
    let d = deny("  rules: [{to: [{operation: {paths: [/a]}}]}]");
    assert!(allowed(&d, &get("/c")));
}

#[test]
fn audit_never_changes_the_decision_and_is_recorded() {
    let yaml = policy("au", "foo", "AUDIT", "  rules: [{to: [{operation: {paths: [/a*]}}]}]")
        + &policy("d", "foo", "DENY", "  rules: [{to: [{operation: {paths: [/ab]}}]}]");
    let a = compile(&yaml);
    let v = a.evaluate(&get("/aa").view()).1;
    assert!(v.allowed);
    assert_eq!(v.audit, vec!["ns[foo]-policy[au]-rule[0]"]);
    let v = a.evaluate(&get("/ab").view()).1;
    assert!(!v.allowed, "audit does not prevent a deny");
    assert_eq!(v.audit.len(), 1);
    assert!(a.evaluate(&get("/b").view()).1.audit.is_empty());
    // AUDIT alone never denies.
    let only = compile(&policy("au", "foo", "AUDIT", "  rules: [{}]"));
    assert!(allowed(&only, &get("/")));
}

#[test]
fn first_matching_rule_in_name_order_is_reported() {
    let yaml = policy("b", "foo", "DENY", "  rules: [{}]") + &policy("a", "foo", "DENY", "  rules: [{}, {}]");
    let a = compile(&yaml);
    assert_eq!(a.evaluate(&get("/").view()).1.rule(), Some("ns[foo]-policy[a]-rule[0]"));
}

#[test]
fn rule_index_counts_null_rules() {
    let a = allow("  rules:\n  - null\n  - to: [{operation: {paths: [/x]}}]");
    assert_eq!(a.evaluate(&get("/x").view()).1.rule(), Some("ns[foo]-policy[p]-rule[1]"));
    assert!(a.warnings().iter().any(|w| w.to_string().contains("null rule")));
}

// ---------------------------------------------------------------------------------------------
// Dry run

#[test]
fn dry_run_allow_only_does_not_default_deny() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  rules: [{to: [{operation: {paths: [/a]}}]}]\n";
    let a = compile(yaml);
    let v = a.evaluate(&get("/b").view()).1;
    assert!(v.allowed);
    assert_eq!(v.dry_run_allow, Some(Shadow { allowed: false, rule: None }));
    let v = a.evaluate(&get("/a").view()).1;
    assert_eq!(
        v.dry_run_allow.as_ref().map(|s| (s.allowed, s.rule.map(|r| r.name))),
        Some((true, Some("ns[foo]-policy[p]-rule[0]")))
    );
    assert!(v.explain().contains("dry-run ALLOW policies would allow"));
}

#[test]
fn dry_run_deny_is_reported_not_enforced() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: \"True\"}}\nspec:\n  action: DENY\n  rules: [{}]\n";
    let a = compile(yaml);
    let v = a.evaluate(&get("/").view()).1;
    assert!(v.allowed);
    assert_eq!(
        v.dry_run_deny.as_ref().map(|s| (s.allowed, s.rule.map(|r| r.name))),
        Some((false, Some("ns[foo]-policy[p]-rule[0]")))
    );
    assert_eq!(v.shadow_text().unwrap(), "dry-run deny: denied by ns[foo]-policy[p]-rule[0]");
}

#[test]
fn dry_run_false_or_invalid_is_enforced() {
    for value in ["\"false\"", "\"yes\""] {
        let yaml = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo, annotations: {{istio.io/dry-run: {value}}}}}\nspec:\n  action: DENY\n  rules: [{{}}]\n");
        let a = compile(&yaml);
        assert!(!allowed(&a, &get("/")), "{value}");
    }
}

// ---------------------------------------------------------------------------------------------
// Scope

#[test]
fn scope_root_namespace_workload_namespace_and_selector() {
    let deny_all = "  rules: [{}]";
    // Root namespace: applies to every namespace.
    assert!(!allowed(&compile(&policy("p", "istio-system", "DENY", deny_all)), &get("/")));
    // Another namespace: not a candidate.
    assert!(allowed(&compile(&policy("p", "bar", "DENY", deny_all)), &get("/")));
    // Selector ⊆ labels.
    let sel = |labels: &str| {
        compile(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n  action: DENY\n  selector: {{matchLabels: {labels}}}\n  rules: [{{}}]\n"
        ))
    };
    assert!(!allowed(&sel("{app: httpbin}"), &get("/")));
    assert!(allowed(&sel("{app: other}"), &get("/")));
    assert!(allowed(&sel("{app: httpbin, version: v2}"), &get("/")));
    assert!(!allowed(&sel("{}"), &get("/")), "empty matchLabels selects every workload");
    // A root-namespace selector matches workloads of every namespace.
    let root = compile("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n  action: DENY\n  selector: {matchLabels: {app: httpbin}}\n  rules: [{}]\n");
    assert!(!allowed(&root, &get("/")));
    // A custom root namespace.
    let mut wl = workload();
    wl.root_namespace = "mesh-root".into();
    let a = compile_with(&policy("p", "mesh-root", "DENY", deny_all), wl.clone(), |_| {});
    assert!(!allowed(&a, &get("/")));
    let a = compile_with(&policy("p", "istio-system", "DENY", deny_all), wl, |_| {});
    assert!(allowed(&a, &get("/")));
}

#[test]
fn scope_target_refs_only_for_gateway_api_gateways() {
    let target = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  action: DENY\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  rules: [{}]\n";
    // A sidecar ignores a policy with targetRefs.
    assert!(allowed(&compile(target), &get("/")));
    let mut gw = workload();
    gw.labels.insert(GATEWAY_NAME_LABEL.into(), "gw".into());
    assert!(!allowed(&compile_with(target, gw.clone(), |_| {}), &get("/")));
    let mut other = workload();
    other.labels.insert(GATEWAY_NAME_LABEL.into(), "other".into());
    assert!(allowed(&compile_with(target, other, |_| {}), &get("/")));
    // Legacy singular targetRef.
    let single = target.replace(
        "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
        "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}",
    );
    assert!(!allowed(&compile_with(&single, gw.clone(), |_| {}), &get("/")));
    // A targetRef policy in the root namespace does not attach to a gateway in foo.
    let root = target.replace("namespace: foo", "namespace: istio-system");
    assert!(allowed(&compile_with(&root, gw.clone(), |_| {}), &get("/")));
    // Without targetRefs, selector policies still apply to the gateway.
    assert!(!allowed(&compile_with(&policy("p", "foo", "DENY", "  rules: [{}]"), gw, |_| {}), &get("/")));
}

// ---------------------------------------------------------------------------------------------
// Source fields

#[test]
fn principals_exact_prefix_suffix_presence() {
    let a = allow("  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/foo/sa/other")));
    assert!(!allowed(&a, &get("/")), "plaintext never matches principals");
    let a = allow("  rules: [{from: [{source: {principals: [cluster.local/ns/foo/*]}}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/sa/x")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/bar/sa/x")));
    let a = allow("  rules: [{from: [{source: {principals: ['*/sa/sleep']}}]}]");
    assert!(allowed(&a, &get("/").from("td/ns/any/sa/sleep")));
    assert!(!allowed(&a, &get("/").from("td/ns/any/sa/sleepy")));
    let a = allow("  rules: [{from: [{source: {principals: ['*']}}]}]");
    assert!(allowed(&a, &get("/").from("anything")));
    assert!(!allowed(&a, &get("/")));
}

#[test]
fn not_principals_match_plaintext_as_istio_warns() {
    // ALLOW notPrincipals: a plaintext request has no principal, so NOT(principal) holds.
    let a = allow("  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/bad]}}]}]");
    assert!(allowed(&a, &get("/")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/foo/sa/bad")));
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/sa/good")));
    // The documented mitigation: DENY notPrincipals ["*"] denies plaintext.
    let d = deny("  rules: [{from: [{source: {notPrincipals: ['*']}}]}]");
    assert!(!allowed(&d, &get("/")));
    assert!(allowed(&d, &get("/").from("cluster.local/ns/foo/sa/x")));
}

#[test]
fn peer_names_are_matched_like_envoy_authenticated() {
    let a = allow("  rules: [{from: [{source: {principals: ['*']}}]}]");
    let mut r = get("/");
    r.peer = None;
    let names = PeerNames { uri_san: None, dns_san: Some(b"host.example"), subject: None };
    let view = Request { mtls: true, peer: names, ..r.view() };
    assert!(a.evaluate(&view).1.allowed, "`*` (.+) is satisfied by a DNS SAN");
    let view = Request { mtls: true, peer: PeerNames::default(), ..r.view() };
    assert!(!a.evaluate(&view).1.allowed, "a certificate without names does not match .+");
}

#[test]
fn request_principals_split_issuer_and_subject_at_the_last_slash() {
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['https://issuer.example.com/alice']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "https://issuer.example.com", "sub": "alice"}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "https://issuer.example.com", "sub": "bob"}))));
    assert!(!allowed(&a, &get("/")), "no token");
    // issuer/* : issuer exact, any non-empty subject.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['https://issuer.example.com/*']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "https://issuer.example.com", "sub": "x"}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "https://other.example.com", "sub": "x"}))));
    // *: any token with non-empty iss and sub.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s"}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "i"}))), "sub missing");
    // *suffix/sub : issuer suffix, subject exact.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['*.example.com/alice']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "https://a.example.com", "sub": "alice"}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "https://a.example.com", "sub": "alice2"}))));
    // *suffix without slash: any issuer, subject suffix.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['*ice']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "x", "sub": "alice"}))));
    // prefix* without slash: issuer prefix, any subject.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['iss*']}}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "issuer", "sub": "x"}))));
    // With a slash the split happens first: `https://iss*` is issuer `https:/`, subject `iss*`.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['https://iss*']}}]}]");
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "https://issuer", "sub": "x"}))));
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "https:/", "sub": "issuer"}))));
    // A value without '/' requires an empty subject.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['issuer']}}]}]");
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "issuer", "sub": "x"}))));
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "issuer", "sub": ""}))));
    // A slash inside the subject cannot be expressed.
    let a = allow("  rules: [{from: [{source: {requestPrincipals: ['iss/a/b']}}]}]");
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "iss", "sub": "a/b"}))));
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "iss/a", "sub": "b"}))));
}

#[test]
fn not_request_principals_match_requests_without_a_token() {
    let a = deny("  rules: [{from: [{source: {notRequestPrincipals: ['*']}}]}]");
    assert!(!allowed(&a, &get("/")), "no JWT: denied");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s"}))));
}

#[test]
fn namespaces_and_wildcards() {
    let a = allow("  rules: [{from: [{source: {namespaces: [bar]}}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/bar/sa/x")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/barx/sa/x")));
    assert!(!allowed(&a, &get("/")), "requires mTLS");
    let a = allow("  rules: [{from: [{source: {namespaces: ['ns-prefix-*']}}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/ns-prefix-1/sa/x")));
    let a = allow("  rules: [{from: [{source: {notNamespaces: [bar]}}]}]");
    assert!(allowed(&a, &get("/")), "plaintext bypasses notNamespaces, as Istio warns");
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/bar/sa/x")));
    // `.` in a namespace is literal.
    let a = allow("  rules: [{from: [{source: {namespaces: [a.b]}}]}]");
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/axb/sa/x")));
}

#[test]
fn service_accounts_default_to_the_policy_namespace_and_escape_dots() {
    let a = allow("  rules: [{from: [{source: {serviceAccounts: [sleep, bar/curl.v1]}}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/bar/sa/sleep")), "sleep means foo/sleep");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/bar/sa/curl.v1")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/bar/sa/curlxv1")), "CVE-2026-39350: dots are literal");
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep-x")));
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep/extra")));
    assert!(allowed(&a, &get("/").from("cluster.local/ns/foo/k/v/sa/sleep")));
    let n = allow("  rules: [{from: [{source: {notServiceAccounts: [sleep]}}]}]");
    assert!(!allowed(&n, &get("/").from("cluster.local/ns/foo/sa/sleep")));
    assert!(allowed(&n, &get("/").from("cluster.local/ns/foo/sa/other")));
}

#[test]
fn trust_domains_exact_presence_and_one_wildcard() {
    let a = allow("  rules: [{from: [{source: {trustDomains: [td.example]}}]}]");
    assert!(allowed(&a, &get("/").from("td.example/ns/x/sa/y")));
    assert!(!allowed(&a, &get("/").from("td.example.org/ns/x/sa/y")));
    let a = allow("  rules: [{from: [{source: {trustDomains: ['*']}}]}]");
    assert!(allowed(&a, &get("/").from("any/ns/x/sa/y")));
    let a = allow("  rules: [{from: [{source: {trustDomains: ['*.example']}}]}]");
    assert!(allowed(&a, &get("/").from("td.example/ns/x/sa/y")));
    assert!(!allowed(&a, &get("/").from("td.examplex/ns/x/sa/y")));
    let a = allow("  rules: [{from: [{source: {trustDomains: ['prod-*']}}]}]");
    assert!(allowed(&a, &get("/").from("prod-eu/ns/x/sa/y")));
    assert!(!allowed(&a, &get("/").from("dev-eu/ns/x/sa/y")));
}

#[test]
fn trust_domain_aliases_rewrite_principals_and_expand_trust_domains() {
    let yaml = policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}, {from: [{source: {trustDomains: [old-td]}}]}]");
    let mut wl = workload();
    wl.trust_domain = "new-td".into();
    let a = compile_with(&yaml, wl, |c| c.trust_domain_aliases = vec!["old-td".into()]);
    assert!(allowed(&a, &get("/").from("new-td/ns/foo/sa/sleep")), "cluster.local means the local trust domain");
    assert!(allowed(&a, &get("/").from("old-td/ns/foo/sa/sleep")));
    assert!(allowed(&a, &get("/").from("new-td/ns/other/sa/x")), "old-td expands to the bundle");
    assert!(!allowed(&a, &get("/").from("third/ns/foo/sa/sleep")));
    // A principal of a foreign trust domain is kept as written.
    let yaml = policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {principals: [foreign/ns/foo/sa/sleep]}}]}]");
    let a = compile(&yaml);
    assert!(allowed(&a, &get("/").from("foreign/ns/foo/sa/sleep")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep")));
}

#[test]
fn ip_blocks_use_the_direct_peer_and_remote_ip_blocks_the_derived_client() {
    let a = allow("  rules: [{from: [{source: {ipBlocks: [10.0.0.0/24]}}]}]");
    assert!(allowed(&a, &get("/").ip("10.0.0.7").remote("1.2.3.4")));
    assert!(!allowed(&a, &get("/").ip("10.0.1.7").remote("10.0.0.7")));
    let a = allow("  rules: [{from: [{source: {remoteIpBlocks: [1.2.3.4]}}]}]");
    assert!(allowed(&a, &get("/").remote("1.2.3.4")));
    assert!(!allowed(&a, &get("/").remote("1.2.3.5").ip("1.2.3.4")));
    let a = allow("  rules: [{from: [{source: {notIpBlocks: ['10.0.0.0/8'], notRemoteIpBlocks: ['2001:db8::/32']}}]}]");
    assert!(allowed(&a, &get("/").ip("192.168.0.1")));
    assert!(!allowed(&a, &get("/").ip("10.1.1.1")));
    assert!(!allowed(&a, &get("/").ip("192.168.0.1").remote("2001:db8::1")));
}

#[test]
fn an_unavailable_input_fails_closed() {
    let a = allow("  rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]");
    let mut r = get("/");
    r.source_ip = None;
    let v = a.evaluate(&r.view()).1;
    assert!(!v.allowed);
    assert!(matches!(v.reason, Reason::Missing(_)));
    assert!(a.needs().source_ip);
    // DENY with an unavailable input also denies.
    let d = deny("  rules: [{to: [{operation: {ports: ['9000']}}]}]");
    let mut r = get("/");
    r.dest_port = None;
    assert!(!allowed(&d, &r));
}

/// A request where one input's hostcall failed.
struct Unreadable<'a> {
    req: Request<'a>,
    input: &'static str,
}

impl View for Unreadable<'_> {
    fn pseudo(&self, name: &str) -> Result<Option<&[u8]>, Missing> {
        if self.input == "headers" {
            return Err(Missing("headers"));
        }
        self.req.pseudo(name)
    }
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, Missing> {
        if self.input == "headers" {
            return Err(Missing("headers"));
        }
        self.req.any_header(name, f)
    }
    fn with_all_headers(&self, f: &mut dyn FnMut(&HeaderList)) -> Result<(), Missing> {
        if self.input == "headers" {
            return Err(Missing("headers"));
        }
        self.req.with_all_headers(f)
    }
    fn source_ip(&self) -> Option<IpAddr> {
        self.req.source_ip
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        self.req.remote_ip
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        self.req.destination_ip
    }
    fn destination_port(&self) -> Option<u32> {
        self.req.destination_port
    }
    fn sni(&self) -> Result<&[u8], Missing> {
        if self.input == "sni" {
            return Err(Missing("sni"));
        }
        self.req.sni()
    }
    fn mtls(&self) -> Result<bool, Missing> {
        if self.input == "mtls" {
            return Err(Missing("mtls"));
        }
        self.req.mtls()
    }
    fn peer(&self) -> Result<PeerNames<'_>, Missing> {
        if self.input == "peer" {
            return Err(Missing("peer"));
        }
        self.req.peer()
    }
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing> {
        if self.input == "identity" {
            return Err(Missing("identity"));
        }
        self.req.identity()
    }
    fn metadata(&self) -> Result<&[MetadataEntry], Missing> {
        self.req.metadata()
    }
}

#[test]
fn an_unreadable_input_fails_closed_where_an_absent_one_matches_a_negation() {
    let cases = [
        ("  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/bad]}}]}]", "mtls", get("/")),
        (
            "  rules: [{from: [{source: {notNamespaces: [bad]}}]}]",
            "peer",
            get("/").from("cluster.local/ns/foo/sa/good"),
        ),
        ("  rules: [{from: [{source: {notRequestPrincipals: [iss/bad]}}]}]", "identity", get("/")),
        ("  rules: [{when: [{key: connection.sni, notValues: [bad.example.com]}]}]", "sni", get("/")),
        ("  rules: [{when: [{key: 'request.headers[x-user]', notValues: [mallory]}]}]", "headers", get("/")),
        ("  rules: [{to: [{operation: {notPaths: [/admin]}}]}]", "headers", get("/x")),
    ];
    for (rules, input, r) in cases {
        let a = allow(rules);
        assert!(a.evaluate(&r.view()).1.allowed, "absent or readable input is allowed for {rules}");
        let v = a.evaluate(&Unreadable { req: r.view(), input }).1;
        assert!(!v.allowed && v.reason == Reason::Missing(Missing(input)), "{rules} with {input} unreadable: {v:?}");
    }
    let strict = compile("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n");
    let v = strict.evaluate(&Unreadable { req: get("/").from("cluster.local/ns/foo/sa/x").view(), input: "mtls" }).1;
    assert_eq!(v.reason, Reason::Missing(Missing("mtls")));
}

// ---------------------------------------------------------------------------------------------
// Operation fields

#[test]
fn hosts_are_case_insensitive_and_exact_excludes_port() {
    let a = allow("  rules: [{to: [{operation: {hosts: [Example.com]}}]}]");
    assert!(allowed(&a, &get("/").host("EXAMPLE.COM")));
    assert!(!allowed(&a, &get("/").host("example.com:80")));
    let a = allow("  rules: [{to: [{operation: {hosts: [example.com, 'example.com:*']}}]}]");
    assert!(allowed(&a, &get("/").host("example.com:8080")));
    let a = allow("  rules: [{to: [{operation: {hosts: ['*.example.com']}}]}]");
    assert!(allowed(&a, &get("/").host("a.Example.com")));
    let a = allow("  rules: [{to: [{operation: {notHosts: ['*.internal']}}]}]");
    assert!(!allowed(&a, &get("/").host("db.INTERNAL")));
    assert!(allowed(&a, &get("/").host("web")));
}

#[test]
fn methods_are_case_sensitive() {
    let a = allow("  rules: [{to: [{operation: {methods: [GET, HEAD]}}]}]");
    assert!(allowed(&a, &req("GET", "/")));
    assert!(!allowed(&a, &req("get", "/")));
    assert!(!allowed(&a, &req("POST", "/")));
    let a = allow("  rules: [{to: [{operation: {notMethods: [DELETE]}}]}]");
    assert!(!allowed(&a, &req("DELETE", "/")));
    assert!(allowed(&a, &req("PUT", "/")));
}

#[test]
fn ports_match_the_local_destination_port() {
    let a = allow("  rules: [{to: [{operation: {ports: ['8000']}}]}]");
    assert!(allowed(&a, &get("/").port(8000)));
    assert!(!allowed(&a, &get("/").port(9000)));
    let a = allow("  rules: [{to: [{operation: {notPorts: ['9000']}}]}]");
    assert!(!allowed(&a, &get("/").port(9000)));
    assert!(allowed(&a, &get("/").port(8000)));
}

#[test]
fn paths_exact_prefix_suffix_presence_without_query_or_fragment() {
    let a = allow("  rules: [{to: [{operation: {paths: [/exact, /prefix/*, '*.png', '*/suffix']}}]}]");
    for ok in ["/exact", "/exact?x=1", "/exact#frag", "/prefix/a/b", "/img/x.png", "/a/suffix"] {
        assert!(allowed(&a, &get(ok)), "{ok}");
    }
    for no in ["/exact/", "/EXACT", "/prefix", "/img/x.png/", "/other"] {
        assert!(!allowed(&a, &get(no)), "{no}");
    }
    let a = allow("  rules: [{to: [{operation: {paths: ['*']}}]}]");
    assert!(allowed(&a, &get("/")));
    let a = allow("  rules: [{to: [{operation: {notPaths: [/admin*]}}]}]");
    assert!(!allowed(&a, &get("/admin/x")));
    assert!(allowed(&a, &get("/user")));
}

#[test]
fn path_templates() {
    let a = allow("  rules: [{to: [{operation: {paths: ['/foo/{*}', '/bar/{**}/baz']}}]}]");
    assert!(allowed(&a, &get("/foo/x?q")));
    assert!(!allowed(&a, &get("/foo/x/y")));
    assert!(allowed(&a, &get("/bar/a/b/baz")));
    assert!(allowed(&a, &get("/bar//baz")));
    assert!(!allowed(&a, &get("/bar/a/b/bazz")));
}

#[test]
fn fields_of_one_operation_are_anded_and_to_entries_ored() {
    let a = allow("  rules: [{to: [{operation: {methods: [GET], paths: [/a]}}, {operation: {methods: [POST]}}]}]");
    assert!(allowed(&a, &req("GET", "/a")));
    assert!(!allowed(&a, &req("GET", "/b")));
    assert!(allowed(&a, &req("POST", "/b")));
    // A field with both X and notX applies both.
    let a = allow("  rules: [{to: [{operation: {paths: ['/api/*'], notPaths: [/api/admin]}}]}]");
    assert!(allowed(&a, &get("/api/x")));
    assert!(!allowed(&a, &get("/api/admin")));
}

#[test]
fn from_to_and_when_are_all_required() {
    let a = allow(
        "  rules:\n  - from: [{source: {namespaces: [bar]}}]\n    to: [{operation: {methods: [GET]}}]\n    when: [{key: 'request.headers[x-token]', values: [ok]}]",
    );
    let good = get("/").from("cluster.local/ns/bar/sa/x").header("x-token", "ok");
    assert!(allowed(&a, &good));
    assert!(allowed(&a, &good.clone().header("x-token", "other")), "each value is tested on its own (Envoy 1.40)");
    assert!(
        !allowed(&a, &get("/").from("cluster.local/ns/bar/sa/x").header("x-token", "ok,other")),
        "one value with a comma is one value"
    );
    assert!(!allowed(&a, &req("POST", "/").from("cluster.local/ns/bar/sa/x").header("x-token", "ok")));
    assert!(!allowed(&a, &get("/").header("x-token", "ok")));
}

// ---------------------------------------------------------------------------------------------
// Conditions

#[test]
fn when_request_headers() {
    let a = allow("  rules: [{when: [{key: 'request.headers[X-User]', values: [alice, 'adm*', '*@corp']}]}]");
    assert!(allowed(&a, &get("/").header("x-user", "alice")));
    assert!(allowed(&a, &get("/").header("X-USER", "admin")));
    assert!(allowed(&a, &get("/").header("x-user", "bob@corp")));
    assert!(!allowed(&a, &get("/").header("x-user", "Alice")), "values are case-sensitive");
    assert!(!allowed(&a, &get("/")));
    let a = allow("  rules: [{when: [{key: 'request.headers[x-user]', values: ['*']}]}]");
    assert!(allowed(&a, &get("/").header("x-user", "")), "present_match accepts empty");
    let a = allow("  rules: [{when: [{key: 'request.headers[x-user]', notValues: [mallory]}]}]");
    assert!(allowed(&a, &get("/")), "absent header satisfies notValues");
    assert!(!allowed(&a, &get("/").header("x-user", "mallory")));
}

#[test]
fn when_source_and_remote_ip_and_destination() {
    let a = allow("  rules: [{when: [{key: source.ip, values: [10.0.0.0/8]}, {key: remote.ip, notValues: [1.1.1.1]}, {key: destination.ip, values: [10.0.0.9]}, {key: destination.port, values: ['8000']}]}]");
    assert!(allowed(&a, &get("/")));
    assert!(!allowed(&a, &get("/").remote("1.1.1.1")));
    assert!(!allowed(&a, &get("/").port(8001)));
    assert!(!allowed(&a, &get("/").ip("11.0.0.1")));
}

#[test]
fn when_source_namespace_principal_service_account_trust_domain() {
    let a = allow("  rules: [{when: [{key: source.namespace, values: [bar]}, {key: source.principal, values: ['*/sa/sleep']}, {key: source.serviceAccount, values: [bar/sleep]}, {key: source.trustDomain, values: [cluster.local]}]}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/bar/sa/sleep")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/foo/sa/sleep")));
    assert!(!allowed(&a, &get("/")));
}

#[test]
fn when_request_auth_principal_audiences_presenter() {
    let a = allow("  rules: [{when: [{key: request.auth.principal, values: ['https://iss/alice']}, {key: request.auth.audiences, values: [web, 'api*']}, {key: request.auth.presenter, values: [cli]}]}]");
    let tok = json!({"iss": "https://iss", "sub": "alice", "aud": ["other", "api-x"], "azp": "cli"});
    assert!(allowed(&a, &get("/").jwt(tok.clone())));
    let mut t2 = tok.clone();
    t2["aud"] = json!("web");
    assert!(allowed(&a, &get("/").jwt(t2)), "aud as a string");
    let mut t3 = tok.clone();
    t3["azp"] = json!("web");
    assert!(!allowed(&a, &get("/").jwt(t3)));
    let n = allow("  rules: [{when: [{key: request.auth.audiences, notValues: [bad]}]}]");
    assert!(allowed(&n, &get("/")), "no token satisfies notValues");
}

#[test]
fn when_request_auth_claims_string_list_nested_and_types() {
    let a = allow("  rules: [{when: [{key: 'request.auth.claims[groups]', values: [admin]}]}]");
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s", "groups": ["dev", "admin"]}))));
    assert!(allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s", "groups": "admin"}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s", "groups": ["dev"]}))));
    assert!(!allowed(&a, &get("/").jwt(json!({"iss": "i", "sub": "s"}))));
    let n = allow("  rules: [{when: [{key: 'request.auth.claims[level]', values: ['1']}]}]");
    assert!(!allowed(&n, &get("/").jwt(json!({"iss": "i", "sub": "s", "level": 1}))), "non-string claims never match");
    let nested = allow("  rules: [{when: [{key: 'request.auth.claims[realm_access][roles]', values: [ops]}]}]");
    assert!(allowed(&nested, &get("/").jwt(json!({"iss": "i", "sub": "s", "realm_access": {"roles": ["ops"]}}))));
    assert!(!allowed(&nested, &get("/").jwt(json!({"iss": "i", "sub": "s", "realm_access": [{"roles": ["ops"]}]}))));
    // A key that is not pure nested brackets is one claim name.
    let odd = allow("  rules: [{when: [{key: 'request.auth.claims[foo.com/name]', values: [x]}]}]");
    assert!(allowed(&odd, &get("/").jwt(json!({"iss": "i", "sub": "s", "foo.com/name": "x"}))));
    let not = allow("  rules: [{when: [{key: 'request.auth.claims[groups]', notValues: [banned]}]}]");
    assert!(allowed(&not, &get("/")), "absent claim satisfies notValues");
    assert!(!allowed(&not, &get("/").jwt(json!({"iss": "i", "sub": "s", "groups": ["banned"]}))));
    // Space-delimited scope as the authn filter hands it over (already a list).
    let scope = allow("  rules: [{when: [{key: 'request.auth.claims[scope]', values: [write]}]}]");
    assert!(allowed(&scope, &get("/").jwt(json!({"iss": "i", "sub": "s", "scope": ["read", "write"]}))));
}

#[test]
fn when_connection_sni() {
    let a = allow("  rules: [{when: [{key: connection.sni, values: ['*.example.com']}]}]");
    let mut r = get("/");
    r.sni = b"a.example.com".to_vec();
    assert!(allowed(&a, &r));
    assert!(!allowed(&a, &get("/")), "no SNI");
    assert!(a.needs().sni);
}

#[test]
fn when_experimental_envoy_filter_metadata() {
    let a =
        allow("  rules: [{when: [{key: 'experimental.envoy.filters.http.lua[user]', values: [alice, '[admin]']}]}]");
    assert_eq!(a.needs().metadata, vec![("envoy.filters.http.lua".to_string(), "user".to_string())]);
    let with = |v: MetaValue| {
        let mut r = get("/");
        r.metadata = vec![MetadataEntry { slot: 0, value: v }];
        r
    };
    assert!(allowed(&a, &with(MetaValue::String(b"alice".to_vec()))));
    assert!(!allowed(&a, &with(MetaValue::String(b"admin".to_vec()))), "[admin] matches lists only");
    assert!(allowed(&a, &with(MetaValue::List(vec![MetaValue::String(b"admin".to_vec())]))));
    assert!(!allowed(&a, &get("/")));
}

#[test]
fn when_conditions_are_copied_into_every_from_and_to() {
    let a = allow("  rules:\n  - from: [{source: {namespaces: [a]}}, {source: {namespaces: [b]}}]\n    when: [{key: 'request.headers[x]', values: ['1']}]");
    assert!(allowed(&a, &get("/").from("cluster.local/ns/b/sa/s").header("x", "1")));
    assert!(!allowed(&a, &get("/").from("cluster.local/ns/b/sa/s")));
}

// ---------------------------------------------------------------------------------------------
// Invalid values: istiod's ALLOW vs DENY handling

#[test]
fn unknown_when_key_skips_the_rule_for_every_action() {
    let a = allow("  rules: [{when: [{key: destination.namespace, values: [foo]}]}]");
    assert!(!allowed(&a, &get("/")), "the only ALLOW rule is skipped: deny all");
    let d = deny("  rules: [{when: [{key: request.unknown, values: [x]}]}]");
    assert!(allowed(&d, &get("/")), "the DENY rule is skipped");
    assert!(d.warnings().iter().any(|w| w.to_string().contains("unknown attribute")));
}

#[test]
fn invalid_value_in_allow_drops_the_rule_in_deny_drops_the_value() {
    let a = allow("  rules: [{from: [{source: {ipBlocks: [not-an-ip, 10.0.0.0/8]}}]}]");
    assert!(!allowed(&a, &get("/").ip("10.0.0.1")), "ALLOW: the whole rule is dropped (narrower)");
    let d = deny("  rules: [{from: [{source: {ipBlocks: [not-an-ip]}}], to: [{operation: {paths: [/admin]}}]}]");
    assert!(!allowed(&d, &get("/admin").ip("192.168.1.1")), "DENY: the value is dropped (wider)");
    assert!(allowed(&d, &get("/user")));
    let d = deny("  rules: [{to: [{operation: {ports: ['99999'], paths: [/x]}}]}]");
    assert!(!allowed(&d, &get("/x").port(1)));
    assert!(d.warnings().iter().any(|w| w.to_string().contains("99999")));
    let a = allow("  rules: [{when: [{key: 'request.headers', values: [x]}]}]");
    assert!(!allowed(&a, &get("/")), "a header key without brackets drops the ALLOW rule");
    let d = deny("  rules: [{when: [{key: 'request.auth.claimsfoo', values: [x]}]}]");
    assert!(!allowed(&d, &get("/")), "a bad claim key leaves an empty DENY rule that matches everything");
}

// ---------------------------------------------------------------------------------------------
// CUSTOM

fn providers() -> Vec<serde_json::Value> {
    vec![json!({"name": "ext", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 9000}})]
}

#[test]
fn custom_matching_rule_asks_the_provider() {
    let yaml =
        policy("c", "foo", "CUSTOM", "  provider: {name: ext}\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]");
    let a = compile_with(&yaml, workload(), |c| c.extension_providers = providers());
    match a.evaluate(&get("/admin").view()).0 {
        Some(CustomOutcome::Check { provider, rule }) => {
            assert_eq!(provider.cluster, "outbound|9000||authz.foo.svc.cluster.local");
            assert_eq!(rule, "istio-ext-authz-ext-ns[foo]-policy[c]-rule[0]");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.custom(&get("/user").view()), CustomOutcome::Continue);
    assert!(a.evaluate(&get("/user").view()).1.allowed, "CUSTOM alone does not default-deny");
}

#[test]
fn custom_with_unknown_or_several_providers_denies_what_it_matches() {
    let yaml =
        policy("c", "foo", "CUSTOM", "  provider: {name: nope}\n  rules: [{to: [{operation: {paths: [/admin]}}]}]");
    let a = compile_with(&yaml, workload(), |c| c.extension_providers = providers());
    match a.custom(&get("/admin").view()) {
        CustomOutcome::Deny(v) => {
            assert_eq!(v.rule(), Some("istio-ext-authz-nope-ns[foo]-policy[c]-rule[0]-deny-due-to-bad-CUSTOM-action"));
            assert!(v.explain().contains("available providers"), "{}", v.explain());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.custom(&get("/x").view()), CustomOutcome::Continue);
    let two = yaml.clone() + &policy("d", "foo", "CUSTOM", "  provider: {name: ext}\n  rules: [{}]");
    let a = compile_with(&two, workload(), |c| c.extension_providers = providers());
    assert!(matches!(a.custom(&get("/x").view()), CustomOutcome::Deny(_)));
}

/// Istio 1.30's `PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS`: one shadow-RBAC + ext_authz pair
/// per provider in provider-name order; each matching provider is asked on the request as the
/// providers before it left it; an invalid provider's pair denies what its rules match.
#[test]
fn several_custom_providers_are_asked_in_name_order() {
    use crate::decision::RequestStep;
    let yaml = policy(
        "h",
        "foo",
        "CUSTOM",
        "  provider: {name: a-http}\n  rules: [{to: [{operation: {paths: [/a*, /both*, /chain*]}}]}]",
    ) + &policy(
        "g",
        "foo",
        "CUSTOM",
        "  provider: {name: b-grpc}\n  rules:\n  - to: [{operation: {paths: [/b*, /both*]}}]\n  - to: [{operation: {paths: [/chain*]}}]\n    when: [{key: 'request.headers[x-check]', values: [allowed]}]",
    ) + &policy("z", "foo", "CUSTOM", "  provider: {name: z-nope}\n  rules: [{to: [{operation: {paths: [/both/z]}}]}]")
        + &policy("d", "foo", "DENY", "  rules: [{to: [{operation: {paths: [/both/deny]}}]}]");
    let mut providers = providers();
    providers.clear();
    providers
        .push(json!({"name": "b-grpc", "envoyExtAuthzGrpc": {"service": "grpc.foo.svc.cluster.local", "port": 9001}}));
    providers
        .push(json!({"name": "a-http", "envoyExtAuthzHttp": {"service": "http.foo.svc.cluster.local", "port": 9000}}));
    let on = |stage: Stage| {
        compile_with(&yaml, workload(), |c| {
            c.extension_providers = providers.clone();
            c.multiple_custom_providers = true;
            c.stage = stage;
        })
    };
    let a = on(Stage::All);
    assert_eq!(a.providers().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a-http", "b-grpc"]);
    let check = |step: RequestStep<'_>| match step {
        RequestStep::Check { provider, index, headers, .. } => {
            assert!(headers.is_ok());
            (provider.name.clone(), index)
        }
        other => panic!("{other:?}"),
    };
    let both = get("/both/x");
    assert_eq!(check(a.on_request(&both.view())), ("a-http".to_string(), 0));
    assert_eq!(check(a.after_allow(&both.view(), 0)), ("b-grpc".to_string(), 1));
    assert!(matches!(a.after_allow(&both.view(), 1), RequestStep::Decided { verdict, .. } if verdict.allowed));
    assert_eq!(a.custom_provider(1).map(|p| p.name.as_str()), Some("b-grpc"));
    assert!(a.custom_provider(2).is_none(), "the bad provider has no provider to call");
    // Only the second provider's rules match: only it is asked.
    assert_eq!(check(a.on_request(&get("/b").view())), ("b-grpc".to_string(), 1));
    // The second provider's rule reads a header the first one set.
    let chain = get("/chain");
    assert_eq!(check(a.on_request(&chain.view())), ("a-http".to_string(), 0));
    assert!(matches!(a.after_allow(&chain.view(), 0), RequestStep::Decided { verdict, .. } if verdict.allowed));
    let set = chain.header("x-check", "allowed");
    assert_eq!(check(a.after_allow(&set.view(), 0)), ("b-grpc".to_string(), 1));
    // The invalid provider's pair comes last (`z-nope`) and denies after both allowed.
    let z = get("/both/z");
    match a.after_allow(&z.view(), 1) {
        RequestStep::Decided { verdict, .. } => {
            assert!(!verdict.allowed);
            assert_eq!(
                verdict.rule(),
                Some("istio-ext-authz-z-nope-ns[foo]-policy[z]-rule[0]-deny-due-to-bad-CUSTOM-action")
            );
        }
        other => panic!("{other:?}"),
    }
    // DENY runs after the whole chain.
    let d = get("/both/deny");
    assert!(matches!(a.after_allow(&d.view(), 1), RequestStep::Decided { verdict, .. } if !verdict.allowed));
    // The CUSTOM-only instance goes on without a decision after the last provider.
    let c = on(Stage::Custom);
    assert!(matches!(c.after_allow(&both.view(), 1), RequestStep::Continue));
    // Without the flag, istiod (and wasmesh) deny what any of the CUSTOM rules match.
    let off = compile_with(&yaml, workload(), |c| {
        c.extension_providers = providers.clone();
        c.stage = Stage::All;
    });
    assert!(matches!(off.on_request(&get("/b").view()), RequestStep::Decided { verdict, .. } if !verdict.allowed));
    assert!(off.warnings().iter().any(|w| w.to_string().contains("PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS")));
}

#[test]
fn stages_split_custom_from_rbac() {
    let yaml = policy("c", "foo", "CUSTOM", "  provider: {name: ext}\n  rules: [{}]")
        + &policy("d", "foo", "DENY", "  rules: [{}]");
    let c = compile_with(&yaml, workload(), |c| {
        c.extension_providers = providers();
        c.stage = Stage::Custom;
    });
    assert!(c.rbac(&get("/").view()).allowed, "the CUSTOM stage has no DENY rules");
    assert!(matches!(c.custom(&get("/").view()), CustomOutcome::Check { .. }));
    let r = compile_with(&yaml, workload(), |c| {
        c.extension_providers = providers();
        c.stage = Stage::Rbac;
    });
    assert_eq!(r.custom(&get("/").view()), CustomOutcome::Continue);
    assert!(!r.rbac(&get("/").view()).allowed);
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

#[test]
fn peer_authentication_strict_refuses_plaintext() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n";
    let a = compile(yaml);
    let v = a.evaluate(&get("/").view()).1;
    assert!(!v.allowed);
    assert!(matches!(v.reason, Reason::PeerAuthnStrict { port: 8000, .. }));
    assert!(allowed(&a, &get("/").from("cluster.local/ns/bar/sa/x")));
    assert!(a.needs().mtls && a.needs().destination_port);
    let permissive = compile(&yaml.replace("STRICT", "PERMISSIVE"));
    assert!(allowed(&permissive, &get("/")));
    assert!(permissive.is_empty());
}

/// Where the listener's chains enforce the PeerAuthentication (`peerAuthenticationByTransport`),
/// the filter does not check it, and reads neither `connection.mtls` nor the port for it; rules
/// still decide. A gateway, to which PeerAuthentication does not apply, refuses the flag.
#[test]
fn peer_authentication_by_transport_is_not_checked_again() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-admin, namespace: foo}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n";
    let a = compile_with(yaml, workload(), |c| c.peer_authentication_by_transport = true);
    assert!(allowed(&a, &get("/")), "the transport refused plaintext already");
    assert!(!a.needs().mtls && !a.needs().destination_port, "{:?}", a.needs());
    assert!(!allowed(&a, &get("/admin")), "the DENY rule still applies");
    assert!(!allowed(&compile(yaml), &get("/")), "without the flag the filter refuses plaintext");

    let mut gw = workload();
    gw.mode = wasmesh_istio::ProxyMode::Gateway;
    let resources = Resources { items: load_str(yaml, "test.yaml").expect("valid yaml") };
    let cfg = AuthzConfig::parse_json(
        &serde_json::to_vec(&json!({"workload": gw, "peerAuthenticationByTransport": true})).expect("json"),
    )
    .expect("parses");
    let err = cfg.compile(&resources).expect_err("a gateway refuses it").to_string();
    assert!(err.contains("peerAuthenticationByTransport is for sidecars"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn json_configuration_round_trip_and_errors_name_the_field() {
    let cfg = json!({
        "workload": {"name": "w", "namespace": "foo"},
        "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "foo"}, "spec": {"action": "DENY", "rules": [{}]}}],
    });
    let a = AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap();
    assert!(!a.evaluate(&get("/").view()).1.allowed);
    let bad = json!({"workload": {"name": "w", "namespace": "foo"}, "resources": [], "trustDomainAlias": []});
    let e = AuthzConfig::compile_json(bad.to_string().as_bytes()).unwrap_err().to_string();
    assert!(e.contains("trustDomainAlias"), "{e}");
    let bad = json!({"workload": {"name": "w", "namespace": "foo"}, "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "foo"}, "spec": {"rules": [{"to": [{"operation": {"path": ["/x"]}}]}]}}]});
    let e = AuthzConfig::compile_json(bad.to_string().as_bytes()).unwrap_err().to_string();
    assert!(e.contains("path"), "{e}");
}

#[test]
fn validation_rejects_what_the_istio_webhook_rejects() {
    let check = |yaml: &str| -> Vec<String> {
        let res = load_str(yaml, "t.yaml").unwrap();
        let resources = Resources { items: res };
        validate_all(&resources).iter().map(|e| e.to_string()).collect()
    };
    let ok = policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {principals: [a]}}], to: [{operation: {paths: ['/x/{*}']}}], when: [{key: 'request.headers[x]', values: [y]}]}]");
    assert!(check(&ok).is_empty(), "{:?}", check(&ok));
    let cases = [
        (policy("p", "foo", "DENY", ""), "DENY action without `rules`"),
        (policy("p", "foo", "DENY", "  rules: []"), "spec.rules: DENY action without `rules`"),
        (policy("p", "foo", "CUSTOM", "  provider: {name: x}\n  rules: []"), "spec.rules: CUSTOM action without `rules`"),
        (policy("p", "foo", "CUSTOM", "  provider: {name: x}"), "CUSTOM action without `rules`"),
        (policy("p", "foo", "CUSTOM", "  rules: [{}]"), "provider.name"),
        (policy("p", "foo", "ALLOW", "  provider: {name: x}\n  rules: [{}]"), "non CUSTOM"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: []}]"), "`from` must not be empty"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {}}]}]"), "`from.source` must not be empty"),
        (policy("p", "foo", "ALLOW", "  rules: [{to: [{operation: {}}]}]"), "`to.operation` must not be empty"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {ipBlocks: [1.2.3]}}]}]"), "ipBlocks"),
        (policy("p", "foo", "ALLOW", "  rules: [{to: [{operation: {ports: ['70000']}}]}]"), "bad port"),
        (policy("p", "foo", "ALLOW", "  rules: [{to: [{operation: {paths: ['/a/{**}/{*}']}}]}]"), "not the last operator"),
        (policy("p", "foo", "ALLOW", "  rules: [{to: [{operation: {paths: ['/a/{x}']}}]}]"), "beyond a supported path template"),
        (policy("p", "foo", "ALLOW", "  rules: [{when: [{key: destination.namespace, values: [x]}]}]"), "metadata.namespace"),
        (policy("p", "foo", "ALLOW", "  rules: [{when: [{key: foo, values: [x]}]}]"), "unknown attribute"),
        (policy("p", "foo", "ALLOW", "  rules: [{when: [{key: source.ip}]}]"), "at least one of"),
        (policy("p", "foo", "ALLOW", "  rules: [{when: [{key: 'request.headers[]', values: [x]}]}]"), "a[b]"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]"), "namespace/serviceAccount"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {serviceAccounts: [a], principals: [b]}}]}]"), "cannot set serviceAccounts"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {trustDomains: ['a*b']}}]}]"), "start or end"),
        (policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {principals: ['']}}]}]"), "empty value"),
        (
            policy("p", "foo", "CUSTOM", "  provider: {name: x}\n  rules: [{from: [{source: {principals: [a]}}]}]"),
            "not supported with CUSTOM",
        ),
        (policy("p", "foo", "ALLOW", "  selector: {matchLabels: {a: b}}\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  rules: [{}]"), "only one of"),
        (policy("p", "foo", "ALLOW", "  targetRefs: [{kind: Deployment, name: g}]\n  rules: [{}]"), "targetRef must be"),
    ];
    for (yaml, want) in cases {
        let errs = check(&yaml);
        assert!(errs.iter().any(|e| e.contains(want)), "want {want:?} in {errs:?} for\n{yaml}");
        assert!(errs.iter().all(|e| e.contains("AuthorizationPolicy foo/p")), "{errs:?}");
    }
    let dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: maybe}}\nspec: {rules: [{}]}\n";
    assert!(check(dry).iter().any(|e| e.contains("dry-run")));
    let audit_dry = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: 'true'}}\nspec: {action: AUDIT, rules: [{}]}\n";
    assert!(check(audit_dry).iter().any(|e| e.contains("ALLOW/DENY")));
}

#[test]
fn socket_addresses_as_envoy_prints_them() {
    assert_eq!(parse_socket_address(b"127.0.0.1:8080"), Some("127.0.0.1".parse().unwrap()));
    assert_eq!(parse_socket_address(b"9.9.9.9:0"), Some("9.9.9.9".parse().unwrap()));
    assert_eq!(parse_socket_address(b"[::1]:80"), Some("::1".parse().unwrap()));
    assert_eq!(parse_socket_address(b"::1"), Some("::1".parse().unwrap()));
    assert_eq!(parse_socket_address(b"envoy://internal"), None);
    assert_eq!(parse_socket_address(b"1.2.3.4:x"), None);
    assert_eq!(parse_socket_address(&[0xff]), None);
}

// ---------------------------------------------------------------------------------------------
// TCP ports (Istio's network RBAC, spec §1.11)

fn tcp(yaml: &str) -> Authz {
    compile_with(yaml, workload(), |c| {
        c.stage = Stage::Tcp;
        c.extension_providers = providers();
    })
}

/// A connection as the TCP filter sees it: no headers, no JWT identity.
fn conn() -> Req {
    Req { headers: Vec::new(), ..get("/") }
}

#[test]
fn tcp_allow_by_principal_namespace_ip_and_port() {
    let a = tcp(&policy(
        "p",
        "foo",
        "ALLOW",
        "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]",
    ));
    assert!(allowed(&a, &conn().from("cluster.local/ns/default/sa/sleep")));
    assert!(!allowed(&a, &conn().from("cluster.local/ns/default/sa/other")));
    assert!(!allowed(&a, &conn()), "plaintext has no principal");
    let a = tcp(&policy(
        "p",
        "foo",
        "ALLOW",
        "  rules: [{from: [{source: {namespaces: [default]}}], to: [{operation: {ports: ['3306']}}]}]",
    ));
    assert!(allowed(&a, &conn().from("cluster.local/ns/default/sa/x").port(3306)));
    assert!(!allowed(&a, &conn().from("cluster.local/ns/default/sa/x").port(3307)));
    let a = tcp(&policy("p", "foo", "ALLOW", "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}], when: [{key: destination.port, values: ['8000']}, {key: connection.sni, values: ['*.foo']}]}]"));
    let mut r = conn();
    r.sni = b"db.foo".to_vec();
    assert!(allowed(&a, &r));
    assert!(!allowed(&a, &r.clone().ip("192.168.0.1")));
    assert!(!allowed(&a, &conn()), "no SNI");
    let a = tcp(&policy(
        "p",
        "foo",
        "ALLOW",
        "  rules: [{when: [{key: remote.ip, values: [10.0.0.0/8]}, {key: source.ip, values: [10.0.0.1]}]}]",
    ));
    assert!(allowed(&a, &conn()));
    assert!(!allowed(&a, &conn().remote("1.1.1.1")));
}

#[test]
fn tcp_allow_rules_with_http_only_fields_are_dropped() {
    // An ALLOW policy whose only rule is HTTP-only denies every connection.
    for rule in [
        "{to: [{operation: {paths: [/x]}}]}",
        "{to: [{operation: {methods: [GET], ports: ['8000']}}]}",
        "{to: [{operation: {hosts: [db]}}]}",
        "{from: [{source: {requestPrincipals: ['*']}}]}",
        "{from: [{source: {notRequestPrincipals: ['*']}}]}",
        "{when: [{key: 'request.headers[x]', values: [a]}]}",
        "{when: [{key: request.auth.principal, values: [a]}]}",
        "{when: [{key: request.auth.audiences, values: [a]}]}",
        "{when: [{key: request.auth.presenter, values: [a]}]}",
        "{when: [{key: 'request.auth.claims[iss]', values: [a]}]}",
    ] {
        let a = tcp(&policy("p", "foo", "ALLOW", &format!("  rules: [{rule}]")));
        let v = a.evaluate(&conn().from("cluster.local/ns/default/sa/sleep").view()).1;
        assert!(!v.allowed, "{rule}: {}", v.explain());
        assert_eq!(v.reason, Reason::NoAllowMatch, "{rule}");
        assert!(a.warnings().iter().any(|w| w.to_string().contains("HTTP only")), "{rule}: {:?}", a.warnings());
    }
    // The same policies on an HTTP port keep their rules.
    let h = allow("  rules: [{to: [{operation: {paths: [/x]}}]}]");
    assert!(allowed(&h, &get("/x")));
    // Istio's golden allow-both-http-tcp: only the TCP rule survives.
    let a = tcp(&policy("p", "foo", "ALLOW", "  rules: [{to: [{operation: {paths: [/x]}}]}, {from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]"));
    let v = a.evaluate(&conn().from("cluster.local/ns/default/sa/sleep").view()).1;
    assert!(matches!(v.reason, Reason::Allowed { rule } if rule == "ns[foo]-policy[p]-rule[1]"), "{v:?}");
}

#[test]
fn tcp_deny_rules_lose_their_http_only_fields_and_match_more() {
    let d = tcp(&policy("p", "foo", "DENY", "  rules: [{to: [{operation: {paths: [/admin]}}]}]"));
    let v = d.evaluate(&conn().view()).1;
    assert!(
        matches!(v.reason, Reason::Denied { rule } if rule == "ns[foo]-policy[p]-rule[0]"),
        "an HTTP-only DENY rule denies every connection"
    );
    let d = tcp(&policy("p", "foo", "DENY", "  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/bad]}}], to: [{operation: {methods: [POST]}}]}]"));
    assert!(!allowed(&d, &conn().from("cluster.local/ns/default/sa/bad")), "methods removed: any connection from bad");
    assert!(allowed(&d, &conn().from("cluster.local/ns/default/sa/good")));
    // AUDIT likewise.
    let a = tcp(&policy("p", "foo", "AUDIT", "  rules: [{when: [{key: 'request.headers[x]', values: [a]}]}]"));
    let v = a.evaluate(&conn().view()).1;
    assert!(v.allowed && v.audit == vec!["ns[foo]-policy[p]-rule[0]"], "{v:?}");
}

#[test]
fn tcp_ignores_custom_with_an_http_provider_but_not_a_bad_one() {
    let c = tcp(&policy("c", "foo", "CUSTOM", "  provider: {name: ext}\n  rules: [{}]"));
    assert!(c.is_empty(), "no TCP filter for an HTTP ext_authz provider");
    assert!(allowed(&c, &conn()));
    assert!(c.warnings().iter().any(|w| w.to_string().contains("do not apply to TCP")), "{:?}", c.warnings());
    let bad = tcp(&policy("c", "foo", "CUSTOM", "  provider: {name: nope}\n  rules: [{}]"));
    let (_, v) = bad.evaluate(&conn().view());
    assert!(!v.allowed, "an unusable provider fails closed on TCP too: {}", v.explain());
}

#[test]
fn tcp_translates_dynamic_metadata_conditions_as_istiod() {
    // istiod's envoyFilterGenerator ignores forTCP: the condition reads the connection's dynamic
    // metadata on a TCP port as it does a request's on HTTP.
    let yaml = policy(
        "p",
        "foo",
        "DENY",
        "  rules: [{when: [{key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}]}]",
    );
    let resources = Resources { items: load_str(&yaml, "test.yaml").expect("valid yaml") };
    let cfg = AuthzConfig {
        workload: Some(workload()),
        mesh: None,
        resources: Vec::new(),
        trust_domain_aliases: Vec::new(),
        extension_providers: Vec::new(),
        stage: Stage::Tcp,
        multiple_custom_providers: false,
        decision_filter_state: true,
        single_san_peers: false,
        request_body: false,
        peer_authentication_by_transport: false,
    };
    let a = cfg.compile(&resources).expect("translated for TCP");
    assert_eq!(a.needs().metadata, vec![("envoy.filters.network.mysql_proxy".to_string(), "db.table".to_string())]);
    let update = [MetadataEntry { slot: 0, value: MetaValue::List(vec![MetaValue::String(b"update".to_vec())]) }];
    let (_, peer_authn) = a.on_connection(&Request { metadata: &update, ..Request::default() });
    assert!(!peer_authn);
    assert!(!a.on_connection(&Request { metadata: &update, ..Request::default() }).0.allowed);
    assert!(a.on_connection(&Request::default()).0.allowed);
}

#[test]
fn tcp_peer_authentication_strict_refuses_plaintext() {
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n";
    let a = tcp(pa);
    assert!(!a.is_empty());
    let v = a.evaluate(&conn().view()).1;
    assert!(matches!(v.reason, Reason::PeerAuthnStrict { port: 8000, .. }), "{v:?}");
    assert!(allowed(&a, &conn().from("cluster.local/ns/default/sa/sleep")));
}

#[test]
#[allow(clippy::unwrap_used)]
fn without_workload_the_config_parses_and_compiling_refuses() {
    let cfg =
        AuthzConfig::parse_json(br#"{"mesh": {"trustDomain": "td.example", "rootNamespace": "mesh-root"}}"#).unwrap();
    assert!(cfg.workload.is_none());
    assert_eq!((cfg.mesh().trust_domain.as_str(), cfg.mesh().root_namespace.as_str()), ("td.example", "mesh-root"));
    let e = cfg.compile(&cfg.parsed_resources().unwrap()).unwrap_err().to_string();
    assert!(e.contains("workload: absent"), "{e}");
    assert!(AuthzConfig::compile_json(br#"{"resources": []}"#).is_err(), "fail closed without a workload");
}

/// [`compile::MAX_FIELD_VALUES`]: a list at the bound compiles, one past it refuses the
/// configuration, naming the field.
#[test]
fn policy_value_lists_are_bounded() {
    let list = |n: usize| (0..n).map(|i| format!("cluster.local/ns/a/sa/s{i}")).collect::<Vec<_>>().join(", ");
    let yaml = |n: usize| {
        policy("p", "foo", "ALLOW", &format!("  rules: [{{from: [{{source: {{principals: [{}]}}}}]}}]", list(n)))
    };
    let ok = compile_with(&yaml(crate::compile::MAX_FIELD_VALUES), workload(), |_| {});
    assert!(ok.warnings().is_empty());
    let resources = Resources { items: load_str(&yaml(crate::compile::MAX_FIELD_VALUES + 1), "t.yaml").unwrap() };
    let cfg = AuthzConfig::parse_json(br#"{"workload": {"name": "httpbin", "namespace": "foo"}}"#).unwrap();
    let err = cfg.compile(&resources).unwrap_err().to_string();
    assert!(err.contains("spec.rules[0].from[0].source.principals") && err.contains("1025 values"), "{err}");
}

/// [`compile::MAX_VALUE_BYTES`]: a longer value (or condition key) refuses the configuration.
#[test]
fn policy_values_are_bounded_in_length() {
    let cfg = AuthzConfig::parse_json(br#"{"workload": {"name": "httpbin", "namespace": "foo"}}"#).unwrap();
    let at = |len: usize| format!("/{}", "a".repeat(len - 1));
    let yaml = |rules: String| Resources { items: load_str(&policy("p", "foo", "DENY", &rules), "t.yaml").unwrap() };
    let max = crate::compile::MAX_VALUE_BYTES;
    let ok = cfg.compile(&yaml(format!("  rules: [{{to: [{{operation: {{notPaths: ['{}']}}}}]}}]", at(max))));
    assert!(ok.is_ok(), "{ok:?}");
    let err = cfg.compile(&yaml(format!("  rules: [{{to: [{{operation: {{notPaths: ['{}']}}}}]}}]", at(max + 1))));
    assert!(err.unwrap_err().to_string().contains("spec.rules[0].to[0].operation.paths"));
    let key = format!("request.headers[{}]", "x".repeat(max));
    let err = cfg.compile(&yaml(format!("  rules: [{{when: [{{key: '{key}', values: [v]}}]}}]")));
    assert!(err.unwrap_err().to_string().contains("spec.rules[0].when[0].key"));
}

#[test]
fn only_a_custom_provider_adding_response_headers_needs_the_response_callback() {
    use wasmesh_istio::module::Callbacks;
    assert_eq!(allow("  rules: [{to: [{operation: {paths: [/admin]}}]}]").callbacks(), Callbacks::NONE);
    let yaml =
        policy("c", "foo", "CUSTOM", "  provider: {name: ext}\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]");
    let a = compile_with(&yaml, workload(), |c| c.extension_providers = providers());
    assert_eq!(a.callbacks(), Callbacks::NONE, "headers to the upstream and on deny are request-side");
    let adding = vec![json!({"name": "ext", "envoyExtAuthzHttp": {
        "service": "authz.foo.svc.cluster.local", "port": 9000,
        "headersToUpstreamOnAllow": ["x-user"], "headersToDownstreamOnDeny": ["x-reason"],
        "headersToDownstreamOnAllow": ["x-down"]}})];
    let a = compile_with(&yaml, workload(), |c| c.extension_providers = adding);
    assert_eq!(a.callbacks(), Callbacks::RESPONSE_HEADERS);
}
