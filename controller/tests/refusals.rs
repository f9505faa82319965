//! Nothing accepted and then ignored: every "not supported" path in the filters' configuration
//! parsers (shared/*-core, shared/istio) has an input here that reaches it, and wasmeshctl
//! refuses that same input first, naming the resource and the field.
//!
//! The walk is systematic: `every_core_refusal_has_a_controller_counterpart` reads the cores'
//! sources, finds every string literal that says a configuration is not supported / not
//! enforced / not implemented, and fails unless a row of [`cases`] (or of [`EXEMPT`], with the
//! reason) covers it. A new refusal in a core without a controller counterpart fails this test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use wasmesh_authn::remote::BlockedCidrs;
use wasmesh_controller::mesh::MeshConfig;
use wasmesh_controller::validate::{refusals_with, validate_input_with_mesh};

/// One refusal: `core` is a piece of the core's message (what the scan finds), `yaml` an input
/// that reaches it, and the controller must refuse it with an error on `resource` whose field
/// contains `field` and whose message contains `message`.
struct Case {
    core: &'static str,
    yaml: String,
    mesh: Option<&'static str>,
    blocked: Option<&'static str>,
    resource: &'static str,
    field: &'static str,
    message: &'static str,
}

/// Core refusals that are not configuration wasmeshctl could refuse, with the reason.
const EXEMPT: &[(&str, &str)] = &[
    (
        "an Istio kind wasmesh does not implement",
        "the note every command prints for Istio kinds outside wasmesh's scope (Sidecar, EnvoyFilter, WasmPlugin, ...): \
         they are named, not read",
    ),
    ("Jwt header [alg] is not supported", "a token's header (wire input, answered 401 per request as jwt_authn does)"),
    (
        "Gateway API is not supported by wasmesh yet (--skip-unsupported)",
        "the note printed when the user asked to skip them",
    ),
    (
        "dynamic-metadata conditions are not enforced on TCP",
        "experimental.envoy.filters.* on TCP: helper authz-tcp implements them",
    ),
    (
        "unsupported escape in string literal",
        "reached only through the expression parser, whose refusal is the `is not supported` row",
    ),
];

fn ap(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: foo}}\nspec:\n{spec}")
}

fn ra_inline(jwk: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: foo}}\nspec:\n  jwtRules:\n  - issuer: https://issuer.example\n    jwks: '{{\"keys\":[{jwk}]}}'\n"
    )
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: r, namespace: foo}}\nspec:\n  hosts: [web.foo.svc.cluster.local]\n{http}"
    )
}

fn telemetry(spec: &str) -> String {
    format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: foo}}\nspec:\n{spec}")
}

const WEB: &str = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: foo}\nspec:\n  hosts: [web.foo.svc.cluster.local]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1}]\n";

fn custom_ap() -> String {
    ap("ext", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n")
}

fn cases() -> Vec<Case> {
    let c = |core, yaml: String, resource, field, message| Case {
        core,
        yaml,
        mesh: None,
        blocked: None,
        resource,
        field,
        message,
    };
    let provider = |core, http: &'static str, message| Case {
        core,
        yaml: custom_ap(),
        mesh: Some(http),
        blocked: None,
        resource: "AuthorizationPolicy foo/ext",
        field: "spec.provider.name",
        message,
    };
    vec![
        // authn-core: JWKS documents (inline `jwks`).
        c("[crv] or [alg] field is not supported for an EC key", ra_inline(r#"{"kty":"EC","crv":"P-999","x":"AA","y":"AA"}"#), "RequestAuthentication foo/jwt", "spec.jwtRules[0].jwks", "not supported for an EC key"),
        c("[crv] field is not supported for an OKP key", ra_inline(r#"{"kty":"OKP","crv":"X25519","x":"AA"}"#), "RequestAuthentication foo/jwt", "spec.jwtRules[0].jwks", "OKP"),
        c("URI scheme of {uri:?} is not supported", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'ftp://issuer.example/keys'}]\n".into(), "RequestAuthentication foo/jwt", "spec.jwtRules[0].jwksUri", "url must have scheme http:// or https://"),
        c("[kty] {other:?} is not supported", ra_inline(r#"{"kty":"XYZ"}"#), "RequestAuthentication foo/jwt", "spec.jwtRules[0].jwks", "XYZ"),
        // authz-core: AuthorizationPolicy and PeerAuthentication.
        c("wildcard is not supported in a selector", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\nspec:\n  selector: {matchLabels: {app: 'a*'}}\n  mtls: {mode: STRICT}\n".into(), "PeerAuthentication foo/p", "spec.selector.matchLabels", "wildcard"),
        c("empty key is not supported in selector", ap("p", "  selector: {matchLabels: {'': a}}\n  rules: [{}]\n"), "AuthorizationPolicy foo/p", "spec.selector.matchLabels", "key must not be empty"),
        c("wildcard is not supported in selector", ap("p", "  selector: {matchLabels: {app: 'a*'}}\n  rules: [{}]\n"), "AuthorizationPolicy foo/p", "spec.selector.matchLabels", "wildcard"),
        c("cross namespace referencing is not supported", ap("p", "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g, namespace: bar}]\n  rules: [{}]\n"), "AuthorizationPolicy foo/p", "spec.targetRefs[0]", "cross namespace"),
        c("{name} is currently not supported with CUSTOM action", ap("p", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{from: [{source: {principals: [a]}}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].from[0].source.principals", "not supported with CUSTOM action"),
        c("{} is currently not supported with CUSTOM action", ap("p", "  action: CUSTOM\n  provider: {name: ext}\n  rules: [{when: [{key: 'request.auth.claims[iss]', values: [a]}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].when[0].key", "not supported with CUSTOM action"),
        c("invalid or unsupported path {path}: {{**}} is not the last operator", ap("p", "  rules: [{to: [{operation: {paths: ['/{**}/{*}']}}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].to[0].operation.paths", "{**} is not the last operator"),
        c("invalid or unsupported path {path}: contains '{{' or '}}'", ap("p", "  rules: [{to: [{operation: {paths: ['/a/{x}']}}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].to[0].operation.paths", "unsupported path"),
        c("invalid or unsupported path {path}: contains segment", ap("p", "  rules: [{to: [{operation: {paths: ['/a/b{*}']}}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].to[0].operation.paths", "unsupported path"),
        c("unsupported text {rest:?} after an operator", ap("p", "  rules: [{to: [{operation: {paths: ['/a/{*}b']}}]}]\n"), "AuthorizationPolicy foo/p", "spec.rules[0].to[0].operation.paths", "unsupported path"),
        c("istio.io/dry-run is not supported for CUSTOM policies", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: 'true'}}\nspec:\n  action: CUSTOM\n  provider: {name: ext}\n  rules: [{to: [{operation: {paths: [/x]}}]}]\n".into(), "AuthorizationPolicy foo/p", "metadata.annotations", "dry-run"),
        c("a null rule is skipped (Istio rejects it)", ap("p", "  rules: [null]\n"), "AuthorizationPolicy foo/p", "spec.rules[0]", "must be of type object"),
        c("this AUDIT policy has no effect", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo, annotations: {istio.io/dry-run: 'true'}}\nspec:\n  action: AUDIT\n  rules: [{}]\n".into(), "AuthorizationPolicy foo/p", "metadata.annotations", "only supports action ALLOW/DENY"),
        c("authz compile: bounds", ap("p", &format!("  rules: [{{to: [{{operation: {{paths: [{}]}}}}]}}]\n", vec!["/x"; 1025].join(", "))), "AuthorizationPolicy foo/p", "spec.rules[0].to[0].operation.paths", "at most 1024"),
        c("authz compile: value bytes", ap("p", &format!("  selector: {{matchLabels: {{app: x}}}}\n  rules: [{{when: [{{key: 'request.headers[x]', values: [{}]}}]}}]\n", "a".repeat(1000))), "AuthorizationPolicy foo/p", "spec.rules[0].when[0]", "at most 900 are accepted"),
        // authz-core: extension providers (`--mesh-config`).
        provider("includeRequestBodyInCheck.maxRequestBytes must be greater than 0", "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000, includeRequestBodyInCheck: {maxRequestBytes: 0}}}]", "maxRequestBytes must be greater than 0"),
        provider("unsupported statusOnError", "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000, statusOnError: '299'}}]", "statusOnError 299"),
        provider("a single wildcard (\\\"*\\\") is not supported", "extensionProviders: [{name: ext, envoyExtAuthzHttp: {service: ext.foo.svc.cluster.local, port: 9000, headersToUpstreamOnAllow: ['*']}}]", "single wildcard"),
        // istio: istiod's webhook checks.
        c("unsupported protocol: {protocol}", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: foo}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: QUIC}]\n".into(), "ServiceEntry foo/s", "spec.ports[0].protocol", "unsupported protocol"),
        c("empty key is not supported in selector: \\\"{k}={v}\\\"", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: foo}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  workloadSelector: {labels: {'': a}}\n".into(), "ServiceEntry foo/s", "spec.workloadSelector", "empty key"),
        c("unsupported resolution type {other}", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: s, namespace: foo}\nspec:\n  hosts: [a.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: MAGIC\n".into(), "ServiceEntry foo/s", "spec.resolution", "MAGIC"),
        c("Gateway API ({api_version}) is not supported by wasmesh yet", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: foo}\nspec: {}\n".into(), "HTTPRoute foo/r", "kind", "Gateway API"),
        // router-core.
        c("is not supported by wasmesh (SIMPLE, MUTUAL and PASSTHROUGH are)", "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g, namespace: foo}\nspec:\n  selector: {istio: ingressgateway}\n  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: ['*'], tls: {mode: ISTIO_MUTUAL}}]\n---\n".to_string() + &vs("  gateways: [g]\n  http: [{route: [{destination: {host: web.foo.svc.cluster.local}}]}]\n") + WEB, "Gateway foo/g", "spec.servers[0].tls.mode", "ISTIO_MUTUAL"),
        c("is not supported by Istio (fixedDelay is)", vs("  http: [{fault: {delay: {exponentialDelay: 1s, percentage: {value: 100}}}, route: [{destination: {host: web.foo.svc.cluster.local}}]}]\n") + WEB, "VirtualService foo/r", "spec.http[0].fault.delay.exponentialDelay", "not supported by Istio"),
        c("is not supported by Istio (httpStatus and grpcStatus are)", vs("  http: [{fault: {abort: {http2Error: CANCEL, percentage: {value: 100}}}, route: [{destination: {host: web.foo.svc.cluster.local}}]}]\n") + WEB, "VirtualService foo/r", "spec.http[0].fault.abort.http2Error", "not supported by Istio"),
        c("a CORS mode Envoy does not have", vs("  http: [{corsPolicy: {allowOrigins: [{exact: 'https://a'}], unmatchedPreflights: SOMETIMES}, route: [{destination: {host: web.foo.svc.cluster.local}}]}]\n") + WEB, "VirtualService foo/r", "spec.http[0].corsPolicy.unmatchedPreflights", "Unsupported value: \"SOMETIMES\""),
        // stats-core: Telemetry metrics.
        c("custom metrics are not supported by wasmesh", telemetry("  metrics: [{providers: [{name: prometheus}], overrides: [{match: {customMetric: my_metric}, disabled: true}]}]\n"), "Telemetry foo/t", "spec.metrics[0].overrides[0].match.customMetric", "custom metrics"),
        c("{original:?} is not supported: {e}; {SUPPORTED_HINT}", telemetry("  metrics: [{providers: [{name: prometheus}], overrides: [{tagOverrides: {x: {value: \"request.host + 'x'\"}}}]}]\n"), "Telemetry foo/t", "spec.metrics[0].overrides[0].tagOverrides", "is not supported"),
        // wasmeshctl's own: what Istio accepts and the filters do not implement.
        c("controller: VirtualService tcp route destinationSubnets", vs("  tcp: [{match: [{destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: web.foo.svc.cluster.local}}]}]\n") + WEB, "VirtualService foo/r", "spec.tcp[0].match[0].destinationSubnets", "original destination"),
        c("controller: VirtualService tcp route weights", vs("  tcp: [{route: [{destination: {host: web.foo.svc.cluster.local}, weight: 50}, {destination: {host: web.foo.svc.cluster.local}, weight: 40}]}]\n") + WEB, "VirtualService foo/r", "spec.tcp[0].route", "weights add up to 90, expected 100"),
        c("controller: Telemetry tracing without a provider", telemetry("  tracing: [{randomSamplingPercentage: 10}]\n"), "Telemetry foo/t", "spec.tracing[0].providers", "no tracing provider"),
        c("controller: Telemetry tracing customTags formatter", telemetry("  tracing: [{providers: [{name: otel}], customTags: {a: {formatter: {value: '%REQ(x)%'}}}}]\n"), "Telemetry foo/t", "spec.tracing[0].customTags.a", "formatter is not mapped"),
        Case {
            mesh: Some("extensionProviders: [{name: otel, envoyOtelAls: {service: otel.foo.svc.cluster.local, port: 4317, logFormat: {json: {}}}}]"),
            ..c("controller: Telemetry accessLogging to envoyOtelAls with an unmapped field", telemetry("  accessLogging: [{providers: [{name: otel}]}]\n"), "Telemetry foo/t", "spec.accessLogging[0].providers[0].name", "envoyOtelAls.logFormat.json: not mapped by wasmesh")
        },
        c("controller: Telemetry accessLogging provider", telemetry("  accessLogging: [{providers: [{name: nope}]}]\n"), "Telemetry foo/t", "spec.accessLogging[0].providers[0].name", "\"nope\" is neither \"envoy\" nor"),
        // accesslog-core: command operators wasm cannot compute as Envoy does, strftime specifiers.
        Case {
            mesh: Some("extensionProviders: [{name: f, envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: '%REQUEST_DURATION%'}}}]"),
            ..c("is not supported by wasmesh's access log", telemetry("  accessLogging: [{providers: [{name: f}]}]\n"), "Telemetry foo/t", "spec.accessLogging[0].providers[0].name", "%REQUEST_DURATION% is not supported by wasmesh's access log")
        },
        Case {
            mesh: Some("extensionProviders: [{name: f, envoyFileAccessLog: {path: /dev/stdout, logFormat: {text: '%START_TIME(%Q)%'}}}]"),
            ..c("unsupported specifier", telemetry("  accessLogging: [{providers: [{name: f}]}]\n"), "Telemetry foo/t", "spec.accessLogging[0].providers[0].name", "unsupported specifier %Q")
        },
        // stats (access-log phase): a filter expression Envoy's CEL cannot parse (found at run time).
        c("Envoy refused the filter expression", telemetry("  accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >='}}]\n"), "Telemetry foo/t", "spec.accessLogging[0].filter.expression", "is not a CEL expression"),
        c("controller: Telemetry metrics provider", telemetry("  metrics: [{providers: [{name: stackdriver}]}]\n"), "Telemetry foo/t", "spec.metrics[0].providers[0].name", "Prometheus only"),
        c("controller: Telemetry targetRefs", telemetry("  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  metrics: [{providers: [{name: prometheus}]}]\n"), "Telemetry foo/t", "spec.targetRefs[0]", "not applied by wasmesh"),
        // Istio's webhook: selector and targetRefs together.
        c("istio: selector and targetRefs (AuthorizationPolicy)", ap("p", "  selector: {matchLabels: {app: a}}\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  rules: [{}]\n"), "AuthorizationPolicy foo/p", "spec", "only one of targetRefs or selector can be set"),
        c("istio: selector and targetRefs (RequestAuthentication)", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  selector: {matchLabels: {app: a}}\n  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'https://issuer.example/keys'}]\n".into(), "RequestAuthentication foo/jwt", "spec", "only one of targetRefs or selector can be set"),
        c("controller: waypoint targetRefs (AuthorizationPolicy)", ap("p", "  targetRefs: [{kind: Service, group: '', name: web}]\n  rules: [{}]\n"), "AuthorizationPolicy foo/p", "spec.targetRefs[0].kind", "waypoint"),
        c("controller: waypoint targetRefs (RequestAuthentication)", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: web}]\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'https://issuer.example/keys'}]\n".into(), "RequestAuthentication foo/jwt", "spec.targetRefs[0].kind", "waypoint"),
        Case {
            blocked: Some("10.0.0.0/8,127.0.0.0/8"),
            ..c("controller: BLOCKED_CIDRS_IN_JWKS_URIS (jwksUri)", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'http://10.1.2.3:8080/keys'}]\n".into(), "RequestAuthentication foo/jwt", "spec.jwtRules[0].jwksUri", "10.1.2.3, inside 10.0.0.0/8 of BLOCKED_CIDRS_IN_JWKS_URIS")
        },
        Case {
            blocked: Some("127.0.0.0/8"),
            ..c("controller: BLOCKED_CIDRS_IN_JWKS_URIS (discovery, resolved name)", "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules: [{issuer: 'http://localhost:9000'}]\n".into(), "RequestAuthentication foo/jwt", "spec.jwtRules[0].issuer", "inside 127.0.0.0/8")
        },
    ]
}

fn errors_for(case: &Case) -> Vec<(Option<String>, Option<String>, String)> {
    // Read as `wasmeshctl` reads its input (`-f`).
    let mut loader = wasmesh_istio::Loader::new(Default::default());
    loader.add_str(&case.yaml, "refusals.yaml");
    let input = match loader.finish() {
        Ok(input) => input,
        Err(f) => return f.errors.into_iter().map(|e| (e.resource, e.field, e.message)).collect(),
    };
    let mesh = case.mesh.map(|text| MeshConfig::load(text, "mesh.yaml").unwrap());
    // Istio's schema, then wasmesh's checks: what `wasmeshctl validate [--mesh-config]` runs.
    let (mut errors, _) = validate_input_with_mesh(&input, mesh.as_ref());
    if let Some(b) = case.blocked {
        errors.extend(refusals_with(&input.resources, &BlockedCidrs::parse_env(b).unwrap()));
    }
    errors.into_iter().map(|e| (e.resource, e.field, e.message)).collect()
}

#[test]
fn the_controller_refuses_every_case_naming_resource_and_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let errors = errors_for(&case);
        let found = errors.iter().any(|(res, field, msg)| {
            res.as_deref() == Some(case.resource)
                && field.as_deref().is_some_and(|f| f.contains(case.field))
                && msg.contains(case.message)
        });
        if !found {
            failures.push(format!(
                "{}: expected {} {} ... {:?}; got {errors:#?}",
                case.core, case.resource, case.field, case.message
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) not refused as expected:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_same_inputs_without_the_refused_field_are_accepted() {
    // The refusals are about the field, not the resource: the Telemetry without tracing, the
    // policy with a Gateway targetRef and the JWKS outside the blocks are accepted.
    let ok = [
        telemetry("  metrics: [{providers: [{name: prometheus}]}]\n"),
        telemetry("  accessLogging: [{providers: [{name: envoy}], filter: {expression: 'response.code >= 400 && has(request.headers.x)'}}]\n"),
        ap("p", "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: g}]\n  rules: [{}]\n"),
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: foo}\nspec:\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'http://192.0.2.1:8080/keys'}]\n".into(),
    ];
    for yaml in ok {
        let case =
            Case { core: "", yaml, mesh: None, blocked: Some("10.0.0.0/8"), resource: "", field: "", message: "" };
        assert_eq!(errors_for(&case), Vec::new(), "{}", case.yaml);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// String literals of the non-test code of one file.
fn literals(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut chars = line.chars();
        let mut current: Option<String> = None;
        while let Some(ch) = chars.next() {
            match (&mut current, ch) {
                (None, '"') => current = Some(String::new()),
                (Some(s), '\\') => {
                    s.push('\\');
                    if let Some(n) = chars.next() {
                        s.push(n);
                    }
                }
                (Some(s), '"') => {
                    out.push(std::mem::take(s));
                    current = None;
                }
                (Some(s), c) => s.push(c),
                (None, _) => {}
            }
        }
    }
    out
}

fn is_refusal(literal: &str) -> bool {
    let l = literal.to_ascii_lowercase();
    ["not supported", "unsupported", "not enforced", "not implemented", "rejects it", "has no effect", "writes nothing"]
        .iter()
        .any(|w| l.contains(w))
}

/// Every refusal string of the cores' and filters' non-test code.
fn core_refusals() -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The cores and istio (configuration parsers), and the filters' adapters (on_configure).
    let mut crates: Vec<PathBuf> = ["shared", "filters"]
        .iter()
        .flat_map(|d| std::fs::read_dir(repo_root().join(d)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    crates.sort();
    for krate in crates {
        let src = krate.join("src");
        let Ok(dir) = std::fs::read_dir(&src) else { continue };
        let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            if !name.ends_with(".rs") || name.contains("test") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for lit in literals(&text) {
                if is_refusal(&lit) {
                    out.push((file.strip_prefix(repo_root()).unwrap().display().to_string(), lit));
                }
            }
        }
    }
    out
}

#[test]
fn every_core_refusal_has_a_controller_counterpart() {
    let cases = cases();
    let found = core_refusals();
    assert!(found.len() >= 20, "the scan finds the cores' refusals: {found:#?}");
    let uncovered: Vec<String> = found
        .iter()
        .filter(|(_, lit)| {
            !cases.iter().any(|c| lit.contains(c.core) || c.core.contains(lit.as_str()))
                && !EXEMPT.iter().any(|(e, _)| lit.contains(e))
        })
        .map(|(file, lit)| format!("{file}: {lit:?}"))
        .collect();
    assert!(
        uncovered.is_empty(),
        "core refusals without a controller case in controller/tests/refusals.rs (add an input that reaches \
         each and make wasmeshctl refuse it first, or an EXEMPT row with the reason):\n{}",
        uncovered.join("\n")
    );
}

/// The three commands refuse, and `BLOCKED_CIDRS_IN_JWKS_URIS` is read from the environment as
/// istiod reads it: `validate`, `envoy` and `generate` refuse a `jwksUri` inside a block, and
/// `generate` writes the blocks into the authn filter's configuration for the fetches it makes.
#[test]
fn validate_envoy_and_generate_refuse_and_read_blocked_cidrs_from_the_environment() {
    let dir = std::env::temp_dir().join(format!("wasmesh-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wasmeshctl"));
        cmd.current_dir(repo_root()).args(args).env_remove("BLOCKED_CIDRS_IN_JWKS_URIS");
        if let Some(v) = env {
            cmd.env("BLOCKED_CIDRS_IN_JWKS_URIS", v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Tracing naming no provider on the bookinfo mesh: validate and envoy refuse it, naming the
    // resource and the field (generate hands Telemetry to istiod, which traces natively).
    let tracing = dir.join("tracing.yaml");
    std::fs::write(&tracing, telemetry("  tracing: [{randomSamplingPercentage: 10}]\n")).unwrap();
    let t = tracing.to_str().unwrap();
    let envoy = ["envoy", "-f", "examples/bookinfo", "-f", t, "--role", "sidecar", "--workload", "default/reviews-v2"];
    for args in [&["validate", "-f", "examples/bookinfo", "-f", t][..], &envoy[..]] {
        let (ok, _, err) = run(args, None);
        assert!(!ok, "{args:?} accepted tracing");
        assert!(err.contains("no tracing provider"), "{args:?}: {err}");
    }
    // A jwksUri on 127.0.0.1: accepted without the variable, refused with a block holding it.
    let jwt = dir.join("jwt.yaml");
    std::fs::write(
        &jwt,
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: default}\nspec:\n  jwtRules: [{issuer: https://issuer.example, jwksUri: 'http://127.0.0.1:9999/keys'}]\n",
    )
    .unwrap();
    let j = jwt.to_str().unwrap();
    let (ok, _, err) = run(&["validate", "-f", "examples/bookinfo", "-f", j], None);
    assert!(ok, "{err}");
    let (ok, out, err) = run(
        &[
            "generate",
            "--image",
            "oci://registry.example.com/wasmesh:0.1",
            "-f",
            "examples/bookinfo",
            "-f",
            j,
            "-o",
            "json",
        ],
        Some("192.0.2.0/24"),
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("\"blockedCidrsInJwksUris\":[\"192.0.2.0/24\"]") || out.contains("\"blockedCidrsInJwksUris\": ["),
        "{out}"
    );
    for args in [
        &["validate", "-f", "examples/bookinfo", "-f", j][..],
        &["generate", "--image", "oci://registry.example.com/wasmesh:0.1", "-f", "examples/bookinfo", "-f", j][..],
    ] {
        let (ok, _, err) = run(args, Some("10.0.0.0/8,127.0.0.0/8"));
        assert!(!ok, "{args:?} accepted a blocked jwksUri");
        assert!(
            err.contains("RequestAuthentication default/jwt: spec.jwtRules[0].jwksUri: \"http://127.0.0.1:9999/keys\" resolves to 127.0.0.1, inside 127.0.0.0/8 of BLOCKED_CIDRS_IN_JWKS_URIS"),
            "{args:?}: {err}"
        );
    }
    let (ok, _, err) = run(&["validate", "-f", "examples/bookinfo", "-f", j], Some("10.0.0.0/99"));
    assert!(!ok && err.contains("BLOCKED_CIDRS_IN_JWKS_URIS"), "a bad variable is an error: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
