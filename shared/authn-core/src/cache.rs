//! The verified-token cache: what a successful verification leaves behind so the same token is
//! not verified again, by this VM or any other worker's VM (the adapter stores entries in
//! proxy-wasm shared data, which is process-wide).
//!
//! Bounded: a fixed number of slots (direct-mapped; a new token evicts whatever held its slot).
//! Keyed by a 128-bit SipHash-1-3 of the token under a secret random key shared by the VMs
//! (in shared data) mixed with the configuration fingerprint; the token itself is never stored.
//! Without the key nobody can aim a token at another token's entry, and a hit can only ever
//! return what the entry's own (verified) token would have produced. A hit is used only when the hash matches, the same provider
//! verified it, the key that verified it is still served, and the token is within `exp`/`nbf`.
//! Everything a hit produces (identity, headers) comes from the entry, never from the presented
//! token.

#![deny(clippy::indexing_slicing)]

/// Storage for cache entries (the adapter: proxy-wasm shared data; tests: a map).
pub trait TokenCache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>>;
    fn put(&mut self, key: &str, value: &[u8]);
}

/// No cache (`jwtCacheSlots: 0`).
pub struct NoCache;

impl TokenCache for NoCache {
    fn get(&mut self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn put(&mut self, _: &str, _: &[u8]) {}
}

/// In-memory cache (tests, and native tools).
#[derive(Default)]
pub struct MapCache {
    pub entries: std::collections::HashMap<String, Vec<u8>>,
    pub gets: usize,
    pub puts: usize,
}

impl TokenCache for MapCache {
    fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.gets += 1;
        self.entries.get(key).cloned()
    }
    fn put(&mut self, key: &str, value: &[u8]) {
        self.puts += 1;
        self.entries.insert(key.to_string(), value.to_vec());
    }
}

/// Entries larger than this are not cached (the token is just verified each time), counted as
/// `cache_entry_too_large`. Envoy's jwt_authn bounds its token cache the same way
/// (`jwt_cache_config.jwt_max_token_size`: larger tokens are not cached).
pub const MAX_ENTRY_BYTES: usize = 48 * 1024;
/// Most memory the shared verified-token cache may take: `jwtCacheSlots` × [`MAX_ENTRY_BYTES`]
/// must stay within it (Envoy bounds its cache by entries, `jwt_cache_size`; a slot here holds
/// at most one entry, so this also bounds the number of cached tokens, to 5461).
pub const MAX_CACHE_BYTES: usize = 256 * 1024 * 1024;
/// Tokens without `exp` are trusted from the cache for at most this long.
pub const NO_EXP_MAX_AGE_SECS: u64 = 300;

const MAGIC: &[u8; 4] = b"WAC1";

/// 128-bit keyed hash of a token (`key`: the shared secret mixed with the configuration salt).
pub fn token_hash(key: &[u8; 16], token: &str) -> [u8; 16] {
    use siphasher::sip128::{Hasher128, SipHasher13};
    use std::hash::Hasher;
    let mut h = SipHasher13::new_with_key(key);
    h.write(token.as_bytes());
    let out = h.finish128();
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&out.h1.to_le_bytes());
    b[8..].copy_from_slice(&out.h2.to_le_bytes());
    b
}

/// Mixes the VMs' shared secret with the configuration salt.
pub fn hash_key(secret: &[u8; 16], salt: &[u8; 16]) -> [u8; 16] {
    let mut k = [0u8; 16];
    for ((k, s), t) in k.iter_mut().zip(secret).zip(salt) {
        *k = s ^ t;
    }
    k
}

/// A small per-VM cache of decoded entries in front of the shared one (no hostcall, no decode
/// on a hit). Bounded; oldest inserted evicted first.
#[derive(Default)]
pub struct L1 {
    map: std::collections::HashMap<[u8; 16], std::rc::Rc<Entry>>,
    order: std::collections::VecDeque<[u8; 16]>,
}

/// Entries kept per VM in front of the shared cache (least recently inserted evicted first).
pub const L1_CAPACITY: usize = 256;

impl L1 {
    pub fn get(&self, hash: &[u8; 16]) -> Option<std::rc::Rc<Entry>> {
        self.map.get(hash).cloned()
    }
    pub fn insert(&mut self, entry: std::rc::Rc<Entry>) {
        let hash = entry.hash;
        if self.map.insert(hash, entry).is_none() {
            self.order.push_back(hash);
            while self.order.len() > L1_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The shared-data key of the slot a token hash maps to.
pub fn slot_key(salt: &[u8; 16], hash: &[u8; 16], slots: u32) -> String {
    let mut b = [0u8; 8];
    b.copy_from_slice(&hash[..8]);
    let slot = u64::from_le_bytes(b) % u64::from(slots.max(1));
    format!(
        "wasmesh.authn.{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}.{slot}",
        salt[0], salt[1], salt[2], salt[3], salt[4], salt[5]
    )
}

/// A cached successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub hash: [u8; 16],
    pub provider: u32,
    /// Fingerprint of the key that verified the signature.
    pub key_fp: u64,
    pub iss: String,
    pub nbf: u64,
    pub exp: u64,
    pub verified_at: u64,
    pub audiences: Vec<String>,
    /// Encoded `RequestIdentity` for the authz filter.
    pub identity: Vec<u8>,
    /// `(header, value)` for `outputClaimToHeaders` claims that were present.
    pub claim_headers: Vec<(String, String)>,
    /// The payload segment, when the provider forwards it (`outputPayloadToHeader`).
    pub payload_b64: Option<String>,
}

impl Entry {
    /// Whether the entry may still stand in for a verification at `now` (seconds).
    pub fn fresh(&self, now: u64) -> bool {
        self.exp != 0 || now.saturating_sub(self.verified_at) <= NO_EXP_MAX_AGE_SECS
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.identity.len() + self.iss.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.provider.to_le_bytes());
        out.extend_from_slice(&self.key_fp.to_le_bytes());
        out.extend_from_slice(&self.nbf.to_le_bytes());
        out.extend_from_slice(&self.exp.to_le_bytes());
        out.extend_from_slice(&self.verified_at.to_le_bytes());
        put_bytes(&mut out, self.iss.as_bytes());
        out.extend_from_slice(&(self.audiences.len() as u32).to_le_bytes());
        for a in &self.audiences {
            put_bytes(&mut out, a.as_bytes());
        }
        out.extend_from_slice(&(self.claim_headers.len() as u32).to_le_bytes());
        for (h, v) in &self.claim_headers {
            put_bytes(&mut out, h.as_bytes());
            put_bytes(&mut out, v.as_bytes());
        }
        match &self.payload_b64 {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_bytes(&mut out, p.as_bytes());
            }
        }
        put_bytes(&mut out, &self.identity);
        out
    }

    /// Decodes an entry; `None` for anything malformed (treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let hash: [u8; 16] = r.take(16)?.try_into().ok()?;
        let provider = r.u32()?;
        let key_fp = r.u64()?;
        let nbf = r.u64()?;
        let exp = r.u64()?;
        let verified_at = r.u64()?;
        let iss = r.string()?;
        let n = r.u32()? as usize;
        if n > 1024 {
            return None;
        }
        let mut audiences = Vec::with_capacity(n);
        for _ in 0..n {
            audiences.push(r.string()?);
        }
        let n = r.u32()? as usize;
        if n > 1024 {
            return None;
        }
        let mut claim_headers = Vec::with_capacity(n);
        for _ in 0..n {
            claim_headers.push((r.string()?, r.string()?));
        }
        let payload_b64 = match r.take(1)?.first()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return None,
        };
        let identity = r.bytes()?.to_vec();
        if r.at != bytes.len() {
            return None;
        }
        Some(Entry {
            hash,
            provider,
            key_fp,
            iss,
            nbf,
            exp,
            verified_at,
            audiences,
            identity,
            claim_headers,
            payload_b64,
        })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            hash: [7; 16],
            provider: 2,
            key_fp: 0xdead_beef,
            iss: "https://idp".into(),
            nbf: 1,
            exp: 2,
            verified_at: 3,
            audiences: vec!["a".into(), "b".into()],
            identity: br#"{"principal":"x"}"#.to_vec(),
            claim_headers: vec![("x-sub".into(), "alice".into())],
            payload_b64: Some("eyJ9".into()),
        }
    }

    #[test]
    fn entries_round_trip() {
        let e = entry();
        assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
        let mut e2 = e;
        e2.payload_b64 = None;
        e2.audiences.clear();
        assert_eq!(Entry::decode(&e2.encode()), Some(e2));
    }

    #[test]
    fn truncated_or_corrupt_entries_are_misses() {
        let bytes = entry().encode();
        for end in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..end]).is_none(), "prefix {end}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Entry::decode(&extra).is_none());
        let mut bad = bytes;
        bad[0] = b'X';
        assert!(Entry::decode(&bad).is_none());
        assert!(Entry::decode(&[0xff; 200]).is_none());
    }

    #[test]
    fn hashes_depend_on_salt_and_token_and_slots_are_bounded() {
        let a = token_hash(&[0; 16], "t1");
        assert_ne!(a, token_hash(&[0; 16], "t2"));
        assert_ne!(a, token_hash(&[1; 16], "t1"));
        let mut keys = std::collections::HashSet::new();
        for i in 0..1000 {
            keys.insert(slot_key(&[0; 16], &token_hash(&[0; 16], &format!("tok{i}")), 16));
        }
        assert_eq!(keys.len(), 16);
        assert!(!slot_key(&[0; 16], &a, 16).contains("t1"));
    }

    #[test]
    fn l1_is_bounded() {
        let mut l1 = L1::default();
        for i in 0..(L1_CAPACITY + 10) {
            let mut e = entry();
            e.hash = token_hash(&[0; 16], &format!("t{i}"));
            l1.insert(std::rc::Rc::new(e));
        }
        assert_eq!(l1.len(), L1_CAPACITY);
        assert!(l1.get(&token_hash(&[0; 16], "t0")).is_none(), "oldest evicted");
        assert!(l1.get(&token_hash(&[0; 16], &format!("t{}", L1_CAPACITY + 9))).is_some());
    }

    #[test]
    fn no_exp_entries_age_out() {
        let mut e = entry();
        e.exp = 0;
        e.verified_at = 1000;
        assert!(e.fresh(1000 + NO_EXP_MAX_AGE_SECS));
        assert!(!e.fresh(1001 + NO_EXP_MAX_AGE_SECS));
    }
}
