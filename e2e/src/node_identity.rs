//! Envoys that look like Istio's proxies to a filter: bootstraps whose node carries the id and
//! metadata Istio's sidecar injector and pilot-agent write, and wasm plugins attached the way a
//! WasmPlugin attaches them (one configuration, no `workload`, the root id naming the filter).

use serde::Deserialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One proxy as Istio describes it in the Envoy node.
#[derive(Debug, Clone)]
pub struct IstioNode {
    /// `sidecar` or `router` (a gateway).
    pub kind: String,
    pub ip: String,
    pub pod: String,
    pub namespace: String,
    pub workload_name: String,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    /// Leave `NAMESPACE` out (a node that is not Istio's, or a broken injector).
    pub omit_namespace: bool,
}

impl IstioNode {
    /// A sidecar of Deployment `workload_name` with Istio's injected labels added to `app_labels`.
    pub fn sidecar(
        pod: &str,
        namespace: &str,
        workload_name: &str,
        app_labels: &[(&str, &str)],
        service_account: &str,
    ) -> IstioNode {
        let mut labels: Vec<(String, String)> =
            app_labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let app = app_labels.iter().find(|(k, _)| *k == "app").map(|(_, v)| *v).unwrap_or(workload_name);
        let version = app_labels.iter().find(|(k, _)| *k == "version").map(|(_, v)| *v).unwrap_or("latest");
        labels.push(("pod-template-hash".into(), "7d9f8c6b5".into()));
        labels.push(("security.istio.io/tlsMode".into(), "istio".into()));
        labels.push(("service.istio.io/canonical-name".into(), app.into()));
        labels.push(("service.istio.io/canonical-revision".into(), version.into()));
        IstioNode {
            kind: "sidecar".into(),
            ip: "10.0.0.1".into(),
            pod: pod.into(),
            namespace: namespace.into(),
            workload_name: workload_name.into(),
            labels,
            service_account: service_account.into(),
            omit_namespace: false,
        }
    }

    /// `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    pub fn id(&self) -> String {
        format!("{}~{}~{}.{}~{}.svc.cluster.local", self.kind, self.ip, self.pod, self.namespace, self.namespace)
    }

    /// The bootstrap's `node`: id, cluster and the metadata keys pilot-agent writes for a
    /// Kubernetes pod (strings, the `LABELS`/`ANNOTATIONS` maps, nested `PROXY_CONFIG`, numbers
    /// where Istio writes numbers), so a filter sees what it sees in a mesh.
    pub fn node(&self) -> Value {
        let labels: serde_json::Map<String, Value> = self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let app = self.labels.iter().find(|(k, _)| k == "app").map(|(_, v)| v.as_str()).unwrap_or(&self.workload_name);
        let mut metadata = json!({
            "ANNOTATIONS": {
                "kubectl.kubernetes.io/default-container": app,
                "kubectl.kubernetes.io/default-logs-container": app,
                "prometheus.io/path": "/stats/prometheus",
                "prometheus.io/port": "15020",
                "prometheus.io/scrape": "true",
                "sidecar.istio.io/status": "{\"initContainers\":[\"istio-init\"],\"containers\":[\"istio-proxy\"],\"volumes\":[\"workload-socket\",\"credential-socket\",\"workload-certs\",\"istio-envoy\",\"istio-data\",\"istio-podinfo\",\"istio-token\",\"istiod-ca-cert\"],\"imagePullSecrets\":null,\"revision\":\"default\"}"
            },
            "APP_CONTAINERS": app,
            "CLUSTER_ID": "Kubernetes",
            "ENVOY_PROMETHEUS_PORT": 15090,
            "ENVOY_STATUS_PORT": 15021,
            "INSTANCE_IPS": self.ip,
            "INTERCEPTION_MODE": "REDIRECT",
            "ISTIO_PROXY_SHA": "5f2a3a8c1c8b0d1f4c1e9a7e6b2d4c8a9f0e1d2c",
            "ISTIO_VERSION": "1.30.3",
            "LABELS": labels,
            "MESH_ID": "cluster.local",
            "NAME": self.pod,
            "NAMESPACE": self.namespace,
            "NODE_NAME": "kind-worker",
            "OWNER": format!("kubernetes://apis/apps/v1/namespaces/{}/deployments/{}", self.namespace, self.workload_name),
            "PILOT_SAN": ["istiod.istio-system.svc"],
            "POD_PORTS": "[{\"name\":\"http\",\"containerPort\":9080,\"protocol\":\"TCP\"}]",
            "PROXY_CONFIG": {
                "binaryPath": "/usr/local/bin/envoy",
                "concurrency": 2,
                "configPath": "./etc/istio/proxy",
                "controlPlaneAuthPolicy": "MUTUAL_TLS",
                "discoveryAddress": "istiod.istio-system.svc:15012",
                "drainDuration": "45s",
                "proxyAdminPort": 15000,
                "serviceCluster": "istio-proxy",
                "statNameLength": 189,
                "statusPort": 15020,
                "terminationDrainDuration": "5s"
            },
            "SERVICE_ACCOUNT": self.service_account,
            "WORKLOAD_NAME": self.workload_name
        });
        if self.omit_namespace {
            if let Some(m) = metadata.as_object_mut() {
                m.remove("NAMESPACE");
            }
        }
        json!({"id": self.id(), "cluster": format!("{}.{}", app, self.namespace), "metadata": metadata})
    }
}

/// A wasm plugin as Envoy's `envoy.filters.http.wasm` typed config.
#[derive(Debug, Clone)]
pub struct Plugin {
    pub root_id: String,
    pub vm_id: String,
    pub module: PathBuf,
    pub config: Value,
    pub fail_open: bool,
}

impl Plugin {
    pub fn new(root_id: &str, vm_id: &str, module: &Path, config: Value) -> Plugin {
        Plugin { root_id: root_id.into(), vm_id: vm_id.into(), module: module.to_path_buf(), config, fail_open: false }
    }

    pub fn http_filter(&self) -> Value {
        json!({
            "name": self.root_id,
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.root_id,
                    "root_id": self.root_id,
                    "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.config.to_string()},
                    "vm_config": {
                        "vm_id": self.vm_id,
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": self.module.display().to_string()}},
                    },
                    "failure_policy": if self.fail_open { "FAIL_OPEN" } else { "FAIL_CLOSED" },
                }
            }
        })
    }
}

impl Plugin {
    /// The same plugin as Envoy's `envoy.filters.network.wasm` (TCP roles).
    pub fn network_filter(&self) -> Value {
        let mut f = self.http_filter();
        f["typed_config"]["@type"] = json!("type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm");
        f
    }
}

/// A TCP listener on 127.0.0.1:`port` running `plugins` as network filters, then `tcp_proxy`
/// to `cluster`.
pub fn tcp_listener(name: &str, port: u16, direction: Option<&str>, plugins: &[Plugin], cluster: &str) -> Value {
    let mut filters: Vec<Value> = plugins.iter().map(Plugin::network_filter).collect();
    filters.push(json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "stat_prefix": name, "cluster": cluster}
    }));
    let mut l = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": filters}],
    });
    if let Some(d) = direction {
        l["traffic_direction"] = json!(d);
    }
    l
}

/// An HTTP listener on 127.0.0.1:`port` running `plugins`, then Envoy's router with `route`.
/// `direction`: Envoy's `traffic_direction` (`INBOUND`/`OUTBOUND`), as istiod sets it.
pub fn http_listener(name: &str, port: u16, direction: Option<&str>, plugins: &[Plugin], route: Value) -> Value {
    let mut filters: Vec<Value> = plugins.iter().map(Plugin::http_filter).collect();
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let mut l = json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"name": name, "virtual_hosts": [{"name": name, "domains": ["*"], "routes": [route]}]},
                "http_filters": filters,
            }
        }]}],
    });
    if let Some(d) = direction {
        l["traffic_direction"] = json!(d);
    }
    l
}

/// A route sending everything to `cluster`.
pub fn route_to(cluster: &str) -> Value {
    json!({"match": {"prefix": "/"}, "route": {"cluster": cluster}})
}

/// A route sending everything to the cluster the wasmesh router names in its cluster header.
pub fn route_by_cluster_header() -> Value {
    json!({"match": {"prefix": "/"}, "route": {"cluster_header": wasmesh_router::DEFAULT_CLUSTER_HEADER}})
}

/// A cluster of one endpoint, 127.0.0.1:`port`.
pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    })
}

/// A bootstrap for one proxy.
pub fn bootstrap(node: Value, admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "node": node,
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// Istio resources written as YAML (one or more documents), in the JSON form filter
/// configurations carry.
pub fn resources_json(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .filter_map(|d| yaml_serde::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .filter_map(|v| serde_json::to_value(v).ok())
        .collect()
}

/// Resident set size of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
