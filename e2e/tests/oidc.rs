//! OIDC login at the gateway (issue 14) in real Envoy, against a real OpenID provider (npm
//! `oidc-provider`, started on loopback) and a fake one whose token endpoint misbehaves. One
//! Envoy, one listener per configuration, every case in as few processes as possible.
//!
//! What each case shows:
//! - the whole authorization code flow as a browser walks it: redirect (state, nonce, PKCE S256),
//!   the provider's login form and consent, the callback, the code exchange, the upstream getting
//!   `Authorization: Bearer` with a token the provider itself accepts, the session cookie never
//!   reaching the upstream; two tabs logging in at once; refresh after the access token expired;
//!   logout (RP-initiated) ending the gateway session;
//! - the security cases: forged, missing and replayed state, a tampered session cookie, an open
//!   redirect attempt, XHR getting 401, a token endpoint that hangs, answers garbage or sends an ID
//!   token signed by an unknown key (an error page, the upstream never sees the request), and no
//!   token, code or secret in Envoy's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::time::{Duration, Instant};
use wasmesh_e2e::app::App;
use wasmesh_e2e::envoy::Envoy;
use wasmesh_e2e::free_port;
use wasmesh_e2e::oidc::*;

/// Access tokens of the real provider live this long, so the refresh happens within the test.
const ACCESS_TTL: u64 = 7;

struct Setup {
    provider: OidcProvider,
    fake: FakeProvider,
    app: wasmesh_e2e::app::AppHandle,
    envoy: Envoy,
    /// `http://localhost:<port>` of the gateway logging in at the real provider.
    real: String,
    /// The one logging in at the fake provider.
    faulty: String,
    /// Login forwarding the ID token, then RequestAuthentication and AuthorizationPolicy.
    policed: String,
}

fn setup() -> Setup {
    let (real_port, faulty_port, policed_port, admin) = (free_port(), free_port(), free_port(), free_port());
    let real = format!("http://localhost:{real_port}");
    let faulty = format!("http://localhost:{faulty_port}");
    let policed = format!("http://localhost:{policed_port}");
    let provider = OidcProvider::start(
        &format!("{real}/oauth2/callback,{policed}/oauth2/callback"),
        &format!("{real}/,{policed}/"),
        ACCESS_TTL,
    );
    let fake = FakeProvider::start();
    let app = App::new("app", "v1").start();
    let issuer = provider.issuer();
    // Only alice may pass the policed gateway: her verified ID token, not just any session.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: login, namespace: istio-system}}\n\
         spec:\n  selector: {{matchLabels: {{app: gateway}}}}\n  jwtRules:\n  - issuer: {issuer}\n    jwksUri: {issuer}/jwks\n    audiences: [{CLIENT_ID}]\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: alice-only, namespace: istio-system}}\n\
         spec:\n  selector: {{matchLabels: {{app: gateway}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{requestPrincipals: [\"{issuer}/alice\"]}}\n"
    );
    // The policed gateway is configured as wasmeshctl configures it: a meshConfig
    // extensionProviders entry (forwarding the ID token, a JWT authn can verify).
    let mut entry = oidc_config(&policed, &issuer, "unused");
    let spec = entry.as_object_mut().expect("object");
    spec.remove("providerCluster");
    spec.insert("forward".into(), "id_token".into());
    spec.insert("selector".into(), serde_json::json!({"matchLabels": {"app": "gateway"}}));
    let mesh: wasmesh_controller::MeshConfig =
        serde_json::from_value(serde_json::json!({"extensionProviders": [{"name": "login", "wasmeshOidc": entry}]}))
            .expect("meshConfig");
    let (policed_filters, mut clusters) = gateway_filters(&yaml, &mesh);
    assert!(
        policed_filters.len() == 1 && policed_filters[0].to_string().contains("wasmesh.oidc"),
        "one wasmesh.chain starting with the login: {policed_filters:?}"
    );
    let listeners = vec![
        (real_port, vec![chain_filter(&[("wasmesh.oidc", oidc_config(&real, &issuer, "oidc-provider"))])]),
        (faulty_port, vec![chain_filter(&[("wasmesh.oidc", oidc_config(&faulty, &fake.issuer(), "fake-provider"))])]),
        (policed_port, policed_filters),
    ];
    // The controller named the provider's cluster as it names a jwksUri's: the same one here.
    clusters.retain(|c| c["name"] != "oidc-provider");
    clusters.push(static_cluster("oidc-provider", provider.port));
    clusters.push(static_cluster("fake-provider", fake.port));
    let envoy = Envoy::start("oidc", &bootstrap(admin, app.port, listeners, clusters));
    for gw in [&real, &faulty, &policed] {
        wait_ready(&format!("{gw}/ready-check"));
    }
    Setup { provider, fake, app, envoy, real, faulty, policed }
}

/// Walks the provider's login and consent pages from the authorization URL until the provider
/// sends the browser back to the gateway's callback; returns that callback URL.
fn log_in_at_provider(b: &mut Browser, authorize: &str, user: &str) -> String {
    let mut url = authorize.to_string();
    for _ in 0..12 {
        if url.contains("/oauth2/callback") {
            return url;
        }
        let r = b.get(&url);
        if (300..400).contains(&r.status) {
            url = absolute(&url, r.header("location").expect("location"));
            continue;
        }
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.text();
        let action = absolute(&url, &form_action(&page).unwrap_or_else(|| panic!("no form at {url}: {page}")));
        let form = if page.contains("name=\"login\"") {
            format!("prompt=login&login={user}&password=any")
        } else {
            "prompt=consent".to_string()
        };
        let r = b.post_form(&action, &form);
        assert!((300..400).contains(&r.status), "{action}: {} {}", r.status, r.text());
        url = absolute(&action, r.header("location").expect("location"));
    }
    panic!("the provider never sent the browser back to the callback (last {url})");
}

/// One request to the gateway, following the redirect chain of a login through the provider;
/// the app's JSON answer (what the upstream received) once back.
fn browse(b: &mut Browser, url: &str, user: &str) -> (Value, Vec<String>) {
    let r = b.get(url);
    if r.status == 200 {
        return (r.json(), Vec::new());
    }
    assert_eq!(r.status, 302, "{url}: {}", r.text());
    let authorize = r.header("location").expect("location").to_string();
    let callback = log_in_at_provider(b, &authorize, user);
    let r = b.get(&callback);
    assert_eq!(r.status, 302, "callback: {}", r.text());
    let back = absolute(&callback, r.header("location").expect("location"));
    let r = b.get(&back);
    assert_eq!(r.status, 200, "{back}: {}", r.text());
    (r.json(), vec![authorize, callback, back])
}

fn userinfo(provider_port: u16, authorization: &str) -> u16 {
    wasmesh_e2e::http::request(
        provider_port,
        "GET",
        "/me",
        &[("host", &format!("127.0.0.1:{provider_port}")), ("authorization", authorization)],
        b"",
    )
    .expect("userinfo")
    .status
}

/// One Envoy and one provider for every case: the misbehaving token endpoint and the policed
/// gateway run beside the main walk (they use other listeners and their own browsers).
#[test]
fn login_at_the_gateway_against_a_real_provider_and_every_attack_refused() {
    let s = setup();
    let served_before = s.app.served();
    std::thread::scope(|scope| {
        let faulty = scope.spawn(|| faulty_token_endpoint(&s));
        let policed = scope.spawn(|| policies_apply_to_the_login(&s));
        let walked = walk_the_flow(&s);
        faulty.join().expect("faulty token endpoint cases");
        policed.join().expect("policed gateway cases");
        // The walk reached the app `walked` times, the policed gateway once (alice); nothing else
        // did (no refused request, no failed login).
        assert_eq!(s.app.served(), served_before + walked + 1);
    });
    // Nothing secret in Envoy's log.
    let log = s.envoy.log();
    for secret in [CLIENT_SECRET, COOKIE_KEY, "FAKE-AT"] {
        assert!(!log.contains(secret), "a secret or token is in Envoy's log");
    }
}

/// The main walk; returns how many requests reached the app.
fn walk_the_flow(s: &Setup) -> u64 {
    let mut reached = 0;

    // Bypass path: no login.
    let r = Browser::new().get(&format!("{}/healthz", s.real));
    assert_eq!(r.status, 200, "{}", r.text());
    reached += 1;

    // API requests get 401, not a redirect (and no login flow cookie).
    let mut api = Browser::new();
    api.headers = vec![("x-requested-with".into(), "XMLHttpRequest".into())];
    let r = api.get(&format!("{}/api/items", s.real));
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let mut json = Browser::new();
    json.headers = vec![("accept".into(), "application/json".into())];
    assert_eq!(json.get(&format!("{}/api/items", s.real)).status, 401);

    // The redirect: authorization code flow with state, nonce and PKCE S256.
    let mut b = Browser::new();
    let r = b.get(&format!("{}/app/page?x=1", s.real));
    assert_eq!(r.status, 302);
    let authorize = r.header("location").expect("location").to_string();
    assert!(authorize.starts_with(&format!("http://127.0.0.1:{}/auth?", s.provider.port)), "{authorize}");
    assert_eq!(query_param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(query_param(&authorize, "scope").as_deref(), Some("openid email"));
    assert!(query_param(&authorize, "state").is_some() && query_param(&authorize, "nonce").is_some());
    let flow = b.jar.iter().find(|c| c.name.starts_with("wasmesh-session-flow-")).expect("flow cookie").clone();
    for attr in ["Path=/oauth2/callback", "HttpOnly", "Secure", "SameSite=Lax", "Max-Age=600"] {
        assert!(flow.set_cookie.contains(attr), "{attr}: {}", flow.set_cookie);
    }

    // The provider's login and consent, the callback, back where the browser started.
    let callback = log_in_at_provider(&mut b, &authorize, "alice");
    let r = b.get(&callback);
    assert_eq!(r.status, 302, "callback: {}", r.text());
    assert_eq!(r.header("location"), Some("/app/page?x=1"));
    let session = b.cookie("wasmesh-session").expect("session cookie").clone();
    for attr in ["Path=/", "HttpOnly", "Secure", "SameSite=Lax"] {
        assert!(session.set_cookie.contains(attr), "{attr}: {}", session.set_cookie);
    }
    assert!(b.jar.iter().all(|c| !c.name.starts_with("wasmesh-session-flow-")), "the flow cookie is cleared");
    eprintln!(
        "session cookie: {} bytes of value ({} bytes as Set-Cookie) for an opaque access token, ID token and refresh token",
        session.value.len(),
        session.set_cookie.len()
    );
    assert!(session.set_cookie.len() < 4096);

    // The upstream gets the bearer token, never the session cookie.
    let r = b.get(&format!("{}/app/page?x=1", s.real));
    assert_eq!(r.status, 200, "{}", r.text());
    reached += 1;
    let upstream = r.json();
    let authorization = upstream["headers"]["authorization"].as_str().expect("authorization upstream").to_string();
    assert!(authorization.starts_with("Bearer "), "{authorization}");
    assert!(upstream["headers"].get("cookie").is_none(), "cookie reached the upstream: {upstream}");
    assert_eq!(userinfo(s.provider.port, &authorization), 200, "the provider accepts the forwarded token");
    // Other cookies still reach the upstream; ours are taken out.
    let r = b.request("GET", &format!("{}/app", s.real), &[("cookie", "theme=dark")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    reached += 1;
    let cookie = r.json()["headers"]["cookie"].as_str().unwrap_or_default().to_string();
    assert!(cookie.contains("theme=dark") && !cookie.contains("wasmesh-session"), "upstream cookie: {cookie}");

    // Replaying the callback (the flow cookie is gone), forged and missing state.
    assert_eq!(b.get(&callback).status, 400, "replayed callback");
    let forged = format!("{}/oauth2/callback?code=abc&state=forged-state-0123456789", s.real);
    assert_eq!(b.get(&forged).status, 400);
    assert_eq!(b.get(&format!("{}/oauth2/callback?code=abc", s.real)).status, 400);

    // A tampered session cookie is not a session: a new login, the upstream does not see it.
    let mut tampered = Browser::new();
    let mut value = session.value.clone();
    let i = value.len() / 2;
    let flipped = if &value[i..i + 1] == "A" { "B" } else { "A" };
    value.replace_range(i..i + 1, flipped);
    let r =
        tampered.request("GET", &format!("{}/app", s.real), &[("cookie", &format!("wasmesh-session={value}"))], b"");
    assert_eq!(r.status, 302);
    let r = tampered.request(
        "GET",
        &format!("{}/app", s.real),
        &[("cookie", &format!("wasmesh-session={}", &session.value[..40]))],
        b"",
    );
    assert_eq!(r.status, 302, "truncated");

    // Open redirect through logout's return_to.
    assert_eq!(b.get(&format!("{}/oauth2/logout?return_to=https%3A%2F%2Fevil.example%2F", s.real)).status, 400);
    assert_eq!(b.get(&format!("{}/oauth2/logout?return_to=%2F%2Fevil.example", s.real)).status, 400);

    // Two tabs of one new browser log in at once: both come back to their own page.
    let mut tabs = Browser::new();
    let one = tabs.get(&format!("{}/one", s.real));
    let two = tabs.get(&format!("{}/two", s.real));
    let (a1, a2) = (one.header("location").expect("1").to_string(), two.header("location").expect("2").to_string());
    let c2 = log_in_at_provider(&mut tabs, &a2, "bob");
    let c1 = log_in_at_provider(&mut tabs, &a1, "bob");
    let r2 = tabs.get(&c2);
    let r1 = tabs.get(&c1);
    assert_eq!((r1.status, r1.header("location")), (302, Some("/one")), "{}", r1.text());
    assert_eq!((r2.status, r2.header("location")), (302, Some("/two")), "{}", r2.text());

    // Refresh: once the access token expired, the gateway refreshes it and sets a new session.
    let deadline = Instant::now() + Duration::from_secs(ACCESS_TTL * 3);
    let (r, refreshed) = loop {
        let r = b.get(&format!("{}/app", s.real));
        assert_eq!(r.status, 200, "{}", r.text());
        reached += 1;
        let now = r.json()["headers"]["authorization"].as_str().expect("authorization").to_string();
        if now != authorization {
            break (r, now);
        }
        assert!(Instant::now() < deadline, "the access token was never refreshed");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        r.headers.iter().any(|(k, v)| k == "set-cookie" && v.starts_with("wasmesh-session=")),
        "the renewed session is set"
    );
    assert_eq!(userinfo(s.provider.port, &refreshed), 200);
    let (again, hops) = browse(&mut b, &format!("{}/app", s.real), "alice");
    assert!(hops.is_empty(), "still logged in after the refresh");
    reached += 1;
    assert!(again["headers"]["authorization"].as_str().is_some_and(|a| a.starts_with("Bearer ")));

    // Logout: the session cookie is cleared and the browser sent to the provider's end_session.
    let r = b.get(&format!("{}/oauth2/logout", s.real));
    assert_eq!(r.status, 302);
    let end = r.header("location").expect("location").to_string();
    assert!(end.starts_with(&format!("http://127.0.0.1:{}/session/end?", s.provider.port)), "{end}");
    assert!(query_param(&end, "id_token_hint").is_some());
    assert!(b.cookie("wasmesh-session").is_none(), "session cookie cleared");
    assert_eq!(b.get(&end).status, 200, "the provider asks to confirm the logout");
    assert_eq!(b.get(&format!("{}/app", s.real)).status, 302, "logged out at the gateway");

    let log = s.envoy.log();
    for token in [&authorization[7..], &refreshed[7..], &session.value] {
        assert!(!log.contains(token), "a token or session is in Envoy's log");
    }
    reached
}

/// A token endpoint that hangs, answers garbage or sends an ID token signed by an unknown key:
/// an error page, no session, the upstream never sees the request.
fn faulty_token_endpoint(s: &Setup) {
    for (mode, status, text) in [
        (TokenMode::Garbage, 502, "not valid"),
        (TokenMode::Hang, 502, "did not answer"),
        (TokenMode::UnknownKey, 401, "signature"),
    ] {
        s.fake.set_mode(mode);
        let mut b = Browser::new();
        let r = b.get(&format!("{}/private", s.faulty));
        assert_eq!(r.status, 302, "{mode:?}: {}", r.text());
        let state = query_param(r.header("location").expect("location"), "state").expect("state");
        let started = Instant::now();
        let r = b.get(&format!("{}/oauth2/callback?code=some-code&state={state}", s.faulty));
        assert_eq!(r.status, status, "{mode:?}: {}", r.text());
        assert!(r.text().contains(text), "{mode:?}: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}: the timeout ends the wait");
        assert!(b.cookie("wasmesh-session").is_none(), "{mode:?}: no session");
    }
}

/// With the ID token forwarded, RequestAuthentication verifies it and AuthorizationPolicy decides
/// on its principal: alice passes, bob (logged in as well) is denied.
fn policies_apply_to_the_login(s: &Setup) {
    let mut alice = Browser::new();
    let (seen, hops) = browse(&mut alice, &format!("{}/policed", s.policed), "alice");
    assert_eq!(hops.len(), 3, "a login happened");
    // authn verified the ID token and, as Istio without forwardOriginalToken, took it out.
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
    let mut bob = Browser::new();
    let r = bob.get(&format!("{}/policed", s.policed));
    assert_eq!(r.status, 302);
    let callback = log_in_at_provider(&mut bob, r.header("location").expect("location"), "bob");
    let r = bob.get(&callback);
    assert_eq!(r.status, 302, "bob has a session: {}", r.text());
    let r = bob.get(&format!("{}/policed", s.policed));
    assert_eq!(r.status, 403, "bob's verified token is not alice's: {}", r.text());
}
