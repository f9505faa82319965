//! `wasmeshctl validate`: everything wasmesh would refuse, before anything is deployed.

use wasmesh_istio::{Error, Location, Resources};

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
    let schema = check_documents(input.documents.iter().map(|(at, doc)| (at, doc)));
    let mut errors = schema.errors;
    for e in validate(&input.resources) {
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
    (errors, schema.notes)
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
