//! wasmesh stats filter: thin proxy-wasm adapter over wasmesh-stats.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
