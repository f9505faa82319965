//! The stats filter (`wasmesh.stats`): Istio's standard metrics and peer metadata exchange on
//! every sidecar inbound, sidecar outbound and gateway listener, plus the bootstrap tag
//! extraction that turns the wasm metric names into Prometheus labels.
//!
//! The filter receives the Telemetry resources and compiles the ones that apply to this proxy
//! (root namespace, namespace, workload selector); inbound, it also gets the services the
//! workload backs (ServiceEntries in its namespace whose `workloadSelector` selects it), which
//! Istio reads from the inbound cluster's metadata for `destination_service`.

use super::{resources_json, Contribution, Direction, ListenerContext, WasmFilter};
use serde_json::{json, Value};
use wasmesh_istio::{Error, Kind, ProxyMode, Resources, Workload};
use wasmesh_stats::{Direction as StatsDirection, ListenerProtocol, ServiceInfo, StatsConfig};

/// The filter's core, for tools that need its encodings (e.g. a peer's exchange header).
pub use wasmesh_stats as core;

pub const FILTER_NAME: &str = "wasmesh.stats";
pub const TCP_FILTER_NAME: &str = "wasmesh.stats.tcp";

/// The HTTP stats filter for one listener, and the stats tags.
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let config = config(ctx, ListenerProtocol::Http)?;
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: true }],
        stats_tags: stats_tags(ctx.resources),
        ..Contribution::default()
    })
}

/// The TCP stats network filter, for listeners that proxy TCP (`tcp_proxy`). Istio puts it
/// only on TCP filter chains, so HTTP listeners do not get it from [`contribute`].
///
/// This one never exchanges metadata: use it on plaintext chains, on inbound mTLS chains that
/// did not match [`exchange_filter_chain_match`], and on outbound listeners whose upstream TLS
/// does not offer [`CLIENT_TCP_ALPN`]. Elsewhere use [`tcp_filter_with_exchange`].
pub fn tcp_filter(ctx: &ListenerContext<'_>) -> Result<WasmFilter, Vec<Error>> {
    tcp_filter_for(ctx, false)
}

/// The TCP stats filter with Istio's TCP metadata exchange (`peerExchange`), so that
/// `source_*`/`destination_*` of the `istio_tcp_*` metrics name the peer workload on both
/// sides. The filter cannot see the negotiated ALPN, so the bootstrap must only use it where
/// both ends run the exchange:
/// - inbound (server): on the filter chain matched by [`exchange_filter_chain_match`] (needs the
///   `tls_inspector` listener filter), whose `DownstreamTlsContext` advertises
///   [`SERVER_TCP_ALPN`] and requires a client certificate. The chain is the whole gate: the
///   filter exchanges on every connection of it;
/// - outbound (client): on a TCP listener whose cluster's `UpstreamTlsContext` offers
///   [`CLIENT_TCP_ALPN`], and only towards endpoints that are sidecars (Istio's
///   `tlsMode: istio` transport socket match); plaintext endpoints of the same cluster never
///   exchange (the filter checks for an upstream peer certificate).
pub fn tcp_filter_with_exchange(ctx: &ListenerContext<'_>) -> Result<WasmFilter, Vec<Error>> {
    tcp_filter_for(ctx, true)
}

fn tcp_filter_for(ctx: &ListenerContext<'_>, peer_exchange: bool) -> Result<WasmFilter, Vec<Error>> {
    let mut config = config(ctx, ListenerProtocol::Tcp)?;
    if peer_exchange {
        config["peerExchange"] = json!(true);
        StatsConfig::compile_json(config.to_string().as_bytes()).map_err(|e| e.0)?;
    }
    Ok(WasmFilter { name: TCP_FILTER_NAME.into(), config, fail_open: true })
}

/// The ALPN of Istio's TCP metadata exchange.
pub const PEER_EXCHANGE_ALPN: &str = wasmesh_stats::exchange::ALPN;
/// `alpn_protocols` of a client sidecar's `UpstreamTlsContext` on TCP clusters to mesh
/// sidecars (Istio `ALPNInMeshWithMxc`).
pub const CLIENT_TCP_ALPN: [&str; 2] = [PEER_EXCHANGE_ALPN, "istio"];
/// `alpn_protocols` of the server's `DownstreamTlsContext` on the exchange filter chain (Istio
/// `ALPNDownstreamWithMxc`), so an Istio client, which checks the negotiated ALPN, exchanges too.
pub const SERVER_TCP_ALPN: [&str; 3] = [PEER_EXCHANGE_ALPN, "h2", "http/1.1"];

/// `filter_chain_match` of the inbound chain that runs [`tcp_filter_with_exchange`]: TLS whose
/// ClientHello offers `istio-peer-exchange` (read by the `tls_inspector`). Istio also matches
/// `istio` here because its filter checks the negotiated ALPN per connection; a wasm filter
/// cannot, so only clients that offered the exchange get this chain, and a client offering only
/// `istio` gets the ordinary mTLS chain (Envoy prefers the chain whose application protocols
/// match over one that lists none).
pub fn exchange_filter_chain_match() -> Value {
    json!({"transport_protocol": "tls", "application_protocols": [PEER_EXCHANGE_ALPN]})
}

/// Envoy's `grpc_stats` HTTP filter as istiod writes it into every HTTP filter chain, after the
/// WasmPlugins and before the fault and CORS filters (istio/istio `pilot/pkg/xds/filters`,
/// `GrpcStats`; `pilot/pkg/networking/core/listener_builder.go`): it counts the request and
/// response messages of each gRPC stream and leaves the counts in filter state
/// (`emit_filter_state`), where the stats filter reads them at log time as Istio's does
/// (`wasmesh_stats::grpc`); no per-method stats.
pub fn grpc_stats_filter() -> Value {
    json!({
        "name": "envoy.filters.http.grpc_stats",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
            "emit_filter_state": true,
            "stats_for_all_methods": false,
        }
    })
}

/// `stats_config.stats_tags` entries: one regex per standard label and per custom tag.
pub fn stats_tags(resources: &Resources) -> Vec<Value> {
    wasmesh_stats::stats_tags(resources)
        .into_iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect()
}

/// The filter configuration JSON, checked by compiling it as the filter will.
pub fn config(ctx: &ListenerContext<'_>, protocol: ListenerProtocol) -> Result<Value, Vec<Error>> {
    let mut workload = ctx.workload.clone();
    let direction = match ctx.direction {
        Direction::Inbound => StatsDirection::Inbound,
        Direction::Outbound => StatsDirection::Outbound,
        Direction::Gateway { .. } => StatsDirection::Gateway,
    };
    workload.mode = if direction == StatsDirection::Gateway { ProxyMode::Gateway } else { ProxyMode::Sidecar };
    let telemetries: Vec<_> = ctx.resources.of_kind(Kind::Telemetry).cloned().collect();
    let services =
        if direction == StatsDirection::Inbound { workload_services(ctx.resources, &workload) } else { Vec::new() };
    let external_hosts =
        if direction == StatsDirection::Inbound { Vec::new() } else { external_hosts(ctx.resources, &workload) };
    let cfg = StatsConfig {
        workload: Some(workload),
        mesh: None,
        direction: Some(direction),
        protocol,
        resources: resources_json(telemetries.iter()),
        services,
        max_label_sets: wasmesh_stats::DEFAULT_MAX_LABEL_SETS,
        metadata_exchange: true,
        external_hosts,
        peer_exchange: false,
        // No filter reads the peer from filter state yet (the access-log filter will).
        publish_peer: false,
        // Set by the bootstrap where it writes the inbound route that removes them.
        exchange_headers_removed: false,
        // Set by the bootstrap, whose clusters carry no such metadata.
        no_endpoint_metadata: false,
        cluster_header: None,
        // Set by the bootstrap where it writes the client-side route that adds them.
        exchange_headers_added: false,
        // Set by the bootstrap, which knows the certificate files.
        local_principal: None,
    };
    cfg.compile(&Resources { items: telemetries }).map_err(|e| e.0)?;
    serde_json::to_value(&cfg).map_err(|e| vec![Error::new(format!("stats config: {e}"))])
}

/// The stats configurations of `f`: its own when it is a stats filter named in `names`, or those
/// of its HTTP stats phases when it is a `wasmesh.chain`.
fn stats_configs<'a>(f: &'a mut WasmFilter, names: &[&str]) -> Vec<&'a mut Value> {
    if names.contains(&f.name.as_str()) {
        vec![&mut f.config]
    } else if f.name == crate::layout::CHAIN_ROOT_ID {
        let phases =
            f.config.get_mut("phases").and_then(Value::as_array_mut).map(Vec::as_mut_slice).unwrap_or_default();
        phases
            .iter_mut()
            .filter(|p| p.get("rootId").and_then(Value::as_str) == Some(FILTER_NAME))
            .filter_map(|p| p.get_mut("configuration"))
            .collect()
    } else {
        Vec::new()
    }
}

/// Tells the inbound stats filters of a listener (`filters` as laid out: the filter itself or
/// its phases of a `wasmesh.chain`) that Envoy removes the request's exchange headers
/// (`exchangeHeadersRemoved`). Only for a listener whose route configuration the caller writes
/// with `request_headers_to_remove` naming both headers (the bootstrap's inbound route): under
/// Istio (`generate`) or anywhere else the filter removes them itself.
pub fn exchange_headers_removed_by_route(filters: &mut [WasmFilter]) {
    let inbound_http = |c: &Value| c.get("direction").and_then(Value::as_str) == Some("inbound") && is_http(c);
    set_where(filters, &[FILTER_NAME], inbound_http, "exchangeHeadersRemoved", Value::Bool(true));
}

/// Sets `key` to `value` in every stats configuration among `filters` (of the root ids `roots`,
/// alone or as phases of a `wasmesh.chain`) that `wanted` selects.
fn set_where(filters: &mut [WasmFilter], roots: &[&str], wanted: impl Fn(&Value) -> bool, key: &str, value: Value) {
    for f in filters {
        for c in stats_configs(f, roots) {
            if let (true, Some(o)) = (wanted(c), c.as_object_mut()) {
                o.insert(key.into(), value.clone());
            }
        }
    }
}

/// An outbound or gateway stats configuration.
fn is_client_side(c: &Value) -> bool {
    matches!(c.get("direction").and_then(Value::as_str), Some("outbound" | "gateway"))
}

/// An HTTP stats configuration (the default protocol).
fn is_http(c: &Value) -> bool {
    c.get("protocol").and_then(Value::as_str).is_none_or(|p| p == "http")
}

/// The route configuration's `request_headers_to_add` with which Envoy sends this listener's
/// exchange headers instead of its outbound or gateway stats filters, which are told so
/// (`exchangeHeadersAdded`): both headers with exactly the values the filter writes
/// ([`exchange_header_values`]), `OVERWRITE_IF_EXISTS_OR_ADD` as the filter replaces what the
/// client sent. Only for a listener whose route configuration the caller writes and keeps for
/// the proxy's life (the static bootstrap's outbound and gateway routes: under Istio istiod
/// writes them, and under `serve` a ServiceEntry added later could make a host external while
/// Envoy's route stays). Empty, with every filter left to write them itself, unless the
/// route's "every request" is exactly the filter's set:
/// - every HTTP stats configuration of the listener is outbound or gateway, exchanges metadata
///   and knows no `MESH_EXTERNAL` host (with one, the filter skips requests whose authority
///   names it; Envoy's domain matching differs from that match (trailing dot, wildcard without
///   a dot, ports) and it would see the authority after the router may rewrite it, so this keeps
///   the filter's writes rather than approximate them with virtual hosts);
/// - no resource names an exchange header (e.g. a VirtualService header operation, which the wasm
///   router applies after the stats phase wrote them while Envoy's route would apply after the
///   router, or an AuthorizationPolicy condition, which the later phases would no longer see
///   holding our values) and no AuthorizationPolicy is `CUSTOM` (an external authorizer is sent
///   the request's headers, ours among them as the phase wrote them first);
/// - the values can be written as Envoy header values (`%` escaped as `%%`).
pub fn exchange_headers_added_by_route(filters: &mut [WasmFilter], resources: &Resources) -> Vec<Value> {
    let read_by_a_later_filter = resources.items.iter().any(|r| {
        let text = serde_json::to_string(r).unwrap_or_default().to_ascii_lowercase();
        text.contains(wasmesh_stats::peer::HEADER_METADATA)
            || (r.kind() == Kind::AuthorizationPolicy && text.contains("\"custom\""))
    });
    if read_by_a_later_filter {
        return Vec::new();
    }
    let mut values: Option<(String, String)> = None;
    let mut configs = Vec::new();
    for f in filters.iter_mut() {
        for c in stats_configs(f, &[FILTER_NAME]) {
            let Some(v) = exchange_header_values(c) else { return Vec::new() };
            if values.as_ref().is_some_and(|seen| *seen != v) {
                return Vec::new();
            }
            values = Some(v);
            configs.push(c);
        }
    }
    let Some((metadata, id)) = values else { return Vec::new() };
    for c in configs {
        if let Some(o) = c.as_object_mut() {
            o.insert("exchangeHeadersAdded".into(), Value::Bool(true));
        }
    }
    let header = |key: &str, value: &str| {
        json!({
            "header": {"key": key, "value": value.replace('%', "%%")},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        })
    };
    vec![header(wasmesh_stats::peer::HEADER_METADATA, &metadata), header(wasmesh_stats::peer::HEADER_METADATA_ID, &id)]
}

/// The `x-envoy-peer-metadata` and `x-envoy-peer-metadata-id` values the stats filter with
/// configuration `config` writes on every upstream request (`Stats::header_value` and the node
/// id of [`core::LocalInfo`], from the configuration's workload as the filter compiles it), or
/// `None` where it does not write them on every request or Envoy could not write the same:
/// not an outbound or gateway HTTP filter, `metadataExchange` off, `externalHosts` set, a
/// configuration the filter would refuse, an empty value or one with a line break or NUL.
pub fn exchange_header_values(config: &Value) -> Option<(String, String)> {
    let mut cfg = config.clone();
    // What the filter would compile with the flag set, so that a configuration the flag would
    // make it refuse is not used either.
    cfg.as_object_mut()?.insert("exchangeHeadersAdded".into(), Value::Bool(true));
    let stats = StatsConfig::compile_json(cfg.to_string().as_bytes()).ok()?;
    let ok = |v: &str| !v.is_empty() && !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
    let client_side = matches!(stats.direction, StatsDirection::Outbound | StatsDirection::Gateway);
    (client_side && ok(&stats.header_value) && ok(&stats.local.node_id))
        .then(|| (stats.header_value.clone(), stats.local.node_id.clone()))
}

/// Tells the outbound and gateway stats filters among `filters` (HTTP or TCP, alone or as phases of
/// a `wasmesh.chain`) that no upstream endpoint carries Istio's workload metadata
/// (`noEndpointMetadata`), so they do not read that fallback on every request whose upstream
/// answered without exchange headers. Only for filters on listeners whose clusters the caller
/// writes without it (the bootstrap's: `filter_metadata.istio.workload` is never written); under
/// Istio (`generate`) istiod writes it on every mesh endpoint and the filter reads it.
pub fn endpoint_metadata_not_written(filters: &mut [WasmFilter]) {
    set_where(filters, &[FILTER_NAME, TCP_FILTER_NAME], is_client_side, "noEndpointMetadata", Value::Bool(true));
}

/// Tells the outbound and gateway HTTP stats filters among `filters` (alone or as phases of a
/// `wasmesh.chain`) that every route of their listener takes the cluster from request header
/// `header` (`clusterHeader`), so a stats phase after the router phase in the same chain takes the
/// destination cluster from the router's value instead of reading `xds.cluster_name`. Only for a
/// listener whose route configuration the caller writes and checked so (the bootstrap's).
pub fn cluster_from_header(filters: &mut [WasmFilter], header: &str) {
    let client_http = |c: &Value| is_client_side(c) && is_http(c);
    set_where(filters, &[FILTER_NAME], client_http, "clusterHeader", Value::String(header.to_string()));
}

/// Tells the HTTP stats filters among `filters` (alone or as phases of a `wasmesh.chain`) our own
/// certificate's first URI SAN (`localPrincipal`), so they do not read it from Envoy on every
/// request whose peer presented a certificate. Only for a caller that points every TLS context
/// of that side at the one certificate file it read `principal` from: inbound filters always
/// (the bootstrap's inbound listeners serve the workload's certificate and nothing else), client
/// side (outbound, gateway) filters only with `client_side` (no DestinationRule originates TLS
/// with certificates of its own, and the configuration is not followed live).
pub fn local_principal_known(filters: &mut [WasmFilter], principal: &str, client_side: bool) {
    let wanted = |c: &Value| is_http(c) && (client_side || !is_client_side(c));
    set_where(filters, &[FILTER_NAME], wanted, "localPrincipal", Value::String(principal.to_string()));
}

/// ServiceEntries of the workload's namespace whose `workloadSelector` selects it, one entry per
/// host, in file order.
pub fn workload_services(resources: &Resources, workload: &Workload) -> Vec<ServiceInfo> {
    let mut out = Vec::new();
    for (res, se) in resources.service_entries_selecting(workload) {
        for host in &se.hosts {
            let fq = workload.fqdn(host, res.namespace());
            out.push(ServiceInfo {
                name: fq.split('.').next().unwrap_or(&fq).to_string(),
                namespace: res.namespace().to_string(),
                host: fq,
            });
        }
    }
    out
}

/// Hosts of `MESH_EXTERNAL` ServiceEntries: no metadata exchange with them (Istio's
/// `skip_external_clusters`), so a workload's identity and labels do not leave the mesh.
pub fn external_hosts(resources: &Resources, workload: &Workload) -> Vec<String> {
    let mut out: Vec<String> = resources
        .service_entries()
        .filter(|(_, se)| se.location.as_deref() == Some("MESH_EXTERNAL"))
        .flat_map(|(res, se)| se.hosts.iter().map(move |h| workload.fqdn(h, res.namespace())))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Problems in any Telemetry's `metrics` section, for `wasmeshctl validate`.
pub fn validate(resources: &Resources) -> Vec<Error> {
    wasmesh_stats::validate(resources)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::mesh::MeshConfig;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - overrides:
    - tagOverrides:
        request_host: {value: request.host}
"#;

    fn reviews() -> Workload {
        let mut w = Workload::new("reviews-v2", "default");
        w.labels.insert("app".into(), "reviews".into());
        w.labels.insert("version".into(), "v2".into());
        w
    }

    #[test]
    fn inbound_outbound_and_gateway_configs() {
        let res = resources(MESH);
        let mesh = MeshConfig::default();
        let wl = reviews();
        let ctx =
            |direction| ListenerContext { workload: &wl, resources: &res, direction, bind_port: 19083, mesh: &mesh };

        let c = contribute(&ctx(Direction::Inbound)).unwrap();
        assert_eq!(c.http_filters.len(), 1);
        let f = &c.http_filters[0];
        assert_eq!((f.name.as_str(), f.fail_open), ("wasmesh.stats", true));
        assert_eq!(f.config["direction"], "inbound");
        assert_eq!(f.config["services"][0]["host"], "reviews.default.svc.cluster.local");
        assert_eq!(f.config["services"].as_array().map(Vec::len), Some(1));
        assert_eq!(f.config["resources"].as_array().map(Vec::len), Some(1), "only Telemetry resources");
        // The filter accepts exactly what the plugin writes.
        StatsConfig::compile_json(f.config.to_string().as_bytes()).unwrap();
        let tags: Vec<&str> = c.stats_tags.iter().filter_map(|t| t["tag_name"].as_str()).collect();
        assert_eq!(tags.len(), 28, "{tags:?}");
        assert!(tags.contains(&"request_host"));
        assert_eq!(c.stats_tags[0]["regex"], r"(?:\.|;\.;)(reporter=\.=(.*?);\.;)");

        let c = contribute(&ctx(Direction::Outbound)).unwrap();
        assert_eq!(c.http_filters[0].config["direction"], "outbound");
        assert!(c.http_filters[0].config.get("services").is_none());

        let c = contribute(&ctx(Direction::Gateway { port: 80 })).unwrap();
        assert_eq!(c.http_filters[0].config["direction"], "gateway");
        assert_eq!(c.http_filters[0].config["workload"]["mode"], "gateway");
        assert!(c.network_filters.is_empty(), "HTTP listeners get no TCP metrics, as in Istio");

        let t = tcp_filter(&ctx(Direction::Inbound)).unwrap();
        assert_eq!(t.config["protocol"], "tcp");
        assert_eq!(t.name, "wasmesh.stats.tcp");
        assert!(t.config.get("peerExchange").is_none(), "no exchange unless the chain is gated on the ALPN");
        for d in [Direction::Inbound, Direction::Outbound, Direction::Gateway { port: 80 }] {
            let x = tcp_filter_with_exchange(&ctx(d)).unwrap();
            assert_eq!(x.config["peerExchange"], true);
            assert!(StatsConfig::compile_json(x.config.to_string().as_bytes()).unwrap().peer_exchange);
        }
        assert_eq!(exchange_filter_chain_match()["application_protocols"], json!(["istio-peer-exchange"]));
        assert_eq!(CLIENT_TCP_ALPN[0], "istio-peer-exchange");
    }

    #[test]
    fn bad_telemetry_fails_the_bootstrap_with_a_clear_error() {
        let res = resources(
            r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: default}
spec:
  metrics:
  - overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        x: {value: "request.headers['a'] + 'b'"}
"#,
        );
        let mesh = MeshConfig::default();
        let wl = reviews();
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: 1,
            mesh: &mesh,
        };
        let errs = contribute(&ctx).unwrap_err();
        assert!(
            errs[0].to_string().contains("Telemetry default/bad: spec.metrics[0].overrides[0].tagOverrides.x.value"),
            "{}",
            errs[0]
        );
        assert_eq!(validate(&res).len(), 1);
    }

    #[test]
    fn external_hosts_of_the_mesh() {
        let res = resources(
            r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [httpbin.org, "*.googleapis.com"]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http}]
  resolution: DNS
"#,
        );
        let mut all = resources(MESH);
        all.items.extend(res.items);
        let mesh = MeshConfig::default();
        let wl = reviews();
        assert_eq!(external_hosts(&all, &wl), vec!["*.googleapis.com", "httpbin.org"]);
        let ctx = |direction| ListenerContext { workload: &wl, resources: &all, direction, bind_port: 1, mesh: &mesh };
        let out = contribute(&ctx(Direction::Outbound)).unwrap();
        assert_eq!(out.http_filters[0].config["externalHosts"][1], "httpbin.org");
        let inb = contribute(&ctx(Direction::Inbound)).unwrap();
        assert!(inb.http_filters[0].config.get("externalHosts").is_none());
    }

    /// A gateway's route gets the values the gateway's stats filter writes (`router~` node id,
    /// the gateway's labels), whichever layout holds the filter; an inbound filter never.
    #[test]
    fn gateway_exchange_headers_are_the_filters_values() {
        let res = resources(MESH);
        let mesh = MeshConfig::default();
        let mut wl = Workload::new("istio-ingressgateway", "istio-system");
        wl.labels.insert("istio".into(), "ingressgateway".into());
        let ctx = |direction| ListenerContext { workload: &wl, resources: &res, direction, bind_port: 1, mesh: &mesh };
        let mut gw = wl.clone();
        gw.mode = ProxyMode::Gateway;
        let local = core::LocalInfo::from_workload(&gw);
        assert!(local.node_id.starts_with("router~127.0.0.1~istio-ingressgateway.istio-system~"), "{}", local.node_id);
        for layout in [crate::layout::Layout::OnePass, crate::layout::Layout::PerFilter] {
            let mut filters = layout.assemble(contribute(&ctx(Direction::Gateway { port: 80 })).unwrap().http_filters);
            let add = exchange_headers_added_by_route(&mut filters, &res);
            assert_eq!(add[0]["header"]["value"], local.header_value().as_str(), "{layout:?}");
            assert_eq!(add[1]["header"]["value"], local.node_id.as_str());
            let flagged: Vec<_> = filters.iter_mut().flat_map(|f| stats_configs(f, &[FILTER_NAME])).collect();
            assert_eq!(flagged.len(), 1);
            assert_eq!(flagged[0]["exchangeHeadersAdded"], true, "{layout:?}");
        }
        let mut inbound = contribute(&ctx(Direction::Inbound)).unwrap().http_filters;
        assert!(exchange_headers_added_by_route(&mut inbound, &res).is_empty());
        assert!(inbound[0].config.get("exchangeHeadersAdded").is_none());
        // No stats filter on the listener: nothing to replace, nothing added.
        assert!(exchange_headers_added_by_route(&mut [], &res).is_empty());
    }

    #[test]
    fn services_of_a_workload() {
        let res = resources(MESH);
        let mut ratings = Workload::new("ratings-v1", "default");
        ratings.labels.insert("app".into(), "ratings".into());
        let s = workload_services(&res, &ratings);
        assert_eq!(
            s,
            vec![ServiceInfo {
                host: "ratings.default.svc.cluster.local".into(),
                name: "ratings".into(),
                namespace: "default".into()
            }]
        );
        let other = Workload::new("x", "other");
        assert!(workload_services(&res, &other).is_empty());
    }
}
