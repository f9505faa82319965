//! Test helpers: fixed test keys (generated once with openssl; test-only, never trusted anywhere),
//! token signing with any payload, JWKS documents. Used by this crate's tests and by the e2e tests
//! (feature `testing`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jwt_simple::prelude::*;
use serde_json::{json, Map, Value};

pub const RSA1_PEM: &str = include_str!("../testdata/rsa1.pem");
pub const RSA2_PEM: &str = include_str!("../testdata/rsa2.pem");
pub const EC256_PEM: &str = include_str!("../testdata/ec256.pem");
pub const EC384_PEM: &str = include_str!("../testdata/ec384.pem");
pub const ED25519_PEM: &str = include_str!("../testdata/ed25519.pem");

/// Which test key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKey {
    Rsa1,
    Rsa2,
    Ec256,
    Ec384,
    Ed25519,
}

enum Inner {
    Rs256(RS256KeyPair),
    Rs384(RS384KeyPair),
    Rs512(RS512KeyPair),
    Ps256(PS256KeyPair),
    Ps384(PS384KeyPair),
    Ps512(PS512KeyPair),
    Es256(ES256KeyPair),
    Es384(ES384KeyPair),
    EdDsa(Ed25519KeyPair),
    Hs256(HS256Key),
    Hs384(HS384Key),
    Hs512(HS512Key),
}

/// Signs tokens with one key and algorithm.
pub struct Signer {
    pub alg: String,
    pub kid: Option<String>,
    inner: Inner,
    key: TestKey,
}

impl Signer {
    /// `alg` one of RS256/384/512, PS256/384/512 (RSA keys), ES256 (Ec256), ES384 (Ec384),
    /// EdDSA (Ed25519).
    pub fn new(alg: &str, key: TestKey, kid: Option<&str>) -> Signer {
        let pem = match key {
            TestKey::Rsa1 => RSA1_PEM,
            TestKey::Rsa2 => RSA2_PEM,
            TestKey::Ec256 => EC256_PEM,
            TestKey::Ec384 => EC384_PEM,
            TestKey::Ed25519 => ED25519_PEM,
        };
        let k = kid.unwrap_or_default();
        let has = kid.is_some();
        let inner = match alg {
            "RS256" => Inner::Rs256(opt_kid(RS256KeyPair::from_pem(pem).unwrap(), has, k, RS256KeyPair::with_key_id)),
            "RS384" => Inner::Rs384(opt_kid(RS384KeyPair::from_pem(pem).unwrap(), has, k, RS384KeyPair::with_key_id)),
            "RS512" => Inner::Rs512(opt_kid(RS512KeyPair::from_pem(pem).unwrap(), has, k, RS512KeyPair::with_key_id)),
            "PS256" => Inner::Ps256(opt_kid(PS256KeyPair::from_pem(pem).unwrap(), has, k, PS256KeyPair::with_key_id)),
            "PS384" => Inner::Ps384(opt_kid(PS384KeyPair::from_pem(pem).unwrap(), has, k, PS384KeyPair::with_key_id)),
            "PS512" => Inner::Ps512(opt_kid(PS512KeyPair::from_pem(pem).unwrap(), has, k, PS512KeyPair::with_key_id)),
            "ES256" => Inner::Es256(opt_kid(ES256KeyPair::from_pem(pem).unwrap(), has, k, ES256KeyPair::with_key_id)),
            "ES384" => Inner::Es384(opt_kid(ES384KeyPair::from_pem(pem).unwrap(), has, k, ES384KeyPair::with_key_id)),
            "EdDSA" => {
                Inner::EdDsa(opt_kid(Ed25519KeyPair::from_pem(pem).unwrap(), has, k, Ed25519KeyPair::with_key_id))
            }
            other => panic!("unsupported test algorithm {other}"),
        };
        Signer { alg: alg.to_string(), kid: kid.map(str::to_string), inner, key }
    }

    /// An HS256 signer whose secret is the given bytes (e.g. an RSA public key, for the HS/RS
    /// confusion attack).
    pub fn hs256(secret: &[u8], kid: Option<&str>) -> Signer {
        Signer::hmac("HS256", secret, kid)
    }

    /// An HS256/HS384/HS512 signer with this secret.
    pub fn hmac(alg: &str, secret: &[u8], kid: Option<&str>) -> Signer {
        let k = kid.unwrap_or_default();
        let has = kid.is_some();
        let inner = match alg {
            "HS256" => Inner::Hs256(opt_kid(HS256Key::from_bytes(secret), has, k, HS256Key::with_key_id)),
            "HS384" => Inner::Hs384(opt_kid(HS384Key::from_bytes(secret), has, k, HS384Key::with_key_id)),
            "HS512" => Inner::Hs512(opt_kid(HS512Key::from_bytes(secret), has, k, HS512Key::with_key_id)),
            other => panic!("not an HMAC algorithm: {other}"),
        };
        Signer { alg: alg.to_string(), kid: kid.map(str::to_string), inner, key: TestKey::Rsa1 }
    }

    /// Signs a token carrying exactly this payload (object).
    pub fn sign(&self, payload: &Value) -> String {
        let claims = claims_from(payload);
        match &self.inner {
            Inner::Rs256(k) => k.sign(claims),
            Inner::Rs384(k) => k.sign(claims),
            Inner::Rs512(k) => k.sign(claims),
            Inner::Ps256(k) => k.sign(claims),
            Inner::Ps384(k) => k.sign(claims),
            Inner::Ps512(k) => k.sign(claims),
            Inner::Es256(k) => k.sign(claims),
            Inner::Es384(k) => k.sign(claims),
            Inner::EdDsa(k) => k.sign(claims),
            Inner::Hs256(k) => k.authenticate(claims),
            Inner::Hs384(k) => k.authenticate(claims),
            Inner::Hs512(k) => k.authenticate(claims),
        }
        .unwrap()
    }

    /// An ES256 token with this payload whose signature is the same on every run (RFC 6979
    /// nonces; jwt-simple's are random). Verifying a P-256 signature costs a little more or less
    /// with the signature's value, so the benchmark's cold-verify figure needs the same token
    /// every run. Header `{"alg":"ES256","typ":"JWT"[,"kid":…]}`.
    pub fn sign_es256_deterministic(&self, payload: &Value) -> String {
        use crate::jwt::b64url_encode;
        use p256::ecdsa::signature::Signer as _;
        let Inner::Es256(k) = &self.inner else { panic!("sign_es256_deterministic needs an ES256 signer") };
        let key = p256::ecdsa::SigningKey::from_slice(&k.to_bytes()).unwrap();
        let mut header = json!({"alg": "ES256", "typ": "JWT"});
        if let Some(kid) = &self.kid {
            header["kid"] = json!(kid);
        }
        let signed = format!(
            "{}.{}",
            b64url_encode(header.to_string().as_bytes()),
            b64url_encode(payload.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = key.sign(signed.as_bytes());
        format!("{signed}.{}", b64url_encode(&sig.to_bytes()))
    }

    /// The public JWK (with `kid` when the signer has one; `alg` only when `with_alg`).
    pub fn jwk(&self, with_alg: bool) -> Value {
        let text = match &self.inner {
            Inner::Rs256(k) => k.public_key().to_jwk(),
            Inner::Rs384(k) => k.public_key().to_jwk(),
            Inner::Rs512(k) => k.public_key().to_jwk(),
            Inner::Ps256(k) => k.public_key().to_jwk(),
            Inner::Ps384(k) => k.public_key().to_jwk(),
            Inner::Ps512(k) => k.public_key().to_jwk(),
            Inner::Es256(k) => k.public_key().to_jwk(),
            Inner::Es384(k) => k.public_key().to_jwk(),
            Inner::EdDsa(k) => k.public_key().to_jwk(),
            Inner::Hs256(_) | Inner::Hs384(_) | Inner::Hs512(_) => panic!("no public JWK for an HMAC signer"),
        };
        let mut v: Map<String, Value> = serde_json::from_str(&text).unwrap();
        v.remove("use");
        v.remove("key_ops");
        if with_alg {
            v.insert("alg".into(), json!(self.alg));
        } else {
            v.remove("alg");
        }
        match &self.kid {
            Some(k) => v.insert("kid".into(), json!(k)),
            None => v.remove("kid"),
        };
        Value::Object(v)
    }

    /// The RSA public key in DER (SubjectPublicKeyInfo) — what an attacker would use as an HMAC
    /// secret in an HS/RS confusion attack.
    pub fn rsa_public_der(&self) -> Vec<u8> {
        match self.key {
            TestKey::Rsa1 => RS256KeyPair::from_pem(RSA1_PEM).unwrap().public_key().to_der().unwrap(),
            TestKey::Rsa2 => RS256KeyPair::from_pem(RSA2_PEM).unwrap().public_key().to_der().unwrap(),
            _ => panic!("not an RSA key"),
        }
    }
}

fn opt_kid<K>(k: K, set: bool, kid: &str, f: fn(K, &str) -> K) -> K {
    if set {
        f(k, kid)
    } else {
        k
    }
}

fn claims_from(payload: &Value) -> JWTClaims<Map<String, Value>> {
    let mut custom = payload.as_object().cloned().expect("payload must be an object");
    let mut c = Claims::with_custom_claims(Map::new(), Duration::from_secs(1));
    c.issued_at = None;
    c.expires_at = None;
    c.invalid_before = None;
    let ts = |v: Value| UnixTimeStamp::from_secs(v.as_u64().expect("exp/nbf/iat must be integers in test tokens"));
    if let Some(v) = custom.remove("iat") {
        c.issued_at = Some(ts(v));
    }
    if let Some(v) = custom.remove("exp") {
        c.expires_at = Some(ts(v));
    }
    if let Some(v) = custom.remove("nbf") {
        c.invalid_before = Some(ts(v));
    }
    if let Some(Value::String(s)) = custom.remove("iss") {
        c.issuer = Some(s);
    }
    if let Some(Value::String(s)) = custom.remove("sub") {
        c.subject = Some(s);
    }
    match custom.remove("aud") {
        Some(Value::String(s)) => c.audiences = Some(Audiences::AsString(s)),
        Some(Value::Array(a)) => {
            c.audiences = Some(Audiences::AsSet(a.into_iter().filter_map(|v| v.as_str().map(str::to_string)).collect()))
        }
        _ => {}
    }
    if let Some(Value::String(s)) = custom.remove("jti") {
        c.jwt_id = Some(s);
    }
    if let Some(Value::String(s)) = custom.remove("nonce") {
        c.nonce = Some(s);
    }
    c.custom = custom;
    c
}

/// A JWKS document with these JWKs.
pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A token with an arbitrary header and payload and a junk signature (for `alg: none`,
/// malformed and forged tokens).
pub fn unsigned(header: &Value, payload: &Value, signature: &[u8]) -> String {
    use crate::jwt::b64url_encode;
    format!(
        "{}.{}.{}",
        b64url_encode(header.to_string().as_bytes()),
        b64url_encode(payload.to_string().as_bytes()),
        b64url_encode(signature)
    )
}

/// Replaces the payload of a signed token (keeps header and signature): a forgery.
pub fn swap_payload(token: &str, payload: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], crate::jwt::b64url_encode(payload.to_string().as_bytes()), parts[2])
}

/// RSA test keys jwt-simple cannot sign with (`testdata/gen-rsa-test-keys.py`): `rsa512`,
/// `rsa1024`, `rsa2048e3` (e = 3), `rsa8192`, and `rsa1` (the numbers of [`RSA1_PEM`]).
pub const RSA_TEST_KEYS: &str = include_str!("../testdata/rsa-test-keys.json");

/// An RS256 signer over raw header and payload text (any JSON, or not JSON), with a key of
/// [`RSA_TEST_KEYS`]: tokens with repeated member names, and keys jwt-simple refuses.
pub struct RawRsa {
    pub kid: String,
    n: String,
    e: String,
    n_int: num_bigint::BigUint,
    d: num_bigint::BigUint,
    k: usize,
}

impl RawRsa {
    pub fn new(name: &str, kid: &str) -> RawRsa {
        let doc: Value = serde_json::from_str(RSA_TEST_KEYS).unwrap();
        let key = &doc[name];
        let int =
            |f: &str| num_bigint::BigUint::from_bytes_be(&crate::jwt::b64url_decode(key[f].as_str().unwrap()).unwrap());
        let n_int = int("n");
        let k = (n_int.bits() as usize).div_ceil(8);
        RawRsa {
            kid: kid.to_string(),
            n: key["n"].as_str().unwrap().to_string(),
            e: key["e"].as_str().unwrap().to_string(),
            d: int("d"),
            n_int,
            k,
        }
    }

    /// The public JWK (`kty`, `kid`, `n`, `e`).
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "n": self.n, "e": self.e})
    }

    /// The JWK with other `n`/`e` (base64url) than the key's: keys Envoy refuses.
    pub fn jwk_with(&self, n: &str, e: &str) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "n": n, "e": e})
    }

    /// `<header>.<payload>.<RS256 signature>` over exactly these texts.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        use crate::jwt::b64url_encode;
        use sha2::Digest;
        let signed = format!("{}.{}", b64url_encode(header.as_bytes()), b64url_encode(payload.as_bytes()));
        // EMSA-PKCS1-v1_5 with SHA-256: 00 01 FF..FF 00 || DigestInfo || H.
        let prefix: [u8; 19] = [
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04,
            0x20,
        ];
        let mut em = vec![0u8, 1];
        em.resize(self.k - prefix.len() - 32 - 1, 0xff);
        em.push(0);
        em.extend_from_slice(&prefix);
        em.extend_from_slice(&sha2::Sha256::digest(signed.as_bytes()));
        let s = num_bigint::BigUint::from_bytes_be(&em).modpow(&self.d, &self.n_int).to_bytes_be();
        let mut sig = vec![0u8; self.k - s.len()];
        sig.extend_from_slice(&s);
        format!("{signed}.{}", b64url_encode(&sig))
    }

    /// An RS256 token with this payload and a header `{"alg":"RS256","kid":…}`.
    pub fn sign(&self, payload: &Value) -> String {
        self.sign_raw(&json!({"alg": "RS256", "kid": self.kid}).to_string(), &payload.to_string())
    }
}

/// An ES512 (P-521, SHA-512) signer with a fixed test key (jwt-simple has no ES512).
pub struct Es512 {
    pub kid: String,
    key: p521::ecdsa::SigningKey,
}

impl Es512 {
    pub fn new(kid: &str) -> Es512 {
        let mut secret = [0x3cu8; 66];
        secret[0] = 0;
        Es512 { kid: kid.to_string(), key: p521::ecdsa::SigningKey::from_slice(&secret).unwrap() }
    }

    /// The public JWK (`kty: EC`, `crv: P-521`, `kid`, `x`, `y`).
    pub fn jwk(&self) -> Value {
        use crate::jwt::b64url_encode;
        let point = p521::ecdsa::VerifyingKey::from(&self.key).to_sec1_point(false);
        let bytes = point.as_bytes();
        json!({"kty": "EC", "crv": "P-521", "kid": self.kid, "x": b64url_encode(&bytes[1..67]), "y": b64url_encode(&bytes[67..133])})
    }

    /// `<header>.<payload>.<r || s>` over exactly these texts.
    pub fn sign_raw(&self, header: &str, payload: &str) -> String {
        use crate::jwt::b64url_encode;
        self.sign_segments(&b64url_encode(header.as_bytes()), &b64url_encode(payload.as_bytes()))
    }

    /// `<header>.<payload>.<r || s>` over these segments exactly as given (padded, non-canonical
    /// or otherwise unusual encodings: the signing input is the segments' text).
    pub fn sign_segments(&self, header: &str, payload: &str) -> String {
        use crate::jwt::b64url_encode;
        use p521::ecdsa::signature::Signer as _;
        let signed = format!("{header}.{payload}");
        let sig: p521::ecdsa::Signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", b64url_encode(&sig.to_bytes()))
    }

    /// An ES512 token with this payload (header `{"alg":"ES512","typ":"JWT","kid":…}`).
    pub fn sign(&self, payload: &Value) -> String {
        self.sign_raw(&json!({"alg": "ES512", "typ": "JWT", "kid": self.kid}).to_string(), &payload.to_string())
    }
}
