//! The `oidc.wasm` module: its entry point. The filter itself is in [`filter`], which
//! `filters/wasmesh` compiles into the one module serving every wasmesh filter (see
//! filters/router/src/lib.rs).

pub mod filter;

pub use filter::root_context;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(filter::root_context);
}}
