//! RSA and EC public keys and signature verification (authn-core `rsa::PublicKey`,
//! `ec::VerifyingKey` for P-256 and P-384), with key material and signatures straight from the
//! fuzzer, past the JWK layer.
//! Input: one kind byte (0 RSA PKCS#1 v1.5, 1 RSA-PSS, 2 P-256, 3 P-384), one hash byte, then
//! length-prefixed fields (u16 big-endian length, bytes): RSA `n`, `e`, message, signature; EC
//! SEC1 point, message, signature.
//! Properties: nothing panics; a refused key says why; verifying twice gives the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_authn::ec::VerifyingKey;
use wasmesh_authn::rsa::{Hash, PublicKey, MAX_MODULUS_BITS};

fn field<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return std::mem::take(data);
    };
    let len = usize::from(u16::from_be_bytes(*len)).min(rest.len());
    let (f, rest) = rest.split_at(len);
    *data = rest;
    f
}

fuzz_target!(|data: &[u8]| {
    let [kind, hash, rest @ ..] = data else { return };
    let mut rest = rest;
    let hash = match hash % 3 {
        0 => Hash::Sha256,
        1 => Hash::Sha384,
        _ => Hash::Sha512,
    };
    match kind % 4 {
        k @ (0 | 1) => {
            let (n, e, msg, sig) = (field(&mut rest), field(&mut rest), field(&mut rest), field(&mut rest));
            match PublicKey::from_components(n, e) {
                Ok(key) => {
                    assert!(key.bits() <= MAX_MODULUS_BITS);
                    let verify = |s: &[u8]| {
                        if k == 0 {
                            key.verify_pkcs1v15(hash, msg, s)
                        } else {
                            key.verify_pss(hash, msg, s)
                        }
                    };
                    let first = verify(sig);
                    assert_eq!(first, verify(sig));
                    if first {
                        // A valid signature is bound to its message.
                        let mut other = msg.to_vec();
                        other.push(0);
                        let again = if k == 0 {
                            key.verify_pkcs1v15(hash, &other, sig)
                        } else {
                            key.verify_pss(hash, &other, sig)
                        };
                        assert!(!again);
                    }
                }
                Err(why) => assert!(!why.is_empty()),
            }
        }
        2 => {
            let (point, msg, sig) = (field(&mut rest), field(&mut rest), field(&mut rest));
            if let Some(key) = VerifyingKey::<p256::NistP256>::from_sec1_bytes(point) {
                let first = key.verify(msg, sig);
                assert_eq!(first, key.verify(msg, sig));
            }
        }
        _ => {
            let (point, msg, sig) = (field(&mut rest), field(&mut rest), field(&mut rest));
            if let Some(key) = VerifyingKey::<p384::NistP384>::from_sec1_bytes(point) {
                let first = key.verify(msg, sig);
                assert_eq!(first, key.verify(msg, sig));
            }
        }
    }
});
