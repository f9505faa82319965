//! `wasmesh.wasm`: one module serving every wasmesh filter. Envoy creates one root context per
//! plugin; this module gives it the filter its `root_id` names:
//!
//! | root id | filter |
//! |---|---|
//! | `wasmesh.router` | VirtualService routing (HTTP) |
//! | `wasmesh.authz`, `wasmesh.authz.custom`, `wasmesh.authz.tcp`, `wasmesh.authz.peer_address` | AuthorizationPolicy (HTTP; CUSTOM stage; network RBAC on TCP; the network filter recording the peer address) |
//! | `wasmesh.authn` | RequestAuthentication (JWT) |
//! | `wasmesh.stats`, `wasmesh.stats.tcp` | Istio's standard metrics (HTTP; TCP) |
//! | `wasmesh.tracing` | distributed tracing: trace context, sampling, spans to an OTLP/HTTP or Zipkin collector ([`tracing`]) |
//! | `wasmesh.access_log` | access logs, TEXT or JSON (HTTP) |
//! | `wasmesh.oidc` | OIDC login at the gateway (authorization code flow, sealed session cookie) |
//! | `wasmesh.chain` | the one-pass layout: several of the HTTP filters above as phases of one filter ([`chain`]) |
//!
//! Any id is matched on its first two dot-separated components (`wasmesh.authz.<anything>` is
//! the authz filter, whose role then comes from its configuration, as in `authz.wasm`). Plugins
//! that share a `vm_id` and this module share one VM per worker thread: one V8 isolate instead
//! of one per filter (about 12 MB each).
//!
//! ## Layout decision: one module is the artifact that ships
//!
//! wasmesh ships as this one module (one OCI image `wasmesh`, `plugin.wasm` inside) serving every
//! phase, rather than one module per filter, because:
//! - memory: every module loaded is a V8 VM on the main thread and on each worker. Measured in
//!   Envoy 1.40, `--concurrency 1`, authn + authz + router + stats on one listener after 300
//!   requests (`e2e/tests/node_identity.rs`): four per-filter modules with four vm_ids
//!   188 MiB RSS, this module under one vm_id 158–161 MiB — about 28 MiB saved per Envoy with one
//!   worker, more with more workers;
//! - the one-pass mode (all phases in one filter, fewer host→guest callbacks) needs all the code
//!   in one module anyway;
//! - one image, one digest, one `sha256` to pin and roll out; phases cannot run mismatched
//!   versions of the hand-over formats (filter state written by authn, read by authz).
//!
//! The cost: plugins sharing a vm_id share a VM, so a trap in one filter takes down that worker's
//! VM for all of them (the filters deny unwrap/expect/panic for this reason, and Envoy's
//! `FAIL_RELOAD` reloads it). The per-filter modules keep building for the existing suites and
//! benchmarks.
//!
//! `plugin_root_id` is readable while the root context is being created (verified in Envoy
//! 1.40.0: `get_property(["plugin_root_id"])` inside the SDK's root-context callback returns the
//! plugin's `root_id`, also `plugin_name` and `plugin_vm_id`), so the choice is made there and the
//! filter's own root context runs unchanged, with no delegating layer on the request path.
//!
//! Why the filters are compiled in from their source files (`#[path]`) rather than linked as
//! dependencies: each per-filter module (`router.wasm`, ...) needs its own `_initialize`
//! (`proxy_wasm::main!`), and a cargo feature that removes it for this crate does not work —
//! features are unified per build, so `cargo build --workspace` (and `make wasm`, which builds
//! all modules in one cargo run) would compile the filter crates with their entry point and
//! link it in twice. Tried: the native link fails with a duplicate `_initialize`, and the wasm
//! release build (LTO) silently keeps one of them. Sharing the source file keeps one
//! implementation of each filter and exactly one entry point per module, whatever is built together.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use wasmesh_istio::module::{Variant, MARKER_LEN};

#[path = "../../router/src/filter.rs"]
pub mod router;

#[path = "../../authz/src/filter.rs"]
pub mod authz;

#[path = "../../authn/src/filter.rs"]
pub mod authn;

#[path = "../../stats/src/filter.rs"]
pub mod stats;

#[path = "../../stats/src/access_log.rs"]
pub mod access_log;
#[path = "../../stats/src/access_log_export.rs"]
pub mod access_log_export;

#[path = "../../oidc/src/filter.rs"]
pub mod oidc;

pub mod chain;

pub mod tracing;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // An unreadable marker: assume this module lacks every callback a variant may lack, so a
    // configuration needing one is refused rather than its response side silently skipped.
    wasmesh_proxy::phase::set_module_variant(module_variant().unwrap_or(Variant::RequestSide));
    proxy_wasm::set_root_context(root_context);
}}

/// Which module this is: `wasmesh.wasm` or a variant `make wasm` derived from it
/// ([`wasmesh_istio::module`]). The compiled module holds the full module's marker here;
/// tools/strip-exports, writing `wasmesh-request.wasm`, overwrites its one copy in the data
/// section with the request-side marker and removes that module's response-side exports.
static MODULE_VARIANT: [u8; MARKER_LEN] = Variant::Full.marker();

/// The variant this module's marker names. Read through `black_box`, so the compiler reads the
/// bytes in the module's memory (which the tool may have changed) instead of the value it knows.
pub fn module_variant() -> Option<Variant> {
    Variant::from_marker(std::hint::black_box(&MODULE_VARIANT))
}

/// The filters of this module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Router,
    Authz,
    Authn,
    Stats,
    /// OIDC login at the gateway (`wasmesh.oidc`).
    Oidc,
    /// The one-pass layout.
    Chain,
    /// Distributed tracing (`wasmesh.tracing`, [`tracing`]).
    Tracing,
    /// Access logs (`wasmesh.access_log`).
    AccessLog,
}

/// The root ids the controller writes today, one per filter role (for docs and tests).
pub const ROOT_IDS: [&str; 12] = [
    "wasmesh.router",
    "wasmesh.authz",
    "wasmesh.authz.custom",
    "wasmesh.authz.tcp",
    "wasmesh.authz.peer_address",
    "wasmesh.authn",
    "wasmesh.stats",
    "wasmesh.stats.tcp",
    chain::ROOT_ID,
    "wasmesh.oidc",
    tracing::ROOT_ID,
    access_log::ROOT_ID,
];

/// The filter a plugin's `root_id` names: `wasmesh.<filter>` or `wasmesh.<filter>.<role>`.
pub fn filter_for(root_id: &str) -> Option<Filter> {
    let rest = root_id.strip_prefix("wasmesh.")?;
    let name = rest.split('.').next().unwrap_or(rest);
    match name {
        "router" => Some(Filter::Router),
        "authz" => Some(Filter::Authz),
        "authn" => Some(Filter::Authn),
        "stats" => Some(Filter::Stats),
        "chain" => Some(Filter::Chain),
        "oidc" => Some(Filter::Oidc),
        "tracing" => Some(Filter::Tracing),
        "access_log" => Some(Filter::AccessLog),
        _ => None,
    }
}

/// The root context for a new plugin, by its root id.
pub fn root_context(context_id: u32) -> Box<dyn RootContext> {
    let root_id = wasmesh_proxy::property_string(&["plugin_root_id"]);
    match root_id.as_deref().and_then(filter_for) {
        Some(Filter::Router) => router::root_context(context_id),
        Some(Filter::Authz) => authz::root_context(context_id),
        Some(Filter::Authn) => authn::root_context(context_id),
        Some(Filter::Stats) => stats::root_context(context_id),
        Some(Filter::Chain) => chain::root_context(context_id),
        Some(Filter::Oidc) => oidc::root_context(context_id),
        Some(Filter::Tracing) => tracing::root_context(context_id),
        Some(Filter::AccessLog) => access_log::root_context(context_id),
        None => Box::new(Unknown { root_id }),
    }
}

/// A plugin whose root id names no wasmesh filter: refuses its configuration, so Envoy reports
/// the plugin as failed instead of running a filter that does nothing.
struct Unknown {
    root_id: Option<String>,
}

impl Context for Unknown {}

impl RootContext for Unknown {
    fn on_configure(&mut self, _size: usize) -> bool {
        let got = match &self.root_id {
            Some(id) => format!("root_id {id:?}"),
            None => "no readable plugin_root_id".to_string(),
        };
        wasmesh_proxy::log_error(&format!(
            "wasmesh: {got} names no wasmesh filter; expected one of {} (or wasmesh.<filter>.<role>)",
            ROOT_IDS.join(", ")
        ));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_id_the_controller_writes_names_its_filter() {
        let expected = [
            Filter::Router,
            Filter::Authz,
            Filter::Authz,
            Filter::Authz,
            Filter::Authz,
            Filter::Authn,
            Filter::Stats,
            Filter::Stats,
            Filter::Chain,
            Filter::Oidc,
            Filter::Tracing,
            Filter::AccessLog,
        ];
        for (id, f) in ROOT_IDS.iter().zip(expected) {
            assert_eq!(filter_for(id), Some(f), "{id}");
        }
    }

    #[test]
    fn other_root_ids_name_nothing() {
        for id in
            ["", "wasmesh", "wasmesh.", "wasmesh.routerx", "router", "istio.stats", "wasmesh.noop", "x.wasmesh.router"]
        {
            assert_eq!(filter_for(id), None, "{id:?}");
        }
    }
}
