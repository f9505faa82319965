//! The token-level checks jwt-simple's `Token::verify` makes besides the signature, kept for the
//! algorithms that no longer go through it (ES256/ES384/EdDSA, see `jwks.rs`), so that which
//! tokens are accepted does not change. They are stricter than Envoy in the ways listed in the
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
//! 10. payload JSON deserializes into `JWTClaims<NoCustomClaims>` (the real type: typed
//!     registered claims, `nonce` a string, duplicates of registered claims refused);
//! 11. `claims.validate`: with those options only `exp` is checked, in coarsetime's fixed-point
//!     seconds (`exp: 0` is expired; from 2^32 s on it saturates), with the same types.
//!
//! The alg name (10/9 in jwt-simple's order) is matched by the caller.

use crate::jwt::b64url_decode;
use jwt_simple::prelude::{Duration, JWTClaims, NoCustomClaims, UnixTimeStamp};
use serde::Deserialize;

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

/// Checks 1-8 and 10-11 above (all but the signature) for a token that `jwt::parse` accepted.
pub fn token_checks(token: &str, now: u64, skew: u64, max_token: usize) -> bool {
    if token.len() > max_token {
        return false;
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if h.len() > MAX_HEADER_LENGTH || !strict_b64url(h) || !strict_b64url(p) || !strict_b64url(s) {
        return false;
    }
    let Some(header) = b64url_decode(h).and_then(|b| serde_json::from_slice::<Header>(&b).ok()) else {
        return false;
    };
    if header.critical.as_ref().is_some_and(|c| !c.is_empty()) {
        return false;
    }
    if let Some(typ) = &header.signature_type {
        let typ = typ.to_uppercase();
        if !(typ == "JWT" || typ.ends_with("+JWT")) {
            return false;
        }
    }
    if header.salt.as_deref().is_some_and(|salt| !strict_b64url(salt)) {
        return false;
    }
    let Some(claims) = b64url_decode(p).and_then(|b| serde_json::from_slice::<JWTClaims<NoCustomClaims>>(&b).ok())
    else {
        return false;
    };
    if let Some(expires_at) = claims.expires_at {
        let now = UnixTimeStamp::from_secs(now);
        let tolerance = Duration::from_secs(skew);
        if !(now >= tolerance && now - tolerance <= expires_at) {
            return false;
        }
    }
    true
}
