//! DestinationRule `trafficPolicy` → Envoy cluster settings, as istiod writes them
//! (`pilot/pkg/networking/core/cluster_traffic_policy.go`, `cluster_builder.go`).
//!
//! - Every cluster carries istiod's circuit-breaker thresholds: each of `max_connections`,
//!   `max_pending_requests`, `max_requests`, `max_retries` is 2^32−1 (Envoy's own defaults are
//!   1024/1024/1024/3) unless `connectionPool` sets it; `track_remaining: true`.
//! - `connectionPool.tcp`: `maxConnections`, `connectTimeout`, `tcpKeepalive`,
//!   `maxConnectionDuration`, `idleTimeout`; `connectionPool.http`: `http1MaxPendingRequests`,
//!   `http2MaxRequests`, `maxRetries`, `maxRequestsPerConnection`, `idleTimeout`,
//!   `maxConcurrentStreams`, `h2UpgradePolicy`, `useClientProtocol`.
//! - `outlierDetection` → `outlier_detection` (success-rate ejection off, the panic threshold set
//!   to `minHealthPercent`, 0 by default, as istiod does).
//! - `loadBalancer`: `simple`, `warmupDurationSecs`/`warmup` (slow start), `consistentHash`
//!   (ring hash or Maglev). The hash policy sits on the **cluster**
//!   (`consistent_hashing_lb_config.hash_policy`), not on the route as istiod puts it: wasmesh's
//!   route picks the cluster from the router's header, so one route serves every cluster, and a
//!   cluster-level hash policy is the one Envoy applies for exactly that cluster.
//! - Merging: istiod's `MergeTrafficPolicy`. A port-level setting replaces the four sections
//!   (connectionPool, loadBalancer, outlierDetection, tls) of its policy for that port, unset ones
//!   falling back to defaults; a subset's policy overrides the rule's section by section.
//!
//! - `localityLbSetting` (and the mesh default, enabled): endpoints grouped by their
//!   WorkloadEntry `locality`, `distribute` weights, failover priorities by distance to the
//!   proxy's own WorkloadEntry locality (with outlier detection), `failover` region pairs.
//!
//! `tls` is the mTLS plugin's ([`crate::plugins::mtls`]); `failoverPriority`, `tunnel`,
//! `proxyProtocol`, `retryBudget` are refused. Every refusal names the resource and the field.

use serde::Deserialize;
use serde_json::{json, Value};
use wasmesh_istio::networking::{DestinationRule, ServicePort, TrafficPolicy};
use wasmesh_istio::{Error, Resource, Resources, Workload};

/// istiod's default for every circuit-breaker threshold (`math.MaxUint32`).
pub const UNLIMITED: u32 = u32::MAX;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: u32,
    #[serde(default)]
    pub connect_timeout: Option<String>,
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    #[serde(default)]
    pub max_connection_duration: Option<String>,
    #[serde(default)]
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[serde(default)]
    pub probes: u32,
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub interval: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: u32,
    #[serde(default)]
    pub http2_max_requests: u32,
    #[serde(default)]
    pub max_requests_per_connection: u32,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub h2_upgrade_policy: Option<String>,
    #[serde(default)]
    pub use_client_protocol: bool,
    #[serde(default)]
    pub max_concurrent_streams: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default)]
    pub split_external_local_origin_errors: bool,
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated in Istio and not applied by istiod any more: refused.
    #[serde(default)]
    pub consecutive_errors: Option<Value>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: u32,
    #[serde(default)]
    pub min_health_percent: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    #[serde(default)]
    pub warmup_duration_secs: Option<String>,
    #[serde(default)]
    pub warmup: Option<Warmup>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub distribute: Vec<Distribute>,
    #[serde(default)]
    pub failover: Vec<Failover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Distribute {
    pub from: String,
    #[serde(default)]
    pub to: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Warmup {
    pub duration: String,
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    #[serde(default)]
    pub aggression: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    #[serde(default)]
    pub use_source_ip: bool,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    #[serde(default)]
    pub maglev: Option<Maglev>,
    #[serde(default)]
    pub minimum_ring_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCookie {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    #[serde(default)]
    pub minimum_ring_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    #[serde(default)]
    pub table_size: u64,
}

/// A section with the field path it came from (for errors).
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub field: String,
    pub value: T,
}

/// The traffic policy that applies to one cluster (service port, subset), merged as istiod
/// merges it. `tls` is left to the mTLS plugin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effective {
    pub connection_pool: Option<At<ConnectionPool>>,
    pub outlier_detection: Option<At<OutlierDetection>>,
    pub load_balancer: Option<At<LoadBalancer>>,
}

/// One `TrafficPolicy` (or port-level setting), parsed.
#[derive(Debug, Clone, Default)]
struct Sections {
    connection_pool: Option<At<ConnectionPool>>,
    outlier_detection: Option<At<OutlierDetection>>,
    load_balancer: Option<At<LoadBalancer>>,
}

fn parse<T: for<'de> Deserialize<'de>>(res: &Resource, field: &str, v: &Value) -> Result<At<T>, Error> {
    serde_json::from_value(v.clone())
        .map(|value| At { field: field.to_string(), value })
        .map_err(|e| Error::at(res, field, format!("{e}")))
}

fn sections(res: &Resource, base: &str, v: &Value, errors: &mut Vec<Error>) -> Sections {
    let mut s = Sections::default();
    let get = |key: &str| v.get(key).filter(|x| !x.is_null()).map(|x| (format!("{base}.{key}"), x));
    if let Some((f, x)) = get("connectionPool") {
        s.connection_pool = parse(res, &f, x).map_err(|e| errors.push(e)).ok();
    }
    if let Some((f, x)) = get("outlierDetection") {
        s.outlier_detection = parse(res, &f, x).map_err(|e| errors.push(e)).ok();
    }
    if let Some((f, x)) = get("loadBalancer") {
        s.load_balancer = parse(res, &f, x).map_err(|e| errors.push(e)).ok();
    }
    s
}

/// istiod's `MergeTrafficPolicy(nil, policy, port)`: the policy's sections, replaced as a whole by
/// the port-level setting for `port` if there is one.
fn at_port(res: &Resource, base: &str, tp: &TrafficPolicy, port: u32, errors: &mut Vec<Error>) -> Sections {
    let top = serde_json::to_value(tp).unwrap_or(Value::Null);
    let own = sections(res, base, &top, errors);
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        if pls.pointer("/port/number").and_then(Value::as_u64) == Some(u64::from(port)) {
            return sections(res, &format!("{base}.portLevelSettings[{i}]"), pls, errors);
        }
    }
    own
}

/// Refuses what wasmesh does not map in one traffic policy (and its port-level settings): every
/// section is translated once, whichever cluster it applies to.
fn refuse_unmapped(res: &Resource, base: &str, tp: &TrafficPolicy, errors: &mut Vec<Error>) {
    let top = serde_json::to_value(tp).unwrap_or(Value::Null);
    let mut all = vec![sections(res, base, &top, errors)];
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        all.push(sections(res, &format!("{base}.portLevelSettings[{i}]"), pls, errors));
    }
    for s in all {
        let eff = Effective {
            connection_pool: s.connection_pool,
            outlier_detection: s.outlier_detection,
            load_balancer: s.load_balancer,
        };
        for protocol in [Upstream::Http1, Upstream::Tcp] {
            if let Err(mut e) = apply(&mut json!({}), &eff, protocol, Some(res)) {
                // A TCP-only refusal matters only on TCP ports: checked there.
                e.retain(|e| protocol == Upstream::Http1 || !e.to_string().contains("on a TCP port"));
                errors.append(&mut e);
            }
        }
    }
    for (name, set) in [
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
        ("retryBudget", tp.retry_budget.is_some()),
    ] {
        if set {
            errors.push(Error::at(res, format!("{base}.{name}"), "not supported by wasmeshctl envoy"));
        }
    }
    for (i, pls) in tp.port_level_settings.iter().enumerate() {
        let known = ["port", "connectionPool", "outlierDetection", "loadBalancer", "tls"];
        for key in pls.as_object().into_iter().flat_map(|o| o.keys()) {
            if !known.contains(&key.as_str()) {
                errors.push(Error::at(
                    res,
                    format!("{base}.portLevelSettings[{i}].{key}"),
                    "unknown field; expected port, connectionPool, outlierDetection, loadBalancer or tls",
                ));
            }
        }
        if pls.pointer("/port/number").and_then(Value::as_u64).is_none() {
            errors.push(Error::at(
                res,
                format!("{base}.portLevelSettings[{i}].port.number"),
                "a port number is required",
            ));
        }
    }
}

/// The traffic policy of cluster (`subset`, `port`) of the host `dr` applies to, with every
/// section checked (also those of other ports and subsets, so that nothing is accepted and then
/// ignored).
pub fn effective(
    res: &Resource,
    dr: &DestinationRule,
    subset: &str,
    port: &ServicePort,
) -> Result<Effective, Vec<Error>> {
    let mut errors = Vec::new();
    let mut merged = Sections::default();
    if let Some(tp) = &dr.traffic_policy {
        refuse_unmapped(res, "spec.trafficPolicy", tp, &mut errors);
        merged = at_port(res, "spec.trafficPolicy", tp, port.number, &mut errors);
    }
    for (i, s) in dr.subsets.iter().enumerate() {
        let Some(tp) = &s.traffic_policy else { continue };
        let base = format!("spec.subsets[{i}].trafficPolicy");
        refuse_unmapped(res, &base, tp, &mut errors);
        let own = at_port(res, &base, tp, port.number, &mut errors);
        if s.name == subset && !subset.is_empty() {
            let port_level = tp
                .port_level_settings
                .iter()
                .any(|p| p.pointer("/port/number").and_then(Value::as_u64) == Some(u64::from(port.number)));
            if port_level {
                merged = own;
            } else {
                merged.connection_pool = own.connection_pool.or(merged.connection_pool);
                merged.outlier_detection = own.outlier_detection.or(merged.outlier_detection);
                merged.load_balancer = own.load_balancer.or(merged.load_balancer);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    let eff = Effective {
        connection_pool: merged.connection_pool,
        outlier_detection: merged.outlier_detection,
        load_balancer: merged.load_balancer,
    };
    if errors.is_empty() {
        Ok(eff)
    } else {
        Err(errors)
    }
}

/// How the proxy speaks HTTP to the cluster's endpoints (istiod: `HTTP2`/`GRPC` ports get HTTP/2,
/// `HTTP` ports HTTP/1.1, ports whose protocol is sniffed the downstream protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Http1,
    Http2,
    Downstream,
    /// A TCP port: no HTTP options.
    Tcp,
}

/// [`Upstream`] from a service port's protocol (or its name prefix).
pub fn upstream_protocol(port: &ServicePort) -> Upstream {
    let word = |s: &str| match s.to_ascii_lowercase().as_str() {
        "http2" | "grpc" => Some(Upstream::Http2),
        "http" | "grpc-web" | "http_proxy" => Some(Upstream::Http1),
        "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(Upstream::Tcp),
        _ => None,
    };
    let prefix = port.name.split_once('-').map_or(port.name.as_str(), |(p, _)| p);
    let by_name =
        if port.name.to_ascii_lowercase().starts_with("grpc-web") { Some(Upstream::Http1) } else { word(prefix) };
    word(&port.protocol).or(by_name).unwrap_or(Upstream::Downstream)
}

/// The protocol of the inbound cluster of workload port `port`: that of the service ports the
/// workload backs there (as [`crate::bootstrap::inbound_protocol`] finds them); none: the
/// downstream protocol, as istiod does for a port whose protocol it sniffs.
pub fn inbound_upstream(resources: &Resources, wl: &Workload, port: u16) -> Upstream {
    let entry = resources
        .workload_entries()
        .find(|(r, _)| r.namespace() == wl.namespace && r.name() == wl.name)
        .map(|(_, we)| we);
    let mut found = Vec::new();
    for (_, se) in resources.service_entries_selecting(wl) {
        for sp in &se.ports {
            let workload_port =
                entry.and_then(|we| we.ports.get(&sp.name).copied()).or(sp.target_port).unwrap_or(sp.number);
            if workload_port == u32::from(port) {
                found.push(upstream_protocol(sp));
            }
        }
    }
    match found.first() {
        Some(first) if found.iter().all(|p| p == first) => *first,
        _ => Upstream::Downstream,
    }
}

fn ok<T>(errors: &mut Vec<Error>, r: Result<T, Error>) -> Option<T> {
    r.map_err(|e| errors.push(e)).ok()
}

/// The traffic policy of the inbound cluster of workload port `port`: istiod applies the
/// `connectionPool` (only) of the DestinationRule of the service the workload backs there, at
/// that service port ("circuit breakers need to be set on the receiver end as well"); subsets do
/// not apply. Also the resource naming its errors.
pub fn inbound_policy<'r>(
    resources: &'r Resources,
    wl: &Workload,
    port: u16,
) -> Result<(Effective, Option<&'r Resource>), Vec<Error>> {
    let entry = resources
        .workload_entries()
        .find(|(r, _)| r.namespace() == wl.namespace && r.name() == wl.name)
        .map(|(_, we)| we);
    for (se_res, se) in resources.service_entries_selecting(wl) {
        for sp in &se.ports {
            let workload_port =
                entry.and_then(|we| we.ports.get(&sp.name).copied()).or(sp.target_port).unwrap_or(sp.number);
            if workload_port != u32::from(port) {
                continue;
            }
            let hosts: Vec<String> = se.hosts.iter().map(|h| wl.fqdn(h, se_res.namespace())).collect();
            let rule = resources.destination_rules().find(|(r, dr)| hosts.contains(&wl.fqdn(&dr.host, r.namespace())));
            if let Some((r, dr)) = rule {
                let eff = effective(r, dr, "", sp)?;
                return Ok((Effective { connection_pool: eff.connection_pool, ..Effective::default() }, Some(r)));
            }
        }
    }
    Ok((Effective::default(), None))
}

/// Envoy's JSON duration (`"1.5s"`) of an Istio duration, or an error naming `field`.
fn duration(res: &Resource, field: &str, text: &str) -> Result<String, Error> {
    let d = wasmesh_istio::parse_duration(text).map_err(|e| Error::at(res, field, e))?;
    Ok(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
}

fn seconds(res: &Resource, field: &str, text: &str) -> Result<u64, Error> {
    let d = wasmesh_istio::parse_duration(text).map_err(|e| Error::at(res, field, e))?;
    Ok(d.as_secs().max(1))
}

/// Writes the traffic policy (and istiod's defaults where it has none) into `cluster`, a cluster
/// [`crate::bootstrap`] built with `lb_policy` and `connect_timeout` set. `res` names errors.
pub fn apply(
    cluster: &mut Value,
    eff: &Effective,
    protocol: Upstream,
    res: Option<&Resource>,
) -> Result<(), Vec<Error>> {
    let mut errors = Vec::new();
    let mut thresholds = json!({
        "max_connections": UNLIMITED,
        "max_pending_requests": UNLIMITED,
        "max_requests": UNLIMITED,
        "max_retries": UNLIMITED,
        "track_remaining": true,
    });
    let mut common = serde_json::Map::new();
    let mut http2 = json!({});
    let mut use_downstream = protocol == Upstream::Downstream;
    let mut h2 = protocol == Upstream::Http2;
    if let (Some(cp), Some(res)) = (&eff.connection_pool, res) {
        let f = &cp.field;
        if let Some(http) = &cp.value.http {
            if http.http2_max_requests > 0 {
                thresholds["max_requests"] = json!(http.http2_max_requests);
            }
            if http.http1_max_pending_requests > 0 {
                thresholds["max_pending_requests"] = json!(http.http1_max_pending_requests);
            }
            if http.max_retries > 0 {
                thresholds["max_retries"] = json!(http.max_retries);
            }
            if http.max_requests_per_connection > 0 {
                common.insert("max_requests_per_connection".into(), json!(http.max_requests_per_connection));
            }
            if let Some(t) = &http.idle_timeout {
                if let Some(d) = ok(&mut errors, duration(res, &format!("{f}.http.idleTimeout"), t).map(Value::from)) {
                    common.insert("idle_timeout".into(), d);
                }
            }
            if http.max_concurrent_streams > 0 {
                http2["max_concurrent_streams"] = json!(http.max_concurrent_streams);
            }
            match http.h2_upgrade_policy.as_deref() {
                None | Some("DEFAULT") | Some("DO_NOT_UPGRADE") => {}
                Some("UPGRADE") if protocol != Upstream::Tcp => {
                    h2 = true;
                    use_downstream = false;
                }
                Some("UPGRADE") => {}
                Some(other) => errors.push(Error::at(
                    res,
                    format!("{f}.http.h2UpgradePolicy"),
                    format!("{other:?}: expected DEFAULT, DO_NOT_UPGRADE or UPGRADE"),
                )),
            }
            if http.use_client_protocol && protocol != Upstream::Tcp {
                use_downstream = true;
                h2 = false;
            }
        }
        if let Some(tcp) = &cp.value.tcp {
            if tcp.max_connections > 0 {
                thresholds["max_connections"] = json!(tcp.max_connections);
            }
            if let Some(t) = &tcp.connect_timeout {
                if let Some(d) = ok(&mut errors, duration(res, &format!("{f}.tcp.connectTimeout"), t).map(Value::from))
                {
                    cluster["connect_timeout"] = d;
                }
            }
            if let Some(t) = &tcp.max_connection_duration {
                if let Some(d) =
                    ok(&mut errors, duration(res, &format!("{f}.tcp.maxConnectionDuration"), t).map(Value::from))
                {
                    common.insert("max_connection_duration".into(), d);
                }
            }
            if let Some(t) = &tcp.idle_timeout {
                if protocol == Upstream::Tcp {
                    errors.push(Error::at(
                        res,
                        format!("{f}.tcp.idleTimeout"),
                        "not supported on a TCP port by wasmeshctl envoy (istiod sets it on the tcp_proxy filter)",
                    ));
                } else if !common.contains_key("idle_timeout") {
                    if let Some(d) = ok(&mut errors, duration(res, &format!("{f}.tcp.idleTimeout"), t).map(Value::from))
                    {
                        common.insert("idle_timeout".into(), d);
                    }
                }
            }
            if let Some(ka) = &tcp.tcp_keepalive {
                let mut k = json!({});
                if ka.probes > 0 {
                    k["keepalive_probes"] = json!(ka.probes);
                }
                if let Some(t) = &ka.time {
                    if let Some(s) =
                        ok(&mut errors, seconds(res, &format!("{f}.tcp.tcpKeepalive.time"), t).map(Value::from))
                    {
                        k["keepalive_time"] = s;
                    }
                }
                if let Some(t) = &ka.interval {
                    if let Some(s) =
                        ok(&mut errors, seconds(res, &format!("{f}.tcp.tcpKeepalive.interval"), t).map(Value::from))
                    {
                        k["keepalive_interval"] = s;
                    }
                }
                cluster["upstream_connection_options"] = json!({"tcp_keepalive": k});
            }
        }
    }
    cluster["circuit_breakers"] = json!({"thresholds": [thresholds]});
    if protocol != Upstream::Tcp {
        let mut options = json!({
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        });
        if use_downstream {
            options["use_downstream_protocol_config"] =
                json!({"http_protocol_options": {}, "http2_protocol_options": http2});
        } else if h2 {
            options["explicit_http_config"] = json!({"http2_protocol_options": http2});
        } else {
            options["explicit_http_config"] = json!({"http_protocol_options": {}});
        }
        if !common.is_empty() {
            options["common_http_protocol_options"] = Value::Object(common);
        }
        cluster["typed_extension_protocol_options"] =
            json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options});
    }
    if let (Some(od), Some(res)) = (&eff.outlier_detection, res) {
        apply_outlier_detection(cluster, od, res, &mut errors);
    }
    if let (Some(lb), Some(res)) = (&eff.load_balancer, res) {
        apply_load_balancer(cluster, lb, res, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn apply_outlier_detection(cluster: &mut Value, od: &At<OutlierDetection>, res: &Resource, errors: &mut Vec<Error>) {
    let (f, o) = (&od.field, &od.value);
    if o.consecutive_errors.is_some() {
        errors.push(Error::at(
            res,
            format!("{f}.consecutiveErrors"),
            "deprecated and not applied by istiod; use consecutive5xxErrors or consecutiveGatewayErrors",
        ));
    }
    let mut out = json!({"enforcing_success_rate": 0});
    if let Some(v) = o.consecutive_5xx_errors {
        out["consecutive_5xx"] = json!(v);
        out["enforcing_consecutive_5xx"] = json!(if v > 0 { 100 } else { 0 });
    }
    if let Some(v) = o.consecutive_gateway_errors {
        out["consecutive_gateway_failure"] = json!(v);
        out["enforcing_consecutive_gateway_failure"] = json!(if v > 0 { 100 } else { 0 });
    }
    for (key, envoy, text) in
        [("interval", "interval", &o.interval), ("baseEjectionTime", "base_ejection_time", &o.base_ejection_time)]
    {
        if let Some(t) = text {
            match duration(res, &format!("{f}.{key}"), t) {
                Ok(d) => out[envoy] = json!(d),
                Err(e) => errors.push(e),
            }
        }
    }
    if o.max_ejection_percent > 100 || o.min_health_percent > 100 {
        errors.push(Error::at(res, f.as_str(), "maxEjectionPercent and minHealthPercent are percentages (0..100)"));
    }
    if o.max_ejection_percent > 0 {
        out["max_ejection_percent"] = json!(o.max_ejection_percent);
    }
    if o.split_external_local_origin_errors {
        out["split_external_local_origin_errors"] = json!(true);
        if let Some(v) = o.consecutive_local_origin_failures.filter(|v| *v > 0) {
            out["consecutive_local_origin_failure"] = json!(v);
            out["enforcing_consecutive_local_origin_failure"] = json!(100);
        }
        out["enforcing_local_origin_success_rate"] = json!(0);
    } else if o.consecutive_local_origin_failures.is_some_and(|v| v > 0) {
        errors.push(Error::at(
            res,
            format!("{f}.consecutiveLocalOriginFailures"),
            "needs splitExternalLocalOriginErrors: true",
        ));
    }
    cluster["outlier_detection"] = out;
    // istiod disables Envoy's panic threshold (50 %) unless minHealthPercent says otherwise.
    cluster["common_lb_config"]["healthy_panic_threshold"] = json!({"value": f64::from(o.min_health_percent)});
}

fn apply_load_balancer(cluster: &mut Value, lb: &At<LoadBalancer>, res: &Resource, errors: &mut Vec<Error>) {
    let (f, l) = (&lb.field, &lb.value);
    let policy = match l.simple.as_deref() {
        None | Some("UNSPECIFIED") | Some("LEAST_REQUEST") | Some("LEAST_CONN") => "LEAST_REQUEST",
        Some("ROUND_ROBIN") => "ROUND_ROBIN",
        Some("RANDOM") => "RANDOM",
        Some("PASSTHROUGH") => {
            errors.push(Error::at(
                res,
                format!("{f}.simple"),
                "PASSTHROUGH is not supported; expected ROUND_ROBIN, RANDOM, LEAST_REQUEST or LEAST_CONN",
            ));
            return;
        }
        Some(other) => {
            errors.push(Error::at(
                res,
                format!("{f}.simple"),
                format!("{other:?}: expected ROUND_ROBIN, RANDOM, LEAST_REQUEST or LEAST_CONN"),
            ));
            return;
        }
    };
    cluster["lb_policy"] = json!(policy);
    if let Some(loc) = &l.locality_lb_setting {
        if !loc.failover_priority.is_empty() {
            errors.push(Error::at(
                res,
                format!("{f}.localityLbSetting.failoverPriority"),
                "not supported by wasmeshctl envoy (distribute and failover are)",
            ));
        }
        if !loc.distribute.is_empty() && !loc.failover.is_empty() {
            errors.push(Error::at(res, format!("{f}.localityLbSetting"), "set distribute or failover, not both"));
        }
    }
    let mut slow_start: Option<Value> = None;
    if let Some(t) = &l.warmup_duration_secs {
        match duration(res, &format!("{f}.warmupDurationSecs"), t) {
            Ok(d) => slow_start = Some(json!({"slow_start_window": d})),
            Err(e) => errors.push(e),
        }
    }
    if let Some(w) = &l.warmup {
        if slow_start.is_some() {
            errors.push(Error::at(res, format!("{f}.warmup"), "set warmup or warmupDurationSecs, not both"));
        }
        match duration(res, &format!("{f}.warmup.duration"), &w.duration) {
            Ok(d) => {
                let mut s = json!({"slow_start_window": d});
                if let Some(a) = w.aggression {
                    s["aggression"] = json!({"default_value": a, "runtime_key": "wasmesh.slow_start.aggression"});
                }
                if let Some(p) = w.minimum_percent {
                    s["min_weight_percent"] = json!({"value": p});
                }
                slow_start = Some(s);
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(ch) = &l.consistent_hash {
        if slow_start.is_some() {
            errors.push(Error::at(
                res,
                format!("{f}.consistentHash"),
                "warmup applies to ROUND_ROBIN and LEAST_REQUEST only, not with consistentHash",
            ));
        }
        apply_consistent_hash(cluster, ch, &format!("{f}.consistentHash"), res, errors);
        return;
    }
    if let Some(s) = slow_start {
        match policy {
            "ROUND_ROBIN" => cluster["round_robin_lb_config"] = json!({"slow_start_config": s}),
            "LEAST_REQUEST" => cluster["least_request_lb_config"] = json!({"slow_start_config": s}),
            _ => errors.push(Error::at(
                res,
                format!("{f}.simple"),
                "warmup applies to ROUND_ROBIN and LEAST_REQUEST only (istiod ignores it with RANDOM)",
            )),
        }
    }
}

/// A locality `region/zone/subzone` (the WorkloadEntry `locality` form).
fn split_locality(s: &str) -> (&str, &str, &str) {
    let mut parts = s.splitn(3, '/');
    (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""))
}

/// istiod's `LocalityMatch`: `*` or an omitted zone/subzone matches anything.
fn locality_match(locality: &str, pattern: &str) -> bool {
    let (r, z, s) = split_locality(locality);
    let (pr, pz, ps) = split_locality(pattern);
    (pr == "*" || pr == r) && (pz == "*" || pz.is_empty() || pz == z) && (ps == "*" || ps.is_empty() || ps == s)
}

/// istiod's `LbPriority`: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere.
fn lb_priority(proxy: &str, endpoint: &str) -> u32 {
    let (pr, pz, ps) = split_locality(proxy);
    let (r, z, s) = split_locality(endpoint);
    match (pr == r, pz == z, ps == s) {
        (true, true, true) => 0,
        (true, true, false) => 1,
        (true, false, _) => 2,
        (false, _, _) => 3,
    }
}

/// Locality load balancing as istiod applies it (`loadbalancer.ApplyLocalityLoadBalancer`), with
/// the mesh default (enabled) when the rule has no `localityLbSetting`: the cluster's endpoints
/// are grouped by their WorkloadEntry `locality` (`endpoint_localities`, in `lb_endpoints`
/// order); `distribute` weighs the groups for a proxy in a `from` locality; otherwise, when the
/// cluster has outlier detection (failover needs it), each group gets the priority of its
/// distance to the proxy's locality, `failover` sending a region's traffic to the region it
/// names before any other.
pub fn apply_locality(cluster: &mut Value, endpoint_localities: &[String], proxy: &str, eff: &Effective) {
    let setting = eff.load_balancer.as_ref().and_then(|l| l.value.locality_lb_setting.clone()).unwrap_or_default();
    if setting.enabled == Some(false) {
        return;
    }
    let Some(lb_endpoints) = cluster.pointer("/load_assignment/endpoints/0/lb_endpoints").and_then(Value::as_array)
    else {
        return;
    };
    let none = String::new();
    let mut groups: Vec<(String, Vec<Value>)> = Vec::new();
    for (ep, loc) in lb_endpoints.iter().zip(endpoint_localities.iter().chain(std::iter::repeat(&none))) {
        match groups.iter_mut().find(|(l, _)| l == loc) {
            Some((_, eps)) => eps.push(ep.clone()),
            None => groups.push((loc.clone(), vec![ep.clone()])),
        }
    }
    let failover_enabled = cluster.get("outlier_detection").is_some();
    let mut out: Vec<Value> = groups
        .iter()
        .map(|(loc, eps)| {
            let (r, z, s) = split_locality(loc);
            let mut g = json!({"lb_endpoints": eps});
            if !loc.is_empty() {
                g["locality"] = json!({"region": r, "zone": z, "sub_zone": s});
            }
            g
        })
        .collect();
    if let Some(d) = setting.distribute.iter().find(|d| locality_match(proxy, &d.from)) {
        let mut unmatched: Vec<bool> = vec![true; groups.len()];
        for (pattern, weight) in &d.to {
            let hits: Vec<usize> = (0..groups.len())
                .filter(|i| unmatched.get(*i).copied().unwrap_or(false))
                .filter(|i| groups.get(*i).is_some_and(|(l, _)| locality_match(l, pattern)))
                .collect();
            let total = (hits.len() as u32).max(1);
            for i in hits {
                if let Some(u) = unmatched.get_mut(i) {
                    *u = false;
                }
                if let Some(g) = out.get_mut(i) {
                    // istiod: the weight split over the matching groups, rounded up.
                    g["load_balancing_weight"] = json!(weight.div_ceil(total));
                }
            }
        }
        for (i, g) in out.iter_mut().enumerate() {
            if unmatched.get(i).copied().unwrap_or(false) {
                g["lb_endpoints"] = json!([]);
            }
        }
        cluster["common_lb_config"]["locality_weighted_lb_config"] = json!({});
    } else if failover_enabled {
        let (proxy_region, _, _) = split_locality(proxy);
        let mut priorities: Vec<u32> = groups
            .iter()
            .map(|(loc, _)| {
                let p = lb_priority(proxy, loc);
                match setting.failover.iter().find(|f| f.from == proxy_region) {
                    Some(f) if p == 3 && split_locality(loc).0 != f.to => 4,
                    _ => p,
                }
            })
            .collect();
        // Priorities run from 0 without gaps.
        let mut used: Vec<u32> = priorities.clone();
        used.sort_unstable();
        used.dedup();
        for p in &mut priorities {
            *p = used.iter().position(|u| u == p).unwrap_or(0) as u32;
        }
        for (g, p) in out.iter_mut().zip(priorities) {
            g["priority"] = json!(p);
        }
        if !setting.failover.is_empty() {
            cluster["common_lb_config"]["locality_weighted_lb_config"] = json!({});
        }
    }
    cluster["load_assignment"]["endpoints"] = json!(out);
}

/// Ring hash or Maglev, with the hash policy on the cluster (see the module doc).
fn apply_consistent_hash(cluster: &mut Value, ch: &ConsistentHash, f: &str, res: &Resource, errors: &mut Vec<Error>) {
    let mut keys: Vec<(&str, Value)> = Vec::new();
    if let Some(h) = &ch.http_header_name {
        keys.push(("httpHeaderName", json!({"header": {"header_name": h}})));
    }
    if let Some(c) = &ch.http_cookie {
        let mut cookie = json!({"name": c.name});
        if let Some(p) = &c.path {
            cookie["path"] = json!(p);
        }
        if let Some(t) = &c.ttl {
            match duration(res, &format!("{f}.httpCookie.ttl"), t) {
                Ok(d) => cookie["ttl"] = json!(d),
                Err(e) => errors.push(e),
            }
        }
        keys.push(("httpCookie", json!({"cookie": cookie})));
    }
    if ch.use_source_ip {
        keys.push(("useSourceIp", json!({"connection_properties": {"source_ip": true}})));
    }
    if let Some(q) = &ch.http_query_parameter_name {
        keys.push(("httpQueryParameterName", json!({"query_parameter": {"name": q}})));
    }
    if keys.len() != 1 {
        errors.push(Error::at(
            res,
            f,
            format!(
                "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is expected, got {}",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
                }
            ),
        ));
        return;
    }
    let hash_policy: Vec<Value> = keys.into_iter().map(|k| k.1).collect();
    let hashing = json!({"hash_policy": hash_policy});
    let policy = if let Some(m) = &ch.maglev {
        if ch.ring_hash.is_some() || ch.minimum_ring_size != 0 {
            errors.push(Error::at(res, f, "set one of maglev, ringHash or minimumRingSize"));
        }
        let mut p = json!({
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
            "consistent_hashing_lb_config": hashing,
        });
        if m.table_size != 0 {
            p["table_size"] = json!(m.table_size);
        }
        ("envoy.load_balancing_policies.maglev", p)
    } else {
        if ch.ring_hash.is_some() && ch.minimum_ring_size != 0 {
            errors.push(Error::at(res, f, "set one of ringHash or minimumRingSize"));
        }
        // istiod: ringHash's size when set, else the deprecated minimumRingSize, else 1024.
        let size = match (&ch.ring_hash, ch.minimum_ring_size) {
            (Some(r), _) => (r.minimum_ring_size != 0).then_some(r.minimum_ring_size),
            (None, 0) => Some(1024),
            (None, n) => Some(n),
        };
        let mut p = json!({
            "@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
            "consistent_hashing_lb_config": hashing,
        });
        if let Some(n) = size {
            p["minimum_ring_size"] = json!(n);
        }
        ("envoy.load_balancing_policies.ring_hash", p)
    };
    if let Some(o) = cluster.as_object_mut() {
        o.remove("lb_policy");
    }
    cluster["load_balancing_policy"] =
        json!({"policies": [{"typed_extension_config": {"name": policy.0, "typed_config": policy.1}}]});
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn rule(spec: &str) -> (Resource, DestinationRule) {
        let y = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: default}}\nspec: {spec}\n"
        );
        let res = Resources { items: wasmesh_istio::load_str(&y, "dr.yaml").unwrap() };
        let (r, dr) = res.destination_rules().next().unwrap();
        (r.clone(), dr.clone())
    }

    fn port(number: u32, name: &str) -> ServicePort {
        ServicePort { number, protocol: String::new(), name: name.into(), target_port: None }
    }

    fn cluster_for(spec: &str, subset: &str, p: &ServicePort) -> Result<Value, Vec<Error>> {
        let (r, dr) = rule(spec);
        let eff = effective(&r, &dr, subset, p)?;
        let mut c = json!({"name": "c", "lb_policy": "LEAST_REQUEST", "connect_timeout": "10s"});
        apply(&mut c, &eff, upstream_protocol(p), Some(&r))?;
        Ok(c)
    }

    #[test]
    fn defaults_are_istiods_unlimited_thresholds_and_the_port_protocol() {
        let mut c = json!({});
        apply(&mut c, &Effective::default(), Upstream::Http1, None).unwrap();
        let t = &c["circuit_breakers"]["thresholds"][0];
        for k in ["max_connections", "max_pending_requests", "max_requests", "max_retries"] {
            assert_eq!(t[k], json!(4294967295u32), "{k}");
        }
        assert_eq!(t["track_remaining"], true);
        let opts = |c: &Value| {
            c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].clone()
        };
        assert_eq!(opts(&c)["explicit_http_config"], json!({"http_protocol_options": {}}));
        let mut c = json!({});
        apply(&mut c, &Effective::default(), Upstream::Http2, None).unwrap();
        assert_eq!(opts(&c)["explicit_http_config"], json!({"http2_protocol_options": {}}));
        let mut c = json!({});
        apply(&mut c, &Effective::default(), Upstream::Tcp, None).unwrap();
        assert!(c.get("typed_extension_protocol_options").is_none());
        assert_eq!(upstream_protocol(&port(1, "http")), Upstream::Http1);
        assert_eq!(upstream_protocol(&port(1, "grpc-api")), Upstream::Http2);
        assert_eq!(upstream_protocol(&port(1, "grpc-web")), Upstream::Http1);
        assert_eq!(upstream_protocol(&port(1, "http2")), Upstream::Http2);
        assert_eq!(upstream_protocol(&port(1, "web")), Upstream::Downstream);
        let mut p = port(1, "web");
        p.protocol = "GRPC".into();
        assert_eq!(upstream_protocol(&p), Upstream::Http2);
    }

    /// Istio's circuit-breaking task's DestinationRule.
    #[test]
    fn circuit_breaking_task_rule() {
        let c = cluster_for(
            "{host: httpbin, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}}, outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}}}",
            "",
            &port(8000, "http"),
        )
        .unwrap();
        let t = &c["circuit_breakers"]["thresholds"][0];
        assert_eq!((t["max_connections"].clone(), t["max_pending_requests"].clone()), (json!(1), json!(1)));
        assert_eq!(t["max_requests"], json!(u32::MAX));
        let o = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(o["common_http_protocol_options"]["max_requests_per_connection"], 1);
        let od = &c["outlier_detection"];
        assert_eq!(od["consecutive_5xx"], 1);
        assert_eq!(od["enforcing_consecutive_5xx"], 100);
        assert_eq!(od["enforcing_success_rate"], 0);
        assert_eq!(od["interval"], "1.000000000s");
        assert_eq!(od["base_ejection_time"], "180.000000000s");
        assert_eq!(od["max_ejection_percent"], 100);
        assert_eq!(c["common_lb_config"]["healthy_panic_threshold"]["value"], 0.0);
    }

    #[test]
    fn port_level_replaces_and_subsets_override_section_by_section() {
        let spec = "{host: h, trafficPolicy: {loadBalancer: {simple: RANDOM}, connectionPool: {tcp: {maxConnections: 7}}, portLevelSettings: [{port: {number: 9000}, outlierDetection: {consecutive5xxErrors: 2}}]}, subsets: [{name: v1, labels: {v: '1'}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}, {name: v2, labels: {v: '2'}, trafficPolicy: {portLevelSettings: [{port: {number: 8000}, connectionPool: {tcp: {maxConnections: 3}}}]}}]}";
        let max_conn = |c: &Value| c["circuit_breakers"]["thresholds"][0]["max_connections"].clone();
        let c = cluster_for(spec, "", &port(8000, "http")).unwrap();
        assert_eq!((c["lb_policy"].clone(), max_conn(&c)), (json!("RANDOM"), json!(7)));
        // Port 9000: the port-level setting replaces all sections: no load balancer, no pool.
        let c = cluster_for(spec, "", &port(9000, "http")).unwrap();
        assert_eq!((c["lb_policy"].clone(), max_conn(&c)), (json!("LEAST_REQUEST"), json!(u32::MAX)));
        assert_eq!(c["outlier_detection"]["consecutive_5xx"], 2);
        // Subset v1 overrides the load balancer only.
        let c = cluster_for(spec, "v1", &port(8000, "http")).unwrap();
        assert_eq!((c["lb_policy"].clone(), max_conn(&c)), (json!("ROUND_ROBIN"), json!(7)));
        // Subset v2's port-level setting for 8000 replaces everything there.
        let c = cluster_for(spec, "v2", &port(8000, "http")).unwrap();
        assert_eq!((c["lb_policy"].clone(), max_conn(&c)), (json!("LEAST_REQUEST"), json!(3)));
        let c = cluster_for(spec, "v2", &port(7000, "http")).unwrap();
        assert_eq!((c["lb_policy"].clone(), max_conn(&c)), (json!("RANDOM"), json!(7)));
    }

    #[test]
    fn consistent_hash_goes_on_the_cluster() {
        let c = cluster_for(
            "{host: h, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}",
            "",
            &port(1, "http"),
        )
        .unwrap();
        assert!(c.get("lb_policy").is_none());
        let p = &c["load_balancing_policy"]["policies"][0]["typed_extension_config"];
        assert_eq!(p["name"], "envoy.load_balancing_policies.ring_hash");
        assert_eq!(p["typed_config"]["minimum_ring_size"], 1024);
        assert_eq!(
            p["typed_config"]["consistent_hashing_lb_config"]["hash_policy"][0]["header"]["header_name"],
            "x-user"
        );
        let c = cluster_for("{host: h, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: u, ttl: 10s}, maglev: {tableSize: 65537}}}}}", "", &port(1, "http")).unwrap();
        let p = &c["load_balancing_policy"]["policies"][0]["typed_extension_config"];
        assert_eq!(p["name"], "envoy.load_balancing_policies.maglev");
        assert_eq!(
            p["typed_config"]["consistent_hashing_lb_config"]["hash_policy"][0]["cookie"],
            json!({"name": "u", "ttl": "10.000000000s"})
        );
        let c = cluster_for(
            "{host: h, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}}",
            "",
            &port(1, "http"),
        )
        .unwrap();
        let p = &c["load_balancing_policy"]["policies"][0]["typed_extension_config"]["typed_config"];
        assert_eq!(
            p["consistent_hashing_lb_config"]["hash_policy"][0],
            json!({"connection_properties": {"source_ip": true}})
        );
    }

    #[test]
    fn unmapped_fields_are_refused_by_name() {
        let err = |spec: &str| cluster_for(spec, "", &port(1, "http")).unwrap_err()[0].to_string();
        let e = err("{host: h, trafficPolicy: {connectionPool: {http: {bogus: 1}}}}");
        assert!(
            e.contains("DestinationRule default/r")
                && e.contains("spec.trafficPolicy.connectionPool")
                && e.contains("bogus"),
            "{e}"
        );
        let e = err("{host: h, trafficPolicy: {loadBalancer: {localityLbSetting: {failoverPriority: [x]}}}}");
        assert!(e.contains("spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority"), "{e}");
        let e = err("{host: h, trafficPolicy: {tunnel: {protocol: CONNECT, targetHost: a, targetPort: 1}}}");
        assert!(e.contains("spec.trafficPolicy.tunnel"), "{e}");
        let e = err(
            "{host: h, subsets: [{name: a, labels: {}, trafficPolicy: {outlierDetection: {consecutiveErrors: 1}}}]}",
        );
        assert!(e.contains("spec.subsets[0].trafficPolicy.outlierDetection.consecutiveErrors"), "{e}");
        let e = err("{host: h, trafficPolicy: {loadBalancer: {simple: RANDOM, warmupDurationSecs: 10s}}}");
        assert!(e.contains("warmup applies to ROUND_ROBIN and LEAST_REQUEST"), "{e}");
        let e =
            err("{host: h, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: a, useSourceIp: true}}}}");
        assert!(e.contains("exactly one of"), "{e}");
    }

    /// The server side gets the rule's connection pool too (not its subsets', not its outlier
    /// detection), at the service port the workload port backs.
    #[test]
    fn inbound_clusters_take_the_rules_connection_pool() {
        let y = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  ports: [{number: 8000, name: http}]\n  workloadSelector: {labels: {app: httpbin}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin, namespace: default}\nspec: {address: 127.0.0.1, ports: {http: 18000}, labels: {app: httpbin}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: httpbin, namespace: default}\nspec: {host: httpbin, trafficPolicy: {connectionPool: {tcp: {maxConnections: 5}}, outlierDetection: {consecutive5xxErrors: 1}}, subsets: [{name: v1, labels: {}, trafficPolicy: {connectionPool: {tcp: {maxConnections: 9}}}}]}\n";
        let res = Resources { items: wasmesh_istio::load_str(y, "t.yaml").unwrap() };
        let mut wl = Workload::new("httpbin", "default");
        wl.labels.insert("app".into(), "httpbin".into());
        let (eff, r) = inbound_policy(&res, &wl, 18000).unwrap();
        assert!(eff.outlier_detection.is_none());
        let mut c = json!({});
        apply(&mut c, &eff, inbound_upstream(&res, &wl, 18000), r).unwrap();
        assert_eq!(c["circuit_breakers"]["thresholds"][0]["max_connections"], 5);
        assert_eq!(
            c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                ["explicit_http_config"],
            json!({"http_protocol_options": {}})
        );
        let (eff, _) = inbound_policy(&res, &wl, 18001).unwrap();
        assert_eq!(eff, Effective::default(), "another port: no rule");
    }

    #[test]
    fn locality_failover_and_distribute_as_istiod() {
        let eps =
            || json!({"load_assignment": {"endpoints": [{"lb_endpoints": [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]}]}});
        let locs: Vec<String> =
            ["us-east/z1/a", "us-east/z2", "us-west/z1", "eu/z1"].iter().map(|s| s.to_string()).collect();
        let priorities = |c: &Value| -> Vec<u64> {
            c["load_assignment"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["priority"].as_u64().unwrap_or(99))
                .collect()
        };
        // Without outlier detection: one priority (failover would never happen).
        let mut c = eps();
        apply_locality(&mut c, &locs, "us-east/z1/a", &Effective::default());
        assert_eq!(priorities(&c), [99, 99, 99, 99]);
        assert_eq!(
            c["load_assignment"]["endpoints"][1]["locality"],
            json!({"region": "us-east", "zone": "z2", "sub_zone": ""})
        );
        // With it: by distance (0, 2, 3, 3 → 0, 1, 2, 2).
        let mut c = eps();
        c["outlier_detection"] = json!({});
        apply_locality(&mut c, &locs, "us-east/z1/a", &Effective::default());
        assert_eq!(priorities(&c), [0, 1, 2, 2]);
        // failover us-east → eu: eu before us-west.
        let (r, dr) = rule("{host: h, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}, loadBalancer: {localityLbSetting: {failover: [{from: us-east, to: eu}]}}}}");
        let eff = effective(&r, &dr, "", &port(1, "http")).unwrap();
        let mut c = eps();
        c["outlier_detection"] = json!({});
        apply_locality(&mut c, &locs, "us-east/z1/a", &eff);
        assert_eq!(priorities(&c), [0, 1, 3, 2]);
        // distribute: weights for the proxy's locality, other localities emptied.
        let (r, dr) = rule("{host: h, trafficPolicy: {loadBalancer: {localityLbSetting: {distribute: [{from: 'us-east/*', to: {'us-east/*': 80, 'us-west/*': 20}}]}}}}");
        let eff = effective(&r, &dr, "", &port(1, "http")).unwrap();
        let mut c = eps();
        apply_locality(&mut c, &locs, "us-east/z1/a", &eff);
        let g = &c["load_assignment"]["endpoints"];
        assert_eq!(
            (g[0]["load_balancing_weight"].clone(), g[1]["load_balancing_weight"].clone()),
            (json!(40), json!(40))
        );
        assert_eq!(g[2]["load_balancing_weight"], 20);
        assert_eq!(g[3]["lb_endpoints"], json!([]));
        assert_eq!(c["common_lb_config"]["locality_weighted_lb_config"], json!({}));
        // Disabled: untouched.
        let (r, dr) = rule("{host: h, trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}, loadBalancer: {localityLbSetting: {enabled: false}}}}");
        let eff = effective(&r, &dr, "", &port(1, "http")).unwrap();
        let mut c = eps();
        apply_locality(&mut c, &locs, "us-east/z1/a", &eff);
        assert_eq!(c, eps());
    }

    /// `wasmeshctl serve` sends the same clusters by CDS: every setting here encodes with Envoy's
    /// API descriptors.
    #[test]
    fn translated_clusters_encode_for_cds() {
        for spec in [
            "{host: h, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1, connectTimeout: 1s, tcpKeepalive: {time: 10s}, maxConnectionDuration: 1h}, http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, idleTimeout: 5s, maxRetries: 4}}, outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3}}}",
            "{host: h, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: u, path: /, ttl: 10s}, ringHash: {minimumRingSize: 2048}}}}}",
            "{host: h, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}}}",
            "{host: h, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 30s, aggression: 2, minimumPercent: 10}}}}",
            "{host: h, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}, connectionPool: {http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 9}}}}",
        ] {
            let mut c = cluster_for(spec, "", &port(1, "http")).unwrap();
            c["load_assignment"] = json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"n": 0}]}]});
            apply_locality(&mut c, &["r/z".to_string()], "r/z", &Effective::default());
            if let Some(eps) = c.pointer_mut("/load_assignment/endpoints/0/lb_endpoints") {
                *eps = json!([{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]);
            }
            crate::xds::proto::to_any(crate::xds::CLUSTER_TYPE, &c).unwrap_or_else(|e| panic!("{spec}: {e}\n{c}"));
        }
    }

    #[test]
    fn warmup_and_http_settings() {
        let c = cluster_for("{host: h, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}, connectionPool: {http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 5, idleTimeout: 1m}, tcp: {connectTimeout: 250ms, tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}}}}}", "", &port(1, "http")).unwrap();
        assert_eq!(c["round_robin_lb_config"]["slow_start_config"]["slow_start_window"], "30.000000000s");
        let o = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert_eq!(o["explicit_http_config"]["http2_protocol_options"]["max_concurrent_streams"], 5);
        assert_eq!(o["common_http_protocol_options"]["idle_timeout"], "60.000000000s");
        assert_eq!(c["connect_timeout"], "0.250000000s");
        assert_eq!(
            c["upstream_connection_options"]["tcp_keepalive"],
            json!({"keepalive_probes": 3, "keepalive_time": 7200, "keepalive_interval": 75})
        );
        let c = cluster_for(
            "{host: h, trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}}",
            "",
            &port(1, "grpc"),
        )
        .unwrap();
        let o = &c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
        assert!(o.get("use_downstream_protocol_config").is_some());
    }
}
