//! Envoy dynamic metadata as the authz filter reads it for `experimental.envoy.filters.*`
//! conditions: a serialized `envoy.config.core.v3.Metadata` protobuf, decoded by hand (authz-core
//! `metadata::decode_metadata`).
//! Input: the protobuf bytes.
//! Properties: nothing panics; only wanted (filter, key) pairs come out (by their slot); decoding
//! is deterministic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_authz::metadata::decode_metadata;

fuzz_target!(|data: &[u8]| {
    let wanted: Vec<(String, String)> = [
        ("envoy.filters.http.jwt_authn", "payload"),
        ("istio_authn", "request.auth.claims"),
        ("envoy.lb", "canary"),
        ("", ""),
    ]
    .iter()
    .map(|(f, k)| (f.to_string(), k.to_string()))
    .collect();
    if let Some(entries) = decode_metadata(data, &wanted) {
        for e in &entries {
            assert!(e.slot < wanted.len(), "{e:?} names no wanted (filter, key)");
        }
        let again = decode_metadata(data, &wanted).expect("decoding is deterministic");
        assert_eq!(again, entries);
    }
    let _ = decode_metadata(data, &[]);
});
