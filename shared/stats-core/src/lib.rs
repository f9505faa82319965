//! wasmesh stats core (pure Rust, no proxy-wasm). Being built: see the stats issue.
#![forbid(unsafe_code)]
