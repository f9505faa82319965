//! wasmesh authn filter: thin proxy-wasm adapter over wasmesh-authn.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
