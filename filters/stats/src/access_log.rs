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
//! Hostcalls per logged request: one batch of the attributes every log needs
//! ([`Stream::properties`], one `expr_evaluate` for three or more), the request header map once
//! when a format prints request headers, one read per response header or trailer printed, one
//! `expr_evaluate` per log with a filter, one `set_property` per line. Telemetry fails open:
//! nothing here changes or stops a request.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{Bytes, MapType};
use std::cell::Cell;
use std::rc::Rc;
use wasmesh_accesslog::config::Log;
use wasmesh_accesslog::Source;
use wasmesh_proxy::phase::{ChainRoot, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};

pub const ROOT_ID: &str = "wasmesh.access_log";

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh access log", build))
}

pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let logs = wasmesh_accesslog::config::parse(config)?;
    let mut paths: Vec<Vec<String>> = Vec::new();
    let mut offsets = Vec::with_capacity(logs.len());
    for l in &logs {
        offsets.push(paths.len());
        paths.extend(l.format.attribute_paths().iter().map(|p| p.iter().map(|s| s.to_string()).collect()));
    }
    wasmesh_proxy::log_info(&format!(
        "wasmesh access log: {} log(s): {}",
        logs.len(),
        logs.iter().map(|l| l.key.as_str()).collect::<Vec<_>>().join(", ")
    ));
    let filters = logs.iter().map(|_| Filter::default()).collect();
    let export = crate::access_log_export::build(&logs);
    let phase: Rc<dyn Phase> = Rc::new(AccessLogPhase { logs, paths, offsets, filters, export: export.clone() });
    Ok(match export {
        Some(x) => vec![phase, x],
        None => vec![phase],
    })
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
    /// Every log's attribute paths, concatenated (read in one batch).
    paths: Vec<Vec<String>>,
    /// Where each log's paths start in `paths`.
    offsets: Vec<usize>,
    filters: Vec<Filter>,
    /// Where the records of `envoyOtelAls` logs go (README "OpenTelemetry access-log export").
    export: Option<Rc<crate::access_log_export::ExportPhase>>,
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
}

struct AccessLogRequest {
    phase: Rc<AccessLogPhase>,
}

/// One request's values for one log.
struct Values<'a> {
    attrs: &'a [Option<Bytes>],
    offset: usize,
    request: &'a [(String, Bytes)],
    response: &'a [(String, Option<Bytes>)],
    trailers: &'a [(String, Option<Bytes>)],
}

fn find<'a>(list: &'a [(String, Option<Bytes>)], name: &str) -> Option<&'a [u8]> {
    list.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
}

impl Source for Values<'_> {
    fn attribute(&self, i: usize) -> Option<&[u8]> {
        self.attrs.get(self.offset + i)?.as_deref()
    }
    fn request_header(&self, name: &str) -> Option<&[u8]> {
        self.request.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
    fn response_header(&self, name: &str) -> Option<&[u8]> {
        find(self.response, name)
    }
    fn response_trailer(&self, name: &str) -> Option<&[u8]> {
        find(self.trailers, name)
    }
}

impl PhaseRequest for AccessLogRequest {
    fn log(&mut self, s: &Stream) {
        let p = &self.phase;
        let taking: Vec<usize> = (0..p.logs.len()).filter(|i| p.passes(*i)).collect();
        if taking.is_empty() {
            return;
        }
        let owned: Vec<Vec<&str>> = p.paths.iter().map(|v| v.iter().map(String::as_str).collect()).collect();
        let paths: Vec<&[&str]> = owned.iter().map(Vec::as_slice).collect();
        let attrs = s.properties(&paths);
        let formats = || taking.iter().filter_map(|i| p.logs.get(*i)).map(|l| &l.format);
        // The request headers as Envoy's loggers see them (after every filter's changes).
        let request = if formats().any(|f| f.needs_request_headers()) {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut response: Vec<(String, Option<Bytes>)> = Vec::new();
        let mut trailers: Vec<(String, Option<Bytes>)> = Vec::new();
        for f in formats() {
            for h in f.response_headers() {
                if !response.iter().any(|(n, _)| n == h) {
                    let v = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, h).ok().flatten();
                    response.push((h.clone(), v));
                }
            }
            for h in f.trailers() {
                if !trailers.iter().any(|(n, _)| n == h) {
                    let v = hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, h).ok().flatten();
                    trailers.push((h.clone(), v));
                }
            }
        }
        for i in taking {
            let (Some(log), Some(offset)) = (p.logs.get(i), p.offsets.get(i)) else { continue };
            let values =
                Values { attrs: &attrs, offset: *offset, request: &request, response: &response, trailers: &trailers };
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
