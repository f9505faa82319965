//! `make run`: the bookinfo demo mesh on loopback, on the live controller: `wasmeshctl serve`
//! watches examples/bookinfo and every Envoy starts from a `wasmeshctl envoy --xds` bootstrap, so
//! editing the YAML moves the running traffic. The filters are the built .wasm files. Ctrl-C
//! stops everything.
//!
//!   wasmesh-demo [--smoke]   --smoke: start, send a few requests, edit a copy of
//!                            virtual-services.yaml and wait for the traffic to follow, stop
//!   wasmesh-demo --login     OIDC login at the ingress gateway: starts the npm oidc-provider of
//!                            e2e/oidc on loopback and a meshConfig `wasmeshOidc` entry selecting
//!                            the gateway (bootstraps from `wasmeshctl envoy`, not the live
//!                            controller: it reads MeshConfig from a file)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};
use wasmesh_e2e::http::get;
use wasmesh_e2e::{bookinfo, paths, Mesh};

const GATEWAY: &str = "istio-system/istio-ingressgateway";
const GATEWAY_PORT: u16 = 18080;
/// Requests the self-check sends to show the canary split.
const SPLIT_REQUESTS: u32 = 100;
/// The live edit the smoke run makes (and the README shows): the canary's 90 % moves to v3.
const PROMOTE: (&str, &str) = ("subset: v1}, weight: 90}", "subset: v3}, weight: 90}");
const PROMOTE_SED: &str = "s/subset: v1}, weight: 90}/subset: v3}, weight: 90}/";

pub(crate) fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let login = std::env::args().any(|a| a == "--login");
    // Installed first, so a Ctrl-C while the mesh is still starting also stops every Envoy
    // cleanly (the mesh is dropped, not abandoned).
    let (tx, rx) = std::sync::mpsc::channel();
    if ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .is_err()
    {
        eprintln!("cannot install the Ctrl-C handler; stop with kill {}", std::process::id());
    }
    let examples = paths::repo_root().join("examples/bookinfo");
    let out = paths::repo_root().join("out/demo");
    let yaml_files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        files
    };
    let workload_port = |line: &str| {
        line.trim().strip_prefix("ports: {http: ").and_then(|r| r.strip_suffix('}')).and_then(|p| p.parse::<u16>().ok())
    };
    let yaml_ports_free = yaml_files(&examples)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f).unwrap_or_default().lines().filter_map(workload_port).collect::<Vec<_>>()
        })
        .all(port_free);
    // The mesh runs on the live controller (`wasmeshctl serve`), watching a copy of
    // examples/bookinfo whose virtual-services.yaml is the demo's (examples/bookinfo/demo/: fault
    // injection and a canary split). When its workload ports are taken (or for the smoke run) the
    // copy has free ports.
    let move_ports = !yaml_ports_free || smoke;
    let demo_vs = std::fs::read_to_string(examples.join("demo/virtual-services.yaml")).unwrap_or_else(|e| {
        eprintln!("examples/bookinfo/demo/virtual-services.yaml: {e}");
        std::process::exit(1);
    });
    let dir = {
        let copy = out.join("live-yaml");
        let _ = std::fs::remove_dir_all(&copy);
        if let Err(e) = std::fs::create_dir_all(&copy) {
            eprintln!("{}: {e}", copy.display());
            std::process::exit(1);
        }
        // The demo's Telemetry (tracing every request) is served with the rest, so it too can be
        // edited live.
        for f in yaml_files(&examples).into_iter().chain([examples.join("demo/telemetry.yaml")]) {
            let mut text = std::fs::read_to_string(&f).unwrap_or_default();
            if f.file_name().is_some_and(|n| n == "virtual-services.yaml") {
                text = demo_vs.clone();
            }
            let moved: Vec<String> = text
                .lines()
                .map(|l| match workload_port(l).filter(|_| move_ports) {
                    Some(p) => l.replace(&format!("{{http: {p}}}"), &format!("{{http: {}}}", wasmesh_e2e::free_port())),
                    None => l.to_string(),
                })
                .collect();
            let target = copy.join(f.file_name().unwrap_or_default());
            if let Err(e) = std::fs::write(&target, moved.join("\n") + "\n") {
                eprintln!("{}: {e}", target.display());
                std::process::exit(1);
            }
        }
        copy
    };
    let mut builder = Mesh::builder();
    let mut all_yaml = String::new();
    for f in yaml_files(&dir) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        all_yaml.push_str(&text);
        all_yaml.push_str("\n---\n");
        builder = builder.yaml(&text);
    }
    // --login: the gateway's port is fixed first (the provider must know the redirect URI).
    let login_gw = login.then(|| if port_free(GATEWAY_PORT) { GATEWAY_PORT } else { wasmesh_e2e::free_port() });
    let provider = login_gw.map(demo_login::start);
    match (&provider, login_gw) {
        (Some((_, mesh_config)), Some(_)) => builder = builder.mesh_config(mesh_config.clone()),
        _ => builder = builder.xds(&dir),
    }
    // Mutual TLS (security.yaml makes it STRICT): the mesh CA issues every workload's SPIFFE
    // certificate, as `wasmeshctl certs --out-dir out/demo/certs -f examples/bookinfo` does.
    let certs = paths::repo_root().join("out/demo/certs");
    let resources = wasmesh_istio::Resources {
        items: wasmesh_istio::load_str(&all_yaml, "examples/bookinfo").unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1);
        }),
    };
    let identities = wasmesh_controller::certs::identities_in(&resources, "cluster.local");
    if let Err(e) = wasmesh_controller::certs::run(&certs, &identities, &Default::default()) {
        eprintln!("cannot create the demo's certificates: {e}");
        std::process::exit(1);
    }
    builder = builder.certs_dir(&certs);
    // Observability: the trace receiver (`wasmeshctl traces --listen`, in this process) and every
    // proxy's meshConfig (examples/bookinfo/demo/mesh-config.yaml with its own access-log file).
    let obs = (!login).then(|| observability::start(&out, smoke));
    if let Some(o) = &obs {
        let files = o.mesh_configs.clone();
        builder = builder.mesh_config_files(move |name| files.file(name));
    }
    let gw_bind = login_gw.unwrap_or(if port_free(GATEWAY_PORT) && !smoke { GATEWAY_PORT } else { 0 });
    println!("wasmesh demo: bookinfo on loopback, configs generated from {}", dir.display());
    println!("  mutual TLS between all sidecars (PeerAuthentication STRICT), AuthorizationPolicies by SPIFFE identity");
    let mesh = bookinfo::workloads(builder.write_configs(&out).gateway_bound(GATEWAY, &[(80, gw_bind)]))
        .try_start()
        .unwrap_or_else(|e| {
            eprintln!("the demo mesh did not start:\n{e}");
            std::process::exit(1);
        });
    let gw = mesh.gateway_port(GATEWAY, 80);

    println!("\nGenerated Envoy configs ({}), equivalent to:", out.display());
    for c in mesh.commands() {
        println!("  {c}");
    }
    println!("\nRunning:");
    for (name, envoy) in mesh.envoys() {
        println!("  {name:<40} Envoy pid {:<7} admin http://127.0.0.1:{}/", envoy.pid(), envoy.admin_port);
    }
    println!("  ingress gateway                          http://127.0.0.1:{gw}/ (Gateway port 80)");
    if let Some((p, _)) = &provider {
        demo_login::explain(p, gw);
        println!("\nCtrl-C stops the mesh and the provider.");
        while rx.recv_timeout(Duration::from_secs(3600)).is_err() {}
        println!("\nstopping the mesh");
        drop(mesh);
        return;
    }

    println!("\nTry:");
    println!(
        "  for i in $(seq 20); do curl -s http://127.0.0.1:{gw}/productpage | python3 -c 'import json,sys; print([c[\"body\"][\"version\"] for c in json.load(sys.stdin)[\"calls\"] if c[\"service\"] == \"reviews\"])'; done | sort | uniq -c   # canary: reviews v1 ~90 %, v3 ~10 %"
    );
    println!("  curl -s -H 'end-user: jason' http://127.0.0.1:{gw}/productpage | python3 -m json.tool   # reviews v2 (black stars)");
    println!("  curl -s -o /dev/null -w '%{{time_total}}s\\n' -H 'end-user: jason' http://127.0.0.1:{gw}/productpage   # ~2 s: ratings delayed for jason (fault)");
    println!("  curl -s -o /dev/null -w '%{{time_total}}s\\n' http://127.0.0.1:{gw}/productpage   # no delay for anyone else");
    println!("  curl -si http://127.0.0.1:{gw}/admin                                          # 404: not on the gateway's VirtualService");
    println!("  curl -si -X POST http://127.0.0.1:{gw}/productpage                            # 403: productpage-viewer allows GET only");
    println!(
        "  curl -s http://127.0.0.1:{}/stats/prometheus | grep -v '^#' | head           # an Envoy's stats",
        mesh.envoy(GATEWAY).admin_port
    );

    // The last page's x-request-id and traceparent as productpage received them.
    let last_ids = std::cell::RefCell::new((String::new(), String::new()));
    let check = |user: Option<&str>| -> String {
        let headers: Vec<(&str, &str)> = user.map(|u| vec![("end-user", u)]).unwrap_or_default();
        let r = get(gw, "bookinfo.example.com", "/productpage", &headers);
        let page = r.json();
        let header = |name: &str| page["headers"][name].as_str().unwrap_or_default().to_string();
        *last_ids.borrow_mut() = (header("x-request-id"), header("traceparent"));
        let reviews = page["calls"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["service"] == "reviews"))
            .cloned()
            .unwrap_or_default();
        format!("{} productpage -> reviews {}", r.status, reviews["body"]["version"].as_str().unwrap_or("?"))
    };
    println!("\nSelf-check:");
    // The canary split (examples/bookinfo/demo/virtual-services.yaml: v1 90 %, v3 10 %).
    let (mut split, mut slowest) = (BTreeMap::<String, u32>::new(), Duration::ZERO);
    for _ in 0..SPLIT_REQUESTS {
        let t = Instant::now();
        *split.entry(check(None)).or_default() += 1;
        slowest = slowest.max(t.elapsed());
    }
    let counts: Vec<String> = split.iter().map(|(k, n)| format!("{n} x {k}")).collect();
    println!(
        "  GET /productpage x{SPLIT_REQUESTS}            {} (slowest {} ms)",
        counts.join(", "),
        slowest.as_millis()
    );
    // Fault injection: ratings delayed 2 s for jason only.
    let t = Instant::now();
    let jason = check(Some("jason"));
    println!("  GET /productpage (end-user=jason) {jason} in {} ms", t.elapsed().as_millis());
    let jason_ids = last_ids.borrow().clone();
    println!("  GET /admin                       {}", get(gw, "bookinfo.example.com", "/admin", &[]).status);
    let post = wasmesh_e2e::request(gw, "POST", "/productpage", &[("host", "bookinfo.example.com")], b"")
        .map(|r| format!("{} {}", r.status, r.text()))
        .unwrap_or_else(|e| e.to_string());
    println!("  POST /productpage                {post}");

    if let Some(o) = &obs {
        o.explain(&mesh, &jason_ids.0, &jason_ids.1);
    }

    let admin_ports: Vec<u16> = mesh.envoys().map(|(_, e)| e.admin_port).collect();
    let dashboard = wasmesh_controller::dashboard::command_line(&admin_ports);
    println!("\nThe mesh dashboard (requests/s, P50/P90/P99, success rate per service and workload, live):");
    println!("  cargo run -q -p {}", dashboard.replacen("wasmeshctl ", "wasmeshctl -- ", 1));
    if smoke {
        // One frame of that dashboard, through the command's own argument parsing.
        let mut args: Vec<String> = dashboard.split_whitespace().skip(2).map(String::from).collect();
        args.extend(["--frames", "1", "--no-clear"].map(String::from));
        let parsed = wasmesh_controller::dashboard::DashboardArgs::try_parse_args(&args);
        if let Err(e) = parsed.and_then(wasmesh_controller::dashboard::cmd) {
            eprintln!("dashboard: {e}");
            std::process::exit(1);
        }
    }
    let server = mesh.server().map(|s| s.xds_addr.to_string()).unwrap_or_default();
    let vs = dir.join("virtual-services.yaml");
    println!(
        "\nLive: `wasmeshctl serve --watch {}` (in this process, xDS on {server}) feeds every Envoy",
        dir.display()
    );
    println!("  edit {} and the traffic moves within ~2 s, without restarting an Envoy;", vs.display());
    println!("  invalid YAML is refused (the error is printed here) and the mesh keeps its last good configuration.");
    println!("  e.g. promote the canary, everyone to reviews v3:  sed -i '{PROMOTE_SED}' {}", vs.display());
    if smoke {
        // The workshop move, in the copy: the default route v3 -> v1, and the traffic follows.
        let text = std::fs::read_to_string(&vs).unwrap_or_default();
        let tmp = dir.join(".virtual-services.yaml.tmp");
        let edited = std::fs::write(&tmp, text.replace(PROMOTE.0, PROMOTE.1)).and_then(|_| std::fs::rename(&tmp, &vs));
        let start = std::time::Instant::now();
        if let Err(e) = edited {
            eprintln!("{}: {e}", vs.display());
            std::process::exit(1);
        }
        // Moved once 20 answers in a row are v3 (by chance, at 10 %: 1e-20).
        let mut in_a_row = 0;
        let moved = loop {
            let now = check(None);
            in_a_row = if now.ends_with("reviews v3") { in_a_row + 1 } else { 0 };
            if in_a_row == 20 {
                break Some(now);
            }
            if !now.starts_with("200") || start.elapsed() > Duration::from_secs(20) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match moved {
            Some(now) => println!("\nLive update: virtual-services.yaml edited (canary promoted, v1 90 % -> v3): GET /productpage {now} after {} ms", start.elapsed().as_millis()),
            None => {
                eprintln!("the edit of {} did not move the traffic: {}", vs.display(), check(None));
                std::process::exit(1);
            }
        }
        if let Some(o) = &obs {
            // A Telemetry edit, served live: the access log keeps only errors.
            let ids = || last_ids.borrow().0.clone();
            match o.live_access_log_filter(&dir.join("telemetry.yaml"), gw, &|| check(None), &ids) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        return;
    }
    println!("\nCtrl-C stops the mesh.");
    while rx.recv_timeout(Duration::from_secs(3600)).is_err() {}
    println!("\nstopping the mesh");
    drop(mesh);
}

/// `--login`: the OpenID provider and the meshConfig entry that logs users in at the gateway.
mod demo_login {
    use wasmesh_e2e::oidc::{Browser, OidcProvider, CLIENT_ID, CLIENT_SECRET};

    /// Starts the provider for a gateway on `gw`; the meshConfig selecting the gateway.
    pub fn start(gw: u16) -> (OidcProvider, wasmesh_controller::MeshConfig) {
        let base = format!("http://localhost:{gw}");
        let provider = OidcProvider::start(&format!("{base}/oauth2/callback"), &format!("{base}/"), 3600);
        // A new sealing key each run (sessions end with the demo).
        let key = wasmesh_oidc::random_b64(32).unwrap_or_else(|e| {
            eprintln!("the demo's cookie key: {e}");
            std::process::exit(1);
        });
        let entry = serde_json::json!({
            "name": "login",
            "wasmeshOidc": {
                "selector": {"matchLabels": {"istio": "ingressgateway"}},
                "issuer": provider.issuer(),
                "clientId": CLIENT_ID,
                "clientSecret": CLIENT_SECRET,
                "scopes": ["email"],
                "redirectUri": format!("{base}/oauth2/callback"),
                "postLogoutRedirectUri": format!("{base}/"),
                "allowedReturnOrigins": [base],
                "claimHeaders": [{"claim": "email", "header": "x-user-email"}],
                "cookieKey": key,
            }
        });
        let mesh = serde_json::from_value(serde_json::json!({"extensionProviders": [entry]})).unwrap_or_else(|e| {
            eprintln!("demo meshConfig: {e}");
            std::process::exit(1);
        });
        (provider, mesh)
    }

    pub fn explain(p: &OidcProvider, gw: u16) {
        let page = format!("http://localhost:{gw}/productpage");
        println!("\nLogin at the gateway (OIDC, provider npm oidc-provider at {}):", p.issuer());
        println!("  open {page} in a browser: the gateway sends you to the provider's login form;");
        println!(
            "  any user name and password log in (e.g. user alice, password alice), then Continue on the consent page;"
        );
        println!("  back at the page, productpage receives Authorization: Bearer <access token> and x-user-email.");
        println!("  log out: http://localhost:{gw}/oauth2/logout");
        println!("  API clients get 401 instead of a redirect: curl -si -H 'accept: application/json' {page}");
        let r = Browser::new().get(&page);
        println!(
            "\nSelf-check: GET /productpage without a session -> {} {}",
            r.status,
            r.header("location").map(|l| l.split('?').next().unwrap_or(l).to_string()).unwrap_or_default()
        );
    }
}

/// Access logs and traces: every proxy's meshConfig (examples/bookinfo/demo/mesh-config.yaml,
/// its access log in a file of its own) and the trace receiver of `wasmeshctl traces --listen`,
/// run in this process, writing each trace's waterfall to out/demo/traces.txt.
mod observability {
    use serde_json::{json, Value};
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use wasmesh_controller::traces::{self, Span};
    use wasmesh_e2e::Mesh;

    /// The receiver's port when free (OTLP/HTTP's usual port, `wasmeshctl traces`' default).
    const COLLECTOR_PORT: u16 = 4318;
    /// A trace is written once no span of it arrived for this long: proxies export every second,
    /// and jason's page takes 2 s (a span is exported when its request ends).
    const SETTLE: Duration = Duration::from_millis(3000);
    /// Spans of a request for jason: gateway (in, out: istiod's `spawn_upstream_span`),
    /// productpage (in, out to details and reviews), details, reviews (in, out), ratings.
    const JASON_SPANS: usize = 9;
    /// The hops of a request for jason: gateway → productpage → reviews v2 → ratings.
    pub const JASON_HOPS: [&str; 4] =
        ["istio-system/istio-ingressgateway", "default/productpage-v1", "default/reviews-v2", "default/ratings-v1"];

    fn fail(message: String) -> ! {
        eprintln!("{message}");
        std::process::exit(1);
    }

    /// Writes each proxy's meshConfig file: the demo's, with the proxy's own access-log file and
    /// the receiver's port.
    #[derive(Clone)]
    pub struct MeshConfigs {
        dir: PathBuf,
        logs: PathBuf,
        template: Value,
        port: u16,
    }

    impl MeshConfigs {
        pub fn file(&self, workload: &str) -> PathBuf {
            let file = self.dir.join(format!("{}.yaml", workload.replace('/', ".")));
            let mut mesh = self.template.clone();
            mesh["accessLogFile"] = json!(self.log(workload).display().to_string());
            for p in mesh["extensionProviders"].as_array_mut().into_iter().flatten() {
                if let Some(otel) = p.get_mut("opentelemetry") {
                    otel["port"] = json!(self.port);
                }
            }
            let text = format!(
                "# Written by `make run` for {workload} from examples/bookinfo/demo/mesh-config.yaml.\n{}",
                yaml_serde::to_string(&mesh).unwrap_or_default()
            );
            if let Err(e) = std::fs::write(&file, text) {
                fail(format!("{}: {e}", file.display()));
            }
            file
        }

        /// The proxy's access log (meshConfig `accessLogFile`).
        pub fn log(&self, workload: &str) -> PathBuf {
            self.logs.join(format!("{}.log", workload.replace('/', ".")))
        }
    }

    pub struct Observability {
        pub mesh_configs: MeshConfigs,
        port: u16,
        traces_file: PathBuf,
        received: Arc<Mutex<Vec<Vec<Span>>>>,
    }

    /// Starts the receiver and prepares out/demo/mesh and out/demo/logs (emptied).
    pub fn start(out: &Path, smoke: bool) -> Observability {
        let source = wasmesh_e2e::paths::repo_root().join("examples/bookinfo/demo/mesh-config.yaml");
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| fail(format!("{}: {e}", source.display())));
        let template: Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| fail(format!("{}: {e}", source.display())));
        let (dir, logs) = (out.join("mesh"), out.join("logs"));
        let _ = std::fs::remove_dir_all(&logs);
        for d in [&dir, &logs] {
            if let Err(e) = std::fs::create_dir_all(d) {
                fail(format!("{}: {e}", d.display()));
            }
        }
        let traces_file = out.join("traces.txt");
        if let Err(e) = std::fs::write(&traces_file, "") {
            fail(format!("{}: {e}", traces_file.display()));
        }
        let wanted = if smoke || !super::port_free(COLLECTOR_PORT) { 0 } else { COLLECTOR_PORT };
        let listener = std::net::TcpListener::bind(("127.0.0.1", wanted))
            .unwrap_or_else(|e| fail(format!("the trace receiver cannot listen: {e}")));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let received: Arc<Mutex<Vec<Vec<Span>>>> = Arc::default();
        let (file, keep) = (traces_file.clone(), received.clone());
        std::thread::spawn(move || {
            let result = traces::receive(listener, SETTLE, |spans| {
                let text = traces::waterfall(&spans, 40);
                let written = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()));
                if let Err(e) = written {
                    eprintln!("{}: {e}", file.display());
                }
                if let Ok(mut r) = keep.lock() {
                    r.push(spans);
                }
                true
            });
            if let Err(e) = result {
                eprintln!("the trace receiver stopped: {e}");
            }
        });
        Observability { mesh_configs: MeshConfigs { dir, logs, template, port }, port, traces_file, received }
    }

    impl Observability {
        /// The smoke run's Telemetry edit: `accessLogging` with `filter: response.code >= 400` added
        /// to the served telemetry.yaml; done once a page's request (200) is not in the gateway's
        /// log while a 404 sent after it is. `page` sends a GET /productpage, `page_id` its
        /// x-request-id.
        pub fn live_access_log_filter(
            &self,
            telemetry: &Path,
            gw: u16,
            page: &dyn Fn() -> String,
            page_id: &dyn Fn() -> String,
        ) -> Result<String, String> {
            let text = std::fs::read_to_string(telemetry).map_err(|e| format!("{}: {e}", telemetry.display()))?;
            let edited = format!(
                "{}\n  accessLogging:\n  - filter: {{expression: \"response.code >= 400\"}}\n",
                text.trim_end()
            );
            let tmp = telemetry.with_extension("yaml.tmp");
            std::fs::write(&tmp, edited)
                .and_then(|_| std::fs::rename(&tmp, telemetry))
                .map_err(|e| format!("{}: {e}", telemetry.display()))?;
            let start = Instant::now();
            let log = self.mesh_configs.log(JASON_HOPS[0]);
            let mut probe = 0u32;
            loop {
                probe += 1;
                if start.elapsed() > Duration::from_secs(20) {
                    return Err(format!("the edit of {} did not change {}", telemetry.display(), log.display()));
                }
                let status = page();
                let id = page_id();
                let path = format!("/admin?probe={probe}");
                let missing = wasmesh_e2e::http::get(gw, "bookinfo.example.com", &path, &[]).status;
                // Lines are flushed in the order the requests ended: once the 404 is there, the
                // page's line would be too.
                let seen = Instant::now();
                let text = loop {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    if text.contains(&format!("\"GET {path} HTTP/1.1\" {missing}"))
                        || seen.elapsed() > Duration::from_secs(3)
                    {
                        break text;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                };
                if !id.is_empty() && !text.contains(&id) && text.contains(&path) {
                    return Ok(format!(
                        "Live update: telemetry.yaml edited (accessLogging filter response.code >= 400): GET /productpage {status} \
                         not logged, GET {path} {missing} logged, after {} ms",
                        start.elapsed().as_millis()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }

        /// Where to look, and one request's access-log lines at each hop and its trace.
        pub fn explain(&self, mesh: &Mesh, request_id: &str, traceparent: &str) {
            let gateway_log = self.mesh_configs.log(JASON_HOPS[0]);
            println!("\nAccess logs (Istio's default TEXT format, meshConfig accessLogFile; one file per proxy):");
            for (name, _) in mesh.envoys() {
                println!("  {name:<40} {}", self.mesh_configs.log(name).display());
            }
            println!(
                "  cargo run -q -p wasmeshctl -- logs -F {}   # follow one, a request per line",
                gateway_log.display()
            );
            println!(
                "\nTraces (Telemetry randomSamplingPercentage 100: every request; OTLP/HTTP to the receiver on 127.0.0.1:{},\n  \
                 `wasmeshctl traces --listen 127.0.0.1:{}` in this process), one waterfall per trace:",
                self.port, self.port
            );
            println!("  tail -f {}", self.traces_file.display());
            let trace_id = traceparent.split('-').nth(1).unwrap_or_default().to_string();
            let start = Instant::now();
            // (Spans of a trace that came more than SETTLE apart are received as two.)
            let trace = loop {
                let spans: Vec<Span> = self
                    .received
                    .lock()
                    .map(|r| r.iter().flatten().filter(|s| s.trace_id == trace_id).cloned().collect())
                    .unwrap_or_default();
                if spans.len() >= JASON_SPANS || start.elapsed() > Duration::from_secs(15) {
                    break Some(spans).filter(|s| !s.is_empty());
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            println!("\nGET /productpage (end-user=jason), x-request-id {request_id}, at each hop:");
            for hop in JASON_HOPS {
                let text = std::fs::read_to_string(self.mesh_configs.log(hop)).unwrap_or_default();
                for line in text.lines().filter(|l| !request_id.is_empty() && l.contains(request_id)) {
                    println!("  {hop}: {line}");
                }
            }
            match trace {
                Some(spans) => {
                    println!("\nits trace (in {}):\n{}", self.traces_file.display(), traces::waterfall(&spans, 40))
                }
                None => println!("\nits trace {trace_id:?} did not reach the receiver within 15 s"),
            }
        }
    }
}
