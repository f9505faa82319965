//! Route decorators, as Envoy's HTTP connection manager applies them when tracing is on
//! (`source/common/http/conn_manager_impl.cc`, `traceRequest` and `encodeHeaders`):
//!
//! - the span is named by the matched route's `decorator.operation` (istiod writes one on every
//!   route it generates), Envoy's `ingress` / `egress <host>` otherwise;
//! - client side (an egress listener): the operation goes upstream in
//!   `x-envoy-decorator-operation` (the wasmesh router sets it, as it knows the route); a
//!   response carrying that header renames the span by it (when not empty) and loses it;
//! - server side (ingress): a request carrying the header renames the span by it (when not empty)
//!   and loses it; otherwise the route's operation goes back in the response's header.
//!
//! All of this happens whether the request is sampled or not (Envoy has a span either way).

/// The header Envoy carries a decorator operation in, both ways.
pub const HEADER: &str = "x-envoy-decorator-operation";

/// Longest operation taken from a header (a bound on what a peer can make a span carry).
pub const MAX_OPERATION_LEN: usize = 1024;

/// What a received `x-envoy-decorator-operation` (a server's request, a client's response) does:
/// `Some(remove, rename)` when the header is there: it is removed, and names the span when not
/// empty.
pub fn received(value: Option<&[u8]>) -> Option<(bool, Option<String>)> {
    let v = value?;
    let rename = (!v.is_empty()).then(|| {
        let v = v.get(..v.len().min(MAX_OPERATION_LEN)).unwrap_or(v);
        String::from_utf8_lossy(v).into_owned()
    });
    Some((true, rename))
}

/// The operation a server-side proxy returns in the response: the route's, unless the request's
/// header renamed the span.
pub fn response_operation(renamed: bool, route: Option<&str>) -> Option<&str> {
    if renamed {
        return None;
    }
    route.filter(|o| !o.is_empty())
}

/// The span's name: a received operation, else the route's, else `default`.
pub fn span_name(renamed: Option<String>, route: Option<&str>, default: impl FnOnce() -> String) -> String {
    renamed.or_else(|| route.filter(|o| !o.is_empty()).map(str::to_string)).unwrap_or_else(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_received_header_is_removed_and_names_the_span_when_not_empty() {
        assert_eq!(received(None), None);
        assert_eq!(received(Some(b"")), Some((true, None)), "an empty one is still removed");
        assert_eq!(received(Some(b"reviews:9080/*")), Some((true, Some("reviews:9080/*".into()))));
        let long = vec![b'a'; MAX_OPERATION_LEN + 10];
        assert_eq!(received(Some(&long)).and_then(|r| r.1).map(|s| s.len()), Some(MAX_OPERATION_LEN));
    }

    #[test]
    fn the_route_operation_goes_back_unless_the_request_renamed() {
        assert_eq!(response_operation(false, Some("h:80/*")), Some("h:80/*"));
        assert_eq!(response_operation(true, Some("h:80/*")), None);
        assert_eq!(response_operation(false, None), None);
        assert_eq!(response_operation(false, Some("")), None);
    }

    #[test]
    fn names_in_envoys_order() {
        let d = || "ingress".to_string();
        assert_eq!(span_name(Some("peer".into()), Some("route"), d), "peer");
        assert_eq!(span_name(None, Some("route"), d), "route");
        assert_eq!(span_name(None, None, d), "ingress");
        assert_eq!(span_name(None, Some(""), d), "ingress");
    }
}
