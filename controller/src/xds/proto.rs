//! Envoy's JSON (what the bootstrap builder writes, what Envoy reads from a JSON bootstrap) to the
//! protobuf xDS carries, with the proto3 JSON mapping and Envoy's own API descriptors (the
//! `FileDescriptorSet` shipped with `envoy-types`, embedded at build time). Unknown fields are
//! refused, as Envoy refuses them in a bootstrap.

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use std::sync::OnceLock;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_types.bin"));

fn pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| format!("Envoy API descriptors: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// `json` as the protobuf message `type_url` (`type.googleapis.com/<full name>`), wrapped in `Any`.
pub fn to_any(type_url: &str, json: &Value) -> Result<Any, String> {
    let name = type_url.rsplit_once('/').map(|(_, n)| n).unwrap_or(type_url);
    let desc = pool()?.get_message_by_name(name).ok_or(format!("{name}: not a message of Envoy's API"))?;
    let msg = DynamicMessage::deserialize(desc, json).map_err(|e| format!("{name}: {e}"))?;
    Ok(Any { type_url: type_url.to_string(), value: prost_014::Message::encode_to_vec(&msg) })
}

/// A protobuf `Struct` (node metadata) as JSON.
pub fn struct_to_json(s: &envoy_types::pb::google::protobuf::Struct) -> Value {
    Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &envoy_types::pb::google::protobuf::Value) -> Value {
    use envoy_types::pb::google::protobuf::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map(Value::Number).unwrap_or(Value::Null),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::NullValue(_)) | None => Value::Null,
    }
}
