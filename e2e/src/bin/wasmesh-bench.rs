//! `make bench` / `make bench-check`: instructions per request (callgrind) of every wasmesh filter
//! and chain against no filter, Envoy's native equivalent and no-op wasm filters (GUIDE §6).
//!
//!   wasmesh-bench [--out FILE] [--only NAME] [--requests N] [--batches N] [--no-cpu]
//!   wasmesh-bench --check BUDGETS.json [--update] [--only NAME]
//!
//! `--only` keeps the groups (`filters`, `sidecar`, `gateway`) or scenarios whose name contains
//! NAME. `--check` runs short batches without the CPU pass and fails when a variant exceeds its
//! budget by more than 3 %; with `--update` it writes the measured figures as the new budgets.

use std::path::PathBuf;
use wasmesh_e2e::bench::{self, budgets, report, Measurement, Memory, Scenario, Settings};

const HOW_TO_UPDATE: &str = "Budgets of `make bench-check`: Envoy instructions per request of each scenario / variant, measured by callgrind with the check's short batches (e2e/src/bench). After an intended change, run `make bench-check UPDATE=1` (prints old → new for every variant) and commit this file with the change.";

fn main() {
    if let Err(e) = run() {
        eprintln!("wasmesh-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let check = arg("--check").map(PathBuf::from);
    let mut settings = if check.is_some() { Settings::check() } else { Settings::full() };
    if let Some(n) = arg("--requests").and_then(|v| v.parse().ok()) {
        settings.requests = n;
    }
    if let Some(n) = arg("--batches").and_then(|v| v.parse().ok()) {
        settings.batches = n;
    }
    if flag("--no-cpu") {
        settings.cpu_requests = 0;
    }
    let only = arg("--only");
    let started = std::time::Instant::now();

    let app = bench::start_app();
    let mut groups = bench::scenarios::all(app.port)?;
    if let Some(o) = &only {
        for g in &mut groups {
            if !g.name.contains(o.as_str()) {
                g.scenarios.retain(|s| s.name.contains(o.as_str()));
            }
        }
        groups.retain(|g| !g.scenarios.is_empty());
        if groups.is_empty() {
            return Err(format!("--only {o}: no group or scenario of that name"));
        }
    }

    let mut results: Vec<Measurement> = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    for g in &groups {
        let variants: usize = g.scenarios.iter().map(|s| s.variants.len()).sum();
        eprintln!(
            "bench {}: {} scenarios, {variants} variants, {} batch(es) × {} requests",
            g.name,
            g.scenarios.len(),
            settings.batches,
            settings.requests
        );
        let (mut r, m) = bench::run(g, app.port, &settings).map_err(|e| format!("group {}: {e}", g.name))?;
        eprint!("{}", report::table(&r));
        results.append(&mut r);
        memory.extend(m);
    }
    eprintln!("bench: {:.0} s", started.elapsed().as_secs_f64());

    if let Some(path) = check {
        if flag("--update") {
            let lines = budgets::update(&path, &results, HOW_TO_UPDATE)?;
            println!("{lines}wrote {}", path.display());
            return Ok(());
        }
        let b = budgets::load(&path)?;
        let ok = budgets::check(&results, &b)?;
        println!("{ok}bench-check: every variant within {:.0} % of its budget", budgets::TOLERANCE * 100.0);
        return Ok(());
    }

    let scenarios: Vec<&Scenario> = groups.iter().flat_map(|g| &g.scenarios).collect();
    let mut modules: Vec<String> = Vec::new();
    for s in &scenarios {
        for m in &s.modules {
            if !modules.contains(m) {
                modules.push(m.clone());
            }
        }
    }
    let md = report::document(&results, &memory, &scenarios, &settings, &modules);
    println!("{md}");
    if let Some(out) = arg("--out") {
        std::fs::write(&out, &md).map_err(|e| format!("cannot write {out}: {e}"))?;
        eprintln!("wrote {out}");
    }
    Ok(())
}
