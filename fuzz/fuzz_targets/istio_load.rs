//! Istio YAML/JSON as `wasmeshctl` and the filters read it: the loader (`Loader::add_str`,
//! `finish`, with and without `--override`), the webhook-style validation, and the compilers not
//! covered by their own targets: RequestAuthentication (authn-core, incl. inline JWKS),
//! Telemetry (stats-core, incl. the CEL tag expressions), PeerAuthentication/AuthorizationPolicy
//! validation (authz-core), VirtualService validation (router-core); durations.
//! Properties: nothing panics; every error names where it was found.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_fuzz::workloads;
use wasmesh_istio::{LoadOptions, Loader};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = wasmesh_istio::parse_duration(&text);

    let mut resources = None;
    for override_duplicates in [false, true] {
        let mut loader = Loader::new(LoadOptions { override_duplicates, skip_unsupported: true, ..Default::default() });
        loader.add_str(&text, "a.yaml");
        if override_duplicates {
            loader.add_str(&text, "b.yaml");
        }
        match loader.finish() {
            Ok(input) => resources = Some(input.resources),
            Err(failure) => {
                assert!(!failure.errors.is_empty());
                for e in &failure.errors {
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    let Some(res) = resources else { return };

    let _ = wasmesh_istio::validate::validate_webhook(&res);
    let _ = wasmesh_authn::config::validate(&res);
    let _ = wasmesh_authz::validate_all(&res);
    let _ = wasmesh_router::validate(&res);
    let _ = wasmesh_stats::validate(&res);
    for wl in workloads() {
        if let Ok(authn) = wasmesh_authn::AuthnConfig::new(wl.clone()).compile(&res) {
            let _ = authn.providers().len();
            let _ = authn.is_configured();
        }
        let stats_cfg: wasmesh_stats::StatsConfig =
            serde_json::from_value(serde_json::json!({ "workload": wl })).expect("a stats configuration");
        if let Ok(stats) = stats_cfg.compile(&res) {
            let values = stats.evaluate(|path| Some(path.join(".").into_bytes()));
            assert_eq!(values.len(), stats.exprs().len());
        }
    }
});
