//! The token-level checks jwt-simple's `Token::verify` makes besides the signature, kept for the
//! algorithms that no longer go through it (ES256/ES384/EdDSA/HS256/HS384/HS512, see `jwks.rs`;
//! jwt-simple now only signs test tokens), so that which tokens are accepted does not change. They are stricter than Envoy in the ways listed in the
//! crate documentation ("Known differences").
//!
//! jwt-simple 0.15 (`token.rs`, `Token::verify_with_algorithms`, with the options `jwks.rs` used
//! to pass: `accept_future`, `time_tolerance` = skew, `artificial_time` = now,
//! `max_token_length`; nothing required of issuer/subject/audience/nonce/typ/cty/kid):
//!
//! 1. token at most `max_token_length` bytes;
//! 2. exactly two dots (`split('.')` gives three parts);
//! 3. header segment at most 8192 characters;
//! 4. header, payload and signature segments strict base64url (no padding, no whitespace,
//!    unused trailing bits zero: `ct_codecs::Base64UrlSafeNoPadding`);
//! 5. header JSON deserializes into jwt-simple's `JWTHeader` ([`Header`] mirrors it: typed
//!    fields, duplicate known fields refused);
//! 6. `crit` absent, null or empty;
//! 7. `typ`, when present, is `JWT` or ends with `+JWT` (case-insensitive);
//! 8. `salt`, when present, is strict base64url;
//! 9. (the signature)
//! 10. payload JSON deserializes into `JWTClaims<NoCustomClaims>` ([`Claims`] mirrors it: typed
//!     registered claims, timestamps as jwt-simple reads them, `aud` a string or an array of
//!     strings, `nonce` a string, duplicates of registered claims refused);
//! 11. `claims.validate`: with those options only `exp` is checked, in coarsetime's fixed-point
//!     seconds (`exp: 0` is expired; from 2^32 s on it saturates), with the same types.
//!
//! The alg name (10/9 in jwt-simple's order) is matched by the caller. For HS*, jwt-simple also
//! refused a header `salt` (keys from a JWKS have none) and secrets under 12 bytes: the caller
//! checks those with [`Checked::salted`] and the key.

#![deny(clippy::indexing_slicing)]

use crate::jwt::b64url_decode;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// `jwt_simple::token::MAX_HEADER_LENGTH`.
const MAX_HEADER_LENGTH: usize = 8192;

/// jwt-simple's `JWTHeader` (private there): the same fields, types and serde attributes, so
/// the same headers deserialize.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Header {
    #[serde(rename = "alg")]
    algorithm: String,
    #[serde(rename = "cty", default)]
    content_type: Option<String>,
    #[serde(rename = "kid", default)]
    key_id: Option<String>,
    #[serde(rename = "typ", default)]
    signature_type: Option<String>,
    #[serde(rename = "crit", default)]
    critical: Option<Vec<String>>,
    #[serde(rename = "x5c", default)]
    certificate_chain: Option<Vec<String>>,
    #[serde(rename = "jku", default)]
    key_set_url: Option<String>,
    #[serde(rename = "jwk", default)]
    public_key: Option<String>,
    #[serde(rename = "x5u", default)]
    certificate_url: Option<String>,
    #[serde(rename = "x5t", default)]
    certificate_sha1_thumbprint: Option<String>,
    #[serde(rename = "x5t#S256", default)]
    certificate_sha256_thumbprint: Option<String>,
    #[serde(rename = "salt", default)]
    salt: Option<String>,
}

/// jwt-simple's `JWTClaims<NoCustomClaims>`: the registered claims with their types, the rest
/// (flattened into an empty struct) ignored. Only `exp` is used afterwards.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Claims {
    #[serde(rename = "iat", default, deserialize_with = "timestamp")]
    issued_at: Option<u64>,
    #[serde(rename = "exp", default, deserialize_with = "timestamp")]
    expires_at: Option<u64>,
    #[serde(rename = "nbf", default, deserialize_with = "timestamp")]
    invalid_before: Option<u64>,
    #[serde(rename = "iss", default)]
    issuer: Option<String>,
    #[serde(rename = "sub", default)]
    subject: Option<String>,
    #[serde(rename = "aud", default, deserialize_with = "audiences")]
    audiences: Option<()>,
    #[serde(rename = "jti", default)]
    jwt_id: Option<String>,
    #[serde(rename = "nonce", default)]
    nonce: Option<String>,
    #[serde(flatten)]
    custom: NoCustomClaims,
}

#[derive(Deserialize)]
struct NoCustomClaims {}

/// A time in coarsetime's fixed point (32.32 bits, saturating), as jwt-simple keeps
/// `UnixTimeStamp`: whole seconds from a non-negative integer, a float truncated (saturating,
/// NaN and negatives 0), a negative integer or any other JSON type refused.
fn fixed_point_secs(secs: u64) -> u64 {
    secs.saturating_mul(1 << 32)
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Unix timestamp")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map(fixed_point_secs).map_err(|_| E::custom("Unix timestamp must not be negative"))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(fixed_point_secs(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            Ok(fixed_point_secs(v as u64))
        }
    }
    d.deserialize_i64(V).map(Some)
}

/// A string, or an array of strings (jwt-simple's `Audiences`); the value itself is not needed.
fn audiences<'de, D: Deserializer<'de>>(d: D) -> Result<Option<()>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Audiences")
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element::<String>()?.is_some() {}
            Ok(())
        }
    }
    d.deserialize_any(V).map(Some)
}

/// What the checks learnt that only some algorithms care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The header has a `salt` (jwt-simple refused it for keys without one: every JWKS key).
    pub salted: bool,
}

/// Whether `s` is what `ct_codecs::Base64UrlSafeNoPadding::decode(_, s, None)` accepts: only
/// the URL-safe alphabet, no padding, not one character over a multiple of four, unused bits of
/// the last character zero (the canonical encoding of its bytes).
pub fn strict_b64url(s: &str) -> bool {
    let value = crate::jwt::b64url_value;
    let bytes = s.as_bytes();
    let mut last = 0u8;
    for &c in bytes {
        match value(c) {
            Some(v) => last = v,
            None => return false,
        }
    }
    match bytes.len() % 4 {
        0 => true,
        1 => false,
        2 => last & 0x0f == 0,
        _ => last & 0x03 == 0,
    }
}

/// Checks 1-8 and 10-11 above (all but the signature) for a token that `jwt::parse` accepted;
/// `None` when one fails.
pub fn token_checks(token: &str, now: u64, skew: u64, max_token: usize) -> Option<Checked> {
    if token.len() > max_token {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if h.len() > MAX_HEADER_LENGTH || !strict_b64url(h) || !strict_b64url(p) || !strict_b64url(s) {
        return None;
    }
    let header = b64url_decode(h).and_then(|b| serde_json::from_slice::<Header>(&b).ok())?;
    if header.critical.as_ref().is_some_and(|c| !c.is_empty()) {
        return None;
    }
    if let Some(typ) = &header.signature_type {
        let typ = typ.to_uppercase();
        if !(typ == "JWT" || typ.ends_with("+JWT")) {
            return None;
        }
    }
    if header.salt.as_deref().is_some_and(|salt| !strict_b64url(salt)) {
        return None;
    }
    let claims = b64url_decode(p).and_then(|b| serde_json::from_slice::<Claims>(&b).ok())?;
    if let Some(expires_at) = claims.expires_at {
        let (now, tolerance) = (fixed_point_secs(now), fixed_point_secs(skew));
        if !(now >= tolerance && now - tolerance <= expires_at) {
            return None;
        }
    }
    Some(Checked { salted: header.salt.is_some() })
}
