//! RequestAuthentication end to end: compiled from YAML/JSON (authn-core `AuthnConfig::compile`,
//! inline JWKS included), then requests evaluated (`Authn::evaluate`: token extraction from
//! headers, `access_token` parameters and cookies, JWT parsing, JWKS verification, claims to
//! headers, the verified-token cache, the deny reply).
//! Input: the resources, then optionally a NUL and request headers as text lines
//! (`name: value`), e.g. `authorization: Bearer <token>`.
//! Properties: nothing panics; the same request gets the same outcome with an empty and with a
//! warm cache; a denial is a 401 or 403 with a `Bearer realm=` challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_authn::{AuthnConfig, EvalStats, MapCache, NoCache, Outcome, RequestHeaders};
use wasmesh_fuzz::{fixed_requests, resources, split_nul, text_headers, workloads, NOW};

struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl RequestHeaders for Headers<'_> {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }
}

fn summary(o: &Outcome) -> String {
    match o {
        Outcome::Deny(d) => format!("deny {d:?}"),
        other => format!("{other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = split_nul(data);
    let text = String::from_utf8_lossy(text);
    let Some(res) = resources(&text) else { return };
    let mut requests = vec![text_headers(rest)];
    requests.extend(fixed_requests());
    for wl in workloads() {
        let Ok(mut authn) = AuthnConfig::new(wl).compile(&res) else { continue };
        authn.set_cache_secret(&[7; 16]);
        let _ = authn.poll_fetches(NOW * 1000);
        let mut cache = MapCache::default();
        for h in &requests {
            let req = Headers(h);
            let mut stats = EvalStats::default();
            let cold = authn.evaluate(&req, NOW * 1000, &mut NoCache, &mut stats);
            let first = authn.evaluate(&req, NOW * 1000, &mut cache, &mut stats);
            let warm = authn.evaluate(&req, NOW * 1000, &mut cache, &mut stats);
            assert_eq!(summary(&cold), summary(&first));
            assert_eq!(summary(&first), summary(&warm));
            if let Outcome::Deny(d) = &cold {
                assert!(d.code == 401 || d.code == 403, "{d:?}");
                // Envoy's reply carries the challenge on every failure (401 and 403).
                assert!(d.www_authenticate.starts_with("Bearer realm="), "{d:?}");
            }
        }
    }
});
