#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use crate::config::Discovery;
use serde_json::{json, Value};
use wasmesh_authn::testing::{jwks, Signer, TestKey};

const NOW: u64 = 1_800_000_000;
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE";
const KEY2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI";

fn config(extra: Value) -> OidcConfig {
    let mut c = json!({
        "issuer": "https://idp.example",
        "providerCluster": "idp",
        "clientId": "app",
        "clientSecret": "s3cret",
        "scopes": ["profile"],
        "redirectUri": "https://gw.example/oauth2/callback",
        "postLogoutRedirectUri": "https://gw.example/",
        "bypassPaths": ["/healthz", "/public/"],
        "allowedReturnOrigins": ["https://app.example"],
        "cookieKey": KEY,
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    OidcConfig::parse_json(c.to_string().as_bytes()).unwrap()
}

fn oidc() -> Oidc {
    Oidc::new(config(json!({}))).unwrap()
}

fn signer() -> Signer {
    Signer::new("RS256", TestKey::Rsa1, Some("k1"))
}

fn provider() -> Provider {
    Provider {
        discovery: Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/auth".into(),
            token_endpoint: "https://idp.example/token".into(),
            jwks_uri: "https://idp.example/jwks".into(),
            end_session_endpoint: Some("https://idp.example/session/end".into()),
        },
        keys: wasmesh_authn::jwks::parse_jwks(&jwks(&[signer().jwk(true)])).unwrap(),
    }
}

fn get<'a>(path: &'a str, cookie: Option<&'a str>) -> Request<'a> {
    Request { method: "GET", path, cookie, accept: Some("text/html,*/*"), ..Default::default() }
}

fn reply_of(d: Decision) -> Reply {
    match d {
        Decision::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn header<'r>(r: &'r Reply, name: &str) -> Vec<&'r str> {
    r.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
}

fn query(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    wasmesh_authn::extract::parse_query(q.as_bytes(), |k| k == name).pop().map(|(_, v)| v)
}

/// A cookie's `name=value` from a Set-Cookie.
fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

/// A login started at `path`: (redirect location, the flow cookie pair).
fn start(o: &Oidc, path: &str) -> (String, String) {
    let r = reply_of(o.decide(&provider(), &get(path, None), NOW));
    assert_eq!(r.status, 302);
    (header(&r, "location")[0].to_string(), pair(header(&r, "set-cookie")[0]).to_string())
}

fn id_token(nonce: &str) -> String {
    signer().sign(&json!({"iss": "https://idp.example", "aud": "app", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": nonce}))
}

fn token_answer(nonce: &str) -> Vec<u8> {
    json!({"access_token": "AT-1", "id_token": id_token(nonce), "refresh_token": "RT-1", "expires_in": 60, "token_type": "Bearer"})
        .to_string()
        .into_bytes()
}

/// The whole login: the session cookie pairs the browser ends with, and where it is sent.
fn login(o: &Oidc, path: &str) -> (Vec<String>, String) {
    let (location, flow) = start(o, path);
    let state = query(&location, "state").unwrap();
    let nonce = query(&location, "nonce").unwrap();
    let cb = format!("/oauth2/callback?code=C1&state={state}");
    let Decision::Call { pending, .. } = o.decide(&provider(), &get(&cb, Some(&flow)), NOW) else { panic!() };
    let r = reply_of(o.finish(&provider(), *pending, Some(200), &token_answer(&nonce), NOW));
    assert_eq!(r.status, 302, "{}", r.body);
    let cookies = header(&r, "set-cookie")
        .into_iter()
        .filter(|c| !c.contains("Max-Age=0"))
        .map(|c| pair(c).to_string())
        .collect();
    (cookies, header(&r, "location")[0].to_string())
}

#[test]
fn no_session_redirects_to_the_provider_with_state_nonce_and_pkce() {
    let o = oidc();
    let (location, flow) = start(&o, "/app?x=1");
    assert!(location.starts_with("https://idp.example/auth?"));
    assert_eq!(query(&location, "response_type").as_deref(), Some("code"));
    assert_eq!(query(&location, "client_id").as_deref(), Some("app"));
    assert_eq!(query(&location, "redirect_uri").as_deref(), Some("https://gw.example/oauth2/callback"));
    assert_eq!(query(&location, "scope").as_deref(), Some("openid profile"));
    assert_eq!(query(&location, "code_challenge_method").as_deref(), Some("S256"));
    let state = query(&location, "state").unwrap();
    assert!(state.len() >= 32);
    assert!(query(&location, "nonce").unwrap().len() >= 32);
    assert_eq!(query(&location, "code_challenge").unwrap().len(), 43);
    assert!(flow.starts_with(&format!("wasmesh-session-flow-{}=", &state[..12])));
    let r = reply_of(o.decide(&provider(), &get("/app", None), NOW));
    let set = header(&r, "set-cookie")[0];
    for attr in ["Path=/oauth2/callback", "HttpOnly", "Secure", "SameSite=Lax", "Max-Age=600"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    assert!(!set.contains(&state), "the state is sealed, not in clear");
}

#[test]
fn the_code_exchange_carries_the_verifier_and_the_client_credentials() {
    let o = oidc();
    let (location, flow) = start(&o, "/");
    let state = query(&location, "state").unwrap();
    let cb = format!("/oauth2/callback?code=C1&state={state}");
    let Decision::Call { call, .. } = o.decide(&provider(), &get(&cb, Some(&flow)), NOW) else { panic!() };
    assert_eq!((call.authority.as_str(), call.path.as_str()), ("idp.example", "/token"));
    let body = call.body.as_bytes();
    let p = |k: &str| wasmesh_authn::extract::parse_query(body, |n| n == k).pop().map(|(_, v)| v);
    assert_eq!(p("grant_type").as_deref(), Some("authorization_code"));
    assert_eq!(p("code").as_deref(), Some("C1"));
    let verifier = p("code_verifier").unwrap();
    assert_eq!(crate::b64(&Sha256::digest(verifier.as_bytes())), query(&location, "code_challenge").unwrap());
    assert!(p("client_secret").is_none());
    assert!(call.headers.contains(&("authorization".into(), "Basic YXBwOnMzY3JldA==".into())));

    let post = Oidc::new(config(json!({"clientAuth": "client_secret_post"}))).unwrap();
    let (location, flow) = start(&post, "/");
    let cb = format!("/oauth2/callback?code=C1&state={}", query(&location, "state").unwrap());
    let Decision::Call { call, .. } = post.decide(&provider(), &get(&cb, Some(&flow)), NOW) else { panic!() };
    assert!(call.body.contains("client_secret=s3cret") && call.body.contains("client_id=app"));
    assert!(!call.headers.iter().any(|(k, _)| k == "authorization"));
}

#[test]
fn a_login_sets_a_sealed_session_and_forwards_the_bearer_without_our_cookies() {
    let o = oidc();
    let (session, back) = login(&o, "/app?x=1");
    assert_eq!(back, "/app?x=1");
    assert_eq!(session.len(), 1);
    assert!(!session[0].contains("AT-1"));
    let cookie = format!("other=1; {}", session[0]);
    match o.decide(&provider(), &get("/app", Some(&cookie)), NOW + 10) {
        Decision::Forward { authorization, cookie, set_cookies, claims } => {
            assert!(claims.is_empty(), "no claimHeaders configured");
            assert_eq!(authorization, "Bearer AT-1");
            assert_eq!(cookie.as_deref(), Some("other=1"));
            assert!(set_cookies.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let only = session[0].clone();
    let Decision::Forward { cookie, .. } = o.decide(&provider(), &get("/", Some(&only)), NOW) else { panic!() };
    assert_eq!(cookie, None, "the cookie header is removed when only ours were in it");

    let id = Oidc::new(config(json!({"forward": "id_token"}))).unwrap();
    let (session, _) = login(&id, "/");
    let Decision::Forward { authorization, .. } = id.decide(&provider(), &get("/", Some(&session[0])), NOW) else {
        panic!()
    };
    assert!(authorization.starts_with("Bearer ey"));
}

#[test]
fn claim_headers_come_from_the_verified_id_token() {
    let o = Oidc::new(config(json!({"claimHeaders": [
        {"claim": "sub", "header": "x-user"},
        {"claim": "missing", "header": "x-missing"},
    ]})))
    .unwrap();
    assert_eq!(o.claim_header_names().collect::<Vec<_>>(), ["x-user", "x-missing"]);
    let (session, _) = login(&o, "/");
    let Decision::Forward { claims, .. } = o.decide(&provider(), &get("/", Some(&session[0])), NOW) else { panic!() };
    assert_eq!(claims, [("x-user".to_string(), "alice".to_string())]);
    assert_eq!(claim_value(Some(&json!(["a", 1, true]))).as_deref(), Some("a,1,true"));
    assert_eq!(claim_value(Some(&json!({"a": 1}))), None);
    assert_eq!(claim_value(Some(&json!("line\r\nx-injected: 1"))), None);
    assert_eq!(claim_value(Some(&json!("x".repeat(2000)))), None);
    for (bad, want) in [
        (json!([{"claim": "sub", "header": "Authorization"}]), "lower-case"),
        (json!([{"claim": "sub", "header": "cookie"}]), "reserved"),
        (json!([{"claim": "sub", "header": "x-a"}, {"claim": "email", "header": "x-a"}]), "twice"),
        (json!([{"claim": "", "header": "x-a"}]), "claimHeaders[0].claim"),
    ] {
        let problems = config(json!({"claimHeaders": bad})).problems().join("; ");
        assert!(problems.contains(want), "{want}: {problems}");
    }
}

#[test]
fn an_id_token_with_an_unknown_kid_asks_for_the_jwks_again() {
    let o = oidc();
    let other = Signer::new("RS256", TestKey::Rsa2, Some("k2"));
    let id = other.sign(&json!({"iss": "https://idp.example", "aud": "app", "sub": "alice", "exp": NOW + 300, "iat": NOW, "nonce": "n"}));
    let body = json!({"access_token": "AT", "id_token": id}).to_string();
    assert!(o.needs_new_keys(&provider(), Some(200), body.as_bytes()));
    assert!(!o.needs_new_keys(&provider(), Some(200), &token_answer("n")), "a known kid");
    assert!(!o.needs_new_keys(&provider(), Some(500), body.as_bytes()));
}

#[test]
fn session_cookie_attributes_follow_the_configuration() {
    let o = Oidc::new(config(
        json!({"cookie": {"name": "sid", "domain": "example.com", "sameSite": "Strict", "lifetimeSeconds": 3600}}),
    ))
    .unwrap();
    let (location, flow) = start(&o, "/");
    let cb = format!("/oauth2/callback?code=C&state={}", query(&location, "state").unwrap());
    let Decision::Call { pending, .. } = o.decide(&provider(), &get(&cb, Some(&flow)), NOW) else { panic!() };
    let nonce = query(&location, "nonce").unwrap();
    let r = reply_of(o.finish(&provider(), *pending, Some(200), &token_answer(&nonce), NOW));
    let set = header(&r, "set-cookie");
    let session = set.iter().find(|c| c.starts_with("sid=")).unwrap();
    for attr in ["Path=/", "HttpOnly", "Secure", "SameSite=Strict", "Domain=example.com", "Max-Age=3600"] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    assert!(set.iter().any(|c| c.starts_with("sid-flow-") && c.contains("Max-Age=0")), "the flow cookie is cleared");
}

#[test]
fn api_requests_get_401_and_bypass_paths_pass() {
    let o = oidc();
    let cases = [
        Request { method: "GET", path: "/api", x_requested_with: Some("XMLHttpRequest"), ..Default::default() },
        Request { method: "GET", path: "/api", accept: Some("application/json"), ..Default::default() },
        Request { method: "GET", path: "/api", sec_fetch_mode: Some("cors"), ..Default::default() },
        Request { method: "POST", path: "/form", accept: Some("text/html"), ..Default::default() },
    ];
    for req in cases {
        let r = reply_of(o.decide(&provider(), &req, NOW));
        assert_eq!(r.status, 401, "{req:?}");
        assert!(header(&r, "set-cookie").is_empty(), "no flow cookie for an API request");
    }
    for path in ["/healthz", "/healthz?x", "/public/a.css"] {
        assert_eq!(o.decide(&provider(), &get(path, None), NOW), Decision::Pass, "{path}");
    }
    for path in ["/healthzx", "/public"] {
        assert_ne!(o.decide(&provider(), &get(path, None), NOW), Decision::Pass, "{path}");
    }
}

#[test]
fn forged_missing_replayed_or_foreign_state_is_refused() {
    let o = oidc();
    let (location, flow) = start(&o, "/");
    let state = query(&location, "state").unwrap();
    let status = |path: &str, cookie: Option<&str>| match o.decide(&provider(), &get(path, cookie), NOW) {
        Decision::Reply(r) => r.status,
        Decision::Call { .. } => 0,
        other => panic!("{other:?}"),
    };
    assert_eq!(status(&format!("/oauth2/callback?code=C&state={state}"), Some(&flow)), 0, "the genuine callback");
    assert_eq!(status("/oauth2/callback?code=C", Some(&flow)), 400, "missing state");
    assert_eq!(status(&format!("/oauth2/callback?state={state}"), Some(&flow)), 400, "missing code");
    assert_eq!(
        status(&format!("/oauth2/callback?code=C&state={state}"), None),
        400,
        "no flow cookie (another browser)"
    );
    // Same 12-character prefix, another state: the sealed state does not match.
    let forged = format!("{}{}", &state[..12], "A".repeat(state.len() - 12));
    assert_eq!(status(&format!("/oauth2/callback?code=C&state={forged}"), Some(&flow)), 400, "forged state");
    // Another login's flow cookie renamed to this state's name.
    let (_, other_flow) = start(&o, "/");
    let renamed = format!("{}={}", flow.split('=').next().unwrap(), other_flow.split_once('=').unwrap().1);
    assert_eq!(status(&format!("/oauth2/callback?code=C&state={state}"), Some(&renamed)), 400, "swapped flow cookie");
    let mut tampered = flow.clone();
    tampered.pop();
    assert_eq!(status(&format!("/oauth2/callback?code=C&state={state}"), Some(&tampered)), 400, "truncated");
    assert_eq!(status("/oauth2/callback?error=access_denied&state=x", None), 401);
    // A replay after the flow cookie's lifetime.
    let late = o.decide(&provider(), &get(&format!("/oauth2/callback?code=C&state={state}"), Some(&flow)), NOW + 601);
    assert_eq!(reply_of(late).status, 400);
}

#[test]
fn several_tabs_log_in_at_once() {
    let o = oidc();
    let (l1, f1) = start(&o, "/one");
    let (l2, f2) = start(&o, "/two");
    assert_ne!(f1.split('=').next(), f2.split('=').next(), "one flow cookie per login");
    let jar = format!("{f1}; {f2}");
    for (location, back) in [(l2, "/two"), (l1, "/one")] {
        let cb = format!("/oauth2/callback?code=C&state={}", query(&location, "state").unwrap());
        let Decision::Call { pending, .. } = o.decide(&provider(), &get(&cb, Some(&jar)), NOW) else { panic!() };
        let nonce = query(&location, "nonce").unwrap();
        let r = reply_of(o.finish(&provider(), *pending, Some(200), &token_answer(&nonce), NOW));
        assert_eq!((r.status, header(&r, "location")[0]), (302, back));
    }
}

#[test]
fn a_bad_token_answer_or_id_token_ends_in_an_error_page() {
    let o = oidc();
    let run = |status: Option<u32>, body: &dyn Fn(&str) -> Vec<u8>| {
        let (location, flow) = start(&o, "/");
        let cb = format!("/oauth2/callback?code=C&state={}", query(&location, "state").unwrap());
        let Decision::Call { pending, .. } = o.decide(&provider(), &get(&cb, Some(&flow)), NOW) else { panic!() };
        reply_of(o.finish(&provider(), *pending, status, &body(&query(&location, "nonce").unwrap()), NOW))
    };
    let other_aud = |n: &str| {
        json!({"access_token": "AT", "id_token": signer().sign(&json!({"iss": "https://idp.example", "aud": "other", "exp": NOW + 60, "iat": NOW, "nonce": n}))}).to_string().into_bytes()
    };
    let unknown_key = |n: &str| {
        let t = Signer::new("RS256", TestKey::Rsa2, Some("k1"))
            .sign(&json!({"iss": "https://idp.example", "aud": "app", "exp": NOW + 60, "iat": NOW, "nonce": n}));
        json!({"access_token": "AT", "id_token": t}).to_string().into_bytes()
    };
    type Body = Box<dyn Fn(&str) -> Vec<u8>>;
    let cases: Vec<(Option<u32>, Body, u32, &str)> = vec![
        (None, Box::new(|_| Vec::new()), 502, "did not answer"),
        (Some(500), Box::new(|_| b"oops".to_vec()), 502, "refused"),
        (Some(504), Box::new(|_| b"upstream request timeout".to_vec()), 502, "did not answer in time"),
        (Some(200), Box::new(|_| b"<html>garbage".to_vec()), 502, "not valid"),
        (Some(200), Box::new(|_| br#"{"access_token": "AT"}"#.to_vec()), 502, "no ID token"),
        (Some(200), Box::new(|_| token_answer("another-nonce")), 401, "nonce"),
        (Some(200), Box::new(other_aud), 401, "audience"),
        (Some(200), Box::new(unknown_key), 401, "signature"),
    ];
    for (status, body, want, text) in cases {
        let r = run(status, &*body);
        assert_eq!(r.status, want, "{text}: {}", r.body);
        assert!(r.body.contains(text), "{text}: {}", r.body);
        assert!(header(&r, "set-cookie").is_empty(), "{text}: no session");
        assert!(!r.body.contains("AT") && !r.body.contains("eyJ"), "no token in the page: {}", r.body);
    }
}

#[test]
fn a_tampered_swapped_or_expired_session_starts_a_new_login() {
    let o = oidc();
    let (session, _) = login(&o, "/");
    let s = &session[0];
    let mut tampered = s.clone();
    let i = tampered.len() - 5;
    tampered.replace_range(i..i + 1, if &tampered[i..i + 1] == "A" { "B" } else { "A" });
    let (_, flow) = start(&o, "/");
    let swapped = format!("wasmesh-session={}", flow.split_once('=').unwrap().1);
    let truncated = s[..s.len() - 10].to_string();
    for (cookie, now) in [(tampered, NOW), (swapped, NOW), (truncated, NOW), (s.clone(), NOW + 8 * 3600 + 1)] {
        let r = reply_of(o.decide(&provider(), &get("/", Some(&cookie)), now));
        assert_eq!(r.status, 302, "{cookie}");
        assert!(header(&r, "location")[0].starts_with("https://idp.example/auth?"));
    }
}

#[test]
fn a_session_sealed_with_the_previous_key_still_opens() {
    let before = oidc();
    let (session, _) = login(&before, "/");
    let rotated = Oidc::new(config(json!({"cookieKey": KEY2, "previousCookieKeys": [KEY]}))).unwrap();
    assert!(matches!(rotated.decide(&provider(), &get("/", Some(&session[0])), NOW), Decision::Forward { .. }));
    let retired = Oidc::new(config(json!({"cookieKey": KEY2}))).unwrap();
    assert!(matches!(retired.decide(&provider(), &get("/", Some(&session[0])), NOW), Decision::Reply(_)));
}

#[test]
fn an_expired_access_token_is_refreshed() {
    let o = oidc();
    let (session, _) = login(&o, "/");
    let later = NOW + 120;
    let Decision::Call { call, pending } = o.decide(&provider(), &get("/", Some(&session[0])), later) else { panic!() };
    assert!(call.body.contains("grant_type=refresh_token") && call.body.contains("refresh_token=RT-1"));
    let answer = br#"{"access_token": "AT-2", "expires_in": 60}"#;
    let Decision::Forward { authorization, set_cookies, .. } =
        o.finish(&provider(), *pending, Some(200), answer, later)
    else {
        panic!()
    };
    assert_eq!(authorization, "Bearer AT-2");
    let renewed = pair(&set_cookies[0]).to_string();
    let Decision::Forward { authorization, .. } = o.decide(&provider(), &get("/", Some(&renewed)), later) else {
        panic!()
    };
    assert_eq!(authorization, "Bearer AT-2");
    // The refresh token was kept (the answer had none): another refresh is possible.
    assert!(matches!(o.decide(&provider(), &get("/", Some(&renewed)), later + 120), Decision::Call { .. }));
    let Decision::Call { pending, .. } = o.decide(&provider(), &get("/", Some(&session[0])), later) else { panic!() };
    let r = reply_of(o.finish(&provider(), *pending, Some(400), b"{}", later));
    assert_eq!(r.status, 302, "a failed refresh ends the session");
}

#[test]
fn logout_clears_the_session_and_refuses_open_redirects() {
    let o = oidc();
    let (session, _) = login(&o, "/");
    let r = reply_of(o.decide(&provider(), &get("/oauth2/logout", Some(&session[0])), NOW));
    assert_eq!(r.status, 302);
    let location = header(&r, "location")[0];
    assert!(location.starts_with("https://idp.example/session/end?"));
    assert!(query(location, "id_token_hint").is_some());
    assert_eq!(query(location, "post_logout_redirect_uri").as_deref(), Some("https://gw.example/"));
    assert!(
        header(&r, "set-cookie")[0].starts_with("wasmesh-session=;")
            && header(&r, "set-cookie")[0].contains("Max-Age=0")
    );
    for bad in ["https://evil.example/", "//evil.example", "/\\evil.example"] {
        let path = format!("/oauth2/logout?return_to={}", crate::url::encode(bad));
        assert_eq!(reply_of(o.decide(&provider(), &get(&path, None), NOW)).status, 400, "{bad}");
    }
    let mut local = provider();
    local.discovery.end_session_endpoint = None;
    for (target, want) in [("https://app.example/x", "https://app.example/x"), ("/bye", "/bye")] {
        let path = format!("/oauth2/logout?return_to={}", crate::url::encode(target));
        let r = reply_of(o.decide(&local, &get(&path, None), NOW));
        assert_eq!(header(&r, "location")[0], want);
    }
}

#[test]
fn a_login_started_at_a_protocol_relative_path_returns_home() {
    let o = oidc();
    let (session, back) = login(&o, "//evil.example/x");
    assert!(!session.is_empty());
    assert_eq!(back, "/");
    let r = reply_of(o.decide(&provider(), &Request { method: "HEAD", path: "/x", ..Default::default() }, NOW));
    assert_eq!(r.status, 302);
}

#[test]
fn a_large_session_is_split_and_put_back_together() {
    let o = Oidc::new(config(json!({"forward": "id_token"}))).unwrap();
    let big = Session {
        access_token: "A".repeat(5000),
        id_token: Some("I".repeat(3000)),
        refresh_token: Some("R".repeat(500)),
        access_expires: NOW + 60,
        expires: NOW + 3600,
        claims: Vec::new(),
    };
    let set = o.session_cookies(&big, NOW).unwrap();
    let live: Vec<&str> = set.iter().filter(|c| !c.contains("Max-Age=0")).map(|c| pair(c)).collect();
    assert!(live.len() >= 3, "{}", live.len());
    assert!(live.iter().all(|c| c.len() < 4000));
    let jar = live.join("; ");
    let cookies = cookies(Some(&jar));
    assert_eq!(o.open_session(&cookies, NOW).unwrap(), big);
    let missing: Vec<_> = cookies.iter().filter(|(n, _)| *n != "wasmesh-session.1").copied().collect();
    assert_eq!(o.open_session(&missing, NOW), None);
    let huge = Session { access_token: "A".repeat(20_000), ..big };
    assert!(o.session_cookies(&huge, NOW).is_err());
}

#[test]
fn configuration_problems_name_their_field() {
    let bad = [
        (json!({"cookieKey": "short"}), "cookieKey"),
        (json!({"previousCookieKeys": ["AQID"]}), "previousCookieKeys[0]"),
        (json!({"redirectUri": "/cb"}), "redirectUri"),
        (json!({"issuer": "idp"}), "issuer"),
        (json!({"bypassPaths": ["health"]}), "bypassPaths[0]"),
        (json!({"allowedReturnOrigins": ["https://a.example/path"]}), "allowedReturnOrigins[0]"),
        (json!({"cookie": {"sameSite": "None", "secure": false}}), "cookie.sameSite"),
        (json!({"cookie": {"name": "a;b"}}), "cookie.name"),
        (json!({"timeoutMs": 5}), "timeoutMs"),
        (json!({"clientSecret": ""}), "clientSecret"),
    ];
    for (extra, field) in bad {
        let problems = config(extra.clone()).problems();
        assert!(problems.iter().any(|p| p.starts_with(field)), "{extra}: {problems:?}");
    }
    assert!(config(json!({})).problems().is_empty());
    let err = OidcConfig::parse_json(br#"{"issuer": "https://i", "nope": 1}"#).unwrap_err();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn discovery_must_name_the_issuer_and_stay_on_its_host() {
    let doc = |issuer: &str, token: &str| {
        json!({"issuer": issuer, "authorization_endpoint": "https://login.example/auth", "token_endpoint": token, "jwks_uri": "https://idp.example/jwks"}).to_string()
    };
    assert!(Discovery::parse(
        doc("https://idp.example", "https://idp.example/token").as_bytes(),
        "https://idp.example"
    )
    .is_ok());
    let e =
        Discovery::parse(doc("https://evil.example", "https://idp.example/token").as_bytes(), "https://idp.example");
    assert!(e.unwrap_err().contains("issuer"));
    let e =
        Discovery::parse(doc("https://idp.example", "https://evil.example/token").as_bytes(), "https://idp.example");
    assert!(e.unwrap_err().contains("token_endpoint"));
    assert!(Discovery::parse(b"<html>", "https://idp.example").is_err());
}
