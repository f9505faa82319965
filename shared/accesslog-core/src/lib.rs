//! Envoy access-log formats, compiled once at configure time and rendered per request.
//!
//! - TEXT ([`Format::text`]): a format string with Envoy's command operators
//!   (`%REQ(X?Y):Z%`, `%START_TIME(...)%`, `%RESPONSE_CODE%`, ...; envoy
//!   `docs/root/configuration/observability/access_log/usage.rst`). An operator this crate
//!   does not know, or one it cannot compute as Envoy does, is a configuration error naming it.
//!   Unset values print `-`, as Envoy prints them.
//! - JSON ([`Format::json`]): Envoy's typed `json_format`: a value that is exactly one operator
//!   keeps its type (numbers as JSON numbers, unset as `null`), anything else is a string;
//!   keys sorted, as Envoy's JSON formatter emits them since 1.33.
//!
//! The values come from a [`Source`]: the adapter reads the Envoy attributes this format needs
//! ([`Format::attributes`], each read once per request, in one batch) and the headers.
//!
//! Istio's default TEXT format is [`ISTIO_TEXT`], its default JSON field set [`istio_json`].
#![forbid(unsafe_code)]

pub mod config;
pub mod otlp;
pub mod time;

use std::collections::BTreeMap;
use time::TimeFormat;
use wasmesh_trace::flags::Order;

/// Istio's default TEXT format (istio/istio `pilot/pkg/model/telemetry_logging.go`
/// `EnvoyTextLogFormat`).
pub const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \
\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% \
%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \
\"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% \
%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default JSON fields (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
];

/// Istio's default JSON fields as a map.
pub fn istio_json() -> BTreeMap<String, String> {
    ISTIO_JSON.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Most operators in one format; most JSON fields.
pub const MAX_OPERATORS: usize = 128;
/// Longest format string accepted.
pub const MAX_FORMAT_BYTES: usize = 16 * 1024;

pub use wasmesh_trace::flags::RESPONSE_FLAGS;

/// An Envoy attribute a format reads, with how its value is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
}

/// The operators that are one Envoy attribute: (operator, attribute path, kind).
const ATTRIBUTE_OPERATORS: [(&str, &[&str], Kind); 20] = [
    ("RESPONSE_CODE", &["response", "code"], Kind::Int),
    ("CONNECTION_TERMINATION_DETAILS", &["connection", "termination_details"], Kind::Str),
    ("BYTES_SENT", &["response", "size"], Kind::Int),
    ("UPSTREAM_HOST", &["upstream", "address"], Kind::Str),
    ("UPSTREAM_CLUSTER", &["xds", "cluster_name"], Kind::Str),
    ("UPSTREAM_CLUSTER_RAW", &["xds", "cluster_name"], Kind::Str),
    ("UPSTREAM_LOCAL_ADDRESS", &["upstream", "local_address"], Kind::Str),
    ("UPSTREAM_REQUEST_ATTEMPT_COUNT", &["upstream", "request_attempt_count"], Kind::Int),
    ("DOWNSTREAM_REMOTE_ADDRESS", &["source", "address"], Kind::Str),
    ("DOWNSTREAM_LOCAL_ADDRESS", &["destination", "address"], Kind::Str),
    ("REQUESTED_SERVER_NAME", &["connection", "requested_server_name"], Kind::Str),
    ("PROTOCOL", &["request", "protocol"], Kind::Str),
    ("ROUTE_NAME", &["xds", "route_name"], Kind::Str),
    ("CONNECTION_ID", &["connection", "id"], Kind::Int),
    ("DOWNSTREAM_PEER_URI_SAN", &["connection", "uri_san_peer_certificate"], Kind::Str),
    ("DOWNSTREAM_LOCAL_URI_SAN", &["connection", "uri_san_local_certificate"], Kind::Str),
    ("DOWNSTREAM_TLS_VERSION", &["connection", "tls_version"], Kind::Str),
    ("UPSTREAM_PEER_URI_SAN", &["upstream", "uri_san_peer_certificate"], Kind::Str),
    ("UPSTREAM_TLS_VERSION", &["upstream", "tls_version"], Kind::Str),
    ("GRPC_STATUS_NUMBER", &["response", "grpc_status"], Kind::Int),
];

/// Operators Envoy has that wasm cannot compute as Envoy does (no attribute carries them), with
/// why: refused rather than printed differently.
pub const REFUSED_OPERATORS: [(&str, &str); 8] = [
    ("REQUEST_DURATION", "no Envoy attribute carries the time the last request byte arrived"),
    ("REQUEST_TX_DURATION", "no Envoy attribute carries the time the last upstream byte was sent"),
    ("RESPONSE_DURATION", "no Envoy attribute carries the time the first upstream byte arrived"),
    ("RESPONSE_TX_DURATION", "no Envoy attribute carries the time the first downstream byte was sent"),
    ("HOSTNAME", "the proxy's host name is not readable from wasm"),
    ("UPSTREAM_CLUSTER_ALT", "alt_stat_name is not readable from wasm"),
    ("DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "not an Envoy attribute"),
    ("DYNAMIC_METADATA", "wasm reads dynamic metadata only as a whole message; use FILTER_STATE"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum HeaderOf {
    Request,
    Response,
    Trailer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// `%REQ(X?Y)%`, `%RESP%`, `%TRAILER%`: lower-case names.
    Header {
        of: HeaderOf,
        main: String,
        alt: Option<String>,
    },
    StartTime {
        attr: usize,
        format: TimeFormat,
    },
    /// `%DURATION%`: ms, truncated.
    DurationMs {
        attr: usize,
    },
    /// `%BYTES_RECEIVED%`: `request.total_size - request.headers_bytes`.
    BytesReceived {
        total: usize,
        headers: usize,
    },
    ResponseFlags {
        attr: usize,
    },
    /// `%RESPONSE_CODE%` prints 0 when no response started.
    ResponseCode {
        attr: usize,
    },
    /// `%RESPONSE_CODE_DETAILS%`: Envoy prints a set but empty value (a wasm local reply's) as
    /// nothing and an unset one as `-`; an attribute read cannot tell the two apart, so empty
    /// details with a response code are the empty value, without one (no response) unset.
    ResponseCodeDetails {
        attr: usize,
        code: usize,
    },
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: Envoy writes spaces as `_`.
    TransportFailureReason {
        attr: usize,
    },
    Attr {
        attr: usize,
        kind: Kind,
    },
    /// `%FILTER_STATE(KEY:PLAIN)%`: the value as stored (wasmesh's decisions are JSON text); the
    /// index among the filter-state keys (read after the attributes).
    FilterState {
        key: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Vec<u8>),
    Op { op: Op, max: Option<usize> },
}

/// One compiled template (a TEXT format, or one JSON value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Text(Template),
    /// Sorted keys, each with its template.
    Json(Vec<(String, Template)>),
    /// An OTLP `LogRecord` as Envoy's OpenTelemetry access logger writes it: the body a TEXT
    /// template (absent when the format is empty), each attribute a TEXT template rendered to a
    /// string value, `time_unix_nano` the request's start (attribute `time`).
    Otel {
        body: Option<Template>,
        attributes: Vec<(String, Template)>,
        time: usize,
    },
}

/// A compiled access-log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    shape: Shape,
    /// Attribute paths, each once, in the order [`Source::attribute`] is indexed.
    attributes: Vec<Vec<&'static str>>,
    /// Filter-state keys read (appended after `attributes` as one-segment paths).
    filter_state: Vec<String>,
    request_headers: bool,
    response_headers: Vec<String>,
    trailers: Vec<String>,
}

/// Where a request's values come from (the adapter reads them; tests give them directly).
pub trait Source {
    /// The value of [`Format::attribute_paths`]`[i]` (`None`: absent).
    fn attribute(&self, i: usize) -> Option<&[u8]>;
    fn request_header(&self, name: &str) -> Option<&[u8]>;
    fn response_header(&self, name: &str) -> Option<&[u8]>;
    fn response_trailer(&self, name: &str) -> Option<&[u8]>;
    /// `%DURATION%` when `request.duration` is unset: a TCP connection's duration so far (Envoy
    /// prints `now - start` there, as its `currentDuration`), ns. `None` (HTTP): unset is `-`.
    fn elapsed_ns(&self) -> Option<i64> {
        None
    }
    /// The ids of the request's span (an OTLP record carries them, as Envoy's OpenTelemetry
    /// logger does when a tracer made a span): `None` when no tracer did.
    fn span_ids(&self) -> Option<otlp::SpanIds> {
        None
    }
    /// Whether the values are a TCP connection's (`%RESPONSE_FLAGS%` then prints in
    /// `tcp_proxy`'s order, `UF,URX`, not an HTTP stream's `URX,UF`). By default an HTTP request.
    fn is_tcp(&self) -> bool {
        false
    }
}

/// One rendered value.
enum Val<'a> {
    None,
    Bytes(&'a [u8]),
    Owned(Vec<u8>),
    Int(i64),
}

struct Builder {
    attributes: Vec<Vec<&'static str>>,
    filter_state: Vec<String>,
    request_headers: bool,
    response_headers: Vec<String>,
    trailers: Vec<String>,
    operators: usize,
}

impl Builder {
    fn attr(&mut self, path: &[&'static str]) -> usize {
        if let Some(i) = self.attributes.iter().position(|p| p == path) {
            return i;
        }
        self.attributes.push(path.to_vec());
        self.attributes.len() - 1
    }

    fn template(&mut self, text: &str) -> Result<Template, String> {
        if text.len() > MAX_FORMAT_BYTES {
            return Err(format!("the format is {} bytes; at most {MAX_FORMAT_BYTES}", text.len()));
        }
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('%') {
            lit.extend_from_slice(rest.get(..at).unwrap_or_default().as_bytes());
            let after = rest.get(at + 1..).unwrap_or_default();
            let (op, max, used) =
                self.operator(after).map_err(|e| format!("at byte {}: {e}", text.len() - rest.len() + at))?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Op { op, max });
            self.operators += 1;
            if self.operators > MAX_OPERATORS {
                return Err(format!("more than {MAX_OPERATORS} operators"));
            }
            rest = after.get(used..).unwrap_or_default();
        }
        lit.extend_from_slice(rest.as_bytes());
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// Parses `NAME(args):max%` at the start of `s`; returns the operator, its length limit and
    /// the bytes used (the closing `%` included).
    fn operator(&mut self, s: &str) -> Result<(Op, Option<usize>, usize), String> {
        let name_len = s.find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')).unwrap_or(s.len());
        let name = s.get(..name_len).unwrap_or_default();
        if name.is_empty() {
            return Err(format!(
                "'%' not followed by a command operator (near {:?}); Envoy's formats have no escape for '%'",
                s.chars().take(16).collect::<String>()
            ));
        }
        let mut used = name_len;
        let mut args = None;
        if s.get(used..).is_some_and(|r| r.starts_with('(')) {
            let close = s.get(used..).and_then(|r| r.find(')')).ok_or(format!("%{name}(: no closing ')'"))?;
            args = s.get(used + 1..used + close).map(str::to_string);
            used += close + 1;
        }
        let mut max = None;
        if s.get(used..).is_some_and(|r| r.starts_with(':')) {
            let digits = s.get(used + 1..).unwrap_or_default();
            let n = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
            let v: usize = digits
                .get(..n)
                .unwrap_or_default()
                .parse()
                .map_err(|_| format!("%{name}: ':' must be followed by a length"))?;
            max = Some(v);
            used += 1 + n;
        }
        if !s.get(used..).is_some_and(|r| r.starts_with('%')) {
            return Err(format!("%{name}: no closing '%'"));
        }
        used += 1;
        let no_args = |op: Op| -> Result<Op, String> {
            match &args {
                None => Ok(op),
                Some(a) => Err(format!("%{name}% takes no arguments (got ({a}))")),
            }
        };
        let op = match name {
            "REQ" | "RESP" | "TRAILER" => {
                let a = args.clone().ok_or(format!("%{name}% needs a header name: %{name}(X)% or %{name}(X?Y)%"))?;
                let (main, alt) = match a.split_once('?') {
                    Some((m, y)) => (m, Some(y)),
                    None => (a.as_str(), None),
                };
                let valid = |h: &str| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'?');
                if !valid(main) || !alt.is_none_or(valid) {
                    return Err(format!("%{name}({a})%: not a header name (X or X?Y)"));
                }
                let of = match name {
                    "REQ" => HeaderOf::Request,
                    "RESP" => HeaderOf::Response,
                    _ => HeaderOf::Trailer,
                };
                let main = main.to_ascii_lowercase();
                let alt = alt.map(str::to_ascii_lowercase);
                for h in std::iter::once(&main).chain(alt.as_ref()) {
                    match of {
                        HeaderOf::Request => self.request_headers = true,
                        HeaderOf::Response if !self.response_headers.contains(h) => {
                            self.response_headers.push(h.clone())
                        }
                        HeaderOf::Trailer if !self.trailers.contains(h) => self.trailers.push(h.clone()),
                        _ => {}
                    }
                }
                Op::Header { of, main, alt }
            }
            "START_TIME" => {
                let format = TimeFormat::parse(args.as_deref().filter(|a| !a.is_empty()).unwrap_or(time::DEFAULT))?;
                Op::StartTime { attr: self.attr(&["request", "time"]), format }
            }
            "DURATION" => no_args(Op::DurationMs { attr: self.attr(&["request", "duration"]) })?,
            "BYTES_RECEIVED" => no_args(Op::BytesReceived {
                total: self.attr(&["request", "total_size"]),
                headers: self.attr(&["request", "headers_bytes"]),
            })?,
            "RESPONSE_FLAGS" => no_args(Op::ResponseFlags { attr: self.attr(&["response", "flags"]) })?,
            "RESPONSE_CODE" => no_args(Op::ResponseCode { attr: self.attr(&["response", "code"]) })?,
            "RESPONSE_CODE_DETAILS" => no_args(Op::ResponseCodeDetails {
                attr: self.attr(&["response", "code_details"]),
                code: self.attr(&["response", "code"]),
            })?,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => {
                no_args(Op::TransportFailureReason { attr: self.attr(&["upstream", "transport_failure_reason"]) })?
            }
            "FILTER_STATE" => {
                let a = args.clone().unwrap_or_default();
                let key = match a.split_once(':') {
                    None => a.as_str(),
                    Some((k, "PLAIN")) => k,
                    Some((_, other)) => {
                        return Err(format!("%FILTER_STATE({a})%: only PLAIN is supported (got {other})"))
                    }
                };
                let Some(key) = key.strip_prefix("wasm.") else {
                    return Err(format!(
                        "%FILTER_STATE({a})%: wasm reads only filter state written by wasm (keys wasm.<name>)"
                    ));
                };
                if key.is_empty() {
                    return Err(format!("%FILTER_STATE({a})%: empty key"));
                }
                if !self.filter_state.iter().any(|k| k == key) {
                    self.filter_state.push(key.to_string());
                }
                Op::FilterState { key: self.filter_state.iter().position(|k| k == key).unwrap_or(0) }
            }
            other => {
                if let Some((_, path, kind)) = ATTRIBUTE_OPERATORS.iter().find(|(n, _, _)| *n == other) {
                    no_args(Op::Attr { attr: self.attr(path), kind: *kind })?
                } else if let Some((_, why)) = REFUSED_OPERATORS.iter().find(|(n, _)| *n == other) {
                    return Err(format!("%{other}% is not supported by wasmesh's access log: {why}"));
                } else {
                    return Err(format!("unknown command operator %{other}%"));
                }
            }
        };
        Ok((op, max, used))
    }

    fn finish(self, shape: Shape) -> Format {
        Format {
            shape,
            attributes: self.attributes,
            filter_state: self.filter_state,
            request_headers: self.request_headers,
            response_headers: self.response_headers,
            trailers: self.trailers,
        }
    }
}

fn builder() -> Builder {
    Builder {
        attributes: Vec::new(),
        filter_state: Vec::new(),
        request_headers: false,
        response_headers: Vec::new(),
        trailers: Vec::new(),
        operators: 0,
    }
}

impl Format {
    /// A TEXT format (Envoy's `text_format`).
    pub fn text(format: &str) -> Result<Format, String> {
        let mut b = builder();
        let t = b.template(format)?;
        Ok(b.finish(Shape::Text(t)))
    }

    /// A JSON format (Envoy's `json_format`): field name → template.
    pub fn json(fields: &BTreeMap<String, String>) -> Result<Format, String> {
        if fields.len() > MAX_OPERATORS {
            return Err(format!("{} JSON fields; at most {MAX_OPERATORS}", fields.len()));
        }
        let mut b = builder();
        let mut out = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            out.push((k.clone(), b.template(v).map_err(|e| format!("field {k:?}: {e}"))?));
        }
        Ok(b.finish(Shape::Json(out)))
    }

    /// An OTLP log record (`envoyOtelAls`, [`otlp`]): `body` a TEXT format (empty: no body) and
    /// `attributes` name → TEXT format, in key order (istiod sorts the labels); every value a
    /// string, as Envoy's OpenTelemetry formatter renders a string value.
    pub fn otel(body: &str, attributes: &BTreeMap<String, String>) -> Result<Format, String> {
        if attributes.len() > MAX_OPERATORS {
            return Err(format!("{} attributes; at most {MAX_OPERATORS}", attributes.len()));
        }
        let mut b = builder();
        let time = b.attr(&["request", "time"]);
        let body = if body.is_empty() { None } else { Some(b.template(body).map_err(|e| format!("body: {e}"))?) };
        let mut out = Vec::with_capacity(attributes.len());
        for (k, v) in attributes {
            out.push((k.clone(), b.template(v).map_err(|e| format!("attribute {k:?}: {e}"))?));
        }
        Ok(b.finish(Shape::Otel { body, attributes: out, time }))
    }

    /// Whether [`Format::render`] gives an encoded OTLP `LogRecord` (not a line).
    pub fn is_otel(&self) -> bool {
        matches!(self.shape, Shape::Otel { .. })
    }

    /// The property paths [`Source::attribute`] answers, by index: Envoy attributes, then
    /// filter-state keys (one segment each).
    pub fn attribute_paths(&self) -> Vec<Vec<&str>> {
        self.attributes.iter().map(|p| p.to_vec()).chain(self.filter_state.iter().map(|k| vec![k.as_str()])).collect()
    }

    /// The Envoy attributes [`Source::attribute`] answers first (indices `0..len`).
    pub fn envoy_attributes(&self) -> &[Vec<&'static str>] {
        &self.attributes
    }

    /// The filter-state keys [`Source::attribute`] answers after the Envoy attributes.
    pub fn filter_state_keys(&self) -> &[String] {
        &self.filter_state
    }

    /// Whether any request header is printed (the adapter then reads the map once).
    pub fn needs_request_headers(&self) -> bool {
        self.request_headers
    }

    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    pub fn trailers(&self) -> &[String] {
        &self.trailers
    }

    pub fn is_json(&self) -> bool {
        matches!(self.shape, Shape::Json(_))
    }

    /// The line for one request (a JSON line ends with `\n`; a TEXT line with what the format
    /// ends with); for an OTLP format the encoded `LogRecord`.
    pub fn render(&self, src: &dyn Source) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        let base = self.attributes.len();
        match &self.shape {
            Shape::Otel { body, attributes, time } => {
                let string = |t: &Template| {
                    let mut s = Vec::new();
                    text(t, src, base, &mut s);
                    String::from_utf8_lossy(&s).into_owned()
                };
                let attrs = attributes.iter().map(|(k, t)| otlp::string_kv(k, &string(t))).collect();
                let start = int(src.attribute(*time)).unwrap_or(0).max(0) as u64;
                return otlp::encode_record(start, body.as_ref().map(string), attrs, src.span_ids());
            }
            Shape::Text(t) => text(t, src, base, &mut out),
            Shape::Json(fields) => {
                out.push(b'{');
                for (i, (k, t)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    json_string(k.as_bytes(), &mut out);
                    out.push(b':');
                    match t.pieces.as_slice() {
                        [Piece::Op { op, max }] => match value(op, src, base) {
                            Val::None => out.extend_from_slice(b"null"),
                            Val::Int(n) => time::push_num(&mut out, n, 1),
                            Val::Bytes(b) => json_string(truncate(b, *max), &mut out),
                            Val::Owned(b) => json_string(truncate(&b, *max), &mut out),
                        },
                        _ => {
                            let mut s = Vec::new();
                            text(t, src, base, &mut s);
                            json_string(&s, &mut out);
                        }
                    }
                }
                out.extend_from_slice(b"}\n");
            }
        }
        out
    }
}

fn truncate(b: &[u8], max: Option<usize>) -> &[u8] {
    match max {
        Some(m) => b.get(..m.min(b.len())).unwrap_or(b),
        None => b,
    }
}

fn text(t: &Template, src: &dyn Source, base: usize, out: &mut Vec<u8>) {
    for p in &t.pieces {
        match p {
            Piece::Lit(b) => out.extend_from_slice(b),
            Piece::Op { op, max } => match value(op, src, base) {
                Val::None => out.push(b'-'),
                Val::Int(n) => match max {
                    None => time::push_num(out, n, 1),
                    Some(_) => out.extend_from_slice(truncate(n.to_string().as_bytes(), *max)),
                },
                Val::Bytes(b) => out.extend_from_slice(truncate(b, *max)),
                Val::Owned(b) => out.extend_from_slice(truncate(&b, *max)),
            },
        }
    }
}

fn int(b: Option<&[u8]>) -> Option<i64> {
    let b: [u8; 8] = b?.get(..8)?.try_into().ok()?;
    Some(i64::from_le_bytes(b))
}

fn nonempty(b: Option<&[u8]>) -> Val<'_> {
    match b {
        Some(b) if !b.is_empty() => Val::Bytes(b),
        _ => Val::None,
    }
}

fn value<'a>(op: &Op, src: &'a dyn Source, base: usize) -> Val<'a> {
    match op {
        Op::Header { of, main, alt } => {
            let get = |h: &str| match of {
                HeaderOf::Request => src.request_header(h),
                HeaderOf::Response => src.response_header(h),
                HeaderOf::Trailer => src.response_trailer(h),
            };
            match get(main).or_else(|| alt.as_deref().and_then(get)) {
                Some(v) => Val::Bytes(v),
                None => Val::None,
            }
        }
        Op::StartTime { attr, format } => match int(src.attribute(*attr)) {
            Some(ns) => {
                let mut b = Vec::with_capacity(32);
                format.write(ns, &mut b);
                Val::Owned(b)
            }
            None => Val::None,
        },
        Op::DurationMs { attr } => int(src.attribute(*attr))
            .or_else(|| src.elapsed_ns())
            .map_or(Val::None, |ns| Val::Int(ns.max(0) / 1_000_000)),
        Op::BytesReceived { total, headers } => {
            let t = int(src.attribute(*total)).unwrap_or(0);
            let h = int(src.attribute(*headers)).unwrap_or(0);
            Val::Int((t - h).max(0))
        }
        Op::ResponseFlags { attr } => {
            let bits = int(src.attribute(*attr)).unwrap_or(0) as u64;
            let order = if src.is_tcp() { Order::Tcp } else { Order::Http };
            Val::Owned(wasmesh_trace::flags::short(bits, order).into_owned().into_bytes())
        }
        Op::ResponseCode { attr } => Val::Int(int(src.attribute(*attr)).unwrap_or(0)),
        Op::ResponseCodeDetails { attr, code } => match src.attribute(*attr) {
            Some(b) if !b.is_empty() => Val::Bytes(b),
            _ if int(src.attribute(*code)).unwrap_or(0) != 0 => Val::Bytes(b""),
            _ => Val::None,
        },
        Op::TransportFailureReason { attr } => match src.attribute(*attr) {
            Some(b) if !b.is_empty() => Val::Owned(b.iter().map(|c| if *c == b' ' { b'_' } else { *c }).collect()),
            _ => Val::None,
        },
        Op::Attr { attr, kind } => match kind {
            Kind::Str => nonempty(src.attribute(*attr)),
            Kind::Int => int(src.attribute(*attr)).map_or(Val::None, Val::Int),
        },
        Op::FilterState { key } => nonempty(src.attribute(base + key)),
    }
}

/// A JSON string as Envoy's JSON formatter escapes it (`"`, `\`, control characters; bytes that
/// are not UTF-8 become U+FFFD).
///
/// Runs of bytes that need no escape are copied in one piece: in wasm each copy is a
/// `memory.copy` that V8 calls out of the module for, so copying character by character made a
/// JSON line cost a call per character (measured: ~500 of the 622 guest→host calls of Istio's
/// JSON line). A byte scan is the same as a character scan here: every byte that needs an escape
/// is ASCII, and the bytes of a multi-byte character (all ≥ 0x80) are copied as they are.
fn json_string(b: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    let s = String::from_utf8_lossy(b);
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let escape: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            c if c < 0x20 => &[],
            _ => continue,
        };
        out.extend_from_slice(bytes.get(run..i).unwrap_or_default());
        run = i + 1;
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX.get(usize::from(c >> 4)).copied().unwrap_or(b'0'));
            out.push(HEX.get(usize::from(c & 0xf)).copied().unwrap_or(b'0'));
        } else {
            out.extend_from_slice(escape);
        }
    }
    out.extend_from_slice(bytes.get(run..).unwrap_or_default());
    out.push(b'"');
}

#[cfg(test)]
mod tests;
