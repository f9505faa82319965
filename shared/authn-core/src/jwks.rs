//! JSON Web Key Sets: parsing them as Envoy does (`source/common/jwt/jwks.cc`: a key that cannot
//! be used is skipped, not fatal) and verifying a token's signature (pure Rust, so it runs in
//! wasm): RS*/PS* with [`crate::rsa`], ES256/ES384/ES512 with [`crate::ec`] and EdDSA with
//! `ed25519-compact` and HS256/384/512 with `hmac` + `sha2` (constant-time tag comparison),
//! directly over the parsed token, plus the token checks jwt-simple used to make when it
//! verified these ([`crate::jose`]).

#![deny(clippy::indexing_slicing)]

use crate::jwt::{b64url_decode, Jwt, Status};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Map, Value};

/// Largest JWKS document accepted (inline or fetched).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest number of keys kept from one JWKS.
pub const MAX_KEYS: usize = 64;

/// One usable public key.
#[derive(Clone)]
pub struct Key {
    /// Empty when the JWK has no `kid`.
    pub kid: String,
    /// Empty when the JWK has no `alg`.
    pub alg: String,
    pub material: Material,
    /// Identifies the key material (stable across refetches of the same key), for the
    /// verified-token cache: a cached verification only counts while its key is still served.
    pub fingerprint: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key {{ kid: {:?}, alg: {:?}, kind: {} }}", self.kid, self.alg, self.material.kind())
    }
}

/// Key material, prepared once per JWKS so a verification does no key parsing.
#[derive(Clone)]
pub enum Material {
    Rsa(crate::rsa::PublicKey),
    P256(crate::ec::VerifyingKey<p256::NistP256>),
    P384(crate::ec::VerifyingKey<p384::NistP384>),
    P521(crate::ec::VerifyingKey<p521::NistP521>),
    Ed25519(ed25519_compact::PublicKey),
    /// `kty: oct` (HS256/384/512): a shared secret, as Envoy accepts in a JWKS.
    Oct(Vec<u8>),
}

impl Material {
    fn kind(&self) -> &'static str {
        match self {
            Material::Rsa(_) => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::P521(_) => "EC P-521",
            Material::Ed25519(_) => "OKP Ed25519",
            Material::Oct(_) => "oct",
        }
    }
}

/// A parsed JWKS: the usable keys and why the others were skipped.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// One line per skipped key, for logs.
    pub skipped: Vec<String>,
}

impl KeySet {
    pub fn contains_fingerprint(&self, fp: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fp)
    }

    /// Whether some key could be tried for this token (`kid`/`alg` filter of Envoy's
    /// `verifyJwtWithoutTimeChecking`).
    pub fn has_candidate(&self, jwt: &Jwt) -> bool {
        self.keys.iter().any(|k| candidate(k, jwt))
    }

    /// Verifies the signature, trying keys in order like Envoy. Returns the fingerprint of the
    /// key that verified.
    pub fn verify(&self, token: &str, jwt: &Jwt, now: u64, skew: u64, max_token: usize) -> Result<u64, Status> {
        if self.keys.is_empty() {
            return Err(Status::JwksNoValidKeys);
        }
        let mut matched = false;
        // The deliberate token checks (ES*/EdDSA/HS*): the same for every key, made at most once.
        let mut checks: Option<bool> = None;
        for key in &self.keys {
            if !candidate(key, jwt) {
                continue;
            }
            matched = true;
            match verify_with(key, token, jwt, now, skew, max_token, &mut checks) {
                Ok(()) => return Ok(key.fingerprint),
                Err(Status::JwtEd25519SignatureWrongLength) => return Err(Status::JwtEd25519SignatureWrongLength),
                Err(_) => continue,
            }
        }
        Err(if matched { Status::JwtVerificationFail } else { Status::JwksKidAlgMismatch })
    }
}

fn candidate(key: &Key, jwt: &Jwt) -> bool {
    if !jwt.kid.is_empty() && !key.kid.is_empty() && key.kid != jwt.kid {
        return false;
    }
    key.alg.is_empty() || key.alg == jwt.alg
}

/// Shortest HMAC secret used (jwt-simple's `WeakKey` bound, kept so the same keys work).
pub const MIN_HMAC_SECRET_BYTES: usize = 12;

/// One key, one algorithm. The key type must fit the token's `alg` (no HS/RS confusion: an RSA
/// key is never used as an HMAC secret, an EC key only verifies its own curve's ES algorithm).
fn verify_with(
    key: &Key,
    token: &str,
    jwt: &Jwt,
    now: u64,
    skew: u64,
    max_token: usize,
    checks: &mut Option<bool>,
) -> Result<(), Status> {
    if let Material::Rsa(k) = &key.material {
        use crate::rsa::Hash;
        let hash = match jwt.alg.get(2..) {
            Some("256") => Hash::Sha256,
            Some("384") => Hash::Sha384,
            Some("512") => Hash::Sha512,
            _ => return Err(Status::JwtVerificationFail),
        };
        let signed = signing_input(token, jwt);
        let ok = match jwt.alg.get(..2) {
            Some("RS") => k.verify_pkcs1v15(hash, signed.as_bytes(), &jwt.signature),
            Some("PS") => k.verify_pss(hash, signed.as_bytes(), &jwt.signature),
            _ => false,
        };
        return if ok { Ok(()) } else { Err(Status::JwtVerificationFail) };
    }
    // ES*/EdDSA/HS*: the signature over the parsed token, after the deliberate checks of
    // `jose.rs` (`crit`, `exp: 0`).
    match (&key.material, jwt.alg.as_str()) {
        (Material::P256(_), "ES256") | (Material::P384(_), "ES384") | (Material::P521(_), "ES512") => {}
        (Material::Ed25519(_), "EdDSA") => {
            if jwt.signature.len() != 64 {
                return Err(Status::JwtEd25519SignatureWrongLength);
            }
        }
        (Material::Oct(secret), "HS256" | "HS384" | "HS512") if secret.len() >= MIN_HMAC_SECRET_BYTES => {}
        _ => return Err(Status::JwtVerificationFail),
    }
    if !*checks.get_or_insert_with(|| crate::jose::token_checks(token, now, skew, max_token)) {
        return Err(Status::JwtVerificationFail);
    }
    let signed = signing_input(token, jwt);
    let (msg, sig) = (signed.as_bytes(), jwt.signature.as_slice());
    let ok = match (&key.material, jwt.alg.as_str()) {
        (Material::P256(k), _) => k.verify(msg, sig),
        (Material::P384(k), _) => k.verify(msg, sig),
        (Material::P521(k), _) => k.verify(msg, sig),
        (Material::Ed25519(k), _) => {
            ed25519_compact::Signature::from_slice(sig).is_ok_and(|s| k.verify(msg, &s).is_ok())
        }
        (Material::Oct(secret), "HS256") => hmac_verify::<Hmac<sha2::Sha256>>(secret, msg, sig),
        (Material::Oct(secret), "HS384") => hmac_verify::<Hmac<sha2::Sha384>>(secret, msg, sig),
        (Material::Oct(secret), "HS512") => hmac_verify::<Hmac<sha2::Sha512>>(secret, msg, sig),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Status::JwtVerificationFail)
    }
}

/// HMAC tag check; `verify_slice` compares in constant time (and refuses another length).
fn hmac_verify<M: Mac + KeyInit>(secret: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(msg);
    mac.verify_slice(tag).is_ok()
}

/// What the signature covers: `<header>.<payload>` as Envoy's jwt_verify_lib builds it from the
/// token's segments (a token with empty segments, which the parser skips, is rebuilt).
fn signing_input<'t>(token: &'t str, jwt: &Jwt) -> std::borrow::Cow<'t, str> {
    let mut segments = token.split('.');
    if let (Some(h), Some(p), Some(s), None) = (segments.next(), segments.next(), segments.next(), segments.next()) {
        if !h.is_empty() && !p.is_empty() && !s.is_empty() {
            return std::borrow::Cow::Borrowed(&token[..h.len() + 1 + p.len()]);
        }
    }
    let header = token.split('.').find(|p| !p.is_empty()).unwrap_or_default();
    std::borrow::Cow::Owned(format!("{header}.{}", jwt.payload_b64))
}

/// Why a JWKS document as a whole is unusable (a bad single key is only skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    TooLarge(usize),
    /// Envoy `JwksParseError`.
    NotJson(String),
    /// Envoy `JwksNoKeys`.
    NoKeysField,
    /// Envoy `JwksBadKeys`.
    KeysNotArray,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::TooLarge(n) => write!(f, "JWKS is {n} bytes; at most {MAX_JWKS_BYTES} are accepted"),
            JwksError::NotJson(e) => write!(f, "JWKS is not valid JSON: {e}"),
            JwksError::NoKeysField => write!(f, "JWKS has no \"keys\" field"),
            JwksError::KeysNotArray => write!(f, "\"keys\" in the JWKS is not an array"),
        }
    }
}

/// Parses a JWKS document. Keys that cannot be used are listed in `skipped`.
pub fn parse_jwks(text: &str) -> Result<KeySet, JwksError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge(text.len()));
    }
    let doc: Map<String, Value> = serde_json::from_str(text).map_err(|e| JwksError::NotJson(e.to_string()))?;
    let keys = match doc.get("keys") {
        None => return Err(JwksError::NoKeysField),
        Some(Value::Array(keys)) => keys,
        Some(_) => return Err(JwksError::KeysNotArray),
    };
    let mut set = KeySet::default();
    for (i, value) in keys.iter().enumerate() {
        if set.keys.len() >= MAX_KEYS {
            set.skipped.push(format!("keys[{i}] and later: more than {MAX_KEYS} keys"));
            break;
        }
        match parse_jwk(value) {
            Ok(key) => set.keys.push(key),
            Err(why) => set.skipped.push(format!("keys[{i}]: {why}")),
        }
    }
    Ok(set)
}

fn get_str<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("[{name}] is not a string")),
    }
}

fn required_b64(jwk: &Map<String, Value>, name: &str, what: &str) -> Result<Vec<u8>, String> {
    let s = get_str(jwk, name)?.ok_or_else(|| format!("[{name}] field is missing for {what}"))?;
    b64url_decode(s).ok_or_else(|| format!("[{name}] is not valid base64url"))
}

fn parse_jwk(value: &Value) -> Result<Key, String> {
    let Value::Object(jwk) = value else {
        return Err("not a JSON object".into());
    };
    let kty = get_str(jwk, "kty")?.ok_or("[kty] is missing")?;
    // Like Envoy, a non-string kid/alg is treated as absent.
    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default().to_string();
    let alg = jwk.get("alg").and_then(Value::as_str).unwrap_or_default().to_string();
    let material = match kty {
        "RSA" => {
            if !(alg.is_empty() || alg.starts_with("RS") || alg.starts_with("PS")) {
                return Err("[alg] is not started with [RS] or [PS] for an RSA key".into());
            }
            let n = required_b64(jwk, "n", "a RSA key")?;
            let e = required_b64(jwk, "e", "a RSA key")?;
            Material::Rsa(crate::rsa::PublicKey::from_components(&n, &e).map_err(|e| format!("RSA key rejected: {e}"))?)
        }
        "EC" => {
            if !alg.is_empty() && !alg.starts_with("ES") {
                return Err("[alg] is not started with [ES] for an EC key".into());
            }
            let crv = get_str(jwk, "crv").map_err(|_| "[crv] field is not string for an EC key".to_string())?;
            let crv = crv.unwrap_or_default();
            if !alg.is_empty()
                && !crv.is_empty()
                && !matches!((alg.as_str(), crv), ("ES256", "P-256") | ("ES384", "P-384") | ("ES512", "P-521"))
            {
                return Err("[crv] field specified is not compatible with [alg] for an EC key".into());
            }
            let curve = if alg == "ES256" || crv == "P-256" || (alg.is_empty() && crv.is_empty()) {
                "P-256"
            } else if alg == "ES384" || crv == "P-384" {
                "P-384"
            } else if alg == "ES512" || crv == "P-521" {
                "P-521"
            } else {
                return Err("[crv] or [alg] field is not supported for an EC key".into());
            };
            let x = required_b64(jwk, "x", "an EC key")?;
            let y = required_b64(jwk, "y", "an EC key")?;
            let size = match curve {
                "P-256" => 32,
                "P-384" => 48,
                _ => 66,
            };
            let point = sec1_point(&x, &y, size).ok_or("EC [x] and [y] fields have a parse error")?;
            let bad = || "EC [x] and [y] fields have a parse error".to_string();
            match curve {
                "P-256" => Material::P256(crate::ec::VerifyingKey::from_sec1_bytes(&point).ok_or_else(bad)?),
                "P-384" => Material::P384(crate::ec::VerifyingKey::from_sec1_bytes(&point).ok_or_else(bad)?),
                _ => Material::P521(crate::ec::VerifyingKey::from_sec1_bytes(&point).ok_or_else(bad)?),
            }
        }
        "OKP" => {
            if !alg.is_empty() && alg != "EdDSA" {
                return Err("[alg] is not [EdDSA] for an OKP key".into());
            }
            match get_str(jwk, "crv")? {
                None => return Err("[crv] field is missing for an OKP key".into()),
                Some("Ed25519") => {}
                Some(_) => return Err("[crv] field is not supported for an OKP key".into()),
            }
            let x = required_b64(jwk, "x", "an OKP key")?;
            if x.len() != 32 {
                return Err("OKP [x] field is wrong length".into());
            }
            // As jwt-simple's `Ed25519PublicKey::from_bytes`: a canonical point, not of small order.
            let k = ed25519_compact::PublicKey::from_slice(&x)
                .ok()
                .filter(|k| k.validate().is_ok())
                .ok_or("OKP key rejected: Invalid public key")?;
            Material::Ed25519(k)
        }
        "oct" => {
            if !alg.is_empty() && !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return Err("[alg] does not start with [HS] for an HMAC key".into());
            }
            let k = required_b64(jwk, "k", "an HMAC key")?;
            if k.is_empty() {
                return Err("Oct key is an invalid Base64".into());
            }
            Material::Oct(k)
        }
        other => return Err(format!("[kty] {other:?} is not supported")),
    };
    let fingerprint = fingerprint(value);
    Ok(Key { kid, alg, material, fingerprint })
}

/// Uncompressed SEC1 point; coordinates shorter than the field size are left-padded.
fn sec1_point(x: &[u8], y: &[u8], size: usize) -> Option<Vec<u8>> {
    if x.len() > size || y.len() > size {
        return None;
    }
    let mut p = Vec::with_capacity(1 + 2 * size);
    p.push(4);
    p.extend(std::iter::repeat_n(0, size - x.len()));
    p.extend_from_slice(x);
    p.extend(std::iter::repeat_n(0, size - y.len()));
    p.extend_from_slice(y);
    Some(p)
}

/// A stable fingerprint of the JWK's key-relevant members.
fn fingerprint(jwk: &Value) -> u64 {
    let mut h = blake2b_simd::Params::new().hash_length(8).to_state();
    for name in ["kty", "kid", "alg", "crv", "n", "e", "x", "y", "k"] {
        if let Some(Value::String(s)) = jwk.get(name) {
            h.update(name.as_bytes());
            h.update(&[0]);
            h.update(s.as_bytes());
            h.update(&[0]);
        }
    }
    let out = h.finalize();
    u64::from_le_bytes(out.as_bytes().first_chunk::<8>().copied().unwrap_or_default())
}
