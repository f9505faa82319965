//! Gateway servers in a gateway's listeners (`wasmeshctl envoy --role gateway`), as istiod
//! writes them: one listener per server port, and on it
//!
//! - HTTP servers: the HTTP connection manager with the wasm router (which picks the route by
//!   Host among the VirtualServices bound to the Gateways of this port). `tls.httpsRedirect`
//!   sets Envoy's `require_tls: ALL` on a virtual host for that server's hosts, so Envoy answers
//!   `301` to `https://` after the router matched (as istiod does);
//! - HTTPS servers with `tls.mode` `SIMPLE` or `MUTUAL`: one filter chain per server, chosen by
//!   SNI (`filter_chain_match.server_names` = the server's hosts, none for `*`; the
//!   `tls_inspector` listener filter reads it), each with a `DownstreamTlsContext` holding that
//!   server's certificate (ALPN `h2,http/1.1`, TLS ≥ 1.2 as istiod's gateway defaults), MUTUAL
//!   requiring a client certificate signed by the server's CA;
//! - TCP servers: `tcp_proxy` to the destination of the first `tcp` route of a VirtualService
//!   bound to the Gateway whose `match` fits the port, several weighted destinations as Envoy's
//!   `weighted_clusters` (Istio's "TCP traffic shifting").
//!
//! Certificates are files. `serverCertificate`, `privateKey` and `caCertificates` are file paths
//! (Istio's file-mounted form). `credentialName: NAME` (a Kubernetes Secret in Istio) is read
//! from `--credentials DIR` as `DIR/NAME/tls.crt` and `DIR/NAME/tls.key`, with the CA for MUTUAL
//! in `DIR/NAME/ca.crt` or else `DIR/NAME-cacert/ca.crt` (Istio's two Secret layouts).
//! - PASSTHROUGH servers (protocol HTTPS or TLS): the TLS is not terminated; one filter chain
//!   per VirtualService `tls` route, matched by its `sniHosts`, with `tcp_proxy` to its
//!   destination(s) (Istio's "Ingress Gateway without TLS Termination"; an egress gateway's
//!   usual HTTPS server).
//!
//! Everything else (`AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`, `OPTIONAL_MUTUAL`, CRLs, SPKI/hash
//! pinning, a port mixing kinds of servers) is refused, naming file, resource and field.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use wasmesh_istio::networking::{Gateway, Server};
use wasmesh_istio::{Error, Resource, Resources, Workload};

/// What a gateway serves on one Gateway server port.
#[derive(Debug, Clone, PartialEq)]
pub enum PortPlan {
    /// HTTP (plaintext or TLS-terminated) through the HTTP connection manager.
    Http(HttpPort),
    /// Opaque TCP: `tcp_proxy` with this route.
    Tcp(TcpRoute),
    /// TLS passed through (`mode: PASSTHROUGH`): a `tcp_proxy` chain per SNI route.
    Tls(Vec<SniRoute>),
}

/// A `tls` route of a PASSTHROUGH server: the SNI names it serves and where it sends them.
#[derive(Debug, Clone, PartialEq)]
pub struct SniRoute {
    pub server_names: Vec<String>,
    pub route: TcpRoute,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpPort {
    /// TLS filter chains; empty: one plaintext chain.
    pub chains: Vec<TlsChain>,
    /// Hosts whose plaintext requests are redirected to HTTPS (`httpsRedirect`); `*` for all.
    pub redirect_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsChain {
    /// SNI names the chain serves; empty: every name.
    pub server_names: Vec<String>,
    pub transport_socket: Value,
}

/// `tcp_proxy`'s destination: one cluster, or weighted clusters (name, weight).
#[derive(Debug, Clone, PartialEq)]
pub enum TcpRoute {
    Cluster(String),
    Weighted(Vec<(String, u32)>),
}

/// The cluster a TCP server port without a matching route sends to: none of its endpoints
/// exist, so the connection is closed (Istio's `BlackHoleCluster`).
pub const BLACK_HOLE: &str = "BlackHoleCluster";

impl TcpRoute {
    /// The first (or only) cluster, for the stat prefix and `tcp_chain_filters`.
    pub fn first_cluster(&self) -> &str {
        match self {
            TcpRoute::Cluster(c) => c,
            TcpRoute::Weighted(w) => w.first().map_or(BLACK_HOLE, |(c, _)| c.as_str()),
        }
    }
}

/// The Gateway servers on `port` of the Gateways that select `wl`, with their resources.
fn servers_on<'r>(
    resources: &'r Resources,
    wl: &Workload,
    port: u32,
) -> Vec<(&'r Resource, &'r Gateway, usize, &'r Server)> {
    let mut out = Vec::new();
    for (res, gw) in resources.gateways() {
        if !gw.selector.iter().all(|(k, v)| wl.labels.get(k) == Some(v)) {
            continue;
        }
        for (i, s) in gw.servers.iter().enumerate() {
            if s.port.number == port {
                out.push((res, gw, i, s));
            }
        }
    }
    out
}

/// What the gateway serves on server port `port`. `credentials` is `--credentials DIR`.
pub fn plan(
    resources: &Resources,
    wl: &Workload,
    port: u32,
    credentials: Option<&Path>,
) -> Result<PortPlan, Vec<Error>> {
    let servers = servers_on(resources, wl, port);
    let mut errors = Vec::new();
    let protocol = |s: &Server| s.port.protocol.to_ascii_uppercase();
    let tcp = servers.iter().any(|(_, _, _, s)| matches!(protocol(s).as_str(), "TCP" | "MONGO" | "MYSQL" | "REDIS"));
    if tcp {
        for (res, _, i, s) in &servers {
            let p = protocol(s);
            if !matches!(p.as_str(), "TCP" | "MONGO" | "MYSQL" | "REDIS") {
                errors.push(Error::at(
                    res,
                    format!("spec.servers[{i}].port.protocol"),
                    format!("{p:?} on port {port}, which another server uses for TCP: one protocol a port"),
                ));
            }
            if s.tls.is_some() {
                errors.push(Error::at(
                    res,
                    format!("spec.servers[{i}].tls"),
                    "TLS on a TCP server is not supported by wasmesh",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let names: Vec<String> =
            servers.iter().map(|(res, ..)| format!("{}/{}", res.namespace(), res.name())).collect();
        return tcp_route(resources, wl, port, &names).map(PortPlan::Tcp);
    }
    let mode_of = |s: &Server| s.tls.as_ref().and_then(|t| t.get("mode")).and_then(Value::as_str).map(str::to_string);
    if servers.iter().any(|(_, _, _, s)| mode_of(s).as_deref() == Some("PASSTHROUGH")) {
        for (res, _, i, s) in &servers {
            let p = protocol(s);
            if mode_of(s).as_deref() != Some("PASSTHROUGH") || !matches!(p.as_str(), "HTTPS" | "TLS") {
                errors.push(Error::at(
                    res,
                    format!("spec.servers[{i}]"),
                    format!("port {port} has a PASSTHROUGH server: every server on it must be HTTPS or TLS with mode PASSTHROUGH"),
                ));
            }
            if let Some(k) =
                s.tls.as_ref().and_then(Value::as_object).and_then(|t| t.keys().find(|k| k.as_str() != "mode"))
            {
                errors.push(Error::at(res, format!("spec.servers[{i}].tls.{k}"), "not used with mode PASSTHROUGH"));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let names: Vec<String> =
            servers.iter().map(|(res, ..)| format!("{}/{}", res.namespace(), res.name())).collect();
        return tls_routes(resources, wl, port, &names).map(PortPlan::Tls);
    }
    let mut http = HttpPort::default();
    let mut plain = false;
    for (res, _, i, s) in &servers {
        let field = format!("spec.servers[{i}]");
        let p = protocol(s);
        let hosts: Vec<String> =
            s.hosts.iter().map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_ascii_lowercase()).collect();
        match p.as_str() {
            "HTTP" | "HTTP2" | "GRPC" | "" => {
                plain = true;
                match s.tls.as_ref().map(|t| parse_tls(res, &field, t)) {
                    None => {}
                    Some(Ok(tls)) if tls.mode.is_none() && tls.https_redirect => http.redirect_hosts.extend(hosts),
                    Some(Ok(tls)) if tls.mode.is_none() => {}
                    Some(Ok(_)) => errors.push(Error::at(
                        res,
                        format!("{field}.tls.mode"),
                        format!("TLS on a {p} server: use protocol HTTPS for TLS termination"),
                    )),
                    Some(Err(mut e)) => errors.append(&mut e),
                }
            }
            "HTTPS" => {
                let Some(tls) = &s.tls else {
                    errors.push(Error::at(
                        res,
                        format!("{field}.tls"),
                        "an HTTPS server needs tls (mode SIMPLE or MUTUAL)",
                    ));
                    continue;
                };
                match parse_tls(res, &field, tls).and_then(|t| transport_socket(res, &field, &t, credentials)) {
                    Ok(socket) => {
                        let server_names = if hosts.iter().any(|h| h == "*") { Vec::new() } else { hosts };
                        for other in &http.chains {
                            let clash = (other.server_names.is_empty() && server_names.is_empty())
                                || other.server_names.iter().any(|n| server_names.contains(n));
                            if clash {
                                errors.push(Error::at(
                                    res,
                                    format!("{field}.hosts"),
                                    format!("{server_names:?} overlaps another HTTPS server on port {port}: each SNI host belongs to one server"),
                                ));
                            }
                        }
                        http.chains.push(TlsChain { server_names, transport_socket: socket });
                    }
                    Err(mut e) => errors.append(&mut e),
                }
            }
            other => errors.push(Error::at(
                res,
                format!("{field}.port.protocol"),
                format!("{other:?} is not supported by wasmesh on a Gateway (HTTP, HTTP2, GRPC, HTTPS, TCP are)"),
            )),
        }
    }
    if plain && !http.chains.is_empty() {
        if let Some((res, _, i, _)) = servers.first() {
            errors.push(Error::at(
                res,
                format!("spec.servers[{i}].port"),
                format!("port {port} mixes plaintext and HTTPS servers: one or the other a port"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(PortPlan::Http(http))
    } else {
        Err(errors)
    }
}

/// A server's `tls`, the fields wasmesh carries out.
#[derive(Debug, Default)]
struct ServerTls {
    https_redirect: bool,
    mode: Option<String>,
    credential_name: Option<String>,
    server_certificate: Option<String>,
    private_key: Option<String>,
    ca_certificates: Option<String>,
    subject_alt_names: Vec<String>,
    min_protocol_version: Option<String>,
    max_protocol_version: Option<String>,
    cipher_suites: Vec<String>,
}

fn parse_tls(res: &Resource, field: &str, tls: &Value) -> Result<ServerTls, Vec<Error>> {
    let mut out = ServerTls::default();
    let mut errors = Vec::new();
    let Some(map) = tls.as_object() else {
        return Err(vec![Error::at(res, format!("{field}.tls"), "expected an object")]);
    };
    for (k, v) in map {
        let f = format!("{field}.tls.{k}");
        let string =
            || v.as_str().map(str::to_string).ok_or_else(|| Error::at(res, &f, format!("{v} is not a string")));
        let strings = || -> Result<Vec<String>, Error> {
            v.as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
                .ok_or_else(|| Error::at(res, &f, format!("{v} is not a list of strings")))
        };
        let r = match k.as_str() {
            "httpsRedirect" => {
                v.as_bool().map(|b| out.https_redirect = b).ok_or_else(|| Error::at(res, &f, "expected true or false"))
            }
            "mode" => string().and_then(|m| match m.as_str() {
                "SIMPLE" | "MUTUAL" => {
                    out.mode = Some(m);
                    Ok(())
                }
                _ => Err(Error::at(res, &f, format!("{m:?} is not supported by wasmesh (SIMPLE and MUTUAL are)"))),
            }),
            "credentialName" => string().map(|s| out.credential_name = Some(s)),
            "serverCertificate" => string().map(|s| out.server_certificate = Some(s)),
            "privateKey" => string().map(|s| out.private_key = Some(s)),
            "caCertificates" => string().map(|s| out.ca_certificates = Some(s)),
            "subjectAltNames" => strings().map(|s| out.subject_alt_names = s),
            "minProtocolVersion" => string().map(|s| out.min_protocol_version = Some(s)),
            "maxProtocolVersion" => string().map(|s| out.max_protocol_version = Some(s)),
            "cipherSuites" => strings().map(|s| out.cipher_suites = s),
            _ => Err(Error::at(res, &f, "not supported by wasmesh")),
        };
        if let Err(e) = r {
            errors.push(e);
        }
    }
    // Istio: a server with certificate settings and no mode is SIMPLE.
    if out.mode.is_none() && (out.credential_name.is_some() || out.server_certificate.is_some()) {
        out.mode = Some("SIMPLE".into());
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn tls_version(res: &Resource, field: &str, v: &str) -> Result<&'static str, Error> {
    match v {
        "TLS_AUTO" => Ok("TLS_AUTO"),
        "TLSV1_0" => Ok("TLSv1_0"),
        "TLSV1_1" => Ok("TLSv1_1"),
        "TLSV1_2" => Ok("TLSv1_2"),
        "TLSV1_3" => Ok("TLSv1_3"),
        _ => Err(Error::at(res, field, format!("{v:?} is not a TLS version (TLSV1_0..TLSV1_3, TLS_AUTO)"))),
    }
}

/// An existing file, or an error naming the field and the path.
fn file(res: &Resource, field: &str, path: PathBuf) -> Result<Value, Error> {
    if path.is_file() {
        Ok(json!({"filename": path.display().to_string()}))
    } else {
        Err(Error::at(res, field, format!("{} does not exist or is not a file", path.display())))
    }
}

/// The `DownstreamTlsContext` of a SIMPLE or MUTUAL server.
fn transport_socket(
    res: &Resource,
    field: &str,
    tls: &ServerTls,
    credentials: Option<&Path>,
) -> Result<Value, Vec<Error>> {
    let mutual = match tls.mode.as_deref() {
        Some("MUTUAL") => true,
        Some(_) => false,
        None => {
            return Err(vec![Error::at(
                res,
                format!("{field}.tls.mode"),
                "an HTTPS server needs mode SIMPLE or MUTUAL",
            )])
        }
    };
    let mut errors = Vec::new();
    let (cert, key, ca) = match (&tls.credential_name, &tls.server_certificate, &tls.private_key) {
        (Some(name), None, None) => {
            let f = format!("{field}.tls.credentialName");
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(vec![Error::at(res, f, format!("{name:?} is not a Secret name"))]);
            }
            let Some(dir) = credentials else {
                return Err(vec![Error::at(
                    res,
                    f,
                    format!("{name:?}: credentials are files here; pass --credentials DIR with DIR/{name}/tls.crt and DIR/{name}/tls.key"),
                )]);
            };
            let own_ca = dir.join(name).join("ca.crt");
            let ca = if own_ca.is_file() { own_ca } else { dir.join(format!("{name}-cacert")).join("ca.crt") };
            (
                file(res, &f, dir.join(name).join("tls.crt")),
                file(res, &f, dir.join(name).join("tls.key")),
                (mutual && tls.ca_certificates.is_none()).then(|| file(res, &f, ca)),
            )
        }
        (None, Some(cert), Some(key)) => (
            file(res, &format!("{field}.tls.serverCertificate"), PathBuf::from(cert)),
            file(res, &format!("{field}.tls.privateKey"), PathBuf::from(key)),
            None,
        ),
        _ => {
            return Err(vec![Error::at(
                res,
                format!("{field}.tls"),
                "give either credentialName or both serverCertificate and privateKey",
            )])
        }
    };
    let ca = match (&tls.ca_certificates, ca) {
        (Some(path), _) => Some(file(res, &format!("{field}.tls.caCertificates"), PathBuf::from(path))),
        (None, ca) => ca,
    };
    if mutual && ca.is_none() {
        errors.push(Error::at(
            res,
            format!("{field}.tls.caCertificates"),
            "MUTUAL needs a CA to verify client certificates",
        ));
    }
    let mut common =
        json!({"alpn_protocols": ["h2", "http/1.1"], "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"}});
    match (cert, key) {
        (Ok(c), Ok(k)) => common["tls_certificates"] = json!([{"certificate_chain": c, "private_key": k}]),
        (c, k) => errors.extend(c.err().into_iter().chain(k.err())),
    }
    if let Some(v) = &tls.min_protocol_version {
        match tls_version(res, &format!("{field}.tls.minProtocolVersion"), v) {
            Ok(v) => common["tls_params"]["tls_minimum_protocol_version"] = json!(v),
            Err(e) => errors.push(e),
        }
    }
    if let Some(v) = &tls.max_protocol_version {
        match tls_version(res, &format!("{field}.tls.maxProtocolVersion"), v) {
            Ok(v) => common["tls_params"]["tls_maximum_protocol_version"] = json!(v),
            Err(e) => errors.push(e),
        }
    }
    if !tls.cipher_suites.is_empty() {
        common["tls_params"]["cipher_suites"] = json!(tls.cipher_suites);
    }
    if let Some(ca) = ca {
        match ca {
            Ok(ca) => {
                let mut validation = json!({"trusted_ca": ca});
                if !tls.subject_alt_names.is_empty() {
                    let sans: Vec<Value> = tls
                        .subject_alt_names
                        .iter()
                        .flat_map(|s| ["DNS", "URI"].map(|t| json!({"san_type": t, "matcher": {"exact": s}})))
                        .collect();
                    validation["match_typed_subject_alt_names"] = json!(sans);
                }
                common["validation_context"] = validation;
            }
            Err(e) => errors.push(e),
        }
    } else if !tls.subject_alt_names.is_empty() {
        errors.push(Error::at(
            res,
            format!("{field}.tls.subjectAltNames"),
            "needs MUTUAL (a client certificate to check)",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": common,
            "require_client_certificate": mutual,
        }
    }))
}

/// The TCP route of server port `port`: the first `tcp` route, of a VirtualService bound to one
/// of `gateways` (`namespace/name`), whose match fits the port (no match: every port).
fn tcp_route(resources: &Resources, wl: &Workload, port: u32, gateways: &[String]) -> Result<TcpRoute, Vec<Error>> {
    let routes = l4_routes(resources, wl, port, Binding::Gateways(gateways), L4::Tcp)?;
    Ok(routes.into_iter().next().map_or(TcpRoute::Cluster(BLACK_HOLE.to_string()), |(_, r)| r))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4 {
    Tcp,
    Tls,
}

/// Where L4 routes are looked up: the Gateways (`namespace/name`) of a gateway's server port, or
/// a sidecar's outbound listener for one service host (VirtualServices bound to `mesh` whose
/// `hosts` cover it, as istiod's `getConfigsForHost`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binding<'a> {
    Gateways(&'a [String]),
    Mesh {
        host: &'a str,
    },
    /// `wasmeshctl validate`: every route of this one VirtualService, whatever its match, checked
    /// as a listener that used it would check it.
    Each(&'a Resource),
}

/// Istio's host match: `*`, a `*.suffix` wildcard, or the same name.
fn host_covers(pattern: &str, host: &str) -> bool {
    pattern == "*" || pattern == host || pattern.strip_prefix('*').is_some_and(|suffix| host.ends_with(suffix))
}

/// Every `tcp` (or `tls`) route of the VirtualServices bound where `binding` says whose match
/// fits `port` (and, statically as istiod's `matchTCP`/`matchTLS`, the proxy's labels and
/// namespace), in order, with the SNI names of the matches that fit (`tls` routes).
pub(crate) fn l4_routes(
    resources: &Resources,
    wl: &Workload,
    port: u32,
    binding: Binding<'_>,
    kind: L4,
) -> Result<Vec<(Vec<String>, TcpRoute)>, Vec<Error>> {
    let bound_name = |r: &str, ns: &str| if r.contains('/') { r.to_string() } else { format!("{ns}/{r}") };
    let gateway_ok = |g: &str, ns: &str| match binding {
        Binding::Gateways(gateways) => gateways.contains(&bound_name(g, ns)),
        Binding::Mesh { .. } => g == "mesh",
        Binding::Each(_) => true,
    };
    let mut out = Vec::new();
    for (res, vs) in resources.virtual_services() {
        let visible = vs.export_to.is_empty()
            || vs
                .export_to
                .iter()
                .any(|e| e == "*" || e == &wl.namespace || (e == "." && res.namespace() == wl.namespace));
        let bound = match binding {
            Binding::Gateways(_) => vs.gateways.iter().any(|g| gateway_ok(g, res.namespace())),
            Binding::Mesh { host } => {
                (vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh"))
                    && vs.hosts.iter().any(|h| host_covers(&wl.fqdn(h, res.namespace()), host))
            }
            Binding::Each(only) => std::ptr::eq(res, only),
        };
        let every = matches!(binding, Binding::Each(_));
        if !(visible || every) || !bound {
            continue;
        }
        let (list, name) = match kind {
            L4::Tcp => (&vs.tcp, "tcp"),
            L4::Tls => (&vs.tls, "tls"),
        };
        for (ri, route) in list.iter().enumerate() {
            let field = format!("spec.{name}[{ri}]");
            let Some(obj) = route.as_object() else {
                return Err(vec![Error::at(res, field, "expected an object")]);
            };
            if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "match" | "route")) {
                return Err(vec![Error::at(res, format!("{field}.{k}"), "not supported by wasmesh")]);
            }
            let matches = obj.get("match").and_then(Value::as_array).cloned().unwrap_or_default();
            if kind == L4::Tls && matches.is_empty() {
                return Err(vec![Error::at(res, format!("{field}.match"), "a TLS route needs a match with sniHosts")]);
            }
            let mut fits = matches.is_empty() || every;
            let mut sni: Vec<String> = Vec::new();
            for (mi, m) in matches.iter().enumerate() {
                let mf = format!("{field}.match[{mi}]");
                let Some(m) = m.as_object() else { return Err(vec![Error::at(res, mf, "expected an object")]) };
                let allowed = |k: &str| {
                    matches!(k, "port" | "gateways" | "sourceLabels" | "sourceNamespace")
                        || (kind == L4::Tls && k == "sniHosts")
                };
                if let Some(k) = m.keys().find(|k| !allowed(k)) {
                    let why = if k == "destinationSubnets" {
                        "not supported by wasmesh: istiod matches it on the connection's original destination \
                         address, which wasmesh's loopback listeners (no iptables capture) do not have"
                    } else {
                        "not supported by wasmesh (port, gateways, sourceLabels, sourceNamespace and, for tls, \
                         sniHosts are)"
                    };
                    return Err(vec![Error::at(res, format!("{mf}.{k}"), why)]);
                }
                let port_ok = m.get("port").is_none_or(|p| p.as_u64() == Some(u64::from(port)));
                let gw_ok = m
                    .get("gateways")
                    .and_then(Value::as_array)
                    .is_none_or(|gs| gs.iter().filter_map(Value::as_str).any(|g| gateway_ok(g, res.namespace())));
                let labels_ok = match m.get("sourceLabels") {
                    None => true,
                    Some(Value::Object(want)) => want
                        .iter()
                        .all(|(k, v)| v.as_str().is_some_and(|v| wl.labels.get(k).map(String::as_str) == Some(v))),
                    Some(v) => {
                        return Err(vec![Error::at(
                            res,
                            format!("{mf}.sourceLabels"),
                            format!("{v} is not a map of labels"),
                        )])
                    }
                };
                let ns_ok = m.get("sourceNamespace").and_then(Value::as_str).is_none_or(|ns| ns == wl.namespace);
                let gw_ok = gw_ok && labels_ok && ns_ok;
                if kind == L4::Tls {
                    let hosts: Vec<String> = m
                        .get("sniHosts")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_ascii_lowercase).collect())
                        .unwrap_or_default();
                    if hosts.is_empty() {
                        return Err(vec![Error::at(
                            res,
                            format!("{mf}.sniHosts"),
                            "at least one SNI host is required",
                        )]);
                    }
                    if port_ok && gw_ok {
                        sni.extend(hosts);
                    }
                }
                fits |= port_ok && gw_ok;
            }
            if !fits {
                continue;
            }
            let dests = obj.get("route").and_then(Value::as_array).cloned().unwrap_or_default();
            if dests.is_empty() {
                return Err(vec![Error::at(res, format!("{field}.route"), "at least one destination is required")]);
            }
            let mut clusters = Vec::new();
            let mut errors = Vec::new();
            for (di, d) in dests.iter().enumerate() {
                let df = format!("{field}.route[{di}]");
                match destination(resources, wl, res, &df, d) {
                    Ok(c) => clusters.push((c, d.get("weight").and_then(Value::as_u64).unwrap_or(0))),
                    Err(e) => errors.push(e),
                }
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            if let [(c, _)] = clusters.as_slice() {
                out.push((sni, TcpRoute::Cluster(c.clone())));
                continue;
            }
            let total: u64 = clusters.iter().map(|(_, w)| w).sum();
            if total != 100 {
                return Err(vec![Error::at(
                    res,
                    format!("{field}.route"),
                    format!("weights add up to {total}, expected 100"),
                )]);
            }
            let weighted = clusters
                .into_iter()
                .filter(|(_, w)| *w > 0)
                .map(|(c, w)| (c, u32::try_from(w).unwrap_or(100)))
                .collect();
            out.push((sni, TcpRoute::Weighted(weighted)));
        }
    }
    Ok(out)
}

/// The SNI filter chains of a `PASSTHROUGH` port: one per `tls` route, matched by its
/// `sniHosts` (a name already taken by an earlier route stays with it: the first match wins).
fn tls_routes(
    resources: &Resources,
    wl: &Workload,
    port: u32,
    gateways: &[String],
) -> Result<Vec<SniRoute>, Vec<Error>> {
    let mut taken: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (names, route) in l4_routes(resources, wl, port, Binding::Gateways(gateways), L4::Tls)? {
        let names: Vec<String> = names.into_iter().filter(|n| !taken.contains(n)).collect();
        if names.is_empty() {
            continue;
        }
        taken.extend(names.iter().cloned());
        out.push(SniRoute { server_names: names, route });
    }
    Ok(out)
}

/// `wasmeshctl validate`: what `wasmeshctl envoy` would refuse in any VirtualService's `tcp` and
/// `tls` routes when a gateway server or a `--tcp-outbound` listener used them (fields wasmesh
/// does not carry out, a TLS route without `sniHosts`, destinations no ServiceEntry or
/// DestinationRule defines, weights not adding up to 100), each route checked whatever its match
/// and binding, as a proxy of the VirtualService's namespace resolves its short names.
pub fn l4_refusals(resources: &Resources) -> Vec<Error> {
    let mut errors = Vec::new();
    for (res, vs) in resources.virtual_services() {
        let wl = Workload::new("validate", res.namespace());
        for (kind, routes) in [(L4::Tcp, &vs.tcp), (L4::Tls, &vs.tls)] {
            if routes.is_empty() {
                continue;
            }
            if let Err(e) = l4_routes(resources, &wl, 0, Binding::Each(res), kind) {
                errors.extend(e);
            }
        }
    }
    errors
}

/// `outbound|<port>|<subset>|<fqdn>` of a TCP route destination, checked against the
/// ServiceEntries and DestinationRules.
fn destination(resources: &Resources, wl: &Workload, res: &Resource, field: &str, d: &Value) -> Result<String, Error> {
    let dest = d.get("destination").ok_or_else(|| Error::at(res, format!("{field}.destination"), "is required"))?;
    if let Some(k) = d.as_object().and_then(|o| o.keys().find(|k| !matches!(k.as_str(), "destination" | "weight"))) {
        return Err(Error::at(res, format!("{field}.{k}"), "not supported by wasmesh"));
    }
    let host = dest.get("host").and_then(Value::as_str).unwrap_or_default();
    let fq = wl.fqdn(host, res.namespace());
    let ports: Vec<u32> = resources
        .service_entries()
        .filter(|(r, se)| se.hosts.iter().any(|h| wl.fqdn(h, r.namespace()) == fq))
        .flat_map(|(_, se)| se.ports.iter().map(|p| p.number))
        .collect();
    if ports.is_empty() {
        return Err(Error::at(
            res,
            format!("{field}.destination.host"),
            format!("{host:?}: no ServiceEntry has host {fq}"),
        ));
    }
    let port = match dest.get("port").and_then(|p| p.get("number")).and_then(Value::as_u64) {
        Some(p) => u32::try_from(p).ok().filter(|p| ports.contains(p)).ok_or_else(|| {
            Error::at(res, format!("{field}.destination.port.number"), format!("{p}: {fq} has ports {ports:?}"))
        })?,
        None => match ports.as_slice() {
            [p] => *p,
            _ => {
                return Err(Error::at(
                    res,
                    format!("{field}.destination.port"),
                    format!("{fq} has several ports {ports:?}: name one"),
                ))
            }
        },
    };
    let subset = dest.get("subset").and_then(Value::as_str).unwrap_or_default();
    if !subset.is_empty() {
        let known = resources
            .destination_rules()
            .any(|(r, dr)| wl.fqdn(&dr.host, r.namespace()) == fq && dr.subsets.iter().any(|s| s.name == subset));
        if !known {
            return Err(Error::at(
                res,
                format!("{field}.destination.subset"),
                format!("{subset:?}: no DestinationRule for {fq} defines it"),
            ));
        }
    }
    Ok(format!("outbound|{port}|{subset}|{fq}"))
}

/// `route_config` (the wasm router's single route) for an HTTP port: hosts with `httpsRedirect`
/// get a copy of the virtual host with `require_tls: ALL` (Envoy answers 301 to `https://`).
pub fn route_config(mut route_config: Value, http: &HttpPort) -> Value {
    if http.redirect_hosts.is_empty() {
        return route_config;
    }
    let Some(vhosts) = route_config.get_mut("virtual_hosts").and_then(Value::as_array_mut) else { return route_config };
    let Some(base) = vhosts.first().cloned() else { return route_config };
    if http.redirect_hosts.iter().any(|h| h == "*") {
        if let Some(v) = vhosts.first_mut() {
            v["require_tls"] = json!("ALL");
        }
        return route_config;
    }
    let mut domains: Vec<String> = Vec::new();
    for h in &http.redirect_hosts {
        let forms = if h.contains('*') { vec![h.clone()] } else { vec![h.clone(), format!("{h}:*")] };
        for d in forms {
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
    }
    let mut redirect = base;
    redirect["name"] = json!("https_redirect");
    redirect["domains"] = json!(domains);
    redirect["require_tls"] = json!("ALL");
    vhosts.insert(0, redirect);
    route_config
}

/// Replaces a listener's single filter chain by one chain per TLS server, chosen by SNI.
pub fn with_tls_chains(listener: &mut Value, http: &HttpPort) {
    if http.chains.is_empty() {
        return;
    }
    let Some(filters) = listener.pointer("/filter_chains/0/filters").cloned() else { return };
    let chains: Vec<Value> = http
        .chains
        .iter()
        .map(|c| {
            let mut chain = json!({"filters": filters, "transport_socket": c.transport_socket});
            if !c.server_names.is_empty() {
                chain["filter_chain_match"] = json!({"server_names": c.server_names});
            }
            chain
        })
        .collect();
    listener["filter_chains"] = json!(chains);
    listener["listener_filters"] = json!([{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
    }]);
}

/// A TCP server's chain filters: `tcp_proxy`'s destination becomes weighted clusters where the
/// route splits.
pub fn with_tcp_route(filters: &mut [Value], route: &TcpRoute) {
    let TcpRoute::Weighted(w) = route else { return };
    for f in filters.iter_mut() {
        if f.get("name").and_then(Value::as_str) != Some("envoy.filters.network.tcp_proxy") {
            continue;
        }
        if let Some(cfg) = f.get_mut("typed_config").and_then(Value::as_object_mut) {
            cfg.remove("cluster");
            let clusters: Vec<Value> = w.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect();
            cfg.insert("weighted_clusters".into(), json!({"clusters": clusters}));
        }
    }
}

/// A PASSTHROUGH port's filter chains: per SNI route, `filters` (the chain filters of a TCP
/// listener, ending in `tcp_proxy`) with that route's destination; the `tls_inspector` reads
/// the SNI. A name no route has: no chain, the connection is closed (as Istio).
pub fn with_sni_routes(listener: &mut Value, routes: &[SniRoute]) {
    if routes.is_empty() {
        return; // the one chain, to the black hole
    }
    let Some(filters) = listener.pointer("/filter_chains/0/filters").cloned() else { return };
    let chains: Vec<Value> = routes
        .iter()
        .map(|r| {
            let mut filters: Vec<Value> = filters.as_array().cloned().unwrap_or_default();
            for f in filters.iter_mut() {
                if f.get("name").and_then(Value::as_str) == Some("envoy.filters.network.tcp_proxy") {
                    f["typed_config"]["cluster"] = json!(r.route.first_cluster());
                    f["typed_config"]["stat_prefix"] = json!(r.route.first_cluster());
                }
            }
            with_tcp_route(&mut filters, &r.route);
            json!({"filter_chain_match": {"server_names": r.server_names}, "filters": filters})
        })
        .collect();
    listener["filter_chains"] = json!(chains);
    listener["listener_filters"] = json!([{
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}
    }]);
}

/// Istio's `BlackHoleCluster`: a static cluster without endpoints.
pub fn black_hole_cluster() -> Value {
    json!({"name": BLACK_HOLE, "type": "STATIC", "connect_timeout": "10s", "load_assignment": {"cluster_name": BLACK_HOLE, "endpoints": []}})
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use wasmesh_istio::{load_str, ProxyMode};

    const BASE: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo, namespace: default}
spec:
  hosts: [echo.default.svc.cluster.local]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo, namespace: default}
spec:
  host: echo
  subsets: [{name: v1, labels: {version: v1}}]
---
"#;

    fn plan_of(yaml: &str, port: u32, creds: Option<&Path>) -> Result<PortPlan, String> {
        let resources = Resources { items: load_str(&format!("{BASE}{yaml}"), "gw.yaml").unwrap() };
        let mut wl = Workload::new("gw", "istio-system");
        wl.mode = ProxyMode::Gateway;
        wl.labels.insert("istio".into(), "ingressgateway".into());
        plan(&resources, &wl, port, creds).map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
    }

    fn gateway(server: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - {server}\n")
    }

    #[test]
    fn credential_files_are_checked_and_named() {
        let https = gateway("{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: SIMPLE, credentialName: a-cred}}");
        let e = plan_of(&https, 443, None).unwrap_err();
        assert!(e.contains("spec.servers[0].tls.credentialName") && e.contains("--credentials"), "{e}");
        let e = plan_of(&https, 443, Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(e.contains("/nonexistent/a-cred/tls.crt does not exist"), "{e}");
        let e = plan_of(&https.replace("SIMPLE", "ISTIO_MUTUAL"), 443, None).unwrap_err();
        assert!(e.contains("spec.servers[0].tls.mode") && e.contains("ISTIO_MUTUAL"), "{e}");
        let e = plan_of(&https.replace("credentialName: a-cred", "credentialName: a-cred, caCrl: x"), 443, None)
            .unwrap_err();
        assert!(e.contains("spec.servers[0].tls.caCrl: not supported"), "{e}");
        let e = plan_of(
            &gateway("{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*'], tls: {mode: AUTO_PASSTHROUGH}}"),
            443,
            None,
        )
        .unwrap_err();
        assert!(e.contains("spec.servers[0].port.protocol") && e.contains("\"TLS\""), "{e}");
    }

    #[test]
    fn tcp_routes_weighted_checked_and_black_holed() {
        let gw = gateway("{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ['*']}");
        let vs = |route: &str| {
            format!("{gw}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: default}}\nspec:\n  hosts: ['*']\n  gateways: [g]\n  tcp:\n  - match: [{{port: 31400}}]\n    route: {route}\n")
        };
        let split = vs("[{destination: {host: echo, subset: v1}, weight: 80}, {destination: {host: echo, port: {number: 9000}}, weight: 20}]");
        assert_eq!(
            plan_of(&split, 31400, None).unwrap(),
            PortPlan::Tcp(TcpRoute::Weighted(vec![
                ("outbound|9000|v1|echo.default.svc.cluster.local".into(), 80),
                ("outbound|9000||echo.default.svc.cluster.local".into(), 20)
            ]))
        );
        let e = plan_of(&split.replace("weight: 20", "weight: 10"), 31400, None).unwrap_err();
        assert!(e.contains("spec.tcp[0].route") && e.contains("add up to 90"), "{e}");
        let e = plan_of(&split.replace("subset: v1", "subset: v9"), 31400, None).unwrap_err();
        assert!(e.contains("spec.tcp[0].route[0].destination.subset") && e.contains("v9"), "{e}");
        // The route's port match does not fit another port: nothing routes, the black hole.
        let other = split.replace("port: 31400}", "port: 31401}");
        assert_eq!(plan_of(&other, 31400, None).unwrap(), PortPlan::Tcp(TcpRoute::Cluster(BLACK_HOLE.into())));
    }
}

#[cfg(test)]
mod passthrough_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use wasmesh_istio::{load_str, ProxyMode};

    #[test]
    fn tls_routes_become_sni_chains_first_match_wins() {
        let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a, namespace: default}
spec: {hosts: [a.default.svc.cluster.local], ports: [{number: 443, name: https, protocol: HTTPS}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: g, namespace: default}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 443, name: tls, protocol: TLS}, hosts: ['*'], tls: {mode: PASSTHROUGH}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v, namespace: default}
spec:
  hosts: ['*.example.com']
  gateways: [g]
  tls:
  - match: [{port: 443, sniHosts: [a.example.com, b.example.com]}]
    route: [{destination: {host: a}}]
  - match: [{sniHosts: [b.example.com, c.example.com]}]
    route: [{destination: {host: a, port: {number: 443}}}]
  - match: [{port: 8443, sniHosts: [d.example.com]}]
    route: [{destination: {host: a}}]
"#;
        let resources = Resources { items: load_str(yaml, "pt.yaml").unwrap() };
        let mut wl = Workload::new("egress", "istio-system");
        wl.mode = ProxyMode::Gateway;
        wl.labels.insert("istio".into(), "egressgateway".into());
        let a = "outbound|443||a.default.svc.cluster.local".to_string();
        assert_eq!(
            plan(&resources, &wl, 443, None).unwrap(),
            PortPlan::Tls(vec![
                SniRoute {
                    server_names: vec!["a.example.com".into(), "b.example.com".into()],
                    route: TcpRoute::Cluster(a.clone())
                },
                SniRoute { server_names: vec!["c.example.com".into()], route: TcpRoute::Cluster(a) },
            ])
        );
    }
}
