//! Which policies apply to a workload: istiod's `ListAuthorizationPolicies` and
//! `WorkloadPolicyMatcher.ShouldAttachPolicy` (`pilot/pkg/model/authorization.go`,
//! `policyattachment.go`).

use crate::GATEWAY_NAME_LABEL;
use wasmesh_istio::{PolicyTargetReference, Resource, Workload, WorkloadSelector};

/// The `targetRef`/`targetRefs` of a policy, the legacy single `targetRef` counting when
/// `targetRefs` is empty.
pub fn target_refs<'a>(
    target_ref: &'a Option<PolicyTargetReference>,
    target_refs: &'a [PolicyTargetReference],
) -> Vec<&'a PolicyTargetReference> {
    if !target_refs.is_empty() {
        target_refs.iter().collect()
    } else {
        target_ref.iter().collect()
    }
}

/// Whether a policy of `res`'s namespace with this selector / targetRefs attaches to `wl`.
/// Only policies of the root namespace and of the workload's namespace are candidates.
pub fn applies(
    wl: &Workload,
    res: &Resource,
    selector: &Option<WorkloadSelector>,
    target_ref: &Option<PolicyTargetReference>,
    refs: &[PolicyTargetReference],
) -> bool {
    let ns = res.namespace();
    if ns != wl.root_namespace && ns != wl.namespace {
        return false;
    }
    let selected = || selector.as_ref().is_none_or(|s| s.selects(&wl.labels));
    let refs = target_refs(target_ref, refs);
    let Some(gateway_name) = wl.labels.get(GATEWAY_NAME_LABEL) else {
        // Sidecars and classic gateways: a policy with targetRefs is ignored altogether.
        return refs.is_empty() && selected();
    };
    if refs.is_empty() {
        // ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY (default true).
        return selected();
    }
    refs.iter().any(|r| {
        ns == wl.namespace
            && (r.namespace.is_empty() || r.namespace == wl.namespace)
            && r.group == "gateway.networking.k8s.io"
            && r.kind == "Gateway"
            && &r.name == gateway_name
    })
}
