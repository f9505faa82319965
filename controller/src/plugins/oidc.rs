//! `wasmesh.oidc`: OIDC login at the gateway (issue 14), from a meshConfig `extensionProviders`
//! entry, as Istio configures its other external helpers (authservice, oauth2-proxy) there:
//!
//! ```yaml
//! extensionProviders:
//! - name: login
//!   wasmeshOidc:
//!     selector: {matchLabels: {istio: ingressgateway}}   # the gateways that log users in
//!     issuer: https://idp.example.com                     # discovery: <issuer>/.well-known/openid-configuration
//!     clientId: gateway
//!     clientSecret: "..."
//!     redirectUri: https://shop.example.com/oauth2/callback
//!     cookieKey: "<32 bytes, base64>"                     # `openssl rand -base64 32`
//!     # or from files (read by wasmeshctl when it writes the configuration):
//!     # clientSecretFile: /etc/wasmesh/oidc/client-secret, cookieKeyFile: ..., previousCookieKeyFiles: [...]
//!     # optional: clientAuth, scopes, logoutPath, postLogoutRedirectUri, bypassPaths,
//!     # allowedReturnOrigins, cookie {name, domain, path, sameSite, secure, lifetimeSeconds},
//!     # previousCookieKeys, forward (access_token | id_token), claimHeaders [{claim, header}],
//!     # timeoutMs, clockSkewSeconds, readyWaitMs
//! ```
//!
//! A secret may be inline or in a file, not both; a file that is missing, unreadable, empty or
//! (for a cookie key) not base64 of 32 bytes is refused naming the entry, the field and the file,
//! never its content. The file's content (trailing whitespace trimmed) is written into the filter
//! configuration as the inline value.
//!
//! The entry (minus `selector`) is the filter's configuration (`wasmesh_oidc::OidcConfig`);
//! wasmeshctl adds `providerCluster`, the cluster it writes for the issuer's host (TLS for https,
//! as for a `jwksUri`). Every gateway listener of a selected gateway gets the filter first, ahead
//! of authn and authz, so RequestAuthentication and AuthorizationPolicy apply to the bearer token
//! the login puts on the request. The filter refuses what this plugin refuses, with the same words.

use super::{Contribution, Direction, ListenerContext, WasmFilter};
use serde_json::Value;
use wasmesh_istio::{Error, Location};

pub const FILTER_NAME: &str = "wasmesh.oidc";
/// The key of the entry in an `extensionProviders` item.
pub const PROVIDER_KEY: &str = "wasmeshOidc";

fn error(i: usize, name: &str, field: &str, message: impl Into<String>) -> Error {
    Error {
        location: Location { file: "meshConfig".into(), document: 0 },
        resource: Some(format!("extensionProviders[{i}] ({name})")),
        field: Some(if field.is_empty() { PROVIDER_KEY.to_string() } else { format!("{PROVIDER_KEY}.{field}") }),
        message: message.into(),
    }
}

/// One checked entry: its selector, its filter configuration and the provider cluster.
struct Entry {
    labels: Vec<(String, String)>,
    config: Value,
    cluster: Value,
}

fn entry(i: usize, item: &Value) -> Option<Result<Entry, Vec<Error>>> {
    let spec = item.get(PROVIDER_KEY)?;
    let name = item.get("name").and_then(Value::as_str).unwrap_or("<no name>").to_string();
    Some(check(i, &name, spec))
}

fn check(i: usize, name: &str, spec: &Value) -> Result<Entry, Vec<Error>> {
    let Some(obj) = spec.as_object() else {
        return Err(vec![error(i, name, "", "expected an object")]);
    };
    let mut labels = Vec::new();
    match obj.get("selector").and_then(|s| s.get("matchLabels")).and_then(Value::as_object) {
        Some(m) if !m.is_empty() => {
            for (k, v) in m {
                match v.as_str() {
                    Some(v) => labels.push((k.clone(), v.to_string())),
                    None => {
                        return Err(vec![error(i, name, &format!("selector.matchLabels.{k}"), "expected a string")])
                    }
                }
            }
        }
        _ => {
            return Err(vec![error(
                i,
                name,
                "selector",
                "missing; expected {matchLabels: {...}} naming the gateways that log users in",
            )])
        }
    }
    let mut config = spec.clone();
    secrets_from_files(i, name, &mut config)?;
    if let Some(o) = config.as_object_mut() {
        o.remove("selector");
        if o.contains_key("providerCluster") {
            return Err(vec![error(i, name, "providerCluster", "set by wasmeshctl from the issuer; remove it")]);
        }
    }
    let issuer = obj.get("issuer").and_then(Value::as_str).unwrap_or_default();
    // The issuer's host as a jwksUri would be reached: same cluster naming, TLS for https.
    let ep = wasmesh_authn::parse_jwks_uri(&format!("{}/", issuer.trim_end_matches('/')))
        .map_err(|e| vec![error(i, name, "issuer", format!("{issuer:?}: {e}"))])?;
    config["providerCluster"] = Value::String(ep.cluster.clone());
    let bytes = serde_json::to_vec(&config).map_err(|e| vec![error(i, name, "", e.to_string())])?;
    let parsed = wasmesh_oidc::OidcConfig::parse_json(&bytes).map_err(|e| vec![error(i, name, "", e)])?;
    let problems = parsed.problems();
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| match p.split_once(": ") {
                Some((field, msg)) => error(i, name, field, msg),
                None => error(i, name, "", p),
            })
            .collect());
    }
    Ok(Entry { labels, config, cluster: super::authn::jwks_cluster(&ep) })
}

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

fn read_secret(i: usize, name: &str, field: &str, path: &Value) -> Result<String, Error> {
    let Some(path) = path.as_str().filter(|p| !p.is_empty()) else {
        return Err(error(i, name, field, "expected a file path"));
    };
    let meta = std::fs::metadata(path).map_err(|e| error(i, name, field, format!("{path}: cannot read: {e}")))?;
    if !meta.is_file() || meta.len() > MAX_SECRET_FILE {
        return Err(error(i, name, field, format!("{path}: expected a file of at most {MAX_SECRET_FILE} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| error(i, name, field, format!("{path}: cannot read: {e}")))?;
    let text = text.trim_end().to_string();
    if text.is_empty() {
        return Err(error(i, name, field, format!("{path}: empty")));
    }
    Ok(text)
}

/// `clientSecretFile`, `cookieKeyFile` and `previousCookieKeyFiles` read into their inline fields.
fn secrets_from_files(i: usize, name: &str, config: &mut Value) -> Result<(), Vec<Error>> {
    let Some(o) = config.as_object_mut() else { return Ok(()) };
    let mut errors = Vec::new();
    for (file_field, inline) in [("clientSecretFile", "clientSecret"), ("cookieKeyFile", "cookieKey")] {
        let Some(path) = o.remove(file_field) else { continue };
        if o.contains_key(inline) {
            errors.push(error(i, name, file_field, format!("set {inline} or {file_field}, not both")));
            continue;
        }
        match read_secret(i, name, file_field, &path) {
            Ok(text) => {
                if inline == "cookieKey" {
                    if let Err(e) = wasmesh_oidc::config::decode_key(file_field, &text) {
                        let what = e.split_once(": ").map_or(e.as_str(), |(_, m)| m);
                        errors.push(error(i, name, file_field, format!("{}: {what}", path.as_str().unwrap_or(""))));
                        continue;
                    }
                }
                o.insert(inline.into(), Value::String(text));
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(paths) = o.remove("previousCookieKeyFiles") {
        let Some(paths) = paths.as_array() else {
            errors.push(error(i, name, "previousCookieKeyFiles", "expected a list of file paths"));
            return Err(errors);
        };
        let mut keys: Vec<Value> = o.get("previousCookieKeys").and_then(Value::as_array).cloned().unwrap_or_default();
        for (k, path) in paths.iter().enumerate() {
            let field = format!("previousCookieKeyFiles[{k}]");
            match read_secret(i, name, &field, path) {
                Ok(text) => match wasmesh_oidc::config::decode_key(&field, &text) {
                    Ok(_) => keys.push(Value::String(text)),
                    Err(e) => {
                        let what = e.split_once(": ").map_or(e.as_str(), |(_, m)| m);
                        errors.push(error(i, name, &field, format!("{}: {what}", path.as_str().unwrap_or(""))));
                    }
                },
                Err(e) => errors.push(e),
            }
        }
        o.insert("previousCookieKeys".into(), Value::Array(keys));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Every `wasmeshOidc` entry checked (for `wasmeshctl validate`, whatever it selects).
pub fn validate(mesh: &crate::mesh::MeshConfig) -> Vec<Error> {
    let mut out = Vec::new();
    for (i, item) in mesh.extension_providers.iter().enumerate() {
        if let Some(Err(mut e)) = entry(i, item) {
            out.append(&mut e);
        }
    }
    out
}

/// The oidc filter of a gateway listener whose workload an entry selects.
pub fn contribute(ctx: &ListenerContext<'_>) -> Result<Contribution, Vec<Error>> {
    let mut c = Contribution::default();
    let gateway = matches!(ctx.direction, Direction::Gateway { .. });
    let mut errors = Vec::new();
    let mut chosen: Option<(usize, Entry)> = None;
    for (i, item) in ctx.mesh.extension_providers.iter().enumerate() {
        match entry(i, item) {
            None => {}
            Some(Err(mut e)) => errors.append(&mut e),
            Some(Ok(e)) => {
                let selected = e.labels.iter().all(|(k, v)| ctx.workload.labels.get(k) == Some(v));
                if !gateway || !selected {
                    continue;
                }
                if let Some((first, _)) = &chosen {
                    let name = item.get("name").and_then(Value::as_str).unwrap_or("<no name>");
                    errors.push(error(
                        i,
                        name,
                        "selector",
                        format!(
                            "selects {} as extensionProviders[{first}] does; one login per gateway",
                            ctx.workload.name
                        ),
                    ));
                    continue;
                }
                chosen = Some((i, e));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if let Some((_, e)) = chosen {
        c.http_filters.push(WasmFilter { name: FILTER_NAME.into(), config: e.config, fail_open: false });
        c.clusters.push(e.cluster);
    }
    Ok(c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::mesh::MeshConfig;
    use wasmesh_istio::{Resources, Workload};

    fn mesh(extra: &str) -> MeshConfig {
        let yaml = format!(
            "extensionProviders:\n- name: login\n  wasmeshOidc:\n    selector: {{matchLabels: {{istio: ingressgateway}}}}\n    \
             issuer: https://idp.example.com\n    clientId: gw\n    clientSecret: s3cret\n    \
             redirectUri: https://shop.example.com/oauth2/callback\n    cookieKey: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\n{extra}"
        );
        MeshConfig::load(&yaml, "mesh.yaml").unwrap()
    }

    fn gateway() -> Workload {
        let mut wl = Workload::new("ingressgateway", "istio-system");
        wl.labels.insert("istio".into(), "ingressgateway".into());
        wl
    }

    fn run(mesh: &MeshConfig, wl: &Workload, direction: Direction) -> Result<Contribution, Vec<Error>> {
        let res = Resources::default();
        contribute(&ListenerContext { workload: wl, resources: &res, direction, bind_port: 0, mesh })
    }

    #[test]
    fn a_selected_gateway_gets_the_filter_and_the_provider_cluster() {
        let c = run(&mesh(""), &gateway(), Direction::Gateway { port: 443 }).unwrap();
        assert_eq!(c.http_filters.len(), 1);
        let f = &c.http_filters[0];
        assert_eq!((f.name.as_str(), f.fail_open), (FILTER_NAME, false));
        assert!(f.config.get("selector").is_none());
        let cluster = f.config["providerCluster"].as_str().unwrap();
        assert_eq!(c.clusters[0]["name"], cluster);
        assert!(c.clusters[0].get("transport_socket").is_some(), "https issuer: TLS");
        // The filter accepts what the plugin wrote.
        wasmesh_oidc::Oidc::new(wasmesh_oidc::OidcConfig::parse_json(f.config.to_string().as_bytes()).unwrap())
            .unwrap();
    }

    #[test]
    fn sidecars_and_other_gateways_get_nothing() {
        let m = mesh("");
        assert!(run(&m, &gateway(), Direction::Inbound).unwrap().http_filters.is_empty());
        let other = Workload::new("other", "istio-system");
        assert!(run(&m, &other, Direction::Gateway { port: 80 }).unwrap().http_filters.is_empty());
    }

    #[test]
    fn errors_name_the_entry_and_the_field() {
        let cases = [
            ("    cookieKey2: x\n", "wasmeshOidc", "cookieKey2"),
            ("    bypassPaths: [health]\n", "wasmeshOidc.bypassPaths[0]", "does not start with /"),
            ("    timeoutMs: 1\n", "wasmeshOidc.timeoutMs", "100 to 60000"),
            ("    providerCluster: x\n", "wasmeshOidc.providerCluster", "set by wasmeshctl"),
        ];
        for (extra, field, text) in cases {
            let errs = validate(&mesh(extra));
            let e =
                errs.iter().find(|e| e.field.as_deref() == Some(field)).unwrap_or_else(|| panic!("{extra}: {errs:?}"));
            assert!(e.to_string().contains(text), "{e}");
            assert!(e.to_string().contains("extensionProviders[0] (login)"), "{e}");
            assert!(run(&mesh(extra), &gateway(), Direction::Gateway { port: 80 }).is_err(), "envoy refuses it too");
        }
        let no_selector = MeshConfig::load(
            "extensionProviders:\n- name: l\n  wasmeshOidc: {issuer: 'https://i.example'}\n",
            "mesh.yaml",
        )
        .unwrap();
        assert_eq!(validate(&no_selector)[0].field.as_deref(), Some("wasmeshOidc.selector"));
        let key = validate(&mesh("    previousCookieKeys: [c2hvcnQ]\n"));
        assert_eq!(key[0].field.as_deref(), Some("wasmeshOidc.previousCookieKeys[0]"), "{key:?}");
        assert!(!key[0].to_string().contains("c2hvcnQ"), "no key material in errors: {}", key[0]);
    }

    #[test]
    fn secrets_come_from_files_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("wasmesh-oidc-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |n: &str, text: &str| {
            let p = dir.join(n);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let secret = write("secret", "from-a-file\n");
        let key = write("key", "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI\n");
        let old = write("old", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE");
        let short = write("short", "c2hvcnQ=");
        let empty = write("empty", "\n");
        let missing = dir.join("missing").to_string_lossy().into_owned();
        let with = |fields: &str| {
            let yaml = format!(
                "extensionProviders:\n- name: login\n  wasmeshOidc:\n    selector: {{matchLabels: {{istio: ingressgateway}}}}\n    \
                 issuer: https://idp.example.com\n    clientId: gw\n    \
                 redirectUri: https://shop.example.com/oauth2/callback\n{fields}"
            );
            MeshConfig::load(&yaml, "mesh.yaml").unwrap()
        };
        let good = with(&format!(
            "    clientSecretFile: {secret}\n    cookieKeyFile: {key}\n    previousCookieKeyFiles: [{old}]\n"
        ));
        assert!(validate(&good).is_empty(), "{:?}", validate(&good));
        let c = run(&good, &gateway(), Direction::Gateway { port: 443 }).unwrap();
        let cfg = &c.http_filters[0].config;
        assert_eq!(cfg["clientSecret"], "from-a-file");
        assert_eq!(cfg["cookieKey"], "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI");
        assert_eq!(cfg["previousCookieKeys"][0], "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE");
        assert!(cfg.get("clientSecretFile").is_none() && cfg.get("cookieKeyFile").is_none());
        for (fields, field, text) in [
            (
                format!("    clientSecretFile: {missing}\n    cookieKey: {old}\n"),
                "wasmeshOidc.clientSecretFile",
                "cannot read",
            ),
            (format!("    clientSecretFile: {empty}\n    cookieKey: x\n"), "wasmeshOidc.clientSecretFile", "empty"),
            (format!("    clientSecret: s\n    cookieKeyFile: {short}\n"), "wasmeshOidc.cookieKeyFile", "expected 32"),
            (
                format!("    clientSecret: s\n    clientSecretFile: {secret}\n    cookieKeyFile: {key}\n"),
                "wasmeshOidc.clientSecretFile",
                "not both",
            ),
            (
                format!(
                    "    clientSecret: s\n    cookieKeyFile: {key}\n    previousCookieKeyFiles: [{old}, {short}]\n"
                ),
                "wasmeshOidc.previousCookieKeyFiles[1]",
                "expected 32",
            ),
        ] {
            let errs = validate(&with(&fields));
            let e =
                errs.iter().find(|e| e.field.as_deref() == Some(field)).unwrap_or_else(|| panic!("{fields}: {errs:?}"));
            let msg = e.to_string();
            assert!(
                msg.contains(text) && (text == "not both" || msg.contains(dir.to_string_lossy().as_ref())),
                "{msg}"
            );
            assert!(!msg.contains("c2hvcnQ") && !msg.contains("from-a-file"), "no secret in errors: {msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
