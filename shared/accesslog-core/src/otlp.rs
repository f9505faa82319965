//! OTLP logs (`opentelemetry/proto/{collector/logs,logs}/v1`): the messages wasmesh sends to an
//! `envoyOtelAls` collector over gRPC (`opentelemetry.proto.collector.logs.v1.LogsService/Export`),
//! as prost messages with the official field numbers (the e2e collector decodes them with the
//! `opentelemetry-proto` crate). The common and resource messages are trace-core's.
//!
//! A record is encoded when its request is logged ([`crate::Format::render`] of an OTLP format
//! gives one encoded `LogRecord`); a batch is those bytes framed into one request
//! ([`export_request`]), so nothing is decoded or copied field by field on the root's tick.

use prost::Message;
pub use wasmesh_trace::otlp::{string_kv, AnyValue, KeyValue, Resource, Value};

/// The gRPC service and method of an OTLP logs export.
pub const SERVICE: &str = "opentelemetry.proto.collector.logs.v1.LogsService";
pub const METHOD: &str = "Export";

#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `opentelemetry.proto.logs.v1.LogRecord`: the fields Envoy's OpenTelemetry access logger sets.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    /// The request's start time.
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    /// The request's span's trace id (16 bytes) and span id (8), when a tracer made one (empty:
    /// not sent).
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
}

/// A span's trace id (16 bytes) and span id (8 bytes).
pub type SpanIds = ([u8; 16], [u8; 8]);

/// One `LogRecord`, encoded.
pub fn encode_record(
    time_unix_nano: u64,
    body: Option<String>,
    attributes: Vec<KeyValue>,
    span: Option<SpanIds>,
) -> Vec<u8> {
    let (trace_id, span_id) = span.map(|(t, s)| (t.to_vec(), s.to_vec())).unwrap_or_default();
    LogRecord {
        time_unix_nano,
        body: body.map(|b| AnyValue { value: Some(Value::StringValue(b)) }),
        attributes,
        trace_id,
        span_id,
    }
    .encode_to_vec()
}

/// `envoy.config.core.v3.GrpcService` with `envoy_grpc { cluster_name, authority }`, as istiod
/// writes it for `envoyOtelAls` (so the calls carry `:authority` = the service's host).
#[derive(Clone, PartialEq, Message)]
struct EnvoyGrpc {
    #[prost(string, tag = "1")]
    cluster_name: String,
    #[prost(string, tag = "2")]
    authority: String,
}

#[derive(Clone, PartialEq, Message)]
struct GrpcService {
    #[prost(message, optional, tag = "1")]
    envoy_grpc: Option<EnvoyGrpc>,
}

/// The `grpc_service` argument of `dispatch_grpc_call` for a collector: the serialized
/// `GrpcService` (the host call takes a string: when that encoding is not ASCII, as with a name
/// past 127 bytes, the plain cluster name, and `:authority` is then the cluster name).
pub fn grpc_service(cluster: &str, authority: &str) -> String {
    let svc = GrpcService {
        envoy_grpc: Some(EnvoyGrpc { cluster_name: cluster.to_string(), authority: authority.to_string() }),
    };
    match String::from_utf8(svc.encode_to_vec()) {
        Ok(s) if s.is_ascii() => s,
        _ => cluster.to_string(),
    }
}

/// Appends a length-delimited field (`tag`, wire type 2).
fn field(tag: u32, body: &[u8], out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

/// One `ExportLogsServiceRequest` with one `ResourceLogs` (the resource's attributes) holding one
/// `ScopeLogs` with the already encoded records, in order.
pub fn export_request(resource_attributes: &[KeyValue], records: &[Vec<u8>]) -> Vec<u8> {
    let mut scope = Vec::with_capacity(records.iter().map(|r| r.len() + 4).sum());
    for r in records {
        field(2, r, &mut scope);
    }
    let resource = Resource { attributes: resource_attributes.to_vec() }.encode_to_vec();
    let mut rl = Vec::with_capacity(scope.len() + resource.len() + 8);
    field(1, &resource, &mut rl);
    field(2, &scope, &mut rl);
    let mut out = Vec::with_capacity(rl.len() + 4);
    field(1, &rl, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_framed_request_decodes_as_the_messages() {
        let a = encode_record(7, Some("line\n".into()), vec![string_kv("k", "v")], Some(([1; 16], [2; 8])));
        let b = encode_record(9, None, vec![], None);
        let bytes = export_request(&[string_kv("r", "x")], &[a, b]);
        let req = ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();
        let rl = &req.resource_logs[0];
        assert_eq!(rl.resource.as_ref().unwrap().attributes, vec![string_kv("r", "x")]);
        let recs = &rl.scope_logs[0].log_records;
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].time_unix_nano, 7);
        assert_eq!(recs[0].body, Some(AnyValue { value: Some(Value::StringValue("line\n".into())) }));
        assert_eq!(recs[0].attributes, vec![string_kv("k", "v")]);
        assert_eq!((recs[0].trace_id.as_slice(), recs[0].span_id.as_slice()), (&[1u8; 16][..], &[2u8; 8][..]));
        assert_eq!((recs[1].time_unix_nano, recs[1].body.clone()), (9, None));
        assert!(recs[1].trace_id.is_empty() && recs[1].span_id.is_empty());
    }
}
