//! `authz-diff [CORPUS.yaml ...]`: the differential runner. For each corpus file it runs two
//! listeners (all files' listeners side by side in one Envoy, so the module compiles once), one
//! with Envoy's native RBAC filter configured as istiod would from the corpus policies, one with
//! the wasmesh authz filter configured by wasmeshctl from the same policies, sends every request
//! of the corpus to both, and prints every decision that differs.
//! Without arguments it runs the shipped corpus (`e2e/corpus/authz/*.yaml`). Exit status 1 when
//! there is any difference or error.
//!
//! Needs the filters built (`make wasm`), Envoy (`ENVOY_BIN` or `make deps`), `curl` and `openssl`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use wasmesh_e2e::authz::{corpus_files, diff_all};

fn main() {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if args.iter().any(|a| a.as_os_str() == "-h" || a.as_os_str() == "--help") {
        println!("usage: authz-diff [CORPUS.yaml ...]   (default: e2e/corpus/authz/*.yaml)");
        return;
    }
    let files = if args.is_empty() { corpus_files() } else { args };
    if files.is_empty() {
        eprintln!("authz-diff: no corpus files");
        std::process::exit(2);
    }
    let mut failed = false;
    let (mut requests, mut differences) = (0, 0);
    for (f, report) in files.iter().zip(diff_all(&files)) {
        match report {
            Ok(report) => {
                print!("{}", report.render());
                requests += report.requests;
                differences += report.differences.len();
                failed |= !report.differences.is_empty() || !report.unexpected.is_empty();
            }
            Err(e) => {
                println!("ERROR {}: {e}", f.display());
                failed = true;
            }
        }
    }
    println!("total: {} files, {requests} requests, {differences} differences", files.len());
    std::process::exit(i32::from(failed));
}
