//! `make run`'s demo mesh starts, routes as the README says, and stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_mesh_smoke() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmesh-demo")).arg("--smoke").output().expect("run wasmesh-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The canary split (examples/bookinfo/demo/virtual-services.yaml: v1 90 %, v3 10 %) over 100
    // requests: v3's count is binomial(100, 0.1), mean 10, sd 3; outside 1..=25 has p < 1e-4.
    let split = text.lines().find(|l| l.trim_start().starts_with("GET /productpage x100")).unwrap_or_default();
    let count = |version: &str| -> u32 {
        let at = split.find(&format!(" x 200 productpage -> reviews {version}"));
        at.and_then(|i| split[..i].rsplit([' ', ',']).next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (v1, v3) = (count("v1"), count("v3"));
    assert_eq!(v1 + v3, 100, "only v1 and v3, all 200: {split}");
    assert!((1..=25).contains(&v3), "v3 share outside the bound: {split}");
    let ms = |l: &str, key: &str| -> u64 {
        let rest = l.split(key).nth(1).unwrap_or_default();
        rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
    };
    let slowest = ms(split, "(slowest ");
    assert!(slowest < 1500, "nobody but jason is delayed: {split}");
    // Fault injection: ratings delayed 2 s for jason only (reviews v2 calls ratings).
    let jason = text.lines().find(|l| l.contains("GET /productpage (end-user=jason)")).unwrap_or_default();
    assert!(jason.contains("200 productpage -> reviews v2 in "), "{text}");
    let took = ms(jason, " in ");
    assert!((1950..6000).contains(&took), "jason's page waits for the 2 s delay: {jason}");
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
    assert!(live.contains("GET /productpage 200 productpage -> reviews v3 after "), "no live update: {text}");
}
