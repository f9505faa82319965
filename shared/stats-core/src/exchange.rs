//! Istio's TCP metadata exchange: the preamble two sidecars write before the application bytes
//! of an mTLS connection whose negotiated ALPN is `istio-peer-exchange`.
//!
//! Wire format (istio/proxy `source/extensions/filters/network/metadata_exchange/`,
//! `metadata_exchange_initial_header.h` and `metadata_exchange.cc`):
//!
//! ```text
//! u32 magic   0x3D230467, big-endian
//! u32 length  of what follows, big-endian
//! google.protobuf.Any {
//!   type_url: "type.googleapis.com/google.protobuf.Struct",
//!   value:    Struct { "x-envoy-peer-metadata": <the node's metadata Struct>,
//!                      "x-envoy-peer-metadata-id": <the node id> } }
//! ```
//!
//! The metadata Struct has the same keys as the HTTP exchange header (see [`crate::peer`]), so
//! the peer is read with the same code.
//!
//! In a wasm network filter the host keeps whatever the filter did not let through: returning
//! `Pause` from `on_downstream_data`/`on_upstream_data` leaves the bytes in Envoy's buffer and
//! the next call sees all of them. [`PreambleReader`] is written for that: each call looks at
//! the first bytes of everything buffered so far and says wait, pass unchanged, or strip.
#![deny(clippy::indexing_slicing)]

use crate::peer::{from_struct, LocalInfo, PeerMetadata, HEADER_METADATA, HEADER_METADATA_ID, MAX_ID_BYTES};
use crate::proto::{Struct, Value};
use prost::Message;

/// The ALPN a client sidecar offers, and a server sidecar selects, when both run the exchange.
pub const ALPN: &str = "istio-peer-exchange";
/// `MetadataExchangeInitialHeader::magic_number`.
pub const MAGIC: u32 = 0x3D23_0467;
/// Magic and length.
pub const HEADER_LEN: usize = 8;
/// Largest preamble body accepted. A real peer's metadata is a few hundred bytes; anything
/// larger is not waited for (the connection's bytes pass unchanged and the peer stays unknown).
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// `google.protobuf.Any.type_url` of the body.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";

/// `google.protobuf.Any` (any.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Any {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// This proxy's preamble: header and body, ready to be put in front of the first bytes it sends.
pub fn encode_preamble(local: &LocalInfo) -> Vec<u8> {
    let mut data = Struct::default();
    data.fields.insert(HEADER_METADATA.to_string(), Value::structure(local.to_struct()));
    if !local.node_id.is_empty() {
        data.fields.insert(HEADER_METADATA_ID.to_string(), Value::string(&local.node_id));
    }
    let body = Any { type_url: STRUCT_TYPE_URL.to_string(), value: data.encode_to_vec() }.encode_to_vec();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    // The body of our own metadata is far below 4 GiB.
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What the first bytes of a stream say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Fewer than [`HEADER_LEN`] bytes, all consistent with the magic: wait for more.
    NeedMore,
    /// Not the magic: the peer sends no preamble.
    NotPreamble,
    /// The magic with a body larger than [`MAX_PAYLOAD_BYTES`].
    TooLarge(u32),
    /// A preamble of `total` bytes (header included).
    Frame { total: usize },
}

/// Reads the header from the first (up to [`HEADER_LEN`]) bytes of a stream.
pub fn inspect_header(first: &[u8]) -> Header {
    let magic = MAGIC.to_be_bytes();
    let n = first.len().min(4);
    if first.get(..n) != magic.get(..n) {
        return Header::NotPreamble;
    }
    let Some(&[a, b, c, d]) = first.get(4..8) else { return Header::NeedMore };
    let len = u32::from_be_bytes([a, b, c, d]);
    match usize::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD_BYTES => Header::Frame { total: HEADER_LEN + l },
        _ => Header::TooLarge(len),
    }
}

/// The peer in a preamble body (the bytes after the header). `None` when the body is not an
/// `Any` holding a `Struct`, or the Struct names no known field.
pub fn decode_body(body: &[u8]) -> Option<PeerMetadata> {
    if body.len() > MAX_PAYLOAD_BYTES {
        return None;
    }
    let any = Any::decode(body).ok()?;
    if any.type_url != STRUCT_TYPE_URL {
        return None;
    }
    let data = Struct::decode(any.value.as_slice()).ok()?;
    let mut peer = from_struct(data.get_struct(HEADER_METADATA)?);
    if peer == PeerMetadata::default() {
        return None;
    }
    if let Some(id) = data.get_str(HEADER_METADATA_ID) {
        if id.len() <= MAX_ID_BYTES {
            peer.id = id.to_string();
        }
    }
    Some(peer)
}

/// What the filter does with the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep the bytes buffered (`Action::Pause`): the preamble is not complete yet.
    Wait,
    /// Let the bytes through unchanged; the exchange is over (done earlier, or given up).
    Pass,
    /// Remove the first `len` bytes (the preamble) and let the rest through; `body` is what
    /// follows the header, for [`decode_body`].
    Strip { len: usize, body: Vec<u8> },
}

/// Why an exchange ended without a peer, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    NotPreamble,
    TooLarge,
    /// The stream ended (or the host could not give the bytes) before the preamble was whole.
    Truncated,
}

/// Reads the peer's preamble from the front of one direction of a connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PreambleReader {
    done: bool,
    gave_up: Option<GiveUp>,
}

impl PreambleReader {
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Why the exchange was given up, if it was.
    pub fn gave_up(&self) -> Option<GiveUp> {
        self.gave_up
    }

    fn give_up(&mut self, why: GiveUp) -> Step {
        self.done = true;
        self.gave_up = Some(why);
        Step::Pass
    }

    /// One data callback. `buffered` is the number of bytes the host holds for this direction
    /// (everything since the last `Pass`/`Strip`, since `Wait` leaves them in place);
    /// `peek(n)` returns the first `n` of them (`n <= buffered`). At most
    /// `HEADER_LEN + MAX_PAYLOAD_BYTES` bytes are ever asked for.
    pub fn step(
        &mut self,
        buffered: usize,
        end_of_stream: bool,
        mut peek: impl FnMut(usize) -> Option<Vec<u8>>,
    ) -> Step {
        if self.done {
            return Step::Pass;
        }
        let wait_or_truncated =
            |this: &mut Self| if end_of_stream { this.give_up(GiveUp::Truncated) } else { Step::Wait };
        if buffered == 0 {
            return wait_or_truncated(self);
        }
        let Some(first) = peek(buffered.min(HEADER_LEN)) else { return self.give_up(GiveUp::Truncated) };
        match inspect_header(&first) {
            Header::NotPreamble => self.give_up(GiveUp::NotPreamble),
            Header::TooLarge(_) => self.give_up(GiveUp::TooLarge),
            Header::NeedMore => wait_or_truncated(self),
            Header::Frame { total } if buffered < total => wait_or_truncated(self),
            Header::Frame { total } => {
                let Some(frame) = peek(total) else { return self.give_up(GiveUp::Truncated) };
                if frame.len() != total {
                    return self.give_up(GiveUp::Truncated);
                }
                self.done = true;
                Step::Strip { len: total, body: frame.get(HEADER_LEN..).unwrap_or_default().to_vec() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmesh_istio::Workload;

    fn local(name: &str) -> LocalInfo {
        let mut w = Workload::new(name, "default");
        w.labels.insert("app".into(), "tcp-echo".into());
        w.labels.insert("version".into(), "v1".into());
        LocalInfo::from_workload(&w)
    }

    /// Envoy's side of a network filter: bytes arrive in chunks; `Wait` keeps them buffered,
    /// `Strip` drains the front, `Pass` lets everything through. Returns what the next filter
    /// received and the peer.
    fn drive(chunks: &[&[u8]], eos_at_end: bool) -> (Vec<u8>, Option<PeerMetadata>, PreambleReader, usize) {
        let mut reader = PreambleReader::default();
        let mut buffer: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut peer = None;
        let mut waits = 0;
        for (i, c) in chunks.iter().enumerate() {
            buffer.extend_from_slice(c);
            let eos = eos_at_end && i + 1 == chunks.len();
            let mut asked = 0;
            let step = reader.step(buffer.len(), eos, |n| {
                asked = asked.max(n);
                assert!(n <= buffer.len() && n <= HEADER_LEN + MAX_PAYLOAD_BYTES);
                Some(buffer[..n].to_vec())
            });
            match step {
                Step::Wait => {
                    waits += 1;
                    continue;
                }
                Step::Pass => {}
                Step::Strip { len, body } => {
                    peer = decode_body(&body);
                    buffer.drain(..len);
                }
            }
            out.append(&mut buffer);
        }
        (out, peer, reader, waits)
    }

    #[test]
    fn preamble_layout_matches_istio() {
        let p = encode_preamble(&local("tcp-echo-v1"));
        assert_eq!(&p[..4], &[0x3D, 0x23, 0x04, 0x67]);
        let len = u32::from_be_bytes([p[4], p[5], p[6], p[7]]) as usize;
        assert_eq!(len, p.len() - HEADER_LEN);
        let any = Any::decode(&p[HEADER_LEN..]).unwrap();
        assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
        let s = Struct::decode(any.value.as_slice()).unwrap();
        let md = s.get_struct("x-envoy-peer-metadata").unwrap();
        assert_eq!(md.get_str("WORKLOAD_NAME"), Some("tcp-echo-v1"));
        assert_eq!(md.get_str("NAMESPACE"), Some("default"));
        assert_eq!(s.get_str("x-envoy-peer-metadata-id"), Some(local("tcp-echo-v1").node_id.as_str()));
        // Deterministic: the same metadata gives the same bytes (the peer cache keys on them).
        assert_eq!(p, encode_preamble(&local("tcp-echo-v1")));
        assert!(p.len() < 1024, "a few hundred bytes: {}", p.len());
    }

    #[test]
    fn whole_preamble_then_app_bytes() {
        let p = encode_preamble(&local("tcp-client-v1"));
        let mut first = p.clone();
        first.extend_from_slice(b"hello");
        let (out, peer, reader, waits) = drive(&[&first, b" world"], false);
        assert_eq!(out, b"hello world");
        let peer = peer.unwrap();
        assert_eq!(peer.workload, "tcp-client-v1");
        assert_eq!(peer.app, "tcp-echo");
        assert_eq!(peer.id, local("tcp-client-v1").node_id);
        assert!(reader.is_done() && reader.gave_up().is_none());
        assert_eq!(waits, 0);
    }

    #[test]
    fn preamble_split_at_every_byte() {
        let p = encode_preamble(&local("tcp-client-v1"));
        let mut stream = p.clone();
        stream.extend_from_slice(b"PING\r\n");
        // One byte per read.
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let (out, peer, _, waits) = drive(&chunks, false);
        assert_eq!(out, b"PING\r\n");
        assert_eq!(peer.unwrap().workload, "tcp-client-v1");
        assert_eq!(waits, p.len() - 1);
        // Every split point into two reads.
        for cut in 1..stream.len() {
            let (out, peer, _, _) = drive(&[&stream[..cut], &stream[cut..]], false);
            assert_eq!(out, b"PING\r\n", "cut at {cut}");
            assert_eq!(peer.map(|p| p.workload).as_deref(), Some("tcp-client-v1"), "cut at {cut}");
        }
    }

    #[test]
    fn no_magic_passes_everything_unchanged() {
        let (out, peer, reader, waits) = drive(&[b"GET / HTTP/1.1\r\n", b"x"], false);
        assert_eq!(out, b"GET / HTTP/1.1\r\nx");
        assert!(peer.is_none());
        assert_eq!(reader.gave_up(), Some(GiveUp::NotPreamble));
        assert_eq!(waits, 0);
        // A prefix of the magic waits; the first byte that differs gives up with nothing lost.
        let (out, _, reader, waits) = drive(&[&[0x3D], &[0x23], &[0x00, b'a']], false);
        assert_eq!(out, [0x3D, 0x23, 0x00, b'a']);
        assert_eq!(reader.gave_up(), Some(GiveUp::NotPreamble));
        assert_eq!(waits, 2);
        // A server that speaks first with a 1-byte greeting is never held.
        let (out, _, _, waits) = drive(&[b"\n"], false);
        assert_eq!((out.as_slice(), waits), (&b"\n"[..], 0));
    }

    #[test]
    fn oversized_preamble_is_not_waited_for() {
        let mut big = MAGIC.to_be_bytes().to_vec();
        big.extend_from_slice(&((MAX_PAYLOAD_BYTES + 1) as u32).to_be_bytes());
        big.extend_from_slice(b"rest");
        let (out, peer, reader, _) = drive(&[&big], false);
        assert_eq!(out, big, "nothing consumed, nothing lost");
        assert!(peer.is_none());
        assert_eq!(reader.gave_up(), Some(GiveUp::TooLarge));
        assert_eq!(inspect_header(&[0x3D, 0x23, 0x04, 0x67, 0xff, 0xff, 0xff, 0xff]), Header::TooLarge(u32::MAX));
        // Exactly the limit is accepted (and waited for).
        let mut at = MAGIC.to_be_bytes().to_vec();
        at.extend_from_slice(&(MAX_PAYLOAD_BYTES as u32).to_be_bytes());
        assert_eq!(inspect_header(&at), Header::Frame { total: HEADER_LEN + MAX_PAYLOAD_BYTES });
    }

    #[test]
    fn truncated_preamble_at_end_of_stream_passes_what_came() {
        let p = encode_preamble(&local("c"));
        let (out, peer, reader, _) = drive(&[&p[..3]], true);
        assert_eq!(out, &p[..3]);
        assert!(peer.is_none());
        assert_eq!(reader.gave_up(), Some(GiveUp::Truncated));
        let (out, _, reader, _) = drive(&[&p[..10], &p[10..20]], true);
        assert_eq!(out, &p[..20]);
        assert_eq!(reader.gave_up(), Some(GiveUp::Truncated));
        // An empty end of stream before anything arrived.
        let mut r = PreambleReader::default();
        assert_eq!(r.step(0, true, |_| None), Step::Pass);
        let mut r = PreambleReader::default();
        assert_eq!(r.step(0, false, |_| None), Step::Wait);
        // The host failing to give the bytes is a give-up, not a panic.
        let mut r = PreambleReader::default();
        assert_eq!(r.step(5, false, |_| None), Step::Pass);
        assert_eq!(r.gave_up(), Some(GiveUp::Truncated));
        let mut r = PreambleReader::default();
        assert_eq!(r.step(p.len(), false, |n| Some(p[..n.min(8)].to_vec())), Step::Pass, "short read of the frame");
    }

    #[test]
    fn well_framed_garbage_is_stripped_without_a_peer() {
        // Magic and a consistent length but a body that is no Any/Struct: it is the peer's
        // preamble (framed), so it never reaches the application; the peer stays unknown.
        let mut g = MAGIC.to_be_bytes().to_vec();
        g.extend_from_slice(&3u32.to_be_bytes());
        g.extend_from_slice(&[0xff, 0xff, 0xff]);
        g.extend_from_slice(b"app");
        let (out, peer, reader, _) = drive(&[&g], false);
        assert_eq!(out, b"app");
        assert!(peer.is_none());
        assert!(reader.is_done() && reader.gave_up().is_none());
        // Wrong type URL, missing metadata key, empty metadata.
        let wrong = Any { type_url: "type.googleapis.com/google.protobuf.Value".into(), value: vec![] }.encode_to_vec();
        assert!(decode_body(&wrong).is_none());
        let empty = Any { type_url: STRUCT_TYPE_URL.into(), value: Struct::default().encode_to_vec() }.encode_to_vec();
        assert!(decode_body(&empty).is_none());
        let mut s = Struct::default();
        s.fields.insert(HEADER_METADATA.into(), Value::structure(Struct::default()));
        let no_fields = Any { type_url: STRUCT_TYPE_URL.into(), value: s.encode_to_vec() }.encode_to_vec();
        assert!(decode_body(&no_fields).is_none());
        // Arbitrary bytes never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode_body(&bytes);
            let mut framed = MAGIC.to_be_bytes().to_vec();
            framed.extend_from_slice(&(len as u32).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let (out, _, _, _) = drive(&[&framed, b"z"], false);
            assert_eq!(out, b"z");
        }
    }

    #[test]
    fn reader_is_done_after_one_preamble() {
        let p = encode_preamble(&local("c"));
        let mut twice = p.clone();
        twice.extend_from_slice(&p);
        let (out, peer, _, _) = drive(&[&twice], false);
        assert!(peer.is_some());
        assert_eq!(out, p, "a second preamble is application data");
    }

    #[test]
    fn istio_node_id_is_optional() {
        let mut l = local("x");
        l.node_id.clear();
        let p = encode_preamble(&l);
        let peer = decode_body(&p[HEADER_LEN..]).unwrap();
        assert_eq!(peer.id, "");
        assert_eq!(peer.workload, "x");
    }
}
