//! Which module an Envoy runs: `wasmesh.wasm`, or `wasmesh-request.wasm` (the same compiled module
//! without the response-side callbacks, `make wasm`; [`wasmesh_istio::module`]) when no wasmesh
//! filter of that Envoy needs one. Envoy skips a callback a module does not export, about 2.1k
//! instructions of its worker per callback and request (BENCHMARKS.md "A module without
//! response-side callbacks"); one module per Envoy, as two would double V8's compiled code.
//!
//! What a filter needs is the rule its phases apply in the module (wasmesh-proxy
//! `Phase::callbacks`, which refuses a configuration needing a callback the module lacks): the
//! cores' functions on the configuration compiled as the filter compiles it ([`callbacks`]).

use serde_json::Value;
use wasmesh_istio::module::{Callbacks, Variant};
use wasmesh_istio::FilterConfig;

/// The response-side callbacks the filter `root_id` needs with its plugin configuration `config`,
/// by the rule of its phases: the router's tables ([`wasmesh_router::Router::callbacks`]), the
/// authz policies ([`wasmesh_authz::Authz::callbacks`]), authn ([`wasmesh_authn::HTTP_CALLBACKS`]),
/// the union of a chain's phases; every other filter (stats, access logs, tracing, OIDC, TCP
/// metrics), or a configuration that does not compile, all of them.
pub fn callbacks(root_id: &str, config: &Value) -> Callbacks {
    let bytes = config.to_string();
    let rest = root_id.strip_prefix("wasmesh.").unwrap_or("");
    match rest.split('.').next().unwrap_or(rest) {
        "router" => router(bytes.as_bytes()).unwrap_or(Callbacks::ALL),
        // The network role recording the peer address (wasmesh authz `PeerAddressPhase`).
        "authz" if config.get("role").and_then(Value::as_str) == Some("peerAddress") => Callbacks::NONE,
        "authz" => authz(bytes.as_bytes()).unwrap_or(Callbacks::ALL),
        "authn" => wasmesh_authn::HTTP_CALLBACKS,
        "chain" => chain(config).unwrap_or(Callbacks::ALL),
        _ => Callbacks::ALL,
    }
}

/// As the router filter compiles its configuration (the same core function,
/// `RouterConfig::compile_tables`).
fn router(bytes: &[u8]) -> Option<Callbacks> {
    let cfg = wasmesh_router::RouterConfig::parse_json(bytes).ok()?;
    let resources = cfg.parsed_resources().ok()?;
    cfg.workload.as_ref()?;
    Some(cfg.compile_tables(&resources).ok()?.callbacks())
}

/// As the authz filter compiles its configuration (filters/authz `compile`).
fn authz(bytes: &[u8]) -> Option<Callbacks> {
    let cfg = wasmesh_authz::AuthzConfig::parse_json(bytes).ok()?;
    let resources = cfg.parsed_resources().ok()?;
    cfg.workload.as_ref()?;
    Some(cfg.compile(&resources).ok()?.callbacks())
}

/// A `wasmesh.chain`: the union of its phases.
fn chain(config: &Value) -> Option<Callbacks> {
    let mut out = Callbacks::NONE;
    for phase in config.get("phases")?.as_array()? {
        let root_id = phase.get("rootId")?.as_str()?;
        out = out.union(callbacks(root_id, phase.get("configuration")?));
    }
    Some(out)
}

/// The module for an Envoy running these wasmesh filters (root id, plugin configuration):
/// the request-side one only when none of them needs a response-side callback.
pub fn variant_for<'a>(filters: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Variant {
    Variant::for_needs(filters.into_iter().fold(Callbacks::NONE, |c, (id, config)| c.union(callbacks(id, config))))
}

/// The wasmesh plugins of `config` (one Envoy's bootstrap or listeners): each one's root id and
/// plugin configuration (`Value::Null` when it is not JSON: no rule applies, so the full module).
pub fn plugins(config: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut copy = config.clone();
    visit(&mut copy, &mut |plugin| {
        let root_id = plugin.get("root_id").and_then(Value::as_str).unwrap_or("").to_string();
        let text = plugin.pointer("/configuration/value").and_then(Value::as_str).unwrap_or("");
        out.push((root_id, serde_json::from_str(text).unwrap_or(Value::Null)));
    });
    out
}

/// Points every wasmesh plugin of `config` (one Envoy's bootstrap or listeners) at the module
/// [`variant_for`] picks for all of them, and returns it. The plugins are written with
/// `wasmesh.wasm`; nothing changes when that is the pick.
pub fn pick(config: &mut Value) -> Variant {
    let found = plugins(config);
    let variant = variant_for(found.iter().map(|(id, c)| (id.as_str(), c)));
    point_at(config, variant);
    variant
}

/// Points every wasmesh plugin of `config` at `variant`'s module file (same directory).
pub fn point_at(config: &mut Value, variant: Variant) {
    visit(config, &mut |plugin| {
        if let Some(Value::String(file)) = plugin.pointer_mut("/vm_config/code/local/filename") {
            if let Some(m) = Variant::ALL.into_iter().find(|m| file.ends_with(m.file_name())) {
                let dir = file.len() - m.file_name().len();
                file.replace_range(dir.., variant.file_name());
            }
        }
    });
}

/// Calls `f` with each wasmesh plugin configuration in `v`: an object with a `vm_config` whose
/// `vm_id` is wasmesh's and whose code is `wasmesh.wasm` (or a variant) on the local disk.
fn visit(v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let is_plugin = v.pointer("/vm_config/vm_id").and_then(Value::as_str) == Some(crate::bootstrap::VM_ID)
        && v.pointer("/vm_config/code/local/filename")
            .and_then(Value::as_str)
            .is_some_and(|f| Variant::ALL.iter().any(|m| f.ends_with(m.file_name())));
    if is_plugin {
        f(v);
        return;
    }
    match v {
        Value::Object(map) => map.values_mut().for_each(|v| visit(v, f)),
        Value::Array(items) => items.iter_mut().for_each(|v| visit(v, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{build_with, workload_from_entry, Inbound, ProxySpec, Slots};
    use crate::{Layout, MeshConfig};
    use std::path::PathBuf;
    use wasmesh_istio::Resources;

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
kind: WorkloadEntry
metadata: {name: reviews, namespace: default}
spec: {address: 127.0.0.1, labels: {app: reviews}, serviceAccount: reviews, ports: {http: 9080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules: [{issuer: "https://issuer.example", jwks: '{"keys": []}'}]
"#;

    const VS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - headers: {request: {set: {x-a: "1"}}}
    route: [{destination: {host: reviews}}]
"#;

    /// The wasmesh plugins of a sidecar with an inbound (authn, authz, stats) and an outbound
    /// (router, stats) listener, one Envoy filter per wasmesh filter, and the module picked.
    fn sidecar(yaml: &str, layout: Layout) -> (Vec<(String, Value)>, Value) {
        let res = Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) };
        let (workload, _) = workload_from_entry(&res, "default/reviews").unwrap();
        let spec = ProxySpec {
            workload,
            inbound: vec![Inbound { port: 9080, app_port: 9 }],
            outbound_port: Some(15001),
            tcp_outbound: Vec::new(),
            gateway_ports: Vec::new(),
            admin_port: 15000,
            wasm_dir: PathBuf::from("/wasm"),
            mesh: MeshConfig::default(),
            certs_dir: None,
            envoy_access_log: None,
            credentials_dir: None,
        };
        let boot = build_with(&spec, &res, Slots::AsNeeded, layout).unwrap_or_else(|e| panic!("{e:?}"));
        (plugins(&boot), boot)
    }

    fn files(boot: &Value) -> Vec<String> {
        let mut out = Vec::new();
        let mut copy = boot.clone();
        visit(&mut copy, &mut |p| {
            out.push(p.pointer("/vm_config/code/local/filename").and_then(Value::as_str).unwrap_or("").to_string())
        });
        out
    }

    /// The filters but the telemetry ones (which need `proxy_on_log`).
    fn without_stats(plugins: &[(String, Value)]) -> Vec<(&str, &Value)> {
        plugins.iter().filter(|(id, _)| !id.starts_with("wasmesh.stats")).map(|(id, c)| (id.as_str(), c)).collect()
    }

    #[test]
    fn request_side_filters_need_no_response_callback_by_their_phases_rule() {
        let (plugins, boot) = sidecar(&format!("{MESH}{VS}"), Layout::PerFilter);
        let ids: Vec<&str> = plugins.iter().map(|(id, _)| id.as_str()).collect();
        for want in ["wasmesh.router", "wasmesh.authz", "wasmesh.authn", "wasmesh.stats"] {
            assert!(ids.contains(&want), "{want} missing in {ids:?}");
        }
        for (id, config) in without_stats(&plugins) {
            assert_eq!(callbacks(id, config), Callbacks::NONE, "{id}");
        }
        assert_eq!(variant_for(without_stats(&plugins)), Variant::RequestSide);
        // The stats filter needs proxy_on_log (and the response): with it, the full module, and
        // the bootstrap wasmeshctl writes says so.
        let stats = plugins.iter().find(|(id, _)| id == "wasmesh.stats").map(|(id, c)| callbacks(id, c));
        assert_eq!(stats, Some(Callbacks::ALL));
        assert!(!files(&boot).is_empty());
        assert!(files(&boot).iter().all(|f| f == "/wasm/wasmesh.wasm"), "{:?}", files(&boot));
    }

    #[test]
    fn a_route_with_response_header_operations_needs_the_full_module() {
        let vs = VS.replace(r#"{request: {set: {x-a: "1"}}}"#, r#"{response: {set: {x-a: "1"}}}"#);
        let (plugins, _) = sidecar(&format!("{MESH}{vs}"), Layout::PerFilter);
        let router = plugins.iter().find(|(id, _)| id == "wasmesh.router").map(|(id, c)| callbacks(id, c));
        assert_eq!(router, Some(Callbacks::RESPONSE_HEADERS));
        assert_eq!(variant_for(without_stats(&plugins)), Variant::Full);
    }

    #[test]
    fn a_chain_needs_what_its_phases_need() {
        let (plugins, _) = sidecar(&format!("{MESH}{VS}"), Layout::OnePass);
        let chains: Vec<&Value> = plugins.iter().filter(|(id, _)| id == "wasmesh.chain").map(|(_, c)| c).collect();
        assert!(!chains.is_empty(), "{plugins:?}");
        for c in chains {
            // With its stats phase: everything; without: what the others need, none.
            assert_eq!(callbacks("wasmesh.chain", c), Callbacks::ALL);
            let mut c = c.clone();
            if let Some(Value::Array(phases)) = c.get_mut("phases") {
                phases.retain(|p| p["rootId"] != "wasmesh.stats");
            }
            assert_eq!(callbacks("wasmesh.chain", &c), Callbacks::NONE, "{c}");
        }
    }

    #[test]
    fn unknown_filters_and_configurations_that_do_not_compile_need_everything() {
        assert_eq!(callbacks("wasmesh.tracing", &serde_json::json!({})), Callbacks::ALL);
        assert_eq!(callbacks("wasmesh.router", &Value::Null), Callbacks::ALL);
        assert_eq!(callbacks("wasmesh.authz", &serde_json::json!({"resources": 1})), Callbacks::ALL);
        assert_eq!(
            callbacks("wasmesh.chain", &serde_json::json!({"phases": [{"rootId": "wasmesh.authn"}]})),
            Callbacks::ALL
        );
        assert_eq!(
            callbacks("wasmesh.authz.peer_address", &serde_json::json!({"role": "peerAddress"})),
            Callbacks::NONE
        );
        assert_eq!(variant_for([]), Variant::RequestSide);
    }

    #[test]
    fn pick_points_every_wasmesh_plugin_at_the_picked_module() {
        let (_, boot) = sidecar(&format!("{MESH}{VS}"), Layout::PerFilter);
        // Without the stats filters (as a bootstrap whose filters are all request-side).
        let mut lean = boot.clone();
        fn drop_stats(v: &mut Value) {
            match v {
                Value::Array(items) => {
                    items.retain(|f| !f["name"].as_str().is_some_and(|n| n.starts_with("wasmesh.stats")));
                    items.iter_mut().for_each(drop_stats);
                }
                Value::Object(map) => map.values_mut().for_each(drop_stats),
                _ => {}
            }
        }
        drop_stats(&mut lean);
        assert_eq!(pick(&mut lean), Variant::RequestSide);
        let lean_files = files(&lean);
        assert!(lean_files.len() >= 3, "{lean_files:?}");
        assert!(lean_files.iter().all(|f| f == "/wasm/wasmesh-request.wasm"), "{lean_files:?}");
        // Picking again is stable, and the full bootstrap stays (or goes back) on wasmesh.wasm.
        assert_eq!(pick(&mut lean), Variant::RequestSide);
        let mut full = boot;
        assert_eq!(pick(&mut full), Variant::Full);
        assert!(files(&full).iter().all(|f| f == "/wasm/wasmesh.wasm"));
    }
}
