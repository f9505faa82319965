//! `wasmeshctl validate` as a user runs it on YAML that Istio's API server refuses: every document
//! is reported with file, document number, resource, field path and Istio's own message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

#[test]
fn validate_reports_istios_cel_message_for_every_invalid_document() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = dir.join("tests/schema/invalid/cel.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_wasmeshctl"))
        .args(["validate", "-f"])
        .arg(&file)
        .current_dir(std::env::temp_dir()) // an installed binary: the CRDs are embedded
        .output()
        .expect("run wasmeshctl");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut n = 0;
    for (i, d) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let doc = serde_json::Value::deserialize(d).unwrap();
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        let expect = doc["metadata"]["annotations"]["test.wasmesh.io/expect"].as_str().unwrap();
        let line = format!("cel.yaml (document {}): {kind} default/{name}: {expect}", i + 1);
        assert!(stderr.contains(&line), "missing `{line}` in:\n{stderr}");
        n += 1;
    }
    assert!(n >= 25, "{n} documents");
}
