//! `wasmeshctl validate`: everything wasmesh would refuse, before anything is deployed.

use wasmesh_istio::{Error, Resources};

/// All problems in `resources`, each naming file, resource, field and value.
pub fn validate(resources: &Resources) -> Vec<Error> {
    let mut errors = wasmesh_router::validate(resources);
    errors.extend(wasmesh_authz::peer_authentication::validate_all(resources));
    errors.extend(crate::plugins::authz::validate(resources));
    errors.extend(wasmesh_authn::validate(resources));
    errors.extend(crate::plugins::stats::validate(resources));
    if let Err(mut e) = crate::bootstrap::outbound_clusters(resources, &wasmesh_istio::Workload::new("validate", "default")) {
        errors.append(&mut e);
    }
    errors
}
