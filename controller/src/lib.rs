//! wasmeshctl as a library: reading Istio YAML, validating it, and writing Envoy configuration.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod certs;
pub mod check;
pub mod dashboard;
pub mod egress;
pub mod filter_docs;
pub mod gateway;
pub mod generate;
pub mod image;
pub mod input;
pub mod layout;
pub mod mesh;
pub mod module;
pub mod plugins;
pub mod schema;
pub mod sidecar_l4;
pub mod traces;
pub mod traffic_policy;
pub mod validate;
pub mod xds;

pub use bootstrap::{build, workload_from_entry, Inbound, ProxySpec};
pub use layout::Layout;
pub use mesh::MeshConfig;
