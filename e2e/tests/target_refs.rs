//! AuthorizationPolicy `targetRefs` on a Gateway API gateway, through wasmeshctl's own
//! bootstraps: the gateway proxy (a WorkloadEntry labelled `gateway.networking.k8s.io/gateway-name`)
//! enforces the policies that name its Gateway, and nothing else does. (The decisions themselves
//! are compared with Envoy's RBAC filter as istiod configures it in the authz differential corpus,
//! `e2e/corpus/authz/11-gateway-target-refs.yaml`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wasmesh_e2e::http::request;
use wasmesh_e2e::mesh::Mesh;
use wasmesh_e2e::App;

const GATEWAY: &str = "web/web-gw";

fn yaml() -> String {
    let httpbin =
        std::fs::read_to_string(wasmesh_e2e::paths::repo_root().join("examples/httpbin/httpbin.yaml")).unwrap();
    let httpbin = httpbin.replace(
        "metadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  address: 127.0.0.1\n  labels: {istio: ingressgateway}",
        "metadata: {name: web-gw, namespace: web}\nspec:\n  address: 127.0.0.1\n  labels: {istio: ingressgateway, gateway.networking.k8s.io/gateway-name: web-gw}",
    );
    assert!(httpbin.contains("gateway-name: web-gw"), "the example changed: {httpbin}");
    httpbin
        + r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-the-gateway, namespace: web}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web-gw}]
  action: DENY
  rules: [{to: [{operation: {paths: [/status/418]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-another-gateway, namespace: web}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: other}
  action: DENY
  rules: [{to: [{operation: {paths: [/status/500]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: names-the-gateway-from-default, namespace: default}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web-gw}]
  action: DENY
  rules: [{to: [{operation: {paths: [/status/202]}}]}]
"#
}

#[test]
fn target_refs_attach_to_the_gateways_proxy_only() {
    let yaml = yaml();
    // wasmeshctl validate accepts it (a Gateway API Gateway is a target wasmesh can describe).
    let input = {
        let mut loader = wasmesh_istio::Loader::new(Default::default());
        loader.add_str(&yaml, "target-refs.yaml");
        loader.finish().unwrap_or_else(|f| panic!("{:?}", f.errors))
    };
    let (errors, _) = wasmesh_controller::validate::validate_input(&input);
    assert!(errors.is_empty(), "{errors:#?}");

    let mesh = Mesh::builder()
        .yaml(&yaml)
        .gateway(GATEWAY, &[80])
        .sidecar("default/httpbin-v1", App::new("httpbin", "v1"))
        .start();
    let gw = mesh.gateway_port(GATEWAY, 80);
    let via_gateway = |path: &str| request(gw, "GET", path, &[("host", "httpbin.example.com")], b"").unwrap();
    let r = via_gateway("/status/200");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = via_gateway("/status/418");
    assert_eq!((r.status, r.text().as_str()), (403, "RBAC: access denied"), "targetRefs to this Gateway apply");
    assert_eq!(via_gateway("/status/500").status, 500, "targetRef to another Gateway does not");
    assert_eq!(via_gateway("/status/202").status, 202, "a targetRefs policy of another namespace does not");

    // The sidecar of httpbin (namespace default) ignores every targetRefs policy, as in Istio.
    let sidecar = mesh.inbound_port("default/httpbin-v1");
    let direct = |path: &str| request(sidecar, "GET", path, &[("host", "httpbin.default:8000")], b"").unwrap();
    assert_eq!(direct("/status/418").status, 418);
    assert_eq!(direct("/status/202").status, 202);
}
