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
//! format. `envoyOtelAls` (OTLP export) is refused until wasmesh's OTLP exporter lands.

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
    let log = Log { path, text, json, filter: None };
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
    if p.get("envoyOtelAls").is_some() {
        return Err(format!(
            "provider {name:?} (mesh config extensionProviders[{i}].envoyOtelAls): OpenTelemetry access-log export \
             is not implemented by wasmesh yet; use an envoyFileAccessLog provider"
        ));
    }
    let Some(file) = p.get("envoyFileAccessLog") else {
        return Err(format!(
            "provider {name:?} (mesh config extensionProviders[{i}]) is not an access-log provider wasmesh writes; \
             expected envoyFileAccessLog"
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
    let log = Log { path, text, json, filter: None };
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
    if telemetries.is_empty() {
        if ctx.mesh.access_log_file.as_deref().is_some_and(|f| !f.is_empty()) {
            match envoy_provider(ctx.mesh) {
                Ok(l) => out.push(l),
                Err(e) => errors.push(e),
            }
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
            let providers = if providers.is_empty() { vec!["envoy".to_string()] } else { providers };
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

/// The phase and its file loggers for one HTTP listener (nothing when it writes no log).
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let logs = logs(ctx)?;
    if logs.is_empty() {
        return Ok(Contribution::default());
    }
    let mut entries = Vec::new();
    let mut sinks = Vec::new();
    for (i, l) in logs.iter().enumerate() {
        let key = format!("{KEY_PREFIX}.{i}");
        let mut e = json!({"filterStateKey": key});
        if let Some(t) = &l.text {
            e["text"] = json!(t);
        }
        if let Some(j) = &l.json {
            e["json"] = json!(j);
        }
        if let Some(f) = &l.filter {
            e["filter"] = json!(f);
        }
        entries.push(e);
        sinks.push(sink(&l.path, &key));
    }
    let config = json!({"logs": entries});
    wasmesh_accesslog::config::parse(config.to_string().as_bytes()).map_err(|e| vec![Error::new(e)])?;
    Ok(Contribution {
        http_filters: vec![WasmFilter { name: FILTER_NAME.into(), config, fail_open: true }],
        access_logs: sinks,
        ..Contribution::default()
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
    for (res, t) in resources.telemetries() {
        for (i, e) in t.access_logging.iter().enumerate() {
            match entry(res, i, e) {
                Err(e) => errors.push(e),
                Ok((providers, ..)) => {
                    let providers = if providers.is_empty() { vec!["envoy".to_string()] } else { providers };
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
        let m = mesh("extensionProviders:\n- name: otel\n  envoyOtelAls: {service: c, port: 4317}");
        let errs = ctx_logs(yaml, &m, Direction::Inbound).err().unwrap_or_default();
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let all = text.join("\n");
        assert!(all.contains("spec.accessLogging[0].providers[0].name") && all.contains("envoyOtelAls"), "{all}");
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
