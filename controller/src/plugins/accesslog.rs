//! Access logs: Istio's meshConfig `accessLogFile`/`accessLogEncoding`/`accessLogFormat`, the
//! `envoyFileAccessLog` extension providers and Telemetry `accessLogging`, turned into the
//! `wasmesh.access_log` phase's configuration and the Envoy file loggers that print its lines.
//!
//! Each log the listener writes gets a filter-state key `wasmesh.access_log.<i>`: the phase
//! renders the line (TEXT with Envoy's command operators, or Istio's JSON) in its `log` callback,
//! which Envoy runs before the connection manager's access loggers, and a file logger on the
//! same HCM prints `%FILTER_STATE(wasm.wasmesh.access_log.<i>:PLAIN)%` to the provider's path
//! (`omit_empty_values`: nothing at all for a request the phase did not log).
//!
//! Which logs a listener writes (Istio `pilot/pkg/model/telemetry.go`, simplified):
//! - the most specific level that has `accessLogging` wins: a workload Telemetry (same
//!   namespace, `selector` matching) over the namespace's (no selector) over the root
//!   namespace's; several Telemetries at the same level have their entries concatenated;
//! - each entry applies when its `match.mode` fits the listener (CLIENT: outbound, SERVER:
//!   inbound, gateways both) and it is not `disabled`; its `providers` (default `envoy`) each
//!   give one log, `filter.expression` (CEL, evaluated by Envoy's own CEL) deciding per request;
//! - no Telemetry `accessLogging` at all: meshConfig `accessLogFile` (when set) logs every
//!   request in `accessLogEncoding` / `accessLogFormat`, Istio's defaults otherwise.
//!
//! The `envoy` provider is meshConfig's file (`/dev/stdout` when `accessLogFile` is unset) and
//! format. An `envoyOtelAls` provider (service, port, logName, logFormat.text/labels) is exported
//! by the phase itself over OTLP/gRPC to the provider's collector (a cluster added to the
//! bootstrap, `wasmesh-accesslog|<provider>`), as istiod's `envoy.access_loggers.open_telemetry`:
//! the body is `logFormat.text` (Istio's default TEXT format when unset, no newline added), the
//! attributes the labels, no resource attribute (`disable_builtin_labels`); on a TCP listener
//! the network phase exports one record per connection at close. An entry without
//! providers, and a mesh without Telemetry `accessLogging`, use `defaultProviders.accessLogging`
//! when set.

use super::{Contribution, Direction, ListenerContext, WasmFilter};
use crate::mesh::MeshConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use wasmesh_istio::{Error, Resource, Resources};

pub const FILTER_NAME: &str = "wasmesh.access_log";
/// The filter-state key prefix of the logs (the phase refuses other keys).
pub const KEY_PREFIX: &str = "wasmesh.access_log";

/// One log of a listener: where it goes, its format, its filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub path: String,
    pub text: Option<String>,
    pub json: Option<BTreeMap<String, String>>,
    pub filter: Option<String>,
    /// An `envoyOtelAls` provider: exported, not written to `path`.
    pub otel: Option<Otel>,
}

/// An `envoyOtelAls` provider's collector and record attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Otel {
    pub provider: String,
    /// The collector's host (the `:authority` of the calls, as istiod sets it).
    pub host: String,
    pub port: u16,
    pub attributes: BTreeMap<String, String>,
    /// `logName` (istiod's default `otel_envoy_accesslog`): the log name of the listener-level
    /// logger ([`listener_access_logs`]), which is Envoy's own.
    pub log_name: String,
}

/// The collector cluster of an `envoyOtelAls` provider.
pub fn cluster_name(provider: &str) -> String {
    format!("wasmesh-accesslog|{provider}")
}

/// istiod's log name of an `envoyOtelAls` provider without `logName` (`OtelEnvoyAccessLogFriendlyName`).
const OTEL_LOG_NAME: &str = "otel_envoy_accesslog";

/// The fields of `envoyOtelAls` wasmesh maps (Istio's `EnvoyOpenTelemetryLogProvider`).
const OTEL_FIELDS: [&str; 4] = ["service", "port", "logName", "logFormat"];

/// An `envoyOtelAls` provider as a log (`at`: where it is in the mesh config).
fn otel_provider(name: &str, at: &str, p: &Value) -> Result<Log, String> {
    let Some(obj) = p.as_object() else { return Err(format!("{at}: expected an object")) };
    if let Some((k, v)) = obj.iter().find(|(k, _)| !OTEL_FIELDS.contains(&k.as_str())) {
        return Err(format!("{at}.{k} {v}: not mapped by wasmesh; expected only {OTEL_FIELDS:?}"));
    }
    let service = obj.get("service").and_then(Value::as_str).filter(|s| !s.is_empty());
    let service = service.ok_or_else(|| format!("{at}.service: expected the collector's host name"))?;
    // `namespace/host` names the host in that namespace (istiod's LookupCluster).
    let host = service.split_once('/').map_or(service, |(_, h)| h).to_string();
    let port = obj.get("port").and_then(Value::as_u64).filter(|p| (1..=65_535).contains(p));
    let port = port.ok_or_else(|| format!("{at}.port {:?}: expected 1 to 65535", obj.get("port")))? as u16;
    if let Some(v) = obj.get("logName").filter(|v| !v.is_string()) {
        return Err(format!("{at}.logName {v}: expected a string"));
    }
    let log_name = obj.get("logName").and_then(Value::as_str).filter(|n| !n.is_empty());
    let log_name = log_name.unwrap_or(OTEL_LOG_NAME).to_string();
    let mut text = wasmesh_accesslog::ISTIO_TEXT.to_string();
    let mut attributes = BTreeMap::new();
    if let Some(f) = obj.get("logFormat") {
        let Some(fo) = f.as_object() else { return Err(format!("{at}.logFormat {f}: expected an object")) };
        if let Some(k) = fo.keys().find(|k| *k != "text" && *k != "labels") {
            return Err(format!("{at}.logFormat.{k}: not mapped by wasmesh; expected text, labels"));
        }
        match fo.get("text") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t.is_empty() => {}
            Some(Value::String(t)) => text = t.clone(),
            Some(v) => return Err(format!("{at}.logFormat.text {v}: expected a string")),
        }
        if let Some(l) = fo.get("labels").filter(|l| !l.is_null()) {
            attributes = serde_json::from_value::<BTreeMap<String, String>>(l.clone())
                .map_err(|e| format!("{at}.logFormat.labels {l}: expected string values: {e}"))?;
        }
    }
    wasmesh_accesslog::Format::otel(&text, &attributes).map_err(|e| format!("{at}.logFormat: {e}"))?;
    Ok(Log {
        path: String::new(),
        text: Some(text),
        json: None,
        filter: None,
        otel: Some(Otel { provider: name.to_string(), host, port, attributes, log_name }),
    })
}

/// meshConfig `defaultProviders.accessLogging` (empty when unset).
fn default_providers(mesh: &MeshConfig) -> Vec<String> {
    let list = mesh.default_providers.as_ref().and_then(|d| d.get("accessLogging")).and_then(Value::as_array);
    list.map(|l| l.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
}

/// Where a provider error is reported: the resource and field, or the mesh config.
fn mesh_error(field: String, message: String) -> Error {
    Error::new(format!("mesh config: {field}: {message}"))
}

/// A TEXT format as Istio writes it: a trailing newline added when missing.
fn text_line(format: &str) -> String {
    if format.ends_with('\n') {
        format.to_string()
    } else {
        format!("{format}\n")
    }
}

/// The built-in `envoy` provider: meshConfig's file, encoding and format.
fn envoy_provider(mesh: &MeshConfig) -> Result<Log, Error> {
    let path = mesh.access_log_file.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/dev/stdout".into());
    let encoding = mesh.access_log_encoding.as_deref().unwrap_or("TEXT");
    let format = mesh.access_log_format.as_deref().filter(|f| !f.is_empty());
    let (text, json) = match encoding {
        "TEXT" => (Some(format.map_or_else(|| wasmesh_accesslog::ISTIO_TEXT.to_string(), text_line)), None),
        "JSON" => {
            let fields = match format {
                None => wasmesh_accesslog::istio_json(),
                Some(f) => serde_json::from_str::<BTreeMap<String, String>>(f).map_err(|e| {
                    mesh_error(
                        "accessLogFormat".into(),
                        format!("{f:?}: with accessLogEncoding JSON expected a JSON object of string fields: {e}"),
                    )
                })?,
            };
            (None, Some(fields))
        }
        other => {
            return Err(mesh_error("accessLogEncoding".into(), format!("{other:?}: expected TEXT or JSON")));
        }
    };
    let log = Log { path, text, json, filter: None, otel: None };
    check_format(&log).map_err(|e| mesh_error("accessLogFormat".into(), e))?;
    Ok(log)
}

/// Compiles a log's format as the filter will, so a bad operator is refused here.
fn check_format(log: &Log) -> Result<(), String> {
    match (&log.text, &log.json) {
        (Some(t), _) => wasmesh_accesslog::Format::text(t).map(|_| ()),
        (None, Some(j)) => wasmesh_accesslog::Format::json(j).map(|_| ()),
        (None, None) => Ok(()),
    }
}

/// The named extension provider as a log.
fn provider(mesh: &MeshConfig, name: &str) -> Result<Log, String> {
    if name == "envoy" {
        return envoy_provider(mesh).map_err(|e| e.to_string());
    }
    let Some((i, p)) =
        mesh.extension_providers.iter().enumerate().find(|(_, p)| p.get("name").and_then(Value::as_str) == Some(name))
    else {
        let known: Vec<&str> =
            mesh.extension_providers.iter().filter_map(|p| p.get("name").and_then(Value::as_str)).collect();
        return Err(format!(
            "provider {name:?} is neither \"envoy\" nor in the mesh config's extensionProviders (found {known:?})"
        ));
    };
    if let Some(o) = p.get("envoyOtelAls") {
        return otel_provider(name, &format!("mesh config extensionProviders[{i}].envoyOtelAls"), o);
    }
    let Some(file) = p.get("envoyFileAccessLog") else {
        return Err(format!(
            "provider {name:?} (mesh config extensionProviders[{i}]) is not an access-log provider wasmesh writes; \
             expected envoyFileAccessLog or envoyOtelAls"
        ));
    };
    let at = format!("mesh config extensionProviders[{i}].envoyFileAccessLog");
    let path = file.get("path").and_then(Value::as_str).filter(|p| !p.is_empty()).unwrap_or("/dev/stdout").to_string();
    let format = file.get("logFormat");
    let (text, json) = match format {
        None => (Some(wasmesh_accesslog::ISTIO_TEXT.to_string()), None),
        Some(f) => match (f.get("text").and_then(Value::as_str), f.get("labels")) {
            (Some(t), None) => (Some(text_line(t)), None),
            (None, Some(labels)) => {
                let fields = serde_json::from_value::<BTreeMap<String, String>>(labels.clone())
                    .map_err(|e| format!("{at}.logFormat.labels: expected string fields: {e}"))?;
                (None, Some(fields))
            }
            (None, None) => (Some(wasmesh_accesslog::ISTIO_TEXT.to_string()), None),
            _ => return Err(format!("{at}.logFormat: text and labels both set; expected one")),
        },
    };
    let log = Log { path, text, json, filter: None, otel: None };
    check_format(&log).map_err(|e| format!("{at}.logFormat {format:?}: {e}"))?;
    Ok(log)
}

/// The Telemetries with `accessLogging` of the most specific level that has any.
fn scoped<'a>(ctx: &ListenerContext<'a>) -> Vec<(&'a Resource, &'a wasmesh_istio::telemetry::Telemetry)> {
    let wl = ctx.workload;
    let all: Vec<_> = ctx
        .resources
        .telemetries()
        .filter(|(_, t)| !t.access_logging.is_empty() && t.target_ref.is_none() && t.target_refs.is_empty())
        .collect();
    let workload: Vec<_> = all
        .iter()
        .filter(|(r, t)| r.namespace() == wl.namespace && t.selector.as_ref().is_some_and(|s| s.selects(&wl.labels)))
        .copied()
        .collect();
    if !workload.is_empty() {
        return workload;
    }
    let namespace: Vec<_> =
        all.iter().filter(|(r, t)| r.namespace() == wl.namespace && t.selector.is_none()).copied().collect();
    if !namespace.is_empty() {
        return namespace;
    }
    all.into_iter().filter(|(r, t)| r.namespace() == wl.root_namespace && t.selector.is_none()).collect()
}

fn mode_applies(mode: &str, direction: Direction) -> bool {
    match mode {
        "CLIENT" => direction != Direction::Inbound,
        "SERVER" => !matches!(direction, Direction::Outbound),
        _ => true,
    }
}

/// One `accessLogging[]` entry, checked: (providers, disabled, filter, mode).
fn entry(res: &Resource, i: usize, e: &Value) -> Result<(Vec<String>, bool, Option<String>, String), Error> {
    let at = |f: &str| format!("spec.accessLogging[{i}]{f}");
    let Some(obj) = e.as_object() else {
        return Err(Error::at(res, at(""), "expected an object"));
    };
    if let Some(k) = obj.keys().find(|k| !["providers", "disabled", "filter", "match"].contains(&k.as_str())) {
        return Err(Error::at(res, at(&format!(".{k}")), "unknown field; expected providers, disabled, filter, match"));
    }
    let mut providers = Vec::new();
    if let Some(ps) = obj.get("providers") {
        let list = ps.as_array().ok_or_else(|| Error::at(res, at(".providers"), "expected a list of {name}"))?;
        for (j, p) in list.iter().enumerate() {
            let name = p.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            let name =
                name.ok_or_else(|| Error::at(res, at(&format!(".providers[{j}].name")), "expected a provider name"))?;
            providers.push(name.to_string());
        }
    }
    let disabled = match obj.get("disabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => return Err(Error::at(res, at(".disabled"), format!("{other}: expected true or false"))),
    };
    let filter = match obj.get("filter") {
        None | Some(Value::Null) => None,
        Some(f) => {
            let expr = f.get("expression").and_then(Value::as_str).map(str::trim).filter(|x| !x.is_empty());
            let expr = expr.ok_or_else(|| Error::at(res, at(".filter.expression"), "expected a CEL expression"))?;
            if expr.len() > wasmesh_accesslog::config::MAX_FILTER_BYTES {
                return Err(Error::at(res, at(".filter.expression"), "longer than 4096 bytes"));
            }
            // Envoy parses the expression only when the phase first asks for it (`expr_create`);
            // one it cannot parse would make the log write nothing: refused here instead.
            if let Err(e) = cel::Program::compile(expr) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                return Err(Error::at(
                    res,
                    at(".filter.expression"),
                    format!("{expr:?} is not a CEL expression (the access log would write nothing): {first}"),
                ));
            }
            Some(expr.to_string())
        }
    };
    let mode = match obj.get("match").and_then(|m| m.get("mode")) {
        None => "CLIENT_AND_SERVER".to_string(),
        Some(Value::String(m)) if ["CLIENT", "SERVER", "CLIENT_AND_SERVER"].contains(&m.as_str()) => m.clone(),
        Some(other) => {
            return Err(Error::at(
                res,
                at(".match.mode"),
                format!("{other}: expected CLIENT, SERVER or CLIENT_AND_SERVER"),
            ))
        }
    };
    Ok((providers, disabled, filter, mode))
}

/// The logs of one listener.
pub fn logs(ctx: &ListenerContext<'_>) -> Result<Vec<Log>, Vec<Error>> {
    let mut errors = Vec::new();
    let mut out: Vec<Log> = Vec::new();
    let telemetries = scoped(ctx);
    let defaults = default_providers(ctx.mesh);
    if telemetries.is_empty() && !defaults.is_empty() {
        for name in &defaults {
            match provider(ctx.mesh, name) {
                Ok(l) => out.push(l),
                Err(m) => errors.push(Error::new(format!("mesh config defaultProviders.accessLogging {name:?}: {m}"))),
            }
        }
    } else if telemetries.is_empty() && ctx.mesh.access_log_file.as_deref().is_some_and(|f| !f.is_empty()) {
        match envoy_provider(ctx.mesh) {
            Ok(l) => out.push(l),
            Err(e) => errors.push(e),
        }
    }
    for (res, t) in telemetries {
        for (i, e) in t.access_logging.iter().enumerate() {
            let (providers, disabled, filter, mode) = match entry(res, i, e) {
                Ok(x) => x,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let providers = match (providers.is_empty(), defaults.is_empty()) {
                (false, _) => providers,
                (true, false) => defaults.clone(),
                (true, true) => vec!["envoy".to_string()],
            };
            let mut resolved = Vec::new();
            for (j, name) in providers.iter().enumerate() {
                match provider(ctx.mesh, name) {
                    Ok(l) => resolved.push(l),
                    Err(m) => errors.push(Error::at(res, format!("spec.accessLogging[{i}].providers[{j}].name"), m)),
                }
            }
            if disabled || !mode_applies(&mode, ctx.direction) {
                continue;
            }
            for mut l in resolved {
                l.filter = filter.clone();
                out.push(l);
            }
        }
    }
    if out.len() > wasmesh_accesslog::config::MAX_LOGS {
        errors.push(Error::new(format!(
            "workload {}/{}: {} access logs on one listener; at most {}",
            ctx.workload.namespace,
            ctx.workload.name,
            out.len(),
            wasmesh_accesslog::config::MAX_LOGS
        )));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A file log's format and filter, as the phase's configuration names them.
fn set_format(e: &mut Value, l: &Log) {
    if let Some(t) = &l.text {
        e["text"] = json!(t);
    }
    if let Some(j) = &l.json {
        e["json"] = json!(j);
    }
    if let Some(f) = &l.filter {
        e["filter"] = json!(f);
    }
}

/// The phase's log entries, the file loggers printing them and the collector clusters of the
/// exported ones: the same for an HTTP listener and a TCP one.
fn entries(logs: &[Log]) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut entries = Vec::new();
    let mut sinks = Vec::new();
    let mut clusters = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let key = format!("{KEY_PREFIX}.{i}");
        let mut e = json!({"filterStateKey": key});
        if let Some(o) = &l.otel {
            let cluster = cluster_name(&o.provider);
            e["otel"] = json!({"cluster": cluster, "authority": o.host, "attributes": o.attributes});
            if let Some(t) = &l.text {
                e["text"] = json!(t);
            }
            if let Some(f) = &l.filter {
                e["filter"] = json!(f);
            }
            entries.push(e);
            clusters.push(collector_cluster(&cluster, &o.host, o.port));
            continue;
        }
        set_format(&mut e, l);
        entries.push(e);
        sinks.push(sink(&l.path, &key));
    }
    (entries, sinks, clusters)
}

/// The phase and its file loggers for one HTTP listener (nothing when it writes no log).
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let logs = logs(ctx)?;
    if logs.is_empty() {
        return Ok(Contribution::default());
    }
    let (entries, sinks, clusters) = entries(&logs);
    let config = json!({"logs": entries});
    wasmesh_accesslog::config::parse(config.to_string().as_bytes()).map_err(|e| vec![Error::new(e)])?;
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: true }],
        access_logs: sinks,
        clusters,
        ..Contribution::default()
    })
}

/// The network filter, its file loggers (for the `tcp_proxy`) and collector clusters of one TCP
/// listener: the same logs as an HTTP listener of that direction, one line (or, for an
/// `envoyOtelAls` provider, one exported record, as Envoy's OpenTelemetry logger on the
/// `tcp_proxy` sends) per connection at close.
pub fn tcp_contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let logs = logs(ctx)?;
    if logs.is_empty() {
        return Ok(Contribution::default());
    }
    let (entries, sinks, clusters) = entries(&logs);
    let config = json!({"tcp": true, "logs": entries});
    wasmesh_accesslog::config::parse(config.to_string().as_bytes()).map_err(|e| vec![Error::new(e)])?;
    Ok(Contribution {
        network_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: true }],
        access_logs: sinks,
        clusters,
        ..Contribution::default()
    })
}

/// The response flag of a connection no filter chain of the listener takes ("no filter chain
/// found"), the only one istiod's listener-level access logs write (`listenerAccessLogFilter`).
pub const NO_FILTER_CHAIN_FLAG: &str = "NR";

/// The listener-level access logs istiod writes (`setListenerAccessLog`, on sidecar inbound, the
/// sidecar's outbound entry listener and every gateway listener): for each file log of the
/// listener ([`logs`]: meshConfig `accessLogFile` or Telemetry `accessLogging`), Envoy's own file
/// logger with the same path and format (TEXT inline, or JSON with `sort_properties: false`),
/// filtered to response flag `NR` (and the Telemetry entry's CEL filter), as
/// `FileAccessLogFromMeshConfig` / `buildAccessLogFromTelemetry` write it. Envoy runs a
/// listener's access logs for every connection it closes; the `NR` filter keeps only those that
/// matched no filter chain, which no network filter (wasm or native) ever sees, so nothing is
/// logged twice. Nothing with meshConfig `disableEnvoyListenerLog`. An `envoyOtelAls` log is
/// Envoy's own OpenTelemetry logger as istiod writes it (`openTelemetryLog`), to the collector
/// cluster the listener's HTTP phase exports to ([`contribute`]; a TCP listener refuses the
/// provider, [`tcp_contribute`]).
pub fn listener_access_logs(ctx: &ListenerContext<'_>) -> Result<Vec<Value>, Vec<Error>> {
    if ctx.mesh.disable_envoy_listener_log == Some(true) {
        return Ok(Vec::new());
    }
    Ok(logs(ctx)?.iter().filter_map(listener_log).collect())
}

/// The filter-state objects istiod's gRPC and OpenTelemetry loggers name (`envoyWasmStateToLog`).
const STATE_TO_LOG: [&str; 6] = [
    "upstream_peer",
    "downstream_peer",
    "wasm.upstream_peer",
    "wasm.upstream_peer_id",
    "wasm.downstream_peer",
    "wasm.downstream_peer_id",
];

/// One listener-level logger ([`listener_access_logs`]).
fn listener_log(l: &Log) -> Option<Value> {
    let (name, typed_config) = if let Some(o) = &l.otel {
        let mut c = json!({
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "common_config": {
                "log_name": o.log_name,
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster_name(&o.provider), "authority": o.host}},
                "transport_api_version": "V3",
                "filter_state_objects_to_log": STATE_TO_LOG,
            },
            "disable_builtin_labels": true,
            "body": {"string_value": l.text.as_deref().unwrap_or(wasmesh_accesslog::ISTIO_TEXT)},
        });
        if !o.attributes.is_empty() {
            let values: Vec<Value> =
                o.attributes.iter().map(|(k, v)| json!({"key": k, "value": {"string_value": v}})).collect();
            c["attributes"] = json!({ "values": values });
        }
        ("envoy.access_loggers.open_telemetry", c)
    } else {
        let log_format = match (&l.text, &l.json) {
            (Some(t), _) => json!({"text_format_source": {"inline_string": t}}),
            (None, Some(j)) => json!({"json_format": j, "json_format_options": {"sort_properties": false}}),
            (None, None) => return None,
        };
        let c = json!({
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": l.path,
            "log_format": log_format,
        });
        ("envoy.access_loggers.file", c)
    };
    let nr = json!({"response_flag_filter": {"flags": [NO_FILTER_CHAIN_FLAG]}});
    let filter = match &l.filter {
        None => nr,
        Some(expr) => json!({"and_filter": {"filters": [nr, {"extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expr,
            },
        }}]}}),
    };
    Some(json!({"name": name, "filter": filter, "typed_config": typed_config}))
}

/// The collector of an `envoyOtelAls` provider: HTTP/2 (gRPC), resolved by DNS.
fn collector_cluster(name: &str, host: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": host, "port_value": port}}}}]}]}
    })
}

/// The Envoy file logger printing the line the phase wrote to filter state `wasm.<key>`.
pub fn sink(path: &str, key: &str) -> Value {
    json!({"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {
            "text_format_source": {"inline_string": format!("%FILTER_STATE(wasm.{key}:PLAIN)%")},
            "omit_empty_values": true,
        },
    }})
}

/// `wasmeshctl validate` with a mesh config: every Telemetry `accessLogging` and the meshConfig
/// access-log fields, whatever workload they select.
pub fn validate(resources: &Resources, mesh: &MeshConfig) -> Vec<Error> {
    let mut errors = Vec::new();
    if mesh.access_log_file.is_some() || mesh.access_log_encoding.is_some() || mesh.access_log_format.is_some() {
        if let Err(e) = envoy_provider(mesh) {
            errors.push(e);
        }
    }
    for name in default_providers(mesh) {
        if let Err(m) = provider(mesh, &name) {
            errors.push(Error::new(format!("mesh config defaultProviders.accessLogging {name:?}: {m}")));
        }
    }
    for (res, t) in resources.telemetries() {
        for (i, e) in t.access_logging.iter().enumerate() {
            match entry(res, i, e) {
                Err(e) => errors.push(e),
                Ok((providers, ..)) => {
                    let defaults = default_providers(mesh);
                    let providers = match (providers.is_empty(), defaults.is_empty()) {
                        (false, _) => providers,
                        (true, false) => defaults,
                        (true, true) => vec!["envoy".to_string()],
                    };
                    for (j, name) in providers.iter().enumerate() {
                        if let Err(m) = provider(mesh, name) {
                            errors.push(Error::at(res, format!("spec.accessLogging[{i}].providers[{j}].name"), m));
                        }
                    }
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_istio::{load_str, Workload};

    fn ctx_logs(yaml: &str, mesh: &MeshConfig, direction: Direction) -> Result<Vec<Log>, Vec<Error>> {
        let resources = Resources { items: load_str(yaml, "t.yaml").unwrap_or_default() };
        let mut wl = Workload::new("reviews-v1", "bookinfo");
        wl.labels.insert("app".into(), "reviews".into());
        let ctx = ListenerContext { workload: &wl, resources: &resources, direction, bind_port: 9080, mesh };
        logs(&ctx)
    }

    fn mesh(yaml: &str) -> MeshConfig {
        yaml_serde::from_str(yaml).unwrap_or_default()
    }

    #[test]
    fn envoy_otel_als_is_exported_with_its_text_labels_and_default_providers() {
        let m = mesh(
            "defaultProviders: {accessLogging: [otel]}\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    \
             service: observability/otel.observability.svc.cluster.local\n    port: 4317\n    logName: x\n    \
             logFormat: {text: '%RESPONSE_CODE%', labels: {code: '%RESPONSE_CODE%'}}",
        );
        let logs = ctx_logs("", &m, Direction::Inbound).unwrap_or_default();
        assert_eq!(logs.len(), 1, "defaultProviders without Telemetry");
        assert_eq!(logs[0].text.as_deref(), Some("%RESPONSE_CODE%"), "istiod adds no newline to an OTel body");
        let o = logs[0].otel.clone().unwrap_or_else(|| panic!("not otel"));
        assert_eq!((o.host.as_str(), o.port), ("otel.observability.svc.cluster.local", 4317));
        assert_eq!(o.attributes.get("code").map(String::as_str), Some("%RESPONSE_CODE%"));
        let with_filter = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - filter: {expression: "response.code >= 400"}
"#;
        let logs = ctx_logs(with_filter, &m, Direction::Inbound).unwrap_or_default();
        assert_eq!(logs.len(), 1);
        assert!(logs[0].otel.is_some() && logs[0].filter.is_some(), "{logs:?}");
        for (bad, want) in [
            ("envoyOtelAls: {port: 4317}", "envoyOtelAls.service"),
            ("envoyOtelAls: {service: c, port: 0}", "envoyOtelAls.port"),
            ("envoyOtelAls: {service: c, port: 1, logFormat: {text: '%NOPE%'}}", "%NOPE%"),
            ("envoyOtelAls: {service: c, port: 1, logFormat: {labels: {a: 1}}}", "labels"),
        ] {
            let m = mesh(&format!("defaultProviders: {{accessLogging: [o]}}\nextensionProviders:\n- name: o\n  {bad}"));
            let e = ctx_logs("", &m, Direction::Inbound).err().unwrap_or_default();
            assert!(e.iter().any(|e| e.to_string().contains(want)), "{bad}: {e:?}");
        }
    }

    /// istiod's `openTelemetryLog` at listener level: Envoy's OpenTelemetry logger to the
    /// provider's collector cluster, filtered to NR.
    #[test]
    fn an_otel_provider_is_envoys_open_telemetry_logger_at_listener_level() {
        let m = mesh(
            "defaultProviders: {accessLogging: [otel]}\nextensionProviders:\n- name: otel\n  envoyOtelAls:\n    \
             service: observability/otel.observability.svc.cluster.local\n    port: 4317\n    \
             logFormat: {labels: {code: '%RESPONSE_CODE%'}}",
        );
        let resources = Resources::default();
        let wl = Workload::new("gw", "istio-system");
        let ctx = ListenerContext {
            workload: &wl,
            resources: &resources,
            direction: Direction::Gateway { port: 443 },
            bind_port: 8443,
            mesh: &m,
        };
        let logs = listener_access_logs(&ctx).unwrap_or_default();
        assert_eq!(
            logs,
            vec![json!({
                "name": "envoy.access_loggers.open_telemetry",
                "filter": {"response_flag_filter": {"flags": ["NR"]}},
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
                    "common_config": {
                        "log_name": "otel_envoy_accesslog",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "wasmesh-accesslog|otel",
                            "authority": "otel.observability.svc.cluster.local"}},
                        "transport_api_version": "V3",
                        "filter_state_objects_to_log": STATE_TO_LOG,
                    },
                    "disable_builtin_labels": true,
                    "body": {"string_value": wasmesh_accesslog::ISTIO_TEXT},
                    "attributes": {"values": [{"key": "code", "value": {"string_value": "%RESPONSE_CODE%"}}]},
                },
            })]
        );
    }

    #[test]
    fn mesh_access_log_file_logs_everything_in_istios_default_format() {
        assert_eq!(ctx_logs("", &MeshConfig::default(), Direction::Inbound).ok(), Some(vec![]));
        let m = mesh("accessLogFile: /dev/stdout");
        let logs = ctx_logs("", &m, Direction::Outbound).unwrap_or_default();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].text.as_deref(), Some(wasmesh_accesslog::ISTIO_TEXT));
        let m = mesh("accessLogFile: /tmp/a.log\naccessLogEncoding: JSON");
        let logs = ctx_logs("", &m, Direction::Inbound).unwrap_or_default();
        assert_eq!((logs[0].path.as_str(), logs[0].json.as_ref().map(|j| j.len())), ("/tmp/a.log", Some(24)));
    }

    #[test]
    fn telemetry_scope_mode_filter_and_providers() {
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  accessLogging:
  - providers: [{name: errors}]
    filter: {expression: "response.code >= 400"}
    match: {mode: SERVER}
"#;
        let m = mesh("extensionProviders:\n- name: errors\n  envoyFileAccessLog:\n    path: /tmp/errors.log\n    logFormat: {text: '%RESPONSE_CODE%'}");
        let inbound = ctx_logs(yaml, &m, Direction::Inbound).unwrap_or_default();
        assert_eq!(inbound.len(), 1);
        assert_eq!(inbound[0].path, "/tmp/errors.log");
        assert_eq!(inbound[0].text.as_deref(), Some("%RESPONSE_CODE%\n"));
        assert_eq!(inbound[0].filter.as_deref(), Some("response.code >= 400"));
        // The workload level wins; its entry is SERVER only.
        assert_eq!(ctx_logs(yaml, &m, Direction::Outbound).ok(), Some(vec![]));
    }

    #[test]
    fn errors_name_resource_field_and_value() {
        let yaml = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: t, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: otel}]
  - providers: [{name: nope}]
  - match: {mode: BOTH}
"#;
        let m = mesh("extensionProviders:\n- name: otel\n  envoyOtelAls: {service: c, port: 4317, grpc: {}}");
        let errs = ctx_logs(yaml, &m, Direction::Inbound).err().unwrap_or_default();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("spec.accessLogging[0].providers[0].name") && all.contains("envoyOtelAls.grpc"), "{all}");
        assert!(all.contains("spec.accessLogging[1].providers[0].name") && all.contains("\"nope\""), "{all}");
        assert!(all.contains("spec.accessLogging[2].match.mode") && all.contains("BOTH"), "{all}");
        let bad = mesh("accessLogFile: /dev/stdout\naccessLogFormat: '%NOPE%'");
        let e = ctx_logs("", &bad, Direction::Inbound).err().unwrap_or_default();
        assert!(
            e.iter().any(|e| e.to_string().contains("accessLogFormat") && e.to_string().contains("%NOPE%")),
            "{e:?}"
        );
    }
}

/// `wasmeshctl logs`: one access-log line (Istio's default TEXT format or any JSON line) as one
/// readable line; a line in another format comes back as it is.
pub fn pretty(line: &str) -> String {
    let line = line.trim_end_matches(['\n', '\r']);
    let fields = if line.trim_start().starts_with('{') { json_fields(line) } else { text_fields(line) };
    match fields {
        Some(f) => summary(&f),
        None => line.to_string(),
    }
}

/// Istio's default JSON field names, from a JSON line.
fn json_fields(line: &str) -> Option<BTreeMap<String, String>> {
    let v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    Some(
        obj.iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::Null => "-".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), s)
            })
            .collect(),
    )
}

/// The tokens of a TEXT line: `[...]`, `"..."` and bare words.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let close = match c {
            '[' => Some(']'),
            '"' => Some('"'),
            _ => None,
        };
        let mut t = String::new();
        if let Some(close) = close {
            chars.next();
            for ch in chars.by_ref() {
                if ch == close {
                    break;
                }
                t.push(ch);
            }
        } else {
            while let Some(&ch) = chars.peek() {
                if ch == ' ' {
                    break;
                }
                t.push(ch);
                chars.next();
            }
        }
        out.push(t);
    }
    out
}

/// The fields of a line in Istio's default TEXT format (by position), named as its JSON.
fn text_fields(line: &str) -> Option<BTreeMap<String, String>> {
    const NAMES: [&str; 21] = [
        "start_time",
        "request",
        "response_code",
        "response_flags",
        "response_code_details",
        "connection_termination_details",
        "upstream_transport_failure_reason",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "upstream_local_address",
        "downstream_local_address",
        "downstream_remote_address",
        "requested_server_name",
    ];
    let t = tokens(line);
    if !line.starts_with('[') || !(NAMES.len()..=NAMES.len() + 1).contains(&t.len()) {
        return None;
    }
    let mut f: BTreeMap<String, String> = NAMES.iter().zip(&t).map(|(n, v)| (n.to_string(), v.clone())).collect();
    if let Some(route) = t.get(NAMES.len()) {
        f.insert("route_name".into(), route.clone());
    }
    let request = f.remove("request").unwrap_or_default();
    let mut parts = request.splitn(3, ' ');
    for k in ["method", "path", "protocol"] {
        f.insert(k.into(), parts.next().unwrap_or("-").to_string());
    }
    Some(f)
}

fn summary(f: &BTreeMap<String, String>) -> String {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("-");
    if !f.contains_key("response_code") {
        return f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    }
    let mut s = format!(
        "{}  {:>3} {:<6} {} {}  {}ms  {} → {} → {}",
        get("start_time"),
        get("response_code"),
        get("method"),
        get("path"),
        get("protocol"),
        get("duration"),
        get("downstream_remote_address"),
        get("authority"),
        get("upstream_host"),
    );
    for (label, key) in [
        ("flags", "response_flags"),
        ("details", "response_code_details"),
        ("cluster", "upstream_cluster"),
        ("route", "route_name"),
        ("id", "request_id"),
    ] {
        let v = get(key);
        if v != "-" && !v.is_empty() {
            s.push_str(&format!("  {label}={v}"));
        }
    }
    // Custom JSON fields beyond Istio's defaults.
    let known: Vec<&str> = wasmesh_accesslog::ISTIO_JSON.iter().map(|(k, _)| *k).collect();
    for (k, v) in f {
        if !known.contains(&k.as_str()) && !["method", "path", "protocol"].contains(&k.as_str()) {
            s.push_str(&format!("  {k}={v}"));
        }
    }
    s
}

/// `wasmeshctl logs FILE [--follow]`: prints each line of a proxy's access log ([`pretty`], or as
/// it is with `raw`), then, with `follow`, the lines appended after (as `tail -f`). `-` reads
/// standard input.
pub fn tail(path: &std::path::Path, follow: bool, raw: bool) -> Result<(), String> {
    use std::io::{BufRead, BufReader, Read};
    let show = |line: &str| {
        if raw {
            println!("{}", line.trim_end_matches('\n'));
        } else {
            println!("{}", pretty(line));
        }
    };
    let reader: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
    };
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            if !follow {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            continue;
        }
        if !line.trim().is_empty() {
            show(&line);
        }
    }
}

#[cfg(test)]
mod pretty_tests {
    use super::*;

    const TEXT: &str =
        "[2026-12-06T22:41:05.123Z] \"GET /status/404 HTTP/1.1\" 404 - via_upstream - \"-\" 0 12 7 3 \"-\" \
                        \"curl/8\" \"id-1\" \"httpbin:8000\" \"127.0.0.1:9000\" inbound|8000|| 127.0.0.1:40000 \
                        127.0.0.1:8080 127.0.0.1:50000 - default\n";

    #[test]
    fn istio_text_and_json_lines_read_the_same() {
        let want = "2026-12-06T22:41:05.123Z  404 GET    /status/404 HTTP/1.1  7ms  127.0.0.1:50000 → httpbin:8000 → \
                    127.0.0.1:9000  details=via_upstream  cluster=inbound|8000||  route=default  id=id-1";
        assert_eq!(pretty(TEXT), want);
        let json = r#"{"start_time":"2026-12-06T22:41:05.123Z","method":"GET","path":"/status/404","protocol":"HTTP/1.1","response_code":404,"response_flags":"-","response_code_details":"via_upstream","duration":7,"downstream_remote_address":"127.0.0.1:50000","authority":"httpbin:8000","upstream_host":"127.0.0.1:9000","upstream_cluster":"inbound|8000||","route_name":"default","request_id":"id-1","x_forwarded_for":null}"#;
        assert_eq!(pretty(json), want);
        assert_eq!(pretty("something else"), "something else");
        assert_eq!(pretty(r#"{"code":404}"#), "code=404");
    }
}
