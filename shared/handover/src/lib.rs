//! The filter-state contract between wasmesh filters.
//!
//! A filter writes with `set_property([KEY], bytes)`; Envoy stores it as filter state
//! `wasm.<KEY>`, and any later filter on the same stream reads it with `get_property([KEY])`.
//! Unlike a request header, a client cannot forge filter state, so verified identity (JWT
//! claims, peer principals) only ever travels this way.
//!
//! Every value is JSON of one of the structs below. Readers treat a value they cannot decode as
//! absent-and-suspicious: security filters fail closed on it.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Verified request identity written by the authn (JWT) filter: [`RequestIdentity`].
pub const AUTHN_IDENTITY: &str = "wasmesh.authn.identity";
/// Set by the authn filter (`"1"`) when a RequestAuthentication applied to the request but no
/// identity was handed over (no token); an [`AUTHN_IDENTITY`] implies evaluation. Lets a reader
/// tell "no token" from "authn filter not configured".
pub const AUTHN_EVALUATED: &str = "wasmesh.authn.evaluated";
/// The authorization decision and what decided it: [`AuthzDecision`].
pub const AUTHZ_DECISION: &str = "wasmesh.authz.decision";
/// The route the router chose: [`RouteDecision`].
pub const ROUTE_DECISION: &str = "wasmesh.router.decision";
/// Peer workload metadata learnt from metadata exchange (downstream = the caller).
pub const PEER_DOWNSTREAM: &str = "wasmesh.peer.downstream";
/// Peer workload metadata learnt from metadata exchange (upstream = the callee).
pub const PEER_UPSTREAM: &str = "wasmesh.peer.upstream";

/// The ids of the request's span, from the tracing phase to the access-log phase of the same
/// one-pass chain, in memory only (never written to Envoy: no filter outside the chain reads it,
/// and separate filters get nothing): [`SpanIds`], 24 bytes.
pub const TRACE_SPAN: &str = "wasmesh.tracing.span";

/// A span's ids as an OTLP log record carries them: the trace id in 16 bytes (a 64-bit one with
/// 8 zero bytes in front, as Envoy pads it), the span id in 8; both big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanIds {
    pub fn new(trace_id: u128, span_id: u64) -> SpanIds {
        SpanIds { trace_id: trace_id.to_be_bytes(), span_id: span_id.to_be_bytes() }
    }

    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        let (t, s) = b.split_at_mut(16);
        t.copy_from_slice(&self.trace_id);
        s.copy_from_slice(&self.span_id);
        b
    }

    /// `None` unless exactly 24 bytes.
    pub fn decode(bytes: &[u8]) -> Option<SpanIds> {
        let b: &[u8; 24] = bytes.try_into().ok()?;
        let (t, s) = b.split_at(16);
        Some(SpanIds { trace_id: t.try_into().ok()?, span_id: s.try_into().ok()? })
    }
}

/// Largest handed-over value a reader accepts (claims are bounded by the authn filter too).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Identity from a verified JWT, as Istio exposes it to AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestIdentity {
    /// `request.auth.principal`: `<iss>/<sub>`.
    pub principal: String,
    pub issuer: String,
    pub subject: String,
    /// `request.auth.audiences`: the `aud` claim as a list.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `request.auth.presenter`: the `azp` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presenter: Option<String>,
    /// `request.auth.claims`: the whole verified payload, with space-delimited claims
    /// (`scope`, `permission`, configured extras) already split into lists as Istio does.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// What the authz filter decided, for access logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzDecision {
    pub allowed: bool,
    /// `ALLOW`, `DENY`, `CUSTOM`, or `DEFAULT` when no policy matched.
    pub action: String,
    /// `ns[<ns>]-policy[<name>]-rule[<i>]`, Istio's RBAC policy naming, when a rule decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Matching AUDIT policies (they never change the decision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<String>,
    /// Dry-run (shadow) result, when dry-run policies apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<String>,
}

/// Which route the router picked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDecision {
    /// `namespace/name` of the VirtualService, empty for a default route.
    pub virtual_service: String,
    /// The route's `name`, or its index when unnamed.
    pub route: String,
    /// The Envoy cluster the request was sent to (empty when the route answered itself).
    pub cluster: String,
    /// The route's operation as istiod names it (`decorator.operation`): the span name when
    /// tracing is on. Absent for no route and the sidecar's catch-all (no decorator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

/// Encodes a handed-over value.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail; an empty value reads back as invalid.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes a handed-over value; `None` when it is too large or not the expected shape.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    if bytes.len() > MAX_VALUE_BYTES {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_round_trip_big_endian_and_refuse_other_lengths() {
        let ids = SpanIds::new(0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331);
        let b = ids.encode();
        assert_eq!(b[..2], [0x0a, 0xf7]);
        assert_eq!(b[16..18], [0xb7, 0xad]);
        assert_eq!(SpanIds::decode(&b), Some(ids));
        // A 64-bit trace id: 8 zero bytes in front.
        assert_eq!(SpanIds::new(0x8448eb211c80319c, 1).trace_id[..9], [0, 0, 0, 0, 0, 0, 0, 0, 0x84]);
        assert_eq!(SpanIds::decode(&b[..23]), None);
    }

    #[test]
    fn identity_round_trips() {
        let mut claims = serde_json::Map::new();
        claims.insert("groups".into(), serde_json::json!(["admin", "dev"]));
        let id = RequestIdentity {
            principal: "https://issuer/alice".into(),
            issuer: "https://issuer".into(),
            subject: "alice".into(),
            audiences: vec!["web".into()],
            presenter: Some("cli".into()),
            claims,
        };
        let back: RequestIdentity = decode(&encode(&id)).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn route_decision_round_trips_and_operation_is_optional() {
        let d = RouteDecision {
            virtual_service: "default/reviews".into(),
            route: "#0".into(),
            cluster: "outbound|9080|v2|reviews.default.svc.cluster.local".into(),
            operation: Some("reviews.default.svc.cluster.local:9080/*".into()),
        };
        assert_eq!(decode::<RouteDecision>(&encode(&d)), Some(d));
        let old: RouteDecision = decode(br#"{"virtual_service":"","route":"r","cluster":"c"}"#).unwrap();
        assert_eq!(old.operation, None);
    }

    #[test]
    fn garbage_and_oversize_decode_to_none() {
        assert!(decode::<RequestIdentity>(b"not json").is_none());
        assert!(decode::<RequestIdentity>(b"{}").is_none(), "principal is required");
        let big = vec![b' '; MAX_VALUE_BYTES + 1];
        assert!(decode::<RequestIdentity>(&big).is_none());
    }
}
