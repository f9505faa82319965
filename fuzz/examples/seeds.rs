//! Writes the seed corpora under fuzz/corpus/<target>/ from the project's own test material:
//! tokens signed with the tests' keys (authn-core `testing`), their JWKS documents, the RSA test
//! vectors, this proxy's own exchange header and preamble, the e2e AuthorizationPolicy corpus and
//! the examples. Run by scripts/fuzz-seeds.sh; the output is committed (small, deterministic
//! except for ECDSA/PSS signatures, which are randomized).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use wasmesh_authn::jwt::b64url_encode;
use wasmesh_authn::testing::{jwks, unsigned, Signer, TestKey};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = root().join("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn with_nul(a: &str, b: impl AsRef<[u8]>) -> Vec<u8> {
    let mut v = a.as_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(b.as_ref());
    v
}

fn lf(bytes: &mut Vec<u8>, field: &[u8]) {
    bytes.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(field);
}

/// The `policies: |` block of an e2e corpus file, with its placeholders filled in.
fn policies_of(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if inside {
            if line.starts_with("  ") || line.is_empty() {
                out.push_str(line.strip_prefix("  ").unwrap_or(line));
                out.push('\n');
                continue;
            }
            break;
        }
        inside = line.starts_with("policies: |");
    }
    out.replace("${PORT}", "8000").replace("${OTHER_PORT}", "8001")
}

fn main() {
    let payload = json!({
        "iss": "https://issuer.example", "sub": "alice", "aud": ["httpbin", "other"], "iat": 1_699_999_000u64,
        "exp": 1_700_003_600u64, "scope": "read write", "groups": ["admins"], "nested": {"a": {"b": "c"}}, "azp": "web"
    });
    let signers = [
        ("rs256", Signer::new("RS256", TestKey::Rsa1, Some("rsa1"))),
        ("ps384", Signer::new("PS384", TestKey::Rsa2, None)),
        ("es256", Signer::new("ES256", TestKey::Ec256, Some("ec"))),
        ("es384", Signer::new("ES384", TestKey::Ec384, None)),
        ("eddsa", Signer::new("EdDSA", TestKey::Ed25519, Some("ed"))),
    ];
    let mut all_jwks = Vec::new();
    for (name, s) in &signers {
        let token = s.sign(&payload);
        let jwk = s.jwk(true);
        all_jwks.push(jwk.clone());
        let doc = jwks(&[jwk.clone()]);
        put("jwt", name, &token);
        put("jwks", name, with_nul(&doc, &token));
        put("authn_request", name, authn_seed(&doc, &token));
        // The RSA/EC key material and a real signature, past the JWK layer.
        let parts: Vec<&str> = token.split('.').collect();
        let input = format!("{}.{}", parts[0], parts[1]);
        let sig = wasmesh_authn::jwt::b64url_decode(parts[2]).unwrap();
        let field = |k: &str| wasmesh_authn::jwt::b64url_decode(jwk[k].as_str().unwrap()).unwrap();
        let mut keys = Vec::new();
        match *name {
            "rs256" | "ps384" => {
                keys.push(if *name == "rs256" { 0 } else { 1 });
                keys.push(if *name == "rs256" { 0 } else { 1 });
                lf(&mut keys, &field("n"));
                lf(&mut keys, &field("e"));
            }
            "es256" | "es384" => {
                keys.push(if *name == "es256" { 2 } else { 3 });
                keys.push(0);
                let mut point = vec![4u8];
                point.extend(field("x"));
                point.extend(field("y"));
                lf(&mut keys, &point);
            }
            _ => continue,
        }
        lf(&mut keys, input.as_bytes());
        lf(&mut keys, &sig);
        put("keys", name, keys);
    }
    // HS256 with an `oct` key, several keys in one set, and odd tokens.
    let hs = Signer::hs256(b"a shared secret of thirty-two b!", Some("hs"));
    let oct =
        json!({"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64url_encode(b"a shared secret of thirty-two b!")});
    all_jwks.push(oct.clone());
    let hs_token = hs.sign(&payload);
    put("jwt", "hs256", &hs_token);
    put("jwks", "hs256", with_nul(&jwks(&[oct]), &hs_token));
    put("jwks", "all", with_nul(&jwks(&all_jwks), &signers[0].1.sign(&payload)));
    put("jwt", "alg-none", unsigned(&json!({"alg": "none"}), &payload, b""));
    put(
        "jwt",
        "odd-claims",
        unsigned(
            &json!({"alg": "RS256", "kid": 7, "typ": "at+jwt", "crit": []}),
            &json!({"aud": 1, "exp": 1.5e300, "iat": -1, "nbf": "x", "sub": null}),
            b"\x00sig",
        ),
    );
    put(
        "jwt",
        "deep",
        unsigned(&json!({"alg": "ES256"}), &json!({"a": [[[[[[{"b": [1, 2.5, true, null]}]]]]]]}), &[0; 64]),
    );

    // RSA vectors (the Wycheproof-style vectors the unit tests use).
    let vectors: Value =
        serde_json::from_str(&fs::read_to_string(root().join("shared/authn-core/testdata/rsa-vectors.json")).unwrap())
            .unwrap();
    let message = vectors["message"].as_str().unwrap();
    for (i, key) in vectors["keys"].as_array().unwrap().iter().enumerate().take(3) {
        let n = wasmesh_authn::jwt::b64url_decode(key["n"].as_str().unwrap()).unwrap();
        let e = wasmesh_authn::jwt::b64url_decode(key["e"].as_str().unwrap()).unwrap();
        for (alg, sig) in key["signatures"].as_object().unwrap().iter().take(2) {
            let sig = wasmesh_authn::jwt::b64url_decode(sig.as_str().unwrap()).unwrap();
            let kind = u8::from(alg.starts_with("PS"));
            let hash = match &alg[2..] {
                "256" => 0,
                "384" => 1,
                _ => 2,
            };
            let mut b = vec![kind, hash];
            lf(&mut b, &n);
            lf(&mut b, &e);
            lf(&mut b, message.as_bytes());
            lf(&mut b, &sig);
            put("keys", &format!("vector-{i}-{alg}"), b);
        }
    }

    // base64url.
    for (i, s) in ["", "Zg", "Zm8", "Zm9v", "Zm9vYg==", "-_-_", "a b\tc\n", "AQAB"].iter().enumerate() {
        put("base64url", &format!("b{i}"), s);
    }

    // gRPC frames: the first byte picks the chunking.
    let mut frames = vec![3u8];
    for msg in [&b""[..], b"hello", &[0xAB; 300]] {
        frames.push(0);
        frames.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(msg);
    }
    put("grpc", "three-messages", &frames);
    put("grpc", "content-type", b"\x01application/grpc+proto");

    // Metadata exchange: this proxy's header value and preamble, endpoint metadata.
    let local = wasmesh_stats::LocalInfo {
        workload: "reviews-v2".into(),
        namespace: "default".into(),
        cluster: "Kubernetes".into(),
        app: "reviews".into(),
        version: "v2".into(),
        canonical_service: "reviews".into(),
        canonical_revision: "v2".into(),
        node_id: "sidecar~10.0.0.1~reviews-v2-abc.default~default.svc.cluster.local".into(),
    };
    put("exchange", "header", with_nul(&local.header_value(), &local.node_id));
    put("exchange", "preamble", wasmesh_stats::exchange::encode_preamble(&local));
    put("exchange", "endpoint", "reviews-v2;default;reviews;v2;Kubernetes");
    put("exchange", "local-fields", "productpage-v1;default;Kubernetes;productpage;v1;productpage;v1;sidecar~1~2~3");

    // The CEL subset.
    for (i, e) in [
        "request.host",
        "request.headers['x-user']",
        "string(destination.port)",
        "'literal'",
        "\"quoted\"",
        "response.code",
        "connection.mtls",
        "node.id",
        "request.headers[\"user-agent\"]",
        "has(request.host) ? request.host : 'x'",
    ]
    .iter()
    .enumerate()
    {
        put("cel", &format!("e{i}"), e);
    }

    // Paths: pattern, NUL, value.
    for (i, (p, v)) in [
        ("/tpl/{*}", "/tpl/a%20b?x=1"),
        ("/deep/{**}", "/deep/a/b/c#frag"),
        ("/mid/{*}/end", "/mid/x/end"),
        ("/api/*", "/api/admin"),
        ("*.png", "/img/x.png"),
        ("10.0.0.0/8", "10.1.2.3:8080"),
        ("2001:db8::/32", "[2001:db8::1]:443"),
        ("token", "/x?token=a%2Bb&token=2&access_token=t+k"),
        ("session", "session=\"abc\"; other=1;session=2"),
        ("*.example.com", "API.Example.com"),
    ]
    .iter()
    .enumerate()
    {
        put("paths", &format!("p{i}"), with_nul(p, v));
    }

    // Dynamic metadata, as Envoy serializes it.
    use wasmesh_stats::proto::{value::Kind, ListValue, Metadata, Struct, Value as PValue};
    let mut fields = Struct::default();
    fields.fields.insert("payload".into(), PValue::string("x"));
    fields.fields.insert(
        "request.auth.claims".into(),
        PValue {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![PValue::string("a"), PValue { kind: Some(Kind::NumberValue(1.0)) }],
            })),
        },
    );
    let mut md = Metadata::default();
    md.filter_metadata.insert("envoy.filters.http.jwt_authn".into(), fields.clone());
    md.filter_metadata.insert("istio_authn".into(), fields);
    put("metadata", "two-filters", md.encode_to_vec());

    // Istio YAML: the e2e AuthorizationPolicy corpus and the examples.
    let mut dir: Vec<_> = fs::read_dir(root().join("e2e/corpus/authz")).unwrap().map(|e| e.unwrap().path()).collect();
    dir.sort();
    for path in dir.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let policies = policies_of(&fs::read_to_string(path).unwrap());
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        put("authz_policy", &name, &policies);
        put("istio_load", &format!("authz-{name}"), &policies);
    }
    for example in ["bookinfo", "httpbin"] {
        let mut files: Vec<_> =
            fs::read_dir(root().join("examples").join(example)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut all = String::new();
        for f in &files {
            let text = fs::read_to_string(f).unwrap();
            let name = format!("{example}-{}", f.file_stem().unwrap().to_string_lossy());
            put("istio_load", &name, &text);
            all.push_str(&text);
            all.push_str("\n---\n");
        }
        put("router_config", example, &all);
        put("authz_policy", &format!("example-{example}"), &all);
        put(
            "authn_request",
            &format!("example-{example}"),
            with_nul(&all, "authorization: Bearer x.y.z\n:path: /productpage"),
        );
    }
    put("router_config", "json-config", serde_json::to_string(&json!({
        "workload": {"name": "productpage-v1", "namespace": "default", "labels": {"app": "productpage"}},
        "resources": [{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {"hosts": ["reviews"], "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"regex": "/r.*"}}],
                "route": [{"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}, {"destination": {"host": "reviews", "subset": "v3"}, "weight": 50}]}]}}]
    })).unwrap());
}

/// A RequestAuthentication with this JWKS inline, a NUL, and request headers carrying the token.
fn authn_seed(doc: &str, token: &str) -> Vec<u8> {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [httpbin]\n    jwks: '{doc}'\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-payload\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}, {{header: x-b, claim: nested.a.b}}]\n    fromHeaders: [{{name: authorization, prefix: \"Bearer \"}}, {{name: x-jwt}}]\n    fromParams: [access_token]\n    fromCookies: [session]\n"
    );
    with_nul(&yaml, format!(":method: GET\n:path: /headers?access_token={token}\nauthorization: Bearer {token}\ncookie: session={token}\n"))
}
