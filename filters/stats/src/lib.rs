//! The `stats.wasm` module: its entry point. The filter itself is in [`filter`], a file that
//! `filters/wasmesh` compiles into the one module serving every wasmesh filter; only this file
//! differs between the two, because a wasm module has one `_initialize` (see
//! filters/wasmesh/src/lib.rs for why the code is shared as a source file, not a dependency).

pub mod access_log;
pub mod access_log_export;
pub mod filter;

pub use filter::root_context;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(filter::root_context);
}}
