//! PeerAuthentication: which mutual-TLS mode a sidecar enforces on each inbound port.
//!
//! Istio's semantics (istio.io `docs/reference/config/security/peer_authentication`, istiod
//! `pilot/pkg/model/authentication.go` and `pilot/pkg/security/authn/policy_applier.go`):
//!
//! - Candidates are the PeerAuthentications in the workload's namespace and in the root
//!   namespace (meshConfig `rootNamespace`) whose `selector.matchLabels` is a subset of the
//!   workload's labels (no selector, or an empty one, selects every workload).
//! - Scope: no selector (or empty `matchLabels`) in the root namespace = **mesh-wide**; no
//!   selector elsewhere = **namespace-wide**; a non-empty selector outside the root namespace =
//!   **workload**. A policy with a selector in the root namespace is ignored by istiod.
//! - Precedence: workload > namespace > mesh > the default, PERMISSIVE. `UNSET` (or no `mtls`)
//!   inherits from the next wider scope; a port-level `UNSET` inherits the workload's
//!   effective mode.
//! - Several policies in one scope: Istio keeps the oldest (`creationTimestamp`), then the
//!   first by name, then by namespace. Timestamps are not part of the YAML wasmesh reads, so the
//!   first by name wins here, and every ignored policy is reported in [`PeerAuthnPolicy::warnings`].
//! - `portLevelMtls` is keyed by the workload (container) port, only allowed with a selector;
//!   `portLevelMtls: {}` and port 0 are rejected (istiod `ValidatePeerAuthentication`).
//!
//! PeerAuthentication governs sidecar **inbound** traffic only. A gateway's listeners follow their
//! Gateway `tls` settings, and outbound traffic follows the destination's policy; callers must
//! not use [`PeerAuthnPolicy::admits`] on those listeners.

use std::collections::BTreeMap;
use wasmesh_istio::security::PeerAuthentication;
use wasmesh_istio::{Error, Resource, Resources, Workload};

pub use wasmesh_istio::security::MtlsMode;

/// Where an effective mode comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// No policy decided: Istio's default, PERMISSIVE.
    Default,
    /// The root-namespace policy without selector.
    Mesh,
    /// The workload namespace's policy without selector.
    Namespace,
    /// A policy with a selector that selects this workload.
    Workload,
    /// `portLevelMtls` of the workload policy.
    Port,
}

/// An effective mode and the policy that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Never [`MtlsMode::Unset`].
    pub mode: MtlsMode,
    pub scope: Scope,
    /// `PeerAuthentication <ns>/<name>` that set the mode, `None` for the default.
    pub policy: Option<String>,
}

/// The compiled PeerAuthentication view of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthnPolicy {
    workload: Decision,
    ports: BTreeMap<u32, Decision>,
    warnings: Vec<String>,
}

impl Default for PeerAuthnPolicy {
    /// No PeerAuthentication at all: PERMISSIVE on every port.
    fn default() -> Self {
        PeerAuthnPolicy {
            workload: Decision { mode: MtlsMode::Permissive, scope: Scope::Default, policy: None },
            ports: BTreeMap::new(),
            warnings: Vec::new(),
        }
    }
}

impl PeerAuthnPolicy {
    /// Composes the PeerAuthentications that apply to `workload` as istiod does. Errors name the
    /// resource and field of every invalid policy that applies to the workload (an invalid
    /// policy is never half-applied; Istio's webhook would have rejected it).
    pub fn compile(workload: &Workload, resources: &Resources) -> Result<Self, Vec<Error>> {
        let root = workload.root_namespace.as_str();
        let mut errors = Vec::new();
        let mut mesh: Option<(&Resource, &PeerAuthentication)> = None;
        let mut namespace: Option<(&Resource, &PeerAuthentication)> = None;
        let mut selected: Option<(&Resource, &PeerAuthentication)> = None;
        let mut warnings = Vec::new();

        for (res, pa) in candidates(workload, resources) {
            errors.extend(validate(res, pa));
            let slot = if !pa.has_workload_selector() {
                if res.namespace() == root {
                    &mut mesh
                } else {
                    &mut namespace
                }
            } else if res.namespace() != root {
                &mut selected
            } else {
                warnings.push(format!(
                    "{}: ignored: a PeerAuthentication with a selector in the root namespace {root:?} applies to no workload (istiod ignores it)",
                    res.display_name()
                ));
                continue;
            };
            match slot {
                None => *slot = Some((res, pa)),
                Some((kept, _)) => {
                    let (winner, loser) = if order_key(res) < order_key(kept) { (res, *kept) } else { (*kept, res) };
                    warnings.push(format!(
                        "{}: ignored: {} has the same scope and wins (Istio keeps the oldest; without creationTimestamp the first by name)",
                        loser.display_name(),
                        winner.display_name()
                    ));
                    if std::ptr::eq(winner, res) {
                        *slot = Some((res, pa));
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let mut out = PeerAuthnPolicy { warnings, ..Default::default() };
        for (scope, found) in [(Scope::Mesh, mesh), (Scope::Namespace, namespace), (Scope::Workload, selected)] {
            if let Some((res, pa)) = found {
                if pa.mode() != MtlsMode::Unset {
                    out.workload = Decision { mode: pa.mode(), scope, policy: Some(res.display_name()) };
                }
            }
        }
        if let Some((res, pa)) = selected {
            for (&port, mtls) in pa.port_level_mtls.iter().flatten() {
                let decision = if mtls.mode == MtlsMode::Unset {
                    out.workload.clone()
                } else {
                    Decision { mode: mtls.mode, scope: Scope::Port, policy: Some(res.display_name()) }
                };
                out.ports.insert(port, decision);
            }
        }
        Ok(out)
    }

    /// The workload-level effective mode (ports without a port-level setting use it).
    pub fn mode(&self) -> MtlsMode {
        self.workload.mode
    }

    /// The effective mode for a workload port: never [`MtlsMode::Unset`].
    pub fn mode_for_port(&self, port: u32) -> MtlsMode {
        self.explain(port).mode
    }

    /// The effective mode for a port and which policy set it.
    pub fn explain(&self, port: u32) -> &Decision {
        self.ports.get(&port).unwrap_or(&self.workload)
    }

    /// Whether a connection to `port` is acceptable: STRICT requires mTLS; PERMISSIVE and
    /// DISABLE accept both (under DISABLE the listener offers no TLS at all, so a peer cannot
    /// arrive over mTLS there).
    pub fn admits(&self, port: u32, mtls: bool) -> bool {
        mtls || self.mode_for_port(port) != MtlsMode::Strict
    }

    /// Ports with a port-level mode (`portLevelMtls` of the selected workload policy), with
    /// their effective mode.
    pub fn port_overrides(&self) -> impl Iterator<Item = (u32, MtlsMode)> + '_ {
        self.ports.iter().map(|(p, d)| (*p, d.mode))
    }

    /// Policies that apply in scope but were not used, with the reason (for `wasmeshctl validate`
    /// and configure-time logs).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// The PeerAuthentications istiod considers for a workload: its namespace and the root
/// namespace, selector a subset of the workload's labels.
fn candidates<'r>(
    workload: &'r Workload,
    resources: &'r Resources,
) -> impl Iterator<Item = (&'r Resource, &'r PeerAuthentication)> + 'r {
    resources.peer_authentications().filter(move |(res, pa)| {
        (res.namespace() == workload.namespace || res.namespace() == workload.root_namespace)
            && pa.selector.as_ref().is_none_or(|s| s.selects(&workload.labels))
    })
}

/// Istio's tie-break for equal creation times: name, then namespace.
fn order_key(res: &Resource) -> (&str, &str) {
    (res.name(), res.namespace())
}

/// Istio's validation of one PeerAuthentication (`ValidatePeerAuthentication` and the CRD's
/// rules); the same checks `wasmeshctl validate` reports.
pub fn validate(res: &Resource, pa: &PeerAuthentication) -> Vec<Error> {
    let mut errors = Vec::new();
    if let Some(ports) = &pa.port_level_mtls {
        if !pa.has_workload_selector() {
            errors.push(Error::at(
                res,
                "spec.portLevelMtls",
                "portLevelMtls requires a selector with matchLabels (a mesh- or namespace-wide PeerAuthentication cannot have port-level mTLS)",
            ));
        }
        if ports.is_empty() {
            errors.push(Error::at(res, "spec.portLevelMtls", "if present, portLevelMtls must have at least one port"));
        }
        for &port in ports.keys() {
            if port == 0 || port > 65535 {
                errors.push(Error::at(
                    res,
                    format!("spec.portLevelMtls.{port}"),
                    format!("port {port} is not in 1-65535"),
                ));
            }
        }
    }
    if let Some(selector) = &pa.selector {
        for (k, v) in &selector.match_labels {
            if k.is_empty() {
                errors.push(Error::at(res, "spec.selector.matchLabels", format!("empty label key (value {v:?})")));
            }
            if k.contains('*') || v.contains('*') {
                errors.push(Error::at(
                    res,
                    format!("spec.selector.matchLabels.{k}"),
                    format!("wildcard is not supported in a selector: {k}={v}"),
                ));
            }
        }
    }
    errors
}

/// Validates every PeerAuthentication in `resources`, whatever workload it selects.
pub fn validate_all(resources: &Resources) -> Vec<Error> {
    resources.peer_authentications().flat_map(|(res, pa)| validate(res, pa)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
        let mut w = Workload::new("app-v1", ns);
        w.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        w
    }

    fn load(yaml: &str) -> Resources {
        match wasmesh_istio::load_str(yaml, "pa.yaml") {
            Ok(items) => Resources { items },
            Err(e) => panic!("test YAML does not load: {e}"),
        }
    }

    fn pa(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn compile(w: &Workload, yaml: &str) -> PeerAuthnPolicy {
        match PeerAuthnPolicy::compile(w, &load(yaml)) {
            Ok(p) => p,
            Err(e) => panic!("unexpected errors: {e:?}"),
        }
    }

    fn errors(w: &Workload, yaml: &str) -> Vec<String> {
        match PeerAuthnPolicy::compile(w, &load(yaml)) {
            Ok(p) => panic!("expected errors, got {p:?}"),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn no_policy_is_permissive_on_every_port() {
        let p = compile(&workload("foo", &[]), "");
        assert_eq!(p.mode(), MtlsMode::Permissive);
        assert_eq!(p.mode_for_port(8080), MtlsMode::Permissive);
        assert_eq!(p.explain(1).scope, Scope::Default);
        assert!(p.admits(8080, false) && p.admits(8080, true));
        assert_eq!(p, PeerAuthnPolicy::default());
    }

    #[test]
    fn mesh_wide_policy_applies_to_every_namespace() {
        let y = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        for ns in ["foo", "bar", "istio-system"] {
            let p = compile(&workload(ns, &[("app", "a")]), &y);
            assert_eq!(p.mode_for_port(80), MtlsMode::Strict, "{ns}");
            assert_eq!(p.explain(80).scope, Scope::Mesh);
            assert_eq!(p.explain(80).policy.as_deref(), Some("PeerAuthentication istio-system/default"));
        }
    }

    #[test]
    fn root_namespace_follows_the_workload_configuration() {
        let y = pa("mesh-root", "default", "{mtls: {mode: STRICT}}");
        assert_eq!(
            compile(&workload("foo", &[]), &y).mode(),
            MtlsMode::Permissive,
            "istio-system is not the root here"
        );
        let mut w = workload("foo", &[]);
        w.root_namespace = "mesh-root".into();
        assert_eq!(compile(&w, &y).mode(), MtlsMode::Strict);
    }

    #[test]
    fn namespace_policy_overrides_mesh_and_applies_only_to_its_namespace() {
        let y = pa("istio-system", "default", "{mtls: {mode: STRICT}}")
            + &pa("foo", "default", "{mtls: {mode: PERMISSIVE}}");
        let p = compile(&workload("foo", &[]), &y);
        assert_eq!((p.mode(), p.explain(1).scope), (MtlsMode::Permissive, Scope::Namespace));
        assert_eq!(compile(&workload("bar", &[]), &y).mode(), MtlsMode::Strict);
    }

    #[test]
    fn workload_policy_overrides_namespace_and_needs_matching_labels() {
        let y = pa("foo", "default", "{mtls: {mode: STRICT}}")
            + &pa("foo", "httpbin", "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}}");
        let p = compile(&workload("foo", &[("app", "httpbin"), ("version", "v1")]), &y);
        assert_eq!((p.mode(), p.explain(1).scope), (MtlsMode::Disable, Scope::Workload));
        assert_eq!(compile(&workload("foo", &[("app", "sleep")]), &y).mode(), MtlsMode::Strict);
        assert_eq!(compile(&workload("foo", &[]), &y).mode(), MtlsMode::Strict);
        // A selector in another namespace never selects this workload.
        let y = pa("bar", "httpbin", "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: DISABLE}}");
        assert_eq!(compile(&workload("foo", &[("app", "httpbin")]), &y).mode(), MtlsMode::Permissive);
    }

    #[test]
    fn unset_inherits_from_the_parent_scope() {
        let mesh = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        // Namespace UNSET → mesh STRICT; workload without mtls → namespace → mesh.
        let y = mesh.clone()
            + &pa("foo", "ns", "{mtls: {mode: UNSET}}")
            + &pa("foo", "wl", "{selector: {matchLabels: {app: a}}}");
        let p = compile(&workload("foo", &[("app", "a")]), &y);
        assert_eq!((p.mode(), p.explain(1).scope), (MtlsMode::Strict, Scope::Mesh));
        // Mesh UNSET (and `mtls: {}`) → the default PERMISSIVE.
        let y = pa("istio-system", "default", "{mtls: {}}") + &pa("foo", "ns", "{}");
        let p = compile(&workload("foo", &[]), &y);
        assert_eq!((p.mode(), p.explain(1).scope), (MtlsMode::Permissive, Scope::Default));
        // Workload UNSET under namespace DISABLE → DISABLE.
        let y = mesh
            + &pa("foo", "ns", "{mtls: {mode: DISABLE}}")
            + &pa("foo", "wl", "{selector: {matchLabels: {app: a}}, mtls: {mode: UNSET}}");
        assert_eq!(compile(&workload("foo", &[("app", "a")]), &y).mode(), MtlsMode::Disable);
    }

    #[test]
    fn port_level_mtls_overrides_per_port_and_unset_ports_inherit() {
        let y = pa("istio-system", "default", "{mtls: {mode: STRICT}}")
            + &pa(
                "foo",
                "httpbin",
                "{selector: {matchLabels: {app: httpbin}}, portLevelMtls: {8080: {mode: DISABLE}, 9000: {mode: UNSET}, 9001: {mode: PERMISSIVE}}}",
            );
        let p = compile(&workload("foo", &[("app", "httpbin")]), &y);
        assert_eq!(p.mode(), MtlsMode::Strict, "workload mode inherited from mesh");
        assert_eq!(p.mode_for_port(8080), MtlsMode::Disable);
        assert_eq!(p.explain(8080).scope, Scope::Port);
        assert_eq!(p.mode_for_port(9000), MtlsMode::Strict, "UNSET port inherits the workload mode");
        assert_eq!(p.explain(9000).scope, Scope::Mesh);
        assert_eq!(p.mode_for_port(9001), MtlsMode::Permissive);
        assert_eq!(p.mode_for_port(80), MtlsMode::Strict);
        assert!(!p.admits(80, false) && p.admits(80, true));
        assert!(p.admits(8080, false) && p.admits(9001, false));
        assert!(!p.admits(9000, false));
        let ports: Vec<_> = p.port_overrides().collect();
        assert_eq!(ports, vec![(8080, MtlsMode::Disable), (9000, MtlsMode::Strict), (9001, MtlsMode::Permissive)]);
    }

    #[test]
    fn strict_workload_with_a_permissive_port() {
        // The example of Istio's PeerAuthentication reference page.
        let y = pa("foo", "default", "{mtls: {mode: STRICT}}")
            + &pa("foo", "finance", "{selector: {matchLabels: {app: finance}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}");
        let p = compile(&workload("foo", &[("app", "finance")]), &y);
        assert_eq!(p.mode_for_port(8080), MtlsMode::Disable);
        assert_eq!(p.mode_for_port(8081), MtlsMode::Strict);
    }

    #[test]
    fn selector_policy_in_root_namespace_is_ignored_with_a_warning() {
        let y = pa("istio-system", "sel", "{selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}}");
        let p = compile(&workload("foo", &[("app", "a")]), &y);
        assert_eq!(p.mode(), MtlsMode::Permissive);
        assert_eq!(p.warnings().len(), 1);
        assert!(p.warnings()[0].contains("PeerAuthentication istio-system/sel"), "{:?}", p.warnings());
        // Also for a workload living in the root namespace.
        assert_eq!(compile(&workload("istio-system", &[("app", "a")]), &y).mode(), MtlsMode::Permissive);
    }

    #[test]
    fn empty_selector_means_namespace_wide() {
        let y = pa("foo", "ns", "{selector: {matchLabels: {}}, mtls: {mode: STRICT}}");
        let p = compile(&workload("foo", &[]), &y);
        assert_eq!((p.mode(), p.explain(1).scope), (MtlsMode::Strict, Scope::Namespace));
        let y = pa("istio-system", "mesh", "{selector: {}, mtls: {mode: STRICT}}");
        assert_eq!(compile(&workload("bar", &[]), &y).explain(1).scope, Scope::Mesh);
    }

    #[test]
    fn several_policies_in_one_scope_first_by_name_wins() {
        let y = pa("foo", "zeta", "{mtls: {mode: DISABLE}}") + &pa("foo", "alpha", "{mtls: {mode: STRICT}}");
        let p = compile(&workload("foo", &[]), &y);
        assert_eq!(p.mode(), MtlsMode::Strict);
        assert_eq!(p.warnings().len(), 1);
        assert!(p.warnings()[0].starts_with("PeerAuthentication foo/zeta: ignored"), "{:?}", p.warnings());
        // Whatever the order in the files.
        let y = pa("foo", "alpha", "{mtls: {mode: STRICT}}") + &pa("foo", "zeta", "{mtls: {mode: DISABLE}}");
        assert_eq!(compile(&workload("foo", &[]), &y).mode(), MtlsMode::Strict);
        // Workload scope: the losing policy's port settings are not merged in.
        let y = pa("foo", "b", "{selector: {matchLabels: {app: a}}, portLevelMtls: {80: {mode: DISABLE}}}")
            + &pa("foo", "a", "{selector: {matchLabels: {version: v1}}, mtls: {mode: STRICT}}");
        let p = compile(&workload("foo", &[("app", "a"), ("version", "v1")]), &y);
        assert_eq!(p.mode_for_port(80), MtlsMode::Strict);
        assert_eq!(p.port_overrides().count(), 0);
    }

    #[test]
    fn port_level_without_selector_is_an_error() {
        let e = errors(
            &workload("foo", &[]),
            &pa("foo", "ns", "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}"),
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("PeerAuthentication foo/ns: spec.portLevelMtls: portLevelMtls requires a selector"),
            "{e:?}"
        );
        let e = errors(
            &workload("foo", &[]),
            &pa("foo", "ns", "{selector: {matchLabels: {}}, portLevelMtls: {8080: {mode: DISABLE}}}"),
        );
        assert!(e[0].contains("requires a selector"), "{e:?}");
    }

    #[test]
    fn empty_port_map_port_zero_and_big_ports_are_errors() {
        let w = workload("foo", &[("app", "a")]);
        let e = errors(&w, &pa("foo", "p", "{selector: {matchLabels: {app: a}}, portLevelMtls: {}}"));
        assert!(e[0].contains("at least one port"), "{e:?}");
        let e = errors(
            &w,
            &pa(
                "foo",
                "p",
                "{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}, 70000: {mode: STRICT}}}",
            ),
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].contains("spec.portLevelMtls.0: port 0 is not in 1-65535"), "{e:?}");
        assert!(e[1].contains("spec.portLevelMtls.70000"), "{e:?}");
    }

    #[test]
    fn wildcard_selector_is_an_error() {
        let e = validate_all(&load(&pa("foo", "p", "{selector: {matchLabels: {app: 'a*'}}, mtls: {mode: STRICT}}")));
        assert_eq!(e.len(), 1);
        assert!(e[0].to_string().contains("spec.selector.matchLabels.app: wildcard is not supported"), "{e:?}");
    }

    #[test]
    fn invalid_policies_that_do_not_apply_do_not_break_this_workload() {
        let y = pa("bar", "bad", "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}")
            + &pa("foo", "other", "{selector: {matchLabels: {app: other}}, portLevelMtls: {}}");
        assert_eq!(compile(&workload("foo", &[("app", "a")]), &y).mode(), MtlsMode::Permissive);
        assert_eq!(validate_all(&load(&y)).len(), 2);
    }

    #[test]
    fn other_kinds_are_ignored() {
        let y = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: foo}\nspec: {}\n".to_string()
            + &pa("foo", "ns", "{mtls: {mode: STRICT}}");
        assert_eq!(compile(&workload("foo", &[]), &y).mode(), MtlsMode::Strict);
    }

    #[test]
    fn compiles_from_filter_config_json() {
        // The filter receives resources as JSON (string port keys): same result as from YAML.
        let json = r#"[{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "p", "namespace": "foo"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "mtls": {"mode": "STRICT"},
                     "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}}]"#;
        let items = match wasmesh_istio::resources_from_json(json.as_bytes()) {
            Ok(items) => items,
            Err(e) => panic!("{e}"),
        };
        let p = match PeerAuthnPolicy::compile(&workload("foo", &[("app", "a")]), &Resources { items }) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        };
        assert_eq!(p.mode_for_port(8080), MtlsMode::Permissive);
        assert_eq!(p.mode_for_port(8081), MtlsMode::Strict);
    }
}
