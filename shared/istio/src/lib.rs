//! Istio resources as wasmesh reads them: the same multi-document YAML people `kubectl apply`.
//!
//! Every kind is a typed, `deny_unknown_fields` serde struct, so a misspelt field is an error
//! that names the file, the resource, the field path and what was expected, never a silent no-op.
//! Semantic checks that serde cannot express (weights, regexes, ports, durations) live in
//! [`validate`] and in the cores that compile these resources.
#![forbid(unsafe_code)]

pub mod duration;
mod filter_config;
mod load;
mod meta;
pub mod module;
pub mod networking;
pub mod node;
pub mod security;
pub mod telemetry;
pub mod validate;
pub mod workload;

pub use duration::parse_duration;
pub use filter_config::{CompileError, FilterConfig};
pub use load::{
    load_dir_or_files, load_inputs, load_str, resources_from_json, resources_from_values, yaml_to_json, Error, Input,
    LoadFailure, LoadOptions, Loader, Location,
};
pub use meta::{ObjectMeta, PolicyTargetReference, WorkloadSelector};
pub use networking::{
    DestinationRule, Gateway, PortProtocol, ServiceEntry, StringMatch, VirtualService, WorkloadEntry,
};
pub use node::{MeshIdentity, NodeMetadata, Strictness};
pub use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use telemetry::Telemetry;
pub use workload::{fqdn, ProxyMode, Workload};

use serde::{Deserialize, Serialize};

/// The default Kubernetes DNS suffix Istio uses to expand short host names.
pub const DEFAULT_DOMAIN_SUFFIX: &str = "cluster.local";
/// Istio's default root namespace (meshConfig.rootNamespace).
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// The Istio kinds wasmesh understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    AuthorizationPolicy,
    RequestAuthentication,
    PeerAuthentication,
    Telemetry,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::PeerAuthentication,
        Kind::Telemetry,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Telemetry => "Telemetry",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService | Kind::DestinationRule | Kind::Gateway | Kind::ServiceEntry | Kind::WorkloadEntry => {
                "networking.istio.io"
            }
            Kind::AuthorizationPolicy | Kind::RequestAuthentication | Kind::PeerAuthentication => "security.istio.io",
            Kind::Telemetry => "telemetry.istio.io",
        }
    }

    /// API versions Istio serves for this kind (from Istio's CRDs).
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            "networking.istio.io" => &["v1", "v1beta1", "v1alpha3"],
            "security.istio.io" => &["v1", "v1beta1"],
            _ => &["v1", "v1alpha1"],
        }
    }
}

/// One typed resource spec.
#[allow(clippy::large_enum_variant)] // parsed once per resource; boxing buys nothing here
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec")]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    PeerAuthentication(PeerAuthentication),
    Telemetry(Telemetry),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::Telemetry(_) => Kind::Telemetry,
        }
    }
}

/// A resource read from a file: its metadata, typed spec and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub spec: Spec,
    /// Where the resource was read (file and document index); not part of Istio's object.
    #[serde(default, skip_serializing_if = "Location::is_unknown")]
    pub location: Location,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// The namespace, `default` when the YAML names none (as `kubectl apply` would).
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// `Kind namespace/name`, the way errors name a resource.
    pub fn display_name(&self) -> String {
        format!("{} {}/{}", self.kind().name(), self.namespace(), self.name())
    }
}

/// The set of resources a controller or filter works with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    pub items: Vec<Resource>,
}

impl Resources {
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.items.iter().filter(move |r| r.kind() == kind)
    }

    pub fn virtual_services(&self) -> impl Iterator<Item = (&Resource, &VirtualService)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::VirtualService(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn destination_rules(&self) -> impl Iterator<Item = (&Resource, &DestinationRule)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::DestinationRule(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn gateways(&self) -> impl Iterator<Item = (&Resource, &Gateway)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::Gateway(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn service_entries(&self) -> impl Iterator<Item = (&Resource, &ServiceEntry)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::ServiceEntry(v) => Some((r, v)),
            _ => None,
        })
    }
    /// ServiceEntries of `workload`'s namespace whose `workloadSelector` selects it: the
    /// services the workload backs.
    pub fn service_entries_selecting<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = (&'a Resource, &'a ServiceEntry)> + 'a {
        self.service_entries().filter(move |(res, se)| {
            res.namespace() == workload.namespace
                && se
                    .workload_selector
                    .as_ref()
                    .is_some_and(|sel| sel.labels.iter().all(|(k, v)| workload.labels.get(k) == Some(v)))
        })
    }
    pub fn workload_entries(&self) -> impl Iterator<Item = (&Resource, &WorkloadEntry)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::WorkloadEntry(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn authorization_policies(&self) -> impl Iterator<Item = (&Resource, &AuthorizationPolicy)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::AuthorizationPolicy(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn request_authentications(&self) -> impl Iterator<Item = (&Resource, &RequestAuthentication)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::RequestAuthentication(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn peer_authentications(&self) -> impl Iterator<Item = (&Resource, &PeerAuthentication)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::PeerAuthentication(v) => Some((r, v)),
            _ => None,
        })
    }
    pub fn telemetries(&self) -> impl Iterator<Item = (&Resource, &Telemetry)> {
        self.items.iter().filter_map(|r| match &r.spec {
            Spec::Telemetry(v) => Some((r, v)),
            _ => None,
        })
    }
}
