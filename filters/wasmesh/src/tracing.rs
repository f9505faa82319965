//! `wasmesh.tracing`: distributed tracing as an Istio proxy does it (the observability family,
//! beside `wasmesh.stats`). All decisions are in `wasmesh-trace`; this file reads headers and
//! attributes and makes the hostcalls.
//!
//! Per request:
//! - request headers: reads the incoming context (W3C first for an OpenTelemetry provider, B3
//!   first for Zipkin), keeps `x-request-id` (generates a UUIDv4 only when Envoy did not), takes
//!   the sampling decision (an incoming sampled flag wins; otherwise Envoy's decision on the
//!   request id at `randomSamplingPercentage`), makes the proxy's span a child of the caller's and
//!   sends the child context upstream in both formats (unless `disableContextPropagation`);
//! - route decorators as Envoy's connection manager applies them ([`wasmesh_trace::decorator`]):
//!   the span is named by the matched route's operation (handed over by the wasmesh router, or
//!   the inbound route's from the configuration); server side, a received
//!   `x-envoy-decorator-operation` renames it and is removed, else the operation goes back in the
//!   response; client side, the router sends it upstream and a response carrying it renames the
//!   span and loses it;
//! - with `spawnUpstreamSpan` (istiod's gateways), the span is the downstream one (SERVER) and a
//!   child span id is made for the upstream request: the upstream receives the child's context,
//!   and at log the child is reported as Envoy's router reports its upstream span;
//! - log: for a sampled request (unless `disableSpanReporting`), ends the span with Envoy's and
//!   Istio's tags and queues it in the exporter. Nothing else happens on the request path.
//!
//! The root's tick sends batches to the collector (`dispatch_http_call` from the root, one in
//! flight, retried with backoff); a dead or slow collector never delays or fails a request, and
//! what the exporter drops or gives up is counted in `wasmesh.tracing.spans_{exported,dropped,failed}`.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::MapType;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;
use wasmesh_proxy::metrics::Counter;
use wasmesh_proxy::phase::{ChainRoot, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::Stream;
use wasmesh_proxy::{decode_u64, ListenerDirection};
use wasmesh_trace::config::{Checked, Format, TagSource};
use wasmesh_trace::context::{extract, Outgoing, Prefer};
use wasmesh_trace::decorator;
use wasmesh_trace::export::{Counts, Exporter};
use wasmesh_trace::span::{default_name, http_url, is_error, split_address, Kind, Span, Upstream};
use wasmesh_trace::{request_id, Ids};

/// The root id of the tracing phase.
pub const ROOT_ID: &str = "wasmesh.tracing";

pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh tracing", build))
}

pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let cfg = wasmesh_trace::config::parse(config, |n| std::env::var(n).ok())?;
    let node = wasmesh_proxy::node_metadata();
    let label = |keys: &[&str]| {
        node.labels.as_ref().and_then(|l| keys.iter().find_map(|k| l.get(*k).filter(|v| !v.is_empty()).cloned()))
    };
    let canonical_service = label(&["service.istio.io/canonical-name", "app.kubernetes.io/name", "app"])
        .or_else(|| node.workload_name.clone())
        .unwrap_or_else(|| "unknown".into());
    let canonical_revision = label(&["service.istio.io/canonical-revision", "app.kubernetes.io/version", "version"])
        .unwrap_or_else(|| "latest".into());
    let namespace = node.namespace.clone().unwrap_or_else(|| "default".into());
    let service_name = cfg.service_name.clone().unwrap_or_else(|| format!("{canonical_service}.{namespace}"));
    let istio_tags = vec![
        ("istio.canonical_revision".to_string(), canonical_revision),
        ("istio.canonical_service".to_string(), canonical_service),
        ("istio.cluster_id".to_string(), node.cluster_id.clone().unwrap_or_else(|| "unknown".into())),
        ("istio.mesh_id".to_string(), cfg.mesh_id.clone()),
        ("istio.namespace".to_string(), namespace),
    ];
    let settings = cfg.settings;
    Ok(vec![Rc::new(TracingPhase {
        ids: RefCell::new(Ids::new(wasmesh_proxy::random_seed())),
        exporter: RefCell::new(Exporter::new(settings)),
        token: Cell::new(None),
        node_id: node.id.clone().unwrap_or_default(),
        service_name,
        istio_tags,
        cfg,
        counters: Counters::new(),
        reported: Cell::new(Counts::default()),
    })])
}

struct Counters {
    exported: Counter,
    dropped: Counter,
    failed: Counter,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            exported: Counter::new("tracing", "spans_exported"),
            dropped: Counter::new("tracing", "spans_dropped"),
            failed: Counter::new("tracing", "spans_failed"),
        }
    }
}

struct TracingPhase {
    cfg: Checked,
    ids: RefCell<Ids>,
    exporter: RefCell<Exporter<Span>>,
    /// The export call in flight.
    token: Cell<Option<u32>>,
    node_id: String,
    service_name: String,
    istio_tags: Vec<(String, String)>,
    counters: Counters,
    /// Counts already handed to the counters.
    reported: Cell<Counts>,
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl TracingPhase {
    /// Sends the next batch when one is due (`force`: whatever is queued, at VM stop).
    fn pump(&self, force: bool) {
        let Some(cluster) = self.cfg.cluster.as_deref() else { return };
        if self.token.get().is_some() {
            return;
        }
        let now = now_ms();
        let Ok(mut exporter) = self.exporter.try_borrow_mut() else { return };
        let encode = |spans: &[Span]| match self.cfg.format {
            Format::Otlp => wasmesh_trace::otlp::encode_traces(&self.service_name, &[], spans),
            Format::Zipkin => wasmesh_trace::zipkin::encode_spans(&self.service_name, None, spans),
        };
        let Some(payload) = exporter.poll(now, force, encode) else { return };
        let content_type = match self.cfg.format {
            Format::Otlp => "application/x-protobuf",
            Format::Zipkin => "application/json",
        };
        let headers = vec![
            (":method", "POST"),
            (":path", self.cfg.path.as_str()),
            (":authority", self.cfg.authority.as_str()),
            ("content-type", content_type),
        ];
        let sent = hostcalls::dispatch_http_call(
            cluster,
            headers,
            Some(&payload.body),
            vec![],
            Duration::from_millis(self.cfg.timeout_ms),
        );
        match sent {
            Ok(token) => self.token.set(Some(token)),
            Err(e) => {
                wasmesh_proxy::log_warn(&format!(
                    "wasmesh tracing: export to cluster {cluster:?} not sent: {}",
                    wasmesh_proxy::status_text(e)
                ));
                exporter.not_sent(now);
            }
        }
    }

    /// Hands the exporter's counts since the last call to Envoy's counters.
    fn report_counts(&self) {
        let Ok(exporter) = self.exporter.try_borrow() else { return };
        let now = exporter.counts();
        let before = self.reported.replace(now);
        self.counters.exported.add(now.exported.saturating_sub(before.exported));
        self.counters.dropped.add(now.dropped.saturating_sub(before.dropped));
        self.counters.failed.add(now.failed.saturating_sub(before.failed));
        self.counters.exported.flush();
        self.counters.dropped.flush();
        self.counters.failed.flush();
    }
}

impl Phase for TracingPhase {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(TracingRequest { phase: self, span: None })
    }

    fn tick_period(&self) -> Option<Duration> {
        self.cfg.cluster.as_ref()?;
        Some(Duration::from_millis(self.cfg.settings.flush_period_ms.min(1000)))
    }

    fn tick(&self) {
        self.pump(false);
        self.report_counts();
    }

    fn root_http_call_response(&self, token_id: u32, _num_headers: usize, _body_size: usize) -> bool {
        if self.token.get() != Some(token_id) {
            return false;
        }
        self.token.set(None);
        let status = hostcalls::get_map_value(MapType::HttpCallResponseHeaders, ":status").ok().flatten();
        let ok = status.as_deref().is_some_and(|s| s.starts_with('2'));
        if !ok {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh tracing: the collector answered {} to an export",
                status.as_deref().unwrap_or("nothing (reset)")
            ));
        }
        if let Ok(mut e) = self.exporter.try_borrow_mut() {
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

/// The span of one request, from its request headers to its log.
struct Started {
    out: Outgoing,
    /// The upstream span's context (what the upstream received), with `spawnUpstreamSpan`.
    upstream: Option<Outgoing>,
    kind: Kind,
    /// A received `x-envoy-decorator-operation` named the span.
    renamed: Option<String>,
}

struct TracingRequest {
    phase: Rc<TracingPhase>,
    span: Option<Started>,
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.and_then(|b| String::from_utf8(b).ok())
}

impl TracingPhase {
    /// The matched route's operation: handed over by the router, or the configured one (a
    /// sidecar's inbound route).
    fn route_operation(&self, s: &Stream) -> Option<String> {
        if self.cfg.route_operations {
            let bytes = s.filter_state(wasmesh_handover::ROUTE_DECISION)?;
            return wasmesh_handover::decode::<wasmesh_handover::RouteDecision>(&bytes)?.operation;
        }
        self.cfg.operation.clone()
    }

    /// Route decorators apply as on Envoy's egress listener (a gateway's, a sidecar's outbound),
    /// else as on its ingress one.
    fn egress(&self, kind: Kind) -> bool {
        self.cfg.egress.unwrap_or(matches!(kind, Kind::Client))
    }

    fn kind(&self) -> Kind {
        match self.cfg.server {
            Some(true) => Kind::Server,
            Some(false) => Kind::Client,
            // Envoy's OpenTelemetry tracer: a downstream span with an upstream span under it is
            // SERVER whatever the direction.
            None if self.cfg.spawn_upstream => Kind::Server,
            None => match wasmesh_proxy::listener_direction() {
                Some(ListenerDirection::Inbound) => Kind::Server,
                _ => Kind::Client,
            },
        }
    }
}

impl PhaseRequest for TracingRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> wasmesh_proxy::phase::Flow {
        let p = &self.phase;
        let prefer = match p.cfg.format {
            Format::Otlp => Prefer::W3c,
            Format::Zipkin => Prefer::B3,
        };
        let kind = p.kind();
        let egress = p.egress(kind);
        let (incoming, request_id, decorator) = s.with_request_headers(|h| {
            let Ok(h) = h else { return (Default::default(), None, None) };
            let get = |n: &str| h.get(n).and_then(|v| std::str::from_utf8(v).ok());
            // Ingress, Envoy takes the span's name from the caller's decorator header.
            let decorator = (!egress).then(|| decorator::received(h.get(decorator::HEADER))).flatten();
            (extract(get, prefer), get("x-request-id").map(str::to_string), decorator)
        });
        let renamed = match decorator {
            Some((_, renamed)) => {
                s.remove_request_header(decorator::HEADER);
                renamed
            }
            None => None,
        };
        let Ok(mut ids) = p.ids.try_borrow_mut() else { return wasmesh_proxy::phase::Flow::Continue };
        let request_id = match request_id {
            Some(id) => id,
            None => {
                let id = request_id::uuid_v4(&mut ids);
                s.set_request_header("x-request-id", id.as_bytes());
                id
            }
        };
        let sampled =
            incoming.sampled.unwrap_or_else(|| request_id::sample(Some(&request_id), p.cfg.percent, &mut ids));
        // Envoy packs a "traced" reason into the id (Istio keeps `pack_trace_reason`), so the
        // proxies behind this one, and the access logs, see the decision.
        if sampled {
            if let Some(packed) = request_id::pack_sampled(&request_id) {
                s.set_request_header("x-request-id", packed.as_bytes());
            }
        }
        let (trace_id, trace_id_128, parent_span_id) = match &incoming.parent {
            Some(parent) => (parent.trace_id, parent.trace_id_128, Some(parent.span_id)),
            None => (ids.trace_id(), true, None),
        };
        let out = Outgoing {
            trace_id,
            trace_id_128,
            span_id: ids.span_id(),
            parent_span_id,
            sampled,
            tracestate: incoming.tracestate,
            b3_single: incoming.had_b3_single,
        };
        let upstream = p.cfg.spawn_upstream.then(|| out.child(ids.span_id()));
        drop(ids);
        if p.cfg.propagate {
            let (set, remove) = upstream.as_ref().unwrap_or(&out).headers();
            for name in remove {
                if s.request_header(name).ok().flatten().is_some() {
                    s.remove_request_header(name);
                }
            }
            for (name, value) in set {
                s.set_request_header(name, value.as_bytes());
            }
        }
        // The access-log phase of this chain puts the span's ids in its OTLP records.
        s.keep_filter_state(
            wasmesh_handover::TRACE_SPAN,
            &wasmesh_handover::SpanIds::new(out.trace_id, out.span_id).encode(),
        );
        self.span = Some(Started { out, upstream, kind, renamed });
        wasmesh_proxy::phase::Flow::Continue
    }

    fn response_headers(&mut self, s: &Stream, _end_of_stream: bool) -> wasmesh_proxy::phase::Flow {
        let Some(started) = self.span.as_mut() else { return wasmesh_proxy::phase::Flow::Continue };
        match self.phase.egress(started.kind) {
            false => {
                let route = self.phase.route_operation(s);
                if let Some(op) = decorator::response_operation(started.renamed.is_some(), route.as_deref()) {
                    s.set_response_header(decorator::HEADER, op.as_bytes());
                }
            }
            true => {
                if let Some((_, renamed)) = decorator::received(s.response_header(decorator::HEADER).as_deref()) {
                    s.remove_response_header(decorator::HEADER);
                    if renamed.is_some() {
                        started.renamed = renamed;
                    }
                }
            }
        }
        wasmesh_proxy::phase::Flow::Continue
    }

    fn log(&mut self, s: &Stream) {
        let p = &self.phase;
        let Some(started) = self.span.take() else { return };
        if !started.out.sampled || !p.cfg.report {
            return;
        }
        let header = |n: &str| text(s.request_header(n).ok().flatten());
        // Envoy's gRPC tags only for gRPC requests (the attribute reads 2 for any other): the
        // status is read only for them.
        let grpc = header("content-type").is_some_and(|c| c.starts_with("application/grpc"));
        const ATTRIBUTES: [&[&str]; 10] = [
            &["request", "time"],
            &["request", "duration"],
            &["response", "code"],
            &["response", "flags"],
            &["xds", "cluster_name"],
            &["source", "address"],
            &["request", "protocol"],
            &["request", "size"],
            &["response", "size"],
            &["response", "grpc_status"],
        ];
        // The upstream span's: its host (absent: no upstream request was made), the upstream's
        // own latency, the attempts, and whether the response came from the upstream.
        const UPSTREAM_ATTRIBUTES: [&[&str]; 4] = [
            &["upstream", "address"],
            &["response", "backend_latency"],
            &["upstream", "request_attempt_count"],
            &["response", "code_details"],
        ];
        let spawn = started.upstream.is_some();
        let mut paths: Vec<&[&str]> = ATTRIBUTES[..9].to_vec();
        if grpc {
            paths.push(ATTRIBUTES[9]);
        }
        let up = paths.len();
        if spawn {
            paths.extend(UPSTREAM_ATTRIBUTES);
        }
        let props = s.properties(&paths);
        let prop = |i: usize| props.get(i).cloned().flatten();
        let start = prop(0).as_deref().and_then(decode_u64).unwrap_or(0);
        let duration = prop(1).as_deref().and_then(decode_u64).unwrap_or(0);
        let status = prop(2).as_deref().and_then(decode_u64).map(|c| c as u32).filter(|c| *c != 0);
        let flags = prop(3).as_deref().and_then(decode_u64).unwrap_or(0);
        let cluster = text(prop(4));
        let peer = text(prop(5));
        let protocol = text(prop(6));
        let request_size = prop(7).as_deref().and_then(decode_u64).unwrap_or(0);
        let response_size = prop(8).as_deref().and_then(decode_u64).unwrap_or(0);
        let grpc_status = prop(9).as_deref().and_then(decode_u64).map(|c| c as u32).filter(|_| grpc);
        let upstream_address = if spawn { text(prop(up)) } else { None };
        let host = header(":authority").unwrap_or_default();
        let route = p.route_operation(s);
        let name = decorator::span_name(started.renamed, route.as_deref(), || default_name(started.kind, &host));
        let end = start.saturating_add(if duration > 0 {
            duration
        } else {
            now_ms().saturating_mul(1_000_000).saturating_sub(start)
        });
        let mut span = Span::new(&started.out, name, started.kind, start, end);
        // The custom tags (Istio's too) apply to the upstream span as to the downstream one: the
        // upstream request's stream info has the same request headers.
        let mut upstream_tags: Vec<(String, String)> = Vec::new();
        let scheme = header("x-forwarded-proto").or_else(|| header(":scheme")).unwrap_or_else(|| "http".into());
        let path = header(":path").unwrap_or_default();
        span.tag("component", "proxy");
        span.tag("node_id", p.node_id.clone());
        span.tag("zone", "");
        span.tag("guid:x-request-id", header("x-request-id").unwrap_or_default());
        span.tag("http.url", http_url(&scheme, &host, &path));
        span.tag("http.method", header(":method").unwrap_or_default());
        span.tag("downstream_cluster", header("x-envoy-downstream-service-cluster").unwrap_or_else(|| "-".into()));
        span.tag("user_agent", header("user-agent").unwrap_or_else(|| "-".into()));
        let protocol = protocol.unwrap_or_default();
        span.tag("http.protocol", protocol.clone());
        if let Some(peer) = &peer {
            // Envoy's `peer.address` is the downstream's IP without the port.
            span.peer = split_address(peer);
            let ip = span.peer.as_ref().map(|(ip, _)| ip.clone()).unwrap_or_else(|| peer.clone());
            span.tag("peer.address", ip);
        }
        for (k, v) in &p.istio_tags {
            span.tag(k.clone(), v.clone());
            if spawn {
                upstream_tags.push((k.clone(), v.clone()));
            }
        }
        for (k, src) in &p.cfg.tags {
            let v = match src {
                TagSource::Literal(v) => Some(v.clone()),
                TagSource::Header(h, default) => header(h).or_else(|| default.clone()),
            };
            if let Some(v) = v {
                if spawn {
                    upstream_tags.push((k.clone(), v.clone()));
                }
                span.tag(k.clone(), v);
            }
        }
        span.tag("request_size", request_size.to_string());
        span.tag("response_size", response_size.to_string());
        span.tag("http.status_code", status.map(|c| c.to_string()).unwrap_or_else(|| "0".into()));
        span.tag("response_flags", wasmesh_trace::flags::short_http(flags).into_owned());
        if let Some(c) = &cluster {
            span.tag("upstream_cluster", c.clone());
            span.tag("upstream_cluster.name", c.clone());
        }
        if let Some(g) = grpc_status {
            span.tag("grpc.status_code", g.to_string());
        }
        if is_error(status, grpc_status) {
            span.error = true;
            span.tag("error", "true");
        }
        let flags = span.get("response_flags").unwrap_or("-").to_string();
        let Ok(mut e) = p.exporter.try_borrow_mut() else { return };
        e.push(span);
        // Envoy's router makes an upstream span only for an upstream request (a host was
        // chosen): without one (no route, a local reply, no healthy host) there is none.
        if let (Some(child), Some(address), Some(cluster)) = (&started.upstream, &upstream_address, &cluster) {
            // The upstream's own time, ending with the request: from its first byte sent to its
            // last byte received (`response.backend_latency`), else the whole request.
            let backend = prop(up + 1).as_deref().and_then(decode_u64).filter(|d| *d > 0);
            let attempts = prop(up + 2).as_deref().and_then(decode_u64).unwrap_or(1);
            let details = text(prop(up + 3));
            let via_upstream = details.as_deref().is_some_and(|d| d.starts_with("via_upstream"));
            let u = Upstream {
                cluster,
                address: Some(address),
                protocol: p.cfg.upstream_protocol(cluster, &protocol),
                status: status.filter(|_| via_upstream),
                grpc_status: grpc_status.filter(|_| via_upstream),
                flags: &flags,
                details: details.as_deref(),
                attempts,
                start_unix_nanos: backend.map_or(start, |b| end.saturating_sub(b).max(start)),
                end_unix_nanos: end,
            };
            e.push(Span::upstream(child, &u, &upstream_tags));
        }
    }
}
