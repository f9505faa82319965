//! `wasmeshctl validate`: everything wasmesh would refuse, before anything is deployed.

use crate::mesh::MeshConfig;
use std::net::ToSocketAddrs;
use wasmesh_authn::remote::{discovery_uri, parse_jwks_uri, BlockedCidrs};
use wasmesh_istio::{Error, Location, PolicyTargetReference, Resource, Resources};

/// The istiod environment variable (Istio 1.29) naming the CIDR blocks a JWKS fetch must not
/// reach; wasmeshctl reads it too, and writes it into the authn filter's configuration.
pub const BLOCKED_CIDRS_ENV: &str = "BLOCKED_CIDRS_IN_JWKS_URIS";

/// All problems in `resources`, each naming file, resource, field and value.
pub fn validate(resources: &Resources) -> Vec<Error> {
    // istiod's admission-webhook checks for ServiceEntry, WorkloadEntry and DestinationRule.
    let mut errors = wasmesh_istio::validate::validate_webhook(resources);
    errors.extend(wasmesh_router::validate(resources));
    errors.extend(wasmesh_authz::peer_authentication::validate_all(resources));
    errors.extend(crate::plugins::authz::validate(resources));
    errors.extend(wasmesh_authn::validate(resources));
    errors.extend(crate::plugins::stats::validate(resources));
    if let Err(mut e) =
        crate::bootstrap::outbound_clusters(resources, &wasmesh_istio::Workload::new("validate", "default"))
    {
        errors.append(&mut e);
    }
    errors.extend(refusals(resources));
    for e in policies_compiled(resources) {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    for e in gateway_routes(resources) {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    // The `tcp`/`tls` routes `wasmeshctl envoy` reads for gateway TCP/TLS servers and
    // `--tcp-outbound` listeners.
    for e in crate::gateway::l4_refusals(resources) {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
    errors
}

/// Each AuthorizationPolicy and RequestAuthentication compiled by its filter's own code as if it
/// applied to a workload of its namespace (selector and targetRefs set aside): what the filter
/// would refuse when it configures (bounds on values, ...) is refused by `validate`, whichever
/// workload the policy selects.
fn policies_compiled(resources: &Resources) -> Vec<Error> {
    let mut errors = Vec::new();
    let unscoped = |res: &Resource| {
        let mut r = res.clone();
        match &mut r.spec {
            wasmesh_istio::Spec::AuthorizationPolicy(ap) => {
                ap.selector = None;
                ap.target_ref = None;
                ap.target_refs.clear();
            }
            wasmesh_istio::Spec::RequestAuthentication(ra) => {
                ra.selector = None;
                ra.target_ref = None;
                ra.target_refs.clear();
            }
            _ => {}
        }
        Resources { items: vec![r] }
    };
    for (res, _) in resources.authorization_policies() {
        // Built from JSON (every other field at the filter's default), as the filter reads it.
        let workload = wasmesh_istio::Workload::new("validate", res.namespace());
        let Ok(cfg) = serde_json::from_value::<wasmesh_authz::AuthzConfig>(serde_json::json!({"workload": workload}))
        else {
            continue;
        };
        if let Err(e) = cfg.compile(&unscoped(res)) {
            errors.extend(e.0);
        }
    }
    for (res, _) in resources.request_authentications() {
        let cfg = wasmesh_authn::AuthnConfig::new(wasmesh_istio::Workload::new("validate", res.namespace()));
        if let Err(e) = cfg.compile(&unscoped(res)) {
            errors.extend(e.0);
        }
    }
    errors
}

/// The router compiled as each Istio Gateway's proxy, on each server port, exactly as
/// `wasmeshctl envoy --role gateway` compiles it: what only a gateway refuses (TLS termination
/// on a server, ...) is refused by `validate` too.
fn gateway_routes(resources: &Resources) -> Vec<Error> {
    let mut errors: Vec<Error> = Vec::new();
    for (res, gw) in resources.gateways() {
        let mut wl = wasmesh_istio::Workload::new(format!("gateway-{}", res.name()), res.namespace());
        wl.labels = gw.selector.clone().into_iter().collect();
        wl.mode = wasmesh_istio::ProxyMode::Gateway;
        let mut ports: Vec<u32> = gw.servers.iter().map(|s| s.port.number).collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            let cfg = wasmesh_router::RouterConfig {
                workload: Some(wl.clone()),
                mesh: None,
                gateway_port: Some(port),
                cluster_header: wasmesh_router::DEFAULT_CLUSTER_HEADER.to_string(),
                resources: Vec::new(),
                // As `wasmeshctl envoy` writes it: Envoy's fault filter follows wherever a route
                // injects faults, carried out by fault routes.
                fault_filter: true,
                fault_headers_removed: false,
                fault_routes: true,
                outbound_traffic_policy: None,
                route_policies: true,
                trace_operations: false,
            };
            if let Err(e) = cfg.compile(resources) {
                for e in e.0 {
                    if !errors.contains(&e) {
                        errors.push(e);
                    }
                }
            }
        }
    }
    errors
}

/// [`validate`], plus what `mesh` (`--mesh-config`) adds: the CUSTOM policies' extension providers
/// and every `wasmeshOidc` login entry, whatever it selects.
pub fn validate_with_mesh(resources: &Resources, mesh: &MeshConfig) -> Vec<Error> {
    let mut errors = validate(resources);
    errors.extend(extension_providers(resources, mesh));
    errors.extend(crate::plugins::oidc::validate(mesh));
    errors.extend(crate::plugins::tracing::refusals(resources, mesh));
    errors.extend(crate::plugins::accesslog::validate(resources, mesh));
    errors
}

/// `BLOCKED_CIDRS_IN_JWKS_URIS` from the environment (empty when unset).
pub fn blocked_cidrs_in_jwks_uris() -> Result<BlockedCidrs, Error> {
    match std::env::var(BLOCKED_CIDRS_ENV) {
        Ok(v) => BlockedCidrs::parse_env(&v).map_err(|e| Error::new(format!("{BLOCKED_CIDRS_ENV}={v:?}: {e}"))),
        Err(_) => Ok(BlockedCidrs::default()),
    }
}

/// What wasmesh refuses beyond what Istio refuses: configuration that Istio accepts but that the
/// filters do not implement or cannot enforce, so that nothing is accepted and then ignored.
/// `wasmeshctl validate`, `envoy` and `generate` all refuse these (README "What wasmeshctl
/// refuses"). The JWKS block list is read from the environment.
pub fn refusals(resources: &Resources) -> Vec<Error> {
    match blocked_cidrs_in_jwks_uris() {
        Ok(blocked) => refusals_with(resources, &blocked),
        Err(e) => {
            let mut errors = refusals_with(resources, &BlockedCidrs::default());
            errors.push(e);
            errors
        }
    }
}

/// [`refusals`] with an explicit JWKS block list.
pub fn refusals_with(resources: &Resources, blocked: &BlockedCidrs) -> Vec<Error> {
    let mut errors = Vec::new();
    for (res, t) in resources.telemetries() {
        for (i, m) in t.metrics.iter().enumerate() {
            for (j, p) in m.providers.iter().enumerate() {
                if !p.name.is_empty() && p.name != "prometheus" {
                    errors.push(Error::at(
                        res,
                        format!("spec.metrics[{i}].providers[{j}].name"),
                        format!(
                            "{:?}: wasmesh reports metrics to Prometheus only (provider \"prometheus\"); this \
                             provider's metrics would not be produced",
                            p.name
                        ),
                    ));
                }
            }
        }
        for (field, r) in targets(&t.target_ref, &t.target_refs) {
            errors.push(Error::at(
                res,
                field,
                format!(
                    "{}: Telemetry with targetRefs (Gateway API gateways, waypoints) is not applied by wasmesh yet; \
                     select the workloads with spec.selector instead",
                    describe(r)
                ),
            ));
        }
    }
    for (res, ap) in resources.authorization_policies() {
        waypoint_targets(res, &ap.target_ref, &ap.target_refs, &mut errors);
    }
    for (res, ra) in resources.request_authentications() {
        waypoint_targets(res, &ra.target_ref, &ra.target_refs, &mut errors);
        for (i, rule) in ra.jwt_rules.iter().enumerate() {
            // A key of an inline JWKS that cannot be used is skipped by the filter (as Envoy's
            // JWKS parser skips it): refused here so that no key is silently left out.
            let Some(jwks) = rule.jwks.as_deref().filter(|j| !j.is_empty()) else { continue };
            if let Ok(set) = wasmesh_authn::jwks::parse_jwks(jwks) {
                for skipped in &set.skipped {
                    errors.push(Error::at(
                        res,
                        format!("spec.jwtRules[{i}].jwks"),
                        format!("a key wasmesh cannot use: {skipped}; remove it or replace it with a supported key"),
                    ));
                }
            }
        }
        if blocked.is_empty() {
            continue;
        }
        for (i, rule) in ra.jwt_rules.iter().enumerate() {
            if rule.jwks.as_deref().is_some_and(|j| !j.is_empty()) {
                continue;
            }
            let (field, uri) = match rule.jwks_uri().filter(|u| !u.is_empty()) {
                Some(u) => (format!("spec.jwtRules[{i}].jwksUri"), u.to_string()),
                None => (format!("spec.jwtRules[{i}].issuer"), discovery_uri(&rule.issuer)),
            };
            let Ok(ep) = parse_jwks_uri(&uri) else { continue };
            if let Some((ip, block)) = blocked_address(&ep.host, ep.port, blocked) {
                errors.push(Error::at(
                    res,
                    field,
                    format!(
                        "{uri:?} resolves to {ip}, inside {block} of {BLOCKED_CIDRS_ENV}: istiod would not fetch it \
                         and every token of issuer {:?} would be rejected",
                        rule.issuer
                    ),
                ));
            }
        }
    }
    errors
}

/// The first address of `host` inside a block, as istiod's dialer checks the address it
/// connects to. A host that does not resolve here is left to the filter (it refuses IP
/// addresses in a block at fetch time; Envoy's DNS answers it cannot see).
fn blocked_address(host: &str, port: u16, blocked: &BlockedCidrs) -> Option<(std::net::IpAddr, String)> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return blocked.block_of(ip).map(|b| (ip, b.to_string()));
    }
    let addrs = (host, port).to_socket_addrs().ok()?;
    addrs.map(|a| a.ip()).find_map(|ip| blocked.block_of(ip).map(|b| (ip, b.to_string())))
}

fn targets<'a>(
    one: &'a Option<PolicyTargetReference>,
    many: &'a [PolicyTargetReference],
) -> Vec<(String, &'a PolicyTargetReference)> {
    one.iter()
        .map(|r| ("spec.targetRef".to_string(), r))
        .chain(many.iter().enumerate().map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)))
        .collect()
}

fn describe(r: &PolicyTargetReference) -> String {
    let group = if r.group.is_empty() { String::new() } else { format!("{}/", r.group) };
    format!("{group}{} {}", r.kind, r.name)
}

/// targetRefs other than a Gateway API `Gateway` attach the policy to a waypoint proxy (ambient
/// mode: kind Service, ServiceEntry, or the waypoint's GatewayClass), which wasmesh cannot
/// describe: refused rather than ignored by every sidecar.
fn waypoint_targets(
    res: &Resource,
    one: &Option<PolicyTargetReference>,
    many: &[PolicyTargetReference],
    errors: &mut Vec<Error>,
) {
    for (field, r) in targets(one, many) {
        if r.group == "gateway.networking.k8s.io" && r.kind == "Gateway" {
            continue;
        }
        errors.push(Error::at(
            res,
            format!("{field}.kind"),
            format!(
                "{}: a policy attached to a {} applies to its waypoint proxy (ambient mode), which wasmesh cannot \
                 describe; only Gateway API gateways (group gateway.networking.k8s.io, kind Gateway) are supported \
                 as targetRefs",
                describe(r),
                if r.kind.is_empty() { "target" } else { r.kind.as_str() }
            ),
        ));
    }
}

/// Every CUSTOM policy's extension provider must be in `mesh` and be one wasmesh enforces
/// (otherwise the filter denies every request the policy matches, as istiod does).
pub fn extension_providers(resources: &Resources, mesh: &MeshConfig) -> Vec<Error> {
    let providers = wasmesh_authz::provider::parse_providers(&mesh.extension_providers);
    let mut errors = Vec::new();
    for (res, ap) in resources.authorization_policies() {
        if ap.action != wasmesh_istio::security::Action::Custom {
            continue;
        }
        let name = ap.provider.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
        match providers.get(name) {
            Some(Ok(_)) => {}
            Some(Err(e)) => errors.push(Error::at(
                res,
                "spec.provider.name",
                format!("extension provider {name:?} of the mesh config is refused: {e}; every request this policy matches would be denied"),
            )),
            None => {
                let known: Vec<&String> = providers.keys().collect();
                errors.push(Error::at(
                    res,
                    "spec.provider.name",
                    format!("extension provider {name:?} is not in the mesh config's extensionProviders (found {known:?}); every request this policy matches would be denied"),
                ));
            }
        }
    }
    errors
}

/// What [`check_documents`] found: errors, and notes about documents that were not checked.
#[derive(Debug, Default)]
pub struct SchemaReport {
    /// Istio objects the API server would refuse (CRD schema and CEL rules).
    pub errors: Vec<Error>,
    /// Documents skipped because they are not Istio kinds (`Deployment`, `Service`, Gateway API...).
    pub notes: Vec<String>,
}

/// Checks raw YAML documents against Istio's CRD schemas, as the API server does on `kubectl apply`.
/// `docs` are `(where it was read, the whole object)`. Kinds that are not Istio's (Deployment,
/// Service, ...) are skipped with a note; Gateway API kinds get a note that they are not supported
/// yet. Everything else is checked, and each problem names file, document, resource, field path and
/// Istio's message.
pub fn check_documents<'a>(docs: impl IntoIterator<Item = (&'a Location, &'a serde_json::Value)>) -> SchemaReport {
    use crate::schema::{classify, KindClass};
    let mut report = SchemaReport::default();
    for (location, doc) in docs {
        if doc.is_null() {
            continue; // an empty document between `---` separators
        }
        let api_version = doc.get("apiVersion").and_then(serde_json::Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(serde_json::Value::as_str).unwrap_or("");
        let name = doc.pointer("/metadata/name").and_then(serde_json::Value::as_str).unwrap_or("<unnamed>");
        let namespace = doc.pointer("/metadata/namespace").and_then(serde_json::Value::as_str).unwrap_or("default");
        if !api_version.is_empty() && !kind.is_empty() {
            match classify(api_version, kind) {
                KindClass::Istio => {}
                KindClass::GatewayApi => {
                    report.notes.push(format!(
                        "{location}: {kind} {namespace}/{name} ({api_version}) skipped: Gateway API kinds are not supported yet"
                    ));
                    continue;
                }
                KindClass::Other => {
                    report.notes.push(format!(
                        "{location}: {kind} {namespace}/{name} ({api_version}) skipped: not an Istio kind"
                    ));
                    continue;
                }
            }
        }
        let resource = if kind.is_empty() { None } else { Some(format!("{kind} {namespace}/{name}")) };
        for e in crate::schema::check(doc) {
            report.errors.push(Error {
                location: location.clone(),
                resource: resource.clone(),
                field: (!e.path.is_empty()).then(|| e.path.clone()),
                message: e.message,
            });
        }
    }
    report
}

/// `wasmeshctl validate` over loaded input: Istio's CRD schema and CEL rules on every Istio document
/// (what the API server refuses), then wasmesh's own checks on the typed resources (istiod's webhook
/// checks and what the filters cannot do). A wasmesh error on the same field as an Istio error of the
/// same document (or on a field inside or around it) is left out: it restates the same problem.
/// Returns the errors and the notes (documents skipped).
pub fn validate_input(input: &wasmesh_istio::Input) -> (Vec<Error>, Vec<String>) {
    validate_input_with_mesh(input, None)
}

/// [`validate_input`], with the CUSTOM policies' providers checked against `mesh` when given.
pub fn validate_input_with_mesh(input: &wasmesh_istio::Input, mesh: Option<&MeshConfig>) -> (Vec<Error>, Vec<String>) {
    let schema = check_documents(input.documents.iter().map(|(at, doc)| (at, doc)));
    let mut errors = schema.errors;
    let ours = match mesh {
        Some(mesh) => validate_with_mesh(&input.resources, mesh),
        None => {
            // Tracing refusals need no meshConfig to find a Telemetry naming no provider.
            let mut e = validate(&input.resources);
            e.extend(crate::plugins::tracing::refusals(&input.resources, &MeshConfig::default()));
            e.extend(crate::plugins::accesslog::validate(&input.resources, &MeshConfig::default()));
            e
        }
    };
    for e in ours {
        let restated = errors.iter().any(|s| {
            s.location == e.location
                && match (&s.field, &e.field) {
                    (Some(a), Some(b)) => same_or_nested(a, b),
                    _ => false,
                }
        });
        if !restated {
            errors.push(e);
        }
    }
    let mut notes = schema.notes;
    // Deliberate differences and settings that change what is enforced (helper sec3's rows).
    notes.extend(crate::plugins::authn::deliberate_difference_notes(&input.resources));
    let root = mesh.and_then(|m| m.root_namespace.clone()).unwrap_or_else(|| "istio-system".into());
    notes.extend(crate::plugins::authz::several_providers_notes(&input.resources, &root));
    (errors, notes)
}

/// `a` and `b` are the same field, or one is inside the other (below `spec` itself).
fn same_or_nested(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short == long
        || (short.contains(['.', '[']) && long.starts_with(short) && long[short.len()..].starts_with(['.', '[']))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> serde_json::Value {
        yaml_serde::from_str(yaml).expect("test YAML")
    }

    /// Istio's regexes are RE2: Unicode general categories and scripts (`\pL`, `\p{Greek}`) are
    /// accepted by `wasmeshctl validate` and match as Istio matches them.
    #[test]
    fn unicode_classes_in_virtual_service_regexes_are_accepted_and_match() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: default}\n\
                    spec:\n  hosts: [v.default.svc.cluster.local]\n  http:\n  - match:\n    - uri: {regex: '/\\pL+'}\n\
                    \x20     headers: {x-script: {regex: '\\p{Greek}+'}}\n    route: [{destination: {host: v.default.svc.cluster.local}}]\n";
        let resources = Resources { items: wasmesh_istio::load_str(yaml, "vs.yaml").expect("yaml") };
        assert_eq!(validate(&resources), Vec::new());
        let letters = wasmesh_router::matcher::compile_full_match(r"/\pL+").expect("\\pL");
        assert!(letters.is_match("/héllo".as_bytes()) && letters.is_match("/Ωμέγα".as_bytes()));
        assert!(!letters.is_match(b"/h3llo"));
        let greek = wasmesh_router::matcher::compile_full_match(r"\p{Greek}+").expect("\\p{Greek}");
        assert!(greek.is_match("αβγ".as_bytes()) && !greek.is_match(b"abc"));
    }

    #[test]
    fn schema_errors_name_file_document_resource_field_and_istios_message() {
        let at = Location { file: "policies.yaml".into(), document: 2 };
        let d =
            doc("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\n\
             spec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n");
        let report = check_documents([(&at, &d)]);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(
            report.errors[0].to_string(),
            "policies.yaml (document 3): PeerAuthentication foo/p: spec: portLevelMtls requires selector"
        );
    }

    #[test]
    fn non_istio_kinds_are_skipped_with_a_note_and_gateway_api_is_named() {
        let at = Location { file: "mixed.yaml".into(), document: 0 };
        let deployment = doc("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n");
        let route = doc("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n");
        let report = check_documents([(&at, &deployment), (&at, &route)]);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.notes.len(), 2);
        assert!(
            report.notes[0].contains("Deployment default/web (apps/v1) skipped: not an Istio kind"),
            "{:?}",
            report.notes
        );
        assert!(report.notes[1].contains("Gateway API kinds are not supported yet"), "{:?}", report.notes);
    }

    #[test]
    fn nested_fields_are_one_problem() {
        assert!(same_or_nested("spec.http[0].timeout", "spec.http[0].timeout"));
        assert!(same_or_nested("spec.rules[0].from[0].source", "spec.rules[0].from[0].source.principals"));
        assert!(same_or_nested("spec.selector.matchLabels[app]", "spec.selector.matchLabels"));
        assert!(!same_or_nested("spec", "spec.portLevelMtls"));
        assert!(!same_or_nested("spec.http[1]", "spec.http[10]"));
    }

    #[test]
    fn a_document_without_kind_is_an_error() {
        let at = Location { file: "x.yaml".into(), document: 0 };
        let d = doc("metadata: {name: x}\nspec: {}\n");
        let report = check_documents([(&at, &d)]);
        assert_eq!(report.errors.len(), 2, "{:?}", report.errors);
        assert!(report.errors.iter().any(|e| e.field.as_deref() == Some("kind")));
    }
}
