//! The benchmark harness (GUIDE §6): for each scenario, ONE Envoy (`--concurrency 1`) with one
//! listener per variant — no filter, Envoy's native equivalent, wasmesh — all in front of the same
//! upstream app, loaded with the same fixed request count by h2load, several repetitions, medians.
//! The stable number on these shared 2-core machines is Envoy CPU time per request (all Envoy
//! threads' `schedstat`, nanosecond resolution), so the table leads with it.

use crate::app::App;
use crate::envoy::Envoy;
use crate::free_port;
use crate::paths::TempDir;
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// One way of handling the same traffic.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `none`, `native`, `wasmesh`, ...
    pub name: String,
    /// HTTP filters before Envoy's router (complete filter JSON objects).
    pub http_filters: Vec<Value>,
    /// Network filters before the HTTP connection manager.
    pub network_filters: Vec<Value>,
    /// Route configuration; `None` = one route to the upstream app cluster `app`.
    pub route_config: Option<Value>,
    /// Cluster names that are all the upstream app (e.g. every Istio-named cluster a route names).
    pub app_clusters: Vec<String>,
    /// Other complete clusters this variant needs (JWKS server, ext-authz service...).
    pub clusters: Vec<Value>,
    /// Request headers h2load sends (e.g. `authorization`), besides `:authority`.
    pub headers: Vec<(String, String)>,
    /// `:authority` to send.
    pub authority: String,
    pub path: String,
    /// Status every response must have (the run fails otherwise).
    pub expect_status: u16,
}

impl Variant {
    pub fn new(name: &str) -> Variant {
        Variant {
            name: name.into(),
            http_filters: Vec::new(),
            network_filters: Vec::new(),
            route_config: None,
            app_clusters: Vec::new(),
            clusters: Vec::new(),
            headers: Vec::new(),
            authority: "bench.local".into(),
            path: "/".into(),
            expect_status: 200,
        }
    }
}

/// A comparison: the first variant is the baseline (no filter).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// What the numbers should show, e.g. "wasmesh ≤ none + 4 µs".
    pub target: String,
    pub variants: Vec<Variant>,
    /// `.wasm` modules this scenario loads (their sizes are reported).
    pub modules: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub requests: u32,
    pub connections: u32,
    pub repetitions: u32,
    pub warmup: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { requests: 20_000, connections: 8, repetitions: 5, warmup: 2_000 }
    }
}

/// The median of one variant's repetitions.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub scenario: String,
    pub variant: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_req: f64,
    /// Every repetition's CPU µs/request, to show the spread.
    pub cpu_samples: Vec<f64>,
}

/// A cluster pointing at the bench upstream app.
pub fn app_cluster(name: &str, app_port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}}
        ]}]},
    })
}

/// Envoy's HTTP filter entry for a wasm module from the built filters.
pub fn wasm_filter(filter_name: &str, module: &str, config: &Value) -> Value {
    json!({
        "name": filter_name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": filter_name,
                "root_id": filter_name,
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()},
                "vm_config": {
                    "vm_id": format!("wasmesh.{module}"),
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": crate::paths::wasm(module).display().to_string()}},
                },
                "failure_policy": "FAIL_CLOSED",
            }
        }
    })
}

fn listener(name: &str, port: u16, v: &Variant) -> Value {
    let mut filters = v.http_filters.clone();
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let route = v.route_config.clone().unwrap_or_else(|| {
        json!({"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]})
    });
    let mut network = v.network_filters.clone();
    network.push(json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": route,
        "http_filters": filters,
    }}));
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": network}],
    })
}

/// Runs every variant of a scenario in one Envoy. Errors are for people.
pub fn run(scenario: &Scenario, settings: &Settings) -> Result<Vec<Measurement>, String> {
    let app = App::new("bench", "v1").start();
    let mut listeners = Vec::new();
    let mut clusters = vec![app_cluster("app", app.port)];
    let mut ports = Vec::new();
    for (i, v) in scenario.variants.iter().enumerate() {
        let port = free_port();
        ports.push(port);
        listeners.push(listener(&format!("{}_{i}_{}", scenario.name, v.name), port, v));
        let aliases: Vec<Value> = v.app_clusters.iter().map(|n| app_cluster(n, app.port)).collect();
        for c in v.clusters.iter().chain(&aliases) {
            let name = c.get("name").cloned();
            if !clusters.iter().any(|x| x.get("name") == name.as_ref()) {
                clusters.push(c.clone());
            }
        }
    }
    let admin = free_port();
    let bootstrap = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    let envoy = Envoy::start_with(&format!("bench-{}", scenario.name), &bootstrap, 1)?;
    let tmp = TempDir::new("bench");
    let mut out = Vec::new();
    for (v, port) in scenario.variants.iter().zip(&ports) {
        // Correctness first: the variant must answer as expected before it is timed.
        let mut hdrs: Vec<(&str, &str)> = vec![("host", v.authority.as_str())];
        hdrs.extend(v.headers.iter().map(|(k, x)| (k.as_str(), x.as_str())));
        let probe = crate::http::request(*port, "GET", &v.path, &hdrs, b"")
            .map_err(|e| format!("{}/{}: {e}", scenario.name, v.name))?;
        if probe.status != v.expect_status {
            return Err(format!(
                "{}/{}: expected status {}, got {}: {}\n{}",
                scenario.name,
                v.name,
                v.expect_status,
                probe.status,
                probe.text(),
                envoy.failure_summary()
            ));
        }
        h2load(*port, v, settings.warmup, settings.connections, &tmp.path().join("warmup.log"))?;
    }
    // Interleave repetitions so drift on the machine affects every variant alike.
    let mut samples: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); scenario.variants.len()];
    for rep in 0..settings.repetitions {
        for (i, (v, port)) in scenario.variants.iter().zip(&ports).enumerate() {
            let log = tmp.path().join(format!("{i}-{rep}.log"));
            let cpu_before = envoy_cpu_ns(envoy.pid());
            let elapsed = h2load(*port, v, settings.requests, settings.connections, &log)?;
            let cpu_after = envoy_cpu_ns(envoy.pid());
            let (p50, p99, bad) = latencies(&log, v.expect_status)?;
            if bad > 0 {
                return Err(format!("{}/{}: {bad} responses were not {}", scenario.name, v.name, v.expect_status));
            }
            let cpu_us = (cpu_after.saturating_sub(cpu_before)) as f64 / 1000.0 / f64::from(settings.requests);
            samples[i].push((f64::from(settings.requests) / elapsed.as_secs_f64(), p50, p99, cpu_us));
        }
    }
    for (v, s) in scenario.variants.iter().zip(samples) {
        let med = |f: fn(&(f64, f64, f64, f64)) -> f64| median(s.iter().map(f).collect());
        out.push(Measurement {
            scenario: scenario.name.clone(),
            variant: v.name.clone(),
            rps: med(|x| x.0),
            p50_ms: med(|x| x.1),
            p99_ms: med(|x| x.2),
            cpu_us_per_req: med(|x| x.3),
            cpu_samples: s.iter().map(|x| x.3).collect(),
        });
    }
    drop(envoy);
    drop(app);
    Ok(out)
}

fn h2load(port: u16, v: &Variant, n: u32, c: u32, log: &std::path::Path) -> Result<Duration, String> {
    let mut cmd = Command::new("h2load");
    cmd.arg(format!("http://127.0.0.1:{port}{}", v.path))
        .args(["--h1", "-n", &n.to_string(), "-c", &c.to_string(), "-t", "1"])
        .arg(format!("--log-file={}", log.display()))
        .arg("-H")
        .arg(format!(":authority: {}", v.authority));
    for (k, val) in &v.headers {
        cmd.arg("-H").arg(format!("{k}: {val}"));
    }
    let start = std::time::Instant::now();
    let output = cmd.output().map_err(|e| format!("cannot run h2load (Debian nghttp2-client; `make deps`): {e}"))?;
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !text.contains(&format!("{n} succeeded")) && !text.contains("succeeded") {
        return Err(format!("h2load failed for {}: {}{}", v.name, text, String::from_utf8_lossy(&output.stderr)));
    }
    // h2load's own "finished in" is the precise load duration.
    let finished = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|r| r.split(',').next())
        .and_then(parse_h2load_duration)
        .unwrap_or(elapsed);
    Ok(finished)
}

fn parse_h2load_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    if let Some(us) = s.strip_suffix("us") {
        return us.parse::<f64>().ok().map(|v| Duration::from_secs_f64(v / 1e6));
    }
    s.strip_suffix('s').and_then(|v| v.parse::<f64>().ok()).map(Duration::from_secs_f64)
}

/// (p50 ms, p99 ms, responses with another status) from h2load's per-request log.
fn latencies(log: &std::path::Path, expect: u16) -> Result<(f64, f64, usize), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut times = Vec::new();
    let mut bad = 0;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            continue;
        }
        if cols[1].parse::<u16>().ok() != Some(expect) {
            bad += 1;
        }
        if let Ok(us) = cols[2].parse::<f64>() {
            times.push(us / 1000.0);
        }
    }
    if times.is_empty() {
        return Err(format!("{}: no requests logged", log.display()));
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.5), pct(0.99), bad))
}

/// CPU time of every thread of a process, in ns (`/proc/<pid>/task/*/schedstat`, first field).
pub fn envoy_cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                total += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The markdown table: per scenario, each variant with its CPU cost over the baseline.
pub fn table(results: &[Measurement]) -> String {
    let mut s = String::from(
        "| scenario | variant | Envoy CPU µs/req | Δ CPU vs none (µs) | req/s | p50 ms | p99 ms | CPU µs/req per repetition |\n|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    let mut baseline: Option<(String, f64)> = None;
    for m in results {
        if baseline.as_ref().map(|(sc, _)| sc != &m.scenario).unwrap_or(true) {
            baseline = Some((m.scenario.clone(), m.cpu_us_per_req));
        }
        let base = baseline.as_ref().map(|(_, b)| *b).unwrap_or(0.0);
        let reps: Vec<String> = m.cpu_samples.iter().map(|c| format!("{c:.1}")).collect();
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:+.2} | {:.0} | {:.3} | {:.3} | {} |\n",
            m.scenario,
            m.variant,
            m.cpu_us_per_req,
            m.cpu_us_per_req - base,
            m.rps,
            m.p50_ms,
            m.p99_ms,
            reps.join(" ")
        ));
    }
    s
}
