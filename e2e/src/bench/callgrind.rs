//! Envoy under callgrind (GUIDE §6): the process, `callgrind_control`, and what a dump says.
//!
//! Envoy runs as `valgrind --tool=callgrind --smc-check=all-non-file --instr-atstart=no`
//! (V8 writes and rewrites its code: `all-non-file` makes valgrind notice it). Nothing is counted
//! until [`Callgrind::instrument`] switches instrumentation on after the warm-up; each batch is
//! then [`Callgrind::zero`], requests, [`Callgrind::dump`], and the dump's `totals:` divided by the
//! batch size is the instruction count per request.
//!
//! The PyPI Envoy is stripped, so callgrind names its functions by address. Two kinds of calls are
//! still told apart, from the objects the functions belong to: code V8 generated at run time (the
//! wasm filters compiled to machine code, and V8's wrappers between them and the host) has no
//! object (`???`) and lives above 4 GiB, everything of Envoy and libc is in a mapped object.
//! - a call from Envoy into generated code is a host→guest call: a callback (`proxy_on_*`), or
//!   `proxy_on_memory_allocate` when the host hands the guest a value;
//! - a call from generated code into Envoy is a guest→host call: a hostcall.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where valgrind places code it finds no object for: below this the addresses are Envoy's own
/// mapping (valgrind loads the PIE low), above it is V8's code space.
const JIT_ADDRESS_FLOOR: u64 = 0x1_0000_0000;

/// How long Envoy may take to become ready under valgrind: compiling the wasm modules with V8's
/// optimizing compiler (Liftoff is off in Envoy) under callgrind takes about a minute per module
/// on a quiet machine, and over ten minutes when several engineers build and bench at once.
pub const START_TIMEOUT: Duration = Duration::from_secs(1800);

/// An Envoy process under callgrind; killed when dropped.
pub struct Callgrind {
    child: Child,
    pub admin_port: u16,
    pub dir: PathBuf,
    log: PathBuf,
    dumps: u32,
}

/// One dump per thread (valgrind's thread numbers: 1 is Envoy's main thread).
pub type Threads = std::collections::BTreeMap<u32, Dump>;

/// What one dump (one batch, one thread) says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dump {
    /// Every instruction the thread executed while the batch ran.
    pub instructions: u64,
    /// Calls from Envoy into generated code: callbacks and guest allocations.
    pub host_to_guest: u64,
    /// Calls from generated code into Envoy: hostcalls.
    pub guest_to_host: u64,
}

impl Callgrind {
    /// Starts `envoy --config-path <dir>/envoy.json --concurrency 1` under callgrind and waits
    /// until its admin answers `/ready`.
    pub fn start(envoy: &Path, bootstrap: &serde_json::Value, dir: &Path) -> Result<Callgrind, String> {
        let admin_port = bootstrap
            .pointer("/admin/address/socket_address/port_value")
            .and_then(serde_json::Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or("bootstrap has no admin port")?;
        let config = dir.join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap).unwrap_or_default())
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = dir.join("envoy.log");
        let child = Command::new("valgrind")
            .args(["--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no", "--separate-threads=yes"])
            .arg(format!("--callgrind-out-file={}/cg.%p.out", dir.display()))
            .arg(format!("--log-file={}/valgrind.log", dir.display()))
            .arg(envoy)
            .arg("--config-path")
            .arg(&config)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "-l", "info", "--disable-hot-restart"])
            .args(["--file-flush-interval-msec", "100", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start valgrind (Debian `valgrind`; `make deps`): {e}"))?;
        let mut cg = Callgrind { child, admin_port, dir: dir.to_path_buf(), log, dumps: 0 };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = cg.child.try_wait() {
                return Err(format!("Envoy under callgrind exited ({status}) while starting:\n{}", cg.problems()));
            }
            if crate::http::request(admin_port, "GET", "/ready", &[], b"").is_ok_and(|r| r.status == 200) {
                break;
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!("Envoy under callgrind not ready after {START_TIMEOUT:?}:\n{}", cg.problems()));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(cg)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Envoy's log lines that say a filter is missing or broken. Under valgrind, Envoy silently
    /// leaves a wasm filter out of the chain when its VM cannot be created (GUIDE §6): the log is
    /// the only witness.
    pub fn problems(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.contains("][error][") || l.contains("][critical][") || (l.contains("wasm") && l.contains("ailed"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn control(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("callgrind_control")
            .args(args)
            .arg(self.pid().to_string())
            .output()
            .map_err(|e| format!("cannot run callgrind_control (Debian `valgrind`): {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("Error") {
            return Err(format!(
                "callgrind_control {} {}: {}{}",
                args.join(" "),
                self.pid(),
                text,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// `callgrind_control -i on`: count from now on.
    pub fn instrument(&self) -> Result<(), String> {
        self.control(&["-i", "on"])
    }

    /// `callgrind_control -z`: forget what was counted.
    pub fn zero(&self) -> Result<(), String> {
        self.control(&["-z"])
    }

    /// `callgrind_control -d`, then the new dump files (one per thread: `--separate-threads=yes`
    /// writes `cg.<pid>.out.<n>-<thread>`) read and removed; thread number → its dump.
    pub fn dump(&mut self) -> Result<Threads, String> {
        self.dump_timed(Instant::now()).map(|(t, _)| t)
    }

    /// [`Callgrind::dump`], and when valgrind took it: the middle between `called` and the return
    /// of `callgrind_control -d`.
    pub fn dump_timed(&mut self, called: Instant) -> Result<(Threads, Instant), String> {
        self.control(&["-d"])?;
        let at = called + called.elapsed() / 2;
        self.dumps += 1;
        let prefix = format!("cg.{}.out.{}-", self.pid(), self.dumps);
        // callgrind_control returns once valgrind took the command; a file is complete when its
        // `totals:` line is there.
        let start = Instant::now();
        loop {
            match self.read_dumps(&prefix) {
                Ok(threads) if !threads.is_empty() => {
                    // WASMESH_BENCH_KEEP_DUMPS=1 keeps them for callgrind_annotate.
                    if std::env::var_os("WASMESH_BENCH_KEEP_DUMPS").is_none() {
                        for t in threads.keys() {
                            let _ = std::fs::remove_file(self.dir.join(format!("{prefix}{t:02}")));
                        }
                    }
                    return Ok((threads, at));
                }
                Ok(_) | Err(_) if start.elapsed() < Duration::from_secs(60) => {}
                Ok(_) => return Err(format!("{}/{prefix}*: no callgrind dump after 60 s", self.dir.display())),
                Err(e) => return Err(format!("no complete callgrind dump after 60 s: {e}")),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn read_dumps(&self, prefix: &str) -> Result<Threads, String> {
        let mut threads = Threads::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(t) = name.strip_prefix(prefix).and_then(|t| t.parse::<u32>().ok()) {
                threads.insert(t, parse_dump(&e.path())?);
            }
        }
        Ok(threads)
    }

    /// Envoy's resident memory now (kB), from `/proc/<pid>/status` of the valgrind process.
    pub fn rss_kb(&self) -> Option<u64> {
        rss_kb(self.pid())
    }
}

impl Drop for Callgrind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reads a callgrind dump: its `totals:` and the cross-object call counts of [`Dump`].
pub fn parse_dump(path: &Path) -> Result<Dump, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The dump format (valgrind's docs, "Callgrind Format Specification"): `ob=`/`fn=` set the
/// current object and function, `cob=`/`cfn=` the callee of the next `calls=<count> ...` line,
/// whose following line is the call's cost. Names are compressed: `(id) name` the first time,
/// `(id)` after.
pub fn parse(reader: impl BufRead) -> Result<Dump, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Mapped,
        Generated,
        Unknown,
    }
    let mut objects: HashMap<u64, bool> = HashMap::new(); // id -> has no object ("???")
    let mut fn_kind: HashMap<u64, Kind> = HashMap::new();
    let mut cur_ob_unknown = false;
    let mut cur_fn = Kind::Unknown;
    let mut callee_ob_unknown: Option<bool> = None;
    let mut callee = Kind::Unknown;
    let mut totals = None;
    let mut dump = Dump::default();
    let mut skip_cost_line = false;

    // `(id) name` or `(id)`; returns (id, Some(name)).
    fn split(s: &str) -> Option<(u64, Option<&str>)> {
        let rest = s.strip_prefix('(')?;
        let (id, name) = rest.split_once(')')?;
        let name = name.strip_prefix(' ');
        Some((id.parse().ok()?, name))
    }
    let generated = |unknown_ob: bool, name: &str| -> Kind {
        if !unknown_ob {
            return Kind::Mapped;
        }
        match name.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            Some(a) if a >= JIT_ADDRESS_FLOOR => Kind::Generated,
            // valgrind's own preload (malloc replacements) and code it could not map.
            _ => Kind::Unknown,
        }
    };
    let mut names: HashMap<u64, String> = HashMap::new();

    for line in reader.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if skip_cost_line {
            skip_cost_line = false;
            continue;
        }
        if let Some(v) = line.strip_prefix("ob=") {
            let (id, name) = split(v).ok_or(format!("bad line {line:?}"))?;
            if let Some(n) = name {
                objects.insert(id, n == "???");
            }
            cur_ob_unknown = objects.get(&id).copied().unwrap_or(false);
        } else if let Some(v) = line.strip_prefix("fn=") {
            let (id, name) = split(v).ok_or(format!("bad line {line:?}"))?;
            if let Some(n) = name {
                names.insert(id, n.to_string());
            }
            let k = *fn_kind
                .entry(id)
                .or_insert_with(|| generated(cur_ob_unknown, names.get(&id).map(String::as_str).unwrap_or("")));
            cur_fn = k;
        } else if let Some(v) = line.strip_prefix("cob=") {
            let (id, name) = split(v).ok_or(format!("bad line {line:?}"))?;
            if let Some(n) = name {
                objects.insert(id, n == "???");
            }
            callee_ob_unknown = Some(objects.get(&id).copied().unwrap_or(false));
        } else if let Some(v) = line.strip_prefix("cfn=") {
            let (id, name) = split(v).ok_or(format!("bad line {line:?}"))?;
            if let Some(n) = name {
                names.insert(id, n.to_string());
            }
            let ob_unknown = callee_ob_unknown.unwrap_or(cur_ob_unknown);
            callee = *fn_kind
                .entry(id)
                .or_insert_with(|| generated(ob_unknown, names.get(&id).map(String::as_str).unwrap_or("")));
        } else if let Some(v) = line.strip_prefix("calls=") {
            let count: u64 = v.split_whitespace().next().and_then(|c| c.parse().ok()).ok_or(format!("bad {line:?}"))?;
            match (cur_fn, callee) {
                (Kind::Mapped, Kind::Generated) => dump.host_to_guest += count,
                (Kind::Generated, Kind::Mapped) => dump.guest_to_host += count,
                _ => {}
            }
            callee_ob_unknown = None;
            skip_cost_line = true;
        } else if let Some(v) = line.strip_prefix("totals:") {
            totals = v.split_whitespace().next().and_then(|t| t.parse().ok());
        }
    }
    dump.instructions = totals.ok_or("no totals: line (dump incomplete)")?;
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_across_the_host_guest_boundary_and_reads_totals() {
        let dump = "\
version: 1
events: Ir
ob=(1) /usr/bin/envoy
fn=(1) 0x0000000002000000
10 100
cob=(2) ???
cfn=(2) 0x0000000478c80100
calls=8 0
10 500
cfn=(3) 0x0000000002000100
calls=5 0
10 50
ob=(2)
fn=(2)
10 400
cob=(1)
cfn=(3)
calls=3 0
10 30
cob=(2)
cfn=(4) 0x000000000628d980
calls=7 0
10 70
fn=(4)
10 1
totals: 1234
";
        let d = parse(dump.as_bytes()).unwrap();
        assert_eq!(d, Dump { instructions: 1234, host_to_guest: 8, guest_to_host: 3 });
    }

    #[test]
    fn an_incomplete_dump_is_an_error() {
        assert!(parse("events: Ir\nfn=(1) x\n1 2\n".as_bytes()).is_err());
    }
}
