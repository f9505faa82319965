//! The token-level checks jwt-simple's `Token::verify` makes besides the signature, kept for the
//! algorithms that no longer go through it (ES256/ES384/EdDSA/HS256/HS384/HS512, see `jwks.rs`;
//! jwt-simple now only signs test tokens). Where they were stricter than Envoy's jwt_authn
//! without an RFC MUST behind them (`typ`, the types of header fields and claims jwt_authn does
//! not read) they were dropped; what remains is in the README ("JWT: differences from jwt_authn").
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
//! 5. header JSON: `crit` and `salt` of the right type when present (jwt-simple also typed
//!    `typ`, `cty`, `kid`, `jwk`, `x5*`, `jku`: no longer, as in Envoy);
//! 6. `crit` absent, null or empty (RFC 7515 §4.1.11: extensions listed there MUST be understood;
//!    none is; a deliberate difference from Envoy, which ignores `crit`);
//! 7. (jwt-simple refused a `typ` other than `JWT`/`…+JWT`: no longer, as in Envoy)
//! 8. `salt`, when present, is strict base64url;
//! 9. (the signature)
//! 10. payload JSON: `exp` a timestamp as jwt-simple reads it (jwt-simple also typed `iat`,
//!     `nbf`, `iss`, `sub`, `aud`, `jti`, `nonce`: no longer, as in Envoy);
//! 11. `exp` checked in coarsetime's fixed-point seconds (`exp: 0` is expired, RFC 7519 §4.1.4:
//!     the current time MUST be before `exp`; a deliberate difference from Envoy, which reads 0
//!     as no expiry; from 2^32 s on it saturates).
//!
//! The alg name (10/9 in jwt-simple's order) is matched by the caller. For HS*, jwt-simple also
//! refused a header `salt` (keys from a JWKS have none) and secrets under 12 bytes: the caller
//! checks those with [`Checked::salted`] and the key.

#![deny(clippy::indexing_slicing)]

use crate::jwt::b64url_decode;
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// `jwt_simple::token::MAX_HEADER_LENGTH`.
const MAX_HEADER_LENGTH: usize = 8192;

/// The header members these checks read. jwt-simple's `JWTHeader` also typed `cty`, `kid`,
/// `typ`, `x5c`, `jku`, `jwk`, `x5u`, `x5t`, `x5t#S256` (a `jwk` object, a numeric `cty`, … were
/// refused) and refused a `typ` other than `JWT`/`…+JWT`; Envoy's jwt_authn reads none of them
/// and no RFC requires a recipient to refuse them (RFC 7519 §5.1: `typ` is ignored by JWT
/// implementations), so they are not looked at, as in Envoy.
#[derive(Deserialize)]
struct Header {
    /// RFC 7515 §4.1.11: an array of extension names the recipient MUST understand.
    #[serde(rename = "crit", default)]
    critical: Option<Vec<String>>,
    #[serde(rename = "salt", default)]
    salt: Option<String>,
}

/// The payload member these checks read. jwt-simple's `JWTClaims` also typed `iat`, `nbf`,
/// `iss`, `sub`, `aud`, `jti` and `nonce` (a numeric `nonce` was refused); the authn core reads
/// the registered claims as Envoy does (`jwt.rs`), so only `exp` is looked at here.
#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "exp", default, deserialize_with = "timestamp")]
    expires_at: Option<u64>,
}

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
