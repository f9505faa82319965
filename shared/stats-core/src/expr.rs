//! The part of CEL that Telemetry `tagOverrides[].value` expressions use in practice, evaluated
//! against Envoy attributes with `get_property`:
//!
//! * a string literal: `'canary'`, `"canary"`;
//! * an attribute path: `request.host`, `request.method`, `response.code`, `source.port`,
//!   `connection.mtls`, `xds.cluster_name`, `node.id`, ...;
//! * a header: `request.headers['x-user']`, `response.headers["x-version"]`,
//!   `response.trailers['grpc-message']`;
//! * `string(<one of the above>)`.
//!
//! Anything else (operators, functions, conditionals, durations, timestamps) is rejected when the
//! configuration is compiled, with a message saying what is supported. As in Istio, an attribute
//! that is absent at run time gives the value `unknown`.

use std::fmt;

/// How the host encodes an attribute's value (envoy `context.cc` `serializeValue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Int,
    Uint,
    Bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Literal(String),
    /// A `get_property` path and how to print its value.
    Attribute {
        path: Vec<String>,
        ty: AttrType,
    },
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(s) => write!(f, "{s:?}"),
            Expr::Attribute { path, .. } => write!(f, "{}", path.join(".")),
        }
    }
}

const STRING_ATTRS: &[&str] = &[
    "request.path",
    "request.url_path",
    "request.host",
    "request.scheme",
    "request.method",
    "request.referer",
    "request.useragent",
    "request.id",
    "request.query",
    "request.protocol",
    "response.code_details",
    "source.address",
    "destination.address",
    "connection.requested_server_name",
    "connection.tls_version",
    "connection.subject_local_certificate",
    "connection.subject_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "connection.uri_san_local_certificate",
    "connection.uri_san_peer_certificate",
    "connection.sha256_peer_certificate_digest",
    "connection.transport_failure_reason",
    "connection.termination_details",
    "upstream.address",
    "upstream.local_address",
    "upstream.tls_version",
    "upstream.transport_failure_reason",
    "upstream.subject_local_certificate",
    "upstream.subject_peer_certificate",
    "upstream.dns_san_local_certificate",
    "upstream.dns_san_peer_certificate",
    "upstream.uri_san_local_certificate",
    "upstream.uri_san_peer_certificate",
    "upstream.sha256_peer_certificate_digest",
    "xds.cluster_name",
    "xds.route_name",
    "xds.virtual_host_name",
    "xds.filter_chain_name",
];

const INT_ATTRS: &[&str] = &[
    "request.size",
    "request.total_size",
    "request.headers_bytes",
    "response.code",
    "response.grpc_status",
    "response.size",
    "response.total_size",
    "response.headers_bytes",
    "response.flags",
    "source.port",
    "destination.port",
    "upstream.port",
    "xds.listener_direction",
];

const UINT_ATTRS: &[&str] = &["connection.id", "upstream.request_attempt_count"];
const BOOL_ATTRS: &[&str] = &["connection.mtls"];
/// `node.*` is Istio's name for the local node; through proxy-wasm it is `xds.node.*`.
const NODE_ATTRS: &[&str] = &["node.id", "node.cluster"];
/// Maps of headers: `request.headers['name']` etc.
const MAP_ATTRS: &[&str] = &["request.headers", "response.headers", "response.trailers"];
const UNSUPPORTED_TYPED: &[&str] =
    &["request.time", "request.duration", "response.backend_latency", "upstream.cx_pool_ready_duration"];

pub const SUPPORTED_HINT: &str = "supported: a quoted string, an attribute such as request.host, \
request.method, request.path, response.code, source.address, destination.port, connection.mtls, \
xds.cluster_name, node.id, a header request.headers['name'] / response.headers['name'], or \
string(<attribute>)";

/// Parses a tag value expression.
pub fn parse(text: &str) -> Result<Expr, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty expression; {SUPPORTED_HINT}"));
    }
    if let Some(inner) = t.strip_prefix("string(").and_then(|r| r.strip_suffix(')')) {
        return parse_primary(inner.trim(), text);
    }
    parse_primary(t, text)
}

fn parse_primary(t: &str, original: &str) -> Result<Expr, String> {
    if let Some(lit) = parse_string_literal(t) {
        return lit.map(Expr::Literal).map_err(|e| format!("{original:?}: {e}"));
    }
    parse_attribute(t).map_err(|e| format!("{original:?} is not supported: {e}; {SUPPORTED_HINT}"))
}

/// `Some(Ok(value))` for a complete quoted literal, `None` when `t` is not a literal at all.
fn parse_string_literal(t: &str) -> Option<Result<String, String>> {
    let quote = t.chars().next()?;
    if quote != '\'' && quote != '"' {
        return None;
    }
    let mut out = String::new();
    let mut chars = t[1..].chars();
    loop {
        match chars.next() {
            None => return Some(Err("unterminated string literal".into())),
            Some('\\') => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('\\' | '\'' | '"')) => out.push(c),
                _ => return Some(Err("unsupported escape in string literal".into())),
            },
            Some(c) if c == quote => {
                let rest: String = chars.collect();
                if rest.trim().is_empty() {
                    return Some(Ok(out));
                }
                return Some(Err(format!("unexpected {rest:?} after the string literal")));
            }
            Some(c) => out.push(c),
        }
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_attribute(t: &str) -> Result<Expr, String> {
    // Split off one optional `['key']` / `["key"]` index at the end.
    let (base, key) = match t.find('[') {
        None => (t, None),
        Some(open) => {
            let inner = t[open + 1..]
                .strip_suffix(']')
                .ok_or_else(|| "an index must be one quoted key in [...] at the end".to_string())?;
            match parse_string_literal(inner.trim()) {
                Some(Ok(k)) if !k.is_empty() => (&t[..open], Some(k)),
                _ => return Err("an index must be a quoted, non-empty key".into()),
            }
        }
    };
    let base = base.trim();
    let segments: Vec<&str> = base.split('.').map(str::trim).collect();
    if segments.iter().any(|s| !is_ident(s)) {
        return Err("not an attribute path".into());
    }
    let dotted = segments.join(".");
    if let Some(key) = key {
        if MAP_ATTRS.contains(&dotted.as_str()) {
            let mut path: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
            path.push(key.to_ascii_lowercase());
            return Ok(Expr::Attribute { path, ty: AttrType::String });
        }
        return Err(format!("{dotted} cannot be indexed"));
    }
    let seg = |list: &[&str]| list.contains(&dotted.as_str());
    let ty = if seg(STRING_ATTRS) {
        AttrType::String
    } else if seg(INT_ATTRS) {
        AttrType::Int
    } else if seg(UINT_ATTRS) {
        AttrType::Uint
    } else if seg(BOOL_ATTRS) {
        AttrType::Bool
    } else if seg(NODE_ATTRS) {
        let mut path = vec!["xds".to_string()];
        path.extend(segments.iter().map(|s| s.to_string()));
        return Ok(Expr::Attribute { path, ty: AttrType::String });
    } else if seg(UNSUPPORTED_TYPED) {
        return Err(format!("{dotted} is a duration or timestamp, which cannot be a tag value"));
    } else if seg(MAP_ATTRS) {
        return Err(format!("{dotted} is a map; index it, e.g. {dotted}['name']"));
    } else {
        return Err(format!("unknown attribute {dotted}"));
    };
    Ok(Expr::Attribute { path: segments.iter().map(|s| s.to_string()).collect(), ty })
}

/// Prints an attribute value as CEL's `string()` would. `None` (absent or undecodable) means the
/// tag gets Istio's `unknown`.
pub fn format_value(ty: AttrType, bytes: Option<&[u8]>) -> Option<String> {
    let b = bytes?;
    let eight = || -> Option<[u8; 8]> { b.get(..8)?.try_into().ok() };
    Some(match ty {
        AttrType::String => String::from_utf8_lossy(b).into_owned(),
        AttrType::Int => i64::from_le_bytes(eight()?).to_string(),
        AttrType::Uint => u64::from_le_bytes(eight()?).to_string(),
        AttrType::Bool => (*b.first()? != 0).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(path: &[&str], ty: AttrType) -> Expr {
        Expr::Attribute { path: path.iter().map(|s| s.to_string()).collect(), ty }
    }

    #[test]
    fn literals() {
        assert_eq!(parse("'canary'"), Ok(Expr::Literal("canary".into())));
        assert_eq!(parse(" \"a b\" "), Ok(Expr::Literal("a b".into())));
        assert_eq!(parse(r"'it\'s'"), Ok(Expr::Literal("it's".into())));
        assert!(parse("'open").is_err());
        assert!(parse("'a' + 'b'").is_err());
    }

    #[test]
    fn attributes() {
        assert_eq!(parse("request.host"), Ok(attr(&["request", "host"], AttrType::String)));
        assert_eq!(parse("request.method"), Ok(attr(&["request", "method"], AttrType::String)));
        assert_eq!(parse("response.code"), Ok(attr(&["response", "code"], AttrType::Int)));
        assert_eq!(parse("string(destination.port)"), Ok(attr(&["destination", "port"], AttrType::Int)));
        assert_eq!(parse("connection.mtls"), Ok(attr(&["connection", "mtls"], AttrType::Bool)));
        assert_eq!(parse("node.id"), Ok(attr(&["xds", "node", "id"], AttrType::String)));
        assert_eq!(parse("request.headers['X-User']"), Ok(attr(&["request", "headers", "x-user"], AttrType::String)));
        assert_eq!(
            parse("response.headers[\"x-version\"]"),
            Ok(attr(&["response", "headers", "x-version"], AttrType::String))
        );
    }

    #[test]
    fn rejections_say_what_is_supported() {
        for bad in [
            "request.duration",
            "request.headers",
            "request.host == 'a'",
            "has(request.host) ? request.host : 'x'",
            "request.nothing",
            "request.headers[x]",
            "request.host['a']",
            "response_code | ''",
            "",
            "1 + 2",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("supported") || e.contains("empty"), "{bad}: {e}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_value(AttrType::String, Some(b"GET")), Some("GET".into()));
        assert_eq!(format_value(AttrType::Int, Some(&200i64.to_le_bytes())), Some("200".into()));
        assert_eq!(format_value(AttrType::Int, Some(&(-1i64).to_le_bytes())), Some("-1".into()));
        assert_eq!(format_value(AttrType::Uint, Some(&7u64.to_le_bytes())), Some("7".into()));
        assert_eq!(format_value(AttrType::Bool, Some(&[1])), Some("true".into()));
        assert_eq!(format_value(AttrType::Bool, Some(&[0])), Some("false".into()));
        assert_eq!(format_value(AttrType::Int, Some(&[1, 2])), None);
        assert_eq!(format_value(AttrType::String, None), None);
    }
}
