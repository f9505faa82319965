//! A real Envoy process: started from a bootstrap (JSON value), waited for until it is ready,
//! killed when dropped. Its log is kept and shown when it fails to start.

use crate::paths::{envoy_bin, TempDir};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    pub name: String,
    dir: TempDir,
    /// CPU time Envoy had used when it was ready (clock ticks), for `E2E_ENVOY_CPU`.
    ready_ticks: Option<u64>,
}

/// User + system CPU clock ticks a process has used (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after the name: state is field 3, utime 14 and stime 15 (1-based over the whole line)
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and `--concurrency 1`; waits for `/ready`.
    pub fn start(name: &str, bootstrap: &Value) -> Envoy {
        Self::start_with(name, bootstrap, 1).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn start_with(name: &str, bootstrap: &Value, concurrency: u32) -> Result<Envoy, String> {
        let admin_port = bootstrap
            .pointer("/admin/address/socket_address/port_value")
            .and_then(Value::as_u64)
            .ok_or("bootstrap has no admin port")? as u16;
        let dir = TempDir::new(&format!("envoy-{name}"));
        let config = dir.path().join("envoy.json");
        std::fs::write(&config, serde_json::to_vec_pretty(bootstrap).unwrap_or_default())
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = dir.path().join("envoy.log");
        let child = Command::new(envoy_bin())
            .arg("--config-path")
            .arg(&config)
            .args(["--use-dynamic-base-id", "--concurrency", &concurrency.to_string(), "-l", "info"])
            // Envoy flushes a --log-path file every 10 s by default; tests read the log right after
            // the requests that write it.
            .args(["--disable-hot-restart", "--file-flush-interval-msec", "100", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start Envoy {:?} (set ENVOY_BIN or run `make deps`): {e}", envoy_bin()))?;
        let mut envoy = Envoy { child, admin_port, name: name.to_string(), dir, ready_ticks: None };
        // A wasmesh Envoy spends ~5.5 s of CPU compiling the module before it is ready (V8 in Envoy
        // compiles with TurboFan only); a mesh test starts several at once beside other tests, so
        // on a loaded 2-core machine 60 s was seen to pass. Waiting longer costs nothing when fast.
        envoy.wait_ready(Duration::from_secs(180))?;
        envoy.ready_ticks = cpu_ticks(envoy.child.id());
        Ok(envoy)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "Envoy {} exited ({status}) while starting:\n{}",
                    self.name,
                    self.failure_summary()
                ));
            }
            if let Ok(r) = crate::http::request(self.admin_port, "GET", "/ready", &[], b"") {
                if r.status == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("Envoy {} not ready after {limit:?}:\n{}", self.name, self.failure_summary()))
    }

    /// Envoy's error, critical and wasm log lines, then the last lines: what explains a failure.
    pub fn failure_summary(&self) -> String {
        let text = self.log();
        let important: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("][error][") || l.contains("][critical][") || l.contains("wasm log"))
            .collect();
        format!("{}\n--- last lines ---\n{}", important.join("\n"), self.log_tail(15))
    }

    /// The last `n` lines of Envoy's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// GET on the admin port.
    pub fn admin(&self, path: &str) -> String {
        crate::http::request(self.admin_port, "GET", path, &[], b"").map(|r| r.text()).unwrap_or_default()
    }

    /// A counter or gauge from `/stats` (exact name), `None` if absent.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.admin(&format!("/stats?filter=^{}$", regex_escape(name)))
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).and_then(|v| v.trim().parse().ok()))
    }

    /// The running Envoy's version (major, minor, patch), from the admin `/server_info` (`"version":
    /// "<sha>/1.36.4/Clean/RELEASE/BoringSSL"`); `None` when the admin answer has no parsable version.
    /// Tests whose native oracle changed between Envoy releases ask this (see `make test-compat`).
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        let info: Value = serde_json::from_str(&self.admin("/server_info")).ok()?;
        parse_version(info.get("version")?.as_str()?)
    }

    /// Envoy's CPU time (user + system) so far, from /proc (Linux).
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }
}

/// One bootstrap out of several single-purpose ones: every part's listeners and clusters in one
/// Envoy, the first part's admin and everything else (`stats_config` must be the same in all).
///
/// Each wasmesh Envoy spends seconds of CPU compiling the module before it is ready (V8 TurboFan),
/// most of an e2e run's CPU; the wasm filters of all listeners share one VM (one `vm_id`, one
/// module), so proxies that only differ in their listeners (a client sidecar and a server sidecar,
/// each with its own filter configuration, as in a real sidecar's inbound and outbound listeners)
/// cost one compilation instead of one each. Listener names get the part's index (`l` → `l.1`) so
/// they stay unique; clusters of the same name must be identical (Envoy refuses duplicates), so a
/// test gives clusters that differ a name of their own.
pub fn combine_bootstraps(parts: &[Value]) -> Value {
    let Some(first) = parts.first() else { panic!("combine_bootstraps: no bootstrap") };
    let mut out = first.clone();
    let mut listeners = Vec::new();
    let mut clusters: Vec<Value> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(
            part.get("stats_config"),
            first.get("stats_config"),
            "combine_bootstraps: part {i} has another stats_config"
        );
        let resources = &part["static_resources"];
        for l in resources["listeners"].as_array().into_iter().flatten() {
            let mut l = l.clone();
            if i > 0 {
                let name = l["name"].as_str().unwrap_or("listener").to_string();
                l["name"] = Value::String(format!("{name}.{i}"));
            }
            listeners.push(l);
        }
        for c in resources["clusters"].as_array().into_iter().flatten() {
            match clusters.iter().find(|have| have["name"] == c["name"]) {
                Some(have) => assert_eq!(have, c, "combine_bootstraps: two different clusters named {}", c["name"]),
                None => clusters.push(c.clone()),
            }
        }
    }
    out["static_resources"]["listeners"] = Value::Array(listeners);
    out["static_resources"]["clusters"] = Value::Array(clusters);
    out
}

/// user+system CPU time of a process from `/proc/<pid>/stat`.
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)` part; utime and stime are fields 14 and 15 (1-based).
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(11) + ticks(12);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(total * 10)
}

/// `1.36.4` out of Envoy's build version `<sha>/1.36.4/Clean/RELEASE/BoringSSL` (`-dev` suffixes and
/// PyPI's `.post1` ignored).
fn parse_version(build: &str) -> Option<(u32, u32, u32)> {
    let v = build.split('/').nth(1)?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
        _ => None,
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // `E2E_ENVOY_CPU=FILE`: one line per Envoy (name, CPU ticks used until ready, in all), to
        // see where the suite's CPU goes (compiling the wasm module dominates an Envoy's start).
        if let Some(path) = std::env::var_os("E2E_ENVOY_CPU") {
            let line = format!(
                "{}\t{}\t{}\n",
                self.name,
                self.ready_ticks.map_or(-1, |t| t as i64),
                cpu_ticks(self.child.id()).map_or(-1, |t| t as i64)
            );
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = std::io::Write::write_all(&mut f, line.as_bytes());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::{combine_bootstraps, parse_version};
    use serde_json::json;

    fn part(admin: u16, listener: &str, cluster: &str, port: u16) -> serde_json::Value {
        json!({
            "admin": {"address": {"socket_address": {"port_value": admin}}},
            "stats_config": {"a": 1},
            "static_resources": {
                "listeners": [{"name": listener}],
                "clusters": [{"name": cluster, "port": port}],
            }
        })
    }

    #[test]
    fn combined_bootstraps_keep_every_listener_and_cluster_once() {
        let b = combine_bootstraps(&[part(1, "l", "c", 10), part(2, "l", "c", 10), part(3, "l", "d", 11)]);
        assert_eq!(b["admin"]["address"]["socket_address"]["port_value"], 1);
        assert_eq!(b["static_resources"]["listeners"], json!([{"name": "l"}, {"name": "l.1"}, {"name": "l.2"}]));
        assert_eq!(b["static_resources"]["clusters"], json!([{"name": "c", "port": 10}, {"name": "d", "port": 11}]));
    }

    #[test]
    #[should_panic(expected = "two different clusters named")]
    fn two_different_clusters_of_one_name_are_refused() {
        combine_bootstraps(&[part(1, "l", "c", 10), part(2, "l", "c", 11)]);
    }

    #[test]
    fn build_versions_parse() {
        assert_eq!(
            parse_version("bad8280de85c25b147a90c1d9b8a8c67a13e7134/1.36.4/Clean/RELEASE/BoringSSL"),
            Some((1, 36, 4))
        );
        assert_eq!(parse_version("f387231a/1.38.2/Clean/RELEASE/BoringSSL"), Some((1, 38, 2)));
        assert_eq!(parse_version("abc/1.41.0-dev/Modified/DEBUG/BoringSSL"), Some((1, 41, 0)));
        assert_eq!(parse_version("1.40.0"), None);
        assert_eq!(parse_version("abc/x.y.z/Clean"), None);
    }
}
