//! One HTTP stream as the phases see it: every hostcall a phase makes about its request goes
//! through here, so that each answer is asked of Envoy at most once per request.
//!
//! - The request headers are read as one map (`proxy_get_header_map_pairs`) the first time a
//!   phase asks for any of them, kept as the one buffer Envoy wrote and served from it without
//!   copying ([`crate::header_map`]); a phase's changes are written through to Envoy and kept as
//!   an overlay on the map, so a later phase sees the request as Envoy will forward it. A stream
//!   whose only phase reads few headers may read them one by one instead
//!   ([`HeaderReads::OneByOne`]): each costs a hostcall and a guest allocation, the map one of
//!   each (measured with the SDK's decoding: one found header ~10.6k instructions, the whole
//!   ~1.4 KB map ~20.1k, ~9k of it decoding, which reading in place saves).
//! - Properties are kept for the rest of the stream when they cannot change during it (the
//!   connection's and the node's: [`Stream::property`] decides by the path), otherwise until the
//!   stream moves on to the response ([`Stream::enter_response`]).
//! - Filter state written by a phase is kept too: the next phase reads it from memory (the
//!   verified identity authn hands to authz), and Envoy still gets it for later filters and
//!   access logs.
//!
//! Every method takes `&self`: the cores' host traits read through shared references.

use crate::header_map::{Overlay, RawMap, RequestHeaders};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, MapType, Status};
use std::cell::{Cell, RefCell};
use std::time::Duration;

/// How a stream reads request headers before any phase asked for the whole map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderReads {
    /// The whole map on the first read (several phases, or a phase reading many headers).
    Map,
    /// One hostcall per header name, each kept (one phase reading a few headers).
    OneByOne,
}

/// Request headers, owned: names lower-case, values raw, in Envoy's order (a repeated header is
/// several entries).
pub type HeaderMap = Vec<(String, Bytes)>;

enum Headers {
    Unread,
    /// The map as Envoy serialized it, and the edits phases made since it was read.
    Read(RawMap, Overlay),
    Failed(Status),
}

/// A property or header answer as kept: `None` when Envoy has none.
type Kept = Option<Bytes>;

/// A kept property: its path (segments joined by NUL, which no segment holds), whether it lasts
/// the whole stream, and Envoy's answer.
struct KeptProperty {
    path: String,
    stable: bool,
    value: Kept,
}

/// The stream of one HTTP request, shared by its phases.
pub struct Stream {
    context_id: u32,
    reads: HeaderReads,
    headers: RefCell<Headers>,
    /// Single header reads ([`HeaderReads::OneByOne`] before the map was read).
    single: RefCell<Vec<(String, Kept)>>,
    properties: RefCell<Vec<KeptProperty>>,
    /// [`Stream::enter_response`] was called: request-side properties are no longer kept (they
    /// are read once, in `log`, and nothing reads them after).
    responding: Cell<bool>,
    answered: Cell<bool>,
    /// A phase asked for the route to be selected again ([`Stream::clear_route_cache`]) and no
    /// request header was changed since (which would have made Envoy do it).
    route_stale: Cell<bool>,
}

/// The first path segments of properties that stay the same for a whole stream.
const STREAM_STABLE: [&str; 6] = ["connection", "source", "destination", "node", "plugin_name", "plugin_root_id"];

/// Whether a property stays the same for the whole stream: the connection's, the node's, the
/// plugin's, and filter state (one segment, written through [`Stream::set_filter_state`] or by an
/// earlier filter before this one ran).
fn stream_stable(path: &[&str]) -> bool {
    match path {
        [one] => !matches!(*one, "request" | "response" | "upstream" | "xds"),
        [first, ..] => STREAM_STABLE.contains(first) || (*first == "xds" && path.get(1) == Some(&"node")),
        [] => false,
    }
}

impl Stream {
    pub fn new(context_id: u32, reads: HeaderReads) -> Stream {
        Stream {
            context_id,
            reads,
            headers: RefCell::new(Headers::Unread),
            single: RefCell::new(Vec::new()),
            properties: RefCell::new(Vec::new()),
            responding: Cell::new(false),
            answered: Cell::new(false),
            route_stale: Cell::new(false),
        }
    }

    /// Envoy's id of this stream's context (for `set_effective_context` from a root context).
    pub fn context_id(&self) -> u32 {
        self.context_id
    }

    // --- request headers -------------------------------------------------------------------

    fn load_headers(&self) {
        let mut h = self.headers.borrow_mut();
        if matches!(*h, Headers::Unread) {
            *h = match crate::header_map::read_request_headers() {
                Ok(map) => Headers::Read(map, Overlay::default()),
                Err(e) => Headers::Failed(e),
            };
        }
    }

    /// Calls `f` with every request header (the map read once per stream, with the edits
    /// phases made since), borrowed: nothing is copied. `Err` when Envoy could not produce them
    /// (security phases fail closed on it). `f` must not edit the request's headers (read first,
    /// then edit).
    pub fn with_request_headers<R>(&self, f: impl FnOnce(Result<RequestHeaders<'_>, Status>) -> R) -> R {
        self.load_headers();
        let h = self.headers.borrow();
        match &*h {
            Headers::Read(map, overlay) => f(Ok(RequestHeaders::new(map, overlay))),
            Headers::Failed(e) => f(Err(*e)),
            Headers::Unread => f(Err(Status::InternalFailure)),
        }
    }

    /// Every request header, copied (for the rare paths that need to own them).
    pub fn request_headers(&self) -> Result<HeaderMap, Status> {
        self.with_request_headers(|h| h.map(|h| h.to_vec()))
    }

    /// Calls `f` with the first value of a request header, borrowed (`Ok(None)` when absent).
    /// `f` must not edit the request's headers.
    pub fn with_request_header<R>(&self, name: &str, f: impl FnOnce(Result<Option<&[u8]>, Status>) -> R) -> R {
        let map_read = !matches!(*self.headers.borrow(), Headers::Unread);
        if self.reads == HeaderReads::OneByOne && !map_read {
            if let Some((_, v)) = self.single.borrow().iter().find(|(n, _)| n == name) {
                return f(Ok(v.as_deref()));
            }
            return match hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name) {
                Ok(v) => {
                    let r = f(Ok(v.as_deref()));
                    self.single.borrow_mut().push((name.to_string(), v));
                    r
                }
                Err(e) => f(Err(e)),
            };
        }
        self.with_request_headers(|h| f(h.map(|h| h.get(name))))
    }

    /// The value a phase of this stream set for request header `name` (copied), without a
    /// hostcall: `None` when no phase set it or the map was never read here.
    pub fn edited_request_header(&self, name: &str) -> Option<Bytes> {
        match &*self.headers.borrow() {
            Headers::Read(_, overlay) => overlay.edited(name).map(<[u8]>::to_vec),
            _ => None,
        }
    }

    /// The first value of a request header, copied; `Ok(None)` when absent.
    pub fn request_header(&self, name: &str) -> Result<Option<Bytes>, Status> {
        self.with_request_header(name, |v| v.map(|v| v.map(<[u8]>::to_vec)))
    }

    /// Whether the request has a header `name`.
    pub fn has_request_header(&self, name: &str) -> Result<bool, Status> {
        self.with_request_header(name, |v| v.map(|v| v.is_some()))
    }

    /// Applies a change to whatever copy of the headers is kept. Envoy has cleared its route
    /// cache: a pending [`Stream::clear_route_cache`] is done.
    fn edit_copy(&self, name: &str, edit: impl FnOnce(&mut Overlay)) {
        self.route_stale.set(false);
        if let Headers::Read(_, overlay) = &mut *self.headers.borrow_mut() {
            edit(overlay);
        }
        self.single.borrow_mut().retain(|(n, _)| n != name);
    }

    /// Sets (replaces) a request header; `false` when Envoy refused.
    pub fn set_request_header(&self, name: &str, value: &[u8]) -> bool {
        if hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)).is_err() {
            return false;
        }
        self.edit_copy(name, |o| o.set(name, value));
        true
    }

    /// Appends a request header value.
    pub fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        if hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value).is_err() {
            return false;
        }
        self.edit_copy(name, |o| o.add(name, value));
        true
    }

    /// Removes every value of a request header.
    pub fn remove_request_header(&self, name: &str) -> bool {
        if hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_err() {
            return false;
        }
        self.edit_copy(name, |o| o.remove(name));
        true
    }

    /// Envoy must select the route again before it routes this request (Istio's
    /// `clear_route_cache`), e.g. after a phase changed something a route may match on other
    /// than a header. Deferred to the end of the request-header pass
    /// ([`Stream::flush_route_cache`]): a request header changed after this call makes Envoy
    /// clear its route cache anyway, and the foreign call (~4k instructions) is then not made.
    pub fn clear_route_cache(&self) {
        self.route_stale.set(true);
    }

    /// The end of a request-header pass: makes the pending [`Stream::clear_route_cache`] call.
    pub(crate) fn flush_route_cache(&self) {
        if self.route_stale.replace(false) {
            crate::clear_route_cache();
        }
    }

    // --- response headers (read and written directly: each phase touches few) ---------------

    pub fn response_header(&self, name: &str) -> Option<Bytes> {
        hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()
    }
    pub fn set_response_header(&self, name: &str, value: &[u8]) -> bool {
        hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value)).is_ok()
    }
    pub fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value).is_ok()
    }
    pub fn remove_response_header(&self, name: &str) -> bool {
        hostcalls::remove_map_value(MapType::HttpResponseHeaders, name).is_ok()
    }

    // --- properties and filter state --------------------------------------------------------

    /// A property (an Envoy attribute, or filter state when `path` is one key); `Ok(None)` when
    /// absent, `Err` when Envoy could not produce it (not kept: asked again next time).
    pub fn property(&self, path: &[&str]) -> Result<Option<Bytes>, Status> {
        if let Some(v) = self.kept(path) {
            return Ok(v);
        }
        let v = hostcalls::get_property(path.to_vec())?;
        if self.keeps(path) {
            self.keep(path, v.clone());
        }
        Ok(v)
    }

    /// A property, absent when Envoy could not produce it (for telemetry, which fails open).
    pub fn property_or_none(&self, path: &[&str]) -> Option<Bytes> {
        self.property(path).ok().flatten()
    }

    pub fn property_string(&self, path: &[&str]) -> Option<String> {
        self.property_or_none(path).and_then(|b| String::from_utf8(b).ok())
    }

    /// An `int`/`uint` property (8 bytes, little-endian).
    pub fn property_u64(&self, path: &[&str]) -> Option<u64> {
        crate::decode_u64(&self.property_or_none(path)?)
    }

    /// A `bool` property (1 byte).
    pub fn property_bool(&self, path: &[&str]) -> Option<bool> {
        self.property_or_none(path).and_then(|b| b.first().map(|v| *v != 0))
    }

    /// Several properties at once, in the order asked (`None` where absent or unreadable), each
    /// kept as [`Stream::property`] keeps it. The Envoy attributes not kept yet
    /// ([`crate::cel::attribute`]) are read in one `expr_evaluate` when there are at least
    /// [`crate::cel::MIN_BATCH`] of them; the others, and all of them when the host has no
    /// expression functions, CEL cannot express one of them or the evaluation fails, with one
    /// `get_property` each.
    pub fn properties(&self, paths: &[&[&str]]) -> Vec<Option<Bytes>> {
        let mut out: Vec<Option<Kept>> = paths.iter().map(|p| self.kept(p)).collect();
        let batch: Vec<(usize, &[&str])> = paths
            .iter()
            .enumerate()
            .filter(|(i, p)| out.get(*i).is_some_and(Option::is_none) && crate::cel::attribute(p))
            .map(|(i, p)| (i, *p))
            .collect();
        if batch.len() >= crate::cel::MIN_BATCH {
            let asked: Vec<&[&str]> = batch.iter().map(|(_, p)| *p).collect();
            if let Some(values) = crate::cel::read(&asked) {
                for ((i, p), v) in batch.into_iter().zip(values) {
                    // Not kept before (that is why it was asked): no old entry to replace.
                    if self.keeps(p) {
                        self.push_kept(p, v.clone());
                    }
                    if let Some(slot) = out.get_mut(i) {
                        *slot = Some(v);
                    }
                }
            }
        }
        out.into_iter().zip(paths).map(|(v, p)| v.unwrap_or_else(|| self.property_or_none(p))).collect()
    }

    /// A property already kept for this stream.
    fn kept(&self, path: &[&str]) -> Option<Kept> {
        self.properties.borrow().iter().find(|k| same_path(&k.path, path)).map(|k| k.value.clone())
    }

    /// Whether an answer for `path` is worth keeping: one that lasts the stream, or a request-side
    /// one while the request is still being decided (several phases may ask it).
    fn keeps(&self, path: &[&str]) -> bool {
        !self.responding.get() || stream_stable(path)
    }

    fn keep(&self, path: &[&str], v: Kept) {
        self.properties.borrow_mut().retain(|k| !same_path(&k.path, path));
        self.push_kept(path, v);
    }

    fn push_kept(&self, path: &[&str], value: Kept) {
        let mut joined = String::with_capacity(path.iter().map(|s| s.len() + 1).sum());
        for (i, seg) in path.iter().enumerate() {
            if i > 0 {
                joined.push('\0');
            }
            joined.push_str(seg);
        }
        self.properties.borrow_mut().push(KeptProperty { path: joined, stable: stream_stable(path), value });
    }

    /// Writes filter state `wasm.<key>` for later filters and access logs, and keeps it for the
    /// later phases of this stream (they read it without a hostcall).
    pub fn set_filter_state(&self, key: &str, value: &[u8]) -> bool {
        if hostcalls::set_property(vec![key], Some(value)).is_err() {
            return false;
        }
        self.keep(&[key], Some(value.to_vec()));
        true
    }

    /// Hands `value` under filter-state key `key` to the later phases of this stream only (they
    /// read it with [`Stream::filter_state`] as if it had been written): no hostcall, Envoy and
    /// later filters never see it. For a value nothing outside the chain reads.
    pub fn keep_filter_state(&self, key: &str, value: &[u8]) {
        self.keep(&[key], Some(value.to_vec()));
    }

    /// Filter state an earlier phase of this stream handed over ([`Stream::keep_filter_state`])
    /// or wrote or read: in memory only, no hostcall (`None` when none did).
    pub fn kept_filter_state(&self, key: &str) -> Option<Bytes> {
        self.kept(&[key]).flatten()
    }

    /// Filter state written by an earlier phase or filter.
    pub fn filter_state(&self, key: &str) -> Option<Bytes> {
        self.property_or_none(&[key])
    }

    /// The stream moves on to the response: properties that may change are asked again.
    pub fn enter_response(&self) {
        self.responding.set(true);
        self.properties.borrow_mut().retain(|k| k.stable);
    }

    // --- answers and calls ------------------------------------------------------------------

    /// Sends a local reply (Envoy sends it when the callback returns); the stream is answered
    /// and later phases do not see the request.
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) -> bool {
        self.answered.set(true);
        hostcalls::send_http_response(status, headers.to_vec(), body).is_ok()
    }

    /// A phase answered this request.
    pub fn answered(&self) -> bool {
        self.answered.get()
    }

    /// Sends an HTTP call on this stream's behalf; its answer comes to the phase's
    /// [`crate::phase::PhaseRequest::http_call_response`].
    pub fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), body, Vec::new(), timeout)
    }

    /// Sends a gRPC call on this stream's behalf (`grpc_service`: a cluster name or a serialized
    /// `envoy.config.core.v3.GrpcService`); its answer comes to the phase's
    /// [`crate::phase::PhaseRequest::grpc_call_response`].
    pub fn dispatch_grpc_call(
        &self,
        grpc_service: &str,
        service: &str,
        method: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<u32, Status> {
        hostcalls::dispatch_grpc_call(grpc_service, service, method, Vec::new(), Some(message), timeout)
    }
}

fn same_path(kept: &str, path: &[&str]) -> bool {
    let mut segments = kept.split('\0');
    path.iter().all(|p| segments.next() == Some(*p)) && segments.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_path_matches_only_the_same_segments() {
        assert!(same_path("connection\0mtls", &["connection", "mtls"]));
        assert!(same_path("wasmesh.authn.identity", &["wasmesh.authn.identity"]));
        for other in
            [&["connection"][..], &["connection", "mtls", "x"], &["connection", "mtl"], &["connectionmtls"], &[]]
        {
            assert!(!same_path("connection\0mtls", other), "{other:?}");
        }
    }

    #[test]
    fn connection_and_node_properties_last_the_stream_request_and_response_ones_do_not() {
        for p in [
            &["connection", "mtls"][..],
            &["source", "address"],
            &["destination", "port"],
            &["xds", "node", "id"],
            &["wasmesh.authn.identity"],
            &["plugin_root_id"],
        ] {
            assert!(stream_stable(p), "{p:?}");
        }
        for p in [
            &["response", "code"][..],
            &["request", "duration"],
            &["upstream", "uri_san_peer_certificate"],
            &["xds", "cluster_name"],
            &["xds", "upstream_host_metadata"],
            &["request"],
            &[],
        ] {
            assert!(!stream_stable(p), "{p:?}");
        }
    }
}
