//! Helpers shared by the fuzz targets: splitting one input into parts and building request
//! header lists from fuzzer bytes.

use arbitrary::{Arbitrary, Unstructured};

/// The time the targets verify tokens at (tokens in the seed corpus are valid at it).
pub const NOW: u64 = 1_700_000_000;

/// Splits `data` at its first NUL byte: `(before, after)`; `after` is empty without one.
/// Configuration-plus-request targets take text before the NUL and request bytes after it, so a
/// seed that is a plain YAML or JSON file fuzzes the configuration with the fixed requests.
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Header names a request is likely to carry, so that generated requests hit the names that
/// compiled configurations look at more often than random strings would.
const NAMES: &[&str] = &[
    ":method",
    ":path",
    ":authority",
    ":scheme",
    "host",
    "cookie",
    "authorization",
    "x-user",
    "x-forwarded-for",
    "x-wasmesh-cluster",
    "end-user",
    "content-type",
    "x-envoy-peer-metadata",
    "user-agent",
];

/// One request header: a known name or an arbitrary one, and any bytes as the value.
#[derive(Debug, Arbitrary)]
pub enum Name {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
pub struct Header {
    pub name: Name,
    pub value: Vec<u8>,
}

/// Request headers as the filters get them from Envoy: lower-case names, values as bytes.
pub fn headers(list: Vec<Header>) -> Vec<(String, Vec<u8>)> {
    list.into_iter()
        .take(64)
        .map(|h| {
            let name = match h.name {
                Name::Known(i) => NAMES[usize::from(i) % NAMES.len()].to_string(),
                Name::Other(s) => s.to_ascii_lowercase(),
            };
            (name, h.value)
        })
        .collect()
}

/// Fixed requests every compiled configuration is evaluated against (besides generated ones).
pub fn fixed_requests() -> Vec<Vec<(String, Vec<u8>)>> {
    let req = |method: &str, authority: &str, path: &str, extra: &[(&str, &str)]| {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":authority".to_string(), authority.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())));
        h
    };
    vec![
        req("GET", "httpbin.foo.svc.cluster.local", "/", &[]),
        req("GET", "example.com", "/status/200?x=1#f", &[("x-user", "alice")]),
        req("POST", "reviews:9080", "/reviews/1", &[("end-user", "jason"), ("cookie", "session=a; user=b")]),
        req("DELETE", "bookinfo.com", "/productpage", &[("authorization", "Bearer abc")]),
        req("GET", "", "", &[]),
        vec![],
    ]
}

/// Generated requests from the bytes after the NUL (at most 8), or none.
pub fn generated_requests(bytes: &[u8]) -> Vec<Vec<(String, Vec<u8>)>> {
    let mut u = Unstructured::new(bytes);
    let mut out = Vec::new();
    while !u.is_empty() && out.len() < 8 {
        match Vec::<Header>::arbitrary(&mut u) {
            Ok(list) => out.push(headers(list)),
            Err(_) => break,
        }
    }
    out
}

/// The proxies configurations are compiled for: a sidecar in `foo` (the namespace the e2e
/// AuthorizationPolicy corpus uses) and one in `default` (bookinfo), and an ingress gateway.
pub fn workloads() -> Vec<wasmesh_istio::Workload> {
    let wl = |name: &str, ns: &str, labels: &[(&str, &str)], sa: &str, mode: wasmesh_istio::ProxyMode| {
        serde_json::from_value::<wasmesh_istio::Workload>(serde_json::json!({
            "name": name,
            "namespace": ns,
            "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
            "serviceAccount": sa,
            "mode": mode,
        }))
        .expect("a valid workload")
    };
    use wasmesh_istio::ProxyMode::{Gateway, Sidecar};
    vec![
        wl("httpbin", "foo", &[("app", "httpbin"), ("version", "v1")], "httpbin", Sidecar),
        wl("reviews-v1", "default", &[("app", "reviews"), ("version", "v1")], "bookinfo-reviews", Sidecar),
        wl("istio-ingressgateway", "istio-system", &[("istio", "ingressgateway")], "istio-ingressgateway", Gateway),
    ]
}

/// Istio resources from fuzzer text: JSON (a list or one object) when it starts like JSON, else
/// YAML documents. `None` when it is neither.
pub fn resources(text: &str) -> Option<wasmesh_istio::Resources> {
    let items = match text.trim_start().as_bytes().first() {
        Some(b'{' | b'[') => wasmesh_istio::resources_from_json(text.as_bytes()).ok()?,
        _ => wasmesh_istio::load_str(text, "fuzz.yaml").ok()?,
    };
    Some(wasmesh_istio::Resources { items })
}

/// Request headers written as text, one `name: value` per line (a leading `:` is part of a
/// pseudo-header's name): a layout a seed file can carry a real token in.
pub fn text_headers(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let at = line.iter().skip(1).position(|b| *b == b':')? + 1;
            let name = String::from_utf8_lossy(&line[..at]).trim().to_ascii_lowercase();
            let value = line[at + 1..].strip_prefix(b" ").unwrap_or(&line[at + 1..]);
            Some((name, value.to_vec()))
        })
        .take(64)
        .collect()
}
