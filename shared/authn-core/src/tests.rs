//! Engine tests: Istio YAML in, Envoy's answer out. Tokens are signed by the tests with the fixed
//! test keys (`testing`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::cache::MapCache;
use crate::testing::{jwks, swap_payload, unsigned, Signer, TestKey};
use crate::verify::{EvalStats, Mutation, Outcome, RequestHeaders, WaitFor};
use crate::{Authn, AuthnConfig};
use serde_json::{json, Value};
use wasmesh_istio::{FilterConfig, Resources, Workload};

const NOW: u64 = 1_800_000_000;
const NOW_MS: u64 = NOW * 1000;
const ISS: &str = "https://issuer.example.com";

struct Req(Vec<(String, Vec<u8>)>);

impl Req {
    fn get(path: &str) -> Req {
        Req(vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), path.as_bytes().to_vec()),
            (":authority".into(), b"app.example.com".to_vec()),
            ("x-forwarded-proto".into(), b"http".to_vec()),
        ])
    }
    fn with(mut self, name: &str, value: &str) -> Req {
        self.0.push((name.to_string(), value.as_bytes().to_vec()));
        self
    }
    fn bearer(self, token: &str) -> Req {
        self.with("authorization", &format!("Bearer {token}"))
    }
    fn method(mut self, m: &str) -> Req {
        self.0[0].1 = m.as_bytes().to_vec();
        self
    }
}

impl RequestHeaders for Req {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

fn workload() -> Workload {
    let mut w = Workload::new("httpbin-v1", "foo");
    w.labels.insert("app".into(), "httpbin".into());
    w
}

fn compile_for(w: Workload, yaml: &str) -> Result<Authn, crate::CompileError> {
    let items = wasmesh_istio::load_str(yaml, "test.yaml").unwrap();
    AuthnConfig::new(w).compile(&Resources { items })
}

fn compile(yaml: &str) -> Authn {
    compile_for(workload(), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn ra(name: &str, ns: &str, rules: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  jwtRules:\n{rules}\n---\n")
}

fn rule(issuer: &str, jwks_doc: &str, extra: &str) -> String {
    let mut s = format!("  - issuer: {issuer:?}\n    jwks: {:?}\n", jwks_doc);
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        s.push_str(&format!("    {line}\n"));
    }
    s
}

fn es256() -> Signer {
    Signer::new("ES256", TestKey::Ec256, Some("ec1"))
}

fn claims(extra: Value) -> Value {
    let mut base = json!({"iss": ISS, "sub": "alice", "exp": NOW + 3600, "iat": NOW - 10});
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn eval(a: &Authn, r: &Req) -> Outcome {
    let mut stats = EvalStats::default();
    a.evaluate(r, NOW_MS, &mut crate::NoCache, &mut stats)
}

fn eval_cached(a: &Authn, r: &Req, cache: &mut MapCache) -> (Outcome, EvalStats) {
    let mut stats = EvalStats::default();
    let o = a.evaluate(r, NOW_MS, cache, &mut stats);
    (o, stats)
}

fn denied(o: &Outcome) -> (u32, &'static str) {
    match o {
        Outcome::Deny(d) => (d.code, d.body),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn identity(o: &Outcome) -> Option<wasmesh_handover::RequestIdentity> {
    match o {
        Outcome::Allow(a) => a.identity.as_ref().map(|b| wasmesh_handover::decode(b).unwrap()),
        other => panic!("expected allow, got {other:?}"),
    }
}

fn mutations(o: &Outcome) -> Vec<Mutation> {
    match o {
        Outcome::Allow(a) => a.mutations.clone(),
        other => panic!("expected allow, got {other:?}"),
    }
}

fn one_rule(signer: &Signer, extra: &str) -> Authn {
    compile(&ra("jwt", "foo", &rule(ISS, &jwks(&[signer.jwk(false)]), extra)))
}

// ------------------------------------------------------------------------------------------
// Outcomes

#[test]
fn valid_token_is_accepted_identity_handed_over_and_token_removed() {
    let s = es256();
    let a = one_rule(&s, "");
    let t = s.sign(&claims(json!({"aud": ["web", "api"], "azp": "cli", "groups": ["admin", "dev"], "scope": "read write", "org": {"team": {"name": "core"}}})));
    let o = eval(&a, &Req::get("/").bearer(&t));
    let id = identity(&o).expect("identity");
    assert_eq!(id.principal, format!("{ISS}/alice"));
    let mut auds = id.audiences.clone();
    auds.sort();
    assert_eq!(auds, vec!["api", "web"], "the test signer writes a list in any order");
    assert_eq!(id.presenter.as_deref(), Some("cli"));
    assert_eq!(id.claims["groups"], json!(["admin", "dev"]));
    assert_eq!(id.claims["scope"], json!(["read", "write"]), "scope is space-delimited by default");
    assert_eq!(id.claims["org"]["team"]["name"], json!("core"));
    assert_eq!(
        mutations(&o),
        vec![Mutation::Remove("authorization".into())],
        "token removed before the upstream by default"
    );
}

#[test]
fn a_deterministic_es256_token_is_the_same_every_time_and_verifies() {
    let s = es256();
    let a = one_rule(&s, "");
    let c = claims(json!({}));
    let t = s.sign_es256_deterministic(&c);
    assert_eq!(t, s.sign_es256_deterministic(&c), "RFC 6979: one signature per message");
    assert_ne!(s.sign(&c), s.sign(&c), "jwt-simple's signatures are randomized");
    assert_eq!(identity(&eval(&a, &Req::get("/").bearer(&t))).expect("identity").principal, format!("{ISS}/alice"));
}

#[test]
fn no_token_continues_without_identity() {
    let s = es256();
    let a = one_rule(&s, "");
    let o = eval(&a, &Req::get("/"));
    assert_eq!(identity(&o), None);
    assert!(mutations(&o).is_empty());
    // A token in a location that is not configured is ignored (Istio test `token_value`).
    let t = s.sign(&claims(json!({})));
    let o = eval(&a, &Req::get(&format!("/?token_value={t}")).with("auth-header-param", &t));
    assert_eq!(identity(&o), None);
}

#[test]
fn failures_are_401_with_envoys_body_and_www_authenticate() {
    let s = es256();
    let a = one_rule(&s, "");
    let expired = s.sign(&claims(json!({"exp": NOW - 61})));
    let o = eval(&a, &Req::get("/some/path?q=1").bearer(&expired));
    match &o {
        Outcome::Deny(d) => {
            assert_eq!((d.code, d.body), (401, "Jwt is expired"));
            assert_eq!(
                d.www_authenticate,
                "Bearer realm=\"http://app.example.com/some/path?q=1\", error=\"invalid_token\""
            );
        }
        other => panic!("{other:?}"),
    }
    // Within the 60 s clock skew: still valid.
    let t = s.sign(&claims(json!({"exp": NOW - 60})));
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some());
    let t = s.sign(&claims(json!({"nbf": NOW + 61})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (401, "Jwt not yet valid"));
    let t = s.sign(&claims(json!({"nbf": NOW + 60})));
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some());
    let t = s.sign(&claims(json!({"iss": "https://other"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (401, "Jwt issuer is not configured"));
    let t = s.sign(&claims(json!({})));
    let forged = swap_payload(&t, &claims(json!({"sub": "mallory"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&forged))), (401, "Jwt verification fails"));
    assert_eq!(
        denied(&eval(&a, &Req::get("/").bearer("not-a-jwt"))),
        (401, "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")
    );
    let other_kid = Signer::new("ES256", TestKey::Ec256, Some("rotated")).sign(&claims(json!({})));
    assert_eq!(
        denied(&eval(&a, &Req::get("/").bearer(&other_kid))),
        (401, "Jwks doesn't have key to match kid or alg from Jwt")
    );
}

#[test]
fn realm_uses_original_path_and_is_truncated() {
    let s = es256();
    let a = one_rule(&s, "");
    let long = format!("/{}", "a".repeat(400));
    let o = eval(&a, &Req::get(&long).bearer("x.y.z").with("x-envoy-original-path", "/orig"));
    match o {
        Outcome::Deny(d) => {
            assert_eq!(d.www_authenticate, "Bearer realm=\"http://app.example.com/orig\", error=\"invalid_token\"")
        }
        other => panic!("{other:?}"),
    }
    match eval(&a, &Req::get(&long).bearer("x.y.z")) {
        Outcome::Deny(d) => assert_eq!(
            d.www_authenticate.len(),
            "Bearer realm=\"http://app.example.com\", error=\"invalid_token\"".len() + 256
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn audience_mismatch_is_403_and_audiences_are_sanitized_like_envoy() {
    let s = es256();
    let a = one_rule(&s, "audiences: [\"https://api.example.com/\", \"web\"]");
    let t = s.sign(&claims(json!({"aud": "mobile"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (403, "Audiences in Jwt are not allowed"));
    let t = s.sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))).0, 403, "no aud claim fails a configured audience");
    for aud in ["api.example.com", "http://api.example.com", "https://api.example.com/", "web"] {
        let t = s.sign(&claims(json!({"aud": [aud, "x"]})));
        assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some(), "aud {aud}");
    }
    // Audience is checked before the signature, as Envoy does: a forged token with a wrong
    // audience gets 403, not 401.
    let forged = swap_payload(&t, &claims(json!({"aud": "mobile"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&forged))).0, 403);
}

#[test]
fn every_supported_algorithm_verifies_and_keys_with_another_alg_do_not() {
    let cases = [
        ("RS256", TestKey::Rsa1),
        ("RS384", TestKey::Rsa1),
        ("RS512", TestKey::Rsa1),
        ("PS256", TestKey::Rsa2),
        ("PS384", TestKey::Rsa2),
        ("PS512", TestKey::Rsa2),
        ("ES256", TestKey::Ec256),
        ("ES384", TestKey::Ec384),
        ("EdDSA", TestKey::Ed25519),
    ];
    for (alg, key) in cases {
        let s = Signer::new(alg, key, Some("k"));
        let t = s.sign(&claims(json!({})));
        let a = one_rule(&s, "");
        assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some(), "{alg} with a JWK without alg");
        let a = compile(&ra("jwt", "foo", &rule(ISS, &jwks(&[s.jwk(true)]), "")));
        assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some(), "{alg} with a JWK naming it");
    }
    // An RSA JWK that says RS256 does not verify a PS256 token made with the same key.
    let rs = Signer::new("RS256", TestKey::Rsa1, Some("k"));
    let ps = Signer::new("PS256", TestKey::Rsa1, Some("k"));
    let a = compile(&ra("jwt", "foo", &rule(ISS, &jwks(&[rs.jwk(true)]), "")));
    assert_eq!(
        denied(&eval(&a, &Req::get("/").bearer(&ps.sign(&claims(json!({})))))).1,
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    // ES384 token, P-256 key without alg: the key is tried and fails.
    let es384 = Signer::new("ES384", TestKey::Ec384, Some("k"));
    let a = one_rule(&Signer::new("ES256", TestKey::Ec256, Some("k")), "");
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&es384.sign(&claims(json!({})))))).1, "Jwt verification fails");
}

#[test]
fn alg_none_and_hs_rs_confusion_are_refused() {
    let rs = Signer::new("RS256", TestKey::Rsa1, Some("k"));
    let a = one_rule(&rs, "");
    let none = unsigned(&json!({"alg": "none", "kid": "k"}), &claims(json!({})), b"");
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&none))).0, 401);
    let none = unsigned(&json!({"alg": "none", "kid": "k"}), &claims(json!({})), b"x");
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&none))), (401, "Jwt header [alg] is not supported"));
    // HMAC with the RSA public key as the secret: the RSA key is never an HMAC secret.
    let hs = Signer::hs256(&rs.rsa_public_der(), Some("k"));
    let t = hs.sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (401, "Jwt verification fails"));
    let hs = Signer::hs256(crate::testing::RSA1_PEM.as_bytes(), Some("k"));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&hs.sign(&claims(json!({})))))).0, 401);
}

#[test]
fn hmac_keys_in_a_jwks_work_for_hs_tokens_only() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let jwk = json!({"kty": "oct", "kid": "h", "k": crate::jwt::b64url_encode(secret)});
    let a = compile(&ra("jwt", "foo", &rule(ISS, &jwks(&[jwk]), "")));
    let t = Signer::hs256(secret, Some("h")).sign(&claims(json!({})));
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some());
    let t = Signer::hs256(b"ffffffffffffffffffffffffffffffff", Some("h")).sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))).1, "Jwt verification fails");
    let es = Signer::new("ES256", TestKey::Ec256, Some("h")).sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&es))).1, "Jwt verification fails");
}

#[test]
fn garbage_tokens_are_401_and_never_panic() {
    let s = es256();
    let a = one_rule(&s, "");
    let good = s.sign(&claims(json!({})));
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\"";
    for i in 0..400 {
        let token: String = match i % 4 {
            0 => (0..(next() % 300)).map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char).collect(),
            1 => {
                let mut b = good.clone().into_bytes();
                let at = (next() % b.len() as u64) as usize;
                b[at] = alphabet[(next() % 64) as usize];
                String::from_utf8(b).unwrap()
            }
            2 => good[..(next() % good.len() as u64) as usize].to_string(),
            _ => format!(
                "{}.{}.{}",
                "eyJhbGciOiJFUzI1NiJ9",
                crate::jwt::b64url_encode(&(0..(next() % 60)).map(|_| next() as u8).collect::<Vec<_>>()),
                "AAAA"
            ),
        };
        if token == good {
            continue;
        }
        match eval(&a, &Req::get("/").bearer(&token)) {
            Outcome::Deny(d) => assert_eq!(d.code, 401, "token {token:?}: {}", d.body),
            Outcome::Allow(al) => {
                assert!(al.identity.is_none(), "a corrupted token must never yield an identity: {token:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn oversized_tokens_are_refused() {
    let s = es256();
    let a = one_rule(&s, "");
    let huge = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(40_000), "c");
    let (o, stats) = eval_cached(&a, &Req::get("/").bearer(&huge), &mut MapCache::default());
    assert_eq!(denied(&o), (401, "Jwt is too large"));
    assert_eq!(stats.tokens_too_large, 1, "counted");
    // One byte under the default bound is parsed (and fails as the garbage it is).
    let limit = a.options().max_token_bytes;
    let just = format!("{}.{}.{}", "a".repeat(limit / 2), "b".repeat(limit - limit / 2 - 3), "c");
    assert_eq!(just.len(), limit);
    let (o, stats) = eval_cached(&a, &Req::get("/").bearer(&just), &mut MapCache::default());
    assert_ne!(denied(&o).1, "Jwt is too large");
    assert_eq!(stats.tokens_too_large, 0);
}

#[test]
fn claims_nested_deeper_than_the_limit_are_bad_json_and_counted() {
    let s = es256();
    let a = one_rule(&s, "");
    let nest = |n: usize| json!({"iss": ISS, "d": (0..n).fold(json!(1), |v, _| json!([v]))});
    let ok = s.sign(&nest(crate::jwt::MAX_JSON_DEPTH - 1));
    let (o, stats) = eval_cached(&a, &Req::get("/").bearer(&ok), &mut MapCache::default());
    assert!(matches!(o, Outcome::Allow(_)), "{o:?}");
    assert_eq!(stats.json_too_deep, 0);
    let deep = s.sign(&nest(crate::jwt::MAX_JSON_DEPTH));
    let (o, stats) = eval_cached(&a, &Req::get("/").bearer(&deep), &mut MapCache::default());
    assert_eq!(denied(&o), (401, "Jwt payload is an invalid JSON"));
    assert_eq!(stats.json_too_deep, 1);
}

#[test]
fn verified_tokens_too_large_to_cache_are_verified_each_time_and_counted() {
    let s = es256();
    // The entry keeps the identity (claims) and, for outputPayloadToHeader, the payload.
    let yaml = ra("jwt", "foo", &rule(ISS, &jwks(&[s.jwk(false)]), "outputPayloadToHeader: x-jwt-payload"));
    let items = wasmesh_istio::load_str(&yaml, "t.yaml").unwrap();
    let mut cfg = AuthnConfig::new(workload());
    cfg.max_token_bytes = 64 * 1024;
    let a = cfg.compile(&Resources { items }).unwrap();
    let big: Vec<String> = (0..2000).map(|i| format!("group-{i:05}-xxxxxx")).collect();
    let t = s.sign(&claims(json!({"groups": big})));
    assert!(t.len() < 64 * 1024, "{}", t.len());
    let mut cache = MapCache::default();
    for round in 0..2 {
        let (o, stats) = eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
        assert!(matches!(o, Outcome::Allow(_)), "{o:?}");
        assert_eq!((stats.signature_checks, stats.cache_entries_too_large), (1, 1), "round {round}");
    }
    assert!(cache.entries.is_empty());
}

#[test]
fn cache_memory_and_rule_count_are_bounded_at_configure_time() {
    let s = es256();
    let yaml = ra("jwt", "foo", &rule(ISS, &jwks(&[s.jwk(false)]), ""));
    let items = wasmesh_istio::load_str(&yaml, "t.yaml").unwrap();
    let max_slots = crate::cache::MAX_CACHE_BYTES / crate::cache::MAX_ENTRY_BYTES;
    let mut cfg = AuthnConfig::new(workload());
    cfg.jwt_cache_slots = max_slots as u32;
    assert!(cfg.compile(&Resources { items: items.clone() }).is_ok());
    cfg.jwt_cache_slots = max_slots as u32 + 1;
    let e = cfg.compile(&Resources { items }).err().unwrap().to_string();
    assert!(e.contains(&format!("jwtCacheSlots {} is too large; at most {max_slots}", max_slots + 1)), "{e}");

    let rules = |n: usize| -> String {
        (0..n).map(|i| rule(&format!("https://issuer-{i}.example.com"), &jwks(&[s.jwk(false)]), "")).collect()
    };
    assert!(compile_for(workload(), &ra("jwt", "foo", &rules(crate::config::MAX_JWT_RULES))).is_ok());
    let e = compile_for(workload(), &ra("jwt", "foo", &rules(crate::config::MAX_JWT_RULES + 1))).err().unwrap();
    assert!(e.to_string().contains("129 jwtRules select workload foo/httpbin-v1; at most 128"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Locations and outputs

#[test]
fn access_token_query_parameter_is_a_default_location() {
    let s = es256();
    let a = one_rule(&s, "");
    let t = s.sign(&claims(json!({})));
    let o = eval(&a, &Req::get(&format!("/p?x=1&access_token={t}")));
    assert!(identity(&o).is_some());
    assert!(mutations(&o).is_empty(), "query parameters are never stripped (Envoy)");
}

#[test]
fn a_token_after_hundreds_of_parameters_is_still_checked() {
    // Envoy parses the whole query string: a bad token placed after 500 other parameters is a
    // 401, never an anonymous request; a good one there is verified.
    let s = es256();
    let a = one_rule(&s, "");
    let filler: String = (0..500).map(|i| format!("p{i}=v&")).collect();
    let o = eval(&a, &Req::get(&format!("/p?{filler}access_token=not.a.token")));
    assert_eq!(denied(&o).0, 401);
    let t = s.sign(&claims(json!({})));
    assert!(identity(&eval(&a, &Req::get(&format!("/p?{filler}access_token={t}")))).is_some());
}

#[test]
fn from_headers_params_and_cookies() {
    let s = es256();
    let a = one_rule(&s, "fromHeaders:\n- name: X-Jwt-Assertion\n  prefix: \"Token \"\n- name: x-raw\nfromParams: [token, jwt]\nfromCookies: [session]");
    let t = s.sign(&claims(json!({})));
    for r in [
        Req::get("/").with("x-jwt-assertion", &format!("Token {t}")),
        Req::get("/").with("x-raw", &t),
        Req::get(&format!("/?jwt={t}")),
        Req::get(&format!("/?token={t}")),
        Req::get("/").with("cookie", &format!("a=b; session={t}")),
    ] {
        assert!(identity(&eval(&a, &r)).is_some());
    }
    // The default locations no longer apply.
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_none());
    assert!(identity(&eval(&a, &Req::get(&format!("/?access_token={t}")))).is_none());
    // A header without the prefix is not a token source.
    assert!(identity(&eval(&a, &Req::get("/").with("x-jwt-assertion", &t))).is_none());
    let o = eval(&a, &Req::get("/").with("x-jwt-assertion", &format!("Token {t}")));
    assert_eq!(mutations(&o), vec![Mutation::Remove("x-jwt-assertion".into())]);
}

#[test]
fn tokens_at_several_locations_must_all_be_valid() {
    let s = es256();
    let a = one_rule(&s, "fromParams: [token, secondary_token]");
    let good = s.sign(&claims(json!({})));
    let expired = s.sign(&claims(json!({"exp": NOW - 3600})));
    assert_eq!(
        denied(&eval(&a, &Req::get(&format!("/?token={good}&secondary_token={expired}")))),
        (401, "Jwt is expired")
    );
    assert!(identity(&eval(&a, &Req::get(&format!("/?token={good}&secondary_token={good}")))).is_some());
}

#[test]
fn forward_original_token_keeps_the_header() {
    let s = es256();
    let a = one_rule(&s, "forwardOriginalToken: true");
    let t = s.sign(&claims(json!({})));
    assert!(mutations(&eval(&a, &Req::get("/").bearer(&t))).is_empty());
}

#[test]
fn output_payload_and_claims_to_headers() {
    let s = es256();
    let a = one_rule(&s, "outputPayloadToHeader: x-jwt-payload\noutputClaimToHeaders:\n- header: x-sub\n  claim: sub\n- header: x-team\n  claim: org.team\n- header: x-n\n  claim: n\n- header: x-missing\n  claim: nope");
    let t = s.sign(&claims(json!({"org": {"team": "core"}, "n": 7})));
    let payload = t.split('.').nth(1).unwrap().to_string();
    let o = eval(&a, &Req::get("/").bearer(&t).with("x-sub", "forged"));
    assert_eq!(
        mutations(&o),
        vec![
            Mutation::Remove("x-jwt-payload".into()),
            Mutation::Remove("x-missing".into()),
            Mutation::Remove("x-n".into()),
            Mutation::Remove("x-sub".into()),
            Mutation::Remove("x-team".into()),
            Mutation::Add("x-jwt-payload".into(), payload.into_bytes()),
            Mutation::Add("x-sub".into(), b"alice".to_vec()),
            Mutation::Add("x-team".into(), b"core".to_vec()),
            Mutation::Add("x-n".into(), b"7".to_vec()),
            Mutation::Remove("authorization".into()),
        ]
    );
    // Without a token, client-sent output headers are still removed (they cannot be forged).
    let o = eval(&a, &Req::get("/").with("x-sub", "forged"));
    assert!(mutations(&o).contains(&Mutation::Remove("x-sub".into())));
}

#[test]
fn space_delimited_claims_add_to_scope_and_permission() {
    let s = es256();
    let a = one_rule(&s, "spaceDelimitedClaims: [roles]");
    let t = s.sign(&claims(json!({"roles": "a b", "permission": "p q", "other": "x y"})));
    let id = identity(&eval(&a, &Req::get("/").bearer(&t))).unwrap();
    assert_eq!(id.claims["roles"], json!(["a", "b"]));
    assert_eq!(id.claims["permission"], json!(["p", "q"]));
    assert_eq!(id.claims["other"], json!("x y"));
}

#[test]
fn cors_preflight_is_bypassed_only_with_origin_and_request_method() {
    let s = es256();
    let a = one_rule(&s, "");
    let expired = s.sign(&claims(json!({"exp": NOW - 3600})));
    let pre = Req::get("/")
        .method("OPTIONS")
        .bearer(&expired)
        .with("origin", "http://web")
        .with("access-control-request-method", "GET");
    assert_eq!(eval(&a, &pre), Outcome::CorsBypass);
    let no_origin = Req::get("/").method("OPTIONS").bearer(&expired).with("access-control-request-method", "GET");
    assert_eq!(denied(&eval(&a, &no_origin)).0, 401);
    let empty_origin = Req::get("/")
        .method("OPTIONS")
        .bearer(&expired)
        .with("origin", "")
        .with("access-control-request-method", "GET");
    assert_eq!(denied(&eval(&a, &empty_origin)).0, 401);
}

// ------------------------------------------------------------------------------------------
// Several rules and policies

#[test]
fn several_issuers_each_accepted_unknown_issuer_refused() {
    let s1 = Signer::new("ES256", TestKey::Ec256, Some("a"));
    let s2 = Signer::new("EdDSA", TestKey::Ed25519, Some("b"));
    let yaml = ra("one", "foo", &rule("https://a.example", &jwks(&[s1.jwk(false)]), ""))
        + &ra("two", "istio-system", &rule("https://b.example", &jwks(&[s2.jwk(false)]), "audiences: [b-aud]"));
    let a = compile(&yaml);
    assert_eq!(a.providers().len(), 2);
    let ta = s1.sign(&claims(json!({"iss": "https://a.example"})));
    let tb = s2.sign(&claims(json!({"iss": "https://b.example", "aud": "b-aud"})));
    assert_eq!(identity(&eval(&a, &Req::get("/").bearer(&ta))).unwrap().issuer, "https://a.example");
    assert_eq!(identity(&eval(&a, &Req::get("/").bearer(&tb))).unwrap().issuer, "https://b.example");
    let tc = s1.sign(&claims(json!({"iss": "https://c.example"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&tc))), (401, "Jwt issuer is not configured"));
    let tb_bad_aud = s2.sign(&claims(json!({"iss": "https://b.example", "aud": "x"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&tb_bad_aud))).0, 403);
    // Issuer a's token signed by b's key.
    let wrong_key = s2.sign(&claims(json!({"iss": "https://a.example"})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&wrong_key))).0, 401);
    assert!(identity(&eval(&a, &Req::get("/"))).is_none());
}

#[test]
fn policies_merge_by_namespace_and_selector_sorted_by_issuer() {
    let s = es256();
    let j = jwks(&[s.jwk(false)]);
    let yaml = ra("root", "istio-system", &rule("https://z.example", &j, ""))
        + &ra("ns", "foo", &rule("https://m.example", &j, ""))
        + &ra("other-ns", "bar", &rule("https://x.example", &j, ""))
        + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: sel, namespace: foo}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n  jwtRules:\n  - issuer: https://a.example\n    jwks: '" + &j + "'\n---\n"
        + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: sel2, namespace: foo}\nspec:\n  selector: {matchLabels: {app: other}}\n  jwtRules:\n  - issuer: https://b.example\n    jwks: '" + &j + "'\n---\n"
        + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: tr, namespace: foo}\nspec:\n  targetRefs: [{kind: Service, name: httpbin}]\n  jwtRules:\n  - issuer: https://c.example\n    jwks: '" + &j + "'\n";
    let a = compile(&yaml);
    let issuers: Vec<&str> = a.providers().iter().map(|p| p.issuer.as_str()).collect();
    assert_eq!(issuers, vec!["https://a.example", "https://m.example", "https://z.example"]);
    // The root namespace's policy applies in every namespace; another workload there sees it.
    let a2 = compile_for(Workload::new("x", "bar"), &yaml).unwrap();
    let issuers: Vec<&str> = a2.providers().iter().map(|p| p.issuer.as_str()).collect();
    assert_eq!(issuers, vec!["https://x.example", "https://z.example"]);
    // A workload in the root namespace gets its policies once.
    let a3 = compile_for(Workload::new("x", "istio-system"), &yaml).unwrap();
    assert_eq!(a3.providers().len(), 1);
    // No policy selects: not configured, requests untouched.
    let a4 = compile_for(Workload::new("x", "elsewhere"), &ra("n", "foo", &rule(ISS, &j, ""))).unwrap();
    assert_eq!(eval(&a4, &Req::get("/")), Outcome::NotConfigured);
}

#[test]
fn gateway_api_gateways_take_target_refs() {
    let s = es256();
    let j = jwks(&[s.jwk(false)]);
    let yaml = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: tr, namespace: gw}\nspec:\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: web}]\n  jwtRules:\n  - issuer: https://c.example\n    jwks: '".to_string() + &j + "'\n";
    let mut w = Workload::new("web-istio", "gw");
    w.labels.insert("gateway.networking.k8s.io/gateway-name".into(), "web".into());
    w.mode = wasmesh_istio::ProxyMode::Gateway;
    assert_eq!(compile_for(w.clone(), &yaml).unwrap().providers().len(), 1);
    w.labels.insert("gateway.networking.k8s.io/gateway-name".into(), "other".into());
    assert_eq!(compile_for(w, &yaml).unwrap().providers().len(), 0);
}

#[test]
fn validation_errors_name_resource_field_and_value() {
    let cases = [
        ("  - issuer: \"\"\n", "issuer or jwksUri must be non-empty string"),
        ("  - issuer: i\n    audiences: [\"\"]\n", "spec.jwtRules[0].audiences[0]"),
        ("  - issuer: i\n    jwksUri: ftp://x/keys\n", "URI scheme"),
        ("  - issuer: i\n    jwks: 'not json'\n", "jwks parse error"),
        ("  - issuer: i\n    jwks: '{\"keys\":[]}'\n    jwksUri: https://x/k\n", "only one of jwks or jwksUri"),
        ("  - issuer: i\n    fromHeaders: [{name: \"\"}]\n", "location header name must be non-empty"),
        ("  - issuer: i\n    fromParams: [\"\"]\n", "location query must be non-empty"),
        ("  - issuer: i\n    fromCookies: [\"\"]\n", "cookie name must be non-empty"),
        (
            "  - issuer: i\n    outputClaimToHeaders: [{header: \"bad header\", claim: sub}]\n",
            "invalid header name \"bad header\"",
        ),
        (
            "  - issuer: i\n    outputClaimToHeaders: [{header: \"\", claim: sub}]\n",
            "header and claim value must be non-empty",
        ),
        ("  - issuer: i\n    timeout: 5 seconds\n", "spec.jwtRules[0].timeout"),
        ("  - issuer: i\n    timeout: 1us\n", "at least 1ms"),
        ("  - issuer: notaurl\n", "OpenID discovery"),
    ];
    for (rules, want) in cases {
        let yaml = ra("bad", "foo", rules);
        let err = compile_for(workload(), &yaml).err().unwrap_or_else(|| panic!("{rules} should fail")).to_string();
        assert!(err.contains(want), "{rules}: {err}");
        if !want.contains("OpenID") {
            assert!(err.contains("RequestAuthentication foo/bad"), "{err}");
        }
    }
    // A misspelt field is refused by the typed resources.
    let items = wasmesh_istio::load_str(&ra("bad", "foo", "  - issuer: i\n    fromHeader: [{name: x}]\n"), "t.yaml");
    assert!(items.is_err());
}

#[test]
fn inline_jwks_with_no_usable_key_fails_every_presented_token() {
    let s = es256();
    let a =
        compile(&ra("jwt", "foo", &rule(ISS, r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"weird"}]}"#, "")));
    let t = s.sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (401, "Jwks doesn't have any valid public key"));
    assert!(identity(&eval(&a, &Req::get("/"))).is_none(), "token-less requests still pass");
}

// ------------------------------------------------------------------------------------------
// Verified-token cache

#[test]
fn repeated_token_is_served_from_the_cache() {
    let s = es256();
    let a = one_rule(&s, "outputClaimToHeaders:\n- header: x-sub\n  claim: sub");
    let t = s.sign(&claims(json!({"groups": ["g"]})));
    let mut cache = MapCache::default();
    let (o1, st1) = eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
    assert_eq!((st1.cache_hits, st1.cache_misses, st1.signature_checks), (0, 1, 1));
    assert_eq!(cache.entries.len(), 1);
    let stored = cache.entries.values().next().unwrap();
    assert!(!String::from_utf8_lossy(stored).contains(&t), "the token itself is never stored");
    let key = cache.entries.keys().next().unwrap().clone();
    assert!(!key.contains(&t[..20]));
    let (o2, st2) = eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
    assert_eq!((st2.cache_hits, st2.signature_checks), (1, 0), "not verified again");
    assert_eq!(o1, o2, "same identity and headers from the cache");
    // A different (forged) token does not hit.
    let forged = swap_payload(&t, &claims(json!({"sub": "mallory"})));
    let (o3, st3) = eval_cached(&a, &Req::get("/").bearer(&forged), &mut cache);
    assert_eq!(st3.cache_hits, 0);
    assert_eq!(denied(&o3).0, 401);
}

#[test]
fn cached_tokens_still_expire() {
    let s = es256();
    let a = one_rule(&s, "");
    let t = s.sign(&claims(json!({"exp": NOW + 10})));
    let mut cache = MapCache::default();
    eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
    let mut stats = EvalStats::default();
    let later = a.evaluate(&Req::get("/").bearer(&t), (NOW + 71) * 1000, &mut cache, &mut stats);
    assert_eq!(denied(&later), (401, "Jwt is expired"));
    assert_eq!(stats.signature_checks, 0);
}

#[test]
fn cache_is_bounded_by_slots() {
    let s = es256();
    let yaml = ra("jwt", "foo", &rule(ISS, &jwks(&[s.jwk(false)]), ""));
    let items = wasmesh_istio::load_str(&yaml, "t.yaml").unwrap();
    let mut cfg = AuthnConfig::new(workload());
    cfg.jwt_cache_slots = 4;
    let a = cfg.compile(&Resources { items }).unwrap();
    let mut cache = MapCache::default();
    for i in 0..30 {
        let t = s.sign(&claims(json!({"jti": format!("t{i}")})));
        eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
    }
    assert!(cache.entries.len() <= 4, "{}", cache.entries.len());
}

#[test]
fn cache_entries_of_another_configuration_are_not_used() {
    let s = es256();
    let t = s.sign(&claims(json!({})));
    let a = one_rule(&s, "");
    let b = one_rule(&s, "audiences: [x]");
    let mut cache = MapCache::default();
    eval_cached(&a, &Req::get("/").bearer(&t), &mut cache);
    let (o, st) = eval_cached(&b, &Req::get("/").bearer(&t), &mut cache);
    assert_eq!(st.cache_hits, 0);
    assert_eq!(denied(&o).0, 403);
}

// ------------------------------------------------------------------------------------------
// Remote JWKS

fn remote_authn(extra: &str) -> Authn {
    let yaml = ra("jwt", "foo", &format!("  - issuer: {ISS:?}\n    jwksUri: http://127.0.0.1:9999/jwks.json\n{extra}"));
    compile(&yaml)
}

#[test]
fn remote_keys_pause_requests_until_fetched() {
    let s = es256();
    let mut a = remote_authn("");
    let t = s.sign(&claims(json!({})));
    assert_eq!(eval(&a, &Req::get("/").bearer(&t)), Outcome::Wait(vec![WaitFor { provider: 0, unknown_kid: false }]));
    assert!(identity(&eval(&a, &Req::get("/"))).is_none(), "no token: no need to wait");
    let fetches = a.poll_fetches(NOW_MS);
    assert_eq!(fetches.len(), 1);
    assert_eq!(fetches[0].1.cluster, "wasmesh-jwks|http|127.0.0.1|9999");
    assert_eq!(fetches[0].1.path, "/jwks.json");
    assert_eq!(fetches[0].1.timeout_ms, 5000);
    assert_eq!(eval(&a, &Req::get("/").bearer(&t)), Outcome::Wait(vec![WaitFor { provider: 0, unknown_kid: false }]));
    a.on_fetch_response(0, NOW_MS + 5, Some(200), jwks(&[s.jwk(false)]).as_bytes());
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some());
}

#[test]
fn unreachable_jwks_fails_presented_tokens_only() {
    let s = es256();
    let mut a = remote_authn("    timeout: 2s\n");
    let f = a.poll_fetches(NOW_MS);
    assert_eq!(f[0].1.timeout_ms, 2000);
    a.on_fetch_response(0, NOW_MS, None, b"");
    let t = s.sign(&claims(json!({})));
    assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&t))), (401, "Jwks remote fetch is failed"));
    assert!(identity(&eval(&a, &Req::get("/"))).is_none());
    // Retry after backoff succeeds.
    assert!(a.poll_fetches(NOW_MS + 500).is_empty());
    assert_eq!(a.poll_fetches(NOW_MS + 1000).len(), 1);
    a.on_fetch_response(0, NOW_MS + 1001, Some(200), jwks(&[s.jwk(false)]).as_bytes());
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t))).is_some());
}

#[test]
fn key_rotation_by_kid_refetches_once() {
    let old = Signer::new("ES256", TestKey::Ec256, Some("old"));
    let new = Signer::new("EdDSA", TestKey::Ed25519, Some("new"));
    let mut a = remote_authn("");
    a.poll_fetches(NOW_MS);
    a.on_fetch_response(0, NOW_MS, Some(200), jwks(&[old.jwk(false)]).as_bytes());
    let t_new = new.sign(&claims(json!({})));
    let o = eval(&a, &Req::get("/").bearer(&t_new));
    assert_eq!(o, Outcome::Wait(vec![WaitFor { provider: 0, unknown_kid: true }]));
    a.want_keys(WaitFor { provider: 0, unknown_kid: true }, NOW_MS);
    assert_eq!(a.poll_fetches(NOW_MS).len(), 1, "refetch now");
    a.on_fetch_response(0, NOW_MS + 3, Some(200), jwks(&[old.jwk(false), new.jwk(false)]).as_bytes());
    assert!(identity(&eval(&a, &Req::get("/").bearer(&t_new))).is_some());
    // A kid nobody serves: one refetch, then 401 without waiting again.
    let bogus = Signer::new("EdDSA", TestKey::Ed25519, Some("bogus")).sign(&claims(json!({})));
    let later = NOW_MS + 20_000;
    let mut stats = EvalStats::default();
    let o = a.evaluate(&Req::get("/").bearer(&bogus), later, &mut crate::NoCache, &mut stats);
    assert!(matches!(o, Outcome::Wait(_)));
    a.want_keys(WaitFor { provider: 0, unknown_kid: true }, later);
    a.poll_fetches(later);
    a.on_fetch_response(0, later + 1, Some(200), jwks(&[old.jwk(false), new.jwk(false)]).as_bytes());
    let o = a.evaluate(&Req::get("/").bearer(&bogus), later + 2, &mut crate::NoCache, &mut stats);
    assert_eq!(denied(&o).1, "Jwks doesn't have key to match kid or alg from Jwt");
    // Old keys removed from the JWKS: a cached verification by a removed key is not honoured.
    let t_old = old.sign(&claims(json!({})));
    let mut cache = MapCache::default();
    let o = a.evaluate(&Req::get("/").bearer(&t_old), later + 3, &mut cache, &mut stats);
    assert!(identity(&o).is_some());
    let t2 = later + 30_000;
    a.want_keys(WaitFor { provider: 0, unknown_kid: true }, t2);
    a.poll_fetches(t2);
    a.on_fetch_response(0, t2, Some(200), jwks(&[new.jwk(false)]).as_bytes());
    let mut stats = EvalStats::default();
    let o = a.evaluate(&Req::get("/").bearer(&t_old), t2 + 1, &mut cache, &mut stats);
    assert_eq!(stats.cache_hits, 0);
    assert_eq!(denied(&o).1, "Jwks doesn't have key to match kid or alg from Jwt");
}

#[test]
fn a_ready_provider_does_not_wait_for_a_pending_one() {
    let s1 = Signer::new("ES256", TestKey::Ec256, Some("a"));
    let yaml = ra("one", "foo", &rule("https://a.example", &jwks(&[s1.jwk(false)]), ""))
        + &ra("two", "foo", "  - issuer: https://b.example\n    jwksUri: http://127.0.0.1:9999/jwks.json\n");
    let a = compile(&yaml);
    let ta = s1.sign(&claims(json!({"iss": "https://a.example"})));
    assert_eq!(identity(&eval(&a, &Req::get("/").bearer(&ta))).unwrap().issuer, "https://a.example");
    let tb = s1.sign(&claims(json!({"iss": "https://b.example"})));
    assert!(matches!(eval(&a, &Req::get("/").bearer(&tb)), Outcome::Wait(_)));
}

#[test]
fn requirement_is_istios() {
    use crate::config::istio_requirement;
    use crate::verify::Requirement::*;
    assert_eq!(istio_requirement(1), Any { children: vec![Provider(0)], allow_missing: true });
    assert_eq!(
        istio_requirement(2),
        Any {
            children: vec![
                Provider(0),
                Provider(1),
                All(vec![
                    Any { children: vec![Provider(0)], allow_missing: true },
                    Any { children: vec![Provider(1)], allow_missing: true }
                ])
            ],
            allow_missing: false
        }
    );
}

#[test]
fn jwks_uri_parsing() {
    let ep = crate::parse_jwks_uri("https://IdP.example.com/o/keys?x=1").unwrap();
    assert_eq!(
        (ep.host.as_str(), ep.port, ep.authority.as_str(), ep.path.as_str(), ep.tls),
        ("idp.example.com", 443, "idp.example.com", "/o/keys?x=1", true)
    );
    let ep = crate::parse_jwks_uri("http://10.0.0.1:8080").unwrap();
    assert_eq!(
        (ep.authority.as_str(), ep.path.as_str(), ep.cluster.as_str()),
        ("10.0.0.1:8080", "/", "wasmesh-jwks|http|10.0.0.1|8080")
    );
    let ep = crate::parse_jwks_uri("http://[::1]:81/k").unwrap();
    assert_eq!((ep.host.as_str(), ep.authority.as_str()), ("::1", "[::1]:81"));
    for bad in ["ftp://x", "http://", "http://h:0/", "http://h:99999/", "x"] {
        assert!(crate::parse_jwks_uri(bad).is_err(), "{bad}");
    }
    let max = crate::remote::MAX_JWKS_URI_BYTES;
    let at = |n: usize| format!("https://h/{}", "a".repeat(n - "https://h/".len()));
    assert!(crate::parse_jwks_uri(&at(max)).is_ok());
    let e = crate::parse_jwks_uri(&at(max + 1)).err().unwrap();
    assert!(e.contains(&format!("jwksUri is {} characters; at most {max}", max + 1)), "{e}");
}

#[test]
fn rsa_tokens_with_empty_segments_verify_over_the_rebuilt_input_as_envoy() {
    // Envoy splits with SkipEmpty and signs/verifies `<header>.<payload>` rebuilt from the parts.
    for alg in ["RS256", "PS384"] {
        let s = Signer::new(alg, TestKey::Rsa1, Some("k"));
        let a = one_rule(&s, "");
        let t = s.sign(&claims(json!({})));
        let (head, rest) = t.split_once('.').unwrap();
        let odd = format!("{head}..{rest}");
        assert!(identity(&eval(&a, &Req::get("/").bearer(&odd))).is_some(), "{alg}: {odd}");
        let mut bad = t.clone().into_bytes();
        let at = head.len() + 3;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(denied(&eval(&a, &Req::get("/").bearer(&bad))).0, 401, "{alg}: changed payload");
    }
}

#[test]
#[allow(clippy::unwrap_used)]
fn without_workload_the_config_parses_and_compiling_refuses() {
    let bytes = br#"{"mesh": {"domainSuffix": "corp"}}"#;
    let cfg = AuthnConfig::parse_json(bytes).unwrap();
    assert!(cfg.workload.is_none());
    assert_eq!(cfg.mesh().domain_suffix, "corp");
    let e = cfg.compile_parsed(bytes).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("workload: absent"), "{e}");
    let mut with = cfg.clone();
    with.workload = Some(workload());
    assert!(with.compile_parsed(bytes).is_ok());
}

#[test]
fn the_clock_is_read_only_when_a_token_is_checked_and_then_once() {
    let s = es256();
    let a = one_rule(&s, "");
    let reads = std::cell::Cell::new(0u32);
    let clock = || {
        reads.set(reads.get() + 1);
        NOW * 1000
    };
    let run = |r: &Req| {
        reads.set(0);
        let mut cache = MapCache::default();
        let out = a.evaluate_with_clock(r, &clock, &mut cache, &mut EvalStats::default());
        (out, reads.get())
    };
    let (out, n) = run(&Req::get("/"));
    assert_eq!((identity(&out), n), (None, 0), "no token: no clock read");
    let pre = Req::get("/").method("OPTIONS").with("origin", "http://web").with("access-control-request-method", "GET");
    assert_eq!(run(&pre), (Outcome::CorsBypass, 0));
    let t = s.sign(&claims(json!({})));
    let (out, n) = run(&Req::get(&format!("/?access_token={t}")).bearer(&t));
    assert!(identity(&out).is_some(), "{out:?}");
    assert_eq!(n, 1, "two tokens, one clock read");
    let expired = s.sign(&claims(json!({"exp": NOW - 3600})));
    assert_eq!(denied(&run(&Req::get("/").bearer(&expired)).0).1, "Jwt is expired");
}

/// Issue 11 point 5: the keys and tokens where wasmesh used to differ from jwt_authn. Validly
/// signed tokens with a repeated header member or claim are bad JSON (Envoy's protobuf parser),
/// ES512 verifies, RSA keys with e = 3 and of 512…8192 bits are used, other exponents skipped.
#[test]
fn envoy_parity_keys_and_repeated_members() {
    use crate::testing::{Es512, RawRsa};
    let rsa = RawRsa::new("rsa1", "r1");
    let es512 = Es512::new("e5");
    let small = RawRsa::new("rsa512", "s512");
    let r1024 = RawRsa::new("rsa1024", "s1024");
    let e3 = RawRsa::new("rsa2048e3", "e3");
    let big = RawRsa::new("rsa8192", "b8192");
    let e17 = RawRsa::new("rsa1", "e17");
    let doc = jwks(&[
        rsa.jwk(),
        es512.jwk(),
        small.jwk(),
        r1024.jwk(),
        e3.jwk(),
        big.jwk(),
        e17.jwk_with(rsa.jwk()["n"].as_str().unwrap(), "EQ"),
    ]);
    let a = compile(&ra("jwt", "foo", &rule(ISS, &doc, "")));
    let keys = a.inline_keys(0).unwrap();
    assert_eq!(keys.keys.len(), 6, "skipped: {:?}", keys.skipped);
    assert!(keys.skipped.iter().any(|s| s.contains("3 or 65537")), "{:?}", keys.skipped);
    let c = claims(json!({})).to_string();
    for (name, token) in [
        ("rsa1", rsa.sign_raw(r#"{"alg":"RS256","kid":"r1"}"#, &c)),
        ("ES512", es512.sign(&claims(json!({})))),
        ("512 bits", small.sign(&claims(json!({})))),
        ("1024 bits", r1024.sign(&claims(json!({})))),
        ("e = 3", e3.sign(&claims(json!({})))),
        ("8192 bits", big.sign(&claims(json!({})))),
    ] {
        assert!(matches!(eval(&a, &Req::get("/").bearer(&token)), Outcome::Allow(_)), "{name}");
    }
    let bad = |token: &str| denied(&eval(&a, &Req::get("/").bearer(token)));
    let es_forged = {
        let t = es512.sign(&claims(json!({})));
        swap_payload(&t, &claims(json!({"sub": "admin"})))
    };
    assert_eq!(bad(&es_forged), (401, "Jwt verification fails"));
    assert_eq!(bad(&e17.sign(&claims(json!({})))), (401, "Jwks doesn't have key to match kid or alg from Jwt"));
    assert_eq!(
        bad(&rsa.sign_raw(r#"{"alg":"none","kid":"r1","alg":"RS256"}"#, &c)),
        (401, "Jwt header is an invalid JSON")
    );
    let two_issuers = format!(r#"{{"iss":"https://evil.example","sub":"x","iss":"{ISS}"}}"#);
    assert_eq!(
        bad(&rsa.sign_raw(r#"{"alg":"RS256","kid":"r1"}"#, &two_issuers)),
        (401, "Jwt payload is an invalid JSON")
    );
    let nested = format!(r#"{{"iss":"{ISS}","org":{{"team":"a","team":"b"}}}}"#);
    assert_eq!(bad(&rsa.sign_raw(r#"{"alg":"RS256","kid":"r1"}"#, &nested)), (401, "Jwt payload is an invalid JSON"));
}
