//! The token-level checks jwt-simple's `Token::verify` made besides the signature, kept for the
//! algorithms that no longer go through it (ES*/EdDSA/HS*, see `jwks.rs`; jwt-simple now only
//! signs test tokens). Everything jwt-simple checked that Envoy's jwt_authn does not, without an
//! RFC MUST behind it, was dropped: what remains are the deliberate differences in the README
//! ("JWT: differences from jwt_authn").
//!
//! Dropped, now as in Envoy (`jwt.cc`, `absl::StrSplit(.., SkipEmpty)` and
//! `absl::WebSafeBase64Unescape`, already applied by `jwt::parse`):
//! - strict base64url (jwt-simple refused padding, whitespace and non-canonical trailing bits);
//! - exactly two dots (Envoy skips empty segments: `h..p.s` is a token);
//! - a header segment of at most 8192 characters (Envoy has no such bound; `maxTokenBytes` still
//!   bounds the token);
//! - `exp` in coarsetime's 32.32 fixed point (it saturated from 2^32 s): whole seconds now, as Envoy;
//! - `salt` (strict base64url, and refused for every JWKS secret): Envoy does not read it;
//! - the types of `typ`, `cty`, `jwk`, `x5*`, `jku`, `iat`, `nbf`, `iss`, `sub`, `aud`, `jti`,
//!   `nonce` (`jwt::parse` types the registered claims as Envoy does).
//!
//! Kept, deliberately (an RFC MUST on wasmesh's side):
//! - `crit` absent, null or an empty array (RFC 7515 §4.1.11: extensions listed there MUST be
//!   understood; none is; Envoy ignores `crit`);
//! - `exp: 0` (after truncation) is expired (RFC 7519 §4.1.4: the current time MUST be before
//!   `exp`; Envoy reads 0 as no expiry). Any other `exp` is checked as Envoy checks it.

#![deny(clippy::indexing_slicing)]

use crate::jwt::b64url_decode;
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// The header member these checks read (Envoy reads `alg` and `kid` only; `jwt::parse` did).
#[derive(Deserialize)]
struct Header {
    /// RFC 7515 §4.1.11: an array of extension names the recipient MUST understand. Any other
    /// value (a string, an array of non-strings) is refused as well: it is not empty.
    #[serde(rename = "crit", default)]
    critical: Option<Vec<String>>,
}

/// The payload member these checks read.
#[derive(Deserialize)]
struct Claims {
    #[serde(rename = "exp", default, deserialize_with = "timestamp")]
    expires_at: Option<u64>,
}

/// Whole seconds as Envoy's `StructUtils::GetUInt64` reads them: a non-negative integer, a float
/// truncated (`jwt::parse` has already refused anything outside `[0, 2^64)` or not a number).
fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Unix timestamp")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("Unix timestamp must not be negative"))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            if v >= 0.0 {
                Ok(v as u64)
            } else {
                Err(E::custom("Unix timestamp must not be negative"))
            }
        }
    }
    d.deserialize_any(V).map(Some)
}

/// Whether `s` is the canonical base64url encoding of its bytes, as [`crate::jwt::b64url_encode`]
/// writes it: only the URL-safe alphabet, no padding, not one character over a multiple of four,
/// unused bits of the last character zero. Tokens are no longer held to it (Envoy is not); the
/// `base64url` fuzz target checks the encoder and decoder with it.
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

/// Checks the deliberate differences above for a token that `jwt::parse` accepted (segments
/// found as Envoy finds them); `false` when one fails.
pub fn token_checks(token: &str, now: u64, skew: u64, max_token: usize) -> bool {
    if token.len() > max_token {
        return false;
    }
    let mut parts = token.split('.').filter(|p| !p.is_empty());
    let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Some(header) = b64url_decode(h).and_then(|b| serde_json::from_slice::<Header>(&b).ok()) else {
        return false;
    };
    if header.critical.as_ref().is_some_and(|c| !c.is_empty()) {
        return false;
    }
    let Some(claims) = b64url_decode(p).and_then(|b| serde_json::from_slice::<Claims>(&b).ok()) else {
        return false;
    };
    match claims.expires_at {
        None => true,
        Some(0) => false,
        Some(exp) => now <= exp.saturating_add(skew),
    }
}
