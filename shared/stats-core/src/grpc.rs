//! Counting gRPC messages in a body stream: each message is framed as 1 flag byte, a 4-byte
//! big-endian length, then the message (gRPC over HTTP/2, "Length-Prefixed-Message").
//!
//! Istio counts them with Envoy's `grpc_stats` filter; a wasm filter has to read the frames
//! itself. The adapter asks [`GrpcFrameCounter::skippable`] first, so a chunk that lies wholly
//! inside a message is never copied out of Envoy.
#![deny(clippy::indexing_slicing)]

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcFrameCounter {
    /// Messages whose header has been seen.
    pub messages: u64,
    /// Bytes of the current message still to come.
    remaining: u64,
    /// Header bytes seen so far (0..5) and the header.
    have: usize,
    header: [u8; 5],
}

impl GrpcFrameCounter {
    /// Whether a chunk of `len` bytes holds no frame header, so it can be skipped unread.
    pub fn skippable(&self, len: usize) -> bool {
        self.have == 0 && self.remaining >= len as u64
    }

    /// Accounts for a chunk that [`skippable`](Self::skippable) said holds no header.
    pub fn skip(&mut self, len: usize) {
        self.remaining = self.remaining.saturating_sub(len as u64);
    }

    /// Feeds the bytes of one chunk.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.have == 0 && self.remaining > 0 {
                let n = (self.remaining.min(chunk.len() as u64)) as usize;
                self.remaining -= n as u64;
                chunk = chunk.get(n..).unwrap_or_default();
                continue;
            }
            let take = (5 - self.have).min(chunk.len());
            let (head, rest) = chunk.split_at(take);
            if let Some(dst) = self.header.get_mut(self.have..self.have + take) {
                dst.copy_from_slice(head);
            }
            self.have += take;
            chunk = rest;
            if self.have == 5 {
                self.messages += 1;
                let [_, a, b, c, d] = self.header;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                self.have = 0;
            }
        }
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

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn counts_messages_across_any_chunking() {
        let mut stream = Vec::new();
        for len in [0usize, 3, 100, 1, 70_000, 5] {
            stream.extend(frame(len));
        }
        for chunk_size in [1usize, 2, 4, 5, 6, 7, 64, 1000, 100_000] {
            let mut c = GrpcFrameCounter::default();
            for chunk in stream.chunks(chunk_size) {
                if c.skippable(chunk.len()) {
                    c.skip(chunk.len());
                } else {
                    c.feed(chunk);
                }
            }
            assert_eq!(c.messages, 6, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn skips_chunks_inside_a_message() {
        let mut c = GrpcFrameCounter::default();
        c.feed(&frame(10)[..5]);
        assert!(c.skippable(10));
        assert!(!c.skippable(11));
        c.skip(10);
        assert!(!c.skippable(1));
        assert_eq!(c.messages, 1);
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
