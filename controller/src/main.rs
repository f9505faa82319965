//! wasmeshctl: Istio YAML in, wasmesh filter configuration and Envoy bootstraps out.

use std::path::PathBuf;
use std::process::ExitCode;
use wasmesh_controller::{bootstrap, mesh::MeshConfig, validate};
use wasmesh_istio::{load_dir_or_files, Error, ProxyMode, Resources};

const USAGE: &str = "wasmeshctl: Istio's traffic management, security and observability as wasm filters in any Envoy

USAGE:
  wasmeshctl validate -f FILE_OR_DIR...
      Reads Istio YAML and reports everything wasmesh would refuse (file, resource, field, value).

  wasmeshctl envoy -f FILE_OR_DIR... --role sidecar|gateway --workload NS/NAME [options] [-o OUT]
      Writes a standalone Envoy bootstrap (YAML) for one proxy. The proxy's identity (labels,
      service account) comes from the WorkloadEntry NS/NAME in the files.
      Sidecar:  --inbound-port N --app-port N   inbound listener(s) (the workload's ports; repeatable)
                                                and the port the app listens on
                --outbound-port N               where the app sends its outbound calls
                --tcp-outbound BIND=HOST:PORT   a loopback port where the app reaches the TCP
                                                service port HOST:PORT (repeatable); a workload
                                                port whose service port is TCP (protocol TCP,
                                                MYSQL, REDIS, TLS..., or a tcp- name) is proxied
                                                as TCP inbound
      Gateway:  --port GATEWAY_PORT=BIND_PORT   one per Gateway server port (repeatable)
      Common:   --admin-port N (default 15000)  --wasm-dir DIR (default target/wasm32-wasip1/release)
                --mesh-config FILE (Istio MeshConfig)  --certs DIR  --envoy-access-log FILE

Files: every *.yaml in a directory; several documents per file.";

const CHECK_USAGE: &str = "  wasmeshctl check -f FILE_OR_DIR... --workload NS/NAME [--gateway] [--mesh-config FILE]
                  [--method GET] --path PATH [--host HOST] [-H 'name: value']... [--principal TD/ns/NS/sa/SA]
                  [--claims JSON] [--source-ip IP] [--remote-ip IP] [--destination-ip IP]
                  [--destination-port N] [--sni NAME]
      What the authz filter would decide for this request on the workload's sidecar (or gateway),
      offline: the decision, the policy and rule that decided, AUDIT and dry-run results.";

fn usage() -> String {
    format!(
        "{USAGE}\n\n{CHECK_USAGE}\n\nLive mesh dashboard (requests/s, P50/P90/P99, success rate per service and workload):\n  {}\n\nMutual TLS certificates (the Citadel role without Kubernetes):\n{}",
        wasmesh_controller::dashboard::USAGE,
        wasmesh_controller::certs::USAGE
    )
}

fn cmd_check(args: &[String]) -> Result<(), String> {
    use wasmesh_controller::check::{check, CheckRequest};
    // `-H` repeats and `--gateway` takes no value: pull them out before the generic parser.
    let mut rest = Vec::new();
    let mut headers = Vec::new();
    let mut gateway = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-H" | "--header" => headers.push(CheckRequest::parse_header(it.next().ok_or("-H needs 'name: value'")?)?),
            "--gateway" => gateway = true,
            _ => rest.push(a.clone()),
        }
    }
    let flags = Flags::parse(
        &rest,
        &[
            "--workload", "--mesh-config", "--method", "--path", "--host", "--principal", "--claims", "--source-ip",
            "--remote-ip", "--destination-ip", "--destination-port", "--sni",
        ],
    )?;
    let resources = flags.resources()?;
    let reference = flags.get("--workload").ok_or(format!("--workload NS/NAME is required\n\n{CHECK_USAGE}"))?;
    let (mut workload, _) = bootstrap::workload_from_entry(&resources, reference).map_err(|e| e.to_string())?;
    if gateway {
        workload.mode = ProxyMode::Gateway;
    }
    let mesh = match flags.get("--mesh-config") {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("--mesh-config {file}: {e}"))?;
            MeshConfig::load(&text, file).map_err(|e| e.to_string())?
        }
        None => MeshConfig::default(),
    };
    let claims = match flags.get("--claims") {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| format!("--claims: not a JSON object: {e}"))?),
        None => None,
    };
    let req = CheckRequest {
        method: flags.get("--method").unwrap_or("GET").to_string(),
        path: flags.get("--path").ok_or(format!("--path is required\n\n{CHECK_USAGE}"))?.to_string(),
        host: flags.get("--host").map(str::to_string),
        headers,
        principal: flags.get("--principal").map(str::to_string),
        claims,
        source_ip: flags.get("--source-ip").map(str::to_string),
        remote_ip: flags.get("--remote-ip").map(str::to_string),
        destination_ip: flags.get("--destination-ip").map(str::to_string),
        destination_port: flags
            .get("--destination-port")
            .map(|p| p.parse::<u32>().map_err(|_| format!("--destination-port {p:?}: expected a port number")))
            .transpose()?,
        sni: flags.get("--sni").map(str::to_string),
    };
    let verdict = check(&resources, &workload, &mesh, &req, gateway).map_err(|e| report(&e))?;
    println!("{verdict}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("validate") => cmd_validate(&args[1..]),
        Some("envoy") => cmd_envoy(&args[1..]),
        Some("certs") => wasmesh_controller::certs::cmd(&args[1..]),
        Some("check") => cmd_check(&args[1..]),
        Some("dashboard") => wasmesh_controller::dashboard::cmd(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// Parsed `--flag value` pairs; `-f` may repeat, as may `--port`.
struct Flags {
    files: Vec<PathBuf>,
    values: Vec<(String, String)>,
}

impl Flags {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Flags, String> {
        let mut files = Vec::new();
        let mut values = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            if name == "-f" || name == "--filename" {
                let v = inline.or_else(|| it.next().cloned()).ok_or("-f needs a file or directory")?;
                files.push(PathBuf::from(v));
                continue;
            }
            if !allowed.contains(&name.as_str()) {
                return Err(format!("unknown option {name:?}; expected one of -f, {}\n\n{USAGE}", allowed.join(", ")));
            }
            let v = inline.or_else(|| it.next().cloned()).ok_or(format!("{name} needs a value"))?;
            values.push((name, v));
        }
        Ok(Flags { files, values })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn port(&self, name: &str) -> Result<Option<u16>, String> {
        self.get(name)
            .map(|v| v.parse::<u16>().map_err(|_| format!("{name} {v:?}: expected a port number 1-65535")))
            .transpose()
    }

    fn resources(&self) -> Result<Resources, String> {
        if self.files.is_empty() {
            return Err("no input: give -f FILE_OR_DIR (Istio YAML)".into());
        }
        load_dir_or_files(&self.files).map_err(|e| e.to_string())
    }
}

fn report(errors: &[Error]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("error: {e}")).collect();
    format!("{}\n{} error(s)", lines.join("\n"), errors.len())
}

fn cmd_validate(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(args, &[])?;
    let resources = flags.resources()?;
    let errors = validate::validate(&resources);
    if !errors.is_empty() {
        return Err(report(&errors));
    }
    println!("{} resources valid", resources.items.len());
    Ok(())
}

fn cmd_envoy(args: &[String]) -> Result<(), String> {
    let flags = Flags::parse(
        args,
        &[
            "--role", "--workload", "--inbound-port", "--app-port", "--outbound-port", "--tcp-outbound", "--port",
            "--admin-port", "--wasm-dir", "--mesh-config", "--certs", "--envoy-access-log", "-o",
        ],
    )?;
    let resources = flags.resources()?;
    let role = match flags.get("--role") {
        Some("sidecar") => ProxyMode::Sidecar,
        Some("gateway") => ProxyMode::Gateway,
        other => return Err(format!("--role {:?}: expected sidecar or gateway", other.unwrap_or(""))),
    };
    let reference = flags.get("--workload").ok_or("--workload NS/NAME is required (a WorkloadEntry in the files)")?;
    let (mut workload, _) = bootstrap::workload_from_entry(&resources, reference).map_err(|e| e.to_string())?;
    workload.mode = role;
    let mesh = match flags.get("--mesh-config") {
        Some(file) => {
            let text = std::fs::read_to_string(file).map_err(|e| format!("--mesh-config {file}: {e}"))?;
            MeshConfig::load(&text, file).map_err(|e| e.to_string())?
        }
        None => MeshConfig::default(),
    };
    let app_port = flags.port("--app-port")?;
    let mut inbound = Vec::new();
    for p in flags.all("--inbound-port") {
        let port = p.parse::<u16>().map_err(|_| format!("--inbound-port {p:?}: expected a port number"))?;
        let app_port = app_port.ok_or("--inbound-port needs --app-port (where the app listens)")?;
        inbound.push(bootstrap::Inbound { port, app_port });
    }
    if inbound.is_empty() && app_port.is_some() {
        return Err("--app-port needs at least one --inbound-port".into());
    }
    let mut gateway_ports = Vec::new();
    for p in flags.all("--port") {
        let parsed = p.split_once('=').and_then(|(g, b)| Some((g.parse::<u32>().ok()?, b.parse::<u16>().ok()?)));
        gateway_ports.push(parsed.ok_or(format!("--port {p:?}: expected GATEWAY_PORT=BIND_PORT, e.g. 80=18080"))?);
    }
    let tcp_outbound = flags.all("--tcp-outbound").map(str::parse).collect::<Result<Vec<bootstrap::TcpOutbound>, String>>()?;
    let spec = bootstrap::ProxySpec {
        workload,
        inbound,
        outbound_port: flags.port("--outbound-port")?,
        tcp_outbound,
        gateway_ports,
        admin_port: flags.port("--admin-port")?.unwrap_or(15000),
        wasm_dir: {
            // Envoy resolves a relative filename against its own working directory: write absolute paths.
            let dir = PathBuf::from(flags.get("--wasm-dir").unwrap_or("target/wasm32-wasip1/release"));
            std::fs::canonicalize(&dir).unwrap_or(dir)
        },
        mesh,
        certs_dir: flags.get("--certs").map(PathBuf::from),
        envoy_access_log: flags.get("--envoy-access-log").map(PathBuf::from),
    };
    let config = bootstrap::build(&spec, &resources).map_err(|e| report(&e))?;
    let yaml = serde_yaml::to_string(&config).map_err(|e| format!("cannot write YAML: {e}"))?;
    match flags.get("-o") {
        Some(out) => std::fs::write(out, yaml).map_err(|e| format!("-o {out}: {e}"))?,
        None => print!("{yaml}"),
    }
    Ok(())
}
