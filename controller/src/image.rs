//! `wasmeshctl image build|push|pull`: the wasm module as an OCI image.
//!
//! Two layouts are built:
//! - `compat` (the default): a plain OCI image manifest (never an index) whose one layer is a
//!   tar+gzip holding `plugin.wasm`. Istio's agent (every release since 1.12) and Envoy Gateway read
//!   it. The layer is deterministic (fixed header times and owners, gzip without a timestamp), so the
//!   same module always gives the same manifest digest.
//! - `wasm`: the CNCF TAG-Runtime artifact (`application/vnd.wasm.config.v0+json` config, one
//!   `application/wasm` layer) that wkg, wasmCloud, Spin and runwasi read. Istio refuses it.
//!
//! `pull` does what Istio's agent does with an `oci://` URL: resolve the reference (an index goes to
//! its linux/amd64 child, as go-containerregistry's default platform), compare the *manifest* digest
//! with the pinned one before any layer is downloaded, pick the layer by Istio's rules (Docker
//! manifest: last layer tar.gzip; OCI compat: last layer tar+gzip; Solo's 2-layer artifact), take the
//! first tar entry whose basename is `plugin.wasm`, and check the `\0asm` magic and the size bound.
//! The digest printed by `build` and `push` is that manifest digest: what a WasmPlugin's `sha256`
//! (or `url: oci://…@sha256:…`) takes.

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The compat layer type Istio requires as the last layer of an OCI manifest.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The compat layer type Istio requires as the last layer of a Docker v2 manifest.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Solo's "oci" artifact: the raw module, one of exactly two layers.
pub const SOLO_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The CNCF TAG-Runtime wasm artifact.
pub const CNCF_WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const CNCF_WASM_LAYER: &str = "application/wasm";
/// The file Istio looks for (by basename) in a compat layer.
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// Istio 1.30's default `ISTIO_WASM_MAX_BINARY_SIZE_BYTES`.
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;
const WASM_MAGIC: &[u8; 4] = b"\0asm";
const TITLE: &str = "org.opencontainers.image.title";

/// The image layout to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A plain OCI image manifest with one tar+gzip layer holding plugin.wasm (Istio, Envoy Gateway).
    Compat,
    /// The CNCF wasm artifact: application/vnd.wasm.config.v0+json + one application/wasm layer.
    Wasm,
}

/// An OCI descriptor as it appears in manifests and indexes (the fields wasmesh writes or reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest or an index (the same JSON shape covers both for what is read here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// The media type, from the document or (OCI makes it optional) from its shape.
    pub fn kind(&self) -> &str {
        match &self.media_type {
            Some(t) => t,
            None if !self.manifests.is_empty() => OCI_INDEX,
            None => OCI_MANIFEST,
        }
    }

    pub fn is_index(&self) -> bool {
        matches!(self.kind(), OCI_INDEX | DOCKER_MANIFEST_LIST)
    }
}

/// One content-addressed blob.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn digest(&self) -> String {
        sha256_digest(&self.data)
    }

    fn descriptor(&self, annotations: Option<BTreeMap<String, String>>) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest(),
            size: self.data.len() as i64,
            platform: None,
            annotations,
        }
    }
}

/// A built image: the manifest bytes exactly as pushed, its config and layers.
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

impl Image {
    /// `sha256:<hex>` of the manifest bytes: what Istio compares `sha256` with.
    pub fn digest(&self) -> String {
        sha256_digest(&self.manifest)
    }

    /// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) that `skopeo`,
    /// `oras`, `crane` and `wasmeshctl image push --oci-layout` read. `index.json` is replaced.
    pub fn write_layout(&self, dir: &Path) -> Result<(), String> {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| format!("{}: {e}", blobs.display()))?;
        let mut all = vec![(self.digest(), &self.manifest), (self.config.digest(), &self.config.data)];
        all.extend(self.layers.iter().map(|l| (l.digest(), &l.data)));
        for (digest, data) in all {
            let path = blobs.join(digest.trim_start_matches("sha256:"));
            write_file(&path, data)?;
        }
        write_file(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = Manifest {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![Descriptor {
                media_type: self.media_type.clone(),
                digest: self.digest(),
                size: self.manifest.len() as i64,
                platform: None,
                annotations: None,
            }],
            ..Manifest::default()
        };
        write_file(&dir.join("index.json"), &to_json(&index)?)
    }

    /// Reads back a layout with exactly one manifest (as `write_layout` leaves it), checking every
    /// blob against its digest.
    pub fn read_layout(dir: &Path) -> Result<Image, String> {
        let index_path = dir.join("index.json");
        let text = std::fs::read(&index_path).map_err(|e| format!("{}: {e}", index_path.display()))?;
        let index: Manifest =
            serde_json::from_slice(&text).map_err(|e| format!("{}: not an OCI index: {e}", index_path.display()))?;
        let [desc] = index.manifests.as_slice() else {
            return Err(format!(
                "{}: expected exactly one manifest in `manifests`, found {}",
                index_path.display(),
                index.manifests.len()
            ));
        };
        let read_blob = |d: &Descriptor| -> Result<Vec<u8>, String> {
            let hex = d.digest.strip_prefix("sha256:").ok_or(format!(
                "{}: digest {:?} is not sha256:<hex>",
                index_path.display(),
                d.digest
            ))?;
            let path = dir.join("blobs").join("sha256").join(hex);
            let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let actual = sha256_digest(&data);
            if actual != d.digest {
                return Err(format!("{}: content is {actual}, expected {}", path.display(), d.digest));
            }
            Ok(data)
        };
        let manifest_bytes = read_blob(desc)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| format!("{}: manifest {}: {e}", dir.display(), desc.digest))?;
        let config = manifest.config.as_ref().ok_or(format!("{}: manifest has no config", dir.display()))?;
        let config = Blob { media_type: config.media_type.clone(), data: read_blob(config)? };
        let layers = manifest
            .layers
            .iter()
            .map(|l| Ok(Blob { media_type: l.media_type.clone(), data: read_blob(l)? }))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Image { manifest: manifest_bytes, media_type: manifest.kind().to_string(), config, layers })
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("serialising JSON: {e}"))
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // Write then rename: a reader never sees half a file.
    let tmp = path.with_extension("wasmesh-tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks what Istio's agent checks on every module: the `\0asm` magic and the size bound.
pub fn check_module(module: &[u8], what: &str) -> Result<(), String> {
    if module.len() as u64 > MAX_MODULE_BYTES {
        return Err(format!("{what}: {} bytes, more than the {MAX_MODULE_BYTES}-byte bound", module.len()));
    }
    if !module.starts_with(WASM_MAGIC) {
        let head: Vec<String> = module.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(format!(
            "{what}: not a wasm module: starts with [{}], expected the magic 00 61 73 6d (\"\\0asm\")",
            head.join(" ")
        ));
    }
    Ok(())
}

/// The compat layer: a ustar archive with one entry `plugin.wasm` (mode 0644, owner 0:0, mtime 0,
/// no user or group names), gzip'ed without a file name or timestamp. Same module, same bytes.
pub fn compat_layer(module: &[u8]) -> Result<Vec<u8>, String> {
    let gz = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE).map_err(|e| format!("tar header: {e}"))?;
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, module).map_err(|e| format!("tar: {e}"))?;
    let gz = tar.into_inner().map_err(|e| format!("tar: {e}"))?;
    gz.finish().map_err(|e| format!("gzip: {e}"))
}

/// Builds the image of `module` in `format`. The module must be a wasm binary.
pub fn build(module: &[u8], format: Format) -> Result<Image, String> {
    check_module(module, "--wasm")?;
    let title = |name: &str| Some(BTreeMap::from([(TITLE.to_string(), name.to_string())]));
    let (config, layer, annotations) = match format {
        Format::Compat => {
            let layer = Blob { media_type: OCI_LAYER_TAR_GZIP.into(), data: compat_layer(module)? };
            // An image config as `FROM scratch` + `COPY plugin.wasm` gives one, minus the time
            // stamps; diff_ids is the uncompressed tar's digest (OCI image-spec config.md).
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(layer.data.as_slice())
                .read_to_end(&mut tar)
                .map_err(|e| format!("gzip: {e}"))?;
            let config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&tar)]},
            });
            let config = Blob { media_type: OCI_CONFIG.into(), data: to_json(&config)? };
            // Solo's compat spec asks for this annotation; Istio detects by media type instead.
            let annotations = BTreeMap::from([("module.wasm.image/variant".to_string(), "compat".to_string())]);
            (config, layer, Some(annotations))
        }
        Format::Wasm => {
            let layer = Blob { media_type: CNCF_WASM_LAYER.into(), data: module.to_vec() };
            // `created` is left out so the digest depends on the module alone.
            let config = serde_json::json!({
                "architecture": "wasm",
                "os": "wasip1",
                "layerDigests": [layer.digest()],
            });
            (Blob { media_type: CNCF_WASM_CONFIG.into(), data: to_json(&config)? }, layer, None)
        }
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Some(config.descriptor(None)),
        layers: vec![layer.descriptor(title(PLUGIN_FILE))],
        annotations,
        ..Manifest::default()
    };
    Ok(Image { manifest: to_json(&manifest)?, media_type: OCI_MANIFEST.into(), config, layers: vec![layer] })
}

/// Which layout a pulled manifest was read as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Docker v2 manifest, last layer `…rootfs.diff.tar.gzip`.
    DockerCompat,
    /// OCI manifest, last layer `…layer.v1.tar+gzip`.
    OciCompat,
    /// Solo's artifact: exactly two layers, one `application/vnd.module.wasm.content.layer.v1+wasm`.
    SoloArtifact,
    /// CNCF wasm artifact (only with `allow_cncf`).
    Cncf,
}

impl Layout {
    /// Whether the chosen layer is a tar+gzip holding `plugin.wasm` (else it is the raw module).
    pub fn is_tar_gzip(self) -> bool {
        matches!(self, Layout::DockerCompat | Layout::OciCompat)
    }
}

/// Picks the layer holding the module exactly as Istio's agent does (`pkg/wasm/imagefetcher.go`):
/// Docker manifest → its last layer must be Docker tar.gzip; otherwise the compat check (last layer
/// OCI tar+gzip), then Solo's artifact check (exactly 2 layers, one of the Solo wasm type). The CNCF
/// layout, which Istio refuses, is read only when `allow_cncf` is set; otherwise the error gives
/// Istio's reason.
pub fn select_layer(manifest: &Manifest, allow_cncf: bool) -> Result<(Layout, &Descriptor), String> {
    let layers = &manifest.layers;
    if manifest.kind() == DOCKER_MANIFEST {
        return match layers.last() {
            Some(l) if l.media_type == DOCKER_LAYER_TAR_GZIP => Ok((Layout::DockerCompat, l)),
            Some(l) => Err(format!("invalid media type {} (expect {DOCKER_LAYER_TAR_GZIP})", l.media_type)),
            None => Err("the Docker manifest has no layers".into()),
        };
    }
    if manifest.kind() != OCI_MANIFEST {
        return Err(format!("unsupported manifest media type {}", manifest.kind()));
    }
    let compat = match layers.last() {
        Some(l) if l.media_type == OCI_LAYER_TAR_GZIP => return Ok((Layout::OciCompat, l)),
        Some(l) => format!("invalid media type {} (expect {OCI_LAYER_TAR_GZIP})", l.media_type),
        None => "the manifest has no layers".into(),
    };
    let solo = if layers.len() != 2 {
        format!("number of layers must be 2 but got {}", layers.len())
    } else if let Some(l) = layers.iter().find(|l| l.media_type == SOLO_WASM_LAYER) {
        return Ok((Layout::SoloArtifact, l));
    } else {
        format!("could not find the layer of type {SOLO_WASM_LAYER}")
    };
    let istio = format!(
        "the given image is in invalid format as an OCI image: could not parse as compat variant: {compat}; \
         could not parse as oci variant: {solo}"
    );
    let cncf_config = manifest.config.as_ref().is_some_and(|c| c.media_type == CNCF_WASM_CONFIG);
    if cncf_config || layers.iter().any(|l| l.media_type == CNCF_WASM_LAYER) {
        if !allow_cncf {
            return Err(format!(
                "this is a CNCF wasm artifact ({CNCF_WASM_CONFIG} config, {CNCF_WASM_LAYER} layer), which Istio's \
                 agent and Envoy Gateway refuse: {istio}. Push it with --format compat for them, or pull with \
                 --allow-cncf to read it anyway"
            ));
        }
        return match layers.as_slice() {
            [l] if l.media_type == CNCF_WASM_LAYER => Ok((Layout::Cncf, l)),
            _ => Err(format!(
                "a CNCF wasm artifact must have exactly one {CNCF_WASM_LAYER} layer, found [{}]",
                layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>().join(", ")
            )),
        };
    }
    Err(istio)
}

/// The linux/amd64 child of an index, as go-containerregistry resolves it for Istio's agent (no
/// platform is set, so the default platform applies).
pub fn select_platform(index: &Manifest) -> Result<&Descriptor, String> {
    index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
        .ok_or_else(|| {
            let found: Vec<String> = index
                .manifests
                .iter()
                .map(|m| match &m.platform {
                    Some(p) => format!("{}/{}", p.os, p.architecture),
                    None => format!("{} (no platform)", m.digest),
                })
                .collect();
            format!(
                "the reference is an image index without a linux/amd64 manifest (found: {}); Istio's agent \
                 resolves an index to linux/amd64 only: push a single image manifest",
                if found.is_empty() { "none".into() } else { found.join(", ") }
            )
        })
}

/// Takes `plugin.wasm` out of a compat layer: the first regular entry whose basename is
/// `plugin.wasm` (so `plugin.wasm`, `./plugin.wasm` and `/plugin.wasm` all count), at most `limit`
/// bytes.
pub fn extract_plugin(layer: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
    let entries = archive.entries().map_err(|e| format!("layer is not a tar+gzip: {e}"))?;
    let mut seen = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("layer is not a tar+gzip: {e}"))?;
        let path = entry.path().map_err(|e| format!("tar entry name: {e}"))?.into_owned();
        let is_plugin = path.file_name().is_some_and(|n| n == PLUGIN_FILE);
        if !is_plugin || !entry.header().entry_type().is_file() {
            if seen.len() < 10 {
                seen.push(path.display().to_string());
            }
            continue;
        }
        if entry.size() > limit {
            return Err(format!("{}: {} bytes, more than the {limit}-byte bound", path.display(), entry.size()));
        }
        let mut module = Vec::new();
        entry.take(limit + 1).read_to_end(&mut module).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(module);
    }
    Err(format!(
        "no regular file named {PLUGIN_FILE} in the layer (entries: {})",
        if seen.is_empty() { "none".into() } else { seen.join(", ") }
    ))
}

/// Compares the expected manifest digest with the one the registry served.
pub fn check_digest(reference: &str, expected: Option<&ExpectedDigest>, actual: &str) -> Result<(), String> {
    let Some(expected) = expected else { return Ok(()) };
    if expected.hex == actual.trim_start_matches("sha256:") {
        return Ok(());
    }
    Err(format!(
        "{reference}: manifest digest mismatch: expected sha256:{} (from {}), the registry serves sha256:{}; \
         no layer was downloaded (Istio's agent refuses this WasmPlugin the same way)",
        expected.hex,
        expected.source,
        actual.trim_start_matches("sha256:")
    ))
}

/// An expected manifest digest and where it came from (for the error message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedDigest {
    pub hex: String,
    pub source: &'static str,
}

/// The expected digest from `--sha256` and/or the reference's `@sha256:`; both must agree, as
/// Istio requires of `sha256` and the URL.
pub fn expected_digest(reference: &Reference, sha256: Option<&str>) -> Result<Option<ExpectedDigest>, String> {
    let flag = match sha256 {
        Some(s) => {
            let s = s.trim().trim_start_matches("sha256:").to_ascii_lowercase();
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("--sha256 {s:?}: expected 64 hex digits (the image manifest digest)"));
            }
            Some(ExpectedDigest { hex: s, source: "--sha256" })
        }
        None => None,
    };
    let pinned = reference.digest().map(|d| ExpectedDigest {
        hex: d.trim_start_matches("sha256:").to_string(),
        source: "the reference's @sha256:",
    });
    match (flag, pinned) {
        (Some(f), Some(p)) if f.hex != p.hex => Err(format!(
            "--sha256 {} and the reference's @sha256:{} differ; Istio requires them to match",
            f.hex, p.hex
        )),
        (f, p) => Ok(f.or(p)),
    }
}

/// How to reach a registry.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RegistryArgs {
    /// Use plain HTTP (always done for loopback registries: localhost, 127.0.0.0/8, ::1).
    #[arg(long)]
    pub plain_http: bool,
    /// HTTPS without certificate verification (like Istio's WASM_INSECURE_REGISTRIES).
    #[arg(long)]
    pub insecure: bool,
}

fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

fn client(reference: &Reference, args: &RegistryArgs) -> Client {
    // rustls needs a process-wide provider; ring is what the rest of wasmeshctl already uses.
    #[allow(deprecated)] // ring has no post-quantum key exchange; fine for registry pulls
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.resolve_registry().to_string();
    let protocol = if args.plain_http || is_loopback(&registry) {
        ClientProtocol::HttpsExcept(vec![registry])
    } else {
        ClientProtocol::Https
    };
    Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: args.insecure,
        // Indexes are resolved here, by Istio's rule, not by the host's platform.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(30)),
        ..ClientConfig::default()
    })
}

/// Credentials for `registry` from the Docker config (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`), the default keychain Istio's agent uses; anonymous otherwise.
pub fn registry_auth(registry: &str) -> RegistryAuth {
    use base64::Engine as _;
    let path = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".docker").join("config.json"),
            None => return RegistryAuth::Anonymous,
        },
    };
    let Ok(text) = std::fs::read(&path) else { return RegistryAuth::Anonymous };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&text) else { return RegistryAuth::Anonymous };
    let Some(auths) = config.get("auths").and_then(|a| a.as_object()) else { return RegistryAuth::Anonymous };
    let entry = auths.iter().find(|(k, _)| {
        let k = k.trim_start_matches("https://").trim_start_matches("http://");
        k.split('/').next() == Some(registry) || (registry == "index.docker.io" && k.starts_with("index.docker.io"))
    });
    let Some(auth) = entry.and_then(|(_, v)| v.get("auth")).and_then(|a| a.as_str()) else {
        return RegistryAuth::Anonymous;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth) else { return RegistryAuth::Anonymous };
    match String::from_utf8(decoded).ok().and_then(|s| s.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))) {
        Some((user, pass)) => RegistryAuth::Basic(user, pass),
        None => RegistryAuth::Anonymous,
    }
}

/// An error from the registry, with where credentials come from when it refused them.
fn registry_error(context: String, e: impl std::fmt::Display, registry: &str) -> String {
    let text = e.to_string();
    let denied = ["401", "403", "Not authorized", "UNAUTHORIZED", "DENIED"].iter().any(|m| text.contains(m));
    if denied {
        format!(
            "{context}: {text}\n(credentials come from the `auths` entry for {registry:?} in $DOCKER_CONFIG/config.json, \
             else ~/.docker/config.json, as for Istio's agent: `docker login {registry}` writes it)"
        )
    } else {
        format!("{context}: {text}")
    }
}

fn parse_reference(reference: &str) -> Result<Reference, String> {
    let reference = reference.strip_prefix("oci://").unwrap_or(reference);
    Reference::try_from(reference).map_err(|e| format!("{reference:?} is not an image reference: {e}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))
}

/// What `push` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// `REF@sha256:<hex>`, the pinned reference to put in a WasmPlugin `url` (after `oci://`).
    pub pinned: String,
    /// The hex manifest digest: a WasmPlugin's `sha256`.
    pub sha256: String,
}

/// Pushes `image` to `reference` (blobs, then the manifest bytes exactly as built).
pub fn push(image: &Image, reference: &str, args: &RegistryArgs) -> Result<Pushed, String> {
    let target = parse_reference(reference)?;
    if target.digest().is_some() {
        return Err(format!("{reference}: push to a tag, not a digest (the digest is what push prints)"));
    }
    let client = client(&target, args);
    let auth = registry_auth(target.resolve_registry());
    runtime()?.block_on(async {
        client.auth(&target, &auth, oci_client::RegistryOperation::Push).await.map_err(|e| {
            registry_error(format!("{reference}: authenticating for push"), e, target.resolve_registry())
        })?;
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let digest = blob.digest();
            client.push_blob(&target, blob.data.clone(), &digest).await.map_err(|e| {
                let context = format!("{reference}: pushing blob {digest} ({})", blob.media_type);
                registry_error(context, e, target.resolve_registry())
            })?;
        }
        let content_type = image.media_type.parse().map_err(|e| format!("media type {}: {e}", image.media_type))?;
        client
            .push_manifest_raw(&target, image.manifest.clone(), content_type)
            .await
            .map_err(|e| registry_error(format!("{reference}: pushing the manifest"), e, target.resolve_registry()))?;
        Ok::<(), String>(())
    })?;
    let digest = image.digest();
    Ok(Pushed {
        pinned: format!("{}@{digest}", reference.strip_prefix("oci://").unwrap_or(reference)),
        sha256: digest.trim_start_matches("sha256:").to_string(),
    })
}

/// What `pull` found.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub module: Vec<u8>,
    /// `sha256:<hex>` of the image manifest that was read (an index's linux/amd64 child).
    pub manifest_digest: String,
    pub layout: Layout,
    /// The layer the module came from.
    pub layer: Descriptor,
}

const ACCEPT: &[&str] = &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST];

/// Pulls the module as Istio's agent does (see the module documentation).
pub fn pull(reference: &str, sha256: Option<&str>, allow_cncf: bool, args: &RegistryArgs) -> Result<Pulled, String> {
    let source = parse_reference(reference)?;
    let expected = expected_digest(&source, sha256)?;
    let client = client(&source, args);
    let auth = registry_auth(source.resolve_registry());
    runtime()?.block_on(async {
        // Token registries (ghcr.io, Docker Hub) want a bearer token even for anonymous pulls.
        client.auth(&source, &auth, oci_client::RegistryOperation::Pull).await.map_err(|e| {
            registry_error(format!("{reference}: authenticating for pull"), e, source.resolve_registry())
        })?;
        let (mut manifest, mut digest) = fetch_manifest(&client, &auth, reference, &source, expected.as_ref()).await?;
        let mut via_index = None;
        if manifest.is_index() {
            let child = select_platform(&manifest).map_err(|e| format!("{reference}: {e}"))?.clone();
            let child_ref = source.clone_with_digest(child.digest.clone());
            let index_digest = digest;
            (manifest, digest) = fetch_manifest(&client, &auth, reference, &child_ref, expected.as_ref()).await?;
            if digest != child.digest {
                return Err(format!("{reference}: index {index_digest} names {}, got {digest}", child.digest));
            }
            via_index = Some(index_digest);
        }
        // Before any layer is downloaded, as Istio's agent does.
        check_digest(reference, expected.as_ref(), &digest).map_err(|e| match &via_index {
            Some(index) => format!(
                "{e}. The reference is the image index {index}; Istio checks the digest of its linux/amd64 \
                 image manifest, {digest}"
            ),
            None => e,
        })?;
        let (layout, layer) = select_layer(&manifest, allow_cncf).map_err(|e| format!("{reference}: {e}"))?;
        let layer = layer.clone();
        if layer.size < 0 || layer.size as u64 > MAX_MODULE_BYTES {
            return Err(format!(
                "{reference}: layer {} is {} bytes, outside the {MAX_MODULE_BYTES}-byte bound",
                layer.digest, layer.size
            ));
        }
        let mut data = Bounded { data: Vec::new(), limit: layer.size as u64 };
        let desc = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            ..OciDescriptor::default()
        };
        // oci-client checks the received bytes against the layer digest.
        client
            .pull_blob(&source, &desc, &mut data)
            .await
            .map_err(|e| format!("{reference}: downloading layer {}: {e}", layer.digest))?;
        let module = if layout.is_tar_gzip() {
            extract_plugin(&data.data, MAX_MODULE_BYTES)
                .map_err(|e| format!("{reference}: layer {}: {e}", layer.digest))?
        } else {
            data.data
        };
        check_module(&module, &format!("{reference}: layer {}", layer.digest))?;
        Ok(Pulled { module, manifest_digest: digest, layout, layer })
    })
}

/// One manifest, hashed as received.
async fn fetch_manifest(
    client: &Client,
    auth: &RegistryAuth,
    reference: &str,
    r: &Reference,
    expected: Option<&ExpectedDigest>,
) -> Result<(Manifest, String), String> {
    let (body, digest) = client.pull_manifest_raw(r, auth, ACCEPT).await.map_err(|e| match expected {
        Some(pin) if r.digest().map(|d| d.trim_start_matches("sha256:")) == Some(pin.hex.as_str()) => {
            format!(
                "{reference}: no manifest {} in the registry (pinned by {}): {e}",
                r.digest().unwrap_or(""),
                pin.source
            )
        }
        _ => registry_error(format!("{reference}: fetching the manifest"), e, r.resolve_registry()),
    })?;
    // The digest is the hash of what was received, whatever the registry claims.
    let actual = sha256_digest(&body);
    if actual != digest {
        return Err(format!("{reference}: the registry says the manifest is {digest}, its bytes hash to {actual}"));
    }
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| format!("{reference}: manifest {actual} is not an OCI/Docker manifest: {e}"))?;
    Ok((manifest, actual))
}

/// A sink that refuses more bytes than the descriptor announced.
struct Bounded {
    data: Vec<u8>,
    limit: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if (self.data.len() + buf.len()) as u64 > self.limit {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes the manifest announced",
                self.limit
            ))));
        }
        self.data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// CLI (contract C4)

const IMAGE_EXAMPLES: &str = "Examples:
  wasmeshctl image build --wasm target/wasm32-wasip1/release/authz.wasm --oci-layout out/images/wasmesh
  wasmeshctl image push 127.0.0.1:5000/wasmesh:0.1.0 --oci-layout out/images/wasmesh
  wasmeshctl image pull 127.0.0.1:5000/wasmesh:0.1.0 --sha256 <manifest digest> -o plugin.wasm";

/// Build, push and pull the wasm module as an OCI image.
#[derive(Debug, clap::Args)]
#[command(after_help = IMAGE_EXAMPLES)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build the image locally and print its manifest digest (deterministic: same module, same digest).
    Build(BuildArgs),
    /// Push the image; prints REF@sha256:<manifest digest> and the `sha256:` a WasmPlugin takes.
    Push(PushArgs),
    /// Pull as Istio's agent does: resolve, check the manifest digest, pick the layer, extract plugin.wasm.
    Pull(PullArgs),
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The wasm module to package (it becomes plugin.wasm).
    #[arg(long, value_name = "FILE")]
    pub wasm: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Compat)]
    pub format: Format,
    /// Write an OCI image layout here (skopeo `oci:DIR`, `image push --oci-layout DIR`).
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Where to push: HOST[:PORT]/REPO[:TAG] (an `oci://` prefix is accepted).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// The wasm module to build and push.
    #[arg(long, value_name = "FILE", required_unless_present = "oci_layout", conflicts_with = "oci_layout")]
    pub wasm: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Compat, conflicts_with = "oci_layout")]
    pub format: Format,
    /// Push the image `image build --oci-layout DIR` wrote, byte for byte.
    #[arg(long, value_name = "DIR")]
    pub oci_layout: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// HOST[:PORT]/REPO[:TAG][@sha256:HEX] (an `oci://` prefix is accepted).
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Expected manifest digest (a WasmPlugin's `sha256`); checked before any layer is downloaded.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Where to write the module.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Also read the CNCF wasm artifact layout (Istio and Envoy Gateway refuse it).
    #[arg(long)]
    pub allow_cncf: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--wasm {}: {e}", path.display()))
}

pub fn run(args: ImageArgs) -> Result<(), String> {
    match args.command {
        ImageCommand::Build(a) => {
            let image = build(&read_module(&a.wasm)?, a.format).map_err(|e| format!("{}: {e}", a.wasm.display()))?;
            if let Some(dir) = &a.oci_layout {
                image.write_layout(dir)?;
                eprintln!("wrote the OCI image layout {}", dir.display());
            }
            println!("{}", image.digest());
        }
        ImageCommand::Push(a) => {
            let image = match (&a.oci_layout, &a.wasm) {
                (Some(dir), _) => Image::read_layout(dir)?,
                (None, Some(wasm)) => {
                    build(&read_module(wasm)?, a.format).map_err(|e| format!("{}: {e}", wasm.display()))?
                }
                (None, None) => return Err("image push: give --wasm FILE or --oci-layout DIR".into()),
            };
            let pushed = push(&image, &a.reference, &a.registry)?;
            println!("{}", pushed.pinned);
            println!("sha256: {}", pushed.sha256);
        }
        ImageCommand::Pull(a) => {
            let pulled = pull(&a.reference, a.sha256.as_deref(), a.allow_cncf, &a.registry)?;
            write_file(&a.output, &pulled.module)?;
            eprintln!(
                "wrote {} ({} bytes) from manifest {} ({:?} layout, layer {})",
                a.output.display(),
                pulled.module.len(),
                pulled.manifest_digest,
                pulled.layout,
                pulled.layer.digest
            );
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0 a tiny body";

    fn desc(media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_digest(media_type.as_bytes()),
            size: 1,
            platform: None,
            annotations: None,
        }
    }

    fn manifest(kind: &str, layers: &[&str]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: Some(kind.into()),
            config: Some(desc(OCI_CONFIG)),
            layers: layers.iter().map(|l| desc(l)).collect(),
            ..Manifest::default()
        }
    }

    fn gz_tar(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            // Raw name bytes: `set_path` refuses the absolute names real images can carry.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append(&h, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn compat_layer_is_deterministic_and_holds_plugin_wasm_with_fixed_header() {
        let a = compat_layer(MODULE).unwrap();
        assert_eq!(a, compat_layer(MODULE).unwrap());
        // gzip header: magic, deflate, no flags (no name), mtime 0.
        assert_eq!(&a[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        let entries: Vec<_> = archive.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        let h = entries[0].header();
        assert_eq!(h.path().unwrap().to_str(), Some("plugin.wasm"));
        assert_eq!((h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()), (0, 0, 0, 0o644));
        assert_eq!(extract_plugin(&a, MAX_MODULE_BYTES).unwrap(), MODULE);
        assert_ne!(compat_layer(b"\0asm\x01\0\0\0 other").unwrap(), a);
    }

    #[test]
    fn build_is_deterministic_and_the_digest_is_the_manifest_hash() {
        for format in [Format::Compat, Format::Wasm] {
            let a = build(MODULE, format).unwrap();
            let b = build(MODULE, format).unwrap();
            assert_eq!(a.digest(), b.digest());
            assert_eq!(a.digest(), sha256_digest(&a.manifest));
            let m: Manifest = serde_json::from_slice(&a.manifest).unwrap();
            assert_eq!(m.kind(), OCI_MANIFEST);
            assert_eq!(m.layers.len(), 1);
            assert_eq!(m.layers[0].digest, a.layers[0].digest());
            assert_eq!(m.config.as_ref().unwrap().digest, a.config.digest());
            let (layout, _) = select_layer(&m, true).unwrap();
            assert_eq!(layout, if format == Format::Compat { Layout::OciCompat } else { Layout::Cncf });
        }
        let other = build(b"\0asm\x01\0\0\0 other", Format::Compat).unwrap();
        assert_ne!(other.digest(), build(MODULE, Format::Compat).unwrap().digest());
        assert_ne!(build(MODULE, Format::Wasm).unwrap().digest(), build(MODULE, Format::Compat).unwrap().digest());
    }

    #[test]
    fn build_refuses_what_is_not_wasm() {
        let err = build(b"#!/bin/sh\n", Format::Compat).unwrap_err();
        assert!(err.contains("not a wasm module") && err.contains("23 21 2f 62"), "{err}");
    }

    #[test]
    fn plugin_wasm_is_found_by_basename_after_other_entries() {
        let layer = gz_tar(&[
            ("etc/readme", tar::EntryType::Regular, b"hello"),
            ("plugin.wasm", tar::EntryType::Directory, b""),
            ("./build/plugin.wasm", tar::EntryType::Regular, MODULE),
            ("plugin.wasm", tar::EntryType::Regular, b"second"),
        ]);
        assert_eq!(extract_plugin(&layer, MAX_MODULE_BYTES).unwrap(), MODULE);
        let layer = gz_tar(&[("/plugin.wasm", tar::EntryType::Regular, MODULE)]);
        assert_eq!(extract_plugin(&layer, MAX_MODULE_BYTES).unwrap(), MODULE);
        let layer = gz_tar(&[("filter.wasm", tar::EntryType::Regular, MODULE)]);
        let err = extract_plugin(&layer, MAX_MODULE_BYTES).unwrap_err();
        assert!(err.contains("no regular file named plugin.wasm") && err.contains("filter.wasm"), "{err}");
        let err = extract_plugin(&compat_layer(MODULE).unwrap(), 4).unwrap_err();
        assert!(err.contains("more than the 4-byte bound"), "{err}");
        assert!(extract_plugin(MODULE, MAX_MODULE_BYTES).unwrap_err().contains("not a tar+gzip"));
    }

    #[test]
    fn layer_selection_follows_istios_fetcher() {
        // Docker manifest: last layer must be the Docker tar.gzip.
        let m = manifest(DOCKER_MANIFEST, &[OCI_LAYER_TAR_GZIP, DOCKER_LAYER_TAR_GZIP]);
        assert_eq!(select_layer(&m, false).unwrap(), (Layout::DockerCompat, &m.layers[1]));
        let m = manifest(DOCKER_MANIFEST, &[DOCKER_LAYER_TAR_GZIP, OCI_LAYER_TAR_GZIP]);
        assert_eq!(
            select_layer(&m, false).unwrap_err(),
            format!("invalid media type {OCI_LAYER_TAR_GZIP} (expect {DOCKER_LAYER_TAR_GZIP})")
        );
        // OCI compat: the last layer, however many come before it.
        let m = manifest(OCI_MANIFEST, &["application/vnd.oci.image.layer.v1.tar", OCI_LAYER_TAR_GZIP]);
        assert_eq!(select_layer(&m, false).unwrap(), (Layout::OciCompat, &m.layers[1]));
        // Solo's artifact: exactly two layers, either order.
        let m = manifest(OCI_MANIFEST, &[SOLO_WASM_LAYER, "application/vnd.module.wasm.config.v1+json"]);
        assert_eq!(select_layer(&m, false).unwrap(), (Layout::SoloArtifact, &m.layers[0]));
        let m = manifest(OCI_MANIFEST, &[SOLO_WASM_LAYER]);
        let err = select_layer(&m, false).unwrap_err();
        assert!(err.contains("could not parse as oci variant: number of layers must be 2 but got 1"), "{err}");
        let m = manifest(OCI_MANIFEST, &[SOLO_WASM_LAYER, "a/b", "c/d"]);
        assert!(select_layer(&m, false).unwrap_err().contains("number of layers must be 2 but got 3"));
        // An OCI manifest whose last layer is a Docker tar.gzip is not compat for Istio.
        let m = manifest(OCI_MANIFEST, &[DOCKER_LAYER_TAR_GZIP]);
        let err = select_layer(&m, false).unwrap_err();
        assert!(err.starts_with("the given image is in invalid format as an OCI image: could not parse as compat"));
        // Docker media types on an unknown manifest kind.
        assert!(select_layer(&manifest("application/x-other", &[OCI_LAYER_TAR_GZIP]), false).is_err());
    }

    #[test]
    fn the_cncf_layout_is_refused_with_istios_reason_unless_allowed() {
        let image = build(MODULE, Format::Wasm).unwrap();
        let m: Manifest = serde_json::from_slice(&image.manifest).unwrap();
        let err = select_layer(&m, false).unwrap_err();
        assert!(err.contains("CNCF wasm artifact"), "{err}");
        assert!(
            err.contains("invalid media type application/wasm (expect application/vnd.oci.image.layer.v1.tar+gzip)")
        );
        assert!(err.contains("number of layers must be 2 but got 1") && err.contains("--allow-cncf"), "{err}");
        assert_eq!(select_layer(&m, true).unwrap(), (Layout::Cncf, &m.layers[0]));
        let mut two = m.clone();
        two.layers.push(two.layers[0].clone());
        assert!(select_layer(&two, true).unwrap_err().contains("exactly one application/wasm layer"));
    }

    #[test]
    fn an_index_resolves_to_linux_amd64_only() {
        let child = |os: &str, arch: &str| Descriptor {
            platform: Some(Platform { architecture: arch.into(), os: os.into(), variant: None }),
            ..desc(&format!("{os}/{arch}"))
        };
        let index = Manifest {
            schema_version: 2,
            manifests: vec![child("linux", "arm64"), child("linux", "amd64")],
            ..Manifest::default()
        };
        assert!(index.is_index());
        assert_eq!(select_platform(&index).unwrap(), &index.manifests[1]);
        let index = Manifest { manifests: vec![child("wasip1", "wasm"), child("linux", "arm64")], ..index };
        let err = select_platform(&index).unwrap_err();
        assert!(err.contains("without a linux/amd64 manifest (found: wasip1/wasm, linux/arm64)"), "{err}");
    }

    #[test]
    fn digest_check_names_expected_actual_and_source() {
        let hex_a = "a".repeat(64);
        let hex_b = "b".repeat(64);
        let r = parse_reference("127.0.0.1:5000/wasmesh:v1").unwrap();
        let pin = expected_digest(&r, Some(&hex_a)).unwrap();
        assert!(check_digest("R", pin.as_ref(), &format!("sha256:{hex_a}")).is_ok());
        let err = check_digest("R", pin.as_ref(), &format!("sha256:{hex_b}")).unwrap_err();
        assert!(err.contains(&format!("expected sha256:{hex_a} (from --sha256)")), "{err}");
        assert!(err.contains(&format!("serves sha256:{hex_b}")) && err.contains("no layer was downloaded"), "{err}");
        assert!(check_digest("R", None, "sha256:x").is_ok());
        // The reference's own pin, and a conflict between the two.
        let r = parse_reference(&format!("oci://127.0.0.1:5000/wasmesh@sha256:{hex_a}")).unwrap();
        assert_eq!(expected_digest(&r, None).unwrap().unwrap().source, "the reference's @sha256:");
        assert!(expected_digest(&r, Some(&format!("sha256:{}", hex_a.to_uppercase()))).is_ok());
        let err = expected_digest(&r, Some(&hex_b)).unwrap_err();
        assert!(err.contains("differ"), "{err}");
        assert!(expected_digest(&r, Some("abc")).unwrap_err().contains("64 hex digits"));
    }

    #[test]
    fn oci_layout_round_trip_and_tamper_detection() {
        let dir = std::env::temp_dir().join(format!("wasmesh-image-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = build(MODULE, Format::Compat).unwrap();
        image.write_layout(&dir).unwrap();
        let back = Image::read_layout(&dir).unwrap();
        assert_eq!(back.manifest, image.manifest);
        assert_eq!(back.layers[0].data, image.layers[0].data);
        assert_eq!(back.media_type, OCI_MANIFEST);
        let layer = dir.join("blobs/sha256").join(image.layers[0].digest().trim_start_matches("sha256:"));
        std::fs::write(&layer, b"tampered").unwrap();
        let err = Image::read_layout(&dir).unwrap_err();
        assert!(err.contains("content is sha256:") && err.contains(&image.layers[0].digest()), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for r in ["127.0.0.1:5000", "localhost:5000", "localhost", "127.1.2.3", "[::1]:5000"] {
            assert!(is_loopback(r), "{r}");
        }
        for r in ["registry.example.com", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(r), "{r}");
        }
    }
}
