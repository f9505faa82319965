//! wasmeshctl as a library: reading Istio YAML, validating it, and writing Envoy configuration.
#![forbid(unsafe_code)]

pub mod plugins;
