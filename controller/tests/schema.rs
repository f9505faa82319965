//! Istio CRD schema validation (`wasmesh_controller::schema::check`) over a corpus of Istio 1.30 YAML:
//! valid documents from Istio's docs and reference pages are accepted, every example under
//! `examples/` is accepted, and invalid documents are refused with Istio's message and the field path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use wasmesh_controller::schema::{check, classify, KindClass, SchemaError};

fn docs_in(path: &Path) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for (i, d) in yaml_serde::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(d).unwrap_or_else(|e| panic!("{} document {i}: {e}", path.display()));
        if !v.is_null() {
            out.push((format!("{} document {i}", path.display()), v));
        }
    }
    out
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            files.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(p);
        }
    }
    files.sort();
    files
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn show(errors: &[SchemaError]) -> String {
    errors.iter().map(|e| format!("\n  {e}")).collect()
}

#[test]
fn istio_docs_examples_are_accepted() {
    let mut kinds = std::collections::BTreeSet::new();
    let mut failures = String::new();
    for file in yaml_files(&root().join("tests/schema/valid")) {
        for (at, doc) in docs_in(&file) {
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_string());
            let errors = check(&doc);
            if !errors.is_empty() {
                failures.push_str(&format!("\n{at} ({} {}):{}", doc["kind"], doc["metadata"]["name"], show(&errors)));
            }
        }
    }
    assert!(failures.is_empty(), "valid Istio documents refused:{failures}");
    for kind in [
        "VirtualService",
        "DestinationRule",
        "Gateway",
        "ServiceEntry",
        "WorkloadEntry",
        "AuthorizationPolicy",
        "RequestAuthentication",
        "PeerAuthentication",
        "Telemetry",
        "WasmPlugin",
        "TrafficExtension",
        "EnvoyFilter",
    ] {
        assert!(kinds.contains(kind), "the valid corpus has no {kind}");
    }
}

#[test]
fn every_istio_document_under_examples_is_accepted() {
    let mut n = 0;
    let mut failures = String::new();
    for file in yaml_files(&root().join("../examples")) {
        for (at, doc) in docs_in(&file) {
            let (Some(api), Some(kind)) = (doc["apiVersion"].as_str(), doc["kind"].as_str()) else { continue };
            if classify(api, kind) != KindClass::Istio {
                continue;
            }
            n += 1;
            let errors = check(&doc);
            if !errors.is_empty() {
                failures.push_str(&format!("\n{at} ({kind} {}):{}", doc["metadata"]["name"], show(&errors)));
            }
        }
    }
    assert!(n > 10, "only {n} Istio documents under examples/");
    assert!(failures.is_empty(), "examples refused:{failures}");
}

#[test]
fn invalid_documents_are_refused_with_istios_message_and_path() {
    let mut failures = String::new();
    let mut n = 0;
    for file in yaml_files(&root().join("tests/schema/invalid")) {
        for (at, doc) in docs_in(&file) {
            n += 1;
            let expect = doc["metadata"]["annotations"]["test.wasmesh.io/expect"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no test.wasmesh.io/expect annotation"));
            let errors = check(&doc);
            let (path, message) = expect.split_once(": ").unwrap_or(("", expect));
            if !errors.iter().any(|e| e.path == path && e.message.contains(message)) {
                failures.push_str(&format!("\n{at}: expected `{expect}`, got:{}", show(&errors)));
            }
        }
    }
    assert!(n >= 30, "only {n} invalid documents");
    assert!(failures.is_empty(), "{failures}");
}

/// Validating 10,000 resources must take seconds. Prints the time (run with `--nocapture`, or in
/// release with `cargo test --release -p wasmeshctl --test schema -- --nocapture ten_thousand`).
#[test]
fn ten_thousand_documents_take_seconds() {
    let mut corpus: Vec<Value> = Vec::new();
    for file in yaml_files(&root().join("tests/schema/valid")) {
        corpus.extend(docs_in(&file).into_iter().map(|(_, d)| d));
    }
    let docs: Vec<Value> = corpus.iter().cycle().take(10_000).cloned().collect();
    // First use compiles each kind's validator; that is part of what a user waits for.
    let start = std::time::Instant::now();
    let mut errors = 0;
    for d in &docs {
        errors += check(d).len();
    }
    let elapsed = start.elapsed();
    println!(
        "schema::check: 10,000 documents ({} distinct, {} kinds) in {:.2} s ({:.0} µs each)",
        corpus.len(),
        corpus.iter().map(|d| d["kind"].as_str()).collect::<std::collections::BTreeSet<_>>().len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / 10_000.0
    );
    assert_eq!(errors, 0);
    // Generous bound for an unoptimised build on a loaded 2-core machine (measured: ~7 s unoptimised,
    // 0.70 s in release without LTO, first-use compilation of every validator included).
    assert!(elapsed.as_secs() < 60, "10,000 documents took {elapsed:?}");
}
