//! base64url as Envoy reads JWT segments and JWKS fields (authn-core `jwt::b64url_decode`,
//! `b64url_encode`, `jose::strict_b64url`), checked against the `base64` crate.
//! Properties: decode(encode(x)) == x, padded or not; what the strict check accepts decodes to
//! what the `base64` crate decodes, and re-encodes to itself; lenient decode never panics.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use wasmesh_authn::{jose, jwt};

fuzz_target!(|data: &[u8]| {
    let enc = jwt::b64url_encode(data);
    assert!(jose::strict_b64url(&enc), "{enc:?}");
    assert_eq!(jwt::b64url_decode(&enc).as_deref(), Some(data));
    assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data), enc);
    let mut padded = enc.clone();
    while padded.len() % 4 != 0 {
        padded.push('=');
    }
    assert_eq!(jwt::b64url_decode(&padded).as_deref(), Some(data));

    let text = String::from_utf8_lossy(data);
    let lenient = jwt::b64url_decode(&text);
    if let Some(out) = &lenient {
        assert!(out.len() <= text.len() * 3 / 4 + 1);
    }
    if jose::strict_b64url(&text) {
        let ours = lenient.expect("a strict base64url string decodes leniently too");
        let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.as_bytes()).expect("base64 crate");
        assert_eq!(ours, theirs);
        assert_eq!(jwt::b64url_encode(&ours), text);
    }
});
