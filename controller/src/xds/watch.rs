//! Watching the YAML directory: poll (cheap: file names, sizes and modification times), debounce
//! until the directory stops changing, then load and validate. Invalid YAML is refused with every
//! error (file, resource, field) and the last good configuration stays.

use super::log;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasmesh_istio::{Error, Resources};

/// One accepted state of the watched directory.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the configuration `serve` started with, +1 for each accepted change.
    pub generation: u64,
    pub resources: Resources,
}

/// Loads and validates `dir` as `-f DIR` does (every `*.yaml`, `*.yml`, `*.json`; kinds wasmesh
/// does not read are skipped, a resource given twice is an error).
pub fn load(dir: &Path) -> Result<Resources, Vec<Error>> {
    let resources = crate::input::InputArgs::files([dir]).read().map_err(|failure| failure.errors)?.resources;
    let errors = crate::validate::validate(&resources);
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

/// What the poller compares: every YAML file with its size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
            let mtime = meta.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect();
    out.sort();
    out
}

/// Polls `dir` every `interval` until `stop`; each change that stays put for one more interval
/// is loaded and, when valid, handed to `apply` with the next generation.
pub fn run(dir: PathBuf, interval: Duration, stop: Arc<AtomicBool>, mut generation: u64, apply: impl Fn(Snapshot)) {
    let mut seen = fingerprint(&dir);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(interval);
        let now = fingerprint(&dir);
        if now == seen {
            continue;
        }
        // Debounce: an editor or `cp` may still be writing; wait until two polls agree.
        let mut settled = now;
        loop {
            std::thread::sleep(interval);
            let again = fingerprint(&dir);
            if again == settled {
                break;
            }
            settled = again;
        }
        seen = settled;
        match load(&dir) {
            Ok(resources) => {
                generation += 1;
                log(format!(
                    "{}: change accepted as generation {generation} ({} resources)",
                    dir.display(),
                    resources.items.len()
                ));
                apply(Snapshot { generation, resources });
            }
            Err(errors) => {
                log(format!(
                    "{}: change refused, {} error(s); still serving generation {generation}:",
                    dir.display(),
                    errors.len()
                ));
                for e in &errors {
                    log(format!("  error: {e}"));
                }
            }
        }
    }
}
