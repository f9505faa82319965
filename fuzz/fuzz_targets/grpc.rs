//! gRPC Length-Prefixed-Message framing of a body stream (stats-core `grpc::GrpcFrameCounter`)
//! and the gRPC content-type test.
//! Input: a body; its first byte picks where the body is cut into chunks, as Envoy hands a body
//! over in pieces.
//! Properties: nothing panics; the message count does not depend on how the body is cut, nor on
//! whether the adapter skips the chunks `skippable` allows; it equals an independent count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_stats::grpc::{is_grpc_content_type, GrpcFrameCounter};

/// Counts frames the plain way: header, skip the message, repeat.
fn reference(mut body: &[u8]) -> u64 {
    let mut n = 0;
    // A message counts once its 5-byte header is whole.
    while body.len() >= 5 {
        n += 1;
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        body = body.get(5 + len..).unwrap_or_default();
    }
    n
}

fuzz_target!(|data: &[u8]| {
    let _ = is_grpc_content_type(data);
    let Some((&cut, body)) = data.split_first() else { return };

    let mut whole = GrpcFrameCounter::default();
    whole.feed(body);
    assert_eq!(whole.messages, reference(body));

    // Chunks of varying sizes derived from `cut`; the adapter's fast path skips what it can.
    let mut chunked = GrpcFrameCounter::default();
    let mut skipping = GrpcFrameCounter::default();
    let mut rest = body;
    let mut size = usize::from(cut % 13) + 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunked.feed(chunk);
        if skipping.skippable(chunk.len()) {
            skipping.skip(chunk.len());
        } else {
            skipping.feed(chunk);
        }
        rest = tail;
        size = (size * 7 + usize::from(cut)) % 29 + 1;
    }
    assert_eq!(chunked.messages, whole.messages);
    assert_eq!(skipping.messages, whole.messages);
});
