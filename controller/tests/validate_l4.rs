//! `wasmeshctl validate` refuses the VirtualService `tcp` and `tls` routes `wasmeshctl envoy`
//! would refuse when it writes a `--tcp-outbound` listener (or a gateway's TCP/TLS server) from
//! them, naming file, resource, field and value, whatever port or gateway the route is bound to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wasmesh_controller::bootstrap::TcpOutbound;
use wasmesh_controller::sidecar_l4;
use wasmesh_controller::validate::validate_input;
use wasmesh_istio::Workload;

const ECHO: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: default}\nspec:\n  hosts: [echo.default.svc.cluster.local]\n  ports: [{number: 9000, name: tcp, protocol: TCP}]\n  resolution: STATIC\n  endpoints: [{address: 127.0.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ext, namespace: default}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 443, name: tls, protocol: TLS}]\n  resolution: DNS\n---\n";

fn vs(body: &str) -> String {
    format!("{ECHO}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: default}}\nspec:\n  hosts: [echo, a.example.com]\n{body}")
}

/// `wasmeshctl validate -f l4.yaml`'s errors, one line each as it prints them.
fn validate(yaml: &str) -> Vec<String> {
    let mut loader = wasmesh_istio::Loader::new(Default::default());
    loader.add_str(yaml, "l4.yaml");
    let input = loader.finish().unwrap_or_else(|f| panic!("{:?}", f.errors));
    validate_input(&input).0.iter().map(ToString::to_string).collect()
}

/// What `wasmeshctl envoy --tcp-outbound 15000=<host>:<port>` says of the same input.
fn envoy(yaml: &str, host: &str, port: u32) -> Result<(), String> {
    let mut loader = wasmesh_istio::Loader::new(Default::default());
    loader.add_str(yaml, "l4.yaml");
    let input = loader.finish().unwrap_or_else(|f| panic!("{:?}", f.errors));
    let out = TcpOutbound { bind_port: 15000, host: host.into(), port };
    sidecar_l4::plan(&input.resources, &Workload::new("client", "default"), &out, None)
        .map(|_| ())
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
}

#[test]
fn validate_refuses_what_envoy_refuses_in_tcp_and_tls_routes() {
    // (yaml, the listener envoy writes from it, the field, a piece of the message).
    let cases = [
        (
            vs("  tcp:\n  - match: [{destinationSubnets: [10.0.0.0/8]}]\n    route: [{destination: {host: echo}}]\n"),
            ("echo", 9000),
            "spec.tcp[0].match[0].destinationSubnets",
            "original destination",
        ),
        (
            vs("  tcp:\n  - route: [{destination: {host: echo}, weight: 50}, {destination: {host: echo}, weight: 40}]\n"),
            ("echo", 9000),
            "spec.tcp[0].route",
            "weights add up to 90, expected 100",
        ),
        (
            vs("  tcp:\n  - route: [{destination: {host: nowhere}}]\n"),
            ("echo", 9000),
            "spec.tcp[0].route[0].destination.host",
            "\"nowhere\": no ServiceEntry has host nowhere.default.svc.cluster.local",
        ),
        (
            vs("  tcp:\n  - route: [{destination: {host: echo, port: {number: 9999}}}]\n"),
            ("echo", 9000),
            "spec.tcp[0].route[0].destination.port.number",
            "9999: echo.default.svc.cluster.local has ports [9000]",
        ),
        (
            vs("  tcp:\n  - route: [{destination: {host: echo, subset: v1}}]\n"),
            ("echo", 9000),
            "spec.tcp[0].route[0].destination.subset",
            "\"v1\": no DestinationRule",
        ),
        (
            vs("  tls:\n  - match: [{port: 443, sniHosts: [a.example.com]}]\n    route: [{destination: {host: nowhere}}]\n"),
            ("a.example.com", 443),
            "spec.tls[0].route[0].destination.host",
            "\"nowhere\": no ServiceEntry has host",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, (host, port), field, message) in cases {
        let refused = envoy(&yaml, host, port).expect_err(&yaml);
        assert!(refused.contains(field) && refused.contains(message), "envoy: {refused}");
        let errors = validate(&yaml);
        let want = format!("l4.yaml (document 3): VirtualService default/echo: {field}: ");
        if !errors.iter().any(|e| e.starts_with(&want) && e.contains(message)) {
            failures.push(format!("expected {want}...{message}, got {errors:#?}"));
        }
    }
    assert!(failures.is_empty(), "validate:\n{}", failures.join("\n"));
}

#[test]
fn routes_no_listener_uses_yet_are_checked_and_good_routes_pass() {
    // A route bound to a port (or gateway) no listener of this input uses is refused all the
    // same: validate knows no listeners, and envoy would refuse it where one used it.
    let unused_port = vs("  tcp:\n  - match: [{port: 7000}]\n    route: [{destination: {host: nowhere}}]\n");
    assert!(envoy(&unused_port, "echo", 9000).is_ok(), "a listener on 9000 does not read the route for 7000");
    let errors = validate(&unused_port);
    assert!(errors.iter().any(|e| e.contains("spec.tcp[0].route[0].destination.host")), "{errors:#?}");
    let gateway_bound =
        vs("  gateways: [some-gateway]\n  tcp:\n  - route: [{destination: {host: echo, subset: v9}}]\n");
    let errors = validate(&gateway_bound);
    assert!(errors.iter().any(|e| e.contains("spec.tcp[0].route[0].destination.subset")), "{errors:#?}");
    // Every error of a VirtualService whose tcp and tls routes are both wrong.
    let both = vs("  tcp:\n  - route: [{destination: {host: nowhere}}]\n  tls:\n  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: echo, subset: v3}}]\n");
    let errors = validate(&both);
    assert!(
        errors.iter().any(|e| e.contains("spec.tcp[0].route[0].destination.host"))
            && errors.iter().any(|e| e.contains("spec.tls[0].route[0].destination.subset")),
        "{errors:#?}"
    );

    // What envoy accepts, validate accepts: a weighted TCP split and an SNI route.
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: echo, namespace: default}\nspec:\n  host: echo\n  subsets: [{name: v1, labels: {v: '1'}}, {name: v2, labels: {v: '2'}}]\n---\n";
    let good = format!(
        "{dr}{}",
        vs("  tcp:\n  - match: [{port: 9000}]\n    route: [{destination: {host: echo, subset: v1}, weight: 80}, {destination: {host: echo, subset: v2}, weight: 20}]\n  tls:\n  - match: [{port: 443, sniHosts: [a.example.com]}]\n    route: [{destination: {host: echo, port: {number: 9000}}}]\n")
    );
    assert!(envoy(&good, "echo", 9000).is_ok() && envoy(&good, "a.example.com", 443).is_ok());
    assert_eq!(validate(&good), Vec::<String>::new());
}
