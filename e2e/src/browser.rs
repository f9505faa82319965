//! Headless Chromium for the e2e tests that need a real browser (CORS from a page on another origin,
//! the OIDC login as a person walks it). Debian's `chromium` is driven by npm `playwright-core` from a
//! node script in `e2e/browser/`; `scripts/deps.sh` installs both. A missing browser fails the test
//! with the command that installs it: it is never skipped.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The Chromium binary: `CHROMIUM_BIN`, else `/usr/bin/chromium` (Debian's package).
pub fn chromium_bin() -> PathBuf {
    std::env::var("CHROMIUM_BIN").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/bin/chromium"))
}

/// Runs `node e2e/browser/<script>` with `env` (plus `CHROMIUM_BIN`) and returns its standard output.
/// Panics with the script's standard error when it fails or runs longer than `timeout`.
pub fn run_script(script: &str, env: &[(&str, &str)], timeout: Duration) -> String {
    let dir = crate::paths::repo_root().join("e2e").join("browser");
    assert!(
        dir.join("node_modules").join("playwright-core").exists(),
        "e2e/browser/node_modules is missing: run scripts/deps.sh (npm ci --prefix e2e/browser)"
    );
    let chromium = chromium_bin();
    assert!(chromium.exists(), "{} is missing: run scripts/deps.sh (apt-get install chromium)", chromium.display());
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script)).current_dir(&dir).env("CHROMIUM_BIN", &chromium);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("node {script}: {e}"));
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let err = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
                panic!("node {script} ran over {timeout:?}; stderr:\n{err}");
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("node {script}: {e}"),
        }
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("node {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node {script} failed ({}); stdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
