//! VirtualService route actions in real Envoy: redirect, directResponse, rewrite, header
//! operations and fault injection, all on one sidecar (its outbound listener calls its own app
//! through its inbound listener), with one worker so that a delayed request shares it with the
//! others. Istio's "Fault injection" task runs on bookinfo with the task's own YAML.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use wasmesh_e2e::http::{get, request};
use wasmesh_e2e::{bookinfo, paths, App, Mesh};

const ECHO: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8000, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: echo-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: 19291}
  labels: {app: echo, version: v1}
  serviceAccount: echo
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo]
  http:
  - name: redirect-path
    match: [{uri: {prefix: /redirect/path}}]
    redirect: {uri: /new}
  - name: redirect-all
    match: [{uri: {exact: /redirect/all}}]
    redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local, redirectCode: 308}
  - name: redirect-scheme
    match: [{uri: {prefix: /redirect/scheme}}]
    redirect: {scheme: https, port: 8443, redirectCode: 302}
  - name: redirect-https
    match: [{uri: {prefix: /redirect/https}}]
    redirect: {scheme: https}
  - name: redirect-derive
    match: [{uri: {prefix: /redirect/derive}}]
    redirect: {authority: x.example, derivePort: FROM_REQUEST_PORT, redirectCode: 307}
  - name: redirect-prefix
    match: [{uri: {prefix: /redirect/prefix}}]
    redirect: {uri: "%PREFIX()%/moved", redirectCode: 303}
  - name: direct-string
    match: [{uri: {prefix: /direct/string}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
  - name: direct-bytes
    match: [{uri: {prefix: /direct/bytes}}]
    directResponse: {status: 200, body: {bytes: "aGVsbG8gYnl0ZXM="}}
  - name: direct-empty
    match: [{uri: {prefix: /direct/empty}}]
    directResponse: {status: 418}
  - name: rewrite-prefix
    match: [{uri: {prefix: /rewrite/prefix}}]
    rewrite: {uri: /v2}
    route: [{destination: {host: echo}}]
  - name: rewrite-exact
    match: [{uri: {exact: /rewrite/exact}}]
    rewrite: {uri: /whole}
    route: [{destination: {host: echo}}]
  - name: rewrite-regex
    match: [{uri: {prefix: /service/}}]
    rewrite:
      uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "/customprefix\\2/\\1"}
    route: [{destination: {host: echo}}]
  - name: rewrite-authority
    match: [{uri: {prefix: /authority}}]
    rewrite: {authority: new.example}
    route: [{destination: {host: echo}}]
  - name: headers
    match: [{uri: {prefix: /headers}}]
    headers:
      request:
        set: {x-route-set: route, x-both: route}
        add: {x-added: route}
        remove: [x-remove-me]
      response:
        set: {x-resp-route: route, x-resp-both: route}
        add: {x-resp-added: route}
        remove: [x-resp-remove]
    route:
    - destination: {host: echo, subset: v1}
      headers:
        request: {set: {x-dest: dest, x-both: dest}}
        response: {set: {x-resp-dest: dest, x-resp-both: dest}}
  - name: fault-delay
    match: [{uri: {prefix: /fault/delay}}]
    fault: {delay: {fixedDelay: 1500ms, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - name: fault-abort
    match: [{uri: {prefix: /fault/abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - name: fault-unset
    match: [{uri: {prefix: /fault/unset}}]
    fault: {abort: {httpStatus: 503}, delay: {fixedDelay: 5s}}
    route: [{destination: {host: echo}}]
  - name: fault-grpc
    match: [{uri: {prefix: /fault/grpc}}]
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
    route: [{destination: {host: echo}}]
  - name: fault-never
    match: [{uri: {prefix: /fault/never}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 0}}, delay: {fixedDelay: 5s, percentage: {value: 0}}}
    route: [{destination: {host: echo}}]
  - name: fault-half
    match: [{uri: {prefix: /fault/half}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 50}}}
    route: [{destination: {host: echo}}]
  - route: [{destination: {host: echo}}]
"#;

const HOST: &str = "echo:8000";

fn echo_mesh() -> Mesh {
    Mesh::builder().yaml(ECHO).concurrency(1).sidecar("default/echo-v1", App::new("echo", "v1")).start()
}

#[test]
fn redirects_direct_responses_rewrites_headers_and_faults() {
    let mesh = echo_mesh();
    let out = mesh.outbound_port("default/echo-v1");
    let app = mesh.app("default/echo-v1");

    // --- redirect: Envoy's RedirectAction as istiod writes it (Location, status, no body).
    let r = get(out, HOST, "/redirect/path/x?q=1", &[]);
    assert_eq!(r.status, 301, "redirectCode defaults to 301");
    assert_eq!(r.header("location"), Some("http://echo:8000/new?q=1"), "uri replaces the path, the query stays");
    assert!(r.body.is_empty() && r.header("content-type").is_none(), "{:?}", r.headers);
    let r = get(out, HOST, "/redirect/all", &[]);
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("http://newratings.default.svc.cluster.local/v1/bookRatings"));
    let r = get(out, HOST, "/redirect/scheme/p", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://echo:8443/redirect/scheme/p"));
    // A new scheme drops the old scheme's default port only (as Envoy 1.40 does).
    assert_eq!(get(out, "echo:80", "/redirect/https", &[]).header("location"), Some("https://echo/redirect/https"));
    assert_eq!(get(out, HOST, "/redirect/https", &[]).header("location"), Some("https://echo:8000/redirect/https"));
    let r = get(out, HOST, "/redirect/derive", &[]);
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("http://x.example:8000/redirect/derive"), "FROM_REQUEST_PORT");
    let r = get(out, HOST, "/redirect/prefix/a/b?z", &[]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("http://echo:8000/moved/a/b?z"), "%PREFIX()% replaces the matched prefix");

    // --- directResponse: status, body, Envoy's local-reply content type.
    let r = get(out, HOST, "/direct/string", &[]);
    assert_eq!((r.status, r.text().as_str()), (503, "down for maintenance"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = get(out, HOST, "/direct/bytes", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "hello bytes"));
    let r = get(out, HOST, "/direct/empty", &[]);
    assert_eq!(r.status, 418);
    assert!(r.body.is_empty() && r.header("content-type").is_none(), "{:?}", r.headers);
    assert_eq!(app.served(), 0, "redirects and direct responses never reach the app");

    // --- rewrite: what the app receives.
    let seen = |path: &str, headers: &[(&str, &str)]| {
        let r = get(out, HOST, path, headers);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    };
    let r = seen("/rewrite/prefix/a?x=1", &[]).json();
    assert_eq!(r["path"], "/v2/a?x=1", "{r}");
    assert_eq!(r["headers"]["x-envoy-original-path"], "/rewrite/prefix/a?x=1");
    assert_eq!(seen("/rewrite/exact?y", &[]).json()["path"], "/whole?y");
    assert_eq!(seen("/service/foo/v1/api?q", &[]).json()["path"], "/customprefix/v1/api/foo?q");
    let r = seen("/authority", &[]).json();
    assert_eq!(r["headers"]["host"], "new.example", "{r}");
    assert_eq!(r["headers"]["x-envoy-original-host"], HOST, "as Envoy's host rewrite: {r}");
    assert_eq!(seen("/other", &[]).json()["headers"]["host"], HOST, "no rewrite elsewhere");

    // --- headers: per destination first, then per route (the route's set wins).
    let r = seen("/headers", &[("x-remove-me", "1"), ("x-added", "client"), ("x-route-set", "client")]);
    let h = &r.json()["headers"];
    assert_eq!(h["x-route-set"], "route", "set overwrites: {h}");
    assert_eq!(h["x-added"], "client,route", "add appends: {h}");
    assert!(h.get("x-remove-me").is_none(), "{h}");
    assert_eq!(h["x-dest"], "dest");
    assert_eq!(h["x-both"], "route", "route-level set applied after the destination's: {h}");
    assert_eq!(r.header("x-resp-route"), Some("route"));
    assert_eq!(r.header("x-resp-dest"), Some("dest"));
    assert_eq!(r.header("x-resp-both"), Some("route"));
    assert_eq!(r.header("x-resp-added"), Some("route"));
    let r = seen("/other", &[]);
    assert!(r.header("x-resp-route").is_none(), "only the route's responses: {:?}", r.headers);

    // --- fault: abort at 100%, with Envoy's fault-filter reply.
    for _ in 0..3 {
        let r = get(out, HOST, "/fault/abort", &[]);
        assert_eq!((r.status, r.text().as_str()), (503, "fault filter abort"));
    }
    // gRPC abort: a trailers-only gRPC answer.
    let r = request(
        out,
        "POST",
        "/fault/grpc",
        &[("host", HOST), ("content-type", "application/grpc"), ("te", "trailers")],
        b"",
    )
    .unwrap();
    assert_eq!(r.header("grpc-status"), Some("14"), "{r:?}");
    // 0% never, nor no percentage (istiod leaves Envoy's percentage unset: 0%); 50% about half;
    // a client cannot inject a fault anywhere.
    let forged = [("x-envoy-fault-abort-request", "500"), ("x-envoy-fault-delay-request", "10000")];
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(get(out, HOST, "/fault/never", &forged).status, 200);
        assert_eq!(get(out, HOST, "/fault/unset", &forged).status, 200);
        assert_eq!(get(out, HOST, "/other", &forged).status, 200);
        assert!(started.elapsed() < Duration::from_millis(8000), "a delay was injected");
    }
    let n = 60;
    let aborted = (0..n).filter(|_| get(out, HOST, "/fault/half", &[]).status == 500).count();
    // Binomial(60, 0.5): 15..=45 is beyond 7 standard deviations.
    assert!((15..=45).contains(&aborted), "50% abort: {aborted} of {n}");
    let served_before = app.served();

    // Delay: measured, and a request sent meanwhile on the same (only) worker is not held.
    let delayed = std::thread::spawn(move || {
        let started = Instant::now();
        let r = get(out, HOST, "/fault/delay", &[]);
        (r.status, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(out, HOST, "/other", &[]).status, 200);
    let concurrent = started.elapsed();
    let (status, took) = delayed.join().unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_millis(4000), "delay took {took:?}");
    assert!(concurrent < Duration::from_millis(500), "a concurrent request waited {concurrent:?}");
    assert_eq!(app.served(), served_before + 2, "the delayed request then reaches the app");

    // Istio's response flags: FI for aborts, DI for delays, in the source metrics.
    let envoy = mesh.envoy("default/echo-v1");
    let prom = envoy.admin("/stats/prometheus");
    let series = |code: &str, flags: &str| {
        prom.lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains(&format!("response_code=\"{code}\""))
                && l.contains(&format!("response_flags=\"{flags}\""))
        })
    };
    assert!(series("503", "FI"), "{prom}");
    assert!(series("200", "DI"), "{prom}");
    assert!(!series("500", "-"), "no 500 from a forged header");
}

#[test]
fn a_forged_cluster_header_on_a_404_does_not_name_a_destination() {
    // The service without the VirtualService: plain routing, which any router build accepts.
    let service = ECHO
        .split("kind: VirtualService")
        .next()
        .unwrap()
        .trim_end()
        .trim_end_matches("apiVersion: networking.istio.io/v1");
    let mesh = Mesh::builder().yaml(service).concurrency(1).sidecar("default/echo-v1", App::new("echo", "v1")).start();
    let out = mesh.outbound_port("default/echo-v1");
    let forged = "outbound|8000||echo.default.svc.cluster.local";
    for _ in 0..3 {
        assert_eq!(get(out, "nope.example.com", "/", &[("x-wasmesh-cluster", forged)]).status, 404);
    }
    let prom = mesh.envoy("default/echo-v1").admin("/stats/prometheus");
    let lines: Vec<&str> = prom
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"404\""))
        .collect();
    assert!(!lines.is_empty(), "{prom}");
    for l in lines {
        assert!(l.contains("destination_service=\"unknown\""), "{l}");
    }
}

/// Istio's "Fault injection" task with its own YAML: for user jason, ratings is delayed by 7s
/// (productpage waits; other users do not) and then aborted with 500.
#[test]
fn istio_fault_injection_task() {
    let dir = paths::repo_root().join("examples/bookinfo");
    let mut yaml = String::new();
    for f in ["services.yaml", "workloads.yaml", "destination-rules.yaml", "gateway.yaml"] {
        yaml.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
        yaml.push_str("\n---\n");
    }
    // samples/bookinfo/networking/virtual-service-all-v1.yaml (reviews, ratings, details,
    // productpage to v1) and virtual-service-reviews-test-v2.yaml (jason → reviews v2).
    yaml.push_str(TASK_ROUTING);
    let delay = format!("{yaml}\n---\n{RATINGS_TEST_DELAY}");
    let mesh =
        bookinfo::workloads(Mesh::builder().yaml(&delay).gateway("istio-system/istio-ingressgateway", &[80])).start();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let started = Instant::now();
    let r = get(gw, "bookinfo.example.com", "/productpage", &[]);
    assert_eq!(r.status, 200);
    assert!(started.elapsed() < Duration::from_secs(3), "other users are not delayed");
    let started = Instant::now();
    let r = get(gw, "bookinfo.example.com", "/productpage", &[("end-user", "jason")]);
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(took >= Duration::from_secs(7), "jason's ratings call is delayed 7s: {took:?}");
    drop(mesh);

    let abort = format!("{yaml}\n---\n{RATINGS_TEST_ABORT}");
    let mesh =
        bookinfo::workloads(Mesh::builder().yaml(&abort).gateway("istio-system/istio-ingressgateway", &[80])).start();
    let gw = mesh.gateway_port("istio-system/istio-ingressgateway", 80);
    let page = get(gw, "bookinfo.example.com", "/productpage", &[("end-user", "jason")]).json();
    let reviews = page["calls"].as_array().unwrap().iter().find(|c| c["service"] == "reviews").unwrap().clone();
    assert_eq!(reviews["body"]["version"], "v2", "{page}");
    let ratings = &reviews["body"]["calls"][0];
    assert_eq!(ratings["status"], 500, "ratings service is unavailable for jason: {ratings}");
    assert_eq!(ratings["body"], "fault filter abort");
    let page = get(gw, "bookinfo.example.com", "/productpage", &[]).json();
    let reviews = page["calls"].as_array().unwrap().iter().find(|c| c["service"] == "reviews").unwrap().clone();
    assert_eq!(reviews["body"]["version"], "v1", "others see reviews v1 (no ratings call): {page}");
}

const TASK_ROUTING: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: productpage
spec:
  hosts:
  - productpage
  http:
  - route:
    - destination:
        host: productpage
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: details
spec:
  hosts:
  - details
  http:
  - route:
    - destination:
        host: details
        subset: v1
"#;

const RATINGS_TEST_DELAY: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      delay:
        percentage:
          value: 100.0
        fixedDelay: 7s
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;

const RATINGS_TEST_ABORT: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 500
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"#;
