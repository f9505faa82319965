//! Istio's standard metrics, computed by a wasm filter.
//!
//! The filter configuration names the proxy's own workload, the listener's direction and the
//! Telemetry resources; [`StatsConfig::compile_json`] turns it, once, into [`Stats`]. Per request
//! the adapter gathers [`Facts`] (response code, flags, peer metadata, principals, cluster) in
//! `on_log`, and [`Stats::record_http`] computes the 25 labels in Istio's order, applies the
//! Telemetry overrides, encodes the tags into the metric name (see [`encode`]) and records through
//! the per-VM [`MetricCache`]. Nothing here knows proxy-wasm.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod encode;
pub mod exchange;
pub mod expr;
pub mod flags;
pub mod grpc;
pub mod labels;
pub mod overrides;
pub mod peer;
pub mod peer_cache;
pub mod proto;

pub use cache::{
    Batching, MetricCache, MetricHost, PendingCounters, ServiceCache, DEFAULT_MAX_LABEL_SETS, MAX_CACHED_CLUSTERS,
    MAX_OVERFLOW_LABEL_SETS, MAX_PENDING_COUNTERS, OVERFLOW_VALUE,
};
pub use labels::{Facts, Label, LabelValues, Metric, MetricType, Protocol, Reporter, ServiceInfo};
pub use overrides::{MetricPlan, Mode, Plans, Slot};
pub use peer::{LocalInfo, PeerMetadata};
pub use peer_cache::{CachedPeer, PeerCache};

use expr::Expr;
use serde::{Deserialize, Serialize};
pub use wasmesh_istio::CompileError;
use wasmesh_istio::{Error, FilterConfig, MeshIdentity, ProxyMode, Resources, Workload};

/// Which listener the filter runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Direction {
    /// Sidecar inbound: reports as `destination`.
    Inbound,
    /// Sidecar outbound: reports as `source`.
    Outbound,
    /// Gateway: reports as `source` (Istio treats gateway listeners as client-side).
    Gateway,
}

/// Whether the filter is an HTTP filter or a network (TCP) filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ListenerProtocol {
    #[default]
    Http,
    Tcp,
}

/// The filter configuration `wasmeshctl` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatsConfig {
    /// The proxy. Absent: the filter builds it from the Envoy node metadata Istio writes,
    /// completed by `mesh`; what the node does not say is reported as `unknown` (fail open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Trust domain, root namespace and DNS suffix for a node-derived workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshIdentity>,
    /// The listener's direction. Absent: a gateway reports as `gateway`, a sidecar decides per
    /// connection from Envoy's `xds.listener_direction` (INBOUND: reporter destination; else
    /// source), as Istio's stats filter does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// HTTP filter (`wasmesh.stats`) or network filter (`wasmesh.stats.tcp`).
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// Telemetry resources (Istio JSON); the ones that apply to the workload are used.
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
    /// Inbound: the services the workload backs (Istio's inbound cluster metadata
    /// `istio.services`); the first is reported as `destination_service`. Empty: the inbound
    /// cluster's own metadata `filter_metadata.istio.services[0]` is read per cluster, as Istio's
    /// stats filter does (no Host-header fallback on inbound, Istio's `disableHostHeaderFallback`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceInfo>,
    /// Bound on distinct label sets per VM (per worker thread).
    #[serde(default = "default_max_label_sets")]
    pub max_label_sets: usize,
    /// Exchange `x-envoy-peer-metadata` headers (HTTP only).
    #[serde(default = "default_true")]
    pub metadata_exchange: bool,
    /// Hosts outside the mesh (ServiceEntries with `location: MESH_EXTERNAL`; `*.example.com`
    /// wildcards allowed): requests to them get no exchange headers, and their responses are not
    /// trusted for peer metadata (Istio's `skip_external_clusters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_hosts: Vec<String>,
    /// TCP only: Istio's TCP metadata exchange (a preamble before the application bytes, see
    /// [`exchange`]). Only for filter chains where both ends run it: the server's chain matched
    /// on TLS offering ALPN `istio-peer-exchange`, and a client whose upstream mTLS offers
    /// that ALPN; the client also requires that the upstream presented a certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peer_exchange: bool,
    /// Write the peer's metadata learnt by the exchange to Envoy filter state
    /// (`wasmesh-handover` `PEER_DOWNSTREAM` / `PEER_UPSTREAM`) for later filters, e.g. an
    /// access log. Off unless such a reader is configured: the write costs a hostcall and a
    /// copy on every request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_peer: bool,
    /// Inbound HTTP only: Envoy removes the request's `x-envoy-peer-metadata` and
    /// `x-envoy-peer-metadata-id` itself before the application sees them (the inbound route
    /// configuration's `request_headers_to_remove`, applied by Envoy's router after the filters
    /// read them, as `wasmeshctl envoy`/`serve` write it), so the filter does not remove them
    /// (two hostcalls, ~5k instructions per request with the headers). Without it the filter
    /// removes them itself. Refused on an outbound or gateway filter, which adds these headers to
    /// the upstream request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exchange_headers_removed: bool,
    /// Outbound and gateway only: no upstream endpoint carries Istio's workload metadata
    /// (`filter_metadata.istio.workload`), as in the clusters `wasmeshctl envoy`/`serve` write.
    /// Istio's stats filter falls back to that metadata for the upstream peer when the response
    /// brought no exchange headers (istiod writes it on every mesh endpoint); with this set the
    /// filter does not read it (one attribute of the log-time batch, ~10k instructions, on every
    /// such request; one `get_property` per TCP connection), and the peer is unknown then, as the
    /// absent metadata would make it. Refused on an inbound filter, which never reads it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_endpoint_metadata: bool,
    /// Outbound and gateway HTTP only: every route of the listener sends the request to the
    /// cluster this request header names (Envoy's `cluster_header`), as in the route
    /// configurations `wasmeshctl envoy`/`serve` write for the wasm router. When a phase of the
    /// same filter (the router phase) set the header, the filter takes the destination cluster
    /// from it instead of reading `xds.cluster_name` (one attribute of the log-time batch, ~6k
    /// instructions per request); when Envoy found no such cluster (response flag `NC`) the
    /// cluster is empty, as Envoy reports it. Elsewhere (per-filter layouts, a request the router
    /// phase did not route) the attribute is read. Refused on inbound and TCP filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_header: Option<String>,
    /// Outbound and gateway HTTP only: Envoy adds `x-envoy-peer-metadata` and
    /// `x-envoy-peer-metadata-id` to every upstream request itself, with exactly the values the
    /// filter would write ([`Stats::header_value`], [`LocalInfo::node_id`]), replacing what the
    /// client sent (the listener's route configuration `request_headers_to_add` with
    /// `OVERWRITE_IF_EXISTS_OR_ADD`, as the static bootstrap of `wasmeshctl envoy` writes it where
    /// no `MESH_EXTERNAL` host is known), so the filter does not write them (two hostcalls, ~8k
    /// instructions per request). A route adds them to every request, so this is refused with
    /// `externalHosts` (requests to those hosts must not get them), with `metadataExchange`
    /// off, without a `direction` (a WasmPlugin's configuration, whose routes istiod writes)
    /// and on an inbound or TCP filter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exchange_headers_added: bool,
    /// The first URI SAN of this proxy's own certificate on the side the filter's direction
    /// reads it from (inbound: the certificate it serves to downstream peers; outbound and
    /// gateway: the one it presents upstream), where the writer of the configuration knows it:
    /// `wasmeshctl envoy` reads it from the certificate file it points every such TLS context at
    /// (the client side only where no DestinationRule originates TLS with other files). With it
    /// the filter does not read `connection.uri_san_local_certificate` /
    /// `upstream.uri_san_local_certificate` (one `get_property`, ~12k instructions, on every
    /// request or connection whose peer presented a certificate). Used, as the attribute is, only
    /// when the peer presented a certificate: the `destination_principal` label inbound, the
    /// `source_principal` label on the client side. Must be non-empty, without control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_principal: Option<String>,
}

fn default_max_label_sets() -> usize {
    DEFAULT_MAX_LABEL_SETS
}
fn default_true() -> bool {
    true
}

/// Metrics that share one plan share one encoded label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub metrics: Vec<Metric>,
    pub plan: MetricPlan,
}

/// HTTP per-request measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpMeasures {
    pub duration_ms: Option<u64>,
    pub request_bytes: Option<u64>,
    pub response_bytes: Option<u64>,
    /// gRPC only: the counts of Envoy's `grpc_stats` filter state; `None` without it (nothing
    /// is added to the message counters then, as Istio's stats filter adds nothing).
    pub grpc_messages: Option<grpc::GrpcMessages>,
}

/// A compiled stats filter configuration.
#[derive(Debug)]
pub struct Stats {
    pub direction: Direction,
    pub protocol: ListenerProtocol,
    pub reporter: Reporter,
    pub local: LocalInfo,
    /// Our `x-envoy-peer-metadata` value.
    pub header_value: String,
    pub metadata_exchange: bool,
    /// TCP metadata exchange enabled on this filter chain.
    pub peer_exchange: bool,
    /// Our TCP exchange preamble (empty unless `peer_exchange`).
    pub preamble: Vec<u8>,
    /// Hand the peer to later filters through filter state.
    pub publish_peer: bool,
    /// Envoy removes the request's exchange headers (inbound); the filter leaves them.
    pub exchange_headers_removed: bool,
    /// The upstream endpoints carry no Istio workload metadata: the fallback is not read.
    pub no_endpoint_metadata: bool,
    /// The request header every route takes the cluster from (`clusterHeader`).
    pub cluster_header: Option<String>,
    /// Envoy's route adds our exchange headers to every upstream request (outbound, gateway);
    /// the filter does not write them.
    pub exchange_headers_added: bool,
    /// Our certificate's first URI SAN, known from configuration (`localPrincipal`): not read.
    pub local_principal: Option<String>,
    pub max_label_sets: usize,
    external_hosts: Vec<String>,
    inbound_service: Option<ServiceInfo>,
    plans: Plans,
    http_groups: Vec<Group>,
    tcp_groups: Vec<Group>,
    http_exprs: Vec<usize>,
    tcp_exprs: Vec<usize>,
}

wasmesh_istio::filter_config!(StatsConfig, "stats");

impl StatsConfig {
    /// Parses the configuration and compiles it (`workload` and `direction` must be present).
    pub fn compile_json(bytes: &[u8]) -> Result<Stats, CompileError> {
        let cfg = StatsConfig::parse_json(bytes)?;
        cfg.compile(&cfg.parsed_resources()?)
    }

    /// The directions a filter with this (workload-complete) configuration serves: the
    /// configured one, `gateway` for a gateway, else inbound and outbound (chosen per
    /// connection from the listener's direction).
    pub fn directions(&self) -> Vec<Direction> {
        match (self.direction, self.workload.as_ref().map(|w| w.mode)) {
            (Some(d), _) => vec![d],
            (None, Some(ProxyMode::Gateway)) => vec![Direction::Gateway],
            (None, _) => vec![Direction::Inbound, Direction::Outbound],
        }
    }

    /// Compiles for one direction (see [`StatsConfig::directions`]).
    pub fn compile_for(&self, direction: Direction, resources: &Resources) -> Result<Stats, CompileError> {
        if self.exchange_headers_added && self.direction.is_none() {
            return Err(CompileError::msg(
                "stats configuration: exchangeHeadersAdded needs a direction (outbound or gateway): without one the configuration serves every listener of the proxy (a WasmPlugin), whose routes are not the ones wasmeshctl writes with the exchange headers",
            ));
        }
        let cfg = StatsConfig { direction: Some(direction), ..self.clone() };
        cfg.compile(resources)
    }

    pub fn compile(&self, resources: &Resources) -> Result<Stats, CompileError> {
        let mut errors = Vec::new();
        let (Some(workload), Some(direction)) = (&self.workload, self.direction) else {
            return Err(CompileError::msg(
                "stats configuration: workload and direction are needed to compile; the filter takes absent ones from the Envoy node and listener",
            ));
        };
        match (direction, workload.mode) {
            (Direction::Gateway, ProxyMode::Sidecar)
            | (Direction::Inbound | Direction::Outbound, ProxyMode::Gateway) => {
                errors.push(Error::new(format!(
                    "stats configuration: direction {:?} does not fit workload mode {:?}",
                    direction, workload.mode
                )));
            }
            _ => {}
        }
        if self.peer_exchange && self.protocol != ListenerProtocol::Tcp {
            errors.push(Error::new(
                "stats configuration: peerExchange is the TCP metadata exchange and needs protocol \"tcp\"; HTTP filters exchange x-envoy-peer-metadata headers (metadataExchange)",
            ));
        }
        if self.exchange_headers_removed && (direction != Direction::Inbound || self.protocol != ListenerProtocol::Http)
        {
            errors.push(Error::new(format!(
                "stats configuration: exchangeHeadersRemoved is for inbound HTTP filters only (here direction {:?}, protocol {:?}): outbound and gateway filters add the exchange headers to the upstream request, and Envoy removing them there would drop them",
                direction, self.protocol
            )));
        }
        if self.no_endpoint_metadata && direction == Direction::Inbound {
            errors.push(Error::new(
                "stats configuration: noEndpointMetadata is for outbound and gateway filters: an inbound filter never reads the upstream endpoint's metadata (its peer is downstream)",
            ));
        }
        if let Some(h) = &self.cluster_header {
            if direction == Direction::Inbound || self.protocol != ListenerProtocol::Http {
                errors.push(Error::new(format!(
                    "stats configuration: clusterHeader is for outbound and gateway HTTP filters only (here direction {:?}, protocol {:?}): an inbound listener's route names its cluster, and TCP has no routes",
                    direction, self.protocol
                )));
            } else if !wasmesh_istio::validate::is_lowercase_header_name(h) {
                // As the router checks its own `clusterHeader`.
                errors.push(Error::new(format!(
                    "stats configuration: clusterHeader {h:?} is not a lower-case HTTP header name"
                )));
            }
        }
        if self.exchange_headers_added {
            if direction == Direction::Inbound || self.protocol != ListenerProtocol::Http {
                errors.push(Error::new(format!(
                    "stats configuration: exchangeHeadersAdded is for outbound and gateway HTTP filters only (here direction {:?}, protocol {:?}): only they send the exchange headers upstream",
                    direction, self.protocol
                )));
            }
            if !self.metadata_exchange {
                errors.push(Error::new(
                    "stats configuration: exchangeHeadersAdded with metadataExchange false: the route would send the exchange headers the filter is configured not to send",
                ));
            }
            if !self.external_hosts.is_empty() {
                errors.push(Error::new(format!(
                    "stats configuration: exchangeHeadersAdded with externalHosts {:?}: the route adds the exchange headers to every request, and requests to hosts outside the mesh must not get them; leave exchangeHeadersAdded out and the filter sends them to mesh hosts only",
                    self.external_hosts
                )));
            }
        }
        if let Some(p) = &self.local_principal {
            if p.is_empty() || p.chars().any(char::is_control) {
                errors.push(Error::new(format!(
                    "stats configuration: localPrincipal {p:?} is not a certificate's URI SAN (expected a non-empty value without control characters, e.g. spiffe://cluster.local/ns/default/sa/default)"
                )));
            }
        }
        if self.max_label_sets == 0 {
            errors.push(Error::new("stats configuration: maxLabelSets must be at least 1"));
        }
        for (i, h) in self.external_hosts.iter().enumerate() {
            if h.is_empty() || h.contains('/') || h.chars().skip(1).any(|c| c == '*') {
                errors.push(Error::new(format!(
                    "stats configuration: externalHosts[{i}] {h:?} is not a host name (a leading `*.` wildcard is allowed)"
                )));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.host.is_empty() {
                errors.push(Error::new(format!("stats configuration: services[{i}].host is empty")));
            }
        }
        let mode = match direction {
            Direction::Inbound => Mode::Server,
            Direction::Outbound | Direction::Gateway => Mode::Client,
        };
        let plans = match overrides::compile(resources, workload, mode) {
            Ok(p) => p,
            Err(mut e) => {
                errors.append(&mut e);
                Plans::standard()
            }
        };
        if !errors.is_empty() {
            return Err(CompileError(errors));
        }
        let local = LocalInfo::from_workload(workload);
        let preamble = if self.peer_exchange { exchange::encode_preamble(&local) } else { Vec::new() };
        let http_groups = groups(&plans, &Metric::HTTP);
        let tcp_groups = groups(&plans, &Metric::TCP);
        let inbound_service = self.services.first().map(|s| {
            let mut s = s.clone();
            if s.name.is_empty() {
                s.name = s.host.split('.').next().unwrap_or_default().to_string();
            }
            s
        });
        Ok(Stats {
            direction,
            protocol: self.protocol,
            reporter: if direction == Direction::Inbound { Reporter::Destination } else { Reporter::Source },
            header_value: local.header_value(),
            local,
            metadata_exchange: self.metadata_exchange,
            peer_exchange: self.peer_exchange,
            preamble,
            publish_peer: self.publish_peer,
            exchange_headers_removed: self.exchange_headers_removed,
            no_endpoint_metadata: self.no_endpoint_metadata,
            cluster_header: self.cluster_header.clone(),
            exchange_headers_added: self.exchange_headers_added,
            local_principal: self.local_principal.clone(),
            max_label_sets: self.max_label_sets,
            external_hosts: self.external_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            inbound_service,
            http_exprs: plans.exprs_used_by(&Metric::HTTP),
            tcp_exprs: plans.exprs_used_by(&Metric::TCP),
            plans,
            http_groups,
            tcp_groups,
        })
    }
}

fn groups(plans: &Plans, metrics: &[Metric]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for m in metrics {
        let plan = plans.plan(*m);
        if !plan.enabled {
            continue;
        }
        match out.iter_mut().find(|g| g.plan == *plan) {
            Some(g) => g.metrics.push(*m),
            None => out.push(Group { metrics: vec![*m], plan: plan.clone() }),
        }
    }
    out
}

impl Stats {
    pub fn exprs(&self) -> &[Expr] {
        &self.plans.exprs
    }

    /// Indices of the expressions an HTTP (or TCP) filter must evaluate per request.
    pub fn exprs_needed(&self) -> &[usize] {
        match self.protocol {
            ListenerProtocol::Http => &self.http_exprs,
            ListenerProtocol::Tcp => &self.tcp_exprs,
        }
    }

    /// Whether any metric of this listener is recorded at all.
    pub fn any_enabled(&self) -> bool {
        match self.protocol {
            ListenerProtocol::Http => !self.http_groups.is_empty(),
            ListenerProtocol::Tcp => !self.tcp_groups.is_empty(),
        }
    }

    pub fn plan(&self, m: Metric) -> &MetricPlan {
        self.plans.plan(m)
    }

    /// Evaluates the needed expressions; `read(path)` fetches an attribute.
    pub fn evaluate(&self, mut read: impl FnMut(&[String]) -> Option<Vec<u8>>) -> Vec<Option<String>> {
        let mut values = vec![None; self.plans.exprs.len()];
        for &i in self.exprs_needed() {
            values[i] = match &self.plans.exprs[i] {
                Expr::Literal(s) => Some(s.clone()),
                Expr::Attribute { path, ty } => expr::format_value(*ty, read(path).as_deref()),
            };
        }
        values
    }

    /// The service for `destination_service*`: on inbound the configured one, else what the
    /// cluster's name says (`outbound|port|subset|host`).
    pub fn service_for_cluster(&self, cluster_name: &str) -> Option<ServiceInfo> {
        if self.direction == Direction::Inbound {
            if let Some(s) = &self.inbound_service {
                return Some(s.clone());
            }
        }
        labels::service_from_cluster_name(cluster_name)
    }

    /// Whether the upstream cluster's name matters for the labels (not on an inbound listener
    /// whose services are configured).
    pub fn needs_cluster(&self) -> bool {
        !(self.direction == Direction::Inbound && self.inbound_service.is_some())
    }

    /// Whether any external host is configured (only then is the authority worth reading).
    pub fn has_external_hosts(&self) -> bool {
        !self.external_hosts.is_empty()
    }

    /// Whether a request's `:authority` names a host outside the mesh (port and case ignored).
    pub fn is_external_authority(&self, authority: &[u8]) -> bool {
        let host = match authority.iter().rposition(|c| *c == b':') {
            // `[::1]:80` and `host:80`, but not a bare IPv6 address.
            Some(i) if !authority.starts_with(b"[") || authority.get(i.wrapping_sub(1)) == Some(&b']') => {
                &authority[..i]
            }
            _ => authority,
        };
        let Ok(host) = std::str::from_utf8(host) else { return false };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.external_hosts.iter().any(|h| match h.strip_prefix('*') {
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => *h == host,
        })
    }

    /// Response flags as Istio would report them. A 404 that never reached an upstream cluster
    /// on a client-side listener is the wasm router's "no route": Envoy's own router reports
    /// that as `NR`, so it is reported the same way.
    pub fn effective_flags(&self, response_code: u32, cluster_name: &str, flags: u64) -> u64 {
        if flags == 0 && response_code == 404 && cluster_name.is_empty() && self.direction != Direction::Inbound {
            return 1 << 8;
        }
        flags
    }

    /// All standard labels of one request or connection.
    pub fn labels<'a>(&'a self, facts: &Facts<'a>) -> LabelValues<'a> {
        labels::compute(self.reporter, &self.local, facts)
    }

    /// Encodes one group's tags (`tag=.=value;.;…`) into `out`.
    pub fn encode(&self, group: &Group, labels: &LabelValues<'_>, exprs: &[Option<String>], out: &mut String) {
        out.clear();
        let value = |i: usize| -> &str { exprs.get(i).and_then(|v| v.as_deref()).unwrap_or("unknown") };
        let list = group.metrics.first().map(|m| m.labels()).unwrap_or(&labels::HTTP_LABELS);
        for (label, slot) in list.iter().zip(group.plan.slots.iter()) {
            match slot {
                Slot::Keep => encode::push_tag(out, label.name(), &labels[*label as usize]),
                Slot::Remove => {}
                Slot::Expr(i) => encode::push_tag(out, label.name(), value(*i)),
            }
        }
        for (name, i) in &group.plan.additions {
            encode::push_tag(out, name, value(*i));
        }
    }

    /// The HTTP groups and their encoded keys for one request.
    pub fn http_keys(&self, facts: &Facts<'_>, exprs: &[Option<String>]) -> Vec<(&Group, String)> {
        let labels = self.labels(facts);
        self.http_groups
            .iter()
            .map(|g| {
                let mut key = String::with_capacity(1024);
                self.encode(g, &labels, exprs, &mut key);
                (g, key)
            })
            .collect()
    }

    /// The TCP groups and their encoded keys for one connection (with the overflow keys the
    /// cache falls back to past its bound).
    pub fn tcp_keys(&self, facts: &Facts<'_>, exprs: &[Option<String>]) -> Vec<TcpKey> {
        let labels = self.labels(facts);
        let (overflow_labels, overflow_exprs) = self.overflow_labels(&labels, exprs);
        self.tcp_groups
            .iter()
            .map(|g| {
                let mut key = String::with_capacity(1024);
                self.encode(g, &labels, exprs, &mut key);
                let mut overflow = String::with_capacity(1024);
                self.encode(g, &overflow_labels, &overflow_exprs, &mut overflow);
                TcpKey { metrics: g.metrics.clone(), key, overflow }
            })
            .collect()
    }

    /// The overflow label set of a request: every label the wire can vary without bound (the
    /// peer's metadata and principal, values of Telemetry expressions) becomes
    /// [`cache::OVERFLOW_VALUE`]; what configuration bounds (reporter, this proxy, the service
    /// from the cluster, response code, flags, protocol) stays, so an outage still shows.
    pub fn overflow_labels<'a>(
        &self,
        labels: &LabelValues<'a>,
        exprs: &[Option<String>],
    ) -> (LabelValues<'a>, Vec<Option<String>>) {
        use std::borrow::Cow;
        let mut out = labels.clone();
        let wire: &[Label] = match self.reporter {
            Reporter::Destination => &[
                Label::SourceWorkload,
                Label::SourceCanonicalService,
                Label::SourceCanonicalRevision,
                Label::SourceWorkloadNamespace,
                Label::SourcePrincipal,
                Label::SourceApp,
                Label::SourceVersion,
                Label::SourceCluster,
            ],
            Reporter::Source => &[
                Label::DestinationWorkload,
                Label::DestinationWorkloadNamespace,
                Label::DestinationPrincipal,
                Label::DestinationApp,
                Label::DestinationVersion,
                Label::DestinationCanonicalService,
                Label::DestinationCanonicalRevision,
                Label::DestinationServiceNamespace,
                Label::DestinationCluster,
            ],
        };
        for l in wire {
            if let Some(v) = out.get_mut(*l as usize) {
                *v = Cow::Borrowed(cache::OVERFLOW_VALUE);
            }
        }
        let exprs = exprs
            .iter()
            .zip(&self.plans.exprs)
            .map(|(v, e)| match e {
                Expr::Literal(_) => v.clone(),
                Expr::Attribute { .. } => v.as_ref().map(|_| cache::OVERFLOW_VALUE.to_string()),
            })
            .collect();
        (out, exprs)
    }

    /// Records the HTTP metrics of one finished request. `peer_id` is the peer's id in the
    /// [`PeerCache`] (0 with no peer); with a known id the label set is looked up by a small
    /// [`cache::RequestKey`] and the labels are only computed the first time.
    #[allow(clippy::too_many_arguments)]
    pub fn record_http(
        &self,
        cache: &mut MetricCache,
        host: &mut dyn MetricHost,
        facts: &Facts<'_>,
        peer_id: u64,
        exprs: &[Option<String>],
        m: &HttpMeasures,
        scratch: &mut String,
    ) {
        if self.http_groups.is_empty() {
            return;
        }
        let grpc = facts.protocol == Protocol::Grpc;
        let value = |metric: Metric| match metric {
            Metric::RequestCount => Some(1),
            Metric::RequestDuration => m.duration_ms,
            Metric::RequestSize => m.request_bytes,
            Metric::ResponseSize => m.response_bytes,
            Metric::GrpcRequestMessages if grpc => m.grpc_messages.map(|g| g.request),
            Metric::GrpcResponseMessages if grpc => m.grpc_messages.map(|g| g.response),
            _ => None,
        };
        let applicable =
            |metric: &&Metric| grpc || !matches!(metric, Metric::GrpcRequestMessages | Metric::GrpcResponseMessages);
        // The request's small key (not its ~1 KB of tags), written into the cache's scratch
        // key so a hit allocates nothing.
        let fast = facts.peer.is_none() || peer_id != 0;
        if fast {
            cache.key_mut().set(
                facts.protocol as u8,
                facts.response_code,
                facts.grpc_status,
                facts.response_flags,
                peer_id,
                facts.peer_principal,
                facts.local_principal,
                facts.cluster_name,
                exprs,
            );
            if let Some(ids) = cache.fast_get_current() {
                for (g, ids) in self.http_groups.iter().zip(ids) {
                    for metric in g.metrics.iter().filter(applicable) {
                        if let Some(v) = value(*metric) {
                            MetricCache::record_ids(host, ids, *metric, v);
                        }
                    }
                }
                return;
            }
        }
        let labels = self.labels(facts);
        let mut overflow: Option<(LabelValues<'_>, Vec<Option<String>>)> = None;
        let mut all_ids = Vec::with_capacity(self.http_groups.len());
        for g in &self.http_groups {
            self.encode(g, &labels, exprs, scratch);
            let metrics: Vec<Metric> = g.metrics.iter().filter(applicable).copied().collect();
            let ids = match cache.define(host, scratch, &metrics) {
                Some(ids) => ids,
                None => {
                    // Over the bound on label sets: counted under the overflow label set.
                    let (ol, oe) = overflow.get_or_insert_with(|| self.overflow_labels(&labels, exprs));
                    self.encode(g, ol, oe, scratch);
                    match cache.define_overflow(host, scratch, &metrics) {
                        Some(ids) => ids,
                        None => continue,
                    }
                }
            };
            for metric in &metrics {
                if let Some(v) = value(*metric) {
                    MetricCache::record_ids(host, &ids, *metric, v);
                }
            }
            all_ids.push(ids);
        }
        if fast && all_ids.len() == self.http_groups.len() {
            cache.fast_insert_current(all_ids);
        }
    }
}

/// The encoded keys of one TCP metric group: its label set and, for when the cache's bound is
/// reached, its overflow label set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpKey {
    pub metrics: Vec<Metric>,
    pub key: String,
    pub overflow: String,
}

/// The bootstrap `stats_config.stats_tags` entries every wasmesh proxy needs: one per standard
/// label plus every custom tag the Telemetry resources add, as `(tag_name, regex)`.
pub fn stats_tags(resources: &Resources) -> Vec<(String, String)> {
    let mut names: Vec<String> = labels::HTTP_LABELS.iter().map(|l| l.name().to_string()).collect();
    names.extend(ISTIO_BUILD_TAGS.iter().map(|t| t.to_string()));
    names.extend(overrides::custom_tag_names(resources));
    names.into_iter().map(|n| (n.clone(), encode::stats_tag_regex(&n))).collect()
}

/// The labels of `istio_build`, the gauge every Istio proxy sets to 1 (Istio's mesh dashboard
/// reads it): `istio_build{component="proxy",tag="<version>"}`.
pub const ISTIO_BUILD_TAGS: [&str; 2] = ["component", "tag"];

/// The encoded Envoy name of the `istio_build` gauge for proxy version `tag`.
pub fn istio_build_metric(tag: &str) -> String {
    let mut s = String::new();
    encode::push_tag(&mut s, "component", "proxy");
    encode::push_tag(&mut s, "tag", tag);
    s.push_str("istio_build");
    s
}

/// Validation for `wasmeshctl validate`: every Telemetry's metrics section.
pub fn validate(resources: &Resources) -> Vec<Error> {
    overrides::validate(resources)
}

#[cfg(test)]
mod tests;
