//! Removes from a built filter module the `proxy_on_*` exports its filter never needs.
//!
//! The Rust proxy-wasm SDK exports every `proxy_on_*` callback whether a filter implements it or
//! not, and Envoy (proxy-wasm-cpp-host `src/context.cc`) calls every exported callback: each
//! host→guest call costs about 2.2k instructions of Envoy's worker (BENCHMARKS.md, "Exports a
//! module does not need"). When the module does not export a callback, the host does not call it
//! and does what the SDK's default would have done: for `proxy_on_request_body`,
//! `proxy_on_request_trailers`, `proxy_on_response_headers`, `proxy_on_response_body` and
//! `proxy_on_response_trailers` it returns `Continue`; without `proxy_on_log` nothing is logged;
//! without `proxy_on_done` the context is done (`onDone` returns `true`) and
//! `proxy_on_delete` follows. `proxy_on_delete` is never removed (the SDK frees its contexts
//! there), nor any other export: [`STRIPPABLE`] lists the only ones this tool removes.
//!
//! Each module's list is `filters/<module>/stripped-exports.txt` (one export a line, `#`
//! comments), next to the filter it describes; the unit tests audit every list against the sources
//! the module is compiled from ([`Strippable::needed_by`]).

use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload, Validator, WasmFeatures};

/// An export this tool may remove, and what in a module's sources needs it.
pub struct Strippable {
    pub export: &'static str,
    /// Text that, found in the sources a module is compiled from (its `filters/<module>/src` and
    /// the files its `#[path]` modules name), means the module needs the export: the SDK callback
    /// (`fn on_log(`) or the phase method the driver calls from it (`fn log(`,
    /// wasmesh-proxy `PhaseRequest`).
    pub needed_by: &'static [&'static str],
    /// Text that, found in the driver every wasmesh module runs its phases in
    /// (`shared/proxy/src`), means every module needs the export: the driver implements that
    /// callback with work of its own, not only by calling the phases' methods.
    pub driver_needs: &'static [&'static str],
}

/// The only exports that may be removed. The request body and trailers are also needed by a module
/// whose phases can wait or answer (`Flow::Pause`, `Flow::Answered`): the driver holds the body
/// while a phase waits, so a module that pauses keeps them even where Envoy would not deliver the
/// body to a paused filter.
pub const STRIPPABLE: &[Strippable] = &[
    Strippable {
        export: "proxy_on_request_body",
        needed_by: &[
            "fn on_http_request_body(",
            "fn request_body(",
            "fn wants_body(",
            "Flow::Pause",
            "Flow::Answered",
            "Action::Pause",
        ],
        driver_needs: &[],
    },
    Strippable {
        export: "proxy_on_request_trailers",
        needed_by: &[
            "fn on_http_request_trailers(",
            "fn request_trailers(",
            "fn wants_body(",
            "Flow::Pause",
            "Flow::Answered",
            "Action::Pause",
        ],
        driver_needs: &[],
    },
    Strippable {
        export: "proxy_on_response_headers",
        needed_by: &["fn on_http_response_headers(", "fn response_headers("],
        driver_needs: &[],
    },
    Strippable {
        export: "proxy_on_response_body",
        needed_by: &["fn on_http_response_body(", "fn response_body("],
        driver_needs: &[],
    },
    Strippable {
        export: "proxy_on_response_trailers",
        needed_by: &["fn on_http_response_trailers(", "fn response_trailers("],
        driver_needs: &["fn on_http_response_trailers("],
    },
    Strippable { export: "proxy_on_log", needed_by: &["fn on_log(", "fn log("], driver_needs: &[] },
    // The root contexts' `done` work runs when the SDK drops them (`proxy_on_delete`, which Envoy
    // calls right after `proxy_on_done`); see wasmesh-proxy's `ChainRoot`.
    Strippable { export: "proxy_on_done", needed_by: &["fn on_done("], driver_needs: &["fn on_done("] },
];

/// The exports named by a `stripped-exports.txt`: one a line, `#` starts a comment. Every name
/// must be in [`STRIPPABLE`], once.
pub fn parse_list(text: &str) -> Result<Vec<&'static str>, String> {
    let mut out: Vec<&'static str> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        let Some(s) = STRIPPABLE.iter().find(|s| s.export == name) else {
            let known: Vec<&str> = STRIPPABLE.iter().map(|s| s.export).collect();
            return Err(format!(
                "line {}: {name:?} is not an export this tool removes (it removes {})",
                n + 1,
                known.join(", ")
            ));
        };
        if out.contains(&s.export) {
            return Err(format!("line {}: {name} is listed twice", n + 1));
        }
        out.push(s.export);
    }
    Ok(out)
}

/// What [`strip`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Stripped {
    /// The module exports none of the names (it was stripped before, or never had them).
    Unchanged,
    /// The module without these exports.
    Module { removed: Vec<String>, wasm: Vec<u8> },
}

/// The module without the exports named in `names` (the functions stay: only the export section
/// changes; wasm-opt, where `make wasm` runs it, then drops what nothing reaches). The result is
/// validated before it is returned.
pub fn strip(wasm: &[u8], names: &[&str]) -> Result<Stripped, String> {
    let mut module = Module::new();
    let mut removed = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(|e| format!("not a wasm module: {e}"))?;
        match &payload {
            Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                return Err("a component, not a core wasm module".into());
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(|e| format!("export section: {e}"))?;
                    if names.contains(&export.name) {
                        removed.push(export.name.to_string());
                        continue;
                    }
                    let kind = match export.kind {
                        ExternalKind::Func => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                        ExternalKind::FuncExact => {
                            return Err(format!("export {}: an exact function export, not supported", export.name));
                        }
                    };
                    exports.export(export.name, kind, export.index);
                }
                module.section(&exports);
            }
            _ => {
                if let Some((id, range)) = payload.as_section() {
                    let data = usize::try_from(range.start)
                        .ok()
                        .zip(usize::try_from(range.end).ok())
                        .and_then(|(start, end)| wasm.get(start..end))
                        .ok_or("a section outside the module")?;
                    module.section(&RawSection { id, data });
                }
            }
        }
    }
    if removed.is_empty() {
        return Ok(Stripped::Unchanged);
    }
    let out = module.finish();
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(&out)
        .map_err(|e| format!("the module without {} does not validate: {e}", removed.join(", ")))?;
    Ok(Stripped::Module { removed, wasm: out })
}

/// The module with the one copy of the marker `from` in its data segments replaced by `to` (the
/// same length): how `make wasm` tells a derived module which variant it is
/// (`wasmesh_istio::module`). No copy, or more than one, is an error: the module would not know.
pub fn patch_marker(wasm: &[u8], from: &[u8], to: &[u8]) -> Result<Vec<u8>, String> {
    if from.len() != to.len() || from.is_empty() {
        return Err("the markers differ in length".into());
    }
    let mut found = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::DataSection(reader) = payload.map_err(|e| format!("not a wasm module: {e}"))? {
            for data in reader {
                let data = data.map_err(|e| format!("data section: {e}"))?;
                // The segment's bytes are a slice of `wasm`: their offset in it.
                let start = (data.data.as_ptr() as usize).wrapping_sub(wasm.as_ptr() as usize);
                for (i, w) in data.data.windows(from.len()).enumerate() {
                    if w == from {
                        found.push(start + i);
                    }
                }
            }
        }
    }
    let [at] = found.as_slice() else {
        return Err(format!(
            "expected the marker {:?} once in the data segments, found it {} times",
            String::from_utf8_lossy(from),
            found.len()
        ));
    };
    let mut out = wasm.to_vec();
    out.get_mut(*at..*at + to.len()).ok_or("the marker is outside the module")?.copy_from_slice(to);
    Ok(out)
}

/// The names a module exports.
pub fn exports(wasm: &[u8]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(reader) = payload.map_err(|e| format!("not a wasm module: {e}"))? {
            for export in reader {
                out.push(export.map_err(|e| format!("export section: {e}"))?.name.to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use wasm_encoder::{CodeSection, Function, FunctionSection, Instruction, MemorySection, MemoryType, TypeSection};

    /// A module exporting `memory` and one function under each of `names`.
    fn module(names: &[&str]) -> Vec<u8> {
        let mut m = Module::new();
        let mut types = TypeSection::new();
        types.ty().function([], []);
        m.section(&types);
        let mut funcs = FunctionSection::new();
        for _ in names {
            funcs.function(0);
        }
        m.section(&funcs);
        let mut mem = MemorySection::new();
        mem.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
        m.section(&mem);
        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        for (i, n) in names.iter().enumerate() {
            exports.export(n, ExportKind::Func, u32::try_from(i).unwrap());
        }
        m.section(&exports);
        let mut code = CodeSection::new();
        for _ in names {
            let mut f = Function::new([]);
            f.instruction(&Instruction::End);
            code.function(&f);
        }
        m.section(&code);
        m.section(&RawSection { id: 0, data: b"\x04namexyz" });
        m.finish()
    }

    #[test]
    fn removes_only_the_named_exports_and_keeps_every_other_section() {
        let wasm = module(&["proxy_on_log", "proxy_on_delete", "proxy_on_done"]);
        let Stripped::Module { removed, wasm: out } = strip(&wasm, &["proxy_on_log", "proxy_on_done"]).unwrap() else {
            panic!("nothing removed")
        };
        assert_eq!(removed, ["proxy_on_log", "proxy_on_done"]);
        assert_eq!(exports(&out).unwrap(), ["memory", "proxy_on_delete"]);
        // The functions stay (the code section is copied as it was), so their indices hold.
        let sections = |w: &[u8]| -> Vec<u8> {
            Parser::new(0).parse_all(w).filter_map(|p| p.unwrap().as_section().map(|(id, _)| id)).collect()
        };
        assert_eq!(sections(&out), sections(&wasm));
        // A second pass finds nothing to do.
        assert_eq!(strip(&out, &["proxy_on_log", "proxy_on_done"]).unwrap(), Stripped::Unchanged);
    }

    /// [`module`] with one active data segment holding `data`.
    fn module_with_data(data: &[u8]) -> Vec<u8> {
        let mut m = Module::new();
        let mut mem = MemorySection::new();
        mem.memory(MemoryType { minimum: 1, maximum: None, memory64: false, shared: false, page_size_log2: None });
        m.section(&mem);
        let mut section = wasm_encoder::DataSection::new();
        section.active(0, &wasm_encoder::ConstExpr::i32_const(16), data.iter().copied());
        m.section(&section);
        m.finish()
    }

    #[test]
    fn the_marker_is_patched_where_it_is_once() {
        let wasm = module_with_data(b"..abc-full..");
        let out = patch_marker(&wasm, b"abc-full", b"abc-rqst").unwrap();
        assert_eq!(out.len(), wasm.len());
        assert!(out.windows(8).any(|w| w == b"abc-rqst") && !out.windows(8).any(|w| w == b"abc-full"));
        Validator::new_with_features(WasmFeatures::all()).validate_all(&out).unwrap();
        // Absent, twice, or a marker of another length: refused.
        assert!(patch_marker(&out, b"abc-full", b"abc-rqst").unwrap_err().contains("found it 0 times"));
        let twice = module_with_data(b"abc-full abc-full");
        assert!(patch_marker(&twice, b"abc-full", b"abc-rqst").unwrap_err().contains("found it 2 times"));
        assert!(patch_marker(&wasm, b"abc-full", b"abc").is_err());
    }

    #[test]
    fn a_module_without_the_exports_is_left_as_it_is() {
        let wasm = module(&["proxy_on_delete"]);
        assert_eq!(strip(&wasm, &["proxy_on_log"]).unwrap(), Stripped::Unchanged);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(strip(b"\0asm\x01\0\0\0\x07\x05", &["proxy_on_log"]).is_err());
        assert!(strip(b"not wasm", &["proxy_on_log"]).is_err());
    }

    #[test]
    fn a_list_names_only_removable_exports_once() {
        assert_eq!(
            parse_list("# c\nproxy_on_log  # why\n\nproxy_on_done\n").unwrap(),
            ["proxy_on_log", "proxy_on_done"]
        );
        let e = parse_list("proxy_on_delete\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("proxy_on_delete"), "{e}");
        let e = parse_list("proxy_on_log\nproxy_on_log\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("twice"), "{e}");
        assert!(parse_list("proxy_on_context_create").is_err());
    }

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Every `.rs` file under `dir`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    /// The sources a filter module is compiled from: its `src/`, and the files `#[path = "..."]`
    /// brings in (filters/wasmesh compiles the other filters' files), followed transitively.
    fn module_sources(filter: &Path) -> Vec<(PathBuf, String)> {
        let mut todo = Vec::new();
        rust_files(&filter.join("src"), &mut todo);
        let mut seen: Vec<(PathBuf, String)> = Vec::new();
        while let Some(p) = todo.pop() {
            let p = p.canonicalize().unwrap();
            if seen.iter().any(|(q, _)| *q == p) {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for (i, _) in text.match_indices("#[path = \"") {
                let rest = &text[i + 10..];
                let rel = &rest[..rest.find('"').unwrap()];
                todo.push(p.parent().unwrap().join(rel));
            }
            seen.push((p, text));
        }
        seen
    }

    /// The list of every filter module, audited against the sources it is built from: a filter
    /// that starts implementing a callback (or a phase method called from it) whose export its
    /// list removes fails here, naming the file.
    #[test]
    fn every_filter_list_removes_only_exports_its_sources_never_need() {
        let mut driver = Vec::new();
        rust_files(&repo().join("shared/proxy/src"), &mut driver);
        let driver: Vec<(PathBuf, String)> =
            driver.into_iter().map(|p| (p.clone(), std::fs::read_to_string(p).unwrap())).collect();
        let mut filters: Vec<PathBuf> = std::fs::read_dir(repo().join("filters"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        filters.sort();
        assert!(filters.len() >= 7, "{filters:?}");
        let mut problems = Vec::new();
        for filter in &filters {
            let list_path = filter.join("stripped-exports.txt");
            let text = std::fs::read_to_string(&list_path).unwrap_or_else(|e| {
                panic!("{}: {e} (every filter module declares the exports make wasm removes)", list_path.display())
            });
            let list = parse_list(&text).unwrap_or_else(|e| panic!("{}: {e}", list_path.display()));
            let sources = module_sources(filter);
            for name in list {
                let s = STRIPPABLE.iter().find(|s| s.export == name).unwrap();
                for (file, text) in &sources {
                    for needle in s.needed_by.iter().filter(|n| text.contains(**n)) {
                        problems.push(format!(
                            "{} removes {name}, but {} has `{needle}`",
                            list_path.display(),
                            file.display()
                        ));
                    }
                }
                for (file, text) in &driver {
                    for needle in s.driver_needs.iter().filter(|n| text.contains(**n)) {
                        problems.push(format!(
                            "{} removes {name}, but the driver {} has `{needle}`",
                            list_path.display(),
                            file.display()
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    /// A variant's list (`stripped-exports-<variant>.txt`) removes what the module's own list does
    /// and exactly the callbacks the variant lacks: those the module refuses a configuration for
    /// at configure time (wasmesh-proxy `ChainRoot`, [`wasmesh_istio::module::Variant::lacks`]),
    /// so removing them is safe whatever the sources implement, and nothing else is removed.
    #[test]
    fn the_request_side_list_removes_only_what_the_module_refuses_configurations_for() {
        use wasmesh_istio::module::Variant;
        let dir = repo().join("filters/wasmesh");
        let read = |name: &str| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut list = parse_list(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            list.sort_unstable();
            list
        };
        let v = Variant::RequestSide;
        let mut want = read("stripped-exports.txt");
        want.extend(v.lacks().exports());
        want.sort_unstable();
        want.dedup();
        assert_eq!(read(&format!("stripped-exports-{}.txt", v.name())), want);
        // The module really refuses them: the driver checks the phases against the variant.
        let driver = std::fs::read_to_string(repo().join("shared/proxy/src/phase.rs")).unwrap();
        assert!(driver.contains("refusal(&phases, MODULE_VARIANT"), "the ChainRoot no longer checks the variant");
    }

    /// The audit sees what it must: the sources of the one-pass module include the stats filter's
    /// `log`, so a list removing `proxy_on_log` from it would fail.
    #[test]
    fn the_audit_follows_path_modules() {
        let sources = module_sources(&repo().join("filters/wasmesh"));
        assert!(sources.iter().any(|(p, t)| p.ends_with("filters/stats/src/filter.rs") && t.contains("fn log(")));
        assert!(sources
            .iter()
            .any(|(p, t)| p.ends_with("filters/router/src/filter.rs") && t.contains("fn response_headers(")));
    }
}
