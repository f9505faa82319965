//! Envoy's response flags: the `response.flags` bit set as `%RESPONSE_FLAGS%` /
//! `ResponseFlagUtils::toShortString` prints it. The one table for the access log
//! (`wasmesh-accesslog`), Istio's `response_flags` metric label (`wasmesh-stats`) and span tags.
//!
//! Envoy keeps the flags of a stream as a vector in the order they were SET
//! (`StreamInfoImpl::setResponseFlag` appends a flag not yet set) and `toShortString` joins that
//! vector with `,` (envoy `source/common/stream_info/utility.cc` `ResponseFlagUtils::toString`).
//! wasm reads only the bit set (`response.flags`, bit i = `CoreResponseFlag` i), so the order
//! is rebuilt from where in a stream's life each flag is set:
//!
//! - HTTP ([`HTTP_SET_ORDER`]): the connection manager's request checks (DPE, IH), then the
//!   filters before the router in Istio's chain order (NFCF, LH, ext_authz's UAEX, the fault
//!   filter's DI then FI, rate limits RL/RLSE inserted before the router, the cache's RFCF),
//!   then the router: the route and cluster (NR, NC, DF, DO, UH); then, when an upstream
//!   attempt fails, `maybeRetryReset` sets the retry verdict (UO: retry overflow, URX: retry
//!   limit exceeded) BEFORE `onUpstreamAbort` sets the failure's own flag
//!   (`streamResetReasonToResponseFlag`: UF, UC, LR, UR, UPE, OM; a per-try timeout's UT; UMSDR
//!   after its own retry check); last what ends a stream from the outside (SI, DT, DC, DR, UDO).
//!   So a connect failure after Istio's 2 retries is `URX,UF`, with a fault delay first
//!   `DI,URX,UF` (envoy `source/common/router/router.cc`).
//! - TCP ([`short_tcp`]): `tcp_proxy` sets UF on each failed connect and URX when it gives up
//!   (`onConnectMaxAttempts`), which is the table order: `UF,URX`.
//!
//! Flags that never occur together can sit anywhere; the order matters only for those that do.
//! Bits beyond the table (flags Envoy may add later) are ignored.

use std::borrow::Cow;

/// Envoy's core response flags: bit `i` of `response.flags` is entry `i` (envoy
/// `source/common/stream_info/utility.h` `CORE_RESPONSE_FLAGS`, Envoy 1.40).
pub const RESPONSE_FLAGS: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH",
    "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
];

/// `NC` (no cluster found) as a bit of `response.flags`.
pub const NO_CLUSTER_FOUND: u64 = 1 << 24;

/// The order an HTTP stream sets the flags in (bit indices into [`RESPONSE_FLAGS`]; see the
/// module documentation for why each sits where it does).
pub const HTTP_SET_ORDER: [u8; 30] = [
    18, // DPE: the codec, before any filter
    17, // IH: the connection manager's request header checks
    21, // NFCF: a filter without its configuration
    0,  // LH: the health check filter
    12, // UAEX: ext_authz (Istio puts authorization before the fault filter)
    9,  // DI: the fault filter's delay, set when the delay starts
    10, // FI: the fault filter's abort, after its delay
    11, // RL: rate limits (inserted before the router, after the fault filter)
    13, // RLSE
    20, // RFCF: the cache filter answers instead of the router
    8,  // NR: the router finds no route
    24, // NC: no cluster
    26, // DF: DNS resolution failed
    27, // DO: drop overload
    1,  // UH: no healthy host (also on a retry that finds none)
    7,  // UO: the retry verdict (overflow) ...
    15, // URX: ... or retry limit exceeded, before the failure's own flag
    5,  // UF: the final attempt's reset reason (onUpstreamAbort)
    6,  // UC
    3,  // LR
    4,  // UR
    23, // UPE
    25, // OM
    2,  // UT: the route timeout or the last per-try timeout
    19, // UMSDR
    16, // SI: what ends the stream from outside the router
    22, // DT
    14, // DC
    28, // DR
    29, // UDO
];

/// Which stream's order to print in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// An HTTP request ([`HTTP_SET_ORDER`]).
    Http,
    /// A TCP connection (`tcp_proxy`: the table order).
    Tcp,
}

/// `-` when no flag is set, else the set flags' short codes joined with `,` in `order`.
pub fn short(bits: u64, order: Order) -> Cow<'static, str> {
    let known = bits & ((1u64 << RESPONSE_FLAGS.len()) - 1);
    if known == 0 {
        return Cow::Borrowed("-");
    }
    if known.is_power_of_two() {
        // One flag (the usual case): no allocation.
        if let Some(code) = RESPONSE_FLAGS.get(known.trailing_zeros() as usize) {
            return Cow::Borrowed(code);
        }
    }
    let mut out = String::with_capacity(16);
    let mut push = |i: usize| {
        if let (true, Some(code)) = (known & (1u64 << i) != 0, RESPONSE_FLAGS.get(i)) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(code);
        }
    };
    match order {
        Order::Http => HTTP_SET_ORDER.iter().for_each(|i| push(*i as usize)),
        Order::Tcp => (0..RESPONSE_FLAGS.len()).for_each(push),
    }
    Cow::Owned(out)
}

/// [`short`] for an HTTP request.
pub fn short_http(bits: u64) -> Cow<'static, str> {
    short(bits, Order::Http)
}

/// [`short`] for a TCP connection.
pub fn short_tcp(bits: u64) -> Cow<'static, str> {
    short(bits, Order::Tcp)
}

/// The bit of a short code (`None`: not a core flag).
pub fn bit(code: &str) -> Option<u64> {
    RESPONSE_FLAGS.iter().position(|c| *c == code).map(|i| 1u64 << i)
}

#[cfg(test)]
#[allow(clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn no_cluster_found_is_the_nc_bit() {
        assert_eq!(NO_CLUSTER_FOUND, bits(&["NC"]));
    }

    fn bits(codes: &[&str]) -> u64 {
        codes.iter().map(|c| bit(c).unwrap_or_else(|| panic!("no flag {c}"))).fold(0, |a, b| a | b)
    }

    #[test]
    fn the_http_order_is_a_permutation_of_the_table() {
        let mut seen = [false; 30];
        for i in HTTP_SET_ORDER {
            assert!(!seen[i as usize], "{} twice", RESPONSE_FLAGS[i as usize]);
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        // Every flag alone prints as itself in both orders.
        for (i, code) in RESPONSE_FLAGS.iter().enumerate() {
            assert_eq!(short_http(1 << i), *code);
            assert_eq!(short_tcp(1 << i), *code);
            assert!(matches!(short_http(1 << i), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn none_and_unknown_bits() {
        assert_eq!(short_http(0), "-");
        assert_eq!(short_tcp(0), "-");
        assert_eq!(short_http(1 << 40), "-", "unknown future bits are ignored");
        assert_eq!(short_http((1 << 40) | bits(&["UF"])), "UF");
        assert_eq!(short_http(u64::MAX).split(',').count(), 30);
    }

    #[test]
    fn http_prints_the_retry_verdict_before_the_failure() {
        // The router: maybeRetryReset (URX/UO) before onUpstreamAbort (the reset's flag).
        assert_eq!(short_http(bits(&["UF", "URX"])), "URX,UF");
        assert_eq!(short_http(bits(&["UC", "URX"])), "URX,UC");
        assert_eq!(short_http(bits(&["UR", "URX"])), "URX,UR");
        assert_eq!(short_http(bits(&["UPE", "URX"])), "URX,UPE");
        assert_eq!(short_http(bits(&["LR", "URX"])), "URX,LR");
        assert_eq!(short_http(bits(&["UT", "URX"])), "URX,UT", "the last per-try timeout");
        assert_eq!(short_http(bits(&["UF", "UO"])), "UO,UF", "retry overflow");
        assert_eq!(short_http(bits(&["UMSDR", "URX"])), "URX,UMSDR");
        // A filter before the router sets its flag first.
        assert_eq!(short_http(bits(&["UF", "URX", "DI"])), "DI,URX,UF");
        assert_eq!(short_http(bits(&["DI", "FI"])), "DI,FI");
        assert_eq!(short_http(bits(&["DI", "UH"])), "DI,UH");
        assert_eq!(short_http(bits(&["DI", "RL"])), "DI,RL");
        assert_eq!(short_http(bits(&["DI", "DC"])), "DI,DC", "the client leaves during the delay");
        assert_eq!(short_http(bits(&["URX", "UF", "DC"])), "URX,UF,DC");
    }

    #[test]
    fn tcp_keeps_tcp_proxys_order() {
        // tcp_proxy: UF per failed connect, then URX when it gives up.
        assert_eq!(short_tcp(bits(&["UF", "URX"])), "UF,URX");
        assert_eq!(short_tcp(bits(&["UH", "UF"])), "UH,UF");
    }
}
