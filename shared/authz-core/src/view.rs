//! The request as the filter reads it from the host, lazily: every input is fetched on first use
//! (most requests are decided on a pseudo-header or two), then kept (the header map by the host,
//! which reads it at most once per request). The host is behind
//! [`Host`] (Envoy in the filter, a fake in the tests); a hostcall failure is kept as
//! [`Missing`], so the rule that needs the input denies instead of seeing it as absent, while an
//! absent input is evaluated as absent (a plaintext connection matches `notPrincipals`, as in
//! Istio).
#![deny(clippy::indexing_slicing)]

use crate::metadata::decode_metadata;
use crate::peer_sans::{current_sans, XFCC};
use crate::{parse_socket_address, Authz, HeaderList, HeaderPairs, MetadataEntry, Missing, PeerNames, Stage, View};
use std::cell::OnceCell;
use std::net::IpAddr;
use wasmesh_handover::RequestIdentity;

/// Filter state written by the network role: the connection's physical peer `ip:port`.
pub const PEER_ADDRESS_KEY: &str = "wasmesh.authz.peer_address";

/// A hostcall that failed (the input exists, or may, but could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFailure;

/// What the authz filters read from the host. Each keeps a failure (`Err`) apart from absence
/// (`Ok(None)`). The filter implements it over its request's stream, which asks Envoy each
/// answer at most once per request (the header map once, or single headers when the filter is
/// alone and reads few), so this view keeps no copy of the header map.
pub trait Host {
    /// Calls `f` with every request header (names lower-case, in arrival order), borrowed from
    /// wherever the host keeps them; `Err` (and `f` not called) when they could not be read.
    fn with_request_headers(&self, f: &mut dyn FnMut(&mut HeaderPairs<'_>)) -> Result<(), HostFailure>;
    /// The first value of one request header (a pseudo-header).
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostFailure>;
    /// A property, or filter state when `path` is one key.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostFailure>;
}

/// The peer certificate's first URI SAN, first DNS SAN and subject.
type PeerCert = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

const HEADERS_MISSING: Missing = Missing("the request headers (hostcall failed)");

/// A [`View`] over a [`Host`] for one evaluation (an HTTP request or a TCP connection).
pub struct HostView<'a, H: Host> {
    host: H,
    /// `(filter, key)` pairs to decode from dynamic metadata (borrowed from the policies).
    metadata_keys: &'a [(String, String)],
    /// A TCP connection: no headers, no JWT identity, the source address is the connection's.
    tcp: bool,
    /// [`Authz::single_san_peers`]: the first SANs are all of them.
    single_san: bool,
    method: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    path: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    authority: OnceCell<Result<Option<Vec<u8>>, Missing>>,
    source_ip: OnceCell<Option<IpAddr>>,
    remote_ip: OnceCell<Option<IpAddr>>,
    destination_ip: OnceCell<Option<IpAddr>>,
    destination_port: OnceCell<Option<u32>>,
    sni: OnceCell<Result<Vec<u8>, Missing>>,
    mtls: OnceCell<Result<bool, Missing>>,
    peer: OnceCell<Result<PeerCert, Missing>>,
    /// Every SAN of the peer certificate, read only when the first names did not match.
    sans: OnceCell<Result<Vec<Vec<u8>>, Missing>>,
    identity: OnceCell<Result<Option<RequestIdentity>, Missing>>,
    metadata: OnceCell<Result<Vec<MetadataEntry>, Missing>>,
}

impl<'a, H: Host> HostView<'a, H> {
    pub fn new(host: H, authz: &'a Authz) -> HostView<'a, H> {
        HostView {
            host,
            metadata_keys: &authz.needs().metadata,
            tcp: authz.stage() == Stage::Tcp,
            single_san: authz.single_san_peers(),
            method: OnceCell::new(),
            path: OnceCell::new(),
            authority: OnceCell::new(),
            source_ip: OnceCell::new(),
            remote_ip: OnceCell::new(),
            destination_ip: OnceCell::new(),
            destination_port: OnceCell::new(),
            sni: OnceCell::new(),
            mtls: OnceCell::new(),
            peer: OnceCell::new(),
            sans: OnceCell::new(),
            identity: OnceCell::new(),
            metadata: OnceCell::new(),
        }
    }

    /// The host (tests count its calls).
    pub fn host(&self) -> &H {
        &self.host
    }

    /// A property where only a failed hostcall matters: absent and unreadable are both `None`,
    /// and every rule that needs an address or a port fails closed on `None`.
    fn optional(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.host.property(path).ok().flatten()
    }

    fn addr(&self, path: &[&str]) -> Option<IpAddr> {
        self.optional(path).and_then(|b| parse_socket_address(&b))
    }
}

/// An integer property's value as Envoy encodes it (8 bytes, little-endian).
pub fn decode_u64(b: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = b.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(arr))
}

impl<H: Host> View for HostView<'_, H> {
    /// Every request header, copied (a CUSTOM check request, which then costs an HTTP call);
    /// none for a TCP connection.
    fn with_all_headers(&self, f: &mut dyn FnMut(&HeaderList)) -> Result<(), Missing> {
        if self.tcp {
            // A connection has no request headers: every header rule sees them absent.
            f(&[]);
            return Ok(());
        }
        let mut all: Vec<(String, Vec<u8>)> = Vec::new();
        self.host
            .with_request_headers(&mut |h| {
                all = h.map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec())).collect();
            })
            .map_err(|_| HEADERS_MISSING)?;
        f(&all);
        Ok(())
    }
    fn pseudo(&self, name: &str) -> Result<Option<&[u8]>, Missing> {
        if self.tcp {
            return Ok(None);
        }
        let (cell, what) = match name {
            ":method" => (&self.method, Missing(":method (hostcall failed)")),
            ":path" => (&self.path, Missing(":path (hostcall failed)")),
            ":authority" => (&self.authority, Missing(":authority (hostcall failed)")),
            // The policies read no other pseudo-header; refuse rather than answer wrongly.
            _ => return Err(Missing("a pseudo-header other than :method, :path and :authority")),
        };
        cell.get_or_init(|| self.host.request_header(name).map_err(|_| what))
            .as_ref()
            .map(Option::as_deref)
            .map_err(|m| *m)
    }
    fn any_header(&self, name: &str, f: &mut dyn FnMut(&[u8]) -> bool) -> Result<bool, Missing> {
        if self.tcp {
            // A connection has no request headers: every header rule sees them absent.
            return Ok(false);
        }
        let mut found = false;
        self.host
            .with_request_headers(&mut |all| {
                found = all.filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).any(|(_, v)| f(v));
            })
            .map_err(|_| HEADERS_MISSING)?;
        Ok(found)
    }
    fn source_ip(&self) -> Option<IpAddr> {
        if self.tcp {
            // The connection's own peer (no x-forwarded-for on TCP): `remote.ip` is the same.
            return self.remote_ip();
        }
        *self.source_ip.get_or_init(|| self.addr(&[PEER_ADDRESS_KEY]))
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        *self.remote_ip.get_or_init(|| self.addr(&["source", "address"]))
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        *self.destination_ip.get_or_init(|| self.addr(&["destination", "address"]))
    }
    fn destination_port(&self) -> Option<u32> {
        *self.destination_port.get_or_init(|| {
            let port = decode_u64(&self.optional(&["destination", "port"])?)?;
            u32::try_from(port).ok()
        })
    }
    fn sni(&self) -> Result<&[u8], Missing> {
        self.sni
            .get_or_init(|| match self.host.property(&["connection", "requested_server_name"]) {
                Ok(b) => Ok(b.unwrap_or_default()),
                Err(_) => Err(Missing("connection.requested_server_name (hostcall failed)")),
            })
            .as_deref()
            .map_err(|m| *m)
    }
    fn mtls(&self) -> Result<bool, Missing> {
        *self.mtls.get_or_init(|| match self.host.property(&["connection", "mtls"]) {
            Ok(None) => Ok(false),
            Ok(Some(b)) => b.first().map(|v| *v != 0).ok_or(Missing("connection.mtls (undecodable)")),
            Err(_) => Err(Missing("connection.mtls (hostcall failed)")),
        })
    }
    fn peer(&self) -> Result<PeerNames<'_>, Missing> {
        let (u, d, s) = self
            .peer
            .get_or_init(|| {
                let get = |p: &str| {
                    self.host
                        .property(&["connection", p])
                        .map_err(|_| Missing("the peer certificate (hostcall failed)"))
                };
                Ok((
                    get("uri_san_peer_certificate")?,
                    get("dns_san_peer_certificate")?,
                    get("subject_peer_certificate")?,
                ))
            })
            .as_ref()
            .map_err(|m| *m)?;
        Ok(PeerNames { uri_san: u.as_deref(), dns_san: d.as_deref(), subject: s.as_deref() })
    }
    /// From the `x-forwarded-client-cert` element of this connection ([`crate::peer_sans`]); a
    /// TCP connection has no such header and Envoy exposes no other list of SANs to wasm.
    fn peer_sans(&self) -> Result<&[Vec<u8>], Missing> {
        self.sans
            .get_or_init(|| {
                let first = self.peer()?;
                let (uri, dns) = (first.uri_san, first.dns_san);
                if self.single_san || (uri.is_none() && dns.is_none()) {
                    return Ok(Vec::new());
                }
                if self.tcp {
                    return Err(Missing(
                        "every SAN of the peer certificate (a TCP port sees only the first URI SAN and DNS SAN)",
                    ));
                }
                let digest = self
                    .host
                    .property(&["connection", "sha256_peer_certificate_digest"])
                    .map_err(|_| Missing("connection.sha256_peer_certificate_digest (hostcall failed)"))?
                    .unwrap_or_default();
                let mut result = Err(HEADERS_MISSING);
                self.host
                    .with_request_headers(&mut |all| {
                        let values: Vec<&[u8]> =
                            all.filter(|(k, _)| k.eq_ignore_ascii_case(XFCC.as_bytes())).map(|(_, v)| v).collect();
                        result = current_sans(&values, &digest, uri, dns).map_err(Missing);
                    })
                    .map_err(|_| HEADERS_MISSING)?;
                result
            })
            .as_deref()
            .map_err(|m| *m)
    }
    fn identity(&self) -> Result<Option<&RequestIdentity>, Missing> {
        if self.tcp {
            return Ok(None);
        }
        self.identity
            .get_or_init(|| match self.host.property(&[wasmesh_handover::AUTHN_IDENTITY]) {
                Err(_) => Err(Missing("the authn identity hand-over (hostcall failed)")),
                Ok(None) => Ok(None),
                Ok(Some(b)) if b.is_empty() => Ok(None),
                Ok(Some(b)) => wasmesh_handover::decode::<RequestIdentity>(&b)
                    .map(Some)
                    .ok_or(Missing("the authn identity hand-over (undecodable)")),
            })
            .as_ref()
            .map(Option::as_ref)
            .map_err(|m| *m)
    }
    fn metadata(&self) -> Result<&[MetadataEntry], Missing> {
        self.metadata
            .get_or_init(|| match self.host.property(&["metadata"]) {
                Err(_) => Err(Missing("dynamic metadata (hostcall failed)")),
                Ok(None) => Ok(Vec::new()),
                Ok(Some(b)) => decode_metadata(&b, self.metadata_keys).ok_or(Missing("dynamic metadata (undecodable)")),
            })
            .as_ref()
            .map(Vec::as_slice)
            .map_err(|m| *m)
    }
}
#[cfg(test)]
mod tests {
    //! The adapter's reading of Envoy, against a fake host: an input that is absent is absent,
    //! an input whose hostcall fails denies (`Reason::Missing`), and an evaluation makes no more
    //! hostcalls than the rules need.
    use super::*;
    use crate::{AuthzConfig, Reason};
    use serde_json::json;
    use std::cell::Cell;
    use std::collections::HashMap;

    /// A host whose properties and headers are given, and where chosen paths fail.
    #[derive(Default)]
    struct Fake {
        headers: Vec<(String, Vec<u8>)>,
        props: HashMap<String, Vec<u8>>,
        /// Property paths (joined with `.`) whose hostcall fails; `"headers"` fails the header calls.
        failing: Vec<&'static str>,
        calls: Cell<usize>,
    }

    impl Fake {
        fn request(path: &str) -> Fake {
            Fake {
                headers: vec![
                    (":method".into(), b"GET".to_vec()),
                    (":path".into(), path.into()),
                    (":authority".into(), b"example.com".to_vec()),
                ],
                ..Fake::default()
            }
        }
        fn prop(mut self, path: &str, v: &[u8]) -> Fake {
            self.props.insert(path.into(), v.to_vec());
            self
        }
        fn header(mut self, k: &str, v: &str) -> Fake {
            self.headers.push((k.into(), v.into()));
            self
        }
        fn failing(mut self, path: &'static str) -> Fake {
            self.failing.push(path);
            self
        }
        /// A single-SAN certificate, handed over in `x-forwarded-client-cert` as the HCM does.
        fn mtls(self, uri: &str) -> Fake {
            self.mtls_sans(&[uri])
        }
        /// A certificate with these URI SANs, as Envoy reports it: the first in the property,
        /// all in the HCM's `x-forwarded-client-cert` element.
        fn mtls_sans(self, uris: &[&str]) -> Fake {
            let element: String = uris.iter().map(|u| format!(";URI={u}")).collect();
            self.prop("connection.mtls", &[1])
                .prop("connection.uri_san_peer_certificate", uris.first().unwrap().as_bytes())
                .prop("connection.sha256_peer_certificate_digest", b"ab12")
                .header(XFCC, &format!("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=ab12{element}"))
        }
    }

    impl Host for Fake {
        fn with_request_headers(&self, f: &mut dyn FnMut(&mut HeaderPairs<'_>)) -> Result<(), HostFailure> {
            self.calls.set(self.calls.get() + 1);
            if self.failing.contains(&"headers") {
                return Err(HostFailure);
            }
            f(&mut self.headers.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())));
            Ok(())
        }
        fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostFailure> {
            self.calls.set(self.calls.get() + 1);
            if self.failing.contains(&"headers") {
                return Err(HostFailure);
            }
            Ok(self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
        }
        fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostFailure> {
            self.calls.set(self.calls.get() + 1);
            let key = path.join(".");
            if self.failing.contains(&key.as_str()) {
                return Err(HostFailure);
            }
            Ok(self.props.get(&key).cloned())
        }
    }

    fn authz(spec: serde_json::Value) -> Authz {
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "foo"}, "spec": spec}],
        });
        AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap()
    }

    fn allow(rule: serde_json::Value) -> Authz {
        authz(json!({"action": "ALLOW", "rules": [rule]}))
    }

    /// The verdict and the number of hostcalls it took.
    fn decide(a: &Authz, host: Fake) -> (bool, String, usize) {
        let inputs = HostView::new(host, a);
        let v = a.rbac(&inputs);
        let reason = match &v.reason {
            Reason::Missing(m) => format!("missing {}", m.0),
            other => format!("{other:?}"),
        };
        (v.allowed, reason, inputs.host().calls.get())
    }

    fn fails_closed(a: &Authz, host: Fake) {
        let (allowed, reason, _) = decide(a, host);
        assert!(!allowed && reason.starts_with("missing"), "want a fail-closed deny, got allowed={allowed} {reason}");
    }

    #[test]
    fn not_principals_absent_matches_unreadable_denies() {
        let a = allow(json!({"from": [{"source": {"notPrincipals": ["cluster.local/ns/foo/sa/bad"]}}]}));
        assert!(decide(&a, Fake::request("/")).0, "plaintext (mtls absent) matches notPrincipals, as in Istio");
        assert!(decide(&a, Fake::request("/").prop("connection.mtls", &[0])).0);
        assert!(decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/good")).0);
        assert!(!decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/bad")).0);
        fails_closed(&a, Fake::request("/").failing("connection.mtls"));
        fails_closed(&a, Fake::request("/").prop("connection.mtls", &[]));
        fails_closed(
            &a,
            Fake::request("/")
                .mtls("spiffe://cluster.local/ns/foo/sa/good")
                .failing("connection.uri_san_peer_certificate"),
        );
        fails_closed(
            &a,
            Fake::request("/")
                .mtls("spiffe://cluster.local/ns/foo/sa/good")
                .failing("connection.subject_peer_certificate"),
        );
    }

    #[test]
    fn peer_authentication_fails_closed_when_mtls_is_unreadable() {
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "foo"}, "spec": {"mtls": {"mode": "STRICT"}}}],
        });
        let a = AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap();
        let port = 8000u64.to_le_bytes();
        let ok = HostView::new(
            Fake::request("/").prop("destination.port", &port).mtls("spiffe://cluster.local/ns/foo/sa/x"),
            &a,
        );
        assert!(a.peer_authn(&ok).is_none());
        let broken = HostView::new(Fake::request("/").prop("destination.port", &port).failing("connection.mtls"), &a);
        let v = a.peer_authn(&broken).expect("denied");
        assert!(!v.allowed && matches!(v.reason, Reason::Missing(_)), "{v:?}");
    }

    #[test]
    fn sni_not_values_absent_matches_unreadable_denies() {
        let a = allow(json!({"when": [{"key": "connection.sni", "notValues": ["bad.example.com"]}]}));
        assert!(decide(&a, Fake::request("/")).0);
        assert!(!decide(&a, Fake::request("/").prop("connection.requested_server_name", b"bad.example.com")).0);
        fails_closed(&a, Fake::request("/").failing("connection.requested_server_name"));
    }

    #[test]
    fn not_request_principals_absent_matches_unreadable_denies() {
        let a = allow(json!({"from": [{"source": {"notRequestPrincipals": ["https://issuer/bad"]}}]}));
        assert!(decide(&a, Fake::request("/")).0, "no token matches notRequestPrincipals");
        fails_closed(&a, Fake::request("/").failing(wasmesh_handover::AUTHN_IDENTITY));
        fails_closed(&a, Fake::request("/").prop(wasmesh_handover::AUTHN_IDENTITY, b"\xff not a hand-over"));
    }

    #[test]
    fn headers_absent_match_not_values_unreadable_headers_deny() {
        let a = allow(json!({"when": [{"key": "request.headers[x-user]", "notValues": ["mallory"]}]}));
        assert!(decide(&a, Fake::request("/")).0);
        assert!(!decide(&a, Fake::request("/").header("x-user", "mallory")).0);
        fails_closed(&a, Fake::request("/").header("x-user", "mallory").failing("headers"));
        let paths = allow(
            json!({"to": [{"operation": {"notPaths": ["/admin"], "notHosts": ["evil.example.com"], "notMethods": ["DELETE"]}}]}),
        );
        assert!(decide(&paths, Fake::request("/x")).0);
        assert!(!decide(&paths, Fake::request("/admin")).0);
        fails_closed(&paths, Fake::request("/admin").failing("headers"));
    }

    #[test]
    fn metadata_unreadable_denies() {
        let a =
            allow(json!({"when": [{"key": "experimental.envoy.filters.http.wasmesh[role]", "notValues": ["guest"]}]}));
        assert!(decide(&a, Fake::request("/")).0, "no metadata matches notValues");
        fails_closed(&a, Fake::request("/").failing("metadata"));
    }

    /// The network filter (`stage: tcp`): no request headers and no JWT identity are read (a
    /// connection has none), the source address is the connection's peer, and a failing
    /// certificate hostcall still denies.
    #[test]
    fn tcp_reads_the_connection_only() {
        let tcp = |spec: serde_json::Value| {
            let cfg = json!({
                "workload": {"name": "httpbin", "namespace": "foo"},
                "stage": "tcp",
                "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": "p", "namespace": "foo"}, "spec": spec}],
            });
            AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap()
        };
        let conn = || {
            let mut f =
                Fake::default().failing("headers").failing(wasmesh_handover::AUTHN_IDENTITY).failing(PEER_ADDRESS_KEY);
            f.props.insert("source.address".into(), b"10.1.2.3:5555".to_vec());
            f
        };
        let a = tcp(
            json!({"action": "ALLOW", "rules": [{"from": [{"source": {"ipBlocks": ["10.1.0.0/16"], "notPrincipals": ["cluster.local/ns/foo/sa/bad"]}}]}]}),
        );
        let (allowed, reason, _) = decide(&a, conn());
        assert!(allowed, "source.ip is the connection's peer; no header or identity hostcall: {reason}");
        assert!(!decide(&a, conn().mtls("spiffe://cluster.local/ns/foo/sa/bad")).0);
        fails_closed(&a, conn().failing("connection.uri_san_peer_certificate").prop("connection.mtls", &[1]));
        // DENY with an HTTP-only field: removed on TCP, the rest of the rule matches.
        let d = tcp(
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["10.1.2.3"]}}], "to": [{"operation": {"methods": ["POST"]}}]}]}),
        );
        assert!(!decide(&d, conn()).0);
        // A network filter sees only the first URI SAN: a DENY on a principal that the first SAN
        // does not match could be matched by another SAN, so it fails closed; one it matches denies.
        let p = tcp(
            json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/bad"]}}]}]}),
        );
        fails_closed(&p, conn().mtls("spiffe://cluster.local/ns/foo/sa/good"));
        let (allowed, reason, _) = decide(&p, conn().mtls("spiffe://cluster.local/ns/foo/sa/bad"));
        assert!(!allowed && reason.contains("Denied"), "{reason}");
        assert!(decide(&p, conn()).0, "plaintext: no certificate, nothing to know");
        // `singleSanPeers` (a mesh CA that issues one URI SAN): the first SAN is all of them.
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"}, "stage": "tcp", "singleSanPeers": true,
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "foo"},
                "spec": {"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/bad"]}}]}]}}],
        });
        let single = AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap();
        assert!(decide(&single, conn().mtls("spiffe://cluster.local/ns/foo/sa/good")).0);
        assert!(!decide(&single, conn().mtls("spiffe://cluster.local/ns/foo/sa/bad")).0);
    }

    /// Envoy's `authenticated` matcher tries every URI SAN (and DNS SAN): a certificate
    /// [allow, deny] is denied by a DENY on `deny` and allowed by an ALLOW on either; without a
    /// trustworthy list of SANs (no header, a forged one, a TCP port) an outcome that depends on
    /// the other SANs fails closed, while one the first SAN decides does not.
    #[test]
    fn every_san_of_the_peer_certificate_is_a_principal() {
        let both = || {
            Fake::request("/")
                .mtls_sans(&["spiffe://cluster.local/ns/foo/sa/allow", "spiffe://cluster.local/ns/foo/sa/deny"])
        };
        let deny = authz(
            json!({"action": "DENY", "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/deny"]}}]}]}),
        );
        let (allowed, reason, _) = decide(&deny, both());
        assert!(!allowed && reason.contains("Denied"), "{reason}");
        assert!(decide(&deny, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/allow")).0);
        let allow_second = allow(json!({"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/deny"]}}]}));
        assert!(decide(&allow_second, both()).0);
        let not_second = allow(
            json!({"from": [{"source": {"notNamespaces": ["other"], "notPrincipals": ["cluster.local/ns/foo/sa/deny"]}}]}),
        );
        assert!(!decide(&not_second, both()).0);
        // No hand-over: the first SAN decides what it can, the rest fails closed.
        let first_only = || {
            Fake::request("/")
                .prop("connection.mtls", &[1])
                .prop("connection.uri_san_peer_certificate", b"spiffe://cluster.local/ns/foo/sa/allow")
        };
        fails_closed(&deny, first_only());
        assert!(!decide(&allow_second, first_only()).0);
        let allow_first = allow(json!({"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/allow"]}}]}));
        assert!(decide(&allow_first, first_only()).0, "the first SAN matches: nothing else is needed");
        // An ALLOW rule that matches whatever the other SANs are still allows.
        let two_rules = authz(json!({"action": "ALLOW", "rules": [
            {"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/x"]}}]},
            {"to": [{"operation": {"paths": ["/public"]}}]}]}));
        let public = Fake::request("/public")
            .prop("connection.mtls", &[1])
            .prop("connection.uri_san_peer_certificate", b"spiffe://cluster.local/ns/foo/sa/allow");
        assert!(decide(&two_rules, public).0);
        // A forged element naming another digest is not this connection's.
        let forged = first_only()
            .prop("connection.sha256_peer_certificate_digest", b"ab12")
            .header(XFCC, "Hash=ffff;URI=spiffe://cluster.local/ns/foo/sa/allow");
        fails_closed(&deny, forged);
    }

    #[test]
    fn unread_inputs_cost_nothing_and_cannot_fail_the_request() {
        // A paths-only policy reads `:path` with one hostcall; the other inputs are never read,
        // so their failing hostcalls do not matter.
        let a = allow(json!({"to": [{"operation": {"paths": ["/ok"]}}]}));
        let mut host = Fake::request("/ok");
        for p in ["connection.mtls", "connection.requested_server_name", "metadata", wasmesh_handover::AUTHN_IDENTITY] {
            host = host.failing(p);
        }
        let (allowed, _, calls) = decide(&a, host);
        assert!(allowed);
        assert_eq!(calls, 1);
        // Peer names: one call for mtls, three for the certificate, read once for all rules.
        let a = allow(
            json!({"from": [{"source": {"principals": ["cluster.local/ns/foo/sa/a", "cluster.local/ns/foo/sa/b"]}}, {"source": {"notNamespaces": ["x"]}}]}),
        );
        let (allowed, _, calls) = decide(&a, Fake::request("/").mtls("spiffe://cluster.local/ns/foo/sa/b"));
        assert!(allowed);
        assert_eq!(calls, 4);
    }

    /// One by one while one pseudo-header and nothing else of the request is read; the map once
    /// a second pseudo-header, another header or a CUSTOM check (all headers) is.
    #[test]
    fn few_pseudo_headers_are_read_one_by_one() {
        let op = |o: serde_json::Value| allow(json!({"to": [{"operation": o}]}));
        assert!(op(json!({"paths": ["/a"]})).reads_few_headers());
        assert!(op(json!({"notPaths": ["/a"]})).reads_few_headers());
        assert!(!op(json!({"methods": ["GET"], "notPaths": ["/a"]})).reads_few_headers());
        assert!(allow(json!({"from": [{"source": {"namespaces": ["bar"]}}]})).reads_few_headers());
        assert!(!op(json!({"hosts": ["a"], "paths": ["/a"]})).reads_few_headers());
        assert!(!allow(json!({"when": [{"key": "request.headers[x-a]", "values": ["1"]}]})).reads_few_headers());
        let cfg = json!({
            "workload": {"name": "httpbin", "namespace": "foo"},
            "extensionProviders": [{"name": "ext", "envoyExtAuthzHttp": {"service": "authz.foo.svc.cluster.local", "port": 9000}}],
            "resources": [{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "c", "namespace": "foo"},
                "spec": {"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}}],
        });
        let custom = AuthzConfig::compile_json(cfg.to_string().as_bytes()).unwrap();
        assert!(!custom.reads_few_headers(), "a CUSTOM check forwards every header");
    }
}
