//! Panic-free helpers over `proxy_wasm::hostcalls` for the wasmesh filters.
//!
//! The SDK's trait helpers `unwrap()` hostcall results and its string getters `unwrap()` UTF-8
//! conversions; a panic traps the VM and fails every later request on that worker. Filters call
//! these helpers instead: every failure becomes `None`/`false` plus a log line.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cel;
pub mod header_map;
pub mod metrics;
pub mod phase;
pub mod stream;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, LogLevel, MapType, Status};
use wasmesh_istio::{FilterConfig, MeshIdentity, NodeMetadata, Strictness, Workload};

/// All request headers, names lower-case, values as raw bytes. Empty when unavailable.
pub fn request_headers() -> Vec<(String, Bytes)> {
    try_request_headers().unwrap_or_default()
}

/// All response headers. Empty when unavailable.
pub fn response_headers() -> Vec<(String, Bytes)> {
    hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default()
}

/// One request header as bytes.
pub fn request_header(name: &str) -> Option<Bytes> {
    try_request_header(name).ok().flatten()
}

/// Sets (replaces) a request header; `false` if the host refused.
pub fn set_request_header(name: &str, value: &[u8]) -> bool {
    hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)).is_ok()
}

/// Appends a request header value.
pub fn add_request_header(name: &str, value: &[u8]) -> bool {
    hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value).is_ok()
}

/// Removes a request header (every value).
pub fn remove_request_header(name: &str) -> bool {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name).is_ok()
}

/// Sets (replaces) a response header.
pub fn set_response_header(name: &str, value: &[u8]) -> bool {
    hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value)).is_ok()
}

/// Appends a response header value.
pub fn add_response_header(name: &str, value: &[u8]) -> bool {
    hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value).is_ok()
}

/// Removes a response header.
pub fn remove_response_header(name: &str) -> bool {
    hostcalls::remove_map_value(MapType::HttpResponseHeaders, name).is_ok()
}

/// A property (Envoy attribute or filter state) as raw bytes.
pub fn property(path: &[&str]) -> Option<Bytes> {
    try_property(path).ok().flatten()
}

/// A property, keeping a hostcall failure apart from absence: `Ok(None)` when the property
/// does not exist, `Err` when the host could not produce it (security filters fail closed).
pub fn try_property(path: &[&str]) -> Result<Option<Bytes>, Status> {
    hostcalls::get_property(path.to_vec())
}

/// All request headers; `Err` when the host could not produce them.
pub fn try_request_headers() -> Result<Vec<(String, Bytes)>, Status> {
    // Read in place and copied (the SDK's `get_map_bytes` panics on a failed call).
    let map = header_map::read_request_headers()?;
    Ok(map.iter().map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec())).collect())
}

/// One request header; `Ok(None)` when absent, `Err` when the host could not produce it.
pub fn try_request_header(name: &str) -> Result<Option<Bytes>, Status> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
}

/// A string property.
pub fn property_string(path: &[&str]) -> Option<String> {
    property(path).and_then(|b| String::from_utf8(b).ok())
}

/// An `int`/`uint` property (8 bytes, little-endian), e.g. `destination.port`.
pub fn property_u64(path: &[&str]) -> Option<u64> {
    decode_u64(&property(path)?)
}

/// An integer property's value as Envoy encodes it (8 bytes, little-endian).
pub fn decode_u64(b: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

/// A `bool` property (1 byte), e.g. `connection.mtls`.
pub fn property_bool(path: &[&str]) -> Option<bool> {
    property(path).and_then(|b| b.first().map(|v| *v != 0))
}

/// Writes filter state `wasm.<key>` for later filters on this stream.
pub fn set_filter_state(key: &str, value: &[u8]) -> bool {
    hostcalls::set_property(vec![key], Some(value)).is_ok()
}

/// Reads filter state written by an earlier wasmesh filter.
pub fn filter_state(key: &str) -> Option<Bytes> {
    property(&[key])
}

/// Sends a local reply (deferred by Envoy until the callback returns).
pub fn send_response(status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) -> bool {
    hostcalls::send_http_response(status, headers.to_vec(), body).is_ok()
}

/// Asks Envoy to re-run route selection (explicit since Envoy 1.33; harmless before).
pub fn clear_route_cache() -> bool {
    hostcalls::call_foreign_function("clear_route_cache", None).is_ok()
}

/// The plugin configuration bytes given to `on_configure`.
pub fn plugin_configuration() -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

/// The VM configuration bytes given to `on_vm_start`.
pub fn vm_configuration() -> Option<Bytes> {
    hostcalls::get_buffer(BufferType::VmConfiguration, 0, usize::MAX).ok().flatten()
}

pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}
pub fn log_error(message: &str) {
    log(LogLevel::Error, message);
}
pub fn log_warn(message: &str) {
    log(LogLevel::Warn, message);
}
pub fn log_info(message: &str) {
    log(LogLevel::Info, message);
}
pub fn log_debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// A 64-bit seed from the host's entropy (WASI `random_get`); falls back to the clock.
pub fn random_seed() -> u64 {
    let mut buf = [0u8; 8];
    if getrandom::fill(&mut buf).is_ok() {
        return u64::from_le_bytes(buf);
    }
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15)
}

/// Decodes the proxy-wasm "pairs" encoding used for map-valued properties (see
/// [`wasmesh_istio::node`] for what Envoy returns for each kind of value).
pub use wasmesh_istio::node::decode_pairs;

/// The Envoy node as Istio writes it (id and the metadata keys of [`wasmesh_istio::node::KEYS`]).
///
/// Envoy 1.40 serves the node under `xds.node` (`get_property(["xds","node","metadata","LABELS"])`);
/// older hosts that only know the wasm-specific `node` attribute are tried second. Six hostcalls,
/// made once per plugin configuration, never per request.
pub fn node_metadata() -> NodeMetadata {
    let mut node = NodeMetadata::default();
    let mut prefix = "xds";
    node.id = property_string(&["xds", "node", "id"]);
    if node.id.is_none() {
        node.id = property_string(&["node", "id"]);
        if node.id.is_some() {
            prefix = "node";
        }
    }
    for key in wasmesh_istio::node::KEYS {
        let path: Vec<&str> =
            if prefix == "xds" { vec!["xds", "node", "metadata", key] } else { vec!["node", "metadata", key] };
        node.set(key, property(&path).as_deref());
    }
    node
}

/// The proxy's workload from the Envoy node (see [`NodeMetadata::workload`]).
pub fn node_workload(mesh: &MeshIdentity, strictness: Strictness) -> Result<Workload, String> {
    node_metadata().workload(mesh, strictness)
}

/// Completes a configuration that names no `workload` with the proxy's workload from the Envoy
/// node metadata. A node that does not identify the proxy refuses the configuration (fail closed:
/// Envoy then does not install the filter, and `FAIL_CLOSE`/`FAIL_RELOAD` deny).
pub fn complete_workload_from_node<C: FilterConfig>(cfg: &mut C) -> Result<(), String> {
    if cfg.workload().is_some() {
        return Ok(());
    }
    let wl = node_workload(&cfg.mesh(), Strictness::Required).map_err(|e| {
        format!("the configuration has no workload and the Envoy node does not identify the proxy: {e}")
    })?;
    log_info(&format!(
        "wasmesh {}: workload {}/{} ({:?}, labels {:?}) from the Envoy node metadata",
        C::FILTER,
        wl.namespace,
        wl.name,
        wl.mode,
        wl.labels
    ));
    cfg.set_workload(wl);
    Ok(())
}

/// `xds.listener_direction` of the listener a stream arrived on: Envoy's
/// `core.v3.TrafficDirection` as an 8-byte little-endian integer (verified in Envoy 1.40:
/// 0 UNSPECIFIED, 1 INBOUND, 2 OUTBOUND). Only readable in stream contexts, not while
/// configuring (the plugin is not bound to one listener). `None` when unreadable.
pub fn listener_direction() -> Option<ListenerDirection> {
    match property_u64(&["xds", "listener_direction"])? {
        1 => Some(ListenerDirection::Inbound),
        2 => Some(ListenerDirection::Outbound),
        _ => Some(ListenerDirection::Unspecified),
    }
}

/// Envoy's `TrafficDirection` of a listener (Istio sets INBOUND on a sidecar's inbound
/// listener, OUTBOUND on its outbound ones, and leaves gateways' listeners OUTBOUND too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerDirection {
    Unspecified,
    Inbound,
    Outbound,
}

/// A status from the host as text, for log lines.
pub fn status_text(s: Status) -> String {
    format!("{s:?}")
}
