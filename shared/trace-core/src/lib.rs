//! Distributed tracing as an Istio proxy does it, without hostcalls: the pure core of the
//! `wasmesh.tracing` phase and of the batching exporter every telemetry export uses.
//!
//! - [`context`]: the incoming trace context (W3C `traceparent`/`tracestate`, B3 multi-header and
//!   single `b3`), validated as their specifications say, and the headers sent upstream (both
//!   formats at once, as Istio 1.28 propagates them);
//! - [`request_id`]: `x-request-id` (UUIDv4) and Envoy's sampling on it;
//! - [`span`]: the proxy's span with Envoy's and Istio's tags;
//! - [`otlp`], [`zipkin`]: the two wire formats (OTLP/HTTP protobuf, Zipkin v2 JSON);
//! - [`export`]: a bounded queue flushed in batches on ticks, with retries and backoff;
//! - [`flags`]: Envoy's response flags as `%RESPONSE_FLAGS%` prints them (for spans, access
//!   logs and metrics alike).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub mod config;
pub mod context;
pub mod decorator;
pub mod export;
pub mod flags;
pub mod otlp;
pub mod request_id;
pub mod span;
pub mod zipkin;

/// Ids for spans and traces: SplitMix64 seeded once per VM from the host's entropy. Span ids
/// are not secrets; they must only be unique with high probability.
#[derive(Debug, Clone)]
pub struct Ids {
    state: u64,
}

impl Ids {
    pub fn new(seed: u64) -> Ids {
        Ids { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A span id: never zero (zero is invalid in W3C and B3).
    pub fn span_id(&mut self) -> u64 {
        loop {
            let v = self.next_u64();
            if v != 0 {
                return v;
            }
        }
    }

    /// A 128-bit trace id, never zero.
    pub fn trace_id(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.span_id())
    }
}

/// Lower-case hex of `n` in `digits` digits.
pub(crate) fn hex(n: u128, digits: usize) -> String {
    format!("{n:0digits$x}")
}

/// Parses exactly `len` lower-case hex digits (W3C and B3 ids are lower-case only).
pub(crate) fn parse_lower_hex(s: &str, len: usize) -> Option<u128> {
    if s.len() != len || len > 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}
