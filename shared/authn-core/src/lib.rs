//! RequestAuthentication (JWT) as Istio configures Envoy's `jwt_authn` filter, in pure Rust: the
//! same YAML selects the same rules, the same request gets the same answer (status, body,
//! `WWW-Authenticate`), and a verified token hands the same `request.auth.*` to authorization.
//!
//! * [`config`]: which RequestAuthentications apply, webhook-equivalent validation, providers and
//!   Istio's requirement tree, compiled once.
//! * [`extract`]: token locations.
//! * [`jwt`]: parsing with Envoy's statuses; [`jwks`]: keys and signatures (jwt-simple).
//! * [`verify`]: per-request evaluation; [`cache`]: the verified-token cache shared by workers.
//! * [`remote`]: the `jwksUri` fetch state machine; [`identity`]: the hand-over to authz.
//!
//! No proxy-wasm here: the filter (`filters/authn`) supplies headers, time, shared data and
//! HTTP calls.
#![forbid(unsafe_code)]

pub mod cache;
pub mod config;
pub mod extract;
pub mod identity;
pub mod jwks;
pub mod jwt;
pub mod remote;
pub mod verify;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

pub use cache::{MapCache, NoCache, TokenCache};
pub use config::{jwks_cluster_name, jwks_endpoints, parse_jwks_uri, validate, AuthnConfig, CompileError, JwksEndpoint};
pub use jwt::Status;
pub use verify::{Allowed, Authn, Denied, EvalStats, Mutation, Outcome, RequestHeaders, WaitFor};
