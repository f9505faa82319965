//! Turning Istio resources into a [`Router`] for one proxy, once, at configure time.

use crate::actions::{
    compile_direct_response, compile_fault, compile_header_ops, compile_redirect, compile_rewrite, Action, Fault,
    FaultRoutes, HeaderActions, Matched, RouteOps,
};
use crate::hosts::{intersect, HostTable};
use crate::matcher::StrMatcher;
use crate::policy::{compile_policy, has_policy, RoutePolicy};
use crate::request::HeaderSlots;
use crate::table::{ClusterName, HeaderMatch, Match, Route, Router, VirtualHost, WeightedDestination};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;
use wasmesh_istio::networking::{Destination, Headers, HttpMatchRequest, HttpRoute};
use wasmesh_istio::{CompileError, Error, FilterConfig, MeshIdentity, ProxyMode, Resource, Resources, Workload};

/// The router filter's configuration, as `wasmeshctl` writes it: who the proxy is and the Istio
/// resources that may apply to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RouterConfig {
    /// The proxy. Absent: the filter builds it from the Envoy node metadata Istio writes (one
    /// configuration for every proxy a WasmPlugin selects), completed by `mesh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// Trust domain, root namespace and DNS suffix for a node-derived workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshIdentity>,
    /// Gateway mode: the Gateway server port this listener implements (`servers[].port.number`).
    /// Absent on a gateway: the filter compiles one route table per port of the Gateway servers
    /// that select the proxy and picks it by the port the request arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_port: Option<u32>,
    /// The request header the router writes the chosen Istio cluster name into (replacing any copy
    /// a client sent); a route with `cluster_header` sends the request there.
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    /// Whether Envoy's fault filter runs after this filter, as wasmeshctl generates it: configured
    /// empty with `faultRoutes`, else with header-controlled delay and abort (`header_delay`,
    /// `header_abort`, 100%). A VirtualService `fault` is refused without it: the router decides a
    /// fault and names its fault route (`faultRoutes`) or sets the fault filter's
    /// `x-envoy-fault-*` headers; the fault filter delays (without blocking the worker) or aborts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fault_filter: bool,
    /// Whether Envoy removes client-sent `x-envoy-fault-*` request headers before the filters run
    /// (the HTTP connection manager's `early_header_mutation_extensions`, as wasmeshctl writes it
    /// with the fault filter). Without it the router removes them itself on every request, which
    /// costs a read of the whole request header map.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fault_headers_removed: bool,
    /// Whether faults are carried out by Envoy routes instead of request headers, as istiod
    /// configures faults: Envoy's fault filter after this filter is configured empty (it reads
    /// no request header, so client-sent `x-envoy-fault-*` headers do nothing), and for each
    /// VirtualService route with a `fault` the Envoy has one route per outcome of the draw
    /// (delay, abort, both) whose `typed_per_filter_config` carries that fault at 100 %, matched
    /// on the route policy filter state like the policy routes (`routePolicies`, which it
    /// needs). The router draws and names the outcome's route (see
    /// [`crate::actions::FaultRoutes`]); wasmeshctl generates those routes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fault_routes: bool,
    /// Sidecar: where requests for hosts no ServiceEntry or VirtualService names go
    /// (`meshConfig.outboundTrafficPolicy`, see [`crate::egress`]). Absent: 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<crate::egress::OutboundTrafficPolicy>,
    /// Whether the Envoy has one route per route policy (`timeout`, `retries`, `mirror`,
    /// `corsPolicy`), matched on the policy filter state the router sets
    /// (`match.filter_state` on `wasm.wasmesh.route_policy`), and Envoy's CORS filter after
    /// this filter, as wasmeshctl generates them (see [`crate::policy`]). Those fields are
    /// refused without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route_policies: bool,
    /// Whether tracing is on for this listener (wasmeshctl sets it with the tracing filter): the
    /// router then hands the matched route's operation, as istiod names it
    /// (`decorator.operation`, see [`crate::operation`]), to the tracing phase in the
    /// `wasmesh.router.decision` filter state, and sends it upstream as
    /// `x-envoy-decorator-operation`, as Envoy's connection manager does on a client-side
    /// listener with tracing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trace_operations: bool,
    /// VirtualServices, Gateways and ServiceEntries, in Istio's JSON form.
    #[serde(default)]
    pub resources: Vec<serde_json::Value>,
}

const NOT_YET: &str = "not supported by this wasmesh router yet (matching, weighted destinations, redirect, \
                       directResponse, rewrite, headers, fault, timeout, retries, mirror and corsPolicy are)";
const ONLY_FORWARDING: &str =
    "applies to a route with destinations; this route answers itself (redirect or directResponse)";

/// The header the router filter sets and Envoy's route reads with `cluster_header` (the one
/// definition: wasmeshctl's bootstrap and plugins use this constant).
pub const DEFAULT_CLUSTER_HEADER: &str = "x-wasmesh-cluster";

/// Most virtual hosts (distinct request hosts: VirtualService hosts and every visible service)
/// one route table holds. Neither Istio nor Envoy bounds them; the bound keeps a runaway
/// configuration from filling the VM, far above real meshes (tens of thousands of services).
pub const MAX_VIRTUAL_HOSTS: usize = 65_536;
/// Most routes one virtual host holds (all VirtualServices for the host merged). Istio and Envoy
/// set none; routes are tried in order per request, so the bound also caps the per-request walk.
pub const MAX_ROUTES_PER_VIRTUAL_HOST: usize = 4_096;
/// Most distinct request headers the routes of one table examine (`:authority`, `:path`,
/// `:method`, `:scheme` and every `headers`/`withoutHeaders` name). Envoy's default
/// `max_request_headers_count` is 100, so a request cannot carry more than that many anyway;
/// the bound caps the per-request view.
pub const MAX_EXAMINED_HEADERS: usize = 128;

/// The size bounds of one route table (defaults: the `MAX_…` constants above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub virtual_hosts: usize,
    pub routes_per_virtual_host: usize,
    pub examined_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            virtual_hosts: MAX_VIRTUAL_HOSTS,
            routes_per_virtual_host: MAX_ROUTES_PER_VIRTUAL_HOST,
            examined_headers: MAX_EXAMINED_HEADERS,
        }
    }
}

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.to_string()
}

wasmesh_istio::filter_config!(RouterConfig, "router");

impl RouterConfig {
    /// Parses the filter configuration and compiles the router.
    pub fn compile_json(bytes: &[u8]) -> Result<Router, CompileError> {
        let cfg = RouterConfig::parse_json(bytes)?;
        cfg.compile(&cfg.parsed_resources()?)
    }

    /// Compiles the router for this proxy from already-parsed resources.
    pub fn compile(&self, resources: &Resources) -> Result<Router, CompileError> {
        self.compile_with_limits(resources, &Limits::default())
    }

    /// [`RouterConfig::compile`] with other size bounds.
    pub fn compile_with_limits(&self, resources: &Resources, limits: &Limits) -> Result<Router, CompileError> {
        let workload = self.require_workload()?;
        Compiler { cfg: self, wl: workload, errors: Vec::new(), check_all: false, limits: *limits }.run(resources)
    }

    /// Gateway mode: the `servers[].port.number` of every Gateway that selects the workload, in
    /// order, each once (the ports a configuration without `gatewayPort` serves).
    pub fn gateway_ports(&self, resources: &Resources) -> Vec<u32> {
        let Some(wl) = &self.workload else { return Vec::new() };
        let mut ports = Vec::new();
        for (_, gw) in resources.gateways() {
            if !gw.selector.iter().all(|(k, v)| wl.labels.get(k) == Some(v)) {
                continue;
            }
            for server in &gw.servers {
                if !ports.contains(&server.port.number) {
                    ports.push(server.port.number);
                }
            }
        }
        ports
    }
}

struct Compiler<'c> {
    cfg: &'c RouterConfig,
    wl: &'c Workload,
    errors: Vec<Error>,
    /// Validation: compile every VirtualService and match block, whatever proxy they select.
    check_all: bool,
    limits: Limits,
}

/// The Gateway servers this gateway proxy implements on its port.
struct GatewayServers {
    /// `namespace/name` of each selected Gateway with a server on this port: a VirtualService
    /// bound to another Gateway of the same workload is not served here (Istio builds each
    /// port's routes from that port's servers only).
    names: Vec<String>,
    /// (`namespace/name` of the Gateway, allowed VirtualService namespace or `*`, host pattern).
    hosts: Vec<(String, String, String)>,
}

impl Compiler<'_> {
    fn run(mut self, resources: &Resources) -> Result<Router, CompileError> {
        let wl = self.wl;
        if !wasmesh_istio::validate::is_lowercase_header_name(&self.cfg.cluster_header) {
            self.errors.push(Error::new(format!(
                "router configuration: clusterHeader {:?} is not a lower-case HTTP header name",
                self.cfg.cluster_header
            )));
        }
        let services = self.services(resources);
        let gateway = match wl.mode {
            ProxyMode::Gateway => Some(self.gateway_servers(resources)),
            ProxyMode::Sidecar => None,
        };

        let mut hosts = HostTable::default();
        let mut vhosts: Vec<VirtualHost> = Vec::new();
        // Delegates merged into their roots as istiod merges them (delegate.rs).
        let resolved = crate::delegate::resolve(resources, &mut self.errors);
        if self.check_all {
            for (res, vs) in &resolved.delegates {
                self.routes(res, &vs.http, &services, gateway.as_ref());
            }
        }
        for (res, vs) in &resolved.roots {
            let res: &Resource = res;
            if !visible(&vs.export_to, res.namespace(), &wl.namespace) {
                continue;
            }
            let bound = self.check_all
                || match &gateway {
                    None => vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"),
                    Some(gw) => vs.gateways.iter().any(|g| gw.names.contains(&gateway_name(g, res.namespace()))),
                };
            if !bound {
                continue;
            }
            // TCP and TLS routes are listener configuration, not this router's: `wasmeshctl envoy`
            // writes them into a gateway's TCP/TLS server listeners (controller/src/gateway.rs)
            // and a sidecar's outbound TCP/TLS listeners (controller/src/sidecar_l4.rs).
            if vs.http.is_empty() && (!vs.tcp.is_empty() || !vs.tls.is_empty()) {
                continue;
            }
            if vs.hosts.is_empty() {
                self.err(res, "spec.hosts", "at least one host is required");
                continue;
            }
            let routes = self.routes(res, &vs.http, &services, gateway.as_ref());
            for (i, host) in vs.hosts.iter().enumerate() {
                if host.is_empty() || host.contains('/') {
                    self.err(res, &format!("spec.hosts[{i}]"), &format!("{host:?} is not a host name"));
                    continue;
                }
                let fq = wl.fqdn(host, res.namespace());
                let domains: Vec<String> = match &gateway {
                    None => vec![fq.clone()],
                    Some(gw) => gw
                        .hosts
                        .iter()
                        .filter(|(g, _, _)| {
                            self.check_all || vs.gateways.iter().any(|r| &gateway_name(r, res.namespace()) == g)
                        })
                        .filter(|(_, ns, _)| ns == "*" || ns == res.namespace())
                        .filter_map(|(_, _, h)| intersect(h, &fq).map(str::to_string))
                        .collect(),
                };
                for domain in domains {
                    let ports = services.get(&domain).cloned().unwrap_or_default();
                    let index = vhosts.len();
                    match hosts.insert(&domain, index) {
                        None => vhosts.push(VirtualHost { service_ports: ports, routes: routes.clone() }),
                        // A gateway merges every VirtualService bound to it for one host;
                        // a sidecar keeps the first VirtualService for a host and drops the
                        // host from later ones (istiod's duplicate-domain rule).
                        Some(existing) if gateway.is_some() => {
                            if let Some(vh) = vhosts.get_mut(existing) {
                                vh.routes.extend(routes.iter().cloned());
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }

        // A sidecar reaches every known service even without a VirtualService (Istio's default
        // route: all traffic to the service, no subset).
        if wl.mode == ProxyMode::Sidecar {
            for (host, ports) in &services {
                // A VirtualService host (exact or wildcard) covering the service replaces its default.
                if hosts.lookup(host).is_some() {
                    continue;
                }
                let cluster = match ports.as_slice() {
                    [only] => ClusterName::Fixed(format!("outbound|{only}||{host}")),
                    _ => ClusterName::per_port(String::new(), host.clone(), ports),
                };
                let index = vhosts.len();
                if hosts.insert(host, index).is_none() {
                    vhosts.push(VirtualHost {
                        service_ports: ports.clone(),
                        routes: vec![Route {
                            virtual_service: String::new(),
                            name: "default".into(),
                            matches: Vec::new(),
                            destinations: vec![WeightedDestination { weight: 1, cluster, headers: None }],
                            total_weight: 1,
                            action: Action::Forward,
                            ops: None,
                        }],
                    });
                }
            }
        }

        // Istio's sidecar virtual hosts also answer to the short forms of a service name
        // (`reviews`, `reviews.ns`, `reviews.ns.svc`); index them now so a request never has to
        // build the FQDN.
        if wl.mode == ProxyMode::Sidecar {
            let suffix = format!(".svc.{}", wl.domain_suffix);
            let exact: Vec<(String, usize)> = hosts.exact_names_by_value();
            for (host, index) in exact {
                let Some(short) = host.strip_suffix(&suffix) else { continue };
                let Some((name, ns)) = short.split_once('.') else { continue };
                if name.is_empty() || ns.is_empty() || ns.contains('.') {
                    continue;
                }
                hosts.insert(&format!("{short}.svc"), index);
                hosts.insert(short, index);
                if ns == wl.namespace {
                    hosts.insert(name, index);
                }
            }
        }

        let gateway_hosts = gateway.as_ref().map(|gw| {
            let mut t = HostTable::default();
            for (_, _, h) in &gw.hosts {
                t.insert(h, 0);
            }
            t
        });
        if wl.mode == ProxyMode::Gateway && self.cfg.gateway_port.is_none() {
            self.errors.push(Error::new("router configuration: gatewayPort is required in gateway mode"));
        }
        let limits = self.limits;
        if vhosts.len() > limits.virtual_hosts {
            self.errors.push(Error::new(format!(
                "router configuration: {} virtual hosts (VirtualService hosts and services) for this proxy; at most {} are supported",
                vhosts.len(),
                limits.virtual_hosts
            )));
        }
        // Each virtual host by its longest name (the FQDN rather than a short form).
        let mut names: BTreeMap<usize, String> = BTreeMap::new();
        for (host, index) in hosts.exact_names_by_value().into_iter().chain(hosts.wildcard_names()) {
            let name = names.entry(index).or_default();
            if host.len() > name.len() {
                *name = host;
            }
        }
        for (index, host) in names {
            let Some(vh) = vhosts.get(index) else { continue };
            if vh.routes.len() > limits.routes_per_virtual_host {
                self.errors.push(Error::new(format!(
                    "router configuration: host {host:?} has {} routes (every VirtualService for it merged); at most {} are supported",
                    vh.routes.len(),
                    limits.routes_per_virtual_host
                )));
            }
        }
        if !self.errors.is_empty() {
            return Err(CompileError(self.errors));
        }
        // The headers the routes examine, each with a slot, in the order the routes read them;
        // then every header condition points at its slot.
        let mut slots = HeaderSlots::default();
        for m in vhosts.iter().flat_map(|v| &v.routes).flat_map(|r| &r.matches) {
            m.headers_read(&mut slots);
        }
        if slots.names().len() > limits.examined_headers {
            return Err(CompileError::msg(format!(
                "router configuration: the routes examine {} distinct request headers; at most {} are supported (Envoy accepts 100 headers per request by default)",
                slots.names().len(),
                limits.examined_headers
            )));
        }
        for m in vhosts.iter_mut().flat_map(|v| &mut v.routes).flat_map(|r| &mut r.matches) {
            m.resolve_slots(&slots);
        }
        Ok(Router {
            slots,
            mode: wl.mode,
            gateway_port: self.cfg.gateway_port,
            hosts,
            vhosts,
            gateway_hosts,
            cluster_header: self.cfg.cluster_header.clone(),
            namespace: wl.namespace.clone(),
            domain_suffix: wl.domain_suffix.clone(),
            catch_all: match wl.mode {
                ProxyMode::Sidecar => self.cfg.outbound_traffic_policy.map(|p| p.mode.catch_all()),
                ProxyMode::Gateway => None,
            },
        })
    }

    fn err(&mut self, res: &Resource, field: &str, message: &str) {
        self.errors.push(Error::at(res, field, message));
    }

    /// Service hosts (FQDN) and their ports, from ServiceEntries visible to this proxy.
    fn services(&mut self, resources: &Resources) -> BTreeMap<String, Vec<u32>> {
        let wl = self.wl;
        let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (res, se) in resources.service_entries() {
            if !visible(&se.export_to, res.namespace(), &wl.namespace) {
                continue;
            }
            for host in &se.hosts {
                let ports = out.entry(wl.fqdn(host, res.namespace())).or_default();
                for p in &se.ports {
                    if !ports.contains(&p.number) {
                        ports.push(p.number);
                    }
                }
            }
        }
        out
    }

    fn gateway_servers(&mut self, resources: &Resources) -> GatewayServers {
        let wl = self.wl;
        let port = self.cfg.gateway_port.unwrap_or(0);
        let mut out = GatewayServers { names: Vec::new(), hosts: Vec::new() };
        for (res, gw) in resources.gateways() {
            let selected = gw.selector.iter().all(|(k, v)| wl.labels.get(k) == Some(v));
            if !selected {
                continue;
            }
            let name = format!("{}/{}", res.namespace(), res.name());
            for (si, server) in gw.servers.iter().enumerate() {
                if server.port.number != port {
                    continue;
                }
                if !out.names.contains(&name) {
                    out.names.push(name.clone());
                }
                // TLS is terminated by Envoy (`wasmeshctl envoy` writes the listener's filter
                // chains, controller/src/gateway.rs); the router routes what it decrypted.
                // PASSTHROUGH ports are `tcp_proxy` chains by SNI (the VirtualServices' `tls`
                // routes), which this router never sees. Other modes are refused here.
                if let Some(mode) = server_tls_mode(server.tls.as_ref()) {
                    if !matches!(mode.as_str(), "SIMPLE" | "MUTUAL" | "PASSTHROUGH") {
                        self.err(
                            res,
                            &format!("spec.servers[{si}].tls.mode"),
                            &format!("{mode:?} is not supported by wasmesh (SIMPLE, MUTUAL and PASSTHROUGH are)"),
                        );
                    }
                }
                for (hi, h) in server.hosts.iter().enumerate() {
                    let (ns, host) = match h.split_once('/') {
                        Some((".", host)) => (res.namespace().to_string(), host),
                        Some((ns, host)) => (ns.to_string(), host),
                        None => ("*".to_string(), h.as_str()),
                    };
                    if host.is_empty() {
                        self.err(res, &format!("spec.servers[{si}].hosts[{hi}]"), &format!("{h:?} has no host"));
                        continue;
                    }
                    out.hosts.push((name.clone(), ns, host.to_ascii_lowercase()));
                }
            }
        }
        out
    }

    fn routes(
        &mut self,
        res: &Resource,
        http: &[HttpRoute],
        services: &BTreeMap<String, Vec<u32>>,
        gateway: Option<&GatewayServers>,
    ) -> Vec<Route> {
        let wl = self.wl.clone();
        let mut out = Vec::new();
        for (ri, route) in http.iter().enumerate() {
            let field = format!("spec.http[{ri}]");
            self.unsupported(res, &field, route);
            let mut matches = Vec::new();
            let errors_before = self.errors.len();
            for (mi, m) in route.matches.iter().enumerate() {
                let mfield = format!("{field}.match[{mi}]");
                // Selectors decided here, for this proxy, as istiod does when it builds its config.
                if !m.gateways.is_empty() && !self.check_all {
                    let applies = match gateway {
                        None => m.gateways.iter().any(|g| g == "mesh"),
                        Some(gw) => m.gateways.iter().any(|g| gw.names.contains(&gateway_name(g, res.namespace()))),
                    };
                    if !applies {
                        continue;
                    }
                }
                let selected = m.source_labels.iter().all(|(k, v)| wl.labels.get(k) == Some(v))
                    && m.source_namespace.as_ref().is_none_or(|ns| ns == &wl.namespace);
                if !selected && !self.check_all {
                    continue;
                }
                if let Some(compiled) = self.compile_match(res, &mfield, m) {
                    matches.push(compiled);
                }
            }
            if !route.matches.is_empty() && matches.is_empty() && self.errors.len() == errors_before {
                // Every match block was for other proxies: this route does not exist here.
                continue;
            }
            let name = if route.name.is_empty() { format!("#{ri}") } else { route.name.clone() };
            let virtual_service = format!("{}/{}", res.namespace(), res.name());
            let answering = [route.redirect.is_some(), route.direct_response.is_some(), route.delegate.is_some()];
            if answering.iter().filter(|a| **a).count() > 1 || (answering.iter().any(|a| *a) && !route.route.is_empty())
            {
                self.err(
                    res,
                    &field,
                    "set only one of route, redirect, directResponse, delegate (Istio allows one action per route)",
                );
                continue;
            }
            if route.redirect.is_some() || route.direct_response.is_some() {
                if route.rewrite.is_some() {
                    self.err(res, &format!("{field}.rewrite"), "cannot be combined with redirect or directResponse");
                    continue;
                }
                let action = match (&route.redirect, &route.direct_response) {
                    (Some(r), _) => compile_redirect(r).map(|r| Action::Redirect(Rc::new(r))),
                    (_, Some(d)) => {
                        compile_direct_response(d).map(|(status, body)| Action::Direct { status, body: body.into() })
                    }
                    _ => continue,
                };
                let sub = if route.redirect.is_some() { "redirect" } else { "directResponse" };
                match action {
                    Ok(action) => out.push(Route {
                        virtual_service,
                        name,
                        matches,
                        destinations: Vec::new(),
                        total_weight: 0,
                        action,
                        ops: None,
                    }),
                    Err((f, e)) => self.err(res, &format!("{field}.{sub}{f}"), &e),
                }
                continue;
            }
            if route.route.is_empty() {
                if route.delegate.is_none() {
                    self.err(
                        res,
                        &format!("{field}.route"),
                        "a route needs at least one destination (or a redirect or directResponse)",
                    );
                }
                continue;
            }
            let ops = self.route_ops(res, &field, route, services);
            let multiple = route.route.len() > 1;
            let mut destinations = Vec::new();
            let mut total: u32 = 0;
            for (di, d) in route.route.iter().enumerate() {
                let dfield = format!("{field}.route[{di}]");
                let weight = match d.weight {
                    _ if !multiple => 1,
                    Some(w) if w < 0 => {
                        self.err(res, &format!("{dfield}.weight"), &format!("{w} is negative; expected 0 or more"));
                        continue;
                    }
                    Some(w) => w as u32,
                    None => 0,
                };
                let headers =
                    d.headers.as_ref().and_then(|h| self.header_actions(res, &format!("{dfield}.headers"), h));
                let Some(cluster) = self.cluster(res, &format!("{dfield}.destination"), &d.destination, services)
                else {
                    continue;
                };
                if weight == 0 {
                    continue;
                }
                total = total.saturating_add(weight);
                destinations.push(WeightedDestination { weight, cluster, headers });
            }
            if multiple && total == 0 {
                self.err(
                    res,
                    &format!("{field}.route"),
                    "the destination weights add up to 0; expected a total above 0",
                );
                continue;
            }
            out.push(Route {
                virtual_service,
                name,
                matches,
                destinations,
                total_weight: total,
                action: Action::Forward,
                ops,
            });
        }
        out
    }

    /// Route features that belong to later work are refused loudly rather than ignored.
    fn unsupported(&mut self, res: &Resource, field: &str, r: &HttpRoute) {
        let answers = r.route.is_empty();
        let mirror_share =
            r.mirror_percentage.is_some() || r.mirror_percent.is_some() || r.mirror_percent_snake.is_some();
        let present: [(&str, bool, &str); 6] = [
            ("timeout", answers && r.timeout.is_some(), ONLY_FORWARDING),
            ("retries", answers && r.retries.is_some(), ONLY_FORWARDING),
            ("mirror", answers && (r.mirror.is_some() || !r.mirrors.is_empty()), ONLY_FORWARDING),
            ("mirrorPercentage", answers && mirror_share, ONLY_FORWARDING),
            ("corsPolicy", answers && r.cors_policy.is_some(), ONLY_FORWARDING),
            ("match[].statPrefix", r.matches.iter().any(|m| m.stat_prefix.is_some()), NOT_YET),
        ];
        for (name, set, why) in present {
            if set {
                self.err(res, &format!("{field}.{name}"), why);
            }
        }
    }

    /// The route's `timeout`, `retries`, mirrors and `corsPolicy` as Envoy route configuration
    /// (see [`crate::policy`]); `None` when it has none or they are wrong (errors recorded).
    fn route_policy(
        &mut self,
        res: &Resource,
        field: &str,
        route: &HttpRoute,
        services: &BTreeMap<String, Vec<u32>>,
    ) -> Option<Rc<RoutePolicy>> {
        if !has_policy(route) {
            return None;
        }
        if !self.cfg.route_policies {
            for (name, set) in [
                ("timeout", route.timeout.is_some()),
                ("retries", route.retries.is_some()),
                ("mirror", route.mirror.is_some() || !route.mirrors.is_empty()),
                ("corsPolicy", route.cors_policy.is_some()),
            ] {
                if set {
                    self.err(
                        res,
                        &format!("{field}.{name}"),
                        "needs Envoy routes for the router's route policies (one route per policy matched on \
                         the filter state wasm.wasmesh.route_policy, and envoy.filters.http.cors after the router); wasmeshctl generates \
                         them, in another Envoy add them and set routePolicies: true in the router configuration",
                    );
                }
            }
            return None;
        }
        let mut mirror_errors: Vec<(String, String)> = Vec::new();
        let compiled = compile_policy(route, |sub, d| {
            let f = format!("{field}{sub}");
            match self.cluster(res, &f, d, services)? {
                ClusterName::Fixed(name) => Some(name),
                ClusterName::PerPort { known, .. } => {
                    let ports = services.get(&self.wl.fqdn(&d.host, res.namespace())).cloned().unwrap_or_default();
                    match (ports.as_slice(), known.first()) {
                        ([_], Some((_, name))) => Some(name.clone()),
                        _ => {
                            mirror_errors.push((
                                format!("{sub}.port.number"),
                                format!("{:?} is not a service with one port; a mirror needs its port.number", d.host),
                            ));
                            None
                        }
                    }
                }
            }
        });
        let mut errors = mirror_errors;
        let policy = match compiled {
            Ok(p) => Some(p),
            Err(e) => {
                errors.extend(e);
                None
            }
        };
        for (sub, e) in errors {
            self.err(res, &format!("{field}{sub}"), &e);
        }
        policy.map(Rc::new)
    }

    /// A forwarding route's rewrite, header operations and fault; `None` when it has none.
    fn route_ops(
        &mut self,
        res: &Resource,
        field: &str,
        route: &HttpRoute,
        services: &BTreeMap<String, Vec<u32>>,
    ) -> Option<Rc<RouteOps>> {
        let mut ops = RouteOps { policy: self.route_policy(res, field, route, services), ..RouteOps::default() };
        if let Some(h) = &route.headers {
            if let Some(h) = self.header_actions(res, &format!("{field}.headers"), h) {
                ops.headers = (*h).clone();
            }
        }
        if let Some(r) = &route.rewrite {
            match compile_rewrite(r) {
                Ok((path, authority)) => {
                    ops.path = path;
                    if authority.is_some() {
                        ops.headers.authority = authority;
                    }
                }
                Err((f, e)) => self.err(res, &format!("{field}.rewrite{f}"), &e),
            }
        }
        if let Some(f) = &route.fault {
            match compile_fault(f) {
                Ok(_) if !self.cfg.fault_filter => self.err(
                    res,
                    &format!("{field}.fault"),
                    "fault injection needs Envoy's fault filter after the router (envoy.filters.http.fault with \
                     header_delay and header_abort at 100%); wasmeshctl generates it, in another Envoy add it and \
                     set faultFilter: true in the router configuration",
                ),
                Ok(_) if self.cfg.fault_routes && !self.cfg.route_policies => self.err(
                    res,
                    &format!("{field}.fault"),
                    "faultRoutes needs the route policy routes (routePolicies: true): a fault's Envoy routes are \
                     matched on the filter state wasm.wasmesh.route_policy; wasmeshctl generates them",
                ),
                Ok(f) if f.delay.is_some() || f.abort.is_some() => {
                    if self.cfg.fault_routes {
                        ops.fault_routes = self.fault_routes(route, &f, ops.policy.as_deref());
                    }
                    ops.fault = Some(f);
                }
                Ok(_) => {}
                Err((sub, e)) => self.err(res, &format!("{field}.fault{sub}"), &e),
            }
        }
        let none = ops.headers.is_empty() && ops.path.is_none() && ops.fault.is_none() && ops.policy.is_none();
        (!none).then(|| Rc::new(ops))
    }

    /// The Envoy routes of a route's fault: over the route's policy, or over the route action
    /// istiod writes for a route without one (Istio's default timeout and retries).
    fn fault_routes(&mut self, route: &HttpRoute, fault: &Fault, policy: Option<&RoutePolicy>) -> Option<FaultRoutes> {
        if let Some(p) = policy {
            return Some(FaultRoutes::new(fault, p));
        }
        // No timeout, retries, mirror or CORS (else `policy` is set): nothing to compile that
        // can fail, and no mirror to resolve.
        compile_policy(route, |_, _| None).ok().map(|base| FaultRoutes::new(fault, &base))
    }

    fn header_actions(&mut self, res: &Resource, field: &str, h: &Headers) -> Option<Rc<HeaderActions>> {
        let mut out = HeaderActions::default();
        for (dir, ops, target) in
            [("request", &h.request, &mut out.request), ("response", &h.response, &mut out.response)]
        {
            let Some(ops) = ops else { continue };
            match compile_header_ops(ops, dir == "request", &mut out.authority) {
                Ok(o) => *target = o,
                Err((f, e)) => self.errors.push(Error::at(res, format!("{field}.{dir}{f}"), e)),
            }
        }
        (!out.is_empty()).then(|| Rc::new(out))
    }

    fn compile_match(&mut self, res: &Resource, field: &str, m: &HttpMatchRequest) -> Option<Match> {
        let mut out = Match { port: m.port, ..Match::default() };
        let mut ok = true;
        let mut one =
            |sm: &Option<wasmesh_istio::StringMatch>, name: &str, ignore_case: bool, errors: &mut Vec<Error>| {
                sm.as_ref().and_then(|sm| match StrMatcher::compile(sm, ignore_case) {
                    Ok(c) => Some(c),
                    Err((sub, e)) => {
                        errors.push(Error::at(res, format!("{field}.{name}{sub}"), e));
                        ok = false;
                        None
                    }
                })
            };
        out.uri = one(&m.uri, "uri", m.ignore_uri_case, &mut self.errors);
        out.op_path = crate::operation::path(m.uri.as_ref());
        out.matched = match &out.uri {
            None => Matched::default(),
            Some(StrMatcher::Prefix(p) | StrMatcher::PrefixIgnoreCase(p)) => Matched::Prefix(p.len()),
            Some(_) => Matched::Whole,
        };
        out.scheme = one(&m.scheme, "scheme", false, &mut self.errors);
        out.method = one(&m.method, "method", false, &mut self.errors);
        out.authority = one(&m.authority, "authority", false, &mut self.errors);
        if let Some(p) = m.port {
            if p == 0 || p > 65535 {
                self.err(res, &format!("{field}.port"), &format!("{p} is not a port; expected 1-65535"));
                ok = false;
            }
        }
        for (kind, map, target) in [
            ("headers", &m.headers, &mut out.headers),
            ("withoutHeaders", &m.without_headers, &mut out.without_headers),
        ] {
            for (name, sm) in map {
                let lname = name.to_ascii_lowercase();
                if matches!(lname.as_str(), "uri" | "scheme" | "method" | "authority") {
                    continue; // Istio ignores these keys in `headers`.
                }
                if !wasmesh_istio::validate::is_lowercase_header_name(&lname) {
                    self.err(res, &format!("{field}.{kind}.{name}"), &format!("{name:?} is not an HTTP header name"));
                    ok = false;
                    continue;
                }
                match StrMatcher::compile(sm, false) {
                    Ok(matcher) => target.push(HeaderMatch { name: lname, slot: usize::MAX, matcher }),
                    Err((sub, e)) => {
                        self.err(res, &format!("{field}.{kind}.{name}{sub}"), &e);
                        ok = false;
                    }
                }
            }
        }
        for (name, sm) in &m.query_params {
            match StrMatcher::compile(sm, false) {
                Ok(c) => out.query_params.push((name.clone(), c)),
                Err((sub, e)) => {
                    self.err(res, &format!("{field}.queryParams.{name}{sub}"), &e);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn cluster(
        &mut self,
        res: &Resource,
        field: &str,
        d: &Destination,
        services: &BTreeMap<String, Vec<u32>>,
    ) -> Option<ClusterName> {
        if d.host.is_empty() || d.host.contains('*') {
            self.err(
                res,
                &format!("{field}.host"),
                &format!("{:?} is not a destination host; expected a service name", d.host),
            );
            return None;
        }
        let host = self.wl.fqdn(&d.host, res.namespace());
        let port = match (d.port, services.get(&host).map(Vec::as_slice)) {
            (Some(p), _) if p.number == 0 || p.number > 65535 => {
                self.err(
                    res,
                    &format!("{field}.port.number"),
                    &format!("{} is not a port; expected 1-65535", p.number),
                );
                return None;
            }
            (Some(p), _) => Some(p.number),
            (None, Some([only])) => Some(*only),
            (None, _) => None,
        };
        Some(match port {
            Some(p) => ClusterName::Fixed(format!("outbound|{p}|{}|{host}", d.subset)),
            None => ClusterName::per_port(
                d.subset.clone(),
                host.clone(),
                services.get(&host).map(Vec::as_slice).unwrap_or_default(),
            ),
        })
    }
}

/// `exportTo` visibility: empty or `*` = everywhere, `.` = own namespace, `~` = nowhere.
fn visible(export_to: &[String], resource_ns: &str, proxy_ns: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == proxy_ns || (e == "." && resource_ns == proxy_ns))
}

/// A Gateway server's `tls.mode` (`SIMPLE` when absent, as in Istio), `None` without `tls` or
/// with only `httpsRedirect` (a plaintext server that redirects).
fn server_tls_mode(tls: Option<&serde_json::Value>) -> Option<String> {
    let tls = tls?.as_object()?;
    match tls.get("mode").and_then(serde_json::Value::as_str) {
        Some(mode) => Some(mode.to_string()),
        None if tls.keys().all(|k| k == "httpsRedirect") => None,
        None => Some("SIMPLE".to_string()),
    }
}

/// A VirtualService's gateway reference as `namespace/name` (short names are in the VS's namespace).
fn gateway_name(reference: &str, vs_namespace: &str) -> String {
    match reference.split_once('/') {
        Some(_) => reference.to_string(),
        None => format!("{vs_namespace}/{reference}"),
    }
}

/// Checks every VirtualService in `resources` as the router would compile it, whatever proxy it
/// selects, for `wasmeshctl validate`.
pub fn validate(resources: &Resources) -> Vec<Error> {
    let wl = Workload::new("validate", "default");
    let cfg = RouterConfig {
        workload: Some(wl.clone()),
        mesh: None,
        gateway_port: None,
        cluster_header: default_cluster_header(),
        fault_filter: true,
        fault_headers_removed: false,
        fault_routes: true,
        outbound_traffic_policy: None,
        route_policies: true,
        trace_operations: false,
        resources: Vec::new(),
    };
    match (Compiler { cfg: &cfg, wl: &wl, errors: Vec::new(), check_all: true, limits: Limits::default() })
        .run(resources)
    {
        Ok(_) => Vec::new(),
        Err(CompileError(errors)) => errors,
    }
}
