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

use std::path::Path;
use wasmesh_strip_exports::{parse_list, strip, Stripped};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
    let tmp = dir.join(format!(".{module}.wasm.strip-{}", std::process::id()));
    let write = std::fs::write(&tmp, &out).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &path)
    });
    if let Err(e) = write {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("writing {}: {e}", path.display()));
    }
    println!(
        "strip-exports: {} without {} ({} -> {} bytes)",
        path.display(),
        removed.join(", "),
        wasm.len(),
        out.len()
    );
    Ok(())
}
