//! Memory of the demo-style Envoys (issue 10 point 4): a sidecar and a gateway exactly as
//! `wasmeshctl envoy` writes them, against the same bootstrap with the wasm filters taken out;
//! the linear memory of every wasm VM; and a check that nothing accumulates per request or per
//! connection (the same figures after N and after 5N requests, new connections every time).
//!
//! The wasm VMs' linear memory is found in `/proc/<pid>/smaps` without help from the module: V8
//! reserves each wasm memory as one region of about 8 GiB (the 4 GiB a 32-bit index can reach
//! plus guard pages) whose accessible start, the memory's current size (`memory.size`, in 64 KiB
//! pages), is a read-write anonymous mapping directly followed by the rest of the reservation,
//! mapped `---p`. So every anonymous `rw-p` mapping that is immediately followed by an anonymous
//! `---p` mapping of at least [`RESERVATION_FLOOR`] is one VM's linear memory: its `Size` is what
//! the guest has grown to, its `Rss` what it has touched. (Envoy runs one VM per worker, one on
//! the main thread, and keeps the first as the template it clones them from.)

use super::{h2load, probe, Group, Variant};
use crate::envoy::Envoy;
use serde_json::Value;

/// The smallest `---p` rest of a wasm memory reservation (V8 reserves 8 GiB + guard).
pub const RESERVATION_FLOOR: u64 = 4 << 30;

/// Requests per listener before the first reading (N); the second reading is after 5N.
pub const N: u32 = 2_000;
/// Connections h2load opens for each N requests (new ones every time).
pub const CONNECTIONS: u32 = 50;
/// How much Envoy's RSS may differ between the reading after N and after 5N requests: the
/// allocator's caches settle in steps; a per-request leak of 256 bytes would add 2 MiB over 4N.
pub const RSS_TOLERANCE_KB: i64 = 2 * 1024;
/// How much a VM's linear memory may grow between the readings: none (it grows in 64 KiB pages
/// and never shrinks, so anything kept per request or connection shows as pages).
pub const WASM_TOLERANCE_KB: i64 = 0;

/// One wasm VM's linear memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmMemory {
    /// `memory.size`: what the guest has grown its memory to, kB.
    pub size_kb: u64,
    /// The part of it that is resident, kB.
    pub rss_kb: u64,
}

/// Every wasm VM's linear memory in a process (see the module doc).
pub fn wasm_memories(pid: u32) -> Vec<WasmMemory> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps")).map(|s| parse_smaps(&s)).unwrap_or_default()
}

/// [`wasm_memories`] of an smaps text.
pub fn parse_smaps(text: &str) -> Vec<WasmMemory> {
    struct Map {
        start: u64,
        end: u64,
        perms: String,
        anonymous: bool,
        rss_kb: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = fields.next().unwrap_or("").to_string();
                // offset, device, inode, then the path (absent for anonymous memory).
                let anonymous = fields.nth(3).is_none();
                maps.push(Map { start, end, perms, anonymous, rss_kb: 0 });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(v)) = (maps.last_mut(), fields.next().and_then(|v| v.parse().ok())) {
                m.rss_kb = v;
            }
        }
    }
    maps.windows(2)
        .filter_map(|w| match w {
            [mem, rest]
                if mem.anonymous
                    && rest.anonymous
                    && mem.perms == "rw-p"
                    && rest.perms == "---p"
                    && mem.end == rest.start
                    && rest.end - rest.start >= RESERVATION_FLOOR =>
            {
                Some(WasmMemory { size_kb: (mem.end - mem.start) / 1024, rss_kb: mem.rss_kb })
            }
            _ => None,
        })
        .collect()
}

/// One reading of an Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub rss_kb: u64,
    pub wasm: Vec<WasmMemory>,
}

fn read(envoy: &Envoy) -> Reading {
    // Envoy's allocator (tcmalloc) figures, for people reading the log: what is allocated against
    // what the allocator holds, i.e. whether RSS is live objects or freed memory kept.
    crate::say!(
        "bench memory {}: /memory {}",
        envoy.name,
        envoy.admin("/memory").split_whitespace().collect::<String>()
    );
    Reading { rss_kb: super::callgrind::rss_kb(envoy.pid()).unwrap_or(0), wasm: wasm_memories(envoy.pid()) }
}

/// The demo-style Envoy of a group, with and without the suite.
#[derive(Debug, Clone)]
pub struct Memory {
    pub group: String,
    /// The listeners of the Envoy with the suite (their variants' names).
    pub listeners: Vec<String>,
    /// After N requests per listener.
    pub after_n: Reading,
    /// After 5N.
    pub after_5n: Reading,
    /// The same bootstrap with the wasm filters taken out, after N requests per listener.
    pub without_suite: Reading,
}

impl Memory {
    /// Whether anything accumulated between N and 5N, for people; `None` when nothing did.
    pub fn accumulation(&self) -> Option<String> {
        let mut problems = Vec::new();
        let drss = self.after_5n.rss_kb as i64 - self.after_n.rss_kb as i64;
        if drss > RSS_TOLERANCE_KB {
            problems.push(format!(
                "{}: Envoy RSS grew by {drss} kB between {N} and {} requests per listener (tolerance {RSS_TOLERANCE_KB} kB)",
                self.group,
                5 * N
            ));
        }
        if self.after_5n.wasm.len() != self.after_n.wasm.len() {
            problems.push(format!(
                "{}: {} wasm VMs after {N} requests per listener, {} after {}",
                self.group,
                self.after_n.wasm.len(),
                self.after_5n.wasm.len(),
                5 * N
            ));
        }
        for (i, (a, b)) in self.after_n.wasm.iter().zip(&self.after_5n.wasm).enumerate() {
            let d = b.size_kb as i64 - a.size_kb as i64;
            if d > WASM_TOLERANCE_KB {
                problems.push(format!(
                    "{}: wasm VM {i}'s linear memory grew from {} to {} kB between {N} and {} requests per listener",
                    self.group,
                    a.size_kb,
                    b.size_kb,
                    5 * N
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("\n"))
    }
}

/// `n` requests on every variant's listener, on [`CONNECTIONS`] new connections each.
fn traffic(variants: &[(&Variant, u16)], n: u32) -> Result<(), String> {
    for (v, port) in variants {
        h2load(*port, v, n, CONNECTIONS)?;
    }
    Ok(())
}

/// The demo-style Envoys of a group that has a generated bootstrap (sidecar, gateway): with the
/// suite = the generated bootstrap's listeners in the default layout (each scenario's first
/// `wasmesh` variant), without = the same listeners with the filters taken out (its `none`).
/// Plain Envoys (no valgrind), `--concurrency 1` as the demo runs them.
pub fn demo(group: &Group, app_port: u16) -> Result<Option<Memory>, String> {
    if group.base.is_none() {
        return Ok(None);
    }
    // The demo Envoys are sidecars answering plaintext clients: scenarios measured through a
    // front Envoy (mutual TLS) are left out.
    let plain = |s: &&super::Scenario| s.variants.iter().all(|v| v.front.is_none());
    let pick = |prefix: &str| -> Vec<(Variant, u16)> {
        group
            .scenarios
            .iter()
            .filter(plain)
            .filter_map(|s| s.variants.iter().find(|v| v.name.starts_with(prefix)))
            .map(|v| (v.clone(), v.listener.as_ref().map(|(p, _)| *p).unwrap_or_else(crate::free_port)))
            .collect()
    };
    let with = pick("wasmesh");
    let without = pick("none");
    if with.is_empty() || without.is_empty() {
        return Ok(None);
    }
    let start = |name: &str, vs: &[(Variant, u16)]| -> Result<Envoy, String> {
        let mut g = group.clone();
        g.scenarios.retain(|s| plain(&s));
        for (s, (v, _)) in g.scenarios.iter_mut().zip(vs) {
            s.variants = vec![v.clone()];
        }
        g.scenarios.truncate(vs.len());
        let ports: Vec<Vec<u16>> = vs.iter().map(|(_, p)| vec![*p]).collect();
        let boot: Value = super::bootstrap(&g, app_port, &ports, false);
        let envoy = Envoy::start_with(name, &boot, 1)?;
        for (v, port) in vs {
            probe(&format!("{name}/{}", v.name), *port, v, || envoy.failure_summary())?;
        }
        Ok(envoy)
    };
    let envoy = start(&format!("demo-{}", group.name), &with)?;
    let wv: Vec<(&Variant, u16)> = with.iter().map(|(v, p)| (v, *p)).collect();
    traffic(&wv, N)?;
    let after_n = read(&envoy);
    for _ in 0..4 {
        traffic(&wv, N)?;
    }
    let after_5n = read(&envoy);
    drop(envoy);

    let plain = start(&format!("demo-{}-plain", group.name), &without)?;
    let pv: Vec<(&Variant, u16)> = without.iter().map(|(v, p)| (v, *p)).collect();
    traffic(&pv, N)?;
    let without_suite = read(&plain);
    Ok(Some(Memory {
        group: group.name.clone(),
        listeners: with.iter().map(|(v, _)| v.name.clone()).collect(),
        after_n,
        after_5n,
        without_suite,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_accessible_start_of_each_wasm_reservation() {
        let smaps = "\
7fee63de0000-7fee63ef0000 rw-p 00000000 00:00 0 
Rss:                  20 kB
7fee63ef0000-7ff063ee0000 ---p 00000000 00:00 0 
Rss:                   0 kB
7ff095c00000-7ff095df0000 rw-p 00000000 00:00 0 
Rss:                 100 kB
7ff095df0000-7ff095e00000 ---p 00000000 00:00 0 
Rss:                   0 kB
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234   /usr/bin/envoy
Rss:                 900 kB
";
        assert_eq!(parse_smaps(smaps), vec![WasmMemory { size_kb: 1088, rss_kb: 20 }]);
    }

    #[test]
    fn growth_between_the_readings_is_reported() {
        let r = |rss_kb, size_kb| Reading { rss_kb, wasm: vec![WasmMemory { size_kb, rss_kb: 0 }] };
        let m = |a: Reading, b: Reading| Memory {
            group: "sidecar".into(),
            listeners: vec![],
            after_n: a,
            after_5n: b,
            without_suite: r(0, 0),
        };
        assert_eq!(m(r(100_000, 1088), r(101_000, 1088)).accumulation(), None);
        let e = m(r(100_000, 1088), r(103_000, 1088)).accumulation().unwrap();
        assert!(e.contains("Envoy RSS grew by 3000 kB"), "{e}");
        let e = m(r(100_000, 1088), r(100_000, 1152)).accumulation().unwrap();
        assert!(e.contains("linear memory grew from 1088 to 1152 kB"), "{e}");
    }
}
