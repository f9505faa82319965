//! `wasmeshctl envoy`: a standalone Envoy bootstrap for one sidecar or gateway.
//!
//! Listeners: a sidecar gets an inbound listener (callers → the app) per workload port and an
//! outbound listener (the app → other services, routed by the wasm router); a gateway gets one
//! listener per Gateway server port.
//!
//! TCP: a workload port whose service port is TCP (Istio's protocol selection,
//! [`PortProtocol`]) gets an inbound listener with Istio's network filter chain instead of the
//! HCM: the TCP stats filter, the network authorization filter (when a policy applies), then
//! `tcp_proxy` to `inbound|<port>||`; with mTLS, a first chain for clients offering
//! `istio-peer-exchange` runs Istio's TCP metadata exchange, so `istio_tcp_*` name the peer
//! workload. Each TCP service port the app calls gets its own outbound
//! listener on a loopback port ([`TcpOutbound`]; Istio binds `0.0.0.0:<service port>`, which
//! loopback cannot share) with the TCP stats filter (exchanging with mTLS peers: clusters of TCP
//! ports offer `istio-peer-exchange`, `istio`) and `tcp_proxy` to
//! `outbound|<port>||<host>`. Clusters: one per service port and DestinationRule subset, named as Istio names
//! them (`outbound|<port>|<subset>|<fqdn>`), with endpoints from ServiceEntry `endpoints` and
//! the WorkloadEntries a ServiceEntry's `workloadSelector` selects.

use crate::certs::CertPaths;
use crate::gateway;
use crate::layout::Layout;
use crate::mesh::MeshConfig;
use crate::plugins::mtls::{self, PeerEndpoint, UpstreamService};
use crate::plugins::{
    self, ChainFilters, ClusterTransport, Contribution, Direction, ListenerContext, ListenerTransport, WasmFilter,
};
use crate::traffic_policy;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use wasmesh_istio::networking::{DestinationRule, WorkloadEntry};
use wasmesh_istio::{Error, PortProtocol, ProxyMode, Resource, Resources, Workload};
/// The header the wasm router writes and Envoy's route reads.
use wasmesh_router::DEFAULT_CLUSTER_HEADER as CLUSTER_HEADER;

/// What to generate for one proxy.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub workload: Workload,
    /// Sidecar: inbound listeners, one per workload port, each forwarding to the app.
    pub inbound: Vec<Inbound>,
    /// Sidecar: the port the app sends its outbound calls to.
    pub outbound_port: Option<u16>,
    /// Sidecar: one outbound TCP listener per TCP service port the app calls.
    pub tcp_outbound: Vec<TcpOutbound>,
    /// Gateway: (Gateway server port, loopback port to bind).
    pub gateway_ports: Vec<(u32, u16)>,
    pub admin_port: u16,
    /// Where `<module>.wasm` files are.
    pub wasm_dir: PathBuf,
    pub mesh: MeshConfig,
    /// Workload certificates written by `wasmeshctl certs`, for mutual TLS.
    pub certs_dir: Option<PathBuf>,
    /// Write Envoy's own access log (Istio TEXT format) to this file, for debugging.
    pub envoy_access_log: Option<PathBuf>,
    /// Gateway: where a Gateway server's `tls.credentialName` is read from (`--credentials`,
    /// [`crate::gateway`]).
    pub credentials_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    pub port: u16,
    pub app_port: u16,
}

/// An outbound TCP listener: the app connects to `127.0.0.1:<bind_port>` to reach `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpOutbound {
    pub bind_port: u16,
    /// The service host as a ServiceEntry names it (short names resolve in the workload's
    /// namespace).
    pub host: String,
    /// The service port (a TCP port of that ServiceEntry).
    pub port: u32,
}

impl std::str::FromStr for TcpOutbound {
    type Err = String;
    /// `BIND=HOST:PORT`, e.g. `13306=mysql.db.svc.cluster.local:3306`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s.split_once('=').and_then(|(bind, target)| {
            let (host, port) = target.rsplit_once(':')?;
            (!host.is_empty()).then_some(())?;
            Some(TcpOutbound { bind_port: bind.parse().ok()?, host: host.to_string(), port: port.parse().ok()? })
        });
        parsed.ok_or(format!(
            "--tcp-outbound {s:?}: expected BIND_PORT=HOST:PORT, e.g. 13306=mysql.db.svc.cluster.local:3306"
        ))
    }
}

/// Reads the proxy's identity from the WorkloadEntry `namespace/name` (or `name` in `default`).
pub fn workload_from_entry(resources: &Resources, reference: &str) -> Result<(Workload, WorkloadEntry), Error> {
    let (ns, name) = reference.split_once('/').unwrap_or(("default", reference));
    let found = resources.workload_entries().find(|(r, _)| r.namespace() == ns && r.name() == name);
    let Some((res, we)) = found else {
        let known: Vec<String> =
            resources.workload_entries().map(|(r, _)| format!("{}/{}", r.namespace(), r.name())).collect();
        return Err(Error::new(format!(
            "--workload {reference}: no WorkloadEntry {ns}/{name} in the given files; known: {}",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    let mut wl = Workload::new(res.name(), res.namespace());
    wl.labels = we.labels.clone();
    if !we.service_account.is_empty() {
        wl.service_account = we.service_account.clone();
    }
    Ok((wl, we.clone()))
}

/// The most freed memory Envoy hands back to the system per `memory_release_interval` (1 GiB: all of it).
const MEMORY_RELEASE_BYTES: u64 = 1 << 30;

/// Builds the bootstrap in the default layout (one pass). Every problem found is returned, each
/// naming resource and field.
pub fn build(spec: &ProxySpec, resources: &Resources) -> Result<Value, Vec<Error>> {
    build_with(spec, resources, Slots::AsNeeded, Layout::default())
}

/// Which wasm filters a listener gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    /// Only the filters the resources need (a static bootstrap: no policy, no authz filter).
    AsNeeded,
    /// Every filter any resource could need on that listener, those with nothing to enforce
    /// configured with an empty policy set (Istio's meaning of "no policy": allow). For xDS,
    /// where the filter configuration changes at run time but the filter chain does not
    /// ([`plugins::empty_slot`]).
    All,
}

/// [`build`], with every filter slot present when `slots` is [`Slots::All`], each listener's
/// wasmesh HTTP filters laid out as `layout` says ([`Layout::assemble`]).
pub fn build_with(spec: &ProxySpec, resources: &Resources, slots: Slots, layout: Layout) -> Result<Value, Vec<Error>> {
    let mut errors = Vec::new();
    let mut listeners = Vec::new();
    let mut clusters: BTreeMap<String, Value> = BTreeMap::new();
    let mut stats_tags: Vec<Value> = Vec::new();

    let mut wl = spec.workload.clone();
    if let Some(root) = &spec.mesh.root_namespace {
        wl.root_namespace = root.clone();
    }
    if let Some(td) = &spec.mesh.trust_domain {
        wl.trust_domain = td.clone();
    }
    // Mutual TLS: PeerAuthentication decides each sidecar inbound port's filter chains; with
    // certificates, outbound clusters get Istio's auto mTLS (the transport plugin, `mtls`).
    let certs = mtls::workload_certs(&wl, spec.certs_dir.as_deref())?;
    // Our certificate's URI SAN as Envoy will report it: every inbound TLS context serves the
    // workload's file, and every upstream one presents it unless a DestinationRule originates TLS
    // with files of its own (or, served live, could later). The stats filters are told it.
    let local_principal = certs.as_ref().and_then(|c| crate::certs::first_uri_san(&c.cert_chain));
    let client_certificate_fixed = slots != Slots::All && !mtls::originates_tls(resources);

    let listener_context =
        |direction, bind_port| ListenerContext { workload: &wl, resources, direction, bind_port, mesh: &spec.mesh };
    let add = |direction: Direction, bind_port: u16, errors: &mut Vec<Error>| -> Contribution {
        let ctx = listener_context(direction, bind_port);
        let mut all = Contribution::default();
        for (plugin, empty) in plugins::PLUGINS.iter().zip(plugins::EMPTY_SLOTS) {
            match plugin(&ctx) {
                Ok(mut c) => {
                    if slots == Slots::All && c.http_filters.is_empty() {
                        c.http_filters.extend(empty(&ctx));
                    }
                    all.http_filters.extend(c.http_filters);
                    all.network_filters.extend(c.network_filters);
                    all.clusters.extend(c.clusters);
                    all.stats_tags.extend(c.stats_tags);
                    all.access_logs.extend(c.access_logs);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if slots == Slots::All {
            plugins::fill_network_slots(&ctx, &mut all);
            // Served live, a VirtualService `fault` may arrive after Envoy started, and the filter
            // chain and routes are fixed then: Envoy's fault filter follows every router from the
            // start, controlled by the request headers the router sets (no fault routes, which
            // a live fault could not add).
            for f in all.http_filters.iter_mut().filter(|f| f.name == "wasmesh.router") {
                if let Some(m) = f.config.as_object_mut() {
                    m.insert("faultFilter".into(), Value::Bool(true));
                    m.insert("faultHeadersRemoved".into(), Value::Bool(true));
                    m.remove("faultRoutes");
                }
            }
        }
        plugins::authz::decision_filter_state_when_read(&mut all.http_filters);
        // A sidecar's inbound chains are written below from its PeerAuthentication (an error if
        // they cannot enforce it): the filter need not check it again.
        if direction == Direction::Inbound && slots != Slots::All {
            plugins::authz::peer_authentication_by_transport(&mut all.http_filters);
        }
        all.http_filters = layout.assemble(std::mem::take(&mut all.http_filters));
        plugins::authn::identity_filter_state_when_read(&mut all.http_filters);
        // The clusters written here carry no Istio workload metadata on their endpoints.
        plugins::stats::endpoint_metadata_not_written(&mut all.http_filters);
        if let Some(p) = &local_principal {
            plugins::stats::local_principal_known(&mut all.http_filters, p, client_certificate_fixed);
        }
        all
    };

    match wl.mode {
        ProxyMode::Sidecar => {
            for inb in &spec.inbound {
                match inbound_protocol(resources, &wl, inb.port) {
                    Ok(PortProtocol::Tcp) => {
                        let ctx = listener_context(Direction::Inbound, inb.port);
                        // Inbound TCP ports with mTLS also serve Istio's TCP metadata exchange.
                        let filters = tcp_listener_filters(&ctx, slots)
                            .map(|f| plugins::authz::single_san_peers(f, spec.certs_dir.as_deref()))
                            .map(|(mut c, mut exchange)| {
                                // The chains below enforce the PeerAuthentication (as on HTTP ports).
                                if slots != Slots::All {
                                    plugins::authz::peer_authentication_by_transport(&mut c.network_filters);
                                    plugins::authz::peer_authentication_by_transport(&mut exchange);
                                }
                                (c, exchange)
                            });
                        match (filters, mtls::inbound_transport(&ctx, certs.as_ref(), true)) {
                            (Ok((c, exchange)), Ok(tls)) => {
                                let cluster = format!("inbound|{}||", inb.port);
                                let name = format!("inbound_{}", inb.port);
                                let chains = filter_chains(
                                    Some(&tls.transport),
                                    tcp_chain_filters(spec, &c.network_filters, &c.access_logs, &cluster),
                                    tcp_chain_filters(spec, &exchange, &c.access_logs, &cluster),
                                );
                                let mut l = listener_with_chains(&name, inb.port, chains);
                                with_listener_access_log(&mut l, &ctx);
                                listeners.push(l);
                                let app = [("127.0.0.1".to_string(), u32::from(inb.app_port))];
                                let mut app_cluster = static_cluster(&cluster, &app, "ROUND_ROBIN");
                                let applied =
                                    traffic_policy::inbound_policy(resources, &wl, inb.port).and_then(|(policy, r)| {
                                        traffic_policy::apply(
                                            &mut app_cluster,
                                            &policy,
                                            traffic_policy::Upstream::Tcp,
                                            r,
                                        )
                                    });
                                if let Err(mut e) = applied {
                                    errors.append(&mut e);
                                }
                                clusters.insert(cluster.clone(), app_cluster);
                                merge(&mut clusters, &mut stats_tags, c);
                            }
                            (filters, tls) => {
                                if let Err(mut e) = filters {
                                    errors.append(&mut e);
                                }
                                if let Err(mut e) = tls {
                                    errors.append(&mut e);
                                }
                            }
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                }
                let mut c = add(Direction::Inbound, inb.port, &mut errors);
                // `route_to` has Envoy remove the exchange headers: the stats filter need not.
                plugins::stats::exchange_headers_removed_by_route(&mut c.http_filters);
                let cluster = format!("inbound|{}||", inb.port);
                let ctx = listener_context(Direction::Inbound, inb.port);
                match mtls::inbound_transport(&ctx, certs.as_ref(), false) {
                    Ok(tls) => {
                        let mut l =
                            listener(spec, "inbound", inb.port, &c, route_to(&cluster), false, Some(&tls.transport));
                        with_listener_access_log(&mut l, &ctx);
                        listeners.push(l);
                    }
                    Err(mut e) => errors.append(&mut e),
                }
                let app = [("127.0.0.1".to_string(), u32::from(inb.app_port))];
                let mut app_cluster = static_cluster(&cluster, &app, "ROUND_ROBIN");
                // As Istio's inbound clusters: HTTP/1.1 to the app on an `http` port, HTTP/2 on an
                // `http2`/`grpc` one, the caller's protocol where the port's protocol is unknown;
                // istiod's unlimited circuit breakers.
                let protocol = traffic_policy::inbound_upstream(resources, &wl, inb.port);
                let applied = traffic_policy::inbound_policy(resources, &wl, inb.port)
                    .and_then(|(policy, r)| traffic_policy::apply(&mut app_cluster, &policy, protocol, r));
                if let Err(mut e) = applied {
                    errors.append(&mut e);
                }
                clusters.insert(cluster.clone(), app_cluster);
                merge(&mut clusters, &mut stats_tags, c);
            }
            if let Some(port) = spec.outbound_port {
                let mut c = add(Direction::Outbound, port, &mut errors);
                // Unknown hosts: Istio's BlackHoleCluster / PassthroughCluster (egress.rs), when
                // the mesh config sets outboundTrafficPolicy; else the router's 404.
                let mode = spec.mesh.outbound_traffic_policy.map(|p| p.mode);
                let mut routes = route_by_header();
                if let Some(mode) = mode {
                    routes = crate::egress::outbound_route(mode, routes, CLUSTER_HEADER);
                }
                with_exchange_headers(&mut routes, &mut c, resources, slots);
                let mut l = listener(spec, "outbound", port, &c, routes, false, None);
                with_listener_access_log(&mut l, &listener_context(Direction::Outbound, port));
                if let Some(mode) = mode {
                    crate::egress::with_passthrough_filter(mode, &mut l);
                    for cluster in crate::egress::catch_all_clusters() {
                        if let Some(name) = cluster.get("name").and_then(Value::as_str) {
                            clusters.insert(name.to_string(), cluster.clone());
                        }
                    }
                }
                listeners.push(l);
                merge(&mut clusters, &mut stats_tags, c);
            }
            // TCP and TLS service ports: VirtualService `tcp`/`tls` routes, SNI chains and the
            // fallthrough of outboundTrafficPolicy, as istiod writes them (sidecar_l4.rs).
            let mode = spec.mesh.outbound_traffic_policy.map(|p| p.mode);
            for out in &spec.tcp_outbound {
                match crate::sidecar_l4::plan(resources, &wl, out, mode) {
                    Ok(plan) => {
                        let ctx = listener_context(Direction::Outbound, out.bind_port);
                        match tcp_listener_filters(&ctx, slots) {
                            // The exchange variant of the stats filter: it only exchanges with
                            // an mTLS peer (TCP clusters then offer `istio-peer-exchange`).
                            Ok((mut c, exchange)) => {
                                let name = format!("outbound_tcp_{}", out.bind_port);
                                let mut l = crate::sidecar_l4::listener(&name, out.bind_port, &plan, |cluster| {
                                    tcp_chain_filters(spec, &exchange, &c.access_logs, cluster)
                                });
                                // The listener the app connects to: Istio's virtual outbound
                                // listener and its port listener in one.
                                with_listener_access_log(&mut l, &ctx);
                                listeners.push(l);
                                c.clusters.extend(crate::sidecar_l4::catch_all_clusters(&plan));
                                merge(&mut clusters, &mut stats_tags, c);
                            }
                            Err(mut e) => errors.append(&mut e),
                        }
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
            if spec.inbound.is_empty() && spec.outbound_port.is_none() && spec.tcp_outbound.is_empty() {
                errors.push(Error::new("a sidecar needs --inbound-port/--app-port, --outbound-port or --tcp-outbound"));
            }
        }
        ProxyMode::Gateway => {
            if spec.gateway_ports.is_empty() {
                errors.push(Error::new("a gateway needs at least one --port GATEWAY_PORT=BIND_PORT"));
            }
            for (gw_port, bind) in &spec.gateway_ports {
                let name = format!("gateway_{gw_port}");
                match gateway::plan(resources, &wl, *gw_port, spec.credentials_dir.as_deref()) {
                    Ok(gateway::PortPlan::Http(http)) => {
                        let mut c = add(Direction::Gateway { port: *gw_port }, *bind, &mut errors);
                        let mut routes = gateway::route_config(route_by_header(), &http);
                        with_exchange_headers(&mut routes, &mut c, resources, slots);
                        let mut l = listener(spec, &name, *bind, &c, routes, true, None);
                        gateway::with_tls_chains(&mut l, &http);
                        with_listener_access_log(
                            &mut l,
                            &listener_context(Direction::Gateway { port: *gw_port }, *bind),
                        );
                        listeners.push(l);
                        merge(&mut clusters, &mut stats_tags, c);
                    }
                    Ok(gateway::PortPlan::Tcp(route)) => {
                        let ctx = listener_context(Direction::Gateway { port: *gw_port }, *bind);
                        match tcp_listener_filters(&ctx, slots) {
                            Ok((mut c, _)) => {
                                let mut filters =
                                    tcp_chain_filters(spec, &c.network_filters, &c.access_logs, route.first_cluster());
                                gateway::with_tcp_route(&mut filters, &route);
                                let chains = filter_chains(None, filters, Vec::new());
                                let mut l = listener_with_chains(&format!("{name}_{bind}"), *bind, chains);
                                with_listener_access_log(&mut l, &ctx);
                                listeners.push(l);
                                if route.first_cluster() == gateway::BLACK_HOLE {
                                    c.clusters.push(gateway::black_hole_cluster());
                                }
                                merge(&mut clusters, &mut stats_tags, c);
                            }
                            Err(mut e) => errors.append(&mut e),
                        }
                    }
                    Ok(gateway::PortPlan::Tls(routes)) => {
                        let ctx = listener_context(Direction::Gateway { port: *gw_port }, *bind);
                        match tcp_listener_filters(&ctx, slots) {
                            Ok((mut c, _)) => {
                                let filters =
                                    tcp_chain_filters(spec, &c.network_filters, &c.access_logs, gateway::BLACK_HOLE);
                                let chains = filter_chains(None, filters, Vec::new());
                                let mut l = listener_with_chains(&format!("{name}_{bind}"), *bind, chains);
                                gateway::with_sni_routes(&mut l, &routes);
                                with_listener_access_log(&mut l, &ctx);
                                listeners.push(l);
                                c.clusters.push(gateway::black_hole_cluster());
                                merge(&mut clusters, &mut stats_tags, c);
                            }
                            Err(mut e) => errors.append(&mut e),
                        }
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
    }

    match services_clusters(resources, &wl, Some(certs.as_ref())) {
        Ok(cs) => {
            for c in cs {
                if let Some(name) = c.get("name").and_then(Value::as_str) {
                    clusters.insert(name.to_string(), c.clone());
                }
            }
        }
        Err(mut e) => errors.append(&mut e),
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let mut bootstrap = json!({
        "node": {
            "id": format!("{}~127.0.0.1~{}.{}~{}.svc.{}", match wl.mode { ProxyMode::Sidecar => "sidecar", ProxyMode::Gateway => "router" }, wl.name, wl.namespace, wl.namespace, wl.domain_suffix),
            "cluster": format!("{}.{}", wl.name, wl.namespace),
            "metadata": {
                "NAME": wl.name,
                "NAMESPACE": wl.namespace,
                "WORKLOAD_NAME": wl.name,
                "CLUSTER_ID": wl.cluster_id,
                "SERVICE_ACCOUNT": wl.service_account,
                "LABELS": wl.labels,
            }
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": spec.admin_port}}},
        // tcmalloc keeps what it freed (28–36 MB in a demo sidecar after warm-up, much of it from the
        // wasm VMs' start); releasing it every second took 19–22 MiB off the proxy's RSS
        // (BENCHMARKS.md, "Where the demo sidecar's memory goes").
        "memory_allocator_manager": {"bytes_to_release": MEMORY_RELEASE_BYTES, "memory_release_interval": "1s"},
        "stats_config": {"stats_tags": stats_tags, "use_all_default_tags": true},
        "static_resources": {
            "listeners": listeners,
            "clusters": clusters.into_values().collect::<Vec<_>>(),
        }
    });
    // One module for all of this Envoy's wasmesh filters: the request-side variant when none
    // needs a response-side callback (`crate::module`).
    crate::module::pick(&mut bootstrap);
    Ok(bootstrap)
}

/// How the sidecar proxies workload port `port`: the protocol of the service ports that the
/// workload backs on that port (ServiceEntries of its namespace whose `workloadSelector`
/// selects it; the WorkloadEntry's `ports` map service port names to workload ports). No such
/// service port, or one without a protocol: HTTP (wasmesh does not sniff).
pub fn inbound_protocol(resources: &Resources, wl: &Workload, port: u16) -> Result<PortProtocol, Error> {
    let entry = resources
        .workload_entries()
        .find(|(r, _)| r.namespace() == wl.namespace && r.name() == wl.name)
        .map(|(_, we)| we);
    let mut found: Vec<(&Resource, String, PortProtocol)> = Vec::new();
    for (res, se) in resources.service_entries_selecting(wl) {
        for (i, sp) in se.ports.iter().enumerate() {
            let workload_port =
                entry.and_then(|we| we.ports.get(&sp.name).copied()).or(sp.target_port).unwrap_or(sp.number);
            if workload_port == u32::from(port) {
                found.push((res, format!("spec.ports[{i}]"), sp.port_protocol()));
            }
        }
    }
    if let Some((res, field, _)) = found.iter().find(|(_, _, p)| *p == PortProtocol::Udp) {
        return Err(Error::at(
            res,
            field.as_str(),
            format!("UDP: workload port {port} cannot be proxied (Istio does not proxy UDP either)"),
        ));
    }
    let is_tcp = |p: &PortProtocol| *p == PortProtocol::Tcp;
    if let (Some((tr, tf, _)), Some((hr, hf, _))) =
        (found.iter().find(|f| is_tcp(&f.2)), found.iter().find(|f| !is_tcp(&f.2)))
    {
        return Err(Error::at(
            tr,
            tf.as_str(),
            format!(
                "workload port {port} is TCP here but HTTP (or unspecified) in {} {hf}; one listener cannot be both",
                hr.display_name()
            ),
        ));
    }
    Ok(if found.iter().any(|f| is_tcp(&f.2)) { PortProtocol::Tcp } else { PortProtocol::Http })
}

/// The cluster an outbound TCP listener forwards to: `outbound|<port>||<fqdn>` of a TCP port of
/// a ServiceEntry.
pub(crate) fn tcp_outbound_cluster(resources: &Resources, wl: &Workload, out: &TcpOutbound) -> Result<String, Error> {
    let wanted = wl.fqdn(&out.host, &wl.namespace);
    let flag = format!("--tcp-outbound {}={}:{}", out.bind_port, out.host, out.port);
    let mut host_known = false;
    for (res, se) in resources.service_entries() {
        let Some(fq) = se.hosts.iter().map(|h| wl.fqdn(h, res.namespace())).find(|h| *h == wanted) else { continue };
        host_known = true;
        let Some((i, sp)) = se.ports.iter().enumerate().find(|(_, p)| p.number == out.port) else { continue };
        return match sp.port_protocol() {
            PortProtocol::Tcp => Ok(format!("outbound|{}||{fq}", out.port)),
            PortProtocol::Http | PortProtocol::Unspecified => Err(Error::at(
                res,
                format!("spec.ports[{i}]"),
                format!("{flag}: port {} of {fq} is not TCP (protocol {:?}, name {:?}); HTTP services are reached through --outbound-port, a TCP port needs protocol TCP (MYSQL, REDIS, TLS...) or a tcp- name", out.port, sp.protocol, sp.name),
            )),
            PortProtocol::Udp => Err(Error::at(res, format!("spec.ports[{i}]"), format!("{flag}: UDP is not proxied"))),
        };
    }
    Err(Error::new(if host_known {
        format!("{flag}: no ServiceEntry of {wanted} has port {}", out.port)
    } else {
        format!("{flag}: no ServiceEntry has host {wanted}")
    }))
}

/// The network filters of a TCP listener (without `tcp_proxy`): the TCP stats filter (metadata
/// exchange and metrics, where Istio's chain starts with metadata exchange), then the network
/// authorization filter on inbound ports where a policy applies (Istio's network RBAC). A
/// refused connection is still counted as opened and closed, as in Istio, whose stats filter
/// sees the connection before RBAC closes it on its first bytes. Also returned: the same filters
/// with the stats filter that runs Istio's TCP metadata exchange
/// ([`plugins::stats::tcp_filter_with_exchange`]), for the inbound exchange chain and the
/// outbound listener.
fn tcp_listener_filters(
    ctx: &ListenerContext<'_>,
    slots: Slots,
) -> Result<(Contribution, Vec<WasmFilter>), Vec<Error>> {
    let mut c = Contribution::default();
    let mut errors = Vec::new();
    let mut exchange = Vec::new();
    match (plugins::stats::tcp_filter(ctx), plugins::stats::tcp_filter_with_exchange(ctx)) {
        (Ok(f), Ok(x)) => {
            c.network_filters.push(f);
            exchange.push(x);
        }
        (Err(mut e), _) | (_, Err(mut e)) => errors.append(&mut e),
    }
    c.stats_tags.extend(plugins::stats::stats_tags(ctx.resources));
    match plugins::authz::tcp_filter(ctx) {
        Ok(Some(f)) => {
            exchange.push(f.clone());
            c.network_filters.push(f);
            c.stats_tags.extend(plugins::authz::stats_tags());
            c.clusters.extend(plugins::authz::tcp_provider_clusters(ctx));
        }
        Ok(None) if slots == Slots::All && ctx.direction == Direction::Inbound => {
            let f = plugins::empty_tcp_authz_slot(ctx);
            exchange.push(f.clone());
            c.network_filters.push(f);
            c.stats_tags.extend(plugins::authz::stats_tags());
        }
        Ok(None) => {}
        Err(mut e) => errors.append(&mut e),
    }
    // Access logs, as istiod puts them on the tcp_proxy: the phase renders, the file loggers
    // on the tcp_proxy print ([`tcp_chain_filters`]).
    match plugins::accesslog::tcp_contribute(ctx) {
        Ok(a) => {
            exchange.extend(a.network_filters.iter().cloned());
            c.network_filters.extend(a.network_filters);
            c.access_logs.extend(a.access_logs);
            c.clusters.extend(a.clusters);
        }
        Err(mut e) => errors.append(&mut e),
    }
    // The clusters written here carry no Istio workload metadata on their endpoints.
    plugins::stats::endpoint_metadata_not_written(&mut c.network_filters);
    plugins::stats::endpoint_metadata_not_written(&mut exchange);
    if errors.is_empty() {
        Ok((c, exchange))
    } else {
        Err(errors)
    }
}

/// The filters of a TCP filter chain: the wasm network filters, then `tcp_proxy` to `cluster`
/// (Istio's stat prefix: the cluster).
fn tcp_chain_filters(spec: &ProxySpec, wasm: &[WasmFilter], logs: &[Value], cluster: &str) -> Vec<Value> {
    let mut tcp_proxy = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": cluster,
        "cluster": cluster,
    });
    if let Some(log) = envoy_access_log(spec) {
        tcp_proxy["access_log"] = log;
    }
    if !logs.is_empty() {
        let mut all = tcp_proxy["access_log"].as_array().cloned().unwrap_or_default();
        all.extend(logs.iter().cloned());
        tcp_proxy["access_log"] = Value::Array(all);
    }
    let mut filters: Vec<Value> = wasm.iter().map(|f| wasm_network_filter(f, &spec.wasm_dir)).collect();
    filters.push(json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp_proxy}));
    filters
}

/// istiod's listener-level access log ([`plugins::accesslog::listener_access_logs`]): the
/// connections that match none of the listener's filter chains (response flag `NR`), which no
/// filter sees, written by Envoy's own file logger in the listener's access-log format. The
/// listener's logs are the same as its filters' (`ctx`), whose errors the access-log plugin
/// already reported for this listener: none is lost here.
fn with_listener_access_log(l: &mut Value, ctx: &ListenerContext<'_>) {
    if let Ok(logs) = plugins::accesslog::listener_access_logs(ctx) {
        if !logs.is_empty() {
            l["access_log"] = Value::Array(logs);
        }
    }
}

/// Envoy's own file access log (`--envoy-access-log`), for the HCM and `tcp_proxy` alike.
fn envoy_access_log(spec: &ProxySpec) -> Option<Value> {
    let log = spec.envoy_access_log.as_ref()?;
    Some(json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": log.display().to_string(),
        }
    }]))
}

/// A listener on loopback `port` with `chains` ([`filter_chains`]).
fn listener_with_chains(name: &str, port: u16, (chains, listener_filters): (Value, Vec<Value>)) -> Value {
    let mut listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": chains,
    });
    if !listener_filters.is_empty() {
        listener["listener_filters"] = json!(listener_filters);
    }
    listener
}

/// A listener's filter chains and listener filters: without a transport, one chain of `filters`;
/// else one chain per chain the transport plugin contributed, each with `filters` (or
/// `exchange_filters`, the peer-exchange variant of a TCP listener).
fn filter_chains(
    transport: Option<&ListenerTransport>,
    filters: Vec<Value>,
    exchange_filters: Vec<Value>,
) -> (Value, Vec<Value>) {
    let Some(transport) = transport else { return (json!([{ "filters": filters }]), Vec::new()) };
    let chains: Vec<Value> = transport
        .chains
        .iter()
        .map(|c| {
            let filters = match c.filters {
                ChainFilters::Listener => &filters,
                ChainFilters::PeerExchange => &exchange_filters,
            };
            let mut chain = json!({"name": c.name, "filters": filters});
            if let Some(socket) = &c.transport_socket {
                chain["transport_socket"] = socket.clone();
            }
            if let Some(m) = &c.filter_chain_match {
                chain["filter_chain_match"] = m.clone();
            }
            chain
        })
        .collect();
    (json!(chains), transport.listener_filters.clone())
}

fn merge(clusters: &mut BTreeMap<String, Value>, stats_tags: &mut Vec<Value>, c: Contribution) {
    for cluster in c.clusters {
        if let Some(name) = cluster.get("name").and_then(Value::as_str) {
            clusters.insert(name.to_string(), cluster.clone());
        }
    }
    for tag in c.stats_tags {
        let name = tag.get("tag_name").cloned();
        if !stats_tags.iter().any(|t| t.get("tag_name") == name.as_ref()) {
            stats_tags.push(tag);
        }
    }
}

/// Envoy's `envoy.filters.http.wasm` entry for one wasmesh filter.
pub fn wasm_http_filter(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    json!({
        "name": f.name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": wasm_plugin_config(f, wasm_dir),
        }
    })
}

/// Envoy's `envoy.filters.network.wasm` entry for one wasmesh network filter.
pub fn wasm_network_filter(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    json!({
        "name": f.name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": wasm_plugin_config(f, wasm_dir),
        }
    })
}

/// The module every filter is written with: `filters/wasmesh` serves each wasmesh filter, chosen by the
/// plugin's `root_id` ([`crate::module::pick`] then points an Envoy whose filters need no
/// response-side callback at `wasmesh-request.wasm`, the same module without them). One file and one `vm_id` for all of a proxy's wasmesh filters means one V8
/// VM per worker instead of one per filter (≈28 MiB less RSS per Envoy with one worker, measured
/// in `e2e/tests/node_identity.rs`), and it is the module the OCI image ships.
pub const MODULE_FILE: &str = wasmesh_istio::module::Variant::Full.file_name();
/// The `vm_id` the filters share (Envoy shares a VM between plugins with the same vm_id, code and
/// VM configuration).
pub const VM_ID: &str = "wasmesh";

fn wasm_plugin_config(f: &WasmFilter, wasm_dir: &std::path::Path) -> Value {
    let file = wasm_dir.join(MODULE_FILE);
    let mut config = json!({
        "name": f.name,
        "root_id": f.name,
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": f.config.to_string(),
        },
        "vm_config": {
            "vm_id": VM_ID,
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": file.display().to_string()}},
        },
        // Telemetry fails open; security and routing fail closed and recover by reloading the VM.
        "failure_policy": if f.fail_open { "FAIL_OPEN" } else { "FAIL_RELOAD" },
    });
    if crate::plugins::authz::needs_request_body(&f.config) {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    config
}

fn listener(
    spec: &ProxySpec,
    name: &str,
    port: u16,
    c: &Contribution,
    route_config: Value,
    edge: bool,
    transport: Option<&ListenerTransport>,
) -> Value {
    let (normalize_path, merge_slashes, escaped) = spec.mesh.normalization().hcm();
    // As istiod, in every HTTP chain: the gRPC message counts the stats phase reads (after the
    // wasm filters, as the native filters the routes need).
    let mut native = vec![crate::plugins::stats::grpc_stats_filter()];
    let mut route_config = route_config;
    with_route_policies(&mut native, &mut route_config, c);
    let faults = with_fault_filter(&mut native, &mut route_config, c);
    let mut wasm = c.http_filters.clone();
    if every_route_takes_the_cluster_header(&route_config) {
        plugins::stats::cluster_from_header(&mut wasm, CLUSTER_HEADER);
    }
    let mut http_filters: Vec<Value> = wasm.iter().map(|f| wasm_http_filter(f, &spec.wasm_dir)).collect();
    http_filters.extend(native);
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": format!("{name}_{port}"),
        "codec_type": "AUTO",
        "normalize_path": normalize_path,
        "merge_slashes": merge_slashes,
        "path_with_escaped_slashes_action": escaped,
        "use_remote_address": edge,
        "route_config": route_config,
        "http_filters": http_filters,
        // istiod allows WebSocket upgrades on every HTTP listener (Envoy refuses them with 403
        // unless the HCM names the upgrade).
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        // istiod: no stream idle timeout (Envoy's default closes a quiet stream after 5 min),
        // and `100 Continue` proxied to the client (ENABLE_100_CONTINUE_HEADERS).
        "stream_idle_timeout": "0s",
        "proxy_100_continue": true,
    });
    if faults {
        // Client-sent fault headers are gone before any filter or route sees them, natively (the
        // router's configuration says so with `faultHeadersRemoved`): only the router's own
        // decision reaches the fault filter, and the router does not read the header map for it.
        hcm["early_header_mutation_extensions"] = json!([{
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
                "mutations": wasmesh_router::FAULT_HEADERS.iter().map(|h| json!({"remove": h})).collect::<Vec<_>>(),
            }
        }]);
    }
    if edge {
        hcm["xff_num_trusted_hops"] = json!(spec.mesh.num_trusted_proxies());
    }
    if let Some(log) = envoy_access_log(spec) {
        hcm["access_log"] = log;
    }
    if !c.access_logs.is_empty() {
        let mut logs = hcm["access_log"].as_array().cloned().unwrap_or_default();
        logs.extend(c.access_logs.iter().cloned());
        hcm["access_log"] = Value::Array(logs);
    }
    for (field, value) in transport.iter().flat_map(|t| &t.hcm_fields) {
        hcm[*field] = value.clone();
    }
    let mut filters: Vec<Value> = c.network_filters.iter().map(|f| wasm_network_filter(f, &spec.wasm_dir)).collect();
    filters.push(json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}));
    listener_with_chains(&format!("{name}_{port}"), port, filter_chains(transport, filters, Vec::new()))
}

/// Envoy's fault filter after wasmesh's router, where the router's configuration says a route
/// injects faults (`faultFilter`, set by [`crate::plugins::router`]). The router decides each
/// fault as Istio's per-route fault configuration would; this filter then delays the request on
/// Envoy's timer (the worker keeps serving other requests) or aborts it with response flag `FI`.
///
/// - With fault routes (`faultRoutes`, a static bootstrap): the filter is configured empty, as
///   istiod configures it, and the route the router selects carries the decided fault at 100 %
///   in its `typed_per_filter_config` ([`with_route_policies`]), which overrides the empty
///   configuration entirely (Envoy `FaultFilter::decodeHeaders`). It reads no request header:
///   client-sent `x-envoy-fault-*` headers do nothing and need no removal.
/// - Without (served live, where routes cannot follow a fault added later): header-controlled
///   delay and abort at 100 %; the router sets the `x-envoy-fault-*` request headers, the
///   headers are not sent upstream, and the HTTP connection manager removes client-sent ones
///   before the filters.
///
/// Returns whether client-sent fault headers must be removed before the filters.
fn with_fault_filter(http_filters: &mut Vec<Value>, route_config: &mut Value, c: &Contribution) -> bool {
    fn flag(v: &Value, name: &str) -> bool {
        match v {
            Value::Object(m) => m.get(name) == Some(&Value::Bool(true)) || m.values().any(|v| flag(v, name)),
            Value::Array(a) => a.iter().any(|v| flag(v, name)),
            _ => false,
        }
    }
    if !c.http_filters.iter().any(|f| flag(&f.config, "faultFilter")) {
        return false;
    }
    if c.http_filters.iter().any(|f| flag(&f.config, "faultRoutes")) {
        http_filters.push(json!({
            "name": wasmesh_router::FAULT_FILTER,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
        }));
        return false;
    }
    let all = json!({"numerator": 100, "denominator": "HUNDRED"});
    http_filters.push(json!({
        "name": wasmesh_router::FAULT_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"header_delay": {}, "percentage": all},
            "abort": {"header_abort": {}, "percentage": all},
        }
    }));
    if let Some(remove) =
        route_config.as_object_mut().map(|rc| rc.entry("request_headers_to_remove").or_insert(json!([])))
    {
        if let Some(list) = remove.as_array_mut() {
            list.extend(wasmesh_router::FAULT_HEADERS.iter().map(|h| json!(h)));
        }
    }
    true
}

/// Istio's default retry policy for routes without `retries` (spec: route/retry/retry.go).
fn istio_default_retry_policy() -> Value {
    wasmesh_router::istio_default_retry_policy()
}

/// The route policies (`timeout`, `retries`, mirrors, `corsPolicy`) of the router configurations
/// on this listener that say they need them (`routePolicies`, set by [`crate::plugins::router`]):
/// each compiled again here, as the filter compiles it.
fn route_policies(c: &Contribution) -> Vec<std::rc::Rc<wasmesh_router::RoutePolicy>> {
    /// Router configurations asking for policy routes, wherever the layout nests them.
    fn configs<'v>(v: &'v Value, out: &mut Vec<&'v Value>) {
        match v {
            Value::Object(m) if m.get("routePolicies") == Some(&Value::Bool(true)) => out.push(v),
            Value::Object(m) => m.values().for_each(|v| configs(v, out)),
            Value::Array(a) => a.iter().for_each(|v| configs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for f in &c.http_filters {
        configs(&f.config, &mut found);
    }
    let mut out: Vec<std::rc::Rc<wasmesh_router::RoutePolicy>> = Vec::new();
    for config in found {
        let Ok(cfg) = serde_json::from_value::<wasmesh_router::RouterConfig>(config.clone()) else { continue };
        let Ok(resources) = wasmesh_istio::FilterConfig::parsed_resources(&cfg) else { continue };
        let Ok(router) = cfg.compile(&resources) else { continue };
        for p in router.policies() {
            if !out.iter().any(|o| o.id == p.id) {
                out.push(p);
            }
        }
    }
    out
}

/// One Envoy route per route policy before the catch-all, matched on the policy filter state the
/// router sets (a client cannot forge it), with the route action and per-route CORS policy
/// istiod writes for the VirtualService route, and for a fault route the fault the router
/// decided (per-route `HTTPFault` at 100 %); Envoy's CORS filter after the wasm filters where a
/// policy has CORS (istiod puts it before the fault filter and the router). A client-sent copy of
/// the policy header wasmesh used to match on is removed before the request goes upstream.
fn with_route_policies(http_filters: &mut Vec<Value>, route_config: &mut Value, c: &Contribution) {
    let policies = route_policies(c);
    if policies.is_empty() {
        return;
    }
    if policies.iter().any(|p| p.cors.is_some()) {
        http_filters.push(json!({
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}
        }));
    }
    let Some(routes) = route_config.pointer_mut("/virtual_hosts/0/routes").and_then(Value::as_array_mut) else {
        return;
    };
    let Some(catch_all) = routes.first().cloned() else { return };
    let mut extra = Vec::with_capacity(policies.len());
    for p in &policies {
        let mut r = catch_all.clone();
        r["name"] = json!(format!("policy-{}", p.id));
        r["match"]["filter_state"] =
            json!([{"key": wasmesh_router::POLICY_FILTER_STATE_KEY, "string_match": {"exact": p.id}}]);
        if let Some(action) = r.get_mut("route").and_then(Value::as_object_mut) {
            action.remove("retry_policy");
            for (k, v) in &p.route_action {
                action.insert(k.clone(), v.clone());
            }
        }
        let mut per_filter = serde_json::Map::new();
        if let Some(cors) = &p.cors {
            per_filter.insert("envoy.filters.http.cors".into(), cors.clone());
        }
        if let Some(fault) = &p.fault {
            per_filter.insert(wasmesh_router::FAULT_FILTER.into(), fault.clone());
        }
        if !per_filter.is_empty() {
            r["typed_per_filter_config"] = Value::Object(per_filter);
        }
        if let Some(remove) = r.get_mut("request_headers_to_remove").and_then(Value::as_array_mut) {
            remove.push(json!(wasmesh_router::POLICY_HEADER));
        }
        extra.push(r);
    }
    routes.splice(0..0, extra);
    if let Some(remove) =
        routes.last_mut().and_then(|r| r.get_mut("request_headers_to_remove")).and_then(Value::as_array_mut)
    {
        remove.push(json!(wasmesh_router::POLICY_HEADER));
    }
}

/// Whether Envoy sends every request of this route configuration to the cluster
/// [`CLUSTER_HEADER`] names (the wasm router's choice), or answers it on the egress `block_all`
/// route, which the router chose by naming `BlackHoleCluster` there. Not when a virtual host
/// may answer with a redirect to HTTPS (`require_tls`) or any route does something else.
fn every_route_takes_the_cluster_header(route_config: &Value) -> bool {
    let Some(vhosts) = route_config.get("virtual_hosts").and_then(Value::as_array) else { return false };
    !vhosts.is_empty()
        && vhosts.iter().all(|v| {
            let routes = v.get("routes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            v.get("require_tls").is_none()
                && !routes.is_empty()
                && routes.iter().all(|r| {
                    r.pointer("/route/cluster_header").and_then(Value::as_str) == Some(CLUSTER_HEADER)
                        || r.get("name").and_then(Value::as_str) == Some(wasmesh_router::egress::BLACKHOLE_ROUTE)
                })
        })
}

/// Envoy's route adds the metadata-exchange headers to every upstream request of an outbound or
/// gateway listener in place of its stats filters (`exchangeHeadersAdded`), where
/// [`plugins::stats::exchange_headers_added_by_route`] says it does exactly what they would. At
/// the route configuration's level, so every route has them: the catch-all, the policy routes,
/// `PassthroughCluster` (the filter sends them to unknown hosts too) and the direct responses,
/// which send nothing upstream. Only in a static bootstrap: under xDS (`Slots::All`) the
/// filter configurations follow the YAML while the route stays as Envoy started with it, and a
/// `MESH_EXTERNAL` host added later must not get them.
fn with_exchange_headers(route_config: &mut Value, c: &mut Contribution, resources: &Resources, slots: Slots) {
    if slots != Slots::AsNeeded {
        return;
    }
    let headers = plugins::stats::exchange_headers_added_by_route(&mut c.http_filters, resources);
    if let (false, Some(rc)) = (headers.is_empty(), route_config.as_object_mut()) {
        rc.insert("request_headers_to_add".into(), Value::Array(headers));
    }
}

/// The route for outbound and gateway listeners: Envoy sends the request to the cluster the wasm
/// router named. Istio disables the route timeout by default (`0s`).
fn route_by_header() -> Value {
    json!({
        "name": "wasmesh",
        "virtual_hosts": [{
            "name": "wasmesh",
            "domains": ["*"],
            "routes": [{
                "match": {"prefix": "/"},
                "route": {"cluster_header": CLUSTER_HEADER, "timeout": "0s", "retry_policy": istio_default_retry_policy()},
                // Read when the route picks the cluster, removed before the request goes
                // upstream: the app never sees wasmesh's steering header.
                "request_headers_to_remove": [CLUSTER_HEADER],
            }],
        }],
    })
}

/// The inbound route: everything to the app. The metadata-exchange headers never reach the
/// application (the stats filter reads them first; the router drops them when forwarding).
fn route_to(cluster: &str) -> Value {
    json!({
        "name": "inbound",
        "virtual_hosts": [{
            "name": "inbound",
            "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
        }],
        "request_headers_to_remove": ["x-envoy-peer-metadata", "x-envoy-peer-metadata-id"],
    })
}

fn static_cluster(name: &str, endpoints: &[(String, u32)], lb: &str) -> Value {
    let all_ips = endpoints.iter().all(|(a, _)| a.parse::<std::net::IpAddr>().is_ok());
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, port)| json!({"endpoint": {"address": {"socket_address": {"address": addr, "port_value": port}}}}))
        .collect();
    let mut cluster = json!({
        "name": name,
        "type": if all_ips { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "10s",
        "lb_policy": lb,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    });
    if !all_ips {
        // istiod's DNS clusters: the mesh's dnsRefreshRate (60 s) and the record's TTL.
        cluster["dns_refresh_rate"] = json!("60s");
        cluster["respect_dns_ttl"] = json!(true);
        // istiod's choice for a proxy with IPv4 addresses only (wasmesh's proxies listen on
        // 127.0.0.1): `localhost` resolves to 127.0.0.1, not ::1.
        cluster["dns_lookup_family"] = json!("V4_ONLY");
    }
    cluster
}

/// One cluster per (service host, port) and per (DestinationRule subset, port), without their
/// transport (what `wasmeshctl validate` checks).
pub fn outbound_clusters(resources: &Resources, wl: &Workload) -> Result<Vec<Value>, Vec<Error>> {
    services_clusters(resources, wl, None)
}

/// [`outbound_clusters`]; with `tls` (`Some` of this proxy's certificates, if any), each with the
/// transport the mTLS plugin gives it ([`mtls::cluster_transport`]).
fn services_clusters(
    resources: &Resources,
    wl: &Workload,
    tls: Option<Option<&CertPaths>>,
) -> Result<Vec<Value>, Vec<Error>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    // The first DestinationRule per host FQDN, looked up by map: a scan per ServiceEntry host
    // made validating thousands of resources quadratic.
    let mut rules: std::collections::HashMap<String, (&Resource, &DestinationRule)> = std::collections::HashMap::new();
    for (r, dr) in resources.destination_rules() {
        rules.entry(wl.fqdn(&dr.host, r.namespace())).or_insert((r, dr));
    }
    // The proxy's own locality (its WorkloadEntry's), for locality load balancing.
    let proxy_locality = resources
        .workload_entries()
        .find(|(r, _)| r.namespace() == wl.namespace && r.name() == wl.name)
        .map(|(_, we)| we.locality.clone())
        .unwrap_or_default();
    for (se_res, se) in resources.service_entries() {
        let ns = se_res.namespace();
        // Endpoints: inline, plus WorkloadEntries the workloadSelector selects (same namespace).
        let mut endpoints: Vec<&WorkloadEntry> = se.endpoints.iter().collect();
        if let Some(sel) = &se.workload_selector {
            endpoints.extend(
                resources
                    .workload_entries()
                    .filter(|(r, we)| {
                        r.namespace() == ns && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v))
                    })
                    .map(|(_, we)| we),
            );
        }
        // `NONE` is Istio's default: written out, it means what the omitted field means here.
        if se.resolution.as_deref().is_some_and(|r| !matches!(r, "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN")) {
            errors.push(Error::at(
                se_res,
                "spec.resolution",
                format!(
                    "{:?} is not supported by wasmeshctl envoy; expected STATIC or DNS",
                    se.resolution.as_deref().unwrap_or("")
                ),
            ));
            continue;
        }
        for host in &se.hosts {
            let fq = wl.fqdn(host, ns);
            let rule = rules.get(&fq).copied();
            for port in &se.ports {
                // The endpoints and the WorkloadEntry behind each (none for a DNS name).
                let addrs = |labels: &BTreeMap<String, String>| -> Vec<((String, u32), Option<&WorkloadEntry>)> {
                    endpoints
                        .iter()
                        .filter(|we| labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                        .map(|we| {
                            let p = we.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number);
                            if we.address.is_empty() {
                                ((fq.clone(), p), None)
                            } else {
                                ((we.address.clone(), p), Some(*we))
                            }
                        })
                        .collect()
                };
                let mut eps = addrs(&BTreeMap::new());
                if eps.is_empty() && se.resolution.as_deref() != Some("STATIC") {
                    eps.push(((fq.clone(), port.target_port.unwrap_or(port.number)), None));
                }
                let mut subsets = vec![("", eps)];
                if let Some((_, dr)) = rule {
                    for subset in &dr.subsets {
                        subsets.push((subset.name.as_str(), addrs(&subset.labels)));
                    }
                }
                for (subset, eps) in subsets {
                    let name = format!("outbound|{}|{subset}|{fq}", port.number);
                    let addresses: Vec<(String, u32)> = eps.iter().map(|(a, _)| a.clone()).collect();
                    let mut cluster = with_istio_metadata(static_cluster(&name, &addresses, "LEAST_REQUEST"), &fq, ns);
                    // The DestinationRule's traffic policy for this port and subset (istiod's
                    // merge), over istiod's defaults.
                    let policy = match rule {
                        Some((r, dr)) => traffic_policy::effective(r, dr, subset, port).map(|p| (p, Some(r))),
                        None => Ok((traffic_policy::Effective::default(), None)),
                    };
                    let applied = policy.and_then(|(p, r)| {
                        traffic_policy::apply(&mut cluster, &p, traffic_policy::upstream_protocol(port), r)?;
                        Ok(p)
                    });
                    let localities: Vec<String> =
                        eps.iter().map(|(_, we)| we.map(|w| w.locality.clone()).unwrap_or_default()).collect();
                    let (policy, applied) = match applied {
                        Ok(p) => (Some(p), Ok(())),
                        Err(e) => (None, Err(e)),
                    };
                    if let Err(e) = applied {
                        for e in e {
                            if !errors.iter().any(|x: &Error| x.to_string() == e.to_string()) {
                                errors.push(e);
                            }
                        }
                    }
                    if let Some(certs) = tls {
                        let svc = UpstreamService {
                            service_entry: (se_res, se),
                            host: &fq,
                            port: port.number,
                            subset,
                            destination_rule: rule,
                        };
                        let peers: Vec<PeerEndpoint<'_>> = eps
                            .iter()
                            .map(|((_, p), entry)| PeerEndpoint { entry: *entry, namespace: ns, port: *p })
                            .collect();
                        match mtls::cluster_transport(wl, resources, &svc, &peers, certs) {
                            Ok(transport) => with_transport(&mut cluster, transport),
                            Err(mut e) => errors.append(&mut e),
                        }
                    }
                    // After the transport (which marks endpoints in one group): the locality groups.
                    if let Some(policy) = &policy {
                        traffic_policy::apply_locality(&mut cluster, &localities, &proxy_locality, policy);
                    }
                    out.push(cluster);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Writes what the mTLS plugin decided into a cluster [`static_cluster`] wrote.
fn with_transport(cluster: &mut Value, transport: ClusterTransport) {
    match transport {
        ClusterTransport::Plaintext => {}
        ClusterTransport::All(socket) => cluster["transport_socket"] = socket,
        ClusterTransport::Some { socket, endpoints } => {
            // Istio's transport_socket_matches: the endpoints with mTLS marked tlsMode=istio.
            cluster["transport_socket_matches"] = json!([
                {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": socket},
                {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
            ]);
            let lb_endpoints =
                cluster.pointer_mut("/load_assignment/endpoints/0/lb_endpoints").and_then(Value::as_array_mut);
            for (lb, _) in lb_endpoints.into_iter().flatten().zip(endpoints).filter(|(_, mutual)| *mutual) {
                lb["metadata"] = json!({"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}});
            }
        }
    }
}

/// Istio's cluster metadata (`filter_metadata.istio.services`), which telemetry reads for
/// `destination_service*` labels.
fn with_istio_metadata(mut cluster: Value, host: &str, ns: &str) -> Value {
    let name = host.split('.').next().unwrap_or(host);
    cluster["metadata"] =
        json!({"filter_metadata": {"istio": {"services": [{"host": host, "name": name, "namespace": ns}]}}});
    cluster
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn lb_of(clusters: &[Value], name: &str) -> String {
        let c = clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no cluster {name}"));
        c["lb_policy"].as_str().unwrap_or_else(|| panic!("{c}")).to_string()
    }

    const SERVICE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, labels: {version: v1}}, {address: 127.0.0.2, labels: {version: v2}}]
"#;

    /// One cluster per service port and subset, each with the DestinationRule's load balancer:
    /// a subset's own `loadBalancer` wins, a subset policy without one (only `tls`) inherits
    /// the rule's, and no DestinationRule means Istio's default LEAST_REQUEST.
    #[test]
    fn clusters_get_the_destination_rule_load_balancer_per_subset() {
        let wl = Workload::new("sleep", "default");
        let none = outbound_clusters(&resources(SERVICE), &wl).unwrap();
        assert_eq!(lb_of(&none, "outbound|9080||reviews.default.svc.cluster.local"), "LEAST_REQUEST");

        let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: DISABLE}}}
  - {name: all, labels: {}}
"#;
        let clusters = outbound_clusters(&resources(&(SERVICE.to_string() + dr)), &wl).unwrap();
        assert_eq!(lb_of(&clusters, "outbound|9080||reviews.default.svc.cluster.local"), "RANDOM");
        assert_eq!(lb_of(&clusters, "outbound|9080|v1|reviews.default.svc.cluster.local"), "ROUND_ROBIN");
        assert_eq!(
            lb_of(&clusters, "outbound|9080|v2|reviews.default.svc.cluster.local"),
            "RANDOM",
            "tls-only subset policy inherits"
        );
        assert_eq!(lb_of(&clusters, "outbound|9080|all|reviews.default.svc.cluster.local"), "RANDOM");
        let v1 = clusters.iter().find(|c| c["name"] == "outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        let eps = &v1["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(eps.as_array().map(Vec::len), Some(1), "the v1 subset has the v1 endpoint only: {v1}");
        assert_eq!(eps[0]["endpoint"]["address"]["socket_address"]["address"], "127.0.0.1");
    }

    /// The steering header is read by the route and removed before the request leaves.
    #[test]
    fn the_cluster_header_route_removes_the_header() {
        let r = route_by_header();
        let route = &r["virtual_hosts"][0]["routes"][0];
        assert_eq!(route["route"]["cluster_header"], CLUSTER_HEADER);
        assert_eq!(route["request_headers_to_remove"], json!([CLUSTER_HEADER]));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tcp_tests {
    use super::*;

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: default}
spec:
  hosts: [db.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 3306, name: mysql, protocol: MYSQL}
  - {number: 8080, name: http-admin}
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: db, namespace: default}
spec: {address: 127.0.0.1, labels: {app: db}, serviceAccount: db, ports: {mysql: 13306, http-admin: 18080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: sleep, namespace: default}
spec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}
"#;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn spec(workload: &str, res: &Resources, inbound: &[u16], tcp_outbound: Vec<TcpOutbound>) -> ProxySpec {
        let (wl, _) = workload_from_entry(res, workload).unwrap();
        ProxySpec {
            workload: wl,
            inbound: inbound.iter().map(|p| Inbound { port: *p, app_port: 9 }).collect(),
            outbound_port: None,
            tcp_outbound,
            gateway_ports: Vec::new(),
            admin_port: 15000,
            wasm_dir: PathBuf::from("/wasm"),
            mesh: MeshConfig::default(),
            certs_dir: None,
            envoy_access_log: None,
            credentials_dir: None,
        }
    }

    fn listener<'a>(boot: &'a Value, name: &str) -> &'a Value {
        let ls = boot["static_resources"]["listeners"].as_array().unwrap();
        ls.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no listener {name} in {ls:?}"))
    }

    fn filter_names(l: &Value) -> Vec<String> {
        l["filter_chains"][0]["filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// istiod's `grpc_stats` filter (message counts in filter state, for the stats phase) in every
    /// HTTP chain, after the wasm filters and before Envoy's own filters and the router; none on a
    /// TCP chain.
    #[test]
    fn every_http_chain_has_istiods_grpc_stats_filter_after_the_wasm_filters() {
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[18080, 13306], Vec::new());
        sp.outbound_port = Some(15001);
        let boot = build(&sp, &res).unwrap();
        for name in ["inbound_18080", "outbound_15001"] {
            let l = listener(&boot, name);
            let hcm = &l["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap()["typed_config"];
            let filters = hcm["http_filters"].as_array().unwrap();
            let at = filters.iter().position(|f| f["name"] == "envoy.filters.http.grpc_stats").expect(name);
            assert_eq!(filters[at]["typed_config"]["emit_filter_state"], true, "{name}");
            assert_eq!(filters[at]["typed_config"]["stats_for_all_methods"], false, "{name}");
            assert!(filters[..at].iter().all(is_wasm_filter) && at > 0, "{name}: {filters:?}");
            assert!(filters[at + 1..].iter().all(|f| !is_wasm_filter(f)), "{name}: {filters:?}");
        }
        let tcp = listener(&boot, "inbound_13306").to_string();
        assert!(!tcp.contains("grpc_stats"), "{tcp}");
    }

    /// The clusters written here carry no Istio workload metadata on their endpoints: the
    /// client-side stats filters (HTTP, in the chain, and TCP) are told so; the inbound ones are not.
    #[test]
    fn client_side_stats_filters_do_not_read_endpoint_metadata_the_bootstrap_never_writes() {
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[18080, 13306], Vec::new());
        sp.outbound_port = Some(15001);
        let boot = build(&sp, &res).unwrap().to_string();
        let stats_configs = all_stats_configs(&serde_json::from_str(&boot).unwrap());
        assert!(stats_configs.len() >= 3, "{stats_configs:?}");
        for c in &stats_configs {
            let client = c["direction"] != "inbound";
            assert_eq!(c.get("noEndpointMetadata") == Some(&Value::Bool(true)), client, "{c}");
            // Every outbound route takes the router's cluster header: HTTP stats are told so.
            let http = c.get("protocol").is_none_or(|p| p == "http");
            assert_eq!(c.get("clusterHeader") == Some(&json!(CLUSTER_HEADER)), client && http, "{c}");
        }
        assert!(stats_configs.iter().any(|c| c["direction"] == "outbound"));
        // What makes the flag true: no endpoint written here has Istio's metadata.
        let boot: Value = serde_json::from_str(&boot).unwrap();
        for c in boot["static_resources"]["clusters"].as_array().unwrap() {
            for e in c.pointer("/load_assignment/endpoints").and_then(Value::as_array).into_iter().flatten() {
                for lb in e["lb_endpoints"].as_array().into_iter().flatten() {
                    assert!(lb.pointer("/metadata/filter_metadata/istio").is_none(), "{lb}");
                }
            }
        }
    }

    /// Stats take the cluster from the router's header only where Envoy can do nothing else.
    #[test]
    fn only_routes_that_all_take_the_cluster_header_let_stats_skip_the_cluster_attribute() {
        assert!(every_route_takes_the_cluster_header(&route_by_header()));
        let registry_only = crate::egress::outbound_route(
            wasmesh_router::OutboundMode::RegistryOnly,
            route_by_header(),
            CLUSTER_HEADER,
        );
        assert!(every_route_takes_the_cluster_header(&registry_only));
        assert!(!every_route_takes_the_cluster_header(&route_to("inbound|8080||")));
        let mut https_redirect = route_by_header();
        https_redirect["virtual_hosts"][0]["require_tls"] = json!("ALL");
        assert!(!every_route_takes_the_cluster_header(&https_redirect));
        let mut fixed = route_by_header();
        fixed["virtual_hosts"][0]["routes"][0]["route"] = json!({"cluster": "outbound|80||a"});
        assert!(!every_route_takes_the_cluster_header(&fixed));
        assert!(!every_route_takes_the_cluster_header(&json!({"virtual_hosts": []})));
    }

    /// Every stats configuration under `v` (HTTP and TCP filters, a chain's stats phases).
    pub(super) fn all_stats_configs(v: &Value) -> Vec<Value> {
        fn walk(v: &Value, out: &mut Vec<Value>) {
            match v {
                Value::String(s) if s.contains("\"metadataExchange\"") => {
                    let c: Value = serde_json::from_str(s).unwrap();
                    match c.get("phases").and_then(Value::as_array) {
                        Some(ps) => out.extend(
                            ps.iter().filter(|p| p["rootId"] == "wasmesh.stats").map(|p| p["configuration"].clone()),
                        ),
                        None => out.push(c),
                    }
                }
                Value::Object(m) => m.values().for_each(|v| walk(v, out)),
                Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(v, &mut out);
        out
    }

    /// The HTTP stats configurations of a listener (its filters or its chain's stats phases).
    pub(super) fn http_stats_configs(l: &Value) -> Vec<Value> {
        let mut out = all_stats_configs(l);
        out.retain(|c| c["protocol"] != "tcp");
        out
    }

    fn route_config_of(l: &Value) -> &Value {
        &l["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap()["typed_config"]["route_config"]
    }

    /// The static bootstrap's outbound route adds the exchange headers with the values the stats
    /// phase would write, and tells the phase (both layouts, every outboundTrafficPolicy); not
    /// where a MESH_EXTERNAL host is known, a VirtualService header operation names them, or
    /// under xDS, where the filter keeps writing them; never on the inbound route.
    #[test]
    fn the_outbound_route_adds_the_exchange_headers_where_it_does_exactly_what_the_filter_does() {
        use wasmesh_router::{OutboundMode, OutboundTrafficPolicy};
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[18080], Vec::new());
        sp.outbound_port = Some(15001);
        let local = crate::plugins::stats::core::LocalInfo::from_workload(&sp.workload);
        for layout in [Layout::OnePass, Layout::PerFilter] {
            for mode in [None, Some(OutboundMode::AllowAny), Some(OutboundMode::RegistryOnly)] {
                sp.mesh.outbound_traffic_policy = mode.map(|mode| OutboundTrafficPolicy { mode });
                let boot = build_with(&sp, &res, Slots::AsNeeded, layout).unwrap();
                let out = listener(&boot, "outbound_15001");
                let add = &route_config_of(out)["request_headers_to_add"];
                assert_eq!(
                    add,
                    &json!([
                        {"header": {"key": "x-envoy-peer-metadata", "value": local.header_value()},
                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                        {"header": {"key": "x-envoy-peer-metadata-id", "value": local.node_id},
                         "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                    ]),
                    "{layout:?} {mode:?}"
                );
                let configs = http_stats_configs(out);
                assert_eq!(configs.len(), 1, "{layout:?}: {configs:?}");
                assert_eq!(configs[0]["exchangeHeadersAdded"], true);
                // The filter accepts the flag and would have written exactly these values.
                let stats = wasmesh_stats::StatsConfig::compile_json(configs[0].to_string().as_bytes()).unwrap();
                assert!(stats.exchange_headers_added);
                assert_eq!(add[0]["header"]["value"], stats.header_value.as_str());
                assert_eq!(add[1]["header"]["value"], stats.local.node_id.as_str());
                let inbound = listener(&boot, "inbound_18080");
                assert!(route_config_of(inbound).get("request_headers_to_add").is_none());
                assert!(http_stats_configs(inbound).iter().all(|c| c.get("exchangeHeadersAdded").is_none()));
            }
        }
        sp.mesh.outbound_traffic_policy = None;
        let external = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [httpbin.org]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"#;
        let names_the_header = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: default}
spec:
  hosts: [db]
  http:
  - headers: {request: {remove: [X-Envoy-Peer-Metadata]}}
    route: [{destination: {host: db}}]
"#;
        let custom = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector: {matchLabels: {app: nobody}}
  action: CUSTOM
  provider: {name: my-ext-authz}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
"#;
        for (extra, slots) in [
            (external, Slots::AsNeeded),
            (names_the_header, Slots::AsNeeded),
            (custom, Slots::AsNeeded),
            ("", Slots::All),
        ] {
            let res = resources(&format!("{MESH}{extra}"));
            let boot = build_with(&sp, &res, slots, Layout::OnePass).unwrap();
            let out = listener(&boot, "outbound_15001");
            assert!(route_config_of(out).get("request_headers_to_add").is_none(), "{extra} {slots:?}");
            let configs = http_stats_configs(out);
            assert!(
                !configs.is_empty() && configs.iter().all(|c| c.get("exchangeHeadersAdded").is_none()),
                "{configs:?}"
            );
        }
    }

    fn is_wasm_filter(f: &Value) -> bool {
        f["typed_config"]["@type"].as_str().is_some_and(|t| t.ends_with(".wasm.v3.Wasm"))
    }

    #[test]
    fn route_policies_get_envoy_routes_and_the_cors_filter() {
        let hcm_of = |boot: &Value| {
            let l = listener(boot, "outbound_15001");
            l["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap()["typed_config"].clone()
        };
        let res = resources(MESH);
        let mut sp = spec("default/sleep", &res, &[], Vec::new());
        sp.outbound_port = Some(15001);
        let hcm = hcm_of(&build(&sp, &res).unwrap());
        assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap().len(), 1);

        let yaml = MESH.to_string()
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: default}\n\
               spec:\n  hosts: [db]\n  http:\n  - match: [{uri: {prefix: /a}}]\n    timeout: 2s\n    corsPolicy: {allowOrigins: [{exact: 'http://x'}]}\n    \
               route: [{destination: {host: db, port: {number: 8080}}}]\n  - retries: {attempts: 4, retryOn: 5xx}\n    \
               route: [{destination: {host: db, port: {number: 8080}}}]\n";
        let res = resources(&yaml);
        let hcm = hcm_of(&build(&sp, &res).unwrap());
        let names: Vec<&str> =
            hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names[names.len() - 2..], ["envoy.filters.http.cors", "envoy.filters.http.router"], "{names:?}");
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 3, "{routes:?}");
        let first = &routes[0];
        assert_eq!(first["match"]["filter_state"][0]["key"], wasmesh_router::POLICY_FILTER_STATE_KEY);
        assert!(first["match"].get("headers").is_none(), "a client cannot name a policy");
        assert_eq!(first["route"]["timeout"], "2s");
        assert_eq!(first["route"]["cluster_header"], CLUSTER_HEADER);
        assert_eq!(
            first["typed_per_filter_config"]["envoy.filters.http.cors"]["allow_origin_string_match"][0]["exact"],
            "http://x"
        );
        assert_eq!(routes[1]["route"]["retry_policy"]["num_retries"], 4);
        assert_eq!(routes[1]["route"]["retry_policy"]["retry_on"], "5xx");
        let last = &routes[2];
        assert_eq!(last["route"]["retry_policy"], istio_default_retry_policy());
        assert!(last["match"].get("headers").is_none() && last["match"].get("filter_state").is_none());
        for r in routes {
            assert!(r["request_headers_to_remove"].as_array().unwrap().contains(&json!(wasmesh_router::POLICY_HEADER)));
        }
    }

    #[test]
    fn the_fault_filter_follows_the_router_only_where_a_route_injects_faults() {
        let hcm_of = |boot: &Value| {
            let l = listener(boot, "outbound_15001");
            l["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap()["typed_config"].clone()
        };
        let res = resources(MESH);
        let mut sp = spec("default/sleep", &res, &[], Vec::new());
        sp.outbound_port = Some(15001);
        let hcm = hcm_of(&build(&sp, &res).unwrap());
        let names: Vec<&str> =
            hcm["http_filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert!(!names.contains(&"envoy.filters.http.fault"), "{names:?}");
        assert!(hcm.get("early_header_mutation_extensions").is_none());

        // A fault that never fires (no percentage): the filter, configured empty, and no route.
        let yaml = MESH.to_string()
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: default}\n\
               spec:\n  hosts: [db]\n  http:\n  - fault: {abort: {httpStatus: 503}}\n    route: [{destination: {host: db, port: {number: 8080}}}]\n";
        let res = resources(&yaml);
        let hcm = hcm_of(&build(&sp, &res).unwrap());
        let filters = hcm["http_filters"].as_array().unwrap();
        let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names[names.len() - 2..], ["envoy.filters.http.fault", "envoy.filters.http.router"], "{names:?}");
        assert_eq!(hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap().len(), 1);

        // Faults that fire: istiod's empty fault filter, and one route per outcome of the draw
        // carrying the decided fault at 100 % per route, over the VirtualService route's policy.
        let yaml = MESH.to_string()
            + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: db, namespace: default}\n\
               spec:\n  hosts: [db]\n  http:\n  - timeout: 3s\n    fault: {abort: {httpStatus: 503, percentage: {value: 10}}, \
               delay: {fixedDelay: 2s, percentage: {value: 20}}}\n    route: [{destination: {host: db, port: {number: 8080}}}]\n";
        let res = resources(&yaml);
        let hcm = hcm_of(&build(&sp, &res).unwrap());
        let filters = hcm["http_filters"].as_array().unwrap();
        let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names[names.len() - 2..], ["envoy.filters.http.fault", "envoy.filters.http.router"], "{names:?}");
        assert_eq!(
            filters[names.len() - 2]["typed_config"],
            json!({"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}),
            "configured empty, as istiod does: it reads no request header"
        );
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"].as_array().unwrap();
        let faults: Vec<&Value> =
            routes.iter().filter_map(|r| r["typed_per_filter_config"].get("envoy.filters.http.fault")).collect();
        assert_eq!(faults.len(), 3, "delay, abort, both: {routes:#?}");
        let all = json!({"numerator": 100, "denominator": "HUNDRED"});
        assert!(faults.contains(&&json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": "2.000s", "percentage": all},
            "abort": {"http_status": 503, "percentage": all},
        })));
        for r in routes.iter().filter(|r| r["typed_per_filter_config"].get("envoy.filters.http.fault").is_some()) {
            assert_eq!(r["match"]["filter_state"][0]["key"], wasmesh_router::POLICY_FILTER_STATE_KEY);
            assert_eq!(r["route"]["timeout"], "3s", "the route's own policy: {r}");
        }
        assert_eq!(routes.len(), 5, "the timeout policy, three fault routes, the catch-all");
        // Client-sent fault headers are inert: nothing removes them, the router reads none.
        assert!(hcm.get("early_header_mutation_extensions").is_none());
        assert!(!hcm["route_config"].to_string().contains("x-envoy-fault-abort-request"));
        let filters = hcm["http_filters"].to_string();
        assert!(filters.contains("faultRoutes") && !filters.contains("faultHeadersRemoved"), "{filters}");
    }

    #[test]
    fn mesh_access_log_file_logs_tcp_connections_on_every_tcp_listener() {
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[13306], Vec::new());
        sp.mesh.access_log_file = Some("/dev/stdout".into());
        let boot = build(&sp, &res).unwrap();
        let tcp = listener(&boot, "inbound_13306");
        let chains = tcp["filter_chains"].as_array().unwrap();
        assert!(!chains.is_empty());
        // Every chain (plain and metadata exchange): the network filter, and the sink on the
        // tcp_proxy printing its line.
        for chain in chains {
            let filters = chain["filters"].as_array().unwrap();
            let names: Vec<&str> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
            assert!(names.contains(&"wasmesh.access_log"), "{names:?}");
            let phase = filters.iter().find(|f| f["name"] == "wasmesh.access_log").unwrap();
            assert!(phase["typed_config"]["@type"].as_str().unwrap().contains("filters.network.wasm"), "{phase}");
            let config = phase["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
            assert!(config.contains("\"tcp\":true"), "{config}");
            let proxy = &filters.last().unwrap()["typed_config"];
            let logs = proxy["access_log"].to_string();
            assert!(logs.contains("%FILTER_STATE(wasm.wasmesh.access_log.0:PLAIN)%"), "{logs}");
        }
        // No accessLogFile: nothing logged, no filter.
        let boot = build(&spec("default/db", &res, &[13306], Vec::new()), &res).unwrap();
        assert!(!listener(&boot, "inbound_13306").to_string().contains("wasmesh.access_log"));
    }

    /// istiod's listener-level access log (connections no filter chain takes, flag `NR`) on the
    /// inbound TCP and HTTP listeners and the outbound one, in meshConfig's path and format.
    #[test]
    fn listeners_log_connections_no_filter_chain_takes_as_istiod_does() {
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[13306, 18080], Vec::new());
        sp.outbound_port = Some(15001);
        let names = ["inbound_13306", "inbound_18080", "outbound_15001"];
        let boot = build(&sp, &res).unwrap();
        for n in names {
            assert!(listener(&boot, n).get("access_log").is_none(), "no access logging, no listener log: {n}");
        }
        sp.mesh.access_log_file = Some("/tmp/a.log".into());
        let boot = build(&sp, &res).unwrap();
        let want = json!([{
            "name": "envoy.access_loggers.file",
            "filter": {"response_flag_filter": {"flags": ["NR"]}},
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": "/tmp/a.log",
                "log_format": {"text_format_source": {"inline_string": wasmesh_accesslog::ISTIO_TEXT}},
            },
        }]);
        for n in names {
            assert_eq!(listener(&boot, n)["access_log"], want, "{n}");
        }
        // JSON with a custom format: Envoy's JSON logger with those fields, unsorted as istiod's.
        sp.mesh.access_log_encoding = Some("JSON".into());
        sp.mesh.access_log_format =
            Some(r#"{"flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%"}"#.into());
        let boot = build(&sp, &res).unwrap();
        let log = &listener(&boot, "inbound_13306")["access_log"][0];
        assert_eq!(
            log["typed_config"]["log_format"],
            json!({"json_format": {"flags": "%RESPONSE_FLAGS%", "details": "%RESPONSE_CODE_DETAILS%"},
                "json_format_options": {"sort_properties": false}})
        );
        // A Telemetry filter joins the NR filter (istiod's AndFilter), on the listeners its mode
        // covers (SERVER: inbound only).
        let telemetry = MESH.to_string()
            + "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: istio-system}\nspec: {accessLogging: [{match: {mode: SERVER}, filter: {expression: 'response.code >= 400'}}]}\n";
        let res = resources(&telemetry);
        let boot = build(&sp, &res).unwrap();
        assert_eq!(
            listener(&boot, "inbound_18080")["access_log"][0]["filter"],
            json!({"and_filter": {"filters": [{"response_flag_filter": {"flags": ["NR"]}}, {"extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": "response.code >= 400",
                },
            }}]}})
        );
        assert!(listener(&boot, "outbound_15001").get("access_log").is_none());
        // meshConfig disableEnvoyListenerLog: none.
        sp.mesh.disable_envoy_listener_log = Some(true);
        let boot = build(&sp, &res).unwrap();
        for n in names {
            assert!(listener(&boot, n).get("access_log").is_none(), "{n}");
        }
    }

    #[test]
    fn envoy_otel_als_exports_tcp_connections_from_the_network_filter() {
        let res = resources(MESH);
        let mut sp = spec("default/db", &res, &[13306], Vec::new());
        sp.mesh = MeshConfig::load(
            "defaultProviders: {accessLogging: [otel]}\nextensionProviders:\n- name: otel\n  envoyOtelAls: \
             {service: otel.observability.svc.cluster.local, port: 4317, logFormat: {labels: {b: '%BYTES_SENT%'}}}\n",
            "mesh.yaml",
        )
        .unwrap();
        let boot = build(&sp, &res).unwrap();
        let tcp = listener(&boot, "inbound_13306");
        for chain in tcp["filter_chains"].as_array().unwrap() {
            let filters = chain["filters"].as_array().unwrap();
            let phase = filters.iter().find(|f| f["name"] == "wasmesh.access_log").unwrap();
            assert!(phase["typed_config"]["@type"].as_str().unwrap().contains("filters.network.wasm"), "{phase}");
            let config: Value =
                serde_json::from_str(phase["typed_config"]["config"]["configuration"]["value"].as_str().unwrap())
                    .unwrap();
            assert_eq!(config["tcp"], true);
            let otel = &config["logs"][0]["otel"];
            assert_eq!(otel["cluster"], "wasmesh-accesslog|otel", "{config}");
            assert_eq!(otel["authority"], "otel.observability.svc.cluster.local");
            assert_eq!(otel["attributes"], json!({"b": "%BYTES_SENT%"}));
            // Exported, not printed: no sink logger on the tcp_proxy.
            let proxy = &filters.last().unwrap()["typed_config"];
            assert!(!proxy["access_log"].to_string().contains("FILTER_STATE"), "{proxy}");
        }
        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        let c = clusters.iter().find(|c| c["name"] == "wasmesh-accesslog|otel").unwrap();
        assert!(c.to_string().contains("http2_protocol_options") && c.to_string().contains("4317"), "{c}");
    }

    #[test]
    fn tcp_workload_ports_get_tcp_proxy_and_http_ports_the_hcm() {
        let yaml = MESH.to_string()
            + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db, namespace: default}\nspec: {rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]}\n";
        let res = resources(&yaml);
        let boot = build(&spec("default/db", &res, &[13306, 18080], Vec::new()), &res).unwrap();
        let tcp = listener(&boot, "inbound_13306");
        assert_eq!(filter_names(tcp), ["wasmesh.stats.tcp", "wasmesh.authz.tcp", "envoy.filters.network.tcp_proxy"]);
        let proxy = &tcp["filter_chains"][0]["filters"][2]["typed_config"];
        assert_eq!(proxy["cluster"], "inbound|13306||");
        assert_eq!(proxy["stat_prefix"], "inbound|13306||");
        let authz = &tcp["filter_chains"][0]["filters"][1]["typed_config"]["config"]["configuration"]["value"];
        assert!(authz.as_str().unwrap().contains("\"stage\":\"tcp\""), "{authz}");
        let http = listener(&boot, "inbound_18080");
        assert_eq!(filter_names(http), ["envoy.filters.network.http_connection_manager"]);
        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        let app = clusters.iter().find(|c| c["name"] == "inbound|13306||").unwrap();
        assert!(app.get("typed_extension_protocol_options").is_none(), "a TCP app cluster has no HTTP options");
        assert!(boot["stats_config"]["stats_tags"].as_array().unwrap().iter().any(|t| t["tag_name"] == "authz_rule"));
    }

    #[test]
    fn no_policy_no_tcp_authz_filter_and_permissive_gets_both_chains() {
        let res = resources(MESH);
        let boot = build(&spec("default/db", &res, &[13306], Vec::new()), &res).unwrap();
        assert_eq!(
            filter_names(listener(&boot, "inbound_13306")),
            ["wasmesh.stats.tcp", "envoy.filters.network.tcp_proxy"]
        );
    }

    #[test]
    fn strict_peer_authentication_applies_to_tcp_ports_as_to_http_ports() {
        let yaml = MESH.to_string() + "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n";
        let res = resources(&yaml);
        let e = build(&spec("default/db", &res, &[13306], Vec::new()), &res).unwrap_err();
        assert!(e[0].message.contains("port 13306") && e[0].message.contains("STRICT"), "{e:?}");
        // With certificates: one TLS chain requiring a client certificate, the TCP filters in it.
        let dir = std::env::temp_dir().join(format!("wasmesh-tcp-strict-{}", std::process::id()));
        let ids = [crate::certs::WorkloadIdentity::new("cluster.local", "default", "db")];
        crate::certs::run(&dir, &ids, &crate::certs::CaOptions::default()).unwrap();
        let mut s = spec("default/db", &res, &[13306], Vec::new());
        s.certs_dir = Some(dir.clone());
        let boot = build(&s, &res).unwrap();
        let l = listener(&boot, "inbound_13306");
        let chains = l["filter_chains"].as_array().unwrap();
        // Ahead of the mTLS chain, Istio's TCP metadata exchange for clients offering its ALPN.
        assert_eq!(chains.len(), 2);
        for c in chains {
            assert_eq!(c["transport_socket"]["typed_config"]["require_client_certificate"], true);
            let names: Vec<&str> =
                c["filters"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
            assert_eq!(
                names,
                ["wasmesh.stats.tcp", "wasmesh.authz.tcp", "envoy.filters.network.tcp_proxy"],
                "STRICT installs the TCP authz filter"
            );
        }
        assert_eq!(
            chains[0]["filter_chain_match"],
            json!({"transport_protocol": "tls", "application_protocols": ["istio-peer-exchange"]})
        );
        assert_eq!(
            chains[0]["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"],
            json!(["istio-peer-exchange", "h2", "http/1.1"])
        );
        let config = |c: &Value| {
            c["filters"][0]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap().to_string()
        };
        assert!(config(&chains[0]).contains("\"peerExchange\":true"), "{}", config(&chains[0]));
        assert!(!config(&chains[1]).contains("peerExchange"), "the plain mTLS chain does not exchange");
        // The chains enforce STRICT: the TCP authz filter does not check it again.
        for c in chains {
            let authz = c["filters"][1]["typed_config"]["config"]["configuration"]["value"].as_str().unwrap();
            assert!(authz.contains("\"peerAuthenticationByTransport\":true"), "{authz}");
        }
        // The client's cluster to the TCP port offers the exchange first.
        let ids = [crate::certs::WorkloadIdentity::new("cluster.local", "default", "sleep")];
        crate::certs::run(&dir, &ids, &crate::certs::CaOptions::default()).unwrap();
        let mut s = spec("default/sleep", &res, &[], vec!["15306=db:3306".parse().unwrap()]);
        s.certs_dir = Some(dir.clone());
        let boot = build(&s, &res).unwrap();
        let l = listener(&boot, "outbound_tcp_15306");
        assert!(l["filter_chains"][0]["filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .contains("\"peerExchange\":true"));
        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        let alpn = |name: &str| {
            clusters.iter().find(|c| c["name"] == name).unwrap()["transport_socket"]["typed_config"]
                ["common_tls_context"]["alpn_protocols"]
                .clone()
        };
        assert_eq!(alpn("outbound|3306||db.default.svc.cluster.local"), json!(["istio-peer-exchange", "istio"]));
        assert_eq!(
            alpn("outbound|8080||db.default.svc.cluster.local"),
            json!(["istio", "http/1.1"]),
            "HTTP ports keep Istio's HTTP ALPN"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tcp_outbound_listener_reaches_the_service_cluster() {
        let res = resources(MESH);
        let out = "15306=db:3306".parse::<TcpOutbound>().unwrap();
        assert_eq!(out, TcpOutbound { bind_port: 15306, host: "db".into(), port: 3306 });
        let boot = build(&spec("default/sleep", &res, &[], vec![out]), &res).unwrap();
        let l = listener(&boot, "outbound_tcp_15306");
        assert_eq!(l["address"]["socket_address"]["port_value"], 15306);
        assert_eq!(filter_names(l), ["wasmesh.stats.tcp", "envoy.filters.network.tcp_proxy"]);
        let proxy = &l["filter_chains"][0]["filters"][1]["typed_config"];
        assert_eq!(proxy["cluster"], "outbound|3306||db.default.svc.cluster.local");
        let clusters = boot["static_resources"]["clusters"].as_array().unwrap();
        let c = clusters.iter().find(|c| c["name"] == "outbound|3306||db.default.svc.cluster.local").unwrap();
        assert_eq!(
            c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
                ["port_value"],
            13306
        );
    }

    #[test]
    fn tcp_outbound_errors_name_the_flag_and_the_port() {
        let res = resources(MESH);
        let err = |target: &str| {
            let out = target.parse::<TcpOutbound>().unwrap();
            let e = build(&spec("default/sleep", &res, &[], vec![out]), &res).unwrap_err();
            e[0].to_string()
        };
        let e = err("1=db:8080");
        assert!(e.contains("ServiceEntry default/db") && e.contains("spec.ports[1]") && e.contains("not TCP"), "{e}");
        assert!(err("1=db:9999").contains("no ServiceEntry of db.default.svc.cluster.local has port 9999"));
        assert!(err("1=nope.other:3306").contains("no ServiceEntry has host nope.other"));
        for bad in ["db:3306", "x=db:3306", "1=db", "1=:3306", "1=db:x"] {
            assert!(bad.parse::<TcpOutbound>().unwrap_err().contains("BIND_PORT=HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn conflicting_and_udp_ports_are_refused() {
        let udp =
            MESH.replace("{number: 3306, name: mysql, protocol: MYSQL}", "{number: 3306, name: mysql, protocol: UDP}");
        let res = resources(&udp);
        let e = build(&spec("default/db", &res, &[13306], Vec::new()), &res).unwrap_err();
        assert!(e[0].to_string().contains("spec.ports[0]") && e[0].to_string().contains("UDP"), "{e:?}");
        let clash = MESH.to_string()
            + "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db-http, namespace: default}\nspec:\n  hosts: [db-http.default.svc.cluster.local]\n  ports: [{number: 80, name: mysql, protocol: HTTP}]\n  workloadSelector: {labels: {app: db}}\n";
        let res = resources(&clash);
        let e = build(&spec("default/db", &res, &[13306], Vec::new()), &res).unwrap_err();
        assert!(
            e[0].to_string().contains("one listener cannot be both")
                && e[0].to_string().contains("ServiceEntry default/db-http"),
            "{e:?}"
        );
    }

    #[test]
    fn a_grpc_custom_policy_on_a_tcp_port_gets_the_provider_cluster() {
        let yaml = MESH.to_string()
            + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: m, namespace: default}\nspec: {action: CUSTOM, provider: {name: grpc}, rules: [{}]}\n";
        let res = resources(&yaml);
        let grpc = serde_json::json!({"name": "grpc", "envoyExtAuthzGrpc": {"service": "authz.default.svc.cluster.local", "port": 9000}});
        let mut s = spec("default/db", &res, &[13306], Vec::new());
        s.mesh.extension_providers = vec![grpc];
        let b = build(&s, &res).unwrap_or_else(|e| panic!("{e:?}"));
        let text = b.to_string();
        assert!(text.contains("outbound|9000||authz.default.svc.cluster.local"), "{text}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod mtls_tests {
    use super::*;
    use std::path::Path;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").expect("yaml") }
    }

    fn pa(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    const SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 8000, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: httpbin}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-v1, namespace: default}\nspec: {address: 127.0.0.1, ports: {http: 19090}, labels: {app: httpbin, version: v1}, serviceAccount: httpbin}\n";

    fn build_for(workload: &str, yaml: &str, certs_dir: Option<&Path>) -> Result<Value, Vec<Error>> {
        build_for_with(workload, yaml, certs_dir, Slots::AsNeeded)
    }

    /// [`build_for`] with the filter slots of a static bootstrap (`AsNeeded`) or of `serve` (`All`).
    fn build_for_with(workload: &str, yaml: &str, certs_dir: Option<&Path>, slots: Slots) -> Result<Value, Vec<Error>> {
        let res = resources(yaml);
        let (wl, we) = workload_from_entry(&res, workload).map_err(|e| vec![e])?;
        let inbound = we.ports.values().map(|p| Inbound { port: *p as u16, app_port: 1 }).collect();
        let spec = ProxySpec {
            workload: wl.clone(),
            inbound,
            outbound_port: Some(15001),
            tcp_outbound: Vec::new(),
            gateway_ports: Vec::new(),
            admin_port: 15000,
            wasm_dir: PathBuf::from("/wasm"),
            mesh: MeshConfig::default(),
            certs_dir: certs_dir.map(Path::to_path_buf),
            envoy_access_log: None,
            credentials_dir: None,
        };
        build_with(&spec, &res, slots, Layout::default())
    }

    const SLEEP: &str = "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: sleep, namespace: default}\nspec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}\n";

    /// A fresh `wasmeshctl certs` directory (named after `tag`) holding the mesh root and a
    /// certificate for each `default/<service account>` in `service_accounts`.
    fn default_ns_certs(tag: &str, service_accounts: &[&str]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmesh-bootstrap-{tag}-{}", std::process::id()));
        let ids: Vec<_> = service_accounts
            .iter()
            .map(|sa| crate::certs::WorkloadIdentity::new("cluster.local", "default", sa))
            .collect();
        crate::certs::run(&dir, &ids, &crate::certs::CaOptions::default()).expect("certs");
        dir
    }

    #[test]
    fn the_bootstrap_is_secured_as_peer_authentication_and_auto_mtls_say() {
        let dir = default_ns_certs("mtls", &["sleep", "httpbin"]);
        let yaml = SERVICE.to_string() + SLEEP + &pa("istio-system", "default", "{mtls: {mode: STRICT}}");

        // The server sidecar: its inbound listeners are STRICT.
        let server = build_for("default/httpbin-v1", &yaml, Some(&dir)).expect("server");
        let listeners = server["static_resources"]["listeners"].as_array().expect("listeners");
        let inbound = listeners.iter().find(|l| l["name"] == "inbound_19090").expect("inbound listener");
        assert_eq!(inbound["filter_chains"].as_array().map(Vec::len), Some(1));
        let tls = &inbound["filter_chains"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], json!(true));
        let hcm =
            &inbound["filter_chains"][0]["filters"].as_array().expect("filters").last().expect("hcm")["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], json!("APPEND_FORWARD"));
        // The outbound listener is not touched.
        let outbound = listeners.iter().find(|l| l["name"] == "outbound_15001").expect("outbound listener");
        assert!(outbound["filter_chains"][0].get("transport_socket").is_none());

        // The client: its cluster to httpbin speaks ISTIO_MUTUAL as the sleep identity.
        let client = build_for("default/sleep", &yaml, Some(&dir)).expect("client");
        let clusters = client["static_resources"]["clusters"].as_array().expect("clusters");
        let c =
            clusters.iter().find(|c| c["name"] == "outbound|8000||httpbin.default.svc.cluster.local").expect("cluster");
        let ctx = &c["transport_socket"]["typed_config"];
        assert_eq!(ctx["sni"], json!("outbound_.8000_._.httpbin.default.svc.cluster.local"));
        assert!(ctx["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("default/sleep/cert-chain.pem")));

        // STRICT without certificates cannot be generated; PERMISSIVE can (plaintext).
        let e = build_for("default/httpbin-v1", &yaml, None).expect_err("strict without certs");
        assert!(e[0].message.contains("is STRICT"), "{e:?}");
        assert!(build_for("default/httpbin-v1", SERVICE, None).is_ok());
        // A DestinationRule asking for ISTIO_MUTUAL (or SIMPLE) is checked without certificates too.
        let dr = |mode: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: default}}\nspec: {{host: httpbin, trafficPolicy: {{tls: {{mode: {mode}}}}}}}\n")
        };
        let e = build_for("default/sleep", &(SERVICE.to_string() + SLEEP + &dr("ISTIO_MUTUAL")), None)
            .expect_err("istio mutual without certs");
        assert!(e[0].to_string().contains("ISTIO_MUTUAL to httpbin.default.svc.cluster.local needs"), "{e:?}");
        assert!(build_for("default/sleep", &(SERVICE.to_string() + SLEEP + &dr("DISABLE")), None).is_ok());
        // Certificates missing for this workload: a clear error.
        let e = build_for(
            "default/httpbin-v1",
            &SERVICE.replace("serviceAccount: httpbin}", "serviceAccount: nobody}"),
            Some(&dir),
        )
        .expect_err("missing certs");
        assert!(
            e[0].message.contains("spiffe://cluster.local/ns/default/sa/nobody")
                && e[0].message.contains("wasmeshctl certs"),
            "{e:?}"
        );

        // Endpoints without a sidecar: Istio's transport_socket_matches, the others marked.
        let mixed = SERVICE.to_string()
            + SLEEP
            + "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-legacy, namespace: default}\nspec: {address: 127.0.0.2, ports: {http: 19091}, labels: {app: httpbin, security.istio.io/tlsMode: disabled}}\n";
        let client = build_for("default/sleep", &mixed, Some(&dir)).expect("client");
        let clusters = client["static_resources"]["clusters"].as_array().expect("clusters");
        let c =
            clusters.iter().find(|c| c["name"] == "outbound|8000||httpbin.default.svc.cluster.local").expect("cluster");
        assert!(c.get("transport_socket").is_none());
        assert_eq!(c["transport_socket_matches"][0]["match"], json!({"tlsMode": "istio"}));
        assert_eq!(
            c["transport_socket_matches"][1]["transport_socket"]["name"],
            json!("envoy.transport_sockets.raw_buffer")
        );
        let lbs = &c["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(lbs[0]["endpoint"]["address"]["socket_address"]["address"], json!("127.0.0.1"));
        assert_eq!(lbs[0]["metadata"]["filter_metadata"]["envoy.transport_socket_match"], json!({"tlsMode": "istio"}));
        assert!(lbs[1].get("metadata").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The static bootstrap writes each sidecar inbound listener's chains from the workload's
    /// PeerAuthentication, so its authz filters (HTTP chain phase and TCP) are told not to check it
    /// again; never the gateway's or an outbound listener's, and not under xDS.
    #[test]
    fn inbound_authz_leaves_peer_authentication_to_the_listener_chains() {
        let dir = default_ns_certs("pa-transport", &["httpbin"]);
        let deny = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: default}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n";
        let yaml = SERVICE.to_string() + deny + &pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        let flagged = |boot: &Value, name: &str| -> bool {
            let listeners = boot["static_resources"]["listeners"].as_array().expect("listeners");
            let l = listeners.iter().find(|l| l["name"] == name).expect("listener");
            l.to_string().contains("peerAuthenticationByTransport\\\":true")
        };
        let server = build_for("default/httpbin-v1", &yaml, Some(&dir)).expect("server");
        assert!(flagged(&server, "inbound_19090"));
        assert!(server.to_string().contains("wasmesh.authz"), "the DENY policy installs authz");
        assert!(!flagged(&server, "outbound_15001"));
        // Under xDS the filter keeps checking.
        let live = build_for_with("default/httpbin-v1", &yaml, Some(&dir), Slots::All).expect("xds");
        assert!(
            live.to_string().contains("wasmesh.authz") && !live.to_string().contains("peerAuthenticationByTransport")
        );
    }

    /// With certificates the HTTP stats filters are told our certificate's URI SAN, read from the
    /// file Envoy is pointed at (`localPrincipal`): inbound always, the client side only where no
    /// DestinationRule originates TLS with files of its own; without certificates, never.
    #[test]
    fn stats_filters_know_our_certificate_where_every_tls_context_presents_it() {
        let dir = default_ns_certs("local-san", &["sleep", "httpbin"]);
        // `localPrincipal` of every HTTP stats configuration (filter or chain phase) of a listener.
        fn principals(boot: &Value, listener_name: &str) -> Vec<Value> {
            let listeners = boot["static_resources"]["listeners"].as_array().expect("listeners");
            let l = listeners.iter().find(|l| l["name"] == listener_name).expect("listener");
            super::tcp_tests::http_stats_configs(l).iter().map(|c| c["localPrincipal"].clone()).collect()
        }
        let httpbin = json!("spiffe://cluster.local/ns/default/sa/httpbin");
        let server = build_for("default/httpbin-v1", SERVICE, Some(&dir)).expect("server");
        let inbound = principals(&server, "inbound_19090");
        assert!(!inbound.is_empty() && inbound.iter().all(|p| *p == httpbin), "{inbound:?}");
        let outbound = principals(&server, "outbound_15001");
        assert!(!outbound.is_empty() && outbound.iter().all(|p| *p == httpbin), "{outbound:?}");
        // The value is the file's, as Envoy reports it.
        let file = CertPaths::for_workload(&dir, "default", "httpbin").cert_chain;
        assert_eq!(crate::certs::first_uri_san(&file).map(Value::String), Some(httpbin.clone()));

        // A DestinationRule originating TLS (here MUTUAL with its own files): the client side reads it.
        let mutual = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext, namespace: default}\nspec: {host: httpbin, trafficPolicy: {portLevelSettings: [{port: {number: 8000}, tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}}]}}\n";
        let server = build_for("default/httpbin-v1", &(SERVICE.to_string() + mutual), Some(&dir)).expect("server");
        assert!(principals(&server, "inbound_19090").iter().all(|p| *p == httpbin));
        let outbound = principals(&server, "outbound_15001");
        assert!(!outbound.is_empty() && outbound.iter().all(Value::is_null), "{outbound:?}");

        // No certificates: nothing to know.
        let plain = build_for("default/httpbin-v1", SERVICE, None).expect("plain");
        assert!(principals(&plain, "inbound_19090").iter().all(Value::is_null));
    }
}
