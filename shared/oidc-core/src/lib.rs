//! OIDC login at the gateway, in pure Rust (no proxy-wasm): the OpenID Connect authorization code
//! flow with PKCE (S256), `state` bound to the browser and `nonce`, as authservice and Envoy's
//! oauth2 filter run it, decided by pure functions the `filters/oidc` phase drives.
//!
//! * [`config`]: the filter configuration (client, endpoints from discovery, paths, cookies, keys)
//!   and its validation; [`Provider`] is what the phase learns at run time (discovery, JWKS).
//! * [`seal`]: cookies sealed with AES-256-GCM (key from the configuration, previous keys still
//!   opened: rotation), the cookie name as associated data (a cookie cannot be swapped for another).
//! * [`flow`]: per request, one [`flow::Decision`]: pass, forward with `Authorization: Bearer`,
//!   redirect to the provider, 401 for API requests, a token call (code exchange or refresh) whose
//!   answer [`flow::Oidc::finish`] turns into the next decision, logout, or an error page.
//! * [`idtoken`]: ID token checks (`iss`, `aud`, `azp`, `exp`, `iat`, `nonce`) over authn's JWT
//!   parser and JWKS signature verification.
//! * [`url`]: the small URL/form encoding the flow needs, and the return-target check (no open
//!   redirect).
//!
//! Nothing here logs or returns a token or secret in an error: error texts are fixed phrases.

pub mod config;
pub mod flow;
pub mod idtoken;
pub mod seal;
pub mod url;

pub use config::{Discovery, OidcConfig, Provider};
pub use flow::{Decision, Oidc, Pending, Reply, Request};

/// Fills `buf` from the host's entropy (WASI `random_get` in the module).
pub fn random(buf: &mut [u8]) -> Result<(), &'static str> {
    getrandom::fill(buf).map_err(|_| "no entropy from the host")
}

/// `n` random bytes, base64url without padding.
pub fn random_b64(n: usize) -> Result<String, &'static str> {
    let mut buf = vec![0u8; n];
    random(&mut buf)?;
    Ok(b64(&buf))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()
}
