//! The network role (`{"role": "peerAddress"}`): remembers the connection's physical peer for
//! the HTTP filter, which otherwise only sees the address the HCM derived from
//! `x-forwarded-for` (`ipBlocks`/`source.ip` match the physical peer, Envoy's
//! `direct_remote_ip`).

use super::PEER_ADDRESS_KEY;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;

/// Whether a plugin configuration asks for this role.
pub fn is_peer_address_role(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("role").and_then(|r| r.as_str()).map(|r| r == "peerAddress"))
        .unwrap_or(false)
}

/// One per connection.
pub struct PeerAddress;

impl Context for PeerAddress {}

impl StreamContext for PeerAddress {
    fn on_new_connection(&mut self) -> Action {
        match wasmesh_proxy::property(&["source", "address"]) {
            Some(addr) => {
                if !wasmesh_proxy::set_filter_state(PEER_ADDRESS_KEY, &addr) {
                    wasmesh_proxy::log_error("wasmesh authz: could not record the peer address");
                }
            }
            None => wasmesh_proxy::log_error("wasmesh authz: the connection has no source.address"),
        }
        Action::Continue
    }
}
