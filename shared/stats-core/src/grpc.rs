//! gRPC requests: the content type that makes a request gRPC, and the message counts Envoy's
//! `grpc_stats` filter leaves in filter state.
//!
//! Istio counts messages (`istio_request_messages_total`, `istio_response_messages_total`) from
//! the filter state object `envoy.filters.http.grpc_stats` that istiod's `grpc_stats` filter
//! (`emit_filter_state: true`, in every HTTP chain it writes) sets for a gRPC request and
//! updates as it sees each message frame go by (istio/proxy `istio_stats.cc`, `reportHelper`;
//! istio/istio `pilot/pkg/xds/filters`, `GrpcStats`). Without the object (no such filter in the
//! chain, or a request answered before the filter saw it) Istio's stats filter adds nothing to
//! the message counters, and so does wasmesh: [`GrpcMessages::parse`] is `None` then.
#![deny(clippy::indexing_slicing)]

/// The key of the filter state object Envoy's `grpc_stats` filter emits.
pub const GRPC_STATS_FILTER_STATE: &str = "envoy.filters.http.grpc_stats";

/// Message counts of one gRPC stream, as Envoy's `grpc_stats` filter counted them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcMessages {
    pub request: u64,
    pub response: u64,
}

impl GrpcMessages {
    /// The object as the attribute `filter_state["envoy.filters.http.grpc_stats"]` gives it:
    /// its textual form `<request_message_count>,<response_message_count>` (`GrpcStatsObject::
    /// serializeAsString`, which Envoy's CEL `filter_state` map returns for an object without
    /// field reflection). Anything else is `None`: telemetry fails open, no count is invented.
    pub fn parse(value: &[u8]) -> Option<GrpcMessages> {
        let text = std::str::from_utf8(value).ok()?;
        let (req, resp) = text.split_once(',')?;
        // Decimal as `absl::StrCat` writes it: digits, no sign, no leading zero.
        let number = |s: &str| -> Option<u64> {
            let canonical = s == "0" || (!s.starts_with('0') && !s.is_empty());
            if !canonical || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(GrpcMessages { request: number(req)?, response: number(resp)? })
    }
}

/// Whether a `content-type` is gRPC (`application/grpc`, `application/grpc+proto`, ...), as
/// Envoy's `Grpc::Common::isGrpcRequestHeaders` decides.
pub fn is_grpc_content_type(ct: &[u8]) -> bool {
    const P: &[u8] = b"application/grpc";
    match ct.split_at_checked(P.len()) {
        Some((head, rest)) => head.eq_ignore_ascii_case(P) && matches!(rest.first(), None | Some(b'+' | b';')),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_stats_object_in_its_textual_form() {
        assert_eq!(GrpcMessages::parse(b"2,3"), Some(GrpcMessages { request: 2, response: 3 }));
        assert_eq!(GrpcMessages::parse(b"0,0"), Some(GrpcMessages::default()));
        let max = format!("{},{}", u64::MAX, u64::MAX);
        assert_eq!(GrpcMessages::parse(max.as_bytes()), Some(GrpcMessages { request: u64::MAX, response: u64::MAX }));
    }

    #[test]
    fn anything_else_counts_nothing() {
        for bad in [
            &b""[..],
            b",",
            b"2",
            b"2,",
            b",3",
            b"2,3,4",
            b"02,3",
            b"2,00",
            b"-1,3",
            b"+1,3",
            b" 2,3",
            b"2,3\n",
            b"18446744073709551616,0",
            b"\xff,1",
            // the protobuf `FilterObject` (fields 1 and 2), were Envoy ever to hand that over
            b"\x08\x02\x10\x03",
        ] {
            assert_eq!(GrpcMessages::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"Application/GRPC;charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpc-web"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert!(!is_grpc_content_type(b""));
    }
}
