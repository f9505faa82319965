//! `wasmeshctl traces`: a small trace receiver that prints what proxies export as a text
//! waterfall. It listens for OTLP/HTTP protobuf (`POST /v1/traces`) and Zipkin v2 JSON
//! (`POST /api/v2/spans`) on one port, groups spans by trace, and prints each trace once no span
//! of it arrived for `--settle` (so a trace is printed whole): one line per span, indented under
//! its parent, with a bar placing it in the trace's time.
//!
//! Point the mesh's tracing provider at it (meshConfig `extensionProviders` `opentelemetry`
//! with `http.path: /v1/traces`, or `zipkin`, service `127.0.0.1`, port `--listen`'s).

use prost::Message;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmesh_trace::otlp::{ExportTraceServiceRequest, Value as AnyValue};

/// Most traces held while waiting to settle (older ones are printed early).
pub const MAX_TRACES: usize = 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct TracesArgs {
    /// Where to listen (HOST:PORT) for OTLP/HTTP and Zipkin exports.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:4318")]
    pub listen: String,
    /// Print a trace once no span of it arrived for this many milliseconds.
    #[arg(long, value_name = "MS", default_value = "1500")]
    pub settle: u64,
    /// Exit after printing this many traces (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
}

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    pub name: String,
    pub service: String,
    pub kind: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Spans of an OTLP/HTTP protobuf body.
pub fn decode_otlp(body: &[u8]) -> Result<Vec<Span>, String> {
    let req =
        ExportTraceServiceRequest::decode(body).map_err(|e| format!("not an OTLP ExportTraceServiceRequest: {e}"))?;
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s
                    .attributes
                    .iter()
                    .find(|a| a.key == "http.status_code")
                    .and_then(|a| match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(AnyValue::StringValue(s)) => Some(s.clone()),
                        Some(AnyValue::IntValue(i)) => Some(i.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                out.push(Span {
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_id: hex(&s.parent_span_id),
                    name: s.name,
                    service: service.clone(),
                    kind: match s.kind {
                        2 => "server",
                        3 => "client",
                        _ => "",
                    }
                    .into(),
                    start_ns: s.start_time_unix_nano,
                    end_ns: s.end_time_unix_nano,
                    status,
                });
            }
        }
    }
    Ok(out)
}

/// Spans of a Zipkin v2 JSON body.
pub fn decode_zipkin(body: &[u8]) -> Result<Vec<Span>, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let list = v.as_array().ok_or("expected a JSON array of Zipkin v2 spans")?;
    let mut out = Vec::new();
    for s in list {
        let str_of = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let ts = s.get("timestamp").and_then(|v| v.as_u64()).unwrap_or(0);
        let dur = s.get("duration").and_then(|v| v.as_u64()).unwrap_or(0);
        let trace_id = str_of("traceId");
        out.push(Span {
            trace_id: format!("{trace_id:0>32}"),
            span_id: str_of("id"),
            parent_id: str_of("parentId"),
            name: str_of("name"),
            service: s.pointer("/localEndpoint/serviceName").and_then(|v| v.as_str()).unwrap_or_default().into(),
            kind: str_of("kind").to_lowercase(),
            start_ns: ts * 1000,
            end_ns: (ts + dur) * 1000,
            status: s.pointer("/tags/http.status_code").and_then(|v| v.as_str()).unwrap_or_default().into(),
        });
    }
    Ok(out)
}

/// A trace as a text waterfall: children under their parent (in start order), a bar of `width`
/// columns placing each span in the trace's time.
pub fn waterfall(spans: &[Span], width: usize) -> String {
    let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start).max(start + 1);
    let total = (end - start) as f64;
    let trace_id = spans.first().map(|s| s.trace_id.as_str()).unwrap_or_default();
    let mut out = format!("trace {trace_id}  {} spans  {:.2} ms\n", spans.len(), total / 1e6);
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut sorted: Vec<&Span> = spans.iter().collect();
    sorted.sort_by_key(|s| s.start_ns);
    // Roots: no parent, or a parent not in this trace (the caller was outside the mesh).
    let mut stack: Vec<(&Span, usize)> =
        sorted.iter().rev().filter(|s| !ids.contains(&s.parent_id.as_str())).map(|s| (*s, 0)).collect();
    let mut lines = 0;
    while let Some((s, depth)) = stack.pop() {
        lines += 1;
        if lines > spans.len() {
            break;
        }
        let from = (((s.start_ns - start) as f64 / total) * width as f64) as usize;
        let len = ((((s.end_ns.saturating_sub(s.start_ns)) as f64 / total) * width as f64).ceil() as usize).max(1);
        let bar: String = (0..width).map(|i| if i >= from && i < from + len { '█' } else { '·' }).collect();
        let label = format!("{}{} [{}] {}", "  ".repeat(depth), s.name, s.service, s.kind);
        out.push_str(&format!(
            "  {label:<60} {bar} {:>9.2} ms {}\n",
            (s.end_ns.saturating_sub(s.start_ns)) as f64 / 1e6,
            s.status
        ));
        for c in sorted.iter().rev().filter(|c| c.parent_id == s.span_id && c.span_id != s.span_id) {
            stack.push((c, depth + 1));
        }
    }
    out
}

type Pending = Arc<Mutex<BTreeMap<String, (Instant, Vec<Span>)>>>;

fn serve(conn: TcpStream, pending: &Pending) {
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        if len > MAX_BODY {
            let _ =
                writer.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            return;
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let decoded = match path.as_str() {
            "/v1/traces" => decode_otlp(&body),
            "/api/v2/spans" => decode_zipkin(&body),
            other => Err(format!("{other}: expected /v1/traces or /api/v2/spans")),
        };
        let status = match decoded {
            Ok(spans) => {
                if let Ok(mut p) = pending.lock() {
                    for s in spans {
                        let e = p.entry(s.trace_id.clone()).or_insert_with(|| (Instant::now(), Vec::new()));
                        e.0 = Instant::now();
                        e.1.push(s);
                    }
                }
                if path == "/api/v2/spans" {
                    "202 Accepted"
                } else {
                    "200 OK"
                }
            }
            Err(e) => {
                eprintln!("wasmeshctl traces: refused an export: {e}");
                "400 Bad Request"
            }
        };
        if writer.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).is_err() {
            return;
        }
    }
}

pub fn cmd(args: TracesArgs) -> Result<(), String> {
    let listener = TcpListener::bind(&args.listen)
        .map_err(|e| format!("wasmeshctl traces: cannot listen on {}: {e}", args.listen))?;
    eprintln!("wasmeshctl traces: receiving OTLP/HTTP (/v1/traces) and Zipkin (/api/v2/spans) on {}", args.listen);
    let mut printed = 0usize;
    receive(listener, Duration::from_millis(args.settle), |spans| {
        println!("{}", waterfall(&spans, 40));
        printed += 1;
        args.count.is_none_or(|n| printed < n)
    })
}

/// Receives exports on `listener` and hands each trace, once no span of it arrived for `settle`,
/// to `each` (the receiver of `wasmeshctl traces`, for a host that keeps or prints traces itself,
/// e.g. the demo); returns when `each` returns false.
pub fn receive(listener: TcpListener, settle: Duration, mut each: impl FnMut(Vec<Span>) -> bool) -> Result<(), String> {
    let pending: Pending = Arc::default();
    let p2 = pending.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let p = p2.clone();
            std::thread::spawn(move || serve(conn, &p));
        }
    });
    loop {
        std::thread::sleep(settle.clamp(Duration::from_millis(10), Duration::from_millis(200)));
        let ready: Vec<Vec<Span>> = {
            let Ok(mut p) = pending.lock() else { return Err("wasmeshctl traces: a receiver thread failed".into()) };
            let over = p.len().saturating_sub(MAX_TRACES);
            let keys: Vec<String> = p
                .iter()
                .enumerate()
                .filter(|(i, (_, (t, _)))| t.elapsed() >= settle || *i < over)
                .map(|(_, (k, _))| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| p.remove(&k).map(|(_, v)| v)).collect()
        };
        for spans in ready {
            if !each(spans) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, name: &str, start: u64, end: u64) -> Span {
        Span {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_id: parent.into(),
            name: name.into(),
            service: "s".into(),
            kind: "server".into(),
            start_ns: start,
            end_ns: end,
            status: "200".into(),
        }
    }

    #[test]
    fn children_are_indented_under_their_parent() {
        let w = waterfall(
            &[span("b", "a", "child", 10, 50), span("a", "", "root", 0, 100), span("c", "b", "grandchild", 20, 30)],
            10,
        );
        let lines: Vec<&str> = w.lines().collect();
        assert!(lines[0].starts_with("trace t  3 spans"));
        assert!(lines[1].trim_start().starts_with("root"), "{w}");
        assert!(lines[2].contains("  child"), "{w}");
        assert!(lines[3].contains("    grandchild"), "{w}");
        assert!(lines[1].contains("██████████"), "{w}");
    }

    #[test]
    fn zipkin_and_otlp_decode() {
        let z = decode_zipkin(br#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","name":"ingress","timestamp":1,"duration":2,"kind":"SERVER","localEndpoint":{"serviceName":"p"}}]"#).unwrap();
        assert_eq!(z[0].trace_id, "0000000000000000463ac35c9f6413ad");
        assert_eq!(z[0].end_ns, 3000);
        assert!(decode_zipkin(b"{}").is_err());
        assert!(decode_otlp(b"\xff\xff").is_err());
    }
}
