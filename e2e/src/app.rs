//! The upstream application: an HTTP/1.1 server that answers with who it is (service, version)
//! and what it received (method, path, headers), like Istio's sample apps. It can also call other
//! services through its sidecar (bookinfo's productpage → reviews → ratings), forwarding the
//! headers Istio asks applications to propagate, and it serves httpbin-style `/status/<code>`
//! and `/delay/<seconds>`. A request can ask for response headers: each
//! `x-echo-response-header: NAME=VALUE` it carries adds `NAME: VALUE` to the answer
//! ([`RESPONSE_HEADER`]).

use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Headers an Istio application forwards on its outbound calls (tracing and `end-user`).
pub const PROPAGATED: &[&str] = &[
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "authorization",
];

/// The request header asking the app for a response header: `NAME=VALUE` adds `NAME: VALUE` to
/// the answer (one per occurrence; a NAME that is not an HTTP token or a VALUE with a control
/// character is ignored). What an upstream service sets in its own responses, e.g.
/// `x-envoy-decorator-operation`.
pub const RESPONSE_HEADER: &str = "x-echo-response-header";

/// The response headers a request asked for ([`RESPONSE_HEADER`]), as header lines.
fn requested_response_headers(headers: &[(String, String)]) -> String {
    let token =
        |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    headers
        .iter()
        .filter(|(k, _)| k == RESPONSE_HEADER)
        .filter_map(|(_, v)| v.split_once('='))
        .filter(|(n, v)| token(n.trim()) && !v.bytes().any(|b| b.is_ascii_control() && b != b'\t'))
        .map(|(n, v)| format!("{}: {}\r\n", n.trim(), v.trim()))
        .collect()
}

/// One downstream call the app makes for every request it serves.
#[derive(Debug, Clone)]
pub struct Call {
    /// Service name as shown in the response.
    pub service: String,
    /// Host header, e.g. `reviews:9080`.
    pub host: String,
    pub path: String,
    /// The caller's sidecar outbound port on 127.0.0.1.
    pub via_port: u16,
}

#[derive(Debug, Clone)]
pub struct App {
    pub service: String,
    pub version: String,
    pub calls: Vec<Call>,
}

/// A running app; stops when dropped.
pub struct AppHandle {
    pub port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl AppHandle {
    /// Requests served so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for AppHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl App {
    pub fn new(service: &str, version: &str) -> App {
        App { service: service.into(), version: version.into(), calls: Vec::new() }
    }

    pub fn calling(mut self, call: Call) -> App {
        self.calls.push(call);
        self
    }

    /// Starts on a free loopback port (or `port` when non-zero).
    pub fn start_on(self, port: u16) -> std::io::Result<AppHandle> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let app = Arc::new(self);
        let (stop2, served2) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (app, served, stop) = (app.clone(), served2.clone(), stop2.clone());
                std::thread::spawn(move || serve_connection(conn, &app, &served, &stop));
            }
        });
        Ok(AppHandle { port, stop, served })
    }

    pub fn start(self) -> AppHandle {
        let name = self.service.clone();
        self.start_on(0).unwrap_or_else(|e| panic!("cannot start app {name}: {e}"))
    }
}

fn serve_connection(conn: TcpStream, app: &App, served: &AtomicU64, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    let mut writer = write_half;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = request_line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize =
            headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            match read_chunked(&mut reader) {
                Some(b) => b,
                None => return,
            }
        } else {
            let mut body = vec![0u8; len.min(16 << 20)];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let close = headers.iter().any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
        served.fetch_add(1, Ordering::SeqCst);
        let (status, payload) = respond(app, &method, &path, &headers, &body);
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-app: {}-{}\r\n{}{}\r\n",
            reason(status),
            payload.len(),
            app.service,
            app.version,
            requested_response_headers(&headers),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).and_then(|_| writer.write_all(&payload)).is_err() || close {
            return;
        }
    }
}

fn respond(app: &App, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> (u16, Vec<u8>) {
    let mut status = 200;
    let bare = path.split('?').next().unwrap_or("");
    if let Some(code) = bare.strip_prefix("/status/").and_then(|c| c.parse::<u16>().ok()) {
        if (100..=599).contains(&code) {
            status = code;
        }
    }
    if let Some(secs) = bare.strip_prefix("/delay/").and_then(|c| c.parse::<f64>().ok()) {
        std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.0, 10.0)));
    }
    let mut hmap = Map::new();
    for (k, v) in headers {
        let joined = match hmap.get(k).and_then(Value::as_str) {
            Some(prev) => format!("{prev},{v}"),
            None => v.clone(),
        };
        hmap.insert(k.clone(), Value::String(joined));
    }
    let calls: Vec<Value> = app
        .calls
        .iter()
        .map(|c| {
            let forwarded: Vec<(&str, &str)> = headers
                .iter()
                .filter(|(k, _)| PROPAGATED.contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .chain(std::iter::once(("host", c.host.as_str())))
                .collect();
            match crate::http::request(c.via_port, "GET", &c.path, &forwarded, b"") {
                Ok(r) => json!({
                    "service": c.service,
                    "status": r.status,
                    "body": serde_json::from_slice::<Value>(&r.body).unwrap_or_else(|_| Value::String(r.text())),
                }),
                Err(e) => json!({"service": c.service, "status": 0, "error": e.to_string()}),
            }
        })
        .collect();
    let payload = json!({
        "service": app.service,
        "version": app.version,
        "method": method,
        "path": path,
        "headers": hmap,
        "body_bytes": body.len(),
        "body_sum": body_sum(body),
        "calls": calls,
    });
    (status, serde_json::to_vec(&payload).unwrap_or_default())
}

/// A chunked request body (trailers skipped), at most 16 MiB.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t).ok()? == 0 || t.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        if body.len() + size > 16 << 20 {
            return None;
        }
        let mut piece = vec![0u8; size];
        reader.read_exact(&mut piece).ok()?;
        body.extend_from_slice(&piece);
        let mut crlf = String::new();
        reader.read_line(&mut crlf).ok()?;
    }
}

/// FNV-1a (64-bit) of a body, in hex: what the application received, compared without the bytes.
pub fn body_sum(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
