//! ID token verification (OIDC Core §3.1.3.7): the signature through authn's JWT parser and
//! JWKS key set (the same algorithms, key choice and RSA/EC/EdDSA code as RequestAuthentication),
//! then `iss`, `aud`, `azp`, `exp`, `iat` and `nonce`.

use wasmesh_authn::jwks::KeySet;
use wasmesh_authn::jwt::{self, Jwt};

/// Largest ID token accepted.
pub const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;
/// An ID token issued longer ago than this is refused (it answers a login that just happened).
pub const MAX_IAT_AGE_SECS: u64 = 600;

/// What the token must say.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The nonce sent with the authorization request; `None` on refresh (no nonce then).
    pub nonce: Option<&'a str>,
    pub now: u64,
    pub skew: u64,
}

/// Verifies an ID token; the error is a fixed phrase (no token content).
pub fn verify(token: &str, keys: &KeySet, expect: &Expect<'_>) -> Result<Jwt, &'static str> {
    let jwt = jwt::parse(token, MAX_ID_TOKEN_BYTES).map_err(|_| "the ID token is malformed")?;
    keys.verify(token, &jwt, expect.now, expect.skew, MAX_ID_TOKEN_BYTES)
        .map_err(|_| "the ID token's signature does not verify with the provider's keys")?;
    if jwt.iss != expect.issuer {
        return Err("the ID token is from another issuer");
    }
    if !jwt.audiences.iter().any(|a| a == expect.client_id) {
        return Err("the ID token is for another audience");
    }
    let azp = match jwt.payload.get("azp") {
        None => None,
        Some(serde_json::Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("the ID token's azp is not a string"),
    };
    if azp.is_some_and(|a| a != expect.client_id) || (jwt.audiences.len() > 1 && azp.is_none()) {
        return Err("the ID token was issued to another party (azp)");
    }
    if jwt.exp == 0 || expect.now > jwt.exp.saturating_add(expect.skew) {
        return Err("the ID token has expired or has no exp");
    }
    if jwt.iat == 0
        || jwt.iat > expect.now.saturating_add(expect.skew)
        || expect.now.saturating_sub(jwt.iat) > MAX_IAT_AGE_SECS.saturating_add(expect.skew)
    {
        return Err("the ID token's iat is missing, in the future or too old");
    }
    if let Some(nonce) = expect.nonce {
        match jwt.payload.get("nonce") {
            Some(serde_json::Value::String(n)) if constant_time_eq(n.as_bytes(), nonce.as_bytes()) => {}
            _ => return Err("the ID token's nonce is not the one sent"),
        }
    }
    Ok(jwt)
}

/// Byte comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use wasmesh_authn::testing::{jwks, Signer, TestKey};

    const NOW: u64 = 1_800_000_000;

    fn signer() -> Signer {
        Signer::new("RS256", TestKey::Rsa1, Some("k1"))
    }
    fn keys() -> KeySet {
        wasmesh_authn::jwks::parse_jwks(&jwks(&[signer().jwk(true)])).unwrap()
    }
    fn claims() -> Value {
        json!({"iss": "https://idp", "aud": "app", "sub": "alice", "exp": NOW + 300, "iat": NOW - 5, "nonce": "n1"})
    }
    fn expect() -> Expect<'static> {
        Expect { issuer: "https://idp", client_id: "app", nonce: Some("n1"), now: NOW, skew: 60 }
    }
    fn with(k: &str, v: Value) -> String {
        let mut c = claims();
        c[k] = v;
        signer().sign(&c)
    }

    #[test]
    fn a_good_id_token_verifies() {
        let jwt = verify(&signer().sign(&claims()), &keys(), &expect()).unwrap();
        assert_eq!(jwt.sub.as_deref(), Some("alice"));
        let mut refresh = expect();
        refresh.nonce = None;
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        assert!(verify(&signer().sign(&c), &keys(), &refresh).is_ok(), "no nonce on refresh");
        assert!(
            verify(&with("aud", json!(["app", "other"])), &keys(), &expect()).is_err(),
            "several audiences, no azp"
        );
        let mut multi = claims();
        multi["aud"] = json!(["app", "other"]);
        multi["azp"] = json!("app");
        assert!(verify(&signer().sign(&multi), &keys(), &expect()).is_ok());
    }

    #[test]
    fn each_claim_is_checked() {
        let cases = [
            (with("iss", json!("https://other")), "issuer"),
            (with("aud", json!("other-app")), "audience"),
            (with("aud", json!(["app", "other"])), "azp"),
            (with("azp", json!("other-app")), "azp"),
            (with("exp", json!(NOW - 120)), "expired"),
            (with("exp", json!(0)), "expired"),
            (with("iat", json!(NOW + 600)), "iat"),
            (with("iat", json!(NOW - 3600)), "iat"),
            (with("nonce", json!("n2")), "nonce"),
            (with("nonce", json!(1)), "nonce"),
        ];
        for (token, want) in cases {
            let err = verify(&token, &keys(), &expect()).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        assert!(verify(&signer().sign(&c), &keys(), &expect()).unwrap_err().contains("nonce"));
    }

    #[test]
    fn an_unknown_key_or_a_tampered_token_is_refused() {
        let other = Signer::new("RS256", TestKey::Rsa2, Some("k1"));
        assert!(verify(&other.sign(&claims()), &keys(), &expect()).unwrap_err().contains("signature"));
        let good = signer().sign(&claims());
        let swapped = wasmesh_authn::testing::swap_payload(&good, &with_claims("sub", json!("mallory")));
        assert!(verify(&swapped, &keys(), &expect()).unwrap_err().contains("signature"));
        assert!(verify("not.a.token", &keys(), &expect()).is_err());
        let hs = Signer::hs256(b"a shared secret!", Some("k1")).sign(&claims());
        assert!(verify(&hs, &keys(), &expect()).is_err(), "HS256 against an RSA key");
    }

    fn with_claims(k: &str, v: Value) -> Value {
        let mut c = claims();
        c[k] = v;
        c
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
