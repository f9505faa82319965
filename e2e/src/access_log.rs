//! The access-log comparison: one Envoy whose listeners each run wasmesh's access-log phase and,
//! on the same HTTP connection manager, Envoy's own file access logger with the same format.
//! Every request then gives two lines per format, Envoy's and wasmesh's (printed by the sink
//! logger from the filter state the phase wrote), in two files compared line by line (TEXT) or
//! field by field (JSON).

use crate::paths::TempDir;
use crate::{free_port, paths};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The filter-state keys of the two logs the phase writes.
pub const TEXT_KEY: &str = "wasmesh.access_log.text";
pub const JSON_KEY: &str = "wasmesh.access_log.json";

/// How much later Envoy's `%DURATION%` may be than wasmesh's for one TCP connection, ms. Both are
/// read at the same close: wasmesh in its network filter's `on_log`, Envoy when the `tcp_proxy`'s
/// (deferred) deletion runs its loggers, usually microseconds later (1 ms when the machine is
/// idle) but measured up to 16 ms apart on a loaded 2-core machine. Never earlier.
pub const TCP_DURATION_SLACK_MS: i64 = 20;

/// Whether Envoy's `envoy` ms and wasmesh's `wasmesh` ms are the same TCP `%DURATION%`
/// ([`TCP_DURATION_SLACK_MS`]).
pub fn tcp_duration_close(envoy: i64, wasmesh: i64) -> bool {
    (0..=TCP_DURATION_SLACK_MS).contains(&(envoy - wasmesh))
}

/// One compared format: its log files.
pub struct Files {
    pub envoy: PathBuf,
    pub wasmesh: PathBuf,
}

/// The log files of one listener.
pub struct Logs {
    pub text: Files,
    pub json: Files,
}

impl Logs {
    pub fn in_dir(dir: &Path, name: &str) -> Logs {
        let f = |k: &str| Files {
            envoy: dir.join(format!("{name}-{k}-envoy.log")),
            wasmesh: dir.join(format!("{name}-{k}-wasmesh.log")),
        };
        Logs { text: f("text"), json: f("json") }
    }
}

fn file_logger(path: &Path, log_format: Value) -> Value {
    json!({"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path.display().to_string(),
        "log_format": log_format,
    }})
}

/// The Envoy file logger that prints the line wasmesh wrote to filter state `wasm.<key>` (what
/// wasmeshctl configures): nothing at all when the phase wrote none.
pub fn sink_logger(path: &Path, key: &str) -> Value {
    file_logger(
        path,
        json!({"text_format_source": {"inline_string": format!("%FILTER_STATE(wasm.{key}:PLAIN)%")}, "omit_empty_values": true}),
    )
}

/// The wasm filter running the access-log phase alone (`wasmesh.access_log`) or in a chain.
pub fn phase_filter(config: &Value) -> Value {
    json!({"name": "wasmesh.access_log", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": "wasmesh.access_log",
            "root_id": "wasmesh.access_log",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config.to_string()},
            "vm_config": {
                "vm_id": "wasmesh",
                "runtime": "envoy.wasm.runtime.v8",
                "code": {"local": {"filename": paths::wasm("wasmesh").display().to_string()}},
            },
            "failure_policy": "FAIL_OPEN",
        }
    }})
}

/// The phase's configuration: `text` and `json` written to [`TEXT_KEY`] and [`JSON_KEY`].
pub fn phase_config(text: &str, json_fields: &BTreeMap<String, String>) -> Value {
    json!({"logs": [
        {"filterStateKey": TEXT_KEY, "text": text},
        {"filterStateKey": JSON_KEY, "json": json_fields},
    ]})
}

/// The access loggers of a compared listener: Envoy's and the sinks, for both formats.
pub fn loggers(logs: &Logs, text: &str, json_fields: &BTreeMap<String, String>) -> Vec<Value> {
    vec![
        file_logger(&logs.text.envoy, json!({"text_format_source": {"inline_string": text}})),
        sink_logger(&logs.text.wasmesh, TEXT_KEY),
        file_logger(&logs.json.envoy, json!({"json_format": json_fields})),
        sink_logger(&logs.json.wasmesh, JSON_KEY),
    ]
}

/// A listener on `port`: the phase (after `before`), the router, the compared loggers, `tls`
/// a downstream transport socket.
pub fn listener(
    name: &str,
    port: u16,
    before: Vec<Value>,
    route_config: &Value,
    loggers: Vec<Value>,
    phase: &Value,
    tls: Option<Value>,
) -> Value {
    let mut filters = before;
    filters.push(phase_filter(phase));
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    let mut chain = json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": filters,
        "access_log": loggers,
    }}]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}, "filter_chains": [chain]})
}

pub fn cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]},
    })
}

pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    })
}

/// Reads a log file's lines (waits until both files of a pair have `n` lines, up to 10 s: Envoy
/// flushes its access-log files every 100 ms in tests... or on its own schedule).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

pub fn wait_lines(files: &Files, n: usize) -> (Vec<String>, Vec<String>) {
    let start = std::time::Instant::now();
    loop {
        let (a, b) = (lines(&files.envoy), lines(&files.wasmesh));
        if (a.len() >= n && b.len() >= n) || start.elapsed() > std::time::Duration::from_secs(10) {
            return (a, b);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A temporary directory for the logs.
pub fn log_dir() -> TempDir {
    TempDir::new("access-log")
}

/// A listener for the bench: `filters` before the router, `loggers` on the HCM, one route to the
/// bench's `app` cluster.
fn bench_listener(port: u16, filters: Vec<Value>, loggers: Vec<Value>) -> Value {
    let mut filters = filters;
    filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
    json!({
        "name": "access_log",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "access_log",
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
            "http_filters": filters,
            "access_log": loggers,
        }}]}],
    })
}

/// The bench scenario: Istio's default TEXT and JSON access log, Envoy's native file logger
/// against wasmesh's phase (with the file logger that prints its line), both to `/dev/null`
/// (Envoy writes files on its flush thread; the figure is the worker's).
pub fn bench_scenario() -> crate::bench::Scenario {
    use crate::bench::Variant;
    let null = Path::new("/dev/null");
    let istio_json = wasmesh_accesslog::istio_json();
    let text_format = json!({"text_format_source": {"inline_string": wasmesh_accesslog::ISTIO_TEXT}});
    let variant = |name: &str, filters: Vec<Value>, loggers: Vec<Value>| {
        let port = free_port();
        Variant { listener: Some((port, bench_listener(port, filters, loggers))), ..Variant::new(name) }
    };
    let phase = |text: Option<&str>, json_fields: Option<&BTreeMap<String, String>>| {
        let mut log = json!({"filterStateKey": TEXT_KEY});
        if let Some(t) = text {
            log["text"] = json!(t);
        }
        if let Some(j) = json_fields {
            log["json"] = json!(j);
        }
        phase_filter(&json!({"logs": [log]}))
    };
    crate::bench::Scenario {
        name: "access log".into(),
        target: "Istio's default access log: wasmesh vs Envoy's native file logger".into(),
        variants: vec![
            variant("none", vec![], vec![]),
            variant("native file logger, Istio TEXT", vec![], vec![file_logger(null, text_format)]),
            variant(
                "native file logger, Istio JSON",
                vec![],
                vec![file_logger(null, json!({"json_format": istio_json}))],
            ),
            variant("no-op wasm filter", crate::bench::noop_filters(1), vec![]),
            variant(
                "wasmesh, Istio TEXT",
                vec![phase(Some(wasmesh_accesslog::ISTIO_TEXT), None)],
                vec![sink_logger(null, TEXT_KEY)],
            ),
            variant("wasmesh, Istio JSON", vec![phase(None, Some(&istio_json))], vec![sink_logger(null, TEXT_KEY)]),
        ],
        modules: vec!["wasmesh".into(), "noop".into()],
    }
}

/// The wasm network filter running the access-log phase for TCP connections (configuration
/// `"tcp": true`), as wasmeshctl puts it before a `tcp_proxy`.
pub fn network_phase_filter(config: &Value) -> Value {
    let mut f = phase_filter(config);
    f["typed_config"]["@type"] = json!("type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm");
    f
}

/// A TCP listener on `port`: the network phase, then a `tcp_proxy` to `cluster` with `loggers`
/// (Envoy's own and the sinks); `tls` a downstream transport socket; `sni` the server names
/// the filter chain matches (TLS passthrough: a `tls_inspector` reads them).
pub fn tcp_listener(
    name: &str,
    port: u16,
    cluster: &str,
    loggers: Vec<Value>,
    phase: &Value,
    tls: Option<Value>,
    sni: Option<&str>,
) -> Value {
    let mut chain = json!({"filters": [
        network_phase_filter(phase),
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": name,
            "cluster": cluster,
            "access_log": loggers,
        }},
    ]});
    if let Some(t) = tls {
        chain["transport_socket"] = t;
    }
    let mut l = json!({"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}});
    if let Some(host) = sni {
        chain["filter_chain_match"] = json!({"server_names": [host]});
        l["listener_filters"] = json!([{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}]);
    }
    l["filter_chains"] = json!([chain]);
    l
}

/// An HTTP/2 cluster to an OTLP/gRPC collector port.
pub fn grpc_cluster(name: &str, port: u16) -> Value {
    let mut c = cluster(name, port);
    c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }});
    c
}

/// Envoy's OpenTelemetry access logger as istiod writes it for an `envoyOtelAls` provider
/// (`buildOpenTelemetryAccessLogConfig`): gRPC to `cluster` with `:authority` `authority`,
/// `disable_builtin_labels`, body `body`, attributes `labels`, and a Telemetry `filter` as
/// istiod maps it. The same on an HTTP connection manager and a `tcp_proxy`.
pub fn otel_logger(
    cluster: &str,
    authority: &str,
    body: &str,
    labels: &BTreeMap<String, String>,
    filter: Option<&str>,
) -> Value {
    let attrs: Vec<Value> = labels.iter().map(|(k, v)| json!({"key": k, "value": {"string_value": v}})).collect();
    let mut l = json!({"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "common_config": {
            "log_name": "otel_envoy_accesslog",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster, "authority": authority}},
            "transport_api_version": "V3",
            "filter_state_objects_to_log": ["upstream_peer", "downstream_peer", "wasm.upstream_peer",
                "wasm.upstream_peer_id", "wasm.downstream_peer", "wasm.downstream_peer_id"],
        },
        "disable_builtin_labels": true,
        "body": {"string_value": body},
    }});
    if !attrs.is_empty() {
        l["typed_config"]["attributes"] = json!({"values": attrs});
    }
    if let Some(f) = filter {
        l["filter"] = json!({"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": f,
        }}});
    }
    l
}
