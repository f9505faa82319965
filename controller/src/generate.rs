//! `wasmeshctl generate`: the Istio extension resources that attach wasmesh to the sidecars and
//! gateways Istio already runs.
//!
//! Input: the Istio resources people already have (`-f`). Output, on stdout for
//! `kubectl apply -f -`: per filter one `WasmPlugin` (`--format wasmplugin`, every Istio since
//! 1.12), `TrafficExtension` (`--format trafficextension`, Istio 1.30+), or `EnvoyFilter`
//! (`--format envoyfilter`: the Wasm filter inline in LDS with remote code fetched by Envoy over
//! HTTP from `--module-url`; `--format envoyfilter-ecds`: an `EXTENSION_CONFIG` fetched by the
//! istio-agent from the OCI image, as istiod does for a WasmPlugin).
//!
//! Always one plugin per filter, never the one-pass `wasmesh.chain` that `wasmeshctl envoy`
//! writes by default ([`crate::layout`]): Istio places each plugin by its `phase` (AUTHN, AUTHZ,
//! STATS) among its own filters, which needs separate filters; each is the same module under its
//! own root id, handing over through filter state.
//!
//! # One plugin configuration for many workloads
//!
//! Every filter takes its identity (namespace, labels, service account, sidecar or gateway) from
//! the Envoy node metadata Istio's injector writes, and selects the resources that apply to it
//! itself, exactly as istiod would (contract C2). So one configuration serves the whole mesh:
//! each filter is generated **once, in the root namespace, without a selector** (a root-namespace
//! plugin applies to every namespace), carrying every resource of the kinds that filter reads.
//! One object per filter instead of one per workload means nothing to regenerate when a workload
//! is added, one ECDS resource per filter in istiod, and one plugin configuration per filter in
//! each Envoy (all of them in one module, C3, so one VM per worker). The price is that each proxy
//! holds policies of other namespaces; they are small, and a policy change is one object either
//! way.
//!
//! Sidecars and gateways differ only in *where* a filter attaches, which `match` expresses:
//! - `stats`: every listener (`match` omitted = CLIENT_AND_SERVER), STATS phase, FAIL_OPEN.
//! - `authn` and `authz`: sidecar inbound (`mode: SERVER`), as Istio's `jwt_authn` and `rbac`. A
//!   gateway's listeners count as CLIENT, and `mode: CLIENT` without a selector would also attach
//!   to every sidecar's outbound listeners, so gateways get their own object with a `selector` on
//!   the labels that Istio `Gateway` resources' `spec.selector` names, and `mode: CLIENT`; it is
//!   generated only when some policy applies to such a gateway (Istio adds no filter otherwise;
//!   the gateway's pods are taken to run in the namespace of a WorkloadEntry with those labels,
//!   else in the root namespace).
//! - Kubernetes Gateway API gateways that policies name by `targetRefs` (kind `Gateway`) get an
//!   object with the same `targetRefs`, in the gateway's namespace (Istio refuses
//!   cross-namespace references), `mode: CLIENT`.
//! - Istio runs CUSTOM authorization (`ext_authz`) before `jwt_authn` and AUDIT/DENY/ALLOW after
//!   it. wasmesh splits authz the same way its bootstrap does: with a CUSTOM policy, a second
//!   authz plugin (`wasmesh.authz.custom`, `stage: custom`) goes into the AUTHN phase with a
//!   higher priority than `wasmesh.authn`, and `wasmesh.authz` (`stage: rbac`) into AUTHZ.
//!   Priorities are explicit (an unset priority sorts as MinInt32 in istiod, after every plugin
//!   that sets one).
//! - TCP service ports (ServiceEntry ports Istio proxies as TCP) get NETWORK plugins restricted
//!   to those ports: network authorization (`wasmesh.authz.tcp`) and TCP metrics
//!   (`wasmesh.stats.tcp`); policies using `ipBlocks`/`source.ip` add the network plugin that
//!   records the physical peer address (`wasmesh.authz.peer_address`).
//!
//! Clusters the filters call: the authn filter fetches `jwksUri` through its own cluster per
//! JWKS server, which Istio does not have, so an EnvoyFilter `wasmesh-jwks` adds them (CLUSTER
//! patches, in every format). A CUSTOM policy's ext-authz provider is reached through istiod's
//! own `outbound|<port>||<host>` cluster of that service, as Istio's `ext_authz` is.
//!
//! # The router is not generated for Istio
//!
//! istiod already compiles the same VirtualServices into Envoy's native route table, and
//! wasmesh's router only takes effect where a route reads its `x-wasmesh-cluster` header. Under
//! Istio it would either do nothing (Istio's routes ignore the header) or need an EnvoyFilter
//! rewriting every istiod route to `cluster_header`, which replaces a native route table by a
//! wasm one for no change in behaviour and breaks `ALLOW_ANY` passthrough. So `generate` never
//! emits it and says so on stderr; the router is for Envoys without istiod (`wasmeshctl envoy`).
//!
//! # Double enforcement, double counting
//!
//! If the same AuthorizationPolicies and RequestAuthentications are also applied to the cluster,
//! Istio's native filters enforce them too. Both decide the same way (that is wasmesh's test
//! suite), so requests see the same answer; keep only one where that matters. `wasmesh.stats`
//! reports Istio's standard metrics under Istio's names: where Istio's own stats filter runs as
//! well, each request is counted twice (generate says so on stderr).
//!
//! Every pluginConfig is compiled with the filter's own core before anything is printed, once
//! per workload the inputs know (WorkloadEntries, and the gateways Istio `Gateway`s select), and
//! the resources are validated as `wasmeshctl validate` does, so a broken policy fails
//! `generate`, not the proxies.

use crate::mesh::MeshConfig;
use crate::plugins::authz::{
    CUSTOM_FILTER_NAME, FILTER_NAME as AUTHZ_ROOT, PEER_ADDRESS_FILTER_NAME, TCP_FILTER_NAME as AUTHZ_TCP_ROOT,
};
use crate::plugins::stats::{FILTER_NAME as STATS_ROOT, TCP_FILTER_NAME as STATS_TCP_ROOT};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use wasmesh_authn::AuthnConfig;
use wasmesh_authz::{AuthzConfig, Stage};
use wasmesh_istio::security::Action;
use wasmesh_istio::{Error, Kind, PortProtocol, ProxyMode, Resource, Resources, Workload};
use wasmesh_stats::{Direction as StatsDirection, ListenerProtocol, StatsConfig};

pub const AUTHN_ROOT: &str = crate::plugins::authn::FILTER_NAME;

/// What to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    WasmPlugin,
    TrafficExtension,
    EnvoyFilter,
    EnvoyFilterEcds,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "wasmplugin" => Ok(Format::WasmPlugin),
            "trafficextension" => Ok(Format::TrafficExtension),
            "envoyfilter" => Ok(Format::EnvoyFilter),
            "envoyfilter-ecds" => Ok(Format::EnvoyFilterEcds),
            other => Err(format!(
                "--format {other:?}: expected wasmplugin, trafficextension, envoyfilter or envoyfilter-ecds"
            )),
        }
    }
}

/// `-o yaml|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Yaml,
    Json,
}

/// Everything `generate` needs besides the resources.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// `oci://REF` (or `http(s)://`, `file://`) of the wasmesh module, for the formats the
    /// istio-agent fetches (WasmPlugin, TrafficExtension, EnvoyFilter ECDS).
    pub image: Option<String>,
    /// For `oci://`: the image *manifest* digest (`wasmeshctl image push` prints it); for
    /// `http(s)://`: the sha256 of the module bytes.
    pub sha256: Option<String>,
    /// Inline EnvoyFilter: where Envoy itself downloads the module (`http(s)://host:port/...`,
    /// e.g. `wasmeshctl serve`'s `/wasm/wasmesh.wasm`).
    pub module_url: Option<String>,
    /// Inline EnvoyFilter: sha256 of the module bytes (Envoy refuses remote code without it).
    pub module_sha256: Option<String>,
    pub image_pull_policy: String,
    pub mesh: MeshConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::WasmPlugin,
            image: None,
            sha256: None,
            module_url: None,
            module_sha256: None,
            image_pull_policy: "IfNotPresent".into(),
            mesh: MeshConfig::default(),
        }
    }
}

/// The generated objects (Kubernetes JSON) and notes for stderr.
#[derive(Debug, Clone, Default)]
pub struct Generated {
    pub objects: Vec<Value>,
    pub notes: Vec<String>,
}

/// Istio's plugin phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Authn,
    Authz,
    Stats,
}

/// Where a plugin attaches (EnvoyFilter `match.context`, WasmPlugin `match.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    SidecarInbound,
    SidecarOutbound,
    Gateway,
}

impl Context {
    fn istio(self) -> &'static str {
        match self {
            Context::SidecarInbound => "SIDECAR_INBOUND",
            Context::SidecarOutbound => "SIDECAR_OUTBOUND",
            Context::Gateway => "GATEWAY",
        }
    }
}

/// One wasm plugin instance to attach: what every output format is made from.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// Kubernetes name (`wasmesh-authz`, `wasmesh-authz-ingressgateway`...).
    pub name: String,
    /// Envoy `root_id`, the filter inside the one wasmesh module (C3).
    pub root_id: &'static str,
    pub phase: Phase,
    pub priority: i32,
    pub fail_open: bool,
    /// NETWORK (L4) plugin instead of HTTP.
    pub network: bool,
    /// Gateway pods' labels (Istio `Gateway` `spec.selector`); `None` = every workload.
    pub selector: Option<BTreeMap<String, String>>,
    /// A Kubernetes Gateway API gateway `(namespace, name)` the plugin attaches to by
    /// `targetRefs` (in that namespace: Istio refuses cross-namespace references).
    pub target_gateway: Option<(String, String)>,
    /// Listener kinds and ports: (context, ports; empty = every port).
    pub attach: Vec<(Context, Vec<u32>)>,
    /// The pluginConfig (C2: no `workload`, with `mesh`).
    pub config: Value,
}

const PRIORITY_FIRST: i32 = 1000;
const PRIORITY_SECOND: i32 = 900;

/// The wasm Envoy type URLs.
pub const HTTP_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
pub const NETWORK_WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// One VM per worker for every wasmesh filter of a listener (they share the module, C3).
pub const VM_ID: &str = "wasmesh";

/// The `mesh` object of every pluginConfig (C2).
pub fn mesh_json(mesh: &MeshConfig) -> Value {
    json!({
        "trustDomain": mesh.trust_domain.clone().unwrap_or_else(|| "cluster.local".into()),
        "rootNamespace": root_namespace(mesh),
        "domainSuffix": wasmesh_istio::DEFAULT_DOMAIN_SUFFIX,
    })
}

fn root_namespace(mesh: &MeshConfig) -> String {
    mesh.root_namespace.clone().unwrap_or_else(|| wasmesh_istio::DEFAULT_ROOT_NAMESPACE.into())
}

/// A workload as a node-derived identity would be built (used to compile configs here).
fn workload_for(
    mesh: &MeshConfig,
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    sa: &str,
    mode: ProxyMode,
) -> Workload {
    let mut w = Workload::new(name, namespace);
    w.labels = labels.clone();
    w.service_account = sa.to_string();
    w.mode = mode;
    if let Some(td) = &mesh.trust_domain {
        w.trust_domain = td.clone();
    }
    w.root_namespace = root_namespace(mesh);
    w
}

/// A gateway Istio `Gateway`s select, with the resource that named it (for errors and notes).
struct GatewayTarget {
    labels: BTreeMap<String, String>,
    /// Where its pods are: a WorkloadEntry with those labels, else the root namespace.
    namespace: String,
    service_account: String,
}

fn gateway_targets(resources: &Resources, mesh: &MeshConfig) -> Result<Vec<GatewayTarget>, Vec<Error>> {
    let mut errors = Vec::new();
    let mut out: Vec<GatewayTarget> = Vec::new();
    for (res, gw) in resources.gateways() {
        if gw.selector.is_empty() {
            errors.push(Error::at(
                res,
                "spec.selector",
                "empty: generate attaches gateway filters by the gateway pods' labels; name them (e.g. istio: ingressgateway)",
            ));
            continue;
        }
        let labels: BTreeMap<String, String> = gw.selector.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if out.iter().any(|g| g.labels == labels) {
            continue;
        }
        let entry =
            resources.workload_entries().find(|(_, we)| labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)));
        let (namespace, service_account) = match entry {
            Some((r, we)) => (r.namespace().to_string(), non_empty_or(&we.service_account, "default")),
            None => (root_namespace(mesh), "default".into()),
        };
        out.push(GatewayTarget { labels, namespace, service_account });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The sidecars the inputs know (WorkloadEntries not selected as gateways), or one unlabelled
/// workload per namespace that has resources when there are none: what configs are compiled for.
fn sidecar_workloads(resources: &Resources, mesh: &MeshConfig, gateways: &[GatewayTarget]) -> Vec<Workload> {
    let mut out = Vec::new();
    for (res, we) in resources.workload_entries() {
        let labels: BTreeMap<String, String> = we.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if gateways.iter().any(|g| g.labels.iter().all(|(k, v)| labels.get(k) == Some(v))) {
            continue;
        }
        let sa = non_empty_or(&we.service_account, "default");
        out.push(workload_for(mesh, res.name(), res.namespace(), &labels, &sa, ProxyMode::Sidecar));
    }
    if out.is_empty() {
        let mut namespaces: Vec<&str> = resources.items.iter().map(Resource::namespace).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            out.push(workload_for(mesh, "generate-check", ns, &BTreeMap::new(), "default", ProxyMode::Sidecar));
        }
    }
    out
}

/// The label Istio puts on the pods of a Kubernetes Gateway API gateway it deploys.
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Gateway API gateways that policies of these kinds attach to by `targetRef(s)`:
/// `(namespace, name)`, sorted.
fn target_gateways(resources: &Resources, kinds: &[Kind]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for r in resources.items.iter().filter(|r| kinds.contains(&r.kind())) {
        let refs: Vec<&wasmesh_istio::PolicyTargetReference> = match &r.spec {
            wasmesh_istio::Spec::AuthorizationPolicy(p) => p.target_ref.iter().chain(p.target_refs.iter()).collect(),
            wasmesh_istio::Spec::RequestAuthentication(p) => p.target_ref.iter().chain(p.target_refs.iter()).collect(),
            _ => Vec::new(),
        };
        for t in refs {
            let group_ok = t.group.is_empty() || t.group == "gateway.networking.k8s.io";
            if t.kind == "Gateway" && group_ok {
                out.push((r.namespace().to_string(), t.name.clone()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn gateway_api_workload(mesh: &MeshConfig, ns: &str, name: &str) -> Workload {
    let labels = BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), name.to_string())]);
    workload_for(mesh, name, ns, &labels, &format!("{name}-istio"), ProxyMode::Gateway)
}

fn non_empty_or(s: &str, default: &str) -> String {
    if s.is_empty() {
        default.to_string()
    } else {
        s.to_string()
    }
}

fn gateway_workload(mesh: &MeshConfig, g: &GatewayTarget) -> Workload {
    let name = g.labels.values().next().cloned().unwrap_or_else(|| "gateway".into());
    workload_for(mesh, &name, &g.namespace, &g.labels, &g.service_account, ProxyMode::Gateway)
}

/// Kubernetes name for a gateway variant: `<base>-<label values>`.
fn gateway_plugin_name(base: &str, g: &GatewayTarget) -> String {
    let values: Vec<&str> = g.labels.values().map(String::as_str).collect();
    dns_name(&format!("{base}-{}", values.join("-")))
}

/// A DNS-1123 label made of `s` (lower-case alphanumerics and `-`, at most 63 characters).
fn dns_name(s: &str) -> String {
    let mut name: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    name.truncate(63);
    name.trim_matches('-').to_string()
}

fn to_value<T: serde::Serialize>(what: &str, v: &T) -> Result<Value, Vec<Error>> {
    serde_json::to_value(v).map_err(|e| vec![Error::new(format!("{what} configuration: {e}"))])
}

/// C5: the filter config without `workload`, with `mesh`, minus per-listener fields.
fn plugin_config(mut v: Value, mesh: &MeshConfig, drop: &[&str]) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("workload");
        for d in drop {
            o.remove(*d);
        }
        o.insert("mesh".into(), mesh_json(mesh));
    }
    v
}

/// The pluginConfig as today's cores read it for one workload: `workload` (and what `drop`
/// removed, in `extra`) put back, `mesh` folded into the workload. Compiling this is compiling
/// exactly the resources and settings that ship.
fn for_workload(config: &Value, workload: &Workload, extra: &[(&str, Value)]) -> Result<Vec<u8>, Vec<Error>> {
    let mut v = config.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("mesh");
        o.insert("workload".into(), to_value("workload", workload)?);
        for (k, x) in extra {
            o.insert((*k).into(), x.clone());
        }
    }
    serde_json::to_vec(&v).map_err(|e| vec![Error::new(format!("configuration: {e}"))])
}

fn with_context(errors: Vec<Error>, plugin: &str, workload: &Workload) -> Vec<Error> {
    errors
        .into_iter()
        .map(|mut e| {
            e.message = format!(
                "{} (compiling {plugin} for {} {}/{})",
                e.message,
                match workload.mode {
                    ProxyMode::Gateway => "gateway",
                    ProxyMode::Sidecar => "workload",
                },
                workload.namespace,
                workload.name
            );
            e
        })
        .collect()
}

fn resources_json<'a>(items: impl Iterator<Item = &'a Resource>) -> Vec<Value> {
    crate::plugins::resources_json(items)
}

/// Whether an AuthorizationPolicy reads the physical peer address (`ipBlocks`, `source.ip`).
fn reads_peer_address(policy: &Value) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(o) => o.iter().any(|(k, x)| {
                k == "ipBlocks" || k == "notIpBlocks" || (k == "key" && x.as_str() == Some("source.ip")) || walk(x)
            }),
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    walk(policy.get("spec").unwrap_or(&Value::Null))
}

/// TCP service ports: (inbound target ports, outbound service ports), sorted.
fn tcp_ports(resources: &Resources) -> (Vec<u32>, Vec<u32>) {
    let mut inbound = Vec::new();
    let mut outbound = Vec::new();
    for (_, se) in resources.service_entries() {
        for p in &se.ports {
            if p.port_protocol() == PortProtocol::Tcp {
                outbound.push(p.number);
                if se.workload_selector.is_some() || !se.endpoints.is_empty() {
                    inbound.push(p.target_port.unwrap_or(p.number));
                }
            }
        }
    }
    inbound.sort_unstable();
    inbound.dedup();
    outbound.sort_unstable();
    outbound.dedup();
    (inbound, outbound)
}

/// Works out every plugin instance the resources need. Errors name file, resource and field.
pub fn plugins(resources: &Resources, mesh: &MeshConfig, notes: &mut Vec<String>) -> Result<Vec<Plugin>, Vec<Error>> {
    // Everything `wasmeshctl validate` refuses for the kinds the filters read.
    let mut errors = wasmesh_authz::peer_authentication::validate_all(resources);
    errors.extend(crate::plugins::authz::validate(resources));
    errors.extend(wasmesh_authn::validate(resources));
    errors.extend(crate::plugins::stats::validate(resources));
    errors.extend(crate::validate::refusals(resources));
    let gateways = match gateway_targets(resources, mesh) {
        Ok(g) => g,
        Err(e) => {
            errors.extend(e);
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let sidecars = sidecar_workloads(resources, mesh, &gateways);
    let mut out = Vec::new();
    stats_plugins(resources, mesh, &sidecars, &gateways, &mut out)?;
    authz_plugins(resources, mesh, &sidecars, &gateways, &mut out)?;
    authn_plugins(resources, mesh, &sidecars, &gateways, &mut out)?;
    notes.push(
        "note: wasmesh.stats reports Istio's standard metrics under Istio's names and labels (the \
         tag extraction Istio's proxy bootstrap has); where Istio's own stats filter also runs, each \
         request is counted twice: disable one (e.g. Telemetry metrics for the prometheus provider)"
            .into(),
    );
    if let Some(policy) = mesh.outbound_traffic_policy {
        notes.push(outbound_policy_note(policy.mode));
    }
    if resources.of_kind(Kind::VirtualService).next().is_some() {
        notes.push(
            "note: the router filter is not generated for Istio: istiod already routes with the same \
             VirtualServices, and wasmesh's router only takes effect where a route reads its \
             x-wasmesh-cluster header (use `wasmeshctl envoy` for Envoys without istiod)"
                .into(),
        );
    }
    // Stable order: phase as Istio runs them, then priority.
    let rank = |p: &Plugin| {
        (
            match p.phase {
                Phase::Authn => 0,
                Phase::Authz => 1,
                Phase::Stats => 2,
            },
            -p.priority,
        )
    };
    out.sort_by_key(|p| rank(p));
    Ok(out)
}

/// `meshConfig.outboundTrafficPolicy` under Istio: istiod writes the Envoy side from Istio's own
/// mesh config, and no generated plugin reads the policy. wasmesh.stats stays consistent with it
/// by reading istiod's names: the route `block_all` (REGISTRY_ONLY's 502) and `allow_any`, the
/// clusters `BlackHoleCluster` and `PassthroughCluster` (TCP fallthrough), reported as
/// `destination_service_name="BlackHoleCluster"`/`"PassthroughCluster"` as Istio's own stats do.
fn outbound_policy_note(mode: wasmesh_router::OutboundMode) -> String {
    let (cluster, route) = mode.catch_all();
    let name = serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    format!(
        "note: meshConfig.outboundTrafficPolicy {name} is carried out by istiod, from Istio's own mesh config \
         (set the same value there): an unknown host's HTTP request takes istiod's route `{route}`, its \
         TCP/TLS connection the fallthrough chain to {cluster}; no generated plugin needs the policy, and \
         wasmesh.stats reports both as destination_service_name=\"{cluster}\" from istiod's route and \
         cluster names, as Istio's stats do"
    )
}

fn stats_plugins(
    resources: &Resources,
    mesh: &MeshConfig,
    sidecars: &[Workload],
    gateways: &[GatewayTarget],
    out: &mut Vec<Plugin>,
) -> Result<(), Vec<Error>> {
    let telemetries: Vec<&Resource> = resources.of_kind(Kind::Telemetry).collect();
    let any = workload_for(mesh, "any", &root_namespace(mesh), &BTreeMap::new(), "default", ProxyMode::Sidecar);
    let cfg = StatsConfig {
        workload: None,
        mesh: None,
        direction: None,
        protocol: ListenerProtocol::Http,
        resources: resources_json(telemetries.iter().copied()),
        services: Vec::new(),
        max_label_sets: wasmesh_stats::DEFAULT_MAX_LABEL_SETS,
        metadata_exchange: true,
        external_hosts: crate::plugins::stats::external_hosts(resources, &any),
        peer_exchange: false,
        publish_peer: false,
        // Under Istio the filter removes the request's exchange headers itself.
        exchange_headers_removed: false,
        // istiod writes Istio's workload metadata on every mesh endpoint: the fallback is read.
        no_endpoint_metadata: false,
        cluster_header: None,
        // istiod writes the routes: the filter adds the exchange headers itself.
        exchange_headers_added: false,
        // istiod's secrets (and Sidecar ingress TLS) are not known here: the filter reads it.
        local_principal: None,
    };
    // `direction` and the inbound `services` are derived at run time (C2).
    let config = plugin_config(to_value("stats", &cfg)?, mesh, &["direction", "services"]);
    let (tcp_in, tcp_out) = tcp_ports(resources);
    let mut tcp_config = config.clone();
    tcp_config["protocol"] = json!("tcp");
    let mut targets: Vec<(Workload, StatsDirection)> = Vec::new();
    for w in sidecars {
        targets.push((w.clone(), StatsDirection::Inbound));
        targets.push((w.clone(), StatsDirection::Outbound));
    }
    for g in gateways {
        targets.push((gateway_workload(mesh, g), StatsDirection::Gateway));
    }
    for (w, d) in &targets {
        for (c, root) in [(&config, STATS_ROOT), (&tcp_config, STATS_TCP_ROOT)] {
            let bytes = for_workload(c, w, &[("direction", to_value("stats", d)?)])?;
            StatsConfig::compile_json(&bytes).map_err(|e| with_context(e.0, root, w))?;
        }
    }
    out.push(Plugin {
        name: "wasmesh-stats".into(),
        root_id: STATS_ROOT,
        phase: Phase::Stats,
        priority: PRIORITY_FIRST,
        fail_open: true,
        network: false,
        selector: None,
        target_gateway: None,
        attach: vec![(Context::SidecarInbound, vec![]), (Context::SidecarOutbound, vec![]), (Context::Gateway, vec![])],
        config,
    });
    if !tcp_in.is_empty() || !tcp_out.is_empty() {
        let mut attach = Vec::new();
        if !tcp_in.is_empty() {
            attach.push((Context::SidecarInbound, tcp_in));
        }
        if !tcp_out.is_empty() {
            attach.push((Context::SidecarOutbound, tcp_out));
        }
        out.push(Plugin {
            name: "wasmesh-stats-tcp".into(),
            root_id: STATS_TCP_ROOT,
            phase: Phase::Stats,
            priority: PRIORITY_FIRST,
            fail_open: true,
            network: true,
            selector: None,
            target_gateway: None,
            attach,
            config: tcp_config,
        });
    }
    Ok(())
}

fn authz_config(resources: &[&Resource], mesh: &MeshConfig, stage: Stage) -> Result<Value, Vec<Error>> {
    let cfg = AuthzConfig {
        workload: None,
        mesh: None,
        resources: resources_json(resources.iter().copied()),
        trust_domain_aliases: mesh.trust_domain_aliases.clone(),
        extension_providers: mesh.authz_extension_providers(),
        stage,
        multiple_custom_providers: crate::plugins::authz::multiple_custom_providers(),
        decision_filter_state: true,
        // Under Istio, workload certificates come from istiod's CA (or a CA plugged into it,
        // istio-csr included), which issues exactly one URI SAN, the SPIFFE identity: the first SAN
        // Envoy hands a network filter is the whole list. Without this, the TCP filter, which
        // cannot see the other SANs, would fail closed on every connection a principal rule misses
        // (a TCP DENY on one principal would refuse every other client). HTTP reads every SAN from
        // the x-forwarded-client-cert istiod's inbound listeners set.
        single_san_peers: stage == Stage::Tcp,
        request_body: matches!(stage, Stage::Custom | Stage::All)
            && !body_policies(resources.iter().copied(), mesh).is_empty(),
        // The manifests also serve Envoys whose listeners nobody wrote from PeerAuthentication
        // (Envoy Gateway, EnvoyFilter on plain Envoy): the filter enforces it itself.
        peer_authentication_by_transport: false,
    };
    Ok(plugin_config(to_value("authz", &cfg)?, mesh, &[]))
}

/// The CUSTOM AuthorizationPolicies among `resources` whose provider has
/// `includeRequestBodyInCheck`, with the provider's place in meshConfig and its kind.
fn body_policies<'a>(resources: impl Iterator<Item = &'a Resource>, mesh: &MeshConfig) -> Vec<(&'a Resource, String)> {
    let mut out = Vec::new();
    for r in resources {
        let wasmesh_istio::Spec::AuthorizationPolicy(ap) = &r.spec else { continue };
        if ap.action != Action::Custom {
            continue;
        }
        let Some(name) = ap.provider.as_ref().map(|p| p.name.as_str()) else { continue };
        for (i, p) in mesh.extension_providers.iter().enumerate() {
            if p.get("name").and_then(Value::as_str) != Some(name) {
                continue;
            }
            for kind in ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"] {
                if p.get(kind).and_then(|k| k.get("includeRequestBodyInCheck")).is_some() {
                    out.push((r, format!("meshConfig extensionProviders[{i}].{kind}.includeRequestBodyInCheck")));
                }
            }
        }
    }
    out
}

/// Compiles an authz pluginConfig for each workload; true when some policy applies to one.
fn authz_applies(config: &Value, root: &str, workloads: &[Workload]) -> Result<bool, Vec<Error>> {
    let mut applies = false;
    for w in workloads {
        let bytes = for_workload(config, w, &[])?;
        let compiled = AuthzConfig::compile_json(&bytes).map_err(|e| with_context(e.0, root, w))?;
        applies |= !compiled.is_empty();
    }
    Ok(applies)
}

fn authz_plugins(
    resources: &Resources,
    mesh: &MeshConfig,
    sidecars: &[Workload],
    gateways: &[GatewayTarget],
    out: &mut Vec<Plugin>,
) -> Result<(), Vec<Error>> {
    let policies: Vec<&Resource> = resources.of_kind(Kind::AuthorizationPolicy).collect();
    let peer_auth: Vec<&Resource> = resources.of_kind(Kind::PeerAuthentication).collect();
    if policies.is_empty() && peer_auth.is_empty() {
        return Ok(());
    }
    let has_custom = resources.authorization_policies().any(|(_, p)| p.action == Action::Custom);
    let has_rbac = resources.authorization_policies().any(|(_, p)| p.action != Action::Custom);
    let policy_json = resources_json(policies.iter().copied());
    let reads_peer = policy_json.iter().any(reads_peer_address);
    let sidecar_resources: Vec<&Resource> = policies.iter().chain(peer_auth.iter()).copied().collect();
    let (tcp_in, _) = tcp_ports(resources);

    // Sidecar inbound (PeerAuthentication applies there only, as in Istio).
    let mut stages = Vec::new();
    if has_custom {
        stages.push((Stage::Custom, CUSTOM_FILTER_NAME, "wasmesh-authz-custom", Phase::Authn, PRIORITY_FIRST));
    }
    if has_rbac || !peer_auth.is_empty() {
        stages.push((Stage::Rbac, AUTHZ_ROOT, "wasmesh-authz", Phase::Authz, PRIORITY_FIRST));
    }
    // Sidecars: always, when the kinds exist. The inputs rarely list every pod (WorkloadEntries
    // are for VMs), so what applies where is left to the filter; the known workloads are only
    // what the configuration is compiled for.
    for &(stage, root, name, phase, priority) in &stages {
        let config = authz_config(&sidecar_resources, mesh, stage)?;
        authz_applies(&config, root, sidecars)?;
        out.push(Plugin {
            name: name.into(),
            root_id: root,
            phase,
            priority,
            fail_open: false,
            network: false,
            selector: None,
            target_gateway: None,
            attach: vec![(Context::SidecarInbound, vec![])],
            config,
        });
    }
    if !tcp_in.is_empty() {
        let config = authz_config(&sidecar_resources, mesh, Stage::Tcp)?;
        authz_applies(&config, AUTHZ_TCP_ROOT, sidecars)?;
        out.push(Plugin {
            name: "wasmesh-authz-tcp".into(),
            root_id: AUTHZ_TCP_ROOT,
            phase: Phase::Authz,
            priority: PRIORITY_FIRST,
            fail_open: false,
            network: true,
            selector: None,
            target_gateway: None,
            attach: vec![(Context::SidecarInbound, tcp_in)],
            config,
        });
    }

    // Gateways: AuthorizationPolicies only.
    let mut gateway_reads_peer = false;
    for g in gateways {
        let w = gateway_workload(mesh, g);
        for &(stage, root, name, phase, priority) in &stages {
            if policies.is_empty() {
                continue;
            }
            let config = authz_config(&policies, mesh, stage)?;
            if authz_applies(&config, root, std::slice::from_ref(&w))? {
                gateway_reads_peer |= reads_peer;
                out.push(Plugin {
                    name: gateway_plugin_name(name, g),
                    root_id: root,
                    phase,
                    priority,
                    fail_open: false,
                    network: false,
                    selector: Some(g.labels.clone()),
                    target_gateway: None,
                    attach: vec![(Context::Gateway, vec![])],
                    config,
                });
            }
        }
    }
    for (ns, gw) in target_gateways(resources, &[Kind::AuthorizationPolicy]) {
        let w = gateway_api_workload(mesh, &ns, &gw);
        for &(stage, root, name, phase, priority) in &stages {
            let config = authz_config(&policies, mesh, stage)?;
            if authz_applies(&config, root, std::slice::from_ref(&w))? {
                gateway_reads_peer |= reads_peer;
                out.push(Plugin {
                    name: dns_name(&format!("{name}-{gw}")),
                    root_id: root,
                    phase,
                    priority,
                    fail_open: false,
                    network: false,
                    selector: None,
                    target_gateway: Some((ns.clone(), gw.clone())),
                    attach: vec![(Context::Gateway, vec![])],
                    config,
                });
            }
        }
    }
    if reads_peer {
        let mut attach = vec![(Context::SidecarInbound, vec![])];
        if gateway_reads_peer {
            attach.push((Context::Gateway, vec![]));
        }
        out.push(Plugin {
            name: "wasmesh-authz-peer-address".into(),
            root_id: PEER_ADDRESS_FILTER_NAME,
            phase: Phase::Authz,
            priority: PRIORITY_FIRST,
            fail_open: false,
            network: true,
            selector: None,
            target_gateway: None,
            attach,
            config: json!({"role": "peerAddress"}),
        });
    }
    Ok(())
}

fn authn_plugins(
    resources: &Resources,
    mesh: &MeshConfig,
    sidecars: &[Workload],
    gateways: &[GatewayTarget],
    out: &mut Vec<Plugin>,
) -> Result<(), Vec<Error>> {
    let ras: Vec<&Resource> =
        resources.request_authentications().filter(|(_, ra)| !ra.jwt_rules.is_empty()).map(|(r, _)| r).collect();
    if ras.is_empty() {
        return Ok(());
    }
    let mut cfg = AuthnConfig::new(Workload::new("any", "any"));
    cfg.resources = resources_json(ras.iter().copied());
    cfg.blocked_cidrs_in_jwks_uris = crate::validate::blocked_cidrs_in_jwks_uris().map_err(|e| vec![e])?.blocks();
    let config = plugin_config(to_value("authn", &cfg)?, mesh, &[]);
    let applies = |ws: &[Workload]| -> Result<bool, Vec<Error>> {
        let mut any = false;
        for w in ws {
            let bytes = for_workload(&config, w, &[])?;
            AuthnConfig::compile_json(&bytes).map_err(|e| with_context(e.0, AUTHN_ROOT, w))?;
            any |= resources
                .request_authentications()
                .any(|(r, ra)| !ra.jwt_rules.is_empty() && wasmesh_authn::config::selects(w, r, ra));
        }
        Ok(any)
    };
    applies(sidecars)?;
    out.push(Plugin {
        name: "wasmesh-authn".into(),
        root_id: AUTHN_ROOT,
        phase: Phase::Authn,
        priority: PRIORITY_SECOND,
        fail_open: false,
        network: false,
        selector: None,
        target_gateway: None,
        attach: vec![(Context::SidecarInbound, vec![])],
        config: config.clone(),
    });
    for g in gateways {
        let w = gateway_workload(mesh, g);
        if applies(std::slice::from_ref(&w))? {
            out.push(Plugin {
                name: gateway_plugin_name("wasmesh-authn", g),
                root_id: AUTHN_ROOT,
                phase: Phase::Authn,
                priority: PRIORITY_SECOND,
                fail_open: false,
                network: false,
                selector: Some(g.labels.clone()),
                target_gateway: None,
                attach: vec![(Context::Gateway, vec![])],
                config: config.clone(),
            });
        }
    }
    for (ns, gw) in target_gateways(resources, &[Kind::RequestAuthentication]) {
        let w = gateway_api_workload(mesh, &ns, &gw);
        if applies(std::slice::from_ref(&w))? {
            out.push(Plugin {
                name: dns_name(&format!("wasmesh-authn-{gw}")),
                root_id: AUTHN_ROOT,
                phase: Phase::Authn,
                priority: PRIORITY_SECOND,
                fail_open: false,
                network: false,
                selector: None,
                target_gateway: Some((ns.clone(), gw.clone())),
                attach: vec![(Context::Gateway, vec![])],
                config: config.clone(),
            });
        }
    }
    Ok(())
}

/// The JWKS servers the authn filter fetches from (one Envoy cluster each, added by an
/// EnvoyFilter CLUSTER patch: Istio has no cluster of that name).
fn jwks_clusters(resources: &Resources) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for (_, ra) in resources.request_authentications() {
        for rule in &ra.jwt_rules {
            if rule.jwks.as_deref().is_some_and(|s| !s.is_empty()) {
                continue;
            }
            let uri = match rule.jwks_uri().filter(|s| !s.is_empty()) {
                Some(u) => u.to_string(),
                None => wasmesh_authn::config::discovery_uri(&rule.issuer),
            };
            if let Ok(ep) = wasmesh_authn::parse_jwks_uri(&uri) {
                let c = crate::plugins::authn::jwks_cluster(&ep);
                if !out.iter().any(|o| o["name"] == c["name"]) {
                    out.push(c);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output formats

fn metadata(name: &str, namespace: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": "wasmeshctl", "app.kubernetes.io/part-of": "wasmesh"},
    })
}

/// The phase's name; WasmPlugin and TrafficExtension spell AUTHN/AUTHZ/STATS the same (only
/// their unspecified values differ, which wasmesh never emits).
fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Authn => "AUTHN",
        Phase::Authz => "AUTHZ",
        Phase::Stats => "STATS",
    }
}

/// WasmPlugin/TrafficExtension `match`: SERVER for sidecar inbound, CLIENT for outbound and
/// gateways; omitted when the plugin attaches everywhere on every port.
fn traffic_selectors(p: &Plugin) -> Option<Value> {
    let every = p.attach.len() == 3 && p.attach.iter().all(|(_, ports)| ports.is_empty());
    if every {
        return None;
    }
    let mut out: Vec<Value> = Vec::new();
    for (ctx, ports) in &p.attach {
        let mode = match ctx {
            Context::SidecarInbound => "SERVER",
            Context::SidecarOutbound | Context::Gateway => "CLIENT",
        };
        let mut m = json!({"mode": mode});
        if !ports.is_empty() {
            m["ports"] = json!(ports.iter().map(|n| json!({"number": n})).collect::<Vec<_>>());
        }
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Some(Value::Array(out))
}

fn wasm_fields(p: &Plugin, opts: &Options, url: &str) -> Map<String, Value> {
    let mut w = Map::new();
    w.insert("url".into(), json!(url));
    if let Some(sha) = &opts.sha256 {
        w.insert("sha256".into(), json!(sha));
    }
    w.insert("imagePullPolicy".into(), json!(opts.image_pull_policy));
    w.insert("pluginName".into(), json!(p.root_id));
    w.insert("failStrategy".into(), json!(if p.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSE" }));
    w.insert("type".into(), json!(if p.network { "NETWORK" } else { "HTTP" }));
    w.insert("pluginConfig".into(), p.config.clone());
    w
}

fn gateway_target_refs(p: &Plugin) -> Option<Value> {
    p.target_gateway
        .as_ref()
        .map(|(_, name)| json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}]))
}

/// The plugin's namespace: the Gateway API gateway's (targetRefs are same-namespace), else root.
fn plugin_namespace<'a>(p: &'a Plugin, root: &'a str) -> &'a str {
    p.target_gateway.as_ref().map(|(ns, _)| ns.as_str()).unwrap_or(root)
}

fn attachment(p: &Plugin, spec: &mut Map<String, Value>) {
    if let Some(sel) = &p.selector {
        spec.insert("selector".into(), json!({"matchLabels": sel}));
    }
    if let Some(t) = gateway_target_refs(p) {
        spec.insert("targetRefs".into(), t);
    }
}

fn wasm_plugin(p: &Plugin, opts: &Options, url: &str, namespace: &str) -> Value {
    let mut spec = Map::new();
    attachment(p, &mut spec);
    spec.insert("phase".into(), json!(phase_name(p.phase)));
    spec.insert("priority".into(), json!(p.priority));
    if let Some(m) = traffic_selectors(p) {
        spec.insert("match".into(), m);
    }
    spec.extend(wasm_fields(p, opts, url));
    json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin", "metadata": metadata(&p.name, namespace), "spec": spec})
}

fn traffic_extension(p: &Plugin, opts: &Options, url: &str, namespace: &str) -> Value {
    let mut spec = Map::new();
    attachment(p, &mut spec);
    spec.insert("phase".into(), json!(phase_name(p.phase)));
    spec.insert("priority".into(), json!(p.priority));
    if let Some(m) = traffic_selectors(p) {
        spec.insert("match".into(), m);
    }
    spec.insert("wasm".into(), Value::Object(wasm_fields(p, opts, url)));
    json!({"apiVersion": "extensions.istio.io/v1alpha1", "kind": "TrafficExtension", "metadata": metadata(&p.name, namespace), "spec": spec})
}

/// Envoy's `PluginConfig` for a plugin, with the given `vm_config.code`.
pub fn envoy_plugin_config(p: &Plugin, namespace: &str, code: Value) -> Value {
    let mut config = json!({
        "name": format!("{namespace}.{}", p.name),
        "root_id": p.root_id,
        "failure_policy": if p.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSED" },
        "vm_config": {"vm_id": VM_ID, "runtime": "envoy.wasm.runtime.v8", "code": code},
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": serde_json::to_string(&p.config).unwrap_or_default(),
        },
    });
    if crate::plugins::authz::needs_request_body(&p.config) {
        config["allow_on_headers_stop_iteration"] = json!(true);
    }
    config
}

/// The Envoy typed config of a plugin (HTTP or network Wasm filter).
pub fn envoy_wasm_filter(p: &Plugin, namespace: &str, code: Value) -> Value {
    json!({
        "@type": if p.network { NETWORK_WASM_TYPE } else { HTTP_WASM_TYPE },
        "config": envoy_plugin_config(p, namespace, code),
    })
}

/// Where a module URL's server is: (cluster name, host, port, tls).
fn module_server(url: &str) -> Result<(String, String, u16, bool), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("--module-url {url:?}: expected http://HOST:PORT/PATH or https://… (Envoy downloads the module itself; oci:// only works through the istio-agent: use --format wasmplugin or envoyfilter-ecds)"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(|c| c == '[' || c == ']').to_string(),
            p.parse::<u16>().map_err(|_| format!("--module-url {url:?}: port {p:?} is not a number"))?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("--module-url {url:?}: no host"));
    }
    Ok((format!("wasmesh-module|{host}|{port}"), host, port, tls))
}

/// The CLUSTER an inline EnvoyFilter's remote code is fetched through.
pub fn module_cluster(url: &str) -> Result<Value, String> {
    let (name, host, port, tls) = module_server(url)?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let mut c = json!({
        "name": name,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    });
    if tls {
        let mut ctx = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"validation_context": {"trusted_ca": {"filename": crate::plugins::authn::SYSTEM_CA_BUNDLE}}},
        });
        if !is_ip {
            ctx["sni"] = json!(host);
        }
        c["transport_socket"] = json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx});
    }
    Ok(c)
}

/// Remote code Envoy fetches itself (inline EnvoyFilter).
pub fn remote_code(url: &str, sha256: &str) -> Result<Value, String> {
    let (cluster, ..) = module_server(url)?;
    Ok(json!({"remote": {
        "http_uri": {"uri": url, "cluster": cluster, "timeout": "30s"},
        "sha256": sha256,
        "retry_policy": {"num_retries": 5},
    }}))
}

/// Remote code the istio-agent fetches and rewrites to a local file (ECDS), as istiod writes it.
pub fn agent_code(url: &str, sha256: Option<&str>) -> Value {
    let mut remote = json!({"http_uri": {"uri": url, "cluster": "_", "timeout": "30s"}});
    if let Some(s) = sha256 {
        remote["sha256"] = json!(s);
    }
    json!({"remote": remote})
}

fn listener_match(ctx: Context, port: Option<u32>, network: bool, terminal: &str) -> Value {
    let mut filter = json!({"name": terminal});
    if !network {
        filter["subFilter"] = json!({"name": "envoy.filters.http.router"});
    }
    let mut listener = json!({"filterChain": {"filter": filter}});
    if let Some(port) = port {
        match ctx {
            // One virtual inbound listener; its filter chains are per destination port.
            Context::SidecarInbound => listener["filterChain"]["destinationPort"] = json!(port),
            _ => listener["portNumber"] = json!(port),
        }
    }
    json!({"context": ctx.istio(), "listener": listener})
}

/// The HTTP_FILTER / NETWORK_FILTER patches inserting one filter value in every place the
/// plugin attaches.
fn insert_patches(p: &Plugin, value: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for (ctx, ports) in &p.attach {
        let ports: Vec<Option<u32>> =
            if ports.is_empty() { vec![None] } else { ports.iter().map(|n| Some(*n)).collect() };
        for port in ports {
            // INSERT_BEFORE the matched sub-filter (HTTP: the router) or filter (network: the
            // terminal filter, so network plugins run before the HCM / tcp_proxy).
            let (apply_to, terminal) = match (p.network, p.root_id == PEER_ADDRESS_FILTER_NAME) {
                (false, _) => ("HTTP_FILTER", "envoy.filters.network.http_connection_manager"),
                (true, true) => ("NETWORK_FILTER", "envoy.filters.network.http_connection_manager"),
                (true, false) => ("NETWORK_FILTER", "envoy.filters.network.tcp_proxy"),
            };
            out.push(json!({
                "applyTo": apply_to,
                "match": listener_match(*ctx, port, p.network, terminal),
                "patch": {"operation": "INSERT_BEFORE", "value": value.clone()},
            }));
        }
    }
    out
}

fn envoy_filter(
    name: &str,
    namespace: &str,
    plugin: Option<&Plugin>,
    priority: Option<usize>,
    patches: Vec<Value>,
) -> Value {
    let mut spec = Map::new();
    if let Some(sel) = plugin.and_then(|p| p.selector.as_ref()) {
        spec.insert("workloadSelector".into(), json!({"labels": sel}));
    }
    if let Some(t) = plugin.and_then(gateway_target_refs) {
        spec.insert("targetRefs".into(), t);
    }
    if let Some(p) = priority {
        // Patch sets apply in ascending priority; each INSERT_BEFORE the router lands after
        // the previous one, so this keeps Istio's phase order between the wasmesh filters.
        spec.insert("priority".into(), json!(p));
    }
    spec.insert("configPatches".into(), Value::Array(patches));
    json!({"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": metadata(name, namespace), "spec": spec})
}

fn cluster_patches(clusters: &[Value]) -> Vec<Value> {
    clusters
        .iter()
        .map(|c| json!({"applyTo": "CLUSTER", "match": {"context": "ANY"}, "patch": {"operation": "ADD", "value": c}}))
        .collect()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_options(opts: &Options) -> Result<(), String> {
    for (flag, v) in [("--sha256", &opts.sha256), ("--module-sha256", &opts.module_sha256)] {
        if let Some(s) = v {
            if !is_hex64(s) {
                return Err(format!(
                    "{flag} {s:?}: expected 64 lower-case hex digits (Istio's sha256 pattern ^[a-f0-9]{{64}}$)"
                ));
            }
        }
    }
    if !["IfNotPresent", "Always"].contains(&opts.image_pull_policy.as_str()) {
        return Err(format!("--image-pull-policy {:?}: expected IfNotPresent or Always", opts.image_pull_policy));
    }
    match opts.format {
        Format::EnvoyFilter => {
            if opts.module_url.is_none() {
                return Err("--format envoyfilter needs --module-url http://HOST:PORT/PATH (where Envoy downloads the module, e.g. `wasmeshctl serve`'s /wasm/wasmesh.wasm) and --module-sha256 (sha256sum of the .wasm)".into());
            }
            if opts.module_sha256.is_none() {
                return Err("--format envoyfilter needs --module-sha256 HEX: Envoy refuses remote code without the sha256 of the .wasm bytes (`sha256sum wasmesh.wasm`)".into());
            }
            if opts.sha256.is_some() {
                return Err("--sha256 is the OCI manifest digest the istio-agent checks; --format envoyfilter has Envoy download the module itself: give --module-sha256 (sha256 of the .wasm bytes) instead".into());
            }
        }
        _ => {
            let image = opts.image.as_deref().ok_or_else(|| {
                "--image oci://REGISTRY/REPO:TAG is required (the wasmesh image `wasmeshctl image push` published)"
                    .to_string()
            })?;
            let scheme_ok = ["oci://", "http://", "https://", "file://"].iter().any(|s| image.starts_with(s));
            if !scheme_ok {
                return Err(format!(
                    "--image {image:?}: expected oci://, http://, https:// or file:// (Istio's WasmPlugin url schemes)"
                ));
            }
            if let (Some(pinned), Some(sha)) = (image.split_once("@sha256:").map(|(_, d)| d), &opts.sha256) {
                if pinned != sha {
                    return Err(format!(
                        "--image pins digest {pinned} but --sha256 is {sha}: Istio requires them to match"
                    ));
                }
            }
            if opts.module_url.is_some() || opts.module_sha256.is_some() {
                return Err("--module-url/--module-sha256 are for --format envoyfilter (Envoy downloads the module); this format has the istio-agent pull --image".into());
            }
        }
    }
    Ok(())
}

/// The resources for `opts.format`, in apply order.
pub fn generate(resources: &Resources, opts: &Options) -> Result<Generated, Vec<Error>> {
    check_options(opts).map_err(|e| vec![Error::new(e)])?;
    let mut notes = Vec::new();
    let plugins = plugins(resources, &opts.mesh, &mut notes)?;
    let ns = root_namespace(&opts.mesh);
    let mut objects = Vec::new();
    let jwks = if plugins.iter().any(|p| p.root_id == AUTHN_ROOT) { jwks_clusters(resources) } else { Vec::new() };
    match opts.format {
        Format::WasmPlugin | Format::TrafficExtension => {
            // Istio's WasmPlugin (and TrafficExtension) has no field for Envoy's
            // `allow_on_headers_stop_iteration`, without which the filter gets no body while it
            // holds the headers: refused, naming the policy and the provider field.
            let body = body_policies(resources.of_kind(Kind::AuthorizationPolicy), &opts.mesh);
            if !body.is_empty() {
                return Err(body
                    .into_iter()
                    .map(|(r, field)| {
                        Error::at(r, "spec.provider.name", format!(
                            "{field}: --format wasmplugin/trafficextension cannot carry it: Istio's WasmPlugin has no field for Envoy's PluginConfig allow_on_headers_stop_iteration, without which a wasm filter gets no request body while it holds the headers; use --format envoyfilter or envoyfilter-ecds (which set it), or wasmeshctl envoy"
                        ))
                    })
                    .collect());
            }
            let url = opts.image.as_deref().unwrap_or_default();
            for p in &plugins {
                objects.push(if opts.format == Format::WasmPlugin {
                    wasm_plugin(p, opts, url, plugin_namespace(p, &ns))
                } else {
                    traffic_extension(p, opts, url, plugin_namespace(p, &ns))
                });
            }
        }
        Format::EnvoyFilter => {
            let url = opts.module_url.as_deref().unwrap_or_default();
            let sha = opts.module_sha256.as_deref().unwrap_or_default();
            let code = remote_code(url, sha).map_err(|e| vec![Error::new(e)])?;
            let cluster = module_cluster(url).map_err(|e| vec![Error::new(e)])?;
            objects.push(envoy_filter("wasmesh-module-server", &ns, None, None, cluster_patches(&[cluster])));
            for (i, p) in plugins.iter().enumerate() {
                let pns = plugin_namespace(p, &ns);
                let value = json!({"name": p.root_id, "typed_config": envoy_wasm_filter(p, pns, code.clone())});
                objects.push(envoy_filter(&p.name, pns, Some(p), Some(i), insert_patches(p, &value)));
            }
        }
        Format::EnvoyFilterEcds => {
            let network: Vec<&Plugin> = plugins.iter().filter(|p| p.network).collect();
            if !network.is_empty() {
                return Err(network.iter().map(|p| ecds_network_error(resources, p)).collect());
            }
            let url = opts.image.as_deref().unwrap_or_default();
            for (i, p) in plugins.iter().enumerate() {
                let pns = plugin_namespace(p, &ns);
                let ext_name = format!("wasmesh/{pns}.{}", p.name);
                let mut patches = vec![json!({
                    "applyTo": "EXTENSION_CONFIG",
                    "patch": {"operation": "ADD", "value": {
                        "name": ext_name,
                        "typed_config": envoy_wasm_filter(p, pns, agent_code(url, opts.sha256.as_deref())),
                    }},
                })];
                let value = json!({"name": ext_name, "config_discovery": {
                    "config_source": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"},
                    "type_urls": [HTTP_WASM_TYPE, HTTP_RBAC_TYPE],
                }});
                patches.extend(insert_patches(p, &value));
                objects.push(envoy_filter(&p.name, pns, Some(p), Some(i), patches));
            }
        }
    }
    if !jwks.is_empty() {
        objects.push(envoy_filter("wasmesh-jwks", &ns, None, None, cluster_patches(&jwks)));
    }
    if opts.format != Format::EnvoyFilter
        && opts.sha256.is_none()
        && !opts.image.as_deref().unwrap_or("").contains("@sha256:")
    {
        notes.push("note: --sha256 not given: the module is not pinned (give the manifest digest `wasmeshctl image push` prints)".into());
    }
    Ok(Generated { objects, notes })
}

/// Why `--format envoyfilter-ecds` cannot carry a network plugin, naming the resource that
/// needs it.
fn ecds_network_error(resources: &Resources, p: &Plugin) -> Error {
    let why = format!(
        "needs the network (L4) filter {}, and Istio's EXTENSION_CONFIG patches serve HTTP filters only; \
         use --format wasmplugin, trafficextension or envoyfilter",
        p.root_id
    );
    let cause = if p.root_id == PEER_ADDRESS_FILTER_NAME {
        resources.authorization_policies().find_map(|(r, _)| {
            let v = serde_json::to_value(r).ok()?;
            reads_peer_address(&v).then(|| Error::at(r, "spec.rules", format!("ipBlocks/source.ip {why}")))
        })
    } else {
        resources.service_entries().find_map(|(r, se)| {
            let i = se.ports.iter().position(|p| p.port_protocol() == PortProtocol::Tcp)?;
            Some(Error::at(r, format!("spec.ports[{i}]"), format!("a TCP port {why}")))
        })
    };
    cause.unwrap_or_else(|| Error::new(format!("--format envoyfilter-ecds {why}")))
}

/// The objects as YAML documents (with an optional header comment) or one JSON `List`.
pub fn render(objects: &[Value], output: Output, header: Option<&str>) -> Result<String, String> {
    match output {
        Output::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_string_pretty(&list).map(|s| s + "\n").map_err(|e| e.to_string())
        }
        Output::Yaml => {
            let mut out = String::new();
            if let Some(h) = header {
                for line in h.lines() {
                    out.push_str("# ");
                    out.push_str(line);
                    out.push('\n');
                }
            }
            for (i, o) in objects.iter().enumerate() {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&yaml_serde::to_string(o).map_err(|e| e.to_string())?);
            }
            Ok(out)
        }
    }
}

/// `-o`: the output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputArg {
    #[default]
    Yaml,
    Json,
}

/// `--format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// extensions.istio.io/v1alpha1 WasmPlugin (every Istio since 1.12)
    #[default]
    Wasmplugin,
    /// extensions.istio.io/v1alpha1 TrafficExtension (Istio 1.30+)
    Trafficextension,
    /// EnvoyFilter with the Wasm filter inline; Envoy downloads --module-url itself
    Envoyfilter,
    /// EnvoyFilter EXTENSION_CONFIG + config_discovery; the istio-agent pulls --image
    #[value(name = "envoyfilter-ecds")]
    EnvoyfilterEcds,
}

/// `wasmeshctl generate`.
#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub input: crate::input::InputArgs,

    /// What to write.
    #[arg(long, value_enum, default_value_t = FormatArg::Wasmplugin)]
    pub format: FormatArg,

    /// The wasmesh image (`oci://REGISTRY/REPO:TAG`; a reference without scheme is taken as
    /// oci://), for wasmplugin, trafficextension and envoyfilter-ecds.
    #[arg(long, value_name = "oci://REF")]
    pub image: Option<String>,

    /// The image's OCI *manifest* digest (what `wasmeshctl image push` prints; the istio-agent
    /// checks it), 64 hex digits, with or without `sha256:`.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,

    /// The image pull policy (ignored by Istio when the module is pinned by --sha256).
    #[arg(long, value_name = "POLICY", default_value = "IfNotPresent", value_parser = ["IfNotPresent", "Always"])]
    pub image_pull_policy: String,

    /// --format envoyfilter: where Envoy downloads the module (http://HOST:PORT/PATH, e.g.
    /// `wasmeshctl serve`'s /wasm/wasmesh.wasm); a CLUSTER patch for HOST:PORT is generated.
    #[arg(long, value_name = "URL")]
    pub module_url: Option<String>,

    /// --format envoyfilter: sha256 of the module bytes (`sha256sum wasmesh.wasm`); Envoy
    /// refuses remote code without it.
    #[arg(long, value_name = "HEX")]
    pub module_sha256: Option<String>,

    /// Istio MeshConfig (YAML): rootNamespace, trustDomain, trustDomainAliases, extensionProviders.
    #[arg(long, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,

    /// Output format: YAML documents, or one JSON `List`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputArg::Yaml)]
    pub output: OutputArg,

    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output_file: Option<PathBuf>,
}

pub const ABOUT: &str =
    "Istio WasmPlugin/TrafficExtension/EnvoyFilter resources that attach wasmesh to Istio's proxies";
pub const LONG_ABOUT: &str = "Reads the Istio YAML you apply and prints the extension resources that attach the \
wasmesh filters to Istio's sidecars and gateways (pipe into `kubectl apply -f -`): one plugin per filter in the root \
namespace serving every workload (each filter takes its identity from Istio's node metadata), in Istio's phases \
(authn AUTHN, authz AUTHZ, stats STATS), FAIL_CLOSE for security filters and FAIL_OPEN for telemetry. The router \
is not generated: istiod routes with the same VirtualServices. Istio's phases need separate filters, so these \
resources never use the one-pass filter (`wasmesh.chain`) that `wasmeshctl envoy` writes by default.";

pub const EXAMPLES: &str = "Examples:
  wasmeshctl generate -f istio/ --image oci://registry.example.com/wasmesh:0.1.0 \\
      --sha256 <manifest digest> | kubectl apply -f -
  wasmeshctl generate -f istio/ --format envoyfilter \\
      --module-url http://wasmesh-serve.istio-system:8080/wasm/wasmesh.wasm \\
      --module-sha256 <sha256 of wasmesh.wasm>";

impl GenerateArgs {
    /// The generate options (the mesh config read relative to `base`).
    pub fn options(&self, base: &Path) -> Result<Options, String> {
        let mesh = match &self.mesh_config {
            Some(file) => {
                let text = std::fs::read_to_string(base.join(file))
                    .map_err(|e| format!("--mesh-config {}: {e}", file.display()))?;
                MeshConfig::load(&text, &file.display().to_string()).map_err(|e| e.to_string())?
            }
            None => MeshConfig::default(),
        };
        let hex = |v: &Option<String>| v.as_ref().map(|s| s.trim_start_matches("sha256:").to_string());
        Ok(Options {
            format: match self.format {
                FormatArg::Wasmplugin => Format::WasmPlugin,
                FormatArg::Trafficextension => Format::TrafficExtension,
                FormatArg::Envoyfilter => Format::EnvoyFilter,
                FormatArg::EnvoyfilterEcds => Format::EnvoyFilterEcds,
            },
            image: self.image.as_ref().map(|v| if v.contains("://") { v.clone() } else { format!("oci://{v}") }),
            sha256: hex(&self.sha256),
            module_url: self.module_url.clone(),
            module_sha256: hex(&self.module_sha256),
            image_pull_policy: self.image_pull_policy.clone(),
            mesh,
        })
    }

    fn output(&self) -> Output {
        match self.output {
            OutputArg::Yaml => Output::Yaml,
            OutputArg::Json => Output::Json,
        }
    }
}

/// Parses `wasmeshctl generate` arguments (without the command name), e.g. from a manifest's
/// recorded command line.
pub fn parse_args(args: &[String]) -> Result<GenerateArgs, String> {
    #[derive(clap::Parser)]
    #[command(name = "wasmeshctl generate")]
    struct Cli {
        #[command(flatten)]
        args: GenerateArgs,
    }
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("generate".to_string()).chain(args.iter().cloned()))
        .map(|c| c.args)
        .map_err(|e| e.to_string())
}

/// Error list as the CLI prints it.
pub fn report(errors: &[Error]) -> String {
    crate::input::report(errors)
}

/// Generates for parsed arguments, with relative `-f`/`--mesh-config` paths taken from `base`:
/// the text for stdout (`header` as a leading comment when YAML) and the notes for stderr.
pub fn generate_text(args: &GenerateArgs, base: &Path, header: Option<&str>) -> Result<(String, Vec<String>), String> {
    let mut input = args.input.clone();
    for f in &mut input.filename {
        if f.is_relative() && f.as_os_str() != "-" {
            *f = base.join(&*f);
        }
    }
    let options = args.options(base)?;
    check_options(&options)?;
    let loaded = input.read().map_err(|f| report(&f.errors))?;
    let g = generate(&loaded.resources, &options).map_err(|e| report(&e))?;
    let mut notes: Vec<String> = loaded.notes.iter().map(|n| format!("note: {n}")).collect();
    notes.extend(g.notes);
    Ok((render(&g.objects, args.output(), header)?, notes))
}

/// [`generate_text`] for a command line.
pub fn run_args(args: &[String], base: &Path, header: Option<&str>) -> Result<(String, Vec<String>), String> {
    generate_text(&parse_args(args)?, base, header)
}

/// `wasmeshctl generate`: the resources on stdout (or `--output-file`), notes on stderr.
pub fn run(args: GenerateArgs) -> Result<(), String> {
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let (text, notes) = generate_text(&args, &cwd, None)?;
    for n in notes {
        eprintln!("{n}");
    }
    match &args.output_file {
        Some(out) => std::fs::write(out, text).map_err(|e| format!("--output-file {}: {e}", out.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(phase_name(*self))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn opts(format: Format) -> Options {
        let mut o = Options { format, ..Options::default() };
        if format == Format::EnvoyFilter {
            o.module_url = Some("http://wasmesh.istio-system:8080/wasm/wasmesh.wasm".into());
            o.module_sha256 = Some("ab".repeat(32));
        } else {
            o.image = Some("oci://registry.example/wasmesh:1".into());
            o.sha256 = Some("cd".repeat(32));
        }
        o
    }

    const POLICIES: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: foo}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: gw, namespace: istio-system}\nspec: {selector: {matchLabels: {istio: ingressgateway}}, action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: foo}\nspec: {jwtRules: [{issuer: https://idp.example.com, jwksUri: https://idp.example.com/keys}]}\n---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: foo}\nspec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n";

    fn mesh() -> MeshConfig {
        yaml_serde::from_str(
            "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000}}]",
        )
        .unwrap()
    }

    #[test]
    fn phases_priorities_and_placement_follow_istios_order() {
        let mut notes = Vec::new();
        let ps = plugins(&resources(POLICIES), &mesh(), &mut notes).unwrap();
        let got: Vec<(&str, Phase, i32, Option<String>)> = ps
            .iter()
            .map(|p| (p.root_id, p.phase, p.priority, p.selector.as_ref().map(|s| format!("{s:?}"))))
            .collect();
        let gw = Some(r#"{"istio": "ingressgateway"}"#.to_string());
        assert_eq!(
            got,
            vec![
                ("wasmesh.authz.custom", Phase::Authn, 1000, None),
                ("wasmesh.authn", Phase::Authn, 900, None),
                ("wasmesh.authz", Phase::Authz, 1000, None),
                ("wasmesh.authz", Phase::Authz, 1000, gw),
                ("wasmesh.stats", Phase::Stats, 1000, None),
            ]
        );
        // The CUSTOM provider applies to no gateway: no custom instance there; the CUSTOM stage
        // runs before authn (higher priority in the same phase), as Istio's ext_authz.
        let custom = &ps[0];
        assert_eq!(custom.config["stage"], "custom");
        assert!(custom.config.get("workload").is_none(), "C5: identity from node metadata");
        assert_eq!(custom.config["mesh"]["rootNamespace"], "istio-system");
        assert_eq!(ps[2].config["stage"], "rbac");
        assert_eq!(ps[3].name, "wasmesh-authz-ingressgateway");
        assert!(ps[4].config.get("direction").is_none() && ps[4].fail_open);
        assert!(notes.len() == 1 && notes[0].contains("counted twice"), "{notes:?}");
    }

    /// `includeRequestBodyInCheck`: the envoyfilter formats set `allow_on_headers_stop_iteration`
    /// on the CUSTOM filter only; wasmplugin/trafficextension refuse it, naming policy and field.
    #[test]
    fn request_body_providers_set_the_flag_or_are_refused() {
        let mesh: MeshConfig = yaml_serde::from_str(
            "extensionProviders: [{name: ext, envoyExtAuthzGrpc: {service: ext.foo.svc.cluster.local, port: 9000, includeRequestBodyInCheck: {maxRequestBytes: 64}}}]",
        )
        .unwrap();
        for format in [Format::EnvoyFilter, Format::EnvoyFilterEcds] {
            let o = Options { mesh: mesh.clone(), ..opts(format) };
            let g = generate(&resources(POLICIES), &o).unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
            let text = serde_json::to_string(&g.objects).unwrap();
            assert_eq!(
                text.matches("allow_on_headers_stop_iteration").count(),
                1,
                "{format:?}: the CUSTOM filter only"
            );
        }
        let g = generate(&resources(POLICIES), &opts(Format::EnvoyFilter)).unwrap();
        assert!(!serde_json::to_string(&g.objects).unwrap().contains("allow_on_headers_stop_iteration"));
        for format in [Format::WasmPlugin, Format::TrafficExtension] {
            let o = Options { mesh: mesh.clone(), ..opts(format) };
            let e = generate(&resources(POLICIES), &o).unwrap_err();
            let text = e[0].to_string();
            assert!(text.contains("AuthorizationPolicy foo/c") && text.contains("spec.provider.name"), "{text}");
            assert!(text.contains("extensionProviders[0].envoyExtAuthzGrpc.includeRequestBodyInCheck"), "{text}");
            assert!(text.contains("allow_on_headers_stop_iteration"), "{text}");
        }
    }

    #[test]
    fn wasmplugin_fields() {
        let g = generate(&resources(POLICIES), &opts(Format::WasmPlugin)).unwrap();
        let by_name = |n: &str| g.objects.iter().find(|o| o["metadata"]["name"] == n).unwrap_or_else(|| panic!("{n}"));
        let authz = &by_name("wasmesh-authz")["spec"];
        assert_eq!(authz["match"], json!([{"mode": "SERVER"}]));
        assert_eq!(
            (authz["phase"].as_str(), authz["failStrategy"].as_str(), authz["type"].as_str()),
            (Some("AUTHZ"), Some("FAIL_CLOSE"), Some("HTTP"))
        );
        assert_eq!(authz["url"], "oci://registry.example/wasmesh:1");
        assert_eq!(authz["sha256"], "cd".repeat(32));
        assert_eq!(authz["pluginName"], "wasmesh.authz");
        let gw = &by_name("wasmesh-authz-ingressgateway")["spec"];
        assert_eq!(gw["selector"], json!({"matchLabels": {"istio": "ingressgateway"}}));
        assert_eq!(gw["match"], json!([{"mode": "CLIENT"}]));
        assert!(
            gw["pluginConfig"]["resources"].as_array().unwrap().iter().all(|r| r["kind"] == "AuthorizationPolicy"),
            "no PeerAuthentication on gateways"
        );
        let stats = &by_name("wasmesh-stats")["spec"];
        assert!(stats.get("match").is_none() && stats["failStrategy"] == "FAIL_OPEN");
        // The JWKS server's cluster, which Istio does not have.
        let jwks = by_name("wasmesh-jwks");
        assert_eq!(jwks["kind"], "EnvoyFilter");
        assert_eq!(
            jwks["spec"]["configPatches"][0]["patch"]["value"]["name"],
            "wasmesh-jwks|https|idp.example.com|443"
        );
        let te = generate(&resources(POLICIES), &opts(Format::TrafficExtension)).unwrap();
        let t = &te.objects[0]["spec"];
        assert_eq!(
            (t["phase"].as_str(), t["wasm"]["pluginName"].as_str()),
            (Some("AUTHN"), Some("wasmesh.authz.custom"))
        );
    }

    #[test]
    fn envoyfilter_variants() {
        let g = generate(&resources(POLICIES), &opts(Format::EnvoyFilter)).unwrap();
        assert_eq!(g.objects[0]["metadata"]["name"], "wasmesh-module-server");
        let cluster = &g.objects[0]["spec"]["configPatches"][0]["patch"]["value"];
        assert_eq!(cluster["name"], "wasmesh-module|wasmesh.istio-system|8080");
        let custom = &g.objects[1]["spec"];
        assert_eq!(custom["priority"], 0);
        let patch = &custom["configPatches"][0];
        assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
        assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
        let code = &patch["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"];
        assert_eq!(code["http_uri"]["cluster"], cluster["name"]);
        assert_eq!(code["sha256"], "ab".repeat(32));
        let e = generate(&resources(POLICIES), &opts(Format::EnvoyFilterEcds)).unwrap();
        let patches = &e.objects[0]["spec"]["configPatches"];
        assert_eq!(patches[0]["applyTo"], "EXTENSION_CONFIG");
        assert_eq!(
            patches[0]["patch"]["value"]["typed_config"]["config"]["vm_config"]["code"]["remote"]["http_uri"]["uri"],
            "oci://registry.example/wasmesh:1"
        );
        assert_eq!(
            patches[1]["patch"]["value"]["config_discovery"]["type_urls"],
            json!([HTTP_WASM_TYPE, HTTP_RBAC_TYPE])
        );
        assert_eq!(patches[1]["patch"]["value"]["name"], patches[0]["patch"]["value"]["name"]);
    }

    #[test]
    fn tcp_ports_and_ip_blocks_get_network_plugins() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: foo}\nspec: {hosts: [db.foo.svc.cluster.local], ports: [{number: 3306, name: tcp, protocol: TCP, targetPort: 13306}], resolution: STATIC, workloadSelector: {labels: {app: db}}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}\n";
        let ps = plugins(&resources(yaml), &MeshConfig::default(), &mut Vec::new()).unwrap();
        type Attach = Vec<(Context, Vec<u32>)>;
        let net: Vec<(&str, &Attach)> = ps.iter().filter(|p| p.network).map(|p| (p.root_id, &p.attach)).collect();
        assert_eq!(
            net,
            vec![
                ("wasmesh.authz.tcp", &vec![(Context::SidecarInbound, vec![13306])]),
                ("wasmesh.authz.peer_address", &vec![(Context::SidecarInbound, vec![])]),
                (
                    "wasmesh.stats.tcp",
                    &vec![(Context::SidecarInbound, vec![13306]), (Context::SidecarOutbound, vec![3306])]
                ),
            ]
        );
        // Under Istio the TCP filter takes the first SAN as the whole list (istiod's CA issues one).
        let authz_tcp = ps.iter().find(|p| p.root_id == "wasmesh.authz.tcp").unwrap();
        assert!(authz_tcp.config.to_string().contains(r#""singleSanPeers":true"#), "{}", authz_tcp.config);
        let g = generate(&resources(yaml), &opts(Format::WasmPlugin)).unwrap();
        let tcp = g.objects.iter().find(|o| o["metadata"]["name"] == "wasmesh-stats-tcp").unwrap();
        assert_eq!(
            tcp["spec"]["match"],
            json!([{"mode": "SERVER", "ports": [{"number": 13306}]}, {"mode": "CLIENT", "ports": [{"number": 3306}]}])
        );
        assert_eq!(tcp["spec"]["type"], "NETWORK");
        let e = generate(&resources(yaml), &opts(Format::EnvoyFilterEcds)).unwrap_err();
        assert!(e[0].to_string().contains("HTTP filters only"), "{e:?}");
        let f = generate(&resources(yaml), &opts(Format::EnvoyFilter)).unwrap();
        let authz_tcp = f.objects.iter().find(|o| o["metadata"]["name"] == "wasmesh-authz-tcp").unwrap();
        let m = &authz_tcp["spec"]["configPatches"][0];
        assert_eq!(m["applyTo"], "NETWORK_FILTER");
        assert_eq!(m["match"]["listener"]["filterChain"]["destinationPort"], 13306);
        assert_eq!(m["match"]["listener"]["filterChain"]["filter"]["name"], "envoy.filters.network.tcp_proxy");
    }

    #[test]
    fn broken_policies_and_untranslatable_resources_are_errors_naming_them() {
        let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY}\n";
        let e = generate(&resources(bad), &opts(Format::WasmPlugin)).unwrap_err();
        assert!(e[0].to_string().contains("t.yaml (document 1): AuthorizationPolicy foo/d"), "{e:?}");
        let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: foo}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n";
        let e = generate(&resources(gw), &opts(Format::WasmPlugin)).unwrap_err();
        assert!(e[0].to_string().contains("Gateway foo/g: spec.selector: empty"), "{e:?}");
    }

    #[test]
    fn options_are_checked() {
        let r = resources(POLICIES);
        let mut o = opts(Format::WasmPlugin);
        o.image = None;
        assert!(generate(&r, &o).unwrap_err()[0].message.contains("--image"));
        let mut o = opts(Format::WasmPlugin);
        o.sha256 = Some("ABC".into());
        assert!(generate(&r, &o).unwrap_err()[0].message.contains("64 lower-case hex"));
        let mut o = opts(Format::WasmPlugin);
        o.image = Some(format!("oci://r/w@sha256:{}", "ef".repeat(32)));
        assert!(generate(&r, &o).unwrap_err()[0].message.contains("Istio requires them to match"));
        let mut o = opts(Format::EnvoyFilter);
        o.module_sha256 = None;
        assert!(generate(&r, &o).unwrap_err()[0].message.contains("--module-sha256"));
        let mut o = opts(Format::EnvoyFilter);
        o.module_url = Some("oci://r/w:1".into());
        assert!(generate(&r, &o).unwrap_err()[0].message.contains("istio-agent"));
        let a = parse_args(&[
            "-f".into(),
            "x".into(),
            "--image".into(),
            "r/w:1".into(),
            "-o".into(),
            "json".into(),
            "--sha256".into(),
            format!("sha256:{}", "ab".repeat(32)),
        ])
        .unwrap();
        let o = a.options(Path::new(".")).unwrap();
        assert_eq!(o.image.as_deref(), Some("oci://r/w:1"));
        assert_eq!(o.sha256, Some("ab".repeat(32)));
        assert_eq!(a.output(), Output::Json);
        assert!(parse_args(&["--format".into(), "nope".into()]).unwrap_err().contains("wasmplugin"));
    }

    #[test]
    fn gateway_api_gateways_get_plugins_by_target_refs_in_their_namespace() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: eg-deny, namespace: web}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: eg}], action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n";
        let g = generate(&resources(yaml), &opts(Format::WasmPlugin)).unwrap();
        let p = g
            .objects
            .iter()
            .find(|o| o["metadata"]["name"] == "wasmesh-authz-eg")
            .unwrap_or_else(|| panic!("{:#?}", g.objects));
        assert_eq!(p["metadata"]["namespace"], "web", "targetRefs must be in the gateway's namespace");
        assert_eq!(
            p["spec"]["targetRefs"],
            json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "eg"}])
        );
        assert!(p["spec"].get("selector").is_none());
        assert_eq!(p["spec"]["match"], json!([{"mode": "CLIENT"}]));
        let f = generate(&resources(yaml), &opts(Format::EnvoyFilter)).unwrap();
        let e = f.objects.iter().find(|o| o["metadata"]["name"] == "wasmesh-authz-eg").unwrap();
        assert_eq!(e["spec"]["targetRefs"][0]["name"], "eg");
        assert_eq!(e["spec"]["configPatches"][0]["match"]["context"], "GATEWAY");
    }

    /// istiod carries out outboundTrafficPolicy; the plugins are the same with or without it
    /// (wasmesh.stats keys on istiod's `block_all`/`allow_any` routes and catch-all clusters).
    #[test]
    fn outbound_traffic_policy_is_istiods_and_the_plugins_do_not_change() {
        let plain = generate(&resources(POLICIES), &opts(Format::WasmPlugin)).unwrap();
        for (mode, cluster, route) in
            [("REGISTRY_ONLY", "BlackHoleCluster", "block_all"), ("ALLOW_ANY", "PassthroughCluster", "allow_any")]
        {
            let mut o = opts(Format::WasmPlugin);
            o.mesh = yaml_serde::from_str(&format!("outboundTrafficPolicy: {{mode: {mode}}}")).unwrap();
            let g = generate(&resources(POLICIES), &o).unwrap();
            assert_eq!(g.objects, plain.objects, "{mode}: no plugin configuration depends on the policy");
            let note = g.notes.iter().find(|n| n.contains("outboundTrafficPolicy")).unwrap();
            assert!(note.contains(mode) && note.contains(cluster) && note.contains(route), "{note}");
            assert!(g.objects.iter().any(|o| o["spec"]["pluginName"] == "wasmesh.stats"));
        }
        assert!(!plain.notes.iter().any(|n| n.contains("outboundTrafficPolicy")));
        // The names wasmesh.stats reads are istiod's route names.
        for mode in [wasmesh_router::OutboundMode::RegistryOnly, wasmesh_router::OutboundMode::AllowAny] {
            let (cluster, route) = mode.catch_all();
            assert_eq!(wasmesh_stats::labels::catch_all_cluster(route), Some(cluster));
        }
    }

    #[test]
    fn router_is_not_generated_and_says_why() {
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: foo}\nspec: {hosts: [r], http: [{route: [{destination: {host: r}}]}]}\n";
        let g = generate(&resources(vs), &opts(Format::WasmPlugin)).unwrap();
        assert!(g.objects.iter().all(|o| o["spec"]["pluginName"] != "wasmesh.router"));
        assert!(g.notes.iter().any(|n| n.contains("router filter is not generated")), "{:?}", g.notes);
        let json = render(&g.objects, Output::Json, None).unwrap();
        assert!(json.starts_with("{\n  \"apiVersion\": \"v1\",\n  \"items\""), "{json}");
    }

    /// Every object of every format, for every plugin kind (CUSTOM, JWT, TCP, ipBlocks, Istio and
    /// Gateway API gateways), passes Istio's CRD schema and CEL rules.
    #[test]
    fn every_format_passes_istios_crd_schemas() {
        let tcp = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: foo}\nspec: {hosts: [db.foo.svc.cluster.local], ports: [{number: 3306, name: tcp, protocol: TCP}], resolution: STATIC, workloadSelector: {labels: {app: db}}}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: eg-deny, namespace: web}\nspec: {targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: eg}], action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}\n";
        let all = format!("{POLICIES}---\n{tcp}");
        let mut checked = 0;
        for format in [Format::WasmPlugin, Format::TrafficExtension, Format::EnvoyFilter, Format::EnvoyFilterEcds] {
            let yaml = if format == Format::EnvoyFilterEcds { POLICIES.to_string() } else { all.clone() };
            let mut o = opts(format);
            o.mesh = mesh();
            let g = generate(&resources(&yaml), &o).unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
            for obj in &g.objects {
                let errors = crate::schema::check(obj);
                assert!(errors.is_empty(), "{format:?} {}: {errors:?}\n{obj:#}", obj["metadata"]["name"]);
                checked += 1;
            }
        }
        assert!(checked > 20, "{checked}");
    }
}
