//! JWKS documents (authn-core `jwks::parse_jwks`: RSA/EC/OKP/oct JWKs, their base64url fields and
//! key material) and signature verification of a token against the parsed set.
//! Input: the JWKS text, then optionally a NUL and a token to verify with it.
//! Properties: nothing panics; a document over the size limit is refused; at most `MAX_KEYS`
//! keys are kept; verification answers only with the fingerprint of a key in the set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_authn::jwks::{parse_jwks, MAX_JWKS_BYTES, MAX_KEYS};
use wasmesh_authn::jwt;
use wasmesh_fuzz::{split_nul, NOW};

fuzz_target!(|data: &[u8]| {
    let (doc, token) = split_nul(data);
    let text = String::from_utf8_lossy(doc);
    match parse_jwks(&text) {
        Ok(set) => {
            assert!(text.len() <= MAX_JWKS_BYTES);
            assert!(set.keys.len() <= MAX_KEYS);
            for k in &set.keys {
                let _ = format!("{k:?}");
            }
            let token = String::from_utf8_lossy(token);
            if let Ok(j) = jwt::parse(&token, 60 * 1024) {
                let candidate = set.has_candidate(&j);
                match set.verify(&token, &j, NOW, 60, 60 * 1024) {
                    Ok(fp) => {
                        assert!(candidate);
                        assert!(set.contains_fingerprint(fp));
                    }
                    Err(status) => {
                        let _ = status.message();
                    }
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
