//! JWKS fetches and Istio's `BLOCKED_CIDRS_IN_JWKS_URIS`, in real Envoy: a `jwksUri` inside a
//! blocked CIDR is never fetched and its tokens are rejected with the answer Envoy's own
//! `jwt_authn` gives when its remote JWKS cannot be fetched; never a fallback key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmesh_e2e::authn::{
    bootstrap, jwks, native_jwt_authn, wasm_authn_with, JwksServer, Mode, NativeJwks, Signer, TestKey,
};
use wasmesh_e2e::http::{request, Response};
use wasmesh_e2e::{free_port, App, Envoy};
use wasmesh_istio::{Resources, Workload};

const ISS: &str = "https://issuer.example.com";

fn send(port: u16, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("host", "httpbin.foo:8000")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    request(port, "GET", "/", &headers, b"").unwrap()
}

fn resources(uri: &str) -> Resources {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: {ISS}\n    jwksUri: {uri}\n"
    );
    Resources { items: wasmesh_istio::load_str(&yaml, "jwt.yaml").unwrap() }
}

#[test]
fn a_jwks_uri_in_a_blocked_cidr_is_never_fetched_and_its_tokens_fail_as_a_failed_fetch_in_envoy() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let key = Signer::new("ES256", TestKey::Ec256, Some("k1"));
    let token = key.sign(&json!({"iss": ISS, "sub": "alice", "exp": now + 3600}));
    let served = JwksServer::start(&jwks(&[key.jwk(false)]), ISS);
    let down = JwksServer::start(&jwks(&[key.jwk(false)]), ISS);
    down.set_mode(Mode::Close);
    let wl = Workload::new("httpbin-v1", "foo");
    let app = App::new("httpbin", "v1").start();

    // Three listeners in one Envoy: wasmesh with 127.0.0.0/8 blocked (its JWKS server up and
    // serving the right key); the same configuration without the block (the control); and
    // Envoy's own jwt_authn (istiod's remote-JWKS mode) whose JWKS server cannot be reached.
    let res = resources(&served.uri());
    let (blocked, mut clusters) =
        wasm_authn_with(&wl, &res, |c| c.blocked_cidrs_in_jwks_uris = vec!["127.0.0.0/8".into()]);
    let (open, _) = wasm_authn_with(&wl, &res, |_| {});
    let down_res = resources(&down.uri());
    let (_, down_clusters) = wasm_authn_with(&wl, &down_res, |_| {});
    clusters.extend(down_clusters);
    let native = native_jwt_authn(&wl, &down_res, &NativeJwks::Remote, false);
    let (port, open_port, native_port) = (free_port(), free_port(), free_port());
    let mut boot = bootstrap(port, free_port(), app.port, vec![blocked], clusters);
    for (name, listen, filter) in [("open", open_port, open), ("native", native_port, native)] {
        let other = bootstrap(listen, 0, app.port, vec![filter], vec![]);
        let mut listener = other["static_resources"]["listeners"][0].clone();
        listener["name"] = json!(name);
        boot["static_resources"]["listeners"].as_array_mut().unwrap().push(listener);
    }
    let envoy = Envoy::start_with("jwks-blocked", &boot, 1).unwrap_or_else(|e| panic!("{e}"));

    let r = send(open_port, Some(&token));
    assert_eq!(r.status, 200, "unblocked: {}", r.text());
    let fetched_by_open = served.requests();
    assert!(fetched_by_open >= 1);

    // Envoy answers a token whose keys could not be fetched like this (wait for its first
    // fetch to fail: Envoy holds requests only while the fetch is in flight).
    let started = Instant::now();
    let n = loop {
        let n = send(native_port, Some(&token));
        if n.status == 401 || started.elapsed() > Duration::from_secs(10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let w = send(port, Some(&token));
    assert_eq!((w.status, w.text()), (n.status, n.text()), "blocked wasmesh vs Envoy with a failed fetch");
    assert_eq!((w.status, w.text().as_str()), (401, "Jwks remote fetch is failed"));
    assert_eq!(w.header("www-authenticate"), n.header("www-authenticate"));
    // Requests without a token pass, as with any RequestAuthentication.
    assert_eq!(send(port, None).status, 200);
    // Again later: still no fetch went out, and no key verifies the token.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(send(port, Some(&token)).status, 401);
    assert_eq!(served.requests(), fetched_by_open, "the blocked filter never fetched: {:?}", served.request_log());
    // The refusal is counted as a failed fetch (only the blocked listener fails one: the control
    // fetched, and the unreachable server is only the native listener's).
    let failed = envoy.stat("wasmcustom.wasmesh.authn.jwks_fetch_failed").unwrap_or(0);
    assert!(failed >= 1, "a refused fetch is counted in wasmesh.authn.jwks_fetch_failed");
}
