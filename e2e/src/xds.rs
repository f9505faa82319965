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
    server: Option<Server>,
    opts: ServeOptions,
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
        let opts = ServeOptions { listen: server.xds_addr, http: server.http_addr, ..opts };
        Live { server: Some(server), opts, dir, writes: Mutex::new(Vec::new()) }
    }

    /// The running server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap_or_else(|| panic!("the server is stopped"))
    }

    /// Stops the server (the Envoys lose their xDS stream and keep their configuration).
    pub fn stop_server(&mut self) {
        self.server = None;
    }

    /// Starts a new server on the same addresses and directory (a controller restart).
    pub fn start_server(&mut self) {
        self.server = Some(Server::start(&self.opts).unwrap_or_else(|e| panic!("serve again: {e}")));
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
        xds::xds_bootstrap(node, &resources, &self.server().xds_addr.to_string()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Waits until the server accepted generation `g`.
    pub fn wait_generation(&self, g: u64, limit: Duration) {
        let start = Instant::now();
        while self.server().generation() < g {
            assert!(
                start.elapsed() < limit,
                "generation {g} not accepted after {limit:?}; at {}",
                self.server().generation()
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
        credentials_dir: None,
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
                let outcome = get_complete(port, &host, &path);
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

/// One GET; the answer counts when its `content-length` bytes are in, not when the connection
/// closes: after a local reply (a 403 from a filter) Envoy keeps the connection for its
/// `delayed_close_timeout` (1 s) waiting for the client to close first, which would otherwise
/// show as a one-second answer. Status and `x-app` (the upstream that served it).
pub fn get_complete(port: u16, host: &str, path: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        raw.extend_from_slice(&buf[..n]);
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = end {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let len: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
            if n == 0 || len.is_some_and(|len| raw.len() >= end + 4 + len) {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or(format!("bad status line: {head}"))?;
                return Ok((status, header("x-app").unwrap_or_default()));
            }
        }
        if n == 0 {
            return Err(format!("connection closed after {} bytes: {:?}", raw.len(), String::from_utf8_lossy(&raw)));
        }
    }
}
