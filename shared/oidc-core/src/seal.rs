//! Sealed cookie values: AES-256-GCM over the value, the cookie's name as associated data, a fresh
//! random 96-bit nonce per seal. `v1.<base64url(nonce || ciphertext || tag)>`. The current key
//! seals; it and the previous keys open (key rotation: cookies sealed before a rotation still
//! open until they expire). A value that does not open under any key is refused as a whole:
//! tampered, truncated, sealed for another cookie name, or sealed with a key no longer configured.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

/// Length of a key (AES-256).
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;
const PREFIX: &str = "v1.";

/// The sealing keys: the current one first.
#[derive(Clone)]
pub struct Keys {
    ciphers: Vec<Aes256Gcm>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.ciphers.len())
    }
}

impl Keys {
    /// From raw keys, the current one first; each [`KEY_BYTES`] long.
    pub fn new(keys: &[Vec<u8>]) -> Result<Keys, String> {
        if keys.is_empty() {
            return Err("no key".into());
        }
        let mut ciphers = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            if k.len() != KEY_BYTES {
                return Err(format!("key {i} has {} bytes; expected {KEY_BYTES}", k.len()));
            }
            ciphers.push(Aes256Gcm::new_from_slice(k).map_err(|_| format!("key {i}: not an AES-256 key"))?);
        }
        Ok(Keys { ciphers })
    }

    /// Seals `plain` for the cookie `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<String, &'static str> {
        let cipher = self.ciphers.first().ok_or("no key")?;
        let mut nonce = [0u8; NONCE_BYTES];
        crate::random(&mut nonce)?;
        let sealed = cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad: name.as_bytes() })
            .map_err(|_| "sealing failed")?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", crate::b64(&out)))
    }

    /// Opens a value sealed for the cookie `name` by any configured key.
    pub fn open(&self, name: &str, value: &str) -> Option<Vec<u8>> {
        let raw = crate::unb64(value.strip_prefix(PREFIX)?)?;
        let (nonce, sealed) = raw.split_at_checked(NONCE_BYTES)?;
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().ok()?;
        let nonce = Nonce::from(nonce);
        self.ciphers.iter().find_map(|c| c.decrypt(&nonce, Payload { msg: sealed, aad: name.as_bytes() }).ok())
    }
}

/// Overhead of sealing `n` bytes, for size bounds: prefix, nonce, tag, base64.
pub fn sealed_len(n: usize) -> usize {
    PREFIX.len() + (NONCE_BYTES + n + 16).div_ceil(3) * 4
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> Keys {
        Keys::new(&bytes.iter().map(|b| vec![*b; KEY_BYTES]).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_under_its_name_only() {
        let k = keys(&[1]);
        let v = k.seal("session", b"hello").unwrap();
        assert!(v.starts_with("v1."));
        assert!(!v.contains("hello"));
        assert_eq!(k.open("session", &v).as_deref(), Some(&b"hello"[..]));
        assert_eq!(k.open("session-flow-x", &v), None, "swapped to another cookie");
        assert_ne!(k.seal("session", b"hello").unwrap(), v, "a fresh nonce each time");
        assert!(v.len() <= sealed_len(5));
    }

    #[test]
    fn tampered_truncated_or_foreign_values_do_not_open() {
        let k = keys(&[1]);
        let v = k.seal("s", b"some session").unwrap();
        let mut flipped = v.clone().into_bytes();
        let last = flipped.len() - 3;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        for bad in [
            String::from_utf8(flipped).unwrap(),
            v[..v.len() - 4].to_string(),
            v[..10].to_string(),
            "v1.".to_string(),
            "v2.".to_string() + &v[3..],
            v[3..].to_string(),
            "v1.!!!".to_string(),
        ] {
            assert_eq!(k.open("s", &bad), None, "{bad}");
        }
        assert_eq!(keys(&[2]).open("s", &v), None, "another key");
    }

    #[test]
    fn the_previous_key_still_opens_after_a_rotation() {
        let old = keys(&[1]);
        let v = old.seal("s", b"x").unwrap();
        let rotated = keys(&[2, 1]);
        assert_eq!(rotated.open("s", &v).as_deref(), Some(&b"x"[..]));
        let fresh = rotated.seal("s", b"y").unwrap();
        assert_eq!(old.open("s", &fresh), None, "new cookies use the new key");
        assert_eq!(keys(&[2]).open("s", &v), None, "a retired key no longer opens");
    }

    #[test]
    fn keys_must_be_256_bits() {
        assert!(Keys::new(&[]).is_err());
        assert!(Keys::new(&[vec![0; 16]]).unwrap_err().contains("16 bytes"));
    }
}
