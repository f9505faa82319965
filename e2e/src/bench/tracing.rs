//! The tracing scenario: Envoy's native OpenTelemetry tracer (HCM tracing, `http_service`
//! export) against the `wasmesh.tracing` phase, both exporting OTLP/HTTP to the bench upstream
//! (which answers every POST with 200), at 100 % and at Istio's default 1 % sampling.

use super::{router_filter, Scenario, Variant};
use crate::free_port as free_port_for_bench;
use serde_json::{json, Value};

fn native_listener(port: u16, percent: f64) -> Value {
    json!({
        "name": "native-otel",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "traffic_direction": "INBOUND",
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "native-otel",
            "route_config": {"virtual_hosts": [{"name": "app", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
            "http_filters": [router_filter()],
            "tracing": {
                "random_sampling": {"value": percent},
                "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "service_name": "bench",
                    "http_service": {"http_uri": {"uri": "http://127.0.0.1/v1/traces", "cluster": "app", "timeout": "2s"}}
                }}
            }
        }}]}]
    })
}

fn wasmesh(percent: f64) -> Value {
    let config = json!({"phases": [{"rootId": "wasmesh.tracing", "configuration": {
        "provider": {"kind": "opentelemetry", "cluster": "app", "authority": "collector"},
        "randomSamplingPercentage": percent, "kind": "server"}}]});
    super::wasm_filter("wasmesh.chain", "wasmesh", &config)
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
