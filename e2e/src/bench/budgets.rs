//! `make bench-check`: every scenario's instructions per request against the committed budget
//! (`e2e/bench-budgets.json`). Instruction counts are deterministic, so this is a check, not a
//! timing: a variant more than [`TOLERANCE`] over its budget fails.

use super::Measurement;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// How far over its budget a variant may be: repeat runs agree within about 0.5 %, so 3 % is a
/// real change (one more hostcall with a returned value is about 8k, 5–10 % of a filter).
pub const TOLERANCE: f64 = 0.03;

/// Variants measured and reported but not held to their budget, with the reason: their count is not
/// deterministic. Tracing at 100 % sends its spans in batches from the root's tick, which follows the
/// wall clock, so whether a flush (encoding ~300 spans) falls inside a measured batch varies by run
/// (+0 or +6 % seen). At 1 % the same holds (CI saw +4.4 %): which requests are sampled follows
/// their generated `x-request-id`, and one flush with its HTTP call is a large share of a short
/// batch. `tracing / wasmesh 0 %` (propagation and the sampling decision) is checked instead.
pub const UNCHECKED: &[(&str, &str)] = &[
    ("tracing / wasmesh", "span batches leave on the root's wall-clock tick: a flush may or may not fall in the batch"),
    ("tracing / wasmesh 1 %", "sampled requests follow their random x-request-id and flushes the wall clock"),
    (
        "access log + tracing / wasmesh 1 %",
        "its tracing samples by random x-request-id and flushes on the wall clock (+5.7 % seen); the access log and tracing 0 % are checked",
    ),
];

/// The budget file's key of a measurement.
pub fn key(m: &Measurement) -> String {
    format!("{} / {}", m.scenario, m.variant)
}

/// Reads the budgets (`instructions_per_request`: key → instructions).
pub fn load(path: &Path) -> Result<BTreeMap<String, f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let budgets = v
        .get("instructions_per_request")
        .and_then(Value::as_object)
        .ok_or(format!("{}: no object `instructions_per_request`", path.display()))?;
    budgets
        .iter()
        .map(|(k, b)| {
            b.as_f64().map(|b| (k.clone(), b)).ok_or(format!(
                "{}: instructions_per_request.{k:?}: expected a number of instructions, got {b}",
                path.display()
            ))
        })
        .collect()
}

/// One line per measured variant: its figure against its budget. `Err` lists every variant over
/// budget by more than [`TOLERANCE`] and every variant without a budget.
pub fn check(results: &[Measurement], budgets: &BTreeMap<String, f64>) -> Result<String, String> {
    let mut report = String::new();
    let mut failures = Vec::new();
    for m in results {
        let k = key(m);
        if let Some((_, why)) = UNCHECKED.iter().find(|(u, _)| *u == k) {
            report.push_str(&format!("{k}: {:.0} instructions/request, not checked ({why})\n", m.instructions));
            continue;
        }
        match budgets.get(&k) {
            Some(b) => {
                let ratio = m.instructions / b - 1.0;
                let line =
                    format!("{k}: {:.0} instructions/request, budget {b:.0} ({:+.2} %)", m.instructions, ratio * 100.0);
                if ratio > TOLERANCE {
                    failures.push(format!("{line}: more than {:.0} % over budget", TOLERANCE * 100.0));
                }
                report.push_str(&line);
                report.push('\n');
            }
            None => failures.push(format!("{k}: {:.0} instructions/request, no budget", m.instructions)),
        }
    }
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(format!(
            "{report}\nbench-check failed:\n{}\n(an intended change: `make bench-check UPDATE=1` writes the new budgets; commit them with the change)",
            failures.join("\n")
        ))
    }
}

/// Writes the measured figures as the new budgets; returns `old → new` per variant. The budgets
/// of scenarios this run did not measure (`--only`) are kept; a measured scenario's variants are
/// replaced by what was measured.
pub fn update(path: &Path, results: &[Measurement], how: &str) -> Result<String, String> {
    let old = load(path).unwrap_or_default();
    let measured: std::collections::BTreeSet<&str> = results.iter().map(|m| m.scenario.as_str()).collect();
    let mut budgets = Map::new();
    for (k, b) in &old {
        let scenario = k.split_once(" / ").map_or(k.as_str(), |(s, _)| s);
        if !measured.contains(scenario) {
            budgets.insert(k.clone(), json!(b));
        }
    }
    let mut lines = String::new();
    for m in results {
        let k = key(m);
        let new = m.instructions.round();
        lines.push_str(&match old.get(&k) {
            Some(o) => format!("{k}: {o:.0} → {new:.0} ({:+.2} %)\n", (new / o - 1.0) * 100.0),
            None => format!("{k}: (none) → {new:.0}\n"),
        });
        budgets.insert(k, json!(new));
    }
    let doc = json!({
        "how_to_update": how,
        "tolerance_percent": TOLERANCE * 100.0,
        "instructions_per_request": budgets,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())? + "\n";
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(variant: &str, instructions: f64) -> Measurement {
        Measurement {
            group: "g".into(),
            scenario: "router".into(),
            variant: variant.into(),
            wasm_filters: 1,
            instructions,
            batches: vec![instructions],
            idle_subtracted: 0.0,
            hostcalls: 0.0,
            host_to_guest: 0.0,
            allocations: None,
            cpu_us: None,
        }
    }

    #[test]
    fn unsteady_variants_are_reported_not_checked() {
        let traced = Measurement { scenario: "tracing".into(), ..m("wasmesh", 200.0) };
        let budgets = BTreeMap::from([("tracing / wasmesh".to_string(), 100.0)]);
        let report = check(&[traced], &budgets).unwrap();
        assert!(report.contains("tracing / wasmesh: 200 instructions/request, not checked"), "{report}");
        let plain = m("wasmesh", 200.0);
        let budgets = BTreeMap::from([("router / wasmesh".to_string(), 100.0)]);
        assert!(check(&[plain], &budgets).is_err());
    }

    #[test]
    fn within_three_percent_passes_and_beyond_fails() {
        let budgets = BTreeMap::from([("router / wasmesh".to_string(), 100_000.0)]);
        assert!(check(&[m("wasmesh", 102_900.0)], &budgets).is_ok());
        assert!(check(&[m("wasmesh", 90_000.0)], &budgets).is_ok());
        let err = check(&[m("wasmesh", 103_100.0)], &budgets).unwrap_err();
        assert!(err.contains("router / wasmesh: 103100 instructions/request, budget 100000 (+3.10 %)"), "{err}");
    }

    #[test]
    fn a_variant_without_budget_fails() {
        let err = check(&[m("new", 1.0)], &BTreeMap::new()).unwrap_err();
        assert!(err.contains("router / new: 1 instructions/request, no budget"), "{err}");
    }

    #[test]
    fn update_writes_what_load_reads_and_says_old_to_new() {
        let dir = crate::paths::TempDir::new("budgets");
        let path = dir.path().join("b.json");
        update(&path, &[m("wasmesh", 100_000.0)], "how").unwrap();
        assert_eq!(load(&path).unwrap().get("router / wasmesh"), Some(&100_000.0));
        let lines = update(&path, &[m("wasmesh", 90_000.0)], "how").unwrap();
        assert_eq!(lines, "router / wasmesh: 100000 → 90000 (-10.00 %)\n");
        // `--only` another scenario: this one's budgets stay; a measured scenario's are replaced.
        let mut other = m("none", 50_000.0);
        other.scenario = "stats".into();
        update(&path, &[other], "how").unwrap();
        let b = load(&path).unwrap();
        assert_eq!((b.get("router / wasmesh"), b.get("stats / none")), (Some(&90_000.0), Some(&50_000.0)));
        update(&path, &[m("none", 1.0)], "how").unwrap();
        assert_eq!(load(&path).unwrap().get("router / wasmesh"), None, "a measured scenario's old variants go");
    }
}
