//! Embeds Envoy's API descriptors (the `FileDescriptorSet` that the `envoy-types` crate ships next to
//! its generated code) so `wasmeshctl serve` can turn the JSON the bootstrap builder writes into the
//! protobuf xDS sends, with the proto3 JSON mapping Envoy itself applies to a JSON bootstrap.
//! `envoy-types` does not export the file, so its location comes from `cargo metadata`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--manifest-path"])
        .arg(&manifest)
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o.stdout,
        Ok(o) => fail(&format!("cargo metadata failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => fail(&format!("cannot run cargo metadata: {e}")),
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&out).unwrap_or_else(|e| fail(&format!("cargo metadata: {e}")));
    let pkg = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .unwrap_or_else(|| fail("envoy-types is not in the dependency graph"));
    let dir = PathBuf::from(pkg["manifest_path"].as_str().unwrap_or_default());
    let src = dir.parent().map(|d| d.join("src/generated/types.bin")).unwrap_or_default();
    let dst = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("envoy_types.bin");
    if let Err(e) = std::fs::copy(&src, &dst) {
        fail(&format!("{}: {e}", src.display()));
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", src.display());
}

fn fail(message: &str) -> ! {
    eprintln!("wasmeshctl build: Envoy API descriptors: {message}");
    std::process::exit(1)
}
