//! `wasmeshctl dashboard`: Istio's Mesh Dashboard in a terminal.
//!
//! Like Grafana's "Istio Mesh Dashboard", it shows per service and per workload the request rate,
//! the P50/P90/P99 latency and the success rate (responses that are not 5xx), from the standard
//! metrics as the client side reports them (`reporter="source"`: client sidecars and gateways).
//! The numbers come either straight from the Envoys' admin endpoints (`/stats/prometheus`, two
//! scrapes make a rate; quantiles are interpolated in the histogram buckets as Prometheus'
//! `histogram_quantile` does) or from a Prometheus server (PromQL over its HTTP API). The table is
//! redrawn every interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (what Envoy's `/stats/prometheus` serves):
/// comments are skipped, label values unescaped, a trailing timestamp ignored. Lines that do not
/// parse are skipped.
pub fn parse_prometheus_text(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name: name.to_string(), labels, value })
}

/// What a row aggregates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum View {
    Service,
    Workload,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub view: View,
    /// `destination_service`, or `destination_workload`.
    pub name: String,
    /// Empty for services (the host is fully qualified); `destination_workload_namespace`.
    pub namespace: String,
}

/// Cumulative counts at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: f64,
    pub failures: f64,
    /// Histogram buckets: upper bound → cumulative count (`+Inf` included).
    pub buckets: Vec<(f64, f64)>,
}

/// The mesh's counters at one instant, from one or more scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub totals: BTreeMap<Key, Totals>,
}

impl Snapshot {
    /// Aggregates the `reporter="source"` series of several Envoys' scrapes.
    pub fn from_samples<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Snapshot {
        let mut snap = Snapshot::default();
        let mut buckets: BTreeMap<Key, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
        for s in samples {
            if s.labels.get("reporter").map(String::as_str) != Some("source") {
                continue;
            }
            let keys = keys_of(&s.labels);
            match s.name.as_str() {
                "istio_requests_total" => {
                    let failed = s.labels.get("response_code").is_some_and(|c| c.starts_with('5'));
                    for k in keys {
                        let t = snap.totals.entry(k).or_default();
                        t.requests += s.value;
                        if failed {
                            t.failures += s.value;
                        }
                    }
                }
                "istio_request_duration_milliseconds_bucket" => {
                    let Some(le) = s.labels.get("le").and_then(|v| parse_le(v)) else { continue };
                    for k in keys {
                        let e = buckets.entry(k).or_default().entry(le.to_bits()).or_insert((le, 0.0));
                        e.1 += s.value;
                    }
                }
                _ => {}
            }
        }
        for (k, b) in buckets {
            let mut list: Vec<(f64, f64)> = b.into_values().collect();
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            snap.totals.entry(k).or_default().buckets = list;
        }
        snap
    }
}

fn parse_le(v: &str) -> Option<f64> {
    if v == "+Inf" {
        Some(f64::INFINITY)
    } else {
        v.parse().ok()
    }
}

fn keys_of(labels: &BTreeMap<String, String>) -> Vec<Key> {
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let mut keys = Vec::with_capacity(2);
    let service = get("destination_service");
    if !service.is_empty() {
        keys.push(Key { view: View::Service, name: service, namespace: String::new() });
    }
    let workload = get("destination_workload");
    if !workload.is_empty() {
        keys.push(Key { view: View::Workload, name: workload, namespace: get("destination_workload_namespace") });
    }
    keys
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket that holds the
/// rank; the first bucket starts at 0; a rank in the `+Inf` bucket gives the last finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite()).map(|(_, c)| *c)?;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|(_, c)| *c >= rank)?;
    let (upper, count) = buckets[i];
    if upper.is_infinite() {
        return buckets.get(i.wrapping_sub(1)).map(|(le, _)| *le).or(Some(0.0));
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    if i == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / in_bucket)
}

/// One line of the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: Key,
    /// Requests per second over the interval (`None` for the first frame from admin endpoints).
    pub rps: Option<f64>,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    /// Fraction of non-5xx responses over the interval (or since start on the first frame).
    pub success: Option<f64>,
    /// Requests counted over the interval (or since start).
    pub requests: f64,
}

/// The rows from two snapshots `elapsed` apart (or one, for totals since the Envoys started).
pub fn rows(prev: Option<&Snapshot>, cur: &Snapshot, elapsed: Duration) -> Vec<Row> {
    let secs = elapsed.as_secs_f64();
    cur.totals
        .iter()
        .map(|(key, now)| {
            let before = prev.and_then(|p| p.totals.get(key));
            // A counter that went down means the Envoy restarted: count from zero.
            let delta = |a: f64, b: Option<f64>| match b {
                Some(b) if a >= b => a - b,
                _ => a,
            };
            let requests = delta(now.requests, before.map(|b| b.requests));
            let failures = delta(now.failures, before.map(|b| b.failures));
            let buckets: Vec<(f64, f64)> = now
                .buckets
                .iter()
                .map(|(le, c)| {
                    let old = before.and_then(|b| b.buckets.iter().find(|(l, _)| l == le).map(|(_, c)| *c));
                    (*le, delta(*c, old))
                })
                .collect();
            Row {
                key: key.clone(),
                rps: match prev {
                    Some(_) if secs > 0.0 => Some(requests / secs),
                    _ => None,
                },
                p50: histogram_quantile(0.5, &buckets),
                p90: histogram_quantile(0.9, &buckets),
                p99: histogram_quantile(0.99, &buckets),
                success: if requests > 0.0 { Some((requests - failures) / requests) } else { None },
                requests,
            }
        })
        .collect()
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "-".to_string(),
    }
}

/// The dashboard as text: a services table and a workloads table.
pub fn render(title: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let mut section = |heading: &str, view: View, first: &str| {
        let mut sel: Vec<&Row> = rows.iter().filter(|r| r.key.view == view).collect();
        sel.sort_by(|a, b| a.key.cmp(&b.key));
        let name_w = sel.iter().map(|r| r.key.name.len()).max().unwrap_or(0).max(first.len());
        let ns_w = sel.iter().map(|r| r.key.namespace.len()).max().unwrap_or(0).max(9);
        let _ = writeln!(out, "\n{heading}");
        if view == View::Workload {
            let _ = writeln!(
                out,
                "{first:<name_w$}  {:<ns_w$}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}",
                "NAMESPACE", "REQUESTS/S", "P50 ms", "P90 ms", "P99 ms", "SUCCESS"
            );
        } else {
            let _ = writeln!(
                out,
                "{first:<name_w$}  {:>10}  {:>8}  {:>8}  {:>8}  {:>8}",
                "REQUESTS/S", "P50 ms", "P90 ms", "P99 ms", "SUCCESS"
            );
        }
        if sel.is_empty() {
            let _ = writeln!(out, "(no traffic yet)");
        }
        for r in sel {
            let success = r.success.map(|s| format!("{:.2}%", s * 100.0)).unwrap_or_else(|| "-".into());
            let rps = match r.rps {
                Some(v) => format!("{v:.2}"),
                None => format!("{} req", r.requests),
            };
            let lat = format!("{:>8}  {:>8}  {:>8}", fmt_opt(r.p50, 2), fmt_opt(r.p90, 2), fmt_opt(r.p99, 2));
            if view == View::Workload {
                let _ = writeln!(
                    out,
                    "{:<name_w$}  {:<ns_w$}  {rps:>10}  {lat}  {success:>8}",
                    r.key.name, r.key.namespace
                );
            } else {
                let _ = writeln!(out, "{:<name_w$}  {rps:>10}  {lat}  {success:>8}", r.key.name);
            }
        }
    };
    section("HTTP/GRPC SERVICES", View::Service, "SERVICE");
    section("HTTP/GRPC WORKLOADS", View::Workload, "WORKLOAD");
    out
}

/// A plain HTTP/1.1 GET to `host:port`, returning the body (the admin endpoints and
/// Prometheus answer with a content-length or close the connection).
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    write!(s, "GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: */*\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("{addr}: {e}"))?;
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("{addr}: not an HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {addr}{path}: status {status}"));
    }
    let body = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        return dechunk(body).ok_or_else(|| format!("{addr}: bad chunked body"));
    }
    Ok(String::from_utf8_lossy(body).into_owned())
}

fn dechunk(mut data: &[u8]) -> Option<String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.split(';').next()?.trim(), 16).ok()?;
        data = data.get(line_end + 2..)?;
        if size == 0 {
            return Some(String::from_utf8_lossy(&out).into_owned());
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Scrapes every admin endpoint and aggregates them.
pub fn scrape_admins(admins: &[String]) -> Result<Snapshot, String> {
    let mut samples = Vec::new();
    for a in admins {
        samples.extend(parse_prometheus_text(&http_get(a, "/stats/prometheus")?));
    }
    Ok(Snapshot::from_samples(&samples))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One series of a PromQL result: its labels and value.
pub type Series = (BTreeMap<String, String>, f64);

/// One PromQL instant query: (labels, value) per series.
pub fn prometheus_query(addr: &str, promql: &str) -> Result<Vec<Series>, String> {
    let body = http_get(addr, &format!("/api/v1/query?query={}", url_encode(promql)))?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("Prometheus answer: {e}"))?;
    if v["status"] != "success" {
        return Err(format!("Prometheus: {}", v["error"]));
    }
    Ok(v["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                .unwrap_or_default();
            let value = s["value"][1].as_str().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect())
}

/// The dashboard's rows from Prometheus, with Istio's Mesh Dashboard queries over `window`.
pub fn prometheus_rows(addr: &str, window: &str) -> Result<Vec<Row>, String> {
    let mut rows: BTreeMap<Key, Row> = BTreeMap::new();
    for (view, by) in [
        (View::Service, "destination_service"),
        (View::Workload, "destination_workload, destination_workload_namespace"),
    ] {
        let key = |l: &BTreeMap<String, String>| -> Option<Key> {
            let name = match view {
                View::Service => l.get("destination_service")?,
                View::Workload => l.get("destination_workload")?,
            };
            let namespace = match view {
                View::Service => String::new(),
                View::Workload => l.get("destination_workload_namespace").cloned().unwrap_or_default(),
            };
            Some(Key { view, name: name.clone(), namespace })
        };
        let sel = r#"reporter="source""#;
        let rate = prometheus_query(addr, &format!("sum(rate(istio_requests_total{{{sel}}}[{window}])) by ({by})"))?;
        // One expression, so both rates come from the same instant.
        let ok = prometheus_query(
            addr,
            &format!(
                r#"sum(rate(istio_requests_total{{{sel}, response_code!~"5.."}}[{window}])) by ({by}) / sum(rate(istio_requests_total{{{sel}}}[{window}])) by ({by})"#
            ),
        )?;
        let total =
            prometheus_query(addr, &format!("sum(increase(istio_requests_total{{{sel}}}[{window}])) by ({by})"))?;
        for (labels, v) in &rate {
            let Some(k) = key(labels) else { continue };
            rows.insert(
                k.clone(),
                Row { key: k, rps: Some(*v), p50: None, p90: None, p99: None, success: None, requests: 0.0 },
            );
        }
        for (labels, v) in &ok {
            if let Some(r) = key(labels).and_then(|k| rows.get_mut(&k)) {
                r.success = if v.is_finite() { Some(v.clamp(0.0, 1.0)) } else { None };
            }
        }
        for (labels, v) in &total {
            if let Some(r) = key(labels).and_then(|k| rows.get_mut(&k)) {
                r.requests = *v;
            }
        }
        for (q, set) in [(0.5, 0usize), (0.9, 1), (0.99, 2)] {
            let res = prometheus_query(
                addr,
                &format!("histogram_quantile({q}, sum(rate(istio_request_duration_milliseconds_bucket{{{sel}}}[{window}])) by (le, {by}))"),
            )?;
            for (labels, v) in res {
                if let Some(r) = key(&labels).and_then(|k| rows.get_mut(&k)) {
                    let v = if v.is_finite() { Some(v) } else { None };
                    match set {
                        0 => r.p50 = v,
                        1 => r.p90 = v,
                        _ => r.p99 = v,
                    }
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// `wasmeshctl dashboard` options.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Envoy admin endpoints (`host:port`).
    pub admins: Vec<String>,
    /// A Prometheus server (`host:port`) instead of the admin endpoints.
    pub prometheus: Option<String>,
    pub interval: Duration,
    /// PromQL range for rates (Prometheus mode).
    pub window: String,
    /// Stop after this many frames (default: run until interrupted).
    pub frames: Option<u64>,
    /// Clear the screen before each frame (off: append frames, e.g. into a log).
    pub clear: bool,
}

/// `wasmeshctl dashboard` arguments.
#[derive(clap::Args, Debug, Clone, PartialEq)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["admin", "prometheus"])))]
pub struct DashboardArgs {
    /// Envoy admin endpoints HOST:PORT (repeatable, or comma-separated; a bare port means
    /// 127.0.0.1). Rates come from successive scrapes of their /stats/prometheus.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Vec<String>,

    /// A Prometheus server HOST:PORT that scrapes the Envoys (rates by PromQL instead).
    #[arg(long, value_name = "HOST:PORT")]
    pub prometheus: Option<String>,

    /// Seconds between frames (0.1 to 3600).
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = parse_interval)]
    pub interval: Duration,

    /// Range for rates and quantiles (a duration: 30s, 1m, 5m).
    #[arg(long, value_name = "DURATION", default_value = "1m")]
    pub window: String,

    /// Stop after N frames (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub frames: Option<u64>,

    /// Append frames instead of clearing the screen (e.g. into a log).
    #[arg(long)]
    pub no_clear: bool,
}

fn parse_interval(v: &str) -> Result<Duration, String> {
    let secs: f64 = v.parse().map_err(|_| format!("{v:?}: expected seconds, e.g. 2 or 0.5"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{v}: expected between 0.1 and 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl DashboardArgs {
    /// Parses the arguments that follow `wasmeshctl dashboard` (for a caller holding a command
    /// line, e.g. the demo running the line it prints).
    pub fn try_parse_args<I: IntoIterator<Item = S>, S: Into<std::ffi::OsString> + Clone>(
        args: I,
    ) -> Result<Self, String> {
        #[derive(clap::Parser)]
        #[command(name = "wasmeshctl dashboard")]
        struct Cli {
            #[command(flatten)]
            args: DashboardArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("dashboard")).chain(args.into_iter().map(Into::into));
        <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.args).map_err(|e| e.to_string())
    }

    pub fn options(self) -> Options {
        // Several at once: --admin 127.0.0.1:15000,127.0.0.1:15001; a bare port means loopback.
        let admins = self
            .admin
            .iter()
            .flat_map(|v| v.split(','))
            .filter(|p| !p.is_empty())
            .map(|part| if part.parse::<u16>().is_ok() { format!("127.0.0.1:{part}") } else { part.to_string() })
            .collect();
        Options {
            admins,
            prometheus: self.prometheus,
            interval: self.interval,
            window: self.window,
            frames: self.frames,
            clear: !self.no_clear,
        }
    }
}

/// The command that shows the dashboard for these Envoy admin ports (printed by the demo).
pub fn command_line(admin_ports: &[u16]) -> String {
    let list: Vec<String> = admin_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("wasmeshctl dashboard --admin {}", list.join(","))
}

/// Snapshots of the last `window`, for rates and quantiles over a sliding window (what
/// Grafana's `rate(...[1m])` gives), from the admin endpoints.
#[derive(Debug, Default)]
pub struct History {
    snapshots: std::collections::VecDeque<(Snapshot, Instant)>,
}

impl History {
    /// Adds a snapshot taken at `at` and returns the rows over the window ending there (totals
    /// since start when it is the first).
    pub fn push(&mut self, snap: Snapshot, at: Instant, window: Duration) -> Vec<Row> {
        // Keep the newest snapshot that is at least `window` old as the window's start.
        while self.snapshots.len() > 1 && self.snapshots.get(1).is_some_and(|(_, t)| at.duration_since(*t) >= window) {
            self.snapshots.pop_front();
        }
        let out = match self.snapshots.front() {
            Some((old, t)) => rows(Some(old), &snap, at.duration_since(*t)),
            None => rows(None, &snap, Duration::ZERO),
        };
        self.snapshots.push_back((snap, at));
        out
    }
}

/// Draws frames until `opts.frames` is reached (or forever).
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<(), String> {
    let window = wasmesh_istio::parse_duration(&opts.window).map_err(|e| format!("--window: {e}"))?;
    let mut history = History::default();
    let mut frame = 0u64;
    loop {
        frame += 1;
        let (title, rows) = match &opts.prometheus {
            Some(addr) => (
                format!(
                    "wasmesh: Istio Mesh Dashboard  (Prometheus {addr}, rates over {}, frame {frame})",
                    opts.window
                ),
                prometheus_rows(addr, &opts.window)?,
            ),
            None => {
                let rows = history.push(scrape_admins(&opts.admins)?, Instant::now(), window);
                let note = if frame == 1 { "; first frame: totals since the Envoys started" } else { "" };
                (
                    format!(
                        "wasmesh: Istio Mesh Dashboard  ({} Envoy admin endpoints, every {:?}, rates over up to {}, frame {frame}{note})",
                        opts.admins.len(),
                        opts.interval,
                        opts.window
                    ),
                    rows,
                )
            }
        };
        let text = render(&title, &rows);
        let clear = if opts.clear { "\x1b[2J\x1b[H" } else { "" };
        write!(out, "{clear}{text}").and_then(|_| out.flush()).map_err(|e| e.to_string())?;
        if opts.frames.is_some_and(|n| frame >= n) {
            return Ok(());
        }
        std::thread::sleep(opts.interval);
    }
}

/// `wasmeshctl dashboard` (for the CLI).
pub fn cmd(args: DashboardArgs) -> Result<(), String> {
    run(&args.options(), &mut std::io::stdout())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Trimmed from a real Envoy `/stats/prometheus` (a gateway and a client sidecar).
    const SCRAPE: &str = r#"# TYPE envoy_cluster_upstream_rq_total counter
envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound|9080||reviews.default.svc.cluster.local"} 12
# TYPE istio_requests_total counter
istio_requests_total{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200"} 6
istio_requests_total{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v3",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200"} 3
istio_requests_total{reporter="source",source_workload="productpage-v1",destination_workload="reviews-v3",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="503"} 1
istio_requests_total{reporter="destination",source_workload="productpage-v1",destination_workload="reviews-v3",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200"} 3
# TYPE istio_request_duration_milliseconds histogram
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",le="0.5"} 0
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",le="1"} 2
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",le="5"} 5
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",le="10"} 6
istio_request_duration_milliseconds_bucket{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200",le="+Inf"} 6
istio_request_duration_milliseconds_sum{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200"} 17.5
istio_request_duration_milliseconds_count{reporter="source",destination_workload="reviews-v2",destination_workload_namespace="default",destination_service="reviews.default.svc.cluster.local",response_code="200"} 6
istio_requests_total{reporter="source",source_workload="odd",destination_workload="w",destination_workload_namespace="ns",destination_service="x\"y\\z",response_code="200"} 1 1700000000000
"#;

    #[test]
    fn parses_the_text_format() {
        let s = parse_prometheus_text(SCRAPE);
        assert_eq!(s.len(), 13);
        assert_eq!(s[0].name, "envoy_cluster_upstream_rq_total");
        assert_eq!(s[0].labels["envoy_cluster_name"], "outbound|9080||reviews.default.svc.cluster.local");
        let last = s.last().unwrap();
        assert_eq!(last.labels["destination_service"], "x\"y\\z");
        assert_eq!(last.value, 1.0, "the timestamp is ignored");
        let inf = s.iter().find(|x| x.labels.get("le").map(String::as_str) == Some("+Inf")).unwrap();
        assert_eq!(inf.value, 6.0);
        assert!(parse_prometheus_text("broken{a=\"b\" 1\nno_value\n").is_empty());
    }

    #[test]
    fn quantiles_like_prometheus() {
        let b = [(0.5, 0.0), (1.0, 2.0), (5.0, 5.0), (10.0, 6.0), (f64::INFINITY, 6.0)];
        // rank 3 lies in (1,5]: 1 + 4 * (3-2)/3.
        assert!((histogram_quantile(0.5, &b).unwrap() - (1.0 + 4.0 / 3.0)).abs() < 1e-9);
        assert!((histogram_quantile(0.9, &b).unwrap() - (5.0 + 5.0 * 0.4)).abs() < 1e-9);
        // Everything above the last finite bound: that bound.
        assert_eq!(histogram_quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 4.0)]), Some(1.0));
        // First bucket interpolates from 0.
        assert_eq!(histogram_quantile(0.5, &[(10.0, 4.0), (f64::INFINITY, 4.0)]), Some(5.0));
        assert_eq!(histogram_quantile(0.5, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(10.0, 1.0)]), None, "no +Inf bucket");
    }

    #[test]
    fn rows_per_service_and_workload_with_rates() {
        let samples = parse_prometheus_text(SCRAPE);
        let first = Snapshot::from_samples(&samples);
        let svc = first
            .totals
            .get(&Key {
                view: View::Service,
                name: "reviews.default.svc.cluster.local".into(),
                namespace: String::new(),
            })
            .unwrap();
        assert_eq!(svc.requests, 10.0, "reporter=destination is not added");
        assert_eq!(svc.failures, 1.0);

        // A second scrape 2 s later with 4 more successful requests to reviews-v2.
        let later = SCRAPE
            .replace("response_code=\"200\"} 6\n", "response_code=\"200\"} 10\n")
            .replace("le=\"+Inf\"} 6", "le=\"+Inf\"} 10");
        let later = later.replace("le=\"10\"} 6", "le=\"10\"} 10");
        let second = Snapshot::from_samples(&parse_prometheus_text(&later));
        let rows = rows(Some(&first), &second, Duration::from_secs(2));
        let v2 = rows.iter().find(|r| r.key.view == View::Workload && r.key.name == "reviews-v2").unwrap();
        assert_eq!(v2.rps, Some(2.0));
        assert_eq!(v2.requests, 4.0);
        assert_eq!(v2.success, Some(1.0));
        // All 4 new requests landed in (5, 10].
        assert!((v2.p50.unwrap() - 7.5).abs() < 1e-9, "{:?}", v2.p50);
        let v3 = rows.iter().find(|r| r.key.name == "reviews-v3").unwrap();
        assert_eq!(v3.rps, Some(0.0));
        assert_eq!(v3.success, None, "no requests in the interval");
        // First frame: totals since start, no rate.
        let r0 = super::rows(None, &first, Duration::ZERO);
        let svc = r0.iter().find(|r| r.key.view == View::Service && r.key.name.starts_with("reviews")).unwrap();
        assert_eq!(svc.rps, None);
        assert_eq!(svc.success, Some(0.9));
    }

    #[test]
    fn renders_a_table() {
        let snap = Snapshot::from_samples(&parse_prometheus_text(SCRAPE));
        let text = render("title", &rows(None, &snap, Duration::ZERO));
        assert!(text.starts_with("title\n"));
        let svc_line = text.lines().find(|l| l.starts_with("reviews.default.svc.cluster.local")).unwrap();
        assert!(svc_line.contains("10 req") && svc_line.contains("90.00%"), "{svc_line}");
        assert!(text.contains("HTTP/GRPC WORKLOADS"));
        let wl = text.lines().find(|l| l.starts_with("reviews-v2 ")).unwrap();
        assert!(wl.contains("default") && wl.contains("100.00%") && wl.contains("2.33"), "{wl}");
        let empty = render("t", &[]);
        assert_eq!(empty.matches("(no traffic yet)").count(), 2);
    }

    #[test]
    fn history_keeps_a_sliding_window() {
        let snap = |n: f64| {
            let mut s = Snapshot::default();
            s.totals.insert(
                Key { view: View::Service, name: "a".into(), namespace: String::new() },
                Totals { requests: n, ..Totals::default() },
            );
            s
        };
        let t0 = Instant::now();
        let mut h = History::default();
        assert_eq!(h.push(snap(10.0), t0, Duration::from_secs(10))[0].rps, None);
        let r = h.push(snap(20.0), t0 + Duration::from_secs(5), Duration::from_secs(10));
        assert_eq!(r[0].rps, Some(2.0));
        let r = h.push(snap(40.0), t0 + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(r[0].rps, Some(3.0), "over t0..t0+10s");
        let r = h.push(snap(50.0), t0 + Duration::from_secs(15), Duration::from_secs(10));
        assert_eq!(r[0].rps, Some(3.0), "over t0+5s..t0+15s: 30 requests in 10 s");
    }

    #[test]
    fn arguments() {
        let a = |v: &[&str]| DashboardArgs::try_parse_args(v).map(DashboardArgs::options);
        let o =
            a(&["--admin", "15000,127.0.0.2:15001", "--admin", "localhost:9901", "--frames", "3", "--interval", "0.5"])
                .unwrap();
        assert_eq!(o.admins, vec!["127.0.0.1:15000", "127.0.0.2:15001", "localhost:9901"]);
        assert_eq!(o.frames, Some(3));
        assert_eq!(o.interval, Duration::from_millis(500));
        assert!(a(&["--prometheus", "127.0.0.1:9090"]).unwrap().prometheus.is_some());
        assert!(a(&[]).is_err());
        assert!(a(&["--admin", "1", "--prometheus", "x:1"]).is_err());
        assert!(a(&["--admin", "1", "--interval", "soon"]).unwrap_err().contains("expected seconds"));
        assert!(a(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(a(&["--admin", "1", "--interval", "7200"]).unwrap_err().contains("between 0.1 and 3600"));
        let o = a(&["--prometheus", "127.0.0.1:9090", "--no-clear", "--window", "5m"]).unwrap();
        assert!(!o.clear && o.admins.is_empty() && o.window == "5m" && o.interval == Duration::from_secs(2));
        assert_eq!(command_line(&[1, 2]), "wasmeshctl dashboard --admin 127.0.0.1:1,127.0.0.1:2");
    }
}
