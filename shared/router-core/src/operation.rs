//! The operation name istiod writes on every route it generates (`decorator.operation`), which
//! Envoy's HTTP connection manager uses as the span name when tracing is on, sends upstream as
//! `x-envoy-decorator-operation` from a client-side proxy, and returns from a server-side one.
//!
//! istiod's rules (`pilot/pkg/networking/core/route/route.go`, `getRouteOperation`; the default
//! and inbound routes' `telemetry.TraceOperation`):
//! - the path part is the route's path match: a prefix `p` gives `p*`, an exact path itself, a
//!   regex its expression; no path match (Istio then matches prefix `/`) gives `/*`;
//! - a route with one destination cluster (`outbound|<port>|<subset>|<host>`) is named
//!   `<host>:<port><path>` from the cluster; any other route (weighted destinations, a redirect, a
//!   direct response) `<VirtualService name>:<listener port><path>`;
//! - a service's default route, and the inbound route of a sidecar, `<host>:<port>/*`;
//! - the sidecar's catch-all (`allow_any` / `block_all`) has no decorator: Envoy's default names.

use wasmesh_istio::StringMatch;

/// The path part of a route's operation, from the `uri` condition of the match that built it.
pub fn path(uri: Option<&StringMatch>) -> String {
    match uri {
        Some(StringMatch { exact: Some(e), .. }) => e.clone(),
        Some(StringMatch { prefix: Some(p), .. }) => format!("{p}*"),
        Some(StringMatch { regex: Some(r), .. }) => r.clone(),
        _ => "/*".into(),
    }
}

/// Host and port of an Istio subset-key cluster name (`<direction>|<port>|<subset>|<host>`), as
/// istiod's `IsValidSubsetKey` / `ParseSubsetKey` read it.
fn subset_key(cluster: &str) -> Option<(&str, u32)> {
    let mut parts = cluster.split('|');
    let _direction = parts.next()?;
    let port = parts.next()?.parse().ok()?;
    let _subset = parts.next()?;
    let host = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((host, port))
}

/// A route's operation. `cluster`: its destination when it has exactly one; `virtual_service`
/// the VirtualService's `name` or `namespace/name` (istiod uses the name alone); `port` the
/// listener's port (a sidecar: the port the request is for; a gateway: the server's port).
pub fn route(cluster: Option<&str>, virtual_service: &str, port: u32, path: &str) -> String {
    if let Some((host, p)) = cluster.and_then(subset_key) {
        return format!("{host}:{p}{path}");
    }
    let name = virtual_service.rsplit('/').next().unwrap_or(virtual_service);
    format!("{name}:{port}{path}")
}

/// The operation of a service's default route and of a sidecar's inbound route: `<host>:<port>/*`.
pub fn default(host: &str, port: u32) -> String {
    format!("{host}:{port}/*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sm(kind: &str, v: &str) -> StringMatch {
        let mut m = StringMatch::default();
        match kind {
            "exact" => m.exact = Some(v.into()),
            "prefix" => m.prefix = Some(v.into()),
            _ => m.regex = Some(v.into()),
        }
        m
    }

    #[test]
    fn path_part_follows_the_uri_match() {
        assert_eq!(path(None), "/*");
        assert_eq!(path(Some(&StringMatch::default())), "/*");
        assert_eq!(path(Some(&sm("prefix", "/api"))), "/api*");
        assert_eq!(path(Some(&sm("prefix", "/"))), "/*");
        assert_eq!(path(Some(&sm("exact", "/login"))), "/login");
        assert_eq!(path(Some(&sm("regex", "/v[0-9]+/.*"))), "/v[0-9]+/.*");
    }

    #[test]
    fn one_cluster_names_host_and_port_of_the_cluster() {
        let c = "outbound|9080|v2|reviews.default.svc.cluster.local";
        assert_eq!(route(Some(c), "default/reviews", 80, "/api*"), "reviews.default.svc.cluster.local:9080/api*");
        // No subset and a default route.
        let c = "outbound|8000||httpbin.default.svc.cluster.local";
        assert_eq!(route(Some(c), "", 8000, "/*"), "httpbin.default.svc.cluster.local:8000/*");
        assert_eq!(default("httpbin.default.svc.cluster.local", 8000), "httpbin.default.svc.cluster.local:8000/*");
    }

    #[test]
    fn otherwise_the_virtual_service_name_and_listener_port() {
        assert_eq!(route(None, "default/reviews", 9080, "/*"), "reviews:9080/*");
        assert_eq!(route(None, "reviews", 80, "/login"), "reviews:80/login");
        // A cluster that is not a subset key (PassthroughCluster) does not name the route.
        assert_eq!(route(Some("PassthroughCluster"), "ns/vs", 80, "/*"), "vs:80/*");
        assert_eq!(route(Some("outbound|x||h"), "ns/vs", 80, "/*"), "vs:80/*");
        assert_eq!(route(Some("a|1|b|c|d"), "ns/vs", 80, "/*"), "vs:80/*");
    }
}
