//! Whole-pipeline tests: configuration JSON → compiled stats → recorded stat names.

use super::*;
use crate::cache::tests::FakeHost;
use crate::peer_cache::CachedPeer;
use serde_json::json;

fn workload(name: &str, app: &str, version: &str) -> serde_json::Value {
    json!({"name": name, "namespace": "bookinfo", "labels": {"app": app, "version": version}})
}

fn compile(cfg: serde_json::Value) -> Result<Stats, CompileError> {
    StatsConfig::compile_json(cfg.to_string().as_bytes())
}

fn telemetry(spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
           "metadata": {"name": "t", "namespace": "istio-system"}, "spec": spec})
}

#[test]
fn records_istio_names_and_label_order() {
    let stats = compile(json!({"workload": workload("reviews-v2", "reviews", "v2"), "direction": "inbound",
        "services": [{"host": "reviews.bookinfo.svc.cluster.local"}]}))
    .unwrap();
    assert_eq!(stats.reporter, Reporter::Destination);
    let peer = peer::decode_peer(
        LocalInfo::from_workload(&serde_json::from_value(workload("productpage-v1", "productpage", "v1")).unwrap())
            .header_value()
            .as_bytes(),
        None,
    )
    .unwrap();
    let svc = stats.service_for_cluster("inbound|9080||");
    let mut f = Facts::new(Protocol::Http);
    f.response_code = 200;
    f.peer = Some(&peer);
    f.service = svc.as_ref();
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(100);
    let mut key = String::new();
    let m = HttpMeasures {
        duration_ms: Some(7),
        request_bytes: Some(100),
        response_bytes: Some(250),
        ..Default::default()
    };
    for _ in 0..3 {
        stats.record_http(&mut cache, &mut host, &f, 1, &[], &m, &mut key);
    }
    assert_eq!(host.defines, 4, "four HTTP metrics, defined once each");
    let expected_prefix = "reporter=.=destination;.;source_workload=.=productpage-v1;.;\
source_canonical_service=.=productpage;.;source_canonical_revision=.=v1;.;\
source_workload_namespace=.=bookinfo;.;source_principal=.=unknown;.;source_app=.=productpage;.;\
source_version=.=v1;.;source_cluster=.=Kubernetes;.;destination_workload=.=reviews-v2;.;\
destination_workload_namespace=.=bookinfo;.;destination_principal=.=unknown;.;\
destination_app=.=reviews;.;destination_version=.=v2;.;\
destination_service=.=reviews.bookinfo.svc.cluster.local;.;destination_canonical_service=.=reviews;.;\
destination_canonical_revision=.=v2;.;destination_service_name=.=reviews;.;\
destination_service_namespace=.=bookinfo;.;destination_cluster=.=Kubernetes;.;\
request_protocol=.=http;.;response_code=.=200;.;grpc_response_status=.=;.;response_flags=.=-;.;\
connection_security_policy=.=none;.;";
    assert_eq!(host.counters[&format!("{expected_prefix}istio_requests_total")], 3);
    assert_eq!(host.samples[&format!("{expected_prefix}istio_request_duration_milliseconds")], vec![7; 3]);
    assert_eq!(host.samples[&format!("{expected_prefix}istio_request_bytes")], vec![100; 3]);
    assert_eq!(host.samples[&format!("{expected_prefix}istio_response_bytes")], vec![250; 3]);
}

#[test]
fn grpc_message_counts_only_for_grpc() {
    let stats = compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound"})).unwrap();
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(100);
    let mut key = String::new();
    let m = HttpMeasures {
        grpc_messages: Some(crate::grpc::GrpcMessages { request: 2, response: 3 }),
        ..Default::default()
    };
    let mut f = Facts::new(Protocol::Http);
    stats.record_http(&mut cache, &mut host, &f, 1, &[], &m, &mut key);
    assert!(host.counters.keys().all(|k| !k.contains("messages")));
    f.protocol = Protocol::Grpc;
    f.grpc_status = Some(0);
    stats.record_http(&mut cache, &mut host, &f, 1, &[], &m, &mut key);
    let req = host.counters.iter().find(|(k, _)| k.ends_with("istio_request_messages_total")).unwrap();
    assert_eq!(*req.1, 2);
    assert!(req.0.contains("request_protocol=.=grpc;.;"));
    assert!(req.0.contains("grpc_response_status=.=0;.;"));
    let resp = host.counters.iter().find(|(k, _)| k.ends_with("istio_response_messages_total")).unwrap();
    assert_eq!(*resp.1, 3);
    // Without the `grpc_stats` filter state nothing is added (Istio's stats filter adds nothing).
    let before = host.counters.clone();
    let without = HttpMeasures { grpc_messages: None, ..m };
    stats.record_http(&mut cache, &mut host, &f, 1, &[], &without, &mut key);
    for (k, v) in host.counters.iter().filter(|(k, _)| k.contains("messages_total")) {
        assert_eq!(Some(v), before.get(k), "{k}");
    }
    assert!(host.counters.iter().any(|(k, v)| k.ends_with("istio_requests_total") && before.get(k) != Some(v)));
}

#[test]
fn overrides_change_the_recorded_names() {
    let t = telemetry(json!({"metrics": [{"overrides": [
        {"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {
            "request_host": {"value": "request.host"},
            "user": {"value": "request.headers['x-user']"},
            "response_flags": {"operation": "REMOVE"},
            "source_app": {"value": "'fixed'"}}},
        {"match": {"metric": "REQUEST_SIZE"}, "disabled": true}
    ]}]}));
    let stats =
        compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound", "resources": [t]})).unwrap();
    assert_eq!(stats.exprs_needed().len(), 3);
    let values = stats.evaluate(|path| match path.join(".").as_str() {
        "request.host" => Some(b"svc:80".to_vec()),
        _ => None,
    });
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(100);
    let mut key = String::new();
    let m =
        HttpMeasures { duration_ms: Some(1), request_bytes: Some(1), response_bytes: Some(1), ..Default::default() };
    stats.record_http(&mut cache, &mut host, &Facts::new(Protocol::Http), 0, &values, &m, &mut key);
    let count = host.counters.keys().find(|k| k.ends_with("istio_requests_total")).unwrap();
    assert!(count.contains("source_app=.=fixed;.;"), "{count}");
    assert!(!count.contains("response_flags"), "{count}");
    assert!(count.ends_with("request_host=.=svc:80;.;user=.=unknown;.;istio_requests_total"), "{count}");
    assert!(host.samples.keys().all(|k| !k.ends_with("istio_request_bytes")), "REQUEST_SIZE disabled");
    let dur = host.samples.keys().find(|k| k.ends_with("istio_request_duration_milliseconds")).unwrap();
    assert!(dur.contains("source_app=.=a;.;") && dur.contains("response_flags=.=-;.;"), "{dur}");
    // Two plans → two groups: request count alone, the rest together.
    assert_eq!(cache.label_sets(), 2);
}

#[test]
fn tcp_keys_have_tcp_labels() {
    let stats =
        compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "protocol": "tcp"})).unwrap();
    let mut f = Facts::new(Protocol::Tcp);
    f.peer_principal = "spiffe://cluster.local/ns/x/sa/y";
    f.local_principal = "spiffe://cluster.local/ns/bookinfo/sa/a";
    let keys = stats.tcp_keys(&f, &[]);
    assert_eq!(keys.len(), 1);
    let TcpKey { metrics, key, overflow } = &keys[0];
    assert_eq!(metrics.len(), 4);
    assert!(overflow.contains("source_workload_namespace=.=overflow;.;"), "{overflow}");
    assert!(key.contains("request_protocol=.=tcp;.;response_flags=.=-;.;connection_security_policy=.=mutual_tls;.;"));
    assert!(!key.contains("response_code"));
    assert!(key.contains("source_workload_namespace=.=x;.;"));
}

#[test]
fn configuration_errors_are_reported() {
    let e = compile(json!({"workload": workload("a", "a", "v1"), "direction": "sideways"})).unwrap_err();
    assert!(e.to_string().contains("stats configuration"), "{e}");
    let e = compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "extra": 1})).unwrap_err();
    assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    let e = compile(json!({"workload": workload("a", "a", "v1"), "direction": "gateway"})).unwrap_err();
    assert!(e.to_string().contains("does not fit workload mode"), "{e}");
    let bad = telemetry(json!({"metrics": [{"overrides": [{"tagOverrides": {"x": {"value": "1 + 1"}}}]}]}));
    let e =
        compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "resources": [bad]})).unwrap_err();
    assert!(
        e.to_string().contains("Telemetry istio-system/t: spec.metrics[0].overrides[0].tagOverrides.x.value"),
        "{e}"
    );
}

#[test]
fn gateway_reports_as_source_with_the_cluster_service() {
    let mut w = workload("ingressgateway", "istio-ingressgateway", "");
    w["mode"] = json!("gateway");
    w["namespace"] = json!("istio-system");
    let stats = compile(json!({"workload": w, "direction": "gateway"})).unwrap();
    assert_eq!(stats.reporter, Reporter::Source);
    let mut f = Facts::new(Protocol::Http);
    let svc = stats.service_for_cluster("outbound|9080||productpage.bookinfo.svc.cluster.local");
    let v = stats.labels(&f);
    assert_eq!(v[Label::DestinationService as usize], "unknown");
    f.service = svc.as_ref();
    let v = stats.labels(&f);
    assert_eq!(v[Label::DestinationService as usize], "productpage.bookinfo.svc.cluster.local");
    assert_eq!(v[Label::SourceWorkload as usize], "ingressgateway");
    assert_eq!(v[Label::Reporter as usize], "source");
}

#[test]
fn istio_build_is_encoded_with_its_two_labels() {
    assert_eq!(istio_build_metric("0.1.0"), "component=.=proxy;.;tag=.=0.1.0;.;istio_build");
}

#[test]
fn stats_tags_cover_standard_and_custom_labels() {
    let t =
        telemetry(json!({"metrics": [{"overrides": [{"tagOverrides": {"request_host": {"value": "request.host"}}}]}]}));
    let items = wasmesh_istio::resources_from_values(vec![t]).unwrap();
    let tags = stats_tags(&Resources { items });
    assert_eq!(tags.len(), 28);
    assert_eq!(tags[0].0, "reporter");
    assert_eq!((tags[25].0.as_str(), tags[26].0.as_str()), ("component", "tag"));
    assert_eq!(tags[27], ("request_host".to_string(), r"(?:\.|;\.;)(request_host=\.=(.*?);\.;)".to_string()));
}

#[test]
fn the_fast_path_keys_on_the_peer_and_the_response() {
    let stats = compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound"})).unwrap();
    let mut peers = PeerCache::default();
    let h = |name: &str| {
        LocalInfo::from_workload(&serde_json::from_value(workload(name, name, "v1")).unwrap()).header_value()
    };
    let (pb, pc) = (h("b"), h("c"));
    let b = peers.get_or_decode(pb.as_bytes(), None).unwrap();
    let c = peers.get_or_decode(pc.as_bytes(), None).unwrap();
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(100);
    let mut key = String::new();
    let m =
        HttpMeasures { duration_ms: Some(1), request_bytes: Some(1), response_bytes: Some(1), ..Default::default() };
    let mut record = |peer: &CachedPeer, id: u64, code: u32| {
        let mut f = Facts::new(Protocol::Http);
        f.peer = Some(&peer.peer);
        f.response_code = code;
        stats.record_http(&mut cache, &mut host, &f, id, &[], &m, &mut key);
    };
    for _ in 0..3 {
        record(&b, b.id, 200);
        record(&c, c.id, 200);
        record(&b, b.id, 503);
        record(&c, 0, 200); // no id: the slow path, same series
    }
    let count = |needle: &str, code: &str| {
        host.counters
            .iter()
            .filter(|(k, _)| {
                k.contains(&format!("source_workload=.={needle};.;"))
                    && k.contains(&format!("response_code=.={code};.;"))
            })
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    assert_eq!(count("b", "200"), 3);
    assert_eq!(count("b", "503"), 3);
    assert_eq!(count("c", "200"), 6);
    assert_eq!(cache.label_sets(), 3);
    assert_eq!(host.defines, 12, "3 label sets × 4 metrics, each defined once");
}

#[test]
fn external_hosts_and_no_route_flags() {
    let stats = compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound",
        "externalHosts": ["httpbin.org", "*.googleapis.com"]}))
    .unwrap();
    assert!(stats.has_external_hosts());
    for ext in
        [&b"httpbin.org"[..], b"HTTPBIN.org:443", b"httpbin.org.", b"storage.googleapis.com", b"a.b.googleapis.com:80"]
    {
        assert!(stats.is_external_authority(ext), "{}", String::from_utf8_lossy(ext));
    }
    for mesh in [&b"reviews:9080"[..], b"googleapis.com", b"nothttpbin.org", b"[::1]:80", b"\xff\xfe"] {
        assert!(!stats.is_external_authority(mesh), "{}", String::from_utf8_lossy(mesh));
    }
    assert_eq!(stats.effective_flags(404, "", 0), 1 << 8);
    assert_eq!(crate::flags::short_string(stats.effective_flags(404, "", 0), crate::labels::Protocol::Http), "NR");
    assert_eq!(stats.effective_flags(404, "outbound|80||x", 0), 0, "an upstream's own 404");
    assert_eq!(stats.effective_flags(503, "", 1 << 5), 1 << 5);
    let inbound = compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound"})).unwrap();
    assert_eq!(inbound.effective_flags(404, "", 0), 0);
    assert!(!inbound.has_external_hosts());
    let e = compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound", "externalHosts": ["a/b", "x.*.com", "é*"]})).unwrap_err();
    assert!(
        ["externalHosts[0]", "externalHosts[1]", "externalHosts[2]"].iter().all(|f| e.to_string().contains(f)),
        "{e}"
    );
}

#[test]
fn tcp_peer_exchange_config() {
    let stats = compile(
        json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "protocol": "tcp", "peerExchange": true}),
    )
    .unwrap();
    assert!(stats.peer_exchange);
    assert_eq!(&stats.preamble[..4], &exchange::MAGIC.to_be_bytes());
    let peer = exchange::decode_body(&stats.preamble[exchange::HEADER_LEN..]).unwrap();
    assert_eq!((peer.workload.as_str(), peer.namespace.as_str(), peer.app.as_str()), ("a", "bookinfo", "a"));
    // Off by default, and then no preamble is built.
    let off =
        compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound", "protocol": "tcp"})).unwrap();
    assert!(!off.peer_exchange && off.preamble.is_empty());
    // HTTP filters exchange headers, not preambles.
    let e = compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "peerExchange": true}))
        .unwrap_err();
    assert!(e.to_string().contains("peerExchange is the TCP metadata exchange and needs protocol \"tcp\""), "{e}");
    let e = compile(
        json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "protocol": "tcp", "peerExchange": "yes"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("invalid type: string \"yes\", expected a boolean"), "{e}");
    let e = compile(
        json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "protocol": "tcp", "peerExchnage": true}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `peerExchnage`"), "{e}");
}

#[test]
fn exchanged_tcp_peer_fills_the_same_labels_as_http() {
    // Server side: the client's preamble names the source.
    let client = compile(json!({"workload": workload("tcp-client-v1", "tcp-client", "v1"), "direction": "outbound", "protocol": "tcp", "peerExchange": true}))
        .unwrap();
    let server = compile(json!({"workload": workload("tcp-echo-v1", "tcp-echo", "v1"), "direction": "inbound", "protocol": "tcp", "peerExchange": true}))
        .unwrap();
    let from_client = exchange::decode_body(&client.preamble[exchange::HEADER_LEN..]).unwrap();
    let mut f = Facts::new(Protocol::Tcp);
    f.peer = Some(&from_client);
    let key = &server.tcp_keys(&f, &[])[0].key;
    for part in [
        "reporter=.=destination;",
        "source_workload=.=tcp-client-v1;",
        "source_app=.=tcp-client;",
        "source_version=.=v1;",
        "source_workload_namespace=.=bookinfo;",
        "destination_workload=.=tcp-echo-v1;",
    ] {
        assert!(key.contains(part), "{part} in {key}");
    }
    // Client side: the server's preamble names the destination.
    let from_server = exchange::decode_body(&server.preamble[exchange::HEADER_LEN..]).unwrap();
    let mut f = Facts::new(Protocol::Tcp);
    f.peer = Some(&from_server);
    let key = &client.tcp_keys(&f, &[])[0].key;
    for part in [
        "reporter=.=source;",
        "source_workload=.=tcp-client-v1;",
        "destination_workload=.=tcp-echo-v1;",
        "destination_app=.=tcp-echo;",
        "destination_canonical_service=.=tcp-echo;",
    ] {
        assert!(key.contains(part), "{part} in {key}");
    }
}

#[test]
fn the_peer_is_handed_to_later_filters_only_when_asked() {
    let off = compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound"})).unwrap();
    assert!(!off.publish_peer, "no reader, no filter-state write per request");
    let on =
        compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound", "publishPeer": true})).unwrap();
    assert!(on.publish_peer);
}

#[test]
#[allow(clippy::unwrap_used)]
fn without_direction_a_sidecar_serves_both_directions_and_a_gateway_reports_as_gateway() {
    let cfg = StatsConfig::parse_json(br#"{"mesh": {"trustDomain": "td"}}"#).unwrap();
    assert!(cfg.workload.is_none() && cfg.direction.is_none());
    assert_eq!(cfg.mesh().trust_domain, "td");
    let e = cfg.compile(&Resources::default()).unwrap_err().to_string();
    assert!(e.contains("workload and direction are needed"), "{e}");

    let mut sidecar = cfg.clone();
    sidecar.workload = Some(serde_json::from_value(workload("reviews-v1", "reviews", "v1")).unwrap());
    assert_eq!(sidecar.directions(), vec![Direction::Inbound, Direction::Outbound]);
    let inbound = sidecar.compile_for(Direction::Inbound, &Resources::default()).unwrap();
    let outbound = sidecar.compile_for(Direction::Outbound, &Resources::default()).unwrap();
    assert_eq!((inbound.reporter, outbound.reporter), (Reporter::Destination, Reporter::Source));

    let mut gateway = sidecar.clone();
    if let Some(w) = gateway.workload.as_mut() {
        w.mode = ProxyMode::Gateway;
    }
    assert_eq!(gateway.directions(), vec![Direction::Gateway]);
    assert_eq!(gateway.compile_for(Direction::Gateway, &Resources::default()).unwrap().reporter, Reporter::Source);
    // A configured direction is kept as it is.
    sidecar.direction = Some(Direction::Inbound);
    assert_eq!(sidecar.directions(), vec![Direction::Inbound]);
}

/// The known unbounded input: on an outbound listener every request with a new `Host` used to
/// make a new label set. `destination_service` now comes from the cluster, so a thousand hosts
/// are one series.
#[test]
fn a_new_host_per_request_adds_no_label_set() {
    let stats = compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound"})).unwrap();
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(100);
    let mut key = String::new();
    let m = HttpMeasures::default();
    for cluster in ["PassthroughCluster", ""] {
        for _ in 0..1000 {
            // Whatever Host the client sends, the adapter hands over the cluster only.
            let mut f = Facts::new(Protocol::Http);
            f.response_code = 200;
            f.cluster_name = cluster;
            stats.record_http(&mut cache, &mut host, &f, 0, &[], &m, &mut key);
        }
    }
    assert_eq!(cache.label_sets(), 2, "one series per cluster");
    assert!(host.counters.keys().any(|k| k.contains("destination_service=.=PassthroughCluster;.;")));
    assert!(host.counters.keys().any(|k| k.contains("destination_service=.=unknown;.;")));
}

/// Past `maxLabelSets`, requests with new label values are still counted: under the overflow
/// label set, which keeps reporter, service, response code and flags. A real outage after the
/// bound was reached shows in `istio_requests_total{response_code="503"}`.
#[test]
fn past_the_label_set_bound_an_outage_still_shows() {
    let stats = compile(json!({"workload": workload("reviews-v1", "reviews", "v1"), "direction": "inbound",
        "services": [{"host": "reviews.bookinfo.svc.cluster.local"}], "maxLabelSets": 5,
        "resources": [telemetry(json!({"metrics": [{"overrides": [{"match": {"metric": "REQUEST_COUNT"},
            "tagOverrides": {"user": {"value": "request.headers['end-user']"}, "team": {"value": "'blue'"}}}]}]}))]}))
    .unwrap();
    let mut peers = PeerCache::default();
    let mut host = FakeHost::default();
    let mut cache = MetricCache::new(stats.max_label_sets);
    let mut key = String::new();
    let m = HttpMeasures { duration_ms: Some(1), ..Default::default() };
    let svc = stats.service_for_cluster("inbound|9080||");
    let mut request = |i: usize, code: u32, host: &mut FakeHost, cache: &mut MetricCache| {
        // A client inventing a new workload name (and header value) with every request.
        let h = LocalInfo::from_workload(
            &serde_json::from_value(workload(&format!("scanner-{i}"), "scanner", "v1")).unwrap(),
        )
        .header_value();
        let p = peers.get_or_decode(h.as_bytes(), None).unwrap();
        let mut f = Facts::new(Protocol::Http);
        f.response_code = code;
        f.peer = Some(&p.peer);
        f.service = svc.as_ref();
        let exprs = stats.evaluate(|path| {
            (path.last().map(String::as_str) == Some("end-user")).then(|| format!("user-{i}").into_bytes())
        });
        stats.record_http(cache, host, &f, p.id, &exprs, &m, &mut key);
    };
    for i in 0..100 {
        request(i, 200, &mut host, &mut cache);
    }
    assert!(cache.label_sets() <= 5);
    // The outage: every request from here on fails.
    for i in 100..130 {
        request(i, 503, &mut host, &mut cache);
    }
    let count = |needle: &[&str]| -> u64 {
        host.counters
            .iter()
            .filter(|(k, _)| k.ends_with("istio_requests_total") && needle.iter().all(|n| k.contains(n)))
            .map(|(_, v)| *v)
            .sum()
    };
    assert_eq!(count(&[]), 130, "every request is counted");
    assert_eq!(
        count(&[
            "source_workload=.=overflow;.;",
            "destination_service=.=reviews.bookinfo.svc.cluster.local;.;",
            "response_code=.=503;.;",
            "user=.=overflow;.;",
            "team=.=blue;.;",
        ]),
        30,
        "the outage is visible under the overflow label set: {:?}",
        host.counters.keys().filter(|k| k.contains("=.=overflow;")).collect::<Vec<_>>()
    );
    assert!(host.counters[cache::OVERFLOW_METRIC] >= 125);
    // Two metric groups (the overridden REQUEST_COUNT, the rest) × two response codes.
    assert_eq!(cache.overflow_label_sets(), 4);
}

#[test]
fn no_endpoint_metadata_is_for_the_client_side_only() {
    let with = |direction: &str, mode: &str| {
        let mut w = workload("a", "a", "v1");
        w["mode"] = json!(mode);
        compile(json!({"workload": w, "direction": direction, "noEndpointMetadata": true}))
    };
    assert!(with("outbound", "sidecar").unwrap().no_endpoint_metadata);
    assert!(with("gateway", "gateway").unwrap().no_endpoint_metadata);
    let err = with("inbound", "sidecar").unwrap_err().to_string();
    assert!(err.contains("noEndpointMetadata is for outbound and gateway filters"), "{err}");
    // Absent: the fallback is read, as Istio's stats filter reads it.
    assert!(
        !compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound"})).unwrap().no_endpoint_metadata
    );
}

#[test]
fn cluster_header_is_for_client_side_http_only_and_must_be_a_header_name() {
    let with = |direction: &str, mode: &str, extra: serde_json::Value| {
        let mut w = workload("a", "a", "v1");
        w["mode"] = json!(mode);
        let mut c = json!({"workload": w, "direction": direction, "clusterHeader": "x-wasmesh-cluster"});
        if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
            c.extend(extra.clone());
        }
        compile(c)
    };
    let ok = with("outbound", "sidecar", json!({})).unwrap();
    assert_eq!(ok.cluster_header.as_deref(), Some("x-wasmesh-cluster"));
    assert!(with("gateway", "gateway", json!({})).is_ok());
    let err = with("inbound", "sidecar", json!({})).unwrap_err().to_string();
    assert!(err.contains("clusterHeader is for outbound and gateway HTTP filters only"), "{err}");
    let err = with("outbound", "sidecar", json!({"protocol": "tcp"})).unwrap_err().to_string();
    assert!(err.contains("clusterHeader is for outbound and gateway HTTP filters only"), "{err}");
    let err = with("outbound", "sidecar", json!({"clusterHeader": "X-Cluster"})).unwrap_err().to_string();
    assert!(err.contains("clusterHeader \"X-Cluster\" is not a lower-case HTTP header name"), "{err}");
    // Absent: `xds.cluster_name` is read.
    assert!(compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound"}))
        .unwrap()
        .cluster_header
        .is_none());
}

#[test]
fn local_principal_is_kept_and_must_be_a_san() {
    let with = |direction: &str, principal: &str| {
        compile(json!({"workload": workload("a", "a", "v1"), "direction": direction, "localPrincipal": principal}))
    };
    let spiffe = "spiffe://cluster.local/ns/a/sa/a";
    for direction in ["inbound", "outbound"] {
        assert_eq!(with(direction, spiffe).unwrap().local_principal.as_deref(), Some(spiffe));
    }
    for bad in ["", "spiffe://x\n"] {
        let err = with("inbound", bad).unwrap_err().to_string();
        assert!(err.contains("localPrincipal") && err.contains("is not a certificate's URI SAN"), "{err}");
    }
    // Absent: the attribute is read.
    assert!(compile(json!({"workload": workload("a", "a", "v1"), "direction": "inbound"}))
        .unwrap()
        .local_principal
        .is_none());
}

#[test]
fn exchange_headers_added_only_where_a_route_can_add_them_for_every_request() {
    let with = |extra: serde_json::Value| {
        let mut cfg =
            json!({"workload": workload("a", "a", "v1"), "direction": "outbound", "exchangeHeadersAdded": true});
        for (k, v) in extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        compile(cfg)
    };
    assert!(with(json!({})).unwrap().exchange_headers_added);
    let mut gw = workload("gw", "gw", "v1");
    gw["mode"] = json!("gateway");
    assert!(with(json!({"direction": "gateway", "workload": gw})).unwrap().exchange_headers_added);
    for (extra, needle) in [
        (json!({"direction": "inbound"}), "exchangeHeadersAdded is for outbound and gateway HTTP filters only"),
        (json!({"protocol": "tcp"}), "exchangeHeadersAdded is for outbound and gateway HTTP filters only"),
        (json!({"metadataExchange": false}), "exchangeHeadersAdded with metadataExchange false"),
        (json!({"externalHosts": ["httpbin.org"]}), "exchangeHeadersAdded with externalHosts [\"httpbin.org\"]"),
    ] {
        let err = with(extra.clone()).unwrap_err().to_string();
        assert!(err.contains(needle), "{extra}: {err}");
    }
    // No direction (a WasmPlugin's configuration): refused for every direction it would serve.
    let cfg = StatsConfig::parse_json(
        json!({"workload": workload("a", "a", "v1"), "exchangeHeadersAdded": true}).to_string().as_bytes(),
    )
    .unwrap();
    for d in cfg.directions() {
        let err = cfg.compile_for(d, &Resources::default()).unwrap_err().to_string();
        assert!(err.contains("exchangeHeadersAdded needs a direction"), "{err}");
    }
    // Absent: the filter writes them.
    assert!(
        !compile(json!({"workload": workload("a", "a", "v1"), "direction": "outbound"}))
            .unwrap()
            .exchange_headers_added
    );
}
