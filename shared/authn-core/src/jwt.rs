//! Parsing a compact JWT the way Envoy's jwt_authn does (`source/common/jwt/jwt.cc`), with the
//! same failure statuses and the same messages (`status.cc`), so a bad token gets the same 401
//! body as in Istio.

#![deny(clippy::indexing_slicing)]

use serde_json::{Map, Value};

/// Verification outcome, named and worded as Envoy's `JwtVerify::Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
    JwksFetchFail,
    /// wasmesh only: the token is larger than `maxTokenBytes` (Envoy has no such bound).
    JwtTooLarge,
}

impl Status {
    /// The text Envoy puts in the local reply body.
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::JwtMissed => "Jwt is missing",
            Status::JwtNotYetValid => "Jwt not yet valid",
            Status::JwtExpired => "Jwt is expired",
            Status::JwtBadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Status::JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            Status::JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            Status::JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            Status::JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            Status::JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            Status::JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            Status::JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            Status::JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            Status::JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            Status::JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            Status::JwtPayloadParseErrorIatOutOfRange => "Jwt payload [iat] field is not a positive 64 bit integer",
            Status::JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            Status::JwtPayloadParseErrorNbfOutOfRange => "Jwt payload [nbf] field is not a positive 64 bit integer",
            Status::JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            Status::JwtPayloadParseErrorExpOutOfRange => "Jwt payload [exp] field is not a positive 64 bit integer",
            Status::JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            Status::JwtPayloadParseErrorAudNotString => "Jwt payload [aud] field is not a string or string list",
            Status::JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
            Status::JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            Status::JwtUnknownIssuer => "Jwt issuer is not configured",
            Status::JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            Status::JwtVerificationFail => "Jwt verification fails",
            Status::JwksNoValidKeys => "Jwks doesn't have any valid public key",
            Status::JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Status::JwksFetchFail => "Jwks remote fetch is failed",
            Status::JwtTooLarge => "Jwt is too large",
        }
    }

    /// Envoy answers 403 for a disallowed audience and 401 for everything else.
    pub fn http_status(self) -> u32 {
        if self == Status::JwtAudienceNotAllowed {
            403
        } else {
            401
        }
    }
}

/// Algorithms Envoy's parser accepts in the `alg` header (`jwt.cc` `isImplemented`). Anything
/// else, `none` included, is refused before any key is looked at.
pub const IMPLEMENTED_ALGS: [&str; 13] = [
    "ES256", "ES384", "ES512", "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// A parsed (not yet verified) token.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub alg: String,
    /// Empty when the header has no `kid` (as Envoy).
    pub kid: String,
    /// Empty when absent.
    pub iss: String,
    pub sub: Option<String>,
    /// `0` when absent (Envoy's convention: `exp == 0` means "never expires").
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub audiences: Vec<String>,
    pub payload: Map<String, Value>,
    /// The payload segment exactly as in the token (what `outputPayloadToHeader` forwards).
    pub payload_b64: String,
    pub signature: Vec<u8>,
}

/// Deepest JSON nesting accepted in a token's header or payload. Envoy's jwt_verify_lib parses
/// them into a protobuf `Struct`, whose JSON parser refuses documents nested deeper than its
/// recursion limit (100); serde_json's own limit (128) would let deeper ones through. A deeper
/// header or payload is a bad-JSON token (Envoy's status), counted as `json_too_deep`.
pub const MAX_JSON_DEPTH: usize = 100;

/// Whether JSON text nests arrays/objects deeper than `max` (a scan, no parse; strings and
/// their escapes are skipped). Malformed text is left to the parser.
pub fn json_too_deep(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &c in text {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether a token fails parsing only because its header or payload nests deeper than
/// [`MAX_JSON_DEPTH`] (for counting; the answer is Envoy's bad-JSON status either way).
pub fn exceeds_json_depth(token: &str) -> bool {
    token
        .split('.')
        .filter(|p| !p.is_empty())
        .take(2)
        .any(|segment| b64url_decode(segment).is_some_and(|bytes| json_too_deep(&bytes, MAX_JSON_DEPTH)))
}

/// A JSON object as Envoy's jwt_verify_lib reads a token's header or payload: protobuf's JSON
/// parser into a `google.protobuf.Struct`, whose `fields` map refuses a member name seen
/// before in the same object ("got unexpectedly-repeated repeated map key", at any depth, names
/// compared after unescaping), where serde_json would keep the last one. `None`: not such an
/// object (Envoy's bad-JSON status).
pub fn parse_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de).ok()?;
    de.end().ok()?;
    match value {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// serde_json's `Value` visitor, except that an object with a repeated member name is an error.
struct StrictValue;

impl<'de> serde::de::DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("repeated member {key:?}")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses a token. `max_bytes` bounds the work done on a hostile input.
pub fn parse(token: &str, max_bytes: usize) -> Result<Jwt, Status> {
    if token.len() > max_bytes {
        return Err(Status::JwtTooLarge);
    }
    // absl::StrSplit(jwt, '.', absl::SkipEmpty()) must give exactly 3 parts.
    let mut parts = token.split('.').filter(|p| !p.is_empty());
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Status::JwtBadFormat);
    };

    let header_bytes = b64url_decode(header_b64).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
    if json_too_deep(&header_bytes, MAX_JSON_DEPTH) {
        return Err(Status::JwtHeaderParseErrorBadJson);
    }
    let header = parse_object(&header_bytes).ok_or(Status::JwtHeaderParseErrorBadJson)?;
    let alg = match header.get("alg") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(Status::JwtHeaderBadAlg),
    };
    if !IMPLEMENTED_ALGS.contains(&alg.as_str()) {
        return Err(Status::JwtHeaderNotImplementedAlg);
    }
    let kid = match header.get("kid") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Status::JwtHeaderBadKid),
    };

    let payload_bytes = b64url_decode(payload_b64).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
    if json_too_deep(&payload_bytes, MAX_JSON_DEPTH) {
        return Err(Status::JwtPayloadParseErrorBadJson);
    }
    let payload = parse_object(&payload_bytes).ok_or(Status::JwtPayloadParseErrorBadJson)?;

    let iss = string_claim(&payload, "iss", Status::JwtPayloadParseErrorIssNotString)?.unwrap_or_default();
    let sub = string_claim(&payload, "sub", Status::JwtPayloadParseErrorSubNotString)?;
    let iat = u64_claim(
        &payload,
        "iat",
        Status::JwtPayloadParseErrorIatNotInteger,
        Status::JwtPayloadParseErrorIatOutOfRange,
    )?;
    let nbf = u64_claim(
        &payload,
        "nbf",
        Status::JwtPayloadParseErrorNbfNotInteger,
        Status::JwtPayloadParseErrorNbfOutOfRange,
    )?;
    let exp = u64_claim(
        &payload,
        "exp",
        Status::JwtPayloadParseErrorExpNotInteger,
        Status::JwtPayloadParseErrorExpOutOfRange,
    )?;
    string_claim(&payload, "jti", Status::JwtPayloadParseErrorJtiNotString)?;
    let audiences = match payload.get("aud") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(Status::JwtPayloadParseErrorAudNotString),
                }
            }
            out
        }
        Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
    };

    let signature = b64url_decode(signature_b64).ok_or(Status::JwtSignatureParseErrorBadBase64)?;
    Ok(Jwt { alg, kid, iss, sub, iat, nbf, exp, audiences, payload, payload_b64: payload_b64.to_string(), signature })
}

impl Jwt {
    /// `exp`/`nbf` with Envoy's clock skew (`Jwt::verifyTimeConstraint`).
    pub fn verify_time(&self, now: u64, skew: u64) -> Status {
        time_constraint(self.nbf, self.exp, now, skew)
    }
}

/// Envoy's rule: not yet valid when `now + skew < nbf`; expired when `exp != 0 && now > exp + skew`.
pub fn time_constraint(nbf: u64, exp: u64, now: u64, skew: u64) -> Status {
    if now.saturating_add(skew) < nbf {
        return Status::JwtNotYetValid;
    }
    if exp != 0 && now > exp.saturating_add(skew) {
        return Status::JwtExpired;
    }
    Status::Ok
}

fn string_claim(payload: &Map<String, Value>, name: &str, wrong: Status) -> Result<Option<String>, Status> {
    match payload.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong),
    }
}

/// `StructUtils::GetUInt64`: a JSON number in `[0, 2^64)`, truncated to an integer.
fn u64_claim(payload: &Map<String, Value>, name: &str, wrong: Status, range: Status) -> Result<u64, Status> {
    match payload.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(v);
            }
            let v = n.as_f64().ok_or(range)?;
            if !(0.0..18_446_744_073_709_551_615.0).contains(&v) {
                return Err(range);
            }
            Ok(v as u64)
        }
        Some(_) => Err(wrong),
    }
}

/// Base64url (RFC 4648 §5) as `absl::WebSafeBase64Unescape` accepts it: ASCII whitespace is
/// skipped, padding optional but, when present, correct; any other character is an error.
pub fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    let owned: Vec<u8>;
    let bytes = if input.bytes().any(|c| c.is_ascii_whitespace() || c == 0x0b) {
        owned = input.bytes().filter(|c| !(c.is_ascii_whitespace() || *c == 0x0b)).collect();
        &owned[..]
    } else {
        input.as_bytes()
    };
    let unpadded = match bytes.iter().position(|&c| c == b'=') {
        None => bytes,
        Some(pos) => {
            let (data, pad) = bytes.split_at_checked(pos)?;
            if pad.len() > 2 || pad.iter().any(|&c| c != b'=') || bytes.len() % 4 != 0 {
                return None;
            }
            data
        }
    };
    if unpadded.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(unpadded.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in unpadded {
        let v = u32::from(b64url_value(c)?);
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits are ignored (absl accepts non-canonical encodings too).
    Some(out)
}

/// Base64url without padding.
pub fn b64url_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..=chunk.len() {
            // A 6-bit index always exists in the 64-character alphabet.
            let sextet = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(char::from(ALPHABET.get(sextet).copied().unwrap_or(b'A')));
        }
    }
    out
}

/// The value of one base64url character (`A-Z a-z 0-9 - _`), `None` for any other byte.
pub(crate) fn b64url_value(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tok(header: &str, payload: &str, sig: &[u8]) -> String {
        format!("{}.{}.{}", b64url_encode(header.as_bytes()), b64url_encode(payload.as_bytes()), b64url_encode(sig))
    }

    #[test]
    fn base64url_round_trips_and_rejects_garbage() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = b64url_encode(&data);
            assert_eq!(b64url_decode(&enc).unwrap(), data, "len {len}");
        }
        assert_eq!(b64url_decode("YQ==").unwrap(), b"a");
        assert_eq!(b64url_decode("YQ").unwrap(), b"a");
        assert!(b64url_decode("Y").is_none());
        assert!(b64url_decode("YQ=").is_none());
        assert!(b64url_decode("Y+8").is_none(), "standard alphabet is not base64url");
        assert_eq!(b64url_decode("YR").unwrap(), b"a", "non-canonical trailing bits are ignored, as absl does");
        assert_eq!(b64url_decode("Y Q").unwrap(), b"a", "whitespace is skipped, as absl does");
        assert_eq!(b64url_decode("YQ\t").unwrap(), b"a");
        assert!(b64url_decode("YQ==YQ==").is_none());
    }

    #[test]
    fn parses_claims_as_envoy_does() {
        let t = tok(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"https://idp","sub":"alice","aud":["a","b"],"exp":2000000000,"nbf":1.9,"iat":5,"nested":{"x":1}}"#,
            b"sig",
        );
        let jwt = parse(&t, 8192).unwrap();
        assert_eq!(jwt.alg, "RS256");
        assert_eq!(jwt.kid, "k1");
        assert_eq!(jwt.iss, "https://idp");
        assert_eq!(jwt.sub.as_deref(), Some("alice"));
        assert_eq!(jwt.audiences, vec!["a", "b"]);
        assert_eq!(jwt.exp, 2_000_000_000);
        assert_eq!(jwt.nbf, 1, "a fractional number is truncated like Envoy's GetUInt64");
        assert_eq!(jwt.signature, b"sig");
        assert!(jwt.payload.contains_key("nested"));
    }

    #[test]
    fn each_malformation_has_envoys_status() {
        let ok_h = r#"{"alg":"RS256"}"#;
        let ok_p = r#"{"iss":"i"}"#;
        let cases: Vec<(String, Status)> = vec![
            ("abc".into(), Status::JwtBadFormat),
            ("a.b".into(), Status::JwtBadFormat),
            ("a.b.c.d".into(), Status::JwtBadFormat),
            ("..".into(), Status::JwtBadFormat),
            ("!!.e30.c2ln".into(), Status::JwtHeaderParseErrorBadBase64),
            (tok("not json", ok_p, b"s"), Status::JwtHeaderParseErrorBadJson),
            (tok("[1]", ok_p, b"s"), Status::JwtHeaderParseErrorBadJson),
            (tok("{}", ok_p, b"s"), Status::JwtHeaderBadAlg),
            (tok(r#"{"alg":7}"#, ok_p, b"s"), Status::JwtHeaderBadAlg),
            (tok(r#"{"alg":"none"}"#, ok_p, b"s"), Status::JwtHeaderNotImplementedAlg),
            (tok(r#"{"alg":"rs256"}"#, ok_p, b"s"), Status::JwtHeaderNotImplementedAlg),
            (tok(r#"{"alg":"RS256","kid":1}"#, ok_p, b"s"), Status::JwtHeaderBadKid),
            (format!("{}.!!.c2ln", b64url_encode(ok_h.as_bytes())), Status::JwtPayloadParseErrorBadBase64),
            (tok(ok_h, "nope", b"s"), Status::JwtPayloadParseErrorBadJson),
            (tok(ok_h, r#""str""#, b"s"), Status::JwtPayloadParseErrorBadJson),
            (tok(ok_h, r#"{"iss":1}"#, b"s"), Status::JwtPayloadParseErrorIssNotString),
            (tok(ok_h, r#"{"sub":[]}"#, b"s"), Status::JwtPayloadParseErrorSubNotString),
            (tok(ok_h, r#"{"iat":"1"}"#, b"s"), Status::JwtPayloadParseErrorIatNotInteger),
            (tok(ok_h, r#"{"iat":-1}"#, b"s"), Status::JwtPayloadParseErrorIatOutOfRange),
            (tok(ok_h, r#"{"nbf":true}"#, b"s"), Status::JwtPayloadParseErrorNbfNotInteger),
            (tok(ok_h, r#"{"nbf":1e30}"#, b"s"), Status::JwtPayloadParseErrorNbfOutOfRange),
            (tok(ok_h, r#"{"exp":null}"#, b"s"), Status::JwtPayloadParseErrorExpNotInteger),
            (tok(ok_h, r#"{"exp":-5}"#, b"s"), Status::JwtPayloadParseErrorExpOutOfRange),
            (tok(ok_h, r#"{"jti":{}}"#, b"s"), Status::JwtPayloadParseErrorJtiNotString),
            (tok(ok_h, r#"{"aud":[1]}"#, b"s"), Status::JwtPayloadParseErrorAudNotString),
            (tok(ok_h, r#"{"aud":5}"#, b"s"), Status::JwtPayloadParseErrorAudNotString),
            (
                format!("{}.{}.@@", b64url_encode(ok_h.as_bytes()), b64url_encode(ok_p.as_bytes())),
                Status::JwtSignatureParseErrorBadBase64,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(parse(&token, 8192).err(), Some(want), "token {token:?}");
        }
    }

    /// Fuzz finding (`jwt` target): a payload nested 101-127 levels deep was accepted, though
    /// Envoy refuses it, and from 127 levels its identity could not be handed to authz.
    #[test]
    fn json_nested_deeper_than_envoy_accepts_is_refused() {
        // `levels` objects, one inside the other; `arrays`: an object holding `levels - 1` arrays.
        let nested = |levels: usize| format!("{}1{}", "{\"a\":".repeat(levels), "}".repeat(levels));
        let arrays =
            |levels: usize| format!("{{\"iss\":\"i\",\"a\":{}{}}}", "[".repeat(levels - 1), "]".repeat(levels - 1));
        let header = r#"{"alg":"RS256"}"#;
        for levels in [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH] {
            let jwt = parse(&tok(header, &nested(levels), b"s"), 1 << 20).unwrap();
            let id = crate::identity::identity(&jwt.iss, None, &[], &jwt.payload, &[]);
            let back: wasmesh_handover::RequestIdentity =
                wasmesh_handover::decode(&wasmesh_handover::encode(&id)).expect("the hand-over carries it");
            assert_eq!(back, id);
            parse(&tok(header, &arrays(levels), b"s"), 1 << 20).unwrap();
            let deep_header = format!(r#"{{"alg":"RS256","x":{}}}"#, nested(levels - 1));
            parse(&tok(&deep_header, "{}", b"s"), 1 << 20).unwrap();
        }
        for levels in [MAX_JSON_DEPTH + 1, 127, 128] {
            assert_eq!(parse(&tok(header, &nested(levels), b"s"), 1 << 20), Err(Status::JwtPayloadParseErrorBadJson));
            assert_eq!(parse(&tok(header, &arrays(levels), b"s"), 1 << 20), Err(Status::JwtPayloadParseErrorBadJson));
            let deep_header = format!(r#"{{"alg":"RS256","x":{}}}"#, nested(levels - 1));
            assert_eq!(parse(&tok(&deep_header, "{}", b"s"), 1 << 20), Err(Status::JwtHeaderParseErrorBadJson));
        }
    }

    #[test]
    fn json_nested_deeper_than_the_limit_is_bad_json() {
        let nest = |n: usize| format!(r#"{{"iss":"i","d":{}1{}}}"#, "[".repeat(n), "]".repeat(n));
        // The payload object itself is one level.
        let ok = tok(r#"{"alg":"RS256"}"#, &nest(MAX_JSON_DEPTH - 1), b"s");
        assert!(parse(&ok, 65536).is_ok());
        assert!(!exceeds_json_depth(&ok));
        let deep = tok(r#"{"alg":"RS256"}"#, &nest(MAX_JSON_DEPTH), b"s");
        assert_eq!(parse(&deep, 65536).err(), Some(Status::JwtPayloadParseErrorBadJson));
        assert!(exceeds_json_depth(&deep));
        let deep_header =
            tok(&format!(r#"{{"alg":"RS256","x":{}1{}}}"#, "{\"a\":".repeat(100), "}".repeat(100)), "{}", b"s");
        assert_eq!(parse(&deep_header, 65536).err(), Some(Status::JwtHeaderParseErrorBadJson));
        // Brackets inside strings (and escaped quotes) do not count.
        let text = format!(r#"{{"s":"\"{}"}}"#, "[".repeat(500));
        assert!(!json_too_deep(text.as_bytes(), MAX_JSON_DEPTH));
    }

    /// Envoy parses header and payload into a protobuf `Struct`, whose JSON parser refuses a
    /// repeated member name (`ParseMap`: "got unexpectedly-repeated repeated map key"): the
    /// token is bad JSON, not "the last one wins" (`alg: none` smuggled behind `RS256`, two
    /// issuers).
    #[test]
    fn repeated_member_names_are_bad_json_as_in_envoy() {
        let ok_h = r#"{"alg":"RS256"}"#;
        let ok_p = r#"{"iss":"i"}"#;
        for (header, payload, want) in [
            (r#"{"alg":"none","kid":"k","alg":"RS256"}"#, ok_p, Status::JwtHeaderParseErrorBadJson),
            (r#"{"alg":"RS256","alg":"RS256"}"#, ok_p, Status::JwtHeaderParseErrorBadJson),
            (r#"{"alg":"RS256","x":{"a":1,"a":2}}"#, ok_p, Status::JwtHeaderParseErrorBadJson),
            (r#"{"alg":"RS256","\u0061lg":"RS256"}"#, ok_p, Status::JwtHeaderParseErrorBadJson),
            (ok_h, r#"{"iss":"a","iss":"b"}"#, Status::JwtPayloadParseErrorBadJson),
            (ok_h, r#"{"iss":"i","x":[{"k":1,"k":1}]}"#, Status::JwtPayloadParseErrorBadJson),
            (ok_h, r#"{"iss":"i","sub":"a","sub":"a"}"#, Status::JwtPayloadParseErrorBadJson),
        ] {
            assert_eq!(parse(&tok(header, payload, b"s"), 8192).err(), Some(want), "{header} {payload}");
        }
        // The same name in different objects, or differing in case, is not a repetition.
        let jwt =
            parse(&tok(r#"{"alg":"RS256","Alg":"x"}"#, r#"{"iss":"i","a":{"iss":1},"b":[{"iss":2}]}"#, b"s"), 8192)
                .unwrap();
        assert_eq!(jwt.iss, "i");
        assert_eq!(parse_object(br#"{"a":1} "#).map(|m| m.len()), Some(1), "trailing whitespace is fine");
        assert!(parse_object(br#"{"a":1} x"#).is_none(), "trailing junk is not");
        assert!(parse_object(b"[]").is_none());
        assert_eq!(parse_object(br#"{"n":1.5,"m":-2,"u":18446744073709551615,"z":null}"#).unwrap()["n"], 1.5);
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let big = "a".repeat(10_000);
        assert_eq!(parse(&big, 8192).err(), Some(Status::JwtTooLarge));
        assert_eq!(Status::JwtTooLarge.http_status(), 401);
    }

    #[test]
    fn time_constraint_uses_skew() {
        assert_eq!(time_constraint(0, 0, 1000, 60), Status::Ok);
        assert_eq!(time_constraint(0, 1000, 1060, 60), Status::Ok);
        assert_eq!(time_constraint(0, 1000, 1061, 60), Status::JwtExpired);
        assert_eq!(time_constraint(1060, 0, 1000, 60), Status::Ok);
        assert_eq!(time_constraint(1061, 0, 1000, 60), Status::JwtNotYetValid);
        assert_eq!(time_constraint(0, u64::MAX, u64::MAX, 60), Status::Ok);
    }

    #[test]
    fn statuses_map_to_envoy_codes_and_messages() {
        assert_eq!(Status::JwtAudienceNotAllowed.http_status(), 403);
        assert_eq!(Status::JwtExpired.http_status(), 401);
        assert_eq!(Status::JwtUnknownIssuer.message(), "Jwt issuer is not configured");
        assert_eq!(Status::JwtVerificationFail.message(), "Jwt verification fails");
    }

    /// Garbage never panics: every prefix and single-byte corruption of a real-looking token.
    #[test]
    fn fuzz_like_garbage_never_panics() {
        let t = tok(r#"{"alg":"ES256","kid":"x"}"#, r#"{"iss":"i","sub":"s","aud":"a","exp":99}"#, &[7u8; 64]);
        for end in 0..=t.len() {
            let _ = parse(&t[..end], 8192);
        }
        let bytes = t.as_bytes().to_vec();
        let mut seed: u32 = 0x1234_5678;
        for i in 0..bytes.len() {
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let mut b = bytes.clone();
                b[i] = (seed & 0x7f) as u8;
                if let Ok(s) = std::str::from_utf8(&b) {
                    let _ = parse(s, 8192);
                }
            }
        }
    }
}
