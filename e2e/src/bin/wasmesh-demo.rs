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

fn port_free(p: u16) -> bool {
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
        for f in yaml_files(&examples) {
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

    let check = |user: Option<&str>| -> String {
        let headers: Vec<(&str, &str)> = user.map(|u| vec![("end-user", u)]).unwrap_or_default();
        let r = get(gw, "bookinfo.example.com", "/productpage", &headers);
        let page = r.json();
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
    println!("  GET /admin                       {}", get(gw, "bookinfo.example.com", "/admin", &[]).status);
    let post = wasmesh_e2e::request(gw, "POST", "/productpage", &[("host", "bookinfo.example.com")], b"")
        .map(|r| format!("{} {}", r.status, r.text()))
        .unwrap_or_else(|e| e.to_string());
    println!("  POST /productpage                {post}");

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
