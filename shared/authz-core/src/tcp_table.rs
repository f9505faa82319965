//! The TCP translation table (README, "AuthorizationPolicy on TCP ports and certificates with
//! several SANs"): every CUSTOM/DENY/ALLOW/AUDIT combination on a TCP port, as istiod's
//! `builder.go` (`build`, `buildTCP`) and `model.go` (`Generate(forTCP)`, `checkError`)
//! translate it, each row pinned here; `e2e/tests/authz_tcp.rs` runs the same rows in Envoy
//! next to the native network RBAC filter.

use crate::{Authz, AuthzConfig, CompileError, PeerNames, Reason, Request, Stage};
use serde_json::{json, Value};

fn compile(stage: Stage, policies: Value) -> Result<Authz, CompileError> {
    let resources: Vec<Value> = policies
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let mut meta = json!({"name": p["name"], "namespace": "foo"});
            if p.get("dryRun").is_some() {
                meta["annotations"] = json!({"istio.io/dry-run": "true"});
            }
            json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", "metadata": meta, "spec": p["spec"]})
        })
        .collect();
    let cfg = json!({
        "workload": {"name": "db", "namespace": "foo"},
        "stage": match stage { Stage::Tcp => "tcp", _ => "all" },
        "extensionProviders": [
            {"name": "http", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 9000}},
            {"name": "grpc", "envoyExtAuthzGrpc": {"service": "authz.foo.svc.cluster.local", "port": 9001}},
        ],
        "resources": resources,
    });
    AuthzConfig::compile_json(cfg.to_string().as_bytes())
}

fn tcp(policies: Value) -> Authz {
    compile(Stage::Tcp, policies).unwrap()
}

fn p(name: &str, spec: Value) -> Value {
    json!({"name": name, "spec": spec})
}

/// A connection to port 9000 from 10.0.0.1, mutual TLS with `peer` as its one URI SAN.
fn conn(peer: Option<&str>) -> Request<'_> {
    Request {
        source_ip: Some("10.0.0.1".parse().unwrap()),
        remote_ip: Some("10.0.0.1".parse().unwrap()),
        destination_port: Some(9000),
        mtls: peer.is_some(),
        peer: peer.map(PeerNames::spiffe).unwrap_or_default(),
        ..Request::default()
    }
}

fn decide(a: &Authz, r: &Request<'_>) -> (bool, String) {
    let (v, _) = a.on_connection(r);
    (v.allowed, v.rule().unwrap_or(v.action()).to_string())
}

#[test]
fn allow_rule_with_an_http_only_field_is_dropped() {
    // methods / paths / hosts / requestPrincipals / request.headers / request.auth.*: for ALLOW
    // the generator error drops the whole rule (a narrower ALLOW).
    for http_only in [
        json!({"to": [{"operation": {"methods": ["GET"]}}]}),
        json!({"to": [{"operation": {"paths": ["/a"], "ports": ["9000"]}}]}),
        json!({"to": [{"operation": {"hosts": ["a"]}}]}),
        json!({"from": [{"source": {"requestPrincipals": ["*"]}}]}),
        json!({"when": [{"key": "request.headers[x]", "values": ["1"]}]}),
        json!({"when": [{"key": "request.auth.claims[iss]", "values": ["1"]}]}),
    ] {
        let a = tcp(json!([p(
            "a",
            json!({"action": "ALLOW", "rules": [http_only, {"to": [{"operation": {"ports": ["9001"]}}]}]})
        )]));
        assert_eq!(a.rule_names(), vec!["ns[foo]-policy[a]-rule[1]"]);
        assert_eq!(decide(&a, &conn(None)), (false, "DEFAULT".into()));
    }
}

#[test]
fn allow_policy_whose_every_rule_is_dropped_denies_every_connection() {
    let a = tcp(json!([p("a", json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))]));
    assert!(a.rule_names().is_empty());
    assert!(!a.is_empty(), "an ALLOW filter with no policies is installed");
    assert_eq!(decide(&a, &conn(Some("spiffe://cluster.local/ns/foo/sa/x"))), (false, "DEFAULT".into()));
}

#[test]
fn deny_and_audit_rules_drop_only_the_http_only_values() {
    // The rest of the rule is kept: it matches more connections.
    let d = tcp(json!([p(
        "d",
        json!({"action": "DENY", "rules": [{
        "from": [{"source": {"ipBlocks": ["10.0.0.0/8"], "requestPrincipals": ["a/b"]}}],
        "to": [{"operation": {"methods": ["POST"], "ports": ["9000"]}}]}]})
    )]));
    assert_eq!(decide(&d, &conn(None)), (false, "ns[foo]-policy[d]-rule[0]".into()));
    // A rule of HTTP-only fields alone matches every connection.
    let all =
        tcp(json!([p("d", json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}))]));
    assert_eq!(decide(&all, &conn(None)), (false, "ns[foo]-policy[d]-rule[0]".into()));
    // notX of an HTTP-only field too.
    let not =
        tcp(json!([p("d", json!({"action": "DENY", "rules": [{"to": [{"operation": {"notMethods": ["GET"]}}]}]}))]));
    assert!(!decide(&not, &conn(None)).0);
    // AUDIT: same translation, never a decision.
    let audit =
        tcp(json!([p("au", json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}))]));
    let (v, _) = audit.on_connection(&conn(None));
    assert!(v.allowed);
    assert_eq!(v.audit.iter().map(|r| r.name).collect::<Vec<_>>(), vec!["ns[foo]-policy[au]-rule[0]"]);
}

#[test]
fn dry_run_on_tcp_is_shadow_only() {
    let d = tcp(
        json!([{"name": "d", "dryRun": true, "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]}}]),
    );
    let (v, _) = d.on_connection(&conn(None));
    assert!(v.allowed);
    assert!(v.dry_run_deny.as_ref().is_some_and(|s| !s.allowed));
}

#[test]
fn custom_with_an_http_provider_does_not_touch_tcp() {
    let c =
        |rules: Value| tcp(json!([p("c", json!({"action": "CUSTOM", "provider": {"name": "http"}, "rules": rules}))]));
    for rules in [
        json!([{}]),
        json!([{"to": [{"operation": {"ports": ["9000"]}}]}]),
        json!([{"to": [{"operation": {"paths": ["/x"]}}]}]),
    ] {
        let a = c(rules);
        assert!(a.is_empty(), "no TCP filter, as istiod");
        assert_eq!(decide(&a, &conn(None)), (true, "DEFAULT".into()));
    }
    // With DENY/ALLOW next to it, those decide alone.
    let a = tcp(json!([
        p("c", json!({"action": "CUSTOM", "provider": {"name": "http"}, "rules": [{}]})),
        p("a", json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]})),
    ]));
    assert_eq!(decide(&a, &conn(None)), (true, "ns[foo]-policy[a]-rule[0]".into()));
}

#[test]
fn custom_with_a_bad_provider_denies_its_rules_on_tcp() {
    let a = tcp(json!([p(
        "c",
        json!({"action": "CUSTOM", "provider": {"name": "nope"}, "rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]})
    )]));
    let (allowed, rule) = decide(&a, &conn(None));
    assert!(!allowed);
    assert_eq!(rule, "istio-ext-authz-nope-ns[foo]-policy[c]-rule[0]-deny-due-to-bad-CUSTOM-action");
    let mut other = conn(None);
    other.destination_port = Some(9001);
    assert!(decide(&a, &other).0);
}

#[test]
fn custom_with_a_grpc_provider_checks_matching_connections() {
    use crate::decision::ConnectionStep;
    let a = tcp(json!([p(
        "c",
        json!({"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]})
    )]));
    assert!(!a.is_empty(), "istiod writes the shadow RBAC + network ext_authz pair");
    match a.on_connection_step(&conn(None)) {
        ConnectionStep::Check { provider, rule, index } => {
            assert_eq!(provider.name, "grpc");
            assert_eq!(provider.cluster, "outbound|9001||authz.foo.svc.cluster.local");
            assert_eq!(rule.name, "istio-ext-authz-grpc-ns[foo]-policy[c]-rule[0]");
            assert_eq!(index, 0);
            // Allowed by the provider: the rest of the chain (no ALLOW policy: allowed).
            assert!(matches!(
                a.after_connection_allow(&conn(None), index),
                ConnectionStep::Decided { verdict, .. } if verdict.allowed
            ));
        }
        other => panic!("{other:?}"),
    }
    // A connection the CUSTOM rules do not match is not checked (the network ext_authz is not
    // enabled by the shadow RBAC), as in Envoy.
    let mut other = conn(None);
    other.destination_port = Some(9001);
    assert!(matches!(a.on_connection_step(&other), ConnectionStep::Decided { verdict, .. } if verdict.allowed));
    // Not refused on an HTTP port either.
    assert!(compile(
        Stage::All,
        json!([p("c", json!({"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{}]}))])
    )
    .is_ok());
}

#[test]
fn grpc_custom_then_deny_and_allow_as_istiod_orders_them() {
    use crate::decision::ConnectionStep;
    let a = tcp(json!([
        p("c", json!({"action": "CUSTOM", "provider": {"name": "grpc"}, "rules": [{}]})),
        p("d", json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.1"]}}]}]})),
    ]));
    // CUSTOM first: the provider is asked before DENY decides.
    let ConnectionStep::Check { index, .. } = a.on_connection_step(&conn(None)) else { panic!("CUSTOM first") };
    let ConnectionStep::Decided { verdict, .. } = a.after_connection_allow(&conn(None), index) else { panic!() };
    assert_eq!((verdict.allowed, verdict.rule()), (false, Some("ns[foo]-policy[d]-rule[0]")));
    // `on_connection` (no provider to ask) reports the check as a denial by the asking rule.
    assert_eq!(decide(&a, &conn(None)), (false, "istio-ext-authz-grpc-ns[foo]-policy[c]-rule[0]".into()));
}

#[test]
fn principals_on_tcp_decide_on_the_first_san_or_fail_closed() {
    // A network filter sees the first URI SAN only: a principal it matches decides; an outcome
    // that depends on the other SANs (a DENY that does not match the first one) fails closed.
    let d = tcp(json!([p(
        "d",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/bad"]}}]}]})
    )]));
    assert_eq!(
        decide(&d, &conn(Some("spiffe://cluster.local/ns/foo/sa/bad"))),
        (false, "ns[foo]-policy[d]-rule[0]".into())
    );
    assert!(decide(&d, &conn(None)).0, "plaintext has no SAN");
    // Request views filled up front know every name: a single-SAN certificate is complete.
    assert!(decide(&d, &conn(Some("spiffe://cluster.local/ns/foo/sa/good"))).0);
    let (v, _) = d.on_connection(&conn(Some("spiffe://cluster.local/ns/foo/sa/good")));
    assert!(matches!(v.reason, Reason::NoAllowPolicy));
}
