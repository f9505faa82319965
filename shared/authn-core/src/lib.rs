//! RequestAuthentication (JWT) as Istio configures Envoy's `jwt_authn` filter, in pure Rust: the
//! same YAML selects the same rules, the same request gets the same answer (status, body,
//! `WWW-Authenticate`), and a verified token hands the same `request.auth.*` to authorization.
//!
//! The modules follow Envoy's jwt_authn (extractor / verifier / jwks cache / authenticator /
//! thin filter), and import each other without cycles (`config` → `verify` → `remote` →
//! `jwks` → `jwt`):
//!
//! * [`config`]: which RequestAuthentications apply, webhook-equivalent validation, providers and
//!   Istio's requirement tree, compiled once.
//! * [`extract`] (Envoy's extractor): token locations.
//! * Verifier: [`jwt`]: parsing with Envoy's statuses; [`jwks`]: keys and signatures; [`rsa`]:
//!   RS*/PS* (wasmesh's own, 2048-bit verify ≈ 0.1 ms in wasm); [`ec`]: ES256/ES384/ES512
//!   (p256/p384/p521 arithmetic with per-key tables, ES256 ≈ 0.2 ms in wasm); EdDSA: ed25519-compact; HS*:
//!   `hmac` + `sha2`; [`jose`]: the token checks jwt-simple made when it verified those.
//! * JWKS cache: [`remote`]: the `jwksUri` endpoint and fetch state machine.
//! * Authenticator: [`verify`]: per-request evaluation over the requirement tree; [`cache`]: the
//!   verified-token cache shared by workers; [`identity`]: the hand-over to authz.
//!
//! No proxy-wasm here: the filter (`filters/authn`) supplies headers, time, shared data and
//! HTTP calls.
//!
//! # Decisions
//!
//! * Keys of a `jwksUri` are fetched by the filter (Envoy's `remote_jwks` behaviour, istiod's
//!   `PILOT_JWT_ENABLE_REMOTE_JWKS=envoy`), through a dedicated cluster
//!   `wasmesh-jwks|<http|https>|<host>|<port>` that `wasmeshctl envoy` generates. Fetched at
//!   start, refreshed every `jwksRefreshSeconds` (300, Envoy's `cache_duration` as Istio sets it),
//!   refetched at most every `jwksRefetchMinIntervalSeconds` when a token names an unknown `kid`,
//!   retried with exponential backoff (1 s … 60 s) on failure, last good keys kept.
//! * A request that needs keys not fetched yet is paused (as Envoy pauses) and resumed when the
//!   fetch ends, or refused with 401 `Jwks remote fetch is failed` if the fetch fails or the wait
//!   exceeds `jwksMaxWaitMs`. Its body is held meanwhile. With no keys at all (fetch failed),
//!   presented tokens fail at once; token-less requests pass.
//! * Verified tokens are cached process-wide (proxy-wasm shared data), see [`cache`].
//!
//! # Known differences from Envoy 1.40's `jwt_authn` (checked against the real binary)
//!
//! Every other answer is the same: status, body, `WWW-Authenticate`, headers the upstream sees.
//!
//! * Only the first value of a repeated token header is read (Envoy joins them with `,`).
//! * For ES256/ES384/EdDSA/HS* tokens (with the checks jwt-simple made when it verified them,
//!   see [`jose`]; RS*/PS* are not), wasmesh is
//!   stricter than Envoy on some syntactically odd tokens, which are then refused
//!   (401 `Jwt verification fails`) where Envoy may accept them: whitespace, padding or
//!   non-canonical trailing bits in a segment (Envoy's base64 decoder skips whitespace), empty
//!   segments, a header segment over 8192 characters, trailing junk after an ECDSA signature,
//!   `typ` other than `JWT`/`…+JWT`, a non-empty `crit`, a repeated registered header field or
//!   claim (also refused by Envoy, whose JSON parser refuses any repeated member name, and now
//!   by [`jwt::parse`] first, with Envoy's bad-JSON status), header fields of another type than jwt-simple reads (`jwk` as an object...), a
//!   `nonce` that is not a string, `exp: 0`.
//! * Keys Envoy would use but wasmesh skips (logged): HMAC secrets shorter than jwt-simple's
//!   minimum; the legacy X.509 `{kid: PEM}` key format. RSA keys are used exactly when Envoy
//!   uses them (`e` 3 or 65537, odd modulus of 34 to 16384 bits), P-521 (ES512) too.
//! * Tokens longer than `maxTokenBytes` are refused (401 `Jwt is too large`); its default
//!   (64 KiB) is above Envoy's own request-header bound (60 KiB), so this only happens when an
//!   operator lowers it or raises Envoy's `max_request_headers_kb`.
//!
//! # Bounds
//!
//! Everything a request or a JWKS server can make grow is bounded, and what crosses a bound is
//! still answered and counted (`wasmesh.authn.<event>`): token size (`maxTokenBytes`,
//! `token_too_large`), JSON nesting in a token ([`jwt::MAX_JSON_DEPTH`], `json_too_deep`), JWKS
//! size and keys ([`jwks::MAX_JWKS_BYTES`], [`jwks::MAX_KEYS`], `jwks_fetch_failed`,
//! `jwks_keys_skipped`), cached tokens and their memory (`jwtCacheSlots` ≤
//! [`cache::MAX_CACHE_BYTES`] / [`cache::MAX_ENTRY_BYTES`], [`cache::L1_CAPACITY`],
//! `cache_entry_too_large`), issuers per proxy ([`config::MAX_JWT_RULES`]), `jwksUri` length,
//! fetch retries ([`remote::BACKOFF_MIN_MS`] … [`remote::BACKOFF_MAX_MS`]).
//! * Envoy refetches remote keys only when they expire; wasmesh also refetches on an unknown
//!   `kid` (rate-limited), so a rotated signing key works before the refresh.
//! * OpenID discovery (no `jwks`/`jwksUri`): a `jwks_uri` on another server than the issuer is
//!   fetched through `wasmesh-jwks|…` of that server, which `wasmeshctl` cannot know in advance
//!   (add the cluster, or set `jwksUri`).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod cache;
pub mod config;
pub mod ec;
pub mod extract;
pub mod identity;
pub mod jose;
pub mod jwks;
#[cfg(test)]
mod jwks_tests;
pub mod jwt;
pub mod remote;
pub mod rsa;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod verify;
#[cfg(test)]
mod wycheproof_tests;

pub use cache::{MapCache, NoCache, TokenCache};
pub use config::{jwks_endpoints, validate, AuthnConfig};
pub use jwt::Status;
pub use remote::{jwks_cluster_name, parse_jwks_uri, JwksEndpoint};
pub use verify::{Allowed, Authn, Denied, EvalStats, Mutation, Outcome, RequestHeaders, WaitFor};
pub use wasmesh_istio::CompileError;

/// The response-side callbacks the authn filter needs ([`wasmesh_istio::module`]), whatever its
/// configuration: none. It verifies, denies (a local reply) and hands the identity on, all on the
/// request side.
pub const HTTP_CALLBACKS: wasmesh_istio::module::Callbacks = wasmesh_istio::module::Callbacks::NONE;
