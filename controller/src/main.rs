//! wasmeshctl: Istio YAML in, wasmesh filter configuration and Envoy bootstraps out.
//!
//! The command line follows istioctl and kubectl: `-f FILE|DIR|-` (repeatable) with `-R` for
//! input, `-o yaml|json` for the output format and a separate `--output-file` for where it goes,
//! per-command `--help`, `--version` and `completion SHELL`. A subcommand is one variant of
//! [`Command`] and one match arm in [`main`]; its arguments and `run` live in the library.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use wasmesh_controller::input::{report, InputArgs};
use wasmesh_controller::{bootstrap, certs, dashboard, generate, mesh::MeshConfig, validate, Layout};
use wasmesh_istio::ProxyMode;

const EXAMPLES: &str = "Examples:
  wasmeshctl validate -f examples/bookinfo
  kubectl get vs,dr,ap -A -o yaml | wasmeshctl validate -f -
  wasmeshctl certs --out-dir out/certs -f examples/bookinfo
  wasmeshctl envoy -f examples/bookinfo --role sidecar --workload default/reviews-v2 \\
      --certs out/certs --inbound-port 19083 --app-port 9080 --output-file reviews-v2.yaml
  wasmeshctl check -f examples/bookinfo --workload default/reviews-v2 --path /reviews/0
  wasmeshctl dashboard --admin 127.0.0.1:15000
  wasmeshctl logs --follow /tmp/wasmesh-demo/access.log
  source <(wasmeshctl completion bash)";

/// wasmeshctl: Istio's traffic management, security and observability as wasm filters in any Envoy.
#[derive(Parser, Debug)]
#[command(name = "wasmeshctl", version, after_help = EXAMPLES, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reports everything wasmesh would refuse in Istio YAML (file, resource, field, value)
    #[command(long_about = "Reads Istio YAML and reports everything wasmesh would refuse, each error naming the \
        file, resource, field, value and what was expected. Every error in every file is listed, with their \
        count. Kinds wasmesh does not read (Deployment, Service, ...) are skipped with a note on stderr.")]
    Validate(ValidateArgs),
    /// Writes a standalone Envoy bootstrap for one sidecar or gateway
    #[command(long_about = "Writes a standalone Envoy bootstrap for one proxy: listeners, clusters and the \
        wasmesh filters configured from the Istio YAML. The proxy's identity (labels, service account) comes \
        from the WorkloadEntry NS/NAME in the files.")]
    Envoy(Box<EnvoyArgs>),
    /// What the authz filter would decide for one request, offline
    #[command(long_about = "What the authz filter would decide for this request on the workload's sidecar (or \
        gateway), offline: the decision, the policy and rule that decided, AUDIT and dry-run results.")]
    Check(Box<CheckArgs>),
    #[command(about = certs::ABOUT, long_about = certs::LONG_ABOUT)]
    Certs(certs::CertsArgs),
    #[command(about = generate::ABOUT, long_about = generate::LONG_ABOUT, after_help = generate::EXAMPLES)]
    Generate(Box<generate::GenerateArgs>),
    /// Keeps running Envoys in step with a directory of Istio YAML (xDS: ECDS and CDS)
    #[command(long_about = "Watches a directory of Istio YAML and serves every Envoy started from a \
        `wasmeshctl envoy --xds` bootstrap its filter configurations (ECDS) and clusters (CDS) over gRPC ADS, \
        without restarting it. Invalid YAML is refused with every error and the last good configuration stays. \
        Optionally serves the built .wasm modules over HTTP.")]
    Serve(wasmesh_controller::xds::ServeArgs),
    /// Live mesh dashboard: requests/s, P50/P90/P99, success rate per service and workload
    Dashboard(dashboard::DashboardArgs),
    /// Receives OTLP/HTTP and Zipkin trace exports and prints each trace as a text waterfall
    Traces(wasmesh_controller::traces::TracesArgs),
    /// Builds, pushes and pulls the wasm module as an OCI image (Istio/Envoy Gateway or CNCF layout)
    Image(wasmesh_controller::image::ImageArgs),
    /// Documents each filter's JSON configuration (Markdown), or prints one filter's JSON Schema
    #[command(long_about = "Documents the JSON configuration of every wasmesh filter (root ids, fields, types, \
        defaults, meaning), generated from the filters' own configuration types, for attaching a filter by hand. \
        With --schema FILTER (authn, authz, router, stats) prints that configuration's JSON Schema instead.")]
    FilterConfig {
        /// Print the JSON Schema of this filter's configuration instead of the Markdown page
        #[arg(long, value_name = "FILTER")]
        schema: Option<String>,
    },
    /// Tails a proxy's access log, one readable line per request (Istio TEXT or JSON)
    #[command(long_about = "Prints a proxy's access log (the file of meshConfig accessLogFile or of an \
        envoyFileAccessLog provider; - for standard input, e.g. the proxy's output) one request per line: time, \
        code, method, path, duration, client → authority → upstream host, then flags, details, cluster, route, \
        request id and any custom JSON field. Lines in Istio's default TEXT format and JSON lines are read; other \
        lines are printed as they are.")]
    Logs {
        /// The access-log file (- for standard input)
        #[arg(value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        file: PathBuf,
        /// Keep printing the lines appended to the file (as tail -f)
        #[arg(short = 'F', long)]
        follow: bool,
        /// Print the lines as they are
        #[arg(long)]
        raw: bool,
    },
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(long_about = "Prints a shell completion script for wasmeshctl.\n\n  bash:  source <(wasmeshctl \
        completion bash)\n  zsh:   wasmeshctl completion zsh > \"${fpath[1]}/_wasmeshctl\"\n  fish:  wasmeshctl \
        completion fish > ~/.config/fish/completions/wasmeshctl.fish")]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(clap::Args, Debug)]
struct ValidateArgs {
    #[command(flatten)]
    input: InputArgs,

    /// Istio MeshConfig (YAML): CUSTOM policies' extensionProviders are checked against it.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    mesh_config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Role {
    Sidecar,
    Gateway,
}

/// The output format (`-o`), as in istioctl and kubectl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    #[default]
    Yaml,
    Json,
}

#[derive(clap::Args, Debug)]
struct EnvoyArgs {
    #[command(flatten)]
    input: InputArgs,

    /// What the proxy is: a sidecar next to an app, or a gateway.
    #[arg(long, value_enum)]
    role: Role,

    /// The WorkloadEntry (in the -f files) that names the proxy's labels and service account.
    #[arg(long, value_name = "NS/NAME")]
    workload: String,

    /// Sidecar: an inbound listener on this workload port (repeatable); needs --app-port.
    #[arg(long, value_name = "PORT", help_heading = "Sidecar", value_parser = port)]
    inbound_port: Vec<u16>,

    /// Sidecar: the port the app listens on (where inbound requests go).
    #[arg(long, value_name = "PORT", help_heading = "Sidecar", value_parser = port)]
    app_port: Option<u16>,

    /// Sidecar: where the app sends its outbound HTTP calls.
    #[arg(long, value_name = "PORT", help_heading = "Sidecar", value_parser = port)]
    outbound_port: Option<u16>,

    /// Sidecar: a loopback port where the app reaches the TCP service port HOST:PORT (repeatable),
    /// with its VirtualService `tcp`/`tls` routes. HOST `*` (e.g. `15443=*:443`): every
    /// ServiceEntry host with a TLS/HTTPS port PORT, chosen by SNI, and the outboundTrafficPolicy
    /// fallthrough. A workload port whose service port is TCP (protocol TCP, MYSQL, REDIS, TLS...,
    /// or a tcp- name) is proxied as TCP inbound.
    #[arg(long, value_name = "BIND_PORT=HOST:PORT", help_heading = "Sidecar")]
    tcp_outbound: Vec<bootstrap::TcpOutbound>,

    /// Gateway: one per Gateway server port, e.g. 80=18080 (repeatable).
    #[arg(long = "port", value_name = "GATEWAY_PORT=BIND_PORT", help_heading = "Gateway", value_parser = gateway_port)]
    gateway_ports: Vec<(u32, u16)>,

    /// Envoy's admin port.
    #[arg(long, value_name = "PORT", default_value_t = 15000, value_parser = port)]
    admin_port: u16,

    /// Where the wasm modules (router.wasm, authz.wasm, ...) are. Default: $WASMESH_WASM_DIR,
    /// else `wasm/` beside the wasmeshctl binary, else the checkout's target/wasm32-wasip1/release
    /// when wasmeshctl runs from a cargo target directory.
    #[arg(long, value_name = "DIR", env = "WASMESH_WASM_DIR", value_hint = clap::ValueHint::DirPath)]
    wasm_dir: Option<PathBuf>,

    /// Istio MeshConfig (YAML): trustDomain, rootNamespace, extensionProviders, ...
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    mesh_config: Option<PathBuf>,

    /// Certificate directory (what `wasmeshctl certs --out-dir` writes) for mutual TLS.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    certs: Option<PathBuf>,

    /// Envoy's own access log file.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    envoy_access_log: Option<PathBuf>,

    /// Gateway: directory of `tls.credentialName` files, DIR/NAME/tls.crt, DIR/NAME/tls.key and
    /// (MUTUAL) DIR/NAME/ca.crt or DIR/NAME-cacert/ca.crt.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    credentials: Option<PathBuf>,

    /// Output format of the bootstrap.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Yaml)]
    output: Format,

    /// Write the bootstrap to FILE instead of stdout.
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    output_file: Option<PathBuf>,

    /// Take filter configurations (ECDS) and clusters (CDS) from `wasmeshctl serve` at HOST:PORT,
    /// so they follow the YAML without a restart; the listeners stay in the bootstrap.
    #[arg(long, value_name = "HOST:PORT")]
    xds: Option<String>,

    /// How each listener runs its wasmesh HTTP filters: one-pass, all of them as phases of one
    /// filter (`wasmesh.chain`: one set of wasm callbacks per request, headers read once); or
    /// per-filter, one Envoy filter each. TCP filters are the same in both. Istio `WasmPlugin`
    /// manifests (`wasmeshctl generate`) always have one plugin per filter, since Istio places
    /// plugins by phase (AUTHN, AUTHZ, STATS).
    #[arg(long, value_enum, default_value_t = Layout::OnePass)]
    layout: Layout,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    input: InputArgs,

    /// The WorkloadEntry whose sidecar (or gateway) decides.
    #[arg(long, value_name = "NS/NAME")]
    workload: String,

    /// Decide as the workload's gateway instead of its sidecar.
    #[arg(long)]
    gateway: bool,

    /// Istio MeshConfig (YAML): trustDomain, rootNamespace, extensionProviders, ...
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    mesh_config: Option<PathBuf>,

    /// The request's method.
    #[arg(long, default_value = "GET", help_heading = "Request")]
    method: String,

    /// The request's path (with query).
    #[arg(long, help_heading = "Request")]
    path: String,

    /// The request's host (:authority).
    #[arg(long, help_heading = "Request")]
    host: Option<String>,

    /// A request header (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", help_heading = "Request",
          value_parser = wasmesh_controller::check::CheckRequest::parse_header)]
    headers: Vec<(String, String)>,

    /// The peer's mTLS identity.
    #[arg(long, value_name = "TD/ns/NS/sa/SA", help_heading = "Request")]
    principal: Option<String>,

    /// JWT claims of the request (a JSON object).
    #[arg(long, value_name = "JSON", help_heading = "Request")]
    claims: Option<String>,

    #[arg(long, value_name = "IP", help_heading = "Request")]
    source_ip: Option<String>,

    #[arg(long, value_name = "IP", help_heading = "Request")]
    remote_ip: Option<String>,

    #[arg(long, value_name = "IP", help_heading = "Request")]
    destination_ip: Option<String>,

    #[arg(long, value_name = "PORT", help_heading = "Request")]
    destination_port: Option<u32>,

    /// The TLS server name the client sent.
    #[arg(long, value_name = "NAME", help_heading = "Request")]
    sni: Option<String>,
}

fn port(v: &str) -> Result<u16, String> {
    v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| "expected a port number 1-65535".to_string())
}

fn gateway_port(v: &str) -> Result<(u32, u16), String> {
    v.split_once('=')
        .and_then(|(g, b)| Some((g.parse::<u32>().ok()?, b.parse::<u16>().ok()?)))
        .ok_or_else(|| "expected GATEWAY_PORT=BIND_PORT, e.g. 80=18080".to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => cmd_validate(args),
        Command::Envoy(args) => cmd_envoy(*args),
        Command::Check(args) => cmd_check(*args),
        Command::Certs(args) => certs::cmd(args),
        Command::Dashboard(args) => dashboard::cmd(args),
        Command::Traces(args) => wasmesh_controller::traces::cmd(args),
        Command::Generate(args) => generate::run(*args),
        Command::Serve(mut args) => match args.http.is_some().then(|| wasm_dir(args.wasm_dir.take())).transpose() {
            Ok(dir) => {
                args.wasm_dir = dir;
                wasmesh_controller::xds::run(args)
            }
            Err(e) => Err(e),
        },
        Command::Image(args) => wasmesh_controller::image::run(args),
        Command::FilterConfig { schema: None } => {
            print!("{}", wasmesh_controller::filter_docs::markdown());
            Ok(())
        }
        Command::FilterConfig { schema: Some(filter) } => wasmesh_controller::filter_docs::schema(&filter)
            .and_then(|v| serde_json::to_string_pretty(&v).map_err(|e| e.to_string()))
            .map(|text| println!("{text}")),
        Command::Logs { file, follow, raw } => wasmesh_controller::plugins::accesslog::tail(&file, follow, raw),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "wasmeshctl", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn mesh_config(file: Option<&Path>) -> Result<MeshConfig, String> {
    match file {
        Some(file) => {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| format!("--mesh-config {name}: {e}"))?;
            MeshConfig::load(&text, &name).map_err(|e| e.to_string())
        }
        None => Ok(MeshConfig::default()),
    }
}

fn cmd_validate(args: ValidateArgs) -> Result<(), String> {
    let input = args.input.load()?;
    let mesh = args.mesh_config.as_deref().map(|f| mesh_config(Some(f))).transpose()?;
    // Istio's CRD schemas and CEL rules (what the API server refuses), then what wasmesh refuses.
    let (errors, notes) = validate::validate_input_with_mesh(&input, mesh.as_ref());
    for note in &notes {
        eprintln!("note: {note}");
    }
    if !errors.is_empty() {
        return Err(report(&errors));
    }
    println!("{} resources valid", input.resources.items.len());
    Ok(())
}

fn cmd_check(args: CheckArgs) -> Result<(), String> {
    use wasmesh_controller::check::{check, CheckRequest};
    let resources = args.input.resources()?;
    let (mut workload, _) = bootstrap::workload_from_entry(&resources, &args.workload).map_err(|e| e.to_string())?;
    if args.gateway {
        workload.mode = ProxyMode::Gateway;
    }
    let mesh = mesh_config(args.mesh_config.as_deref())?;
    let claims = match &args.claims {
        Some(json) => Some(serde_json::from_str(json).map_err(|e| format!("--claims: not a JSON object: {e}"))?),
        None => None,
    };
    let req = CheckRequest {
        method: args.method,
        path: args.path,
        host: args.host,
        headers: args.headers,
        principal: args.principal,
        claims,
        source_ip: args.source_ip,
        remote_ip: args.remote_ip,
        destination_ip: args.destination_ip,
        destination_port: args.destination_port,
        sni: args.sni,
    };
    let verdict = check(&resources, &workload, &mesh, &req, args.gateway).map_err(|e| report(&e))?;
    println!("{verdict}");
    Ok(())
}

/// The directory the bootstrap loads the wasm modules from, as an absolute path (Envoy resolves
/// a relative filename against its own working directory). `--wasm-dir` / `$WASMESH_WASM_DIR`
/// when given; else `wasm/` beside the binary (an installed wasmeshctl); else, for a binary in a
/// cargo target directory (`target/debug/wasmeshctl`), that directory's wasm32-wasip1/release.
fn wasm_dir(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return std::path::absolute(&dir).map_err(|e| format!("--wasm-dir {}: {e}", dir.display()));
    }
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find wasmeshctl's own path: {e}"))?;
    let mut tried = Vec::new();
    if let Some(bin_dir) = exe.parent() {
        let beside = bin_dir.join("wasm");
        if beside.is_dir() {
            return Ok(beside);
        }
        tried.push(beside);
        // target/<profile>/wasmeshctl (or target/<triple>/<profile>/wasmeshctl): look upwards
        // for the target directory that holds the wasm32-wasip1 build.
        for dir in bin_dir.ancestors().skip(1).take(2) {
            let built = dir.join("wasm32-wasip1/release");
            if built.is_dir() {
                return Ok(built);
            }
            tried.push(built);
        }
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "no wasm modules found: give --wasm-dir DIR (or set WASMESH_WASM_DIR) to the directory holding router.wasm, \
         authz.wasm, ... (`make wasm` builds them into target/wasm32-wasip1/release); tried {}",
        tried.join(", ")
    ))
}

/// Every `.wasm` file the bootstrap loads exists (a missing one would only show when Envoy starts).
fn check_modules(config: &serde_json::Value, wasm_dir: &Path) -> Result<(), String> {
    fn walk<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v.as_str() {
                        Some(s) if k == "filename" && s.ends_with(".wasm") => out.push(s),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut files = Vec::new();
    walk(config, &mut files);
    files.sort_unstable();
    files.dedup();
    let missing: Vec<&str> = files.into_iter().filter(|f| !Path::new(f).is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the bootstrap needs wasm modules that are not there: {}; build them (`make wasm`) or point --wasm-dir \
         (WASMESH_WASM_DIR) at the directory that holds them (now {})",
        missing.join(", "),
        wasm_dir.display()
    ))
}

fn absolute(flag: &str, path: Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    path.map(|p| std::path::absolute(&p).map_err(|e| format!("{flag} {}: {e}", p.display()))).transpose()
}

fn cmd_envoy(args: EnvoyArgs) -> Result<(), String> {
    let resources = args.input.resources()?;
    // What Istio accepts but wasmesh would not enforce (README "What wasmeshctl refuses").
    let refused = validate::refusals(&resources);
    if !refused.is_empty() {
        return Err(report(&refused));
    }
    let (mut workload, _) = bootstrap::workload_from_entry(&resources, &args.workload).map_err(|e| e.to_string())?;
    workload.mode = match args.role {
        Role::Sidecar => ProxyMode::Sidecar,
        Role::Gateway => ProxyMode::Gateway,
    };
    let mesh = mesh_config(args.mesh_config.as_deref())?;
    // Tracing is checked against the providers of meshConfig.
    let refused = wasmesh_controller::plugins::tracing::refusals(&resources, &mesh);
    if !refused.is_empty() {
        return Err(report(&refused));
    }
    let mut inbound = Vec::new();
    for &port in &args.inbound_port {
        let app_port = args.app_port.ok_or("--inbound-port needs --app-port (where the app listens)")?;
        inbound.push(bootstrap::Inbound { port, app_port });
    }
    if inbound.is_empty() && args.app_port.is_some() {
        return Err("--app-port needs at least one --inbound-port".into());
    }
    let wasm_dir = wasm_dir(args.wasm_dir)?;
    let spec = bootstrap::ProxySpec {
        workload,
        inbound,
        outbound_port: args.outbound_port,
        tcp_outbound: args.tcp_outbound,
        gateway_ports: args.gateway_ports,
        admin_port: args.admin_port,
        wasm_dir: wasm_dir.clone(),
        mesh,
        // Absolute, like the wasm files: Envoy resolves paths against its own working directory.
        certs_dir: absolute("--certs", args.certs)?,
        envoy_access_log: absolute("--envoy-access-log", args.envoy_access_log)?,
        credentials_dir: absolute("--credentials", args.credentials)?,
    };
    let config = match &args.xds {
        None => {
            bootstrap::build_with(&spec, &resources, bootstrap::Slots::AsNeeded, args.layout).map_err(|e| report(&e))?
        }
        Some(addr) => {
            let full =
                bootstrap::build_with(&spec, &resources, bootstrap::Slots::All, args.layout).map_err(|e| report(&e))?;
            check_modules(&full, &wasm_dir)?;
            let node = wasmesh_controller::xds::NodeSpec::from_spec(
                &spec,
                &args.workload,
                absolute("--mesh-config", args.mesh_config.clone())?,
            );
            wasmesh_controller::xds::xds_bootstrap_in(&node, args.layout, &resources, addr).map_err(|e| report(&e))?
        }
    };
    check_modules(&config, &wasm_dir)?;
    let text = match args.output {
        Format::Yaml => yaml_serde::to_string(&config).map_err(|e| format!("cannot write YAML: {e}"))?,
        Format::Json => serde_json::to_string_pretty(&config).map_err(|e| format!("cannot write JSON: {e}"))? + "\n",
    };
    match &args.output_file {
        Some(out) => std::fs::write(out, text).map_err(|e| format!("--output-file {}: {e}", out.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
