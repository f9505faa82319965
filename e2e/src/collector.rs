//! A test collector: OTLP/HTTP (`POST /v1/traces`, `POST /v1/logs`, protobuf) and Zipkin v2
//! (`POST /api/v2/spans`, JSON) on one loopback port. OTLP bodies are decoded with the official
//! OpenTelemetry protobuf types (`opentelemetry-proto`), and anything that does not conform is
//! refused with 400 and recorded as an error a test asserts empty: a wrong content type, a body
//! that does not decode, ids of the wrong length or all zero, a span without a name, a Zipkin
//! span without a valid `traceId`/`id` or with a `duration` under 1.
//!
//! Compiled into the tests that use it (`#[path]`), not into the harness library: its decoder
//! is a dev-dependency of the e2e crate only.

#![allow(dead_code)]

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost_014::Message;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One span as received, whichever the format, with the resource's `service.name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `otlp` or `zipkin`.
    pub format: &'static str,
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// OTLP `SpanKind` name (`SERVER`, `CLIENT`) or Zipkin's `kind`.
    pub kind: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(String, String)>,
    /// OTLP status code (0 unset, 1 ok, 2 error); Zipkin: 0.
    pub status: i32,
    pub trace_state: String,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    spans: Vec<Received>,
    logs: Vec<opentelemetry_proto::tonic::logs::v1::LogRecord>,
    errors: Vec<String>,
    requests: usize,
}

/// A running collector; stops when dropped.
pub struct Collector {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Collector {
    pub fn start() -> Collector {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("collector bind");
        let port = listener.local_addr().expect("collector address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s2.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Collector { port, state, stop }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.state.lock().unwrap().spans.clone()
    }

    pub fn errors(&self) -> Vec<String> {
        self.state.lock().unwrap().errors.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    pub fn log_records(&self) -> usize {
        self.state.lock().unwrap().logs.len()
    }

    /// Waits until `pred` holds over the spans received (or `limit` passes), returns them.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if pred(&spans) || start.elapsed() > limit {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let Ok(mut writer) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
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
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                chunk.truncate(n);
                body.extend(chunk);
                if n == 0 {
                    break;
                }
            }
            body
        } else {
            let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            body
        };
        let content_type = header("content-type").unwrap_or_default();
        let result = handle(&method, &path, &content_type, &body, state);
        let (status, text) = match &result {
            Ok(()) => (if path == "/api/v2/spans" { "202 Accepted" } else { "200 OK" }, String::new()),
            Err(e) => ("400 Bad Request", e.clone()),
        };
        {
            let mut s = state.lock().unwrap();
            s.requests += 1;
            if let Err(e) = result {
                s.errors.push(format!("{method} {path}: {e}"));
            }
        }
        let resp =
            format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{text}", text.len());
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn any_value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn handle(method: &str, path: &str, content_type: &str, body: &[u8], state: &Mutex<State>) -> Result<(), String> {
    if method != "POST" {
        return Err(format!("method {method}; expected POST"));
    }
    match path {
        "/v1/traces" => {
            if content_type != "application/x-protobuf" {
                return Err(format!("content-type {content_type:?}; expected application/x-protobuf"));
            }
            let req = ExportTraceServiceRequest::decode(body)
                .map_err(|e| format!("not an ExportTraceServiceRequest: {e}"))?;
            let mut out = Vec::new();
            for rs in &req.resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .map(|a| any_value(&a.value))
                    .ok_or("a resource without service.name")?;
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        if s.trace_id.len() != 16 || s.trace_id.iter().all(|b| *b == 0) {
                            return Err(format!("trace_id {:?}: expected 16 bytes, not all zero", s.trace_id));
                        }
                        if s.span_id.len() != 8 || s.span_id.iter().all(|b| *b == 0) {
                            return Err(format!("span_id {:?}: expected 8 bytes, not all zero", s.span_id));
                        }
                        if !(s.parent_span_id.is_empty() || s.parent_span_id.len() == 8) {
                            return Err(format!("parent_span_id {:?}: expected empty or 8 bytes", s.parent_span_id));
                        }
                        if s.name.is_empty() {
                            return Err("a span without a name".into());
                        }
                        if s.end_time_unix_nano < s.start_time_unix_nano || s.start_time_unix_nano == 0 {
                            return Err(format!("times {}..{}", s.start_time_unix_nano, s.end_time_unix_nano));
                        }
                        let kind = opentelemetry_proto::tonic::trace::v1::span::SpanKind::try_from(s.kind)
                            .map_err(|_| format!("kind {}", s.kind))?;
                        out.push(Received {
                            format: "otlp",
                            service: service.clone(),
                            trace_id: hex(&s.trace_id),
                            span_id: hex(&s.span_id),
                            parent_span_id: hex(&s.parent_span_id),
                            name: s.name.clone(),
                            kind: kind.as_str_name().trim_start_matches("SPAN_KIND_").to_string(),
                            start_unix_nanos: s.start_time_unix_nano,
                            end_unix_nanos: s.end_time_unix_nano,
                            attributes: s.attributes.iter().map(|a| (a.key.clone(), any_value(&a.value))).collect(),
                            status: s.status.as_ref().map(|st| st.code).unwrap_or(0),
                            trace_state: s.trace_state.clone(),
                        });
                    }
                }
            }
            state.lock().unwrap().spans.extend(out);
            Ok(())
        }
        "/v1/logs" => {
            if content_type != "application/x-protobuf" {
                return Err(format!("content-type {content_type:?}; expected application/x-protobuf"));
            }
            let req =
                ExportLogsServiceRequest::decode(body).map_err(|e| format!("not an ExportLogsServiceRequest: {e}"))?;
            let mut s = state.lock().unwrap();
            for rl in req.resource_logs {
                for sl in rl.scope_logs {
                    s.logs.extend(sl.log_records);
                }
            }
            Ok(())
        }
        "/api/v2/spans" => {
            if !content_type.starts_with("application/json") {
                return Err(format!("content-type {content_type:?}; expected application/json"));
            }
            let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
            let list = v.as_array().ok_or("expected a JSON array of spans")?;
            let is_hex = |s: &str, lens: &[usize]| {
                lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            let mut out = Vec::new();
            for s in list {
                let trace_id =
                    s["traceId"].as_str().filter(|t| is_hex(t, &[16, 32])).ok_or(format!("traceId in {s}"))?;
                let id = s["id"].as_str().filter(|t| is_hex(t, &[16])).ok_or(format!("id in {s}"))?;
                let parent = match s.get("parentId") {
                    None => "",
                    Some(p) => p.as_str().filter(|t| is_hex(t, &[16])).ok_or(format!("parentId in {s}"))?,
                };
                let ts = s["timestamp"].as_u64().ok_or(format!("timestamp in {s}"))?;
                let dur = s["duration"].as_u64().filter(|d| *d >= 1).ok_or(format!("duration in {s}"))?;
                let kind = s["kind"].as_str().unwrap_or_default();
                if !["CLIENT", "SERVER", "PRODUCER", "CONSUMER", ""].contains(&kind) {
                    return Err(format!("kind {kind:?}"));
                }
                let tags = s["tags"].as_object().cloned().unwrap_or_default();
                let mut attributes = Vec::new();
                for (k, v) in tags {
                    attributes.push((k.clone(), v.as_str().ok_or(format!("tag {k}: not a string"))?.to_string()));
                }
                out.push(Received {
                    format: "zipkin",
                    service: s["localEndpoint"]["serviceName"].as_str().unwrap_or_default().to_string(),
                    trace_id: trace_id.to_string(),
                    span_id: id.to_string(),
                    parent_span_id: parent.to_string(),
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    kind: kind.to_string(),
                    start_unix_nanos: ts * 1000,
                    end_unix_nanos: (ts + dur) * 1000,
                    attributes,
                    status: 0,
                    trace_state: String::new(),
                });
            }
            state.lock().unwrap().spans.extend(out);
            Ok(())
        }
        other => Err(format!("path {other:?}; expected /v1/traces, /v1/logs or /api/v2/spans")),
    }
}

/// One OTLP log record as an `envoyOtelAls` collector received it over gRPC, with what came
/// around it: the resource's attributes and the scope.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcLog {
    pub resource: Option<opentelemetry_proto::tonic::resource::v1::Resource>,
    pub scope: Option<opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
    pub scope_schema_url: String,
    pub resource_schema_url: String,
    pub record: opentelemetry_proto::tonic::logs::v1::LogRecord,
}

#[derive(Default)]
struct GrpcState {
    logs: Vec<GrpcLog>,
    calls: usize,
}

#[derive(Clone)]
struct LogsService {
    state: Arc<Mutex<GrpcState>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsService for LogsService {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse>,
        tonic::Status,
    > {
        let req = request.into_inner();
        let mut s = self.state.lock().unwrap();
        s.calls += 1;
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                for record in sl.log_records {
                    s.logs.push(GrpcLog {
                        resource: rl.resource.clone(),
                        scope: sl.scope.clone(),
                        scope_schema_url: sl.schema_url.clone(),
                        resource_schema_url: rl.schema_url.clone(),
                        record,
                    });
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An OTLP/gRPC logs collector (`opentelemetry.proto.collector.logs.v1.LogsService/Export`, the
/// official service and messages of `opentelemetry-proto`, served with tonic) on its own runtime;
/// stopped when dropped.
pub struct GrpcLogs {
    pub port: u16,
    state: Arc<Mutex<GrpcState>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcLogs {
    pub fn start() -> GrpcLogs {
        let std_listener = TcpListener::bind(("127.0.0.1", 0)).expect("grpc collector bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("address").port();
        let state = Arc::new(Mutex::new(GrpcState::default()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let service = LogsService { state: state.clone() };
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let server = tonic::transport::Server::builder()
                    .add_service(
                        opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::LogsServiceServer::new(
                            service,
                        ),
                    )
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                        let _ = rx.await;
                    });
                let _ = server.await;
            });
        });
        GrpcLogs { port, state, stop: Some(tx), thread: Some(thread) }
    }

    pub fn logs(&self) -> Vec<GrpcLog> {
        self.state.lock().unwrap().logs.clone()
    }

    pub fn calls(&self) -> usize {
        self.state.lock().unwrap().calls
    }

    /// Waits until `n` records arrived (or `limit` passes), returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<GrpcLog> {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            if logs.len() >= n || start.elapsed() > limit {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GrpcLogs {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
