//! wasmesh's Istio types against Istio's own CRD schemas (controller/crds, Istio 1.30.3):
//! - every field the CRD has is accepted by our loader (a "maximal" document built from the schema
//!   loads without an unknown-field error), so real Istio YAML is never refused for a field name;
//! - what our loader accepts re-serializes to something the CRD schema accepts (no invented field
//!   names, right types);
//! - the examples shipped in examples/ are valid Istio for their kind and version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Map, Value};
use std::path::PathBuf;
use wasmesh_istio::{load_str, Kind};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `WASMESH_ISTIO_CRDS`, else the copy vendored in the repository (controller/crds, with its provenance).
fn crds() -> Vec<Value> {
    let path = std::env::var("WASMESH_ISTIO_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("controller/crds/istio-1.30.3.gen.yaml"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Istio CRDs not found at {} ({e}); set WASMESH_ISTIO_CRDS", path.display()));
    yaml_serde::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: yaml_serde::Value = serde::Deserialize::deserialize(d).ok()?;
            serde_json::to_value(v).ok()
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The `spec` schema of `kind` at `version`.
fn spec_schema(crds: &[Value], kind: &str, version: &str) -> Value {
    let crd = crds
        .iter()
        .find(|c| c.pointer("/spec/names/kind").and_then(Value::as_str) == Some(kind))
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let versions = crd.pointer("/spec/versions").and_then(Value::as_array).expect("versions");
    let v = versions.iter().find(|v| v["name"] == version).unwrap_or_else(|| panic!("{kind} has no version {version}"));
    v.pointer("/schema/openAPIV3Schema/properties/spec").cloned().expect("spec schema")
}

/// A value with every property the schema declares (placeholders of the right type).
fn maximal(schema: &Value, depth: usize) -> Value {
    if let Some(e) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.iter().find(|v| v.as_str() != Some("UNSPECIFIED")).or(e.first()))
    {
        return e.clone();
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "object" => {
            let mut out = Map::new();
            if depth > 7 {
                return Value::Object(out);
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    out.insert(k.clone(), maximal(v, depth + 1));
                }
            } else if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                out.insert("8080".into(), maximal(add, depth + 1)); // a key that is also a valid port
            }
            Value::Object(out)
        }
        "array" => match schema.get("items") {
            Some(items) => json!([maximal(items, depth + 1)]),
            None => json!([]),
        },
        "string" => json!("1s"),
        "integer" => json!(1),
        "number" => json!(1.5),
        "boolean" => json!(true),
        _ if schema.get("x-kubernetes-int-or-string").is_some() => json!(1),
        _ => json!({}),
    }
}

/// Structural validation (types, properties, additionalProperties, items, enums); returns every
/// violation with its path.
fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) && schema.get("properties").is_none() {
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(value) {
            out.push(format!("{path}: {value} not in enum {e:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match (ty, value) {
        ("object", Value::Object(map)) => {
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                match (props.and_then(|p| p.get(k)), schema.get("additionalProperties")) {
                    (Some(s), _) => check(s, v, &format!("{path}.{k}"), out),
                    (None, Some(a)) if a.is_object() => check(a, v, &format!("{path}.{k}"), out),
                    (None, Some(Value::Bool(true))) => {}
                    _ => out.push(format!("{path}.{k}: not in the CRD schema")),
                }
            }
        }
        ("array", Value::Array(items)) => {
            if let Some(s) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    check(s, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        ("string", Value::String(_)) | ("boolean", Value::Bool(_)) | ("number", Value::Number(_)) => {}
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        ("", _) => {}
        (_, Value::String(_) | Value::Number(_)) if int_or_string => {}
        (t, v) => out.push(format!("{path}: expected {t}, got {v}")),
    }
}

fn api_version(kind: Kind) -> String {
    format!("{}/{}", kind.group(), kind.versions()[0])
}

#[test]
fn every_crd_field_is_accepted_and_round_trips_to_valid_istio() {
    let crds = crds();
    for kind in Kind::ALL {
        let schema = spec_schema(&crds, kind.name(), kind.versions()[0]);
        let mut spec = maximal(&schema, 0);
        // Istio CEL rules make some fields mutually exclusive; wasmesh reads both spellings of
        // the ones it supports, so only drop what the CRD itself deprecates in favour of another.
        if let Some(o) = spec.as_object_mut() {
            if kind == Kind::AuthorizationPolicy || kind == Kind::RequestAuthentication || kind == Kind::Telemetry {
                o.remove("targetRef"); // deprecated in favour of targetRefs; both are typed
            }
        }
        let doc = json!({"apiVersion": api_version(kind), "kind": kind.name(), "metadata": {"name": "maximal", "namespace": "default"}, "spec": spec});
        let yaml = yaml_serde::to_string(&doc).unwrap();
        let loaded = load_str(&yaml, "maximal.yaml")
            .unwrap_or_else(|e| panic!("{}: a field Istio's CRD has was refused: {e}", kind.name()));
        let back = serde_json::to_value(&loaded[0]).unwrap();
        let mut problems = Vec::new();
        check(&schema, &back["spec"], "spec", &mut problems);
        assert!(problems.is_empty(), "{}: what wasmesh writes back is not valid Istio: {problems:#?}", kind.name());
    }
}

#[test]
fn targetref_singular_is_accepted_too() {
    let y = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: istio-system}\nspec:\n  targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: gw}\n  action: ALLOW\n  rules: [{}]\n";
    assert_eq!(load_str(y, "t").unwrap().len(), 1);
}

#[test]
fn every_example_is_valid_istio() {
    let crds = crds();
    let mut checked = 0;
    for dir in ["examples/bookinfo", "examples/httpbin"] {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(repo().join(dir)).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
            let text = std::fs::read_to_string(&f).unwrap();
            for (i, d) in yaml_serde::Deserializer::from_str(&text).enumerate() {
                let v: yaml_serde::Value = serde::Deserialize::deserialize(d).unwrap();
                if v.is_null() {
                    continue;
                }
                let v = serde_json::to_value(v).unwrap();
                let kind = v["kind"].as_str().unwrap();
                let version = v["apiVersion"].as_str().unwrap().rsplit('/').next().unwrap();
                let mut problems = Vec::new();
                check(&spec_schema(&crds, kind, version), &v["spec"], "spec", &mut problems);
                assert!(problems.is_empty(), "{} document {}: {problems:#?}", f.display(), i + 1);
                checked += 1;
            }
            load_str(&text, &f.display().to_string()).unwrap();
        }
    }
    assert!(checked >= 15, "only {checked} example documents found");
}

#[test]
fn the_checker_itself_catches_bad_documents() {
    let crds = crds();
    let schema = spec_schema(&crds, "VirtualService", "v1");
    let mut problems = Vec::new();
    check(
        &schema,
        &json!({"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}, "wieght": 1}]}]}),
        "spec",
        &mut problems,
    );
    assert_eq!(problems, vec!["spec.http[0].route[0].wieght: not in the CRD schema".to_string()]);
    let mut problems = Vec::new();
    check(&schema, &json!({"hosts": "a"}), "spec", &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
}
