//! `make run`'s demo mesh starts, routes as the README says, and stops cleanly.

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
}
