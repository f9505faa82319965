//! RSA signature verification for JWTs (RS256/384/512: PKCS#1 v1.5; PS256/384/512: PSS with
//! MGF1 and a salt as long as the hash, RFC 7518 §3.3 and §3.5), written for the wasm hot path.
//!
//! Why not jwt-simple here: its pure-Rust RSA (the `rsa` crate on `num-bigint-dig`) re-encodes
//! the key and allocates big integers on every verification; a cold RS256 verify cost ≈1.2 ms
//! of Envoy CPU in wasm, 16× Envoy's BoringSSL. Verification only needs the public operation
//! `s^65537 mod n`, which is 17 Montgomery multiplications. Everything per key (limbs,
//! `-n⁻¹ mod 2³²`, `R² mod n`) is computed once when the JWKS is parsed.
//!
//! Limbs are `u32` so every product is one native 64-bit multiply in wasm32 (a `u128` product
//! would be a library call). Nothing here is secret, so nothing needs to be constant-time.
//!
//! Key policy: the keys Envoy's jwt_authn uses (`jwks.cc` `createRsaFromJwk`, then BoringSSL's
//! `RSA_check_key` on a public key): `e` is 3 or 65537 (leading zero bytes allowed), the modulus
//! odd, longer than 33 bits (BoringSSL's bound on `e`) and at most 16384 bits. Short keys are
//! not refused (Envoy does not refuse them); a key too short for the algorithm's padding simply
//! verifies nothing, as in BoringSSL.

#![deny(clippy::indexing_slicing)]

use sha2::{Digest, Sha256, Sha384, Sha512};

/// BoringSSL's `rsa_check_public_key`: `n_bits <= kMaxExponentBits` (33) is `KEY_SIZE_TOO_SMALL`.
pub const MIN_MODULUS_BITS: usize = 34;
/// BoringSSL's `rsa_check_public_key`: over 16384 bits is `MODULUS_TOO_LARGE`.
pub const MAX_MODULUS_BITS: usize = 16384;

/// The hash of an RS/PS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The digest's length in bytes.
    pub fn output_bytes(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// Hashes the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// DER of `DigestInfo` up to the hash value (RFC 8017 §9.2 note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
                0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
                0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
                0x04, 0x40,
            ],
        }
    }
}

/// An RSA public key prepared for verification.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// Modulus, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// Modulus length in bits and in bytes (`k` of RFC 8017).
    bits: usize,
    k: usize,
    /// `-n⁻¹ mod 2³²`.
    n0inv: u32,
    /// `R² mod n` with `R = 2^(32·limbs)`: moves a value into Montgomery form.
    rr: Vec<u32>,
    /// The public exponent (3 or 65537 by policy).
    e: u32,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSA-{} public key", self.bits)
    }
}

impl PublicKey {
    /// From a JWK's `n` and `e` (big-endian bytes). Errors say why the key is refused.
    pub fn from_components(n: &[u8], e: &[u8]) -> Result<Self, String> {
        let n = strip_zeros(n);
        let bits = bit_length(n);
        if bits < MIN_MODULUS_BITS {
            return Err(format!("modulus is {bits} bits; at least {MIN_MODULUS_BITS} are required"));
        }
        if bits > MAX_MODULUS_BITS {
            return Err(format!("modulus is {bits} bits; at most {MAX_MODULUS_BITS} are supported"));
        }
        if n.last().is_none_or(|b| b & 1 == 0) {
            return Err("modulus is even".into());
        }
        let e = match strip_zeros(e) {
            [3] => 3,
            [1, 0, 1] => 65537,
            _ => return Err("public exponent is not 3 or 65537".into()),
        };
        let limbs = bits.div_ceil(32);
        let n_limbs = limbs_from_be(n, limbs);
        // `n` is odd, so its lowest limb is too.
        let n0inv = neg_inverse(n_limbs.first().copied().unwrap_or(1));
        let rr = r_squared(&n_limbs);
        Ok(PublicKey { n: n_limbs, bits, k: bits.div_ceil(8), n0inv, rr, e })
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// RSASSA-PKCS1-v1_5 verification (RFC 8017 §8.2.2): the whole encoded message is rebuilt
    /// from the hash and compared, so no parsing of attacker-chosen padding happens.
    pub fn verify_pkcs1v15(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.public_op(signature) else { return false };
        let prefix = hash.digest_info_prefix();
        let t_len = prefix.len() + hash.output_bytes();
        if self.k < t_len + 11 {
            return false;
        }
        // EM = 00 01 FF..FF 00 || DigestInfo prefix || H, exactly k bytes.
        let mut expected = Vec::with_capacity(self.k);
        expected.extend_from_slice(&[0, 1]);
        expected.resize(self.k - t_len - 1, 0xff);
        expected.push(0);
        expected.extend_from_slice(prefix);
        expected.extend_from_slice(&hash.digest(&[message]));
        em == expected
    }

    /// RSASSA-PSS verification (RFC 8017 §8.1.2 and EMSA-PSS-VERIFY §9.1.2) with MGF1 of the
    /// same hash and a salt of the hash's length (RFC 7518 §3.5).
    pub fn verify_pss(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(out) = self.public_op(signature) else { return false };
        let h_len = hash.output_bytes();
        let s_len = h_len;
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        // The integer must fit in emLen bytes (leading zero byte when modBits ≡ 1 mod 8).
        let Some((lead, em)) = out.split_at_checked(self.k - em_len) else { return false };
        if lead.iter().any(|b| *b != 0) || em_len < h_len + s_len + 2 {
            return false;
        }
        // EM = maskedDB || H || 0xbc
        let Some((&0xbc, body)) = em.split_last() else { return false };
        let Some((masked_db, h)) = body.split_at_checked(em_len - h_len - 1) else { return false };
        let unused_bits = 8 * em_len - em_bits;
        let top_mask = 0xffu8 >> unused_bits;
        if masked_db.first().is_some_and(|b| b & !top_mask != 0) {
            return false;
        }
        let mut db = mgf1(hash, h, masked_db.len());
        for (d, m) in db.iter_mut().zip(masked_db) {
            *d ^= m;
        }
        if let Some(first) = db.first_mut() {
            *first &= top_mask;
        }
        // DB = PS (zeros) || 0x01 || salt
        let Some((ps, rest)) = db.split_at_checked(em_len - h_len - s_len - 2) else { return false };
        let Some((&1, salt)) = rest.split_first() else { return false };
        if ps.iter().any(|b| *b != 0) {
            return false;
        }
        let m_hash = hash.digest(&[message]);
        hash.digest(&[&[0u8; 8], &m_hash, salt]) == h
    }

    /// `signature^e mod n` as `k` big-endian bytes (RSAVP1), or `None` when the signature is
    /// not exactly `k` bytes or not below the modulus.
    fn public_op(&self, signature: &[u8]) -> Option<Vec<u8>> {
        if signature.len() != self.k {
            return None;
        }
        let l = self.n.len();
        let s = limbs_from_be(signature, l);
        if !less_than(&s, &self.n) {
            return None;
        }
        let mut scratch = vec![0u32; 2 * (l + 1)];
        let mut base = vec![0u32; l];
        mont_mul(&mut base, &s, &self.rr, &self.n, self.n0inv, &mut scratch);
        // Left-to-right square and multiply over e's bits below the top one.
        let mut acc = base.clone();
        let mut tmp = vec![0u32; l];
        let top = 31 - self.e.leading_zeros();
        for bit in (0..top).rev() {
            mont_mul(&mut tmp, &acc, &acc, &self.n, self.n0inv, &mut scratch);
            if (self.e >> bit) & 1 == 1 {
                mont_mul(&mut acc, &tmp, &base, &self.n, self.n0inv, &mut scratch);
            } else {
                std::mem::swap(&mut acc, &mut tmp);
            }
        }
        // Out of Montgomery form: multiply by 1.
        let mut one = vec![0u32; l];
        if let Some(low) = one.first_mut() {
            *low = 1;
        }
        mont_mul(&mut tmp, &acc, &one, &self.n, self.n0inv, &mut scratch);
        Some(limbs_to_be(&tmp, self.k))
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(first..).unwrap_or_default()
}

fn bit_length(be: &[u8]) -> usize {
    match be.first() {
        None => 0,
        Some(top) => (be.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
    }
}

/// Big-endian bytes to `limbs` little-endian u32 limbs (the bytes must fit).
fn limbs_from_be(be: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, byte) in be.iter().rev().enumerate() {
        if let Some(limb) = out.get_mut(i / 4) {
            *limb |= u32::from(*byte) << (8 * (i % 4));
        }
    }
    out
}

/// Little-endian limbs to exactly `len` big-endian bytes (high bytes beyond `len` are dropped;
/// callers only pass values below the modulus).
fn limbs_to_be(limbs: &[u32], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().rev().enumerate() {
        if let Some(limb) = limbs.get(i / 4) {
            *byte = (limb >> (8 * (i % 4))) as u8;
        }
    }
    out
}

fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// `a -= b`, returning the borrow.
fn sub_in_place(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = 0u64;
    for (x, y) in a.iter_mut().zip(b) {
        let d = u64::from(*x).wrapping_sub(u64::from(*y)).wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
    borrow != 0
}

/// `-x⁻¹ mod 2³²` for odd `x` (Newton's iteration doubles the correct bits each step).
fn neg_inverse(x: u32) -> u32 {
    let mut inv: u32 = 1;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inv)));
    }
    inv.wrapping_neg()
}

/// `R² mod n`, by doubling 1 modulo n `2·32·limbs` times (once per key, not per request).
fn r_squared(n: &[u32]) -> Vec<u32> {
    let mut x = vec![0u32; n.len()];
    if let Some(low) = x.first_mut() {
        *low = 1;
    }
    for _ in 0..64 * n.len() {
        let mut carry = 0u32;
        for limb in x.iter_mut() {
            let next = *limb >> 31;
            *limb = (*limb << 1) | carry;
            carry = next;
        }
        if carry == 1 || !less_than(&x, n) {
            sub_in_place(&mut x, n);
        }
    }
    x
}

/// Montgomery product `out = a·b·R⁻¹ mod n` for `a, b < n`: coarsely integrated operand
/// scanning with the multiplication and the reduction of each outer step fused into one pass.
/// `t` is scratch of `2·(limbs + 1)`: the running sum ping-pongs between its halves, so the
/// inner loop is a plain zip (no bounds checks, no in-place shifting).
fn mont_mul(out: &mut [u32], a: &[u32], b: &[u32], n: &[u32], n0inv: u32, t: &mut [u32]) {
    let l = n.len();
    t.fill(0);
    let (mut cur, mut next) = t.split_at_mut(l + 1);
    let (Some((&b0, b_rest)), Some((&n0, n_rest))) = (b.split_first(), n.split_first()) else { return };
    for &ai in a {
        let (Some(&c0), Some(c_mid), Some(&c_top)) = (cur.first(), cur.get(1..l), cur.get(l)) else { return };
        let ai = u64::from(ai);
        // Column 0 decides m so that the sum becomes divisible by 2³²; it is dropped (the shift).
        let s = u64::from(c0) + ai * u64::from(b0);
        let m = u64::from((s as u32).wrapping_mul(n0inv));
        let mut c_mul = s >> 32;
        let mut c_red = (u64::from(s as u32) + m * u64::from(n0)) >> 32;
        for (((dst, &tj), &bj), &nj) in next.iter_mut().zip(c_mid).zip(b_rest).zip(n_rest) {
            let s = u64::from(tj) + ai * u64::from(bj) + c_mul;
            c_mul = s >> 32;
            let r = u64::from(s as u32) + m * u64::from(nj) + c_red;
            c_red = r >> 32;
            *dst = r as u32;
        }
        let top = u64::from(c_top) + c_mul + c_red;
        if let Some([lo, hi]) = next.get_mut(l - 1..=l) {
            *lo = top as u32;
            *hi = (top >> 32) as u32;
        }
        std::mem::swap(&mut cur, &mut next);
    }
    // The sum is below 2n: one conditional subtraction.
    let Some((low, high)) = cur.split_at_checked(l) else { return };
    out.copy_from_slice(low);
    if high.iter().any(|x| *x != 0) || !less_than(out, n) {
        sub_in_place(out, n);
    }
}

/// MGF1 (RFC 8017 B.2.1).
fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.output_bytes());
    let mut counter = 0u32;
    while out.len() < len {
        out.extend_from_slice(&hash.digest(&[seed, &counter.to_be_bytes()]));
        counter += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn montgomery_helpers() {
        for x in [1u32, 3, 0xffff_ffff, 0x1234_5677, 65537] {
            assert_eq!(x.wrapping_mul(neg_inverse(x)), u32::MAX, "{x}");
        }
        assert_eq!(limbs_to_be(&limbs_from_be(&[1, 2, 3, 4, 5], 2), 5), vec![1, 2, 3, 4, 5]);
        assert_eq!(bit_length(&[0x01, 0]), 9);
        assert!(less_than(&[5, 1], &[4, 2]) && !less_than(&[4, 2], &[4, 2]));
    }

    /// A small modulus checked against plain arithmetic (the code is limb-count generic).
    #[test]
    fn modular_exponentiation_matches_u128_arithmetic() {
        // n = 0xd5bbb96d30086ec4 84ebd2c8e1b0c9bd (odd, two limbs short of policy but same code).
        let n: u128 = 0xd5bb_b96d_3008_6ec4_84eb_d2c8_e1b0_c9bd;
        let n_limbs = limbs_from_be(&n.to_be_bytes(), 4);
        let key = PublicKey {
            n: n_limbs.clone(),
            bits: 128,
            k: 16,
            n0inv: neg_inverse(n_limbs[0]),
            rr: r_squared(&n_limbs),
            e: 65537,
        };
        let addmod = |x: u128, y: u128| -> u128 {
            let s = x.wrapping_add(y);
            if s < x || s >= n {
                s.wrapping_sub(n)
            } else {
                s
            }
        };
        let mulmod = |a: u128, b: u128| -> u128 {
            let (mut r, mut a, mut b) = (0u128, a % n, b);
            while b > 0 {
                if b & 1 == 1 {
                    r = addmod(r, a);
                }
                a = addmod(a, a);
                b >>= 1;
            }
            r
        };
        for s in [2u128, 3, 0x1234_5678_9abc_def0_1122_3344_5566_7788, n - 1] {
            let mut expected = 1u128;
            let mut base = s;
            let mut e = 65537u32;
            while e > 0 {
                if e & 1 == 1 {
                    expected = mulmod(expected, base);
                }
                base = mulmod(base, base);
                e >>= 1;
            }
            let got = key.public_op(&s.to_be_bytes()).unwrap();
            assert_eq!(u128::from_be_bytes(got.try_into().unwrap()), expected, "s = {s:#x}");
        }
        assert!(key.public_op(&n.to_be_bytes()).is_none(), "signature = n is refused");
        assert!(key.public_op(&[1; 15]).is_none(), "short signature is refused");
    }

    #[test]
    fn key_policy() {
        let mut n = vec![0xc5u8; 256];
        n[255] |= 1;
        assert!(PublicKey::from_components(&n, &[1, 0, 1]).is_ok());
        assert!(PublicKey::from_components(&n, &[0, 1, 0, 1]).is_ok(), "leading zeros in e are fine");
        assert!(PublicKey::from_components(&n, &[3]).is_ok(), "e = 3 is used, as by Envoy");
        assert!(PublicKey::from_components(&n, &[0, 0, 3]).is_ok());
        for e in [&[17u8][..], &[1, 0, 0, 0, 1], &[1, 0, 3], &[], &[0], &[1], &[2]] {
            assert!(PublicKey::from_components(&n, e).unwrap_err().contains("3 or 65537"), "e = {e:?}");
        }
        assert!(PublicKey::from_components(&n[1..], &[1, 0, 1]).is_ok(), "2040 bits: Envoy does not refuse it");
        assert!(PublicKey::from_components(&n[..64], &[1, 0, 1]).is_ok(), "512 bits neither");
        assert!(PublicKey::from_components(&[0x80, 0, 0, 1], &[3]).unwrap_err().contains("at least 34"));
        let mut big = vec![0xc5u8; 2048];
        big[2047] |= 1;
        assert_eq!(PublicKey::from_components(&big, &[1, 0, 1]).unwrap().bits(), 16384);
        big.insert(0, 1);
        assert!(PublicKey::from_components(&big, &[1, 0, 1]).unwrap_err().contains("at most 16384"));
        let mut even = n.clone();
        even[255] &= 0xfe;
        assert!(PublicKey::from_components(&even, &[1, 0, 1]).unwrap_err().contains("even"));
    }

    /// Signatures made by OpenSSL (testdata/gen-rsa-vectors.py): every key size and algorithm
    /// verifies, and any change to the message, the signature, the hash or the padding fails.
    #[test]
    fn openssl_signatures_verify_and_tampering_fails() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../testdata/rsa-vectors.json")).unwrap();
        let b64 = |v: &serde_json::Value| crate::jwt::b64url_decode(v.as_str().unwrap()).unwrap();
        let message = doc["message"].as_str().unwrap().as_bytes();
        let mut checked = 0;
        for key in doc["keys"].as_array().unwrap() {
            let pk = PublicKey::from_components(&b64(&key["n"]), &b64(&key["e"])).unwrap();
            assert_eq!(pk.bits() as u64, key["bits"].as_u64().unwrap());
            for (alg, sig) in key["signatures"].as_object().unwrap() {
                let sig = b64(sig);
                let hash = match &alg[2..] {
                    "256" => Hash::Sha256,
                    "384" => Hash::Sha384,
                    _ => Hash::Sha512,
                };
                let other_hash = if hash == Hash::Sha256 { Hash::Sha512 } else { Hash::Sha256 };
                let verify = |h: Hash, m: &[u8], s: &[u8]| {
                    if alg.starts_with("RS") {
                        pk.verify_pkcs1v15(h, m, s)
                    } else {
                        pk.verify_pss(h, m, s)
                    }
                };
                let cross = |h: Hash, m: &[u8], s: &[u8]| {
                    if alg.starts_with("RS") {
                        pk.verify_pss(h, m, s)
                    } else {
                        pk.verify_pkcs1v15(h, m, s)
                    }
                };
                let ctx = format!("{alg} with RSA-{}", pk.bits());
                assert!(verify(hash, message, &sig), "{ctx} verifies");
                assert!(!verify(other_hash, message, &sig), "{ctx}: another hash fails");
                assert!(!cross(hash, message, &sig), "{ctx}: the other padding fails");
                let mut m = message.to_vec();
                m[10] ^= 1;
                assert!(!verify(hash, &m, &sig), "{ctx}: changed message fails");
                for i in [0, sig.len() / 2, sig.len() - 1] {
                    let mut s = sig.clone();
                    s[i] ^= 0x40;
                    assert!(!verify(hash, message, &s), "{ctx}: changed signature byte {i} fails");
                }
                assert!(!verify(hash, message, &sig[1..]), "{ctx}: short signature fails");
                let mut long = vec![0u8];
                long.extend_from_slice(&sig);
                assert!(!verify(hash, message, &long), "{ctx}: a leading zero byte is not accepted");
                assert!(!verify(hash, message, &[]), "{ctx}: empty signature fails");
                assert!(!verify(hash, message, &vec![0xff; sig.len()]), "{ctx}: signature above n fails");
                checked += 1;
            }
        }
        assert_eq!(checked, 24);
    }
}
