//! `make run`'s demo mesh starts, routes as the README says, and stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_mesh_smoke() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmesh-demo")).arg("--smoke").output().expect("run wasmesh-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("GET /productpage                 200 productpage -> reviews v3"), "{text}");
    assert!(text.contains("GET /productpage (end-user=jason) 200 productpage -> reviews v2"), "{text}");
    assert!(text.contains("GET /admin                       404"), "{text}");
    assert!(text.contains("POST /productpage                403 RBAC: access denied"), "{text}");
    assert_eq!(text.matches("Envoy pid").count(), 7, "seven Envoys: {text}");
    assert!(text.contains("wasmeshctl envoy -f <files> --workload default/reviews-v2 --role sidecar"), "{text}");
    // How to open the dashboard, and its first frame over the seven Envoys' admin endpoints:
    // the self-check's requests are on it.
    assert!(text.contains("cargo run -q -p wasmeshctl -- dashboard --admin 127.0.0.1:"), "{text}");
    assert!(text.contains("Istio Mesh Dashboard"), "{text}");
    let frame = text.split("Istio Mesh Dashboard").nth(1).unwrap_or_default();
    assert!(frame.lines().any(|l| l.starts_with("reviews.default.svc.cluster.local")), "{frame}");
    assert!(frame.lines().any(|l| l.trim_start().starts_with("reviews-v2")), "{frame}");
    // The mesh runs on `wasmeshctl serve`: the bootstraps take their configuration by xDS, and an
    // edit of the VirtualService moves the traffic of the running Envoys.
    assert!(text.contains("Live: `wasmeshctl serve --watch "), "{text}");
    assert!(text.contains("--role sidecar") && text.contains(" --xds 127.0.0.1:"), "{text}");
    let live = text.lines().find(|l| l.starts_with("Live update:")).unwrap_or_default();
    assert!(live.contains("GET /productpage 200 productpage -> reviews v1 after "), "no live update: {text}");
}
