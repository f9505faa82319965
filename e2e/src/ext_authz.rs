//! A real gRPC ext-authz server (`envoy.service.auth.v3.Authorization/Check`, Envoy's official
//! API types from `envoy-types` served with tonic) for the CUSTOM tests, and Envoy's native
//! `ext_authz` filter configured as istiod configures it for an `envoyExtAuthzGrpc` provider (the
//! oracle the wasm filter is compared with).
//!
//! The server answers by the request's `x-ext-authz-grpc` header, else its `x-ext-authz`: `allow` (OK with upstream header
//! changes of every kind, a response header, a removal), `deny` (401 with headers and a body),
//! `error` (gRPC INTERNAL), `hang` (answers after 3 s), anything else a bare denial. Every
//! CheckRequest received is kept for the test to compare. A TCP check (Envoy's network ext_authz:
//! no `request`) is answered by the mode set for its destination port ([`GrpcExtAuthz::set_tcp_mode`]).

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use envoy_types::pb::envoy::service::auth::v3::CheckRequest as Check;

#[derive(Clone)]
struct Service {
    checks: Arc<Mutex<Vec<CheckRequest>>>,
    /// For a TCP check (no `request`): the mode by the connection's destination port.
    tcp_modes: Arc<Mutex<HashMap<u32, String>>>,
}

#[allow(deprecated)] // `append` is what the test checks, next to `append_action`.
fn header(k: &str, v: &str, append: Option<bool>, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
        append: append.map(|value| BoolValue { value }),
        append_action: action as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Service {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let check = request.into_inner();
        if let Ok(mut c) = self.checks.lock() {
            c.push(check.clone());
        }
        let http =
            check.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.clone()).unwrap_or_default();
        // `x-ext-authz-grpc` overrides `x-ext-authz` for this server only (an HTTP provider
        // and this one answering differently on the same request).
        let tcp_port = check
            .attributes
            .as_ref()
            .filter(|a| a.request.is_none())
            .and_then(|a| a.destination.as_ref())
            .and_then(|d| d.address.as_ref())
            .and_then(|a| match &a.address {
                Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                    match s.port_specifier {
                        Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => {
                            Some(p)
                        }
                        _ => None,
                    }
                }
                _ => None,
            });
        let mode = match tcp_port {
            Some(port) => self.tcp_modes.lock().ok().and_then(|m| m.get(&port).cloned()).unwrap_or_default(),
            None => {
                http.headers.get("x-ext-authz-grpc").or(http.headers.get("x-ext-authz")).cloned().unwrap_or_default()
            }
        };
        let user = http.headers.get("x-user-in").cloned().unwrap_or_else(|| "nobody".into());
        match mode.as_str() {
            "error" => return Err(tonic::Status::internal("boom")),
            "hang" => tokio::time::sleep(Duration::from_secs(3)).await,
            _ => {}
        }
        use HeaderAppendAction as A;
        let response = match mode.as_str() {
            "allow" | "hang" => CheckResponse {
                status: Some(RpcStatus { code: 0, ..Default::default() }),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![
                        header("x-user", &user, Some(false), A::AppendIfExistsOrAdd),
                        header("x-appended", "from-authz", Some(true), A::AppendIfExistsOrAdd),
                        header("x-appended-absent", "from-authz", Some(true), A::AppendIfExistsOrAdd),
                        header("x-added", "from-authz", None, A::AppendIfExistsOrAdd),
                        header("x-if-absent", "from-authz", None, A::AddIfAbsent),
                        header("x-overwrite", "from-authz", None, A::OverwriteIfExists),
                        header("x-overwrite-absent", "from-authz", None, A::OverwriteIfExists),
                        header("x-set", "from-authz", None, A::OverwriteIfExistsOrAdd),
                    ],
                    headers_to_remove: vec!["x-remove-me".into(), "host".into()],
                    response_headers_to_add: vec![header("x-trace-out", "t1", None, A::AppendIfExistsOrAdd)],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "deny" => CheckResponse {
                status: Some(RpcStatus { code: 7, message: "denied".into(), ..Default::default() }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![
                        header("x-reason", "policy", None, A::AppendIfExistsOrAdd),
                        header("www-authenticate", "Basic realm=\"ext\"", None, A::AppendIfExistsOrAdd),
                    ],
                    body: format!("denied by ext_authz for {}", http.path),
                })),
                ..Default::default()
            },
            _ => CheckResponse { status: Some(RpcStatus { code: 7, ..Default::default() }), ..Default::default() },
        };
        Ok(tonic::Response::new(response))
    }
}

/// The gRPC ext-authz server, on a runtime of its own; stopped when dropped.
pub struct GrpcExtAuthz {
    pub port: u16,
    checks: Arc<Mutex<Vec<CheckRequest>>>,
    tcp_modes: Arc<Mutex<HashMap<u32, String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GrpcExtAuthz {
    pub fn start() -> GrpcExtAuthz {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap_or_else(|e| panic!("grpc ext-authz bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        listener.set_nonblocking(true).unwrap();
        let checks = Arc::new(Mutex::new(Vec::new()));
        let tcp_modes = Arc::new(Mutex::new(HashMap::new()));
        let service = Service { checks: checks.clone(), tcp_modes: tcp_modes.clone() };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let server = tonic::transport::Server::builder()
                    .add_service(AuthorizationServer::new(service))
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    });
                let _ = server.await;
            });
            runtime.shutdown_timeout(Duration::from_millis(200));
        });
        GrpcExtAuthz { port, checks, tcp_modes, stop: Some(stop) }
    }

    /// How TCP checks (no `request`: Envoy's network ext_authz) of connections to `port` are
    /// answered: a mode as for HTTP (`allow`, `deny`, `error`, `hang`).
    pub fn set_tcp_mode(&self, port: u16, mode: &str) {
        if let Ok(mut m) = self.tcp_modes.lock() {
            m.insert(u32::from(port), mode.to_string());
        }
    }

    /// Every CheckRequest received so far.
    pub fn checks(&self) -> Vec<CheckRequest> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Drop for GrpcExtAuthz {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A port whose listener accepts each connection and closes it at once (a provider that hangs up).
pub struct Closer {
    pub port: u16,
}

impl Closer {
    pub fn start() -> Closer {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        Closer { port }
    }
}

/// Envoy's `ext_authz` filter as istiod's `generateGRPCConfig` writes it for an
/// `envoyExtAuthzGrpc` provider: `grpc_service.envoy_grpc` with the cluster and the host as
/// authority, `timeout`, `failure_mode_allow`, `status_on_error`, `with_request_body`, enabled
/// by the CUSTOM shadow policy id (the RBAC filter before it comes from
/// [`crate::authz::istiod::custom_http_filters`]).
pub fn istiod_grpc_ext_authz(provider: &Value, cluster: &str) -> Value {
    let name = provider["name"].as_str().unwrap_or_default();
    let g = &provider["envoyExtAuthzGrpc"];
    let host = g["service"].as_str().unwrap_or_default();
    let host = host.split_once('/').map(|(_, h)| h).unwrap_or(host);
    let mut ext = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "failure_mode_allow": g.get("failOpen").and_then(Value::as_bool).unwrap_or(false),
        "grpc_service": {
            "envoy_grpc": {"cluster_name": cluster, "authority": host},
            "timeout": g.get("timeout").and_then(Value::as_str).unwrap_or("600s"),
        },
        "filter_enabled_metadata": {
            "filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": format!("istio-ext-authz-{name}")}},
        },
    });
    if let Some(code) = g.get("statusOnError").and_then(Value::as_str).and_then(|c| c.parse::<u32>().ok()) {
        ext["status_on_error"] = json!({"code": code});
    }
    if let Some(b) = g.get("includeRequestBodyInCheck") {
        ext["with_request_body"] = json!({
            "max_request_bytes": b.get("maxRequestBytes").and_then(Value::as_u64).unwrap_or(0),
            "allow_partial_message": b.get("allowPartialMessage").and_then(Value::as_bool).unwrap_or(false),
            "pack_as_bytes": b.get("packAsBytes").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": ext})
}

/// istiod's `with_request_body` for an `envoyExtAuthzHttp` provider, added to the native filter.
pub fn with_request_body(filter: &mut Value, provider: &Value) {
    if let Some(b) = provider["envoyExtAuthzHttp"].get("includeRequestBodyInCheck") {
        filter["typed_config"]["with_request_body"] = json!({
            "max_request_bytes": b.get("maxRequestBytes").and_then(Value::as_u64).unwrap_or(0),
            "allow_partial_message": b.get("allowPartialMessage").and_then(Value::as_bool).unwrap_or(false),
            "pack_as_bytes": b.get("packAsBytes").and_then(Value::as_bool).unwrap_or(false),
        });
    }
}
