//! wasmesh authz filter: thin proxy-wasm adapter over wasmesh-authz.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
