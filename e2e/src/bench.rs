//! The benchmark harness (GUIDE §6). The figure of record is **Envoy's instruction count per
//! request**, counted by callgrind ([`callgrind`]): deterministic where CPU time moves by ±15 µs
//! between runs on these shared 2-core machines.
//!
//! A [`Group`] is one Envoy (`--concurrency 1`) holding several [`Scenario`]s; each scenario is a
//! comparison whose first variant is the baseline (no filter), each [`Variant`] one listener in
//! front of the same upstream app. A run: Envoy under callgrind, every variant probed (status) and
//! warmed up, instrumentation switched on, then per batch and variant `-z`, a fixed number of
//! requests (h2load, one connection; through the unmeasured front Envoy of a variant that has a
//! [`Front`], for mutual TLS), `-d`. Then, unless switched off, the same bootstrap in a
//! plain Envoy for the secondary figures: CPU µs/request (all Envoy threads' `schedstat`) and RSS.

pub mod budgets;
pub mod callgrind;
pub mod memory;
pub mod report;
pub mod scenarios;
pub mod tracing;

pub use memory::Memory;

use crate::app::App;
use crate::envoy::Envoy;
use crate::free_port;
use crate::paths::TempDir;
use serde_json::{json, Value};
use std::process::Command;

/// One way of handling the same traffic: one listener.
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
    /// A complete listener (as `wasmeshctl envoy` wrote it) and its port, used instead of one
    /// built from the fields above.
    pub listener: Option<(u16, Value)>,
    /// Request headers h2load sends (e.g. `authorization`), besides `:authority`.
    pub headers: Vec<(String, String)>,
    /// `:authority` to send.
    pub authority: String,
    pub path: String,
    /// Status every response must have (the run fails otherwise).
    pub expect_status: u16,
    /// A client Envoy in front of this variant's listener (mutual TLS): h2load talks to it.
    pub front: Option<Front>,
}

/// A client h2load cannot be, in front of a measured listener: a plain Envoy (not under
/// valgrind, not counted) whose plaintext listener on `port` forwards every request over one
/// long-lived connection to the variant's listener with `transport_socket` (a mesh caller's
/// UpstreamTlsContext: its certificate, the mesh root, Istio's client ALPN).
#[derive(Debug, Clone)]
pub struct Front {
    pub port: u16,
    pub transport_socket: Value,
    /// The directory of the certificate files both Envoys read, kept while a variant needs it.
    pub files: std::sync::Arc<TempDir>,
}

/// The front Envoy's bootstrap: for each `(front, measured port)` a plaintext listener whose
/// one route goes to a cluster of the measured listener over `front.transport_socket`,
/// HTTP/1.1 with keep-alive. It forwards the request as h2load sent it: no request id, no
/// `x-envoy-*` headers of its own.
pub fn front_bootstrap(fronts: &[(&Front, u16)]) -> Value {
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    for (f, upstream) in fronts {
        let cluster = format!("measured_{upstream}");
        listeners.push(json!({
            "name": format!("front_{}", f.port),
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": f.port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": format!("front_{}", f.port),
                "generate_request_id": false,
                "route_config": {"virtual_hosts": [{"name": "front", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                    "suppress_envoy_headers": true}}],
            }}]}],
        }));
        let mut c = app_cluster(&cluster, *upstream);
        c["transport_socket"] = f.transport_socket.clone();
        clusters.push(c);
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// Where h2load sends a variant's requests: its front Envoy, else its listener.
fn target(v: &Variant, port: u16) -> u16 {
    v.front.as_ref().map_or(port, |f| f.port)
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
            listener: None,
            headers: Vec::new(),
            authority: "bench.local".into(),
            path: "/".into(),
            expect_status: 200,
            front: None,
        }
    }

    /// The wasm HTTP filters of this variant's listener: each adds the host→guest callbacks of
    /// one HTTP filter per request.
    pub fn wasm_http_filters(&self) -> usize {
        match &self.listener {
            Some((_, l)) => hcm(l)
                .and_then(|h| h.get("http_filters"))
                .and_then(Value::as_array)
                .map(|fs| fs.iter().filter(|f| is_wasm(f)).count())
                .unwrap_or(0),
            None => self.http_filters.iter().filter(|f| is_wasm(f)).count(),
        }
    }

    /// Whether the listener has any wasm filter (HTTP or network).
    pub fn has_wasm(&self) -> bool {
        match &self.listener {
            Some((_, l)) => l.to_string().contains(".wasm.v3.Wasm"),
            None => self.http_filters.iter().chain(&self.network_filters).any(is_wasm),
        }
    }
}

/// Seconds since the bench started, for its progress lines.
pub fn elapsed() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// A progress line on stderr, with the seconds since the bench started.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { eprintln!("[{:6.1} s] {}", $crate::bench::elapsed(), format!($($t)*)) };
}

pub(crate) fn is_wasm(f: &Value) -> bool {
    f.pointer("/typed_config/@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".wasm.v3.Wasm"))
}

/// The HTTP connection manager config of a listener's first filter chain.
pub fn hcm(listener: &Value) -> Option<&Value> {
    listener
        .pointer("/filter_chains/0/filters")
        .and_then(Value::as_array)?
        .iter()
        .find(|f| f.get("name").and_then(Value::as_str) == Some("envoy.filters.network.http_connection_manager"))
        .and_then(|f| f.get("typed_config"))
}

/// A comparison: the first variant is the baseline (no filter).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// What the numbers should show (the target), printed under the table.
    pub target: String,
    pub variants: Vec<Variant>,
    /// `.wasm` modules this scenario loads (their sizes are reported).
    pub modules: Vec<String>,
}

/// Scenarios that share one Envoy (and so one wasm VM per thread per module).
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub scenarios: Vec<Scenario>,
    /// A bootstrap to start from (node metadata, clusters, stats tags): `wasmeshctl envoy`'s for
    /// the chains. Its listeners are replaced by the variants'.
    pub base: Option<Value>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests per callgrind batch.
    pub requests: u32,
    /// Batches per variant (the figure is their median).
    pub batches: u32,
    /// Requests per variant before instrumentation is switched on.
    pub warmup: u32,
    /// Requests per repetition of the CPU pass (plain Envoy); 0 skips the CPU/RSS pass.
    pub cpu_requests: u32,
    pub cpu_repetitions: u32,
    /// The demo-style Envoys' memory and the accumulation check ([`memory`]).
    pub memory: bool,
    /// Only the memory pass: no Envoy under callgrind, no instruction counts (`--memory-only`,
    /// minutes instead of the half hour the callgrind Envoys take to compile the modules).
    pub memory_only: bool,
}

impl Settings {
    /// `make bench`: the figures of record.
    pub fn full() -> Settings {
        Settings {
            requests: 300,
            batches: 2,
            warmup: 200,
            cpu_requests: 2_000,
            cpu_repetitions: 3,
            memory: true,
            memory_only: false,
        }
    }
    /// `make bench-check`: short batches, no CPU pass.
    pub fn check() -> Settings {
        Settings {
            requests: 300,
            batches: 1,
            warmup: 100,
            cpu_requests: 0,
            cpu_repetitions: 0,
            memory: false,
            memory_only: false,
        }
    }
}

/// One variant's figures.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub group: String,
    pub scenario: String,
    pub variant: String,
    /// Wasm HTTP filters in the variant's chain.
    pub wasm_filters: usize,
    /// Instructions per request (median of the batches).
    pub instructions: f64,
    /// Every batch's instructions per request.
    pub batches: Vec<f64>,
    /// Idle instructions subtracted per request (median of the batches).
    pub idle_subtracted: f64,
    /// Guest→host calls per request (hostcalls).
    pub hostcalls: f64,
    /// Host→guest calls per request (callbacks and guest allocations).
    pub host_to_guest: f64,
    /// Guest allocations per request (`proxy_on_memory_allocate`): host→guest calls beyond the
    /// callbacks that the same number of no-op wasm filters receives in the same Envoy.
    pub allocations: Option<f64>,
    /// Envoy CPU µs per request in a plain Envoy (median of the repetitions).
    pub cpu_us: Option<f64>,
}

fn router_filter() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
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

/// Envoy's HTTP filter entry for a module of its own (`vm_id` `wasmesh.<module>`): the no-op
/// filter. Every no-op filter of an Envoy shares one VM per thread.
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

/// `n` no-op wasm filters (the boundary alone).
pub fn noop_filters(n: usize) -> Vec<Value> {
    (0..n).map(|i| wasm_filter(&format!("wasmesh.noop.{i}"), "noop", &json!({}))).collect()
}

fn listener(name: &str, port: u16, v: &Variant) -> Value {
    if let Some((_, l)) = &v.listener {
        let mut l = l.clone();
        l["name"] = json!(name);
        return l;
    }
    let mut filters = v.http_filters.clone();
    filters.push(router_filter());
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

/// A variant derived from a generated listener: the same listener (HCM settings, routes) on
/// another port with `http_filters` (before the router) instead of the generated ones, no wasm
/// network filters, and `route_config` when given.
pub fn derive(name: &str, generated: &Value, http_filters: Vec<Value>, route_config: Option<Value>) -> Variant {
    let port = free_port();
    let mut l = generated.clone();
    l["address"] = json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    if let Some(chain) = l.pointer_mut("/filter_chains/0/filters").and_then(Value::as_array_mut) {
        chain.retain(|f| !is_wasm(f));
        for f in chain.iter_mut() {
            if f.get("name").and_then(Value::as_str) == Some("envoy.filters.network.http_connection_manager") {
                let mut fs = http_filters.clone();
                fs.push(router_filter());
                f["typed_config"]["http_filters"] = json!(fs);
                if let Some(r) = &route_config {
                    f["typed_config"]["route_config"] = r.clone();
                }
            }
        }
    }
    Variant { listener: Some((port, l)), ..Variant::new(name) }
}

/// The bootstrap of a group: its base (or an empty one), every variant's listener, the clusters.
fn bootstrap(group: &Group, app_port: u16, ports: &[Vec<u16>], only_plain: bool) -> Value {
    let mut b = group.base.clone().unwrap_or_else(|| json!({"static_resources": {"clusters": []}}));
    b["admin"] = json!({"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}});
    let mut listeners = Vec::new();
    let mut clusters: Vec<Value> =
        b.pointer("/static_resources/clusters").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut add = |c: Value| {
        if !clusters.iter().any(|x| x.get("name") == c.get("name")) {
            clusters.push(c);
        }
    };
    add(app_cluster("app", app_port));
    for (s, sp) in group.scenarios.iter().zip(ports) {
        for (i, (v, port)) in s.variants.iter().zip(sp).enumerate() {
            if only_plain && v.has_wasm() {
                continue;
            }
            listeners.push(listener(
                &format!("{}_{i}", s.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")),
                *port,
                v,
            ));
            for c in &v.clusters {
                add(c.clone());
            }
            for n in &v.app_clusters {
                add(app_cluster(n, app_port));
            }
        }
    }
    b["static_resources"]["listeners"] = json!(listeners);
    b["static_resources"]["clusters"] = json!(clusters);
    b
}

/// Runs every variant of a group: callgrind, then (when `settings.cpu_requests > 0`) the CPU and
/// memory pass. `app_port` is the upstream every scenario was built for. Errors are for people.
pub fn run(group: &Group, app_port: u16, settings: &Settings) -> Result<(Vec<Measurement>, Option<Memory>), String> {
    let ports: Vec<Vec<u16>> = group
        .scenarios
        .iter()
        .map(|s| s.variants.iter().map(|v| v.listener.as_ref().map(|(p, _)| *p).unwrap_or_else(free_port)).collect())
        .collect();
    if settings.memory_only {
        crate::say!("bench {}: memory of the demo-style Envoys (no callgrind pass)", group.name);
        return Ok((Vec::new(), memory::demo(group, app_port)?));
    }
    let boot = bootstrap(group, app_port, &ports, false);
    let tmp = TempDir::new(&format!("bench-{}", group.name));
    let envoy_bin = crate::paths::envoy_bin();
    crate::say!("bench {}: starting Envoy under callgrind (about a minute per wasm module)", group.name);
    let mut cg = callgrind::Callgrind::start(&envoy_bin, &boot, tmp.path())?;
    let problems = cg.problems();
    if problems.contains("wasm") || problems.contains("][critical][") {
        return Err(format!("{}: Envoy reports a broken filter:\n{problems}", group.name));
    }
    let variants: Vec<(&Scenario, &Variant, u16)> = group
        .scenarios
        .iter()
        .zip(&ports)
        .flat_map(|(s, sp)| s.variants.iter().zip(sp).map(move |(v, p)| (s, v, *p)))
        .collect();
    let front = start_front(group, &variants)?;
    crate::say!("bench {}: Envoy ready; warm-up", group.name);
    for (s, v, port) in &variants {
        probe(&format!("{}/{}", s.name, v.name), target(v, *port), v, || cg.problems())?;
        h2load(target(v, *port), v, settings.warmup, 1)?;
    }
    let warm = front_handshakes(front.as_ref(), &variants);
    if let Some((v, _)) = warm.iter().find(|(_, n)| *n == 0) {
        return Err(format!("{}: the front Envoy made no TLS handshake to {v}", group.name));
    }
    cg.instrument()?;
    let first = variants.first().ok_or(format!("{}: no variant", group.name))?;
    let counting =
        Counting::calibrate(&mut cg, || h2load(target(first.1, first.2), first.1, settings.warmup.clamp(20, 50), 1))?;
    crate::say!(
        "bench {}: counting thread {} (the worker), idle {:.0} instructions/s",
        group.name,
        counting.worker,
        counting.idle.instructions
    );
    let mut dumps: Vec<Vec<Batch>> = vec![Vec::new(); variants.len()];
    for b in 0..settings.batches {
        for (i, (s, v, port)) in variants.iter().enumerate() {
            crate::say!("bench {}: batch {}/{} {}/{}", group.name, b + 1, settings.batches, s.name, v.name);
            dumps[i].push(counting.batch(&mut cg, || h2load(target(v, *port), v, settings.requests, 1))?);
        }
    }
    let idle_after = Counting::idle(&mut cg, counting.worker)?;
    // Each front keeps one connection to its variant: the handshake was made in the warm-up and
    // none inside the batches.
    let after = front_handshakes(front.as_ref(), &variants);
    if after != warm {
        return Err(format!("{}: TLS handshakes inside the measured batches: {warm:?} → {after:?}", group.name));
    }
    if !warm.is_empty() {
        let prom = crate::http::request(cg.admin_port, "GET", "/stats/prometheus", &[], b"").map(|r| r.text());
        let mtls = prom.unwrap_or_default().lines().filter(|l| l.starts_with("istio_requests_total{")).fold(
            (0.0, 0.0),
            |(m, all), l| {
                let n: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                (m + if l.contains("connection_security_policy=\"mutual_tls\"") { n } else { 0.0 }, all + n)
            },
        );
        crate::say!(
            "bench {}: front TLS handshakes per variant {warm:?}; istio_requests_total {} of which mutual_tls {}",
            group.name,
            mtls.1,
            mtls.0
        );
    }
    let problems = cg.problems();
    if problems.contains("wasm") || problems.contains("][critical][") {
        return Err(format!("{}: Envoy reports a broken filter after the batches:\n{problems}", group.name));
    }
    drop(cg);

    let n = f64::from(settings.requests);
    // The idle rate subtracted: the mean of the readings before and after the batches.
    let idle = counting.idle.plus(&idle_after).scaled(0.5);
    let dumps: Vec<Vec<Batch>> =
        dumps.into_iter().map(|ds| ds.into_iter().map(|d| d.net_of(&idle)).collect()).collect();
    let mut out: Vec<Measurement> = variants
        .iter()
        .zip(&dumps)
        .map(|((s, v, _), ds)| {
            let per = |f: fn(&Rates) -> f64| median(ds.iter().map(|d| f(&d.net) / n).collect());
            Measurement {
                group: group.name.clone(),
                scenario: s.name.clone(),
                variant: v.name.clone(),
                wasm_filters: v.wasm_http_filters(),
                instructions: per(|d| d.instructions),
                batches: ds.iter().map(|d| d.net.instructions / n).collect(),
                idle_subtracted: median(ds.iter().map(|d| d.idle_instructions / n).collect()),
                hostcalls: per(|d| d.guest_to_host),
                host_to_guest: per(|d| d.host_to_guest),
                allocations: None,
                cpu_us: None,
            }
        })
        .collect();
    crate::say!(
        "bench {}: idle {:.0} instructions/s before the batches, {:.0} after",
        group.name,
        counting.idle.instructions,
        idle_after.instructions
    );
    // Callbacks per wasm HTTP filter per request: what the no-op filters of this Envoy receive
    // (they allocate nothing in the guest and make no hostcall).
    let noop = out
        .iter()
        .filter(|m| m.variant.contains("no-op wasm filter") && m.wasm_filters > 0)
        .map(|m| m.host_to_guest / m.wasm_filters as f64)
        .next();
    if let Some(per_filter) = noop {
        for m in out.iter_mut().filter(|m| m.wasm_filters > 0) {
            m.allocations = Some((m.host_to_guest - per_filter * m.wasm_filters as f64).max(0.0));
        }
    }

    let mut memory = None;
    if settings.cpu_requests > 0 && settings.cpu_repetitions > 0 {
        let envoy = Envoy::start_with(&format!("bench-{}", group.name), &boot, 1)?;
        for (s, v, port) in &variants {
            probe(&format!("{}/{}", s.name, v.name), target(v, *port), v, || envoy.failure_summary())?;
            h2load(target(v, *port), v, settings.cpu_requests / 2, 1)?;
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..settings.cpu_repetitions {
            for (i, (_, v, port)) in variants.iter().enumerate() {
                let before = envoy_cpu_ns(envoy.pid());
                h2load(target(v, *port), v, settings.cpu_requests, 1)?;
                let after = envoy_cpu_ns(envoy.pid());
                samples[i].push(after.saturating_sub(before) as f64 / 1000.0 / f64::from(settings.cpu_requests));
            }
        }
        for (m, s) in out.iter_mut().zip(samples) {
            m.cpu_us = Some(median(s));
        }
    }
    if settings.memory {
        crate::say!("bench {}: memory of the demo-style Envoys", group.name);
        memory = memory::demo(group, app_port)?;
    }
    Ok((out, memory))
}

/// The front Envoy of the variants that have one ([`Front`]); `None` when none has.
fn start_front(group: &Group, variants: &[(&Scenario, &Variant, u16)]) -> Result<Option<Envoy>, String> {
    let fronts: Vec<(&Front, u16)> =
        variants.iter().filter_map(|(_, v, port)| v.front.as_ref().map(|f| (f, *port))).collect();
    if fronts.is_empty() {
        return Ok(None);
    }
    crate::say!("bench {}: starting the front Envoy of {} variant(s) (not measured)", group.name, fronts.len());
    Envoy::start_with(&format!("bench-{}-front", group.name), &front_bootstrap(&fronts), 1).map(Some)
}

/// For each variant with a front: its name and the front cluster's `ssl.handshake` counter.
fn front_handshakes(front: Option<&Envoy>, variants: &[(&Scenario, &Variant, u16)]) -> Vec<(String, u64)> {
    let Some(envoy) = front else { return Vec::new() };
    variants
        .iter()
        .filter(|(_, v, _)| v.front.is_some())
        .map(|(s, v, port)| {
            let n = envoy.stat(&format!("cluster.measured_{port}.ssl.handshake")).unwrap_or(0);
            (format!("{}/{}", s.name, v.name), n)
        })
        .collect()
}

/// Counts per second (idle) or per batch, of the worker thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub instructions: f64,
    pub host_to_guest: f64,
    pub guest_to_host: f64,
}

impl Rates {
    fn of(d: &callgrind::Dump) -> Rates {
        Rates {
            instructions: d.instructions as f64,
            host_to_guest: d.host_to_guest as f64,
            guest_to_host: d.guest_to_host as f64,
        }
    }
    fn scaled(&self, k: f64) -> Rates {
        Rates {
            instructions: self.instructions * k,
            host_to_guest: self.host_to_guest * k,
            guest_to_host: self.guest_to_host * k,
        }
    }
    fn plus(&self, o: &Rates) -> Rates {
        self.minus(&o.scaled(-1.0))
    }
    fn minus(&self, o: &Rates) -> Rates {
        Rates {
            instructions: self.instructions - o.instructions,
            host_to_guest: self.host_to_guest - o.host_to_guest,
            guest_to_host: self.guest_to_host - o.guest_to_host,
        }
    }
}

/// One batch of the worker thread: what it counted, and that minus what it would have counted
/// idle for as long as the batch lasted ([`Batch::net_of`]).
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    pub counted: Rates,
    pub net: Rates,
    /// Instructions subtracted (idle rate × the batch's counting window).
    pub idle_instructions: f64,
    pub seconds: f64,
}

impl Batch {
    /// The batch with `idle` (per second) × its duration subtracted.
    pub fn net_of(&self, idle: &Rates) -> Batch {
        let i = idle.scaled(self.seconds);
        Batch { net: self.counted.minus(&i), idle_instructions: i.instructions, ..*self }
    }
}

/// How a group's Envoy is counted so that the figure does not depend on how long a batch takes
/// (machine load): only the worker thread (`--concurrency 1`, `--separate-threads=yes`), whose
/// requests are the traffic, and from it the instructions its timers execute anyway (wasm ticks,
/// the stats flush's histogram merge, watchdog touches), measured as an idle rate on the same
/// Envoy and subtracted for the batch's duration. The main thread (stats flush, the main-thread
/// VMs' ticks, admin) and the other threads are not counted.
pub struct Counting {
    /// valgrind's number of the worker thread.
    pub worker: u32,
    /// The worker's counts per second with no traffic.
    pub idle: Rates,
}

/// How long the worker is watched with no traffic for its idle rate.
pub const IDLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

impl Counting {
    /// Finds the worker (the thread that counts the most while `traffic` runs) and its idle rate.
    pub fn calibrate(
        cg: &mut callgrind::Callgrind,
        traffic: impl FnOnce() -> Result<(), String>,
    ) -> Result<Counting, String> {
        cg.zero()?;
        traffic()?;
        let threads = cg.dump()?;
        let worker =
            threads.iter().max_by_key(|(_, d)| d.instructions).map(|(t, _)| *t).ok_or("callgrind dumped no thread")?;
        let idle = Counting::idle(cg, worker)?;
        Ok(Counting { worker, idle })
    }

    /// The worker's counts per second over [`IDLE_WINDOW`] with no traffic.
    pub fn idle(cg: &mut callgrind::Callgrind, worker: u32) -> Result<Rates, String> {
        let (d, seconds) = Counting::window(cg, worker, || {
            std::thread::sleep(IDLE_WINDOW);
            Ok(())
        })?;
        Ok(Rates::of(&d).scaled(1.0 / seconds))
    }

    /// `-z`, `work`, `-d`: the worker's dump and the counting window in seconds (from the middle
    /// of the `-z` call to the middle of the `-d` call: valgrind acts on each somewhere inside).
    fn window(
        cg: &mut callgrind::Callgrind,
        worker: u32,
        work: impl FnOnce() -> Result<(), String>,
    ) -> Result<(callgrind::Dump, f64), String> {
        let z0 = std::time::Instant::now();
        cg.zero()?;
        let z = z0.elapsed() / 2;
        work()?;
        let d0 = std::time::Instant::now();
        let mut threads = cg.dump_timed(d0)?;
        let seconds = (threads.1 - (z0 + z)).as_secs_f64();
        let d = threads.0.remove(&worker).ok_or(format!("callgrind dumped no thread {worker} (the worker)"))?;
        Ok((d, seconds))
    }

    /// One batch: its counts minus the idle rate × its window.
    pub fn batch(
        &self,
        cg: &mut callgrind::Callgrind,
        traffic: impl FnOnce() -> Result<(), String>,
    ) -> Result<Batch, String> {
        let (d, seconds) = Counting::window(cg, self.worker, traffic)?;
        let idle = self.idle.scaled(seconds);
        Ok(Batch {
            counted: Rates::of(&d),
            net: Rates::of(&d).minus(&idle),
            idle_instructions: idle.instructions,
            seconds,
        })
    }
}

/// One request: the variant must answer as expected before it is measured.
fn probe(what: &str, port: u16, v: &Variant, log: impl Fn() -> String) -> Result<(), String> {
    let mut hdrs: Vec<(&str, &str)> = vec![("host", v.authority.as_str())];
    hdrs.extend(v.headers.iter().map(|(k, x)| (k.as_str(), x.as_str())));
    let r = crate::http::request(port, "GET", &v.path, &hdrs, b"").map_err(|e| format!("{what}: {e}\n{}", log()))?;
    if r.status != v.expect_status {
        return Err(format!("{what}: expected status {}, got {}: {}\n{}", v.expect_status, r.status, r.text(), log()));
    }
    Ok(())
}

/// `n` requests on `c` HTTP/1.1 connections; every response must have the variant's status.
fn h2load(port: u16, v: &Variant, n: u32, c: u32) -> Result<(), String> {
    let mut cmd = Command::new("h2load");
    cmd.arg(format!("http://127.0.0.1:{port}{}", v.path))
        .args(["--h1", "-n", &n.to_string(), "-c", &c.to_string(), "-t", "1"])
        .arg("-H")
        .arg(format!(":authority: {}", v.authority));
    for (k, val) in &v.headers {
        cmd.arg("-H").arg(format!("{k}: {val}"));
    }
    let output = cmd.output().map_err(|e| format!("cannot run h2load (Debian nghttp2-client; `make deps`): {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let class = format!("{}xx", v.expect_status / 100);
    let wanted = status_count(&text, &class);
    if !output.status.success() || wanted != Some(u64::from(n)) {
        return Err(format!(
            "h2load on {} ({}): expected {n} responses {class}, got {wanted:?}:\n{text}{}",
            v.name,
            port,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

/// From h2load's `status codes: 1000 2xx, 0 3xx, 0 4xx, 0 5xx`, the count of `class`.
fn status_count(text: &str, class: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.trim().strip_prefix("status codes:"))?;
    line.split(',').find_map(|part| {
        let mut it = part.split_whitespace();
        let count = it.next()?.parse().ok()?;
        (it.next()? == class).then_some(count)
    })
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

/// Starts the upstream every scenario sends to.
pub fn start_app() -> crate::app::AppHandle {
    App::new("bench", "v1").start()
}

#[cfg(test)]
mod tests {
    #[test]
    fn h2load_status_counts() {
        let text = "requests: 300 total, 300 started, 300 done, 300 succeeded, 0 failed\nstatus codes: 298 2xx, 0 3xx, 2 4xx, 0 5xx\n";
        assert_eq!(super::status_count(text, "2xx"), Some(298));
        assert_eq!(super::status_count(text, "4xx"), Some(2));
        assert_eq!(super::status_count("no summary", "2xx"), None);
    }

    /// The plain variants of an mTLS listener pay the same TLS: `derive` keeps the listener
    /// filters and the chain's transport socket, and replaces only the filters.
    #[test]
    fn derived_variants_keep_the_listeners_tls() {
        use serde_json::json;
        let tls = json!({"name": "envoy.transport_sockets.tls", "typed_config": {"require_client_certificate": true}});
        let wasm = json!({"name": "wasmesh.chain", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"}});
        let generated = json!({
            "name": "inbound_1",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}],
            "filter_chains": [{"transport_socket": tls, "filters": [{"name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"forward_client_cert_details": "APPEND_FORWARD", "http_filters": [wasm, {"name": "envoy.filters.http.router"}]}}]}],
        });
        let v = super::derive("none", &generated, vec![], None);
        let (port, l) = v.listener.clone().expect("a listener");
        assert_ne!(port, 1);
        assert_eq!(l["filter_chains"][0]["transport_socket"], tls);
        assert_eq!(l["listener_filters"], generated["listener_filters"]);
        let hcm = super::hcm(&l).expect("an HCM");
        assert_eq!(hcm["forward_client_cert_details"], "APPEND_FORWARD");
        assert_eq!(v.wasm_http_filters(), 0);
        assert!(!l.to_string().contains("wasmesh.chain"));
    }

    #[test]
    fn the_front_forwards_over_its_transport_socket_without_headers_of_its_own() {
        let files = std::sync::Arc::new(crate::paths::TempDir::new("front-test"));
        let socket = serde_json::json!({"name": "envoy.transport_sockets.tls"});
        let f = super::Front { port: 7001, transport_socket: socket.clone(), files };
        let b = super::front_bootstrap(&[(&f, 7002)]);
        let l = &b["static_resources"]["listeners"][0];
        assert_eq!(l["address"]["socket_address"]["port_value"], 7001);
        assert!(l["filter_chains"][0].get("transport_socket").is_none(), "h2load speaks plaintext to it");
        let hcm = super::hcm(l).expect("an HCM");
        assert_eq!(hcm["generate_request_id"], false);
        assert_eq!(hcm["http_filters"][0]["typed_config"]["suppress_envoy_headers"], true);
        let c = &b["static_resources"]["clusters"][0];
        assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"], c["name"]);
        assert_eq!(c["transport_socket"], socket);
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            7002
        );
    }
}
