//! The proxy's span: Envoy's HTTP connection manager span as its tracers report it, with
//! Istio's tags (spec §5.5).

use crate::context::Outgoing;

/// Envoy's span kinds as the OpenTelemetry tracer sets them: `SERVER` on an inbound (ingress)
/// listener, `CLIENT` on an outbound (egress) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: u128,
    pub trace_id_128: bool,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub name: String,
    pub kind: Kind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// String tags, in the order set (Envoy's tracers report every tag as a string).
    pub tags: Vec<(String, String)>,
    /// The `error` tag is `true` (5xx or a failed gRPC status).
    pub error: bool,
    pub tracestate: Option<String>,
    /// The remote peer for Zipkin's `remoteEndpoint` (ip, port).
    pub peer: Option<(String, u16)>,
}

/// Longest `http.url` path kept (Envoy's tracers truncate it the same way: 256 characters).
pub const MAX_PATH_LEN: usize = 256;

/// Envoy's `http.url`: `{x-forwarded-proto or scheme}://{host}{path}`, the path cut at
/// [`MAX_PATH_LEN`] bytes (on a character boundary).
pub fn http_url(scheme: &str, host: &str, path: &str) -> String {
    let mut end = path.len().min(MAX_PATH_LEN);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{scheme}://{host}{}", path.get(..end).unwrap_or_default())
}

/// Envoy's span name without a route decorator: `ingress`, or `egress {host}`.
pub fn default_name(kind: Kind, host: &str) -> String {
    match kind {
        Kind::Server => "ingress".to_string(),
        Kind::Client => format!("egress {host}"),
    }
}

/// Whether a response is an error for the `error` tag: a 5xx, or a gRPC status other than OK
/// (0) on a gRPC response.
pub fn is_error(status: Option<u32>, grpc_status: Option<u32>) -> bool {
    matches!(status, Some(500..=599) | None) || matches!(grpc_status, Some(s) if s != 0)
}

impl Span {
    /// The span `out` describes, named and timed, its tags to be added.
    pub fn new(out: &Outgoing, name: String, kind: Kind, start_unix_nanos: u64, end_unix_nanos: u64) -> Span {
        Span {
            trace_id: out.trace_id,
            trace_id_128: out.trace_id_128,
            span_id: out.span_id,
            parent_span_id: out.parent_span_id,
            name,
            kind,
            start_unix_nanos,
            end_unix_nanos: end_unix_nanos.max(start_unix_nanos),
            tags: Vec::new(),
            error: false,
            tracestate: out.tracestate.clone(),
            peer: None,
        }
    }

    pub fn tag(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.tags.push((key.into(), value.into()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.tags.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_names() {
        assert_eq!(http_url("http", "a:80", "/x?y"), "http://a:80/x?y");
        let long = format!("/{}", "é".repeat(200));
        assert!(http_url("http", "a", &long).len() <= "http://a".len() + MAX_PATH_LEN);
        assert_eq!(default_name(Kind::Server, "h"), "ingress");
        assert_eq!(default_name(Kind::Client, "h"), "egress h");
        assert!(is_error(Some(503), None));
        assert!(!is_error(Some(404), None));
        assert!(is_error(Some(200), Some(14)));
    }
}
