//! Times the RSA verifier alone (2048-bit RS256 and PS256, OpenSSL-made vectors), natively or
//! under wasm (see hotpath.rs for the commands).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::time::Instant;
use wasmesh_authn::rsa::{Hash, PublicKey};

fn main() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("../testdata/rsa-vectors.json")).unwrap();
    let b64 = |v: &serde_json::Value| wasmesh_authn::jwt::b64url_decode(v.as_str().unwrap()).unwrap();
    let message = doc["message"].as_str().unwrap().as_bytes();
    for key in doc["keys"].as_array().unwrap() {
        let t0 = Instant::now();
        let pk = PublicKey::from_components(&b64(&key["n"]), &b64(&key["e"])).unwrap();
        let prep = t0.elapsed().as_secs_f64() * 1e6;
        for alg in ["RS256", "PS256"] {
            let sig = b64(&key["signatures"][alg]);
            let n = 300;
            let t0 = Instant::now();
            for _ in 0..n {
                let ok = if alg == "RS256" {
                    pk.verify_pkcs1v15(Hash::Sha256, message, &sig)
                } else {
                    pk.verify_pss(Hash::Sha256, message, &sig)
                };
                assert!(ok);
            }
            let per = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!("RSA-{} {alg}: verify {per:.1} µs (key preparation {prep:.0} µs)", pk.bits());
        }
    }
}
