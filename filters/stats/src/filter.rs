//! wasmesh stats: Istio's standard metrics and peer metadata exchange in any Envoy.
//!
//! One module, two kinds of filter, chosen by the configuration's `protocol`:
//! * `http`: a phase ([`wasmesh_proxy::phase`]) — alone in its filter (`wasmesh.stats`), or the
//!   first phase of the one-pass chain (`wasmesh.chain`), so it sees every request before authn
//!   or authz may answer it and its `log` runs for every request, answered ones too. It
//!   exchanges `x-envoy-peer-metadata` headers with the other sidecar, hands what it learnt to
//!   later filters when `publishPeer` is set (filter state `PEER_DOWNSTREAM` /
//!   `PEER_UPSTREAM`), and in `log` records `istio_requests_total`,
//!   `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes` and,
//!   for gRPC, the message counters, from the counts Envoy's `grpc_stats` filter keeps in filter
//!   state as Istio's stats filter reads them (no body is ever read: the module need not export
//!   `proxy_on_response_body`, see `wasmesh_stats::grpc`);
//! * `tcp` (a network filter, [`Phase::is_network`]): `istio_tcp_connections_opened_total`/
//!   `_closed_total`, `istio_tcp_sent_bytes_total`, `istio_tcp_received_bytes_total`.
//!
//! Hostcalls per HTTP request (each one that returns a value also makes Envoy allocate guest
//! memory for it, GUIDE §4), inbound with metadata exchange:
//! * request headers: the stream's one map (shared with the later phases in the chain), the two
//!   `remove`s of the exchange headers when the request carried them;
//! * response headers: the two `set`s of ours, only when the request carried the exchange;
//! * log: one [`Stream::properties`] batch (response code and flags, duration, sizes, the
//!   peer's certificate SAN, the cluster name unless configuration names the inbound service,
//!   the gRPC status and `grpc_stats` filter state for gRPC, the upstream endpoint's Istio
//!   workload metadata when the upstream answered without exchange headers, unless the
//!   configuration says no endpoint carries it: `noEndpointMetadata`), the local certificate SAN
//!   only when the peer presented one, and
//!   one `record_metric` per histogram sample. Counters (`istio_requests_total`, gRPC message
//!   counts) are kept in the VM and flushed on the phase's tick ([`FLUSH_PERIOD`]).
//!
//! Outbound and gateway: the request's content type (and `:authority` when external hosts are
//! configured) and the two `set`s of our exchange headers, unless Envoy's route adds them
//! (`exchangeHeadersAdded`); the response's two exchange headers.
//!
//! All decisions are in `wasmesh-stats`; this file reads Envoy attributes and headers and calls
//! the hostcalls. Telemetry fails open: nothing here ever changes or stops a request, and nothing
//! read from the wire can make it panic.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, BufferType, PeerType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use wasmesh_istio::{FilterConfig, Strictness};
use wasmesh_proxy::metrics;
use wasmesh_proxy::phase::{ChainRoot, Flow, Phase, PhaseRequest, Resumer};
use wasmesh_proxy::stream::{HeaderReads, Stream};
use wasmesh_proxy::ListenerDirection;
use wasmesh_stats::exchange::{PreambleReader, Step};
use wasmesh_stats::grpc::{is_grpc_content_type, GrpcMessages, GRPC_STATS_FILTER_STATE};
use wasmesh_stats::peer::{HEADER_METADATA, HEADER_METADATA_ID};
use wasmesh_stats::{
    Batching, CachedPeer, Direction, Facts, HttpMeasures, ListenerProtocol, Metric, MetricCache, MetricHost,
    MetricType, PeerCache, PendingCounters, Protocol, ServiceCache, ServiceInfo, Stats, StatsConfig, TcpKey,
};

/// The filter's root context for one plugin (the module entry in `lib.rs`, and
/// `filters/wasmesh` for the root ids it hands to this filter, call it).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(ChainRoot::new("wasmesh stats", build))
}

/// The stats phase from its plugin configuration (an HTTP phase, or the TCP network filter).
pub fn build(config: &[u8], _resumer: &Resumer) -> Result<Vec<Rc<dyn Phase>>, String> {
    let listeners = configure(config)?;
    Ok(vec![Rc::new(StatsPhase { listeners })])
}

/// How often batched counters reach Envoy. Istio's own stats filter increments Envoy's
/// counters per request, but Prometheus only sees what it scrapes (every 15 s by default) and
/// Envoy's histograms (request duration and sizes) only move when Envoy merges them at its
/// stats flush (every 5 s); a counter up to this much late is within both.
pub const FLUSH_PERIOD: Duration = Duration::from_secs(1);

/// Per-VM state shared by every stream of one plugin.
struct Shared {
    stats: Stats,
    cache: RefCell<MetricCache>,
    /// Counter increments waiting for the next tick.
    pending: RefCell<PendingCounters>,
    peers: RefCell<PeerCache>,
    /// Cluster name → its Istio service (from cluster metadata or the cluster's name).
    services: RefCell<ServiceCache>,
    /// Scratch buffer for encoded tags.
    key: RefCell<String>,
}

impl Shared {
    fn service(&self, cluster: &str, read: impl Fn(&[&str]) -> Option<String>) -> Option<Rc<ServiceInfo>> {
        self.services.borrow_mut().get_or_insert_with(cluster, || {
            cluster_metadata_service(read).or_else(|| self.stats.service_for_cluster(cluster))
        })
    }

    /// Hands the batched counter increments to Envoy.
    fn flush(&self) {
        if let Ok(mut pending) = self.pending.try_borrow_mut() {
            pending.flush(&mut Host);
        }
    }
}

/// A configuration replaced while increments wait (Envoy configuring the plugin again) hands
/// them over before it goes.
impl Drop for Shared {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Istio's cluster metadata `filter_metadata.istio.services[0]` of the upstream cluster (read
/// once per cluster: see [`ServiceCache`]).
fn cluster_metadata_service(read: impl Fn(&[&str]) -> Option<String>) -> Option<ServiceInfo> {
    let get = |field: &str| read(&["xds", "cluster_metadata", "filter_metadata", "istio", "services", "0", field]);
    let host = get("host").filter(|h| !h.is_empty())?;
    Some(ServiceInfo { name: get("name").unwrap_or_default(), namespace: get("namespace").unwrap_or_default(), host })
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

    fn all(&self) -> impl Iterator<Item = &Rc<Shared>> {
        let (a, b) = match self {
            Listeners::Fixed(s) => (s, None),
            Listeners::ByListener { inbound, outbound } => (inbound, Some(outbound)),
        };
        std::iter::once(a).chain(b)
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

/// The configured stats filter of one plugin.
struct StatsPhase {
    listeners: Listeners,
}

impl StatsPhase {
    fn protocol(&self) -> ListenerProtocol {
        self.listeners.any().stats.protocol
    }
}

impl Phase for StatsPhase {
    fn name(&self) -> &'static str {
        "stats"
    }

    fn start(self: Rc<Self>, _context_id: u32) -> Box<dyn PhaseRequest> {
        Box::new(StatsRequest::new(self.listeners.for_new_stream()))
    }

    /// Alone in its filter: the inbound side reads three request headers (content type and the
    /// two exchange headers), which one map read does for less than three single reads; the
    /// outbound side reads one or two, one by one.
    fn header_reads(&self) -> HeaderReads {
        match &self.listeners {
            Listeners::Fixed(s) if s.stats.direction != Direction::Inbound || !s.stats.metadata_exchange => {
                HeaderReads::OneByOne
            }
            _ => HeaderReads::Map,
        }
    }

    fn tick_period(&self) -> Option<Duration> {
        (self.protocol() == ListenerProtocol::Http).then_some(FLUSH_PERIOD)
    }

    fn tick(&self) {
        self.listeners.all().for_each(|s| s.flush());
    }

    fn done(&self) {
        self.listeners.all().for_each(|s| s.flush());
    }

    fn is_network(&self) -> bool {
        self.protocol() == ListenerProtocol::Tcp
    }

    fn stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(StatsTcp::new(self.listeners.for_new_stream())))
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
    set_istio_build();
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
            pending: RefCell::new(PendingCounters::default()),
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

/// `istio_build{component="proxy",tag="<wasmesh version>"}` = 1, as every Istio proxy sets it
/// (set on every configuration: the same gauge each time).
fn set_istio_build() {
    let name = wasmesh_stats::istio_build_metric(env!("CARGO_PKG_VERSION"));
    if let Some(id) = metrics::define(proxy_wasm::types::MetricType::Gauge, &name) {
        let _ = hostcalls::record_metric(id, 1);
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

/// An integer attribute (8 bytes little-endian, signed in Envoy) that is not negative.
fn nonneg_bytes(b: Option<&[u8]>) -> Option<u64> {
    nonneg(b.and_then(wasmesh_proxy::decode_u64).map(|v| v as i64))
}

/// Evaluates the Telemetry override expressions of this listener (network filter).
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
    let s = wasmesh_proxy::property_string(&ENDPOINT_WORKLOAD)?;
    shared.peers.borrow_mut().endpoint(&s)
}

/// (peer principal, local principal): the first URI SANs of the connection's certificates, ours
/// from the configuration where it names it (`localPrincipal`).
fn principals(stats: &Stats) -> (String, String) {
    let (peer_path, local_path) = certificate_paths(stats.direction);
    // Without a peer certificate this is one call that returns nothing (cheaper than reading
    // `connection.mtls` first).
    let peer = wasmesh_proxy::property_string(peer_path).unwrap_or_default();
    if peer.is_empty() {
        return (peer, String::new());
    }
    let local = match &stats.local_principal {
        Some(known) => known.clone(),
        None => wasmesh_proxy::property_string(local_path).unwrap_or_default(),
    };
    (peer, local)
}

/// The attribute paths of the peer's and our own certificate's URI SAN: the downstream
/// connection's on inbound, the upstream's otherwise.
fn certificate_paths(direction: Direction) -> (&'static [&'static str], &'static [&'static str]) {
    match direction {
        Direction::Inbound => (&PEER_SAN_DOWNSTREAM, &LOCAL_SAN_DOWNSTREAM),
        Direction::Outbound | Direction::Gateway => (&PEER_SAN_UPSTREAM, &LOCAL_SAN_UPSTREAM),
    }
}

const PEER_SAN_DOWNSTREAM: [&str; 2] = ["connection", "uri_san_peer_certificate"];
const LOCAL_SAN_DOWNSTREAM: [&str; 2] = ["connection", "uri_san_local_certificate"];
const PEER_SAN_UPSTREAM: [&str; 2] = ["upstream", "uri_san_peer_certificate"];
const LOCAL_SAN_UPSTREAM: [&str; 2] = ["upstream", "uri_san_local_certificate"];
const ENDPOINT_WORKLOAD: [&str; 5] = ["xds", "upstream_host_metadata", "filter_metadata", "istio", "workload"];
const RESPONSE_CODE: [&str; 2] = ["response", "code"];
const RESPONSE_FLAGS: [&str; 2] = ["response", "flags"];
const REQUEST_DURATION: [&str; 2] = ["request", "duration"];
const REQUEST_SIZE: [&str; 2] = ["request", "total_size"];
const RESPONSE_SIZE: [&str; 2] = ["response", "total_size"];
const CLUSTER_NAME: [&str; 2] = ["xds", "cluster_name"];
const GRPC_STATUS: [&str; 2] = ["response", "grpc_status"];
/// The message counts of Envoy's `grpc_stats` filter (gRPC requests only).
const GRPC_STATS: [&str; 2] = ["filter_state", GRPC_STATS_FILTER_STATE];

/// One HTTP request in the stats phase.
struct StatsRequest {
    shared: Rc<Shared>,
    /// The other side's metadata: downstream (inbound) or upstream (outbound, gateway).
    peer: Option<Rc<CachedPeer>>,
    /// The request carried metadata-exchange headers (inbound answers only then, as Istio).
    request_had_mx: bool,
    request_seen: bool,
    /// Outbound to a host outside the mesh: no metadata exchange.
    external: bool,
    grpc: bool,
}

impl StatsRequest {
    fn new(shared: Rc<Shared>) -> StatsRequest {
        StatsRequest { shared, peer: None, request_had_mx: false, request_seen: false, external: false, grpc: false }
    }

    fn inbound_request(&mut self, s: &Stream) {
        let shared = self.shared.clone();
        let exchange = shared.stats.metadata_exchange;
        // One look at the stream's header map: no copy of the (large) metadata value, and a
        // peer cache hit allocates nothing.
        let (grpc, had_mx, peer) = s.with_request_headers(|headers| {
            let Ok(headers) = headers else { return (false, false, None) };
            let find = |name: &str| headers.get(name);
            let grpc = find("content-type").is_some_and(is_grpc_content_type);
            if !exchange {
                return (grpc, false, None);
            }
            let (md, id) = (find(HEADER_METADATA), find(HEADER_METADATA_ID));
            let peer = md.and_then(|md| shared.peers.borrow_mut().get_or_decode(md, id));
            (grpc, md.is_some() || id.is_some(), peer)
        });
        self.grpc = grpc;
        if had_mx {
            self.request_had_mx = true;
            // Never let the exchange headers reach the application: Envoy's router removes them
            // where wasmeshctl wrote the inbound route so (`exchangeHeadersRemoved`), else here.
            if !shared.stats.exchange_headers_removed {
                s.remove_request_header(HEADER_METADATA);
                s.remove_request_header(HEADER_METADATA_ID);
            }
        }
        self.peer = peer;
        if let (Some(p), true) = (&self.peer, shared.stats.publish_peer) {
            s.set_filter_state(wasmesh_handover::PEER_DOWNSTREAM, &p.json);
        }
    }

    fn outbound_request(&mut self, s: &Stream) {
        let header = |name: &str| s.request_header(name).ok().flatten();
        self.grpc = header("content-type").is_some_and(|ct| is_grpc_content_type(&ct));
        let stats = &self.shared.stats;
        if !stats.metadata_exchange {
            return;
        }
        if stats.has_external_hosts() {
            // No workload metadata for services outside the mesh, and none trusted from them.
            self.external = stats.is_external_authority(&header(":authority").unwrap_or_default());
        }
        // Envoy's route adds them where wasmeshctl wrote it so (`exchangeHeadersAdded`, refused
        // with external hosts: every request is a mesh request then).
        if !self.external && !stats.exchange_headers_added {
            // Replacing also drops whatever the application (or a client at a gateway) sent.
            s.set_request_header(HEADER_METADATA, stats.header_value.as_bytes());
            s.set_request_header(HEADER_METADATA_ID, stats.local.node_id.as_bytes());
        }
    }
}

impl PhaseRequest for StatsRequest {
    fn request_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        self.request_seen = true;
        match self.shared.stats.direction {
            Direction::Inbound => self.inbound_request(s),
            Direction::Outbound | Direction::Gateway => self.outbound_request(s),
        }
        Flow::Continue
    }

    fn response_headers(&mut self, s: &Stream, _end_of_stream: bool) -> Flow {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        if !stats.metadata_exchange {
            return Flow::Continue;
        }
        match stats.direction {
            Direction::Inbound => {
                if self.request_had_mx {
                    s.set_response_header(HEADER_METADATA, stats.header_value.as_bytes());
                    s.set_response_header(HEADER_METADATA_ID, stats.local.node_id.as_bytes());
                }
            }
            // Only when we sent ours (the exchange is active): an external host's answer is
            // neither read nor trusted.
            Direction::Outbound | Direction::Gateway if !self.external && self.request_seen => {
                let md = s.response_header(HEADER_METADATA);
                let id = s.response_header(HEADER_METADATA_ID);
                if md.is_some() || id.is_some() {
                    // The caller (the application, or a client outside the mesh) never sees them.
                    s.remove_response_header(HEADER_METADATA);
                    s.remove_response_header(HEADER_METADATA_ID);
                }
                if let Some(md) = md {
                    self.peer = shared.peers.borrow_mut().get_or_decode(&md, id.as_deref());
                    if let (Some(p), true) = (&self.peer, stats.publish_peer) {
                        s.set_filter_state(wasmesh_handover::PEER_UPSTREAM, &p.json);
                    }
                }
            }
            Direction::Outbound | Direction::Gateway => {}
        }
        Flow::Continue
    }

    fn log(&mut self, s: &Stream) {
        let shared = self.shared.clone();
        let stats = &shared.stats;
        if !stats.any_enabled() {
            return;
        }
        if !self.request_seen {
            // An earlier filter answered before this one saw the request.
            self.grpc =
                s.property_or_none(&["request", "headers", "content-type"]).is_some_and(|ct| is_grpc_content_type(&ct));
        }
        let protocol = if self.grpc { Protocol::Grpc } else { Protocol::Http };
        let (peer_san, local_san) = certificate_paths(stats.direction);
        let needs_endpoint = self.peer.is_none()
            && stats.direction != Direction::Inbound
            && !self.external
            && !stats.no_endpoint_metadata;
        // Every attribute the labels and measures need, in one batch (fixed slots first).
        let mut paths: Vec<&[&str]> = Vec::with_capacity(10);
        paths.extend([&RESPONSE_CODE[..], &RESPONSE_FLAGS, &REQUEST_DURATION, &REQUEST_SIZE, &RESPONSE_SIZE, peer_san]);
        // The cluster the router phase of this chain named, where every route takes it from that
        // header (`clusterHeader`): no attribute to read. Read from the stream's copy of the
        // request headers, never from Envoy (a client's own value is not the router's).
        let needs_cluster = stats.needs_cluster();
        let routed = stats.cluster_header.as_deref().filter(|_| needs_cluster).and_then(|h| s.edited_request_header(h));
        let cluster_slot = (needs_cluster && routed.is_none()).then(|| push_slot(&mut paths, &CLUSTER_NAME));
        let grpc_slot = (protocol == Protocol::Grpc).then(|| push_slot(&mut paths, &GRPC_STATUS));
        let messages_slot = (protocol == Protocol::Grpc).then(|| push_slot(&mut paths, &GRPC_STATS));
        let endpoint_slot = needs_endpoint.then(|| push_slot(&mut paths, &ENDPOINT_WORKLOAD));
        let values = s.properties(&paths);
        let at = |i: usize| values.get(i).and_then(|v| v.as_deref());
        let text = |i: Option<usize>| i.and_then(at).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default();

        let flags = nonneg_bytes(at(1)).unwrap_or(0);
        let mut cluster = match routed.as_deref().map(std::str::from_utf8) {
            // Envoy found no cluster of that name (`NC`): it reports none.
            Some(Ok(_)) if flags & wasmesh_trace::flags::NO_CLUSTER_FOUND != 0 => "",
            Some(Ok(routed)) => routed,
            _ => text(cluster_slot),
        };
        // No cluster: Envoy answered on a route of its own; istiod's catch-all routes name one
        // (`block_all` → BlackHoleCluster). Read only on such requests.
        if cluster.is_empty() && cluster_slot.is_some() {
            let route = s.property_string(&["xds", "route_name"]).unwrap_or_default();
            cluster = wasmesh_stats::labels::catch_all_cluster(&route).unwrap_or_default();
        }
        let service = shared.service(cluster, |p| s.property_string(p));
        let endpoint = text(endpoint_slot);
        let peer = if needs_endpoint && !endpoint.is_empty() {
            shared.peers.borrow_mut().endpoint(endpoint)
        } else {
            self.peer.clone()
        };
        let peer_principal = text(Some(5));
        // Our own certificate matters only when the peer presented one (mTLS); read only where
        // the configuration does not name it.
        let read_local;
        let local_principal = match (peer_principal.is_empty(), stats.local_principal.as_deref()) {
            (true, _) => "",
            (false, Some(known)) => known,
            (false, None) => {
                read_local = s.property_string(local_san);
                read_local.as_deref().unwrap_or_default()
            }
        };

        let mut facts = Facts::new(protocol);
        facts.response_code = nonneg_bytes(at(0)).and_then(|c| u32::try_from(c).ok()).unwrap_or(0);
        facts.response_flags = stats.effective_flags(facts.response_code, cluster, flags);
        facts.grpc_status = grpc_slot.and_then(|i| nonneg_bytes(at(i))).and_then(|c| u32::try_from(c).ok());
        facts.peer = peer.as_ref().map(|p| &p.peer);
        facts.peer_principal = peer_principal;
        facts.local_principal = local_principal;
        facts.cluster_name = cluster;
        facts.service = service.as_deref();
        let measures = HttpMeasures {
            duration_ms: nonneg_bytes(at(2)).map(|ns| ns / 1_000_000),
            request_bytes: nonneg_bytes(at(3)),
            response_bytes: nonneg_bytes(at(4)),
            grpc_messages: messages_slot.and_then(at).and_then(GrpcMessages::parse),
        };
        let exprs = if stats.exprs_needed().is_empty() {
            Vec::new()
        } else {
            stats.evaluate(|path| {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                s.property_or_none(&p)
            })
        };
        let (Ok(mut cache), Ok(mut pending), Ok(mut key)) =
            (shared.cache.try_borrow_mut(), shared.pending.try_borrow_mut(), shared.key.try_borrow_mut())
        else {
            return;
        };
        let mut host = Batching { host: &mut Host, pending: &mut pending };
        let peer_id = peer.as_ref().map(|p| p.id).unwrap_or(0);
        stats.record_http(&mut cache, &mut host, &facts, peer_id, &exprs, &measures, &mut key);
    }
}

/// Appends `path` to the batch and returns its slot.
fn push_slot<'a>(paths: &mut Vec<&'a [&'a str]>, path: &'a [&'a str]) -> usize {
    paths.push(path);
    paths.len() - 1
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
        let service =
            if cluster.is_empty() { None } else { self.shared.service(&cluster, wasmesh_proxy::property_string) };
        let peer = match (&self.peer, stats.direction) {
            (Some(p), _) => Some(p.clone()),
            (None, Direction::Outbound | Direction::Gateway) if !stats.no_endpoint_metadata => {
                endpoint_peer(&self.shared)
            }
            (None, Direction::Outbound | Direction::Gateway) => None,
            (None, Direction::Inbound) => None,
        };
        let (peer_principal, local_principal) = principals(stats);
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
