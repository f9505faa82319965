//! Helpers for the authn e2e tests and the benchmark:
//!
//! * [`JwksServer`]: a real JWKS (and OpenID discovery) HTTP server on loopback whose keys can be
//!   rotated and which can be made slow or unavailable on purpose;
//! * token signing (re-exported from `wasmesh_authn::testing`: fixed test keys);
//! * single-Envoy bootstraps: the wasm `wasmesh.authn` filter (optionally followed by
//!   `wasmesh.authz`), or Envoy's native `envoy.filters.http.jwt_authn` generated from the same
//!   RequestAuthentication the way istiod does (`convertToEnvoyJwtConfig`), for differential
//!   tests and the benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::paths;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmesh_authn::config::selects;
use wasmesh_authn::AuthnConfig;
use wasmesh_istio::security::JwtRule;
use wasmesh_istio::{Resources, Workload};

pub use wasmesh_authn::testing::{jwks, swap_payload, unsigned, Signer, TestKey};

// ------------------------------------------------------------------------------------------
// JWKS server

/// How the JWKS server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 with the current JWKS.
    Serve,
    /// This HTTP status, empty body.
    Status(u16),
    /// Accepts and closes the connection without answering.
    Close,
    /// Accepts and never answers (until the mode changes or the server stops).
    Hang,
}

struct JwksState {
    /// (milliseconds since start, path) of every request.
    log: Vec<(u128, String)>,
    started: std::time::Instant,
    body: String,
    issuer: String,
    delay: Duration,
    mode: Mode,
}

/// A JWKS server on 127.0.0.1; stops when dropped.
pub struct JwksServer {
    pub port: u16,
    state: Arc<Mutex<JwksState>>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl JwksServer {
    /// Serves `jwks` at `/jwks.json` and an OpenID configuration for `issuer` at
    /// `/.well-known/openid-configuration` pointing to it.
    pub fn start(jwks: &str, issuer: &str) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind JWKS server");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(JwksState {
            log: Vec::new(),
            started: std::time::Instant::now(),
            body: jwks.to_string(),
            issuer: issuer.to_string(),
            delay: Duration::ZERO,
            mode: Mode::Serve,
        }));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, rq, sp) = (state.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, rq, sp) = (st.clone(), rq.clone(), sp.clone());
                std::thread::spawn(move || serve(conn, port, &st, &rq, &sp));
            }
        });
        JwksServer { port, state, requests, stop }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    pub fn set_jwks(&self, jwks: &str) {
        self.state.lock().unwrap().body = jwks.to_string();
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// `(milliseconds since start, path)` of every request received.
    pub fn request_log(&self) -> Vec<(u128, String)> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests received so far (any path).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_mode(Mode::Close);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<JwksState>, requests: &AtomicU64, stop: &AtomicBool) {
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let (delay, mode, body, issuer) = {
            let mut s = state.lock().unwrap();
            let at = s.started.elapsed().as_millis();
            s.log.push((at, path.clone()));
            (s.delay, s.mode.clone(), s.body.clone(), s.issuer.clone())
        };
        std::thread::sleep(delay);
        match mode {
            Mode::Close => return,
            Mode::Hang => {
                while !stop.load(Ordering::SeqCst) && state.lock().unwrap().mode == Mode::Hang {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Mode::Status(code) => {
                let _ = writer.write_all(format!("HTTP/1.1 {code} Error\r\ncontent-length: 0\r\n\r\n").as_bytes());
            }
            Mode::Serve => {
                let body = if path.starts_with("/.well-known/openid-configuration") {
                    json!({"issuer": issuer, "jwks_uri": format!("http://127.0.0.1:{port}/jwks.json")}).to_string()
                } else {
                    body
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(body.as_bytes())).is_err() {
                    return;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Bootstraps

/// The wasm authn filter entry (and its JWKS clusters) for a workload and resources, through
/// the controller's plugin, exactly as `wasmeshctl envoy` writes it.
pub fn wasm_authn(workload: &Workload, resources: &Resources) -> (Value, Vec<Value>) {
    wasm_authn_with(workload, resources, |_| {})
}

/// Like [`wasm_authn`], with the filter configuration adjusted (cache slots, refresh times...).
pub fn wasm_authn_with(
    workload: &Workload,
    resources: &Resources,
    adjust: impl FnOnce(&mut AuthnConfig),
) -> (Value, Vec<Value>) {
    use wasmesh_controller::plugins::{authn, Direction, ListenerContext};
    let mesh = wasmesh_controller::MeshConfig::default();
    let ctx = ListenerContext { workload, resources, direction: Direction::Inbound, bind_port: 0, mesh: &mesh };
    let c = authn::contribute(&ctx).unwrap_or_else(|e| panic!("authn plugin: {e:?}"));
    let mut f = c.http_filters.into_iter().next().expect("no RequestAuthentication selects the workload");
    let mut cfg: AuthnConfig = serde_json::from_value(f.config.clone()).unwrap();
    adjust(&mut cfg);
    f.config = serde_json::to_value(&cfg).unwrap();
    (wasmesh_controller::bootstrap::wasm_http_filter(&f, &paths::wasm_dir()), c.clusters)
}

/// The wasm authz filter entry for a workload (from the controller's authz plugin).
pub fn wasm_authz(workload: &Workload, resources: &Resources) -> Option<Value> {
    use wasmesh_controller::plugins::{authz, Direction, ListenerContext};
    let mesh = wasmesh_controller::MeshConfig::default();
    let ctx = ListenerContext { workload, resources, direction: Direction::Inbound, bind_port: 0, mesh: &mesh };
    let c = authz::contribute(&ctx).unwrap_or_else(|e| panic!("authz plugin: {e:?}"));
    c.http_filters
        .iter()
        .find(|f| f.name == "wasmesh.authz")
        .map(|f| wasmesh_controller::bootstrap::wasm_http_filter(f, &paths::wasm_dir()))
}

/// The authn and authz filters of a workload as `wasmeshctl envoy` lays them out by default: one
/// `wasmesh.chain` (authn, then authz), with authn's `identityFilterState` turned off as
/// `wasmeshctl envoy` turns it off (the identity reaches authz in memory only). Panics unless it
/// was turned off.
pub fn wasm_authn_authz_one_pass(workload: &Workload, resources: &Resources) -> (Value, Vec<Value>) {
    use wasmesh_controller::plugins::{authn, authz, Direction, ListenerContext};
    let mesh = wasmesh_controller::MeshConfig::default();
    let ctx = ListenerContext { workload, resources, direction: Direction::Inbound, bind_port: 0, mesh: &mesh };
    let n = authn::contribute(&ctx).unwrap_or_else(|e| panic!("authn plugin: {e:?}"));
    let z = authz::contribute(&ctx).unwrap_or_else(|e| panic!("authz plugin: {e:?}"));
    let filters = n.http_filters.into_iter().chain(z.http_filters).collect();
    let mut assembled = wasmesh_controller::layout::Layout::OnePass.assemble(filters);
    authn::identity_filter_state_when_read(&mut assembled);
    let [chain] = assembled.as_slice() else { panic!("not one chain: {assembled:?}") };
    assert_eq!(
        chain.config.pointer("/phases/0/configuration/identityFilterState"),
        Some(&Value::Bool(false)),
        "the identity write was not turned off: {}",
        chain.config
    );
    (wasmesh_controller::bootstrap::wasm_http_filter(chain, &paths::wasm_dir()), n.clusters)
}

/// A single-listener bootstrap: `http_filters`, then the router to the app at `app_port`.
/// Inbound-sidecar settings (`use_remote_address: false`).
pub fn bootstrap(
    listen_port: u16,
    admin_port: u16,
    app_port: u16,
    http_filters: Vec<Value>,
    extra_clusters: Vec<Value>,
) -> Value {
    let mut filters = http_filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut clusters = vec![json!({
        "name": "app",
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": "app", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": app_port}}}}]}]},
    })];
    for c in extra_clusters {
        if !clusters.iter().any(|x| x["name"] == c["name"]) {
            clusters.push(c);
        }
    }
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "codec_type": "AUTO",
                        "use_remote_address": false,
                        "normalize_path": true,
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "30s"}}]}]},
                        "http_filters": filters,
                    }
                }]}],
            }],
            "clusters": clusters,
        }
    })
}

/// How the native filter gets the keys of a `jwksUri` rule.
#[derive(Debug, Clone)]
pub enum NativeJwks {
    /// Envoy fetches them (`remote_jwks` through the same cluster the wasm filter uses;
    /// istiod's `PILOT_JWT_ENABLE_REMOTE_JWKS=envoy` mode).
    Remote,
    /// Inlined (istiod's default mode, which fetches the JWKS itself): the given JWKS document.
    Inline(String),
}

/// Envoy's `jwt_authn` filter for the RequestAuthentications selecting `workload`, generated as
/// istiod's `convertToEnvoyJwtConfig` does. `cache`: add `jwt_cache_config` to every provider.
pub fn native_jwt_authn(workload: &Workload, resources: &Resources, jwks_mode: &NativeJwks, cache: bool) -> Value {
    let mut rules: Vec<&JwtRule> = Vec::new();
    let mut selected: Vec<_> =
        resources.request_authentications().filter(|(res, ra)| selects(workload, res, ra)).collect();
    selected.sort_by_key(|(res, _)| res.namespace() != workload.namespace);
    for (_, ra) in selected {
        rules.extend(ra.jwt_rules.iter());
    }
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    let mut providers = serde_json::Map::new();
    let mut inner_and = Vec::new();
    let mut outer_or = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut sdc: Vec<String> = vec!["permission".into(), "scope".into()];
        for c in &rule.space_delimited_claims {
            if !sdc.contains(c) {
                sdc.push(c.clone());
            }
        }
        sdc.sort();
        let timeout_s = rule
            .timeout
            .as_deref()
            .and_then(|t| wasmesh_istio::parse_duration(t).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(5.0);
        let mut p = json!({
            "issuer": rule.issuer,
            "audiences": rule.audiences,
            "forward": rule.forward_original_token,
            "payload_in_metadata": "payload",
            "normalize_payload_in_metadata": {"space_delimited_claims": sdc},
        });
        if let Some(h) = &rule.output_payload_to_header {
            p["forward_payload_header"] = json!(h);
        }
        if !rule.output_claim_to_headers.is_empty() {
            p["claim_to_headers"] = rule
                .output_claim_to_headers
                .iter()
                .map(|c| json!({"header_name": c.header, "claim_name": c.claim}))
                .collect();
        }
        if !rule.from_headers.is_empty() {
            p["from_headers"] =
                rule.from_headers.iter().map(|h| json!({"name": h.name, "value_prefix": h.prefix})).collect();
        }
        if !rule.from_params.is_empty() {
            p["from_params"] = json!(rule.from_params);
        }
        if !rule.from_cookies.is_empty() {
            p["from_cookies"] = json!(rule.from_cookies);
        }
        match (rule.jwks.as_deref().filter(|s| !s.is_empty()), rule.jwks_uri(), jwks_mode) {
            (Some(inline), _, _) => p["local_jwks"] = json!({"inline_string": inline}),
            (None, Some(uri), NativeJwks::Remote) => {
                let ep = wasmesh_authn::parse_jwks_uri(uri).unwrap();
                p["remote_jwks"] = json!({
                    "http_uri": {"uri": uri, "cluster": ep.cluster, "timeout": format!("{timeout_s}s")},
                    "cache_duration": "300s",
                });
            }
            (None, _, NativeJwks::Inline(doc)) => p["local_jwks"] = json!({"inline_string": doc}),
            (None, None, NativeJwks::Remote) => panic!("OpenID discovery is not generated for the native filter"),
        }
        if cache {
            p["jwt_cache_config"] = json!({"jwt_cache_size": 1000});
        }
        let name = format!("origins-{i}");
        providers.insert(name.clone(), p);
        inner_and.push(json!({"requires_any": {"requirements": [{"provider_name": name}, {"allow_missing": {}}]}}));
        outer_or.push(json!({"provider_name": name}));
    }
    let requires = if inner_and.len() == 1 {
        inner_and.remove(0)
    } else {
        outer_or.push(json!({"requires_all": {"requirements": inner_and}}));
        json!({"requires_any": {"requirements": outer_or}})
    };
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": requires}],
            "bypass_cors_preflight": true,
        }
    })
}

// ------------------------------------------------------------------------------------------
// Benchmark scenario

/// The issuer of benchmark tokens.
pub const BENCH_ISSUER: &str = "https://bench.wasmesh.example";

/// One benchmark configuration: the HTTP filter to put before the router, the clusters it
/// needs, and the header to send (one token, repeated: the cached steady state).
#[derive(Debug, Clone)]
pub struct BenchCase {
    /// e.g. `jwt RS256 native`, `jwt RS256 native cached`, `jwt RS256 wasmesh`.
    pub name: String,
    pub http_filter: Value,
    pub clusters: Vec<Value>,
    /// `("authorization", "Bearer …")`.
    pub header: (String, String),
}

/// A RequestAuthentication for the benchmark workload (`bench/app`, label `app: bench`) with
/// the inline JWKS of the RS256 and ES256 test keys (istiod's default inlines keys).
pub fn bench_resources() -> (Workload, Resources) {
    let rs = Signer::new("RS256", TestKey::Rsa1, Some("rs"));
    let es = Signer::new("ES256", TestKey::Ec256, Some("es"));
    let doc = jwks(&[rs.jwk(false), es.jwk(false)]);
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  selector: {{matchLabels: {{app: bench}}}}\n  jwtRules:\n  - issuer: {BENCH_ISSUER}\n    audiences: [bench]\n    jwks: '{doc}'\n"
    );
    let mut wl = Workload::new("bench-v1", "bench");
    wl.labels.insert("app".into(), "bench".into());
    (wl, Resources { items: wasmesh_istio::load_str(&yaml, "bench.yaml").unwrap() })
}

/// A long-lived benchmark token (`alg` RS256 or ES256), with claims of a realistic size.
pub fn bench_token(alg: &str) -> String {
    let s = match alg {
        "RS256" => Signer::new("RS256", TestKey::Rsa1, Some("rs")),
        "ES256" => Signer::new("ES256", TestKey::Ec256, Some("es")),
        other => panic!("no bench token for {other}"),
    };
    // The same token on every run (fixed times, deterministic signatures): the cold-verify rows
    // measure exactly the same verification each time (a random ES256 signature moved them by
    // up to 3.5 % between runs, more than bench-check's tolerance).
    let claims = json!({
        "iss": BENCH_ISSUER, "sub": "bench-user", "aud": "bench", "iat": BENCH_IAT, "exp": BENCH_EXP,
        "azp": "bench-cli", "scope": "read write", "groups": ["dev", "ops"], "email": "bench@example.com",
    });
    match alg {
        "ES256" => s.sign_es256_deterministic(&claims),
        _ => s.sign(&claims),
    }
}

/// 2026-01-01 and 2100-01-01 (UTC): the bench token's `iat` and `exp`.
const BENCH_IAT: u64 = 1_767_225_600;
const BENCH_EXP: u64 = 4_102_444_800;

/// The three rows per algorithm: native `jwt_authn` uncached, native with `jwt_cache_config`,
/// and the wasmesh filter, all from the same RequestAuthentication.
pub fn bench_cases() -> Vec<BenchCase> {
    let (wl, res) = bench_resources();
    let mut out = Vec::new();
    for alg in ["RS256", "ES256"] {
        let header = ("authorization".to_string(), format!("Bearer {}", bench_token(alg)));
        out.push(BenchCase {
            name: format!("jwt {alg} native"),
            http_filter: native_jwt_authn(&wl, &res, &NativeJwks::Remote, false),
            clusters: vec![],
            header: header.clone(),
        });
        out.push(BenchCase {
            name: format!("jwt {alg} native cached"),
            http_filter: native_jwt_authn(&wl, &res, &NativeJwks::Remote, true),
            clusters: vec![],
            header: header.clone(),
        });
        let (f, clusters) = wasm_authn(&wl, &res);
        out.push(BenchCase { name: format!("jwt {alg} wasmesh"), http_filter: f, clusters, header });
    }
    out
}

/// A token-verifying request's cold cost needs a fresh token per request: `n` distinct tokens.
pub fn distinct_tokens(alg: &str, n: usize) -> Vec<String> {
    let s = match alg {
        "RS256" => Signer::new("RS256", TestKey::Rsa1, Some("rs")),
        _ => Signer::new("ES256", TestKey::Ec256, Some("es")),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    (0..n)
        .map(|i| s.sign(&json!({"iss": BENCH_ISSUER, "sub": "bench-user", "aud": "bench", "exp": now + 3600, "jti": format!("j{i}")})))
        .collect()
}

/// The benchmark scenarios (`make bench` runs them with the others): per algorithm, one Envoy with
/// no filter, native `jwt_authn` without and with `jwt_cache_config`, wasmesh, and wasmesh with
/// its verified-token cache off (every request verifies the signature: the cold-verify cost).
/// One token repeated: the steady state of a client reusing its access token.
pub fn bench_scenarios() -> Vec<crate::bench::Scenario> {
    use crate::bench::{Scenario, Variant};
    let (wl, res) = bench_resources();
    let mut out = Vec::new();
    for alg in ["RS256", "ES256"] {
        let header = vec![("authorization".to_string(), format!("Bearer {}", bench_token(alg)))];
        let variant = |name: &str, filter: Option<Value>, clusters: Vec<Value>| {
            let mut v = Variant::new(name);
            v.http_filters = filter.into_iter().collect();
            v.clusters = clusters;
            v.headers = header.clone();
            v
        };
        let (wasm, clusters) = wasm_authn(&wl, &res);
        let (wasm_cold, _) = wasm_authn_with(&wl, &res, |c| c.jwt_cache_slots = 0);
        out.push(Scenario {
            name: format!("jwt-{}", alg.to_ascii_lowercase()),
            target: format!(
                "{alg}: wasmesh ≤ native cached + 3 µs Envoy CPU/request (repeated token); wasmesh cache off ≤ 5 × native (cold verify)"
            ),
            variants: vec![
                variant("none", None, vec![]),
                variant("native", Some(native_jwt_authn(&wl, &res, &NativeJwks::Remote, false)), vec![]),
                variant("native-cached", Some(native_jwt_authn(&wl, &res, &NativeJwks::Remote, true)), vec![]),
                variant("wasmesh", Some(wasm), clusters.clone()),
                variant("wasmesh-cache-off", Some(wasm_cold), clusters),
            ],
            modules: vec!["authn".into()],
        });
    }
    out
}
