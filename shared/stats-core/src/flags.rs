//! Envoy response flags for Istio's `response_flags` label: the `response.flags` bit set as
//! `ResponseFlagUtils::toShortString` prints it, which Istio's stats plugin uses. The table and
//! the order Envoy sets them in are [`wasmesh_trace::flags`]' (one table for metrics, access
//! logs and spans): an HTTP request in an HTTP stream's order (`URX,UF`), a TCP connection in
//! `tcp_proxy`'s (`UF,URX`).

use crate::labels::Protocol;
use std::borrow::Cow;
pub use wasmesh_trace::flags::RESPONSE_FLAGS as SHORT_CODES;

/// `-` when no flag is set, else the set codes joined with `,` in the order a request (HTTP,
/// gRPC) or a connection (TCP) sets them. Bits Envoy may add later (beyond the table) are
/// ignored.
pub fn short_string(bits: u64, protocol: Protocol) -> Cow<'static, str> {
    match protocol {
        Protocol::Http | Protocol::Grpc => wasmesh_trace::flags::short_http(bits),
        Protocol::Tcp => wasmesh_trace::flags::short_tcp(bits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_the_order_envoy_sets_them() {
        assert_eq!(short_string(0, Protocol::Http), "-");
        assert_eq!(short_string(1 << 5, Protocol::Http), "UF");
        assert_eq!(short_string(1 << 8, Protocol::Grpc), "NR");
        // Istio's default retries exhausted on a connect failure.
        assert_eq!(short_string((1 << 5) | (1 << 15), Protocol::Http), "URX,UF");
        assert_eq!(short_string((1 << 5) | (1 << 15), Protocol::Grpc), "URX,UF");
        assert_eq!(short_string((1 << 5) | (1 << 15), Protocol::Tcp), "UF,URX");
        assert_eq!(short_string(1 << 12, Protocol::Http), "UAEX");
        assert_eq!(short_string(1 << 28, Protocol::Http), "DR");
        assert_eq!(short_string(1 << 29, Protocol::Tcp), "UDO");
        assert_eq!(short_string(1 << 40, Protocol::Http), "-", "unknown future bits are ignored");
        assert!(matches!(short_string(1 << 2, Protocol::Http), Cow::Borrowed("UT")));
    }
}
