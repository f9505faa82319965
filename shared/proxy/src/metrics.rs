//! Envoy metrics for the wasmesh filters, one way for every filter.
//!
//! Naming: a filter's own metrics are `wasmesh.<filter>.<event>` (dots between segments,
//! snake_case inside one). Envoy keeps wasm-defined metrics in its `wasmcustom` namespace, so the
//! admin `/stats` shows `wasmcustom.wasmesh.authn.denied` and Prometheus shows
//! `wasmesh_authn_denied`. A label is one more segment after the event
//! (`wasmesh.authz.policy.denied.<rule>`) that a stats tag written by wasmeshctl extracts
//! (`authz_rule`). Istio's standard metrics (`istio_requests_total`, …) keep Istio's names.
//!
//! Counting: a request bumps a [`Counter`] in the VM (no hostcall); the filter's tick calls
//! [`Counter::flush`], one `increment_metric` per counter that moved. Envoy's `define_metric`
//! returns a new id on every call, so a counter is defined once per VM and kept.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::Cell;

/// The Envoy name of a filter's metric: `wasmesh.<filter>.<event>`.
pub fn metric_name(filter: &str, event: &str) -> String {
    format!("wasmesh.{filter}.{event}")
}

/// A counter whose increments stay in the VM until [`Counter::flush`].
#[derive(Debug, Default)]
pub struct Counter {
    id: Option<u32>,
    pending: Cell<u64>,
}

impl Counter {
    /// Defines `wasmesh.<filter>.<event>`.
    pub fn new(filter: &str, event: &str) -> Counter {
        Counter::named(&metric_name(filter, event))
    }

    /// Defines a counter with a full Envoy name (a label segment appended to a base name).
    /// A host that refuses the definition leaves a counter that counts nothing.
    pub fn named(name: &str) -> Counter {
        Counter { id: define(MetricType::Counter, name), pending: Cell::new(0) }
    }

    pub fn bump(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.pending.set(self.pending.get().saturating_add(n));
    }

    /// Hands what was counted since the last flush to Envoy (no hostcall when nothing was).
    pub fn flush(&self) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n > 0) {
            increment(id, n);
        }
    }
}

/// Defines a metric; `None` when the host refuses.
pub fn define(ty: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(ty, name).ok()
}

/// Adds to a counter now (for counters that are not batched, such as per-label-set metrics whose
/// ids live in a core's cache).
pub fn increment(id: u32, by: u64) {
    let _ = hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX));
}

/// Records a histogram sample.
pub fn record(id: u32, value: u64) {
    let _ = hostcalls::record_metric(id, value);
}

/// The gauge `wasmesh.vm.linear_memory_bytes`: the largest wasm linear memory of any wasmesh VM
/// in this Envoy (the main thread's and one per worker). A VM's linear memory only grows, so the
/// largest is also the high-water mark; a value that keeps rising under steady traffic is a leak.
pub const VM_MEMORY_GAUGE: &str = "wasmesh.vm.linear_memory_bytes";

/// This VM's wasm linear memory in bytes (0 outside wasm).
pub fn vm_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size::<0>() as u64).saturating_mul(65_536)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// Raises [`VM_MEMORY_GAUGE`] to this VM's linear memory when it is larger (one hostcall to read
/// the gauge, one to set it when this VM is the largest); called from a root context's tick.
pub fn report_vm_memory(gauge: &std::cell::Cell<Option<u32>>) {
    let id = match gauge.get() {
        Some(id) => id,
        None => match define(MetricType::Gauge, VM_MEMORY_GAUGE) {
            Some(id) => {
                gauge.set(Some(id));
                id
            }
            None => return,
        },
    };
    let mine = vm_memory_bytes();
    let current = hostcalls::get_metric(id).unwrap_or(0);
    if mine > current {
        record(id, mine);
    }
}
