//! The tracing scenario: Envoy's native OpenTelemetry tracer (HCM tracing, `http_service`
//! export) against the `wasmesh.tracing` phase, both exporting OTLP/HTTP to the bench upstream
//! (which answers every POST with 200), at 100 % and at Istio's default 1 % sampling; and
//! [`together`]: access log and tracing at once (issue 13's row).

use super::{router_filter, Scenario, Variant};
use crate::free_port as free_port_for_bench;
use serde_json::{json, Value};

fn native_listener(port: u16, percent: f64) -> Value {
    listener("native-otel", port, vec![], Some(native_tracing(percent)), vec![])
}

/// The HCM's tracing block: Envoy's OpenTelemetry tracer at `percent`, exporting to `app`.
fn native_tracing(percent: f64) -> Value {
    json!({
        "random_sampling": {"value": percent},
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "service_name": "bench",
            "http_service": {"http_uri": {"uri": "http://127.0.0.1/v1/traces", "cluster": "app", "timeout": "2s"}}
        }}
    })
}

/// A listener with `http_filters` before the router, optional HCM tracing and access loggers.
fn listener(name: &str, port: u16, http_filters: Vec<Value>, tracing: Option<Value>, loggers: Vec<Value>) -> Value {
    let mut filters = http_filters;
    filters.push(router_filter());
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
        "http_filters": filters,
    });
    if let Some(t) = tracing {
        hcm["tracing"] = t;
    }
    if !loggers.is_empty() {
        hcm["access_log"] = Value::Array(loggers);
    }
    json!({
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "traffic_direction": "INBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
    })
}

fn tracing_phase(percent: f64) -> Value {
    json!({"rootId": "wasmesh.tracing", "configuration": {
        "provider": {"kind": "opentelemetry", "cluster": "app", "authority": "collector"},
        "randomSamplingPercentage": percent, "kind": "server"}})
}

fn wasmesh(percent: f64) -> Value {
    super::wasm_filter("wasmesh.chain", "wasmesh", &json!({"phases": [tracing_phase(percent)]}))
}

/// Access log and tracing together, on the same traffic: Envoy's file logger (Istio's TEXT
/// format) + its OpenTelemetry tracer against one wasmesh chain running the tracing and
/// access-log phases (with the file logger that prints the phase's line), at Istio's default
/// 1 % sampling (100 % would be unsteady: see [`super::budgets::UNCHECKED`]).
pub fn together() -> Scenario {
    let null = std::path::Path::new("/dev/null");
    let key = crate::access_log::TEXT_KEY;
    let text_format = json!({"text_format_source": {"inline_string": wasmesh_accesslog::ISTIO_TEXT}});
    let native_logger = json!({"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": "/dev/null",
        "log_format": text_format,
    }});
    let chain = json!({"phases": [
        tracing_phase(1.0),
        {"rootId": "wasmesh.access_log", "configuration": {"logs": [
            {"filterStateKey": key, "text": wasmesh_accesslog::ISTIO_TEXT}]}},
    ]});
    let with = |name: &str, filters: Vec<Value>, tracing: Option<Value>, loggers: Vec<Value>| {
        let port = free_port_for_bench();
        Variant { listener: Some((port, listener("together", port, filters, tracing, loggers))), ..Variant::new(name) }
    };
    Scenario {
        name: "access log + tracing".into(),
        target: "Istio's TEXT access log and tracing at 1 % in one wasmesh chain near Envoy's file logger + \
                 OpenTelemetry tracer"
            .into(),
        variants: vec![
            Variant::new("none"),
            with("native file logger + opentelemetry 1 %", vec![], Some(native_tracing(1.0)), vec![native_logger]),
            with(
                "wasmesh 1 %",
                vec![super::wasm_filter("wasmesh.chain", "wasmesh", &chain)],
                None,
                vec![crate::access_log::sink_logger(null, key)],
            ),
        ],
        modules: vec!["wasmesh".into()],
    }
}

/// Native OpenTelemetry tracing vs the wasmesh phase, at 100 % and 1 %; the wasmesh phase also at 0 %
/// (context propagation and the sampling decision alone), the one tracing variant whose count is
/// deterministic and so held to its budget.
pub fn scenario() -> Scenario {
    let native = |name: &str, percent: f64| {
        let port = free_port_for_bench();
        Variant { listener: Some((port, native_listener(port, percent))), ..Variant::new(name) }
    };
    Scenario {
        name: "tracing".into(),
        target: "tracing (span export batched from the root) near Envoy's native OpenTelemetry tracer".into(),
        variants: vec![
            Variant::new("none"),
            native("native opentelemetry", 100.0),
            native("native opentelemetry 1 %", 1.0),
            Variant { http_filters: vec![wasmesh(100.0)], ..Variant::new("wasmesh") },
            Variant { http_filters: vec![wasmesh(1.0)], ..Variant::new("wasmesh 1 %") },
            Variant { http_filters: vec![wasmesh(0.0)], ..Variant::new("wasmesh 0 %") },
        ],
        modules: vec!["wasmesh".into()],
    }
}
