//! DestinationRule traffic policy and istiod's defaults in real Envoy, as `wasmeshctl envoy`
//! generates them: consistent hashing, outlier ejection, Istio's "Circuit breaking" task with its
//! own DestinationRule (503 with flag UO), WebSocket upgrades, an HTTP/2 client in front of an
//! HTTP/1.1 app. Two Envoys: a client sidecar (`sleep`, its outbound listener reaches every
//! service) and the sidecar of `web` (an HTTP/1.1 app behind an `http` port).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;
use wasmesh_e2e::http::get;
use wasmesh_e2e::{free_port, App, Mesh};

/// A server answering every request with 500 (an upstream to eject).
fn failing_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    let mut headers = 0;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        headers += 1;
                        if line == "\r\n" && headers > 1 {
                            break;
                        }
                    }
                    let body = b"broken";
                    let head = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\n\r\n", body.len());
                    if w.write_all(head.as_bytes()).and_then(|_| w.write_all(body)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A WebSocket server: answers the upgrade with 101, then echoes every byte.
fn websocket_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    upgrade |= line.to_ascii_lowercase().starts_with("upgrade: websocket");
                    if line == "\r\n" {
                        break;
                    }
                }
                let head = if upgrade {
                    "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                } else {
                    "HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n"
                };
                if w.write_all(head.as_bytes()).is_err() || !upgrade {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 || w.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn service(name: &str, endpoints: &[(u16, &str)]) -> String {
    let eps: Vec<(u16, &str, &str)> = endpoints.iter().map(|(p, v)| (*p, *v, "")).collect();
    service_in(name, &eps)
}

/// A service whose endpoints have a locality (`region/zone`, or "" for none).
fn service_in(name: &str, endpoints: &[(u16, &str, &str)]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(p, v, l)| {
            format!("{{address: 127.0.0.1, ports: {{http: {p}}}, labels: {{version: {v}}}, locality: '{l}'}}")
        })
        .collect();
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8000, name: http}}]\n  endpoints: [{}]\n",
        eps.join(", ")
    )
}

fn rule(name: &str, traffic_policy: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: {name}\n  trafficPolicy: {traffic_policy}\n"
    )
}

/// Istio's "Circuit breaking" task, samples/httpbin DestinationRule, as the task applies it.
const CIRCUIT_BREAKING_TASK: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"#;

fn version(r: &wasmesh_e2e::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["version"].as_str().unwrap().to_string()
}

#[test]
fn destination_rule_traffic_policy_and_istio_defaults_in_envoy() {
    let apps: Vec<_> = ["v1", "v2", "v3"].iter().map(|v| App::new("hash", v).start()).collect();
    let eps: Vec<(u16, &str)> = apps.iter().zip(["v1", "v2", "v3"]).map(|(a, v)| (a.port, v)).collect();
    let good = App::new("flaky", "good").start();
    let bad = failing_server();
    let httpbin = App::new("httpbin", "v1").start();
    let ws = websocket_server();
    let web_port = free_port();
    let log = std::env::temp_dir().join(format!("wasmesh-traffic-policy-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);

    let mut yaml = String::new();
    for (name, hash) in [
        ("byheader", "{httpHeaderName: x-user}"),
        ("bycookie", "{httpCookie: {name: user}}"),
        ("byquery", "{httpQueryParameterName: user}"),
        ("bysource", "{useSourceIp: true}"),
    ] {
        yaml += &service(name, &eps);
        yaml += &rule(name, &format!("{{loadBalancer: {{consistentHash: {hash}}}}}"));
    }
    yaml += &service("spread", &eps);
    yaml += &rule("spread", "{loadBalancer: {simple: ROUND_ROBIN}}");
    yaml += &service("flaky", &[(good.port, "good"), (bad, "bad")]);
    yaml += &rule(
        "flaky",
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}",
    );
    // Locality: the client is in us-east/zone1; with outlier detection istiod prefers the
    // nearest endpoints and fails over to the next locality when they are ejected.
    let outlier =
        "{outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}";
    yaml += &service_in("nearby", &[(apps[0].port, "v1", "us-east/zone1"), (apps[1].port, "v2", "us-west/zone2")]);
    yaml += &rule("nearby", outlier);
    yaml += &service_in("failover", &[(bad, "bad", "us-east/zone1"), (apps[1].port, "v2", "us-west/zone2")]);
    yaml += &rule("failover", outlier);
    yaml += &service("httpbin", &[(httpbin.port, "v1")]);
    yaml += CIRCUIT_BREAKING_TASK;
    yaml += &service("ws", &[(ws, "v1")]);
    yaml += &format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: web, namespace: default}}\nspec:\n  hosts: [web.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8000, name: http}}]\n  workloadSelector: {{labels: {{app: web}}}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: web, namespace: default}}\nspec: {{address: 127.0.0.1, ports: {{http: {web_port}}}, labels: {{app: web}}, serviceAccount: web}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: sleep, namespace: default}}\nspec: {{address: 127.0.0.1, labels: {{app: sleep}}, serviceAccount: sleep, locality: us-east/zone1}}\n"
    );

    let log_path = log.display().to_string();
    let mesh = Mesh::builder()
        .yaml(&yaml)
        .keep_ports()
        .client("default/sleep")
        .sidecar("default/web", App::new("web", "v1"))
        .edit_bootstraps(move |workload, boot| {
            // Envoy's own access log on the client's outbound listener, for the response flags.
            if workload != "default/sleep" {
                return;
            }
            for l in boot["static_resources"]["listeners"].as_array_mut().unwrap() {
                for f in l["filter_chains"][0]["filters"].as_array_mut().unwrap() {
                    if f["name"] == "envoy.filters.network.http_connection_manager" {
                        f["typed_config"]["access_log"] = serde_json::json!([{
                            "name": "envoy.access_loggers.file",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                                "path": log_path,
                                "log_format": {"text_format_source": {"inline_string": "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n"}},
                            }
                        }]);
                    }
                }
            }
        })
        .start();
    let out = mesh.outbound_port("default/sleep");
    let envoy = mesh.envoy("default/sleep");

    // The clusters carry istiod's thresholds (not Envoy's 1024/3) unless the rule sets them.
    let clusters = envoy.admin("/clusters");
    assert!(
        clusters
            .contains("outbound|8000||spread.default.svc.cluster.local::default_priority::max_connections::4294967295"),
        "{clusters}"
    );
    assert!(
        clusters.contains("outbound|8000||spread.default.svc.cluster.local::default_priority::max_retries::4294967295")
    );
    assert!(clusters.contains("outbound|8000||httpbin.default.svc.cluster.local::default_priority::max_connections::1"));

    // Consistent hashing: one user, one endpoint; different users spread over several.
    let round_robin: BTreeSet<String> = (0..6).map(|_| version(&get(out, "spread:8000", "/", &[]))).collect();
    assert!(round_robin.len() > 1, "without consistent hashing requests spread: {round_robin:?}");
    let by = |host: &str, user: &str| -> String {
        match host {
            "byheader" => version(&get(out, "byheader:8000", "/", &[("x-user", user)])),
            "bycookie" => version(&get(out, "bycookie:8000", "/", &[("cookie", &format!("user={user}"))])),
            "byquery" => version(&get(out, "byquery:8000", &format!("/?user={user}"), &[])),
            _ => version(&get(out, "bysource:8000", "/", &[("x-user", user)])),
        }
    };
    for host in ["byheader", "bycookie", "byquery"] {
        let mut seen = BTreeSet::new();
        for user in ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
            let first = by(host, user);
            for _ in 0..4 {
                assert_eq!(by(host, user), first, "{host}: user {user} stays on one endpoint");
            }
            seen.insert(first);
        }
        assert!(seen.len() > 1, "{host}: users are spread over the endpoints: {seen:?}");
    }
    let source: BTreeSet<String> = (0..8).map(|i| by("bysource", &format!("u{i}"))).collect();
    assert_eq!(source.len(), 1, "one source address, one endpoint: {source:?}");

    // Outlier detection: the endpoint answering 500 is ejected after its first 5xx.
    let statuses: Vec<u16> = (0..12).map(|_| get(out, "flaky:8000", "/", &[]).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 1, "one 500, then ejected: {statuses:?}");
    assert_eq!(
        envoy.stat("cluster.outbound|8000||flaky.default.svc.cluster.local.outlier_detection.ejections_enforced_consecutive_5xx"),
        Some(1)
    );

    // Locality load balancing: the same-zone endpoint takes everything while healthy...
    let near: BTreeSet<String> = (0..8).map(|_| version(&get(out, "nearby:8000", "/", &[]))).collect();
    assert_eq!(near, BTreeSet::from(["v1".to_string()]), "the client's own locality first");
    // ... and when it is ejected the next locality does.
    let statuses: Vec<u16> = (0..6).map(|_| get(out, "failover:8000", "/", &[]).status).collect();
    assert_eq!(statuses, [500, 200, 200, 200, 200, 200], "fails over after the local endpoint's ejection");
    assert_eq!(version(&get(out, "failover:8000", "/", &[])), "v2");

    // Istio's circuit-breaking task: 3 concurrent clients against maxConnections 1 and
    // http1MaxPendingRequests 1: some requests are short-circuited with 503 (flag UO).
    let results: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(move || {
                    (0..10)
                        .map(|_| {
                            let r = get(out, "httpbin:8000", "/delay/0.05", &[]);
                            (r.status, r.header("x-envoy-overloaded").map(str::to_string))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let tripped: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok + tripped.len(), 30, "{results:?}");
    assert!(ok > 0 && !tripped.is_empty(), "both 200 and 503: {results:?}");
    assert!(tripped.iter().all(|r| r.1.as_deref() == Some("true")), "{tripped:?}");
    let overflow = envoy.stat("cluster.outbound|8000||httpbin.default.svc.cluster.local.upstream_rq_pending_overflow");
    assert_eq!(overflow, Some(tripped.len() as u64));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let uo = logged.lines().filter(|l| l.starts_with("503 UO outbound|8000||httpbin")).count();
    assert_eq!(uo, tripped.len(), "{logged}");

    // 50 HTTP/2 clients × 25 streams held 0.3 s each: 1,250 requests in flight, past Envoy's
    // default thresholds (1,024), none short-circuited with istiod's.
    let h2 = std::process::Command::new("h2load")
        .args(["-n", "1250", "-c", "50", "-m", "25", "-H", ":authority: spread:8000"])
        .arg(format!("http://127.0.0.1:{out}/delay/0.3"))
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&h2.stdout);
    assert!(text.contains("1250 succeeded") && text.contains("1250 2xx"), "{text}");

    // A WebSocket upgrade passes (Envoy answers 403 without upgrade_configs).
    let mut s = TcpStream::connect(("127.0.0.1", out)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nhost: ws:8000\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    s.write_all(b"hello over the upgrade").unwrap();
    let mut echoed = [0u8; 22];
    r.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello over the upgrade");

    // An HTTP/2 client in front of an HTTP/1.1 app on an `http` port: the sidecar speaks
    // HTTP/1.1 to the app (it answered 502 when the inbound cluster used the caller's protocol).
    let inbound = mesh.inbound_port("default/web");
    let curl = std::process::Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(["-H", "host: web:8000"])
        .arg(format!("http://127.0.0.1:{inbound}/hello"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200 2");
    let _ = std::fs::remove_file(&log);
}
