//! JWT compact form and its JSON (authn-core `jwt::parse`, the jwt-simple token checks of
//! `jose::token_checks`, Envoy's time rule, the claims hand-over to authz).
//! Properties: nothing panics; `parse_object` (no repeated names) agrees with serde_json; a parsed token's fields agree with its segments; the identity
//! handed to authz survives its filter-state encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_authn::{identity, jose, jwt};
use wasmesh_fuzz::NOW;

/// Envoy's default `max_request_headers_kb` (60 KiB) bounds a token in a header.
const MAX_TOKEN: usize = 60 * 1024;

fuzz_target!(|data: &[u8]| {
    // The strict JSON reader (repeated member names refused, as Envoy's protobuf parser does)
    // accepts a subset of what serde_json accepts, with the same result.
    if let Some(strict) = jwt::parse_object(data) {
        let lax: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(data).expect("serde_json reads what parse_object read");
        assert_eq!(lax, strict);
    }
    let token = String::from_utf8_lossy(data);
    // Made for tokens `parse` accepts, but must not panic on anything.
    let _ = jose::token_checks(&token, NOW, 60, MAX_TOKEN);
    match jwt::parse(&token, MAX_TOKEN) {
        Ok(j) => {
            assert!(token.len() <= MAX_TOKEN);
            let payload = jwt::b64url_decode(&j.payload_b64).expect("parse decoded this payload segment");
            let again: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&payload).expect("parse read this payload as a JSON object");
            assert_eq!(again, j.payload);
            assert!(!j.alg.is_empty());
            let _ = j.verify_time(NOW, 60);
            let _ = j.verify_time(u64::MAX, u64::MAX);
            let _ = jwt::time_constraint(j.nbf, j.exp, 0, 0);
            for claim in ["sub", "iss", "a.b", "scope", "groups", ""] {
                let _ = identity::claim_header_value(&j.payload, claim);
            }
            let id = identity::identity(
                &j.iss,
                j.sub.as_deref(),
                &j.audiences,
                &j.payload,
                &["scope".into(), "roles".into()],
            );
            let bytes = wasmesh_handover::encode(&id);
            if bytes.len() <= wasmesh_handover::MAX_VALUE_BYTES {
                let back: wasmesh_handover::RequestIdentity =
                    wasmesh_handover::decode(&bytes).expect("an encoded identity decodes");
                assert_eq!(back, id);
            }
        }
        Err(status) => {
            let _ = status.message();
            let _ = status.http_status();
        }
    }
});
