//! Semantic checks serde cannot express. Each kind's checks live next to the code that
//! interprets it; this module is the single entry point `wasmeshctl validate` calls.
//!
//! It also holds istiod's admission-webhook checks (`pkg/config/validation`) for the kinds whose
//! meaning does not depend on a filter: ServiceEntry, WorkloadEntry and DestinationRule. They
//! go beyond the CRD schema (which `wasmeshctl validate` checks separately, with Istio's own CEL
//! rules): host names, addresses, port names and protocols, resolution against endpoints, subset
//! names and labels, traffic policy values. Messages are istiod's, so that the operator reads
//! what `kubectl apply` would answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

use crate::networking::{DestinationRule, ServiceEntry, WorkloadEntry};
use crate::{Error, Resource, Resources, Spec};

/// A check over one resource, registered by the crates that interpret that kind.
pub type Check = fn(&Resource, &Resources) -> Vec<Error>;

/// istiod's webhook checks for every ServiceEntry, WorkloadEntry and DestinationRule in `resources`.
pub fn validate_webhook(resources: &Resources) -> Vec<Error> {
    let mut errors = Vec::new();
    for res in &resources.items {
        match &res.spec {
            Spec::ServiceEntry(se) => errors.extend(validate_service_entry(res, se)),
            Spec::WorkloadEntry(we) => errors.extend(validate_workload_entry(res, we)),
            Spec::DestinationRule(dr) => errors.extend(validate_destination_rule(res, dr)),
            _ => {}
        }
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// Names, hosts, addresses and ports (istio `pkg/config/validation/agent`, `pkg/config/labels`)

/// Istio's DNS-1123 label (upper case allowed, as Istio's `labels.IsDNS1123Label`).
fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A first label that may be `*`, `*foo`, `*-foo` or a DNS-1123 label.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    let rest = s.strip_prefix("*-").or_else(|| s.strip_prefix('*')).unwrap_or(s);
    s.len() <= 63 && is_dns1123_label(rest)
}

fn dns_preconditions(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        return Err(format!("domain name {name:?} too long (max 255)"));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    Ok(())
}

fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let tld = parts.last().copied().unwrap_or_default();
    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("domain name {domain:?} invalid (top level domain {tld:?} cannot be all-numeric)"));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == parts.len() - 1 && label.is_empty() {
            return Ok(()); // a trailing dot: `istio.io.`
        }
        if !is_dns1123_label(label) {
            return Err(format!("domain name {domain:?} invalid (label {label:?} invalid)"));
        }
    }
    Ok(())
}

/// `agent.ValidateFQDN`.
pub fn validate_fqdn(fqdn: &str) -> Result<(), String> {
    dns_preconditions(fqdn)?;
    dns1123_labels(fqdn)
}

/// `agent.ValidateWildcardDomain`: a DNS name whose first label may be a wildcard.
pub fn validate_wildcard_domain(domain: &str) -> Result<(), String> {
    dns_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!("domain name {domain:?} invalid (label {first:?} invalid)"));
    }
    match rest {
        Some(r) => dns1123_labels(r),
        None => Ok(()),
    }
}

/// An HTTP header name as Envoy's header maps hold it: lower-case token characters (RFC 9110's
/// `tchar` without upper-case letters), plus `:` for pseudo-headers.
pub fn is_lowercase_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.!#$%&'*+^`|~:".contains(&c))
}

/// `agent.ValidatePort`.
pub fn validate_port(port: i64) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("port number {port} must be in the range 1..65535"))
    }
}

/// `ValidatePortName`: a DNS-1123 label.
pub fn validate_port_name(name: &str) -> Result<(), String> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("invalid port name: {name}"))
    }
}

/// `ValidateProtocol`: empty (sniffed) or a protocol Istio knows (case-insensitive).
pub fn validate_protocol(protocol: &str) -> Result<(), String> {
    const KNOWN: [&str; 12] =
        ["tcp", "udp", "grpc", "grpc-web", "http", "http_proxy", "http2", "https", "tls", "mongo", "redis", "mysql"];
    if protocol.is_empty() || KNOWN.contains(&protocol.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!("unsupported protocol: {protocol}"))
    }
}

/// `agent.ValidateIPSubnet`: an IP address or a CIDR block.
pub fn validate_ip_subnet(subnet: &str) -> Result<(), String> {
    if let Some((ip, bits)) = subnet.split_once('/') {
        let ok = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 32),
            Ok(IpAddr::V6(_)) => bits.parse::<u8>().is_ok_and(|b| b <= 128),
            Err(_) => false,
        };
        return if ok && !bits.starts_with('+') {
            Ok(())
        } else {
            Err(format!("{subnet:?} is not a valid CIDR block"))
        };
    }
    subnet.parse::<IpAddr>().map(|_| ()).map_err(|_| format!("{subnet:?} is not a valid IP"))
}

fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// `ValidateUnixAddress` (the part after `unix://`).
fn validate_unix_address(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("unix address must not be empty".into());
    }
    if addr.starts_with('@') {
        return Ok(());
    }
    if !addr.starts_with('/') || addr.ends_with('/') {
        return Err(format!("{addr} is not an absolute path to a file"));
    }
    Ok(())
}

/// `labels.Instance.Validate`: label keys are qualified names, values label values.
fn validate_labels(labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, v) in labels {
        let (prefix, name) = match k.split_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        let prefix_ok = prefix.is_none_or(|p| {
            p.len() <= 253 && !p.is_empty() && p.split('.').all(|l| is_dns1123_label(l) && l == l.to_ascii_lowercase())
        });
        if k.matches('/').count() > 1 || !prefix_ok || name.is_empty() || !is_label_value(name) {
            errs.push(format!("invalid tag key: {k:?}"));
        }
        if !is_label_value(v) {
            errs.push(format!("invalid tag value: {v:?}"));
        }
    }
    errs
}

fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// `validateExportTo`: `.`, `*`, a namespace, or `~` (ServiceEntry only); no duplicates; `*` alone.
fn validate_export_to(
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) -> Vec<String> {
    let mut errs = Vec::new();
    let mut set = BTreeSet::new();
    for e in export_to {
        let key = if e == "." { namespace } else { e.as_str() };
        if set.contains(key) {
            if key != e {
                errs.push(format!("duplicate entries in exportTo: . and current namespace {namespace}"));
            } else {
                errs.push(format!("duplicate entries in exportTo for entry {e}"));
            }
            continue;
        }
        if e == "~" {
            if is_service_entry {
                set.insert(key);
            } else {
                errs.push("exportTo ~ (none) is not allowed for Istio configuration objects".into());
            }
        } else if key == "*" || is_dns1123_label(key) {
            set.insert(key);
        } else {
            errs.push("only .,*, or a valid DNS 1123 label is allowed as exportTo entry".into());
        }
    }
    if dr_with_selector && !set.is_empty() {
        if set.contains(namespace) {
            if set.len() > 1 {
                errs.push("destination rule with workload selector cannot have multiple entries in exportTo".into());
            }
        } else {
            errs.push("destination rule with workload selector cannot have exportTo beyond current namespace".into());
        }
    }
    if set.contains("*") && export_to.len() > 1 {
        errs.push("cannot have both public (*) and non-public exportTo values for a resource".into());
    }
    if set.contains("~") && export_to.len() > 1 {
        errs.push("cannot export service entry to no one (~) and someone".into());
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// ServiceEntry

/// istiod's `ValidateServiceEntry`.
pub fn validate_service_entry(res: &Resource, se: &ServiceEntry) -> Vec<Error> {
    let mut errs = Vec::new();
    let mut e = |field: String, msg: String| errs.push(Error::at(res, field, msg));
    if let Some(sel) = &se.workload_selector {
        for (k, v) in &sel.labels {
            if k.is_empty() {
                e(
                    "spec.workloadSelector.labels".into(),
                    format!("empty key is not supported in selector: \"{k}={v}\""),
                );
            }
        }
        if !se.endpoints.is_empty() {
            e("spec".into(), "only one of WorkloadSelector or Endpoints is allowed in Service Entry".into());
        }
    }
    if se.hosts.is_empty() {
        e("spec.hosts".into(), "service entry must have at least one host".into());
    }
    for (i, host) in se.hosts.iter().enumerate() {
        if host == "*" {
            e(format!("spec.hosts[{i}]"), format!("invalid host {host}"));
        } else if let Err(m) = validate_wildcard_domain(host) {
            e(format!("spec.hosts[{i}]"), m);
        }
    }
    let mut cidr = false;
    for (i, addr) in se.addresses.iter().enumerate() {
        cidr |= addr.contains('/');
        if let Err(m) = validate_ip_subnet(addr) {
            e(format!("spec.addresses[{i}]"), m);
        }
    }
    let resolution = se.resolution.as_deref().unwrap_or("NONE");
    if cidr && resolution != "NONE" && resolution != "STATIC" {
        e("spec.resolution".into(), "CIDR addresses are allowed only for NONE/STATIC resolution types".into());
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in se.ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}]{f}");
        if !names.insert(p.name.as_str()) {
            e(at(".name"), format!("service entry port name {:?} already defined", p.name));
        }
        if !numbers.insert(p.number) {
            e(at(".number"), format!("service entry port {} already defined", p.number));
        }
        if let Some(t) = p.target_port.filter(|t| *t != 0) {
            if let Err(m) = validate_port(i64::from(t)) {
                e(at(".targetPort"), m);
            }
        }
        if let Err(m) = validate_port_name(&p.name) {
            e(at(".name"), m);
        }
        if let Err(m) = validate_protocol(&p.protocol) {
            e(at(".protocol"), m);
        }
        if let Err(m) = validate_port(i64::from(p.number)) {
            e(at(".number"), m);
        }
    }
    match resolution {
        "NONE" => {
            if !se.endpoints.is_empty() {
                e("spec.endpoints".into(), "no endpoints should be provided for resolution type none".into());
            }
        }
        "STATIC" => {
            for (i, ep) in se.endpoints.iter().enumerate() {
                for (field, m) in workload_entry_errors(ep, Some(&names), false) {
                    e(format!("spec.endpoints[{i}]{field}"), m);
                }
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if validate_fqdn(host).is_err() {
                        e(
                            format!("spec.hosts[{i}]"),
                            format!("hosts must be FQDN if no endpoints are provided for resolution mode {resolution}"),
                        );
                    }
                }
            }
            if resolution == "DNS_ROUND_ROBIN" && se.endpoints.len() > 1 {
                e(
                    "spec.endpoints".into(),
                    format!("there must only be 0 or 1 endpoint for resolution mode {resolution}"),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                if !is_ip(&ep.address) && validate_fqdn(&ep.address).is_err() {
                    e(
                        format!("spec.endpoints[{i}].address"),
                        format!("endpoint address {:?} is not a valid FQDN or an IP address", ep.address),
                    );
                }
                for m in validate_labels(&ep.labels) {
                    e(format!("spec.endpoints[{i}].labels"), m);
                }
                for (name, port) in &ep.ports {
                    let at = format!("spec.endpoints[{i}].ports[{name}]");
                    if !names.contains(name.as_str()) {
                        e(at.clone(), format!("endpoint port {port} is not defined by the service entry"));
                    }
                    if let Err(m) = validate_port_name(name) {
                        e(at.clone(), m);
                    }
                    if let Err(m) = validate_port(i64::from(*port)) {
                        e(at, m);
                    }
                }
            }
        }
        other => e("spec.resolution".into(), format!("unsupported resolution type {other}")),
    }
    // Several hosts on a plain TCP port cannot be told apart (no Host header, no SNI).
    if resolution != "NONE" && se.hosts.len() > 1 {
        let opaque = se.ports.iter().position(|p| {
            let proto = p.protocol.to_ascii_lowercase();
            !matches!(proto.as_str(), "http" | "http_proxy" | "http2" | "grpc" | "grpc-web" | "https" | "tls")
        });
        if let Some(i) = opaque {
            e(format!("spec.ports[{i}]"), "multiple hosts provided with non-HTTP, non-TLS ports".into());
        }
    }
    for m in validate_export_to(res.namespace(), &se.export_to, true, false) {
        e("spec.exportTo".into(), m);
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// WorkloadEntry

/// istiod's `ValidateWorkloadEntry`.
pub fn validate_workload_entry(res: &Resource, we: &WorkloadEntry) -> Vec<Error> {
    workload_entry_errors(we, None, true)
        .into_iter()
        .map(|(field, m)| Error::at(res, format!("spec{field}"), m))
        .collect()
}

/// `validateWorkloadEntry`: `(field under the entry, message)`. `service_ports` are the port names of
/// the ServiceEntry the endpoint belongs to; `allow_fqdn` is false for STATIC endpoints.
fn workload_entry_errors(
    we: &WorkloadEntry,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let addr = we.address.as_str();
    if addr.is_empty() && we.network.is_empty() {
        errs.push((".address".into(), "address is required".into()));
        return errs;
    }
    let unix = addr.starts_with("unix://");
    if let Some(path) = addr.strip_prefix("unix://") {
        if let Err(m) = validate_unix_address(path) {
            errs.push((".address".into(), m));
        }
        if !we.ports.is_empty() {
            errs.push((".ports".into(), format!("unix endpoint {addr} must not include ports")));
        }
    } else if !addr.is_empty() && !is_ip(addr) {
        if !allow_fqdn {
            errs.push((".address".into(), format!("endpoint address {addr:?} is not a valid IP address")));
        } else if validate_fqdn(addr).is_err() {
            errs.push((".address".into(), format!("endpoint address {addr:?} is not a valid FQDN or an IP address")));
        }
    }
    for (name, port) in &we.ports {
        let at = format!(".ports[{name}]");
        if service_ports.is_some_and(|s| !s.contains(name.as_str())) {
            errs.push((at.clone(), format!("endpoint port {port} is not defined by the service entry")));
        }
        if let Err(m) = validate_port_name(name) {
            errs.push((at.clone(), m));
        }
        if let Err(m) = validate_port(i64::from(*port)) {
            errs.push((at, m));
        }
    }
    for m in validate_labels(&we.labels) {
        errs.push((".labels".into(), m));
    }
    if unix && service_ports.is_some_and(|s| s.len() != 1) {
        errs.push((String::new(), "exactly 1 service port required for unix endpoints".into()));
    }
    errs
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// istiod's `ValidateDestinationRule`.
pub fn validate_destination_rule(res: &Resource, dr: &DestinationRule) -> Vec<Error> {
    let mut out = Vec::new();
    if let Err(m) = validate_wildcard_domain(&dr.host) {
        out.push(("spec.host".to_string(), m));
    }
    if let Some(tp) = &dr.traffic_policy {
        traffic_policy("spec.trafficPolicy", &to_json(tp), &mut out);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let at = format!("spec.subsets[{i}]");
        if !names.insert(subset.name.as_str()) {
            out.push((format!("{at}.name"), format!("duplicate subset names: {}", subset.name)));
        }
        if subset.name.is_empty() {
            out.push((format!("{at}.name"), "subset name cannot be empty".into()));
        } else if !is_dns1123_label(&subset.name) {
            out.push((format!("{at}.name"), format!("subset name is invalid: {}", subset.name)));
        }
        for m in validate_labels(&subset.labels) {
            out.push((format!("{at}.labels"), m));
        }
        if let Some(tp) = &subset.traffic_policy {
            traffic_policy(&format!("{at}.trafficPolicy"), &to_json(tp), &mut out);
        }
    }
    for m in validate_export_to(res.namespace(), &dr.export_to, false, dr.workload_selector.is_some()) {
        out.push(("spec.exportTo".into(), m));
    }
    if let Some(sel) = &dr.workload_selector {
        for (k, v) in &sel.match_labels {
            if k.is_empty() {
                out.push((
                    "spec.workloadSelector.matchLabels".into(),
                    format!("empty key is not supported in selector: \"{k}={v}\""),
                ));
            }
        }
    }
    out.into_iter().map(|(field, m)| Error::at(res, field, m)).collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn is_set(v: &Value, key: &str) -> bool {
    v.get(key).is_some_and(|x| !x.is_null())
}

fn int(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

/// `ValidateDuration`: at least 1ms, and whole milliseconds.
fn duration(at: String, v: &Value, key: &str, out: &mut Vec<(String, String)>) {
    let Some(text) = v.get(key).and_then(Value::as_str) else { return };
    let at = format!("{at}.{key}");
    match crate::parse_duration(text) {
        Err(m) => out.push((at, m)),
        Ok(d) if d.as_millis() < 1 => out.push((at, "duration must be greater than 1ms".into())),
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            out.push((at, "only durations to ms precision are supported".into()))
        }
        Ok(_) => {}
    }
}

/// `validateTrafficPolicy` (and the port-level variant when `port_level`).
fn traffic_policy(at: &str, tp: &Value, out: &mut Vec<(String, String)>) {
    // retryBudget (new in 1.30) counts as a field too: a policy holding only it is not empty.
    const FIELDS: [&str; 8] = [
        "outlierDetection",
        "connectionPool",
        "loadBalancer",
        "tls",
        "portLevelSettings",
        "tunnel",
        "proxyProtocol",
        "retryBudget",
    ];
    if !FIELDS.iter().any(|f| is_set(tp, f)) {
        out.push((at.into(), "traffic policy must have at least one field".into()));
        return;
    }
    if is_set(tp, "tunnel") && is_set(tp, "proxyProtocol") {
        out.push((at.into(), "tunnel and proxyProtocol must not be set together".into()));
        return;
    }
    policy_sections(at, tp, out);
    if let Some(pls) = tp.get("portLevelSettings").and_then(Value::as_array) {
        for (i, p) in pls.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            if !is_set(p, "port") {
                out.push((at.clone(), "portTrafficPolicy must have valid port".into()));
            }
            if !["outlierDetection", "connectionPool", "loadBalancer", "tls"].iter().any(|f| is_set(p, f)) {
                out.push((at, "port traffic policy must have at least one field".into()));
            } else {
                policy_sections(&at, p, out);
            }
        }
    }
    if let Some(t) = tp.get("tunnel").filter(|t| !t.is_null()) {
        let at = format!("{at}.tunnel");
        let protocol = t.get("protocol").and_then(Value::as_str).unwrap_or("");
        if !protocol.is_empty() && protocol != "CONNECT" && protocol != "POST" {
            out.push((format!("{at}.protocol"), "tunnel protocol must be \"CONNECT\" or \"POST\"".into()));
        }
        let host = t.get("targetHost").and_then(Value::as_str).unwrap_or("");
        if let Err(f) = validate_fqdn(host) {
            if !is_ip(host) {
                out.push((
                    format!("{at}.targetHost"),
                    format!("tunnel target host must be valid FQDN or IP address: {f}"),
                ));
            }
        }
        if let Err(m) = validate_port(int(t, "targetPort").unwrap_or(0)) {
            out.push((format!("{at}.targetPort"), format!("tunnel target port is invalid: {m}")));
        }
    }
    if let Some(v) = tp.pointer("/proxyProtocol/version").and_then(Value::as_str) {
        if v != "V1" && v != "V2" {
            out.push((format!("{at}.proxyProtocol.version"), format!("proxy protocol version is invalid: {v}")));
        }
    }
}

/// Outlier detection, connection pool, load balancer and client TLS of one (port) traffic policy.
fn policy_sections(at: &str, tp: &Value, out: &mut Vec<(String, String)>) {
    if let Some(od) = tp.get("outlierDetection").filter(|v| !v.is_null()) {
        let at = format!("{at}.outlierDetection");
        duration(at.clone(), od, "baseEjectionTime", out);
        duration(at.clone(), od, "interval", out);
        let split = od.get("splitExternalLocalOriginErrors").and_then(Value::as_bool).unwrap_or(false);
        if !split && int(od, "consecutiveLocalOriginFailures").unwrap_or(0) > 0 {
            out.push((
                at.clone(),
                "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false".into(),
            ));
        }
        for key in ["maxEjectionPercent", "minHealthPercent"] {
            if let Some(p) = int(od, key).filter(|p| !(0..=100).contains(p)) {
                out.push((format!("{at}.{key}"), format!("percentage {p} is not in range 0..100")));
            }
        }
    }
    if let Some(cp) = tp.get("connectionPool").filter(|v| !v.is_null()) {
        let at = format!("{at}.connectionPool");
        let http = cp.get("http").filter(|v| !v.is_null());
        let tcp = cp.get("tcp").filter(|v| !v.is_null());
        if http.is_none() && tcp.is_none() {
            out.push((at.clone(), "connection pool must have at least one field".into()));
        }
        if let Some(h) = http {
            let at = format!("{at}.http");
            for (key, what) in [
                ("http1MaxPendingRequests", "http1 max pending requests"),
                ("http2MaxRequests", "http2 max requests"),
                ("maxRequestsPerConnection", "max requests per connection"),
                ("maxRetries", "max retries"),
                ("maxConcurrentStreams", "max concurrent streams"),
            ] {
                if int(h, key).is_some_and(|n| n < 0) {
                    out.push((format!("{at}.{key}"), format!("{what} must be non-negative")));
                }
            }
            duration(at.clone(), h, "idleTimeout", out);
            if h.get("h2UpgradePolicy").and_then(Value::as_str) == Some("UPGRADE")
                && h.get("useClientProtocol").and_then(Value::as_bool) == Some(true)
            {
                out.push((at, "use client protocol must not be true when H2UpgradePolicy is UPGRADE".into()));
            }
        }
        if let Some(t) = tcp {
            let at = format!("{at}.tcp");
            if int(t, "maxConnections").is_some_and(|n| n < 0) {
                out.push((format!("{at}.maxConnections"), "max connections must be non-negative".into()));
            }
            for key in ["connectTimeout", "maxConnectionDuration", "idleTimeout"] {
                duration(at.clone(), t, key, out);
            }
            if let Some(ka) = t.get("tcpKeepalive").filter(|v| !v.is_null()) {
                duration(format!("{at}.tcpKeepalive"), ka, "time", out);
                duration(format!("{at}.tcpKeepalive"), ka, "interval", out);
            }
        }
    }
    if let Some(lb) = tp.get("loadBalancer").filter(|v| !v.is_null()) {
        load_balancer(&format!("{at}.loadBalancer"), lb, out);
    }
    if let Some(tls) = tp.get("tls").filter(|v| !v.is_null()) {
        client_tls(&format!("{at}.tls"), tls, out);
    }
}

fn load_balancer(at: &str, lb: &Value, out: &mut Vec<(String, String)>) {
    if let Some(ch) = lb.get("consistentHash").filter(|v| !v.is_null()) {
        let at = format!("{at}.consistentHash");
        if let Some(cookie) = ch.get("httpCookie").filter(|v| !v.is_null()) {
            if cookie.get("name").and_then(Value::as_str).unwrap_or("").is_empty() {
                out.push((format!("{at}.httpCookie.name"), "name required for HttpCookie".into()));
            }
        }
        if int(ch, "minimumRingSize").unwrap_or(0) != 0 && (is_set(ch, "maglev") || is_set(ch, "ringHash")) {
            out.push((at.clone(), "only one of MinimumRingSize or Maglev/Ringhash can be specified".into()));
        }
        if let Some(ml) = ch.get("maglev").filter(|v| !v.is_null()) {
            let size = ml.get("tableSize").and_then(Value::as_u64).unwrap_or(0);
            let at = format!("{at}.maglev.tableSize");
            if size == 0 {
                out.push((at.clone(), "tableSize must be set for maglev".into()));
            }
            if size >= 5_000_011 {
                out.push((at.clone(), "tableSize must be less than 5000011 for maglev".into()));
            }
            if !is_prime(size) {
                out.push((at, "tableSize must be a prime number for maglev".into()));
            }
        }
    }
    if let Some(loc) = lb.get("localityLbSetting").filter(|v| !v.is_null()) {
        let at = format!("{at}.localityLbSetting");
        let distribute = loc.get("distribute").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let failover = loc.get("failover").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        if !distribute.is_empty() && !failover.is_empty() {
            out.push((at, "can not simultaneously specify 'distribute' and 'failover'".into()));
            return;
        }
        for (i, d) in distribute.iter().enumerate() {
            let weights = d.get("to").and_then(Value::as_object);
            let mut total = 0u64;
            for w in weights.into_iter().flat_map(|m| m.values()) {
                let w = w.as_u64().unwrap_or(0);
                if w == 0 || w > 100 {
                    out.push((format!("{at}.distribute[{i}].to"), "locality weight must be in range [1, 100]".into()));
                    return;
                }
                total += w;
            }
            if total != 100 {
                out.push((format!("{at}.distribute[{i}].to"), format!("total locality weight {total} != 100")));
                return;
            }
        }
        for (i, f) in failover.iter().enumerate() {
            let from = f.get("from").and_then(Value::as_str).unwrap_or("");
            let to = f.get("to").and_then(Value::as_str).unwrap_or("");
            let at = format!("{at}.failover[{i}]");
            if from == to {
                out.push((at.clone(), "locality lb failover settings must specify different regions".into()));
            }
            if from.contains('/') || to.contains('/') {
                out.push((at.clone(), "locality lb failover only specify region".into()));
            }
            if from.contains('*') || to.contains('*') {
                out.push((at, "locality lb failover region should not contain '*' wildcard".into()));
            }
        }
    }
    duration(at.to_string(), lb, "warmupDurationSecs", out);
}

fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x & 1 == 0 {
        return false;
    }
    let mut f = 3;
    while f * f <= x {
        if x.is_multiple_of(f) {
            return false;
        }
        f += 2;
    }
    true
}

/// `agent.ValidateTLS` for a DestinationRule's client TLS settings.
fn client_tls(at: &str, tls: &Value, out: &mut Vec<(String, String)>) {
    let s = |k: &str| tls.get(k).and_then(Value::as_str).unwrap_or("");
    let mode = s("mode");
    let sans = tls.get("subjectAltNames").is_some_and(|v| !v.is_null());
    if tls.get("insecureSkipVerify").and_then(Value::as_bool) == Some(true) {
        if mode == "SIMPLE" && (!s("caCertificates").is_empty() || !s("credentialName").is_empty() || sans) {
            out.push((
                at.into(),
                "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true".into(),
            ));
        }
        if mode == "MUTUAL" && (!s("caCertificates").is_empty() || sans) {
            out.push((
                at.into(),
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true".into(),
            ));
        }
    }
    if (mode == "SIMPLE" || mode == "MUTUAL") && !s("credentialName").is_empty() {
        if ["clientCertificate", "caCertificates", "privateKey", "caCrl"].iter().any(|k| !s(k).is_empty()) {
            out.push((
                at.into(),
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set".into(),
            ));
        }
        return;
    }
    if mode == "MUTUAL" {
        if s("clientCertificate").is_empty() {
            out.push((format!("{at}.clientCertificate"), "client certificate required for mutual tls".into()));
        }
        if s("privateKey").is_empty() {
            out.push((format!("{at}.privateKey"), "private key required for mutual tls".into()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<String> {
        let items = crate::load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        validate_webhook(&Resources { items })
            .iter()
            .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or(""), e.message))
            .collect()
    }

    fn se(spec: &str) -> Vec<String> {
        errors(&format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s, namespace: ns}}\nspec:\n{spec}"))
    }
    fn we(spec: &str) -> Vec<String> {
        errors(&format!("apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w, namespace: ns}}\nspec:\n{spec}"))
    }
    fn dr(spec: &str) -> Vec<String> {
        errors(&format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: ns}}\nspec:\n{spec}"))
    }

    #[test]
    fn istio_docs_service_entries_pass() {
        let docs = [
            "  hosts: [api.dropboxapi.com, www.googleapis.com]\n  location: MESH_EXTERNAL\n  ports:\n  - {number: 443, name: https, protocol: TLS}\n  resolution: DNS\n",
            "  hosts: [mymongodb.somedomain]\n  addresses: [192.192.192.192/24]\n  ports:\n  - {number: 27018, name: mongodb, protocol: MONGO}\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints:\n  - address: 2.2.2.2\n  - address: 3.3.3.3\n",
            "  hosts: [foo.bar.com]\n  ports:\n  - {number: 443, name: https, protocol: HTTP}\n  resolution: DNS\n  endpoints:\n  - address: us.foo.bar.com\n    ports: {https: 8443}\n",
            "  hosts: [example.unix.local]\n  ports:\n  - {number: 80, name: http, protocol: HTTP}\n  resolution: STATIC\n  endpoints:\n  - address: unix:///var/run/example/socket\n",
            "  hosts: ['*.example.com']\n  ports:\n  - {number: 443, name: tls, protocol: TLS}\n  resolution: NONE\n",
            "  hosts: [mysql.somedomain]\n  ports:\n  - {number: 3306, name: mysql, protocol: TCP, targetPort: 3306}\n  resolution: STATIC\n  workloadSelector:\n    labels: {app: mysql}\n",
            "  hosts: [db.example.com]\n  exportTo: ['.']\n  addresses: ['2001:db8::1']\n  ports:\n  - {number: 5432, name: tcp-pg, protocol: TCP}\n  resolution: STATIC\n  endpoints:\n  - {address: '2001:db8::1', labels: {app: db}}\n",
        ];
        for d in docs {
            assert_eq!(se(d), Vec::<String>::new(), "{d}");
        }
    }

    #[test]
    fn invalid_service_entries_get_istiods_reasons() {
        let cases = [
            ("  hosts: [a.example.com]\n  addresses: [10.0.0.300]\n  ports: [{number: 80, name: http}]\n",
             "spec.addresses[0]: \"10.0.0.300\" is not a valid IP"),
            ("  hosts: [a.example.com]\n  addresses: [10.0.0.0/40]\n  ports: [{number: 80, name: http}]\n",
             "spec.addresses[0]: \"10.0.0.0/40\" is not a valid CIDR block"),
            ("  hosts: [a_b.example.com]\n  ports: [{number: 80, name: http}]\n",
             "spec.hosts[0]: domain name \"a_b.example.com\" invalid (label \"a_b\" invalid)"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http}, {number: 81, name: http}]\n",
             "spec.ports[1].name: service entry port name \"http\" already defined"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: Http_1}]\n", "spec.ports[0].name: invalid port name: Http_1"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: QUIC}]\n", "spec.ports[0].protocol: unsupported protocol: QUIC"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http, targetPort: 70000}]\n",
             "spec.ports[0].targetPort: port number 70000 must be in the range 1..65535"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints:\n  - address: db.example.com\n",
             "spec.endpoints[0].address: endpoint address \"db.example.com\" is not a valid IP address"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: STATIC\n  endpoints:\n  - address: 1.1.1.1\n    ports: {grpc: 8080}\n",
             "spec.endpoints[0].ports[grpc]: endpoint port 8080 is not defined by the service entry"),
            ("  hosts: ['*.example.com']\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n",
             "spec.hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
            ("  hosts: [a.example.com, b.example.com]\n  ports: [{number: 3306, name: mysql, protocol: TCP}]\n  resolution: DNS\n",
             "spec.ports[0]: multiple hosts provided with non-HTTP, non-TLS ports"),
            ("  hosts: [a.example.com]\n  ports: [{number: 80, name: http}]\n  resolution: DNS\n  endpoints:\n  - address: 'bad host'\n",
             "spec.endpoints[0].address: endpoint address \"bad host\" is not a valid FQDN or an IP address"),
            ("  hosts: [a.example.com]\n  exportTo: ['*', '.']\n  ports: [{number: 80, name: http}]\n",
             "spec.exportTo: cannot have both public (*) and non-public exportTo values for a resource"),
            ("  hosts: [a.example.com]\n  exportTo: [ns, '.']\n  ports: [{number: 80, name: http}]\n",
             "spec.exportTo: duplicate entries in exportTo: . and current namespace ns"),
        ];
        for (spec, want) in cases {
            let got = se(spec);
            assert!(got.iter().any(|g| g == want), "{spec}\nwant {want}\ngot {got:?}");
        }
    }

    #[test]
    fn workload_entries() {
        assert_eq!(we("  address: 2.2.2.2\n  labels: {app: details-legacy, instance-id: vm1}\n  serviceAccount: details-legacy\n"), Vec::<String>::new());
        assert_eq!(we("  address: vm2.vpc01.corp.net\n  ports: {http: 9080}\n"), Vec::<String>::new());
        assert_eq!(
            we("  network: remote\n"),
            Vec::<String>::new(),
            "an address-less entry on a network is allowed (istiod warns)"
        );
        assert_eq!(
            we("  address: 'not an address'\n"),
            ["spec.address: endpoint address \"not an address\" is not a valid FQDN or an IP address"]
        );
        assert_eq!(
            we("  address: unix:///sock\n  ports: {http: 80}\n"),
            ["spec.ports: unix endpoint unix:///sock must not include ports"]
        );
        assert_eq!(
            we("  address: 1.2.3.4\n  ports: {HTTP_x: 0}\n"),
            [
                "spec.ports[HTTP_x]: invalid port name: HTTP_x",
                "spec.ports[HTTP_x]: port number 0 must be in the range 1..65535"
            ]
        );
        assert_eq!(we("  address: 1.2.3.4\n  labels: {app: 'a b'}\n"), ["spec.labels: invalid tag value: \"a b\""]);
    }

    #[test]
    fn destination_rules() {
        let ok = [
            "  host: ratings.prod.svc.cluster.local\n  trafficPolicy:\n    loadBalancer: {simple: LEAST_REQUEST}\n  subsets:\n  - name: testversion\n    labels: {version: v3}\n    trafficPolicy:\n      loadBalancer: {simple: ROUND_ROBIN}\n",
            "  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s}}\n    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m}\n",
            "  host: '*.example.com'\n  trafficPolicy:\n    tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}\n",
            "  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {maglev: {tableSize: 65537}, httpHeaderName: x-user}\n",
        ];
        for d in ok {
            assert_eq!(dr(d), Vec::<String>::new(), "{d}");
        }
        let cases = [
            ("  host: reviews\n  subsets:\n  - name: v1\n  - name: v1\n", "spec.subsets[1].name: duplicate subset names: v1"),
            ("  host: reviews\n  subsets:\n  - name: v1.0\n", "spec.subsets[0].name: subset name is invalid: v1.0"),
            ("  host: reviews\n  subsets:\n  - name: v1\n    labels: {version: 'v 1'}\n", "spec.subsets[0].labels: invalid tag value: \"v 1\""),
            ("  host: 'reviews/*'\n", "spec.host: domain name \"reviews/*\" invalid (label \"reviews/*\" invalid)"),
            ("  host: reviews\n  trafficPolicy: {}\n", "spec.trafficPolicy: traffic policy must have at least one field"),
            ("  host: reviews\n  trafficPolicy:\n    connectionPool: {}\n", "spec.trafficPolicy.connectionPool: connection pool must have at least one field"),
            ("  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {connectTimeout: 1.5ms}\n", "spec.trafficPolicy.connectionPool.tcp.connectTimeout: only durations to ms precision are supported"),
            ("  host: reviews\n  trafficPolicy:\n    outlierDetection: {maxEjectionPercent: 150}\n", "spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 150 is not in range 0..100"),
            ("  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutiveLocalOriginFailures: 3}\n", "spec.trafficPolicy.outlierDetection: outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false"),
            ("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {maglev: {tableSize: 1000}}\n", "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: tableSize must be a prime number for maglev"),
            ("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {httpCookie: {ttl: 0s}}\n", "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name: name required for HttpCookie"),
            ("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - {from: us-west/*, to: {'us-west/*': 80, 'us-east/*': 10}}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to: total locality weight 90 != 100"),
            ("  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n        failover:\n        - {from: us-east, to: us-east}\n", "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]: locality lb failover settings must specify different regions"),
            ("  host: reviews\n  trafficPolicy:\n    tls: {mode: MUTUAL}\n", "spec.trafficPolicy.tls.clientCertificate: client certificate required for mutual tls"),
            ("  host: reviews\n  trafficPolicy:\n    tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}\n", "spec.trafficPolicy.tls: cannot specify client certificates or CA certificate or CA CRL If credentialName is set"),
            ("  host: reviews\n  trafficPolicy:\n    portLevelSettings:\n    - port: {number: 80}\n", "spec.trafficPolicy.portLevelSettings[0]: port traffic policy must have at least one field"),
            ("  host: reviews\n  workloadSelector:\n    matchLabels: {app: r}\n  exportTo: ['*']\n", "spec.exportTo: destination rule with workload selector cannot have exportTo beyond current namespace"),
            ("  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}\n", "spec.trafficPolicy.connectionPool.http: use client protocol must not be true when H2UpgradePolicy is UPGRADE"),
        ];
        for (spec, want) in cases {
            let got = dr(spec);
            assert!(got.iter().any(|g| g == want), "{spec}\nwant {want}\ngot {got:?}");
        }
    }

    #[test]
    fn host_grammar() {
        for ok in ["reviews", "reviews.default.svc.cluster.local", "*.example.com", "*", "*-x.example.com", "istio.io."]
        {
            assert!(validate_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-a.com", "a.1", "foo.*.com", "a_b"] {
            assert!(validate_wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(validate_fqdn("*.example.com").is_err());
    }
}
