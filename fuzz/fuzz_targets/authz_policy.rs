//! AuthorizationPolicy (and PeerAuthentication) compilation from arbitrary YAML/JSON (istio
//! loader + authz-core `AuthzConfig::compile`) and evaluation of every compiled configuration
//! (`Authz::evaluate`, `peer_authn`) over fixed and generated requests.
//! Input: the resources as YAML or JSON, then optionally a NUL and bytes the requests and
//! connection facts are generated from.
//! Properties: compiling never panics, for every stage and for a sidecar and a gateway; a
//! compiled configuration evaluates any request without panicking, the same way twice; an
//! explanation names the deciding rule.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use wasmesh_authz::{AuthzConfig, MetadataEntry, PeerNames, Request, RequestIdentity, Stage};
use wasmesh_fuzz::{fixed_requests, generated_requests, resources, split_nul, workloads};

/// Connection facts and identity for one request.
#[derive(Debug, Arbitrary)]
struct Facts {
    source: Option<[u8; 4]>,
    remote_v6: Option<[u8; 16]>,
    port: Option<u16>,
    sni: Vec<u8>,
    mtls: bool,
    uri_san: Option<String>,
    dns_san: Option<String>,
    principal: Option<(String, String, Vec<String>)>,
    claims: Vec<(String, String)>,
    metadata: Vec<u8>,
}

fn evaluate(authz: &wasmesh_authz::Authz, headers: &[(String, Vec<u8>)], facts: Option<&Facts>) {
    let identity = facts.and_then(|f| {
        f.principal.as_ref().map(|(iss, sub, aud)| RequestIdentity {
            principal: format!("{iss}/{sub}"),
            issuer: iss.clone(),
            subject: sub.clone(),
            audiences: aud.clone(),
            presenter: None,
            claims: f.claims.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        })
    });
    let metadata: Vec<MetadataEntry> = facts
        .and_then(|f| wasmesh_authz::metadata::decode_metadata(&f.metadata, &authz.needs().metadata))
        .unwrap_or_default();
    let req = match facts {
        None => Request {
            headers,
            source_ip: Some(IpAddr::from([10, 0, 0, 1])),
            remote_ip: Some(IpAddr::from([10, 0, 0, 1])),
            destination_ip: Some(IpAddr::from([127, 0, 0, 1])),
            destination_port: Some(8000),
            mtls: true,
            peer: PeerNames::spiffe("spiffe://cluster.local/ns/foo/sa/sleep"),
            ..Request::default()
        },
        Some(f) => Request {
            headers,
            source_ip: f.source.map(IpAddr::from),
            remote_ip: f.remote_v6.map(IpAddr::from).or(f.source.map(IpAddr::from)),
            destination_ip: Some(IpAddr::from([127, 0, 0, 1])),
            destination_port: f.port.map(u32::from),
            sni: &f.sni,
            mtls: f.mtls,
            peer: PeerNames {
                uri_san: f.uri_san.as_deref().map(str::as_bytes),
                dns_san: f.dns_san.as_deref().map(str::as_bytes),
                subject: None,
            },
            identity: identity.as_ref(),
            metadata: &metadata,
        },
    };
    let (custom, verdict) = authz.evaluate(&req);
    let (custom2, verdict2) = authz.evaluate(&req);
    assert_eq!(format!("{custom:?}{verdict:?}"), format!("{custom2:?}{verdict2:?}"));
    let explained = verdict.explain();
    if let Some(rule) = verdict.rule() {
        assert!(explained.contains(rule), "{explained:?} does not name {rule:?}");
    }
    let _ = verdict.action();
    let _ = verdict.shadow_text();
    let _ = authz.peer_authn(&req);
    let _ = authz.custom(&req);
}

fuzz_target!(|data: &[u8]| {
    let (text, rest) = split_nul(data);
    let text = String::from_utf8_lossy(text);

    // The whole filter configuration, as wasmeshctl writes it.
    if let Ok(cfg) = serde_json::from_str::<AuthzConfig>(&text) {
        if let Ok(items) = wasmesh_istio::resources_from_values(cfg.resources.clone()) {
            let _ = cfg.compile(&wasmesh_istio::Resources { items });
        }
    }

    let Some(res) = resources(&text) else { return };
    let fixed = fixed_requests();
    let generated = generated_requests(rest);
    let mut u = Unstructured::new(rest);
    let facts: Vec<Facts> = (0..4).filter_map(|_| Facts::arbitrary(&mut u).ok()).collect();
    for (i, wl) in workloads().into_iter().enumerate() {
        for stage in [Stage::All, Stage::Custom, Stage::Rbac, Stage::Tcp] {
            if i == 1 && stage != Stage::All {
                continue;
            }
            let cfg = AuthzConfig {
                workload: Some(wl.clone()),
                mesh: None,
                resources: Vec::new(),
                trust_domain_aliases: vec!["old.example".into()],
                extension_providers: vec![serde_json::json!({
                    "name": "ext", "envoyExtAuthzHttp": {"service": "ext-authz.foo.svc.cluster.local", "port": 8000}
                })],
                stage,
                multiple_custom_providers: i == 2,
                decision_filter_state: true,
                single_san_peers: false,
                request_body: false,
                peer_authentication_by_transport: false,
            };
            let Ok(authz) = cfg.compile(&res) else { continue };
            let _ = authz.rule_names();
            let _ = authz.is_empty();
            for h in fixed.iter().chain(&generated) {
                evaluate(&authz, h, None);
                for f in &facts {
                    evaluate(&authz, h, Some(f));
                }
            }
        }
    }
});
