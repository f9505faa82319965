//! OIDC login e2e pieces: the real OpenID provider (npm `oidc-provider`, e2e/oidc/provider.mjs)
//! started on loopback, a fake provider whose token endpoint misbehaves on demand, a browser-like
//! HTTP client with a cookie jar, and a bootstrap with one listener per oidc configuration.

use crate::http::{self, Response};
use crate::paths;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "wasmesh-gateway";
pub const CLIENT_SECRET: &str = "e2e-client-secret-0123456789";
/// 32 bytes, base64url: the session sealing key of the tests.
pub const COOKIE_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";

/// npm `oidc-provider` on 127.0.0.1; killed when dropped.
pub struct OidcProvider {
    child: Child,
    pub port: u16,
    /// The `kid` of its signing key (a new one each start).
    pub kid: String,
    env: (String, String, u64),
}

impl OidcProvider {
    /// Starts the provider with the test clients registered for `redirect_uri` (comma-separated).
    pub fn start(redirect_uri: &str, post_logout: &str, access_ttl: u64) -> OidcProvider {
        Self::start_on(crate::free_port(), redirect_uri, post_logout, access_ttl)
    }

    /// Stops the provider and starts it again on the same port with a new signing key (its
    /// sessions and grants are lost): the provider rotated its keys.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (r, p, ttl) = self.env.clone();
        let mut again = Self::start_on(self.port, &r, &p, ttl);
        std::mem::swap(self, &mut again);
    }

    fn start_on(port: u16, redirect_uri: &str, post_logout: &str, access_ttl: u64) -> OidcProvider {
        let dir = paths::repo_root().join("e2e/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "e2e/oidc/node_modules is missing: run `make deps` (scripts/deps.sh runs npm ci there)"
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", redirect_uri)
            .env("POST_LOGOUT_REDIRECT_URI", post_logout)
            .env("ACCESS_TOKEN_TTL", access_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node e2e/oidc/provider.mjs: {e}"));
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let start = Instant::now();
        let kid = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("ready ") => break l.rsplit(' ').next().unwrap_or_default().to_string(),
                Some(Ok(_)) => {}
                _ => {
                    let _ = child.kill();
                    panic!("oidc-provider exited before it was ready");
                }
            }
            assert!(start.elapsed() < Duration::from_secs(30), "oidc-provider not ready in 30 s");
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        OidcProvider { child, port, kid, env: (redirect_uri.to_string(), post_logout.to_string(), access_ttl) }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the fake provider's token endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Never answers (the gateway's timeout must end the wait).
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a token set whose ID token is signed by a key not in the JWKS.
    UnknownKey,
    /// 200 with a good ID token but for another nonce than the login's.
    WrongNonce,
    /// 200 with an ID token for another client (audience).
    OtherAudience,
    /// 200 with a good ID token for the nonce given by [`FakeProvider::set_nonce`].
    Valid,
}

/// A provider that serves a valid discovery document and JWKS, and a token endpoint that
/// misbehaves as told.
pub struct FakeProvider {
    pub port: u16,
    mode: Arc<Mutex<(TokenMode, String)>>,
    stop: Arc<AtomicBool>,
}

impl FakeProvider {
    pub fn start() -> FakeProvider {
        Self::start_on(crate::free_port())
    }

    /// On a port chosen before (a gateway already configured for it).
    pub fn start_on(port: u16) -> FakeProvider {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake provider");
        let mode = Arc::new(Mutex::new((TokenMode::Garbage, String::new())));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (mode.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let m = m.clone();
                std::thread::spawn(move || fake_serve(conn, port, &m));
            }
        });
        FakeProvider { port, mode, stop }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_mode(&self, mode: TokenMode) {
        self.mode.lock().expect("mode").0 = mode;
    }

    /// The nonce the next ID tokens carry (the one of the login under test).
    pub fn set_nonce(&self, nonce: &str) {
        self.mode.lock().expect("mode").1 = nonce.to_string();
    }
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn fake_serve(mut conn: TcpStream, port: u16, mode: &Mutex<(TokenMode, String)>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let issuer = format!("http://127.0.0.1:{port}");
    let signer = wasmesh_authn::testing::Signer::new("RS256", wasmesh_authn::testing::TestKey::Rsa1, Some("fake"));
    // Cloned first: the lock is not held while the answer is made (Hang sleeps).
    let current = mode.lock().expect("mode").clone();
    let answer = match path.as_str() {
        "/.well-known/openid-configuration" => json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
        })
        .to_string(),
        "/jwks" => wasmesh_authn::testing::jwks(&[signer.jwk(true)]),
        "/token" => match current {
            (TokenMode::Hang, _) => {
                std::thread::sleep(Duration::from_secs(20));
                return;
            }
            (TokenMode::Garbage, _) => "<html>502 upstream trouble</html>".to_string(),
            (m @ (TokenMode::WrongNonce | TokenMode::OtherAudience | TokenMode::Valid), nonce) => {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
                let aud = if m == TokenMode::OtherAudience { "another-client" } else { CLIENT_ID };
                let nonce = if m == TokenMode::WrongNonce { "not-the-login-nonce".to_string() } else { nonce };
                let id = signer.sign(
                    &json!({"iss": issuer, "aud": aud, "sub": "mallory", "exp": now + 300, "iat": now, "nonce": nonce}),
                );
                json!({"access_token": "FAKE-AT", "token_type": "Bearer", "id_token": id}).to_string()
            }
            (TokenMode::UnknownKey, _) => {
                let other =
                    wasmesh_authn::testing::Signer::new("RS256", wasmesh_authn::testing::TestKey::Rsa2, Some("fake"));
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
                let id = other.sign(&json!({"iss": issuer, "aud": CLIENT_ID, "sub": "mallory", "exp": now + 300, "iat": now, "nonce": "x"}));
                json!({"access_token": "FAKE-AT", "token_type": "Bearer", "id_token": id}).to_string()
            }
        },
        _ => String::new(),
    };
    let status = if answer.is_empty() { "404 Not Found" } else { "200 OK" };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// The oidc filter configuration for a gateway at `gateway` (`http://localhost:<port>`) logging
/// in at `issuer` through the Envoy cluster `cluster`. The provider calls may take 8 s: the real
/// provider (node, RSA signatures) shares two cores with the rest of the suite under CI, where a
/// 1.5 s limit was once exceeded; the faulty provider's test sets its own short limit.
pub fn oidc_config(gateway: &str, issuer: &str, cluster: &str) -> Value {
    json!({
        "issuer": issuer,
        "providerCluster": cluster,
        "clientId": CLIENT_ID,
        "clientSecret": CLIENT_SECRET,
        "scopes": ["email"],
        "redirectUri": format!("{gateway}/oauth2/callback"),
        "postLogoutRedirectUri": format!("{gateway}/"),
        "bypassPaths": ["/healthz"],
        "allowedReturnOrigins": [gateway],
        "cookieKey": COOKIE_KEY,
        "timeoutMs": 8000,
    })
}

/// `wasmesh.wasm` running `phases` (root id, configuration) as one `wasmesh.chain` filter.
pub fn chain_filter(phases: &[(&str, Value)]) -> Value {
    let phases: Vec<Value> = phases.iter().map(|(id, c)| json!({"rootId": id, "configuration": c})).collect();
    json!({
        "name": "wasmesh.chain",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "wasmesh.chain",
                "root_id": "wasmesh.chain",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json!({"phases": phases}).to_string()},
                "vm_config": {
                    "vm_id": "wasmesh",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": paths::wasm_dir().join("wasmesh.wasm").to_string_lossy()}},
                },
                "fail_open": false,
            }
        }
    })
}

pub fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    })
}

/// One Envoy: a listener per (port, http filters), every route to the app at `app_port`.
pub fn bootstrap(admin_port: u16, app_port: u16, listeners: Vec<(u16, Vec<Value>)>, clusters: Vec<Value>) -> Value {
    let listeners: Vec<Value> = listeners
        .into_iter()
        .map(|(port, mut filters)| {
            filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
            json!({
                "name": format!("gateway-{port}"),
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": format!("gateway_{port}"),
                        "codec_type": "AUTO",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app", "timeout": "30s"}}]}]},
                        "http_filters": filters,
                    }
                }]}],
            })
        })
        .collect();
    let mut all = vec![static_cluster("app", app_port)];
    all.extend(clusters);
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": all}
    })
}

/// A cookie the browser keeps.
#[derive(Debug, Clone)]
pub struct Cookie {
    pub host: String,
    pub name: String,
    pub value: String,
    pub path: String,
    /// The whole `Set-Cookie` line it came from (attributes checked by the tests).
    pub set_cookie: String,
}

/// A browser-like client: a cookie jar (per host, as browsers: ports do not separate cookies;
/// `Secure` is ignored, the tests run over plain HTTP), redirects followed by hand.
#[derive(Default)]
pub struct Browser {
    pub jar: Vec<Cookie>,
    /// Extra headers on every request (`accept`, ...).
    pub headers: Vec<(String, String)>,
}

/// `http://host:port/path` split.
pub fn parse_url(url: &str) -> (String, u16, String) {
    let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not an http URL: {url}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority.split_once(':').unwrap_or((authority, "80"));
    (host.to_string(), port.parse().unwrap_or(80), path.to_string())
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            jar: Vec::new(),
            headers: vec![("accept".into(), "text/html,application/xhtml+xml,*/*;q=0.8".into())],
        }
    }

    /// The `cookie` header the browser sends to `host` for `path`.
    pub fn cookie_header(&self, host: &str, path: &str) -> Option<String> {
        let bare = path.split('?').next().unwrap_or(path);
        let sent: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.host == host && bare.starts_with(&c.path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!sent.is_empty()).then(|| sent.join("; "))
    }

    pub fn request(&mut self, method: &str, url: &str, extra: &[(&str, &str)], body: &[u8]) -> Response {
        let (host, port, path) = parse_url(url);
        let authority = format!("{host}:{port}");
        let cookie = self.cookie_header(&host, &path);
        let mut headers: Vec<(&str, &str)> = vec![("host", authority.as_str())];
        for (k, v) in &self.headers {
            if !extra.iter().any(|(e, _)| e.eq_ignore_ascii_case(k)) {
                headers.push((k, v));
            }
        }
        headers.extend_from_slice(extra);
        if let Some(c) = &cookie {
            headers.push(("cookie", c));
        }
        let r = http::request(port, method, &path, &headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        self.store(&host, &r);
        r
    }

    pub fn get(&mut self, url: &str) -> Response {
        self.request("GET", url, &[], b"")
    }

    pub fn post_form(&mut self, url: &str, form: &str) -> Response {
        self.request("POST", url, &[("content-type", "application/x-www-form-urlencoded")], form.as_bytes())
    }

    fn store(&mut self, host: &str, r: &Response) {
        for (k, v) in &r.headers {
            if !k.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let mut parts = v.split(';');
            let Some((name, value)) = parts.next().and_then(|p| p.trim().split_once('=')) else { continue };
            let mut path = "/".to_string();
            let mut delete = false;
            for a in parts {
                let a = a.trim();
                let lower = a.to_ascii_lowercase();
                if let Some(p) = lower.strip_prefix("path=") {
                    path = a[a.len() - p.len()..].to_string();
                }
                if lower == "max-age=0" || lower.starts_with("expires=thu, 01 jan 1970") {
                    delete = true;
                }
            }
            self.jar.retain(|c| !(c.host == host && c.name == name && c.path == path));
            if !delete {
                self.jar.push(Cookie {
                    host: host.to_string(),
                    name: name.to_string(),
                    value: value.to_string(),
                    path,
                    set_cookie: v.clone(),
                });
            }
        }
    }

    /// Follows redirects from `url` (GET), at most 10; the last response and every URL visited.
    pub fn follow(&mut self, url: &str) -> (Response, Vec<String>) {
        let mut visited = vec![url.to_string()];
        let mut r = self.get(url);
        let mut current = url.to_string();
        for _ in 0..10 {
            if !(300..400).contains(&r.status) {
                break;
            }
            let location = r.header("location").unwrap_or_else(|| panic!("redirect without location")).to_string();
            current = absolute(&current, &location);
            visited.push(current.clone());
            r = self.get(&current);
        }
        (r, visited)
    }

    pub fn cookie(&self, name: &str) -> Option<&Cookie> {
        self.jar.iter().find(|c| c.name == name)
    }
}

/// `location` resolved against `base` (absolute, or a path on the same origin).
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (host, port, _) = parse_url(base);
    format!("http://{host}:{port}{location}")
}

/// The `action` of the first form in a page.
pub fn form_action(html: &str) -> Option<String> {
    let at = html.find("<form")?;
    let rest = &html[at..];
    let a = rest.find("action=\"")? + "action=\"".len();
    let end = rest[a..].find('"')?;
    Some(rest[a..a + end].replace("&amp;", "&").replace("&#x2F;", "/"))
}

/// A query parameter of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    wasmesh_authn::extract::parse_query(q.as_bytes(), |k| k == name).pop().map(|(_, v)| v)
}

/// Waits until `url` (GET, no cookies) answers something other than 503 (the gateway learnt
/// the provider's discovery document and keys).
pub fn wait_ready(url: &str) {
    let start = Instant::now();
    loop {
        let r = Browser::new().get(url);
        if r.status != 503 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the gateway did not learn the provider in 20 s: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `wasmeshctl envoy --role gateway` (one-pass layout) writes for the HTTP filters of a
/// gateway listener of workload `app: gateway` in `istio-system`, from Istio YAML and a meshConfig
/// (its `extensionProviders` wasmeshOidc entry): the controller's own plugins, in its plugin order
/// (oidc, then authn and authz, so RequestAuthentication and AuthorizationPolicy see the bearer
/// token the login put there), assembled into `wasmesh.chain`; and the clusters they need.
pub fn gateway_filters(yaml: &str, mesh: &wasmesh_controller::MeshConfig) -> (Vec<Value>, Vec<Value>) {
    use wasmesh_controller::plugins::{Direction, ListenerContext, PLUGINS};
    let mut wl = wasmesh_istio::Workload::new("gateway", "istio-system");
    wl.labels.insert("app".into(), "gateway".into());
    let resources = wasmesh_istio::Resources { items: wasmesh_istio::load_str(yaml, "oidc.yaml").expect("YAML") };
    let ctx = ListenerContext {
        workload: &wl,
        resources: &resources,
        direction: Direction::Gateway { port: 80 },
        bind_port: 0,
        mesh,
    };
    let mut filters = Vec::new();
    let mut clusters: Vec<Value> = Vec::new();
    for plugin in PLUGINS {
        let c = plugin(&ctx).unwrap_or_else(|e| panic!("plugin: {e:?}"));
        // The router needs Gateway/VirtualService resources; these listeners route by themselves.
        filters.extend(c.http_filters.into_iter().filter(|f| f.name != "wasmesh.router"));
        for cluster in c.clusters {
            if !clusters.iter().any(|x| x["name"] == cluster["name"]) {
                clusters.push(cluster);
            }
        }
    }
    let assembled = wasmesh_controller::layout::Layout::OnePass.assemble(filters);
    let json =
        assembled.iter().map(|f| wasmesh_controller::bootstrap::wasm_http_filter(f, &paths::wasm_dir())).collect();
    (json, clusters)
}
