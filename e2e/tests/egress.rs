//! Egress and the VirtualService set in real Envoy, with Istio's own YAML: "Accessing External
//! Services" (ALLOW_ANY → PassthroughCluster; REGISTRY_ONLY → 502 counted as
//! `destination_service_name="BlackHoleCluster"` on the sidecar's Prometheus endpoint, the seed's
//! "monitoring blocked external service traffic"; then a ServiceEntry opens the external host),
//! "Egress Gateways" (HTTP through a dedicated egress proxy), and the delegate example of the
//! VirtualService reference on an ingress gateway. The "external" service is a loopback app:
//! its ServiceEntries keep the task's hosts and add an `endpoints` entry at `localhost`.
//! Two meshes, four Envoys (REGISTRY_ONLY: one sidecar; ALLOW_ANY: a sidecar, an egress and an
//! ingress gateway).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use wasmesh_controller::MeshConfig;
use wasmesh_e2e::http::get;
use wasmesh_e2e::stats::scrape;
use wasmesh_e2e::{free_port, App, Envoy, Mesh};

fn requests_to(envoy: &Envoy, service_name: &str, code: &str) -> f64 {
    scrape(envoy, "istio_requests_total")
        .into_iter()
        .filter(|(l, _)| {
            l.get("destination_service_name").map(String::as_str) == Some(service_name)
                && l.get("response_code").map(String::as_str) == Some(code)
                && l.get("reporter").map(String::as_str) == Some("source")
        })
        .map(|(_, v)| v)
        .sum()
}

fn wait_requests(envoy: &Envoy, service_name: &str, code: &str, expected: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = requests_to(envoy, service_name, code);
        if n >= expected {
            assert_eq!(n, expected, "istio_requests_total for {service_name} {code}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{n} of {expected} requests to {service_name} counted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

const SLEEP: &str = r#"
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}
"#;

/// "Accessing External Services", ServiceEntry `httpbin-ext` as the task writes it, plus the
/// loopback endpoint standing in for httpbin.org.
fn httpbin_ext(port: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints:
  - address: localhost
    ports: {{http: {port}}}
"#
    )
}

#[test]
fn accessing_external_services_registry_only() {
    let external = App::new("httpbin", "external").start();
    let ext_host = format!("localhost:{}", external.port);

    // ALLOW_ANY (Istio's default) is checked in the egress gateway's mesh below. REGISTRY_ONLY:
    // a request for an unknown host is blocked with 502 and counted as BlackHoleCluster.
    let mesh_config: MeshConfig = serde_json::from_value(serde_json::json!({
        "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}
    }))
    .unwrap();
    let yaml = format!("{SLEEP}\n---\n{}", httpbin_ext(external.port));
    let blocked = Mesh::builder().yaml(&yaml).keep_ports().mesh_config(mesh_config).client("default/sleep").start();
    let out = blocked.outbound_port("default/sleep");
    let served = external.served();
    for _ in 0..3 {
        let r = get(out, &ext_host, "/headers", &[]);
        assert_eq!(r.status, 502, "{}", r.text());
    }
    assert_eq!(external.served(), served, "a blocked request never reaches the external service");
    let envoy = blocked.envoy("default/sleep");
    wait_requests(envoy, "BlackHoleCluster", "502", 3.0);
    let series = scrape(envoy, "istio_requests_total");
    let (labels, _) = series
        .iter()
        .find(|(l, _)| l.get("destination_service_name").map(String::as_str) == Some("BlackHoleCluster"))
        .unwrap();
    assert_eq!(labels.get("destination_service").map(String::as_str), Some("BlackHoleCluster"), "{labels:?}");

    // The task's ServiceEntry opens httpbin.org (port 80, DNS) while everything else stays blocked.
    let r = get(out, "httpbin.org", "/headers", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "external");
    assert_eq!(get(out, "www.google.com", "/", &[]).status, 502);
    wait_requests(envoy, "BlackHoleCluster", "502", 4.0);
}

/// Istio's "Egress Gateways" task (HTTP), its ServiceEntry, Gateway, DestinationRule and
/// VirtualService as the task applies them; edition.cnn.com is a loopback app, the egress gateway
/// service an entry for the gateway Envoy. The ingress gateway of the same mesh serves Istio's
/// delegate example.
#[test]
fn egress_gateway_and_delegate_virtual_services() {
    let cnn = App::new("cnn", "external").start();
    let productpage_v1 = App::new("productpage", "v1").start();
    let productpage = App::new("productpage", "any").start();
    let reviews = App::new("reviews", "v1").start();
    let egress_port = free_port();
    let yaml = format!(
        r#"
{SLEEP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: cnn
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  endpoints:
  - address: localhost
    ports: {{http-port: {cnn}}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: istio-egressgateway
spec:
  selector:
    istio: egressgateway
  servers:
  - port:
      number: 80
      name: http
      protocol: HTTP
    hosts:
    - edition.cnn.com
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: egressgateway-for-cnn
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets:
  - name: cnn
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: direct-cnn-through-egress-gateway
spec:
  hosts:
  - edition.cnn.com
  gateways:
  - istio-egressgateway
  - mesh
  http:
  - match:
    - gateways:
      - mesh
      port: 80
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: cnn
        port:
          number: 80
      weight: 100
  - match:
    - gateways:
      - istio-egressgateway
      port: 80
    route:
    - destination:
        host: edition.cnn.com
        port:
          number: 80
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  hosts: [istio-egressgateway.istio-system.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{http: {egress_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{istio: egressgateway}}, serviceAccount: istio-egressgateway}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: istio-ingressgateway, namespace: istio-system}}
spec: {{address: 127.0.0.1, labels: {{istio: ingressgateway}}, serviceAccount: istio-ingressgateway}}
{delegate}
{delegate_services}
"#,
        cnn = cnn.port,
        delegate = DELEGATE_EXAMPLE,
        delegate_services = [
            ("productpage-v1", "nsa", productpage_v1.port),
            ("productpage", "nsa", productpage.port),
            ("reviews", "nsb", reviews.port)
        ]
        .iter()
        .map(|(name, ns, port)| format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}.{ns}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
        ))
        .collect::<String>(),
    );
    let allow_any: MeshConfig =
        serde_json::from_value(serde_json::json!({"outboundTrafficPolicy": {"mode": "ALLOW_ANY"}})).unwrap();
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .keep_ports()
        .mesh_config(allow_any)
        .client("default/sleep")
        .gateway_bound("istio-system/istio-egressgateway", &[(80, egress_port)])
        .gateway("istio-system/istio-ingressgateway", &[80])
        .start();

    // "Accessing External Services" with ALLOW_ANY (Istio's default; written out here, see the
    // README): a host the mesh does not
    // know passes through to where the request names, counted as PassthroughCluster.
    let external = App::new("httpbin", "external").start();
    let out = mesh.outbound_port("default/sleep");
    let r = get(out, &format!("localhost:{}", external.port), "/headers", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "external");
    wait_requests(mesh.envoy("default/sleep"), "PassthroughCluster", "200", 1.0);

    // Egress: sleep → egress gateway → edition.cnn.com, as the task's `curl -sSL -o /dev/null
    // -D - http://edition.cnn.com/politics` shows; the gateway's own stats count the request.
    for _ in 0..2 {
        let r = get(out, "edition.cnn.com", "/politics", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["service"], "cnn");
        assert_eq!(r.json()["path"], "/politics");
    }
    let egress = mesh.envoy("istio-system/istio-egressgateway");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let gateway_series = scrape(egress, "istio_requests_total");
        let through: f64 = gateway_series
            .iter()
            .filter(|(l, _)| l.get("destination_service").map(String::as_str) == Some("edition.cnn.com"))
            .map(|(_, v)| v)
            .sum();
        if through >= 2.0 {
            assert_eq!(through, 2.0, "{gateway_series:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{gateway_series:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let sidecar_series = scrape(mesh.envoy("default/sleep"), "istio_requests_total");
    assert!(
        sidecar_series.iter().any(|(l, _)| l.get("destination_service").map(String::as_str)
            == Some("istio-egressgateway.istio-system.svc.cluster.local")),
        "the sidecar sent the request to the egress gateway: {sidecar_series:?}"
    );
    // The egress gateway serves only the host its Gateway names.
    let egress_direct = mesh.gateway_port("istio-system/istio-egressgateway", 80);
    assert_eq!(get(egress_direct, "edition.cnn.com", "/x", &[]).status, 200);
    assert_eq!(get(egress_direct, "other.example.com", "/x", &[]).status, 404);

    // Istio's delegate example on the ingress gateway.
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let served_by = |path: &str| -> (u16, String) {
        let r = get(gw, "bookinfo.com", path, &[]);
        let who = if r.status == 200 {
            format!("{}/{}", r.json()["service"].as_str().unwrap(), r.json()["version"].as_str().unwrap())
        } else {
            String::new()
        };
        (r.status, who)
    };
    assert_eq!(served_by("/productpage/v1/item"), (200, "productpage/v1".to_string()));
    assert_eq!(served_by("/productpage"), (200, "productpage/any".to_string()));
    assert_eq!(served_by("/reviews/1"), (200, "reviews/v1".to_string()));
    assert_eq!(served_by("/ratings").0, 404);
}

/// Istio's delegate example (VirtualService reference, `Delegate`), bound to `mygateway`.
const DELEGATE_EXAMPLE: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bookinfo.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
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
       namespace: nsa
  - match:
    - uri:
        prefix: "/reviews"
    delegate:
        name: reviews
        namespace: nsb
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
  namespace: nsa
spec:
  http:
  - match:
     - uri:
        prefix: "/productpage/v1/"
    route:
    - destination:
        host: productpage-v1.nsa.svc.cluster.local
  - route:
    - destination:
        host: productpage.nsa.svc.cluster.local
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: nsb
spec:
  http:
  - route:
    - destination:
        host: reviews.nsb.svc.cluster.local
"#;
