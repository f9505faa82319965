//! A small per-VM cache of decoded peers, so a busy connection between two sidecars decodes
//! the same metadata once. It sits above both exchanges: the HTTP headers ([`crate::peer`]) and
//! the TCP preamble ([`crate::exchange`]).

use crate::exchange;
use crate::peer::{decode_peer, from_endpoint_metadata, trim_ascii, PeerMetadata, MAX_METADATA_HEADER_BYTES};
use std::collections::HashMap;
use std::rc::Rc;

/// Most entries kept in each of the cache's three maps (header values, TCP preambles, endpoint
/// metadata); a full map is cleared, which only costs decoding again. Istio's own peer cache
/// (`istio.peer_metadata` filter state via `MetadataExchange`) is an LRU of the same order.
pub const MAX_CACHED_PEERS: usize = 256;

/// A decoded peer with what the hot path needs: a per-VM id (never reused, so it can key the
/// metric cache) and its JSON for the filter state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedPeer {
    pub peer: PeerMetadata,
    pub id: u64,
    pub json: Vec<u8>,
}

/// A small per-VM cache of decoded peers keyed by the raw header value, so a busy connection
/// between two sidecars decodes the same metadata once. Bounded: when full, it is cleared.
#[derive(Debug, Default)]
pub struct PeerCache {
    map: HashMap<Vec<u8>, Rc<CachedPeer>>,
    endpoints: HashMap<String, Option<Rc<CachedPeer>>>,
    /// TCP exchange preamble bodies (see [`crate::exchange`]) → peer.
    preambles: HashMap<Vec<u8>, Option<Rc<CachedPeer>>>,
    next_id: u64,
}

impl PeerCache {
    fn wrap(&mut self, peer: PeerMetadata) -> Rc<CachedPeer> {
        self.next_id += 1;
        let json = wasmesh_handover::encode(&peer);
        Rc::new(CachedPeer { peer, id: self.next_id, json })
    }

    /// The peer of an `x-envoy-peer-metadata` (and `-id`) header pair.
    pub fn get_or_decode(&mut self, metadata: &[u8], id: Option<&[u8]>) -> Option<Rc<CachedPeer>> {
        if metadata.len() > MAX_METADATA_HEADER_BYTES {
            return None;
        }
        if let Some(hit) = self.map.get(metadata) {
            let same_id = match id {
                None => hit.peer.id.is_empty(),
                Some(id) => hit.peer.id.as_bytes() == trim_ascii(id),
            };
            if same_id {
                return Some(hit.clone());
            }
        }
        let peer = decode_peer(metadata, id)?;
        let cached = self.wrap(peer);
        if self.map.len() >= MAX_CACHED_PEERS {
            self.map.clear();
        }
        self.map.insert(metadata.to_vec(), cached.clone());
        Some(cached)
    }

    /// The peer of a TCP exchange preamble body (the bytes after magic and length).
    pub fn preamble(&mut self, body: &[u8]) -> Option<Rc<CachedPeer>> {
        if let Some(hit) = self.preambles.get(body) {
            return hit.clone();
        }
        let found = exchange::decode_body(body).map(|p| self.wrap(p));
        if self.preambles.len() >= MAX_CACHED_PEERS {
            self.preambles.clear();
        }
        self.preambles.insert(body.to_vec(), found.clone());
        found
    }

    /// The peer named by Istio's endpoint metadata (`workload;namespace;…`).
    pub fn endpoint(&mut self, encoded: &str) -> Option<Rc<CachedPeer>> {
        if let Some(hit) = self.endpoints.get(encoded) {
            return hit.clone();
        }
        let found = from_endpoint_metadata(encoded).map(|p| self.wrap(p));
        if self.endpoints.len() >= MAX_CACHED_PEERS {
            self.endpoints.clear();
        }
        self.endpoints.insert(encoded.to_string(), found.clone());
        found
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::tests::reviews_v2;
    use crate::peer::LocalInfo;

    #[test]
    fn cache_decodes_once_and_stays_bounded() {
        let mut cache = PeerCache::default();
        let h = LocalInfo::from_workload(&reviews_v2()).header_value();
        let a = cache.get_or_decode(h.as_bytes(), Some(b"id1")).unwrap();
        let b = cache.get_or_decode(h.as_bytes(), Some(b"id1")).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        let c = cache.get_or_decode(h.as_bytes(), Some(b"id2")).unwrap();
        assert_eq!(c.peer.id, "id2", "a different id is not served from the cache");
        assert!(a.id != c.id && a.id > 0);
        assert_eq!(a.json, wasmesh_handover::encode(&a.peer));
        let e1 = cache.endpoint("w;ns;c;r;k").unwrap();
        assert_eq!(cache.endpoint("w;ns;c;r;k").unwrap().id, e1.id);
        assert_eq!(e1.peer.workload, "w");
        assert!(cache.endpoint("bad").is_none());
        assert!(cache.get_or_decode(b"garbage", None).is_none());
        for i in 0..(MAX_CACHED_PEERS * 2) {
            let mut w = reviews_v2();
            w.name = format!("w{i}");
            let h = LocalInfo::from_workload(&w).header_value();
            cache.get_or_decode(h.as_bytes(), None).unwrap();
        }
        assert!(cache.len() <= MAX_CACHED_PEERS);
        let p = exchange::encode_preamble(&LocalInfo::from_workload(&reviews_v2()));
        let body = &p[exchange::HEADER_LEN..];
        let t1 = cache.preamble(body).unwrap();
        assert!(Rc::ptr_eq(&t1, &cache.preamble(body).unwrap()), "decoded once");
        assert_eq!(t1.peer.workload, "reviews-v2");
        assert!(cache.preamble(b"junk").is_none());
    }
}
