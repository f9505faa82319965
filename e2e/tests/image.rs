//! `wasmeshctl image` against a real registry on loopback (Debian `docker-registry`), read back
//! independently with Debian `skopeo`, and the pulled module enforcing a policy in real Envoy.
//!
//! Needs the filters built (`make wasm`), Envoy, `docker-registry`, `skopeo`, `tar`, `sha256sum`
//! (`make deps`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use wasmesh_controller::bootstrap::wasm_http_filter;
use wasmesh_controller::image::{self, Format, Layout, RegistryArgs};
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::plugins::Direction;
use wasmesh_e2e::authz::{self, ListenerSpec, Proxy};
use wasmesh_e2e::oci::{self, Registry};
use wasmesh_e2e::paths::{self, TempDir};
use wasmesh_e2e::{http::request, App};
use wasmesh_istio::{load_str, Resources, Workload};

/// The shipped module (every filter; the image's plugin.wasm).
const MODULE: &str = "wasmesh";

fn module_bytes() -> Vec<u8> {
    std::fs::read(paths::wasm(MODULE)).unwrap()
}

fn registry_args() -> RegistryArgs {
    RegistryArgs::default()
}

#[test]
fn compat_push_is_a_single_oci_manifest_that_skopeo_reads_back_byte_for_byte() {
    let registry = Registry::start();
    let module = module_bytes();
    let image = image::build(&module, Format::Compat).unwrap();
    let reference = format!("{}/wasmesh/{MODULE}:v1", registry.host());
    let pushed = image::push(&image, &reference, &registry_args()).unwrap();
    assert_eq!(pushed.pinned, format!("{reference}@{}", image.digest()));
    assert_eq!(format!("sha256:{}", pushed.sha256), image.digest());

    // skopeo's own view: the manifest as served, its digest, its media types.
    let raw = oci::raw_manifest(&reference).unwrap();
    assert_eq!(oci::sha256sum(&raw), image.digest(), "the digest push printed is the served manifest's hash");
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json", "a manifest, not an index");
    assert!(manifest.get("manifests").is_none(), "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let inspected = oci::inspect(&reference).unwrap();
    assert_eq!(inspected["Digest"], image.digest());
    // skopeo 1.9 reads the image config too: the platform wasmesh writes and the one layer.
    assert_eq!(inspected["Layers"], serde_json::json!([image.layers[0].digest()]), "{inspected}");
    assert_eq!((inspected["Architecture"].as_str(), inspected["Os"].as_str()), (Some("wasm"), Some("wasip1")));
    assert_eq!(inspected["RepoTags"], serde_json::json!(["v1"]));

    // skopeo copy to an OCI layout; the system tar unpacks plugin.wasm: the built module.
    let dir = TempDir::new("skopeo-compat");
    let (copied, blobs) = oci::copy_to_layout(&reference, &dir.path().join("layout"), &[]).unwrap();
    let layer_digest = copied["layers"][0]["digest"].as_str().unwrap();
    let layer = blobs.join(layer_digest.trim_start_matches("sha256:"));
    assert_eq!(oci::untar_member(&layer, "plugin.wasm").unwrap(), module);

    // The same module built again pushes to the same digest (deterministic image).
    let again = image::build(&std::fs::read(paths::wasm(MODULE)).unwrap(), Format::Compat).unwrap();
    let second = image::push(&again, &format!("{}/wasmesh/{MODULE}:again", registry.host()), &registry_args()).unwrap();
    assert_eq!(second.sha256, pushed.sha256);
}

#[test]
fn pull_checks_the_manifest_digest_before_the_layers_and_refuses_a_mismatch() {
    let registry = Registry::start();
    let module = module_bytes();
    let image = image::build(&module, Format::Compat).unwrap();
    let reference = format!("{}/wasmesh/pull:v1", registry.host());
    let pushed = image::push(&image, &reference, &registry_args()).unwrap();

    // Right digest, by --sha256 and by the reference's @sha256: identical bytes.
    let pulled = image::pull(&reference, Some(&pushed.sha256), false, &registry_args()).unwrap();
    assert_eq!(pulled.module, module);
    assert_eq!(pulled.layout, Layout::OciCompat);
    assert_eq!(pulled.manifest_digest, image.digest());
    let pulled = image::pull(&format!("oci://{}", pushed.pinned), None, false, &registry_args()).unwrap();
    assert_eq!(pulled.module, module);

    // Wrong digest: refused, naming both, before any layer is fetched (the registry log shows no
    // blob GET for the layer after the refusal).
    let before = registry.log().matches(&image.layers[0].digest()).count();
    assert!(before > 0, "the registry logs each blob request:\n{}", registry.log());
    let wrong = "0".repeat(64);
    let err = image::pull(&reference, Some(&wrong), false, &registry_args()).unwrap_err();
    assert!(
        err.contains(&format!(
            "manifest digest mismatch: expected sha256:{wrong} (from --sha256), the registry serves {}",
            image.digest()
        )),
        "{err}"
    );
    assert!(err.contains("no layer was downloaded"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(registry.log().matches(&image.layers[0].digest()).count(), before, "a layer was fetched after all");

    // A wrong pin in the reference: the registry has no such manifest.
    let err = image::pull(&format!("{}/wasmesh/pull@sha256:{wrong}", registry.host()), None, false, &registry_args())
        .unwrap_err();
    assert!(err.contains(&format!("no manifest sha256:{wrong}")) && err.contains("reference's @sha256:"), "{err}");
    // --sha256 and @sha256: disagreeing.
    let err = image::pull(&pushed.pinned, Some(&wrong), false, &registry_args()).unwrap_err();
    assert!(err.contains("differ"), "{err}");
}

#[test]
fn a_docker_v2_manifest_converted_by_skopeo_is_pulled_by_its_last_layer() {
    // skopeo converts the image to Docker's media types: the path Istio takes for Docker-built images.
    let registry = Registry::start();
    let module = module_bytes();
    let dir = TempDir::new("docker-v2");
    let layout = dir.path().join("layout");
    image::build(&module, Format::Compat).unwrap().write_layout(&layout).unwrap();
    let reference = format!("{}/wasmesh/docker:v1", registry.host());
    oci::skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}", layout.display()),
        &format!("docker://{reference}"),
    ])
    .unwrap();
    let raw = oci::raw_manifest(&reference).unwrap();
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let pulled =
        image::pull(&reference, Some(oci::sha256sum(&raw).trim_start_matches("sha256:")), false, &registry_args())
            .unwrap();
    assert_eq!(pulled.layout, Layout::DockerCompat);
    assert_eq!(pulled.layer.media_type, "application/vnd.docker.image.rootfs.diff.tar.gzip");
    assert_eq!(pulled.module, module);
}

#[test]
fn the_cncf_wasm_format_round_trips_and_pull_refuses_it_with_istios_reason_unless_asked() {
    let registry = Registry::start();
    let module = module_bytes();
    let image = image::build(&module, Format::Wasm).unwrap();
    let reference = format!("{}/wasmesh/cncf:v1", registry.host());
    let pushed = image::push(&image, &reference, &registry_args()).unwrap();
    let raw = oci::raw_manifest(&reference).unwrap();
    assert_eq!(oci::sha256sum(&raw), format!("sha256:{}", pushed.sha256));
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    // skopeo copies it as it is; the layer blob is the raw module.
    let dir = TempDir::new("skopeo-cncf");
    let (copied, blobs) = oci::copy_to_layout(&reference, &dir.path().join("layout"), &[]).unwrap();
    let blob = std::fs::read(blobs.join(copied["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:")))
        .unwrap();
    assert_eq!(blob, module);
    let config =
        std::fs::read(blobs.join(copied["config"]["digest"].as_str().unwrap().trim_start_matches("sha256:"))).unwrap();
    let config: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("wasm"), Some("wasip1")));
    assert_eq!(config["layerDigests"][0], layers[0]["digest"]);

    let err = image::pull(&reference, None, false, &registry_args()).unwrap_err();
    assert!(err.contains("CNCF wasm artifact") && err.contains("number of layers must be 2 but got 1"), "{err}");
    assert!(err.contains("--allow-cncf"), "{err}");
    let pulled = image::pull(&reference, Some(&pushed.sha256), true, &registry_args()).unwrap();
    assert_eq!((pulled.layout, pulled.module == module), (Layout::Cncf, true));
}

const POLICY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"#;

#[test]
fn the_pulled_module_runs_in_envoy_and_enforces_an_authorization_policy() {
    let registry = Registry::start();
    let module = module_bytes();
    let image = image::build(&module, Format::Compat).unwrap();
    let reference = format!("{}/wasmesh/{MODULE}:enforce", registry.host());
    let pushed = image::push(&image, &reference, &registry_args()).unwrap();
    let pulled = image::pull(&reference, Some(&pushed.sha256), false, &registry_args()).unwrap();
    let dir = TempDir::new("pulled");
    std::fs::write(dir.path().join(format!("{MODULE}.wasm")), &pulled.module).unwrap();

    let mut wl = Workload::new("httpbin", "foo");
    wl.labels.insert("app".into(), "httpbin".into());
    wl.service_account = "httpbin".into();
    let resources = Resources { items: load_str(POLICY, "image-test.yaml").unwrap() };
    let mut listener = ListenerSpec::new("pulled");
    let c = authz::plugin_filters(&wl, &resources, &MeshConfig::default(), Direction::Inbound, listener.port).unwrap();
    // The filters load the pulled file, not the build output.
    listener.http_filters = c.http_filters.iter().map(|f| wasm_http_filter(f, dir.path())).collect();
    let pulled_path = dir.path().join(format!("{MODULE}.wasm")).display().to_string();
    assert!(serde_json::to_string(&listener.http_filters).unwrap().contains(&pulled_path));
    listener.upstream = Some("app".into());
    let port = listener.port;
    let app = App::new("httpbin", "v1").start();
    let envoy = Proxy {
        listeners: vec![listener],
        clusters: vec![authz::local_cluster("app", app.port)],
        stats_tags: c.stats_tags,
    }
    .start("image-pulled");
    let send = |path: &str| request(port, "GET", path, &[("host", "httpbin.foo:8000")], b"").unwrap();
    let allowed = send("/api/users");
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(allowed.json()["path"], "/api/users");
    let denied = send("/admin/settings");
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(denied.text(), "RBAC: access denied");
    assert!(envoy.admin("/config_dump").contains(&pulled_path));
}

#[test]
fn an_index_resolves_to_its_linux_amd64_child_whose_digest_is_the_one_checked() {
    let registry = Registry::start();
    let module = module_bytes();
    let image = image::build(&module, Format::Compat).unwrap();
    let repo = "wasmesh/index";
    let child = image::push(&image, &format!("{}/{repo}:child", registry.host()), &registry_args()).unwrap();
    let index = |os: &str, arch: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": image.digest(),
                "size": image.manifest.len(),
                "platform": {"architecture": arch, "os": os},
            }],
        }))
        .unwrap()
    };
    let media = "application/vnd.oci.image.index.v1+json";
    let index_digest = oci::put_manifest(&registry, repo, "multi", media, &index("linux", "amd64")).unwrap();
    let reference = format!("{}/{repo}:multi", registry.host());
    let raw: Value = serde_json::from_slice(&oci::raw_manifest(&reference).unwrap()).unwrap();
    assert_eq!(raw["mediaType"], media, "skopeo sees an index");

    let pulled = image::pull(&reference, Some(&child.sha256), false, &registry_args()).unwrap();
    assert_eq!(pulled.module, module);
    assert_eq!(pulled.manifest_digest, image.digest());
    // Istio compares `sha256` with the resolved image's digest, so the index digest does not pass.
    let err =
        image::pull(&reference, Some(index_digest.trim_start_matches("sha256:")), false, &registry_args()).unwrap_err();
    assert!(err.contains(&format!("expected {index_digest}")) && err.contains(&image.digest()), "{err}");

    oci::put_manifest(&registry, repo, "wasi", media, &index("wasip1", "wasm")).unwrap();
    let err = image::pull(&format!("{}/{repo}:wasi", registry.host()), None, false, &registry_args()).unwrap_err();
    assert!(err.contains("image index without a linux/amd64 manifest (found: wasip1/wasm)"), "{err}");
}

#[test]
fn the_wasmeshctl_image_commands_build_push_and_pull_what_the_readme_shows() {
    let registry = Registry::start();
    let module_path = paths::wasm(MODULE);
    let module = module_bytes();
    let dir = TempDir::new("image-cli");
    let layout = dir.path().join("layout");
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err_text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let built = oci::wasmeshctl(&[
        "image",
        "build",
        "--wasm",
        module_path.to_str().unwrap(),
        "--oci-layout",
        layout.to_str().unwrap(),
    ]);
    assert!(built.status.success(), "{}", err_text(&built));
    let digest = text(&built).trim().to_string();
    assert_eq!(digest, image::build(&module, Format::Compat).unwrap().digest());
    // skopeo reads the layout too: one manifest, that digest.
    let raw = oci::skopeo(&["inspect", "--raw", &format!("oci:{}", layout.display())]).unwrap();
    assert_eq!(oci::sha256sum(&raw), digest);

    let reference = format!("{}/wasmesh:0.1.0", registry.host());
    let pushed = oci::wasmeshctl(&["image", "push", &reference, "--oci-layout", layout.to_str().unwrap()]);
    assert!(pushed.status.success(), "{}", err_text(&pushed));
    let hex = digest.trim_start_matches("sha256:");
    assert_eq!(text(&pushed), format!("{reference}@{digest}\nsha256: {hex}\n"));

    let out = dir.path().join("plugin.wasm");
    let pulled = oci::wasmeshctl(&["image", "pull", &reference, "--sha256", hex, "-o", out.to_str().unwrap()]);
    assert!(pulled.status.success(), "{}", err_text(&pulled));
    assert_eq!(std::fs::read(&out).unwrap(), module);

    let wrong = format!("{}{}", &hex[..63], if hex.ends_with('0') { "1" } else { "0" });
    let refused_out = dir.path().join("refused.wasm");
    let refused =
        oci::wasmeshctl(&["image", "pull", &reference, "--sha256", &wrong, "-o", refused_out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        err_text(&refused).contains(&format!(
            "manifest digest mismatch: expected sha256:{wrong} (from --sha256), the registry serves {digest}"
        )),
        "{}",
        err_text(&refused)
    );
    assert!(!refused_out.exists(), "nothing is written when the digest is refused");

    // Not a wasm module: refused at build time with what was found.
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"MZ\x90\0 not wasm").unwrap();
    let refused = oci::wasmeshctl(&["image", "build", "--wasm", bogus.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(err_text(&refused).contains("not a wasm module: starts with [4d 5a 90 00]"), "{}", err_text(&refused));
}

#[test]
fn credentials_come_from_the_docker_config_as_for_istios_agent() {
    let registry = Registry::start_with_login("wasmesh", "s3cret");
    let module_path = paths::wasm(MODULE);
    let dir = TempDir::new("image-login");
    let (with, without) = (dir.path().join("with"), dir.path().join("without"));
    std::fs::create_dir_all(&with).unwrap();
    std::fs::create_dir_all(&without).unwrap();
    // What `docker login` writes: base64("user:password") under the registry's host:port.
    let auth = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let auth = {
        use std::io::Write;
        let mut auth = auth;
        auth.stdin.take().unwrap().write_all(b"wasmesh:s3cret").unwrap();
        String::from_utf8(auth.wait_with_output().unwrap().stdout).unwrap()
    };
    std::fs::write(
        with.join("config.json"),
        serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let reference = format!("{}/wasmesh:login", registry.host());
    let wasm = module_path.to_str().unwrap();

    let refused = oci::wasmeshctl_env(&["image", "push", &reference, "--wasm", wasm], &[("DOCKER_CONFIG", &without)]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        stderr.contains("401") && stderr.contains(&format!("`auths` entry for \"{}\"", registry.host())),
        "{stderr}"
    );

    let pushed = oci::wasmeshctl_env(&["image", "push", &reference, "--wasm", wasm], &[("DOCKER_CONFIG", &with)]);
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let out = dir.path().join("plugin.wasm");
    let out_s = out.to_str().unwrap();
    let refused = oci::wasmeshctl_env(&["image", "pull", &reference, "-o", out_s], &[("DOCKER_CONFIG", &without)]);
    assert_eq!(refused.status.code(), Some(1), "an anonymous pull is refused by this registry");
    let pulled = oci::wasmeshctl_env(&["image", "pull", &reference, "-o", out_s], &[("DOCKER_CONFIG", &with)]);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), module_bytes());
}
