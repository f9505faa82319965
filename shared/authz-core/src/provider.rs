//! meshConfig `extensionProviders` for CUSTOM authorization (`envoyExtAuthzHttp`), validated as
//! istiod does (`pilot/pkg/security/authz/builder/extauthz.go`) and described the way Envoy's
//! HTTP ext_authz client behaves, so the filter can reproduce it with `dispatch_http_call`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// istiod's default when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// `meshConfig.extensionProviders[].envoyExtAuthzHttp` (MeshConfig field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    /// `[<namespace>/]<hostname>` of the authorization service.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    /// e.g. `0.5s`, `10s`; default 600s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_on_error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_request_headers_in_check: Vec<String>,
    /// Deprecated spelling, used only when `includeRequestHeadersInCheck` is empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_headers_in_check: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream_on_allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_deny: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_downstream_on_allow: Vec<String>,
}

/// `meshConfig.extensionProviders[].envoyExtAuthzGrpc` (MeshConfig field names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtAuthzGrpc {
    /// `[<namespace>/]<hostname>` of the authorization service.
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub port: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default)]
    pub fail_open: bool,
    /// Envoy's `clear_route_cache`: the route is picked again after the check (wasmesh always
    /// lets Envoy re-pick it when a header changes, as a wasm header edit clears the route cache).
    #[serde(default)]
    pub clear_route_cache: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_on_error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_request_body_in_check: Option<RequestBody>,
}

/// `includeRequestBodyInCheck` (Envoy `with_request_body`, `BufferSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestBody {
    #[serde(default)]
    pub max_request_bytes: u32,
    #[serde(default)]
    pub allow_partial_message: bool,
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// How the check is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `envoyExtAuthzHttp`: an HTTP request per check (Envoy's raw HTTP ext_authz client).
    Http,
    /// `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
}

/// Largest `includeRequestBodyInCheck.maxRequestBytes` wasmesh accepts: the filter keeps a copy
/// of at most this much of the body per request for the check (Envoy's own buffer limit for
/// the request becomes `maxRequestBytes` as well, as with Envoy's ext_authz).
pub const MAX_CHECK_REQUEST_BODY_BYTES: u32 = 4 * 1024 * 1024;

/// What is wrong with an `includeRequestBodyInCheck` (`None`: usable). Envoy refuses
/// `max_request_bytes: 0` (its `BufferSettings` requires more than 0: istiod would send a
/// configuration Envoy rejects); past [`MAX_CHECK_REQUEST_BODY_BYTES`] wasmesh refuses it.
pub fn request_body_problem(cfg: &RequestBody) -> Option<String> {
    if cfg.max_request_bytes == 0 {
        return Some("includeRequestBodyInCheck.maxRequestBytes must be greater than 0 (Envoy's with_request_body.max_request_bytes; istiod passes it on and Envoy rejects 0)".into());
    }
    if cfg.max_request_bytes > MAX_CHECK_REQUEST_BODY_BYTES {
        return Some(format!(
            "includeRequestBodyInCheck.maxRequestBytes {} is past wasmesh's bound of {MAX_CHECK_REQUEST_BODY_BYTES} bytes (the filter keeps that much of each request body)",
            cfg.max_request_bytes
        ));
    }
    None
}

fn check_body(cfg: &Option<RequestBody>, errs: &mut Vec<String>) {
    if let Some(problem) = cfg.as_ref().and_then(request_body_problem) {
        errs.push(problem);
    }
}

/// A validated CUSTOM provider, ready for the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub transport: Transport,
    /// The Envoy cluster the check is sent to: `outbound|<port>||<host>`, as istiod names it.
    pub cluster: String,
    /// The `:authority` of the check request.
    pub authority: String,
    pub timeout: Duration,
    pub path_prefix: String,
    pub fail_open: bool,
    /// The status sent when the service fails and `failOpen` is false (Envoy default 403).
    pub status_on_error: u32,
    /// Request headers copied into the check (always also `authorization`, `:method`,
    /// `:path`, `:authority`), matched case-insensitively.
    pub request_headers: Vec<NameMatch>,
    /// Extra headers set on the check (`includeAdditionalHeadersInCheck`), sorted.
    pub additional_headers: Vec<(String, String)>,
    pub to_upstream_on_allow: Vec<NameMatch>,
    /// Empty: every header of the denial except `host` goes to the client (Envoy's default).
    pub to_downstream_on_deny: Vec<NameMatch>,
    pub to_downstream_on_allow: Vec<NameMatch>,
    /// `includeRequestBodyInCheck`: the request body (up to `maxRequestBytes`) goes with the check.
    pub body: Option<RequestBody>,
}

/// A header-name pattern of the provider lists: exact, `prefix*` or `*suffix`, ignoring case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl NameMatch {
    fn new(pattern: &str) -> NameMatch {
        let p = pattern.to_ascii_lowercase();
        if let Some(rest) = p.strip_prefix('*') {
            NameMatch::Suffix(rest.to_string())
        } else if let Some(rest) = p.strip_suffix('*') {
            NameMatch::Prefix(rest.to_string())
        } else {
            NameMatch::Exact(p)
        }
    }
    /// `name` is lower-case, as Envoy hands header names over.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NameMatch::Exact(x) => name.eq_ignore_ascii_case(x),
            NameMatch::Prefix(x) => {
                name.len() >= x.len() && name.as_bytes()[..x.len()].eq_ignore_ascii_case(x.as_bytes())
            }
            NameMatch::Suffix(x) => {
                name.len() >= x.len() && name.as_bytes()[name.len() - x.len()..].eq_ignore_ascii_case(x.as_bytes())
            }
        }
    }
}

/// Whether any pattern of a list matches.
pub fn any_match(list: &[NameMatch], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

impl Provider {
    /// Headers of the original request copied into the check request.
    pub fn forwards_request_header(&self, name: &str) -> bool {
        matches!(name, "authorization" | ":method" | ":path" | ":authority") || any_match(&self.request_headers, name)
    }

    /// Headers of an OK response copied onto the upstream request (replacing).
    pub fn upstream_on_allow(&self, name: &str) -> bool {
        any_match(&self.to_upstream_on_allow, name)
    }

    /// Headers of an OK response added to the response to the client.
    pub fn downstream_on_allow(&self, name: &str) -> bool {
        any_match(&self.to_downstream_on_allow, name)
    }

    /// Headers of a denial copied to the client: everything but `host` when the list is empty,
    /// otherwise the list plus `:status`, `content-length`, `www-authenticate`, `location`.
    pub fn downstream_on_deny(&self, name: &str) -> bool {
        if self.to_downstream_on_deny.is_empty() {
            return name != ":authority" && name != "host";
        }
        matches!(name, ":status" | "content-length" | "www-authenticate" | "location")
            || any_match(&self.to_downstream_on_deny, name)
    }
}

/// Envoy's `envoy.type.v3.StatusCode` values: what `statusOnError` accepts.
const ENVOY_STATUS_CODES: &[u32] = &[
    100, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 307, 308, 400, 401, 402, 403,
    404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 421, 422, 423, 424, 426, 428, 429, 431, 500,
    501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
];

/// Parses and validates `extensionProviders` as istiod's `processExtensionProvider` does.
/// Returns, per provider name, the provider or why it is unusable (a CUSTOM policy naming an
/// unusable provider denies the requests it matches). Providers of other kinds (tracing,
/// access logging, metrics) are skipped.
pub fn parse_providers(values: &[serde_json::Value]) -> BTreeMap<String, Result<Provider, String>> {
    let mut out: BTreeMap<String, Result<Provider, String>> = BTreeMap::new();
    for (i, v) in values.iter().enumerate() {
        let name = v.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let mut errs: Vec<String> = Vec::new();
        if name.is_empty() {
            errs.push(format!("extensionProviders[{i}]: name must not be empty"));
        } else if out.contains_key(&name) {
            errs.push(format!("extensionProviders[{i}]: name must be unique, found duplicate {name:?}"));
        } else if let Err(e) = validate_provider_name(&name) {
            errs.push(format!("extensionProviders[{i}]: invalid name {name:?}: {e}"));
        }
        let parsed = if let Some(http) = v.get("envoyExtAuthzHttp") {
            match serde_json::from_value::<ExtAuthzHttp>(http.clone()) {
                Ok(cfg) => build_http(&name, &cfg),
                Err(e) => Err(vec![format!("envoyExtAuthzHttp: {e}")]),
            }
        } else if let Some(grpc) = v.get("envoyExtAuthzGrpc") {
            match serde_json::from_value::<ExtAuthzGrpc>(grpc.clone()) {
                Ok(cfg) => build_grpc(&name, &cfg),
                Err(e) => Err(vec![format!("envoyExtAuthzGrpc: {e}")]),
            }
        } else {
            continue;
        };
        let result = match parsed {
            Ok(p) if errs.is_empty() => Ok(p),
            Ok(_) => Err(errs.join("; ")),
            Err(mut e) => {
                errs.append(&mut e);
                Err(errs.join("; "))
            }
        };
        if !name.is_empty() && !matches!(out.get(&name), Some(Ok(_))) {
            out.insert(name.clone(), result);
        } else if !name.is_empty() {
            // A duplicate name poisons the provider, as istiod's error for it does.
            out.insert(name.clone(), Err(format!("extension provider name must be unique, found duplicate {name:?}")));
        }
    }
    out
}

/// istiod `validateProviderName`: a DNS-1123 label.
fn validate_provider_name(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!("too long (max 63 characters): {}", name.len()));
    }
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
            continue;
        }
        if c.is_ascii_uppercase() {
            return Err(format!("uppercase letters not allowed (use lowercase): {c:?} at position {i}"));
        }
        return Err(format!(
            "invalid character {c:?} at position {i} (only lowercase letters, digits, and hyphens allowed)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("cannot start or end with a hyphen".into());
    }
    Ok(())
}

/// A provider's `service` (`[<namespace>/]<hostname>`; istiod resolves it in its registry,
/// wasmesh names the cluster) and `port`, checked as istiod checks them: the host.
fn service_host<'a>(service: &'a str, port: u32, errs: &mut Vec<String>) -> &'a str {
    if !(1..=65535).contains(&port) {
        errs.push(format!("port must be in the range [1, 65535], found: {port}"));
    }
    let host = match service.split_once('/') {
        Some((_, h)) => h,
        None => service,
    };
    if host.is_empty() {
        errs.push("service must be set ([<namespace>/]<hostname>)".into());
    }
    host
}

/// A provider's `timeout` (Istio's default when unset or invalid, the error kept).
fn timeout(t: &Option<String>, errs: &mut Vec<String>) -> Duration {
    match t {
        None => DEFAULT_TIMEOUT,
        Some(t) => wasmesh_istio::parse_duration(t).unwrap_or_else(|e| {
            errs.push(format!("timeout: {e}"));
            DEFAULT_TIMEOUT
        }),
    }
}

fn build_http(name: &str, cfg: &ExtAuthzHttp) -> Result<Provider, Vec<String>> {
    let mut errs = Vec::new();
    let host = service_host(&cfg.service, cfg.port, &mut errs);
    let status_on_error = status_on_error(&cfg.status_on_error, &mut errs);
    if !cfg.path_prefix.is_empty() && !cfg.path_prefix.starts_with('/') {
        errs.push(format!("pathPrefix must begin with `/`, found: {:?}", cfg.path_prefix));
    }
    if cfg.path_prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        errs.push(format!("invalid pathPrefix {:?}", cfg.path_prefix));
    }
    let timeout = timeout(&cfg.timeout, &mut errs);
    check_body(&cfg.include_request_body_in_check, &mut errs);
    let lists = [
        ("includeRequestHeadersInCheck", &cfg.include_request_headers_in_check),
        ("includeHeadersInCheck", &cfg.include_headers_in_check),
        ("headersToDownstreamOnDeny", &cfg.headers_to_downstream_on_deny),
        ("headersToDownstreamOnAllow", &cfg.headers_to_downstream_on_allow),
        ("headersToUpstreamOnAllow", &cfg.headers_to_upstream_on_allow),
    ];
    for (field, values) in lists {
        if values.iter().any(|v| v == "*") {
            errs.push(format!(
                "a single wildcard (\"*\") is not supported, change it to either prefix or suffix match: {field}"
            ));
        }
    }
    for (k, v) in &cfg.include_additional_headers_in_check {
        if !is_header_name(k) || v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            errs.push(format!("includeAdditionalHeadersInCheck: invalid header {k:?}: {v:?}"));
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let request = if cfg.include_request_headers_in_check.is_empty() {
        &cfg.include_headers_in_check
    } else {
        &cfg.include_request_headers_in_check
    };
    let list = |v: &Vec<String>| v.iter().map(|p| NameMatch::new(p)).collect::<Vec<_>>();
    Ok(Provider {
        name: name.to_string(),
        transport: Transport::Http,
        cluster: format!("outbound|{}||{}", cfg.port, host),
        authority: host.to_string(),
        timeout,
        path_prefix: cfg.path_prefix.clone(),
        fail_open: cfg.fail_open,
        status_on_error,
        request_headers: list(request),
        additional_headers: cfg
            .include_additional_headers_in_check
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
        to_upstream_on_allow: list(&cfg.headers_to_upstream_on_allow),
        to_downstream_on_deny: list(&cfg.headers_to_downstream_on_deny),
        to_downstream_on_allow: list(&cfg.headers_to_downstream_on_allow),
        body: cfg.include_request_body_in_check.clone(),
    })
}

/// `envoyExtAuthzGrpc` as istiod translates it (`generateGRPCConfig`): the service's cluster
/// with `authority` the host, `timeout`, `failOpen`, `statusOnError`, `includeRequestBodyInCheck`.
/// A gRPC check carries every request header; the provider's answer says which headers change.
/// `clearRouteCache` needs nothing: a header a wasm filter changes makes Envoy pick the route
/// again anyway.
fn build_grpc(name: &str, cfg: &ExtAuthzGrpc) -> Result<Provider, Vec<String>> {
    let mut errs = Vec::new();
    let host = service_host(&cfg.service, cfg.port, &mut errs);
    let status_on_error = status_on_error(&cfg.status_on_error, &mut errs);
    let timeout = timeout(&cfg.timeout, &mut errs);
    check_body(&cfg.include_request_body_in_check, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Provider {
        name: name.to_string(),
        transport: Transport::Grpc,
        cluster: format!("outbound|{}||{}", cfg.port, host),
        authority: host.to_string(),
        timeout,
        path_prefix: String::new(),
        fail_open: cfg.fail_open,
        status_on_error,
        request_headers: Vec::new(),
        additional_headers: Vec::new(),
        to_upstream_on_allow: Vec::new(),
        to_downstream_on_deny: Vec::new(),
        to_downstream_on_allow: Vec::new(),
        body: cfg.include_request_body_in_check.clone(),
    })
}

fn status_on_error(text: &str, errs: &mut Vec<String>) -> u32 {
    if text.is_empty() {
        return 403;
    }
    match text.parse::<u32>() {
        Ok(c) if ENVOY_STATUS_CODES.contains(&c) => c,
        Ok(c) => {
            errs.push(format!("unsupported statusOnError {c}, supported values: {ENVOY_STATUS_CODES:?}"));
            403
        }
        Err(_) => {
            errs.push(format!("invalid statusOnError {text:?}: not a number"));
            403
        }
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_http_provider_with_every_field() {
        let p = parse_providers(&[json!({"name": "ext", "envoyExtAuthzHttp": {
            "service": "foo/authz.foo.svc.cluster.local", "port": 8000, "timeout": "0.5s",
            "pathPrefix": "/check", "failOpen": true, "statusOnError": "503",
            "includeRequestHeadersInCheck": ["x-ext-authz", "x-pre*"],
            "includeAdditionalHeadersInCheck": {"X-Added": "v"},
            "headersToUpstreamOnAllow": ["x-user"], "headersToDownstreamOnDeny": ["x-reason"],
            "headersToDownstreamOnAllow": ["*-trace"]
        }})]);
        let p = p["ext"].clone().unwrap();
        assert_eq!(p.cluster, "outbound|8000||authz.foo.svc.cluster.local");
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.status_on_error, 503);
        assert!(p.fail_open);
        assert!(p.forwards_request_header("x-ext-authz"));
        assert!(p.forwards_request_header("x-prefixed"));
        assert!(p.forwards_request_header("authorization"));
        assert!(!p.forwards_request_header("cookie"));
        assert_eq!(p.additional_headers, vec![("x-added".to_string(), "v".to_string())]);
        assert!(p.upstream_on_allow("x-user"));
        assert!(p.downstream_on_allow("x-b3-trace"));
        assert!(p.downstream_on_deny("x-reason"));
        assert!(p.downstream_on_deny("www-authenticate"));
        assert!(!p.downstream_on_deny("x-other"));
    }

    #[test]
    fn parses_grpc_provider_and_body_settings() {
        let p = parse_providers(&[json!({"name": "g", "envoyExtAuthzGrpc": {
            "service": "foo/authz.foo.svc.cluster.local", "port": 9000, "timeout": "2s", "failOpen": true,
            "statusOnError": "503", "clearRouteCache": true
        }})]);
        let p = p["g"].clone().unwrap();
        assert_eq!(p.transport, Transport::Grpc);
        assert_eq!(p.cluster, "outbound|9000||authz.foo.svc.cluster.local");
        assert_eq!(p.authority, "authz.foo.svc.cluster.local");
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert!(p.fail_open);
        assert_eq!(p.status_on_error, 503);
        for kind in ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"] {
            let b = parse_providers(&[json!({"name": "b", kind: {"service": "a", "port": 1,
                "includeRequestBodyInCheck": {"maxRequestBytes": 5, "allowPartialMessage": true, "packAsBytes": true}}})]);
            let want = RequestBody { max_request_bytes: 5, allow_partial_message: true, pack_as_bytes: true };
            assert_eq!(b["b"].as_ref().unwrap().body, Some(want), "{kind}");
        }
    }

    #[test]
    fn defaults_and_deny_headers() {
        let p = parse_providers(&[json!({"name": "a", "envoyExtAuthzHttp": {"service": "authz", "port": 80}})]);
        let p = p["a"].clone().unwrap();
        assert_eq!(p.timeout, DEFAULT_TIMEOUT);
        assert_eq!(p.status_on_error, 403);
        assert!(p.downstream_on_deny("x-anything"), "empty list: everything but host");
        assert!(!p.downstream_on_deny(":authority"));
    }

    #[test]
    fn invalid_providers_are_reported_not_dropped() {
        let p = parse_providers(&[
            json!({"name": "Bad", "envoyExtAuthzHttp": {"service": "a", "port": 80}}),
            json!({"name": "noport", "envoyExtAuthzHttp": {"service": "a"}}),
            json!({"name": "st", "envoyExtAuthzHttp": {"service": "a", "port": 1, "statusOnError": "299"}}),
            json!({"name": "wild", "envoyExtAuthzHttp": {"service": "a", "port": 1, "headersToUpstreamOnAllow": ["*"]}}),
            json!({"name": "pp", "envoyExtAuthzHttp": {"service": "a", "port": 1, "pathPrefix": "check"}}),
            json!({"name": "typo", "envoyExtAuthzHttp": {"service": "a", "port": 1, "failopen": true}}),
            json!({"name": "grpc", "envoyExtAuthzGrpc": {"service": "a", "port": 1, "pathPrefix": "/x"}}),
            json!({"name": "body0", "envoyExtAuthzHttp": {"service": "a", "port": 1, "includeRequestBodyInCheck": {}}}),
            json!({"name": "bodybig", "envoyExtAuthzGrpc": {"service": "a", "port": 1, "includeRequestBodyInCheck": {"maxRequestBytes": 4194305}}}),
            json!({"name": "zipkin", "zipkin": {"service": "z", "port": 9411}}),
        ]);
        assert!(p["Bad"].as_ref().unwrap_err().contains("uppercase"));
        assert!(p["noport"].as_ref().unwrap_err().contains("port must be"));
        assert!(p["st"].as_ref().unwrap_err().contains("statusOnError"));
        assert!(p["wild"].as_ref().unwrap_err().contains("single wildcard"));
        assert!(p["pp"].as_ref().unwrap_err().contains("pathPrefix"));
        assert!(p["typo"].as_ref().unwrap_err().contains("failopen"));
        assert!(p["grpc"].as_ref().unwrap_err().contains("pathPrefix"), "{:?}", p["grpc"]);
        assert!(p["body0"].as_ref().unwrap_err().contains("maxRequestBytes must be greater than 0"));
        assert!(p["bodybig"].as_ref().unwrap_err().contains("past wasmesh's bound"));
        assert!(!p.contains_key("zipkin"));
    }

    #[test]
    fn duplicate_names_poison_the_provider() {
        let p = parse_providers(&[
            json!({"name": "a", "envoyExtAuthzHttp": {"service": "x", "port": 80}}),
            json!({"name": "a", "envoyExtAuthzHttp": {"service": "y", "port": 80}}),
        ]);
        assert!(p["a"].is_err());
    }
}
