//! Istio's metadata exchange: the `x-envoy-peer-metadata` header (base64 `google.protobuf.Struct`,
//! stats-core `peer::decode_peer`), the TCP preamble (`exchange::inspect_header`, `decode_body`,
//! `PreambleReader`), endpoint metadata (`peer::from_endpoint_metadata`) and the per-VM
//! `PeerCache` (`peer_cache`).
//! Input: any bytes, read as each of these; the first byte also cuts the stream into reads.
//! Properties: nothing panics; the preamble reader strips exactly the frame the header announces
//! and never asks for more than the limit; what this proxy encodes, a peer decodes back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_stats::exchange::{
    self, decode_body, inspect_header, Header, PreambleReader, Step, HEADER_LEN, MAX_PAYLOAD_BYTES,
};
use wasmesh_stats::peer::{self, decode_peer, from_endpoint_metadata, LocalInfo};
use wasmesh_stats::peer_cache::PeerCache;

fuzz_target!(|data: &[u8]| {
    // The header value as a peer sends it, with an id.
    let (meta, id) = wasmesh_fuzz::split_nul(data);
    let decoded = decode_peer(meta, Some(id));
    if let Some(p) = &decoded {
        assert!(p.labels.len() <= peer::MAX_PEER_LABELS);
        assert!(p.id.len() <= peer::MAX_ID_BYTES);
    }
    let mut cache = PeerCache::default();
    let cached = cache.get_or_decode(meta, Some(id));
    assert_eq!(cached.is_some(), decoded.is_some());
    let _ = cache.preamble(data);
    let _ = cache.endpoint(&String::from_utf8_lossy(data));
    let _ = from_endpoint_metadata(&String::from_utf8_lossy(data));

    // The preamble: header, body, and the reader over the stream cut into reads.
    let _ = decode_body(data);
    let header = inspect_header(data);
    let Some((&cut, stream)) = data.split_first() else { return };
    let mut reader = PreambleReader::default();
    let mut buffered = 0usize;
    let step = usize::from(cut % 16) + 1;
    let out = loop {
        buffered = (buffered + step).min(stream.len());
        let eos = buffered == stream.len();
        let s = reader.step(buffered, eos, |n| {
            assert!(n <= buffered && n <= HEADER_LEN + MAX_PAYLOAD_BYTES);
            stream.get(..n).map(<[u8]>::to_vec)
        });
        match s {
            Step::Wait => assert!(!eos),
            other => break other,
        }
    };
    assert!(reader.is_done());
    if let Step::Strip { len, body } = out {
        assert_eq!(inspect_header(stream), Header::Frame { total: len });
        assert_eq!(body.as_slice(), &stream[HEADER_LEN..len]);
        let _ = decode_body(&body);
    }
    let _ = header;

    // This proxy's own metadata, from fields in the input: encoded as header and as preamble, it
    // decodes back to the same workload.
    let text = String::from_utf8_lossy(data);
    let mut f = text.split(';').map(str::to_string);
    let mut next = || f.next().unwrap_or_default();
    let local = LocalInfo {
        workload: next(),
        namespace: next(),
        cluster: next(),
        app: next(),
        version: next(),
        canonical_service: next(),
        canonical_revision: next(),
        node_id: next(),
    };
    let check = |p: &wasmesh_stats::PeerMetadata| {
        assert_eq!(p.workload, local.workload);
        assert_eq!(p.namespace, local.namespace);
        assert_eq!(p.cluster, local.cluster);
        assert_eq!(p.canonical_service, local.canonical_service);
        assert_eq!(p.canonical_revision, local.canonical_revision);
    };
    let header_value = local.header_value();
    if header_value.len() <= peer::MAX_METADATA_HEADER_BYTES {
        // Decoding refuses a Struct with no known field; OWNER is always there.
        let p = decode_peer(header_value.as_bytes(), None).expect("our own header decodes");
        check(&p);
    }
    let preamble = exchange::encode_preamble(&local);
    if preamble.len() <= HEADER_LEN + MAX_PAYLOAD_BYTES {
        let mut reader = PreambleReader::default();
        let Step::Strip { len, body } = reader.step(preamble.len(), false, |n| preamble.get(..n).map(<[u8]>::to_vec))
        else {
            panic!("our own preamble is not stripped whole");
        };
        assert_eq!(len, preamble.len());
        let p = decode_body(&body).expect("our own preamble decodes");
        check(&p);
        if local.node_id.len() <= peer::MAX_ID_BYTES {
            assert_eq!(p.id, local.node_id);
        }
    }
});
