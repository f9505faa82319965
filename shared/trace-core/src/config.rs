//! The `wasmesh.tracing` phase configuration (written by wasmeshctl from meshConfig
//! `extensionProviders` and the Telemetry API `tracing`).

use crate::request_id::Percent;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Most custom tags (the named bound on what a span carries beyond Envoy's own tags).
pub const MAX_CUSTOM_TAGS: usize = 64;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Where spans go; absent with `disableSpanReporting`.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// Istio's `randomSamplingPercentage` (default 1 %).
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    #[serde(default)]
    pub disable_span_reporting: bool,
    #[serde(default)]
    pub disable_context_propagation: bool,
    #[serde(default)]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// The span name (a route decorator's operation, as istiod writes it on a sidecar's inbound
    /// route: `<host>:<port>/*`); default Envoy's `ingress` / `egress {host}`.
    #[serde(default)]
    pub operation: Option<String>,
    /// A wasmesh router on the listener hands over the matched route's operation
    /// (`wasmesh.router.decision`, its `traceOperations`): it names the span instead of
    /// `operation`.
    #[serde(default)]
    pub route_operations: bool,
    /// `server` or `client`; default from the listener's direction (inbound: server).
    #[serde(default)]
    pub kind: Option<String>,
    /// How route decorators apply, as Envoy's connection manager derives its tracing operation
    /// name from the listener's `traffic_direction`: `ingress` (a received
    /// `x-envoy-decorator-operation` names the span and is removed; the route's operation goes back
    /// in the response) or `egress` (the operation goes upstream; a response's header names the
    /// span and is removed). Default from `kind` (server: ingress). istiod writes a gateway's
    /// listeners `OUTBOUND`: wasmeshctl sets `egress` there.
    #[serde(default)]
    pub decorators: Option<String>,
    /// Report a separate upstream span (kind CLIENT, `router <cluster> egress`) under the
    /// downstream one (then kind SERVER) and send the upstream its context, as Envoy's router
    /// does with the connection manager's `spawn_upstream_span` (istiod sets it on gateways).
    #[serde(default)]
    pub spawn_upstream_span: bool,
    /// With `spawnUpstreamSpan`: the clusters whose upstream protocol is HTTP/2 (the span's
    /// `http.protocol`; a filter cannot read the upstream request's protocol), and those that
    /// use the downstream's protocol; any other cluster is HTTP/1.1.
    #[serde(default)]
    pub http2_clusters: Vec<String>,
    #[serde(default)]
    pub downstream_protocol_clusters: Vec<String>,
    /// Istio's `istio.mesh_id` (default `unknown`).
    #[serde(default)]
    pub mesh_id: Option<String>,
    /// Exporter tuning (defaults: [`crate::export::Settings::DEFAULT`]).
    #[serde(default)]
    pub max_queue: Option<usize>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    #[serde(default)]
    pub flush_period_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    /// `opentelemetry` (OTLP/HTTP protobuf) or `zipkin` (v2 JSON).
    pub kind: String,
    /// The Envoy cluster of the collector (wasmeshctl adds it to the bootstrap).
    pub cluster: String,
    /// `:authority` of the export requests (`otel-collector.observability:4318`).
    pub authority: String,
    /// Default `/v1/traces` (OpenTelemetry) or `/api/v2/spans` (Zipkin).
    #[serde(default)]
    pub path: Option<String>,
    /// The resource's `service.name` / Zipkin `localEndpoint.serviceName`; default the
    /// workload's canonical service and namespace, as Istio's `{app}.{namespace}`.
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    #[serde(default)]
    pub literal: Option<Literal>,
    #[serde(default)]
    pub header: Option<FromName>,
    #[serde(default)]
    pub environment: Option<FromName>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Literal {
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromName {
    pub name: String,
    #[serde(default)]
    pub default_value: Option<String>,
}

/// A custom tag compiled: where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSource {
    Literal(String),
    /// A request header (lower-case name) with its default.
    Header(String, Option<String>),
}

/// The provider's wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Otlp,
    Zipkin,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub format: Format,
    pub cluster: Option<String>,
    pub authority: String,
    pub path: String,
    pub service_name: Option<String>,
    pub timeout_ms: u64,
    pub percent: Percent,
    pub report: bool,
    pub propagate: bool,
    /// Custom tags; environment tags are resolved at configuration time by `env`.
    pub tags: Vec<(String, TagSource)>,
    pub operation: Option<String>,
    /// The router hands over the route's operation ([`Config::route_operations`]).
    pub route_operations: bool,
    pub server: Option<bool>,
    /// Route decorators apply as on Envoy's egress listener ([`Config::decorators`]); `None`: by
    /// the span's kind.
    pub egress: Option<bool>,
    /// [`Config::spawn_upstream_span`].
    pub spawn_upstream: bool,
    pub http2_clusters: Vec<String>,
    pub downstream_protocol_clusters: Vec<String>,
    pub mesh_id: String,
    pub settings: crate::export::Settings,
}

/// Most clusters named in [`Config::http2_clusters`] plus [`Config::downstream_protocol_clusters`].
pub const MAX_PROTOCOL_CLUSTERS: usize = 4096;

impl Checked {
    /// The upstream protocol of `cluster` for the upstream span (`downstream`: the request's).
    pub fn upstream_protocol<'a>(&'a self, cluster: &str, downstream: &'a str) -> &'a str {
        if self.http2_clusters.iter().any(|c| c == cluster) {
            "HTTP/2"
        } else if self.downstream_protocol_clusters.iter().any(|c| c == cluster) {
            downstream
        } else {
            "HTTP/1.1"
        }
    }
}

/// Parses and checks a configuration; `env` reads the proxy's environment (environment tags).
pub fn parse(bytes: &[u8], env: impl Fn(&str) -> Option<String>) -> Result<Checked, String> {
    let c: Config = serde_json::from_slice(bytes).map_err(|e| format!("tracing configuration: {e}"))?;
    let percent = match c.random_sampling_percentage {
        None => Percent::ISTIO_DEFAULT,
        Some(p) => Percent::new(p)
            .ok_or_else(|| format!("randomSamplingPercentage: {p}; expected a percentage from 0 to 100"))?,
    };
    let (format, cluster, authority, path, service_name, timeout_ms) = match (&c.provider, c.disable_span_reporting) {
        (Some(p), _) => {
            let format = match p.kind.as_str() {
                "opentelemetry" => Format::Otlp,
                "zipkin" => Format::Zipkin,
                other => return Err(format!("provider.kind: {other:?}; expected \"opentelemetry\" or \"zipkin\"")),
            };
            if p.cluster.is_empty() {
                return Err("provider.cluster: empty; expected the collector's Envoy cluster".into());
            }
            let path = p.path.clone().unwrap_or_else(|| {
                match format {
                    Format::Otlp => "/v1/traces",
                    Format::Zipkin => "/api/v2/spans",
                }
                .to_string()
            });
            if !path.starts_with('/') {
                return Err(format!("provider.path: {path:?}; expected a path starting with /"));
            }
            (format, Some(p.cluster.clone()), p.authority.clone(), path, p.service_name.clone(), p.timeout_ms)
        }
        (None, true) => (Format::Otlp, None, String::new(), String::new(), None, None),
        (None, false) => return Err("provider: missing; expected a collector unless disableSpanReporting".into()),
    };
    if c.custom_tags.len() > MAX_CUSTOM_TAGS {
        return Err(format!("customTags: {} tags; at most {MAX_CUSTOM_TAGS}", c.custom_tags.len()));
    }
    let mut tags = Vec::new();
    for (name, t) in &c.custom_tags {
        let src = match (&t.literal, &t.header, &t.environment) {
            (Some(l), None, None) => TagSource::Literal(l.value.clone()),
            (None, Some(h), None) => TagSource::Header(h.name.to_ascii_lowercase(), h.default_value.clone()),
            (None, None, Some(e)) => match env(&e.name).or_else(|| e.default_value.clone()) {
                Some(v) => TagSource::Literal(v),
                None => continue,
            },
            _ => return Err(format!("customTags.{name}: expected exactly one of literal, header, environment")),
        };
        tags.push((name.clone(), src));
    }
    let server = match c.kind.as_deref() {
        None => None,
        Some("server") => Some(true),
        Some("client") => Some(false),
        Some(other) => return Err(format!("kind: {other:?}; expected \"server\" or \"client\"")),
    };
    let egress = match c.decorators.as_deref() {
        None => None,
        Some("ingress") => Some(false),
        Some("egress") => Some(true),
        Some(other) => return Err(format!("decorators: {other:?}; expected \"ingress\" or \"egress\"")),
    };
    if c.http2_clusters.len() + c.downstream_protocol_clusters.len() > MAX_PROTOCOL_CLUSTERS {
        return Err(format!("http2Clusters, downstreamProtocolClusters: more than {MAX_PROTOCOL_CLUSTERS} clusters"));
    }
    let d = crate::export::Settings::DEFAULT;
    let settings = crate::export::Settings {
        max_queue: c.max_queue.unwrap_or(d.max_queue).clamp(1, 65_536),
        batch_size: c.batch_size.unwrap_or(d.batch_size).clamp(1, 4096),
        flush_period_ms: c.flush_period_ms.unwrap_or(d.flush_period_ms).clamp(10, 60_000),
        ..d
    };
    Ok(Checked {
        format,
        cluster,
        authority,
        path,
        service_name,
        timeout_ms: timeout_ms.unwrap_or(5000).clamp(1, 60_000),
        percent,
        report: !c.disable_span_reporting,
        propagate: !c.disable_context_propagation,
        tags,
        operation: c.operation,
        route_operations: c.route_operations,
        server,
        egress,
        spawn_upstream: c.spawn_upstream_span,
        http2_clusters: c.http2_clusters,
        downstream_protocol_clusters: c.downstream_protocol_clusters,
        mesh_id: c.mesh_id.unwrap_or_else(|| "unknown".into()),
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let c = parse(br#"{"provider": {"kind": "zipkin", "cluster": "z", "authority": "z:9411"}}"#, |_| None).unwrap();
        assert_eq!(c.path, "/api/v2/spans");
        assert_eq!(c.percent, Percent::ISTIO_DEFAULT);
        assert!(c.report && c.propagate);
        assert_eq!(c.egress, None, "decorators by the span's kind unless told");
        let c =
            parse(br#"{"disableSpanReporting": true, "kind": "server", "decorators": "egress"}"#, |_| None).unwrap();
        assert_eq!((c.server, c.egress), (Some(true), Some(true)));
        assert!(!c.spawn_upstream, "no upstream span unless told");
        let c = parse(
            br#"{"disableSpanReporting": true, "spawnUpstreamSpan": true, "http2Clusters": ["g"],
                "downstreamProtocolClusters": ["d"]}"#,
            |_| None,
        )
        .unwrap();
        assert!(c.spawn_upstream);
        assert_eq!(
            (
                c.upstream_protocol("g", "HTTP/1.1"),
                c.upstream_protocol("d", "HTTP/2"),
                c.upstream_protocol("x", "HTTP/2")
            ),
            ("HTTP/2", "HTTP/2", "HTTP/1.1")
        );
        let c = parse(
            br#"{"disableSpanReporting": true, "customTags": {"a": {"literal": {"value": "x"}},
                "b": {"environment": {"name": "POD", "defaultValue": "d"}}, "c": {"header": {"name": "X-A"}}}}"#,
            |n| (n == "POD").then(|| "p1".to_string()),
        )
        .unwrap();
        assert_eq!(
            c.tags,
            vec![
                ("a".into(), TagSource::Literal("x".into())),
                ("b".into(), TagSource::Literal("p1".into())),
                ("c".into(), TagSource::Header("x-a".into(), None))
            ]
        );
        for (bad, want) in [
            (r#"{}"#, "provider: missing"),
            (r#"{"disableSpanReporting": true, "randomSamplingPercentage": 120}"#, "randomSamplingPercentage"),
            (r#"{"provider": {"kind": "x", "cluster": "c", "authority": "a"}}"#, "provider.kind"),
            (r#"{"disableSpanReporting": true, "sampling": 1}"#, "unknown field"),
            (r#"{"disableSpanReporting": true, "customTags": {"a": {}}}"#, "customTags.a"),
            (r#"{"disableSpanReporting": true, "decorators": "out"}"#, "decorators"),
        ] {
            let e = parse(bad.as_bytes(), |_| None).err().unwrap_or_default();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
