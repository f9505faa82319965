#![allow(clippy::unwrap_used)]
use super::*;

/// A request's values by attribute path and header name.
#[derive(Default)]
struct Req {
    paths: Vec<Vec<String>>,
    attrs: Vec<(String, Vec<u8>)>,
    req: Vec<(&'static str, &'static str)>,
    resp: Vec<(&'static str, &'static str)>,
}

impl Req {
    fn for_format(f: &Format) -> Req {
        Req {
            paths: f.attribute_paths().iter().map(|p| p.iter().map(|s| s.to_string()).collect()).collect(),
            ..Req::default()
        }
    }
    fn int(mut self, path: &str, v: i64) -> Req {
        self.attrs.push((path.into(), v.to_le_bytes().to_vec()));
        self
    }
    fn str(mut self, path: &str, v: &str) -> Req {
        self.attrs.push((path.into(), v.as_bytes().to_vec()));
        self
    }
}

impl Source for Req {
    fn attribute(&self, i: usize) -> Option<&[u8]> {
        let p = self.paths.get(i)?.join(".");
        self.attrs.iter().find(|(k, _)| *k == p).map(|(_, v)| v.as_slice())
    }
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.req.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes())
    }
    fn response_header(&self, name: &str) -> Option<&[u8]> {
        self.resp.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes())
    }
    fn response_trailer(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn typical(f: &Format) -> Req {
    let mut r = Req::for_format(f)
        .int("request.time", 1_796_596_865_123_456_789)
        .int("request.duration", 7_999_999)
        .int("response.code", 200)
        .int("response.flags", 0)
        .str("response.code_details", "via_upstream")
        .int("request.total_size", 130)
        .int("request.headers_bytes", 100)
        .int("response.size", 12)
        .str("upstream.address", "127.0.0.1:9000")
        .str("xds.cluster_name", "app")
        .str("upstream.local_address", "127.0.0.1:40000")
        .str("destination.address", "127.0.0.1:8080")
        .str("source.address", "127.0.0.1:50000")
        .str("request.protocol", "HTTP/1.1")
        .str("xds.route_name", "default");
    r.req = vec![
        (":method", "GET"),
        (":path", "/a?b"),
        ("user-agent", "curl/8"),
        ("x-request-id", "id-1"),
        (":authority", "h"),
    ];
    r.resp = vec![("x-envoy-upstream-service-time", "3")];
    r
}

#[test]
fn istio_default_text_line() {
    let f = Format::text(ISTIO_TEXT).unwrap();
    let line = String::from_utf8(f.render(&typical(&f))).unwrap();
    assert_eq!(
        line,
        "[2026-12-06T22:41:05.123Z] \"GET /a?b HTTP/1.1\" 200 - via_upstream - \"-\" 30 12 7 3 \"-\" \"curl/8\" \
         \"id-1\" \"h\" \"127.0.0.1:9000\" app 127.0.0.1:40000 127.0.0.1:8080 127.0.0.1:50000 - default\n"
    );
}

#[test]
fn istio_default_json_line_is_typed_sorted_and_null_for_unset() {
    let f = Format::json(&istio_json()).unwrap();
    let line = String::from_utf8(f.render(&typical(&f))).unwrap();
    assert!(line.ends_with("}\n"));
    assert!(line.starts_with("{\"authority\":\"h\",\"bytes_received\":30,\"bytes_sent\":12,"), "{line}");
    for want in [
        "\"connection_termination_details\":null",
        "\"duration\":7,",
        "\"response_code\":200,",
        "\"response_flags\":\"-\"",
        "\"upstream_service_time\":\"3\"",
        "\"x_forwarded_for\":null",
        "\"start_time\":\"2026-12-06T22:41:05.123Z\"",
    ] {
        assert!(line.contains(want), "{want} in {line}");
    }
}

#[test]
fn header_fallback_truncation_and_flags() {
    let f = Format::text("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH):3% %REQ(missing)% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESPONSE_FLAGS% %RESPONSE_CODE%").unwrap();
    // UF (bit 5) and URX (bit 15): an HTTP stream sets URX first (Envoy's router decides the
    // retry before it aborts with the reset's flag), whatever the bit order.
    let mut r = Req::for_format(&f).int("response.flags", (1 << 15) | (1 << 5));
    r.req = vec![(":path", "/abcdef")];
    assert_eq!(String::from_utf8(f.render(&r)).unwrap(), "/ab - - URX,UF 0");
    assert_eq!(wasmesh_trace::flags::short_http(0), "-");
    assert_eq!(wasmesh_trace::flags::short_http(1 << 2), "UT");
    // A fault delay before the router, then the retries and the connect failure.
    assert_eq!(wasmesh_trace::flags::short_http((1 << 9) | (1 << 15) | (1 << 5)), "DI,URX,UF");
}

#[test]
fn custom_json_fields_mix_text_and_keep_filter_state() {
    let mut fields = BTreeMap::new();
    fields.insert("z".to_string(), "code=%RESPONSE_CODE% %REQ(X)%".to_string());
    fields.insert("authz".to_string(), "%FILTER_STATE(wasm.wasmesh.authz.decision:PLAIN)%".to_string());
    fields.insert("lit".to_string(), "plain \"quoted\"".to_string());
    let f = Format::json(&fields).unwrap();
    assert_eq!(f.attribute_paths().last().unwrap(), &vec!["wasmesh.authz.decision"]);
    let r = Req::for_format(&f).int("response.code", 403).str("wasmesh.authz.decision", "{\"allow\":false}");
    assert_eq!(
        String::from_utf8(f.render(&r)).unwrap(),
        "{\"authz\":\"{\\\"allow\\\":false}\",\"lit\":\"plain \\\"quoted\\\"\",\"z\":\"code=403 -\"}\n"
    );
}

#[test]
fn configuration_errors_name_the_operator() {
    for (f, want) in [
        ("%NOPE%", "unknown command operator %NOPE%"),
        ("%REQUEST_DURATION%", "%REQUEST_DURATION% is not supported"),
        ("%REQ%", "needs a header name"),
        ("%REQ(a", "no closing ')'"),
        ("%DURATION(x)%", "takes no arguments"),
        ("100%", "not followed by a command operator"),
        ("%START_TIME(%Q)%", "%Q"),
        ("%FILTER_STATE(foo)%", "wasm.<name>"),
        ("%RESPONSE_CODE", "no closing '%'"),
    ] {
        let e = Format::text(f).unwrap_err();
        assert!(e.contains(want), "{f}: {e}");
    }
}

#[test]
fn attributes_are_asked_once_each() {
    let f = Format::text("%UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %RESPONSE_CODE% %RESPONSE_CODE%").unwrap();
    assert_eq!(f.attribute_paths(), vec![vec!["xds", "cluster_name"], vec!["response", "code"]]);
    assert!(!f.needs_request_headers());
}

#[test]
fn an_otel_record_has_the_start_time_the_text_body_and_string_attributes() {
    use prost::Message;
    let labels: BTreeMap<String, String> =
        [("code".to_string(), "%RESPONSE_CODE%".to_string()), ("ua".to_string(), "%REQ(USER-AGENT)%".to_string())]
            .into_iter()
            .collect();
    let f = Format::otel("%REQ(:METHOD)% %RESPONSE_CODE%\n", &labels).unwrap();
    assert!(f.is_otel() && f.needs_request_headers());
    let mut r = Req::for_format(&f).int("request.time", 1_796_596_865_123_456_789).int("response.code", 404);
    r.req.push((":method", "GET"));
    let rec = otlp::LogRecord::decode(f.render(&r).as_slice()).unwrap();
    assert_eq!(rec.time_unix_nano, 1_796_596_865_123_456_789);
    assert_eq!(rec.body, Some(otlp::AnyValue { value: Some(otlp::Value::StringValue("GET 404\n".into())) }));
    assert_eq!(rec.attributes, vec![otlp::string_kv("code", "404"), otlp::string_kv("ua", "-")]);
    // No tracer: no ids.
    assert!(rec.trace_id.is_empty() && rec.span_id.is_empty());
    let empty = Format::otel("", &BTreeMap::new()).unwrap();
    let rec = otlp::LogRecord::decode(empty.render(&Req::for_format(&empty)).as_slice()).unwrap();
    assert_eq!((rec.body, rec.attributes.len()), (None, 0));
}

/// A request with a span (the tracing phase's ids).
struct Traced(Req, otlp::SpanIds);

impl Source for Traced {
    fn attribute(&self, i: usize) -> Option<&[u8]> {
        self.0.attribute(i)
    }
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.0.request_header(name)
    }
    fn response_header(&self, name: &str) -> Option<&[u8]> {
        self.0.response_header(name)
    }
    fn response_trailer(&self, name: &str) -> Option<&[u8]> {
        self.0.response_trailer(name)
    }
    fn span_ids(&self) -> Option<otlp::SpanIds> {
        Some(self.1)
    }
}

#[test]
fn an_otel_record_carries_the_span_ids_and_a_line_does_not() {
    use prost::Message;
    let ids = ([0xab; 16], [0xcd; 8]);
    let f = Format::otel("%RESPONSE_CODE%", &BTreeMap::new()).unwrap();
    let r = Traced(Req::for_format(&f).int("response.code", 200), ids);
    let rec = otlp::LogRecord::decode(f.render(&r).as_slice()).unwrap();
    assert_eq!((rec.trace_id.as_slice(), rec.span_id.as_slice()), (&ids.0[..], &ids.1[..]));
    let text = Format::text("%RESPONSE_CODE%").unwrap();
    assert_eq!(text.render(&Traced(Req::for_format(&text).int("response.code", 200), ids)), b"200");
}

/// The escaping as first written (a character at a time), kept as the reference the faster
/// run-copying `json_string` must equal.
fn json_string_reference(b: &[u8]) -> Vec<u8> {
    let mut out = vec![b'"'];
    for c in String::from_utf8_lossy(b).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
    out
}

#[test]
fn json_strings_escape_as_envoy_whatever_the_runs() {
    let cases: [&[u8]; 12] = [
        b"",
        b"plain",
        b"\"",
        b"a\"b\\c",
        b"\x00\x01\x1f\x7f end",
        b"tab\there\nnew\rline\x08\x0c",
        "caf\u{e9} \u{2603} \u{1f600}".as_bytes(),
        b"\xff\xfe invalid \xc3",
        b"trailing\\",
        b"\\leading",
        b"\x1b[31m",
        b"curl/8.5.0",
    ];
    for c in cases {
        let mut out = Vec::new();
        super::json_string(c, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&json_string_reference(c)), "{c:?}");
    }
}

/// A TCP connection as the network adapter sees it at close: no headers, no response code, no
/// `request.duration` (the adapter gives the elapsed time), flags and upstream set.
struct Tcp(Req, Option<i64>);

impl Source for Tcp {
    fn attribute(&self, i: usize) -> Option<&[u8]> {
        self.0.attribute(i)
    }
    fn request_header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn response_header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn response_trailer(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn elapsed_ns(&self) -> Option<i64> {
        self.1
    }
    fn is_tcp(&self) -> bool {
        true
    }
}

#[test]
fn istio_text_on_a_tcp_connection_prints_as_envoy_on_tcp_proxy() {
    let f = Format::text(ISTIO_TEXT).unwrap();
    let r = Req::for_format(&f)
        .int("request.time", 1_796_596_865_123_456_789)
        .int("response.flags", 0b10_0000 | (1 << 15))
        .int("request.total_size", 7)
        .int("request.headers_bytes", 0)
        .int("response.size", 4)
        .str("upstream.transport_failure_reason", "delayed connect error: Connection refused")
        .str("upstream.address", "127.0.0.1:9000")
        .str("xds.cluster_name", "dead")
        .str("destination.address", "127.0.0.1:8080")
        .str("source.address", "127.0.0.1:50000");
    // Envoy's line for a refused upstream (tcp_proxy, Envoy 1.40), the duration 3.9 ms so far.
    let line = f.render(&Tcp(r, Some(3_999_999)));
    assert_eq!(
        String::from_utf8(line).unwrap(),
        "[2026-12-06T22:41:05.123Z] \"- - -\" 0 UF,URX - - \"delayed_connect_error:_Connection_refused\" 7 4 3 - \
\"-\" \"-\" \"-\" \"-\" \"127.0.0.1:9000\" dead - 127.0.0.1:8080 127.0.0.1:50000 - -\n"
    );
    // HTTP (no elapsed time given) keeps printing an unset duration as `-`, and the same flags
    // in an HTTP stream's order.
    let r =
        Req::for_format(&f).int("request.time", 1_796_596_865_123_456_789).int("response.flags", 0b10_0000 | (1 << 15));
    let http = String::from_utf8(f.render(&r)).unwrap();
    assert_eq!(http.split(' ').nth(11), Some("-"), "{http}");
    assert_eq!(http.split(' ').nth(5), Some("URX,UF"), "{http}");
}

#[test]
fn tcp_configuration_and_its_otel_export() {
    let (logs, tcp) =
        config::parse_with_protocol(br#"{"tcp":true,"logs":[{"filterStateKey":"wasmesh.access_log.0"}]}"#).unwrap();
    assert!(tcp && logs.len() == 1);
    let (_, tcp) = config::parse_with_protocol(br#"{"logs":[{"filterStateKey":"wasmesh.access_log.0"}]}"#).unwrap();
    assert!(!tcp);
    // A connection's record is exported as an HTTP request's is (the export phase runs beside
    // the network filter, from the root).
    let (logs, tcp) = config::parse_with_protocol(
        br#"{"tcp":true,"logs":[{"filterStateKey":"wasmesh.access_log","otel":{"cluster":"c","authority":"a"}}]}"#,
    )
    .unwrap();
    assert!(tcp && logs[0].export.is_some() && logs[0].format.is_otel());
}
