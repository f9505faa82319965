use super::*;
use wasmesh_istio::{load_str, FilterConfig, ProxyMode, Resources, Workload};

const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: multi, namespace: default}
spec:
  hosts: [multi.default.svc.cluster.local]
  ports: [{number: 80, name: http}, {number: 8080, name: http-alt}]
  resolution: STATIC
"#;

const REVIEWS_VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v3}
"#;

fn sidecar(yaml: &str) -> Router {
    sidecar_with(yaml, Workload::new("productpage-v1", "default"))
}

fn sidecar_with(yaml: &str, wl: Workload) -> Router {
    let items = load_str(&format!("{SERVICES}\n---\n{yaml}"), "test.yaml").unwrap();
    let cfg = RouterConfig {
        workload: Some(wl),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    cfg.compile(&Resources { items }).unwrap()
}

fn compile_err(yaml: &str) -> String {
    let items = load_str(&format!("{SERVICES}\n---\n{yaml}"), "test.yaml").unwrap();
    let cfg = RouterConfig {
        workload: Some(Workload::new("w", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    cfg.compile(&Resources { items }).unwrap_err().to_string()
}

fn req(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), b"GET".to_vec()),
        (":scheme".into(), b"http".to_vec()),
        (":path".into(), b"/".to_vec()),
    ];
    for (k, v) in pairs {
        if let Some(existing) = h.iter_mut().find(|(name, _)| name == k && k.starts_with(':')) {
            existing.1 = v.as_bytes().to_vec();
        } else {
            h.push((k.to_string(), v.as_bytes().to_vec()));
        }
    }
    h
}

fn cluster(r: &Router, pairs: &[(&str, &str)]) -> String {
    let h = req(pairs);
    match r.route(&Request::new(&h), 0) {
        Decision::Forward { cluster, .. } => cluster.into_owned(),
        _ => "404".into(),
    }
}

#[test]
fn bookinfo_jason_goes_to_v2_everyone_else_to_v3() {
    let r = sidecar(REVIEWS_VS);
    assert_eq!(
        cluster(&r, &[(":authority", "reviews:9080"), ("end-user", "jason")]),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        cluster(&r, &[(":authority", "reviews:9080"), ("end-user", "mary")]),
        "outbound|9080|v3|reviews.default.svc.cluster.local"
    );
    assert_eq!(cluster(&r, &[(":authority", "reviews:9080")]), "outbound|9080|v3|reviews.default.svc.cluster.local");
    assert_eq!(
        cluster(&r, &[(":authority", "reviews:9080"), ("end-user", "Jason")]),
        "outbound|9080|v3|reviews.default.svc.cluster.local",
        "exact is case-sensitive"
    );
}

#[test]
fn host_short_forms_and_case_resolve_to_the_service() {
    let r = sidecar(REVIEWS_VS);
    for authority in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        "reviews.default.svc.cluster.local:9080",
        "REVIEWS.default",
    ] {
        assert_eq!(
            cluster(&r, &[(":authority", authority)]),
            "outbound|9080|v3|reviews.default.svc.cluster.local",
            "{authority}"
        );
    }
    assert_eq!(cluster(&r, &[(":authority", "reviews.other")]), "404");
    assert_eq!(cluster(&r, &[(":authority", "unknown.example.com")]), "404");
}

#[test]
fn services_without_a_virtual_service_get_the_default_route() {
    let r = sidecar(REVIEWS_VS);
    assert_eq!(cluster(&r, &[(":authority", "ratings:9080")]), "outbound|9080||ratings.default.svc.cluster.local");
    // Several ports: the request's port decides; no port means 80.
    assert_eq!(cluster(&r, &[(":authority", "multi:8080")]), "outbound|8080||multi.default.svc.cluster.local");
    assert_eq!(cluster(&r, &[(":authority", "multi")]), "outbound|80||multi.default.svc.cluster.local");
}

#[test]
fn a_virtual_service_with_no_matching_route_is_404() {
    let r = sidecar(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /ratings}}]
    route: [{destination: {host: ratings}}]
"#,
    );
    assert_eq!(
        cluster(&r, &[(":authority", "ratings"), (":path", "/ratings/1")]),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
    assert_eq!(cluster(&r, &[(":authority", "ratings"), (":path", "/other")]), "404");
}

const MATCHES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - name: exact-uri
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: ratings, subset: exact}}]
  - name: regex-uri
    match: [{uri: {regex: '/items/[0-9]+'}}]
    route: [{destination: {host: ratings, subset: regex}}]
  - name: nocase
    match: [{uri: {prefix: /CaseLess}, ignoreUriCase: true}]
    route: [{destination: {host: ratings, subset: nocase}}]
  - name: method-and-header-regex
    match: [{method: {exact: POST}, headers: {x-version: {regex: 'v[12]'}}}]
    route: [{destination: {host: ratings, subset: post}}]
  - name: presence
    match: [{headers: {x-debug: {}}}]
    route: [{destination: {host: ratings, subset: debug}}]
  - name: without
    match: [{uri: {prefix: /without}, withoutHeaders: {x-skip: {exact: "yes"}}}]
    route: [{destination: {host: ratings, subset: without}}]
  - name: query
    match: [{queryParams: {canary: {exact: "true"}}}]
    route: [{destination: {host: ratings, subset: query}}]
  - name: query-empty
    match: [{queryParams: {flag: {exact: ""}}}]
    route: [{destination: {host: ratings, subset: flag}}]
  - name: scheme-authority
    match: [{scheme: {exact: https}}, {authority: {prefix: "ratings.default:"}}]
    route: [{destination: {host: ratings, subset: or}}]
  - name: port
    match: [{port: 9999}]
    route: [{destination: {host: ratings, subset: port}}]
  - route: [{destination: {host: ratings, subset: fallback}}]
"#;

fn subset(r: &Router, pairs: &[(&str, &str)]) -> String {
    let c = cluster(r, pairs);
    c.split('|').nth(2).unwrap_or(&c).to_string()
}

#[test]
fn every_match_field() {
    let r = sidecar(MATCHES);
    let a = (":authority", "ratings");
    assert_eq!(subset(&r, &[a, (":path", "/exact")]), "exact");
    assert_eq!(subset(&r, &[a, (":path", "/exact?x=1")]), "exact", "the query is not part of the path");
    assert_eq!(subset(&r, &[a, (":path", "/exact/more")]), "fallback");
    assert_eq!(subset(&r, &[a, (":path", "/items/42")]), "regex");
    assert_eq!(subset(&r, &[a, (":path", "/items/42x")]), "fallback", "regex is a full match");
    assert_eq!(subset(&r, &[a, (":path", "/caseless/x")]), "nocase");
    assert_eq!(subset(&r, &[a, (":method", "POST"), ("x-version", "v2")]), "post");
    assert_eq!(subset(&r, &[a, (":method", "GET"), ("x-version", "v2")]), "fallback", "fields in one block AND");
    assert_eq!(subset(&r, &[a, (":method", "POST"), ("x-version", "v3")]), "fallback");
    assert_eq!(subset(&r, &[a, ("x-debug", "")]), "debug", "presence matches an empty value");
    assert_eq!(subset(&r, &[a, (":path", "/without")]), "without");
    assert_eq!(subset(&r, &[a, (":path", "/without"), ("x-skip", "no")]), "without");
    assert_eq!(subset(&r, &[a, (":path", "/without"), ("x-skip", "yes")]), "fallback");
    assert_eq!(subset(&r, &[a, (":path", "/q?a=b&canary=true")]), "query");
    assert_eq!(subset(&r, &[a, (":path", "/q?canary=false")]), "fallback");
    assert_eq!(subset(&r, &[a, (":path", "/q?flag")]), "flag", "exact \"\" matches ?flag");
    assert_eq!(subset(&r, &[a, (":scheme", "https")]), "or", "match blocks OR");
    assert_eq!(subset(&r, &[(":authority", "ratings.default:9080")]), "or");
    assert_eq!(subset(&r, &[(":authority", "ratings:9999")]), "port");
}

#[test]
fn repeated_headers_match_value_by_value_as_envoy_does() {
    // Envoy 1.40's native route matcher: `v[12]` matches `x-version: v1` + `x-version: v2`,
    // and an exact `v1,v2` does not (values are not joined).
    let r = sidecar(MATCHES);
    let mut h = req(&[(":authority", "ratings"), (":method", "POST")]);
    h.push(("x-version".into(), b"v3".to_vec()));
    h.push(("x-version".into(), b"v2".to_vec()));
    match r.route(&Request::new(&h), 0) {
        Decision::Forward { cluster, .. } => assert!(cluster.contains("|post|"), "{cluster}"),
        other => panic!("{other:?}"),
    }
    let mut h = req(&[(":authority", "ratings"), (":path", "/without")]);
    h.push(("x-skip".into(), b"no".to_vec()));
    h.push(("x-skip".into(), b"yes".to_vec()));
    assert_eq!(subset_of(&r, &h), "fallback", "withoutHeaders: one matching value is enough to exclude");
}

#[test]
fn query_parameters_are_compared_as_sent() {
    let r = sidecar(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{queryParams: {q: {exact: "a b"}}}]
    route: [{destination: {host: ratings, subset: decoded}}]
  - match: [{queryParams: {q: {exact: "a%20b"}}}]
    route: [{destination: {host: ratings, subset: raw}}]
"#,
    );
    assert_eq!(subset(&r, &[(":authority", "ratings"), (":path", "/?q=a%20b")]), "raw");
}

fn subset_of(r: &Router, h: &[(String, Vec<u8>)]) -> String {
    match r.route(&Request::new(h), 0) {
        Decision::Forward { cluster, .. } => cluster.split('|').nth(2).unwrap_or("").to_string(),
        _ => "404".into(),
    }
}

#[test]
fn first_matching_route_wins_and_decision_names_it() {
    let r = sidecar(MATCHES);
    let h = req(&[(":authority", "ratings"), (":path", "/exact")]);
    match r.route(&Request::new(&h), 0) {
        Decision::Forward { virtual_service, route, .. } => {
            assert_eq!(virtual_service, "default/ratings");
            assert_eq!(route, "exact-uri");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn weighted_split_follows_the_weights() {
    let r = sidecar(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    - {destination: {host: reviews, subset: v3}, weight: 0}
"#,
    );
    let h = req(&[(":authority", "reviews")]);
    let mut rng = Rng::new(7);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..20_000 {
        if let Decision::Forward { cluster, .. } = r.route(&Request::new(&h), rng.next_u64()) {
            *counts.entry(cluster.into_owned()).or_insert(0u32) += 1;
        }
    }
    let v2 = counts.get("outbound|9080|v2|reviews.default.svc.cluster.local").copied().unwrap_or(0);
    // 99.9 % binomial bound for n=20000, p=0.1: 2000 ± 3.29·√(1800) ≈ ± 140.
    assert!((1860..=2140).contains(&v2), "{counts:?}");
    assert!(!counts.keys().any(|k| k.contains("|v3|")), "weight 0 is never chosen");
}

#[test]
fn source_labels_and_namespace_select_the_proxy() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{sourceLabels: {app: productpage}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - match: [{sourceNamespace: other}]
    route: [{destination: {host: reviews, subset: other}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#;
    let mut pp = Workload::new("productpage-v1", "default");
    pp.labels.insert("app".into(), "productpage".into());
    assert_eq!(subset(&sidecar_with(vs, pp), &[(":authority", "reviews")]), "v2");
    assert_eq!(subset(&sidecar_with(vs, Workload::new("x", "default")), &[(":authority", "reviews")]), "v1");
    assert_eq!(subset(&sidecar_with(vs, Workload::new("x", "other")), &[(":authority", "reviews.default")]), "other");
}

#[test]
fn gateway_binds_only_its_virtual_services_and_hosts() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: httpbin-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["httpbin.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["httpbin.example.com"]
  gateways: [httpbin-gateway]
  http:
  - match: [{uri: {prefix: /status}}, {uri: {prefix: /delay}}]
    route: [{destination: {port: {number: 8000}, host: httpbin}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: default}
spec:
  hosts: ["httpbin.example.com"]
  http:
  - route: [{destination: {host: other}}]
"#;
    let items = load_str(yaml, "gw.yaml").unwrap();
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.mode = ProxyMode::Gateway;
    wl.labels.insert("istio".into(), "ingressgateway".into());
    let cfg = RouterConfig {
        workload: Some(wl.clone()),
        mesh: None,
        gateway_port: Some(80),
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let r = cfg.compile(&Resources { items: items.clone() }).unwrap();
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    assert_eq!(cluster(&r, &[(":authority", "httpbin.example.com"), (":path", "/status/200")]), httpbin);
    assert_eq!(cluster(&r, &[(":authority", "httpbin.example.com:80"), (":path", "/delay/1")]), httpbin);
    assert_eq!(cluster(&r, &[(":authority", "httpbin.example.com"), (":path", "/headers")]), "404");
    assert_eq!(cluster(&r, &[(":authority", "other.example.com"), (":path", "/status/200")]), "404");
    // Another port of the same gateway has no servers: nothing routes.
    let cfg443 = RouterConfig { gateway_port: Some(443), ..cfg.clone() };
    let r = cfg443.compile(&Resources { items: items.clone() }).unwrap();
    assert_eq!(cluster(&r, &[(":authority", "httpbin.example.com"), (":path", "/status/200")]), "404");
    // A gateway whose labels the Gateway does not select serves nothing.
    let mut other = cfg;
    other.workload.as_mut().unwrap().labels.clear();
    other.workload.as_mut().unwrap().labels.insert("istio".into(), "egressgateway".into());
    let r = other.compile(&Resources { items }).unwrap();
    assert_eq!(cluster(&r, &[(":authority", "httpbin.example.com"), (":path", "/status/200")]), "404");
}

#[test]
fn configuration_errors_name_resource_field_and_value() {
    let e = compile_err(&REVIEWS_VS.replace("exact: jason", "regex: '(jason'"));
    assert!(
        e.contains("VirtualService default/reviews: spec.http[0].match[0].headers.end-user.regex: invalid RE2"),
        "{e}"
    );
    assert!(e.contains("invalid RE2 regex \"(jason\""), "{e}");

    let e = compile_err(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: -5}
    - {destination: {host: reviews, subset: v2}, weight: 0}
"#,
    );
    assert!(e.contains("spec.http[0].route[0].weight: -5 is negative"), "{e}");
    assert!(e.contains("weights add up to 0"), "{e}");

    let e = compile_err(&REVIEWS_VS.replace("  - route:\n", "  - timeout: 10s\n    route:\n"));
    assert!(e.contains("spec.http[1].timeout: needs Envoy routes for the router's route policies"), "{e}");
}

#[test]
fn configuration_json_round_trip_compiles() {
    let items = load_str(&format!("{SERVICES}\n---\n{REVIEWS_VS}"), "x").unwrap();
    let resources: Vec<serde_json::Value> = items
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.location = Default::default();
            serde_json::to_value(r).unwrap()
        })
        .collect();
    let cfg = RouterConfig {
        workload: Some(Workload::new("w", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: "x-wasmesh-cluster".into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources,
    };
    let router = RouterConfig::compile_json(&serde_json::to_vec(&cfg).unwrap()).unwrap();
    assert_eq!(
        cluster(&router, &[(":authority", "reviews"), ("end-user", "jason")]),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert!(RouterConfig::compile_json(b"{\"workload\": 1}").is_err());
    assert!(RouterConfig::compile_json(b"\xff\xfe").is_err());
}

#[test]
fn hostile_authorities_do_not_panic() {
    let r = sidecar(REVIEWS_VS);
    for a in ["", ":", "[", "[::1", "[::1]:", "reviews:99999999999", "a:b:c", "\u{00e9}", &"x".repeat(10_000)] {
        let _ = cluster(&r, &[(":authority", a)]);
    }
    let h: Vec<(String, Vec<u8>)> =
        vec![(":authority".into(), vec![0xff, 0xfe]), (":path".into(), vec![0xff, b'?', 0xfe])];
    let _ = r.route(&Request::new(&h), 0);
    let h: Vec<(String, Vec<u8>)> = vec![];
    assert_eq!(r.route(&Request::new(&h), 0), Decision::NotFound);
}

#[test]
fn validate_reports_every_virtual_service() {
    let items = load_str(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: x}
spec:
  hosts: [a]
  gateways: [some-gateway]
  http:
  - match: [{uri: {regex: '['}, sourceLabels: {app: nobody}}]
    route: [{destination: {host: a}}]
"#,
        "v.yaml",
    )
    .unwrap();
    let errors = validate(&Resources { items });
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("spec.http[0].match[0].uri.regex"), "{}", errors[0]);
}

#[test]
fn needed_headers_are_what_the_routes_read() {
    let r = sidecar(MATCHES);
    let needed = r.needed_headers();
    for h in [":authority", ":path", ":method", ":scheme", "x-version", "x-debug", "x-skip"] {
        assert!(needed.iter().any(|n| n == h), "{h} missing from {needed:?}");
    }
    assert_eq!(needed[0], ":authority");
    assert_eq!(sidecar(REVIEWS_VS).needed_headers(), &[":authority".to_string(), "end-user".to_string()]);
}

#[test]
#[allow(clippy::unwrap_used)]
fn without_workload_the_config_parses_and_compiling_names_what_is_missing() {
    let cfg = RouterConfig::parse_json(br#"{"mesh": {"domainSuffix": "corp.internal"}, "resources": []}"#).unwrap();
    assert!(cfg.workload.is_none());
    assert_eq!(cfg.mesh().domain_suffix, "corp.internal");
    assert_eq!(cfg.mesh().root_namespace, "istio-system");
    let e = cfg.compile(&cfg.parsed_resources().unwrap()).unwrap_err().to_string();
    assert!(e.contains("workload: absent"), "{e}");
    assert!(RouterConfig::parse_json(br#"{"mesh": {"trustDomian": "x"}}"#).is_err(), "misspelt mesh fields are errors");
}

#[test]
#[allow(clippy::unwrap_used)]
fn gateway_ports_are_the_servers_of_the_gateways_selecting_the_proxy() {
    let yaml = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: a, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}
  - {port: {number: 8080, name: http2, protocol: HTTP}, hosts: ['*']}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: b, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: ['b.example.com']}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress, namespace: istio-system}
spec:
  selector: {istio: egressgateway}
  servers:
  - {port: {number: 443, name: https, protocol: HTTP}, hosts: ['*']}
";
    let resources = Resources { items: wasmesh_istio::load_str(yaml, "gw.yaml").unwrap() };
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.mode = ProxyMode::Gateway;
    wl.labels.insert("istio".into(), "ingressgateway".into());
    let cfg = RouterConfig {
        workload: Some(wl),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    assert_eq!(cfg.gateway_ports(&resources), vec![80, 8080]);
    assert!(cfg.compile(&resources).is_err(), "one table needs its gatewayPort");
    for port in [80, 8080] {
        assert!(RouterConfig { gateway_port: Some(port), ..cfg.clone() }.compile(&resources).is_ok());
    }
    // What the filter and wasmeshctl compile: a table per port, picked by the request's port
    // (read only for per-port tables).
    let tables = cfg.compile_tables(&resources).unwrap();
    assert_eq!(tables.iter().map(|(p, _)| p).collect::<Vec<_>>(), [Some(80), Some(8080)]);
    assert!(tables.for_port(|| Some(8080)).is_some());
    assert!(tables.for_port(|| Some(443)).is_none(), "no Gateway server on that port: 404");
    assert!(tables.for_port(|| None).is_none());
    assert_eq!(tables.cluster_header(), DEFAULT_CLUSTER_HEADER);
    let one = RouterConfig { gateway_port: Some(80), ..cfg.clone() }.compile_tables(&resources).unwrap();
    assert!(one.for_port(|| panic!("one table reads no port")).is_some());
    let mut unselected = cfg.clone();
    unselected.workload.as_mut().unwrap().labels.insert("istio".into(), "none".into());
    let none = unselected.compile_tables(&resources).unwrap();
    assert!(none.iter().next().is_none() && none.for_port(|| Some(80)).is_none(), "no Gateway selects it");
}

fn compile_json_err(resources: Vec<serde_json::Value>) -> String {
    let cfg = serde_json::json!({"workload": {"name": "w", "namespace": "default"}, "resources": resources});
    RouterConfig::compile_json(cfg.to_string().as_bytes()).unwrap_err().to_string()
}

/// Compiles with small bounds (the defaults are crossed the same way, only slower to build).
fn compile_limited(resources: Vec<serde_json::Value>, limits: Limits) -> Result<Router, String> {
    let cfg = RouterConfig {
        workload: Some(Workload::new("w", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources,
    };
    cfg.compile_with_limits(&cfg.parsed_resources().unwrap(), &limits).map_err(|e| e.to_string())
}

fn virtual_service(http: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "big", "namespace": "default"}, "spec": {"hosts": ["big"], "http": http}})
}

#[test]
fn the_default_limits_are_the_named_bounds() {
    let l = Limits::default();
    assert_eq!(
        (l.virtual_hosts, l.routes_per_virtual_host, l.examined_headers),
        (compile::MAX_VIRTUAL_HOSTS, compile::MAX_ROUTES_PER_VIRTUAL_HOST, compile::MAX_EXAMINED_HEADERS)
    );
    assert_eq!((l.virtual_hosts, l.routes_per_virtual_host, l.examined_headers), (65_536, 4_096, 128));
}

#[test]
fn routes_per_virtual_host_are_bounded() {
    let limits = Limits { routes_per_virtual_host: 8, ..Limits::default() };
    let route = |i: usize| serde_json::json!({"match": [{"uri": {"exact": format!("/{i}")}}], "route": [{"destination": {"host": "big"}}]});
    let r = compile_limited(vec![virtual_service((0..8).map(route).collect())], limits).unwrap();
    assert!(matches!(
        r.route(&Request::new(&req(&[(":authority", "big"), (":path", "/7")])), 0),
        Decision::Forward { .. }
    ));
    let e = compile_limited(vec![virtual_service((0..9).map(route).collect())], limits).unwrap_err();
    assert!(e.contains("host \"big.default.svc.cluster.local\" has 9 routes") && e.contains("at most 8"), "{e}");
    // A sidecar keeps the first VirtualService for a host (istiod drops the host from later
    // ones): the second's routes neither count nor match.
    let mut second = virtual_service((5..10).map(route).collect());
    second["metadata"]["name"] = "big2".into();
    let r = compile_limited(vec![virtual_service((0..5).map(route).collect()), second], limits).unwrap();
    let path = |p: &str| r.route(&Request::new(&req(&[(":authority", "big"), (":path", p)])), 0);
    assert!(matches!(path("/4"), Decision::Forward { .. }));
    assert_eq!(path("/7"), Decision::NotFound);
}

#[test]
fn virtual_hosts_are_bounded() {
    let service_entry = |n: usize| {
        let hosts: Vec<String> = (0..n).map(|i| format!("s{i}.example.com")).collect();
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "many", "namespace": "default"},
            "spec": {"hosts": hosts, "ports": [{"number": 80, "name": "http"}]}})
    };
    let limits = Limits { virtual_hosts: 20, ..Limits::default() };
    assert_eq!(compile_limited(vec![service_entry(20)], limits).unwrap().virtual_host_count(), 20);
    let e = compile_limited(vec![service_entry(21)], limits).unwrap_err();
    assert!(e.contains("21 virtual hosts") && e.contains("at most 20"), "{e}");
}

#[test]
fn examined_headers_are_bounded() {
    let vs = |n: usize| {
        let headers: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("x-h{i}"), serde_json::json!({"exact": "1"}))).collect();
        virtual_service(vec![
            serde_json::json!({"match": [{"headers": headers}], "route": [{"destination": {"host": "big"}}]}),
        ])
    };
    let limits = Limits { examined_headers: 6, ..Limits::default() };
    // `:authority` plus the named headers.
    let r = compile_limited(vec![vs(5)], limits).unwrap();
    assert_eq!(r.needed_headers().len(), 6);
    let mut h = req(&[(":authority", "big")]);
    for i in 0..5 {
        h.push((format!("x-h{i}"), b"1".to_vec()));
    }
    assert!(matches!(r.route(&Request::new(&h), 0), Decision::Forward { .. }));
    h.pop();
    assert_eq!(r.route(&Request::new(&h), 0), Decision::NotFound);
    let e = compile_limited(vec![vs(6)], limits).unwrap_err();
    assert!(e.contains("7 distinct request headers") && e.contains("at most 6"), "{e}");
    // The default bound with the default compile.
    let e = compile_json_err(vec![vs(compile::MAX_EXAMINED_HEADERS)]);
    assert!(e.contains("129 distinct request headers") && e.contains("at most 128"), "{e}");
}

#[test]
fn oversized_regexes_are_refused_with_the_field() {
    let e = compile_json_err(vec![virtual_service(vec![serde_json::json!({
        "match": [{"headers": {"x-id": {"regex": "[0-9a-f]{40000}"}}}], "route": [{"destination": {"host": "big"}}]})])]);
    assert!(e.contains("spec.http[0].match[0].headers.x-id.regex") && e.contains("too large"), "{e}");
}

#[test]
fn hosts_longer_than_any_dns_name_find_no_route() {
    let r = sidecar(REVIEWS_VS);
    let long = format!("{}.reviews", "a".repeat(request::MAX_HOST_BYTES));
    assert_eq!(cluster(&r, &[(":authority", &long)]), "404");
    assert_eq!(cluster(&r, &[(":authority", "reviews")]), "outbound|9080|v3|reviews.default.svc.cluster.local");
}

const STAR_GATEWAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: any, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw]
  http:
  - route: [{destination: {host: httpbin}}]
"#;

#[test]
fn a_host_longer_than_a_dns_name_still_matches_star() {
    let items = load_str(STAR_GATEWAY, "gw.yaml").unwrap();
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.mode = ProxyMode::Gateway;
    wl.labels.insert("istio".into(), "ingressgateway".into());
    let cfg = RouterConfig {
        workload: Some(wl),
        mesh: None,
        gateway_port: Some(80),
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let r = cfg.compile(&Resources { items }).unwrap();
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    let long = format!("{}.example.com", "a".repeat(300));
    assert_eq!(cluster(&r, &[(":authority", &long)]), httpbin);
    assert_eq!(cluster(&r, &[(":authority", &format!("{}:80", long.to_uppercase()))]), httpbin);
}

const ACTIONS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /moved}}, {uri: {exact: /old}}]
    redirect: {uri: "%PREFIX()%/new", redirectCode: 302}
  - match: [{uri: {prefix: /down}}]
    directResponse: {status: 503, body: {string: maintenance}}
  - match: [{uri: {prefix: /api}}]
    rewrite: {uri: /v2}
    headers: {request: {set: {x-a: "1"}}}
    fault: {abort: {httpStatus: 418, percentage: {value: 0}}}
    route:
    - destination: {host: ratings}
      headers: {request: {set: {host: other.example}}, response: {remove: [server]}}
  - route: [{destination: {host: ratings}}]
"#;

#[test]
fn routes_decide_redirects_direct_responses_and_forwarding_actions() {
    let items = load_str(&format!("{SERVICES}\n---\n{ACTIONS}"), "test.yaml").unwrap();
    let cfg = RouterConfig {
        workload: Some(Workload::new("productpage-v1", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let e = cfg.compile(&Resources { items: items.clone() }).unwrap_err().to_string();
    assert!(e.contains("spec.http[2].fault") && e.contains("faultFilter"), "{e}");
    let r = RouterConfig { fault_filter: true, route_policies: true, ..cfg }.compile(&Resources { items }).unwrap();
    assert!(r.has_faults());
    let h = req(&[(":authority", "ratings:9080"), (":path", "/moved/x?q=1")]);
    let d = r.route(&Request::new(&h), 0);
    assert_eq!(d.operation().as_deref(), Some("ratings:9080/moved*"), "no cluster: the VirtualService's name");
    match d {
        Decision::Redirect { redirect, matched, port, .. } => {
            assert_eq!(redirect.status, 302);
            assert_eq!(port, 9080);
            assert_eq!(
                redirect.location(b"http", b"ratings:9080", b"/moved/x?q=1", matched, port),
                "http://ratings:9080/new/x?q=1"
            );
        }
        other => panic!("{other:?}"),
    }
    let h = req(&[(":authority", "ratings"), (":path", "/old")]);
    let d = r.route(&Request::new(&h), 0);
    assert!(matches!(d, Decision::Redirect { matched: crate::Matched::Whole, .. }));
    assert_eq!(d.operation().as_deref(), Some("ratings:9080/old"), "the exact path of the second match");
    let h = req(&[(":authority", "ratings"), (":path", "/down/now")]);
    let d = r.route(&Request::new(&h), 0);
    assert!(matches!(d, Decision::Direct { status: 503, body: b"maintenance", .. }));
    assert_eq!(d.operation().as_deref(), Some("ratings:9080/down*"));
    let h = req(&[(":authority", "ratings"), (":path", "/api/x")]);
    let d = r.route(&Request::new(&h), 0);
    assert_eq!(d.operation().as_deref(), Some("ratings.default.svc.cluster.local:9080/api*"), "one cluster names it");
    match d {
        Decision::Forward { ops: Some(ops), destination_headers: Some(d), matched, .. } => {
            assert_eq!(ops.path.as_ref().unwrap().apply(b"/api/x", matched), b"/v2/x");
            assert_eq!(ops.headers.request.set, vec![("x-a".to_string(), "1".to_string())]);
            assert_eq!(d.authority.as_deref(), Some("other.example"));
            assert_eq!(d.response.remove, vec!["server".to_string()]);
            assert_eq!(ops.fault.unwrap().decide(0), crate::FaultDecision::default(), "0% never fires");
        }
        other => panic!("{other:?}"),
    }
    let h = req(&[(":authority", "ratings"), (":path", "/other")]);
    let d = r.route(&Request::new(&h), 0);
    assert!(matches!(d, Decision::Forward { ops: None, destination_headers: None, .. }));
    assert_eq!(d.operation().as_deref(), Some("ratings.default.svc.cluster.local:9080/*"), "no uri match: /*");
}

/// Istio's delegate example (VirtualService reference, `Delegate`), on the gateway it binds.
pub(crate) const DELEGATE_EXAMPLE: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
  namespace: default
spec:
  hosts:
  - "bookinfo.com"
  gateways:
  - mygateway
  http:
  - match:
    - uri:
        prefix: "/productpage"
    delegate:
       name: productpage
       namespace: nsA
  - match:
    - uri:
        prefix: "/reviews"
    delegate:
        name: reviews
        namespace: nsB
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
  namespace: nsA
spec:
  http:
  - match:
     - uri:
        prefix: "/productpage/v1/"
    route:
    - destination:
        host: productpage-v1.nsA.svc.cluster.local
  - route:
    - destination:
        host: productpage.nsA.svc.cluster.local
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: nsB
spec:
  http:
  - route:
    - destination:
        host: reviews.nsB.svc.cluster.local
"#;

fn delegate_gateway(yaml: &str) -> Result<Router, String> {
    let items = load_str(yaml, "delegate.yaml").map_err(|e| e.to_string())?;
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.mode = ProxyMode::Gateway;
    wl.labels.insert("istio".into(), "ingressgateway".into());
    let cfg = RouterConfig {
        workload: Some(wl),
        mesh: None,
        gateway_port: Some(80),
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    cfg.compile(&Resources { items }).map_err(|e| e.to_string())
}

#[test]
fn delegate_virtual_services_merge_into_their_root() {
    let r = delegate_gateway(DELEGATE_EXAMPLE).unwrap();
    let at = |path: &str| cluster(&r, &[(":authority", "bookinfo.com"), (":path", path)]);
    assert_eq!(at("/productpage/v1/x"), "outbound|80||productpage-v1.nsa.svc.cluster.local");
    assert_eq!(at("/productpage"), "outbound|80||productpage.nsa.svc.cluster.local");
    assert_eq!(at("/reviews/1"), "outbound|80||reviews.nsb.svc.cluster.local");
    assert_eq!(at("/ratings"), "404");
    // A delegate route outside its root's match is dropped, as istiod drops it.
    let narrowed = DELEGATE_EXAMPLE.replace("prefix: \"/productpage/v1/\"", "prefix: \"/other/\"");
    let r = delegate_gateway(&narrowed).unwrap();
    assert_eq!(cluster(&r, &[(":authority", "bookinfo.com"), (":path", "/other/x")]), "404");
    // A delegate that is not there, not exported to the root, or delegates again is refused.
    let e = delegate_gateway(
        &DELEGATE_EXAMPLE.replace("name: reviews\n        namespace: nsB", "name: nope\n        namespace: nsB"),
    )
    .unwrap_err();
    assert!(
        e.contains("VirtualService default/bookinfo") && e.contains("spec.http[1].delegate") && e.contains("nsB/nope"),
        "{e}"
    );
    let e = delegate_gateway(
        &DELEGATE_EXAMPLE.replace("  namespace: nsB\nspec:\n", "  namespace: nsB\nspec:\n  exportTo: [\".\"]\n"),
    )
    .unwrap_err();
    assert!(e.contains("not exported to namespace \"default\""), "{e}");
    let e = delegate_gateway(&DELEGATE_EXAMPLE.replace(
        "    - destination:\n        host: reviews.nsB.svc.cluster.local",
        "    delegate: {name: productpage, namespace: nsA}",
    ))
    .unwrap_err();
    assert!(e.contains("VirtualService nsB/reviews") && e.contains("cannot delegate again"), "{e}");
}

#[test]
fn match_gateways_select_blocks_per_proxy_and_sidecars_keep_the_first_virtual_service() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first, namespace: default}
spec:
  hosts: [reviews]
  gateways: [mesh, default/mygateway]
  http:
  - match: [{gateways: [mygateway], uri: {prefix: /}}]
    route: [{destination: {host: reviews, subset: gw}}]
  - match: [{gateways: [mesh]}]
    route: [{destination: {host: reviews, subset: mesh}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, subset: second}}]
"#;
    assert_eq!(subset(&sidecar(vs), &[(":authority", "reviews")]), "mesh");
}

const POLICIES: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /a}}]
    timeout: 1s
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /b}}]
    timeout: 1000ms
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /c}}]
    mirror: {host: reviews, subset: v2}
    corsPolicy: {allowOrigins: [{exact: "http://x"}]}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#;

/// Read lazily, a header is fetched only when a route condition examines it: not for another
/// virtual host's routes, nor behind a condition of the same match that already failed; and the
/// decision is the one the eager view gives.
#[test]
fn a_lazy_view_fetches_only_what_the_walk_examines() {
    let r = sidecar(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /admin}, headers: {x-admin: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: admin}}]
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"#,
    );
    let run = |pairs: &[(&str, &str)]| {
        let asked = std::cell::RefCell::new(Vec::new());
        let fetch = |name: &str| {
            asked.borrow_mut().push(name.to_string());
            pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes().to_vec())
        };
        let lazy = match r.route_view(&RequestView::lazy(r.header_slots(), &fetch), 0) {
            Decision::Forward { cluster, .. } => cluster.split('|').nth(2).unwrap_or("").to_string(),
            _ => "404".into(),
        };
        assert_eq!(lazy, subset(&r, pairs), "{pairs:?}");
        (lazy, asked.into_inner())
    };
    assert_eq!(run(&[(":authority", "ratings"), (":path", "/admin")]), ("".into(), vec![":authority".to_string()]));
    let (s, asked) = run(&[(":authority", "reviews"), (":path", "/x"), ("end-user", "jason")]);
    assert_eq!((s.as_str(), asked), ("v2", vec![":authority".to_string(), ":path".into(), "end-user".into()]));
    let (s, asked) = run(&[(":authority", "reviews"), (":path", "/admin"), ("x-admin", "1")]);
    assert_eq!((s.as_str(), asked), ("admin", vec![":authority".to_string(), ":path".into(), "x-admin".into()]));
    let (s, asked) = run(&[(":authority", "reviews"), (":path", "/admin"), ("x-admin", "0")]);
    assert_eq!(s, "v1");
    assert_eq!(asked.len(), 4, "each slot once: {asked:?}");
}

const FAULTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /both}}]
    fault: {delay: {fixedDelay: 1500ms, percentage: {value: 50}}, abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /grpc}}]
    timeout: 2s
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}, delay: {fixedDelay: 1s, percentage: {value: 0}}}
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
"#;

/// With `faultRoutes`, a fault is carried out by the Envoy route of what the draw decided: each
/// outcome that can happen has one, over the route's policy (Istio's route action without
/// one), with Envoy's per-route fault at 100 %; a draw that injects nothing takes the route's
/// own policy (none here: Envoy's catch-all).
#[test]
fn fault_routes_name_the_drawn_outcome() {
    let items = load_str(&format!("{SERVICES}\n---\n{FAULTS}"), "test.yaml").unwrap();
    let cfg = RouterConfig {
        workload: Some(Workload::new("productpage-v1", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: true,
        fault_headers_removed: false,
        fault_routes: true,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let e = cfg.compile(&Resources { items: items.clone() }).unwrap_err().to_string();
    assert!(e.contains("spec.http[0].fault") && e.contains("routePolicies: true"), "{e}");
    let r = RouterConfig { route_policies: true, ..cfg.clone() }.compile(&Resources { items: items.clone() }).unwrap();
    // /both: delay, abort, both; /grpc: its timeout policy and its abort (the 0 % delay has none).
    assert_eq!(r.policies().len(), 5, "{:#?}", r.policies());
    let ops_of = |path: &str| {
        let h = req(&[(":authority", "ratings:9080"), (":path", path)]);
        match r.route(&Request::new(&h), 0) {
            Decision::Forward { ops, .. } => ops.unwrap().clone(),
            other => panic!("{other:?}"),
        }
    };
    let both = ops_of("/both");
    let routes = both.fault_routes.as_ref().unwrap();
    let fault = |p: &std::rc::Rc<RoutePolicy>| p.fault.clone().unwrap();
    let all = serde_json::json!({"numerator": 100, "denominator": "HUNDRED"});
    assert_eq!(
        fault(routes.delay.as_ref().unwrap())["delay"],
        serde_json::json!({"fixed_delay": "1.500s", "percentage": all})
    );
    assert!(fault(routes.delay.as_ref().unwrap()).get("abort").is_none());
    assert_eq!(
        fault(routes.abort.as_ref().unwrap())["abort"],
        serde_json::json!({"http_status": 503, "percentage": all})
    );
    let b = fault(routes.both.as_ref().unwrap());
    assert!(b.get("delay").is_some() && b.get("abort").is_some());
    // Istio's route action for a route without timeout or retries.
    let d = routes.delay.as_ref().unwrap();
    assert_eq!(d.route_action["timeout"], "0s");
    assert_eq!(d.route_action["retry_policy"], crate::istio_default_retry_policy());
    // The draw picks the route; the delay and the abort are drawn independently.
    let mut seen = std::collections::BTreeMap::new();
    let mut rng = crate::Rng::new(3);
    for _ in 0..4000 {
        let decision = both.fault_decision(rng.next_u64());
        let id = both.envoy_route(decision).map(|p| p.id.clone());
        let expected = routes.select(decision).map(|p| p.id.clone());
        assert_eq!(id, expected);
        *seen.entry(id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 4, "none, delay, abort, both: {seen:?}");
    assert!(seen.values().all(|n| (800..1200).contains(n)), "about a quarter each: {seen:?}");
    // /grpc: the abort route keeps the route's timeout; an abort always fires.
    let grpc = ops_of("/grpc");
    let policy = grpc.policy.as_ref().unwrap();
    let abort = grpc.fault_routes.as_ref().unwrap().abort.as_ref().unwrap();
    assert!(grpc.fault_routes.as_ref().unwrap().delay.is_none(), "0 %: no route");
    assert_eq!(abort.route_action, policy.route_action);
    assert_ne!(abort.id, policy.id);
    assert_eq!(fault(abort)["abort"]["grpc_status"], 14);
    for random in [0, 1, u64::MAX] {
        assert_eq!(grpc.envoy_route(grpc.fault_decision(random)).unwrap().id, abort.id);
    }
    // A policy's id does not move because fault routes exist beside it.
    let plain =
        RouterConfig { route_policies: true, fault_routes: false, ..cfg }.compile(&Resources { items }).unwrap();
    assert!(plain.policies().iter().any(|p| p.id == policy.id));
    assert_eq!(plain.policies().len(), 1, "without fault routes only the timeout policy");
}

#[test]
fn route_policies_are_named_on_the_decision_and_shared_by_equal_routes() {
    let items = load_str(&format!("{SERVICES}\n---\n{POLICIES}"), "test.yaml").unwrap();
    let cfg = RouterConfig {
        workload: Some(Workload::new("productpage-v1", "default")),
        mesh: None,
        gateway_port: None,
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let e = cfg.compile(&Resources { items: items.clone() }).unwrap_err().to_string();
    for f in ["spec.http[0].timeout", "spec.http[2].mirror", "spec.http[2].corsPolicy"] {
        assert!(e.contains(f) && e.contains("routePolicies: true"), "{f}: {e}");
    }
    let r = RouterConfig { route_policies: true, ..cfg }.compile(&Resources { items }).unwrap();
    assert_eq!(r.policies().len(), 2, "1s and 1000ms are one policy");
    let policy_of = |path: &str| {
        let h = req(&[(":authority", "ratings:9080"), (":path", path)]);
        match r.route(&Request::new(&h), 0) {
            Decision::Forward { ops, .. } => ops.and_then(|o| o.policy.as_ref()).map(|p| p.id.clone()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(policy_of("/a"), policy_of("/b"));
    assert!(policy_of("/a").is_some());
    assert_ne!(policy_of("/a"), policy_of("/c"));
    assert_eq!(policy_of("/other"), None);
    let c = r.policies().into_iter().find(|p| p.cors.is_some()).unwrap();
    assert_eq!(
        c.route_action["request_mirror_policies"][0]["cluster"],
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
}

#[test]
fn a_virtual_service_is_served_only_on_its_gateways_servers() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: default}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  ports: [{number: 8000, name: http}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-80, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw-8080, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: httpbin-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin, namespace: default}
spec:
  hosts: ["*"]
  gateways: [gw-8080]
  http:
  - route: [{destination: {port: {number: 8000}, host: httpbin}}]
"#;
    let items = load_str(yaml, "gw.yaml").unwrap();
    let mut wl = Workload::new("istio-ingressgateway", "istio-system");
    wl.mode = ProxyMode::Gateway;
    wl.labels.insert("istio".into(), "ingressgateway".into());
    let on = |port: u32| {
        let cfg = RouterConfig {
            workload: Some(wl.clone()),
            mesh: None,
            gateway_port: Some(port),
            cluster_header: DEFAULT_CLUSTER_HEADER.into(),
            fault_filter: false,
            fault_headers_removed: false,
            fault_routes: false,
            outbound_traffic_policy: None,
            route_policies: false,
            trace_operations: false,
            resources: vec![],
        };
        let r = cfg.compile(&Resources { items: items.clone() }).unwrap();
        cluster(&r, &[(":authority", "httpbin.example.com"), (":path", "/get")])
    };
    let httpbin = "outbound|8000||httpbin.default.svc.cluster.local";
    assert_eq!(on(8080), httpbin);
    assert_eq!(on(443), httpbin, "a SIMPLE TLS server routes what Envoy decrypted");
    assert_eq!(on(80), "404", "gw-80's port does not serve a VirtualService bound to gw-8080");
    // Modes that are not HTTP to the router are refused, naming the field.
    let passthrough = yaml.replace("mode: SIMPLE, credentialName: httpbin-credential", "mode: ISTIO_MUTUAL");
    let cfg = RouterConfig {
        workload: Some(wl.clone()),
        mesh: None,
        gateway_port: Some(443),
        cluster_header: DEFAULT_CLUSTER_HEADER.into(),
        fault_filter: false,
        fault_headers_removed: false,
        fault_routes: false,
        outbound_traffic_policy: None,
        route_policies: false,
        trace_operations: false,
        resources: vec![],
    };
    let e = cfg.compile(&Resources { items: load_str(&passthrough, "gw.yaml").unwrap() }).unwrap_err().to_string();
    assert!(e.contains("spec.servers[1].tls.mode") && e.contains("ISTIO_MUTUAL"), "{e}");
}

#[test]
fn only_response_header_operations_need_the_response_callback() {
    use wasmesh_istio::module::Callbacks;
    assert_eq!(sidecar(REVIEWS_VS).callbacks(), Callbacks::NONE);
    let request_only = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - headers: {request: {set: {x-a: "1"}}}
    route:
    - destination: {host: reviews, subset: v2}
      headers: {request: {add: {x-b: "2"}}}
"#;
    assert_eq!(sidecar(request_only).callbacks(), Callbacks::NONE);
    let route = request_only.replace(r#"{request: {set: {x-a: "1"}}}"#, r#"{response: {set: {x-a: "1"}}}"#);
    assert_eq!(sidecar(&route).callbacks(), Callbacks::RESPONSE_HEADERS);
    let destination = request_only.replace(r#"{request: {add: {x-b: "2"}}}"#, r#"{response: {remove: [server]}}"#);
    assert_eq!(sidecar(&destination).callbacks(), Callbacks::RESPONSE_HEADERS);
}
