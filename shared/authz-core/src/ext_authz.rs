//! CUSTOM authorization with an `envoyExtAuthzHttp` provider, as Envoy's HTTP ext_authz client
//! does it: the check request built from the original request, and the provider's answer turned
//! into an [`CheckOutcome`] the filter applies (request header changes and the rest of the
//! chain on OK, the provider's status, headers and body on a denial, `statusOnError` or
//! `failOpen` on an error). Pure: the filter sends the request and reads the answer.
#![deny(clippy::indexing_slicing)]

use crate::provider::{Provider, RequestBody, Transport};

/// Largest denial body relayed to the client. Envoy's ext_authz buffers the authorization
/// server's response like any upstream response (bounded by the cluster's buffer limits, 1 MiB
/// by default); wasmesh relays at most this much of it and counts a truncation.
pub const MAX_CHECK_RESPONSE_BODY_BYTES: usize = 64 * 1024;

/// Most headers of the provider's answer that are looked at (forwarded, applied, removed).
/// Envoy's HTTP codec refuses a response with more than `max_headers_count` headers (100 by
/// default); the rest are ignored here and counted.
pub const MAX_CHECK_RESPONSE_HEADERS: usize = 100;

/// The response header through which the provider names request headers to remove on OK.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// The headers of the check request: the forwarded request headers (values of a repeated name
/// joined with `,`, `:path` behind `pathPrefix`), the provider's additional headers,
/// `content-length: 0`, and `:method`/`:path`/`:authority` always present.
pub fn check_request_headers(provider: &Provider, request: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    if provider.transport == Transport::Grpc {
        return crate::ext_authz_grpc::check_headers(request);
    }
    let mut merged: Vec<(String, String)> = Vec::new();
    for (k, v) in request {
        if k == "content-length" || !provider.forwards_request_header(k) {
            continue;
        }
        let Ok(v) = std::str::from_utf8(v) else { continue };
        let prefix = if k == ":path" { provider.path_prefix.as_str() } else { "" };
        match merged.iter_mut().find(|(mk, _)| mk == k) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(prefix);
                existing.push_str(v);
            }
            None => merged.push((k.clone(), format!("{prefix}{v}"))),
        }
    }
    for (k, v) in &provider.additional_headers {
        merged.retain(|(mk, _)| mk != k);
        merged.push((k.clone(), v.clone()));
    }
    merged.push(("content-length".into(), "0".into()));
    for required in [":method", ":path", ":authority"] {
        if !merged.iter().any(|(k, _)| k == required) {
            let v = if required == ":path" { format!("{}/", provider.path_prefix) } else { String::new() };
            merged.push((required.to_string(), v));
        }
    }
    merged
}

/// The request header Envoy's ext_authz sets on a check that carries the body: `true` when the
/// body was cut at `maxRequestBytes`.
pub const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Where buffering the request body for a check stands (Envoy's ext_authz `decodeData` with
/// `with_request_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStep {
    /// Hold the request and keep buffering.
    Wait,
    /// Send the check now.
    Send,
    /// The body is past `maxRequestBytes` without `allowPartialMessage`: Envoy's buffer limit
    /// for the request is `maxRequestBytes`, and on an HTTP/1 request it answers 413 when the
    /// body goes past it.
    TooLarge,
}

/// The status and body Envoy answers with when the buffered request goes past its limit.
pub const TOO_LARGE_STATUS: u32 = 413;
pub const TOO_LARGE_BODY: &str = "Payload Too Large";

/// `received` bytes of body so far, `ended` when the request has no more (end of stream or
/// trailers): whether to wait, send the check or refuse the request. `streaming`: an HTTP/2 or
/// HTTP/3 request, for which Envoy's buffer limit pauses reading (flow control) instead of
/// answering 413, so without `allowPartialMessage` the check waits for the end of the body and
/// carries its first `maxRequestBytes` bytes, marked partial (seen in Envoy 1.36 to 1.40).
pub fn body_step(cfg: &RequestBody, received: usize, ended: bool, streaming: bool) -> BodyStep {
    let max = usize::try_from(cfg.max_request_bytes).unwrap_or(usize::MAX);
    if !cfg.allow_partial_message && received > max && !streaming {
        BodyStep::TooLarge
    } else if ended || (cfg.allow_partial_message && received >= max) {
        BodyStep::Send
    } else {
        BodyStep::Wait
    }
}

/// The body a check carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckBody {
    /// The first `maxRequestBytes` bytes of what was buffered.
    pub bytes: Vec<u8>,
    /// Body bytes received when the check is sent (the gRPC `size`).
    pub received: usize,
    /// Whether `bytes` is less than was received ([`PARTIAL_BODY_HEADER`]).
    pub partial: bool,
    /// gRPC: `raw_body` instead of `body`.
    pub pack_as_bytes: bool,
}

/// The check's body from `buffered` (the first bytes of the request body, at least
/// `maxRequestBytes` of them when that many came) and `received` (all bytes so far).
pub fn check_body(cfg: &RequestBody, buffered: &[u8], received: usize) -> CheckBody {
    let max = usize::try_from(cfg.max_request_bytes).unwrap_or(usize::MAX);
    let bytes = buffered.get(..max.min(received)).unwrap_or(buffered).to_vec();
    CheckBody { partial: bytes.len() != received, bytes, received, pack_as_bytes: cfg.pack_as_bytes }
}

/// Adds what the body changes to the check's headers ([`check_request_headers`]): the
/// [`PARTIAL_BODY_HEADER`] (for an HTTP provider only when its header list forwards it, as
/// Envoy's HTTP client filters the check's headers) and, for an HTTP provider, the
/// `content-length` of the body sent.
pub fn add_body_headers(provider: &Provider, headers: &mut Vec<(String, String)>, body: &CheckBody) {
    let partial = if body.partial { "true" } else { "false" };
    let http = provider.transport == Transport::Http;
    if !http || provider.forwards_request_header(PARTIAL_BODY_HEADER) {
        headers.retain(|(k, _)| k != PARTIAL_BODY_HEADER);
        headers.push((PARTIAL_BODY_HEADER.into(), partial.into()));
    }
    if http {
        for (k, v) in headers.iter_mut() {
            if k == "content-length" {
                *v = body.bytes.len().to_string();
            }
        }
    }
}

/// How the check ended, for the `wasmesh.authz.custom.*` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The provider answered 200.
    Ok,
    /// The provider answered with a denial (a status below 500 other than 200).
    Denied,
    /// No answer (unreachable, timeout, reset) or a 5xx.
    Error,
}

/// A change to the original request when the provider allowed it, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Replace the header (`headersToUpstreamOnAllow`; gRPC `OVERWRITE_IF_EXISTS_OR_ADD`, `append: false`).
    Set(String, Vec<u8>),
    /// Add a value (gRPC `APPEND_IF_EXISTS_OR_ADD`).
    Add(String, Vec<u8>),
    /// Append `,value` to the header when it is present (gRPC `append: true`).
    Append(String, Vec<u8>),
    /// Add the header when it is absent (gRPC `ADD_IF_ABSENT`).
    AddIfAbsent(String, Vec<u8>),
    /// Replace the header when it is present (gRPC `OVERWRITE_IF_EXISTS`).
    OverwriteIfExists(String, Vec<u8>),
    /// Remove the header ([`HEADERS_TO_REMOVE`], gRPC `headers_to_remove`).
    Remove(String),
}

/// What the filter does after the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckAction {
    /// Apply `request`, apply `response_headers` to the response to the client later
    /// (`headersToDownstreamOnAllow`, gRPC `response_headers_to_add`), then run the rest of the chain.
    Allow { request: Vec<Mutation>, response_headers: Vec<Mutation> },
    /// Answer the client now.
    Deny { status: u32, headers: Vec<(String, String)>, body: Option<Vec<u8>>, why: &'static str },
}

/// The provider's answer, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub result: CheckResult,
    pub action: CheckAction,
    /// For [`CheckResult::Error`]: what failed, for the log.
    pub error: Option<String>,
    /// Headers of the answer past [`MAX_CHECK_RESPONSE_HEADERS`], ignored.
    pub headers_dropped: usize,
    /// Whether the denial body was cut at [`MAX_CHECK_RESPONSE_BODY_BYTES`].
    pub body_truncated: bool,
}

impl CheckOutcome {
    pub(crate) fn error(provider: &Provider, what: String) -> CheckOutcome {
        let action = if provider.fail_open {
            CheckAction::Allow { request: Vec::new(), response_headers: Vec::new() }
        } else {
            CheckAction::Deny {
                status: provider.status_on_error,
                headers: Vec::new(),
                body: None,
                why: "CUSTOM provider error",
            }
        };
        CheckOutcome {
            result: CheckResult::Error,
            action,
            error: Some(what),
            headers_dropped: 0,
            body_truncated: false,
        }
    }
}

/// The check request could not be sent (Envoy's error path: `failOpen` or `statusOnError`).
pub fn on_check_unsent(provider: &Provider, why: &str) -> CheckOutcome {
    let mut o = CheckOutcome::error(provider, format!("cannot call it (cluster {}): {why}", provider.cluster));
    if let CheckAction::Deny { why, .. } = &mut o.action {
        *why = "CUSTOM provider unreachable";
    }
    o
}

/// The provider's answer: `headers` of the response (`:status` among them; empty when there was
/// none), `body_size` its body length, `read_body(n)` the first `n` bytes of it (read only for a
/// denial).
pub fn on_check_response(
    provider: &Provider,
    headers: &[(String, Vec<u8>)],
    body_size: usize,
    read_body: impl FnOnce(usize) -> Option<Vec<u8>>,
) -> CheckOutcome {
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse::<u32>().ok());
    let headers_dropped = headers.len().saturating_sub(MAX_CHECK_RESPONSE_HEADERS);
    let headers = headers.get(..MAX_CHECK_RESPONSE_HEADERS).unwrap_or(headers);
    let mut outcome = match status {
        Some(200) => CheckOutcome {
            result: CheckResult::Ok,
            action: allowed(provider, headers),
            error: None,
            headers_dropped: 0,
            body_truncated: false,
        },
        Some(s) if (100..500).contains(&s) => {
            let body = if body_size == 0 { None } else { read_body(body_size.min(MAX_CHECK_RESPONSE_BODY_BYTES)) };
            let forwarded = headers
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with(':') && !matches!(k.as_str(), "content-length" | "transfer-encoding" | "connection")
                })
                .filter(|(k, _)| provider.downstream_on_deny(k))
                .filter_map(|(k, v)| std::str::from_utf8(v).ok().map(|v| (k.clone(), v.to_string())))
                .collect();
            CheckOutcome {
                result: CheckResult::Denied,
                action: CheckAction::Deny { status: s, headers: forwarded, body, why: "denied by the CUSTOM provider" },
                error: None,
                headers_dropped: 0,
                body_truncated: body_size > MAX_CHECK_RESPONSE_BODY_BYTES,
            }
        }
        // No response (timeout, reset, no cluster) or 5xx: Envoy's ext_authz error path.
        Some(s) => CheckOutcome::error(provider, format!("status {s}")),
        None => CheckOutcome::error(provider, "no response".into()),
    };
    outcome.headers_dropped = headers_dropped;
    outcome
}

/// An OK answer: the provider's headers for the upstream request and for the client, then the
/// headers it asks to remove.
fn allowed(provider: &Provider, headers: &[(String, Vec<u8>)]) -> CheckAction {
    let mut request = Vec::new();
    let mut response_headers = Vec::new();
    for (k, v) in headers {
        if k.starts_with(':') {
            continue;
        }
        if provider.upstream_on_allow(k) {
            request.push(Mutation::Set(k.clone(), v.clone()));
        }
        if provider.downstream_on_allow(k) {
            response_headers.push(Mutation::Add(k.clone(), v.clone()));
        }
    }
    if let Some((_, list)) = headers.iter().find(|(k, _)| k == HEADERS_TO_REMOVE) {
        for name in String::from_utf8_lossy(list).split(',') {
            let name = name.trim().to_ascii_lowercase();
            if !name.is_empty() && !name.starts_with(':') && name != "host" {
                request.push(Mutation::Remove(name));
            }
        }
    }
    CheckAction::Allow { request, response_headers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::parse_providers;
    use serde_json::json;

    fn provider(cfg: serde_json::Value) -> Provider {
        let mut http = json!({"service": "authz.foo.svc.cluster.local", "port": 9000});
        if let (Some(h), Some(extra)) = (http.as_object_mut(), cfg.as_object()) {
            h.extend(extra.clone());
        }
        parse_providers(&[json!({"name": "ext", "envoyExtAuthzHttp": http})]).remove("ext").unwrap().unwrap()
    }

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    fn no_body(_: usize) -> Option<Vec<u8>> {
        panic!("the body is read only for a denial")
    }

    #[test]
    fn check_request_forwards_merges_prefixes_and_completes() {
        let p = provider(json!({"pathPrefix": "/check", "includeRequestHeadersInCheck": ["x-user"],
            "includeAdditionalHeadersInCheck": {"x-extra": "1", "x-user": "override"}}));
        let req = hdrs(&[
            (":method", "GET"),
            (":path", "/a?b=c"),
            ("authorization", "Bearer t"),
            ("x-user", "alice"),
            ("x-user", "bob"),
            ("cookie", "secret"),
            ("content-length", "12"),
        ]);
        let got = check_request_headers(&p, &req);
        let want: Vec<(String, String)> = [
            (":method", "GET"),
            (":path", "/check/a?b=c"),
            ("authorization", "Bearer t"),
            ("x-extra", "1"),
            ("x-user", "override"),
            ("content-length", "0"),
            (":authority", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want, "cookie not forwarded, additional headers replace, :authority added");
        let merged = check_request_headers(&provider(json!({"includeRequestHeadersInCheck": ["x-user"]})), &req);
        assert!(merged.contains(&("x-user".into(), "alice,bob".into())), "{merged:?}");
        let empty = check_request_headers(&p, &[]);
        assert!(empty.contains(&(":path".into(), "/check/".into())), "{empty:?}");
    }

    #[test]
    fn ok_sets_upstream_headers_then_removes_the_listed_ones() {
        let p = provider(json!({"headersToUpstreamOnAllow": ["x-auth-*"], "headersToDownstreamOnAllow": ["x-down"]}));
        let answer = hdrs(&[
            (":status", "200"),
            ("x-auth-user", "alice"),
            ("x-down", "d"),
            ("x-other", "o"),
            (HEADERS_TO_REMOVE, " Authorization, :path, host, ,x-secret"),
        ]);
        let o = on_check_response(&p, &answer, 0, no_body);
        assert_eq!(o.result, CheckResult::Ok);
        assert_eq!(
            o.action,
            CheckAction::Allow {
                request: vec![
                    Mutation::Set("x-auth-user".into(), b"alice".to_vec()),
                    Mutation::Remove("authorization".into()),
                    Mutation::Remove("x-secret".into()),
                ],
                response_headers: vec![Mutation::Add("x-down".into(), b"d".to_vec())],
            },
            "pseudo-headers and host are never removed"
        );
    }

    #[test]
    fn denial_relays_status_headers_and_body() {
        let p = provider(json!({}));
        let answer = hdrs(&[
            (":status", "401"),
            ("www-authenticate", "Basic"),
            ("content-length", "6"),
            ("connection", "close"),
            ("host", "h"),
        ]);
        let o = on_check_response(&p, &answer, 6, |n| Some(b"nope!!"[..n].to_vec()));
        assert_eq!(o.result, CheckResult::Denied);
        assert_eq!(
            o.action,
            CheckAction::Deny {
                status: 401,
                headers: vec![("www-authenticate".into(), "Basic".into())],
                body: Some(b"nope!!".to_vec()),
                why: "denied by the CUSTOM provider"
            }
        );
        assert!(!o.body_truncated);
    }

    #[test]
    fn errors_follow_fail_open_and_status_on_error() {
        let closed = provider(json!({"statusOnError": "503"}));
        for answer in [hdrs(&[(":status", "500")]), hdrs(&[])] {
            let o = on_check_response(&closed, &answer, 0, no_body);
            assert_eq!(o.result, CheckResult::Error);
            assert!(matches!(o.action, CheckAction::Deny { status: 503, body: None, .. }), "{o:?}");
        }
        let unsent = on_check_unsent(&closed, "BadArgument");
        assert!(matches!(unsent.action, CheckAction::Deny { status: 503, why: "CUSTOM provider unreachable", .. }));
        assert!(unsent.error.unwrap().contains("outbound|9000||authz.foo.svc.cluster.local"));
        let open = provider(json!({"failOpen": true}));
        let o = on_check_response(&open, &hdrs(&[(":status", "503")]), 0, no_body);
        assert_eq!(o.action, CheckAction::Allow { request: Vec::new(), response_headers: Vec::new() });
        assert_eq!(on_check_unsent(&open, "x").action, o.action);
    }

    #[test]
    fn body_buffering_follows_envoys_with_request_body() {
        let whole = RequestBody { max_request_bytes: 4, allow_partial_message: false, pack_as_bytes: false };
        let partial = RequestBody { allow_partial_message: true, ..whole.clone() };
        assert_eq!(body_step(&whole, 3, false, false), BodyStep::Wait);
        assert_eq!(body_step(&whole, 4, false, false), BodyStep::Wait, "exactly the limit: wait for the end");
        assert_eq!(body_step(&whole, 4, true, false), BodyStep::Send);
        assert_eq!(body_step(&whole, 5, false, false), BodyStep::TooLarge);
        assert_eq!(body_step(&whole, 0, true, false), BodyStep::Send);
        assert_eq!(body_step(&whole, 5, false, true), BodyStep::Wait, "HTTP/2: flow control, no 413");
        assert_eq!(body_step(&whole, 5, true, true), BodyStep::Send);
        assert!(check_body(&whole, b"01234", 5).partial);
        assert_eq!(body_step(&partial, 3, false, false), BodyStep::Wait);
        assert_eq!(body_step(&partial, 4, false, false), BodyStep::Send, "full: send without waiting for the end");
        assert_eq!(body_step(&partial, 9, false, false), BodyStep::Send);
        let b = check_body(&partial, b"0123456789", 10);
        assert_eq!((b.bytes.as_slice(), b.partial, b.received), (&b"0123"[..], true, 10));
        let b = check_body(&whole, b"0123", 4);
        assert_eq!((b.bytes.as_slice(), b.partial), (&b"0123"[..], false));
        let b = check_body(&whole, b"", 0);
        assert!(b.bytes.is_empty() && !b.partial);
    }

    #[test]
    fn body_headers_of_http_and_grpc_checks() {
        let body = CheckBody { bytes: b"abc".to_vec(), received: 5, partial: true, pack_as_bytes: false };
        let p = provider(json!({}));
        let mut h = check_request_headers(&p, &hdrs(&[(":path", "/"), ("content-length", "5")]));
        add_body_headers(&p, &mut h, &body);
        assert!(h.contains(&("content-length".into(), "3".into())), "{h:?}");
        assert!(!h.iter().any(|(k, _)| k == PARTIAL_BODY_HEADER), "not in the provider's list: {h:?}");
        let listed = provider(json!({"includeRequestHeadersInCheck": [PARTIAL_BODY_HEADER]}));
        let mut h = check_request_headers(&listed, &hdrs(&[(PARTIAL_BODY_HEADER, "forged")]));
        add_body_headers(&listed, &mut h, &body);
        let got: Vec<&str> = h.iter().filter(|(k, _)| k == PARTIAL_BODY_HEADER).map(|(_, v)| v.as_str()).collect();
        assert_eq!(got, ["true"]);
    }

    /// [`MAX_CHECK_RESPONSE_BODY_BYTES`]: a larger denial body is read up to the bound and the
    /// truncation reported (the filter counts it).
    #[test]
    fn denial_body_is_bounded() {
        let p = provider(json!({}));
        let size = MAX_CHECK_RESPONSE_BODY_BYTES + 1;
        let o = on_check_response(&p, &hdrs(&[(":status", "403")]), size, |n| {
            assert_eq!(n, MAX_CHECK_RESPONSE_BODY_BYTES);
            Some(vec![b'x'; n])
        });
        assert!(o.body_truncated);
        assert!(
            matches!(o.action, CheckAction::Deny { body: Some(b), .. } if b.len() == MAX_CHECK_RESPONSE_BODY_BYTES)
        );
    }

    /// [`MAX_CHECK_RESPONSE_HEADERS`]: headers past the bound are ignored and counted.
    #[test]
    fn answer_headers_are_bounded() {
        let p = provider(json!({"headersToUpstreamOnAllow": ["x-*"]}));
        let mut answer = hdrs(&[(":status", "200")]);
        for i in 0..MAX_CHECK_RESPONSE_HEADERS {
            answer.push((format!("x-{i}"), b"v".to_vec()));
        }
        let o = on_check_response(&p, &answer, 0, no_body);
        assert_eq!(o.headers_dropped, 1);
        let CheckAction::Allow { request, .. } = o.action else { panic!("{o:?}") };
        assert_eq!(request.len(), MAX_CHECK_RESPONSE_HEADERS - 1, "the header past the bound is not applied");
    }
}
