//! The live controller under test: `wasmeshctl serve` on a temporary directory of Istio YAML (run
//! in this process through the controller library), Envoys from `wasmeshctl envoy --xds`
//! bootstraps, and traffic loops that record every answer with its time, so a test can check that
//! no request failed and measure when a change took effect.
// A harness fails its test by panicking with what went wrong, as the rest of this crate does.
#![allow(clippy::panic)]

use crate::paths::TempDir;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wasmesh_controller::xds::{self, NodeSpec, ServeOptions, Server};

/// A running `serve` on its own directory; stopped when dropped.
pub struct Live {
    pub server: Server,
    dir: TempDir,
    /// Every write: when (monotonic) and the wall clock's milliseconds of the day (the log's).
    writes: Mutex<Vec<(Instant, u64)>>,
}

impl Live {
    /// Writes `files` (name, YAML) and starts the server on them (ADS on an OS-chosen port).
    pub fn start(files: &[(&str, &str)]) -> Live {
        let dir = TempDir::new("live-yaml");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let opts = ServeOptions {
            watch: dir.path().to_path_buf(),
            listen: ([127, 0, 0, 1], 0).into(),
            http: Some(([127, 0, 0, 1], 0).into()),
            wasm_dir: crate::paths::wasm_dir(),
            poll: Duration::from_millis(100),
        };
        let server = Server::start(&opts).unwrap_or_else(|e| panic!("serve: {e}"));
        Live { server, dir, writes: Mutex::new(Vec::new()) }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Replaces file `name` at once (write aside, rename), as an editor saving it; returns when.
    pub fn write(&self, name: &str, text: &str) -> Instant {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        let at = Instant::now();
        if let Ok(mut w) = self.writes.lock() {
            w.push((at, ms_of_day(std::time::SystemTime::now())));
        }
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        at
    }

    /// Where the time of the change written at `at` went, from the server's log: when the server
    /// accepted it and when the Envoy whose node id contains `node` acknowledged its filter
    /// configurations, in ms after the write.
    pub fn timeline(&self, at: Instant, node: &str) -> (Option<u64>, Option<u64>) {
        let wall = self.writes.lock().ok().and_then(|w| w.iter().find(|(i, _)| *i == at).map(|(_, ms)| *ms));
        let Some(wall) = wall else { return (None, None) };
        let log = xds::recent_log();
        let dir = self.dir.path().display().to_string();
        let after = |needles: &[&str]| {
            log.iter()
                .filter(|l| needles.iter().all(|n| l.contains(n)))
                .filter_map(|l| log_ms(l))
                .find(|ms| *ms >= wall)
                .map(|ms| ms - wall)
        };
        (after(&[&dir, "change accepted"]), after(&[node, "applied ECDS"]))
    }

    /// `wasmeshctl envoy --xds` for `node` with the directory's current YAML.
    pub fn bootstrap(&self, node: &NodeSpec) -> Value {
        let resources = xds::watch::load(self.dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        xds::xds_bootstrap(node, &resources, &self.server.xds_addr.to_string()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Waits until the server accepted generation `g`.
    pub fn wait_generation(&self, g: u64, limit: Duration) {
        let start = Instant::now();
        while self.server.generation() < g {
            assert!(
                start.elapsed() < limit,
                "generation {g} not accepted after {limit:?}; at {}",
                self.server.generation()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node spec for a proxy of this harness (`wasm_dir` of the built filters).
pub fn node(role: &str, workload: &str, admin_port: u16) -> NodeSpec {
    NodeSpec {
        role: role.into(),
        workload: workload.into(),
        inbound: Vec::new(),
        outbound_port: None,
        tcp_outbound: Vec::new(),
        gateway_ports: Vec::new(),
        admin_port,
        wasm_dir: crate::paths::wasm_dir(),
        mesh_config: None,
        certs_dir: None,
        envoy_access_log: None,
    }
}

/// One answer: when it was received, and the status with the `x-app` header (which upstream
/// served it), or the transport error.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub outcome: Result<(u16, String), String>,
}

/// Requests in a loop (one connection each) until stopped; bounded by `max` requests.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    pub fn start(port: u16, host: &str, path: &str, max: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, out, host, path) = (stop.clone(), samples.clone(), host.to_string(), path.to_string());
        let handle = std::thread::spawn(move || {
            for _ in 0..max {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let outcome = crate::http::request(port, "GET", &path, &[("host", &host)], b"")
                    .map(|r| (r.status, r.header("x-app").unwrap_or_default().to_string()))
                    .map_err(|e| e.to_string());
                if let Ok(mut v) = out.lock() {
                    v.push(Sample { at: Instant::now(), outcome });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Traffic { stop, samples, handle: Some(handle) }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until the answers after `since` have switched to `new` (five in a row); returns the
    /// time from `since` to the first of the new answers.
    pub fn wait_switch(&self, since: Instant, new: impl Fn(&Sample) -> bool, limit: Duration) -> Duration {
        loop {
            let after: Vec<Sample> = self.samples().into_iter().filter(|s| s.at > since).collect();
            if let Some(first) = after.iter().position(&new) {
                if after.len() >= first + 5 && after[first..].iter().all(&new) {
                    return after[first].at - since;
                }
            }
            let last = after.last().map(|s| format!("{:?}", s.outcome)).unwrap_or_else(|| "no answer".into());
            assert!(since.elapsed() < limit, "no switch {limit:?} after the change; last answer: {last}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.samples()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Median and maximum.
pub fn median_max(values: &[Duration]) -> (Duration, Duration) {
    let mut v = values.to_vec();
    v.sort();
    (v.get(v.len() / 2).copied().unwrap_or_default(), v.last().copied().unwrap_or_default())
}

/// Envoy's uptime in seconds from `/server_info`.
pub fn uptime(envoy: &crate::Envoy) -> u64 {
    let info: Value = serde_json::from_str(&envoy.admin("/server_info")).unwrap_or(Value::Null);
    info["uptime_current_epoch"].as_str().and_then(|s| s.trim_end_matches('s').parse::<f64>().ok()).unwrap_or(0.0)
        as u64
}

/// Milliseconds since midnight UTC.
pub fn ms_of_day(t: std::time::SystemTime) -> u64 {
    let ms = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    ms % 86_400_000
}

/// The time of a `serve` log line (`HH:MM:SS.mmm ...`) in milliseconds since midnight UTC.
fn log_ms(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?;
    let (hms, ms) = stamp.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<u64>().ok()?)
}
