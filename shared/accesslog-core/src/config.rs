//! The access-log phase's configuration (written by wasmeshctl):
//!
//! ```json
//! {"logs": [
//!   {"filterStateKey": "wasmesh.access_log.0", "text": "[%START_TIME%] ...\n"},
//!   {"filterStateKey": "wasmesh.access_log.1", "json": {"code": "%RESPONSE_CODE%"},
//!    "filter": "response.code >= 400"}
//! ]}
//! ```
//!
//! Each log is one line per request written to filter state `wasm.<filterStateKey>`, where the
//! Envoy file access logger wasmeshctl configures next to the filter prints it (README "Access
//! logs" says why). `filter` is a CEL expression (Telemetry `accessLogging[].filter.expression`)
//! that Envoy's own CEL evaluates; neither `text` nor `json` means Istio's default TEXT format.

use crate::Format;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Most logs one phase writes (Telemetry providers of one proxy).
pub const MAX_LOGS: usize = 8;
/// Longest filter expression.
pub const MAX_FILTER_BYTES: usize = 4096;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    pub filter_state_key: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub json: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub filter: Option<String>,
    /// Export to an OpenTelemetry collector (`envoyOtelAls`) instead of filter state.
    #[serde(default)]
    pub otel: Option<OtelConfig>,
}

/// An `envoyOtelAls` sink: the record's body is the log's `text` (Istio's default format when
/// unset), its attributes `attributes` (Istio's `logFormat.labels`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtelConfig {
    /// The Envoy cluster of the collector (gRPC, HTTP/2).
    pub cluster: String,
    /// `:authority` of the calls (the service's host name, as istiod sets it).
    pub authority: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The resource's attributes (Istio sets none: `disable_builtin_labels`).
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Per export call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Most records waiting (default 2048, as tracing's exporter; 1 to 65536).
    #[serde(default)]
    pub max_queue: Option<usize>,
}

fn default_timeout_ms() -> u64 {
    5000
}

/// Where an exported log goes (the format is [`Format::otel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    pub cluster: String,
    pub authority: String,
    pub resource_attributes: Vec<(String, String)>,
    pub timeout_ms: u64,
    pub max_queue: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub logs: Vec<LogConfig>,
    /// The logs of a TCP connection (a network filter, one line per connection at close), not
    /// of HTTP requests.
    #[serde(default)]
    pub tcp: bool,
}

/// One compiled log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Log {
    pub key: String,
    pub format: Format,
    pub filter: Option<String>,
    /// Set: the rendered record is exported (OTLP), not written to filter state.
    pub export: Option<Export>,
}

/// The prefix every filter-state key of an access log has (so no log can overwrite the filter
/// state another wasmesh filter hands over).
pub const KEY_PREFIX: &str = "wasmesh.access_log";

/// Parses and compiles a configuration; errors name the log and field.
pub fn parse(bytes: &[u8]) -> Result<Vec<Log>, String> {
    parse_with_protocol(bytes).map(|(logs, _)| logs)
}

/// [`parse`], and whether the logs are a TCP connection's (`tcp`).
pub fn parse_with_protocol(bytes: &[u8]) -> Result<(Vec<Log>, bool), String> {
    let cfg: Config = serde_json::from_slice(bytes).map_err(|e| format!("access log configuration: {e}"))?;
    let tcp = cfg.tcp;
    if cfg.logs.is_empty() || cfg.logs.len() > MAX_LOGS {
        return Err(format!("logs: {} entries; expected 1 to {MAX_LOGS}", cfg.logs.len()));
    }
    let mut out: Vec<Log> = Vec::with_capacity(cfg.logs.len());
    for (i, l) in cfg.logs.into_iter().enumerate() {
        if !l.filter_state_key.starts_with(KEY_PREFIX) {
            return Err(format!("logs[{i}].filterStateKey {:?}: must start with {KEY_PREFIX}", l.filter_state_key));
        }
        if out.iter().any(|o| o.key == l.filter_state_key) {
            return Err(format!("logs[{i}].filterStateKey {:?}: used twice", l.filter_state_key));
        }
        let format = match (&l.text, &l.json, &l.otel) {
            (_, Some(_), Some(_)) => return Err(format!("logs[{i}]: json with otel; the record's body is text")),
            (t, None, Some(o)) => {
                if o.cluster.is_empty() || o.authority.is_empty() {
                    return Err(format!("logs[{i}].otel: cluster and authority must be set"));
                }
                if o.timeout_ms == 0 || o.timeout_ms > 60_000 {
                    return Err(format!("logs[{i}].otel.timeoutMs {}: expected 1 to 60000", o.timeout_ms));
                }
                if o.max_queue.is_some_and(|q| q == 0 || q > 65_536) {
                    return Err(format!("logs[{i}].otel.maxQueue {:?}: expected 1 to 65536", o.max_queue));
                }
                let body = t.as_deref().unwrap_or(crate::ISTIO_TEXT);
                Format::otel(body, &o.attributes).map_err(|e| format!("logs[{i}].otel: {e}"))?
            }
            _ => match (&l.text, &l.json) {
                (Some(_), Some(_)) => return Err(format!("logs[{i}]: text and json both set; expected one")),
                (Some(t), None) => Format::text(t).map_err(|e| format!("logs[{i}].text: {e}"))?,
                (None, Some(j)) => Format::json(j).map_err(|e| format!("logs[{i}].json: {e}"))?,
                (None, None) => Format::text(crate::ISTIO_TEXT).map_err(|e| format!("logs[{i}]: {e}"))?,
            },
        };
        if let Some(f) = &l.filter {
            if f.trim().is_empty() || f.len() > MAX_FILTER_BYTES {
                return Err(format!("logs[{i}].filter: expected a CEL expression of 1 to {MAX_FILTER_BYTES} bytes"));
            }
        }
        let export = l.otel.map(|o| Export {
            cluster: o.cluster,
            authority: o.authority,
            resource_attributes: o.resource_attributes.into_iter().collect(),
            timeout_ms: o.timeout_ms,
            max_queue: o.max_queue,
        });
        out.push(Log { key: l.filter_state_key, format, filter: l.filter, export });
    }
    Ok((out, tcp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn logs_compile_and_errors_name_the_field() {
        let ok = br#"{"logs":[{"filterStateKey":"wasmesh.access_log.0"},
            {"filterStateKey":"wasmesh.access_log.1","json":{"c":"%RESPONSE_CODE%"},"filter":"response.code >= 400"}]}"#;
        let logs = parse(ok).unwrap();
        assert_eq!(logs.len(), 2);
        assert!(!logs[0].format.is_json() && logs[1].format.is_json());
        for (cfg, want) in [
            (r#"{"logs":[]}"#, "1 to 8"),
            (r#"{"logs":[{"filterStateKey":"x"}]}"#, "must start with"),
            (
                r#"{"logs":[{"filterStateKey":"wasmesh.access_log","text":"%X%"}]}"#,
                "logs[0].text: at byte 0: unknown command operator %X%",
            ),
            (r#"{"logs":[{"filterStateKey":"wasmesh.access_log","json":{"a":"%Y%"}}]}"#, "logs[0].json: field \"a\""),
            (r#"{"logs":[{"filterStateKey":"wasmesh.access_log","bogus":1}]}"#, "unknown field"),
            (r#"{"logs":[{"filterStateKey":"wasmesh.access_log","filter":" "}]}"#, "logs[0].filter"),
            (
                r#"{"logs":[{"filterStateKey":"wasmesh.access_log","json":{},"otel":{"cluster":"c","authority":"a"}}]}"#,
                "json with otel",
            ),
            (
                r#"{"logs":[{"filterStateKey":"wasmesh.access_log","otel":{"cluster":"c","authority":"a","attributes":{"x":"%NOPE%"}}}]}"#,
                "logs[0].otel: attribute \"x\"",
            ),
        ] {
            let e = parse(cfg.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{cfg}: {e}");
        }
    }
}
