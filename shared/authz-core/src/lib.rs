//! wasmesh authz core (pure Rust, no proxy-wasm). Being built: see the authz issue.
#![forbid(unsafe_code)]
