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

use super::{ChainFilters, ChainTransport, ClusterTransport, Direction, ListenerContext, ListenerTransport};
use crate::certs::{CertPaths, WorkloadIdentity};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use wasmesh_authz::peer_authentication::{MtlsMode, PeerAuthnPolicy};
use wasmesh_istio::networking::{DestinationRule, ServiceEntry, WorkloadEntry};
use wasmesh_istio::{Error, PortProtocol, Resource, Resources, Workload};

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

/// What the transport plugin contributes to a sidecar inbound listener, and the mode it enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct InboundTls {
    pub transport: ListenerTransport,
    /// The effective PeerAuthentication mode of the port.
    pub mode: MtlsMode,
}

/// The certificates of `workload` in `certs_dir` (what `wasmeshctl certs` wrote), checked to exist;
/// `None` without a directory.
pub fn workload_certs(workload: &Workload, certs_dir: Option<&Path>) -> Result<Option<CertPaths>, Vec<Error>> {
    let Some(dir) = certs_dir else { return Ok(None) };
    let paths = CertPaths::for_workload(dir, &workload.namespace, &workload.service_account);
    paths
        .check_exist()
        .map_err(|e| vec![Error::new(format!("{} ({}): {e}", WorkloadIdentity::of(workload), workload.name))])?;
    Ok(Some(paths))
}

/// How a sidecar inbound listener on workload port `ctx.bind_port` accepts connections: the
/// filter chains of its PeerAuthentication mode (see the module doc). `certs` are this workload's
/// files; without them STRICT is an error (it could not be enforced) and PERMISSIVE serves
/// plaintext only. `peer_exchange` (a TCP listener): ahead of the mTLS chain, a chain for clients
/// that offer `istio-peer-exchange` ([`super::stats::exchange_filter_chain_match`], read by the
/// `tls_inspector`), negotiating [`super::stats::SERVER_TCP_ALPN`] and running the listener's
/// filters with the TCP stats filter that runs Istio's TCP metadata exchange. Envoy prefers it
/// over the mTLS chain for such clients; other TLS clients and plaintext keep their chains. No
/// exchange without mTLS, as in Istio.
pub fn inbound_transport(
    ctx: &ListenerContext<'_>,
    certs: Option<&CertPaths>,
    peer_exchange: bool,
) -> Result<InboundTls, Vec<Error>> {
    if ctx.direction != Direction::Inbound {
        return Err(vec![Error::new(format!(
            "PeerAuthentication applies to sidecar inbound listeners only, not {:?}",
            ctx.direction
        ))]);
    }
    let (workload, port) = (ctx.workload, u32::from(ctx.bind_port));
    let policy = PeerAuthnPolicy::compile(workload, ctx.resources)?;
    let decision = policy.explain(port);
    let mode = decision.mode;
    let plaintext = |filter_chain_match: Option<Value>| ChainTransport {
        name: "plaintext",
        filter_chain_match,
        transport_socket: None,
        filters: ChainFilters::Listener,
    };
    let tls = |certs: &CertPaths, filter_chain_match: Option<Value>| ChainTransport {
        name: "mtls",
        filter_chain_match,
        transport_socket: Some(downstream_transport_socket(certs)),
        filters: ChainFilters::Listener,
    };
    let (mut chains, listener_filters) = match (mode, certs) {
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
                plaintext(Some(json!({"transport_protocol": "raw_buffer"}))),
            ],
            vec![tls_inspector()],
        ),
        // PERMISSIVE without certificates, DISABLE (and UNSET, which compile never returns).
        _ => (vec![plaintext(None)], vec![]),
    };
    if let Some(certs) = certs.filter(|_| peer_exchange && chains.iter().any(|c| c.transport_socket.is_some())) {
        let exchange = ChainTransport {
            name: "mtls-peer-exchange",
            filter_chain_match: Some(super::stats::exchange_filter_chain_match()),
            transport_socket: Some(downstream_transport_socket_with_alpn(certs, &super::stats::SERVER_TCP_ALPN)),
            filters: ChainFilters::PeerExchange,
        };
        chains.insert(0, exchange);
    }
    // As Istio's sidecar inbound HCM: the peer identity goes to the app in
    // `x-forwarded-client-cert`.
    let hcm_fields = vec![
        ("forward_client_cert_details", json!("APPEND_FORWARD")),
        ("set_current_client_cert_details", json!({"subject": true, "uri": true, "dns": true})),
    ];
    Ok(InboundTls { transport: ListenerTransport { chains, listener_filters, hcm_fields }, mode })
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
    downstream_transport_socket_with_alpn(certs, &SERVER_ALPN)
}

/// [`downstream_transport_socket`] negotiating `alpn`.
fn downstream_transport_socket_with_alpn(certs: &CertPaths, alpn: &[&str]) -> Value {
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": common_tls_context(certs, alpn, &[]),
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

/// How an outbound cluster connects: Istio's client-side mTLS (see the module doc). `client` is
/// the calling proxy (its trust domain and root namespace apply), `certs` its files; `endpoints`
/// are the cluster's, in the order of its `lb_endpoints`. Without certificates only the
/// DestinationRule's `tls` is checked (ISTIO_MUTUAL cannot be done) and the cluster is plaintext.
pub fn cluster_transport(
    client: &Workload,
    resources: &Resources,
    svc: &UpstreamService<'_>,
    endpoints: &[PeerEndpoint<'_>],
    certs: Option<&CertPaths>,
) -> Result<ClusterTransport, Vec<Error>> {
    // TLS origination (SIMPLE, MUTUAL) needs no workload certificate.
    if let Some((r, dr)) = svc.destination_rule {
        if let Ok(Some(ClientTls::Origination(socket))) = client_tls(r, dr, svc.subset, svc.port) {
            return Ok(ClusterTransport::All(socket));
        }
    }
    let Some(certs) = certs else {
        return match svc.destination_rule.map(|(r, dr)| (r, client_tls(r, dr, svc.subset, svc.port))) {
            Some((_, Err(e))) => Err(vec![e]),
            Some((r, Ok(Some(ClientTls::IstioMutual { .. })))) => Err(vec![Error::at(
                r,
                "spec.trafficPolicy.tls.mode",
                format!("ISTIO_MUTUAL to {} needs this proxy's workload certificate: pass the directory `wasmeshctl certs` wrote", svc.host),
            )]),
            _ => Ok(ClusterTransport::Plaintext),
        };
    };
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
            (Some(ClientTls::Disable | ClientTls::Origination(_)), _) => None,
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
        return Ok(ClusterTransport::Plaintext);
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
    // server sidecar's inbound TCP listener has the matching chain ([`inbound_transport`]).
    let tcp = se.ports.iter().find(|p| p.number == svc.port).is_some_and(|p| p.port_protocol() == PortProtocol::Tcp);
    let alpn: &[&str] = if tcp { &super::stats::CLIENT_TCP_ALPN } else { &CLIENT_ALPN };
    let socket = upstream_transport_socket_with_alpn(certs, &sans, &sni, alpn);
    if mutual.iter().all(Option::is_some) {
        return Ok(ClusterTransport::All(socket));
    }
    Ok(ClusterTransport::Some { socket, endpoints: mutual.iter().map(Option::is_some).collect() })
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

/// Whether any DestinationRule sets `SIMPLE` or `MUTUAL` TLS at any level (the rule, a subset, a
/// port): upstream connections may then present a certificate other than the workload's, or
/// none, so our certificate on the client side is not fixed by the workload's files.
pub fn originates_tls(resources: &Resources) -> bool {
    let originating = |tls: &Value| matches!(tls.get("mode").and_then(Value::as_str), Some("SIMPLE" | "MUTUAL"));
    resources.destination_rules().any(|(_, dr)| {
        let policies = dr.traffic_policy.iter().chain(dr.subsets.iter().filter_map(|s| s.traffic_policy.as_ref()));
        policies
            .into_iter()
            .any(|tp| tp.tls.iter().chain(tp.port_level_settings.iter().filter_map(|s| s.get("tls"))).any(originating))
    })
}

/// A DestinationRule's client TLS setting for one subset and port.
#[derive(Debug, Clone, PartialEq)]
enum ClientTls {
    Disable,
    IstioMutual {
        sni: Option<String>,
        subject_alt_names: Vec<String>,
    },
    /// SIMPLE or MUTUAL: TLS to a server outside the mesh, with the files the rule names.
    Origination(Value),
}

/// The system's CA bundle (Debian), what istiod's `caCertificates: system` means.
pub const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The DestinationRule fields of ClientTLSSettings.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientTlsSettings {
    mode: String,
    #[serde(default)]
    client_certificate: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    ca_certificates: Option<String>,
    #[serde(default)]
    credential_name: Option<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    insecure_skip_verify: Option<bool>,
    #[serde(default)]
    ca_crl: Option<String>,
}

/// SIMPLE / MUTUAL as istiod writes them (`cluster_tls.go`): the CA file (the system bundle when
/// none is named) unless `insecureSkipVerify`, the SANs to match, the SNI (Envoy's `auto_sni`
/// from the Host when none is given), and for MUTUAL the client certificate and key files.
fn origination(res: &Resource, field: &str, t: &ClientTlsSettings) -> Result<Value, Error> {
    if t.credential_name.is_some() {
        return Err(Error::at(
            res,
            format!("{field}.credentialName"),
            "Kubernetes secrets are not available to wasmeshctl envoy; name the files with clientCertificate, privateKey and caCertificates",
        ));
    }
    let mut validation = json!({});
    if t.insecure_skip_verify != Some(true) {
        let ca = t.ca_certificates.as_deref().filter(|c| !c.is_empty() && *c != "system").unwrap_or(SYSTEM_CA);
        validation["trusted_ca"] = json!({"filename": ca});
        if let Some(crl) = &t.ca_crl {
            validation["crl"] = json!({"filename": crl});
        }
        if !t.subject_alt_names.is_empty() {
            let m: Vec<Value> =
                t.subject_alt_names.iter().map(|s| json!({"san_type": "DNS", "matcher": {"exact": s}})).collect();
            validation["match_typed_subject_alt_names"] = json!(m);
        }
    }
    let mut common = json!({"validation_context": validation});
    if t.mode == "MUTUAL" {
        let (Some(cert), Some(key)) = (&t.client_certificate, &t.private_key) else {
            return Err(Error::at(res, field, "MUTUAL needs clientCertificate and privateKey (files)"));
        };
        common["tls_certificates"] =
            json!([{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]);
    }
    let mut ctx = json!({
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "common_tls_context": common,
    });
    if let Some(sni) = t.sni.as_deref().filter(|s| !s.is_empty()) {
        ctx["sni"] = json!(sni);
    }
    Ok(json!({"name": "envoy.transport_sockets.tls", "typed_config": ctx}))
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
        "SIMPLE" | "MUTUAL" => {
            let t: ClientTlsSettings =
                serde_json::from_value(tls.clone()).map_err(|e| Error::at(res, field.as_str(), e.to_string()))?;
            origination(res, &field, &t).map(|socket| Some(ClientTls::Origination(socket)))
        }
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

    fn inbound(yaml: &str, port: u16, certs: Option<&CertPaths>) -> Result<InboundTls, Vec<Error>> {
        inbound_tcp(yaml, port, certs, false)
    }

    fn inbound_tcp(yaml: &str, port: u16, certs: Option<&CertPaths>, exchange: bool) -> Result<InboundTls, Vec<Error>> {
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
        inbound_transport(&ctx, certs, exchange)
    }

    #[test]
    fn default_is_permissive_tls_and_plaintext_on_one_port() {
        let c = inbound("", 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Permissive);
        let t = &c.transport;
        assert_eq!(t.listener_filters, vec![tls_inspector()]);
        assert_eq!(t.chains.len(), 2);
        let (tls, plain) = (&t.chains[0], &t.chains[1]);
        assert_eq!(tls.filter_chain_match, Some(json!({"transport_protocol": "tls"})));
        assert_eq!(plain.filter_chain_match, Some(json!({"transport_protocol": "raw_buffer"})));
        assert!(plain.transport_socket.is_none());
        assert!(t.chains.iter().all(|c| c.filters == ChainFilters::Listener));
        let socket = tls.transport_socket.clone().expect("tls");
        let ctx = &socket["typed_config"];
        assert_eq!(ctx["require_client_certificate"], json!(true));
        assert_eq!(
            ctx["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            json!("/certs/root-cert.pem")
        );
        assert_eq!(
            ctx["common_tls_context"]["tls_certificates"][0]["certificate_chain"]["filename"],
            json!("/certs/default/httpbin/cert-chain.pem")
        );
        assert_eq!(ctx["common_tls_context"]["alpn_protocols"], json!(SERVER_ALPN));
        // The HCM (of both chains) forwards the peer identity, as Istio's XFCC.
        assert!(t.hcm_fields.contains(&("forward_client_cert_details", json!("APPEND_FORWARD"))), "{t:?}");
    }

    #[test]
    fn a_tcp_port_with_mtls_first_offers_the_peer_exchange() {
        let c = inbound_tcp("", 3306, Some(&certs()), true).expect("chains");
        let names: Vec<&str> = c.transport.chains.iter().map(|c| c.name).collect();
        assert_eq!(names, ["mtls-peer-exchange", "mtls", "plaintext"]);
        let x = &c.transport.chains[0];
        assert_eq!(x.filters, ChainFilters::PeerExchange);
        assert_eq!(x.filter_chain_match, Some(super::super::stats::exchange_filter_chain_match()));
        let socket = x.transport_socket.clone().expect("tls");
        assert_eq!(
            socket["typed_config"]["common_tls_context"]["alpn_protocols"],
            json!(super::super::stats::SERVER_TCP_ALPN)
        );
        assert_eq!(socket["typed_config"]["require_client_certificate"], json!(true));
        // No exchange without mTLS.
        let plain = inbound_tcp("", 3306, None, true).expect("chains");
        assert_eq!(plain.transport.chains.iter().map(|c| c.name).collect::<Vec<_>>(), ["plaintext"]);
    }

    #[test]
    fn strict_is_one_tls_chain_and_needs_certificates() {
        let y = pa("istio-system", "default", "{mtls: {mode: STRICT}}");
        let c = inbound(&y, 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Strict);
        let t = &c.transport;
        assert_eq!(t.chains.len(), 1);
        assert_eq!(t.listener_filters, vec![tls_inspector()]);
        assert!(t.chains[0].filter_chain_match.is_none());
        let socket = t.chains[0].transport_socket.clone().expect("tls");
        assert_eq!(socket["typed_config"]["require_client_certificate"], json!(true));
        let e = inbound(&y, 8000, None).expect_err("no certs");
        assert!(e[0].message.contains("STRICT (PeerAuthentication istio-system/default)"), "{e:?}");
    }

    #[test]
    fn disable_and_permissive_without_certificates_are_plaintext() {
        let y = pa("default", "default", "{mtls: {mode: DISABLE}}");
        let c = inbound(&y, 8000, Some(&certs())).expect("chains");
        assert_eq!(c.mode, MtlsMode::Disable);
        assert_eq!(c.transport.chains.len(), 1);
        assert!(c.transport.chains[0].transport_socket.is_none());
        assert!(c.transport.listener_filters.is_empty());
        let c = inbound("", 8000, None).expect("chains");
        assert_eq!((c.mode, c.transport.chains.len()), (MtlsMode::Permissive, 1));
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
        assert!(inbound_transport(&ctx, Some(&certs()), false).is_err());
    }

    const SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 8000, name: http, protocol: HTTP}]\n  resolution: STATIC\n  workloadSelector: {labels: {app: httpbin}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-v1, namespace: default}\nspec: {address: 127.0.0.1, ports: {http: 19090}, labels: {app: httpbin, version: v1}, serviceAccount: httpbin}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: httpbin-v2, namespace: default}\nspec: {address: 127.0.0.2, ports: {http: 19091}, labels: {app: httpbin, version: v2}, serviceAccount: httpbin-v2}\n";

    fn outbound(extra: &str, location: &str) -> Result<ClusterTransport, Vec<Error>> {
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
        let client_certs = CertPaths::for_workload(&PathBuf::from("/certs"), "default", "sleep");
        cluster_transport(&sleep, &res, &svc, &eps, Some(&client_certs))
    }

    fn socket_of(t: ClusterTransport) -> Value {
        match t {
            ClusterTransport::All(socket) => socket,
            other => panic!("expected mTLS to every endpoint: {other:?}"),
        }
    }

    #[test]
    fn mesh_internal_service_gets_istio_mutual_with_spiffe_sans_and_sni() {
        let socket = socket_of(outbound("", "MESH_INTERNAL").expect("cluster"));
        let ctx = &socket["typed_config"];
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
    }

    #[test]
    fn mesh_external_services_stay_plaintext() {
        assert_eq!(outbound("", "MESH_EXTERNAL").expect("cluster"), ClusterTransport::Plaintext);
        // Istio's default location is MESH_EXTERNAL.
        assert_eq!(outbound("", "null").expect("cluster"), ClusterTransport::Plaintext);
    }

    #[test]
    fn a_server_that_disables_mtls_on_its_port_gets_plaintext() {
        // v2 disables mTLS on the port the cluster dials: mixed cluster, socket matches.
        let y =
            pa("default", "v2", "{selector: {matchLabels: {version: v2}}, portLevelMtls: {19091: {mode: DISABLE}}}");
        let ClusterTransport::Some { socket, endpoints } = outbound(&y, "MESH_INTERNAL").expect("cluster") else {
            panic!("expected mTLS to some endpoints")
        };
        assert_eq!(
            socket["typed_config"]["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"],
            json!([{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/default/sa/httpbin"}}])
        );
        assert_eq!(endpoints, [true, false]);
        // The whole namespace DISABLE: no TLS at all.
        let c = outbound(&pa("default", "ns", "{mtls: {mode: DISABLE}}"), "MESH_INTERNAL").expect("cluster");
        assert_eq!(c, ClusterTransport::Plaintext);
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
        let c = cluster_transport(&Workload::new("sleep", "default"), &res, &svc, &eps, Some(&certs())).expect("ok");
        assert!(matches!(c, ClusterTransport::Some { ref endpoints, .. } if endpoints == &[true, false]), "{c:?}");
    }

    #[test]
    fn destination_rule_tls_overrides_auto_mtls() {
        let dr = |tp: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: httpbin, namespace: default}}\nspec: {{host: httpbin, trafficPolicy: {tp}}}\n")
        };
        assert_eq!(outbound(&dr("{tls: {mode: DISABLE}}"), "MESH_INTERNAL").expect("c"), ClusterTransport::Plaintext);
        // ISTIO_MUTUAL even to a MESH_EXTERNAL entry, with its own SNI and SANs.
        let c = outbound(
            &dr(
                "{tls: {mode: ISTIO_MUTUAL, sni: my.sni, subjectAltNames: ['spiffe://cluster.local/ns/default/sa/x']}}",
            ),
            "MESH_EXTERNAL",
        )
        .expect("c");
        let socket = socket_of(c);
        let ctx = &socket["typed_config"];
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
        assert_eq!(c, ClusterTransport::Plaintext);
        // TLS origination: SIMPLE with the system CA, MUTUAL with the rule's files.
        let c = outbound(
            &dr("{tls: {mode: SIMPLE, sni: api.example.com, subjectAltNames: [api.example.com]}}"),
            "MESH_EXTERNAL",
        )
        .expect("simple");
        let ctx = &socket_of(c)["typed_config"];
        assert_eq!(ctx["sni"], json!("api.example.com"));
        assert_eq!(ctx["common_tls_context"]["validation_context"]["trusted_ca"]["filename"], json!(SYSTEM_CA));
        assert!(ctx["common_tls_context"].get("tls_certificates").is_none());
        let c = outbound(
            &dr("{tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}}"),
            "MESH_EXTERNAL",
        )
        .expect("mutual");
        let ctx = &socket_of(c)["typed_config"]["common_tls_context"];
        assert_eq!(ctx["tls_certificates"][0]["certificate_chain"]["filename"], json!("/c.pem"));
        assert_eq!(ctx["validation_context"]["trusted_ca"]["filename"], json!("/ca.pem"));
        let e =
            outbound(&dr("{tls: {mode: MUTUAL, credentialName: secret}}"), "MESH_EXTERNAL").expect_err("credential");
        assert!(e[0].to_string().contains("spec.trafficPolicy.tls.credentialName"), "{e:?}");
        let e = outbound(&dr("{tls: {mode: MUTUAL}}"), "MESH_EXTERNAL").expect_err("mutual without files");
        assert!(e[0].to_string().contains("needs clientCertificate and privateKey"), "{e:?}");
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
