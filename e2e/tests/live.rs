//! The live controller in real Envoy: `wasmeshctl serve` watches a directory of Istio YAML and
//! two Envoys started from `wasmeshctl envoy --xds` bootstraps follow every change while traffic
//! flows, without a failed request and without a restart.
//!
//! - `reviews-v1` sidecar: inbound with authz (the first AuthorizationPolicy of the workload
//!   arrives at run time, into the slot that was there from the start).
//! - `sleep` sidecar: outbound with the router; the VirtualService moves `reviews` between subsets,
//!   once to a subset the same change adds to the DestinationRule (a new cluster by CDS, before the
//!   route that names it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use wasmesh_controller::xds::InboundPort;
use wasmesh_e2e::xds::{median_max, node, uptime, Live, Sample, Traffic};
use wasmesh_e2e::{free_port, App, Envoy};

fn mesh(v1_sidecar: u16, v2_app: u16) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{{number: 9080, name: http}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: reviews, version: v1}}, serviceAccount: reviews, ports: {{http: {v1_sidecar}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: reviews, version: v2}}, serviceAccount: reviews, ports: {{http: {v2_app}}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep}}, serviceAccount: sleep}}
"#
    )
}

/// The DestinationRule (subsets v1, v2 and optionally `canary` = v1) and the VirtualService
/// sending every request to `subset`.
fn routes(subset: &str, canary: bool) -> String {
    let extra = if canary { "\n  - {name: canary, labels: {version: v1}}" } else { "" };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: default}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}{extra}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: {subset}}}
"#
    )
}

fn deny(path: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-path, namespace: default}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["{path}"]}}}}]}}]
"#
    )
}

fn status(s: &Sample) -> Option<u16> {
    s.outcome.as_ref().ok().map(|(code, _)| *code)
}

fn upstream(s: &Sample) -> Option<&str> {
    s.outcome.as_ref().ok().filter(|(code, _)| *code == 200).map(|(_, app)| app.as_str())
}

#[test]
fn policies_and_routes_change_under_traffic_without_a_failed_request_or_a_restart() {
    let v1 = App::new("reviews", "v1").start();
    let v2 = App::new("reviews", "v2").start();
    let (inbound, outbound) = (free_port(), free_port());
    let mut live = Live::start(&[("mesh.yaml", &mesh(inbound, v2.port)), ("routes.yaml", &routes("v1", false))]);

    let mut reviews = node("sidecar", "default/reviews-v1", free_port());
    reviews.inbound = vec![InboundPort { port: inbound, app_port: v1.port }];
    let reviews_boot = live.bootstrap(&reviews);
    let mut sleep = node("sidecar", "default/sleep", free_port());
    sleep.outbound_port = Some(outbound);
    let reviews_envoy = Envoy::start("reviews-v1", &reviews_boot);
    let sleep_envoy = Envoy::start("sleep", &live.bootstrap(&sleep));
    let pids = (reviews_envoy.pid(), sleep_envoy.pid());
    let uptimes = (uptime(&reviews_envoy), uptime(&sleep_envoy));
    let started = Instant::now();

    // Steady traffic: /admin straight to the reviews-v1 sidecar (authz), /r through sleep's
    // outbound listener (routing).
    let authz = Traffic::start(inbound, "reviews", "/admin", 200_000);
    let route = Traffic::start(outbound, "reviews:9080", "/r", 200_000);
    let limit = Duration::from_secs(20);
    let t = Instant::now();
    authz.wait_switch(t, |s| status(s) == Some(200), limit);
    route.wait_switch(t, |s| upstream(s) == Some("reviews-v1"), limit);

    let mut decision_times = Vec::new();
    let mut steps: Vec<(Instant, &str, &str)> = Vec::new();
    let mut route_times = Vec::new();
    // 1. The workload's first AuthorizationPolicy: /admin denied.
    let at = live.write("policy.yaml", &deny("/admin"));
    steps.push((at, "reviews-v1", "policy.yaml: first AuthorizationPolicy"));
    decision_times.push(authz.wait_switch(at, |s| status(s) == Some(403), limit));
    // 2. The VirtualService moves reviews to v2.
    let at = live.write("routes.yaml", &routes("v2", false));
    steps.push((at, "sleep", "routes.yaml: v1 -> v2"));
    route_times.push(route.wait_switch(at, |s| upstream(s) == Some("reviews-v2"), limit));
    // 3. The policy now denies another path: /admin allowed again.
    let at = live.write("policy.yaml", &deny("/other"));
    steps.push((at, "reviews-v1", "policy.yaml: deny another path"));
    decision_times.push(authz.wait_switch(at, |s| status(s) == Some(200), limit));
    // 4. A new subset and the route to it in one change: the cluster comes before the route.
    let at = live.write("routes.yaml", &routes("canary", true));
    steps.push((at, "sleep", "routes.yaml: new subset canary"));
    route_times.push(route.wait_switch(at, |s| upstream(s) == Some("reviews-v1"), limit));

    // 5. Invalid YAML is refused with the file, resource and field; the old behaviour stays.
    let generation = live.server().generation();
    let bad = deny("/admin").replace("action: DENY", "action: BLOCK");
    let at = live.write("policy.yaml", &bad);
    let refused = loop {
        let log = wasmesh_controller::xds::recent_log();
        let dir = live.dir().display().to_string();
        if let Some(i) = log.iter().position(|l| l.contains(&dir) && l.contains("change refused")) {
            break log[i..].join("\n");
        }
        assert!(at.elapsed() < limit, "the invalid change was not reported:\n{}", log.join("\n"));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(refused.contains("policy.yaml") && refused.contains("deny-path") && refused.contains("BLOCK"), "{refused}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(live.server().generation(), generation, "an invalid change is not a generation");
    let since: Vec<Sample> = authz.samples().into_iter().filter(|s| s.at > at).collect();
    assert!(since.len() > 20 && since.iter().all(|s| status(s) == Some(200)), "old decision kept: {:?}", since.last());

    // 6. A valid change after the invalid one applies.
    let at = live.write("policy.yaml", &deny("/admin"));
    steps.push((at, "reviews-v1", "policy.yaml: after the invalid change"));
    decision_times.push(authz.wait_switch(at, |s| status(s) == Some(403), limit));
    // 7. Back to v2, the canary subset (and its cluster) removed after the route left it.
    let at = live.write("routes.yaml", &routes("v2", false));
    steps.push((at, "sleep", "routes.yaml: canary -> v2"));
    route_times.push(route.wait_switch(at, |s| upstream(s) == Some("reviews-v2"), limit));
    std::thread::sleep(Duration::from_millis(500));

    let authz_samples = authz.stop();
    let route_samples = route.stop();
    // Every answer is one of the expected ones: no 5xx, no reset, no 404 for a missing cluster.
    for s in &authz_samples {
        let ok = matches!(&s.outcome, Ok((200, app)) if app == "reviews-v1") || status(s) == Some(403);
        assert!(ok, "authz traffic: unexpected answer {:?}", s.outcome);
    }
    for s in &route_samples {
        assert!(
            matches!(upstream(s), Some("reviews-v1" | "reviews-v2")),
            "route traffic: unexpected answer {:?}",
            s.outcome
        );
    }

    // ECDS as Envoy holds it: the policy is in the configuration of the listener's one-pass
    // slot (the default layout: one resource for the chain, its authz phase inside).
    let dump = reviews_envoy.admin("/config_dump");
    assert!(dump.contains("type.googleapis.com/envoy.admin.v3.EcdsConfigDump"), "no ECDS in the config dump");
    assert!(
        dump.contains(&format!("inbound_{inbound}/wasmesh.chain")) && dump.contains("deny-path"),
        "chain slot config missing"
    );
    assert!(!dump.contains(&format!("inbound_{inbound}/wasmesh.authz\"")), "no per-filter authz slot in one pass");
    let cds = sleep_envoy.admin("/config_dump?resource=dynamic_active_clusters");
    assert!(cds.contains("outbound|9080|v2|reviews.default.svc.cluster.local"), "CDS clusters missing");
    assert!(!cds.contains("outbound|9080|canary|"), "the removed subset's cluster is gone");

    // Clusters are added and removed, never replaced: an unchanged cluster is not resent (Envoy
    // would rebuild it and drain its connections).
    for envoy in [&reviews_envoy, &sleep_envoy] {
        assert_eq!(envoy.stat("cluster_manager.cluster_modified"), Some(0), "{}", envoy.name);
    }
    assert!(sleep_envoy.stat("cluster_manager.cluster_removed").unwrap_or(0) >= 1, "the canary cluster was removed");

    // The same processes all along, and they never restarted.
    assert_eq!((reviews_envoy.pid(), sleep_envoy.pid()), pids);
    let elapsed = started.elapsed().as_secs();
    for (envoy, before) in [(&reviews_envoy, uptimes.0), (&sleep_envoy, uptimes.1)] {
        let now = uptime(envoy);
        assert!(now + 1 >= before + elapsed, "{}: uptime {now}s after {elapsed}s (was {before}s)", envoy.name);
    }

    // Where the time goes (server log): debounce and load, push and Envoy's acknowledgement.
    for (at, node, what) in &steps {
        let (accepted, applied) = live.timeline(*at, node);
        let ms = |v: Option<u64>| v.map(|v| format!("{v} ms")).unwrap_or_else(|| "?".into());
        println!("{what}: accepted after {}, ECDS applied by {node} after {}", ms(accepted), ms(applied));
    }
    let gap = |samples: &[Sample]| samples.windows(2).map(|w| w[1].at - w[0].at).max().unwrap_or_default().as_millis();
    println!("longest wait between two answers: authz {} ms, route {} ms", gap(&authz_samples), gap(&route_samples));
    let (dm, dx) = median_max(&decision_times);
    let (rm, rx) = median_max(&route_times);
    println!(
        "file change -> new authz decision: median {} ms, max {} ms over {} changes; file change -> new route: median {} ms, \
         max {} ms over {} changes; {} + {} requests, none failed",
        dm.as_millis(),
        dx.as_millis(),
        decision_times.len(),
        rm.as_millis(),
        rx.as_millis(),
        route_times.len(),
        authz_samples.len(),
        route_samples.len()
    );
    for d in decision_times.iter().chain(&route_times) {
        assert!(*d < Duration::from_secs(5), "a change took {d:?}");
    }

    // 8. The controller restarts, and the YAML changed while it was down: the Envoys reconnect
    // (same processes) and get the current state.
    live.stop_server();
    let at = live.write("policy.yaml", &deny("/other"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        wasmesh_e2e::xds::get_complete(inbound, "reviews", "/admin").map(|r| r.0),
        Ok(403),
        "no server: last config kept"
    );
    live.start_server();
    let mut reconnect = None;
    while at.elapsed() < Duration::from_secs(60) {
        if wasmesh_e2e::xds::get_complete(inbound, "reviews", "/admin").map(|r| r.0) == Ok(200) {
            reconnect = Some(at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reconnect.is_some(), "the reconnected Envoy did not get the change made while the server was down");
    let reconnect = reconnect.unwrap_or_default();
    println!(
        "controller restarted: the change made while it was down applied {} ms after the write",
        reconnect.as_millis()
    );
    assert_eq!(reviews_envoy.pid(), pids.0);
    live.write("policy.yaml", &deny("/admin"));
    let t = Instant::now();
    while wasmesh_e2e::xds::get_complete(inbound, "reviews", "/admin").map(|r| r.0) != Ok(403) {
        assert!(t.elapsed() < limit, "the restarted server does not push changes");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 9. A restarted Envoy, from the bootstrap written before any policy existed, gets the
    // current state: /admin denied, on its first request.
    drop(reviews_envoy);
    let again = Envoy::start("reviews-v1-again", &reviews_boot);
    let r = wasmesh_e2e::http::get(inbound, "reviews", "/admin", &[]);
    assert_eq!(r.status, 403, "the reconnected Envoy enforces the current policy");
    let r = wasmesh_e2e::http::get(inbound, "reviews", "/r", &[]);
    assert_eq!((r.status, r.header("x-app")), (200, Some("reviews-v1")));
    drop(again);
    drop((v1, v2, sleep_envoy));
}

/// A VirtualService `fault` added while Envoy runs is carried out, and removed again: served
/// live, Envoy's fault filter follows the router from the start (the filter chain is fixed when
/// Envoy starts), so the router's `x-envoy-fault-*` headers always have a filter to act on.
/// Before, the fault filter was only written into a bootstrap whose first YAML had faults: the
/// live edit was accepted and ignored.
#[test]
fn a_fault_added_live_is_carried_out() {
    let v1 = App::new("reviews", "v1").start();
    let v2 = App::new("reviews", "v2").start();
    let outbound = free_port();
    let plain = routes("v1", false);
    let with_fault = |fault: &str| plain.replace("  - route:", &format!("  - fault: {fault}\n    route:"));
    let live = Live::start(&[("mesh.yaml", &mesh(v1.port, v2.port)), ("routes.yaml", &plain)]);
    let mut sleep = node("sidecar", "default/sleep", free_port());
    sleep.outbound_port = Some(outbound);
    let envoy = Envoy::start("sleep-fault", &live.bootstrap(&sleep));
    let pid = envoy.pid();
    let get = || {
        let t = Instant::now();
        (wasmesh_e2e::xds::get_complete(outbound, "reviews:9080", "/r"), t.elapsed())
    };
    let limit = Duration::from_secs(20);
    type Answer = Result<(u16, String), String>;
    let wait = |what: &str, ok: &dyn Fn(&Answer, Duration) -> bool| {
        let t = Instant::now();
        loop {
            let (r, took) = get();
            if ok(&r, took) {
                return t.elapsed();
            }
            assert!(t.elapsed() < limit, "{what}: still {r:?} after {took:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("first route", &|r, _| matches!(r, Ok((200, app)) if app == "reviews-v1"));

    // An abort, then a delay, each added by a live edit, then removed.
    live.write("routes.yaml", &with_fault("{abort: {httpStatus: 418, percentage: {value: 100}}}"));
    let abort = wait("live abort", &|r, _| matches!(r, Ok((418, _))));
    live.write("routes.yaml", &with_fault("{delay: {fixedDelay: 1s, percentage: {value: 100}}}"));
    let delay = wait("live delay", &|r, took| matches!(r, Ok((200, _))) && took >= Duration::from_millis(950));
    for _ in 0..3 {
        let (r, took) = get();
        assert!(matches!(&r, Ok((200, app)) if app == "reviews-v1"), "{r:?}");
        assert!(took >= Duration::from_millis(950) && took < Duration::from_secs(3), "delayed by the fault: {took:?}");
    }
    live.write("routes.yaml", &plain);
    wait("fault removed", &|r, took| matches!(r, Ok((200, _))) && took < Duration::from_millis(500));
    assert_eq!(envoy.pid(), pid, "no restart");
    // Envoy's fault filter did it (its own counters), not the router answering.
    for stat in ["aborts_injected", "delays_injected"] {
        let n = envoy.stat(&format!("http.outbound_{outbound}.fault.{stat}")).unwrap_or(0);
        assert!(n >= 1, "{stat}: {n}");
    }
    println!("live fault: abort applied after {} ms, delay after {} ms", abort.as_millis(), delay.as_millis());
    drop((v1, v2, envoy));
}

/// `serve --http`: the built modules with their sha256 (checked with coreutils' sha256sum), a
/// listing, and nothing outside the module directory.
#[test]
fn serve_hands_out_the_wasm_modules_with_their_sha256() {
    let live = Live::start(&[("mesh.yaml", &mesh(1, 2))]);
    let port = live.server().http_addr.map(|a| a.port()).unwrap_or_default();
    let file = wasmesh_e2e::paths::wasm("authz");
    let sum = std::process::Command::new("sha256sum")
        .arg(&file)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string());
    let sum = sum.unwrap_or_default().split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(sum.len(), 64, "sha256sum of {}", file.display());
    let r = wasmesh_e2e::http::get(port, "localhost", "/wasm/authz.wasm", &[]);
    assert_eq!(
        (r.status, r.header("x-wasm-sha256"), r.header("content-type")),
        (200, Some(sum.as_str()), Some("application/wasm"))
    );
    assert_eq!(r.body, std::fs::read(&file).unwrap_or_default());
    let list = wasmesh_e2e::http::get(port, "localhost", "/wasm/", &[]).json();
    let authz = list["modules"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "authz.wasm"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(authz["sha256"], sum.as_str(), "{list}");
    for bad in ["/wasm/../Cargo.toml", "/wasm/..%2fauthz.wasm", "/wasm/nope.wasm", "/other"] {
        assert_eq!(wasmesh_e2e::http::get(port, "localhost", bad, &[]).status, 404, "{bad}");
    }
    assert_eq!(wasmesh_e2e::request(port, "POST", "/wasm/authz.wasm", &[], b"x").map(|r| r.status).unwrap_or(0), 405);
}

/// `serve` does not start on invalid YAML: every error, with file, resource and field.
#[test]
fn serve_refuses_to_start_on_invalid_yaml() {
    let dir = wasmesh_e2e::paths::TempDir::new("live-invalid");
    std::fs::write(dir.path().join("mesh.yaml"), mesh(1, 2)).unwrap_or_default();
    std::fs::write(dir.path().join("policy.yaml"), deny("/admin").replace("paths:", "pathz:")).unwrap_or_default();
    let opts = wasmesh_controller::xds::ServeOptions {
        watch: dir.path().to_path_buf(),
        listen: ([127, 0, 0, 1], 0).into(),
        http: None,
        wasm_dir: wasmesh_e2e::paths::wasm_dir(),
        poll: Duration::from_millis(100),
    };
    let e = wasmesh_controller::xds::Server::start(&opts).err().unwrap_or_default();
    assert!(
        e.contains("policy.yaml") && e.contains("AuthorizationPolicy default/deny-path") && e.contains("pathz"),
        "{e}"
    );
    assert!(e.contains("nothing served"), "{e}");
}
