//! TCP services in real Envoy through `wasmeshctl envoy`'s bootstrap builder: a ServiceEntry
//! port with `protocol: TCP` behind a server sidecar (inbound TCP listener: TCP stats filter,
//! network authorization filter, `tcp_proxy`), clients with `--tcp-outbound` listeners, STRICT
//! mTLS with certificates from `wasmeshctl certs`, and AuthorizationPolicy with Istio's TCP
//! semantics: a refused connection is closed and none of its bytes reach the app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wasmesh_e2e::mtls::{resources, MeshCa};
use wasmesh_e2e::stats::{self as st, TcpEcho};
use wasmesh_e2e::{free_port, Mesh};

const SERVICE: &str = "tcp-echo.default.svc.cluster.local";
const SERVER: &str = "default/tcp-echo-v1";
const PREFIX: &[u8] = b"echo:";

/// The echo service (TCP port 9000 → workload port `port`), three clients with their own
/// identities, STRICT mTLS mesh-wide, and `extra` (the policies).
fn mesh_yaml(port: u16, extra: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo, namespace: default}}
spec:
  hosts: [{SERVICE}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp-echo, protocol: TCP}}]
  workloadSelector: {{labels: {{app: tcp-echo}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: tcp-echo-v1, namespace: default}}
spec: {{address: 127.0.0.1, ports: {{tcp-echo: {port}}}, labels: {{app: tcp-echo, version: v1}}, serviceAccount: tcp-echo}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: sleep, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: sleep, version: v1}}, serviceAccount: sleep}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: intruder, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: intruder}}, serviceAccount: intruder}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: poster, namespace: default}}
spec: {{address: 127.0.0.1, labels: {{app: poster}}, serviceAccount: poster}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
{extra}"#
    )
}

struct World {
    // Field order: the Envoys stop before the echo and the certificates go.
    mesh: Mesh,
    echo: TcpEcho,
    _ca: MeshCa,
}

impl World {
    /// The server sidecar in front of a TCP echo, and a client sidecar for each of `clients`
    /// with an outbound TCP listener to the echo service. `WORKLOAD_PORT` in `policies` is the
    /// server's workload port.
    fn start(policies: &str, clients: &[&str]) -> World {
        let port = free_port();
        let yaml = mesh_yaml(port, &policies.replace("WORKLOAD_PORT", &port.to_string()));
        let ca = MeshCa::for_resources(&resources(&yaml));
        let echo = TcpEcho::start(PREFIX);
        let mut b = Mesh::builder().yaml(&yaml).keep_ports().certs_dir(ca.path()).sidecar_to_port(SERVER, echo.port);
        for c in clients {
            b = b.tcp_client(c).tcp_outbound(c, "tcp-echo", 9000);
        }
        World { mesh: b.start(), echo, _ca: ca }
    }

    fn port_of(&self, client: &str) -> u16 {
        self.mesh.tcp_outbound_port(client, "tcp-echo", 9000)
    }

    /// A conversation from `client`'s app through both sidecars to the echo, every byte checked.
    fn talk(&self, client: &str, messages: &[&[u8]]) -> (usize, usize) {
        st::tcp_conversation_exact(self.port_of(client), b"", messages, PREFIX)
    }

    /// `client` connects, writes `payload` and must see its connection closed without a byte
    /// back (within a bound).
    fn refused(&self, client: &str, payload: &[u8]) {
        let port = self.port_of(client);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(payload).unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
                    ) =>
                {
                    break
                }
                Err(e) => panic!(
                    "{client}: connection not closed after {:?} ({e}); got back {:?}; server log:\n{}",
                    start.elapsed(),
                    String::from_utf8_lossy(&got),
                    self.mesh.envoy(SERVER).failure_summary()
                ),
            }
        }
        assert!(got.is_empty(), "{client} was refused but got bytes back: {:?}", String::from_utf8_lossy(&got));
    }

    /// What the echo app has read, all connections together.
    fn app_received(&self) -> String {
        String::from_utf8_lossy(&self.echo.received()).into_owned()
    }

    fn no_panics(&self) {
        for (name, e) in self.mesh.envoys() {
            assert!(
                e.log().lines().all(|l| !l.contains("panicked")),
                "a wasm VM panicked in {name}:\n{}",
                e.failure_summary()
            );
        }
    }
}

fn allow_sleep_only() -> String {
    "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: sleep-only, namespace: default}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]}]\n".to_string()
}

/// (a) bytes round-trip exactly client sidecar → server sidecar → app and back; (b) an ALLOW
/// by principal lets `sleep` in and closes `intruder`'s connection before any of its bytes
/// reach the app; (d) `istio_tcp_*` on both sides name both workloads (TCP metadata exchange
/// over mTLS) and count the application's bytes.
#[test]
fn tcp_through_sidecars_with_mtls_allow_by_principal_and_metrics() {
    let w = World::start(&allow_sleep_only(), &["default/sleep", "default/intruder"]);
    let messages: [&[u8]; 3] = [b"hello", b"wasmesh tcp", &[0x00, 0xff, 0x10, b'\n', 0x7f]];
    let (mut sent, mut received) = (0, 0);
    for _ in 0..3 {
        let (s, r) = w.talk("default/sleep", &messages);
        sent += s;
        received += r;
    }
    let expected_app: Vec<u8> = std::iter::repeat_n(messages.concat(), 3).flatten().collect();
    assert_eq!(w.echo.received(), expected_app, "the app read exactly the client's bytes (no preamble, nothing else)");

    w.refused("default/intruder", b"INTRUDER-BYTES");
    // A later allowed conversation: had the intruder's bytes been passed on, the app would have
    // read them before these.
    let (s, r) = w.talk("default/sleep", &[b"after"]);
    sent += s;
    received += r;
    assert!(
        !w.app_received().contains("INTRUDER"),
        "the refused connection's bytes reached the app: {:?}",
        w.app_received()
    );
    assert_eq!(w.echo.received().len(), sent, "the app read the allowed bytes and nothing else");

    let server = w.mesh.envoy(SERVER);
    let client = w.mesh.envoy("default/sleep");
    let from_sleep = [
        ("reporter", "destination"),
        ("source_workload", "sleep"),
        ("source_app", "sleep"),
        ("source_workload_namespace", "default"),
        ("source_principal", "spiffe://cluster.local/ns/default/sa/sleep"),
        ("destination_workload", "tcp-echo-v1"),
        ("destination_app", "tcp-echo"),
        ("destination_service", SERVICE),
        ("connection_security_policy", "mutual_tls"),
    ];
    let to_echo = [
        ("reporter", "source"),
        ("source_workload", "sleep"),
        ("destination_workload", "tcp-echo-v1"),
        ("destination_app", "tcp-echo"),
        ("destination_version", "v1"),
        ("destination_workload_namespace", "default"),
        ("destination_service", SERVICE),
        ("destination_principal", "spiffe://cluster.local/ns/default/sa/tcp-echo"),
    ];
    for (envoy, labels) in [(server, &from_sleep[..]), (client, &to_echo[..])] {
        st::wait_series(envoy, "istio_tcp_connections_opened_total", labels, 4.0);
        st::wait_series(envoy, "istio_tcp_connections_closed_total", labels, 4.0);
        // received: from the downstream; sent: back to it. Preambles are not counted.
        st::wait_series(envoy, "istio_tcp_received_bytes_total", labels, sent as f64);
        st::wait_series(envoy, "istio_tcp_sent_bytes_total", labels, received as f64);
    }
    // The refused connection is counted too (the stats filter sees it before authz closes it),
    // with the peer named.
    let from_intruder =
        [("reporter", "destination"), ("source_workload", "intruder"), ("destination_workload", "tcp-echo-v1")];
    st::wait_series(server, "istio_tcp_connections_opened_total", &from_intruder, 1.0);
    st::wait_series(server, "istio_tcp_connections_closed_total", &from_intruder, 1.0);
    st::wait_series(
        server,
        "wasmesh_authz_policy_allowed",
        &[("authz_rule", "ns[default]-policy[sleep-only]-rule[0]")],
        4.0,
    );
    w.no_panics();
}

/// (c) DENY with L4 fields (principals + ipBlocks + ports) refuses the matching client; rules
/// whose L4 fields do not match (another port, notIpBlocks of loopback) refuse nobody; a DENY
/// rule with an HTTP-only field (`methods`) loses it on TCP and so matches the connection, as
/// in Istio.
#[test]
fn tcp_deny_by_l4_fields_and_http_only_fields_in_deny_rules() {
    let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-l4, namespace: default}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  action: DENY\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/intruder], ipBlocks: [127.0.0.1/32]}}]\n    to: [{operation: {ports: ['WORKLOAD_PORT']}}]\n  - to: [{operation: {ports: ['1']}}]\n  - from: [{source: {notIpBlocks: [127.0.0.0/8]}}]\n  - from: [{source: {principals: [cluster.local/ns/default/sa/poster]}}]\n    to: [{operation: {methods: [POST]}}]\n";
    let w = World::start(policy, &["default/sleep", "default/intruder", "default/poster"]);
    let (sent, _) = w.talk("default/sleep", &[b"hello"]);
    w.refused("default/intruder", b"INTRUDER-BYTES");
    w.refused("default/poster", b"POSTER-BYTES");
    let (s2, _) = w.talk("default/sleep", &[b"again"]);
    let app = w.app_received();
    assert_eq!(app, "helloagain", "only sleep's bytes reached the app");
    assert_eq!(w.echo.received().len(), sent + s2);
    let server = w.mesh.envoy(SERVER);
    st::wait_series(
        server,
        "wasmesh_authz_policy_denied",
        &[("authz_rule", "ns[default]-policy[deny-l4]-rule[0]")],
        1.0,
    );
    st::wait_series(
        server,
        "wasmesh_authz_policy_denied",
        &[("authz_rule", "ns[default]-policy[deny-l4]-rule[3]")],
        1.0,
    );
    w.no_panics();
}

/// (c) An ALLOW rule with an HTTP-only field (`methods`) is dropped on a TCP port: the ALLOW
/// policy is left without rules and every connection is refused, the one from the named
/// principal too.
#[test]
fn tcp_allow_rule_with_methods_matches_nothing() {
    let policy = "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: http-only, namespace: default}\nspec:\n  selector: {matchLabels: {app: tcp-echo}}\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}], to: [{operation: {methods: [GET]}}]}]\n";
    let w = World::start(policy, &["default/sleep"]);
    w.refused("default/sleep", b"GET / HTTP/1.1\r\n\r\n");
    w.refused("default/sleep", b"SECOND");
    let server = w.mesh.envoy(SERVER);
    // Both refusals are the ALLOW policy's default deny (no rule matched).
    st::wait_series(
        server,
        "istio_tcp_connections_closed_total",
        &[("reporter", "destination"), ("source_workload", "sleep")],
        2.0,
    );
    let start = Instant::now();
    let mut denied = server.stat("wasmcustom.wasmesh.authz.denied").unwrap_or(0);
    while denied < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        denied = server.stat("wasmcustom.wasmesh.authz.denied").unwrap_or(0);
    }
    assert_eq!(denied, 2, "two connections denied by the filter");
    assert!(w.app_received().is_empty(), "nothing reached the app: {:?}", w.app_received());
    w.no_panics();
}
