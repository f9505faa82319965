//! docs/filter-configuration.md is what `wasmeshctl filter-config` prints from the filters'
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! configuration types: a field added, renamed or re-defaulted in a core changes the page.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_committed_filter_configuration_page_is_current() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_wasmeshctl")).arg("filter-config").output().expect("run wasmeshctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = String::from_utf8(out.stdout).expect("utf-8");
    let committed = std::fs::read_to_string(repo.join("docs/filter-configuration.md")).unwrap_or_default();
    assert!(
        page == committed,
        "docs/filter-configuration.md is stale; refresh it with:\n  cargo run -q -p wasmeshctl -- filter-config > docs/filter-configuration.md"
    );
}

#[test]
fn one_filters_json_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmeshctl"))
        .args(["filter-config", "--schema", "authz"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON Schema");
    assert_eq!(schema["title"], "AuthzConfig");
    assert!(schema["properties"]["stage"].is_object());
    let bad = Command::new(env!("CARGO_BIN_EXE_wasmeshctl"))
        .args(["filter-config", "--schema", "nope"])
        .output()
        .expect("run");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("unknown filter \"nope\""));
}
