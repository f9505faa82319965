//! `envoyOtelAls`: the access-log phase's records exported to an OpenTelemetry collector over
//! OTLP/gRPC (`opentelemetry.proto.collector.logs.v1.LogsService/Export`), as Envoy's
//! `envoy.access_loggers.open_telemetry` configured by istiod sends them.
//!
//! A phase of its own beside the access-log phase (same root): the access-log phase renders a
//! log whose configuration has `otel` (an HTTP request's, or a TCP connection's at close when
//! the access-log phase is the network filter) into one encoded `LogRecord` and hands it to
//! [`ExportPhase::push`] (a queue push, nothing else on the request path). The root's tick sends
//! each sink's batch with `dispatch_grpc_call` from the root (the batching exporter tracing uses,
//! `wasmesh_trace::export::Exporter`: bounded queue, batches, one call in flight per sink, retries
//! with exponential backoff). A dead or slow collector never delays or fails a request; what is
//! dropped (queue full) or given up is counted in `wasmesh.access_log.records_{exported,dropped,failed}`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use wasmesh_accesslog::config::{Export, Log};
use wasmesh_accesslog::otlp;
use wasmesh_proxy::metrics::Counter;
use wasmesh_proxy::phase::{Phase, PhaseRequest};
use wasmesh_trace::export::{Counts, Exporter, Settings};

/// One collector: the records of one log.
struct Sink {
    /// The log's index in the access-log phase.
    log: usize,
    key: String,
    export: Export,
    grpc_service: String,
    resource: Vec<otlp::KeyValue>,
    exporter: RefCell<Exporter<Vec<u8>>>,
    /// The export call in flight.
    token: Cell<Option<u32>>,
}

pub struct ExportPhase {
    sinks: Vec<Sink>,
    exported: Counter,
    dropped: Counter,
    failed: Counter,
    /// Counts already handed to the counters (summed over the sinks).
    reported: Cell<Counts>,
}

/// The export phase for the logs that export (`None`: none does).
pub fn build(logs: &[Log]) -> Option<Rc<ExportPhase>> {
    let sinks: Vec<Sink> = logs
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let e = l.export.clone()?;
            Some(Sink {
                log: i,
                key: l.key.clone(),
                grpc_service: otlp::grpc_service(&e.cluster, &e.authority),
                resource: e.resource_attributes.iter().map(|(k, v)| otlp::string_kv(k, v)).collect(),
                exporter: RefCell::new(Exporter::new(Settings {
                    max_queue: e.max_queue.unwrap_or(Settings::DEFAULT.max_queue),
                    ..Settings::DEFAULT
                })),
                token: Cell::new(None),
                export: e,
            })
        })
        .collect();
    if sinks.is_empty() {
        return None;
    }
    Some(Rc::new(ExportPhase {
        sinks,
        exported: Counter::new("access_log", "records_exported"),
        dropped: Counter::new("access_log", "records_dropped"),
        failed: Counter::new("access_log", "records_failed"),
        reported: Cell::new(Counts::default()),
    }))
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ExportPhase {
    /// Queues log `log`'s encoded record (a full queue drops it, counted).
    pub fn push(&self, log: usize, record: Vec<u8>) {
        if let Some(s) = self.sinks.iter().find(|s| s.log == log) {
            if let Ok(mut e) = s.exporter.try_borrow_mut() {
                e.push(record);
            }
        }
    }

    /// Sends each sink's next batch when one is due (`force`: whatever is queued, at VM stop).
    fn pump(&self, force: bool) {
        let now = now_ms();
        for s in &self.sinks {
            if s.token.get().is_some() {
                continue;
            }
            let Ok(mut exporter) = s.exporter.try_borrow_mut() else { continue };
            let encode = |records: &[Vec<u8>]| otlp::export_request(&s.resource, records);
            let Some(payload) = exporter.poll(now, force, encode) else { continue };
            let sent = hostcalls::dispatch_grpc_call(
                &s.grpc_service,
                otlp::SERVICE,
                otlp::METHOD,
                Vec::new(),
                Some(&payload.body),
                Duration::from_millis(s.export.timeout_ms),
            );
            match sent {
                Ok(token) => s.token.set(Some(token)),
                Err(e) => {
                    wasmesh_proxy::log_warn(&format!(
                        "wasmesh access log: {}: export to cluster {:?} not sent: {}",
                        s.key,
                        s.export.cluster,
                        wasmesh_proxy::status_text(e)
                    ));
                    exporter.not_sent(now);
                }
            }
        }
    }

    /// Hands the exporters' counts since the last call to Envoy's counters.
    fn report_counts(&self) {
        let mut now = Counts::default();
        for s in &self.sinks {
            let Ok(e) = s.exporter.try_borrow() else { return };
            let c = e.counts();
            now.exported += c.exported;
            now.dropped += c.dropped;
            now.failed += c.failed;
        }
        let before = self.reported.replace(now);
        self.exported.add(now.exported.saturating_sub(before.exported));
        self.dropped.add(now.dropped.saturating_sub(before.dropped));
        self.failed.add(now.failed.saturating_sub(before.failed));
        self.exported.flush();
        self.dropped.flush();
        self.failed.flush();
    }
}

/// The export phase does nothing per request.
struct Idle;

impl PhaseRequest for Idle {}

impl Phase for ExportPhase {
    fn name(&self) -> &'static str {
        "access_log_export"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(Idle)
    }

    fn tick_period(&self) -> Option<Duration> {
        Some(Duration::from_millis(Settings::DEFAULT.flush_period_ms.min(1000)))
    }

    fn tick(&self) {
        self.pump(false);
        self.report_counts();
    }

    fn root_grpc_call_response(&self, token_id: u32, status_code: u32) -> bool {
        let Some(s) = self.sinks.iter().find(|s| s.token.get() == Some(token_id)) else { return false };
        s.token.set(None);
        let ok = status_code == 0;
        if !ok {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh access log: {}: the collector answered gRPC status {status_code} to an export",
                s.key
            ));
        }
        if let Ok(mut e) = s.exporter.try_borrow_mut() {
            e.finished(ok, now_ms());
        }
        // A full queue goes out without waiting for the next tick.
        self.pump(false);
        true
    }

    fn done(&self) {
        self.pump(true);
        self.report_counts();
    }
}
