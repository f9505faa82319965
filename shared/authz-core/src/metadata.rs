//! Reading Envoy dynamic metadata for `experimental.envoy.filters.*` conditions.
//!
//! Envoy hands a wasm filter the whole `metadata` property as a serialized
//! `envoy.config.core.v3.Metadata` protobuf (verified in Envoy 1.40). Narrower property paths
//! lose the value's type (a list and a string, or a number and an 8-byte string, look alike), so
//! the filter reads the message and this module decodes the few types RBAC distinguishes.

#![deny(clippy::indexing_slicing)]

use crate::{MetaValue, MetadataEntry};

/// Decodes `Metadata.filter_metadata[filter].fields[key]` for every wanted pair present.
/// Malformed input yields `None` (the filter fails closed).
pub fn decode_metadata(bytes: &[u8], wanted: &[(String, String)]) -> Option<Vec<MetadataEntry>> {
    let mut out = Vec::new();
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.key()? {
        if field == 1 && wire == 2 {
            // map<string, Struct> entry
            let mut e = Reader::new(r.bytes()?);
            let mut name: &[u8] = b"";
            let mut strukt: &[u8] = b"";
            while let Some((f, w)) = e.key()? {
                match (f, w) {
                    (1, 2) => name = e.bytes()?,
                    (2, 2) => strukt = e.bytes()?,
                    _ => e.skip(w)?,
                }
            }
            if !wanted.iter().any(|(f, _)| f.as_bytes() == name) {
                continue;
            }
            for (key, value) in struct_fields(strukt)? {
                let slot = wanted.iter().position(|(f, k)| f.as_bytes() == name && k.as_bytes() == key);
                if let Some(slot) = slot {
                    out.push(MetadataEntry { slot, value: value_of(value, 0)? });
                }
            }
        } else {
            r.skip(wire)?;
        }
    }
    Some(out)
}

/// `Struct.fields` entries as (key, encoded Value).
fn struct_fields(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut r = Reader::new(bytes);
    while let Some((f, w)) = r.key()? {
        if f == 1 && w == 2 {
            let mut e = Reader::new(r.bytes()?);
            let mut key: &[u8] = b"";
            let mut value: &[u8] = b"";
            while let Some((f, w)) = e.key()? {
                match (f, w) {
                    (1, 2) => key = e.bytes()?,
                    (2, 2) => value = e.bytes()?,
                    _ => e.skip(w)?,
                }
            }
            out.push((key, value));
        } else {
            r.skip(w)?;
        }
    }
    Some(out)
}

/// `google.protobuf.Value`: string → String, list_value → List, everything else → Other.
fn value_of(bytes: &[u8], depth: u32) -> Option<MetaValue> {
    if depth > 16 {
        return None;
    }
    let mut r = Reader::new(bytes);
    let mut v = MetaValue::Other;
    while let Some((f, w)) = r.key()? {
        match (f, w) {
            (3, 2) => v = MetaValue::String(r.bytes()?.to_vec()),
            (6, 2) => {
                let mut items = Vec::new();
                let mut l = Reader::new(r.bytes()?);
                while let Some((f, w)) = l.key()? {
                    if f == 1 && w == 2 {
                        items.push(value_of(l.bytes()?, depth + 1)?);
                    } else {
                        l.skip(w)?;
                    }
                }
                v = MetaValue::List(items);
            }
            (1..=6, _) => {
                r.skip(w)?;
                v = MetaValue::Other;
            }
            _ => r.skip(w)?,
        }
    }
    Some(v)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// `Ok(None)` at the end; `None` on malformed input.
    fn key(&mut self) -> Option<Option<(u64, u8)>> {
        if self.at >= self.b.len() {
            return Some(None);
        }
        let k = self.varint()?;
        Some(Some((k >> 3, (k & 7) as u8)))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(len)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            0 => {
                self.varint()?;
            }
            1 => self.at = self.at.checked_add(8).filter(|e| *e <= self.b.len())?,
            2 => {
                self.bytes()?;
            }
            5 => self.at = self.at.checked_add(4).filter(|e| *e <= self.b.len())?,
            _ => return None,
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(field: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![(field << 3) | 2];
        let mut n = body.len();
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                v.push(b);
                break;
            }
            v.push(b | 0x80);
        }
        v.extend_from_slice(body);
        v
    }

    fn metadata(filter: &str, fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut strukt = Vec::new();
        for (k, value) in fields {
            strukt.extend(ld(1, &[ld(1, k.as_bytes()), ld(2, value)].concat()));
        }
        ld(1, &[ld(1, filter.as_bytes()), ld(2, &strukt)].concat())
    }

    #[test]
    fn decodes_strings_lists_and_other_types() {
        let s = ld(3, b"hello");
        let list = ld(6, &[ld(1, &ld(3, b"a")), ld(1, &ld(3, b"b"))].concat());
        let number = [vec![0x11], 5.0f64.to_le_bytes().to_vec()].concat();
        let bytes =
            metadata("envoy.filters.http.lua", &[("str", s), ("list", list), ("num", number), ("skip", ld(3, b"x"))]);
        let wanted = vec![
            ("envoy.filters.http.lua".to_string(), "str".to_string()),
            ("envoy.filters.http.lua".to_string(), "list".to_string()),
            ("envoy.filters.http.lua".to_string(), "num".to_string()),
            ("envoy.filters.http.lua".to_string(), "absent".to_string()),
        ];
        let got = decode_metadata(&bytes, &wanted).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].value, MetaValue::String(b"hello".to_vec()));
        assert_eq!(
            got[1].value,
            MetaValue::List(vec![MetaValue::String(b"a".to_vec()), MetaValue::String(b"b".to_vec())])
        );
        assert_eq!(got[2].value, MetaValue::Other);
    }

    #[test]
    fn matches_the_bytes_envoy_sent() {
        // `metadata` as Envoy 1.40 returned it for header_to_metadata k=hello.
        let bytes: &[u8] = &[
            10, 55, 10, 37, 101, 110, 118, 111, 121, 46, 102, 105, 108, 116, 101, 114, 115, 46, 104, 116, 116, 112, 46,
            104, 101, 97, 100, 101, 114, 95, 116, 111, 95, 109, 101, 116, 97, 100, 97, 116, 97, 18, 14, 10, 12, 10, 1,
            107, 18, 7, 26, 5, 104, 101, 108, 108, 111,
        ];
        let wanted = vec![("envoy.filters.http.header_to_metadata".to_string(), "k".to_string())];
        let got = decode_metadata(bytes, &wanted).unwrap();
        assert_eq!(got, vec![MetadataEntry { slot: 0, value: MetaValue::String(b"hello".to_vec()) }]);
    }

    #[test]
    fn truncated_input_is_rejected_not_panicking() {
        let bytes = metadata("f", &[("k", ld(3, b"v"))]);
        let wanted = vec![("f".to_string(), "k".to_string())];
        for cut in 1..bytes.len() {
            let _ = decode_metadata(&bytes[..cut], &wanted);
        }
        assert!(decode_metadata(&[0xff; 11], &wanted).is_none());
        assert_eq!(decode_metadata(&[], &wanted), Some(vec![]));
    }
}
