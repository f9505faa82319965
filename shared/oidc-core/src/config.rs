//! The filter configuration (JSON, written by wasmeshctl or by hand) and what the phase learns
//! from the provider at run time.

use crate::seal::{Keys, KEY_BYTES};
use serde::Deserialize;
use wasmesh_authn::jwks::KeySet;

/// Most scopes, bypass paths, allowed origins and previous keys (each list).
pub const MAX_LIST: usize = 32;
/// Longest session lifetime accepted (30 days).
pub const MAX_SESSION_SECS: u64 = 30 * 24 * 3600;

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (the OIDC default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Which token goes upstream as `Authorization: Bearer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    #[default]
    AccessToken,
    IdToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SameSite {
    Strict,
    #[default]
    Lax,
    None,
}

/// A claim of the ID token sent upstream as a request header (`claimHeaders`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimHeader {
    /// A top-level claim of the ID token (`email`, `sub`, `groups`, ...).
    pub claim: String,
    /// The request header it is sent in (lower case); a client-sent header of this name is
    /// always removed first, so a client cannot forge it.
    pub header: String,
}

/// Longest claim value sent in a header (longer values are not sent).
pub const MAX_CLAIM_VALUE: usize = 1024;

/// Request headers a claim header may not replace.
const RESERVED_HEADERS: &[&str] =
    &["authorization", "cookie", "host", "content-length", "content-type", "transfer-encoding", "te", "connection"];

/// Session cookie settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CookieConfig {
    pub name: String,
    pub domain: Option<String>,
    pub path: String,
    pub same_site: SameSite,
    pub secure: bool,
    /// Session lifetime (absolute), seconds.
    pub lifetime_seconds: u64,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "wasmesh-session".into(),
            domain: None,
            path: "/".into(),
            same_site: SameSite::Lax,
            secure: true,
            lifetime_seconds: 8 * 3600,
        }
    }
}

/// The provider endpoints a discovery document gives (`/.well-known/openid-configuration`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// Largest discovery document accepted.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

impl Discovery {
    /// Parses a discovery document and checks it belongs to `issuer` (OIDC Discovery §4.3) and
    /// that every endpoint is on the provider's own host, the one the configured cluster reaches.
    pub fn parse(body: &[u8], issuer: &str) -> Result<Discovery, String> {
        if body.len() > MAX_DISCOVERY_BYTES {
            return Err(format!("discovery document of {} bytes; at most {MAX_DISCOVERY_BYTES}", body.len()));
        }
        let d: Discovery = serde_json::from_slice(body).map_err(|e| format!("discovery document is not valid: {e}"))?;
        if d.issuer != issuer {
            return Err(format!("discovery document names issuer {:?}; expected {issuer:?}", d.issuer));
        }
        let origin = crate::url::origin(issuer).ok_or("issuer is not an http(s) URL")?;
        for (field, url) in [
            ("authorization_endpoint", Some(&d.authorization_endpoint)),
            ("token_endpoint", Some(&d.token_endpoint)),
            ("jwks_uri", Some(&d.jwks_uri)),
            ("end_session_endpoint", d.end_session_endpoint.as_ref()),
        ] {
            let Some(url) = url else { continue };
            // The browser follows the authorization endpoint wherever it is; the gateway calls
            // the others through one cluster, so they must be on the issuer's host.
            if field == "authorization_endpoint" || field == "end_session_endpoint" {
                if crate::url::origin(url).is_none() {
                    return Err(format!("discovery {field} {url:?} is not an http(s) URL"));
                }
            } else if crate::url::origin(url).as_deref() != Some(origin.as_str()) {
                return Err(format!("discovery {field} {url:?} is not on the issuer's host {origin}"));
            }
        }
        Ok(d)
    }
}

/// The `wasmesh.oidc` filter configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer (`iss` of its ID tokens; discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The Envoy cluster that reaches the issuer's host (discovery, token and JWKS calls).
    pub provider_cluster: String,
    /// The discovery document itself (then it is not fetched).
    #[serde(default)]
    pub discovery: Option<serde_json::Value>,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Scopes besides `openid` (always sent).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The redirect URI registered at the provider; its path is the callback path.
    pub redirect_uri: String,
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider sends the browser after RP-initiated logout.
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    /// Path prefixes let through without a session (health checks, public assets).
    #[serde(default)]
    pub bypass_paths: Vec<String>,
    /// Origins (`https://host[:port]`) an absolute `return_to` may go to.
    #[serde(default)]
    pub allowed_return_origins: Vec<String>,
    #[serde(default)]
    pub cookie: CookieConfig,
    /// The sealing key, base64 (url-safe or standard) of 32 bytes.
    pub cookie_key: String,
    /// Keys still accepted after a rotation (not used to seal).
    #[serde(default)]
    pub previous_cookie_keys: Vec<String>,
    #[serde(default)]
    pub forward: Forward,
    /// ID token claims sent upstream as request headers (client-sent ones removed first).
    #[serde(default)]
    pub claim_headers: Vec<ClaimHeader>,
    /// Milliseconds to wait for the provider (token, discovery, JWKS).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Clock skew allowed on `exp`/`iat`, seconds.
    #[serde(default = "default_skew")]
    pub clock_skew_seconds: u64,
    /// How long a request arriving before the provider's discovery document and keys are known
    /// waits for them (paused), milliseconds; then 503. 0: 503 at once.
    #[serde(default = "default_ready_wait_ms")]
    pub ready_wait_ms: u64,
}

fn default_logout_path() -> String {
    "/oauth2/logout".into()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_skew() -> u64 {
    60
}
fn default_ready_wait_ms() -> u64 {
    10_000
}

/// Provider state learnt at run time: its endpoints and its keys.
#[derive(Debug, Clone)]
pub struct Provider {
    pub discovery: Discovery,
    pub keys: KeySet,
}

/// A cookie key as the configuration gives it (base64 of 32 bytes); the error names `field` and
/// never the key.
pub fn decode_key(field: &str, text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let t = text.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
        .map_err(|_| format!("{field}: not base64"))?;
    if bytes.len() != KEY_BYTES {
        return Err(format!("{field}: {} bytes; expected {KEY_BYTES} (AES-256)", bytes.len()));
    }
    Ok(bytes)
}

impl OidcConfig {
    pub fn parse_json(bytes: &[u8]) -> Result<OidcConfig, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }

    /// Every problem with the configuration, each naming its field (empty: valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut need = |ok: bool, msg: String| {
            if !ok {
                out.push(msg);
            }
        };
        need(crate::url::origin(&self.issuer).is_some(), format!("issuer: {:?} is not an http(s) URL", self.issuer));
        need(
            !self.provider_cluster.is_empty(),
            "providerCluster: empty; expected the Envoy cluster of the issuer's host".into(),
        );
        need(!self.client_id.is_empty(), "clientId: empty".into());
        need(!self.client_secret.is_empty(), "clientSecret: empty".into());
        let callback = crate::url::split(&self.redirect_uri).map(|(_, _, p)| crate::url::path_only(p));
        need(
            callback.is_some_and(|p| p.len() > 1),
            format!("redirectUri: {:?} is not an absolute http(s) URL with a path", self.redirect_uri),
        );
        need(
            crate::url::local_path(&self.logout_path) && !self.logout_path.contains('?'),
            format!("logoutPath: {:?} is not a path", self.logout_path),
        );
        if let Some(p) = &self.post_logout_redirect_uri {
            need(crate::url::origin(p).is_some(), format!("postLogoutRedirectUri: {p:?} is not an http(s) URL"));
        }
        for (field, len) in [
            ("scopes", self.scopes.len()),
            ("bypassPaths", self.bypass_paths.len()),
            ("allowedReturnOrigins", self.allowed_return_origins.len()),
            ("previousCookieKeys", self.previous_cookie_keys.len()),
            ("claimHeaders", self.claim_headers.len()),
        ] {
            need(len <= MAX_LIST, format!("{field}: {len} entries; at most {MAX_LIST}"));
        }
        for (i, s) in self.scopes.iter().enumerate() {
            need(
                !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'),
                format!("scopes[{i}]: {s:?} is not a scope token"),
            );
        }
        for (i, c) in self.claim_headers.iter().enumerate() {
            need(
                !c.claim.is_empty() && c.claim.len() <= 128,
                format!("claimHeaders[{i}].claim: {:?}; expected a claim name", c.claim),
            );
            need(
                !c.header.is_empty()
                    && c.header.len() <= 128
                    && c.header
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '_'),
                format!("claimHeaders[{i}].header: {:?}; expected a lower-case header name", c.header),
            );
            need(
                !RESERVED_HEADERS.contains(&c.header.as_str()),
                format!("claimHeaders[{i}].header: {:?} is reserved; choose another header", c.header),
            );
            need(
                !self.claim_headers.iter().take(i).any(|o| o.header == c.header),
                format!("claimHeaders[{i}].header: {:?} is named twice", c.header),
            );
        }
        for (i, p) in self.bypass_paths.iter().enumerate() {
            need(p.starts_with('/'), format!("bypassPaths[{i}]: {p:?} does not start with /"));
        }
        for (i, o) in self.allowed_return_origins.iter().enumerate() {
            need(
                crate::url::origin(o).as_deref() == Some(o.to_ascii_lowercase().trim_end_matches('/')),
                format!("allowedReturnOrigins[{i}]: {o:?} is not an origin (scheme://host[:port])"),
            );
        }
        let c = &self.cookie;
        need(
            !c.name.is_empty() && c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            format!("cookie.name: {:?}; expected letters, digits, - and _", c.name),
        );
        need(c.path.starts_with('/') && !c.path.contains(';'), format!("cookie.path: {:?} is not a path", c.path));
        if let Some(d) = &c.domain {
            need(
                !d.is_empty() && d.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.'),
                format!("cookie.domain: {d:?} is not a domain"),
            );
        }
        need(
            (60..=MAX_SESSION_SECS).contains(&c.lifetime_seconds),
            format!("cookie.lifetimeSeconds: {}; expected 60 to {MAX_SESSION_SECS}", c.lifetime_seconds),
        );
        need(
            c.same_site != SameSite::None || c.secure,
            "cookie.sameSite: None needs cookie.secure: true (browsers drop it otherwise)".into(),
        );
        if let Err(e) = decode_key("cookieKey", &self.cookie_key) {
            need(false, e);
        }
        for (i, k) in self.previous_cookie_keys.iter().enumerate() {
            if let Err(e) = decode_key(&format!("previousCookieKeys[{i}]"), k) {
                need(false, e);
            }
        }
        need(
            (100..=60_000).contains(&self.timeout_ms),
            format!("timeoutMs: {}; expected 100 to 60000", self.timeout_ms),
        );
        need(self.ready_wait_ms <= 60_000, format!("readyWaitMs: {}; at most 60000", self.ready_wait_ms));
        need(self.clock_skew_seconds <= 600, format!("clockSkewSeconds: {}; at most 600", self.clock_skew_seconds));
        if let Some(d) = &self.discovery {
            match serde_json::to_vec(d) {
                Ok(bytes) => {
                    if let Err(e) = Discovery::parse(&bytes, &self.issuer) {
                        need(false, format!("discovery: {e}"));
                    }
                }
                Err(e) => need(false, format!("discovery: {e}")),
            }
        }
        out
    }

    /// The sealing keys, current first.
    pub fn keys(&self) -> Result<Keys, String> {
        let mut raw = vec![decode_key("cookieKey", &self.cookie_key)?];
        for (i, k) in self.previous_cookie_keys.iter().enumerate() {
            raw.push(decode_key(&format!("previousCookieKeys[{i}]"), k)?);
        }
        Keys::new(&raw)
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'))
    }

    /// The inline discovery document, parsed.
    pub fn inline_discovery(&self) -> Result<Option<Discovery>, String> {
        let Some(d) = &self.discovery else { return Ok(None) };
        let bytes = serde_json::to_vec(d).map_err(|e| format!("discovery: {e}"))?;
        Discovery::parse(&bytes, &self.issuer).map(Some).map_err(|e| format!("discovery: {e}"))
    }
}
