//! URL pieces the flow needs: percent-encoding of query and form values, absolute URLs split
//! into authority and path (the calls to the provider), and the return-target check.

/// Percent-encodes everything but RFC 3986 unreserved characters (query and form values).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `name=value&...`, each part encoded.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// `base` with the pairs appended as its query.
pub fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", form(pairs))
}

/// An absolute `http(s)` URL split: (scheme, authority, path with query; `/` when empty).
pub fn split(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (rest.get(..i)?, rest.get(i..)?),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ', '#', '\\']) {
        return None;
    }
    let path = if path.starts_with('?') { return Some((scheme, authority, "/")) } else { path };
    Some((scheme, authority, path))
}

/// `scheme://authority` of an absolute URL (lower-case scheme and host).
pub fn origin(url: &str) -> Option<String> {
    let (scheme, authority, _) = split(url)?;
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

/// The path of `:path` (before `?` and `#`).
pub fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// Whether a `:path` is a local path this gateway may send a browser back to after login: one
/// `/` then not a second `/` or `\` (`//evil.example` and `/\evil.example` are other hosts to a
/// browser), no control characters.
pub fn local_path(p: &str) -> bool {
    let mut chars = p.chars();
    chars.next() == Some('/')
        && !matches!(chars.next(), Some('/' | '\\'))
        && !p.chars().any(|c| c.is_control() || c == '\\')
}

/// Where a `return_to` may send the browser: a local path, or an absolute URL whose origin is
/// allowed. `None`: refused (an open redirect attempt).
pub fn return_target(target: &str, allowed_origins: &[String]) -> Option<String> {
    if local_path(target) {
        return Some(target.to_string());
    }
    if target.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let o = origin(target)?;
    allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(&o)).then(|| target.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_for_queries_and_forms() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(form(&[("a", "1"), ("b c", "x+y")]), "a=1&b%20c=x%2By");
        assert_eq!(with_query("https://idp/auth", &[("x", "1")]), "https://idp/auth?x=1");
        assert_eq!(with_query("https://idp/auth?p=1", &[("x", "1")]), "https://idp/auth?p=1&x=1");
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(split("http://127.0.0.1:9000/token"), Some(("http", "127.0.0.1:9000", "/token")));
        assert_eq!(split("https://idp.example"), Some(("https", "idp.example", "/")));
        assert_eq!(split("https://idp.example/a?b=c"), Some(("https", "idp.example", "/a?b=c")));
        assert_eq!(split("ftp://idp.example/a"), None);
        assert_eq!(split("https://user@idp.example/a"), None);
        assert_eq!(split("/relative"), None);
    }

    #[test]
    fn only_local_paths_and_allowed_origins_are_return_targets() {
        let allowed = vec!["https://app.example".to_string()];
        for ok in ["/", "/a?b=c", "/a/b#x"] {
            assert_eq!(return_target(ok, &allowed).as_deref(), Some(ok), "{ok}");
        }
        assert!(return_target("https://app.example/x", &allowed).is_some());
        assert!(return_target("HTTPS://APP.example/x", &allowed).is_some());
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example/",
            "https://app.example.evil.example/",
            "https://app.example@evil.example/",
            "javascript:alert(1)",
            "evil.example",
            "/a\r\nset-cookie: x=y",
            "",
        ] {
            assert_eq!(return_target(bad, &allowed), None, "{bad:?}");
        }
    }
}
