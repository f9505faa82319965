//! wasmesh authn core (pure Rust, no proxy-wasm). Being built: see the authn issue.
#![forbid(unsafe_code)]
