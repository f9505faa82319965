//! A test-only filter (e2e/tests/cel.rs): reads the same properties through
//! [`Stream::properties`] (one CEL evaluation) and with one `get_property` each, and logs both
//! answers, so the test can hold them byte for byte against each other in real Envoy.
//!
//! Built with `cargo build --release --target wasm32-wasip1 -p wasmesh-proxy --example cel_probe`.
//! Log lines (info): `cel-probe <phase> <path> batch=<hex|-> single=<hex|->` per path, then
//! `cel-probe <phase> answered=<true|false>` (whether an expression answered the batch). A
//! request for `/root` is paused at its headers and read again from the root's tick with the
//! effective context set to it (phases `xds-stream`, `xds-root`).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::Cell;
use std::time::Duration;
use wasmesh_proxy::cel;
use wasmesh_proxy::stream::{HeaderReads, Stream};

/// What the stats phase reads when the request is logged.
const LOG: [&[&str]; 13] = [
    &["response", "code"],
    &["response", "flags"],
    &["response", "grpc_status"],
    &["request", "duration"],
    &["request", "total_size"],
    &["response", "total_size"],
    &["xds", "cluster_name"],
    &["connection", "uri_san_peer_certificate"],
    &["connection", "uri_san_local_certificate"],
    &["upstream", "uri_san_peer_certificate"],
    &["upstream", "uri_san_local_certificate"],
    &["xds", "upstream_host_metadata", "filter_metadata", "istio", "workload"],
    &["filter_state", "envoy.filters.http.grpc_stats"],
];

/// Request-time attributes, some absent then (`upstream.address`, `response.code`).
const HEADERS: [&[&str]; 8] = [
    &["request", "url_path"],
    &["request", "method"],
    &["request", "headers", "user-agent"],
    &["source", "address"],
    &["destination", "port"],
    &["connection", "mtls"],
    &["upstream", "address"],
    &["response", "code"],
];

/// `xds.*` attributes, which CEL also resolves in a root context (for the root, not the stream).
const XDS: [&[&str]; 4] =
    [&["xds", "listener_direction"], &["xds", "route_name"], &["xds", "virtual_host_name"], &["xds", "node", "id"]];

/// The same with `request.total_size`, which is selected without a guard: its expression's
/// marker is a bare number (the unguarded `request` fails the evaluation from a root callback).
const MIXED: [&[&str]; 5] = [
    &["xds", "listener_direction"],
    &["xds", "route_name"],
    &["xds", "virtual_host_name"],
    &["xds", "node", "id"],
    &["request", "total_size"],
];

thread_local! {
    /// A request paused at its headers (path `/root`), read again from the root's next tick.
    static PAUSED: Cell<Option<u32>> = const { Cell::new(None) };
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Probe) });
}}

struct Probe;

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _size: usize) -> bool {
        hostcalls::set_tick_period(Duration::from_millis(50)).is_ok()
    }

    /// What a phase resumed from a root callback does: the effective context is the stream,
    /// the callback is the root's.
    fn on_tick(&mut self) {
        let Some(id) = PAUSED.with(Cell::take) else { return };
        if hostcalls::set_effective_context(id).is_ok() {
            compare(&Stream::new(id, HeaderReads::Map), "xds-root", &XDS);
            compare(&Stream::new(id, HeaderReads::Map), "mixed-root", &MIXED);
            let _ = hostcalls::resume_http_request();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { stream: Stream::new(context_id, HeaderReads::Map) }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Request {
    stream: Stream,
}

fn hex(v: Option<&[u8]>) -> String {
    match v {
        Some(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        None => "-".to_string(),
    }
}

fn compare(stream: &Stream, phase: &str, paths: &[&[&str]]) {
    let before = cel::answered();
    let batch = stream.properties(paths);
    let answered = cel::answered() > before;
    for (path, b) in paths.iter().zip(&batch) {
        let single = hostcalls::get_property(path.to_vec()).ok().flatten();
        wasmesh_proxy::log_info(&format!(
            "cel-probe {phase} {} batch={} single={}",
            path.join("."),
            hex(b.as_deref()),
            hex(single.as_deref())
        ));
    }
    wasmesh_proxy::log_info(&format!("cel-probe {phase} answered={answered}"));
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.stream.property(&["request", "url_path"]).ok().flatten().as_deref() == Some(b"/root") {
            compare(&self.stream, "xds-stream", &XDS);
            // A fresh stream: this one keeps what it just read.
            compare(&Stream::new(self.stream.context_id(), HeaderReads::Map), "mixed-stream", &MIXED);
            PAUSED.with(|p| p.set(Some(self.stream.context_id())));
            return Action::Pause;
        }
        compare(&self.stream, "headers", &HEADERS);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.stream.enter_response();
        compare(&self.stream, "log", &LOG);
    }
}
