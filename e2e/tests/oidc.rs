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
//!   token, code or secret in Envoy's log;
//! - issue 14's second round: headless Chromium walking the login as a person does (screenshot);
//!   client_secret_post with claim headers (client-sent ones removed); session key rotation
//!   (previous key accepted, then dropped); a session split over several cookies (sizes printed);
//!   wrong nonce, another audience, swapped flow/session cookies, an expired session; the JWKS
//!   fetched again when the provider rotates its signing key (and not again within the rate
//!   limit); requests before discovery waiting, and 503 after `readyWaitMs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wasmesh_e2e::app::App;
use wasmesh_e2e::envoy::Envoy;
use wasmesh_e2e::free_port;
use wasmesh_e2e::oidc::*;

/// Access tokens of the real provider live this long, so the refresh happens within the test.
const ACCESS_TTL: u64 = 7;

/// The sealing key of the rotated gateways (the tests' first key is `COOKIE_KEY`).
const COOKIE_KEY_2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";

struct Setup {
    provider: OidcProvider,
    fake: FakeProvider,
    app: wasmesh_e2e::app::AppHandle,
    envoy: Envoy,
    /// client_secret_post, claim headers.
    post: String,
    /// Sealing with `COOKIE_KEY_2`, still opening `COOKIE_KEY` sessions.
    rotated: String,
    /// Sealing with `COOKIE_KEY_2` only (the old key dropped).
    dropped: String,
    /// Its provider starts after Envoy (requests wait for discovery).
    late: (String, u16),
    /// Its provider never answers (`readyWaitMs` 3000: 503).
    never: String,
    /// Every token and session value the test saw: none may be in Envoy's log.
    seen: Mutex<Vec<String>>,
    /// `http://localhost:<port>` of the gateway logging in at the real provider.
    real: String,
    /// The one logging in at the fake provider.
    faulty: String,
    /// Login forwarding the ID token, then RequestAuthentication and AuthorizationPolicy.
    policed: String,
}

fn setup() -> Setup {
    let (real_port, faulty_port, policed_port, admin) = (free_port(), free_port(), free_port(), free_port());
    let (post_port, rotated_port, dropped_port, late_port, never_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let (late_provider, dead) = (free_port(), free_port());
    let real = format!("http://localhost:{real_port}");
    let faulty = format!("http://localhost:{faulty_port}");
    let policed = format!("http://localhost:{policed_port}");
    let post = format!("http://localhost:{post_port}");
    let rotated = format!("http://localhost:{rotated_port}");
    let dropped = format!("http://localhost:{dropped_port}");
    let late = format!("http://localhost:{late_port}");
    let never = format!("http://localhost:{never_port}");
    let gateways = [&real, &policed, &post, &rotated, &dropped];
    let provider = OidcProvider::start(
        &gateways.iter().map(|g| format!("{g}/oauth2/callback")).collect::<Vec<_>>().join(","),
        &gateways.iter().map(|g| format!("{g}/")).collect::<Vec<_>>().join(","),
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
    let with = |gw: &str, issuer: &str, cluster: &str, extra: Value| {
        let mut c = oidc_config(gw, issuer, cluster);
        for (k, v) in extra.as_object().expect("object") {
            c[k] = v.clone();
        }
        vec![chain_filter(&[("wasmesh.oidc", c)])]
    };
    let listeners = vec![
        (real_port, vec![chain_filter(&[("wasmesh.oidc", oidc_config(&real, &issuer, "oidc-provider"))])]),
        // A short limit: the hanging token endpoint's case waits for it.
        (faulty_port, with(&faulty, &fake.issuer(), "fake-provider", json!({"timeoutMs": 1500}))),
        (policed_port, policed_filters),
        (
            post_port,
            with(
                &post,
                &issuer,
                "oidc-provider",
                json!({"clientId": format!("{CLIENT_ID}-post"), "clientAuth": "client_secret_post",
                       "claimHeaders": [{"claim": "email", "header": "x-user-email"}, {"claim": "sub", "header": "x-user"}]}),
            ),
        ),
        (
            rotated_port,
            with(
                &rotated,
                &issuer,
                "oidc-provider",
                json!({"cookieKey": COOKIE_KEY_2, "previousCookieKeys": [COOKIE_KEY]}),
            ),
        ),
        (dropped_port, with(&dropped, &issuer, "oidc-provider", json!({"cookieKey": COOKIE_KEY_2}))),
        (late_port, with(&late, &format!("http://127.0.0.1:{late_provider}"), "late-provider", json!({}))),
        (never_port, with(&never, &format!("http://127.0.0.1:{dead}"), "dead-provider", json!({"readyWaitMs": 3000}))),
    ];
    // The controller named the provider's cluster as it names a jwksUri's: the same one here.
    clusters.retain(|c| c["name"] != "oidc-provider");
    // Node closes an idle keep-alive connection after 5 s; Envoy closes its side first, so a
    // token call never goes out on a connection the provider is closing.
    let mut real_provider = static_cluster("oidc-provider", provider.port);
    real_provider["common_http_protocol_options"] = json!({"idle_timeout": "3s"});
    clusters.push(real_provider);
    clusters.push(static_cluster("fake-provider", fake.port));
    clusters.push(static_cluster("late-provider", late_provider));
    clusters.push(static_cluster("dead-provider", dead));
    let t = Instant::now();
    let envoy = Envoy::start("oidc", &bootstrap(admin, app.port, listeners, clusters));
    eprintln!("envoy started in {:?}", t.elapsed());
    Setup {
        provider,
        fake,
        app,
        envoy,
        real,
        faulty,
        policed,
        post,
        rotated,
        dropped,
        late: (late, late_provider),
        never,
        seen: Mutex::new(Vec::new()),
    }
}

fn ready(s: &Setup) {
    for gw in [&s.real, &s.faulty, &s.policed, &s.post, &s.rotated, &s.dropped] {
        wait_ready(&format!("{gw}/ready-check"));
    }
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
    let t0 = Instant::now();
    let mut s = setup();
    eprintln!("setup: {:?}", t0.elapsed());
    let served_before = s.app.served();
    let reached = std::thread::scope(|scope| {
        // Before the providers are known: it waits for the late one, the dead one gets 503.
        let waits = scope.spawn(|| timed("requests_before_discovery_wait", t0, || requests_before_discovery_wait(&s)));
        ready(&s);
        let faulty = scope.spawn(|| timed("faulty_token_endpoint", t0, || faulty_token_endpoint(&s)));
        let policed = scope.spawn(|| timed("policies_apply_to_the_login", t0, || policies_apply_to_the_login(&s)));
        let chromium =
            scope.spawn(|| timed("a_person_logs_in_with_chromium", t0, || a_person_logs_in_with_chromium(&s)));
        let post = scope
            .spawn(|| timed("client_secret_post_and_claim_headers", t0, || client_secret_post_and_claim_headers(&s)));
        let rotation = scope.spawn(|| timed("session_keys_rotate", t0, || session_keys_rotate(&s)));
        let large =
            scope.spawn(|| timed("large_tokens_split_over_cookies", t0, || large_tokens_split_over_cookies(&s)));
        let swapped = scope.spawn(|| timed("swapped_and_expired_cookies", t0, || swapped_and_expired_cookies(&s)));
        let walked = timed("walk_the_flow", t0, || walk_the_flow(&s));
        let mut reached = walked;
        for (name, t) in [
            ("waits", waits),
            ("faulty token endpoint", faulty),
            ("policed gateway", policed),
            ("chromium", chromium),
            ("client_secret_post", post),
            ("key rotation", rotation),
            ("large tokens", large),
            ("swapped cookies", swapped),
        ] {
            reached += t.join().unwrap_or_else(|_| panic!("{name} cases failed"));
        }
        reached
    });
    // Every request that reached the app was counted; nothing else did (no refused request, no
    // failed login).
    assert_eq!(s.app.served(), served_before + reached);

    // The provider rotates its signing key: the next login's ID token names a `kid` the gateway
    // has not seen; it fetches the JWKS again and the login succeeds.
    let old_kid = s.provider.kid.clone();
    s.provider.restart();
    assert_ne!(s.provider.kid, old_kid, "a new signing key");
    let mut b = Browser::new();
    let (seen, hops) = browse(&mut b, &format!("{}/after-rotation", s.real), "frank");
    assert_eq!(hops.len(), 3, "a login");
    assert!(seen["headers"]["authorization"].as_str().is_some_and(|a| a.starts_with("Bearer ")));
    std::thread::sleep(Duration::from_millis(300)); // Envoy flushes its log every 100 ms
    let log = s.envoy.log();
    assert!(
        log.contains("JWKS fetched again"),
        "the unknown kid made the gateway fetch the JWKS: {}",
        log.lines().filter(|l| l.contains("wasmesh oidc")).collect::<Vec<_>>().join("\n")
    );
    // Rotated again at once: the refetch is rate-limited, so this login is refused (fail closed)
    // instead of every forged `kid` making the gateway call the provider.
    s.provider.restart();
    let mut b = Browser::new();
    let r = b.get(&format!("{}/too-soon", s.real));
    let callback = log_in_at_provider(&mut b, r.header("location").expect("location"), "grace");
    let r = b.get(&callback);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("signature"), "{}", r.text());
    assert_eq!(s.envoy.log().matches("JWKS fetched again").count(), 1, "one refetch within the rate limit");

    eprintln!("provider key rotation done at {:?}", t0.elapsed());
    // Nothing secret in Envoy's log, for the whole test.
    let log = s.envoy.log();
    for secret in [CLIENT_SECRET, COOKIE_KEY, COOKIE_KEY_2, "FAKE-AT", "CRAFTED-AT"] {
        assert!(!log.contains(secret), "a secret or token is in Envoy's log");
    }
    let seen = s.seen.lock().expect("seen");
    assert!(seen.len() > 10, "the test collected the tokens and cookies it saw");
    for value in seen.iter().filter(|v| v.len() >= 16) {
        assert!(!log.contains(value.as_str()), "a token or cookie value is in Envoy's log");
    }
}

/// Runs one group of cases, printing when it ended (the test's time budget).
fn timed(name: &str, t0: Instant, f: impl FnOnce() -> u64) -> u64 {
    let n = f();
    eprintln!("{name}: done at {:?}", t0.elapsed());
    n
}

fn remember(s: &Setup, values: impl IntoIterator<Item = String>) {
    s.seen.lock().expect("seen").extend(values);
}

/// Every cookie value a browser holds and the bearer an upstream received.
fn remember_browser(s: &Setup, b: &Browser, upstream: Option<&Value>) {
    remember(s, b.jar.iter().map(|c| c.value.clone()));
    if let Some(a) = upstream.and_then(|u| u["headers"]["authorization"].as_str()) {
        remember(s, [a.trim_start_matches("Bearer ").to_string()]);
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

    remember(s, [authorization[7..].to_string(), refreshed[7..].to_string(), session.value.clone()]);
    remember_browser(s, &tabs, None);
    reached
}

/// A token endpoint that hangs, answers garbage or sends an ID token signed by an unknown key:
/// an error page, no session, the upstream never sees the request.
fn faulty_token_endpoint(s: &Setup) -> u64 {
    for (mode, status, text) in [
        (TokenMode::Garbage, 502, "not valid"),
        (TokenMode::Hang, 502, "did not answer"),
        (TokenMode::UnknownKey, 401, "signature"),
        (TokenMode::WrongNonce, 401, "nonce"),
        (TokenMode::OtherAudience, 401, "another audience"),
    ] {
        s.fake.set_mode(mode);
        let mut b = Browser::new();
        let r = b.get(&format!("{}/private", s.faulty));
        assert_eq!(r.status, 302, "{mode:?}: {}", r.text());
        let location = r.header("location").expect("location");
        s.fake.set_nonce(&query_param(location, "nonce").expect("nonce"));
        let state = query_param(location, "state").expect("state");
        let started = Instant::now();
        let r = b.get(&format!("{}/oauth2/callback?code=some-code&state={state}", s.faulty));
        assert_eq!(r.status, status, "{mode:?}: {}", r.text());
        assert!(r.text().contains(text), "{mode:?}: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(10), "{mode:?}: the timeout ends the wait");
        assert!(b.cookie("wasmesh-session").is_none(), "{mode:?}: no session");
    }
    // The same token answer with the login's nonce, for this client, signed by the known key: a
    // session (so the refusals above are for the nonce, the audience, the key).
    s.fake.set_mode(TokenMode::Valid);
    let mut b = Browser::new();
    let r = b.get(&format!("{}/private", s.faulty));
    let location = r.header("location").expect("location");
    s.fake.set_nonce(&query_param(location, "nonce").expect("nonce"));
    let state = query_param(location, "state").expect("state");
    let r = b.get(&format!("{}/oauth2/callback?code=some-code&state={state}", s.faulty));
    assert_eq!((r.status, r.header("location")), (302, Some("/private")), "{}", r.text());
    let r = b.get(&format!("{}/private", s.faulty));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["authorization"], "Bearer FAKE-AT");
    remember_browser(s, &b, None);
    1
}

/// With the ID token forwarded, RequestAuthentication verifies it and AuthorizationPolicy decides
/// on its principal: alice passes, bob (logged in as well) is denied.
fn policies_apply_to_the_login(s: &Setup) -> u64 {
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
    remember_browser(s, &alice, None);
    remember_browser(s, &bob, None);
    1
}

/// Headless Chromium: the login form filled and submitted, consent, back at the page the app
/// returns; a screenshot of it under target/.
fn a_person_logs_in_with_chromium(s: &Setup) -> u64 {
    let dir = wasmesh_e2e::paths::repo_root().join("target").join("e2e-oidc");
    std::fs::create_dir_all(&dir).expect("target/e2e-oidc");
    let shot = dir.join("oidc-login.png");
    let _ = std::fs::remove_file(&shot);
    let start = format!("{}/app/browser?from=chromium", s.real);
    let shot_text = shot.to_string_lossy().into_owned();
    let out = wasmesh_e2e::browser::run_script(
        "oidc-login.mjs",
        &[("START_URL", &start), ("LOGIN_USER", "erin"), ("SCREENSHOT", &shot_text)],
        Duration::from_secs(40),
    );
    let result: Value = serde_json::from_str(out.trim().lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("oidc-login.mjs printed {out:?}: {e}"));
    eprintln!("chromium: {} screenshot: {}", result["steps"], shot.display());
    assert_eq!(result["url"], start.as_str(), "back at the page it asked for: {result}");
    let steps = result["steps"].to_string();
    assert!(steps.contains(&format!("login form at http://127.0.0.1:{}", s.provider.port)), "{steps}");
    assert!(steps.contains("consent"), "{steps}");
    // The page the app returned: what the upstream received.
    let page: Value = serde_json::from_str(result["text"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the app's page is not its JSON: {result}: {e}"));
    assert_eq!(page["path"], "/app/browser?from=chromium", "{page}");
    let bearer = page["headers"]["authorization"].as_str().unwrap_or_default().to_string();
    assert!(bearer.starts_with("Bearer "), "{page}");
    assert_eq!(userinfo(s.provider.port, &bearer), 200, "the provider accepts the token the upstream got");
    assert!(page["headers"].get("cookie").is_none() || !page.to_string().contains("wasmesh-session"), "{page}");
    let cookies = result["cookies"].as_array().cloned().unwrap_or_default();
    let session = cookies.iter().find(|c| c["name"] == "wasmesh-session").unwrap_or_else(|| panic!("{result}"));
    assert_eq!((session["httpOnly"].as_bool(), session["secure"].as_bool()), (Some(true), Some(true)), "{session}");
    assert_eq!(session["sameSite"], "Lax");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", shot.display());
    remember(s, cookies.iter().filter_map(|c| c["value"].as_str().map(String::from)));
    remember(s, [bearer[7..].to_string()]);
    1
}

/// The client authenticates with client_secret_post (the provider registered it so and refuses
/// Basic for it); ID token claims go upstream as the configured headers, and client-sent ones of
/// those names never do.
fn client_secret_post_and_claim_headers(s: &Setup) -> u64 {
    let mut b = Browser::new();
    let (seen, hops) = browse(&mut b, &format!("{}/claims", s.post), "carol");
    assert_eq!(hops.len(), 3, "a login");
    assert_eq!(seen["headers"]["x-user-email"], "carol@example.com", "{seen}");
    assert_eq!(seen["headers"]["x-user"], "carol", "{seen}");
    let forged = [("x-user", "admin"), ("x-user-email", "admin@example.com")];
    let r = b.request("GET", &format!("{}/claims", s.post), &forged, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let up = r.json();
    assert_eq!(
        (up["headers"]["x-user"].as_str(), up["headers"]["x-user-email"].as_str()),
        (Some("carol"), Some("carol@example.com")),
        "{up}"
    );
    // A bypass path: no session, and the forged headers are removed too.
    let r = Browser::new().request("GET", &format!("{}/healthz", s.post), &forged, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let h = &r.json()["headers"];
    assert!(h.get("x-user").is_none() && h.get("x-user-email").is_none(), "{h}");
    remember_browser(s, &b, Some(&up));
    3
}

/// A session sealed with the old key opens at a gateway that moved to a new key and keeps the
/// old one as previous; once the old key is dropped it does not.
fn session_keys_rotate(s: &Setup) -> u64 {
    let mut old = Browser::new();
    browse(&mut old, &format!("{}/before-rotation", s.real), "dave");
    let r = old.get(&format!("{}/kept", s.rotated));
    assert_eq!(r.status, 200, "the previous key still opens the session: {}", r.text());
    assert_eq!(old.get(&format!("{}/dropped", s.dropped)).status, 302, "the dropped key no longer does");
    // A login at the rotated gateway seals with the new key: the new-key-only gateway opens it,
    // the old-key-only one does not.
    let mut new = Browser::new();
    browse(&mut new, &format!("{}/new", s.rotated), "dave");
    assert_eq!(new.get(&format!("{}/new", s.dropped)).status, 200);
    assert_eq!(new.get(&format!("{}/new", s.real)).status, 302);
    remember_browser(s, &old, None);
    remember_browser(s, &new, None);
    4
}

/// A user whose ID token is large (120 groups): the session is split over several cookies,
/// each under 4 KB, put back together on the next request.
fn large_tokens_split_over_cookies(s: &Setup) -> u64 {
    let mut b = Browser::new();
    let (seen, hops) = browse(&mut b, &format!("{}/big", s.real), "bigdan");
    assert_eq!(hops.len(), 3);
    assert!(seen["headers"]["authorization"].as_str().is_some_and(|a| a.starts_with("Bearer ")));
    let parts: Vec<Cookie> = b.jar.iter().filter(|c| c.name.starts_with("wasmesh-session")).cloned().collect();
    let sizes: Vec<(String, usize, usize)> =
        parts.iter().map(|c| (c.name.clone(), c.value.len(), c.set_cookie.len())).collect();
    eprintln!("large session (ID token with 120 groups): {sizes:?} (name, value bytes, Set-Cookie bytes)");
    assert!(parts.len() >= 2, "split: {sizes:?}");
    assert!(parts.iter().all(|c| c.set_cookie.len() < 4096), "{sizes:?}");
    assert!(seen["headers"].get("cookie").is_none(), "no session chunk upstream: {seen}");
    let r = b.get(&format!("{}/big/again", s.real));
    assert_eq!(r.status, 200, "{}", r.text());
    // One chunk lost: not a session.
    let mut lost = Browser::new();
    let kept: Vec<String> =
        parts.iter().filter(|c| c.name != "wasmesh-session.1").map(|c| format!("{}={}", c.name, c.value)).collect();
    let r = lost.request("GET", &format!("{}/big", s.real), &[("cookie", &kept.join("; "))], b"");
    assert_eq!(r.status, 302);
    remember_browser(s, &b, Some(&seen));
    2
}

/// Cookies moved where they do not belong: one tab's login cookie under another tab's name, the
/// session as a login cookie and the reverse, another browser's state; and an expired session
/// sealed with the gateway's own key.
fn swapped_and_expired_cookies(s: &Setup) -> u64 {
    let mut tabs = Browser::new();
    let l1 = tabs.get(&format!("{}/tab1", s.real)).header("location").expect("1").to_string();
    let l2 = tabs.get(&format!("{}/tab2", s.real)).header("location").expect("2").to_string();
    let flows: Vec<Cookie> = tabs.jar.iter().filter(|c| c.name.starts_with("wasmesh-session-flow-")).cloned().collect();
    assert_eq!(flows.len(), 2);
    let (f1, f2) = (&flows[0], &flows[1]);
    let state2 = query_param(&l2, "state").expect("state");
    assert!(f2.name.ends_with(&state2[..12]));
    let callback = |cookie: &str, state: &str| {
        Browser::new().request(
            "GET",
            &format!("{}/oauth2/callback?code=x&state={state}", s.real),
            &[("cookie", cookie)],
            b"",
        )
    };
    // Tab 1's login cookie under tab 2's name: sealed for another name, it does not open.
    let r = callback(&format!("{}={}", f2.name, f1.value), &state2);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not valid"), "{}", r.text());
    // Another browser's state (this one has no login for it).
    let r = callback("other=1", &query_param(&l1, "state").expect("state"));
    assert_eq!(r.status, 400);
    // A login cookie presented as the session: not a session.
    let r = Browser::new().request(
        "GET",
        &format!("{}/x", s.real),
        &[("cookie", &format!("wasmesh-session={}", f1.value))],
        b"",
    );
    assert_eq!(r.status, 302);
    // A session presented as a login cookie.
    let mut user = Browser::new();
    browse(&mut user, &format!("{}/swap", s.real), "heidi");
    let session = user.cookie("wasmesh-session").expect("session").value.clone();
    let r = callback(&format!("{}={session}", f2.name), &state2);
    assert_eq!(r.status, 400, "{}", r.text());

    // An expired session, sealed with the gateway's key as the filter seals it: a new login.
    // The same session unexpired is accepted, so only the expiry refuses it.
    let config = oidc_config(&s.real, &s.provider.issuer(), "oidc-provider");
    let oidc =
        wasmesh_oidc::Oidc::new(wasmesh_oidc::OidcConfig::parse_json(config.to_string().as_bytes()).expect("config"))
            .expect("oidc");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_secs();
    let sealed = |expires: u64| {
        let session = wasmesh_oidc::flow::Session {
            access_token: "CRAFTED-AT".into(),
            id_token: None,
            refresh_token: None,
            access_expires: 0,
            expires,
            claims: Vec::new(),
        };
        let set = oidc.session_cookies(&session, now - 7200).expect("seal");
        set[0].split(';').next().expect("pair").to_string()
    };
    let r = Browser::new().request("GET", &format!("{}/expired", s.real), &[("cookie", &sealed(now - 5))], b"");
    assert_eq!(r.status, 302, "an expired session is no session: {}", r.text());
    let r = Browser::new().request("GET", &format!("{}/unexpired", s.real), &[("cookie", &sealed(now + 600))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["authorization"], "Bearer CRAFTED-AT");
    remember_browser(s, &tabs, None);
    remember_browser(s, &user, None);
    2
}

/// Requests arriving before the provider is known wait for it (paused, not 503); at a gateway
/// whose provider never answers they get 503 after `readyWaitMs`; bypass paths never wait.
fn requests_before_discovery_wait(s: &Setup) -> u64 {
    let (late, port) = &s.late;
    let started = Instant::now();
    let provider = std::thread::spawn({
        let port = *port;
        move || {
            std::thread::sleep(Duration::from_millis(1500));
            FakeProvider::start_on(port)
        }
    });
    let r = Browser::new().get(&format!("{late}/early"));
    let waited = started.elapsed();
    let _provider = provider.join().expect("late provider");
    assert_eq!(r.status, 302, "the request waited for the provider: {}", r.text());
    assert!(
        r.header("location").is_some_and(|l| l.starts_with(&format!("http://127.0.0.1:{port}/auth?"))),
        "{:?}",
        r.header("location")
    );
    assert!(waited >= Duration::from_millis(1400), "it was answered after the provider came: {waited:?}");
    eprintln!("a request before discovery waited {waited:?} and was sent to log in");

    let started = Instant::now();
    let r = Browser::new().get(&format!("{}/early", s.never));
    let waited = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("not available yet"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8), "{waited:?}");
    let started = Instant::now();
    assert_eq!(Browser::new().get(&format!("{}/healthz", s.never)).status, 200);
    assert!(started.elapsed() < Duration::from_millis(2500), "bypass paths do not wait");
    1
}
