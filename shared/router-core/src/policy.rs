//! Per-route policies Envoy carries out natively once the router has decided: `timeout`,
//! `retries`, `mirror`/`mirrors`/`mirrorPercentage` and `corsPolicy`.
//!
//! The router picks the route (pure core, as for every other action) and names the route's
//! policy in filter state, [`POLICY_STATE`] (Envoy's key [`POLICY_FILTER_STATE_KEY`]), only when
//! the route has one; wasmeshctl writes one Envoy route per distinct policy, matched on that
//! filter state, whose route action and per-route CORS policy are
//! exactly what istiod writes for the VirtualService route (istio/istio `route.go`
//! `applyHTTPRouteDestination`, `setTimeout`, `TranslateRequestMirrorPolicy`,
//! `TranslateCORSPolicy`; `route/retry/retry.go` `ConvertPolicy`). Envoy's router then times out,
//! retries and mirrors (with the body, without delaying the original, the shadow's answer
//! ignored, `-shadow` added to the host) and Envoy's CORS filter answers preflights: the oracle is
//! the implementation. The policy is named by a hash of its Envoy form, so every table
//! (gateway ports, sidecar) and wasmeshctl name it alike without sharing an index.
#![deny(clippy::indexing_slicing)]

use serde_json::{json, Map, Value};
use std::time::Duration;
use wasmesh_istio::networking::{CorsPolicy, HttpRetry, HttpRoute, Percent};
use wasmesh_istio::StringMatch;

/// The filter state (`set_property` key) the router sets to the chosen route's policy id, only
/// when the route has a policy. A client cannot write filter state, so nothing needs removing on
/// requests without a policy (no hostcall there).
pub const POLICY_STATE: &str = "wasmesh.route_policy";

/// [`POLICY_STATE`] as Envoy names it (wasm's properties live under `wasm.`): the key of the
/// policy routes' `match.filter_state` matcher.
pub const POLICY_FILTER_STATE_KEY: &str = "wasm.wasmesh.route_policy";

/// The request header that named the policy before it moved to filter state. The name stays
/// reserved: wasmeshctl's routes remove a client-sent copy before the request goes upstream.
pub const POLICY_HEADER: &str = "x-wasmesh-route-policy";

/// Envoy's retry conditions (`x-envoy-retry-on`, `x-envoy-retry-grpc-on`; envoy
/// `router_filter.rst`). Istio passes `retryOn` through; a condition Envoy does not know would
/// be silently ignored there, so it is refused here.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// HTTP status codes Go's `http.StatusText` knows: istiod treats a number in `retryOn` as a
/// retriable status code only if it is one of these.
const GO_STATUS_CODES: [u32; 62] = [
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400,
    401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 421, 422, 423, 424, 425,
    426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// Istio's retry policy for a route without `retries` (`retry.DefaultPolicy`): 2 retries on
/// connection failures, refused streams and gRPC `unavailable`/`cancelled`, other hosts
/// preferred. (Istio ≥ 1.24 leaves 503 out of the retriable status codes by default.)
pub fn istio_default_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [previous_hosts()],
        "host_selection_retry_max_attempts": 5,
    })
}

fn previous_hosts() -> Value {
    json!({
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
    })
}

/// One route's policy as Envoy configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// The value of [`POLICY_STATE`] for this policy (a hash of its Envoy form).
    pub id: String,
    /// Fields of Envoy's `RouteAction` (`timeout`, `max_grpc_timeout`, `retry_policy`,
    /// `request_mirror_policies`), as istiod writes them.
    pub route_action: Map<String, Value>,
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy` for the route's
    /// `typed_per_filter_config`.
    pub cors: Option<Value>,
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault` for the route's
    /// `typed_per_filter_config` (under [`FAULT_FILTER`]): a fault the router decided, at 100 %
    /// (see [`crate::actions::FaultRoutes`]). `None` on the policy of a route as configured.
    pub fault: Option<Value>,
}

/// The name of Envoy's fault filter, the key of a fault route's `typed_per_filter_config`.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

impl RoutePolicy {
    /// This route action and CORS policy with `fault` (Envoy's per-route `HTTPFault`), named by
    /// the hash of all three.
    pub fn with_fault(&self, fault: Value) -> RoutePolicy {
        let action = Value::Object(self.route_action.clone());
        RoutePolicy {
            id: policy_id(&action, self.cors.as_ref(), Some(&fault)),
            route_action: self.route_action.clone(),
            cors: self.cors.clone(),
            fault: Some(fault),
        }
    }
}

/// The id of a policy: a hash of its Envoy form. A policy without a fault hashes as it did
/// before faults were carried in policies, so those ids do not move.
fn policy_id(action: &Value, cors: Option<&Value>, fault: Option<&Value>) -> String {
    let canonical = match fault {
        None => json!({"action": action, "cors": cors}),
        Some(f) => json!({"action": action, "cors": cors, "fault": f}),
    };
    format!("{:016x}", fnv1a(canonical.to_string().as_bytes()))
}

/// A field error: (sub-field, message).
type FieldError = (String, String);

/// Whether the route has anything this module carries out.
pub fn has_policy(r: &HttpRoute) -> bool {
    r.timeout.is_some()
        || r.retries.is_some()
        || r.mirror.is_some()
        || !r.mirrors.is_empty()
        || r.cors_policy.is_some()
        || r.mirror_percentage.is_some()
        || r.mirror_percent.is_some()
        || r.mirror_percent_snake.is_some()
}

/// Compiles the route's policy. `mirror_cluster` turns a mirror destination (with its field
/// name, for errors) into the Envoy cluster name; it reports its own errors and returns `None`.
pub fn compile_policy(
    r: &HttpRoute,
    mut mirror_cluster: impl FnMut(&str, &wasmesh_istio::networking::Destination) -> Option<String>,
) -> Result<RoutePolicy, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut action = Map::new();
    let timeout = match r.timeout.as_deref().map(wasmesh_istio::parse_duration) {
        None => Duration::ZERO,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push((".timeout".to_string(), e));
            Duration::ZERO
        }
    };
    // istiod `setTimeout`: no timeout is 0s (disabled); the gRPC timeout header is honoured up to
    // the route timeout.
    action.insert("timeout".into(), json!(envoy_duration(timeout)));
    action.insert("max_grpc_timeout".into(), json!(envoy_duration(timeout)));
    match r.retries.as_ref().map(retry_policy) {
        None => {
            action.insert("retry_policy".into(), istio_default_retry_policy());
        }
        Some(Ok(Some(p))) => {
            action.insert("retry_policy".into(), p);
        }
        // `attempts: 0` (or unset) disables retries: no retry policy at all.
        Some(Ok(None)) => {}
        Some(Err(e)) => errors.push(e),
    }
    let mut mirrors = Vec::new();
    if let Some(m) = &r.mirror {
        let share = match (&r.mirror_percentage, r.mirror_percent.or(r.mirror_percent_snake)) {
            (Some(p), _) => percent_share(p).map_err(|e| (".mirrorPercentage.value".to_string(), e)),
            (None, Some(p)) if p > 100 => Err((".mirrorPercent".to_string(), format!("{p} is above 100"))),
            (None, Some(p)) => Ok(p * 10_000),
            (None, None) => Ok(1_000_000),
        };
        match share {
            Err(e) => errors.push(e),
            Ok(0) => {}
            Ok(share) => {
                if let Some(c) = mirror_cluster(".mirror", m) {
                    mirrors.push(mirror_policy(&c, share));
                }
            }
        }
    } else if r.mirror_percentage.is_some() || r.mirror_percent.is_some() || r.mirror_percent_snake.is_some() {
        errors.push((".mirrorPercentage".to_string(), "is set without mirror; expected a mirror destination".into()));
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let share = match &m.percentage {
            Some(p) => match percent_share(p) {
                Ok(s) => s,
                Err(e) => {
                    errors.push((format!(".mirrors[{i}].percentage.value"), e));
                    continue;
                }
            },
            None => 1_000_000,
        };
        if share == 0 {
            continue;
        }
        if let Some(c) = mirror_cluster(&format!(".mirrors[{i}].destination"), &m.destination) {
            mirrors.push(mirror_policy(&c, share));
        }
    }
    if !mirrors.is_empty() {
        action.insert("request_mirror_policies".into(), Value::Array(mirrors));
    }
    let cors = match r.cors_policy.as_ref().map(cors_policy) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let id = policy_id(&Value::Object(action.clone()), cors.as_ref(), None);
    Ok(RoutePolicy { id, route_action: action, cors, fault: None })
}

/// Envoy's `Duration` JSON form.
fn envoy_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
    }
}

/// `retry.ConvertPolicy`; `Ok(None)` when `attempts` disables retries.
fn retry_policy(r: &HttpRetry) -> Result<Option<Value>, FieldError> {
    if r.attempts <= 0 {
        return Ok(None);
    }
    let mut out = match istio_default_retry_policy() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    out.insert("num_retries".into(), json!(r.attempts));
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let mut conditions: Vec<&str> = Vec::new();
        let mut codes: Vec<u32> = Vec::new();
        for part in on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<u32>() {
                Ok(code) if GO_STATUS_CODES.contains(&code) => codes.push(code),
                _ if RETRY_ON.contains(&part) => conditions.push(part),
                _ => {
                    return Err((
                        ".retries.retryOn".into(),
                        format!(
                            "{part:?} is not a retry condition; expected HTTP status codes or Envoy's conditions ({})",
                            RETRY_ON.join(", ")
                        ),
                    ))
                }
            }
        }
        let mut retry_on = conditions.join(",");
        if !codes.is_empty() && !conditions.contains(&"retriable-status-codes") {
            if !retry_on.is_empty() {
                retry_on.push(',');
            }
            retry_on.push_str("retriable-status-codes");
        }
        out.insert("retry_on".into(), json!(retry_on));
        if !codes.is_empty() {
            out.insert("retriable_status_codes".into(), json!(codes));
        }
    }
    if let Some(t) = &r.per_try_timeout {
        let d = wasmesh_istio::parse_duration(t).map_err(|e| (".retries.perTryTimeout".to_string(), e))?;
        out.insert("per_try_timeout".into(), json!(envoy_duration(d)));
    }
    if let Some(ignore) = r.retry_ignore_previous_hosts {
        if ignore {
            out.insert("retry_host_predicate".into(), json!([previous_hosts()]));
        } else {
            out.remove("retry_host_predicate");
        }
    }
    if r.retry_remote_localities == Some(true) {
        out.insert("retry_priority".into(), json!({
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 2
            }
        }));
    }
    if let Some(b) = &r.backoff {
        let d = wasmesh_istio::parse_duration(b).map_err(|e| (".retries.backoff".to_string(), e))?;
        if d.is_zero() {
            return Err((".retries.backoff".into(), "is 0; expected a positive duration".into()));
        }
        out.insert("retry_back_off".into(), json!({"base_interval": envoy_duration(d)}));
    }
    Ok(Some(Value::Object(out)))
}

/// A percentage as millionths (Envoy `FractionalPercent` MILLION, as istiod writes it).
fn percent_share(p: &Percent) -> Result<u32, String> {
    if !(0.0..=100.0).contains(&p.value) || p.value.is_nan() {
        return Err(format!("{} is not a percentage; expected 0-100", p.value));
    }
    // Bounded above by 1,000,000.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((p.value * 10_000.0).round() as u32)
}

fn mirror_policy(cluster: &str, millionths: u32) -> Value {
    json!({
        "cluster": cluster,
        "runtime_fraction": {"default_value": {"numerator": millionths, "denominator": "MILLION"}},
        "trace_sampled": false,
    })
}

/// `TranslateCORSPolicy`.
fn cors_policy(c: &CorsPolicy) -> Result<Value, FieldError> {
    let mut out = Map::new();
    out.insert("@type".into(), json!("type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"));
    let forward = match c.unmatched_preflights.as_deref() {
        None | Some("FORWARD") | Some("UNSPECIFIED") => true,
        Some("IGNORE") => false,
        Some(other) => {
            return Err((
                ".corsPolicy.unmatchedPreflights".into(),
                format!("{other:?} is not a mode; expected FORWARD or IGNORE"),
            ))
        }
    };
    out.insert("forward_not_matching_preflights".into(), json!(forward));
    let origins: Vec<Value> = if !c.allow_origins.is_empty() {
        let mut v = Vec::with_capacity(c.allow_origins.len());
        for (i, m) in c.allow_origins.iter().enumerate() {
            v.push(string_match(m).ok_or_else(|| {
                (
                    format!(".corsPolicy.allowOrigins[{i}]"),
                    "has no exact, prefix or regex; expected one of them".to_string(),
                )
            })?);
        }
        v
    } else {
        c.allow_origin.iter().map(|o| json!({"exact": o})).collect()
    };
    if !origins.is_empty() {
        out.insert("allow_origin_string_match".into(), Value::Array(origins));
    }
    out.insert("filter_enabled".into(), json!({"default_value": {"numerator": 100, "denominator": "HUNDRED"}}));
    if let Some(b) = c.allow_credentials {
        out.insert("allow_credentials".into(), json!(b));
    }
    for (field, list) in [
        ("allow_headers", &c.allow_headers),
        ("allow_methods", &c.allow_methods),
        ("expose_headers", &c.expose_headers),
    ] {
        if !list.is_empty() {
            out.insert(field.into(), json!(list.join(",")));
        }
    }
    if let Some(m) = &c.max_age {
        let d = wasmesh_istio::parse_duration(m).map_err(|e| (".corsPolicy.maxAge".to_string(), e))?;
        out.insert("max_age".into(), json!(d.as_secs().to_string()));
    }
    Ok(Value::Object(out))
}

fn string_match(m: &StringMatch) -> Option<Value> {
    if let Some(e) = &m.exact {
        Some(json!({"exact": e}))
    } else if let Some(p) = &m.prefix {
        Some(json!({"prefix": p}))
    } else {
        m.regex.as_ref().map(|r| json!({"safe_regex": {"regex": r}}))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(v: Value) -> Result<RoutePolicy, Vec<FieldError>> {
        let r: HttpRoute = serde_json::from_value(v).unwrap();
        compile_policy(&r, |_, d| Some(format!("outbound|8000|{}|{}", d.subset, d.host)))
    }

    #[test]
    fn timeout_and_default_retries_as_istiod_writes_them() {
        let p = compile(json!({"timeout": "0.5s", "route": [{"destination": {"host": "ratings"}}]})).unwrap();
        assert_eq!(p.route_action["timeout"], "0.500000000s");
        assert_eq!(p.route_action["max_grpc_timeout"], "0.500000000s");
        assert_eq!(p.route_action["retry_policy"], istio_default_retry_policy());
        assert!(p.cors.is_none());
    }

    /// istiod's `retry.DefaultPolicy` (pilot/pkg/networking/core/route/retry/retry.go), with
    /// `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY` at its default (true: no `retriable_status_codes`),
    /// field for field: nothing more, nothing less.
    #[test]
    fn the_default_retry_policy_is_istiods_exactly() {
        assert_eq!(
            istio_default_retry_policy(),
            json!({
                "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                "num_retries": 2,
                "retry_host_predicate": [{
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}
                }],
                "host_selection_retry_max_attempts": 5,
            })
        );
        // `attempts` alone: the default with num_retries replaced (ConvertPolicy keeps RetryOn
        // and RetriableStatusCodes when retryOn is empty).
        let p = compile(json!({"retries": {"attempts": 4}})).unwrap();
        let mut expected = istio_default_retry_policy();
        expected["num_retries"] = json!(4);
        assert_eq!(p.route_action["retry_policy"], expected);
        // retryOn replaces both: no status code named, none retriable (parseRetryOn).
        let p = compile(json!({"retries": {"attempts": 1, "retryOn": "unavailable,cancelled"}})).unwrap();
        assert_eq!(p.route_action["retry_policy"]["retry_on"], "unavailable,cancelled");
        assert!(p.route_action["retry_policy"].get("retriable_status_codes").is_none());
    }

    #[test]
    fn retries_follow_convert_policy() {
        let p = compile(
            json!({"retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,503, 429,unavailable",
            "retryRemoteLocalities": true, "retryIgnorePreviousHosts": false}}),
        )
        .unwrap();
        let r = &p.route_action["retry_policy"];
        assert_eq!(r["num_retries"], 3);
        assert_eq!(r["retry_on"], "gateway-error,unavailable,retriable-status-codes");
        assert_eq!(r["retriable_status_codes"], json!([503, 429]));
        assert_eq!(r["per_try_timeout"], "2s");
        assert_eq!(r["retry_priority"]["typed_config"]["update_frequency"], 2);
        assert!(r.get("retry_host_predicate").is_none());
        assert_eq!(p.route_action["timeout"], "0s");
        // attempts 0 (or unset) disables retries altogether.
        let p = compile(json!({"retries": {"retryOn": "5xx"}})).unwrap();
        assert!(p.route_action.get("retry_policy").is_none());
        let e = compile(json!({"retries": {"attempts": 2, "retryOn": "5xx,sometimes"}})).unwrap_err();
        assert_eq!(e[0].0, ".retries.retryOn");
        assert!(e[0].1.contains("\"sometimes\""), "{e:?}");
        let e = compile(json!({"retries": {"attempts": 2, "retryOn": "999"}})).unwrap_err();
        assert_eq!(e[0].0, ".retries.retryOn");
    }

    #[test]
    fn mirrors_get_their_shares() {
        let p = compile(json!({"mirror": {"host": "httpbin", "subset": "v2"}, "mirrorPercentage": {"value": 12.5}}))
            .unwrap();
        let m = &p.route_action["request_mirror_policies"][0];
        assert_eq!(m["cluster"], "outbound|8000|v2|httpbin");
        assert_eq!(m["runtime_fraction"]["default_value"]["numerator"], 125_000);
        let p = compile(json!({"mirror": {"host": "httpbin"}})).unwrap();
        assert_eq!(
            p.route_action["request_mirror_policies"][0]["runtime_fraction"]["default_value"]["numerator"],
            1_000_000
        );
        // 0 % mirrors nothing, as istiod.
        let p = compile(json!({"mirror": {"host": "httpbin"}, "mirrorPercentage": {"value": 0}})).unwrap();
        assert!(p.route_action.get("request_mirror_policies").is_none());
        let p = compile(json!({"mirrors": [{"destination": {"host": "a"}}, {"destination": {"host": "b"}, "percentage": {"value": 50}}]})).unwrap();
        assert_eq!(p.route_action["request_mirror_policies"].as_array().unwrap().len(), 2);
        assert!(compile(json!({"mirrorPercentage": {"value": 50}})).is_err());
        assert!(compile(json!({"mirror": {"host": "a"}, "mirrorPercentage": {"value": 150}})).is_err());
    }

    #[test]
    fn cors_follows_translate_cors_policy() {
        let p = compile(
            json!({"corsPolicy": {"allowOrigins": [{"exact": "http://a"}, {"prefix": "http://b"}, {"regex": ".*\\.c"}],
            "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a", "x-b"], "exposeHeaders": ["x-e"], "maxAge": "24h",
            "allowCredentials": true, "unmatchedPreflights": "IGNORE"}}),
        )
        .unwrap();
        let c = p.cors.unwrap();
        assert_eq!(
            c["allow_origin_string_match"],
            json!([{"exact": "http://a"}, {"prefix": "http://b"}, {"safe_regex": {"regex": ".*\\.c"}}])
        );
        assert_eq!(c["allow_methods"], "GET,POST");
        assert_eq!(c["allow_headers"], "x-a,x-b");
        assert_eq!(c["expose_headers"], "x-e");
        assert_eq!(c["max_age"], "86400");
        assert_eq!(c["allow_credentials"], true);
        assert_eq!(c["forward_not_matching_preflights"], false);
        let p = compile(json!({"corsPolicy": {"allowOrigins": [{"exact": "http://a"}]}})).unwrap();
        assert_eq!(p.cors.unwrap()["forward_not_matching_preflights"], true);
        assert!(compile(json!({"corsPolicy": {"unmatchedPreflights": "SOMETIMES"}})).is_err());
    }

    #[test]
    fn equal_policies_share_an_id() {
        let a = compile(json!({"timeout": "1s"})).unwrap();
        assert_eq!(a.id, compile(json!({"timeout": "1000ms"})).unwrap().id);
        assert_ne!(a.id, compile(json!({"timeout": "2s"})).unwrap().id);
        assert_eq!(a.id.len(), 16);
    }
}
