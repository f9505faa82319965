//! OTLP/HTTP protobuf (`POST /v1/traces`, `Content-Type: application/x-protobuf`): the subset of
//! `opentelemetry/proto/{collector/trace,trace,resource,common}/v1` wasmesh sends, as prost
//! messages with the official field numbers (checked against the `opentelemetry-proto` crate's
//! decoder in the e2e collector). The common and resource messages are shared with log export.

use crate::span::{Kind, Span};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<OtlpSpan>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OtlpSpan {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(string, tag = "3")]
    pub trace_state: String,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 2 SERVER, 3 CLIENT.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// `StatusCode`: 0 UNSET, 1 OK, 2 ERROR.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1, 2, 3, 4")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
    #[prost(bool, tag = "2")]
    BoolValue(bool),
    #[prost(int64, tag = "3")]
    IntValue(i64),
    #[prost(double, tag = "4")]
    DoubleValue(f64),
}

pub fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(Value::StringValue(value.to_string())) }) }
}

/// W3C flags in OTLP `Span.flags`: bits 0–7 the trace flags, bit 8 "has is-remote" and bit 9
/// "parent is remote" (the downstream span's parent came over the wire; an upstream span's parent is
/// the proxy's own downstream span).
fn span_flags(s: &Span, sampled: bool) -> u32 {
    let mut f = u32::from(sampled);
    f |= 0x100;
    if s.parent_span_id.is_some() && !s.parent_local {
        f |= 0x200;
    }
    f
}

/// Envoy's OpenTelemetry tracer sets the span's status to ERROR for a 5xx `http.status_code`
/// (seen against Envoy 1.40: an upstream span tagged `error` with status code 0 stays UNSET).
fn server_error(s: &Span) -> bool {
    s.get("http.status_code").and_then(|c| c.parse::<u32>().ok()).is_some_and(|c| (500..600).contains(&c))
}

fn to_otlp(s: &Span) -> OtlpSpan {
    OtlpSpan {
        trace_id: s.trace_id.to_be_bytes().to_vec(),
        span_id: s.span_id.to_be_bytes().to_vec(),
        trace_state: s.tracestate.clone().unwrap_or_default(),
        parent_span_id: s.parent_span_id.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: s.name.clone(),
        kind: match s.kind {
            Kind::Server => 2,
            Kind::Client => 3,
        },
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.tags.iter().map(|(k, v)| string_kv(k, v)).collect(),
        status: Some(Status { message: String::new(), code: if server_error(s) { 2 } else { 0 } }),
        flags: span_flags(s, true),
    }
}

/// The body of one `POST /v1/traces`: the spans of one proxy (one resource, one scope).
pub fn encode_traces(service_name: &str, resource: &[(String, String)], spans: &[Span]) -> Vec<u8> {
    let mut attributes = vec![string_kv("service.name", service_name)];
    attributes.extend(resource.iter().map(|(k, v)| string_kv(k, v)));
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "wasmesh".into(), version: env!("CARGO_PKG_VERSION").into() }),
                spans: spans.iter().map(to_otlp).collect(),
            }],
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Outgoing;

    #[test]
    fn a_span_round_trips() {
        let out = Outgoing {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            trace_id_128: true,
            span_id: 7,
            parent_span_id: Some(9),
            sampled: true,
            tracestate: None,
            b3_single: false,
        };
        let mut s = Span::new(&out, "ingress".into(), Kind::Server, 10, 20);
        s.tag("http.method", "GET");
        let body = encode_traces("svc", &[], &[s]);
        let back = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let span = &back.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.parent_span_id, 9u64.to_be_bytes().to_vec());
        assert_eq!(span.kind, 2);
        assert_eq!(span.attributes[0], string_kv("http.method", "GET"));
        assert_eq!(span.status.as_ref().map(|st| st.code), Some(0));
        let mut failed = Span::new(&out, "x".into(), Kind::Client, 10, 20);
        failed.tag("http.status_code", "0");
        failed.tag("error", "true");
        failed.error = true;
        assert!(!server_error(&failed), "no response: UNSET as Envoy");
        failed.tag("http.status_code", "503");
        assert!(server_error(&failed));
    }
}
