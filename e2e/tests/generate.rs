//! What `wasmeshctl generate` emits, loaded into real Envoy 1.40 the way Istio would load it.
//!
//! For every format, each generated plugin becomes the Envoy config istiod (and the istio-agent)
//! would make of it: the `envoy.extensions.filters.{http,network}.wasm.v3.Wasm` typed config
//! with `PluginConfig{name, root_id, configuration, failure_policy}` and the code rewritten to
//! `local.filename` of the real built module (what the agent does after the OCI pull), in the
//! listener kinds the plugin attaches to (sidecar inbound HTTP, TCP ports, gateway), with the
//! proxy's node metadata written as Istio's injector writes it. The inline EnvoyFilter keeps its
//! remote code and gets the CLUSTER of its patch; the ECDS EnvoyFilter's HTTP filter keeps its
//! `config_discovery` (ADS, the RBAC type URL). `envoy --mode validate` checks all of it and
//! starts each module's VM with its configuration (a configuration the filter refuses fails).
//! Then one bootstrap runs for real and requests pass through filters configured from the
//! generated pluginConfig: a decision from the authz plugin, metrics from the stats plugin, and
//! the inline EnvoyFilter's module downloaded by Envoy from a loopback server with its sha256.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasmesh_controller::generate::{self, Context, Format, Options, Plugin};
use wasmesh_controller::MeshConfig;
use wasmesh_e2e::paths::{envoy_bin, repo_root, wasm_dir, TempDir};
use wasmesh_e2e::{free_port, request, Envoy};
use wasmesh_istio::{load_dir_or_files, load_str, Resources};

const IMAGE: &str = "oci://localhost:5000/wasmesh:0.1.0";
const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every plugin kind: CUSTOM authz, JWT (jwksUri: a JWKS cluster), ipBlocks (the peer address
/// network plugin), a TCP service port (network authz and TCP metrics), a gateway policy.
const EXTRA: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: block, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["203.0.113.0/24"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gateway-methods, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules:
  - issuer: https://idp.example.com
    jwksUri: https://idp.example.com/keys
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: reviews}}
  jwtRules:
  - issuer: issuer-inline
    jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: mysql, namespace: default}
spec:
  hosts: [mysql.default.svc.cluster.local]
  ports: [{number: 3306, name: tcp-mysql, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: mysql}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: mysql-v1, namespace: default}
spec:
  address: 127.0.0.1
  labels: {app: mysql, version: v1}
  serviceAccount: mysql
"#;

const MESH: &str = "extensionProviders: [{name: ext-authz, envoyExtAuthzHttp: {service: ext-authz.default.svc.cluster.local, port: 9000}}]\n";

fn resources(extra: bool) -> Resources {
    let mut r = load_dir_or_files(&[repo_root().join("examples/bookinfo")]).unwrap_or_else(|e| panic!("{e}"));
    if extra {
        r.items.extend(load_str(EXTRA, "extra.yaml").unwrap_or_else(|e| panic!("{e}")));
    }
    r
}

fn mesh() -> MeshConfig {
    MeshConfig::load(MESH, "mesh.yaml").unwrap()
}

fn options(format: Format) -> Options {
    let mut o = Options { format, mesh: mesh(), ..Options::default() };
    if format == Format::EnvoyFilter {
        o.module_url = Some("http://127.0.0.1:8080/wasm/wasmesh.wasm".into());
        o.module_sha256 = Some(DIGEST.into());
    } else {
        o.image = Some(IMAGE.into());
        o.sha256 = Some(DIGEST.into());
    }
    o
}

/// The module that serves a root id: the one wasmesh module (C3) once it is built, else the
/// per-filter module that has that root id today.
fn module(root_id: &str) -> PathBuf {
    let one = wasm_dir().join("wasmesh.wasm");
    if one.exists() {
        return one;
    }
    let stem = root_id.trim_start_matches("wasmesh.").split('.').next().unwrap_or("");
    let path = wasm_dir().join(format!("{stem}.wasm"));
    assert!(path.exists(), "{} missing: run `make wasm`", path.display());
    path
}

/// A proxy the bootstrap stands for: Istio node id and metadata as the injector writes them.
struct Proxy {
    gateway: bool,
    name: &'static str,
    namespace: &'static str,
    labels: Value,
    service_account: &'static str,
}

const PRODUCTPAGE: fn() -> Proxy = || Proxy {
    gateway: false,
    name: "productpage-v1",
    namespace: "default",
    labels: json!({"app": "productpage", "version": "v1"}),
    service_account: "bookinfo-productpage",
};
const GATEWAY: fn() -> Proxy = || Proxy {
    gateway: true,
    name: "istio-ingressgateway",
    namespace: "istio-system",
    labels: json!({"istio": "ingressgateway", "app": "istio-ingressgateway"}),
    service_account: "istio-ingressgateway-service-account",
};

impl Proxy {
    fn node(&self) -> Value {
        let kind = if self.gateway { "router" } else { "sidecar" };
        json!({
            "id": format!("{kind}~127.0.0.1~{}.{}~{}.svc.cluster.local", self.name, self.namespace, self.namespace),
            "cluster": format!("{}.{}", self.name, self.namespace),
            "metadata": {
                "NAMESPACE": self.namespace,
                "WORKLOAD_NAME": self.name,
                "LABELS": self.labels,
                "SERVICE_ACCOUNT": self.service_account,
                "CLUSTER_ID": "Kubernetes",
                "MESH_ID": "cluster.local",
            },
        })
    }

    /// The pluginConfig as the module reads it. With node-derived identity (C2) that is the
    /// generated JSON unchanged; a module without it still needs `workload` (and stats its
    /// `direction`), built here from the same facts the node metadata carries.
    fn module_config(&self, root_id: &str, plugin_config: &Value, ctx: Context) -> Value {
        if node_identity() {
            return plugin_config.clone();
        }
        let mut c = plugin_config.clone();
        let mesh = c.as_object_mut().unwrap().remove("mesh").unwrap_or(Value::Null);
        if c.get("role").is_some() {
            return c; // the peer-address recorder has no identity
        }
        c["workload"] = json!({
            "name": self.name, "namespace": self.namespace, "labels": self.labels,
            "serviceAccount": self.service_account, "mode": if self.gateway { "gateway" } else { "sidecar" },
            "trustDomain": mesh["trustDomain"], "rootNamespace": mesh["rootNamespace"], "domainSuffix": mesh["domainSuffix"],
        });
        if root_id.starts_with("wasmesh.stats") {
            c["direction"] = json!(match ctx {
                Context::SidecarInbound => "inbound",
                Context::SidecarOutbound => "outbound",
                Context::Gateway => "gateway",
            });
        }
        c
    }
}

/// Whether the filters build their identity from node metadata (C2): the stats core's config
/// type then reads a configuration without `workload`, with `mesh`.
fn node_identity() -> bool {
    serde_json::from_slice::<wasmesh_controller::plugins::stats::core::StatsConfig>(br#"{"mesh":{}}"#).is_ok()
}

/// The typed config istiod + agent make of a WasmPlugin/TrafficExtension `spec` (or `spec.wasm`).
fn typed_config_of_wasm_spec(proxy: &Proxy, namespace: &str, name: &str, wasm: &Value, ctx: Context) -> Value {
    let root = wasm["pluginName"].as_str().unwrap();
    let network = wasm["type"] == "NETWORK";
    let config = proxy.module_config(root, &wasm["pluginConfig"], ctx);
    json!({
        "@type": if network { generate::NETWORK_WASM_TYPE } else { generate::HTTP_WASM_TYPE },
        "config": {
            "name": format!("{namespace}.{name}"),
            "root_id": root,
            "failure_policy": match wasm["failStrategy"].as_str() { Some("FAIL_OPEN") => "FAIL_OPEN", _ => "FAIL_CLOSED" },
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()},
            "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": module(root)}}},
        },
    })
}

/// The generated PluginConfig with its code rewritten to the local module (what the agent
/// does for ECDS) and its configuration as the module reads it.
fn agent_rewrite(proxy: &Proxy, typed: &Value, ctx: Context) -> Value {
    let mut t = typed.clone();
    let root = t["config"]["root_id"].as_str().unwrap().to_string();
    let cfg: Value = serde_json::from_str(t["config"]["configuration"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(t["config"]["vm_config"]["code"]["remote"]["http_uri"]["uri"], IMAGE, "{typed}");
    t["config"]["vm_config"]["code"] = json!({"local": {"filename": module(&root)}});
    t["config"]["configuration"]["value"] = json!(proxy.module_config(&root, &cfg, ctx).to_string());
    t
}

/// One Envoy listener chain set: HTTP filters, network filters before the HCM, network
/// filters of TCP ports (before tcp_proxy).
#[derive(Default)]
struct Chains {
    http: Vec<Value>,
    network: Vec<Value>,
    tcp: Vec<Value>,
    clusters: Vec<Value>,
    ads: bool,
}

fn hcm(http: &[Value]) -> Value {
    let mut filters = http.to_vec();
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "inbound",
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "app"}}}]}]},
            "http_filters": filters,
        },
    })
}

fn bootstrap(proxy: &Proxy, chains: &Chains, admin: u16, http_port: u16, tcp_port: u16) -> Value {
    let mut filters = chains.network.clone();
    filters.push(hcm(&chains.http));
    // As istiod: sidecar inbound listeners are INBOUND, gateway listeners OUTBOUND (what a
    // node-configured stats filter reads for its reporter).
    let direction = if proxy.gateway { "OUTBOUND" } else { "INBOUND" };
    let mut listeners = vec![json!({
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": http_port}},
        "traffic_direction": direction,
        "filter_chains": [{"filters": filters}],
    })];
    let mut clusters = chains.clusters.clone();
    clusters.push(json!({"name": "blackhole", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "blackhole", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}}));
    if !chains.tcp.is_empty() {
        let mut tcp = chains.tcp.clone();
        tcp.push(json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": "blackhole"}}));
        listeners.push(json!({
            "name": "tcp",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": tcp_port}},
            "traffic_direction": direction,
            "filter_chains": [{"filters": tcp}],
        }));
    }
    let mut b = json!({
        "node": proxy.node(),
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    });
    if chains.ads {
        // ECDS over ADS, as the istio-agent's bootstrap: the validator never connects.
        b["static_resources"]["clusters"].as_array_mut().unwrap().push(json!({
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}]},
        }));
        b["dynamic_resources"] = json!({"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}});
    }
    b
}

/// `envoy --mode validate -c FILE`: Ok, or Envoy's own error.
fn validate(name: &str, bootstrap: &Value) -> Result<(), String> {
    let dir = TempDir::new(&format!("generate-validate-{name}"));
    let file = dir.path().join("envoy.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bootstrap).unwrap()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-l", "warning", "-c"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", envoy_bin()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && text.contains("OK") {
        Ok(())
    } else {
        Err(format!(
            "envoy --mode validate {name}: {}\n{text}\nbootstrap: {}",
            out.status,
            serde_json::to_string_pretty(bootstrap).unwrap()
        ))
    }
}

fn is_gateway_plugin(p: &Plugin) -> bool {
    p.attach.iter().all(|(c, _)| *c == Context::Gateway)
}

/// Where a plugin runs on `proxy` (sidecar inbound or gateway), if anywhere.
fn context_on(p: &Plugin, proxy: &Proxy) -> Option<(Context, bool)> {
    let want = if proxy.gateway { Context::Gateway } else { Context::SidecarInbound };
    p.attach.iter().find(|(c, _)| *c == want).map(|(c, ports)| (*c, !ports.is_empty()))
}

fn place(chains: &mut Chains, p: &Plugin, filter: Value, on_tcp_port: bool) {
    if !p.network {
        chains.http.push(filter);
    } else if on_tcp_port {
        chains.tcp.push(filter);
    } else {
        chains.network.push(filter);
    }
}

fn object_named<'a>(objects: &'a [Value], name: &str) -> &'a Value {
    objects.iter().find(|o| o["metadata"]["name"] == name).unwrap_or_else(|| panic!("no object {name}"))
}

/// The Envoy chains for one proxy from one format's objects.
fn chains_for(format: Format, objects: &[Value], plugins: &[Plugin], proxy: &Proxy) -> Chains {
    let mut chains = Chains::default();
    for p in plugins {
        let Some((ctx, on_tcp_port)) = context_on(p, proxy) else { continue };
        if proxy.gateway != is_gateway_plugin(p) && p.selector.is_some() {
            continue;
        }
        let o = object_named(objects, &p.name);
        let ns = o["metadata"]["namespace"].as_str().unwrap();
        match format {
            Format::WasmPlugin | Format::TrafficExtension => {
                let wasm = if format == Format::WasmPlugin { &o["spec"] } else { &o["spec"]["wasm"] };
                let typed = typed_config_of_wasm_spec(proxy, ns, &p.name, wasm, ctx);
                place(&mut chains, p, json!({"name": format!("{ns}.{}", p.name), "typed_config": typed}), on_tcp_port);
            }
            Format::EnvoyFilter => {
                let patch = o["spec"]["configPatches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["match"]["context"] == if proxy.gateway { "GATEWAY" } else { "SIDECAR_INBOUND" })
                    .unwrap_or_else(|| panic!("{}: no patch for this proxy", p.name));
                assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
                place(&mut chains, p, patch["patch"]["value"].clone(), on_tcp_port);
            }
            Format::EnvoyFilterEcds => {
                let patches = o["spec"]["configPatches"].as_array().unwrap();
                let ext = &patches[0]["patch"]["value"];
                assert_eq!(patches[0]["applyTo"], "EXTENSION_CONFIG");
                let filter = patches[1..]
                    .iter()
                    .find(|c| c["match"]["context"] == if proxy.gateway { "GATEWAY" } else { "SIDECAR_INBOUND" })
                    .unwrap_or_else(|| panic!("{}: no HTTP_FILTER patch for this proxy", p.name));
                assert_eq!(
                    filter["patch"]["value"]["name"], ext["name"],
                    "the filter discovers the extension config by name"
                );
                // The discovered filter as istiod lists it, and the resolved config the agent
                // would hand Envoy, side by side.
                chains.http.push(filter["patch"]["value"].clone());
                chains.ads = true;
                let typed = agent_rewrite(proxy, &ext["typed_config"], ctx);
                place(
                    &mut chains,
                    p,
                    json!({"name": format!("{}-resolved", p.name), "typed_config": typed}),
                    on_tcp_port,
                );
            }
        }
    }
    if format == Format::EnvoyFilter {
        for o in objects {
            for c in o["spec"]["configPatches"].as_array().unwrap() {
                if c["applyTo"] == "CLUSTER" {
                    chains.clusters.push(c["patch"]["value"].clone());
                }
            }
        }
    }
    chains
}

/// Every format, every plugin kind, sidecar and gateway: what Envoy 1.40 accepts.
#[test]
fn every_generated_plugin_validates_in_envoy() {
    eprintln!("pluginConfig as generated, identity from node metadata (C2): {}", node_identity());
    let resources = resources(true);
    let mut notes = Vec::new();
    let plugins = generate::plugins(&resources, &mesh(), &mut notes).unwrap_or_else(|e| panic!("{e:?}"));
    let roots: Vec<&str> = plugins.iter().map(|p| p.root_id).collect();
    for want in [
        "wasmesh.authz.custom",
        "wasmesh.authn",
        "wasmesh.authz",
        "wasmesh.authz.tcp",
        "wasmesh.authz.peer_address",
        "wasmesh.stats",
        "wasmesh.stats.tcp",
    ] {
        assert!(roots.contains(&want), "fixture exercises {want}: {roots:?}");
    }
    assert!(plugins.iter().any(|p| p.selector.is_some()), "a gateway plugin: {plugins:#?}");
    let mut failures = Vec::new();
    let mut runs = 0;
    for format in [Format::WasmPlugin, Format::TrafficExtension, Format::EnvoyFilter, Format::EnvoyFilterEcds] {
        let mut res = resources.clone();
        if format == Format::EnvoyFilterEcds {
            // ECDS serves HTTP filters only: generate refuses network plugins for it.
            let e = generate::generate(&res, &options(format)).unwrap_err();
            assert!(e[0].to_string().contains("network (L4) filter"), "{e:?}");
            res.items.retain(|r| !(r.name() == "block" || r.name() == "mysql"));
        }
        let plugins = generate::plugins(&res, &mesh(), &mut Vec::new()).unwrap();
        let g = generate::generate(&res, &options(format)).unwrap_or_else(|e| panic!("{format:?}: {e:?}"));
        for proxy in [PRODUCTPAGE(), GATEWAY()] {
            let chains = chains_for(format, &g.objects, &plugins, &proxy);
            assert!(!chains.http.is_empty(), "{format:?} {}: no HTTP filter attached", proxy.name);
            let b = bootstrap(&proxy, &chains, free_port(), free_port(), free_port());
            runs += 1;
            if let Err(e) = validate(&format!("{format:?}-{}", proxy.name), &b) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(runs, 8);
}

/// A loopback HTTP server of one file (the module server of the inline EnvoyFilter).
struct FileServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::atomic::AtomicU64>,
}

impl FileServer {
    fn start(path: &'static str, body: Vec<u8>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]);
                let ok = head.starts_with(&format!("GET {path} "));
                let (status, body): (&str, &[u8]) = if ok { ("200 OK", &body) } else { ("404 Not Found", b"") };
                served2.fetch_add(ok as u64, Ordering::SeqCst);
                let _ =
                    write!(conn, "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(body);
            }
        });
        FileServer { port, stop, served }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn sha256_hex(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// The generated plugins running: productpage's sidecar (node metadata as Istio writes it)
/// with the bookinfo WasmPlugins' authz and stats configuration answers a plaintext GET with
/// Istio's 403 (STRICT mTLS mesh-wide, and only the ingress gateway may call it), and counts
/// it in `istio_requests_total`; the inline EnvoyFilter's authz, whose module Envoy downloads
/// from a loopback server and checks against the sha256, decides the same.
#[test]
fn generated_plugins_decide_requests_in_envoy() {
    eprintln!("pluginConfig as generated, identity from node metadata (C2): {}", node_identity());
    let resources = resources(false);
    let plugins = generate::plugins(&resources, &MeshConfig::default(), &mut Vec::new()).unwrap();
    let proxy = PRODUCTPAGE();

    // WasmPlugin, code as the agent leaves it; the mesh config REGISTRY_ONLY (istiod's to carry out).
    let mut o = options(Format::WasmPlugin);
    o.mesh = serde_json::from_value(json!({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})).unwrap();
    let g = generate::generate(&resources, &o).unwrap();
    let chains = chains_for(Format::WasmPlugin, &g.objects, &plugins, &proxy);
    let (admin, port) = (free_port(), free_port());
    let mut config = bootstrap(&proxy, &chains, admin, port, free_port());
    // The sidecar's outbound HTTP listener as istiod writes it under REGISTRY_ONLY: a host the
    // registry does not know takes the `block_all` virtual host's route (502). The generated
    // wasmesh.stats on SIDECAR_OUTBOUND runs there.
    let stats = plugins
        .iter()
        .find(|p| p.root_id == "wasmesh.stats" && p.attach.iter().any(|(c, _)| *c == Context::SidecarOutbound))
        .expect("wasmesh.stats attaches to SIDECAR_OUTBOUND");
    let so = object_named(&g.objects, &stats.name);
    let ns = so["metadata"]["namespace"].as_str().unwrap();
    let typed = typed_config_of_wasm_spec(&proxy, ns, &stats.name, &so["spec"], Context::SidecarOutbound);
    let mut outbound = hcm(&[json!({"name": format!("{ns}.{}", stats.name), "typed_config": typed})]);
    outbound["typed_config"]["stat_prefix"] = json!("outbound_0.0.0.0_80");
    outbound["typed_config"]["route_config"] = json!({"name": "80", "virtual_hosts": [{"name": "block_all",
        "domains": ["*"], "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}]});
    let out_port = free_port();
    config["static_resources"]["listeners"].as_array_mut().unwrap().push(json!({
        "name": "0.0.0.0_80",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": out_port}},
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [outbound]}],
    }));
    let envoy = Envoy::start("generate-wasmplugin", &config);
    let r = request(port, "GET", "/productpage", &[("host", "productpage")], b"").unwrap();
    assert_eq!((r.status, r.text()), (403, "RBAC: access denied".to_string()), "{}", envoy.log_tail(30));
    let stats = envoy.admin("/stats?filter=istio_requests_total");
    assert!(
        stats.contains("istio_requests_total")
            && stats.contains("reporter=.=destination;")
            && stats.contains("response_code=.=403;"),
        "{stats}"
    );
    // An unknown host from the app: istiod's 502, counted as Istio counts it (BlackHoleCluster).
    let r = request(out_port, "GET", "/", &[("host", "www.google.com")], b"").unwrap();
    assert_eq!(r.status, 502, "{}", envoy.log_tail(30));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stats = envoy.admin("/stats?filter=istio_requests_total");
        let blocked = stats.lines().find(|l| l.contains("destination_service_name=.=BlackHoleCluster;"));
        if let Some(line) = blocked {
            assert!(line.contains("reporter=.=source;") && line.contains("response_code=.=502;"), "{line}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no BlackHoleCluster request counted:\n{stats}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Inline EnvoyFilter: Envoy fetches the module itself through the CLUSTER patch.
    let module_path = module("wasmesh.authz");
    let server = FileServer::start("/wasm/wasmesh.wasm", std::fs::read(&module_path).unwrap());
    let mut o = options(Format::EnvoyFilter);
    o.mesh = MeshConfig::default();
    o.module_url = Some(format!("http://127.0.0.1:{}/wasm/wasmesh.wasm", server.port));
    o.module_sha256 = Some(sha256_hex(&module_path));
    let g = generate::generate(&resources, &o).unwrap();
    let authz: Vec<Plugin> = plugins.iter().filter(|p| p.root_id == "wasmesh.authz").cloned().collect();
    let mut chains = chains_for(Format::EnvoyFilter, &g.objects, &authz, &proxy);
    if !node_identity() {
        // A module without node-derived identity (C2) still needs `workload` in its configuration.
        for f in &mut chains.http {
            let c = &mut f["typed_config"]["config"]["configuration"]["value"];
            let cfg: Value = serde_json::from_str(c.as_str().unwrap()).unwrap();
            *c = json!(proxy.module_config("wasmesh.authz", &cfg, Context::SidecarInbound).to_string());
        }
    }
    let (admin, port) = (free_port(), free_port());
    let envoy = Envoy::start("generate-envoyfilter", &bootstrap(&proxy, &chains, admin, port, free_port()));
    assert!(server.served.load(Ordering::SeqCst) >= 1, "Envoy fetched the module from the module server");
    let r = request(port, "GET", "/productpage", &[("host", "productpage")], b"").unwrap();
    assert_eq!((r.status, r.text()), (403, "RBAC: access denied".to_string()), "{}", envoy.log_tail(30));
}
