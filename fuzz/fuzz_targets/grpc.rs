//! The gRPC message counts of Envoy's `grpc_stats` filter state as the stats filter reads them
//! (stats-core `grpc::GrpcMessages::parse`) and the gRPC content-type test.
//! Input: any bytes, as the `filter_state` attribute or a `content-type` value.
//! Properties: nothing panics; whatever parses is the two decimal counts the bytes spell, and
//! writing them back gives the same bytes (no other form is accepted).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_stats::grpc::{is_grpc_content_type, GrpcMessages};

fuzz_target!(|data: &[u8]| {
    let _ = is_grpc_content_type(data);
    if let Some(m) = GrpcMessages::parse(data) {
        assert_eq!(format!("{},{}", m.request, m.response).as_bytes(), data);
    }
});
