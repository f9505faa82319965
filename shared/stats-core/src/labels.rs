//! Istio's standard metrics and their labels, in Istio's emission order, and the rules that fill
//! each label (istio/proxy `source/extensions/filters/http/istio_stats/istio_stats.cc`,
//! `populatePeerInfo`, `log`, `populateFlagsAndConnectionSecurity`).

use crate::peer::{LocalInfo, PeerMetadata};
use std::borrow::Cow;

/// The standard labels, in the order Istio emits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    Reporter,
    SourceWorkload,
    SourceCanonicalService,
    SourceCanonicalRevision,
    SourceWorkloadNamespace,
    SourcePrincipal,
    SourceApp,
    SourceVersion,
    SourceCluster,
    DestinationWorkload,
    DestinationWorkloadNamespace,
    DestinationPrincipal,
    DestinationApp,
    DestinationVersion,
    DestinationService,
    DestinationCanonicalService,
    DestinationCanonicalRevision,
    DestinationServiceName,
    DestinationServiceNamespace,
    DestinationCluster,
    RequestProtocol,
    ResponseCode,
    GrpcResponseStatus,
    ResponseFlags,
    ConnectionSecurityPolicy,
}

pub const LABEL_COUNT: usize = 25;

/// HTTP and gRPC metrics carry all 25 labels.
pub const HTTP_LABELS: [Label; LABEL_COUNT] = [
    Label::Reporter,
    Label::SourceWorkload,
    Label::SourceCanonicalService,
    Label::SourceCanonicalRevision,
    Label::SourceWorkloadNamespace,
    Label::SourcePrincipal,
    Label::SourceApp,
    Label::SourceVersion,
    Label::SourceCluster,
    Label::DestinationWorkload,
    Label::DestinationWorkloadNamespace,
    Label::DestinationPrincipal,
    Label::DestinationApp,
    Label::DestinationVersion,
    Label::DestinationService,
    Label::DestinationCanonicalService,
    Label::DestinationCanonicalRevision,
    Label::DestinationServiceName,
    Label::DestinationServiceNamespace,
    Label::DestinationCluster,
    Label::RequestProtocol,
    Label::ResponseCode,
    Label::GrpcResponseStatus,
    Label::ResponseFlags,
    Label::ConnectionSecurityPolicy,
];

/// TCP metrics have no `response_code` and no `grpc_response_status`.
pub const TCP_LABELS: [Label; 23] = [
    Label::Reporter,
    Label::SourceWorkload,
    Label::SourceCanonicalService,
    Label::SourceCanonicalRevision,
    Label::SourceWorkloadNamespace,
    Label::SourcePrincipal,
    Label::SourceApp,
    Label::SourceVersion,
    Label::SourceCluster,
    Label::DestinationWorkload,
    Label::DestinationWorkloadNamespace,
    Label::DestinationPrincipal,
    Label::DestinationApp,
    Label::DestinationVersion,
    Label::DestinationService,
    Label::DestinationCanonicalService,
    Label::DestinationCanonicalRevision,
    Label::DestinationServiceName,
    Label::DestinationServiceNamespace,
    Label::DestinationCluster,
    Label::RequestProtocol,
    Label::ResponseFlags,
    Label::ConnectionSecurityPolicy,
];

impl Label {
    pub fn name(self) -> &'static str {
        match self {
            Label::Reporter => "reporter",
            Label::SourceWorkload => "source_workload",
            Label::SourceCanonicalService => "source_canonical_service",
            Label::SourceCanonicalRevision => "source_canonical_revision",
            Label::SourceWorkloadNamespace => "source_workload_namespace",
            Label::SourcePrincipal => "source_principal",
            Label::SourceApp => "source_app",
            Label::SourceVersion => "source_version",
            Label::SourceCluster => "source_cluster",
            Label::DestinationWorkload => "destination_workload",
            Label::DestinationWorkloadNamespace => "destination_workload_namespace",
            Label::DestinationPrincipal => "destination_principal",
            Label::DestinationApp => "destination_app",
            Label::DestinationVersion => "destination_version",
            Label::DestinationService => "destination_service",
            Label::DestinationCanonicalService => "destination_canonical_service",
            Label::DestinationCanonicalRevision => "destination_canonical_revision",
            Label::DestinationServiceName => "destination_service_name",
            Label::DestinationServiceNamespace => "destination_service_namespace",
            Label::DestinationCluster => "destination_cluster",
            Label::RequestProtocol => "request_protocol",
            Label::ResponseCode => "response_code",
            Label::GrpcResponseStatus => "grpc_response_status",
            Label::ResponseFlags => "response_flags",
            Label::ConnectionSecurityPolicy => "connection_security_policy",
        }
    }

    pub fn from_name(name: &str) -> Option<Label> {
        HTTP_LABELS.into_iter().find(|l| l.name() == name)
    }
}

/// The standard metrics (Telemetry API `MetricSelector.IstioMetric`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    GrpcRequestMessages,
    GrpcResponseMessages,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
}

pub const METRIC_COUNT: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Histogram,
}

impl Metric {
    pub const ALL: [Metric; METRIC_COUNT] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::GrpcRequestMessages,
        Metric::GrpcResponseMessages,
        Metric::TcpOpenedConnections,
        Metric::TcpClosedConnections,
        Metric::TcpSentBytes,
        Metric::TcpReceivedBytes,
    ];
    pub const HTTP: [Metric; 6] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::GrpcRequestMessages,
        Metric::GrpcResponseMessages,
    ];
    pub const TCP: [Metric; 4] =
        [Metric::TcpOpenedConnections, Metric::TcpClosedConnections, Metric::TcpSentBytes, Metric::TcpReceivedBytes];

    /// The Prometheus name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RequestCount => "istio_requests_total",
            Metric::RequestDuration => "istio_request_duration_milliseconds",
            Metric::RequestSize => "istio_request_bytes",
            Metric::ResponseSize => "istio_response_bytes",
            Metric::GrpcRequestMessages => "istio_request_messages_total",
            Metric::GrpcResponseMessages => "istio_response_messages_total",
            Metric::TcpOpenedConnections => "istio_tcp_connections_opened_total",
            Metric::TcpClosedConnections => "istio_tcp_connections_closed_total",
            Metric::TcpSentBytes => "istio_tcp_sent_bytes_total",
            Metric::TcpReceivedBytes => "istio_tcp_received_bytes_total",
        }
    }

    /// The Telemetry API enum name.
    pub fn api_name(self) -> &'static str {
        match self {
            Metric::RequestCount => "REQUEST_COUNT",
            Metric::RequestDuration => "REQUEST_DURATION",
            Metric::RequestSize => "REQUEST_SIZE",
            Metric::ResponseSize => "RESPONSE_SIZE",
            Metric::GrpcRequestMessages => "GRPC_REQUEST_MESSAGES",
            Metric::GrpcResponseMessages => "GRPC_RESPONSE_MESSAGES",
            Metric::TcpOpenedConnections => "TCP_OPENED_CONNECTIONS",
            Metric::TcpClosedConnections => "TCP_CLOSED_CONNECTIONS",
            Metric::TcpSentBytes => "TCP_SENT_BYTES",
            Metric::TcpReceivedBytes => "TCP_RECEIVED_BYTES",
        }
    }

    pub fn from_api_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.api_name() == name)
    }

    pub fn metric_type(self) -> MetricType {
        match self {
            Metric::RequestDuration | Metric::RequestSize | Metric::ResponseSize => MetricType::Histogram,
            _ => MetricType::Counter,
        }
    }

    pub fn is_tcp(self) -> bool {
        Metric::TCP.contains(&self)
    }

    pub fn labels(self) -> &'static [Label] {
        if self.is_tcp() {
            &TCP_LABELS
        } else {
            &HTTP_LABELS
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Which side of the call this proxy reports as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    /// Client sidecar (outbound) and gateways: `reporter="source"`.
    Source,
    /// Server sidecar (inbound): `reporter="destination"`.
    Destination,
}

impl Reporter {
    pub fn value(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
    Tcp,
}

impl Protocol {
    pub fn value(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
        }
    }
}

/// Istio's view of the service a request went to (cluster metadata
/// `filter_metadata.istio.services[0]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ServiceInfo {
    /// The service FQDN (`destination_service`).
    pub host: String,
    /// `destination_service_name`.
    #[serde(default)]
    pub name: String,
    /// `destination_service_namespace`.
    #[serde(default)]
    pub namespace: String,
}

/// Cluster names for which Istio reports the cluster name itself as `destination_service_name`.
const SPECIAL_CLUSTERS: [&str; 5] = [
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
];

/// The cluster Istio's stats report for a request Envoy answered on istiod's catch-all route
/// without an upstream cluster: route `block_all` (REGISTRY_ONLY's 502) counts as
/// `BlackHoleCluster`, `allow_any` as `PassthroughCluster`. The adapter reads the route name only
/// when the request has no cluster.
pub fn catch_all_cluster(route_name: &str) -> Option<&'static str> {
    match route_name {
        "block_all" => Some("BlackHoleCluster"),
        "allow_any" => Some("PassthroughCluster"),
        _ => None,
    }
}

/// What one request (or connection) looked like, gathered by the adapter. Empty strings mean
/// "not known".
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub protocol: Protocol,
    /// `response.code`, 0 when no response was sent.
    pub response_code: u32,
    /// The gRPC status (trailers, then headers), when the request was gRPC and one was seen.
    pub grpc_status: Option<u32>,
    /// `response.flags`.
    pub response_flags: u64,
    /// The other side's metadata: the downstream peer on the server, the upstream on the client.
    pub peer: Option<&'a PeerMetadata>,
    /// First URI SAN of the peer certificate (downstream on the server, upstream on the client).
    pub peer_principal: &'a str,
    /// First URI SAN of this proxy's certificate on that connection.
    pub local_principal: &'a str,
    /// The upstream cluster's name.
    pub cluster_name: &'a str,
    /// The upstream cluster's Istio service, when known.
    pub service: Option<&'a ServiceInfo>,
}

impl<'a> Facts<'a> {
    pub fn new(protocol: Protocol) -> Self {
        Facts {
            protocol,
            response_code: 0,
            grpc_status: None,
            response_flags: 0,
            peer: None,
            peer_principal: "",
            local_principal: "",
            cluster_name: "",
            service: None,
        }
    }
}

/// The 25 label values of one request, indexed by `Label as usize`.
pub type LabelValues<'a> = [Cow<'a, str>; LABEL_COUNT];

const UNKNOWN: &str = "unknown";
const LATEST: &str = "latest";

fn or<'a>(v: &'a str, default: &'static str) -> Cow<'a, str> {
    Cow::Borrowed(if v.is_empty() { default } else { v })
}

/// `<td>/ns/<namespace>/sa/<sa>` → namespace.
pub fn namespace_from_principal(principal: &str) -> Option<&str> {
    let start = principal.find("/ns/")? + 4;
    let rest = principal.get(start..)?;
    Some(match rest.find('/') {
        Some(end) => &rest[..end],
        None => rest,
    })
}

/// Computes every standard label for one request, as Istio's stats filter does.
///
/// `destination_service` comes from the upstream cluster (its Istio metadata or its
/// `outbound|port|subset|host` name), never from the request's `Host`: a client that sends a
/// new `Host` with every request would otherwise create a new label set (67 Prometheus lines)
/// per request. A request whose cluster names no service reports the catch-all Istio uses:
/// `PassthroughCluster`/`BlackHoleCluster` (the cluster's own name) or `unknown`.
pub fn compute<'a>(reporter: Reporter, local: &'a LocalInfo, f: &Facts<'a>) -> LabelValues<'a> {
    let none = || Cow::Borrowed("");
    let mut v: LabelValues<'a> = std::array::from_fn(|_| none());
    let peer = f.peer;
    let pstr = |get: fn(&PeerMetadata) -> &str| -> &'a str { peer.map(get).unwrap_or("") };

    // destination_service / destination_service_name.
    let mut service_host: &'a str = "";
    let mut service_host_name: &'a str = "";
    if SPECIAL_CLUSTERS.contains(&f.cluster_name) {
        service_host_name = f.cluster_name;
        if reporter == self::Reporter::Source {
            service_host = f.cluster_name;
        }
    } else if let Some(svc) = f.service {
        if !svc.host.is_empty() {
            service_host = &svc.host;
        }
        service_host_name = if !svc.name.is_empty() { &svc.name } else { svc.host.split('.').next().unwrap_or("") };
    }

    let peer_san = f.peer_principal;
    let local_san = f.local_principal;
    let peer_namespace: &'a str = match namespace_from_principal(peer_san) {
        Some(ns) if !ns.is_empty() => ns,
        _ => pstr(|p| &p.namespace),
    };

    use Label::*;
    v[Reporter as usize] = Cow::Borrowed(reporter.value());
    match reporter {
        self::Reporter::Destination => {
            v[SourceWorkload as usize] = or(pstr(|p| &p.workload), UNKNOWN);
            v[SourceCanonicalService as usize] = or(pstr(|p| &p.canonical_service), UNKNOWN);
            v[SourceCanonicalRevision as usize] = or(pstr(|p| &p.canonical_revision), LATEST);
            v[SourceWorkloadNamespace as usize] = or(peer_namespace, UNKNOWN);
            v[SourcePrincipal as usize] = or(peer_san, UNKNOWN);
            v[SourceApp as usize] = or(pstr(|p| &p.app), UNKNOWN);
            v[SourceVersion as usize] = or(pstr(|p| &p.version), UNKNOWN);
            v[SourceCluster as usize] = or(pstr(|p| &p.cluster), UNKNOWN);
            v[DestinationWorkload as usize] = Cow::Borrowed(&local.workload);
            v[DestinationWorkloadNamespace as usize] = Cow::Borrowed(&local.namespace);
            v[DestinationPrincipal as usize] = or(local_san, UNKNOWN);
            v[DestinationApp as usize] = Cow::Borrowed(&local.app);
            v[DestinationVersion as usize] = Cow::Borrowed(&local.version);
            v[DestinationService as usize] =
                Cow::Borrowed(if service_host.is_empty() { &local.canonical_service } else { service_host });
            v[DestinationCanonicalService as usize] = Cow::Borrowed(&local.canonical_service);
            v[DestinationCanonicalRevision as usize] = Cow::Borrowed(&local.canonical_revision);
            v[DestinationServiceName as usize] =
                Cow::Borrowed(if service_host_name.is_empty() { &local.canonical_service } else { service_host_name });
            v[DestinationServiceNamespace as usize] = Cow::Borrowed(&local.namespace);
            v[DestinationCluster as usize] = Cow::Borrowed(&local.cluster);
            v[ConnectionSecurityPolicy as usize] =
                Cow::Borrowed(if !peer_san.is_empty() && !local_san.is_empty() { "mutual_tls" } else { "none" });
        }
        self::Reporter::Source => {
            v[SourceWorkload as usize] = Cow::Borrowed(&local.workload);
            v[SourceCanonicalService as usize] = Cow::Borrowed(&local.canonical_service);
            v[SourceCanonicalRevision as usize] = Cow::Borrowed(&local.canonical_revision);
            v[SourceWorkloadNamespace as usize] = Cow::Borrowed(&local.namespace);
            v[SourcePrincipal as usize] = or(local_san, UNKNOWN);
            v[SourceApp as usize] = Cow::Borrowed(&local.app);
            v[SourceVersion as usize] = Cow::Borrowed(&local.version);
            v[SourceCluster as usize] = Cow::Borrowed(&local.cluster);
            v[DestinationWorkload as usize] = or(pstr(|p| &p.workload), UNKNOWN);
            v[DestinationWorkloadNamespace as usize] = or(peer_namespace, UNKNOWN);
            v[DestinationPrincipal as usize] = or(peer_san, UNKNOWN);
            v[DestinationApp as usize] = or(pstr(|p| &p.app), UNKNOWN);
            v[DestinationVersion as usize] = or(pstr(|p| &p.version), UNKNOWN);
            v[DestinationService as usize] = or(service_host, UNKNOWN);
            v[DestinationCanonicalService as usize] = or(pstr(|p| &p.canonical_service), UNKNOWN);
            v[DestinationCanonicalRevision as usize] = or(pstr(|p| &p.canonical_revision), LATEST);
            v[DestinationServiceName as usize] = or(service_host_name, UNKNOWN);
            v[DestinationServiceNamespace as usize] = or(peer_namespace, UNKNOWN);
            v[DestinationCluster as usize] = or(pstr(|p| &p.cluster), UNKNOWN);
            // The client side does not compute the TLS state (istio_stats.cc leaves it unset).
            v[ConnectionSecurityPolicy as usize] = Cow::Borrowed(UNKNOWN);
        }
    }
    v[RequestProtocol as usize] = Cow::Borrowed(f.protocol.value());
    v[ResponseCode as usize] = code_string(f.response_code);
    v[GrpcResponseStatus as usize] = match (f.protocol, f.grpc_status) {
        (Protocol::Grpc, Some(s)) => code_string(s),
        _ => none(),
    };
    v[ResponseFlags as usize] = crate::flags::short_string(f.response_flags, f.protocol);
    v
}

/// Decimal text of a status code; the usual ones need no allocation.
fn code_string(code: u32) -> Cow<'static, str> {
    const COMMON: [(u32, &str); 24] = [
        (0, "0"),
        (1, "1"),
        (2, "2"),
        (3, "3"),
        (4, "4"),
        (5, "5"),
        (7, "7"),
        (12, "12"),
        (13, "13"),
        (14, "14"),
        (16, "16"),
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (301, "301"),
        (302, "302"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
        (504, "504"),
    ];
    match COMMON.iter().find(|(c, _)| *c == code) {
        Some((_, s)) => Cow::Borrowed(s),
        None => Cow::Owned(code.to_string()),
    }
}

/// Istio cluster names: `outbound|<port>|<subset>|<host>` and `inbound|<port>|<subset>|<host>`
/// carry the service host; the short name is its first label.
pub fn service_from_cluster_name(cluster: &str) -> Option<ServiceInfo> {
    let mut parts = cluster.splitn(4, '|');
    let direction = parts.next()?;
    if direction != "outbound" && direction != "inbound" {
        return None;
    }
    let _port = parts.next()?;
    let _subset = parts.next()?;
    let host = parts.next()?;
    if host.is_empty() {
        return None;
    }
    let name = host.split('.').next().unwrap_or(host).to_string();
    // `<name>.<ns>.svc.<suffix>`: the namespace is the second label.
    let labels: Vec<&str> = host.split('.').collect();
    let namespace = if labels.len() >= 3 && labels[2] == "svc" { labels[1].to_string() } else { String::new() };
    Some(ServiceInfo { host: host.to_string(), name, namespace })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_istio::Workload;

    fn local(name: &str, app: &str, version: &str) -> LocalInfo {
        let mut w = Workload::new(name, "bookinfo");
        w.labels.insert("app".into(), app.into());
        w.labels.insert("version".into(), version.into());
        LocalInfo::from_workload(&w)
    }

    fn peer(workload: &str, app: &str, version: &str) -> PeerMetadata {
        PeerMetadata {
            workload: workload.into(),
            namespace: "bookinfo".into(),
            cluster: "Kubernetes".into(),
            app: app.into(),
            version: version.into(),
            canonical_service: app.into(),
            canonical_revision: version.into(),
            ..Default::default()
        }
    }

    fn as_pairs(v: &LabelValues<'_>) -> Vec<(&'static str, String)> {
        HTTP_LABELS.iter().map(|l| (l.name(), v[*l as usize].to_string())).collect()
    }

    #[test]
    fn label_order_is_istios() {
        let names: Vec<&str> = HTTP_LABELS.iter().map(|l| l.name()).collect();
        assert_eq!(
            names.join(","),
            "reporter,source_workload,source_canonical_service,source_canonical_revision,\
source_workload_namespace,source_principal,source_app,source_version,source_cluster,\
destination_workload,destination_workload_namespace,destination_principal,destination_app,\
destination_version,destination_service,destination_canonical_service,\
destination_canonical_revision,destination_service_name,destination_service_namespace,\
destination_cluster,request_protocol,response_code,grpc_response_status,response_flags,\
connection_security_policy"
        );
        assert!(!TCP_LABELS.contains(&Label::ResponseCode));
        assert!(!TCP_LABELS.contains(&Label::GrpcResponseStatus));
        for (i, l) in HTTP_LABELS.iter().enumerate() {
            assert_eq!(*l as usize, i);
            assert_eq!(Label::from_name(l.name()), Some(*l));
        }
    }

    #[test]
    fn server_side_with_peer_and_mtls() {
        let me = local("reviews-v2", "reviews", "v2");
        let p = peer("productpage-v1", "productpage", "v1");
        let svc = ServiceInfo {
            host: "reviews.bookinfo.svc.cluster.local".into(),
            name: "reviews".into(),
            namespace: "bookinfo".into(),
        };
        let mut f = Facts::new(Protocol::Http);
        f.response_code = 200;
        f.peer = Some(&p);
        f.peer_principal = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage";
        f.local_principal = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
        f.service = Some(&svc);
        let v = compute(Reporter::Destination, &me, &f);
        let pairs = as_pairs(&v);
        let expect = [
            ("reporter", "destination"),
            ("source_workload", "productpage-v1"),
            ("source_canonical_service", "productpage"),
            ("source_canonical_revision", "v1"),
            ("source_workload_namespace", "bookinfo"),
            ("source_principal", "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"),
            ("source_app", "productpage"),
            ("source_version", "v1"),
            ("source_cluster", "Kubernetes"),
            ("destination_workload", "reviews-v2"),
            ("destination_workload_namespace", "bookinfo"),
            ("destination_principal", "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"),
            ("destination_app", "reviews"),
            ("destination_version", "v2"),
            ("destination_service", "reviews.bookinfo.svc.cluster.local"),
            ("destination_canonical_service", "reviews"),
            ("destination_canonical_revision", "v2"),
            ("destination_service_name", "reviews"),
            ("destination_service_namespace", "bookinfo"),
            ("destination_cluster", "Kubernetes"),
            ("request_protocol", "http"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
            ("response_flags", "-"),
            ("connection_security_policy", "mutual_tls"),
        ];
        for ((name, got), (ename, want)) in pairs.iter().zip(expect.iter()) {
            assert_eq!(name, ename);
            assert_eq!(got, want, "label {name}");
        }
    }

    #[test]
    fn response_flags_label_in_the_order_the_stream_set_them() {
        let me = local("reviews-v2", "reviews", "v2");
        // A connect failure after Istio's default retries: Envoy's `URX,UF` on a request,
        // `tcp_proxy`'s `UF,URX` on a connection.
        for (protocol, want) in [(Protocol::Http, "URX,UF"), (Protocol::Grpc, "URX,UF"), (Protocol::Tcp, "UF,URX")] {
            let mut f = Facts::new(protocol);
            f.response_flags = (1 << 5) | (1 << 15);
            let v = compute(Reporter::Source, &me, &f);
            assert_eq!(v[Label::ResponseFlags as usize], want, "{protocol:?}");
        }
    }

    #[test]
    fn server_side_without_peer_is_unknown_and_plain_text() {
        let me = local("reviews-v2", "reviews", "v2");
        let mut f = Facts::new(Protocol::Grpc);
        f.response_code = 200;
        f.grpc_status = Some(14);
        f.response_flags = 1 << 4;
        let v = compute(Reporter::Destination, &me, &f);
        assert_eq!(v[Label::SourceWorkload as usize], "unknown");
        assert_eq!(v[Label::SourceCanonicalRevision as usize], "latest");
        assert_eq!(v[Label::SourcePrincipal as usize], "unknown");
        assert_eq!(v[Label::SourceWorkloadNamespace as usize], "unknown");
        assert_eq!(v[Label::DestinationPrincipal as usize], "unknown");
        assert_eq!(v[Label::ConnectionSecurityPolicy as usize], "none");
        // No host fallback on inbound: the canonical service stands in.
        assert_eq!(v[Label::DestinationService as usize], "reviews");
        assert_eq!(v[Label::DestinationServiceName as usize], "reviews");
        assert_eq!(v[Label::RequestProtocol as usize], "grpc");
        assert_eq!(v[Label::GrpcResponseStatus as usize], "14");
        assert_eq!(v[Label::ResponseFlags as usize], "UR");
    }

    #[test]
    fn client_side_from_response_metadata() {
        let me = local("productpage-v1", "productpage", "v1");
        let p = peer("reviews-v2", "reviews", "v2");
        let svc = service_from_cluster_name("outbound|9080|v2|reviews.bookinfo.svc.cluster.local").unwrap();
        let mut f = Facts::new(Protocol::Http);
        f.response_code = 503;
        f.peer = Some(&p);
        f.service = Some(&svc);
        f.cluster_name = "outbound|9080|v2|reviews.bookinfo.svc.cluster.local";
        let v = compute(Reporter::Source, &me, &f);
        assert_eq!(v[Label::Reporter as usize], "source");
        assert_eq!(v[Label::SourceWorkload as usize], "productpage-v1");
        assert_eq!(v[Label::SourceApp as usize], "productpage");
        assert_eq!(v[Label::SourcePrincipal as usize], "unknown");
        assert_eq!(v[Label::DestinationWorkload as usize], "reviews-v2");
        assert_eq!(v[Label::DestinationVersion as usize], "v2");
        assert_eq!(v[Label::DestinationService as usize], "reviews.bookinfo.svc.cluster.local");
        assert_eq!(v[Label::DestinationServiceName as usize], "reviews");
        assert_eq!(v[Label::DestinationServiceNamespace as usize], "bookinfo");
        assert_eq!(v[Label::DestinationCluster as usize], "Kubernetes");
        assert_eq!(v[Label::ConnectionSecurityPolicy as usize], "unknown");
        assert_eq!(v[Label::ResponseCode as usize], "503");
    }

    #[test]
    fn client_side_without_a_service_reports_the_catch_all() {
        let me = local("productpage-v1", "productpage", "v1");
        let mut f = Facts::new(Protocol::Http);
        let v = compute(Reporter::Source, &me, &f);
        assert_eq!(v[Label::DestinationService as usize], "unknown");
        assert_eq!(v[Label::DestinationServiceName as usize], "unknown");
        assert_eq!(v[Label::DestinationWorkload as usize], "unknown");
        assert_eq!(v[Label::DestinationCanonicalRevision as usize], "latest");
        assert_eq!(v[Label::ResponseCode as usize], "0");
        assert_eq!(catch_all_cluster("block_all"), Some("BlackHoleCluster"));
        assert_eq!(catch_all_cluster("allow_any"), Some("PassthroughCluster"));
        assert_eq!(catch_all_cluster("default"), None);
        // Passthrough and black-hole clusters name themselves (whatever Host the client sent).
        for cluster in ["PassthroughCluster", "BlackHoleCluster"] {
            f.cluster_name = cluster;
            let v = compute(Reporter::Source, &me, &f);
            assert_eq!(v[Label::DestinationServiceName as usize], cluster);
            assert_eq!(v[Label::DestinationService as usize], cluster);
        }
        // A cluster that is no Istio service (e.g. a static one) is `unknown`.
        f.cluster_name = "local_app";
        assert_eq!(compute(Reporter::Source, &me, &f)[Label::DestinationService as usize], "unknown");
    }

    #[test]
    fn peer_namespace_prefers_the_certificate() {
        let me = local("a", "a", "v1");
        let p = peer("b", "b", "v1");
        let mut f = Facts::new(Protocol::Http);
        f.peer = Some(&p);
        f.peer_principal = "spiffe://cluster.local/ns/other/sa/b";
        let v = compute(Reporter::Source, &me, &f);
        assert_eq!(v[Label::DestinationWorkloadNamespace as usize], "other");
        assert_eq!(v[Label::DestinationServiceNamespace as usize], "other");
        assert_eq!(namespace_from_principal("cluster.local/ns/x"), Some("x"));
        assert_eq!(namespace_from_principal("nothing"), None);
    }

    #[test]
    fn cluster_names() {
        let s = service_from_cluster_name("outbound|80||httpbin.org").unwrap();
        assert_eq!((s.host.as_str(), s.name.as_str(), s.namespace.as_str()), ("httpbin.org", "httpbin", ""));
        assert!(service_from_cluster_name("inbound|9080||").is_none());
        assert!(service_from_cluster_name("local_app").is_none());
        assert!(service_from_cluster_name("outbound|80").is_none());
        let s = service_from_cluster_name("inbound|9080||reviews.ns.svc.cluster.local").unwrap();
        assert_eq!(s.namespace, "ns");
    }

    #[test]
    fn codes() {
        assert_eq!(code_string(200), "200");
        assert_eq!(code_string(418), "418");
        assert!(matches!(code_string(404), Cow::Borrowed(_)));
    }
}
