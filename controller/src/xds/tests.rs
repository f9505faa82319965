use super::*;
use crate::layout::Layout;

const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews, namespace: default}
spec: {address: 127.0.0.1, labels: {app: reviews, version: v1}, serviceAccount: reviews, ports: {http: 19080}}
"#;

fn resources(yaml: &str) -> Resources {
    Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}")) }
}

fn node() -> NodeSpec {
    NodeSpec {
        role: "sidecar".into(),
        workload: "default/reviews".into(),
        inbound: vec![InboundPort { port: 19080, app_port: 9 }],
        outbound_port: Some(15001),
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port: 15000,
        wasm_dir: PathBuf::from("/wasm"),
        mesh_config: None,
        certs_dir: None,
        envoy_access_log: None,
        credentials_dir: None,
    }
}

fn http_filter_names(l: &Value) -> Vec<String> {
    let hcm = l["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap();
    hcm["typed_config"]["http_filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// Without any policy the xDS bootstrap already has the authn and authz slots (configured to
/// allow, as Istio without a policy), while the static bootstrap has no such filter.
#[test]
fn every_slot_exists_without_a_policy_and_only_in_xds_mode() {
    let res = resources(MESH);
    let boot = xds_bootstrap_in(&node(), Layout::PerFilter, &res, "127.0.0.1:18000").unwrap();
    assert_eq!(layout_from_metadata(&boot["node"]["metadata"]), Ok(Layout::PerFilter));
    let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
    let inbound = listeners.iter().find(|l| l["name"] == "inbound_19080").unwrap();
    assert_eq!(
        http_filter_names(inbound),
        [
            "inbound_19080/wasmesh.stats",
            "inbound_19080/wasmesh.authz.custom",
            "inbound_19080/wasmesh.authn",
            "inbound_19080/wasmesh.authz",
            "envoy.filters.http.grpc_stats",
            "envoy.filters.http.router"
        ]
    );
    let slot = &inbound["filter_chains"][0]["filters"][0];
    assert_eq!(slot["name"], "inbound_19080/wasmesh.authz.peer_address");
    assert_eq!(slot["config_discovery"]["type_urls"], json!([NETWORK_WASM_TYPE]));
    assert!(slot["config_discovery"]["config_source"].get("ads").is_some());
    assert!(slot.get("typed_config").is_none(), "no default config: a slot never runs unconfigured");
    assert_eq!(boot["static_resources"]["clusters"].as_array().unwrap().len(), 1, "only the xDS cluster is static");
    assert_eq!(boot["dynamic_resources"]["cds_config"]["ads"], json!({}));
    let meta = &boot["node"]["metadata"];
    assert_eq!(node_spec_from_metadata(meta).unwrap(), node());

    let statik = crate::bootstrap::build(&node().to_spec(&res).unwrap(), &res).unwrap();
    let inbound = statik["static_resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "inbound_19080")
        .unwrap();
    assert_eq!(
        http_filter_names(inbound),
        ["wasmesh.stats", "envoy.filters.http.grpc_stats", "envoy.filters.http.router"]
    );
}

/// One pass (the default): the slots of a listener are one ECDS resource, `wasmesh.chain`, whose
/// phases are the per-filter slots' configurations in their order; the network slots are as
/// per-filter; the server learns the layout from the node metadata.
#[test]
fn one_pass_is_one_slot_holding_the_per_filter_configurations() {
    let res = resources(MESH);
    let boot = xds_bootstrap(&node(), &res, "127.0.0.1:18000").unwrap();
    assert_eq!(boot["node"]["metadata"][LAYOUT_KEY], "one-pass");
    assert_eq!(layout_from_metadata(&boot["node"]["metadata"]), Ok(Layout::OnePass));
    let listeners = boot["static_resources"]["listeners"].as_array().unwrap();
    let inbound = listeners.iter().find(|l| l["name"] == "inbound_19080").unwrap();
    assert_eq!(
        http_filter_names(inbound),
        ["inbound_19080/wasmesh.chain", "envoy.filters.http.grpc_stats", "envoy.filters.http.router"]
    );
    assert_eq!(inbound["filter_chains"][0]["filters"][0]["name"], "inbound_19080/wasmesh.authz.peer_address");
    let outbound = listeners.iter().find(|l| l["name"] == "outbound_15001").unwrap();
    assert_eq!(
        http_filter_names(outbound),
        [
            "outbound_15001/wasmesh.chain",
            "envoy.filters.http.grpc_stats",
            "envoy.filters.http.fault",
            "envoy.filters.http.router"
        ],
        "served live, the fault filter follows the router from the start"
    );

    let one = build(&node(), &res).unwrap();
    let per = build_in(&node(), Layout::PerFilter, &res).unwrap();
    let config = |pr: &ProxyResources, name: &str| -> Value {
        let c = &pr.extension_configs[name]["typed_config"]["config"];
        serde_json::from_str(c["configuration"]["value"].as_str().unwrap()).unwrap()
    };
    let chain = &one.extension_configs["inbound_19080/wasmesh.chain"]["typed_config"]["config"];
    assert_eq!(chain["root_id"], "wasmesh.chain");
    assert_eq!(chain["failure_policy"], "FAIL_RELOAD", "authz inside: the chain fails closed");
    let phases = config(&one, "inbound_19080/wasmesh.chain")["phases"].as_array().unwrap().clone();
    let ids: Vec<&str> = phases.iter().map(|p| p["rootId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["wasmesh.stats", "wasmesh.authz.custom", "wasmesh.authn", "wasmesh.authz"]);
    for p in &phases {
        let id = p["rootId"].as_str().unwrap();
        let mut phase = p["configuration"].clone();
        let separate = config(&per, &format!("inbound_19080/{id}"));
        if id == "wasmesh.authn" {
            // The chain's authz reads the identity in memory: authn's write to Envoy is off
            // there, on where a separate authz filter reads it.
            assert_eq!(phase.as_object_mut().unwrap().remove("identityFilterState"), Some(Value::Bool(false)));
            assert_eq!(separate.get("identityFilterState"), None, "per-filter: the default, on");
        }
        assert_eq!(phase, separate, "{id}");
    }
    assert!(!one.extension_configs.contains_key("inbound_19080/wasmesh.authz"));
    assert_eq!(
        one.extension_configs["inbound_19080/wasmesh.authz.peer_address"],
        per.extension_configs["inbound_19080/wasmesh.authz.peer_address"]
    );
    assert_ne!(one.listeners_hash(), per.listeners_hash(), "an Envoy of the other layout needs a new bootstrap");

    assert_eq!(layout_from_metadata(&json!({})), Ok(Layout::OnePass), "absent: the default");
    let e = layout_from_metadata(&json!({LAYOUT_KEY: "both"})).unwrap_err();
    assert!(e.contains(LAYOUT_KEY) && e.contains("\"both\"") && e.contains("one-pass or per-filter"), "{e}");
}

/// Every served resource is valid protobuf of Envoy's API, and the listeners do not depend on
/// the policies (the hash a node carries stays valid while policies change).
#[test]
fn served_resources_encode_and_listeners_do_not_move_with_policies() {
    let plain = build(&node(), &resources(MESH)).unwrap();
    let policy = MESH.to_string()
        + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: default}\nspec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n";
    let with = build(&node(), &resources(&policy)).unwrap();
    assert_eq!(plain.listeners_hash(), with.listeners_hash());
    assert_ne!(
        plain.extension_configs["inbound_19080/wasmesh.chain"], with.extension_configs["inbound_19080/wasmesh.chain"],
        "the policy reaches the chain's authz phase"
    );
    for (name, c) in &with.extension_configs {
        let any = proto::to_any(ECDS_TYPE, c).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!any.value.is_empty());
    }
    for (name, c) in &with.clusters {
        proto::to_any(CLUSTER_TYPE, c).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let e = proto::to_any(CLUSTER_TYPE, &json!({"name": "x", "no_such_field": 1})).unwrap_err();
    assert!(e.contains("no_such_field"), "{e}");
}

#[test]
fn bad_addresses_and_foreign_nodes_are_explained() {
    let e = xds_bootstrap(&node(), &resources(MESH), "localhost").unwrap_err();
    assert!(e[0].to_string().contains("HOST:PORT"), "{e:?}");
    let e = node_spec_from_metadata(&json!({"NAMESPACE": "default"})).unwrap_err();
    assert!(e.contains("wasmeshctl envoy --xds"), "{e}");
}

/// Served live, Envoy's fault filter follows the router from the start (the filter chain is fixed
/// when Envoy starts): a VirtualService `fault` added later is carried out, and adding it does not
/// move the listeners. Inbound listeners (no router) get none.
#[test]
fn the_fault_filter_is_there_before_a_live_fault_arrives() {
    let plain = build(&node(), &resources(MESH)).unwrap();
    let fault = MESH.to_string()
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews]\n  http:\n  - fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}\n    route: [{destination: {host: reviews}}]\n";
    let with = build(&node(), &resources(&fault)).unwrap();
    assert_eq!(plain.listeners_hash(), with.listeners_hash(), "a live fault needs no new bootstrap");
    for layout in [Layout::OnePass, Layout::PerFilter] {
        let pr = build_in(&node(), layout, &resources(MESH)).unwrap();
        let out = pr.listeners.iter().find(|l| l["name"] == "outbound_15001").unwrap();
        let names = http_filter_names(out);
        let fault_at = names.iter().position(|n| n == "envoy.filters.http.fault");
        assert_eq!(fault_at, Some(names.len() - 2), "{layout:?}: fault filter before Envoy's router: {names:?}");
        let inbound = pr.listeners.iter().find(|l| l["name"] == "inbound_19080").unwrap();
        assert!(!http_filter_names(inbound).iter().any(|n| n == "envoy.filters.http.fault"), "{layout:?}");
        let configs = serde_json::to_string(&pr.extension_configs).unwrap().replace('\\', "");
        assert!(configs.contains(r#""faultFilter":true"#), "{layout:?}: the router knows the fault filter is there");
        assert!(configs.contains(r#""faultHeadersRemoved":true"#), "{layout:?}: and that Envoy removes client copies");
        assert!(!configs.contains("faultRoutes"), "{layout:?}: no fault routes, which a live fault could not add");
        let hcm = &out["filter_chains"][0]["filters"].as_array().unwrap().last().unwrap()["typed_config"];
        let fault = hcm["http_filters"].as_array().unwrap().iter().find(|f| f["name"] == "envoy.filters.http.fault");
        assert_eq!(fault.unwrap()["typed_config"]["abort"]["header_abort"], json!({}), "{layout:?}: header-controlled");
        assert!(hcm.get("early_header_mutation_extensions").is_some(), "{layout:?}");
    }
    // A static bootstrap keeps the fault filter only where a route injects faults.
    let spec = node().to_spec(&resources(MESH)).unwrap();
    let boot = bootstrap::build(&spec, &resources(MESH)).unwrap();
    let statics = boot["static_resources"]["listeners"].as_array().unwrap();
    let out = statics.iter().find(|l| l["name"] == "outbound_15001").unwrap();
    assert!(!http_filter_names(out).iter().any(|n| n == "envoy.filters.http.fault"));
}
