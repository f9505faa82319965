//! `google.protobuf.Struct`, `Value` and `ListValue` (struct.proto), the wire form of Istio's
//! peer metadata. Declared by hand with prost so the crate needs no protoc and no well-known-types
//! crate. The map is a `BTreeMap`, so encoding is deterministic: fields are written in key order,
//! which is what protobuf's deterministic serialization (Istio's
//! `serializeToStringDeterministic`) produces for a map.
#![deny(clippy::indexing_slicing)]

use std::collections::BTreeMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Struct {
    #[prost(btree_map = "string, message", tag = "1")]
    pub fields: BTreeMap<String, Value>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(oneof = "value::Kind", tags = "1, 2, 3, 4, 5, 6")]
    pub kind: Option<value::Kind>,
}

pub mod value {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `NullValue` enum; only 0 (`NULL_VALUE`) exists.
        #[prost(int32, tag = "1")]
        NullValue(i32),
        #[prost(double, tag = "2")]
        NumberValue(f64),
        #[prost(string, tag = "3")]
        StringValue(String),
        #[prost(bool, tag = "4")]
        BoolValue(bool),
        #[prost(message, tag = "5")]
        StructValue(super::Struct),
        #[prost(message, tag = "6")]
        ListValue(super::ListValue),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListValue {
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<Value>,
}

impl Value {
    pub fn string(s: impl Into<String>) -> Value {
        Value { kind: Some(value::Kind::StringValue(s.into())) }
    }
    pub fn structure(s: Struct) -> Value {
        Value { kind: Some(value::Kind::StructValue(s)) }
    }
    /// The string inside, if this is a string value.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Some(value::Kind::StringValue(s)) => Some(s),
            _ => None,
        }
    }
    pub fn as_struct(&self) -> Option<&Struct> {
        match &self.kind {
            Some(value::Kind::StructValue(s)) => Some(s),
            _ => None,
        }
    }
    pub fn as_list(&self) -> Option<&ListValue> {
        match &self.kind {
            Some(value::Kind::ListValue(l)) => Some(l),
            _ => None,
        }
    }
}

impl Struct {
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
    pub fn get_struct(&self, key: &str) -> Option<&Struct> {
        self.fields.get(key).and_then(Value::as_struct)
    }
}

// Envoy's `config.core.v3.Metadata`, as `get_property(["xds", "cluster_metadata"])` returns it
// serialized: `map<string, Struct> filter_metadata = 1`. Only what the stats filter reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metadata {
    #[prost(btree_map = "string, message", tag = "1")]
    pub filter_metadata: BTreeMap<String, Struct>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encoding_is_deterministic_and_in_key_order() {
        let mut a = Struct::default();
        a.fields.insert("b".into(), Value::string("2"));
        a.fields.insert("a".into(), Value::string("1"));
        let bytes = a.encode_to_vec();
        // field 1 (map entry, LEN): key "a" first.
        assert_eq!(&bytes[..9], &[0x0a, 0x08, 0x0a, 0x01, b'a', 0x12, 0x03, 0x1a, 0x01]);
        assert_eq!(bytes[9], b'1');
        let back = Struct::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn nested_structs_and_lists_round_trip() {
        let mut inner = Struct::default();
        inner.fields.insert("app".into(), Value::string("reviews"));
        let mut outer = Struct::default();
        outer.fields.insert("LABELS".into(), Value::structure(inner));
        outer.fields.insert(
            "LIST".into(),
            Value { kind: Some(value::Kind::ListValue(ListValue { values: vec![Value::string("x")] })) },
        );
        let back = Struct::decode(outer.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.get_struct("LABELS").and_then(|l| l.get_str("app")), Some("reviews"));
        assert_eq!(back.fields["LIST"].as_list().map(|l| l.values.len()), Some(1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b"\xff\xff\xff\xff"[..], b"\x0a\x7f", b"\x0a\x02\x0a\xff", b"hello world"] {
            let _ = Struct::decode(bytes);
        }
        // Deep nesting stops at prost's recursion limit.
        let mut deep = Vec::new();
        for _ in 0..200 {
            // Struct{fields: {"": Value{struct_value: ...}}} nesting, length-prefixed inside out.
            let mut entry = vec![0x0a, 0x00, 0x12];
            let mut value = vec![0x2a];
            push_len(&mut value, deep.len());
            value.extend_from_slice(&deep);
            push_len(&mut entry, value.len());
            entry.extend_from_slice(&value);
            let mut s = vec![0x0a];
            push_len(&mut s, entry.len());
            s.extend_from_slice(&entry);
            deep = s;
        }
        assert!(Struct::decode(deep.as_slice()).is_err());
    }

    fn push_len(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
}
