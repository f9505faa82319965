//! The ADS server (gRPC, state of the world) and the `serve` entry point.
//!
//! Each stream belongs to one Envoy. From its node metadata ([`super::NodeSpec`]) the stream
//! rebuilds that proxy's clusters and filter configurations for every accepted generation of the
//! YAML and pushes what changed, make-before-break, each step after Envoy acknowledged the previous
//! one: first CDS with the new clusters added (old ones kept), then ECDS (the router may now name
//! a new subset; a policy applies), then CDS without the clusters nothing uses any more. No
//! request is routed to a cluster Envoy does not have yet. A rejection (NACK) is logged with
//! Envoy's reason; Envoy keeps what it had.

use super::proto::{struct_to_json, to_any};
use super::watch::{self, Snapshot};
use super::{
    layout_from_metadata, log, node_spec_from_metadata, NodeSpec, CLUSTER_TYPE, ECDS_TYPE, LISTENERS_HASH_KEY,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// `wasmeshctl serve` options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory of Istio YAML to keep Envoys in step with.
    pub watch: PathBuf,
    /// Where the ADS server listens (port 0: the OS picks one).
    pub listen: SocketAddr,
    /// Where the `.wasm` files are served over HTTP, if at all.
    pub http: Option<SocketAddr>,
    /// The directory of the built `.wasm` modules.
    pub wasm_dir: PathBuf,
    /// How often the directory is polled (a change is applied after two polls agree).
    pub poll: Duration,
}

/// A running server; stopped when dropped.
pub struct Server {
    pub xds_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    snapshots: tokio_watch::Receiver<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Loads the directory (refusing to start on invalid YAML, with every error), binds, and
    /// serves in background threads.
    pub fn start(opts: &ServeOptions) -> Result<Server, String> {
        let resources = watch::load(&opts.watch).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(|e| format!("error: {e}")).collect();
            format!("{}: {} error(s); nothing served:\n{}", opts.watch.display(), errors.len(), lines.join("\n"))
        })?;
        let count = resources.items.len();
        let (tx, rx) = tokio_watch::channel(Arc::new(Snapshot { generation: 1, resources }));
        let xds = std::net::TcpListener::bind(opts.listen).map_err(|e| format!("--listen {}: {e}", opts.listen))?;
        let xds_addr = xds.local_addr().map_err(|e| e.to_string())?;
        let http = match opts.http {
            Some(a) => Some(std::net::TcpListener::bind(a).map_err(|e| format!("--http {a}: {e}"))?),
            None => None,
        };
        let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
        for l in std::iter::once(&xds).chain(http.as_ref()) {
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("wasmesh-xds")
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let (shutdown, on_shutdown) = tokio::sync::oneshot::channel::<()>();
        let ads = Ads { snapshots: rx.clone(), streams: Arc::new(AtomicU64::new(0)) };
        let wasm_dir = opts.wasm_dir.clone();
        let serve_thread = std::thread::Builder::new()
            .name("wasmesh-serve".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some(h) = http {
                        match tokio::net::TcpListener::from_std(h) {
                            Ok(h) => {
                                tokio::spawn(super::http::serve(h, wasm_dir));
                            }
                            Err(e) => log(format!("--http: {e}")),
                        }
                    }
                    let listener = match tokio::net::TcpListener::from_std(xds) {
                        Ok(l) => l,
                        Err(e) => return log(format!("--listen: {e}")),
                    };
                    let server = tonic::transport::Server::builder()
                        .http2_keepalive_interval(Some(Duration::from_secs(30)))
                        .add_service(AggregatedDiscoveryServiceServer::new(ads))
                        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
                    // Stopping does not wait for the Envoys to hang up: their streams end with the runtime.
                    tokio::select! {
                        result = server => if let Err(e) = result {
                            log(format!("xDS server stopped: {e}"));
                        },
                        _ = on_shutdown => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let watch_thread = {
            let (dir, poll, stop) = (opts.watch.clone(), opts.poll, stop.clone());
            std::thread::Builder::new()
                .name("wasmesh-watch".into())
                .spawn(move || {
                    watch::run(dir, poll, stop, 1, |snap| {
                        let _ = tx.send(Arc::new(snap));
                    })
                })
                .map_err(|e| e.to_string())?
        };
        log(format!(
            "watching {} (generation 1, {count} resources); ADS on {xds_addr}{}",
            opts.watch.display(),
            http_addr.map(|a| format!("; wasm modules on http://{a}/wasm/")).unwrap_or_default()
        ));
        Ok(Server {
            xds_addr,
            http_addr,
            snapshots: rx,
            stop,
            shutdown: Some(shutdown),
            threads: vec![serve_thread, watch_thread],
        })
    }

    /// The generation being served (1 at start, +1 per accepted change).
    pub fn generation(&self) -> u64 {
        self.snapshots.borrow().generation
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `wasmeshctl serve`: runs until the process is stopped.
pub fn serve(opts: &ServeOptions) -> Result<(), String> {
    let _server = Server::start(opts)?;
    loop {
        std::thread::park();
    }
}

struct Ads {
    snapshots: tokio_watch::Receiver<Arc<Snapshot>>,
    streams: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let id = self.streams.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(16);
        let mut stream = Stream::new(id, tx, self.snapshots.clone());
        let incoming = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = stream.run(incoming).await {
                log(format!("stream {id} ({}): {}", stream.node_id, status.message()));
                let _ = stream.tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "wasmeshctl serve speaks state-of-the-world ADS; use the bootstrap of `wasmeshctl envoy --xds` (api_type GRPC)",
        ))
    }
}

/// One proxy's resources, encoded.
#[derive(Clone, PartialEq)]
struct Encoded {
    generation: u64,
    clusters: BTreeMap<String, Any>,
    extension_configs: BTreeMap<String, Any>,
    /// (type, name) → the JSON each resource was encoded from, and its encoding.
    json: BTreeMap<(String, String), (serde_json::Value, Any)>,
    listeners_hash: String,
}

struct Sent {
    nonce: String,
    resources: BTreeMap<String, Any>,
}

struct Stream {
    id: u64,
    node_id: String,
    /// The proxy's description and the layout of its listeners, from its node metadata.
    node: Option<(NodeSpec, crate::layout::Layout)>,
    listeners_hash: Option<String>,
    snapshots: tokio_watch::Receiver<Arc<Snapshot>>,
    /// The last configuration built for this proxy without error.
    current: Option<Encoded>,
    /// Subscribed resource names by type (empty: wildcard).
    subscribed: HashMap<String, BTreeSet<String>>,
    sent: HashMap<String, Sent>,
    awaiting: HashMap<String, String>,
    queue: VecDeque<(&'static str, BTreeMap<String, Any>)>,
    nonce: u64,
    warned_names: BTreeSet<String>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
}

fn short(type_url: &str) -> &str {
    match type_url {
        CLUSTER_TYPE => "CDS",
        ECDS_TYPE => "ECDS",
        other => other,
    }
}

impl Stream {
    fn new(
        id: u64,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
        snapshots: tokio_watch::Receiver<Arc<Snapshot>>,
    ) -> Stream {
        Stream {
            id,
            node_id: "unknown node".into(),
            node: None,
            listeners_hash: None,
            snapshots,
            current: None,
            subscribed: HashMap::new(),
            sent: HashMap::new(),
            awaiting: HashMap::new(),
            queue: VecDeque::new(),
            nonce: 0,
            warned_names: BTreeSet::new(),
            tx,
        }
    }

    async fn run(&mut self, mut incoming: Streaming<DiscoveryRequest>) -> Result<(), Status> {
        let mut snapshots = self.snapshots.clone();
        snapshots.mark_unchanged();
        loop {
            tokio::select! {
                req = incoming.message() => match req {
                    Ok(Some(req)) => self.on_request(req).await?,
                    Ok(None) => {
                        log(format!("{}: disconnected", self.node_id));
                        return Ok(());
                    }
                    Err(status) => {
                        log(format!("{}: disconnected ({})", self.node_id, status.message()));
                        return Ok(());
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    if self.node.is_some() {
                        self.on_snapshot(&snap).await?;
                    }
                }
            }
        }
    }

    /// Builds this proxy's resources from `snap`; errors are logged and the last good stays.
    fn rebuild(&mut self, snap: &Snapshot) -> bool {
        let Some((node, layout)) = &self.node else { return false };
        let built = super::build_in(node, *layout, &snap.resources)
            .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        let previous = self.current.as_ref();
        let encoded = built.and_then(|pr| {
            // Protobuf maps (e.g. cluster metadata) encode in no fixed order: a resource whose
            // JSON did not change keeps its previous bytes, so an unchanged cluster is never resent
            // (Envoy would replace it and drain its connections).
            let mut json = BTreeMap::new();
            let mut enc = |type_url: &str, m: &BTreeMap<String, serde_json::Value>| {
                let mut out = BTreeMap::new();
                for (name, j) in m {
                    let key = (type_url.to_string(), name.clone());
                    let any = match previous.and_then(|p| p.json.get(&key)) {
                        Some((before, any)) if before == j => any.clone(),
                        _ => to_any(type_url, j).map_err(|e| vec![format!("{name}: {e}")])?,
                    };
                    json.insert(key, (j.clone(), any.clone()));
                    out.insert(name.clone(), any);
                }
                Ok::<_, Vec<String>>(out)
            };
            let clusters = enc(CLUSTER_TYPE, &pr.clusters)?;
            let extension_configs = enc(ECDS_TYPE, &pr.extension_configs)?;
            Ok(Encoded {
                generation: snap.generation,
                clusters,
                extension_configs,
                json,
                listeners_hash: pr.listeners_hash(),
            })
        });
        match encoded {
            Ok(e) => {
                if self.listeners_hash.as_deref().is_some_and(|h| h != e.listeners_hash)
                    && self.current.as_ref().is_none_or(|c| c.listeners_hash != e.listeners_hash)
                {
                    log(format!(
                        "{}: generation {} changes this proxy's listeners (filter chains, ports or TLS), which xDS here does \
                         not update; filter configurations and clusters follow, the rest needs a new bootstrap \
                         (`wasmeshctl envoy --xds`) and a restart of this Envoy",
                        self.node_id, e.generation
                    ));
                }
                self.current = Some(e);
                true
            }
            Err(errors) => {
                let keep = self.current.as_ref().map(|c| format!("still serving generation {}", c.generation));
                log(format!(
                    "{}: generation {} cannot be applied to this proxy ({} error(s)); {}:",
                    self.node_id,
                    snap.generation,
                    errors.len(),
                    keep.unwrap_or_else(|| "nothing to serve yet".into())
                ));
                for e in errors {
                    log(format!("  error: {e}"));
                }
                false
            }
        }
    }

    async fn on_request(&mut self, req: DiscoveryRequest) -> Result<(), Status> {
        if self.node.is_none() {
            let node =
                req.node.as_ref().ok_or_else(|| Status::invalid_argument("the first request carries no node"))?;
            self.node_id = node.id.clone();
            let meta = node.metadata.as_ref().map(struct_to_json).unwrap_or_default();
            let spec = node_spec_from_metadata(&meta).map_err(Status::invalid_argument)?;
            let layout = layout_from_metadata(&meta).map_err(Status::invalid_argument)?;
            self.listeners_hash = meta.get(LISTENERS_HASH_KEY).and_then(|v| v.as_str()).map(str::to_string);
            self.node = Some((spec, layout));
            let snap = self.snapshots.borrow().clone();
            log(format!("{}: connected (stream {}), serving generation {}", self.node_id, self.id, snap.generation));
            self.rebuild(&snap);
        }
        let type_url = req.type_url.clone();
        let kind: &'static str = match type_url.as_str() {
            CLUSTER_TYPE => CLUSTER_TYPE,
            ECDS_TYPE => ECDS_TYPE,
            other => {
                log(format!(
                    "{}: asks for {other}, which wasmeshctl serve does not serve (listeners are in the bootstrap)",
                    self.node_id
                ));
                return Ok(());
            }
        };
        if let Some(err) = &req.error_detail {
            log(format!(
                "{}: REJECTED {} version {:?}: {} (Envoy keeps its previous configuration)",
                self.node_id,
                short(kind),
                self.sent.get(kind).map(|s| s.nonce.clone()).unwrap_or_default(),
                err.message
            ));
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let changed_subscription = self.subscribed.get(kind) != Some(&names);
        if changed_subscription {
            self.subscribed.insert(kind.to_string(), names);
            self.respond_current(kind).await?;
        } else if self.awaiting.get(kind) == Some(&req.response_nonce) {
            self.awaiting.remove(kind);
            if req.error_detail.is_none() {
                log(format!("{}: applied {} version {}", self.node_id, short(kind), req.version_info));
            }
        }
        self.pump().await
    }

    /// Sends the current resources of `kind` for the current subscription (a new or changed one).
    async fn respond_current(&mut self, kind: &'static str) -> Result<(), Status> {
        let Some(current) = self.current.clone() else { return Ok(()) };
        let resources = self.wanted(kind, &current);
        self.send(kind, resources).await
    }

    /// What this proxy should have of `kind` given `current`.
    fn wanted(&mut self, kind: &'static str, current: &Encoded) -> BTreeMap<String, Any> {
        if kind == CLUSTER_TYPE {
            return current.clusters.clone();
        }
        let names = self.subscribed.get(kind).cloned().unwrap_or_default();
        let mut out = BTreeMap::new();
        for name in names {
            match current.extension_configs.get(&name) {
                Some(a) => {
                    out.insert(name, a.clone());
                }
                None => {
                    if self.warned_names.insert(name.clone()) {
                        log(format!(
                            "{}: asks for filter configuration {name:?}, which the current YAML does not produce for this \
                             proxy; its listener keeps waiting (fail closed). Write its bootstrap again with \
                             `wasmeshctl envoy --xds` and restart it",
                            self.node_id
                        ));
                    }
                }
            }
        }
        out
    }

    async fn on_snapshot(&mut self, snap: &Snapshot) -> Result<(), Status> {
        let before = self.current.clone();
        if !self.rebuild(snap) {
            return Ok(());
        }
        let Some(current) = self.current.clone() else { return Ok(()) };
        if before
            .as_ref()
            .is_some_and(|b| b.clusters == current.clusters && b.extension_configs == current.extension_configs)
        {
            log(format!("{}: generation {} changes nothing for this proxy", self.node_id, snap.generation));
            return Ok(());
        }
        // Make before break: clusters added, then filter configurations, then clusters removed.
        self.queue.clear();
        let cds_subscribed = self.subscribed.contains_key(CLUSTER_TYPE);
        let old = self.sent.get(CLUSTER_TYPE).map(|s| s.resources.clone()).unwrap_or_default();
        let mut union = old.clone();
        union.extend(current.clusters.clone());
        if cds_subscribed && union != old {
            self.queue.push_back((CLUSTER_TYPE, union.clone()));
        }
        if self.subscribed.contains_key(ECDS_TYPE) {
            let ecds = self.wanted(ECDS_TYPE, &current);
            if self.sent.get(ECDS_TYPE).is_none_or(|s| s.resources != ecds) {
                self.queue.push_back((ECDS_TYPE, ecds));
            }
        }
        if cds_subscribed && union != current.clusters {
            self.queue.push_back((CLUSTER_TYPE, current.clusters.clone()));
        }
        self.pump().await
    }

    async fn pump(&mut self) -> Result<(), Status> {
        while self.awaiting.is_empty() {
            let Some((kind, resources)) = self.queue.pop_front() else { break };
            self.send(kind, resources).await?;
        }
        Ok(())
    }

    async fn send(&mut self, kind: &'static str, resources: BTreeMap<String, Any>) -> Result<(), Status> {
        self.nonce += 1;
        let generation = self.current.as_ref().map(|c| c.generation).unwrap_or(0);
        let nonce = self.nonce.to_string();
        let version = format!("{generation}.{nonce}");
        let response = DiscoveryResponse {
            version_info: version.clone(),
            resources: resources.values().cloned().collect(),
            type_url: kind.to_string(),
            nonce: nonce.clone(),
            ..Default::default()
        };
        log(format!("{}: sending {} version {version} ({} resources)", self.node_id, short(kind), resources.len()));
        self.sent.insert(kind.to_string(), Sent { nonce: nonce.clone(), resources });
        self.awaiting.insert(kind.to_string(), nonce);
        self.tx.send(Ok(response)).await.map_err(|_| Status::cancelled("stream closed"))
    }
}
