//! What every wasmesh filter configuration has in common, written once: the proxy's `workload`
//! (absent when it comes from the Envoy node), the `mesh` identity, the Istio `resources` the
//! filter compiles, and the one error type every compiler returns.

use crate::{resources_from_values, Error, MeshIdentity, Resources, Workload};
use serde::de::DeserializeOwned;
use std::fmt;

/// Everything wrong with a configuration, each error naming file, resource, field and value.
/// The one error type of every filter compiler (router, authz, authn, stats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError(pub Vec<Error>);

impl CompileError {
    /// One error without a resource (a configuration-level problem).
    pub fn msg(message: impl Into<String>) -> CompileError {
        CompileError(vec![Error::new(message)])
    }
}

impl From<Error> for CompileError {
    fn from(e: Error) -> CompileError {
        CompileError(vec![e])
    }
}

impl From<Vec<Error>> for CompileError {
    fn from(errors: Vec<Error>) -> CompileError {
        CompileError(errors)
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileError {}

/// A filter's configuration as `wasmeshctl` writes it. The filters and `wasmeshctl` use the
/// provided methods; a core implements the four accessors.
pub trait FilterConfig: DeserializeOwned {
    /// `router`, `authz`, `authn`, `stats`: names the configuration in errors and logs.
    const FILTER: &'static str;

    /// The proxy's workload, when the configuration names it.
    fn workload(&self) -> Option<&Workload>;
    /// Completes a configuration without `workload` (with the one read from the Envoy node).
    fn set_workload(&mut self, workload: Workload);
    /// The `mesh` field as written.
    fn mesh_field(&self) -> Option<&MeshIdentity>;
    /// The `resources` field: Istio resources as JSON objects.
    fn resource_values(&self) -> &[serde_json::Value];

    /// Parses the JSON configuration; the error names the filter and serde's position.
    fn parse_json(bytes: &[u8]) -> Result<Self, CompileError> {
        serde_json::from_slice(bytes).map_err(|e| CompileError::msg(format!("{} configuration: {e}", Self::FILTER)))
    }

    /// `mesh`, or Istio's defaults.
    fn mesh(&self) -> MeshIdentity {
        self.mesh_field().cloned().unwrap_or_default()
    }

    /// The `resources` field as typed Istio resources.
    fn parsed_resources(&self) -> Result<Resources, CompileError> {
        let items = resources_from_values(self.resource_values().to_vec())?;
        Ok(Resources { items })
    }

    /// The workload to compile for; an error when neither the configuration nor the filter (from
    /// the Envoy node, before compiling) supplied one.
    fn require_workload(&self) -> Result<&Workload, CompileError> {
        self.workload().ok_or_else(|| {
            CompileError::msg(format!(
                "{} configuration: workload: absent, and not taken from the Envoy node (the filter does that before compiling)",
                Self::FILTER
            ))
        })
    }
}

/// Implements [`FilterConfig`] for a configuration struct with the fields every filter
/// configuration has: `workload: Option<Workload>`, `mesh: Option<MeshIdentity>` and
/// `resources: Vec<serde_json::Value>`. `filter_config!(AuthzConfig, "authz");`
#[macro_export]
macro_rules! filter_config {
    ($ty:ty, $name:literal) => {
        impl $crate::FilterConfig for $ty {
            const FILTER: &'static str = $name;

            fn workload(&self) -> Option<&$crate::Workload> {
                self.workload.as_ref()
            }
            fn set_workload(&mut self, workload: $crate::Workload) {
                self.workload = Some(workload);
            }
            fn mesh_field(&self) -> Option<&$crate::MeshIdentity> {
                self.mesh.as_ref()
            }
            fn resource_values(&self) -> &[::serde_json::Value] {
                &self.resources
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Demo {
        workload: Option<Workload>,
        mesh: Option<MeshIdentity>,
        #[serde(default)]
        resources: Vec<serde_json::Value>,
    }

    crate::filter_config!(Demo, "demo");

    #[test]
    fn errors_name_the_filter_and_join_with_semicolons() {
        let Err(e) = Demo::parse_json(b"{\"workload\": 3}") else { panic!("accepted a number as workload") };
        assert!(e.to_string().contains(": demo configuration: invalid type"), "{e}");
        let two = CompileError(vec![Error::new("a"), Error::new("b")]);
        assert_eq!(two.to_string(), "<config>: a; <config>: b");
    }

    #[test]
    fn a_missing_workload_is_refused_and_mesh_defaults_to_istio() {
        let Ok(d) = Demo::parse_json(b"{}") else { panic!("refused an empty configuration") };
        let Err(e) = d.require_workload() else { panic!("no workload accepted") };
        assert!(e.to_string().contains("demo configuration: workload: absent"), "{e}");
        assert_eq!(d.mesh(), MeshIdentity::default());
        assert!(d.parsed_resources().is_ok_and(|r| r.items.is_empty()));
    }
}
