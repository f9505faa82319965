//! Per-VM metric ids. Envoy's `define_metric` returns a new id on every call (the ids live in the
//! VM's host context), so each distinct (label set, metric) is defined once and its id kept:
//! the hot path is one hash lookup on the encoded label set, then the increments.
//!
//! The number of label sets is bounded: label values come partly from the wire (the peer's
//! metadata, header-valued tag overrides), and an unbounded map would let clients grow memory
//! and the scrape for ever. Bounded is not blind: past the bound, a request whose label set is
//! new is recorded under its overflow label set (every wire-derived value replaced by
//! [`OVERFLOW_VALUE`], see `Stats::record_http`), so an outage that starts after the bound was
//! reached still shows in `istio_requests_total{response_code="503"}`; each such request also
//! bumps [`OVERFLOW_METRIC`].

use crate::labels::{Metric, MetricType, ServiceInfo, METRIC_COUNT};
use std::collections::HashMap;
use std::rc::Rc;

/// The three hostcalls the cache needs; the adapter implements them with proxy-wasm.
pub trait MetricHost {
    fn define(&mut self, ty: MetricType, name: &str) -> Option<u32>;
    /// Counter increment (never called with 0).
    fn increment(&mut self, id: u32, by: u64);
    /// Histogram sample.
    fn record(&mut self, id: u32, value: u64);
}

/// The stats filter's own counter of label sets refused by the bound (`wasmesh.<filter>.<event>`,
/// as `wasmesh-proxy`'s metric helper names every filter metric; Prometheus:
/// `wasmesh_stats_label_sets_overflow`).
pub const OVERFLOW_METRIC: &str = "wasmesh.stats.label_sets_overflow";
/// Default bound on distinct label sets per VM (configurable: `maxLabelSets`). Istio's stats
/// filter has no bound of its own (Envoy's stats grow with every new tag value); 10,000 label
/// sets are ~670,000 Prometheus lines per worker, far more than any real mesh proxy needs.
pub const DEFAULT_MAX_LABEL_SETS: usize = 10_000;
/// The value every wire-derived label takes in an overflow label set.
pub const OVERFLOW_VALUE: &str = "overflow";
/// Bound on the overflow label sets themselves (they vary only by what is config-bounded:
/// reporter, service from the cluster, response code, flags, protocol, gRPC status). Past it,
/// requests are only counted in [`OVERFLOW_METRIC`].
pub const MAX_OVERFLOW_LABEL_SETS: usize = 1_024;

/// Request keys remembered per label set (see [`MetricCache::fast_insert`]): a label set is
/// reached by a few keys (the same peer with and without an id, principals); a full map is
/// cleared, which only costs computing the labels again.
pub const FAST_KEYS_PER_LABEL_SET: usize = 4;

/// Most upstream clusters whose Istio service (`filter_metadata.istio.services[0]`, or the
/// cluster's name) is remembered per VM. Cluster names come from configuration, so real
/// proxies stay far below it; a full map is cleared, which only costs reading the metadata
/// again.
pub const MAX_CACHED_CLUSTERS: usize = 1_024;

/// Upstream cluster name → its Istio service, read once per cluster.
#[derive(Debug, Default)]
pub struct ServiceCache {
    map: HashMap<String, Option<Rc<ServiceInfo>>>,
}

impl ServiceCache {
    /// The cluster's service, found with `find` the first time.
    pub fn get_or_insert_with(
        &mut self,
        cluster: &str,
        find: impl FnOnce() -> Option<ServiceInfo>,
    ) -> Option<Rc<ServiceInfo>> {
        if let Some(hit) = self.map.get(cluster) {
            return hit.clone();
        }
        let found = find().map(Rc::new);
        if self.map.len() >= MAX_CACHED_CLUSTERS {
            self.map.clear();
        }
        self.map.insert(cluster.to_string(), found.clone());
        found
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What makes one request's label set differ from another's, without the labels: the hot
/// path hashes this small key instead of encoding ~1 KB of tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequestKey {
    pub protocol: u8,
    pub code: u32,
    pub grpc: Option<u32>,
    pub flags: u64,
    /// The peer's id in the [`crate::peer_cache::PeerCache`] (0: no peer).
    pub peer: u64,
    pub peer_principal: String,
    pub local_principal: String,
    pub cluster: String,
    pub exprs: Vec<Option<String>>,
}

impl RequestKey {
    /// Overwrites this key with another request's values, reusing its buffers (no allocation
    /// once the strings have grown to their usual size).
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        protocol: u8,
        code: u32,
        grpc: Option<u32>,
        flags: u64,
        peer: u64,
        peer_principal: &str,
        local_principal: &str,
        cluster: &str,
        exprs: &[Option<String>],
    ) {
        self.protocol = protocol;
        self.code = code;
        self.grpc = grpc;
        self.flags = flags;
        self.peer = peer;
        for (dst, src) in [
            (&mut self.peer_principal, peer_principal),
            (&mut self.local_principal, local_principal),
            (&mut self.cluster, cluster),
        ] {
            dst.clear();
            dst.push_str(src);
        }
        self.exprs.truncate(exprs.len());
        for (i, src) in exprs.iter().enumerate() {
            match self.exprs.get_mut(i) {
                Some(dst) => dst.clone_from(src),
                None => self.exprs.push(src.clone()),
            }
        }
    }
}

type Ids = [Option<u32>; METRIC_COUNT];

#[derive(Debug)]
pub struct MetricCache {
    /// Encoded label set → metric ids.
    ids: HashMap<String, Ids>,
    /// Overflow label sets (see [`OVERFLOW_VALUE`]) → metric ids.
    overflow: HashMap<String, Ids>,
    /// Request key → the ids of each metric group.
    fast: HashMap<RequestKey, Vec<Ids>>,
    /// The current request's key, rewritten in place per request (see [`MetricCache::key_mut`]).
    key: RequestKey,
    max_label_sets: usize,
    overflow_id: Option<u32>,
    /// Scratch buffer for the full stat name on a miss.
    name: String,
}

impl MetricCache {
    pub fn new(max_label_sets: usize) -> Self {
        MetricCache {
            ids: HashMap::new(),
            overflow: HashMap::new(),
            fast: HashMap::new(),
            key: RequestKey::default(),
            max_label_sets,
            overflow_id: None,
            name: String::new(),
        }
    }

    pub fn label_sets(&self) -> usize {
        self.ids.len()
    }

    /// The ids of one request key's groups, when seen before.
    pub fn fast_get(&self, key: &RequestKey) -> Option<&[Ids]> {
        self.fast.get(key).map(Vec::as_slice)
    }

    /// The scratch key of the current request: fill it with [`RequestKey::set`], then use
    /// [`MetricCache::fast_get_current`] / [`MetricCache::fast_insert_current`].
    pub fn key_mut(&mut self) -> &mut RequestKey {
        &mut self.key
    }

    /// [`MetricCache::fast_get`] for the scratch key.
    pub fn fast_get_current(&self) -> Option<&[Ids]> {
        self.fast.get(&self.key).map(Vec::as_slice)
    }

    /// [`MetricCache::fast_insert`] for (a copy of) the scratch key.
    pub fn fast_insert_current(&mut self, ids: Vec<Ids>) {
        let key = self.key.clone();
        self.fast_insert(key, ids);
    }

    pub fn fast_insert(&mut self, key: RequestKey, ids: Vec<Ids>) {
        // Bounded like the label sets; clearing only costs recomputing keys.
        if self.fast.len() >= self.max_label_sets.saturating_mul(FAST_KEYS_PER_LABEL_SET) {
            self.fast.clear();
        }
        self.fast.insert(key, ids);
    }

    /// Defines (once) `metrics` under the encoded tags `key`; `None` when the bound on label
    /// sets is reached (counted in [`OVERFLOW_METRIC`]).
    pub fn define(&mut self, host: &mut dyn MetricHost, key: &str, metrics: &[Metric]) -> Option<Ids> {
        if !self.ids.contains_key(key) && self.ids.len() >= self.max_label_sets {
            self.count_overflow(host);
            return None;
        }
        Some(define_in(&mut self.ids, &mut self.name, host, key, metrics))
    }

    /// Defines `metrics` under an overflow label set (a request [`MetricCache::define`] refused);
    /// `None` only past [`MAX_OVERFLOW_LABEL_SETS`].
    pub fn define_overflow(&mut self, host: &mut dyn MetricHost, key: &str, metrics: &[Metric]) -> Option<Ids> {
        if self.ids.contains_key(key) {
            return Some(define_in(&mut self.ids, &mut self.name, host, key, metrics));
        }
        if !self.overflow.contains_key(key) && self.overflow.len() >= MAX_OVERFLOW_LABEL_SETS {
            return None;
        }
        Some(define_in(&mut self.overflow, &mut self.name, host, key, metrics))
    }

    /// Number of overflow label sets in use.
    pub fn overflow_label_sets(&self) -> usize {
        self.overflow.len()
    }

    /// Records through known ids (a metric that could not be defined is skipped).
    pub fn record_ids(host: &mut dyn MetricHost, ids: &Ids, metric: Metric, value: u64) {
        let Some(id) = ids[metric.index()] else { return };
        match metric.metric_type() {
            MetricType::Counter if value > 0 => host.increment(id, value),
            MetricType::Counter => {}
            MetricType::Histogram => host.record(id, value),
        }
    }

    /// Records `value` for `metric` under the encoded tags `key` (`tag=.=value;.;…`), or under
    /// `overflow` (the same request's overflow label set) once the bound is reached.
    /// Returns false when the sample was dropped (both bounds reached, or the host refused).
    pub fn record(&mut self, host: &mut dyn MetricHost, key: &str, overflow: &str, metric: Metric, value: u64) -> bool {
        if metric.metric_type() == MetricType::Counter && value == 0 {
            return true;
        }
        let ids = match self.define(host, key, &[metric]) {
            Some(ids) => ids,
            None => match self.define_overflow(host, overflow, &[metric]) {
                Some(ids) => ids,
                None => return false,
            },
        };
        if ids[metric.index()].is_none() {
            return false;
        }
        Self::record_ids(host, &ids, metric, value);
        true
    }

    fn count_overflow(&mut self, host: &mut dyn MetricHost) {
        if self.overflow_id.is_none() {
            self.overflow_id = host.define(MetricType::Counter, OVERFLOW_METRIC);
        }
        if let Some(id) = self.overflow_id {
            host.increment(id, 1);
        }
    }
}

/// Most counters with increments waiting for the next flush (see [`PendingCounters`]). Counter
/// ids come from the bounded [`MetricCache`], so a real proxy stays far below it; a new counter
/// past it flushes everything first, which only costs the hostcalls a tick would have made.
pub const MAX_PENDING_COUNTERS: usize = 4_096;

/// Counter increments kept in the VM and handed to Envoy by [`PendingCounters::flush`] (the
/// filter's tick): `istio_requests_total` costs no hostcall per request, one per label set per
/// flush. Histogram samples are not batched (Envoy needs each sample for its buckets).
#[derive(Debug, Default)]
pub struct PendingCounters {
    /// Counter id → increments since the last flush (an entry stays at 0 after a flush, so a
    /// steady label set is not re-inserted every period).
    counts: HashMap<u32, u64>,
}

impl PendingCounters {
    /// Adds `by` to counter `id`; flushes through `host` first when a new id would pass
    /// [`MAX_PENDING_COUNTERS`].
    pub fn add(&mut self, host: &mut dyn MetricHost, id: u32, by: u64) {
        if by == 0 {
            return;
        }
        if let Some(n) = self.counts.get_mut(&id) {
            *n = n.saturating_add(by);
            return;
        }
        if self.counts.len() >= MAX_PENDING_COUNTERS {
            self.flush(host);
            self.counts.clear();
        }
        self.counts.insert(id, by);
    }

    /// One `increment` per counter that moved since the last flush.
    pub fn flush(&mut self, host: &mut dyn MetricHost) {
        for (id, n) in self.counts.iter_mut() {
            if *n > 0 {
                host.increment(*id, *n);
                *n = 0;
            }
        }
    }

    /// Counters with increments not yet flushed.
    pub fn waiting(&self) -> usize {
        self.counts.values().filter(|n| **n > 0).count()
    }

    /// Counters remembered (moved since the last flush, or in an earlier period).
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// A [`MetricHost`] that keeps counter increments in [`PendingCounters`] and passes
/// definitions and histogram samples on to `host`.
pub struct Batching<'a> {
    pub host: &'a mut dyn MetricHost,
    pub pending: &'a mut PendingCounters,
}

impl MetricHost for Batching<'_> {
    fn define(&mut self, ty: MetricType, name: &str) -> Option<u32> {
        self.host.define(ty, name)
    }
    fn increment(&mut self, id: u32, by: u64) {
        self.pending.add(self.host, id, by);
    }
    fn record(&mut self, id: u32, value: u64) {
        self.host.record(id, value);
    }
}

/// Looks up (or adds) `key` in `map` and defines the metrics it does not have yet.
fn define_in(
    map: &mut HashMap<String, Ids>,
    name: &mut String,
    host: &mut dyn MetricHost,
    key: &str,
    metrics: &[Metric],
) -> Ids {
    if let Some(ids) = map.get_mut(key) {
        define_missing(ids, name, host, key, metrics);
        return *ids;
    }
    let mut ids = [None; METRIC_COUNT];
    define_missing(&mut ids, name, host, key, metrics);
    map.insert(key.to_string(), ids);
    ids
}

fn define_missing(ids: &mut Ids, name: &mut String, host: &mut dyn MetricHost, key: &str, metrics: &[Metric]) {
    for metric in metrics {
        let Some(slot) = ids.get_mut(metric.index()) else { continue };
        if slot.is_none() {
            name.clear();
            name.push_str(key);
            name.push_str(metric.name());
            *slot = host.define(metric.metric_type(), name);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An in-memory host: stat name → value (counters) or samples (histograms).
    #[derive(Default, Debug)]
    pub struct FakeHost {
        pub names: Vec<(MetricType, String)>,
        pub counters: HashMap<String, u64>,
        pub samples: HashMap<String, Vec<u64>>,
        pub defines: usize,
    }

    impl MetricHost for FakeHost {
        fn define(&mut self, ty: MetricType, name: &str) -> Option<u32> {
            self.defines += 1;
            self.names.push((ty, name.to_string()));
            Some(self.names.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, by: u64) {
            assert!(by > 0, "never increment by 0");
            let name = self.names[id as usize].1.clone();
            *self.counters.entry(name).or_default() += by;
        }
        fn record(&mut self, id: u32, value: u64) {
            let name = self.names[id as usize].1.clone();
            self.samples.entry(name).or_default().push(value);
        }
    }

    #[test]
    fn defines_once_per_label_set_and_metric() {
        let mut host = FakeHost::default();
        let mut cache = MetricCache::new(10);
        for _ in 0..5 {
            assert!(cache.record(&mut host, "a=.=1;.;", "o;.;", Metric::RequestCount, 1));
            assert!(cache.record(&mut host, "a=.=1;.;", "o;.;", Metric::RequestDuration, 12));
        }
        cache.record(&mut host, "a=.=2;.;", "o;.;", Metric::RequestCount, 1);
        assert_eq!(host.defines, 3);
        assert_eq!(host.counters["a=.=1;.;istio_requests_total"], 5);
        assert_eq!(host.samples["a=.=1;.;istio_request_duration_milliseconds"], vec![12; 5]);
        assert_eq!(cache.label_sets(), 2);
    }

    #[test]
    fn zero_counter_increments_are_skipped() {
        let mut host = FakeHost::default();
        let mut cache = MetricCache::new(10);
        assert!(cache.record(&mut host, "k;.;", "o;.;", Metric::TcpSentBytes, 0));
        assert_eq!(host.defines, 0);
        assert!(cache.record(&mut host, "k;.;", "o;.;", Metric::RequestSize, 0), "a histogram records 0");
        assert_eq!(host.samples["k;.;istio_request_bytes"], vec![0]);
    }

    #[test]
    fn bounded_with_an_overflow_counter() {
        let mut host = FakeHost::default();
        let mut cache = MetricCache::new(3);
        for i in 0..10 {
            cache.record(&mut host, &format!("k=.={i};.;"), "o;.;", Metric::RequestCount, 1);
        }
        assert_eq!(cache.label_sets(), 3);
        assert_eq!(host.counters[OVERFLOW_METRIC], 7);
        // Bounded, not blind: the 7 refused requests are counted under the overflow label set.
        assert_eq!(host.counters["o;.;istio_requests_total"], 7);
        assert_eq!(cache.overflow_label_sets(), 1);
        // Known label sets still record.
        assert!(cache.record(&mut host, "k=.=0;.;", "o;.;", Metric::RequestCount, 1));
        assert_eq!(host.counters["k=.=0;.;istio_requests_total"], 2);
    }

    #[test]
    fn service_cache_reads_once_and_stays_bounded() {
        let mut services = ServiceCache::default();
        let mut reads = 0;
        for _ in 0..3 {
            let s = services.get_or_insert_with("outbound|80||a", || {
                reads += 1;
                Some(ServiceInfo { host: "a".into(), ..Default::default() })
            });
            assert_eq!(s.map(|s| s.host.clone()).as_deref(), Some("a"));
        }
        assert_eq!(reads, 1);
        for i in 0..MAX_CACHED_CLUSTERS * 3 {
            services.get_or_insert_with(&format!("c{i}"), || None);
            assert!(services.len() <= MAX_CACHED_CLUSTERS);
        }
    }

    #[test]
    fn request_keys_are_bounded() {
        let mut cache = MetricCache::new(2);
        let key = |i: usize| RequestKey {
            protocol: 0,
            code: 200,
            grpc: None,
            flags: 0,
            peer: i as u64,
            peer_principal: String::new(),
            local_principal: String::new(),
            cluster: String::new(),
            exprs: Vec::new(),
        };
        for i in 0..100 {
            cache.fast_insert(key(i), Vec::new());
            assert!(cache.fast.len() <= 2 * FAST_KEYS_PER_LABEL_SET);
        }
        assert!(cache.fast_get(&key(99)).is_some(), "the latest key is kept");
    }

    #[test]
    fn counters_wait_for_the_flush_histograms_do_not() {
        let mut host = FakeHost::default();
        let mut cache = MetricCache::new(10);
        let mut pending = PendingCounters::default();
        for _ in 0..3 {
            let mut b = Batching { host: &mut host, pending: &mut pending };
            assert!(cache.record(&mut b, "a=.=1;.;", "o;.;", Metric::RequestCount, 1));
            assert!(cache.record(&mut b, "a=.=1;.;", "o;.;", Metric::RequestDuration, 7));
        }
        assert!(host.counters.is_empty(), "no increment before the flush");
        assert_eq!(host.samples["a=.=1;.;istio_request_duration_milliseconds"], vec![7; 3]);
        assert_eq!(pending.waiting(), 1);
        pending.flush(&mut host);
        assert_eq!(host.counters["a=.=1;.;istio_requests_total"], 3);
        assert_eq!(pending.waiting(), 0);
        // A flush with nothing new calls nothing (FakeHost refuses increments by 0).
        pending.flush(&mut host);
        assert_eq!(host.counters["a=.=1;.;istio_requests_total"], 3);
        pending.add(&mut host, 0, 2);
        pending.flush(&mut host);
        assert_eq!(host.counters["a=.=1;.;istio_requests_total"], 5);
    }

    #[test]
    fn pending_counters_are_bounded_and_lose_nothing() {
        let mut host = FakeHost::default();
        for i in 0..MAX_PENDING_COUNTERS + 10 {
            host.define(MetricType::Counter, &format!("c{i}"));
        }
        let mut pending = PendingCounters::default();
        for round in 0..2 {
            for i in 0..MAX_PENDING_COUNTERS + 10 {
                pending.add(&mut host, i as u32, 1);
                assert!(pending.len() <= MAX_PENDING_COUNTERS, "round {round}");
            }
        }
        pending.flush(&mut host);
        let total: u64 = host.counters.values().sum();
        assert_eq!(total, 2 * (MAX_PENDING_COUNTERS as u64 + 10));
        assert!(host.counters.values().all(|n| *n == 2));
    }

    #[test]
    fn overflow_label_sets_are_bounded_too() {
        let mut host = FakeHost::default();
        let mut cache = MetricCache::new(1);
        assert!(cache.record(&mut host, "k=.=0;.;", "o;.;", Metric::RequestCount, 1));
        for i in 0..MAX_OVERFLOW_LABEL_SETS {
            assert!(cache.record(&mut host, &format!("k=.=n{i};.;"), &format!("o=.={i};.;"), Metric::RequestCount, 1));
        }
        assert_eq!(cache.overflow_label_sets(), MAX_OVERFLOW_LABEL_SETS);
        assert!(!cache.record(&mut host, "k=.=new;.;", "o=.=new;.;", Metric::RequestCount, 1), "past both bounds");
        // Still counted in the overflow counter; a known overflow set still records.
        assert_eq!(host.counters[OVERFLOW_METRIC], MAX_OVERFLOW_LABEL_SETS as u64 + 1);
        assert!(cache.record(&mut host, "k=.=new;.;", "o=.=7;.;", Metric::RequestCount, 1));
        assert_eq!(host.counters["o=.=7;.;istio_requests_total"], 2);
    }
}
