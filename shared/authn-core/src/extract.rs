//! Where tokens are found (`fromHeaders`, `fromParams`, `fromCookies`, or the defaults
//! `Authorization: Bearer` + `access_token`), extracted as Envoy's jwt_authn `extractor.cc` does.

#![deny(clippy::indexing_slicing)]

/// One configured token location.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// Header name (lower case) and value prefix (case-sensitive; may be empty).
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// A token found in a request (borrowed from the request values), and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'g> {
    pub token: &'g str,
    /// The header it came from (the header is removed after success unless
    /// `forwardOriginalToken`); `None` for query parameters and cookies, which Envoy never strips.
    pub header: Option<&'g str>,
}

/// The request values extraction reads, gathered once per request.
#[derive(Debug, Default, Clone)]
pub struct Gathered {
    /// `(header name, first value)` for every header a location names (invalid UTF-8 replaced,
    /// which can never verify).
    pub headers: Vec<(String, Option<String>)>,
    /// Decoded query parameters (first occurrence of a name wins, as Envoy's map keeps it).
    pub params: Vec<(String, String)>,
    /// Cookies (first occurrence of a name wins).
    pub cookies: Vec<(String, String)>,
}

impl Gathered {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.as_deref())
    }

    /// Text of a header value as read from the request.
    pub fn text(value: Vec<u8>) -> String {
        String::from_utf8(value).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Characters of a JWT (base64url + dot), `ConstantBase64UrlEncodingCharsPlusDot`.
fn is_jwt_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.'
}

/// Envoy's `extractJWT` as Envoy 1.40 behaves (checked against the real binary): from `after`,
/// skip characters that cannot start a JWT (base64url or `.`) and take the rest of the value;
/// if nothing JWT-like follows the prefix, the whole header value.
fn extract_after(value: &str, after: usize) -> &str {
    let rest = value.get(after..).unwrap_or_default();
    match rest.bytes().position(is_jwt_char) {
        Some(start) => &rest[start..],
        None => value,
    }
}

/// Puts locations in Envoy's extraction order (done once, when the configuration is compiled):
/// header locations sorted by `name + prefix`, then query parameters sorted by name, then
/// cookies sorted by name, duplicates removed.
pub fn canonical_order(locations: &[Location]) -> Vec<Location> {
    let mut headers: Vec<(String, &Location)> = Vec::new();
    let mut params: Vec<&Location> = Vec::new();
    let mut cookies: Vec<&Location> = Vec::new();
    for loc in locations {
        match loc {
            Location::Header { name, prefix } => headers.push((format!("{name}{prefix}"), loc)),
            Location::Param(_) => params.push(loc),
            Location::Cookie(_) => cookies.push(loc),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers.dedup_by(|a, b| a.1 == b.1);
    params.sort();
    params.dedup();
    cookies.sort();
    cookies.dedup();
    headers.into_iter().map(|(_, l)| l).chain(params).chain(cookies).cloned().collect()
}

/// Tokens at one provider's locations (given in [`canonical_order`]). Envoy verifies them from
/// the last found to the first; every one must be valid.
pub fn extract<'g>(locations: &'g [Location], req: &'g Gathered, sanitized: &[String]) -> Vec<Found<'g>> {
    let mut out = Vec::new();
    for loc in locations {
        match loc {
            Location::Header { name, prefix } => {
                // Headers the filter is about to write (outputPayloadToHeader,
                // outputClaimToHeaders) are removed from the request first, so they are never a
                // token source.
                if sanitized.iter().any(|s| s == name) {
                    continue;
                }
                let Some(value) = req.header(name) else { continue };
                let token = if prefix.is_empty() {
                    value
                } else {
                    match value.find(prefix.as_str()) {
                        None => continue,
                        Some(pos) => extract_after(value, pos + prefix.len()),
                    }
                };
                out.push(Found { token, header: Some(name.as_str()) });
            }
            Location::Param(p) => {
                if let Some((_, v)) = req.params.iter().find(|(k, _)| k == p) {
                    out.push(Found { token: v.as_str(), header: None });
                }
            }
            Location::Cookie(c) => {
                if let Some((_, v)) = req.cookies.iter().find(|(k, _)| k == c) {
                    out.push(Found { token: v.as_str(), header: None });
                }
            }
        }
    }
    out
}

/// The query string of a `:path` (after `?`, before `#`).
pub fn query_of(path: &[u8]) -> &[u8] {
    match split_once(path, b'?') {
        None => b"",
        Some((_, rest)) => rest.split(|&c| c == b'#').next().unwrap_or_default(),
    }
}

/// `s` split at the first `sep` (which belongs to neither side).
fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let mut parts = s.splitn(2, |&c| c == sep);
    Some((parts.next()?, parts.next()?))
}

/// Envoy's `parseAndDecodeQueryString`: `&`-separated `name=value`, percent-decoded (and `+` as
/// space in values); the first occurrence of a name wins. At most `max` parameters are read.
///
/// Only parameters whose decoded name `keep` accepts are returned (the configured `fromParams`
/// names), so the result stays as small as the configuration however many parameters a
/// request carries, and every parameter is looked at: a token after hundreds of others is still
/// found, as Envoy finds it.
pub fn parse_query(query: &[u8], keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in query.split(|&c| c == b'&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = split_once(part, b'=').unwrap_or((part, b""));
        let k = percent_decode(k, false);
        if !keep(&k) || out.iter().any(|(name, _)| *name == k) {
            continue;
        }
        out.push((k, percent_decode(v, true)));
    }
    out
}

fn percent_decode(s: &[u8], plus_is_space: bool) -> String {
    let mut out = Vec::with_capacity(s.len());
    let hex = |b: u8| (b as char).to_digit(16);
    let mut rest = s;
    while let Some((&c, tail)) = rest.split_first() {
        if let (b'%', [h, l, after @ ..]) = (c, tail) {
            if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                out.push((h * 16 + l) as u8);
                rest = after;
                continue;
            }
        }
        out.push(if plus_is_space && c == b'+' { b' ' } else { c });
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Envoy's `parseCookies`: `;`-separated `name=value`, spaces trimmed, surrounding double quotes
/// removed from the value; the first occurrence of a name wins.
///
/// Only cookies whose name `keep` accepts are returned (the configured `fromCookies` names).
pub fn parse_cookies(header: &[u8], keep: impl Fn(&str) -> bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in header.split(|&c| c == b';') {
        let part = trim(part);
        let Some((k, v)) = split_once(part, b'=') else { continue };
        let k = String::from_utf8_lossy(trim(k)).into_owned();
        let mut v = trim(v);
        if let [b'"', inner @ .., b'"'] = v {
            v = inner;
        }
        if k.is_empty() || !keep(&k) || out.iter().any(|(name, _)| *name == k) {
            continue;
        }
        out.push((k, String::from_utf8_lossy(v).into_owned()));
    }
    out
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s.iter().rposition(|c| !c.is_ascii_whitespace()).map(|e| e + 1).unwrap_or(start);
    s.get(start..end.max(start)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn gathered(headers: &[(&str, &str)], path: &str, cookie: Option<&str>) -> Gathered {
        Gathered {
            headers: headers.iter().map(|(n, v)| (n.to_string(), Some(v.to_string()))).collect(),
            params: parse_query(query_of(path.as_bytes()), |_| true),
            cookies: cookie.map(|c| parse_cookies(c.as_bytes(), |_| true)).unwrap_or_default(),
        }
    }

    fn bearer() -> Vec<Location> {
        vec![
            Location::Header { name: "authorization".into(), prefix: "Bearer ".into() },
            Location::Param("access_token".into()),
        ]
    }

    #[test]
    fn default_locations_bearer_then_access_token() {
        let g = gathered(&[("authorization", "Bearer aaa.bbb.ccc")], "/p?access_token=x.y.z&b=1", None);
        let locs = bearer();
        let found = extract(&locs, &g, &[]);
        assert_eq!(
            found,
            vec![Found { token: "aaa.bbb.ccc", header: Some("authorization") }, Found { token: "x.y.z", header: None }]
        );
    }

    #[test]
    fn prefix_is_found_anywhere_and_the_jwt_run_is_taken() {
        let g = gathered(&[("authorization", "Basic abc, Bearer  tok.en.x")], "/", None);
        assert_eq!(extract(&bearer(), &g, &[])[0].token, "tok.en.x");
        // Leading non-JWT characters are skipped; the token is the rest of the value, so
        // trailing junk stays part of it (and fails verification), as in Envoy 1.40.
        let g = gathered(&[("authorization", "Bearer \"$a.b.c,x\"\tmore")], "/", None);
        assert_eq!(extract(&bearer(), &g, &[])[0].token, "a.b.c,x\"\tmore");
        // Prefix matching is case-sensitive: "bearer " is not "Bearer ".
        let g = gathered(&[("authorization", "bearer tok.en.x")], "/", None);
        assert!(extract(&bearer(), &g, &[]).is_empty());
        // Nothing JWT-like after the prefix: the whole value (Envoy's backwards compatibility).
        let g = gathered(&[("authorization", "Bearer !!!")], "/", None);
        assert_eq!(extract(&bearer(), &g, &[])[0].token, "Bearer !!!");
    }

    #[test]
    fn header_without_prefix_is_taken_whole() {
        let locs = vec![Location::Header { name: "x-jwt".into(), prefix: String::new() }];
        let g = gathered(&[("x-jwt", "a.b.c")], "/", None);
        assert_eq!(extract(&locs, &g, &[])[0].token, "a.b.c");
    }

    #[test]
    fn sanitized_headers_are_not_token_sources() {
        let locs = vec![Location::Header { name: "x-jwt".into(), prefix: String::new() }];
        let g = gathered(&[("x-jwt", "a.b.c")], "/", None);
        assert!(extract(&locs, &g, &["x-jwt".into()]).is_empty());
    }

    #[test]
    fn params_are_decoded_and_first_wins() {
        let q = parse_query(b"token=a%2Eb.c&token=zzz&x&y=1+2", |_| true);
        assert_eq!(q[0], ("token".into(), "a.b.c".into()));
        assert_eq!(q.len(), 3);
        assert_eq!(q[2], ("y".into(), "1 2".into()));
        assert_eq!(parse_query(b"a=%zz%4", |_| true), vec![("a".into(), "%zz%4".into())]);
        assert_eq!(query_of(b"/p?a=1#frag"), b"a=1");
        assert_eq!(query_of(b"/p"), b"");
    }

    #[test]
    fn only_the_configured_names_are_kept_and_none_is_missed() {
        // 500 other parameters before the token: Envoy still finds it, and so must we.
        let mut q = String::new();
        for i in 0..500 {
            q.push_str(&format!("p{i}=v&"));
        }
        q.push_str("access_token=a.b.c&access_token=second");
        let got = parse_query(q.as_bytes(), |k| k == "access_token");
        assert_eq!(got, vec![("access_token".into(), "a.b.c".into())]);
        let mut c = String::new();
        for i in 0..500 {
            c.push_str(&format!("c{i}=v; "));
        }
        c.push_str("session=x.y.z");
        assert_eq!(parse_cookies(c.as_bytes(), |k| k == "session"), vec![("session".into(), "x.y.z".into())]);
    }

    #[test]
    fn cookies_are_parsed_like_envoy() {
        let c = parse_cookies(br#"a=1; session="x.y.z" ;session=ignored; junk; b = 2"#, |_| true);
        assert_eq!(c, vec![("a".into(), "1".into()), ("session".into(), "x.y.z".into()), ("b".into(), "2".into())]);
        let locs = vec![Location::Cookie("session".into())];
        let g = gathered(&[], "/", Some(r#"session="x.y.z""#));
        assert_eq!(extract(&locs, &g, &[])[0].token, "x.y.z");
    }

    #[test]
    fn order_is_headers_sorted_then_params_then_cookies() {
        let locs = vec![
            Location::Cookie("c".into()),
            Location::Param("p".into()),
            Location::Header { name: "x-b".into(), prefix: String::new() },
            Location::Header { name: "x-a".into(), prefix: String::new() },
        ];
        let g = gathered(&[("x-a", "A"), ("x-b", "B")], "/?p=P", Some("c=C"));
        let locs = canonical_order(&locs);
        let got: Vec<&str> = extract(&locs, &g, &[]).into_iter().map(|f| f.token).collect();
        assert_eq!(got, vec!["A", "B", "P", "C"]);
    }

    #[test]
    fn garbage_never_panics() {
        for s in ["%", "%%", "%4", "a=%", "=", "&&&", "a=b=c", "%ff%fe"] {
            let _ = parse_query(s.as_bytes(), |_| true);
            let _ = parse_cookies(s.as_bytes(), |_| true);
        }
        assert_eq!(extract_after("Bearer ", 7), "Bearer ");
        assert_eq!(extract_after("x", 10), "x");
    }
}
