//! What a verified token hands to the authz filter: `request.auth.principal` (`iss/sub`),
//! `request.auth.audiences`, `request.auth.presenter` and `request.auth.claims`, the payload as
//! Envoy puts it in dynamic metadata (`payload_in_metadata` with
//! `normalize_payload_in_metadata.space_delimited_claims`).

use serde_json::{Map, Value};
use wasmesh_handover::RequestIdentity;

/// Splits the configured space-delimited claims (top level, string values) into lists, as
/// Envoy's `normalize_payload_in_metadata` does: `"scope": "read write"` → `["read","write"]`.
pub fn normalize(payload: &Map<String, Value>, space_delimited: &[String]) -> Map<String, Value> {
    let mut out = payload.clone();
    for name in space_delimited {
        if let Some(Value::String(s)) = out.get(name) {
            let parts: Vec<Value> =
                s.split(' ').filter(|p| !p.is_empty()).map(|p| Value::String(p.to_string())).collect();
            out.insert(name.clone(), Value::Array(parts));
        }
    }
    out
}

/// The identity for a verified payload.
pub fn identity(
    iss: &str,
    sub: Option<&str>,
    audiences: &[String],
    payload: &Map<String, Value>,
    space_delimited: &[String],
) -> RequestIdentity {
    let subject = sub.unwrap_or_default().to_string();
    RequestIdentity {
        principal: format!("{iss}/{subject}"),
        issuer: iss.to_string(),
        subject,
        audiences: audiences.to_vec(),
        presenter: payload.get("azp").and_then(Value::as_str).map(str::to_string),
        claims: normalize(payload, space_delimited),
    }
}

/// A claim as `outputClaimToHeaders` writes it (Envoy `addJWTClaimToHeader`): nested names are
/// separated by `.`; strings as they are, numbers as integers when integral (else `%f`), booleans
/// `true`/`false`; other types and empty strings give no header.
pub fn claim_header_value(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    let mut current = payload;
    let mut parts = claim.split('.').peekable();
    let mut found: Option<&Value> = None;
    while let Some(part) = parts.next() {
        let v = current.get(part)?;
        if parts.peek().is_none() {
            found = Some(v);
        } else {
            current = v.as_object()?;
        }
    }
    let text = match found? {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.to_string()
            } else {
                let f = n.as_f64()?;
                if (0.0..18_446_744_073_709_551_615.0).contains(&f) && f.fract() == 0.0 {
                    (f as u64).to_string()
                } else {
                    format!("{f:.6}")
                }
            }
        }
        _ => return None,
    };
    if text.is_empty() {
        None
    } else {
        Some(text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn space_delimited_claims_become_lists() {
        let p = map(json!({"scope": "read  write", "permission": "a", "custom": "x y", "other": "p q", "n": 1}));
        let n = normalize(&p, &["scope".into(), "permission".into(), "custom".into(), "n".into()]);
        assert_eq!(n["scope"], json!(["read", "write"]));
        assert_eq!(n["permission"], json!(["a"]));
        assert_eq!(n["custom"], json!(["x", "y"]));
        assert_eq!(n["other"], json!("p q"), "not configured: untouched");
        assert_eq!(n["n"], json!(1), "non-strings untouched");
    }

    #[test]
    fn identity_has_principal_audiences_presenter_and_all_claims() {
        let p = map(
            json!({"iss": "https://idp", "sub": "alice", "azp": "cli", "groups": ["g1"], "nested": {"a": {"b": 1}}, "scope": "x y"}),
        );
        let id = identity("https://idp", Some("alice"), &["web".into()], &p, &["scope".into()]);
        assert_eq!(id.principal, "https://idp/alice");
        assert_eq!(id.audiences, vec!["web"]);
        assert_eq!(id.presenter.as_deref(), Some("cli"));
        assert_eq!(id.claims["nested"]["a"]["b"], json!(1));
        assert_eq!(id.claims["scope"], json!(["x", "y"]));
        let anon = identity("i", None, &[], &Map::new(), &[]);
        assert_eq!((anon.principal.as_str(), anon.subject.as_str()), ("i/", ""));
    }

    #[test]
    fn claim_header_values_follow_envoy() {
        let p = map(
            json!({"s": "v", "i": 42, "f": 1.5, "big": 1e3, "b": true, "e": "", "l": [1], "o": {"x": {"y": "deep"}}, "neg": -2}),
        );
        assert_eq!(claim_header_value(&p, "s").as_deref(), Some("v"));
        assert_eq!(claim_header_value(&p, "i").as_deref(), Some("42"));
        assert_eq!(claim_header_value(&p, "f").as_deref(), Some("1.500000"));
        assert_eq!(claim_header_value(&p, "big").as_deref(), Some("1000"));
        assert_eq!(claim_header_value(&p, "neg").as_deref(), Some("-2.000000"));
        assert_eq!(claim_header_value(&p, "b").as_deref(), Some("true"));
        assert_eq!(claim_header_value(&p, "e"), None);
        assert_eq!(claim_header_value(&p, "l"), None);
        assert_eq!(claim_header_value(&p, "o"), None);
        assert_eq!(claim_header_value(&p, "o.x.y").as_deref(), Some("deep"));
        assert_eq!(claim_header_value(&p, "o.missing"), None);
        assert_eq!(claim_header_value(&p, "s.x"), None);
        assert_eq!(claim_header_value(&p, "nope"), None);
    }
}
