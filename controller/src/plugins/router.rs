//! The router filter on sidecar outbound and gateway listeners.
