//! A real OCI registry on loopback (Debian `docker-registry`, the CNCF distribution server) and
//! `skopeo` as an independent client, for the `wasmeshctl image` tests.

// A test harness: a broken setup is a test failure, reported by panicking with the reason.
#![allow(clippy::panic)]

use crate::free_port;
use crate::paths::TempDir;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` process on 127.0.0.1:<port> with its storage in a temporary directory;
/// killed (and its storage removed) when dropped.
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Registry {
    /// Starts the registry and waits until `/v2/` answers.
    pub fn start() -> Registry {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start() -> Result<Registry, String> {
        Self::try_start_with(None)
    }

    /// A registry that requires HTTP basic credentials `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_login(user: &str, password: &str) -> Registry {
        Self::try_start_with(Some((user, password))).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_with(login: Option<(&str, &str)>) -> Result<Registry, String> {
        let dir = TempDir::new("registry");
        let port = free_port();
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        if let Some((user, password)) = login {
            let hash = bcrypt::hash(password, 4).map_err(|e| format!("bcrypt: {e}"))?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))
                .map_err(|e| format!("{}: {e}", htpasswd.display()))?;
            let mut text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
            text.push_str(&format!("auth:\n  htpasswd:\n    realm: wasmesh-test\n    path: {}\n", htpasswd.display()));
            std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
        }
        let log = std::fs::File::create(dir.path().join("registry.log")).map_err(|e| format!("registry log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("registry log: {e}"))?;
        let child = Command::new(registry_bin())
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {} (run `make deps`): {e}", registry_bin()))?;
        let mut registry = Registry { child, port, dir };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = registry.child.try_wait() {
                return Err(format!("docker-registry exited ({status}):\n{}", registry.log()));
            }
            if let Ok(r) = crate::http::request(port, "GET", "/v2/", &[("host", "registry")], b"") {
                if r.status == 200 || (login.is_some() && r.status == 401) {
                    return Ok(registry);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("docker-registry not answering on 127.0.0.1:{port}:\n{}", registry.log()))
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn registry_bin() -> String {
    std::env::var("DOCKER_REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".into())
}

/// Runs `skopeo ARGS` (plain HTTP allowed, no signature policy needed) and returns its stdout.
pub fn skopeo(args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run skopeo (run `make deps`): {e}"))?;
    if !out.status.success() {
        return Err(format!("skopeo {}: {}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(out.stdout)
}

/// `skopeo inspect --raw`: the manifest bytes exactly as the registry serves them.
pub fn raw_manifest(reference: &str) -> Result<Vec<u8>, String> {
    skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")])
}

/// `skopeo inspect`: skopeo's own view (Digest, LayersData with media types, ...).
pub fn inspect(reference: &str) -> Result<Value, String> {
    let out = skopeo(&["inspect", "--tls-verify=false", &format!("docker://{reference}")])?;
    serde_json::from_slice(&out).map_err(|e| format!("skopeo inspect output: {e}"))
}

/// `skopeo copy docker://REF oci:DIR:latest`, then the layout's one manifest and its blobs dir.
pub fn copy_to_layout(reference: &str, dir: &Path, extra: &[&str]) -> Result<(Value, PathBuf), String> {
    let dest = format!("oci:{}:latest", dir.display());
    let src = format!("docker://{reference}");
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src.as_str(), dest.as_str()]);
    skopeo(&args)?;
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).map_err(|e| e.to_string())?)
        .map_err(|e| format!("index.json: {e}"))?;
    let digest = index.pointer("/manifests/0/digest").and_then(Value::as_str).ok_or("index.json has no manifest")?;
    let blobs = dir.join("blobs").join("sha256");
    let manifest = std::fs::read(blobs.join(digest.trim_start_matches("sha256:"))).map_err(|e| e.to_string())?;
    let manifest = serde_json::from_slice(&manifest).map_err(|e| format!("manifest: {e}"))?;
    Ok((manifest, blobs))
}

/// Unpacks a tar+gzip blob with the system `tar` (not the code under test) and returns the bytes
/// of `member`.
pub fn untar_member(blob: &Path, member: &str) -> Result<Vec<u8>, String> {
    let out = TempDir::new("untar");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(blob)
        .arg("-C")
        .arg(out.path())
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar -xzf {}: {status}", blob.display()));
    }
    std::fs::read(out.path().join(member)).map_err(|e| format!("{member} in {}: {e}", blob.display()))
}

/// `sha256:<hex>` of `data` with the system `sha256sum` (independent of the code under test).
pub fn sha256sum(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("sha256sum: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(data).unwrap_or_else(|e| panic!("sha256sum: {e}"));
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("sha256sum: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap_or(""))
}

/// PUTs a manifest or index document as is (`Content-Type: media_type`) to REPO:TAG, as any client
/// would; returns the digest the registry answers with.
pub fn put_manifest(
    registry: &Registry,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: &[u8],
) -> Result<String, String> {
    let path = format!("/v2/{repo}/manifests/{tag}");
    let r = crate::http::request(
        registry.port,
        "PUT",
        &path,
        &[("host", &registry.host()), ("content-type", media_type)],
        body,
    )
    .map_err(|e| format!("PUT {path}: {e}"))?;
    if r.status != 201 {
        return Err(format!("PUT {path}: {} {}", r.status, r.text()));
    }
    r.header("docker-content-digest").map(str::to_string).ok_or(format!("PUT {path}: no Docker-Content-Digest"))
}

/// Runs the `wasmeshctl` binary of this checkout (built first, so it is never stale) with `args`.
pub fn wasmeshctl(args: &[&str]) -> std::process::Output {
    wasmeshctl_env(args, &[])
}

/// [`wasmeshctl`] with extra environment variables (e.g. `DOCKER_CONFIG`).
pub fn wasmeshctl_env(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let root = crate::paths::repo_root();
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(["build", "-q", "-p", "wasmeshctl", "--bin", "wasmeshctl"])
            .status()
            .map_err(|e| format!("cargo build -p wasmeshctl: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p wasmeshctl: {status}"));
        }
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
        Ok(target.join("debug").join("wasmeshctl"))
    });
    let bin = bin.as_ref().unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(bin);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}
