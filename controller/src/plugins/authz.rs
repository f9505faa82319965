//! The authz filter (`wasmesh.authz`): AuthorizationPolicy and PeerAuthentication enforcement on
//! sidecar inbound and gateway listeners (never sidecar outbound, as Istio).
//!
//! The filter receives every AuthorizationPolicy of the root namespace and of the workload's
//! namespace (and, on sidecar inbound, the PeerAuthentications) and selects the ones that apply
//! itself, exactly as istiod would (selector, targetRefs), so the generated config and the
//! filter cannot disagree. The plugin compiles that config once here, so a broken policy is
//! reported by `wasmeshctl` and never deployed, and it refuses policies Istio's admission
//! webhook would reject.
//!
//! Istio's HTTP filter order is: CUSTOM (rbac + ext_authz), authn (JWT), then AUDIT/DENY/ALLOW
//! rbac. Wire either [`contribute`] alone (one instance doing CUSTOM, then AUDIT/DENY/ALLOW,
//! after authn), or the exact Istio order: [`contribute_custom`] before the authn plugin and
//! [`contribute_rbac`] after it. The CUSTOM instance exists only when a CUSTOM policy applies.
//!
//! Extension providers come from meshConfig `extensionProviders` (`wasmeshctl --mesh-config`);
//! the plugin adds a cluster `outbound|<port>||<host>` for each `envoyExtAuthzHttp` or
//! `envoyExtAuthzGrpc` (HTTP/2) provider a CUSTOM policy uses (a ServiceEntry of the same host replaces it with its endpoints).

use super::{resources_json, Contribution, Direction, ListenerContext, WasmFilter};
use serde_json::{json, Value};
pub use wasmesh_authz::{AuthzConfig, Stage};
use wasmesh_istio::{Error, Kind, ProxyMode, Resource, Resources};

pub const FILTER_NAME: &str = "wasmesh.authz";
pub const CUSTOM_FILTER_NAME: &str = "wasmesh.authz.custom";
pub const PEER_ADDRESS_FILTER_NAME: &str = "wasmesh.authz.peer_address";
pub const TCP_FILTER_NAME: &str = "wasmesh.authz.tcp";

/// One instance doing everything (CUSTOM, then AUDIT/DENY/ALLOW).
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    contribute_stage(ctx, Stage::All)
}

/// The CUSTOM instance, for before the authn filter (pair it with [`contribute_rbac`]).
pub fn contribute_custom(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    contribute_stage(ctx, Stage::Custom)
}

/// The AUDIT/DENY/ALLOW instance, for after the authn filter (pair it with [`contribute_custom`]).
pub fn contribute_rbac(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    contribute_stage(ctx, Stage::Rbac)
}

/// The network authorization filter of a sidecar inbound TCP port (Istio's network RBAC, with
/// its TCP semantics: see [`Stage::Tcp`]), or `None` when no policy can refuse a connection
/// (Istio adds no filter either). Policies wasmesh cannot enforce on TCP are errors naming the
/// resource and field, so a TCP port is never generated unenforced.
pub fn tcp_filter(ctx: &ListenerContext<'_>) -> Result<Option<WasmFilter>, Vec<Error>> {
    if ctx.direction != Direction::Inbound {
        return Ok(None);
    }
    let (cfg, resources) = config(ctx, Stage::Tcp);
    let errors = validate(&resources);
    if !errors.is_empty() {
        return Err(errors);
    }
    let authz = cfg.compile(&resources).map_err(|e| e.0)?;
    if authz.is_empty() {
        return Ok(None);
    }
    let config = serde_json::to_value(&cfg).map_err(|e| vec![Error::new(format!("authz config: {e}"))])?;
    Ok(Some(WasmFilter { name: TCP_FILTER_NAME.into(), config, fail_open: false }))
}

/// The clusters of the `envoyExtAuthzGrpc` providers the TCP authorization filter of this
/// listener asks (Envoy's network ext_authz as istiod writes it; HTTP/2), for a bootstrap that
/// `wasmeshctl envoy` writes whole. Empty when no such provider applies.
pub fn tcp_provider_clusters(ctx: &ListenerContext<'_>) -> Vec<Value> {
    if ctx.direction != Direction::Inbound {
        return Vec::new();
    }
    let (cfg, resources) = config(ctx, Stage::Tcp);
    let Ok(authz) = cfg.compile(&resources) else { return Vec::new() };
    let mut clusters: Vec<Value> = Vec::new();
    for p in authz.providers() {
        let mut cluster = provider_cluster(&p.cluster);
        if p.transport == wasmesh_authz::Transport::Grpc {
            grpc_cluster(&mut cluster);
        }
        if !clusters.iter().any(|c| c["name"] == cluster["name"]) {
            clusters.push(cluster);
        }
    }
    clusters
}

/// Marks the TCP authz filters of an inbound TCP listener `singleSanPeers` when the mesh root
/// is `wasmeshctl certs`' own CA (its key is in `certs_dir`): every certificate it issues has
/// exactly one URI SAN (checked when issued) and no DNS SAN, so the first SAN Envoy hands the
/// network filter is the whole list. Otherwise the network filter cannot know the other SANs
/// and fails closed where they could change the decision (see [`AuthzConfig::single_san_peers`]).
pub fn single_san_peers(
    (mut c, mut exchange): (Contribution, Vec<WasmFilter>),
    certs_dir: Option<&std::path::Path>,
) -> (Contribution, Vec<WasmFilter>) {
    let own_ca = certs_dir.is_some_and(|d| d.join(crate::certs::ROOT_KEY).is_file());
    if own_ca {
        for f in c.network_filters.iter_mut().chain(exchange.iter_mut()) {
            if f.name == TCP_FILTER_NAME {
                if let Some(o) = f.config.as_object_mut() {
                    o.insert("singleSanPeers".into(), Value::Bool(true));
                }
            }
        }
    }
    (c, exchange)
}

/// Tells a sidecar inbound listener's authz filters (HTTP stages, TCP) that its filter chains
/// enforce the workload's PeerAuthentication (`peerAuthenticationByTransport`), so they do not
/// check `connection.mtls` again on every request. Only for the chains the static bootstrap
/// writes with [`super::mtls::inbound_transport`] from the same policies, for the process's
/// life: under Istio istiod writes the chains, and under `serve` the filter follows the YAML
/// live, so the filter checks there.
pub fn peer_authentication_by_transport(filters: &mut [WasmFilter]) {
    for f in
        filters.iter_mut().filter(|f| [FILTER_NAME, CUSTOM_FILTER_NAME, TCP_FILTER_NAME].contains(&f.name.as_str()))
    {
        if let Some(o) = f.config.as_object_mut() {
            o.insert("peerAuthenticationByTransport".into(), Value::Bool(true));
        }
    }
}

/// The filter-state key authz writes its decision to (`decisionFilterState`).
const DECISION_KEY: &str = wasmesh_authz::DECISION_FILTER_STATE_KEY;

/// Turns `decisionFilterState` off on a listener's HTTP authz filters when nothing on that
/// listener reads the decision: no other filter's configuration names the key (the access-log
/// phase's formats and filters are the readers `wasmeshctl envoy` writes; Envoy's own
/// `--envoy-access-log` uses Envoy's default format, which prints no filter state). Writing it
/// costs a hostcall and ~5k instructions per request. Only for a bootstrap `wasmeshctl envoy`
/// writes whole: under Istio (`generate`) an access log may come from places wasmeshctl does
/// not see (an EnvoyFilter), so the decision stays on there.
pub fn decision_filter_state_when_read(filters: &mut [WasmFilter]) {
    let is_authz = |f: &WasmFilter| f.name == FILTER_NAME || f.name == CUSTOM_FILTER_NAME;
    let read = filters.iter().filter(|f| !is_authz(f)).any(|f| f.config.to_string().contains(DECISION_KEY));
    if read {
        return;
    }
    for f in filters.iter_mut().filter(|f| is_authz(f)) {
        if let Some(o) = f.config.as_object_mut() {
            o.insert("decisionFilterState".into(), Value::Bool(false));
        }
    }
}

/// The contribution for one stage.
pub fn contribute_stage(ctx: &ListenerContext<'_>, stage: Stage) -> Result<Contribution, Vec<Error>> {
    if ctx.direction == Direction::Outbound {
        return Ok(Contribution::default());
    }
    let (mut cfg, resources) = config(ctx, stage);
    let errors = validate(&resources);
    if !errors.is_empty() {
        return Err(errors);
    }
    let authz = cfg.compile(&resources).map_err(|e| e.0)?;
    let refused = unsupported_providers(&authz, &resources, &ctx.mesh.extension_providers);
    if !refused.is_empty() {
        return Err(refused);
    }
    if authz.is_empty() {
        // No policy applies: Istio adds no RBAC filter either.
        return Ok(Contribution::default());
    }
    let mut c = Contribution::default();
    // The body is buffered only when a provider of these policies asks for it (Envoy then
    // lets the filter read it while holding the headers: `allow_on_headers_stop_iteration`).
    cfg.request_body = authz.max_request_body() > 0;
    let config = serde_json::to_value(&cfg).map_err(|e| vec![Error::new(format!("authz config: {e}"))])?;
    let name = if stage == Stage::Custom { CUSTOM_FILTER_NAME } else { FILTER_NAME };
    c.http_filters.push(WasmFilter { name: name.into(), config, fail_open: false });
    if authz.needs().source_ip {
        c.network_filters.push(peer_address_filter());
    }
    for p in authz.providers() {
        let mut cluster = provider_cluster(&p.cluster);
        if p.transport == wasmesh_authz::Transport::Grpc {
            grpc_cluster(&mut cluster);
        }
        if !c.clusters.iter().any(|c| c["name"] == cluster["name"]) {
            c.clusters.push(cluster);
        }
    }
    c.stats_tags = stats_tags();
    Ok(c)
}

/// The filter configuration for this listener and the resources it carries.
pub fn config(ctx: &ListenerContext<'_>, stage: Stage) -> (AuthzConfig, Resources) {
    let mut workload = ctx.workload.clone();
    workload.mode = match ctx.direction {
        Direction::Gateway { .. } => ProxyMode::Gateway,
        _ => ProxyMode::Sidecar,
    };
    let candidates: Vec<Resource> = ctx
        .resources
        .items
        .iter()
        .filter(|r| {
            let ns = r.namespace();
            let in_scope = ns == workload.root_namespace || ns == workload.namespace;
            in_scope
                && (r.kind() == Kind::AuthorizationPolicy
                    || (r.kind() == Kind::PeerAuthentication && ctx.direction == Direction::Inbound))
        })
        .cloned()
        .collect();
    let cfg = AuthzConfig {
        workload: Some(workload),
        mesh: None,
        resources: resources_json(candidates.iter()),
        trust_domain_aliases: ctx.mesh.trust_domain_aliases.clone(),
        extension_providers: ctx.mesh.authz_extension_providers(),
        stage,
        multiple_custom_providers: multiple_custom_providers(),
        decision_filter_state: true,
        single_san_peers: false,
        request_body: false,
        // Set by the static bootstrap, whose inbound listeners' chains enforce PeerAuthentication.
        peer_authentication_by_transport: false,
    };
    (cfg, Resources { items: candidates })
}

/// istiod's environment variable that lets one workload's CUSTOM policies name several providers
/// (Istio 1.30); wasmeshctl reads it as istiod does.
pub const MULTIPLE_CUSTOM_PROVIDERS_ENV: &str = "PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS";

/// [`MULTIPLE_CUSTOM_PROVIDERS_ENV`] as istiod reads a boolean variable (Go `strconv.ParseBool`;
/// unset or not a boolean: the default, false).
pub fn multiple_custom_providers() -> bool {
    matches!(std::env::var(MULTIPLE_CUSTOM_PROVIDERS_ENV).as_deref(), Ok("1" | "t" | "T" | "TRUE" | "true" | "True"))
}

/// A note when CUSTOM policies of one namespace (or of the root namespace) name several providers
/// and [`MULTIPLE_CUSTOM_PROVIDERS_ENV`] is not set: a workload they all select denies every
/// request their rules match, as istiod makes it.
pub fn several_providers_notes(resources: &Resources, root_namespace: &str) -> Vec<String> {
    if multiple_custom_providers() {
        return Vec::new();
    }
    let mut by_ns: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
    for (res, ap) in resources.authorization_policies() {
        if ap.action == wasmesh_istio::security::Action::Custom {
            if let Some(p) = &ap.provider {
                by_ns.entry(res.namespace()).or_default().insert(p.name.as_str());
            }
        }
    }
    let root: Vec<&str> = by_ns.get(root_namespace).map(|s| s.iter().copied().collect()).unwrap_or_default();
    by_ns
        .iter()
        .filter_map(|(ns, names)| {
            let all: std::collections::BTreeSet<&str> = names.iter().chain(root.iter()).copied().collect();
            (all.len() > 1).then(|| {
                format!(
                    "CUSTOM AuthorizationPolicies for namespace {ns} name providers {all:?}: without {MULTIPLE_CUSTOM_PROVIDERS_ENV}=true (Istio 1.30) a workload selected by several of them denies \
                     every request their rules match, as istiod makes it"
                )
            })
        })
        .collect()
}

/// What Istio's webhook rejects in the AuthorizationPolicies (`wasmeshctl validate` too).
pub fn validate(resources: &Resources) -> Vec<Error> {
    wasmesh_authz::validate_all(resources)
}

/// CUSTOM policies of this workload whose provider's `includeRequestBodyInCheck` Envoy or
/// wasmesh cannot take (`maxRequestBytes` 0, which Envoy rejects, or past wasmesh's bound):
/// refused here, never deployed as a provider that denies everything. Other provider errors are istiod's (a CUSTOM rule with an invalid provider
/// denies, as in Istio) and stay warnings of the compiled policy.
pub fn unsupported_providers(authz: &wasmesh_authz::Authz, resources: &Resources, providers: &[Value]) -> Vec<Error> {
    let mut errors = Vec::new();
    for (res, ap) in resources.authorization_policies() {
        if ap.action != wasmesh_istio::security::Action::Custom
            || !authz.applied().contains(&format!("{} (CUSTOM)", res.display_name()))
        {
            continue;
        }
        let Some(name) = ap.provider.as_ref().map(|p| p.name.as_str()) else { continue };
        for (i, p) in providers.iter().enumerate() {
            if p.get("name").and_then(Value::as_str) != Some(name) {
                continue;
            }
            for kind in ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"] {
                let body = p.get(kind).and_then(|k| k.get("includeRequestBodyInCheck"));
                let body = body.map(|b| serde_json::from_value::<wasmesh_authz::provider::RequestBody>(b.clone()));
                let problem = match body {
                    Some(Ok(b)) => wasmesh_authz::provider::request_body_problem(&b),
                    Some(Err(e)) => Some(e.to_string()),
                    None => None,
                };
                if let Some(problem) = problem {
                    errors.push(Error::at(
                        res,
                        "spec.provider.name",
                        format!(
                            "extension provider {name:?}: meshConfig extensionProviders[{i}].{kind}.includeRequestBodyInCheck: {problem}"
                        ),
                    ));
                }
            }
        }
    }
    errors
}

/// Whether a wasm filter's configuration (one authz filter's, or a one-pass chain's phases) holds
/// the request headers while it buffers the body for a CUSTOM check (`requestBody`): Envoy must
/// then hand it the body while the headers are held, `PluginConfig.allow_on_headers_stop_iteration`
/// (Envoy 1.35+; every Envoy wasmesh is tested with has it). Only then: without the flag a
/// paused filter holds the body by flow control (watermarks) instead of buffering it.
pub fn needs_request_body(config: &Value) -> bool {
    let marked = |c: &Value| c.get("requestBody").and_then(Value::as_bool).unwrap_or(false);
    marked(config)
        || config
            .get("phases")
            .and_then(Value::as_array)
            .is_some_and(|ps| ps.iter().any(|p| p.get("configuration").is_some_and(marked)))
}

/// The network filter that records the physical peer address for `ipBlocks` / `source.ip`.
pub fn peer_address_filter() -> WasmFilter {
    WasmFilter { name: PEER_ADDRESS_FILTER_NAME.into(), config: json!({"role": "peerAddress"}), fail_open: false }
}

/// A cluster for an ext-authz provider: `outbound|<port>||<host>`, the host resolved by DNS (or
/// used as is when it is an IP address).
pub fn provider_cluster(name: &str) -> Value {
    let mut parts = name.split('|');
    let _ = parts.next();
    let port: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let host = parts.nth(1).unwrap_or("").to_string();
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    json!({
        "name": name,
        "type": if is_ip { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}],
        },
    })
}

/// An `envoyExtAuthzGrpc` provider's cluster speaks HTTP/2 (gRPC), as istiod's cluster for a
/// gRPC service port does.
pub fn grpc_cluster(cluster: &mut Value) {
    cluster["typed_extension_protocol_options"] = json!({
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    });
}

/// Tag extraction: `wasmcustom.wasmesh.authz.policy.<outcome>.<rule>` → label `authz_rule`.
pub fn stats_tags() -> Vec<Value> {
    vec![json!({"tag_name": "authz_rule", "regex": r"^wasmcustom\.wasmesh\.authz\.policy\.\w+(\.(.+))$"})]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::mesh::MeshConfig;
    use wasmesh_istio::Workload;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
    }

    fn ctx_run(yaml: &str, direction: Direction, mesh: &MeshConfig, stage: Stage) -> Result<Contribution, Vec<Error>> {
        let res = resources(yaml);
        let mut wl = Workload::new("httpbin", "foo");
        wl.labels.insert("app".into(), "httpbin".into());
        let ctx = ListenerContext { workload: &wl, resources: &res, direction, bind_port: 8000, mesh };
        contribute_stage(&ctx, stage)
    }

    const DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: other, namespace: bar}\nspec: {action: DENY, rules: [{}]}\n";

    #[test]
    fn inbound_and_gateway_get_the_filter_outbound_does_not() {
        let mesh = MeshConfig::default();
        let c = ctx_run(DENY, Direction::Inbound, &mesh, Stage::All).unwrap();
        assert_eq!(c.http_filters.len(), 1);
        assert_eq!(c.http_filters[0].name, FILTER_NAME);
        assert!(!c.http_filters[0].fail_open, "security filters fail closed");
        let res = c.http_filters[0].config["resources"].as_array().unwrap();
        assert_eq!(res.len(), 1, "only root and workload namespaces are carried: {res:?}");
        assert_eq!(c.network_filters.len(), 1, "ipBlocks needs the peer address filter");
        assert_eq!(c.network_filters[0].config, json!({"role": "peerAddress"}));
        let g = ctx_run(DENY, Direction::Gateway { port: 80 }, &mesh, Stage::All).unwrap();
        assert_eq!(g.http_filters[0].config["workload"]["mode"], "gateway");
        assert!(ctx_run(DENY, Direction::Outbound, &mesh, Stage::All).unwrap().http_filters.is_empty());
    }

    #[test]
    fn no_policy_no_filter() {
        let c = ctx_run("", Direction::Inbound, &MeshConfig::default(), Stage::All).unwrap();
        assert!(c.http_filters.is_empty() && c.network_filters.is_empty());
        let c = ctx_run(
            &DENY.replace("namespace: foo", "namespace: elsewhere"),
            Direction::Inbound,
            &MeshConfig::default(),
            Stage::All,
        )
        .unwrap();
        assert!(c.http_filters.is_empty());
    }

    #[test]
    fn webhook_invalid_policies_are_refused() {
        let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY}\n";
        let e = ctx_run(bad, Direction::Inbound, &MeshConfig::default(), Stage::All).unwrap_err();
        assert!(e[0].to_string().contains("AuthorizationPolicy foo/d"), "{e:?}");
    }

    #[test]
    fn custom_provider_gets_a_cluster_and_its_own_stage() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: foo}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n";
        let mesh: MeshConfig = yaml_serde::from_str(
            "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: 127.0.0.1, port: 9191}}]",
        )
        .unwrap();
        let c = ctx_run(yaml, Direction::Inbound, &mesh, Stage::Custom).unwrap();
        assert_eq!(c.http_filters[0].name, CUSTOM_FILTER_NAME);
        assert_eq!(c.http_filters[0].config["stage"], "custom");
        assert_eq!(c.clusters[0]["name"], "outbound|9191||127.0.0.1");
        assert_eq!(c.clusters[0]["type"], "STATIC");
        // The RBAC stage has nothing to do for a CUSTOM-only workload.
        assert!(ctx_run(yaml, Direction::Inbound, &mesh, Stage::Rbac).unwrap().http_filters.is_empty());
        let dns = provider_cluster("outbound|80||authz.foo.svc.cluster.local");
        assert_eq!(dns["type"], "STRICT_DNS");
        let grpc: MeshConfig = yaml_serde::from_str(
            "extensionProviders: [{name: ext, envoyExtAuthzGrpc: {service: 127.0.0.1, port: 9191}}]",
        )
        .unwrap();
        let c = ctx_run(yaml, Direction::Inbound, &grpc, Stage::Custom).unwrap();
        assert_eq!(c.clusters[0]["name"], "outbound|9191||127.0.0.1");
        let opts = &c.clusters[0]["typed_extension_protocol_options"]
            ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(opts["explicit_http_config"]["http2_protocol_options"].is_object(), "gRPC needs HTTP/2: {c:?}");
    }

    #[test]
    fn include_request_body_in_check_marks_the_filter_and_bad_limits_are_refused() {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: foo}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{}]}\n";
        for kind in ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"] {
            let mesh: MeshConfig = yaml_serde::from_str(&format!(
                "extensionProviders: [{{name: other, zipkin: {{service: z, port: 9411}}}}, {{name: ext, {kind}: {{service: 127.0.0.1, port: 9191, includeRequestBodyInCheck: {{maxRequestBytes: 100}}}}}}]"
            ))
            .unwrap();
            for stage in [Stage::All, Stage::Custom] {
                let c = ctx_run(yaml, Direction::Inbound, &mesh, stage).unwrap();
                assert_eq!(c.http_filters[0].config["requestBody"], true, "{kind} {stage:?}");
            }
            let plain: MeshConfig = yaml_serde::from_str(&format!(
                "extensionProviders: [{{name: ext, {kind}: {{service: 127.0.0.1, port: 9191}}}}]"
            ))
            .unwrap();
            let c = ctx_run(yaml, Direction::Inbound, &plain, Stage::Custom).unwrap();
            assert_eq!(c.http_filters[0].config.get("requestBody"), None, "only when a provider needs the body");
            let mesh: MeshConfig = yaml_serde::from_str(&format!(
                "extensionProviders: [{{name: other, zipkin: {{service: z, port: 9411}}}}, {{name: ext, {kind}: {{service: 127.0.0.1, port: 9191, includeRequestBodyInCheck: {{maxRequestBytes: 0}}}}}}]"
            ))
            .unwrap();
            for stage in [Stage::All, Stage::Custom] {
                let e = ctx_run(yaml, Direction::Inbound, &mesh, stage).unwrap_err();
                let text = e[0].to_string();
                assert!(text.contains("AuthorizationPolicy foo/c"), "{text}");
                assert!(text.contains("spec.provider.name"), "{text}");
                assert!(text.contains(&format!("extensionProviders[1].{kind}.includeRequestBodyInCheck")), "{text}");
                assert!(text.contains("maxRequestBytes must be greater than 0"), "{text}");
            }
        }
    }

    #[test]
    fn tcp_filter_on_inbound_tcp_ports_only_when_a_policy_applies() {
        let mesh = MeshConfig::default();
        let res = resources(DENY);
        let mut wl = Workload::new("httpbin", "foo");
        wl.labels.insert("app".into(), "httpbin".into());
        let ctx =
            |direction| ListenerContext { workload: &wl, resources: &res, direction, bind_port: 3306, mesh: &mesh };
        let f = tcp_filter(&ctx(Direction::Inbound)).unwrap().expect("a DENY policy applies");
        assert_eq!(f.name, TCP_FILTER_NAME);
        assert_eq!(f.config["stage"], "tcp");
        assert!(!f.fail_open);
        assert!(tcp_filter(&ctx(Direction::Outbound)).unwrap().is_none());
        let none = resources("");
        let ctx = ListenerContext {
            workload: &wl,
            resources: &none,
            direction: Direction::Inbound,
            bind_port: 3306,
            mesh: &mesh,
        };
        assert!(tcp_filter(&ctx).unwrap().is_none(), "nothing applies: no filter");
    }

    /// `singleSanPeers` only when the certificate directory holds `wasmeshctl certs`' CA key.
    #[test]
    fn single_san_peers_when_the_mesh_ca_is_wasmeshctls() {
        let f = |name: &str| WasmFilter { name: name.into(), config: json!({"stage": "tcp"}), fail_open: false };
        let c = Contribution {
            network_filters: vec![f("wasmesh.stats.tcp"), f(TCP_FILTER_NAME)],
            ..Contribution::default()
        };
        let dir = std::env::temp_dir().join(format!("wasmesh-single-san-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c2, x) = single_san_peers((c.clone(), vec![f(TCP_FILTER_NAME)]), Some(&dir));
        assert!(
            c2.network_filters.iter().chain(&x).all(|f| f.config.get("singleSanPeers").is_none()),
            "no CA key: not set"
        );
        std::fs::write(dir.join(crate::certs::ROOT_KEY), "k").unwrap();
        let (c3, x) = single_san_peers((c, vec![f(TCP_FILTER_NAME)]), Some(&dir));
        assert_eq!(c3.network_filters[1].config["singleSanPeers"], true);
        assert_eq!(x[0].config["singleSanPeers"], true);
        assert!(c3.network_filters[0].config.get("singleSanPeers").is_none(), "only the authz filter");
        let _ = std::fs::remove_dir_all(&dir);
        // The filter accepts what the controller writes.
        let cfg: AuthzConfig = serde_json::from_value(json!({"stage": "tcp", "singleSanPeers": true})).unwrap();
        assert!(cfg.single_san_peers);
    }

    #[test]
    fn tcp_filter_checks_with_a_grpc_provider() {
        // A CUSTOM policy with a gRPC provider: Envoy's network ext_authz, as istiod writes it.
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: m, namespace: foo}\nspec: {action: CUSTOM, provider: {name: grpc}, rules: [{}]}\n";
        let res = resources(yaml);
        let wl = Workload::new("httpbin", "foo");
        let mesh = MeshConfig {
            extension_providers: vec![
                json!({"name": "grpc", "envoyExtAuthzGrpc": {"service": "authz.foo.svc.cluster.local", "port": 9000}}),
            ],
            ..MeshConfig::default()
        };
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: 3306,
            mesh: &mesh,
        };
        let f = tcp_filter(&ctx).unwrap().expect("the CUSTOM policy applies");
        assert_eq!(f.config["stage"], "tcp");
        let clusters = tcp_provider_clusters(&ctx);
        assert_eq!(clusters.len(), 1);
        assert_eq!(clusters[0]["name"], "outbound|9000||authz.foo.svc.cluster.local");
        assert!(clusters[0]["typed_extension_protocol_options"].is_object(), "gRPC: HTTP/2");
        // Still refused: what the TCP translation cannot take (an invalid policy).
        let bad = resources("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b, namespace: foo}\nspec: {action: DENY, rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]}\n");
        let ctx = ListenerContext { resources: &bad, ..ctx };
        let e = tcp_filter(&ctx).unwrap_err();
        assert!(e[0].to_string().contains("AuthorizationPolicy foo/b"), "{e:?}");
    }

    #[test]
    fn strict_peer_authentication_alone_installs_the_filter_inbound() {
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n";
        let c = ctx_run(pa, Direction::Inbound, &MeshConfig::default(), Stage::All).unwrap();
        assert_eq!(c.http_filters.len(), 1);
        let g = ctx_run(pa, Direction::Gateway { port: 80 }, &MeshConfig::default(), Stage::All).unwrap();
        assert!(g.http_filters.is_empty(), "PeerAuthentication does not apply to gateways");
    }

    /// The default wiring (CUSTOM instance before authn, RBAC instance after it) installs one
    /// filter for a STRICT PeerAuthentication alone, and the CUSTOM instance only with a CUSTOM
    /// policy, which then enforces the PeerAuthentication (it runs first).
    #[test]
    fn strict_peer_authentication_alone_installs_one_filter_in_the_split_wiring() {
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}\n";
        let mesh = MeshConfig::default();
        let split = |yaml: &str, mesh: &MeshConfig| -> Vec<WasmFilter> {
            let mut out = ctx_run(yaml, Direction::Inbound, mesh, Stage::Custom).unwrap().http_filters;
            out.extend(ctx_run(yaml, Direction::Inbound, mesh, Stage::Rbac).unwrap().http_filters);
            out
        };
        let filters = split(pa, &mesh);
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [FILTER_NAME], "one authz instance for STRICT alone");
        // Whether the instance refuses a plaintext request on the workload port.
        let refuses_plaintext = |f: &WasmFilter| {
            let a = AuthzConfig::compile_json(f.config.to_string().as_bytes()).unwrap();
            let plaintext = wasmesh_authz::Request { destination_port: Some(8000), ..Default::default() };
            a.peer_authn(&plaintext).is_some_and(|v| !v.allowed)
        };
        assert!(refuses_plaintext(&filters[0]), "the RBAC instance enforces STRICT");

        let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: c, namespace: foo}\nspec: {action: CUSTOM, provider: {name: ext}, rules: [{to: [{operation: {paths: [/ext]}}]}]}\n---\n";
        let mesh: MeshConfig = yaml_serde::from_str(
            "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: 127.0.0.1, port: 9191}}]",
        )
        .unwrap();
        let filters = split(&format!("{custom}{pa}"), &mesh);
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [CUSTOM_FILTER_NAME], "CUSTOM + STRICT: the RBAC instance has nothing to do");
        assert!(refuses_plaintext(&filters[0]), "the CUSTOM instance, first on the chain, enforces STRICT");

        let deny = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, namespace: foo}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/d]}}]}]}\n---\n";
        let filters = split(&format!("{custom}{deny}{pa}"), &mesh);
        let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, [CUSTOM_FILTER_NAME, FILTER_NAME]);
        assert!(refuses_plaintext(&filters[0]));
        assert!(!refuses_plaintext(&filters[1]), "the RBAC instance does not check it again");
    }

    #[test]
    fn the_decision_is_written_only_where_another_filter_reads_it() {
        let filter = |name: &str, config: Value| WasmFilter { name: name.into(), config, fail_open: false };
        let authz = || vec![filter(CUSTOM_FILTER_NAME, json!({})), filter(FILTER_NAME, json!({"stage": "rbac"}))];
        let state = |fs: &[WasmFilter]| -> Vec<Option<Value>> {
            fs.iter()
                .filter(|f| f.name.starts_with("wasmesh.authz"))
                .map(|f| f.config.get("decisionFilterState").cloned())
                .collect()
        };

        let mut unread = authz();
        unread.insert(0, filter("wasmesh.access_log", json!({"logs": [{"text": "%RESPONSE_CODE%\n"}]})));
        decision_filter_state_when_read(&mut unread);
        assert_eq!(state(&unread), [Some(json!(false)), Some(json!(false))]);

        let mut read = authz();
        read.insert(
            0,
            filter(
                "wasmesh.access_log",
                json!({"logs": [{"text": "%FILTER_STATE(wasm.wasmesh.authz.decision:PLAIN)%\n"}]}),
            ),
        );
        decision_filter_state_when_read(&mut read);
        assert_eq!(state(&read), [None, None], "left at its default, on");
    }
}
