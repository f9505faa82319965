//! VirtualService HTTP routing, compiled once at configure time and evaluated per request.
//!
//! The router picks, for each request, the Envoy cluster Istio would send it to
//! (`outbound|<port>|<subset>|<fqdn>`), or says that no route matches (Istio answers 404).
//! It knows nothing of proxy-wasm: the filter hands it a [`Request`] view and acts on the
//! [`Decision`].
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod actions;
pub mod compile;
mod delegate;
pub mod egress;
mod hosts;
pub mod matcher;
pub mod operation;
pub mod policy;
pub mod request;
mod rng;
pub mod simple_regex;
mod table;
mod tables;

pub use actions::{
    Abort, FaultDecision, HeaderActions, HeaderOps, Matched, PathRewrite, Redirect, RouteOps, FAULT_HEADERS,
};
pub use compile::{validate, Limits, RouterConfig, DEFAULT_CLUSTER_HEADER};
pub use egress::{OutboundMode, OutboundTrafficPolicy, BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
pub use policy::{
    istio_default_retry_policy, RoutePolicy, FAULT_FILTER, POLICY_FILTER_STATE_KEY, POLICY_HEADER, POLICY_STATE,
};
pub use request::{HeaderSlots, Request, RequestView};
pub use rng::Rng;
pub use table::{Decision, RouteOp, Router};
pub use tables::Tables;
pub use wasmesh_istio::CompileError;

#[cfg(test)]
mod tests;
