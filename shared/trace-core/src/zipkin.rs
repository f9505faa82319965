//! Zipkin v2 JSON (`POST /api/v2/spans`, a JSON array of spans; spec §5.5): timestamps and
//! durations in microseconds, the duration at least 1 and rounded up.

use crate::hex;
use crate::span::{Kind, Span};
use serde_json::{json, Map, Value};

fn span_json(service_name: &str, local_ip: Option<&str>, s: &Span) -> Value {
    let mut o = Map::new();
    o.insert("traceId".into(), json!(hex(s.trace_id, if s.trace_id_128 { 32 } else { 16 })));
    o.insert("id".into(), json!(hex(u128::from(s.span_id), 16)));
    if let Some(p) = s.parent_span_id {
        o.insert("parentId".into(), json!(hex(u128::from(p), 16)));
    }
    o.insert("name".into(), json!(s.name.to_lowercase()));
    o.insert(
        "kind".into(),
        json!(match s.kind {
            Kind::Server => "SERVER",
            Kind::Client => "CLIENT",
        }),
    );
    o.insert("timestamp".into(), json!(s.start_unix_nanos / 1000));
    let nanos = s.end_unix_nanos.saturating_sub(s.start_unix_nanos);
    o.insert("duration".into(), json!(nanos.div_ceil(1000).max(1)));
    let mut local = Map::new();
    local.insert("serviceName".into(), json!(service_name));
    if let Some(ip) = local_ip {
        local.insert(if ip.contains(':') { "ipv6" } else { "ipv4" }.into(), json!(ip));
    }
    o.insert("localEndpoint".into(), Value::Object(local));
    if let Some((ip, port)) = &s.peer {
        let key = if ip.contains(':') { "ipv6" } else { "ipv4" };
        o.insert("remoteEndpoint".into(), json!({ key: ip, "port": port }));
    }
    let tags: Map<String, Value> = s.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    o.insert("tags".into(), Value::Object(tags));
    Value::Object(o)
}

/// The body of one `POST /api/v2/spans`.
pub fn encode_spans(service_name: &str, local_ip: Option<&str>, spans: &[Span]) -> Vec<u8> {
    let list: Vec<Value> = spans.iter().map(|s| span_json(service_name, local_ip, s)).collect();
    serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Outgoing;

    #[test]
    fn zipkin_fields() {
        let out = Outgoing {
            trace_id: 0x463ac35c9f6413ad,
            trace_id_128: false,
            span_id: 0xa,
            parent_span_id: None,
            sampled: true,
            tracestate: None,
            b3_single: false,
        };
        let mut s = Span::new(&out, "Ingress".into(), Kind::Server, 1_000_000, 1_000_001);
        s.peer = Some(("10.0.0.1".into(), 5000));
        let v: Value = serde_json::from_slice(&encode_spans("svc", Some("127.0.0.1"), &[s])).unwrap();
        assert_eq!(v[0]["traceId"], "463ac35c9f6413ad");
        assert_eq!(v[0]["id"], "000000000000000a");
        assert_eq!(v[0]["name"], "ingress");
        assert_eq!(v[0]["timestamp"], 1000);
        assert_eq!(v[0]["duration"], 1);
        assert!(v[0].get("parentId").is_none());
        assert_eq!(v[0]["remoteEndpoint"]["port"], 5000);
    }
}
