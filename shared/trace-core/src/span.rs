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
    /// The parent is this proxy's own span (an upstream span under its downstream one), not a
    /// caller's over the wire.
    pub parent_local: bool,
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

/// Envoy's upstream span name: `router {cluster observability name} egress`.
pub fn upstream_name(cluster: &str) -> String {
    format!("router {cluster} egress")
}

/// What the upstream span reports, as far as a filter sees the router's upstream request.
#[derive(Debug, Clone, Copy)]
pub struct Upstream<'a> {
    /// The cluster routed to (its observability name: wasmeshctl sets no `alt_stat_name`).
    pub cluster: &'a str,
    /// The upstream host (`ip:port`).
    pub address: Option<&'a str>,
    /// The upstream request's protocol (`HTTP/1.1`, `HTTP/2`, ...).
    pub protocol: &'a str,
    /// The upstream's response status; `None`: no response from the upstream (reset, timeout).
    pub status: Option<u32>,
    pub grpc_status: Option<u32>,
    /// Envoy's short response flags of the request (`-` for none): [`Span::upstream`] keeps
    /// those an upstream request sets on itself ([`UPSTREAM_FLAGS`]).
    pub flags: &'a str,
    /// `response.code_details`: a reset's reason is the span's `error.reason`.
    pub details: Option<&'a str>,
    /// Upstream requests made (retries + 1).
    pub attempts: u64,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

/// The response flags Envoy's router sets on an upstream request's own stream info (a reset's
/// `streamResetReasonToResponseFlag`, a per-try timeout, a per-try idle timeout).
pub const UPSTREAM_FLAGS: [&str; 9] = ["UF", "UC", "LR", "UO", "UR", "UPE", "OM", "UT", "SI"];

/// The flags of `flags` (short codes joined by `,`) that are [`UPSTREAM_FLAGS`], `-` if none.
pub fn upstream_flags(flags: &str) -> String {
    let kept: Vec<&str> = flags.split(',').filter(|f| UPSTREAM_FLAGS.contains(f)).collect();
    if kept.is_empty() {
        "-".into()
    } else {
        kept.join(",")
    }
}

/// The reset reason Envoy tags an upstream span's `error.reason` with
/// (`Http::Utility::resetReasonToString`), from the response code details the router wrote for
/// it: `upstream_reset_{before,after}_response_started{<reason>[|<transport failure>]}`, spaces
/// made `_`.
pub fn reset_reason(details: &str) -> Option<String> {
    let rest = details
        .strip_prefix("upstream_reset_before_response_started{")
        .or_else(|| details.strip_prefix("upstream_reset_after_response_started{"))?;
    let reason = rest.split(['|', '}']).next().filter(|r| !r.is_empty())?;
    Some(reason.replace('_', " "))
}

/// `ip:port` or `[ipv6]:port` → (ip, port).
pub fn split_address(a: &str) -> Option<(String, u16)> {
    let (ip, port) = a.rsplit_once(':')?;
    Some((ip.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok()?))
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
            parent_local: false,
        }
    }

    /// The upstream span Envoy's router spawns when the connection manager's tracing says
    /// `spawn_upstream_span` (istiod on gateways): named `router <cluster> egress`, kind CLIENT,
    /// the child of the proxy's downstream span (`child`, whose context the upstream received),
    /// with the tags `HttpTracerUtility::finalizeUpstreamSpan` sets, in its order, then `custom`
    /// (the custom tags, valued as on the downstream span: the same request headers).
    pub fn upstream(child: &Outgoing, u: &Upstream<'_>, custom: &[(String, String)]) -> Span {
        let mut s = Span::new(child, upstream_name(u.cluster), Kind::Client, u.start_unix_nanos, u.end_unix_nanos);
        s.parent_local = true;
        if u.attempts > 1 {
            s.tag("retry.count", (u.attempts - 1).to_string());
        }
        if let Some(reason) = u.details.filter(|_| u.status.is_none()).and_then(reset_reason) {
            s.tag("error.reason", reason);
        }
        if let Some(g) = u.grpc_status {
            s.tag("grpc.status_code", g.to_string());
        }
        let flags = upstream_flags(u.flags);
        // No connection (a connect failure, an overflowing pool): the upstream request has no
        // protocol, which Envoy reports as `-`.
        let connected = !flags.split(',').any(|f| f == "UF" || f == "UO");
        s.tag("http.protocol", if connected { u.protocol } else { "-" });
        if let Some(a) = u.address {
            s.tag("upstream_address", a);
            s.tag("peer.address", a);
            s.peer = split_address(a);
        }
        s.tag("component", "proxy");
        s.tag("upstream_cluster", u.cluster);
        s.tag("upstream_cluster.name", u.cluster);
        s.tag("http.status_code", u.status.map(|c| c.to_string()).unwrap_or_else(|| "0".into()));
        s.tag("response_flags", flags);
        if is_error(u.status, u.grpc_status) {
            s.error = true;
            s.tag("error", "true");
        }
        for (k, v) in custom {
            s.tag(k.clone(), v.clone());
        }
        s
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
        assert_eq!(split_address("[::1]:80"), Some(("::1".into(), 80)));
        assert_eq!(split_address("10.0.0.1"), None);
    }

    #[test]
    fn the_upstream_span_is_envoys_router_span() {
        let out = Outgoing {
            trace_id: 7,
            trace_id_128: true,
            span_id: 1,
            parent_span_id: Some(9),
            sampled: true,
            tracestate: Some("a=b".into()),
            b3_single: false,
        };
        let child = out.child(2);
        let u = Upstream {
            cluster: "outbound|9080||productpage.default.svc.cluster.local",
            address: Some("10.0.0.2:9080"),
            protocol: "HTTP/1.1",
            status: None,
            grpc_status: None,
            flags: "UF,URX",
            details: Some("upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"),
            attempts: 3,
            start_unix_nanos: 20,
            end_unix_nanos: 10,
        };
        let s = Span::upstream(&child, &u, &[("team".into(), "books".into())]);
        assert_eq!(s.name, "router outbound|9080||productpage.default.svc.cluster.local egress");
        assert_eq!((s.kind, s.span_id, s.parent_span_id, s.parent_local), (Kind::Client, 2, Some(1), true));
        assert_eq!(s.tracestate.as_deref(), Some("a=b"));
        assert_eq!((s.start_unix_nanos, s.end_unix_nanos), (20, 20), "never ends before it starts");
        let keys: Vec<&str> = s.tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "retry.count",
                "error.reason",
                "http.protocol",
                "upstream_address",
                "peer.address",
                "component",
                "upstream_cluster",
                "upstream_cluster.name",
                "http.status_code",
                "response_flags",
                "error",
                "team"
            ]
        );
        assert_eq!(
            (s.get("retry.count"), s.get("http.status_code"), s.get("error")),
            (Some("2"), Some("0"), Some("true"))
        );
        assert_eq!(s.get("peer.address"), Some("10.0.0.2:9080"), "Envoy's upstream peer.address keeps the port");
        assert_eq!(s.peer, Some(("10.0.0.2".into(), 9080)));
        assert_eq!(s.get("error.reason"), Some("remote connection failure"));
        assert_eq!(s.get("response_flags"), Some("UF"), "URX is the downstream request's");
        assert_eq!(s.get("http.protocol"), Some("-"), "never connected");
        assert_eq!(upstream_flags("DI,UT"), "UT");
        assert_eq!(upstream_flags("-"), "-");
        assert_eq!(reset_reason("via_upstream"), None);
        assert_eq!(
            reset_reason("upstream_reset_after_response_started{connection_termination}").as_deref(),
            Some("connection termination")
        );
    }
}
