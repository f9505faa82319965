//! Times the engine's per-request work (no proxy-wasm): a repeated token served from the cache,
//! and a full verification, for RS256 and ES256. Run natively or under wasm:
//!   cargo run --release -p wasmesh-authn --features testing --example hotpath
//!   cargo build --release --target wasm32-wasip1 -p wasmesh-authn --features testing --example hotpath
//!   node e2e/wasi-run.mjs target/wasm32-wasip1/release/examples/hotpath.wasm
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::json;
use std::time::Instant;
use wasmesh_authn::testing::{jwks, Signer, TestKey};
use wasmesh_authn::verify::{EvalStats, RequestHeaders};
use wasmesh_authn::{AuthnConfig, MapCache, NoCache};
use wasmesh_istio::{Resources, Workload};

struct Req(Vec<(String, Vec<u8>)>);
impl RequestHeaders for Req {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }
}

fn main() {
    let now = 1_800_000_000u64;
    for (alg, key) in [("RS256", TestKey::Rsa1), ("ES256", TestKey::Ec256), ("EdDSA", TestKey::Ed25519)] {
        let s = Signer::new(alg, key, Some("k"));
        let yaml = format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: b, namespace: b}}\nspec:\n  jwtRules:\n  - issuer: https://bench\n    audiences: [bench]\n    jwks: '{}'\n",
            jwks(&[s.jwk(false)])
        );
        let res = Resources { items: wasmesh_istio::load_str(&yaml, "b").unwrap() };
        let a = AuthnConfig::new(Workload::new("w", "b")).compile(&res).unwrap();
        let mut cold_cfg = AuthnConfig::new(Workload::new("w", "b"));
        cold_cfg.jwt_cache_slots = 0;
        let cold_engine = cold_cfg.compile(&res).unwrap();
        let t = s.sign(&json!({"iss": "https://bench", "sub": "u", "aud": "bench", "exp": now + 3600, "scope": "read write", "groups": ["dev", "ops"], "email": "bench@example.com"}));
        let req = Req(vec![
            (":method".into(), b"GET".to_vec()),
            (":path".into(), b"/".to_vec()),
            ("authorization".into(), format!("Bearer {t}").into_bytes()),
        ]);
        let mut cache = MapCache::default();
        let mut st = EvalStats::default();
        a.evaluate(&req, now * 1000, &mut cache, &mut st);
        let reps = 5;
        let n: usize = std::env::var("HIT_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        if std::env::var("ONLY").map(|o| o != alg).unwrap_or(false) {
            continue;
        }
        let mut hit = f64::MAX;
        for _ in 0..reps {
            let t0 = Instant::now();
            for _ in 0..n {
                a.evaluate(&req, now * 1000, &mut cache, &mut st);
            }
            hit = hit.min(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        let m: usize =
            std::env::var("COLD_N").ok().and_then(|v| v.parse().ok()).unwrap_or(if alg == "RS256" { 50 } else { 200 });
        let t0 = Instant::now();
        for _ in 0..m {
            cold_engine.evaluate(&req, now * 1000, &mut NoCache, &mut st);
        }
        let cold = t0.elapsed().as_secs_f64() * 1e6 / m as f64;
        let t0 = Instant::now();
        for _ in 0..n {
            std::hint::black_box(wasmesh_authn::cache::token_hash(&[0; 16], &t));
        }
        let hash = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        let key = cache.entries.keys().next().unwrap().clone();
        let t0 = Instant::now();
        for _ in 0..n {
            let e = wasmesh_authn::TokenCache::get(&mut cache, &key).unwrap();
            std::hint::black_box(wasmesh_authn::cache::Entry::decode(&e));
        }
        let decode = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{alg}: cache get+decode {decode:.2} µs");
        println!(
            "{alg}: token {} bytes; cache hit {hit:.2} µs (hash {hash:.2} µs); full verification {cold:.1} µs",
            t.len()
        );
    }
}
