//! VirtualService delegation, as istiod merges it before it builds routes
//! (`pilot/pkg/model/virtualservice.go`, `mergeVirtualServicesIfNeeded`).
//!
//! A VirtualService without `hosts` is a *delegate*: it is never routed by itself. A *root*
//! VirtualService has HTTP routes with `delegate: {name, namespace}`; each such route is replaced
//! by the delegate's routes, each merged with the root route:
//!
//! - every match block of a delegate route must fall inside some match block of the root route
//!   (`uri`/`scheme`/`method`/`authority`, headers, query parameters: an exact value equal to the
//!   root's exact value or starting with the root's prefix; a prefix starting with the root's
//!   prefix; regular expressions never nest; same `ignoreUriCase`; the same port if both set;
//!   source namespace, labels and gateways no wider than the root's). Each (root, delegate) pair
//!   that does not conflict becomes one match block with the conditions of both (the delegate's
//!   winning per key). A delegate route with a block that fits no root block is dropped, as
//!   istiod drops it;
//! - the route name becomes `root-delegate` (either alone when the other is empty); `rewrite`,
//!   `timeout`, `retries`, `fault`, `mirror*`, `corsPolicy`, `headers` and `directResponse` come
//!   from the root where the delegate has none.
//!
//! The delegate's namespace defaults to the root's; the delegate must be exported to the root's
//! namespace. Istio skips a root route whose delegate is missing or not exported; wasmesh refuses
//! it (naming the root, the route and the delegate), as it refuses a delegate that delegates again
//! or that sets `gateways` (both invalid in Istio).

use std::borrow::Cow;
use std::collections::BTreeMap;
use wasmesh_istio::networking::{HttpMatchRequest, HttpRoute, StringMatch, VirtualService};
use wasmesh_istio::{Error, Resource, Resources};

/// The VirtualServices that route for this proxy, in the order of the files: delegates left out,
/// each root's delegating routes replaced by the delegate's merged routes. Delegates themselves
/// are returned in `delegates` (for validation of their routes).
pub(crate) struct Resolved<'r> {
    pub roots: Vec<(&'r Resource, Cow<'r, VirtualService>)>,
    pub delegates: Vec<(&'r Resource, &'r VirtualService)>,
}

pub(crate) fn resolve<'r>(resources: &'r Resources, errors: &mut Vec<Error>) -> Resolved<'r> {
    let mut by_name: BTreeMap<(&str, &str), (&Resource, &VirtualService)> = BTreeMap::new();
    let mut delegates = Vec::new();
    for (res, vs) in resources.virtual_services() {
        if vs.hosts.is_empty() {
            by_name.insert((res.namespace(), res.name()), (res, vs));
            delegates.push((res, vs));
            if !vs.gateways.is_empty() {
                errors.push(Error::at(
                    res,
                    "spec.gateways",
                    "a delegate VirtualService (one without hosts) takes its gateways from its root; remove gateways",
                ));
            }
            for (ri, route) in vs.http.iter().enumerate() {
                if route.delegate.is_some() {
                    errors.push(Error::at(
                        res,
                        format!("spec.http[{ri}].delegate"),
                        "a delegate VirtualService cannot delegate again (Istio supports one level of delegation)",
                    ));
                }
            }
        }
    }
    let mut roots = Vec::new();
    for (res, vs) in resources.virtual_services() {
        if vs.hosts.is_empty() {
            continue;
        }
        if !vs.http.iter().any(|r| r.delegate.is_some()) {
            roots.push((res, Cow::Borrowed(vs)));
            continue;
        }
        let mut merged = Vec::new();
        for (ri, route) in vs.http.iter().enumerate() {
            let Some(d) = &route.delegate else {
                merged.push(route.clone());
                continue;
            };
            let field = format!("spec.http[{ri}].delegate");
            let ns = if d.namespace.is_empty() { res.namespace() } else { d.namespace.as_str() };
            let Some((dres, dvs)) = by_name.get(&(ns, d.name.as_str())) else {
                errors.push(Error::at(
                    res,
                    &field,
                    format!("no VirtualService {ns}/{} without hosts (a delegate) in the given resources", d.name),
                ));
                continue;
            };
            if !exported_to(&dvs.export_to, dres.namespace(), res.namespace()) {
                errors.push(Error::at(
                    res,
                    &field,
                    format!(
                        "the delegate {ns}/{} is not exported to namespace {:?} (its exportTo: {:?})",
                        d.name,
                        res.namespace(),
                        dvs.export_to
                    ),
                ));
                continue;
            }
            if !route.route.is_empty() || route.redirect.is_some() || route.direct_response.is_some() {
                // The compiler reports "one action per route" on the root; nothing to merge.
                merged.push(route.clone());
                continue;
            }
            merged.extend(merge_routes(route, &dvs.http));
        }
        let mut vs = vs.clone();
        vs.http = merged;
        roots.push((res, Cow::Owned(vs)));
    }
    Resolved { roots, delegates }
}

/// Delegate `exportTo`: empty or `*` everywhere, `.` its own namespace, else the namespaces named.
fn exported_to(export_to: &[String], delegate_ns: &str, root_ns: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || e == root_ns || (e == "." && delegate_ns == root_ns))
}

/// istiod's `mergeHTTPRoutes`: one merged route per delegate route that does not conflict.
pub(crate) fn merge_routes(root: &HttpRoute, delegate: &[HttpRoute]) -> Vec<HttpRoute> {
    delegate.iter().filter_map(|d| merge_route(root, d)).collect()
}

fn merge_route(root: &HttpRoute, delegate: &HttpRoute) -> Option<HttpRoute> {
    let mut out = delegate.clone();
    out.matches = merge_matches(&root.matches, &delegate.matches)?;
    out.name = joined(&root.name, &delegate.name);
    fn inherit<T: Clone>(field: &mut Option<T>, root: &Option<T>) {
        if field.is_none() {
            field.clone_from(root);
        }
    }
    inherit(&mut out.rewrite, &root.rewrite);
    inherit(&mut out.direct_response, &root.direct_response);
    inherit(&mut out.timeout, &root.timeout);
    inherit(&mut out.retries, &root.retries);
    inherit(&mut out.fault, &root.fault);
    inherit(&mut out.mirror, &root.mirror);
    inherit(&mut out.mirror_percent, &root.mirror_percent);
    inherit(&mut out.mirror_percent_snake, &root.mirror_percent_snake);
    inherit(&mut out.mirror_percentage, &root.mirror_percentage);
    inherit(&mut out.cors_policy, &root.cors_policy);
    inherit(&mut out.headers, &root.headers);
    if out.mirrors.is_empty() {
        out.mirrors.clone_from(&root.mirrors);
    }
    Some(out)
}

fn joined(root: &str, delegate: &str) -> String {
    match (root.is_empty(), delegate.is_empty()) {
        (_, true) => root.to_string(),
        (true, false) => delegate.to_string(),
        (false, false) => format!("{root}-{delegate}"),
    }
}

/// istiod's `mergeHTTPMatchRequests`: `None` is a conflict (the delegate route is dropped).
fn merge_matches(root: &[HttpMatchRequest], delegate: &[HttpMatchRequest]) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(delegate.to_vec());
    }
    if delegate.is_empty() {
        return Some(root.to_vec());
    }
    let mut out = Vec::new();
    for leaf in delegate {
        let before = out.len();
        for r in root {
            if !has_conflict(r, leaf) {
                out.push(merge_match(r, leaf));
            }
        }
        if out.len() == before {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn merge_match(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = leaf.clone();
    out.name = joined(&root.name, &leaf.name);
    for (field, r) in [
        (&mut out.uri, &root.uri),
        (&mut out.scheme, &root.scheme),
        (&mut out.method, &root.method),
        (&mut out.authority, &root.authority),
    ] {
        if field.is_none() {
            field.clone_from(r);
        }
    }
    for (field, r) in [
        (&mut out.headers, &root.headers),
        (&mut out.without_headers, &root.without_headers),
        (&mut out.query_params, &root.query_params),
    ] {
        for (k, v) in r {
            field.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if out.port.is_none() {
        out.port = root.port;
    }
    for (k, v) in &root.source_labels {
        out.source_labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if out.source_namespace.is_none() {
        out.source_namespace.clone_from(&root.source_namespace);
    }
    if out.gateways.is_empty() {
        out.gateways.clone_from(&root.gateways);
    }
    out
}

/// istiod's `hasConflict`: whether `leaf` selects requests outside `root`.
fn has_conflict(root: &HttpMatchRequest, leaf: &HttpMatchRequest) -> bool {
    let pairs = [(&root.uri, &leaf.uri), (&root.scheme, &leaf.scheme), (&root.method, &leaf.method)];
    if pairs.into_iter().chain([(&root.authority, &leaf.authority)]).any(|(r, l)| conflict(r.as_ref(), l.as_ref())) {
        return true;
    }
    for (rmap, lmap) in [
        (&root.headers, &leaf.headers),
        (&root.without_headers, &leaf.without_headers),
        (&root.query_params, &leaf.query_params),
    ] {
        if lmap.iter().any(|(k, l)| conflict(rmap.get(k), Some(l))) {
            return true;
        }
    }
    if root.ignore_uri_case != leaf.ignore_uri_case {
        return true;
    }
    if let (Some(r), Some(l)) = (root.port, leaf.port) {
        if r != l {
            return true;
        }
    }
    if let Some(ns) = &root.source_namespace {
        if leaf.source_namespace.as_ref() != Some(ns) {
            return true;
        }
    }
    if leaf.source_labels.iter().any(|(k, v)| root.source_labels.get(k).is_some_and(|r| r != v)) {
        return true;
    }
    if !root.gateways.is_empty() && !leaf.gateways.is_empty() {
        return leaf.gateways.iter().any(|g| !root.gateways.contains(g));
    }
    false
}

/// istiod's `stringMatchConflict`: no conflict when either side is unset; regular expressions
/// always conflict; an exact root admits only the same exact value; a prefix root admits exact
/// values and prefixes that start with it.
fn conflict(root: Option<&StringMatch>, leaf: Option<&StringMatch>) -> bool {
    let (Some(root), Some(leaf)) = (root, leaf) else { return false };
    if root.regex.is_some() || leaf.regex.is_some() {
        return true;
    }
    if let Some(exact) = root.exact.as_deref().filter(|e| !e.is_empty()) {
        return leaf.prefix.is_some() || leaf.exact.as_deref() != Some(exact);
    }
    if let Some(prefix) = root.prefix.as_deref().filter(|p| !p.is_empty()) {
        if let Some(l) = leaf.prefix.as_deref().or(leaf.exact.as_deref()) {
            return !l.starts_with(prefix);
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn m(uri: StringMatch) -> HttpMatchRequest {
        HttpMatchRequest { uri: Some(uri), ..Default::default() }
    }

    #[test]
    fn string_match_nesting_follows_istiod() {
        let p = StringMatch::prefix;
        let e = StringMatch::exact;
        assert!(!conflict(Some(&p("/a")), Some(&p("/a/b"))));
        assert!(conflict(Some(&p("/a/b")), Some(&p("/a"))));
        assert!(!conflict(Some(&p("/a")), Some(&e("/a/x"))));
        assert!(conflict(Some(&e("/a")), Some(&p("/a"))));
        assert!(!conflict(Some(&e("/a")), Some(&e("/a"))));
        assert!(conflict(Some(&e("/a")), Some(&e("/b"))));
        assert!(conflict(Some(&StringMatch::regex("/a.*")), Some(&p("/a"))));
        assert!(!conflict(None, Some(&p("/x"))));
        assert!(!conflict(Some(&p("/x")), None));
    }

    #[test]
    fn merged_routes_combine_matches_names_and_inherit_root_fields() {
        let root = HttpRoute {
            name: "root".into(),
            matches: vec![m(StringMatch::prefix("/productpage"))],
            timeout: Some("5s".into()),
            ..Default::default()
        };
        let mut leaf_match = m(StringMatch::prefix("/productpage/v1/"));
        leaf_match.headers.insert("end-user".into(), StringMatch::exact("jason"));
        let leaves = vec![
            HttpRoute { name: "v1".into(), matches: vec![leaf_match], ..Default::default() },
            HttpRoute { matches: vec![m(StringMatch::prefix("/reviews"))], ..Default::default() },
            HttpRoute::default(),
        ];
        let out = merge_routes(&root, &leaves);
        assert_eq!(out.len(), 2, "the /reviews route conflicts with /productpage and is dropped");
        assert_eq!(out[0].name, "root-v1");
        assert_eq!(out[0].matches[0].uri, Some(StringMatch::prefix("/productpage/v1/")));
        assert_eq!(out[0].matches[0].headers.get("end-user"), Some(&StringMatch::exact("jason")));
        assert_eq!(out[0].timeout.as_deref(), Some("5s"));
        assert_eq!(out[1].name, "root");
        assert_eq!(out[1].matches, root.matches, "a catch-all delegate route takes the root's match");
    }

    #[test]
    fn wider_source_and_gateway_selectors_conflict() {
        let mut root = m(StringMatch::prefix("/"));
        root.gateways = vec!["gw1".into()];
        root.source_namespace = Some("a".into());
        let mut leaf = m(StringMatch::prefix("/x"));
        leaf.source_namespace = Some("a".into());
        assert!(!has_conflict(&root, &leaf));
        leaf.gateways = vec!["gw2".into()];
        assert!(has_conflict(&root, &leaf));
        leaf.gateways.clear();
        leaf.source_namespace = Some("b".into());
        assert!(has_conflict(&root, &leaf));
        let merged = merge_match(&root, &m(StringMatch::prefix("/x")));
        assert_eq!(merged.gateways, vec!["gw1".to_string()]);
        assert_eq!(merged.source_namespace.as_deref(), Some("a"));
    }
}
