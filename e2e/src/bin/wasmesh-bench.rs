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

const USAGE: &str = "\
wasmesh-bench: Envoy instructions per request (callgrind) of every wasmesh filter and chain against no
filter, Envoy's native equivalent and no-op wasm filters (BENCHMARKS.md says how it counts).

  wasmesh-bench [--out FILE] [--only NAME] [--requests N] [--batches N] [--no-cpu] [--no-memory]
  wasmesh-bench --memory-only [--only NAME] [--out FILE]
  wasmesh-bench --check BUDGETS.json [--update] [--only NAME] [--requests N] [--batches N]
  wasmesh-bench --list

  --only NAME     keep the groups (filters, sidecar, gateway) or scenarios whose name contains NAME
  --requests N    requests per callgrind batch (default 1000; --check: 300)
  --batches N     batches per variant, the figure is their median (default 2; --check: 1)
  --no-cpu        skip the plain-Envoy passes (CPU µs/request; and what --no-memory skips)
  --no-memory     skip the demo-style Envoys' memory and the accumulation check
  --memory-only   only the demo-style Envoys' memory (no callgrind: minutes, not half an hour)
  --check FILE    short batches; fail when a variant is more than 3 % over its budget in FILE
  --update        with --check: write the measured figures as the new budgets
  --list          print the groups and scenarios, run nothing";

/// Every argument must be known: a mistyped flag must not start a 20-minute run.
fn check_args(args: &[String]) -> Result<(), String> {
    let with_value = ["--out", "--only", "--requests", "--batches", "--check"];
    let flags = ["--no-cpu", "--no-memory", "--memory-only", "--update", "--list"];
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if with_value.contains(&a.as_str()) {
            if it.next().is_none() {
                return Err(format!("{a}: expected a value after it\n\n{USAGE}"));
            }
        } else if !flags.contains(&a.as_str()) {
            return Err(format!("unknown argument {a:?}\n\n{USAGE}"));
        }
    }
    Ok(())
}

/// One group's measurements and its demo-style Envoy's memory.
type GroupResult = (Vec<Measurement>, Option<Memory>);

fn main() {
    if let Err(e) = run() {
        eprintln!("wasmesh-bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    check_args(&args)?;
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
        settings.memory = false;
    }
    if flag("--memory-only") {
        if check.is_some() || flag("--no-memory") {
            return Err(format!("--memory-only: not with --check or --no-memory\n\n{USAGE}"));
        }
        settings.memory = true;
        settings.memory_only = true;
    }
    if flag("--no-memory") {
        settings.memory = false;
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

    if check.is_some() {
        // The check guards wasmesh's own figures: each scenario's baseline (a change of Envoy or
        // of the harness shows there) and its wasmesh variants; the native and no-op variants
        // do not change with wasmesh's code, and leaving them out keeps the check short.
        for g in &mut groups {
            g.scenarios.retain(|s| s.name != "no-op");
            for s in &mut g.scenarios {
                s.variants.retain(|v| v.name == "none" || v.name.starts_with("wasmesh"));
            }
        }
        groups.retain(|g| !g.scenarios.is_empty());
    }

    if flag("--list") {
        for g in &groups {
            for s in &g.scenarios {
                let names: Vec<&str> = s.variants.iter().map(|v| v.name.as_str()).collect();
                println!("{} / {}: {}", g.name, s.name, names.join(", "));
            }
        }
        return Ok(());
    }

    // Each group is its own Envoy, counted on its own worker thread: the groups run side by side
    // (the counts do not depend on the machine's load, BENCHMARKS.md), which halves the time the
    // Envoys spend compiling the modules under valgrind.
    let outcomes: Vec<Result<GroupResult, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .iter()
            .map(|g| {
                let variants: usize = g.scenarios.iter().map(|s| s.variants.len()).sum();
                wasmesh_e2e::say!(
                    "bench {}: {} scenarios, {variants} variants, {} batch(es) × {} requests",
                    g.name,
                    g.scenarios.len(),
                    settings.batches,
                    settings.requests
                );
                let settings = &settings;
                let port = app.port;
                scope.spawn(move || bench::run(g, port, settings).map_err(|e| format!("group {}: {e}", g.name)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a bench thread panicked".into()))).collect()
    });
    let mut results: Vec<Measurement> = Vec::new();
    let mut memory: Vec<Memory> = Vec::new();
    for o in outcomes {
        let (mut r, m) = o?;
        eprint!("{}", report::table(&r));
        for m in &r {
            let b: Vec<String> = m.batches.iter().map(|x| format!("{x:.0}")).collect();
            eprintln!(
                "  {} / {}: batches {} (idle subtracted {:.0}/request)",
                m.scenario,
                m.variant,
                b.join(" "),
                m.idle_subtracted
            );
        }
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
    let leaks: Vec<String> = memory.iter().filter_map(|m| m.accumulation()).collect();
    if !leaks.is_empty() {
        return Err(format!("memory accumulates:\n{}", leaks.join("\n")));
    }
    Ok(())
}
