//! wasmesh stats: Istio's standard metrics and peer metadata exchange in any Envoy.
//!
//! One module, two kinds of filter, chosen by the configuration's `protocol`:
//! * `http` (an HTTP filter): exchanges `x-envoy-peer-metadata` headers with the other sidecar,
//!   hands what it learnt to later filters when `publishPeer` is set (filter state
//!   `PEER_DOWNSTREAM` / `PEER_UPSTREAM`),
//!   and in `on_log` records `istio_requests_total`, `istio_request_duration_milliseconds`,
//!   `istio_request_bytes`, `istio_response_bytes` and, for gRPC, the message counters;
//! * `tcp` (a network filter): `istio_tcp_connections_opened_total`/`_closed_total`,
//!   `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`.
//!
//! All decisions are in `wasmesh-stats`; this file reads Envoy attributes and headers and calls
//! the hostcalls. Telemetry fails open: nothing here ever changes or stops a request, and nothing
//! read from the wire can make it panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, PeerType};
use std::cell::RefCell;
use std::rc::Rc;
use wasmesh_istio::{FilterConfig, Strictness};
use wasmesh_proxy::metrics;
use wasmesh_proxy::ListenerDirection;
use wasmesh_stats::exchange::{PreambleReader, Step};
use wasmesh_stats::grpc::{is_grpc_content_type, GrpcFrameCounter};
use wasmesh_stats::peer::{HEADER_METADATA, HEADER_METADATA_ID};
use wasmesh_stats::{
    CachedPeer, Direction, Facts, HttpMeasures, ListenerProtocol, Metric, MetricCache, MetricHost, MetricType,
    PeerCache, Protocol, ServiceCache, ServiceInfo, Stats, StatsConfig, TcpKey,
};

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(StatsRoot { listeners: None })
}

/// Per-VM state shared by every stream of one plugin.
struct Shared {
    stats: Stats,
    cache: RefCell<MetricCache>,
    peers: RefCell<PeerCache>,
    /// Cluster name → its Istio service (from cluster metadata or the cluster's name).
    services: RefCell<ServiceCache>,
    /// Scratch buffer for encoded tags.
    key: RefCell<String>,
}

impl Shared {
    fn service(&self, cluster: &str) -> Option<Rc<ServiceInfo>> {
        self.services.borrow_mut().get_or_insert_with(cluster, || {
            cluster_metadata_service().or_else(|| self.stats.service_for_cluster(cluster))
        })
    }
}

/// Istio's cluster metadata `filter_metadata.istio.services[0]` of the upstream cluster.
fn cluster_metadata_service() -> Option<ServiceInfo> {
    let get = |field: &str| {
        wasmesh_proxy::property_string(&["xds", "cluster_metadata", "filter_metadata", "istio", "services", "0", field])
    };
    let host = get("host").filter(|h| !h.is_empty())?;
    Some(ServiceInfo { name: get("name").unwrap_or_default(), namespace: get("namespace").unwrap_or_default(), host })
}

struct StatsRoot {
    listeners: Option<Listeners>,
}

/// The compiled configuration(s) of one plugin.
enum Listeners {
    /// The configuration names the direction (or the proxy is a gateway).
    Fixed(Rc<Shared>),
    /// A sidecar configured without `direction` (one configuration for all its listeners, as a
    /// WasmPlugin gives it): each stream takes its listener's `xds.listener_direction`, INBOUND
    /// reporting as destination and anything else as source, as Istio's stats filter does.
    ByListener { inbound: Rc<Shared>, outbound: Rc<Shared> },
}

impl Listeners {
    fn any(&self) -> &Rc<Shared> {
        match self {
            Listeners::Fixed(s) | Listeners::ByListener { inbound: s, .. } => s,
        }
    }

    /// The configuration for the stream being created (the root context's callback runs with
    /// the new stream as the effective context, so its listener's properties are readable).
    fn for_new_stream(&self) -> Rc<Shared> {
        match self {
            Listeners::Fixed(s) => s.clone(),
            Listeners::ByListener { inbound, outbound } => match wasmesh_proxy::listener_direction() {
                Some(ListenerDirection::Inbound) => inbound.clone(),
                _ => outbound.clone(),
            },
        }
    }
}

impl Context for StatsRoot {}

impl RootContext for StatsRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = wasmesh_proxy::plugin_configuration() else {
            wasmesh_proxy::log_error("wasmesh stats: no plugin configuration; expected the JSON wasmeshctl writes");
            return false;
        };
        match configure(&bytes) {
            Ok(listeners) => {
                self.listeners = Some(listeners);
                true
            }
            Err(e) => {
                wasmesh_proxy::log_error(&format!("wasmesh stats: configuration rejected: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.listeners.as_ref()?.for_new_stream();
        Some(Box::new(StatsHttp {
            shared,
            peer: None,
            request_had_mx: false,
            request_seen: false,
            external: false,
            grpc: false,
            request_frames: GrpcFrameCounter::default(),
            response_frames: GrpcFrameCounter::default(),
        }))
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        let shared = self.listeners.as_ref()?.for_new_stream();
        Some(Box::new(StatsTcp::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        match self.listeners.as_ref().map(|l| l.any().stats.protocol) {
            Some(ListenerProtocol::Tcp) => Some(ContextType::StreamContext),
            _ => Some(ContextType::HttpContext),
        }
    }
}

/// Compiles the configuration. Without a `workload` the proxy's identity comes from the Envoy
/// node metadata; telemetry fails open, so what the node does not say is reported `unknown`.
fn configure(bytes: &[u8]) -> Result<Listeners, String> {
    let mut cfg = StatsConfig::parse_json(bytes).map_err(|e| e.to_string())?;
    if wasmesh_proxy::complete_workload_from_node(&mut cfg).is_err() {
        // Telemetry fails open: take what the node does say and name what it lacks.
        let node = wasmesh_proxy::node_metadata();
        if let Err(missing) = node.workload(&cfg.mesh(), Strictness::Required) {
            wasmesh_proxy::log_warn(&format!(
                "wasmesh stats: reporting \"unknown\" for what the Envoy node lacks: {missing}"
            ));
        }
        cfg.set_workload(node.workload(&cfg.mesh(), Strictness::BestEffort)?);
    }
    let resources = cfg.parsed_resources().map_err(|e| e.to_string())?;
    let mut compiled = Vec::new();
    for direction in cfg.directions() {
        let stats = cfg.compile_for(direction, &resources).map_err(|e| e.to_string())?;
        wasmesh_proxy::log_info(&format!(
            "wasmesh stats: {:?} {:?} listener of {}/{}, reporter {}",
            stats.protocol,
            stats.direction,
            stats.local.namespace,
            stats.local.workload,
            stats.reporter.value()
        ));
        let cache = MetricCache::new(stats.max_label_sets);
        compiled.push(Rc::new(Shared {
            stats,
            cache: RefCell::new(cache),
            peers: RefCell::new(PeerCache::default()),
            services: RefCell::new(ServiceCache::default()),
            key: RefCell::new(String::with_capacity(2048)),
        }));
    }
    match compiled.as_slice() {
        [one] => Ok(Listeners::Fixed(one.clone())),
        [inbound, outbound] => Ok(Listeners::ByListener { inbound: inbound.clone(), outbound: outbound.clone() }),
        _ => Err("internal: unexpected set of directions".into()),
    }
}

/// Envoy's metric hostcalls, through the one metric helper of `wasmesh-proxy`.
struct Host;

impl MetricHost for Host {
    fn define(&mut self, ty: MetricType, name: &str) -> Option<u32> {
        let t = match ty {
            MetricType::Counter => proxy_wasm::types::MetricType::Counter,
            MetricType::Histogram => proxy_wasm::types::MetricType::Histogram,
        };
        metrics::define(t, name)
    }
    fn increment(&mut self, id: u32, by: u64) {
        metrics::increment(id, by);
    }
    fn record(&mut self, id: u32, value: u64) {
        metrics::record(id, value);
    }
}

fn prop_i64(path: &[&str]) -> Option<i64> {
    wasmesh_proxy::property_u64(path).map(|v| v as i64)
}

fn nonneg(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn response_header_value(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
}

/// Evaluates the Telemetry override expressions of this listener.
fn evaluate(stats: &Stats) -> Vec<Option<String>> {
    if stats.exprs_needed().is_empty() {
        return Vec::new();
    }
    stats.evaluate(|path| {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        wasmesh_proxy::property(&p)
    })
}

/// The upstream peer from the endpoint's metadata (Istio's client-side fallback).
fn endpoint_peer(shared: &Shared) -> Option<Rc<CachedPeer>> {
    let s = wasmesh_proxy::property_string(&["xds", "upstream_host_metadata", "filter_metadata", "istio", "workload"])?;
    shared.peers.borrow_mut().endpoint(&s)
}

/// (peer principal, local principal): the first URI SANs of the connection's certificates.
fn principals(direction: Direction) -> (String, String) {
    match direction {
        Direction::Inbound => {
            // Without a peer certificate this is one call that returns nothing (cheaper than
            // reading `connection.mtls` first).
            let peer = wasmesh_proxy::property_string(&["connection", "uri_san_peer_certificate"]).unwrap_or_default();
            if peer.is_empty() {
                return (peer, String::new());
            }
            let local =
                wasmesh_proxy::property_string(&["connection", "uri_san_local_certificate"]).unwrap_or_default();
            (peer, local)
        }
        Direction::Outbound | Direction::Gateway => {
            let peer = wasmesh_proxy::property_string(&["upstream", "uri_san_peer_certificate"]).unwrap_or_default();
            if peer.is_empty() {
                return (peer, String::new());
            }
            let local = wasmesh_proxy::property_string(&["upstream", "uri_san_local_certificate"]).unwrap_or_default();
            (peer, local)
        }
    }
}

struct StatsHttp {
    shared: Rc<Shared>,
    /// The other side's metadata: downstream (inbound) or upstream (outbound, gateway).
    peer: Option<Rc<CachedPeer>>,
    /// The request carried metadata-exchange headers (inbound answers only then, as Istio).
    request_had_mx: bool,
    request_seen: bool,
    /// Outbound to a host outside the mesh: no metadata exchange.
    external: bool,
    grpc: bool,
    request_frames: GrpcFrameCounter,
    response_frames: GrpcFrameCounter,
}

impl Context for StatsHttp {}

impl StatsHttp {
    fn inbound_request(&mut self) {
        if let Some(ct) = wasmesh_proxy::request_header("content-type") {
            self.grpc = is_grpc_content_type(&ct);
        }
        if !self.shared.stats.metadata_exchange {
            return;
        }
        let md = wasmesh_proxy::request_header(HEADER_METADATA);
        let id = wasmesh_proxy::request_header(HEADER_METADATA_ID);
        if md.is_some() || id.is_some() {
            // Never let the exchange headers reach the application.
            self.request_had_mx = true;
            wasmesh_proxy::remove_request_header(HEADER_METADATA);
            wasmesh_proxy::remove_request_header(HEADER_METADATA_ID);
        }
        if let Some(md) = md {
            self.peer = self.shared.peers.borrow_mut().get_or_decode(&md, id.as_deref());
            if let (Some(p), true) = (&self.peer, self.shared.stats.publish_peer) {
                wasmesh_proxy::set_filter_state(wasmesh_handover::PEER_DOWNSTREAM, &p.json);
            }
        }
    }

    fn outbound_request(&mut self) {
        if let Some(ct) = wasmesh_proxy::request_header("content-type") {
            self.grpc = is_grpc_content_type(&ct);
        }
        let s = &self.shared.stats;
        if s.metadata_exchange && s.has_external_hosts() {
            // No workload metadata for services outside the mesh, and none trusted from them.
            let authority = wasmesh_proxy::request_header(":authority").unwrap_or_default();
            self.external = s.is_external_authority(&authority);
        }
        if self.shared.stats.metadata_exchange && !self.external {
            // Replacing also drops whatever the application (or a client at a gateway) sent.
            let s = &self.shared.stats;
            wasmesh_proxy::set_request_header(HEADER_METADATA, s.header_value.as_bytes());
            wasmesh_proxy::set_request_header(HEADER_METADATA_ID, s.local.node_id.as_bytes());
        }
    }

    fn count_frames(&mut self, response: bool, size: usize) {
        if !self.grpc || size == 0 {
            return;
        }
        let buffer = if response {
            proxy_wasm::types::BufferType::HttpResponseBody
        } else {
            proxy_wasm::types::BufferType::HttpRequestBody
        };
        let counter = if response { &mut self.response_frames } else { &mut self.request_frames };
        if counter.skippable(size) {
            counter.skip(size);
            return;
        }
        if let Ok(Some(bytes)) = hostcalls::get_buffer(buffer, 0, size) {
            counter.feed(&bytes);
        }
    }
}

impl HttpContext for StatsHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_seen = true;
        match self.shared.stats.direction {
            Direction::Inbound => self.inbound_request(),
            Direction::Outbound | Direction::Gateway => self.outbound_request(),
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.count_frames(false, body_size);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.shared.stats.metadata_exchange {
            return Action::Continue;
        }
        match self.shared.stats.direction {
            Direction::Inbound => {
                if self.request_had_mx {
                    let s = &self.shared.stats;
                    wasmesh_proxy::set_response_header(HEADER_METADATA, s.header_value.as_bytes());
                    wasmesh_proxy::set_response_header(HEADER_METADATA_ID, s.local.node_id.as_bytes());
                }
            }
            Direction::Outbound | Direction::Gateway if !self.external => {
                let md = response_header_value(HEADER_METADATA);
                let id = response_header_value(HEADER_METADATA_ID);
                if md.is_some() || id.is_some() {
                    // The caller (the application, or a client outside the mesh) never sees them.
                    wasmesh_proxy::remove_response_header(HEADER_METADATA);
                    wasmesh_proxy::remove_response_header(HEADER_METADATA_ID);
                }
                if let Some(md) = md {
                    self.peer = self.shared.peers.borrow_mut().get_or_decode(&md, id.as_deref());
                    if let (Some(p), true) = (&self.peer, self.shared.stats.publish_peer) {
                        wasmesh_proxy::set_filter_state(wasmesh_handover::PEER_UPSTREAM, &p.json);
                    }
                }
            }
            Direction::Outbound | Direction::Gateway => {}
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        self.count_frames(true, body_size);
        Action::Continue
    }

    fn on_log(&mut self) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        if !stats.any_enabled() {
            return;
        }
        if !self.request_seen {
            // An earlier filter answered before this one saw the request.
            self.grpc = wasmesh_proxy::property(&["request", "headers", "content-type"])
                .map(|ct| is_grpc_content_type(&ct))
                .unwrap_or(false);
        }
        let protocol = if self.grpc { Protocol::Grpc } else { Protocol::Http };
        let cluster = if stats.needs_cluster() {
            wasmesh_proxy::property_string(&["xds", "cluster_name"]).unwrap_or_default()
        } else {
            String::new()
        };
        let service = shared.service(&cluster);
        let peer = match (&self.peer, stats.direction) {
            (None, Direction::Outbound | Direction::Gateway) if !self.external => endpoint_peer(&shared),
            (p, _) => p.clone(),
        };
        let (peer_principal, local_principal) = principals(stats.direction);
        let mut facts = Facts::new(protocol);
        facts.response_code = nonneg(prop_i64(&["response", "code"])).and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
        facts.response_flags =
            stats.effective_flags(facts.response_code, &cluster, nonneg(prop_i64(&["response", "flags"])).unwrap_or(0));
        if protocol == Protocol::Grpc {
            facts.grpc_status = nonneg(prop_i64(&["response", "grpc_status"])).and_then(|c| u32::try_from(c).ok());
        }
        facts.peer = peer.as_ref().map(|p| &p.peer);
        facts.peer_principal = &peer_principal;
        facts.local_principal = &local_principal;
        facts.cluster_name = &cluster;
        facts.service = service.as_deref();
        let measures = HttpMeasures {
            duration_ms: nonneg(prop_i64(&["request", "duration"])).map(|ns| ns / 1_000_000),
            request_bytes: nonneg(prop_i64(&["request", "total_size"])),
            response_bytes: nonneg(prop_i64(&["response", "total_size"])),
            request_messages: self.request_frames.messages,
            response_messages: self.response_frames.messages,
        };
        let exprs = evaluate(stats);
        let mut cache = shared.cache.borrow_mut();
        let mut key = shared.key.borrow_mut();
        let peer_id = peer.as_ref().map(|p| p.id).unwrap_or(0);
        stats.record_http(&mut cache, &mut Host, &facts, peer_id, &exprs, &measures, &mut key);
    }
}

/// Network buffer access during `on_downstream_data`/`on_upstream_data`.
///
/// The SDK panics on an unexpected status, so the calls are limited to what cannot return one:
/// Envoy answers `proxy_get_buffer_bytes` at offset 0 with `Ok` (or `NotFound` when empty; it
/// clips the length), and `proxy_set_buffer_bytes` at offset 0 with `Ok` ("drain `len`, then
/// prepend"); both only while the data callback runs, which is the only place they are called.
mod buffer {
    use proxy_wasm::hostcalls;
    use proxy_wasm::types::BufferType;

    /// The first `n` bytes of the buffer.
    pub fn peek(ty: BufferType, n: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(ty, 0, n).ok().flatten()
    }

    /// Replaces the first `len` bytes of the buffer with `with`.
    pub fn replace_front(ty: BufferType, len: usize, with: &[u8]) -> bool {
        hostcalls::set_buffer(ty, 0, len, with).is_ok()
    }
}

/// The TCP network filter: one per connection.
///
/// With `peerExchange` (Istio's TCP metadata exchange, see `wasmesh_stats::exchange`) and a TLS
/// connection, the client side (outbound, gateway) puts its preamble in front of the first bytes
/// going upstream and reads the server's from the first bytes coming back; the server side
/// (inbound) reads the client's from the first downstream bytes and puts its own in front of the
/// first bytes going back. Reading waits (`Pause`, Envoy keeps the bytes) until the preamble is
/// whole; anything that is not a preamble passes unchanged.
struct StatsTcp {
    shared: Rc<Shared>,
    /// Encoded tags per metric group, computed once the peer is known (or the exchange is not
    /// happening) and again, with the final response flags, at close.
    keys: Option<Vec<TcpKey>>,
    closed: bool,
    /// Whether this connection exchanges preambles; decided at the first data event.
    exchange: Option<bool>,
    reader: PreambleReader,
    preamble_sent: bool,
    /// The peer from its preamble.
    peer: Option<Rc<CachedPeer>>,
    /// Bytes seen before the labels were known: (received, sent).
    pending: (u64, u64),
}

impl Context for StatsTcp {}

impl StatsTcp {
    fn new(shared: Rc<Shared>) -> StatsTcp {
        StatsTcp {
            shared,
            keys: None,
            closed: false,
            exchange: None,
            reader: PreambleReader::default(),
            preamble_sent: false,
            peer: None,
            pending: (0, 0),
        }
    }

    /// Exchange only when configured for this filter chain. The negotiated ALPN is not
    /// visible to wasm, so the bootstrap gates it:
    /// - inbound: the chain is selected by `filter_chain_match` on TLS offering
    ///   `istio-peer-exchange`, which is the whole condition. (`connection.mtls` is not usable
    ///   here: when the application speaks first, `tcp_proxy` has its bytes before the
    ///   downstream TLS handshake is finished, and the property still says false.)
    /// - outbound: the cluster offers the ALPN to sidecars; the filter also requires an upstream
    ///   peer certificate, so a plaintext endpoint never gets a preamble (as in Istio). The
    ///   upstream handshake is complete before `tcp_proxy` passes any byte either way.
    fn exchange_active(&mut self) -> bool {
        if let Some(x) = self.exchange {
            return x;
        }
        let stats = &self.shared.stats;
        let x = stats.peer_exchange
            && match stats.direction {
                Direction::Inbound => true,
                Direction::Outbound | Direction::Gateway => {
                    wasmesh_proxy::property(&["upstream", "uri_san_peer_certificate"]).is_some_and(|v| !v.is_empty())
                }
            };
        self.exchange = Some(x);
        x
    }

    /// Reads the peer's preamble from the front of `ty`. `Some(n)`: continue with `n`
    /// application bytes; `None`: pause.
    fn read_preamble(&mut self, ty: BufferType, size: usize, end_of_stream: bool) -> Option<usize> {
        match self.reader.step(size, end_of_stream, |n| buffer::peek(ty, n)) {
            Step::Wait => None,
            Step::Pass => {
                if let Some(why) = self.reader.gave_up() {
                    wasmesh_proxy::log_debug(&format!("wasmesh stats: no TCP peer metadata ({why:?})"));
                }
                self.peer_known();
                Some(size)
            }
            Step::Strip { len, body } => {
                if !buffer::replace_front(ty, len, &[]) {
                    // The preamble could not be removed: let everything through rather than
                    // hold the connection.
                    self.peer_known();
                    return Some(size);
                }
                self.peer = self.shared.peers.borrow_mut().preamble(&body);
                if let (Some(p), true) = (&self.peer, self.shared.stats.publish_peer) {
                    let key = match self.shared.stats.direction {
                        Direction::Inbound => wasmesh_handover::PEER_DOWNSTREAM,
                        Direction::Outbound | Direction::Gateway => wasmesh_handover::PEER_UPSTREAM,
                    };
                    wasmesh_proxy::set_filter_state(key, &p.json);
                }
                self.peer_known();
                Some(size.saturating_sub(len))
            }
        }
    }

    /// Puts our preamble in front of the first bytes sent through `ty`.
    fn send_preamble(&mut self, ty: BufferType, size: usize) {
        if self.preamble_sent || size == 0 {
            return;
        }
        self.preamble_sent = true;
        let _ = buffer::replace_front(ty, 0, &self.shared.stats.preamble);
    }

    fn compute_keys(&self) -> Vec<TcpKey> {
        let stats = &self.shared.stats;
        let cluster = wasmesh_proxy::property_string(&["xds", "cluster_name"]).unwrap_or_default();
        let service = if cluster.is_empty() { None } else { self.shared.service(&cluster) };
        let peer = match (&self.peer, stats.direction) {
            (Some(p), _) => Some(p.clone()),
            (None, Direction::Outbound | Direction::Gateway) => endpoint_peer(&self.shared),
            (None, Direction::Inbound) => None,
        };
        let (peer_principal, local_principal) = principals(stats.direction);
        let mut facts = Facts::new(Protocol::Tcp);
        facts.response_flags = nonneg(prop_i64(&["response", "flags"])).unwrap_or(0);
        facts.peer = peer.as_ref().map(|p| &p.peer);
        facts.peer_principal = &peer_principal;
        facts.local_principal = &local_principal;
        facts.cluster_name = &cluster;
        facts.service = service.as_deref();
        let exprs = evaluate(stats);
        stats.tcp_keys(&facts, &exprs)
    }

    /// The labels are final (peer read, or no exchange): count the connection as opened and
    /// the bytes seen so far.
    fn peer_known(&mut self) {
        if self.keys.is_some() || !self.shared.stats.any_enabled() {
            return;
        }
        let keys = self.compute_keys();
        self.record(&keys, Metric::TcpOpenedConnections, 1);
        let (rx, tx) = std::mem::take(&mut self.pending);
        if rx > 0 {
            self.record(&keys, Metric::TcpReceivedBytes, rx);
        }
        if tx > 0 {
            self.record(&keys, Metric::TcpSentBytes, tx);
        }
        self.keys = Some(keys);
    }

    fn record(&self, keys: &[TcpKey], metric: Metric, value: u64) {
        let mut cache = self.shared.cache.borrow_mut();
        for k in keys {
            if k.metrics.contains(&metric) {
                cache.record(&mut Host, &k.key, &k.overflow, metric, value);
            }
        }
    }

    fn add_bytes(&mut self, metric: Metric, size: usize) {
        if size == 0 {
            return;
        }
        match &self.keys {
            Some(keys) => self.record(keys, metric, size as u64),
            None if metric == Metric::TcpReceivedBytes => self.pending.0 += size as u64,
            None => self.pending.1 += size as u64,
        }
    }

    fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.peer_known();
        if !self.shared.stats.any_enabled() {
            return;
        }
        // The response flags are final now (e.g. UF when the upstream never answered).
        let keys = self.compute_keys();
        self.record(&keys, Metric::TcpClosedConnections, 1);
    }
}

impl StreamContext for StatsTcp {
    fn on_new_connection(&mut self) -> Action {
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        let mut app = data_size;
        if self.exchange_active() {
            match self.shared.stats.direction {
                Direction::Inbound if !self.reader.is_done() => {
                    match self.read_preamble(BufferType::DownstreamData, data_size, end_of_stream) {
                        Some(n) => app = n,
                        None => return Action::Pause,
                    }
                }
                Direction::Inbound => {}
                Direction::Outbound | Direction::Gateway => self.send_preamble(BufferType::DownstreamData, data_size),
            }
        } else {
            self.peer_known();
        }
        self.add_bytes(Metric::TcpReceivedBytes, app);
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        let mut app = data_size;
        if self.exchange_active() {
            match self.shared.stats.direction {
                Direction::Outbound | Direction::Gateway if !self.reader.is_done() => {
                    match self.read_preamble(BufferType::UpstreamData, data_size, end_of_stream) {
                        Some(n) => app = n,
                        None => return Action::Pause,
                    }
                }
                Direction::Outbound | Direction::Gateway => {}
                Direction::Inbound => self.send_preamble(BufferType::UpstreamData, data_size),
            }
        } else {
            self.peer_known();
        }
        self.add_bytes(Metric::TcpSentBytes, app);
        Action::Continue
    }

    fn on_downstream_close(&mut self, _peer_type: PeerType) {
        self.close();
    }

    fn on_upstream_close(&mut self, _peer_type: PeerType) {
        self.close();
    }

    fn on_log(&mut self) {
        self.close();
    }
}

/// The stats phase (for the one-pass chain): being written; until then `wasmesh.chain` refuses it.
pub fn build(
    _config: &[u8],
    _resumer: &wasmesh_proxy::phase::Resumer,
) -> Result<Vec<std::rc::Rc<dyn wasmesh_proxy::phase::Phase>>, String> {
    Err("stats does not run as a phase yet".into())
}
