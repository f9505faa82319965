//! `serve --http`: the built `.wasm` modules over HTTP, for the remote-code EnvoyFilter
//! (`http_uri` + `sha256`). `GET /wasm/` lists them (JSON: name, size, sha256, path);
//! `GET /wasm/<name>.wasm` returns one, its sha256 (hex, what Envoy's `remote.sha256` takes) in
//! `x-wasm-sha256` and in `etag`. HTTP/1.1, one request per connection.

use super::{log, sha256_hex};
use serde_json::json;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listener: TcpListener, wasm_dir: PathBuf) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let dir = wasm_dir.clone();
                tokio::spawn(async move {
                    let _ = handle(conn, &dir).await;
                });
            }
            Err(e) => log(format!("--http accept: {e}")),
        }
    }
}

struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn text(status: &'static str, body: String) -> Reply {
    Reply { status, headers: vec![("content-type", "text/plain; charset=utf-8".into())], body: body.into_bytes() }
}

async fn handle(mut conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    let reply = if method != "GET" && method != "HEAD" {
        text("405 Method Not Allowed", format!("{method}: only GET and HEAD\n"))
    } else {
        route(path, dir)
    };
    let mut out = format!("HTTP/1.1 {}\r\ncontent-length: {}\r\nconnection: close\r\n", reply.status, reply.body.len());
    for (k, v) in &reply.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    conn.write_all(out.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(&reply.body).await?;
    }
    conn.shutdown().await
}

/// A module name as it may appear in the URL: `<stem>.wasm`, the stem of letters, digits, `-`, `_`.
fn valid_name(name: &str) -> bool {
    name.strip_suffix(".wasm")
        .is_some_and(|stem| !stem.is_empty() && stem.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

fn route(path: &str, dir: &Path) -> Reply {
    if path == "/wasm" || path == "/wasm/" {
        let mut modules = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        for name in names {
            if let Ok(bytes) = std::fs::read(dir.join(&name)) {
                modules.push(json!({"name": name, "size": bytes.len(), "sha256": sha256_hex(&bytes), "path": format!("/wasm/{name}")}));
            }
        }
        let body = serde_json::to_vec_pretty(&json!({"directory": dir.display().to_string(), "modules": modules}))
            .unwrap_or_default();
        return Reply { status: "200 OK", headers: vec![("content-type", "application/json".into())], body };
    }
    let Some(name) = path.strip_prefix("/wasm/") else {
        return text("404 Not Found", format!("{path}: not found; the modules are under /wasm/\n"));
    };
    if !valid_name(name) {
        return text("404 Not Found", format!("{name:?}: not a module name (<name>.wasm)\n"));
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => {
            let sha = sha256_hex(&bytes);
            Reply {
                status: "200 OK",
                headers: vec![
                    ("content-type", "application/wasm".into()),
                    ("x-wasm-sha256", sha.clone()),
                    ("etag", format!("\"sha256:{sha}\"")),
                ],
                body: bytes,
            }
        }
        Err(_) => text("404 Not Found", format!("{name}: no such module in {} (build it first)\n", dir.display())),
    }
}
