//! Paths and the small request-value parsers: where wasmesh reads a `:path` (authz
//! `url_path`/`strip_query`, the router's `Request::path`/`query`, authn's `query_of`), Istio path
//! templates (`{*}`, `{**}`: authz `matcher::path_template` → `Glob`), istiod's string and header
//! matchers, CIDR ranges and Envoy address properties, query strings and cookies (authn
//! `extract::parse_query`, `parse_cookies`). wasmesh does not normalize paths itself: Envoy's HCM
//! does (meshConfig `pathNormalization`, written by the controller), so the filters see the
//! normalized `:path`, and these are the functions that read it.
//! Input: a pattern, a NUL, a value.
//! Properties: nothing panics; the three readers of `:path` agree; a pattern without wildcards
//! matches itself; a CIDR contains its own address; query and cookie names come out once each.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use wasmesh_authn::extract::{parse_cookies, parse_query, query_of};
use wasmesh_authz::matcher::{contains_path_template, path_template, Cidr, HeaderMatch, StrMatch};
use wasmesh_authz::{parse_socket_address, strip_query, url_path};
use wasmesh_fuzz::split_nul;

fuzz_target!(|data: &[u8]| {
    let (pattern, value) = split_nul(data);
    let pattern = String::from_utf8_lossy(pattern);

    // `:path` readers.
    let headers = vec![(":path".to_string(), value.to_vec())];
    let stripped = strip_query(value).expect("a prefix of the value");
    assert!(!stripped.contains(&b'?') && !stripped.contains(&b'#'));
    assert!(value.starts_with(stripped));
    assert_eq!(url_path(&headers), Some(stripped));
    let router_req = wasmesh_router::Request::new(&headers);
    assert_eq!(router_req.path(), stripped);
    assert_eq!(router_req.query(), query_of(value));

    // Path templates.
    let _ = contains_path_template(&pattern);
    if let Ok(glob) = path_template(&pattern) {
        let _ = glob.matches(value);
        let _ = glob.matches(stripped);
        if !pattern.contains('*') && !pattern.contains('{') {
            assert!(glob.matches(pattern.as_bytes()), "literal template {pattern:?} does not match itself");
        }
    }

    // istiod's string and header matchers.
    for prefix in ["", "spiffe://"] {
        let m = StrMatch::istio(&pattern, prefix);
        let _ = m.matches(value);
        if !pattern.contains('*') {
            assert!(m.matches(format!("{prefix}{pattern}").as_bytes()));
        }
    }
    for ignore_case in [false, true] {
        let m = HeaderMatch::istio(&pattern, ignore_case);
        let _ = m.matches_any([value, stripped].into_iter());
        if !pattern.contains('*') {
            assert!(m.matches(Some(pattern.as_bytes())));
            if ignore_case {
                assert!(m.matches(Some(pattern.to_ascii_uppercase().as_bytes())));
            }
        }
    }

    // Addresses.
    if let Ok(cidr) = Cidr::parse(&pattern) {
        let ip = pattern.split('/').next().and_then(|s| s.parse().ok()).expect("Cidr::parse read this address");
        assert!(cidr.contains(ip));
        if let Some(other) = parse_socket_address(value) {
            let _ = cidr.contains(other);
        }
    }
    if let Some(ip) = parse_socket_address(value) {
        let with_port = match ip {
            std::net::IpAddr::V4(a) => format!("{a}:8080"),
            std::net::IpAddr::V6(a) => format!("[{a}]:8080"),
        };
        assert_eq!(parse_socket_address(with_port.as_bytes()), Some(ip));
    }

    // Query strings and cookies.
    for found in
        [parse_query(query_of(value), |_| true), parse_query(value, |k| k == pattern), parse_cookies(value, |_| true)]
    {
        let names: BTreeSet<&String> = found.iter().map(|(k, _)| k).collect();
        assert_eq!(names.len(), found.len());
    }
});
