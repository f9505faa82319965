//! `wasmesh.access_log`: Istio's access logs (TEXT or JSON, Envoy's command operators) as a
//! phase of the observability family, beside the stats phase.
//!
//! In `log` (Envoy's access-log callback, after the response; every request, answered ones too)
//! each configured log whose `filter` passes renders its line ([`wasmesh_accesslog::Format`]) and
//! writes it to filter state `wasm.<filterStateKey>`. Where the line goes: an Envoy file access
//! logger that wasmeshctl puts on the same HTTP connection manager prints that filter state
//! (`%FILTER_STATE(wasm.<key>:PLAIN)%`, `omit_empty_values`), to `/dev/stdout` or a file.
//! Measured in Envoy 1.40: a wasm filter's `on_log` runs before the connection manager's access
//! loggers, so they see the line; a request the filter skipped leaves the state unset, which
//! `omit_empty_values` prints as nothing (README "Access logs").
//!
//! Hostcalls per logged request: one batch of the attributes every log needs, each once however
//! many logs print it ([`Stream::properties`], one `expr_evaluate` for three or more; compiled
//! at configure time in [`Reads`]), one read per filter-state key, the request header map once
//! when a format prints request headers, the response header (trailer) map once when two or more
//! are printed (one `get_map_value` for one), one `expr_evaluate` per log with a filter, one
//! `set_property` per line. Telemetry fails open:
//! nothing here changes or stops a request.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{Bytes, MapType};
use std::cell::Cell;
use std::rc::Rc;
use wasmesh_accesslog::config::Log;
use wasmesh_accesslog::Source;
use wasmesh_proxy::header_map::RawMap;
use wasmesh_proxy::phase::{ChainRoot, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};

pub const ROOT_ID: &str = "wasmesh.access_log";

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh access log", build))
}

pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let (logs, tcp) = wasmesh_accesslog::config::parse_with_protocol(config)?;
    wasmesh_proxy::log_info(&format!(
        "wasmesh access log: {} log(s): {}",
        logs.len(),
        logs.iter().map(|l| l.key.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let reads = Reads::compile(&logs);
    let filters = logs.iter().map(|_| Filter::default()).collect();
    let export = crate::access_log_export::build(&logs);
    let phase: Rc<dyn Phase> =
        Rc::new_cyclic(|me| AccessLogPhase { logs, reads, filters, export: export.clone(), tcp, me: me.clone() });
    Ok(match export {
        Some(x) => vec![phase, x],
        None => vec![phase],
    })
}

/// What the logs read per request, compiled at configure time: every attribute, filter-state
/// key and response header or trailer once, however many logs print it.
struct Reads {
    /// Envoy attributes, each once (read in one batch).
    attributes: Vec<Vec<&'static str>>,
    /// Filter-state keys, each once.
    filter_state: Vec<String>,
    /// Per log: its [`wasmesh_accesslog::Source::attribute`] index → index into
    /// `attributes`, then into `filter_state` (offset by `attributes.len()`).
    index: Vec<Vec<usize>>,
    response_headers: Vec<String>,
    trailers: Vec<String>,
}

/// Past this many response headers (or trailers) to print, the map is read whole in one
/// hostcall rather than one `get_map_value` each.
const WHOLE_MAP_FROM: usize = 2;

impl Reads {
    fn compile(logs: &[Log]) -> Reads {
        let mut r = Reads {
            attributes: Vec::new(),
            filter_state: Vec::new(),
            index: Vec::new(),
            response_headers: Vec::new(),
            trailers: Vec::new(),
        };
        let mut fs_index = Vec::with_capacity(logs.len());
        for l in logs {
            let mut idx = Vec::new();
            for a in l.format.envoy_attributes() {
                let at = r.attributes.iter().position(|p| p == a).unwrap_or_else(|| {
                    r.attributes.push(a.clone());
                    r.attributes.len() - 1
                });
                idx.push(at);
            }
            let mut fs = Vec::new();
            for k in l.format.filter_state_keys() {
                let at = r.filter_state.iter().position(|p| p == k).unwrap_or_else(|| {
                    r.filter_state.push(k.clone());
                    r.filter_state.len() - 1
                });
                fs.push(at);
            }
            r.index.push(idx);
            fs_index.push(fs);
            for h in l.format.response_headers() {
                if !r.response_headers.contains(h) {
                    r.response_headers.push(h.clone());
                }
            }
            for h in l.format.trailers() {
                if !r.trailers.contains(h) {
                    r.trailers.push(h.clone());
                }
            }
        }
        let n = r.attributes.len();
        for (idx, fs) in r.index.iter_mut().zip(fs_index) {
            idx.extend(fs.into_iter().map(|i| n + i));
        }
        r
    }
}

/// Response headers or trailers the formats print: one `get_map_value` each, or the whole map
/// in one hostcall when several are printed.
fn read_headers(map: MapType, names: &[String]) -> Vec<(String, Option<Bytes>)> {
    if names.len() >= WHOLE_MAP_FROM {
        if let Ok(all) = hostcalls::get_map_bytes(map) {
            // The first value of each, as `get_map_value` answers.
            return names
                .iter()
                .map(|n| (n.clone(), all.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone())))
                .collect();
        }
    }
    names.iter().map(|n| (n.clone(), hostcalls::get_map_value_bytes(map, n).ok().flatten())).collect()
}

/// A log's filter expression in Envoy's CEL: its token in this root context's table, made on
/// first use (from a stream, whose root is this phase's root).
#[derive(Default)]
struct Filter {
    token: Cell<Option<u32>>,
    failed: Cell<bool>,
}

struct AccessLogPhase {
    logs: Vec<Log>,
    reads: Reads,
    filters: Vec<Filter>,
    /// Where the records of `envoyOtelAls` logs go (README "OpenTelemetry access-log export").
    export: Option<Rc<crate::access_log_export::ExportPhase>>,
    /// A network filter: one line per TCP connection ([`AccessLogTcp`]).
    tcp: bool,
    /// This phase, for the connections' contexts.
    me: std::rc::Weak<AccessLogPhase>,
}

impl AccessLogPhase {
    /// Whether log `i` takes this request: no filter, or Envoy's CEL says `true` (an error or a
    /// non-bool does not log, as Envoy's CEL access-log filter).
    fn passes(&self, i: usize) -> bool {
        let (Some(log), Some(f)) = (self.logs.get(i), self.filters.get(i)) else { return false };
        let Some(expr) = &log.filter else { return true };
        if f.failed.get() {
            return false;
        }
        let token = match f.token.get() {
            Some(t) => t,
            None => {
                let made = hostcalls::call_foreign_function("expr_create", Some(expr.as_bytes()))
                    .ok()
                    .flatten()
                    .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
                    .map(u32::from_le_bytes);
                let Some(t) = made else {
                    f.failed.set(true);
                    wasmesh_proxy::log_error(&format!(
                        "wasmesh access log: {}: Envoy refused the filter expression {expr:?}; the log writes nothing",
                        log.key
                    ));
                    return false;
                };
                f.token.set(Some(t));
                t
            }
        };
        match hostcalls::call_foreign_function("expr_evaluate", Some(&token.to_le_bytes())) {
            Ok(Some(b)) => b.as_slice() == [1],
            _ => false,
        }
    }
}

impl Phase for AccessLogPhase {
    fn name(&self) -> &'static str {
        "access_log"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(AccessLogRequest { phase: self })
    }

    /// Alone in its filter it reads no request header before `log`.
    fn header_reads(&self) -> HeaderReads {
        HeaderReads::OneByOne
    }

    fn is_network(&self) -> bool {
        self.tcp
    }

    fn stream_context(&self, context_id: u32) -> Option<Box<dyn proxy_wasm::traits::StreamContext>> {
        let phase = self.me.upgrade()?;
        Some(Box::new(AccessLogTcp { phase, context_id, logged: false }))
    }
}

struct AccessLogRequest {
    phase: Rc<AccessLogPhase>,
}

/// One request's values for one log.
struct Values<'a> {
    /// Every log's attributes, then filter state ([`Reads`]).
    attrs: &'a [Option<Bytes>],
    /// This log's index into `attrs`.
    index: &'a [usize],
    request: &'a RawMap,
    response: &'a [(String, Option<Bytes>)],
    trailers: &'a [(String, Option<Bytes>)],
    /// A TCP connection's duration so far (ns), for `%DURATION%`.
    elapsed: Option<i64>,
    /// The ids of the request's span, handed over by the tracing phase of the same chain.
    span: Option<wasmesh_accesslog::otlp::SpanIds>,
    /// A TCP connection's log (`%RESPONSE_FLAGS%` in `tcp_proxy`'s order), whether or not its
    /// start time could be read.
    tcp: bool,
}

fn find<'a>(list: &'a [(String, Option<Bytes>)], name: &str) -> Option<&'a [u8]> {
    list.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
}

impl Source for Values<'_> {
    fn attribute(&self, i: usize) -> Option<&[u8]> {
        self.attrs.get(*self.index.get(i)?)?.as_deref()
    }
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.request.get(name.as_bytes())
    }
    fn response_header(&self, name: &str) -> Option<&[u8]> {
        find(self.response, name)
    }
    fn response_trailer(&self, name: &str) -> Option<&[u8]> {
        find(self.trailers, name)
    }
    fn elapsed_ns(&self) -> Option<i64> {
        self.elapsed
    }
    fn span_ids(&self) -> Option<wasmesh_accesslog::otlp::SpanIds> {
        self.span
    }
    fn is_tcp(&self) -> bool {
        self.tcp
    }
}

impl PhaseRequest for AccessLogRequest {
    fn log(&mut self, s: &Stream) {
        self.phase.write(s, true);
    }
}

impl AccessLogPhase {
    /// Renders and writes the line of every log that takes this request (connection);
    /// `http`: request headers and response headers/trailers exist (a TCP connection has none:
    /// `%REQ(...)%`, `%RESP(...)%` print `-` there, as in Envoy).
    fn write(&self, s: &Stream, http: bool) {
        let p = self;
        let taking: Vec<usize> = (0..p.logs.len()).filter(|i| p.passes(*i)).collect();
        if taking.is_empty() {
            return;
        }
        let r = &p.reads;
        let mut paths: Vec<&[&str]> = r.attributes.iter().map(Vec::as_slice).collect();
        // A connection has no `request.duration` while it is being logged; Envoy's `%DURATION%`
        // is then `now - start`: read the start with the rest.
        if !http {
            paths.push(&["request", "time"]);
        }
        let mut attrs = s.properties(&paths);
        let elapsed = if http {
            None
        } else {
            let start =
                attrs.pop().flatten().and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map(i64::from_le_bytes);
            let now = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .and_then(|d| i64::try_from(d.as_nanos()).ok());
            start.zip(now).map(|(s, n)| n - s)
        };
        attrs.extend(r.filter_state.iter().map(|k| s.filter_state(k)));
        let formats = || taking.iter().filter_map(|i| p.logs.get(*i)).map(|l| &l.format);
        // The span's ids, as Envoy's OpenTelemetry logger takes the active span's: handed over
        // in memory by a tracing phase of this chain (none in a filter of its own, or on TCP).
        let span = if http && formats().any(|f| f.is_otel()) {
            s.kept_filter_state(wasmesh_handover::TRACE_SPAN)
                .and_then(|b| wasmesh_handover::SpanIds::decode(&b))
                .map(|ids| (ids.trace_id, ids.span_id))
        } else {
            None
        };
        // The request headers as Envoy's loggers see them (after every filter's changes).
        let request = if http && formats().any(|f| f.needs_request_headers()) {
            wasmesh_proxy::header_map::read_request_headers().unwrap_or_default()
        } else {
            RawMap::default()
        };
        let (response, trailers) = if http {
            (
                read_headers(MapType::HttpResponseHeaders, &r.response_headers),
                read_headers(MapType::HttpResponseTrailers, &r.trailers),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        for i in taking {
            let (Some(log), Some(index)) = (p.logs.get(i), r.index.get(i)) else { continue };
            let values = Values {
                attrs: &attrs,
                index,
                request: &request,
                response: &response,
                trailers: &trailers,
                elapsed,
                span,
                tcp: !http,
            };
            let line = log.format.render(&values);
            if log.export.is_some() {
                if let Some(x) = &p.export {
                    x.push(i, line);
                }
                continue;
            }
            if hostcalls::set_property(vec![log.key.as_str()], Some(&line)).is_err() {
                wasmesh_proxy::log_warn(&format!("wasmesh access log: {}: Envoy refused the line", log.key));
            }
        }
    }
}

/// The access log of a TCP connection (a network filter; configuration `"tcp": true`): the
/// same formats, rendered once per connection when Envoy logs it (`on_log`, at close) and
/// written to filter state, where the file logger wasmeshctl puts on the `tcp_proxy` prints it,
/// or (an `otel` log) queued for the export phase, which runs beside this network phase in the
/// same root ([`wasmesh_proxy::phase::Phase::is_network`]: only the first phase makes contexts).
struct AccessLogTcp {
    phase: Rc<AccessLogPhase>,
    context_id: u32,
    logged: bool,
}

impl proxy_wasm::traits::Context for AccessLogTcp {}

impl proxy_wasm::traits::StreamContext for AccessLogTcp {
    fn on_log(&mut self) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
        let s = Stream::new(self.context_id, HeaderReads::OneByOne);
        self.phase.write(&s, false);
    }
}
