//! Mutual TLS between sidecars: the TLS side of `wasmeshctl envoy`, as istiod generates it.
//!
//! **Inbound** (a sidecar's listener for its workload port): PeerAuthentication decides the mode
//! of the port ([`PeerAuthnPolicy`], Istio's scope/inheritance/`portLevelMtls`):
//!
//! - STRICT: one filter chain whose DownstreamTlsContext requires a client certificate that
//!   chains to the mesh root; a plaintext client fails the TLS handshake. The `tls_inspector`
//!   runs here too, so that the SNI is known (`connection.sni` in AuthorizationPolicy).
//! - PERMISSIVE: the `tls_inspector` listener filter, a TLS chain
//!   (`filter_chain_match.transport_protocol: tls`, client certificate required) and a
//!   plaintext chain (`raw_buffer`) on the same port, the same HTTP filters on both.
//! - DISABLE: plaintext only.
//!
//! As Istio's sidecar inbound HCM, the chains forward the peer identity to the app in
//! `x-forwarded-client-cert` (`APPEND_FORWARD` with subject, URI and DNS).
//!
//! **Outbound** (clusters to other workloads): Istio's auto mTLS. A cluster of a
//! `MESH_INTERNAL` ServiceEntry speaks ISTIO_MUTUAL to each endpoint that has a sidecar (every
//! WorkloadEntry in a wasmesh mesh does, unless labelled `security.istio.io/tlsMode` other than
//! `istio`) and whose own PeerAuthentication does not DISABLE mTLS on the dialled port: the
//! client presents its workload certificate, verifies the server against the root, and requires
//! the server's SPIFFE URI SAN to be one of the service's identities
//! (`match_typed_subject_alt_names`), with Istio's SNI `outbound_.<port>_.<subset>_.<host>`.
//! A DestinationRule `tls.mode` DISABLE or ISTIO_MUTUAL overrides auto mTLS (top level,
//! `portLevelSettings`, subsets, with Istio's precedence).

use super::{Direction, ListenerContext};
use crate::certs::CertPaths;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use wasmesh_authz::peer_authentication::{MtlsMode, PeerAuthnPolicy};
use wasmesh_istio::networking::{DestinationRule, ServiceEntry, WorkloadEntry};
use wasmesh_istio::{Error, PortProtocol, ProxyMode, Resource, Resources, Workload};

/// Istio's cipher suites for sidecar mTLS (`pilot/pkg/security/authn/utils.SupportedCiphers`).
pub const CIPHER_SUITES: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// The ALPN a client sidecar offers: `istio` marks mesh traffic (an Istio sidecar in PERMISSIVE
/// mode matches its mTLS chain on it), then HTTP/1.1.
pub const CLIENT_ALPN: [&str; 2] = ["istio", "http/1.1"];
/// The ALPN the server side negotiates (Istio `ALPNHttp`); it never selects `istio`.
pub const SERVER_ALPN: [&str; 2] = ["h2", "http/1.1"];
/// Endpoint label Istio uses to mark workloads with a sidecar.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Envoy's endpoint metadata key for `transport_socket_matches`.
const SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// The inbound listener's TLS: put `filter_chains` and `listener_filters` into the listener.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundChains {
    pub filter_chains: Vec<Value>,
    pub listener_filters: Vec<Value>,
    /// The effective PeerAuthentication mode of the port.
    pub mode: MtlsMode,
}

/// The filter chains of a sidecar inbound listener. `filters` are the listener's network filters
/// (wasm network filters, then the HCM) as they would be for plaintext; each chain gets a copy.
/// The port is `ctx.bind_port` (the workload port). `certs` are this workload's files; without
/// them STRICT is an error (it could not be enforced) and PERMISSIVE serves plaintext only.
pub fn inbound_filter_chains(
    ctx: &ListenerContext<'_>,
    filters: &[Value],
    certs: Option<&CertPaths>,
) -> Result<InboundChains, Vec<Error>> {
    if ctx.direction != Direction::Inbound {
        return Err(vec![Error::new(format!(
            "PeerAuthentication applies to sidecar inbound listeners only, not {:?}",
            ctx.direction
        ))]);
    }
    inbound_chains_for_port(ctx.workload, ctx.resources, u32::from(ctx.bind_port), filters, certs)
}

/// [`inbound_filter_chains`] for workload port `port` of `workload`.
pub fn inbound_chains_for_port(
    workload: &Workload,
    resources: &Resources,
    port: u32,
    filters: &[Value],
    certs: Option<&CertPaths>,
) -> Result<InboundChains, Vec<Error>> {
    let policy = PeerAuthnPolicy::compile(workload, resources)?;
    let decision = policy.explain(port);
    let mode = decision.mode;
    let filters: Vec<Value> = filters.iter().cloned().map(forward_client_cert).collect();
    let plaintext = |name: &str, matcher: Option<Value>| {
        let mut chain = json!({"name": name, "filters": filters});
        if let Some(m) = matcher {
            chain["filter_chain_match"] = m;
        }
        chain
    };
    let tls = |certs: &CertPaths, matcher: Option<Value>| {
        let mut chain = json!({
            "name": "mtls",
            "filters": filters,
            "transport_socket": downstream_transport_socket(certs),
        });
        if let Some(m) = matcher {
            chain["filter_chain_match"] = m;
        }
        chain
    };
    let (filter_chains, listener_filters) = match (mode, certs) {
        // The TLS inspector also under STRICT: it records the SNI the client sent, which
        // AuthorizationPolicy `connection.sni` matches (Envoy leaves it empty without it).
        (MtlsMode::Strict, Some(certs)) => (vec![tls(certs, None)], vec![tls_inspector()]),
        (MtlsMode::Strict, None) => {
            let by = decision.policy.clone().unwrap_or_default();
            return Err(vec![Error::new(format!(
                "port {port} of {}/{} is STRICT ({by}) but no workload certificate was given: run `wasmeshctl certs` and pass its directory",
                workload.namespace, workload.name
            ))]);
        }
        (MtlsMode::Permissive, Some(certs)) => (
            vec![
                tls(certs, Some(json!({"transport_protocol": "tls"}))),
                plaintext("plaintext", Some(json!({"transport_protocol": "raw_buffer"}))),
            ],
            vec![tls_inspector()],
        ),
        // PERMISSIVE without certificates, DISABLE (and UNSET, which compile never returns).
        _ => (vec![plaintext("plaintext", None)], vec![]),
    };
    Ok(InboundChains { filter_chains, listener_filters, mode })
}

/// Istio's TCP metadata exchange on a sidecar inbound TCP listener that [`apply`] secured: ahead
/// of its mTLS chain, a copy for clients that offer `istio-peer-exchange`
/// ([`super::stats::exchange_filter_chain_match`], read by the `tls_inspector`), negotiating
/// [`super::stats::SERVER_TCP_ALPN`] and running `filters` (the TCP stats filter with the
/// exchange, then the rest of the chain). Envoy prefers it over the mTLS chain for such clients;
/// other TLS clients and plaintext keep their chains. A listener without a TLS chain (plaintext
/// only) is left as it is: no exchange without mTLS, as in Istio.
pub fn add_peer_exchange_chain(listener: &mut Value, filters: Vec<Value>) {
    let Some(chains) = listener.get_mut("filter_chains").and_then(Value::as_array_mut) else { return };
    let Some(mut chain) = chains.iter().find(|c| c.get("transport_socket").is_some()).cloned() else { return };
    chain["name"] = json!("mtls-peer-exchange");
    chain["filter_chain_match"] = super::stats::exchange_filter_chain_match();
    chain["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"] =
        json!(super::stats::SERVER_TCP_ALPN);
    chain["filters"] = json!(filters);
    chains.insert(0, chain);
}

/// Envoy's TLS inspector: tells TLS from plaintext (and reads SNI/ALPN) before a chain is chosen.
pub fn tls_inspector() -> Value {
    json!({
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
    })
}

/// The server side of ISTIO_MUTUAL: this workload's certificate, a client certificate required
/// and verified against the mesh root.
pub fn downstream_transport_socket(certs: &CertPaths) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common_tls_context(certs, &SERVER_ALPN, &[]),
        }
    })
}

/// The client side of ISTIO_MUTUAL: present `certs`, verify the server against the root and
/// require one of `peer_identities` as its SAN (`spiffe://` values are URI SANs, others DNS).
pub fn upstream_transport_socket(certs: &CertPaths, peer_identities: &[String], sni: &str) -> Value {
    upstream_transport_socket_with_alpn(certs, peer_identities, sni, &CLIENT_ALPN)
}

/// [`upstream_transport_socket`] offering `alpn` (TCP ports offer
/// [`super::stats::CLIENT_TCP_ALPN`], Istio's `ALPNInMeshWithMxc`).
pub fn upstream_transport_socket_with_alpn(
    certs: &CertPaths,
    peer_identities: &[String],
    sni: &str,
    alpn: &[&str],
) -> Value {
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common_tls_context(certs, alpn, peer_identities),
    });
    if !sni.is_empty() {
        ctx["sni"] = json!(sni);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx})
}

fn common_tls_context(certs: &CertPaths, alpn: &[&str], sans: &[String]) -> Value {
    let mut validation = json!({"trusted_ca": {"filename": certs.root_cert.display().to_string()}});
    if !sans.is_empty() {
        let matchers: Vec<Value> = sans
            .iter()
            .map(|s| {
                let san_type = if s.starts_with("spiffe://") { "URI" } else { "DNS" };
                json!({"san_type": san_type, "matcher": {"exact": s}})
            })
            .collect();
        validation["match_typed_subject_alt_names"] = json!(matchers);
    }
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_2",
            "tls_maximum_protocol_version": "TLSv1_3",
            "cipher_suites": CIPHER_SUITES,
        },
        "alpn_protocols": alpn,
        "tls_certificates": [{
            "certificate_chain": {"filename": certs.cert_chain.display().to_string()},
            "private_key": {"filename": certs.private_key.display().to_string()},
        }],
        "validation_context": validation,
    })
}

/// Istio's sidecar inbound HCM forwards the peer identity to the app in
/// `x-forwarded-client-cert`.
fn forward_client_cert(mut filter: Value) -> Value {
    if filter.get("name").and_then(Value::as_str) == Some("envoy.filters.network.http_connection_manager") {
        if let Some(hcm) = filter.get_mut("typed_config").and_then(Value::as_object_mut) {
            hcm.insert("forward_client_cert_details".into(), json!("APPEND_FORWARD"));
            hcm.insert("set_current_client_cert_details".into(), json!({"subject": true, "uri": true, "dns": true}));
        }
    }
    filter
}

/// One endpoint of an outbound cluster, in the order of the cluster's `lb_endpoints`.
#[derive(Debug, Clone, Copy)]
pub struct PeerEndpoint<'a> {
    /// The WorkloadEntry behind it (selected by the ServiceEntry, or inline in it); `None` for
    /// an endpoint that is only a DNS name (no known workload: plaintext).
    pub entry: Option<&'a WorkloadEntry>,
    /// The WorkloadEntry's namespace (the ServiceEntry's for inline endpoints).
    pub namespace: &'a str,
    /// The port the cluster dials (the workload port `portLevelMtls` names).
    pub port: u32,
}

/// The service an outbound cluster reaches.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamService<'a> {
    pub service_entry: (&'a Resource, &'a ServiceEntry),
    /// The service FQDN.
    pub host: &'a str,
    /// The service port number.
    pub port: u32,
    /// The DestinationRule subset (empty for the whole service).
    pub subset: &'a str,
    /// The DestinationRule that applies to the host, if any.
    pub destination_rule: Option<(&'a Resource, &'a DestinationRule)>,
}

/// Adds Istio's client-side mTLS to an outbound cluster (see the module doc). `client` is the
/// calling proxy (its trust domain and root namespace apply), `certs` its files. Endpoints that
/// get mTLS are marked in the cluster's `load_assignment` when not all of them do.
pub fn secure_outbound_cluster(
    client: &Workload,
    resources: &Resources,
    cluster: &mut Value,
    svc: &UpstreamService<'_>,
    endpoints: &[PeerEndpoint<'_>],
    certs: &CertPaths,
) -> Result<(), Vec<Error>> {
    let (se_res, se) = svc.service_entry;
    let sni = format!("outbound_.{}_.{}_.{}", svc.port, svc.subset, svc.host);
    let explicit = match svc.destination_rule {
        Some((res, dr)) => client_tls(res, dr, svc.subset, svc.port).map_err(|e| vec![e])?,
        None => None,
    };
    let service_sans: Vec<String> = se.subject_alt_names.clone();

    // Which endpoints speak mTLS, and as whom.
    let mut errors = Vec::new();
    let mut mutual: Vec<Option<String>> = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        let id = match (&explicit, ep.entry) {
            (Some(ClientTls::Disable), _) => None,
            (Some(ClientTls::IstioMutual { .. }), entry) => Some(entry.map(|we| identity(client, ep.namespace, we))),
            (None, None) => None,
            (None, Some(we)) => {
                let internal = se.location.as_deref() == Some("MESH_INTERNAL");
                let sidecar = we.labels.get(TLS_MODE_LABEL).is_none_or(|v| v == "istio");
                if internal && sidecar {
                    match server_mode(client, resources, we, ep) {
                        Ok(MtlsMode::Disable) => None,
                        Ok(_) => Some(Some(identity(client, ep.namespace, we))),
                        Err(mut e) => {
                            errors.append(&mut e);
                            None
                        }
                    }
                } else {
                    None
                }
            }
        };
        mutual.push(id.map(|i| i.unwrap_or_default()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if mutual.iter().all(Option::is_none) {
        return Ok(());
    }
    // A DestinationRule's own `sni` / `subjectAltNames` replace Istio's defaults.
    let (sans, sni) = match &explicit {
        Some(ClientTls::IstioMutual { sni: custom_sni, subject_alt_names }) if !subject_alt_names.is_empty() => {
            (subject_alt_names.clone(), custom_sni.clone().unwrap_or(sni))
        }
        Some(ClientTls::IstioMutual { sni: custom_sni, .. }) => {
            (union(&mutual, &service_sans), custom_sni.clone().unwrap_or(sni))
        }
        _ => (union(&mutual, &service_sans), sni),
    };
    if sans.is_empty() {
        return Err(vec![Error::at(
            se_res,
            "spec.endpoints",
            format!("mTLS to {} needs the server identity: give the WorkloadEntries a serviceAccount or the ServiceEntry subjectAltNames", svc.host),
        )]);
    }
    // A TCP service port offers Istio's TCP metadata exchange first (`ALPNInMeshWithMxc`); the
    // server sidecar's inbound TCP listener has the matching chain ([`add_peer_exchange_chain`]).
    let tcp = se.ports.iter().find(|p| p.number == svc.port).is_some_and(|p| p.port_protocol() == PortProtocol::Tcp);
    let alpn: &[&str] = if tcp { &super::stats::CLIENT_TCP_ALPN } else { &CLIENT_ALPN };
    let socket = upstream_transport_socket_with_alpn(certs, &sans, &sni, alpn);
    if mutual.iter().all(Option::is_some) {
        cluster["transport_socket"] = socket;
        return Ok(());
    }
    // Mixed: Istio's transport_socket_matches, endpoints with a sidecar marked tlsMode=istio.
    cluster["transport_socket_matches"] = json!([
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": socket},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}},
    ]);
    let lb_endpoints = cluster.pointer_mut("/load_assignment/endpoints/0/lb_endpoints").and_then(Value::as_array_mut);
    let Some(lb_endpoints) = lb_endpoints.filter(|l| l.len() == mutual.len()) else {
        return Err(vec![Error::new(format!(
            "cluster for {}:{}: {} endpoints given for mTLS but the cluster's load_assignment differs",
            svc.host,
            svc.port,
            mutual.len()
        ))]);
    };
    for (lb, m) in lb_endpoints.iter_mut().zip(&mutual) {
        if m.is_some() {
            lb["metadata"] = json!({"filter_metadata": {SOCKET_MATCH: {"tlsMode": "istio"}}});
        }
    }
    Ok(())
}

/// The effective mode of the server endpoint's port, from its own PeerAuthentications.
fn server_mode(
    client: &Workload,
    resources: &Resources,
    we: &WorkloadEntry,
    ep: &PeerEndpoint<'_>,
) -> Result<MtlsMode, Vec<Error>> {
    let mut server = client.clone();
    server.namespace = ep.namespace.to_string();
    server.labels = we.labels.clone();
    server.service_account = service_account(we).to_string();
    Ok(PeerAuthnPolicy::compile(&server, resources)?.mode_for_port(ep.port))
}

fn service_account(we: &WorkloadEntry) -> &str {
    if we.service_account.is_empty() {
        "default"
    } else {
        &we.service_account
    }
}

fn identity(client: &Workload, namespace: &str, we: &WorkloadEntry) -> String {
    format!("spiffe://{}/ns/{namespace}/sa/{}", client.trust_domain, service_account(we))
}

/// The identities of the mTLS endpoints plus the ServiceEntry's `subjectAltNames`, sorted,
/// without duplicates (empty identities are endpoints without a WorkloadEntry).
fn union(mutual: &[Option<String>], service_sans: &[String]) -> Vec<String> {
    let set: BTreeSet<String> =
        mutual.iter().flatten().filter(|s| !s.is_empty()).cloned().chain(service_sans.iter().cloned()).collect();
    set.into_iter().collect()
}

/// A DestinationRule's client TLS setting for one subset and port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientTls {
    Disable,
    IstioMutual { sni: Option<String>, subject_alt_names: Vec<String> },
}

/// Istio's precedence: the subset's port-level `tls`, the subset's `tls`, the rule's port-level
/// `tls`, the rule's `tls`.
fn client_tls(res: &Resource, dr: &DestinationRule, subset: &str, port: u32) -> Result<Option<ClientTls>, Error> {
    let mut candidates: Vec<(String, &Value)> = Vec::new();
    if let Some((i, s)) = dr.subsets.iter().enumerate().find(|(_, s)| s.name == subset && !subset.is_empty()) {
        if let Some(tp) = &s.traffic_policy {
            let base = format!("spec.subsets[{i}].trafficPolicy");
            candidates.extend(port_level_tls(&tp.port_level_settings, port, &base));
            if let Some(tls) = &tp.tls {
                candidates.push((format!("{base}.tls"), tls));
            }
        }
    }
    if let Some(tp) = &dr.traffic_policy {
        candidates.extend(port_level_tls(&tp.port_level_settings, port, "spec.trafficPolicy"));
        if let Some(tls) = &tp.tls {
            candidates.push(("spec.trafficPolicy.tls".into(), tls));
        }
    }
    let Some((field, tls)) = candidates.into_iter().next() else { return Ok(None) };
    let mode = tls.get("mode").and_then(Value::as_str).unwrap_or("DISABLE");
    let strings = |key: &str| -> Vec<String> {
        tls.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    match mode {
        "DISABLE" => Ok(Some(ClientTls::Disable)),
        "ISTIO_MUTUAL" => Ok(Some(ClientTls::IstioMutual {
            sni: tls.get("sni").and_then(Value::as_str).map(str::to_string),
            subject_alt_names: strings("subjectAltNames"),
        })),
        "SIMPLE" | "MUTUAL" => Err(Error::at(
            res,
            format!("{field}.mode"),
            format!("{mode} (TLS origination to a non-mesh server) is not supported by wasmeshctl envoy yet; expected DISABLE or ISTIO_MUTUAL"),
        )),
        other => Err(Error::at(
            res,
            format!("{field}.mode"),
            format!("{other:?} is not a TLS mode; expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"),
        )),
    }
}

fn port_level_tls<'v>(settings: &'v [Value], port: u32, base: &str) -> Vec<(String, &'v Value)> {
    settings
        .iter()
        .enumerate()
        .filter(|(_, s)| s.pointer("/port/number").and_then(Value::as_u64) == Some(u64::from(port)))
        .filter_map(|(i, s)| s.get("tls").map(|t| (format!("{base}.portLevelSettings[{i}].tls"), t)))
        .collect()
}

/// Applies mutual TLS to a bootstrap written by [`crate::bootstrap::build`] for `workload`:
/// every sidecar listener `inbound_<port>` gets the filter chains of its PeerAuthentication mode,
/// and, when `certs_dir` is given, every `outbound|<port>|<subset>|<host>` cluster gets Istio's
/// auto mTLS. `certs_dir` is the directory `wasmeshctl certs` wrote; this workload's files must
/// be there. Without it, outbound stays plaintext and a STRICT inbound port is an error.
pub fn apply(
    workload: &Workload,
    resources: &Resources,
    certs_dir: Option<&Path>,
    bootstrap: &mut Value,
) -> Result<(), Vec<Error>> {
    let certs = match certs_dir {
        Some(dir) => {
            let paths = CertPaths::for_workload(dir, &workload.namespace, &workload.service_account);
            paths.check_exist().map_err(|e| {
                vec![Error::new(format!("{} ({}): {e}", crate::certs::WorkloadIdentity::of(workload), workload.name))]
            })?;
            Some(paths)
        }
        None => None,
    };
    let mut errors = Vec::new();
    if workload.mode == ProxyMode::Sidecar {
        for listener in
            bootstrap.pointer_mut("/static_resources/listeners").and_then(Value::as_array_mut).into_iter().flatten()
        {
            let Some(port) = listener
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| n.strip_prefix("inbound_"))
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let filters: Vec<Value> =
                listener.pointer("/filter_chains/0/filters").and_then(Value::as_array).cloned().unwrap_or_default();
            match inbound_chains_for_port(workload, resources, port, &filters, certs.as_ref()) {
                Ok(chains) => {
                    listener["filter_chains"] = json!(chains.filter_chains);
                    if !chains.listener_filters.is_empty() {
                        listener["listener_filters"] = json!(chains.listener_filters);
                    }
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
    }
    for cluster in
        bootstrap.pointer_mut("/static_resources/clusters").and_then(Value::as_array_mut).into_iter().flatten()
    {
        if let Err(mut e) = secure_named_cluster(workload, resources, cluster, certs.as_ref()) {
            errors.append(&mut e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Secures a cluster named as Istio names outbound clusters, finding its ServiceEntry, port,
/// DestinationRule and, for each `lb_endpoint`, the WorkloadEntry at that address and port.
/// Without certificates only the DestinationRule's `tls` is checked (ISTIO_MUTUAL cannot be done).
fn secure_named_cluster(
    client: &Workload,
    resources: &Resources,
    cluster: &mut Value,
    certs: Option<&CertPaths>,
) -> Result<(), Vec<Error>> {
    let Some(name) = cluster.get("name").and_then(Value::as_str).map(str::to_string) else { return Ok(()) };
    let mut parts = name.splitn(4, '|');
    let (Some("outbound"), Some(port), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(());
    };
    let Ok(port) = port.parse::<u32>() else { return Ok(()) };
    let found = resources.service_entries().find_map(|(res, se)| {
        let host_matches = se.hosts.iter().any(|h| client.fqdn(h, res.namespace()) == host);
        let sp = se.ports.iter().find(|p| p.number == port)?;
        host_matches.then_some((res, se, sp))
    });
    let Some((se_res, se, service_port)) = found else { return Ok(()) };
    let destination_rule = resources.destination_rules().find(|(r, dr)| client.fqdn(&dr.host, r.namespace()) == host);
    let Some(certs) = certs else {
        return match destination_rule.map(|(r, dr)| (r, client_tls(r, dr, subset, port))) {
            Some((_, Err(e))) => Err(vec![e]),
            Some((r, Ok(Some(ClientTls::IstioMutual { .. })))) => Err(vec![Error::at(
                r,
                "spec.trafficPolicy.tls.mode",
                format!("ISTIO_MUTUAL to {host} needs this proxy's workload certificate: pass the directory `wasmeshctl certs` wrote"),
            )]),
            _ => Ok(()),
        };
    };
    let ns = se_res.namespace();
    let mut candidates: Vec<&WorkloadEntry> = se.endpoints.iter().collect();
    if let Some(sel) = &se.workload_selector {
        candidates.extend(
            resources
                .workload_entries()
                .filter(|(r, we)| r.namespace() == ns && sel.labels.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
                .map(|(_, we)| we),
        );
    }
    let lb_endpoints: Vec<(String, u32)> = cluster
        .pointer("/load_assignment/endpoints/0/lb_endpoints")
        .and_then(Value::as_array)
        .map(|eps| {
            eps.iter()
                .map(|e| {
                    let sa = e.pointer("/endpoint/address/socket_address");
                    let addr = sa.and_then(|a| a.get("address")).and_then(Value::as_str).unwrap_or("").to_string();
                    let p = sa.and_then(|a| a.get("port_value")).and_then(Value::as_u64).unwrap_or(0);
                    (addr, u32::try_from(p).unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default();
    let endpoints: Vec<PeerEndpoint<'_>> = lb_endpoints
        .iter()
        .map(|(addr, p)| {
            let entry = candidates.iter().copied().find(|we| {
                let we_port = we
                    .ports
                    .get(&service_port.name)
                    .copied()
                    .or(service_port.target_port)
                    .unwrap_or(service_port.number);
                we.address == *addr && we_port == *p
            });
            PeerEndpoint { entry, namespace: ns, port: *p }
        })
        .collect();
    let svc = UpstreamService { service_entry: (se_res, se), host, port, subset, destination_rule };
    secure_outbound_cluster(client, resources, cluster, &svc, &endpoints, certs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::mesh::MeshConfig;
    use std::path::PathBuf;

    fn resources(yaml: &str) -> Resources {
        Resources { items: wasmesh_istio::load_str(yaml, "t.yaml").expect("yaml") }
    }

    fn certs() -> CertPaths {
        CertPaths::for_workload(&PathBuf::from("/certs"), "default", "httpbin")
    }

    fn pa(ns: &str, name: &str, spec: &str) -> String {
        format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
    }

    fn hcm() -> Vec<Value> {
        vec![
            json!({"name": "envoy.filters.network.http_connection_manager", "typed_config": {"stat_prefix": "inbound_8000"}}),
        ]
    }

    fn inbound(yaml: &str, port: u16, certs: Option<&CertPaths>) -> Result<InboundChains, Vec<Error>> {
        let mut wl = Workload::new("httpbin-v1", "default");
        wl.labels.insert("app".into(), "httpbin".into());
        wl.service_account = "httpbin".into();
        let res = resources(yaml);
        let mesh = MeshConfig::default();
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Inbound,
            bind_port: port,
            mesh: &mesh,
        };
        inbound_filter_chains(&ctx, &hcm(), certs)
    }

    #[test]
    fn default_is_permissive_tls_and_plaintext_on_one_port() {
        let c = inbound("", 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Permissive);
        assert_eq!(c.listener_filters, vec![tls_inspector()]);
        assert_eq!(c.filter_chains.len(), 2);
        let (tls, plain) = (&c.filter_chains[0], &c.filter_chains[1]);
        assert_eq!(tls["filter_chain_match"], json!({"transport_protocol": "tls"}));
        assert_eq!(plain["filter_chain_match"], json!({"transport_protocol": "raw_buffer"}));
        assert!(plain.get("transport_socket").is_none());
        let ctx = &tls["transport_socket"]["typed_config"];
        assert_eq!(ctx["require_client_certificate"], json!(true));
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            json!("/certs/root-cert.pem")
        );
        assert_eq!(
            ctx["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            json!("/certs/default/httpbin/cert-chain.pem")
        );
        // Both chains carry the HTTP filters, with Istio's XFCC forwarding.
        for chain in &c.filter_chains {
            assert_eq!(chain["filters"][0]["typed_config"]["forward_client_cert_details"], json!("APPEND_FORWARD"));
            assert_eq!(chain["filters"][0]["typed_config"]["stat_prefix"], json!("inbound_8000"));
        }
    }

    #[test]
    fn strict_is_one_tls_chain_and_needs_certificates() {
        let y = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        let c = inbound(&y, 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Strict);
        assert_eq!(c.filter_chains.len(), 1);
        assert_eq!(c.listener_filters, vec![tls_inspector()]);
        assert!(c.filter_chains[0].get("filter_chain_match").is_none());
        assert_eq!(c.filter_chains[0]["transport_socket"]["typed_config"]["require_client_certificate"], json!(true));
        let e = inbound(&y, 8000, None).expect_err("no certs");
        assert!(e[0].message.contains("STRICT (PeerAuthentication istio-system/default)"), "{e:?}");
    }

    #[test]
    fn disable_and_permissive_without_certificates_are_plaintext() {
        let y = pa("default", "default", "{mtls: {mode: DISABLE}}");
        let c = inbound(&y, 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Disable);
        assert_eq!(c.filter_chains.len(), 1);
        assert!(c.filter_chains[0].get("transport_socket").is_none());
        assert!(c.listener_filters.is_empty());
        let c = inbound("", 8000, None).expect("chains");
        assert_eq!((c.mode, c.filter_chains.len()), (MtlsMode::Permissive, 1));
    }

    #[test]
    fn port_level_mtls_applies_to_its_port_only() {
        let y = pa(
            "default",
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}",
        );
        assert_eq!(inbound(&y, 8080, Some(&certs())).expect("8080").mode, MtlsMode::Disable);
        assert_eq!(inbound(&y, 8000, Some(&certs())).expect("8000").mode, MtlsMode::Strict);
    }

    #[test]
    fn invalid_peer_authentication_is_an_error() {
        let y = pa("default", "bad", "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}");
        let e = inbound(&y, 8000, Some(&certs())).expect_err("invalid");
        assert!(e[0].to_string().contains("PeerAuthentication default/bad: spec.portLevelMtls"), "{e:?}");
    }

    #[test]
    fn only_inbound_listeners() {
        let wl = Workload::new("x", "default");
        let res = Resources::default();
        let mesh = MeshConfig::default();
        let ctx = ListenerContext {
            workload: &wl,
            resources: &res,
            direction: Direction::Outbound,
            bind_port: 1,
            mesh: &mesh,
        };
        assert!(inbound_filter_chains(&ctx, &hcm(), Some(&certs())).is_err());
    }

    const SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 8000, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: httpbin}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-v1, namespace: default}\nspec: {address: 127.0.0.1, ports: {http: 19090}, labels: {app: httpbin, version: v1}, serviceAccount: httpbin}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-v2, namespace: default}\nspec: {address: 127.0.0.2, ports: {http: 19091}, labels: {app: httpbin, version: v2}, serviceAccount: httpbin-v2}\n";

    fn cluster() -> Value {
        json!({"name": "outbound|8000||httpbin.default.svc.cluster.local", "load_assignment": {"endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 19090}}}},
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.2", "port_value": 19091}}}}
        ]}]}})
    }

    fn outbound(extra: &str, location: &str) -> Result<Value, Vec<Error>> {
        let res = resources(&(SERVICE.replace("MESH_INTERNAL", location) + extra));
        let sleep = {
            let mut w = Workload::new("sleep", "default");
            w.service_account = "sleep".into();
            w
        };
        let se = res.service_entries().next().expect("se");
        let wes: Vec<&WorkloadEntry> = res.workload_entries().map(|(_, we)| we).collect();
        let eps = [
            PeerEndpoint { entry: Some(wes[0]), namespace: "default", port: 19090 },
            PeerEndpoint { entry: Some(wes[1]), namespace: "default", port: 19091 },
        ];
        let dr = res.destination_rules().next();
        let svc = UpstreamService {
            service_entry: se,
            host: "httpbin.default.svc.cluster.local",
            port: 8000,
            subset: "",
            destination_rule: dr,
        };
        let mut c = cluster();
        let client_certs = CertPaths::for_workload(&PathBuf::from("/certs"), "default", "sleep");
        secure_outbound_cluster(&sleep, &res, &mut c, &svc, &eps, &client_certs).map(|_| c)
    }

    fn build_for(workload: &str, yaml: &str, certs_dir: Option<&Path>) -> Result<Value, Vec<Error>> {
        use crate::bootstrap::{build, workload_from_entry, Inbound, ProxySpec};
        let res = resources(yaml);
        let (wl, we) = workload_from_entry(&res, workload).map_err(|e| vec![e])?;
        let inbound = we.ports.values().map(|p| Inbound { port: *p as u16, app_port: 1 }).collect();
        let spec = ProxySpec {
            workload: wl.clone(),
            inbound,
            outbound_port: Some(15001),
            tcp_outbound: Vec::new(),
            gateway_ports: Vec::new(),
            admin_port: 15000,
            wasm_dir: PathBuf::from("/wasm"),
            mesh: MeshConfig::default(),
            certs_dir: certs_dir.map(Path::to_path_buf),
            envoy_access_log: None,
        };
        let mut boot = build(&spec, &res)?;
        apply(&wl, &res, certs_dir, &mut boot)?;
        Ok(boot)
    }

    const SLEEP: &str = "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: sleep, namespace: default}\nspec: {address: 127.0.0.1, labels: {app: sleep}, serviceAccount: sleep}\n";

    #[test]
    fn apply_secures_a_generated_bootstrap() {
        let dir = std::env::temp_dir().join(format!("wasmesh-mtls-apply-{}", std::process::id()));
        let ids = [
            crate::certs::WorkloadIdentity::new("cluster.local", "default", "sleep"),
            crate::certs::WorkloadIdentity::new("cluster.local", "default", "httpbin"),
        ];
        crate::certs::run(&dir, &ids, &crate::certs::CaOptions::default()).expect("certs");
        let yaml = SERVICE.to_string() + SLEEP + &pa("istio-system", "default", "{mtls: {mode: STRICT}}");

        // The server sidecar: its inbound listeners are STRICT.
        let server = build_for("default/httpbin-v1", &yaml, Some(&dir)).expect("server");
        let listeners = server["static_resources"]["listeners"].as_array().expect("listeners");
        let inbound = listeners.iter().find(|l| l["name"] == "inbound_19090").expect("inbound listener");
        assert_eq!(inbound["filter_chains"].as_array().map(Vec::len), Some(1));
        let tls = &inbound["filter_chains"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], json!(true));
        let hcm =
            &inbound["filter_chains"][0]["filters"].as_array().expect("filters").last().expect("hcm")["typed_config"];
        assert_eq!(hcm["forward_client_cert_details"], json!("APPEND_FORWARD"));
        // The outbound listener is not touched.
        let outbound = listeners.iter().find(|l| l["name"] == "outbound_15001").expect("outbound listener");
        assert!(outbound["filter_chains"][0].get("transport_socket").is_none());

        // The client: its cluster to httpbin speaks ISTIO_MUTUAL as the sleep identity.
        let client = build_for("default/sleep", &yaml, Some(&dir)).expect("client");
        let clusters = client["static_resources"]["clusters"].as_array().expect("clusters");
        let c =
            clusters.iter().find(|c| c["name"] == "outbound|8000||httpbin.default.svc.cluster.local").expect("cluster");
        let ctx = &c["transport_socket"]["typed_config"];
        assert_eq!(ctx["sni"], json!("outbound_.8000_._.httpbin.default.svc.cluster.local"));
        assert!(ctx["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("default/sleep/cert-chain.pem")));

        // STRICT without certificates cannot be generated; PERMISSIVE can (plaintext).
        let e = build_for("default/httpbin-v1", &yaml, None).expect_err("strict without certs");
        assert!(e[0].message.contains("is STRICT"), "{e:?}");
        assert!(build_for("default/httpbin-v1", SERVICE, None).is_ok());
        // A DestinationRule asking for ISTIO_MUTUAL (or SIMPLE) is checked without certificates too.
        let dr = |mode: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: default}}\nspec: {{host: httpbin, trafficPolicy: {{tls: {{mode: {mode}}}}}}}\n")
        };
        let e = build_for("default/sleep", &(SERVICE.to_string() + SLEEP + &dr("ISTIO_MUTUAL")), None)
            .expect_err("istio mutual without certs");
        assert!(e[0].to_string().contains("ISTIO_MUTUAL to httpbin.default.svc.cluster.local needs"), "{e:?}");
        assert!(build_for("default/sleep", &(SERVICE.to_string() + SLEEP + &dr("DISABLE")), None).is_ok());
        // Certificates missing for this workload: a clear error.
        let e = build_for(
            "default/httpbin-v1",
            &SERVICE.replace("serviceAccount: httpbin}", "serviceAccount: nobody}"),
            Some(&dir),
        )
        .expect_err("missing certs");
        assert!(
            e[0].message.contains("spiffe://cluster.local/ns/default/sa/nobody")
                && e[0].message.contains("wasmeshctl certs"),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mesh_internal_service_gets_istio_mutual_with_spiffe_sans_and_sni() {
        let c = outbound("", "MESH_INTERNAL").expect("cluster");
        let ctx = &c["transport_socket"]["typed_config"];
        assert_eq!(
            ctx["@type"],
            json!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext")
        );
        assert_eq!(ctx["sni"], json!("outbound_.8000_._.httpbin.default.svc.cluster.local"));
        let common = &ctx["common_tls_context"];
        assert_eq!(
            common["tls_certificates"][0]["certificate_chain"]["filename"],
            json!("/certs/default/sleep/cert-chain.pem")
        );
        assert_eq!(
            common["validation_context"]["match_typed_subject_alt_names"],
            json!([
                {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/httpbin"}},
                {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/httpbin-v2"}},
            ])
        );
        assert_eq!(common["alpn_protocols"], json!(["istio", "http/1.1"]));
        assert!(c.get("transport_socket_matches").is_none());
    }

    #[test]
    fn mesh_external_services_stay_plaintext() {
        assert_eq!(outbound("", "MESH_EXTERNAL").expect("cluster"), cluster());
        // Istio's default location is MESH_EXTERNAL.
        assert_eq!(outbound("", "null").expect("cluster"), cluster());
    }

    #[test]
    fn a_server_that_disables_mtls_on_its_port_gets_plaintext() {
        // v2 disables mTLS on the port the cluster dials: mixed cluster, socket matches.
        let y =
            pa("default", "v2", "{selector: {matchLabels: {version: v2}}, portLevelMtls: {19091: {mode: DISABLE}}}");
        let c = outbound(&y, "MESH_INTERNAL").expect("cluster");
        assert!(c.get("transport_socket").is_none());
        let matches = c["transport_socket_matches"].as_array().expect("matches");
        assert_eq!(matches[0]["match"], json!({"tlsMode": "istio"}));
        assert_eq!(
            matches[0]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
                ["match_typed_subject_alt_names"],
            json!([{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/httpbin"}}])
        );
        let lbs = &c["load_assignment"]["endpoints"][0]["lb_endpoints"];
        assert_eq!(lbs[0]["metadata"]["filter_metadata"]["envoy.transport_socket_match"], json!({"tlsMode": "istio"}));
        assert!(lbs[1].get("metadata").is_none());
        // The whole namespace DISABLE: no TLS at all.
        let c = outbound(&pa("default", "ns", "{mtls: {mode: DISABLE}}"), "MESH_INTERNAL").expect("cluster");
        assert_eq!(c, cluster());
    }

    #[test]
    fn tls_mode_label_marks_workloads_without_sidecar() {
        let res = SERVICE.replace(
            "labels: {app: httpbin, version: v2}",
            "labels: {app: httpbin, version: v2, security.istio.io/tlsMode: disabled}",
        );
        let res = resources(&res);
        let se = res.service_entries().next().expect("se");
        let wes: Vec<&WorkloadEntry> = res.workload_entries().map(|(_, we)| we).collect();
        let eps = [
            PeerEndpoint { entry: Some(wes[0]), namespace: "default", port: 19090 },
            PeerEndpoint { entry: Some(wes[1]), namespace: "default", port: 19091 },
        ];
        let svc = UpstreamService { service_entry: se, host: "h", port: 8000, subset: "", destination_rule: None };
        let mut c = cluster();
        secure_outbound_cluster(&Workload::new("sleep", "default"), &res, &mut c, &svc, &eps, &certs()).expect("ok");
        assert!(c.get("transport_socket_matches").is_some());
    }

    #[test]
    fn destination_rule_tls_overrides_auto_mtls() {
        let dr = |tp: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: default}}\nspec: {{host: httpbin, trafficPolicy: {tp}}}\n")
        };
        assert_eq!(outbound(&dr("{tls: {mode: DISABLE}}"), "MESH_INTERNAL").expect("c"), cluster());
        // ISTIO_MUTUAL even to a MESH_EXTERNAL entry, with its own SNI and SANs.
        let c = outbound(
            &dr(
                "{tls: {mode: ISTIO_MUTUAL, sni: my.sni, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/x']}}",
            ),
            "MESH_EXTERNAL",
        )
        .expect("c");
        let ctx = &c["transport_socket"]["typed_config"];
        assert_eq!(ctx["sni"], json!("my.sni"));
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/x"}}])
        );
        // Port-level settings win over the top level.
        let c = outbound(
            &dr("{tls: {mode: ISTIO_MUTUAL}, portLevelSettings: [{port: {number: 8000}, tls: {mode: DISABLE}}]}"),
            "MESH_INTERNAL",
        )
        .expect("c");
        assert_eq!(c, cluster());
        let e = outbound(&dr("{tls: {mode: SIMPLE}}"), "MESH_INTERNAL").expect_err("simple");
        assert!(
            e[0].to_string().contains("DestinationRule default/httpbin: spec.trafficPolicy.tls.mode: SIMPLE"),
            "{e:?}"
        );
    }

    #[test]
    fn subset_tls_wins_over_the_rule() {
        let y = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: default}\nspec:\n  host: h\n  trafficPolicy: {tls: {mode: DISABLE}}\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL}\n      portLevelSettings: [{port: {number: 9000}, tls: {mode: DISABLE}}]\n";
        let res = resources(y);
        let (r, dr) = res.destination_rules().next().expect("dr");
        assert!(matches!(client_tls(r, dr, "v1", 8000), Ok(Some(ClientTls::IstioMutual { .. }))));
        assert_eq!(client_tls(r, dr, "v1", 9000), Ok(Some(ClientTls::Disable)));
        assert_eq!(client_tls(r, dr, "", 8000), Ok(Some(ClientTls::Disable)));
        assert_eq!(client_tls(r, dr, "v2", 8000), Ok(Some(ClientTls::Disable)));
    }
}
