//! CUSTOM authorization with an `envoyExtAuthzGrpc` provider, as Envoy's gRPC ext_authz client
//! does it: `envoy.service.auth.v3.Authorization/Check` with the `CheckRequest` Envoy builds
//! (`CheckRequestUtils::createHttpCheck`), and the `CheckResponse` turned into the same
//! [`CheckOutcome`] the HTTP provider's answer gives. The messages are the subset of Envoy's API
//! the check uses, written by hand with prost's derives (field numbers from the `.proto` files of
//! `envoy/service/auth/v3`, `envoy/config/core/v3`, `google/rpc`). Pure: the filter gathers the
//! request's attributes ([`CheckInputs`]), sends the bytes and hands the answer back.
#![deny(clippy::indexing_slicing)]

use crate::ext_authz::{CheckAction, CheckBody, CheckOutcome, CheckResult, Mutation, MAX_CHECK_RESPONSE_BODY_BYTES};
use crate::provider::Provider;
use prost::Message;
use std::collections::HashMap;

/// The gRPC service and method of the check.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";
pub const METHOD: &str = "Check";

/// Most header changes of one answer that are applied (Envoy bounds the answer by the gRPC
/// message size, 4 MiB by default); the rest are ignored and counted.
pub const MAX_CHECK_RESPONSE_HEADERS: usize = crate::ext_authz::MAX_CHECK_RESPONSE_HEADERS;

// --- envoy.config.core.v3 / google.protobuf ------------------------------------------------------

#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(uint32, tag = "3")]
    pub port_value: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.config.core.v3.Metadata` (empty: istiod configures no metadata namespaces).
#[derive(Clone, PartialEq, Message)]
pub struct Metadata {}

#[derive(Clone, PartialEq, Message)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeaderValueOption {
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderValue>,
    #[prost(message, optional, tag = "2")]
    pub append: Option<BoolValue>,
    /// `HeaderAppendAction`: 0 APPEND_IF_EXISTS_OR_ADD, 1 ADD_IF_ABSENT,
    /// 2 OVERWRITE_IF_EXISTS_OR_ADD, 3 OVERWRITE_IF_EXISTS.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

// --- envoy.service.auth.v3 -------------------------------------------------------------------

#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(string, tag = "4")]
    pub principal: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(map = "string, string", tag = "3")]
    pub headers: HashMap<String, String>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(string, tag = "6")]
    pub scheme: String,
    #[prost(int64, tag = "9")]
    pub size: i64,
    #[prost(string, tag = "10")]
    pub protocol: String,
    /// `body` (a proto `string`, sent as the bytes Envoy buffered, as Envoy does).
    #[prost(bytes = "vec", tag = "11")]
    pub body: Vec<u8>,
    #[prost(bytes = "vec", tag = "12")]
    pub raw_body: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TlsSession {
    #[prost(string, tag = "1")]
    pub sni: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    pub destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(map = "string, string", tag = "10")]
    pub context_extensions: HashMap<String, String>,
    #[prost(message, optional, tag = "11")]
    pub metadata_context: Option<Metadata>,
    #[prost(message, optional, tag = "12")]
    pub tls_session: Option<TlsSession>,
    #[prost(message, optional, tag = "13")]
    pub route_metadata_context: Option<Metadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HttpStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, tag = "3")]
    pub body: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderValueOption>,
    #[prost(string, repeated, tag = "5")]
    pub headers_to_remove: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub response_headers_to_add: Vec<HeaderValueOption>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(message, optional, tag = "2")]
    pub denied_response: Option<DeniedHttpResponse>,
    #[prost(message, optional, tag = "3")]
    pub ok_response: Option<OkHttpResponse>,
}

/// `envoy.config.core.v3.GrpcService` with `envoy_grpc { cluster_name, authority }`: what the
/// filter hands `dispatch_grpc_call` so the call carries `:authority` = the service's host, as
/// istiod configures it.
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

/// The `grpc_service` argument of `dispatch_grpc_call`: the serialized `GrpcService` naming the
/// cluster and authority (Envoy parses it; a string that does not parse is a cluster name). The
/// host call takes a string, so when the encoding is not ASCII (a name past 127 bytes makes a
/// multi-byte length) the plain cluster name is used (`:authority` is then the cluster name).
pub fn grpc_service(provider: &Provider) -> String {
    let svc = GrpcService {
        envoy_grpc: Some(EnvoyGrpc { cluster_name: provider.cluster.clone(), authority: provider.authority.clone() }),
    };
    match String::from_utf8(svc.encode_to_vec()) {
        Ok(s) if s.is_ascii() => s,
        _ => provider.cluster.clone(),
    }
}

/// The request headers of a gRPC check: every header, a repeated name's values joined with `,`
/// (Envoy's `setHttpRequest` has no allow-list for a gRPC provider as istiod configures it).
pub fn check_headers(request: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = Vec::new();
    for (k, v) in request {
        let v = String::from_utf8_lossy(v);
        match merged.iter_mut().find(|(mk, _)| mk == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            None => merged.push((k.clone(), v.into_owned())),
        }
    }
    merged
}

/// What the filter read of the request and its connection for the check.
#[derive(Debug, Clone, Default)]
pub struct CheckInputs {
    /// [`check_headers`] (or the HTTP provider's list).
    pub headers: Vec<(String, String)>,
    /// `source.address`, `destination.address` (`ip:port`).
    pub source_address: Option<String>,
    pub destination_address: Option<String>,
    /// The peer's and the local certificate's identity (URI SAN, else DNS SAN, else subject).
    pub source_principal: String,
    pub destination_principal: String,
    /// `tls_session.sni`: Envoy sends it only when `include_tls_session` is set, which istiod
    /// never does, so the filter leaves it `None`.
    pub sni: Option<String>,
    /// `request.time`, nanoseconds since the epoch.
    pub time_nanos: Option<u64>,
    /// `request.protocol`: `HTTP/1.1`, `HTTP/2`.
    pub protocol: String,
    /// [`stream_id`] of the request's `x-request-id`.
    pub id: String,
    /// The request body for a provider with `includeRequestBodyInCheck` (headers already
    /// completed by [`crate::ext_authz::add_body_headers`]).
    pub body: Option<CheckBody>,
}

/// Splits `ip:port` (`[v6]:port`) into a socket address.
fn socket_address(text: &str) -> Option<Address> {
    let (ip, port) = text.rsplit_once(':')?;
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    Some(Address {
        socket_address: Some(SocketAddress { address: ip.to_string(), port_value: port.parse().unwrap_or(0) }),
    })
}

/// The check's `id`: Envoy sends its stream id, a random 64-bit number in decimal that a wasm
/// filter cannot read; wasmesh sends the same shape derived from the request's `x-request-id`
/// (its first 16 hex digits, dashes skipped, as a number), unique as that id is. Empty when the
/// request has no such id.
pub fn stream_id(request_id: &str) -> String {
    let hex: String = request_id.chars().filter(|c| *c != '-').take(16).collect();
    if hex.len() < 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return String::new();
    }
    u64::from_str_radix(&hex, 16).map(|n| n.to_string()).unwrap_or_default()
}

/// The `CheckRequest` Envoy's ext_authz filter sends for this request, encoded.
pub fn check_request(inputs: &CheckInputs) -> Vec<u8> {
    let header = |name: &str| inputs.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let headers: HashMap<String, String> = inputs.headers.iter().cloned().collect();
    // Envoy: the body bytes received when the check is sent (0 unless the body is buffered).
    let size = inputs.body.as_ref().map_or(0, |b| i64::try_from(b.received).unwrap_or(i64::MAX));
    let (body, raw_body) = match &inputs.body {
        Some(b) if b.pack_as_bytes => (Vec::new(), b.bytes.clone()),
        Some(b) => (b.bytes.clone(), Vec::new()),
        None => (Vec::new(), Vec::new()),
    };
    let http = HttpRequest {
        id: inputs.id.clone(),
        method: header(":method").unwrap_or_default(),
        path: header(":path").unwrap_or_default(),
        host: header(":authority").unwrap_or_default(),
        scheme: header(":scheme").unwrap_or_default(),
        size,
        protocol: inputs.protocol.clone(),
        headers,
        body,
        raw_body,
    };
    let time = inputs.time_nanos.map(|n| Timestamp {
        seconds: i64::try_from(n / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(n % 1_000_000_000).unwrap_or(0),
    });
    let attributes = AttributeContext {
        source: Some(Peer {
            address: inputs.source_address.as_deref().and_then(socket_address),
            service: String::new(),
            principal: inputs.source_principal.clone(),
        }),
        destination: Some(Peer {
            address: inputs.destination_address.as_deref().and_then(socket_address),
            service: String::new(),
            principal: inputs.destination_principal.clone(),
        }),
        request: Some(Request { time, http: Some(http) }),
        context_extensions: HashMap::new(),
        metadata_context: Some(Metadata {}),
        tls_session: inputs.sni.as_ref().map(|sni| TlsSession { sni: sni.clone() }),
        route_metadata_context: Some(Metadata {}),
    };
    CheckRequest { attributes: Some(attributes) }.encode_to_vec()
}

/// What the network filter read of a TCP connection for its check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpCheckInputs {
    /// `source.address`, `destination.address` (`ip:port`).
    pub source_address: Option<String>,
    pub destination_address: Option<String>,
    /// The peer's and the local certificate's identity (URI SAN, else DNS SAN, else subject).
    pub source_principal: String,
    pub destination_principal: String,
    /// The SNI the client asked for (`connection.requested_server_name`), empty without one:
    /// Envoy sends it as `destination.service`.
    pub sni: String,
}

/// The `CheckRequest` Envoy's network ext_authz filter sends for a connection, encoded
/// (`CheckRequestUtils::createTcpCheck` as istiod configures the filter: no peer certificate,
/// no TLS session, no destination labels): the source and destination peers only — address,
/// principal, and the SNI as the destination's `service`; no `request`; an empty
/// `metadata_context`.
pub fn tcp_check_request(inputs: &TcpCheckInputs) -> Vec<u8> {
    let attributes = AttributeContext {
        source: Some(Peer {
            address: inputs.source_address.as_deref().and_then(socket_address),
            service: String::new(),
            principal: inputs.source_principal.clone(),
        }),
        destination: Some(Peer {
            address: inputs.destination_address.as_deref().and_then(socket_address),
            service: inputs.sni.clone(),
            principal: inputs.destination_principal.clone(),
        }),
        request: None,
        context_extensions: HashMap::new(),
        // Envoy 1.40's network filter sends an empty one (seen side by side, e2e `authz_tcp.rs`).
        metadata_context: Some(Metadata {}),
        tls_session: None,
        route_metadata_context: None,
    };
    CheckRequest { attributes: Some(attributes) }.encode_to_vec()
}

/// The answer to the check: `grpc_status` of the call (0 OK), `message` the `CheckResponse`
/// (`None` when the call failed or its body could not be read).
pub fn on_check_response(provider: &Provider, grpc_status: u32, message: Option<&[u8]>) -> CheckOutcome {
    if grpc_status != 0 {
        return CheckOutcome::error(provider, format!("gRPC status {grpc_status}"));
    }
    let Some(bytes) = message else {
        return CheckOutcome::error(provider, "no CheckResponse".into());
    };
    let response = match CheckResponse::decode(bytes) {
        Ok(r) => r,
        Err(e) => return CheckOutcome::error(provider, format!("undecodable CheckResponse: {e}")),
    };
    let code = response.status.as_ref().map_or(0, |s| s.code);
    let mut dropped = 0;
    let mut bounded = |list: Vec<HeaderValueOption>| -> Vec<HeaderValueOption> {
        dropped += list.len().saturating_sub(MAX_CHECK_RESPONSE_HEADERS);
        list.into_iter().take(MAX_CHECK_RESPONSE_HEADERS).collect()
    };
    if code == 0 {
        let ok = response.ok_response.unwrap_or_default();
        let request = request_mutations(bounded(ok.headers), &ok.headers_to_remove);
        let response_headers = bounded(ok.response_headers_to_add)
            .into_iter()
            .filter_map(|h| {
                let (k, v) = name_value(&h)?;
                // `append` false: replace; otherwise added (Envoy's response_headers_to_add).
                Some(if h.append.is_some_and(|a| !a.value) { Mutation::Set(k, v) } else { Mutation::Add(k, v) })
            })
            .collect();
        return CheckOutcome {
            result: CheckResult::Ok,
            action: CheckAction::Allow { request, response_headers },
            error: None,
            headers_dropped: dropped,
            body_truncated: false,
        };
    }
    let denied = response.denied_response.unwrap_or_default();
    let status = match denied.status.map_or(0, |s| s.code) {
        s @ 100..=599 => u32::try_from(s).unwrap_or(403),
        _ => 403,
    };
    // A denial's headers: `append: true` adds, otherwise replaces (the last value of a name).
    let mut headers: Vec<(String, String)> = Vec::new();
    for h in bounded(denied.headers) {
        let Some((k, v)) = name_value(&h) else { continue };
        let Ok(v) = String::from_utf8(v) else { continue };
        if !h.append.is_some_and(|a| a.value) {
            headers.retain(|(n, _)| *n != k);
        }
        headers.push((k, v));
    }
    let mut body = denied.body.into_bytes();
    let body_truncated = body.len() > MAX_CHECK_RESPONSE_BODY_BYTES;
    body.truncate(MAX_CHECK_RESPONSE_BODY_BYTES);
    CheckOutcome {
        result: CheckResult::Denied,
        action: CheckAction::Deny {
            status,
            headers,
            body: (!body.is_empty()).then_some(body),
            why: "denied by the CUSTOM provider",
        },
        error: None,
        headers_dropped: dropped,
        body_truncated,
    }
}

/// A header of the answer: its lower-case name and value (`raw_value` when set), or `None`
/// when the name is not a header name.
fn name_value(h: &HeaderValueOption) -> Option<(String, Vec<u8>)> {
    let hv = h.header.as_ref()?;
    let k = hv.key.to_ascii_lowercase();
    if k.is_empty() || k.bytes().any(|b| b <= b' ' || b == b':' && !k.starts_with(':') || b >= 0x7f) {
        return None;
    }
    let v = if hv.raw_value.is_empty() { hv.value.as_bytes().to_vec() } else { hv.raw_value.clone() };
    if v.iter().any(|b| *b == b'\r' || *b == b'\n' || *b == 0) {
        return None;
    }
    Some((k, v))
}

/// The OK answer's changes to the upstream request, as Envoy's gRPC ext_authz client sorts them
/// (measured against Envoy 1.40): `append: true` appends `,value` to a present header (and
/// does nothing when it is absent), anything else replaces or adds the header (`append_action`
/// is not looked at); the removals last (never a pseudo-header or `host`).
fn request_mutations(headers: Vec<HeaderValueOption>, remove: &[String]) -> Vec<Mutation> {
    let (mut set, mut append) = (Vec::new(), Vec::new());
    for h in &headers {
        let Some((k, v)) = name_value(h) else { continue };
        if h.append.as_ref().is_some_and(|a| a.value) {
            append.push(Mutation::Append(k, v));
        } else {
            set.push(Mutation::Set(k, v));
        }
    }
    let mut out = set;
    out.append(&mut append);
    for name in remove {
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() && !name.starts_with(':') && name != "host" {
            out.push(Mutation::Remove(name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::parse_providers;
    use serde_json::json;

    fn provider(extra: serde_json::Value) -> Provider {
        let mut g = json!({"service": "foo/authz.foo.svc.cluster.local", "port": 9000});
        if let (Some(h), Some(e)) = (g.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        parse_providers(&[json!({"name": "g", "envoyExtAuthzGrpc": g})]).remove("g").unwrap().unwrap()
    }

    fn hv(k: &str, v: &str, append: Option<bool>, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(HeaderValue { key: k.into(), value: v.into(), raw_value: Vec::new() }),
            append: append.map(|value| BoolValue { value }),
            append_action: action,
        }
    }

    #[test]
    fn the_grpc_service_names_cluster_and_authority() {
        let p = provider(json!({}));
        let bytes = grpc_service(&p).into_bytes();
        let decoded = GrpcService::decode(bytes.as_slice()).unwrap();
        let e = decoded.envoy_grpc.unwrap();
        assert_eq!(e.cluster_name, "outbound|9000||authz.foo.svc.cluster.local");
        assert_eq!(e.authority, "authz.foo.svc.cluster.local");
        let mut long = p.clone();
        long.cluster = "x".repeat(200);
        assert_eq!(grpc_service(&long), long.cluster, "a non-ASCII encoding falls back to the cluster name");
    }

    #[test]
    fn a_tcp_check_carries_the_peers_only() {
        let inputs = TcpCheckInputs {
            source_address: Some("10.0.0.1:5555".into()),
            destination_address: Some("[::1]:9000".into()),
            source_principal: "spiffe://cluster.local/ns/foo/sa/client".into(),
            destination_principal: "spiffe://cluster.local/ns/foo/sa/db".into(),
            sni: "db.foo".into(),
        };
        let check = CheckRequest::decode(tcp_check_request(&inputs).as_slice()).unwrap();
        let a = check.attributes.unwrap();
        let src = a.source.unwrap();
        assert_eq!(
            src.address.unwrap().socket_address.unwrap(),
            SocketAddress { address: "10.0.0.1".into(), port_value: 5555 }
        );
        assert_eq!((src.service.as_str(), src.principal.as_str()), ("", "spiffe://cluster.local/ns/foo/sa/client"));
        let dst = a.destination.unwrap();
        assert_eq!(
            dst.address.unwrap().socket_address.unwrap(),
            SocketAddress { address: "::1".into(), port_value: 9000 }
        );
        assert_eq!((dst.service.as_str(), dst.principal.as_str()), ("db.foo", "spiffe://cluster.local/ns/foo/sa/db"));
        assert!(a.request.is_none() && a.tls_session.is_none());
        assert_eq!(a.metadata_context, Some(Metadata {}));
        assert!(a.route_metadata_context.is_none() && a.context_extensions.is_empty());
        // Plaintext without an address read: the peers are there, empty.
        let bare = CheckRequest::decode(tcp_check_request(&TcpCheckInputs::default()).as_slice()).unwrap();
        let a = bare.attributes.unwrap();
        assert_eq!(a.source.unwrap(), Peer::default());
        assert_eq!(a.destination.unwrap(), Peer::default());
    }

    #[test]
    fn the_check_request_carries_envoys_attributes() {
        let req: Vec<(String, Vec<u8>)> = [
            (":method", "POST"),
            (":path", "/a?b=1"),
            (":authority", "h:80"),
            (":scheme", "http"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("content-length", "6"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
        let inputs = CheckInputs {
            headers: check_headers(&req),
            source_address: Some("127.0.0.1:4000".into()),
            destination_address: Some("[::1]:8000".into()),
            time_nanos: Some(1_500_000_000),
            protocol: "HTTP/1.1".into(),
            id: stream_id("00000000-0000-002a-8ccc-dddddddddddd"),
            ..CheckInputs::default()
        };
        let decoded = CheckRequest::decode(check_request(&inputs).as_slice()).unwrap();
        let a = decoded.attributes.unwrap();
        let src = a.source.unwrap().address.unwrap().socket_address.unwrap();
        assert_eq!((src.address.as_str(), src.port_value), ("127.0.0.1", 4000));
        assert_eq!(a.destination.unwrap().address.unwrap().socket_address.unwrap().address, "::1");
        let r = a.request.unwrap();
        assert_eq!(r.time, Some(Timestamp { seconds: 1, nanos: 500_000_000 }));
        let h = r.http.unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str(), h.host.as_str()), ("POST", "/a?b=1", "h:80"));
        assert_eq!((h.scheme.as_str(), h.size, h.id.as_str()), ("http", 0, "42"));
        assert_eq!(h.headers["x-a"], "1,2");
        assert!(h.body.is_empty() && h.raw_body.is_empty());
        for pack in [false, true] {
            let body = CheckBody { bytes: b"ab\xff".to_vec(), received: 6, partial: true, pack_as_bytes: pack };
            let with = CheckInputs { body: Some(body), ..inputs.clone() };
            let h = CheckRequest::decode(check_request(&with).as_slice()).unwrap();
            let h = h.attributes.unwrap().request.unwrap().http.unwrap();
            assert_eq!(h.size, 6, "the bytes received, not the bytes sent");
            let (sent, empty) = if pack { (&h.raw_body, &h.body) } else { (&h.body, &h.raw_body) };
            assert_eq!((sent.as_slice(), empty.is_empty()), (&b"ab\xff"[..], true), "packAsBytes {pack}");
        }
    }

    #[test]
    fn ok_sets_or_appends_headers_as_envoy_does() {
        let p = provider(json!({}));
        let resp = CheckResponse {
            status: Some(RpcStatus { code: 0, message: String::new() }),
            denied_response: None,
            ok_response: Some(OkHttpResponse {
                headers: vec![
                    hv("x-add", "a", None, 0),
                    hv("X-Set", "s", Some(false), 0),
                    hv("x-app", "p", Some(true), 0),
                    hv("x-absent", "b", None, 1),
                    hv("x-over", "o", None, 3),
                    hv("bad name", "v", None, 0),
                ],
                headers_to_remove: vec!["X-Gone".into(), ":path".into(), "host".into()],
                response_headers_to_add: vec![hv("x-down", "d", None, 0)],
            }),
        };
        let o = on_check_response(&p, 0, Some(&resp.encode_to_vec()));
        assert_eq!(o.result, CheckResult::Ok);
        let v = |s: &str| s.as_bytes().to_vec();
        assert_eq!(
            o.action,
            CheckAction::Allow {
                request: vec![
                    Mutation::Add("x-add".into(), v("a")),
                    Mutation::Set("x-set".into(), v("s")),
                    Mutation::AddIfAbsent("x-absent".into(), v("b")),
                    Mutation::OverwriteIfExists("x-over".into(), v("o")),
                    Mutation::Append("x-app".into(), v("p")),
                    Mutation::Remove("x-gone".into()),
                ]
                .into_iter()
                .map(|m| match m {
                    Mutation::Add(k, v) | Mutation::AddIfAbsent(k, v) | Mutation::OverwriteIfExists(k, v) => {
                        Mutation::Set(k, v)
                    }
                    m => m,
                })
                .collect(),
                response_headers: vec![Mutation::Add("x-down".into(), v("d"))],
            }
        );
    }

    #[test]
    fn denial_and_errors() {
        let p = provider(json!({"statusOnError": "503"}));
        let resp = CheckResponse {
            status: Some(RpcStatus { code: 7, message: "no".into() }),
            denied_response: Some(DeniedHttpResponse {
                status: Some(HttpStatus { code: 401 }),
                headers: vec![hv("x-r", "1", None, 0), hv("x-r", "2", None, 0), hv("x-m", "a", Some(true), 0)],
                body: "nope".into(),
            }),
            ok_response: None,
        };
        let o = on_check_response(&p, 0, Some(&resp.encode_to_vec()));
        assert_eq!(
            o.action,
            CheckAction::Deny {
                status: 401,
                headers: vec![("x-r".into(), "2".into()), ("x-m".into(), "a".into())],
                body: Some(b"nope".to_vec()),
                why: "denied by the CUSTOM provider"
            }
        );
        let bare = CheckResponse { status: Some(RpcStatus { code: 16, message: String::new() }), ..Default::default() };
        let o = on_check_response(&p, 0, Some(&bare.encode_to_vec()));
        assert!(matches!(o.action, CheckAction::Deny { status: 403, body: None, .. }), "{o:?}");
        for (status, msg) in [(14, Some(&b""[..])), (4, None), (0, None), (0, Some(&b"\xff\xff"[..]))] {
            let o = on_check_response(&p, status, msg);
            assert_eq!(o.result, CheckResult::Error, "{status} {msg:?}");
            assert!(matches!(o.action, CheckAction::Deny { status: 503, .. }));
        }
        let open = provider(json!({"failOpen": true}));
        assert!(matches!(on_check_response(&open, 14, None).action, CheckAction::Allow { .. }));
        // An empty message is an OK CheckResponse with nothing to change.
        assert_eq!(on_check_response(&p, 0, Some(b"")).result, CheckResult::Ok);
    }

    #[test]
    fn stream_ids_come_from_the_request_id() {
        assert_eq!(stream_id("not-a-uuid"), "");
        assert_eq!(stream_id("00000000-ffff-ffff"), "4294967295");
        assert_eq!(stream_id("ffffffff-ffff-ffff-0"), u64::MAX.to_string());
    }
}
