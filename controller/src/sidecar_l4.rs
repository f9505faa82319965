//! A sidecar's outbound TCP and TLS listeners (`wasmeshctl envoy --tcp-outbound`), as istiod
//! writes its outbound TCP/TLS filter chains (`buildSidecarOutboundTCPFilterChainOpts`,
//! `buildSidecarOutboundTLSFilterChainOpts`, `appendListenerFallthroughRouteForCompleteListener`).
//!
//! - `BIND=HOST:PORT`, a TCP port: `tcp_proxy` to the first VirtualService `tcp` route (of a
//!   VirtualService bound to `mesh` whose `hosts` cover HOST) whose match fits (`port`,
//!   `gateways: [mesh]`, `sourceLabels`, `sourceNamespace`, decided when the configuration is
//!   written, as istiod does), several weighted destinations as Envoy's `weighted_clusters`
//!   (Istio's "TCP Traffic Shifting" from the sidecar); no route: the service's cluster.
//! - `BIND=HOST:PORT`, a TLS or HTTPS port: one filter chain per `tls` route whose `sniHosts`
//!   fit, chosen by SNI (`tls_inspector`), the TLS passed through; no `tls` route: one chain to
//!   the service's cluster.
//! - `BIND=*:PORT`: the sidecar's `0.0.0.0:PORT` listener for TLS: every ServiceEntry host with a
//!   TLS or HTTPS port PORT gets a chain matched on its name as SNI (istiod does this for services
//!   without a VIP, e.g. external hosts; the `tls` routes for the host instead where it has any),
//!   so `curl https://edition.cnn.com` from the app reaches the host the ServiceEntry names (the
//!   HTTPS part of "Accessing External Services").
//!
//! Every listener with SNI chains ends, as istiod's, with a fallthrough chain chosen by
//! `outboundTrafficPolicy`: `REGISTRY_ONLY` → `tcp_proxy` to `BlackHoleCluster` (no endpoints: the
//! connection is closed during the TLS handshake), `ALLOW_ANY` → `PassthroughCluster`. istiod's
//! passthrough reaches the original destination address (iptables capture); wasmesh's loopback
//! listener has none, so Envoy's SNI dynamic forward proxy resolves the client's SNI name and
//! connects to it on PORT. Without `outboundTrafficPolicy` (wasmesh's opt-in, see `egress.rs`) an
//! unknown SNI name has no chain: the connection is closed.
//!
//! Refused: `destinationSubnets` (istiod matches the original destination address, which a
//! loopback listener does not have), wildcard ServiceEntry hosts on a `*` listener (their
//! clusters need the original destination too).

use crate::bootstrap::TcpOutbound;
use crate::gateway::{self, Binding, SniRoute, TcpRoute, L4};
use serde_json::{json, Value};
use wasmesh_istio::networking::ServicePort;
use wasmesh_istio::{Error, PortProtocol, Resources, Workload};
use wasmesh_router::OutboundMode;

/// The chain a listener ends with.
#[derive(Debug, Clone, PartialEq)]
pub enum Fallthrough {
    /// Every connection no SNI chain took goes to this route.
    Route(TcpRoute),
    /// `ALLOW_ANY` on a TLS listener: to the SNI name, on this port.
    Passthrough(u32),
    /// No fallthrough chain: an unmatched connection is closed.
    None,
}

/// What an outbound TCP/TLS listener of a sidecar does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub sni: Vec<SniRoute>,
    pub fallthrough: Fallthrough,
}

/// TLS or HTTPS (Istio's `IsTLS`): chains by SNI.
fn is_tls(p: &ServicePort) -> bool {
    let proto = if p.protocol.is_empty() {
        p.name.split_once('-').map_or(p.name.as_str(), |(prefix, _)| prefix).to_ascii_uppercase()
    } else {
        p.protocol.to_ascii_uppercase()
    };
    matches!(proto.as_str(), "TLS" | "HTTPS")
}

/// The fallthrough istiod appends for `outboundTrafficPolicy`.
fn policy_fallthrough(mode: Option<OutboundMode>, port: u32) -> Fallthrough {
    match mode {
        Some(OutboundMode::RegistryOnly) => Fallthrough::Route(TcpRoute::Cluster(gateway::BLACK_HOLE.to_string())),
        Some(OutboundMode::AllowAny) => Fallthrough::Passthrough(port),
        None => Fallthrough::None,
    }
}

/// The `tls` routes for `host` on `port`, a name already taken by an earlier chain left out
/// (Envoy refuses two chains with one server name; the first match wins, as istiod's).
fn sni_routes(
    resources: &Resources,
    wl: &Workload,
    host: &str,
    port: u32,
    taken: &mut Vec<String>,
) -> Result<Vec<SniRoute>, Vec<Error>> {
    let mut out = Vec::new();
    for (names, route) in gateway::l4_routes(resources, wl, port, Binding::Mesh { host }, L4::Tls)? {
        let names: Vec<String> = names.into_iter().filter(|n| !taken.contains(n)).collect();
        if names.is_empty() {
            continue;
        }
        taken.extend(names.iter().cloned());
        out.push(SniRoute { server_names: names, route });
    }
    Ok(out)
}

/// The plan of `--tcp-outbound` listener `out`.
pub fn plan(
    resources: &Resources,
    wl: &Workload,
    out: &TcpOutbound,
    mode: Option<OutboundMode>,
) -> Result<Plan, Vec<Error>> {
    let flag = format!("--tcp-outbound {}={}:{}", out.bind_port, out.host, out.port);
    if out.host == "*" {
        let mut taken = Vec::new();
        let mut sni = Vec::new();
        let mut errors = Vec::new();
        for (res, se) in resources.service_entries() {
            let Some((pi, _)) = se.ports.iter().enumerate().find(|(_, p)| p.number == out.port && is_tls(p)) else {
                continue;
            };
            for (hi, h) in se.hosts.iter().enumerate() {
                let fq = wl.fqdn(h, res.namespace());
                if fq.contains('*') {
                    errors.push(Error::at(
                        res,
                        format!("spec.hosts[{hi}]"),
                        format!("{flag}: wildcard host {h:?} on TLS port {} (spec.ports[{pi}]): its cluster needs the original destination address, which wasmesh's loopback listeners do not have; name the hosts", out.port),
                    ));
                    continue;
                }
                match sni_routes(resources, wl, &fq, out.port, &mut taken) {
                    Ok(routes) if !routes.is_empty() => sni.extend(routes),
                    Ok(_) if !taken.contains(&fq) => {
                        taken.push(fq.clone());
                        let cluster = format!("outbound|{}||{fq}", out.port);
                        sni.push(SniRoute { server_names: vec![fq], route: TcpRoute::Cluster(cluster) });
                    }
                    Ok(_) => {}
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let fallthrough = policy_fallthrough(mode, out.port);
        if sni.is_empty() && fallthrough == Fallthrough::None {
            return Err(vec![Error::new(format!(
                "{flag}: no ServiceEntry has a TLS or HTTPS port {} and meshConfig sets no outboundTrafficPolicy: the listener would have no filter chain",
                out.port
            ))]);
        }
        return Ok(Plan { sni, fallthrough });
    }
    let cluster = crate::bootstrap::tcp_outbound_cluster(resources, wl, out).map_err(|e| vec![e])?;
    let fq = wl.fqdn(&out.host, &wl.namespace);
    let tls = resources
        .service_entries()
        .filter(|(r, se)| se.hosts.iter().any(|h| wl.fqdn(h, r.namespace()) == fq))
        .flat_map(|(_, se)| se.ports.iter())
        .any(|p| p.number == out.port && is_tls(p) && p.port_protocol() == PortProtocol::Tcp);
    if tls {
        let sni = sni_routes(resources, wl, &fq, out.port, &mut Vec::new())?;
        if sni.is_empty() {
            return Ok(Plan { sni, fallthrough: Fallthrough::Route(TcpRoute::Cluster(cluster)) });
        }
        return Ok(Plan { sni, fallthrough: policy_fallthrough(mode, out.port) });
    }
    let routes = gateway::l4_routes(resources, wl, out.port, Binding::Mesh { host: &fq }, L4::Tcp)?;
    let route = routes.into_iter().next().map_or(TcpRoute::Cluster(cluster), |(_, r)| r);
    Ok(Plan { sni: Vec::new(), fallthrough: Fallthrough::Route(route) })
}

/// The clusters a plan needs beyond the services' own: `BlackHoleCluster`, `PassthroughCluster`.
pub fn catch_all_clusters(plan: &Plan) -> Vec<Value> {
    match &plan.fallthrough {
        Fallthrough::Route(r) if r.first_cluster() == gateway::BLACK_HOLE => vec![gateway::black_hole_cluster()],
        Fallthrough::Passthrough(_) => crate::egress::catch_all_clusters()
            .into_iter()
            .filter(|c| c.get("name").and_then(Value::as_str) == Some(wasmesh_router::PASSTHROUGH_CLUSTER))
            .collect(),
        _ => Vec::new(),
    }
}

/// The listener on loopback `bind_port`: `chain(cluster)` gives a chain's filters ending in
/// `tcp_proxy` to `cluster` (the wasm network filters first).
pub fn listener(name: &str, bind_port: u16, plan: &Plan, chain: impl Fn(&str) -> Vec<Value>) -> Value {
    let routed = |route: &TcpRoute| {
        let mut filters = chain(route.first_cluster());
        gateway::with_tcp_route(&mut filters, route);
        filters
    };
    let fallthrough = match &plan.fallthrough {
        Fallthrough::Route(route) => Some(json!({"name": "fallthrough", "filters": routed(route)})),
        Fallthrough::Passthrough(port) => {
            let mut filters = chain(wasmesh_router::PASSTHROUGH_CLUSTER);
            let at = filters.len().saturating_sub(1);
            filters.insert(
                at,
                json!({
                    "name": "envoy.filters.network.sni_dynamic_forward_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
                        "dns_cache_config": crate::egress::dns_cache(),
                        "port_value": port,
                    }
                }),
            );
            Some(json!({"name": "PassthroughFilterChain", "filters": filters}))
        }
        Fallthrough::None => None,
    };
    let mut listener = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": bind_port}},
    });
    let inspector = json!([{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
    }]);
    if plan.sni.is_empty() {
        // The SNI dynamic forward proxy reads the name the TLS inspector found.
        if matches!(plan.fallthrough, Fallthrough::Passthrough(_)) {
            listener["listener_filters"] = inspector;
        }
        listener["filter_chains"] =
            json!([fallthrough.unwrap_or_else(|| json!({"filters": chain(gateway::BLACK_HOLE)}))]);
        return listener;
    }
    let chains: Vec<Value> = plan
        .sni
        .iter()
        .map(|r| json!({"filter_chain_match": {"server_names": r.server_names}, "filters": routed(&r.route)}))
        .collect();
    listener["filter_chains"] = json!(chains);
    if let Some(f) = fallthrough {
        listener["default_filter_chain"] = f;
    }
    listener["listener_filters"] = inspector;
    listener
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use wasmesh_istio::load_str;

    const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: default}
spec:
  hosts: [a.example.com, b.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}, {number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"#;

    fn resources(extra: &str) -> Resources {
        Resources { items: load_str(&format!("{SERVICES}---\n{extra}"), "t.yaml").unwrap() }
    }

    fn sleep() -> Workload {
        let mut wl = Workload::new("sleep", "default");
        wl.labels.insert("app".into(), "sleep".into());
        wl
    }

    fn out(host: &str, port: u32) -> TcpOutbound {
        TcpOutbound { bind_port: 15000, host: host.into(), port }
    }

    fn plan_of(extra: &str, host: &str, port: u32, mode: Option<OutboundMode>) -> Result<Plan, String> {
        plan(&resources(extra), &sleep(), &out(host, port), mode)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))
    }

    fn tcp_vs(routes: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: echo, namespace: default}}\nspec:\n  hosts: [echo]\n  tcp:\n{routes}")
    }

    #[test]
    fn tcp_routes_match_statically_as_istiod_and_split_by_weight() {
        let vs = tcp_vs(
            "  - match: [{sourceLabels: {app: other}}]\n    route: [{destination: {host: echo, subset: v2}}]\n  - match: [{port: 31400}]\n    route: [{destination: {host: echo, subset: v2}}]\n  - match: [{port: 9000, sourceNamespace: default, gateways: [mesh]}]\n    route: [{destination: {host: echo, subset: v1}, weight: 80}, {destination: {host: echo, subset: v2}, weight: 20}]\n",
        );
        let p = plan_of(&vs, "echo", 9000, None).unwrap();
        assert!(p.sni.is_empty());
        assert_eq!(
            p.fallthrough,
            Fallthrough::Route(TcpRoute::Weighted(vec![
                ("outbound|9000|v1|echo.default.svc.cluster.local".into(), 80),
                ("outbound|9000|v2|echo.default.svc.cluster.local".into(), 20),
            ]))
        );
        // Written as istiod's tcp_proxy: weighted clusters, no `cluster`.
        let l = listener("outbound_tcp_15000", 15000, &p, |c| {
            vec![json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": c, "stat_prefix": c}})]
        });
        let proxy = &l["filter_chains"][0]["filters"][0]["typed_config"];
        assert!(proxy.get("cluster").is_none(), "{proxy}");
        assert_eq!(proxy["weighted_clusters"]["clusters"][1]["weight"], 20);
        assert!(l.get("listener_filters").is_none());
        // A VirtualService bound only to a gateway, or for another host, does not apply.
        let gw = vs.replace("  hosts: [echo]\n", "  hosts: [echo]\n  gateways: [some-gateway]\n");
        let p = plan_of(&gw, "echo", 9000, None).unwrap();
        assert_eq!(
            p.fallthrough,
            Fallthrough::Route(TcpRoute::Cluster("outbound|9000||echo.default.svc.cluster.local".into()))
        );
    }

    #[test]
    fn what_cannot_be_carried_out_is_refused_naming_the_field() {
        let e = plan_of(
            &tcp_vs("  - match: [{destinationSubnets: [10.0.0.0/8]}]\n    route: [{destination: {host: echo}}]\n"),
            "echo",
            9000,
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("VirtualService default/echo")
                && e.contains("spec.tcp[0].match[0].destinationSubnets")
                && e.contains("original destination"),
            "{e}"
        );
        let e = plan_of(&tcp_vs("  - route: [{destination: {host: echo, subset: v1}, weight: 50}, {destination: {host: echo, subset: v2}, weight: 40}]\n"), "echo", 9000, None).unwrap_err();
        assert!(e.contains("spec.tcp[0].route") && e.contains("add up to 90"), "{e}");
        let wildcard = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: wiki, namespace: default}\nspec:\n  hosts: ['*.wikipedia.org']\n  ports: [{number: 443, name: tls, protocol: TLS}]\n";
        let e = plan_of(wildcard, "*", 443, Some(OutboundMode::RegistryOnly)).unwrap_err();
        assert!(
            e.contains("ServiceEntry default/wiki") && e.contains("spec.hosts[0]") && e.contains("*.wikipedia.org"),
            "{e}"
        );
        let e = plan_of("", "*", 8443, None).unwrap_err();
        assert!(
            e.contains("--tcp-outbound 15000=*:8443") && e.contains("no ServiceEntry has a TLS or HTTPS port 8443"),
            "{e}"
        );
    }

    #[test]
    fn tls_hosts_by_sni_with_tls_routes_and_the_policy_fallthrough() {
        // Each ServiceEntry host with an HTTPS port 443 is a chain on its name; a `tls` route for
        // b.example.com takes its place (istiod: the service's default chain only without one).
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: b, namespace: default}\nspec:\n  hosts: [b.example.com]\n  tls:\n  - match: [{port: 443, sniHosts: [b.example.com]}]\n    route: [{destination: {host: echo, port: {number: 9000}}}]\n";
        let p = plan_of(vs, "*", 443, Some(OutboundMode::RegistryOnly)).unwrap();
        let names: Vec<(Vec<String>, String)> =
            p.sni.iter().map(|r| (r.server_names.clone(), r.route.first_cluster().to_string())).collect();
        assert_eq!(
            names,
            [
                (vec!["a.example.com".to_string()], "outbound|443||a.example.com".to_string()),
                (vec!["b.example.com".to_string()], "outbound|9000||echo.default.svc.cluster.local".to_string()),
            ]
        );
        assert_eq!(p.fallthrough, Fallthrough::Route(TcpRoute::Cluster(gateway::BLACK_HOLE.into())));
        assert_eq!(catch_all_clusters(&p)[0]["name"], gateway::BLACK_HOLE);
        let l = listener("l", 15000, &p, |c| {
            vec![json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": c}})]
        });
        assert_eq!(l["filter_chains"][1]["filter_chain_match"]["server_names"][0], "b.example.com");
        assert_eq!(l["default_filter_chain"]["filters"][0]["typed_config"]["cluster"], gateway::BLACK_HOLE);
        assert_eq!(l["listener_filters"][0]["name"], "envoy.filters.listener.tls_inspector");
        // ALLOW_ANY: the SNI dynamic forward proxy before tcp_proxy to PassthroughCluster, port 443.
        let p = plan_of("", "*", 443, Some(OutboundMode::AllowAny)).unwrap();
        assert_eq!(p.fallthrough, Fallthrough::Passthrough(443));
        let l = listener("l", 15000, &p, |c| {
            vec![json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {"cluster": c}})]
        });
        let f = &l["default_filter_chain"]["filters"];
        assert_eq!(f[0]["name"], "envoy.filters.network.sni_dynamic_forward_proxy");
        assert_eq!(f[0]["typed_config"]["port_value"], 443);
        assert_eq!(f[1]["typed_config"]["cluster"], wasmesh_router::PASSTHROUGH_CLUSTER);
        // No policy: an unknown name has no chain (closed).
        assert_eq!(plan_of("", "*", 443, None).unwrap().fallthrough, Fallthrough::None);
        // One host's HTTPS port: no tls route, one chain to its cluster, no SNI needed.
        let p = plan_of("", "a.example.com", 443, Some(OutboundMode::RegistryOnly)).unwrap();
        assert_eq!(
            p,
            Plan {
                sni: Vec::new(),
                fallthrough: Fallthrough::Route(TcpRoute::Cluster("outbound|443||a.example.com".into()))
            }
        );
    }
}
