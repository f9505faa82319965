//! `make wasm`, after cargo: each module without the exports its filter's list names.
//!
//!   strip-exports <filters dir> <wasm dir> <module>...
//!
//! `<wasm dir>/<module>.wasm` loses the exports listed in `<filters dir>/<module>/stripped-exports.txt`
//! (the library's docs say which may be listed and why). The stripped module is written to a new
//! file renamed over `<module>.wasm`, never in place: cargo hard-links `<module>.wasm` to its own
//! copy in `deps/` (and target/ may share inodes with other checkouts), which must stay as cargo
//! built it. A module already without those exports is left alone, so running it again, or after
//! wasm-opt, does nothing.
//!
//!   strip-exports variant <filters dir> <wasm dir> <module> <variant>
//!
//! Writes `<wasm dir>/<module>-<variant>.wasm` (e.g. `wasmesh-request.wasm`): `<module>.wasm` as it
//! is (run after wasm-opt: one optimisation serves both) with its variant marker patched
//! ([`patch_marker`], `wasmesh_istio::module`) and without the exports listed in
//! `<filters dir>/<module>/stripped-exports-<variant>.txt`.

use std::path::Path;
use wasmesh_istio::module::Variant;
use wasmesh_strip_exports::{parse_list, patch_marker, strip, Stripped};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, filters, dir, module, variant] = args.as_slice() {
        if cmd == "variant" {
            if let Err(e) = derive(Path::new(filters), Path::new(dir), module, variant) {
                eprintln!("strip-exports: {module}-{variant}: {e}");
                std::process::exit(1);
            }
            return;
        }
    }
    let [filters, dir, modules @ ..] = args.as_slice() else {
        eprintln!("usage: strip-exports <filters dir> <wasm dir> <module>...");
        std::process::exit(2);
    };
    for m in modules {
        if let Err(e) = run(Path::new(filters), Path::new(dir), m) {
            eprintln!("strip-exports: {m}: {e}");
            std::process::exit(1);
        }
    }
}

fn derive(filters: &Path, dir: &Path, module: &str, variant: &str) -> Result<(), String> {
    let Some(v) = Variant::ALL.into_iter().find(|v| v.name() == variant && *v != Variant::Full) else {
        return Err(format!("{variant:?} is not a module variant (wasmesh_istio::module::Variant)"));
    };
    let list_path = filters.join(module).join(format!("stripped-exports-{variant}.txt"));
    let text = std::fs::read_to_string(&list_path).map_err(|e| format!("{}: {e}", list_path.display()))?;
    let names = parse_list(&text).map_err(|e| format!("{}: {e}", list_path.display()))?;
    let path = dir.join(format!("{module}.wasm"));
    let wasm = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let patched =
        patch_marker(&wasm, &Variant::Full.marker(), &v.marker()).map_err(|e| format!("{}: {e}", path.display()))?;
    let out = match strip(&patched, &names).map_err(|e| format!("{}: {e}", path.display()))? {
        Stripped::Module { wasm, .. } => wasm,
        Stripped::Unchanged => patched,
    };
    let target = dir.join(format!("{module}-{variant}.wasm"));
    write(dir, &target, &out)?;
    println!(
        "strip-exports: {} from {} with marker {variant:?}, without {} ({} bytes)",
        target.display(),
        path.display(),
        names.join(", "),
        out.len()
    );
    Ok(())
}

/// Writes `path` through a new file in `dir` renamed over it.
fn write(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!(".strip-exports-{}.tmp", std::process::id()));
    let write = std::fs::write(&tmp, bytes).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, path)
    });
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("writing {}: {e}", path.display()));
    }
    Ok(())
}

fn run(filters: &Path, dir: &Path, module: &str) -> Result<(), String> {
    let list_path = filters.join(module).join("stripped-exports.txt");
    let text = std::fs::read_to_string(&list_path).map_err(|e| format!("{}: {e}", list_path.display()))?;
    let names = parse_list(&text).map_err(|e| format!("{}: {e}", list_path.display()))?;
    let path = dir.join(format!("{module}.wasm"));
    let wasm = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let Stripped::Module { removed, wasm: out } =
        strip(&wasm, &names).map_err(|e| format!("{}: {e}", path.display()))?
    else {
        return Ok(());
    };
    write(dir, &path, &out)?;
    println!(
        "strip-exports: {} without {} ({} -> {} bytes)",
        path.display(),
        removed.join(", "),
        wasm.len(),
        out.len()
    );
    Ok(())
}
