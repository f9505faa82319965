//! `make run`'s demo mesh starts, routes as the README says, and stops cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn demo_mesh_smoke() {
    let out = Command::new(env!("CARGO_BIN_EXE_wasmesh-demo")).arg("--smoke").output().expect("run wasmesh-demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The canary split (examples/bookinfo/demo/virtual-services.yaml: v1 90 %, v3 10 %) over 100
    // requests: v3's count is binomial(100, 0.1), mean 10, sd 3; outside 1..=25 has p < 1e-4.
    let split = text.lines().find(|l| l.trim_start().starts_with("GET /productpage x100")).unwrap_or_default();
    let count = |version: &str| -> u32 {
        let at = split.find(&format!(" x 200 productpage -> reviews {version}"));
        at.and_then(|i| split[..i].rsplit([' ', ',']).next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let (v1, v3) = (count("v1"), count("v3"));
    assert_eq!(v1 + v3, 100, "only v1 and v3, all 200: {split}");
    assert!((1..=25).contains(&v3), "v3 share outside the bound: {split}");
    let ms = |l: &str, key: &str| -> u64 {
        let rest = l.split(key).nth(1).unwrap_or_default();
        rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(u64::MAX)
    };
    let slowest = ms(split, "(slowest ");
    assert!(slowest < 1500, "nobody but jason is delayed: {split}");
    // Fault injection: ratings delayed 2 s for jason only (reviews v2 calls ratings).
    let jason = text.lines().find(|l| l.contains("GET /productpage (end-user=jason)")).unwrap_or_default();
    assert!(jason.contains("200 productpage -> reviews v2 in "), "{text}");
    let took = ms(jason, " in ");
    assert!((1950..6000).contains(&took), "jason's page waits for the 2 s delay: {jason}");
    assert!(text.contains("GET /admin                       404"), "{text}");
    assert!(text.contains("POST /productpage                403 RBAC: access denied"), "{text}");
    assert_eq!(text.matches("Envoy pid").count(), 7, "seven Envoys: {text}");
    assert!(text.contains("wasmeshctl envoy -f <files> --workload default/reviews-v2 --role sidecar"), "{text}");
    // How to open the dashboard, and its first frame over the seven Envoys' admin endpoints:
    // the self-check's requests are on it.
    assert!(text.contains("cargo run -q -p wasmeshctl -- dashboard --admin 127.0.0.1:"), "{text}");
    assert!(text.contains("Istio Mesh Dashboard"), "{text}");
    let frame = text.split("Istio Mesh Dashboard").nth(1).unwrap_or_default();
    assert!(frame.lines().any(|l| l.starts_with("reviews.default.svc.cluster.local")), "{frame}");
    assert!(frame.lines().any(|l| l.trim_start().starts_with("reviews-v2")), "{frame}");
    // The mesh runs on `wasmeshctl serve`: the bootstraps take their configuration by xDS, and an
    // edit of the VirtualService moves the traffic of the running Envoys.
    assert!(text.contains("Live: `wasmeshctl serve --watch "), "{text}");
    assert!(text.contains("--role sidecar") && text.contains(" --xds 127.0.0.1:"), "{text}");
    let live = text.lines().find(|l| l.starts_with("Live update:")).unwrap_or_default();
    assert!(live.contains("GET /productpage 200 productpage -> reviews v3 after "), "no live update: {text}");
    access_logs_and_trace(&text);
}

/// The fields of `line` when it is in Istio's default TEXT access-log format, by operator (each
/// value up to the first occurrence of the literal text after it; unquoted values have no space).
fn istio_text_fields(line: &str) -> Option<Vec<(String, String)>> {
    let format = wasmesh_accesslog::ISTIO_TEXT.trim_end_matches('\n');
    let pieces: Vec<&str> = format.split('%').collect();
    let mut rest = line.strip_prefix(pieces.first().copied()?)?;
    let mut fields = Vec::new();
    for pair in pieces[1..].chunks(2) {
        let (op, literal) = (pair[0], pair.get(1).copied().unwrap_or_default());
        let end = if literal.is_empty() { rest.len() } else { rest.find(literal)? };
        let value = &rest[..end];
        let quoted = format.contains(&format!("\"%{op}%\""));
        if (!quoted && value.contains(' ')) || value.contains('"') {
            return None;
        }
        fields.push((op.to_string(), value.to_string()));
        rest = &rest[end + literal.len()..];
    }
    rest.is_empty().then_some(fields)
}

/// After the jason request, an access-log line at each hop in Istio's default format, and its
/// trace (gateway → productpage → reviews → ratings) at the demo's receiver.
fn access_logs_and_trace(text: &str) {
    let block = text.split("GET /productpage (end-user=jason), x-request-id ").nth(1).unwrap_or_default();
    let id = block.split(',').next().unwrap_or_default();
    assert_eq!(id.len(), 36, "a request id: {text}");
    let lines: Vec<(&str, &str)> =
        block.lines().skip(1).map_while(|l| l.strip_prefix("  ").and_then(|l| l.split_once(": "))).collect();
    // (hop, method and path, response flags) of every line the request left.
    let want = [
        ("istio-system/istio-ingressgateway", "/productpage", "-"),
        ("default/productpage-v1", "/productpage", "-"),
        ("default/productpage-v1", "/reviews/0", "-"),
        ("default/reviews-v2", "/reviews/0", "-"),
        ("default/reviews-v2", "/ratings/0", "DI"),
        ("default/ratings-v1", "/ratings/0", "-"),
    ];
    for (hop, path, flags) in want {
        let found = lines.iter().filter(|(h, _)| *h == hop).map(|(_, l)| istio_text_fields(l)).any(|f| {
            let f = f.unwrap_or_default();
            let get = |op: &str| f.iter().find(|(o, _)| o == op).map(|(_, v)| v.as_str()).unwrap_or("?");
            get("REQ(X-ENVOY-ORIGINAL-PATH?:PATH)") == path
                && get("RESPONSE_CODE") == "200"
                && get("RESPONSE_FLAGS") == flags
                && get("REQ(X-REQUEST-ID)") == id
                && get("START_TIME").ends_with('Z')
        });
        assert!(found, "no {path} line (200 {flags}, Istio's default format) at {hop}:\n{block}");
    }
    assert!(lines.iter().all(|(_, l)| istio_text_fields(l).is_some()), "{block}");
    // Where the logs are and how to follow one.
    assert!(text.contains("out/demo/logs/istio-system.istio-ingressgateway.log"), "{text}");
    assert!(text.contains("cargo run -q -p wasmeshctl -- logs -F "), "{text}");
    // Its trace, one span per hop side, each under its caller.
    let trace = block.split("its trace (in ").nth(1).unwrap_or_default();
    assert!(trace.contains("out/demo/traces.txt):\ntrace "), "{block}");
    let spans: Vec<&str> = trace.lines().skip(2).take_while(|l| l.starts_with("  ")).collect();
    let chain = [
        "[istio-ingressgateway.istio-system] server",
        "[istio-ingressgateway.istio-system] client",
        "[productpage.default] server",
        "[productpage.default] client",
        "[reviews.default] server",
        "[reviews.default] client",
        "[ratings.default] server",
    ];
    let mut depth = 0;
    for want in chain {
        let at = spans.iter().find(|l| l.contains(want) && indent(l) > depth);
        let at = at.unwrap_or_else(|| panic!("no span {want} under the one before:\n{trace}"));
        depth = indent(at);
    }
    assert_eq!(
        spans.len(),
        9,
        "gateway in + out, productpage in + 2 out, details, reviews in + out, ratings:\n{trace}"
    );
    // A Telemetry edit served live: the access log keeps errors only, no Envoy restarted.
    let live = text.lines().find(|l| l.starts_with("Live update: telemetry.yaml")).unwrap_or_default();
    assert!(live.contains("GET /productpage 200 ") && live.contains(" not logged, GET /admin?probe="), "{text}");
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}
