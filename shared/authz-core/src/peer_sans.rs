//! Every SAN of the peer certificate, for Envoy's `authenticated.principal_name` matcher, which
//! tries each URI SAN, then each DNS SAN, then the subject (Envoy
//! `source/extensions/filters/common/rbac/matchers.cc`, `AuthenticatedMatcher::matches`).
//!
//! Envoy hands a wasm filter only the first URI SAN and the first DNS SAN
//! (`connection.uri_san_peer_certificate`, `connection.dns_san_peer_certificate`). The rest is
//! read from the `x-forwarded-client-cert` element the HCM appends for the current connection
//! (`forward_client_cert_details: APPEND_FORWARD` or `SANITIZE_SET`, with
//! `set_current_client_cert_details: {uri: true, dns: true}`: one `URI=` / `DNS=` pair per SAN,
//! as istiod and `wasmeshctl envoy` configure a sidecar's inbound HCM). That element is found by
//! the connection's own certificate digest (`Hash=`, the property
//! `connection.sha256_peer_certificate_digest`) at its last occurrence in the one header value
//! (Envoy appends the current hop after whatever the client sent), and it is checked against the
//! first SANs Envoy reports. Anything else — no header, several header lines, no element for this
//! certificate, SANs missing from it, a first SAN that disagrees — is not guessed at: the caller
//! fails closed ([`crate::Missing`]).
//!
//! Envoy writes the SAN values unquoted, so a SAN that itself contains `;URI=` would read as two
//! SANs; the check against the first SANs catches it in the first URI and DNS SAN only. A mesh CA
//! that signs SANs chosen by the requester can be abused that way (README, "AuthorizationPolicy
//! on TCP ports and certificates with several SANs").
#![deny(clippy::indexing_slicing)]

/// The request header Envoy's HCM writes the client certificate details to.
pub const XFCC: &str = "x-forwarded-client-cert";

/// Most SANs read from one certificate; a certificate with more fails closed.
pub const MAX_PEER_SANS: usize = 64;

/// Why the SANs could not be known (a static text for [`crate::Missing`]).
pub type SansError = &'static str;

/// Every URI SAN then every DNS SAN of the current connection's peer certificate, from the values
/// of the `x-forwarded-client-cert` header. `digest` is `connection.sha256_peer_certificate_digest`
/// (hex); `first_uri` and `first_dns` what Envoy reports as the first SANs (`None`: the
/// certificate has none of that kind).
pub fn current_sans(
    xfcc: &[&[u8]],
    digest: &[u8],
    first_uri: Option<&[u8]>,
    first_dns: Option<&[u8]>,
) -> Result<Vec<Vec<u8>>, SansError> {
    if first_uri.is_none() && first_dns.is_none() {
        // No SAN at all: the subject is the only name, and Envoy reports it.
        return Ok(Vec::new());
    }
    let value = match xfcc {
        [] => return Err("every SAN of the peer certificate (no x-forwarded-client-cert: the HCM does not set the current client certificate details)"),
        [one] => *one,
        _ => return Err("every SAN of the peer certificate (several x-forwarded-client-cert headers)"),
    };
    if digest.is_empty() {
        return Err("every SAN of the peer certificate (no connection.sha256_peer_certificate_digest)");
    }
    let mut needle = b"hash=".to_vec();
    needle.extend(digest.iter().map(u8::to_ascii_lowercase));
    let lower: Vec<u8> = value.iter().map(u8::to_ascii_lowercase).collect();
    let at = rfind(&lower, &needle).ok_or(
        "every SAN of the peer certificate (x-forwarded-client-cert has no element for this connection's certificate)",
    )?;
    let rest = value.get(at + needle.len()..).unwrap_or_default();
    let (uris, dns) = parse_element(rest)?;
    check_first(&uris, first_uri, "URI")?;
    check_first(&dns, first_dns, "DNS")?;
    let mut all = uris;
    all.extend(dns);
    Ok(all)
}

/// `;Key=value` pairs to the end of the value: the `URI` and the `DNS` values.
#[allow(clippy::type_complexity)]
fn parse_element(mut rest: &[u8]) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), SansError> {
    const BAD: SansError =
        "every SAN of the peer certificate (the current x-forwarded-client-cert element is malformed)";
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    let mut count = 0;
    while let Some((&first, tail)) = rest.split_first() {
        if first != b';' {
            return Err(BAD);
        }
        let eq = tail.iter().position(|c| *c == b'=').ok_or(BAD)?;
        let key = tail.get(..eq).unwrap_or_default();
        let after = tail.get(eq + 1..).unwrap_or_default();
        let (value, next) = if after.first() == Some(&b'"') {
            let body = after.get(1..).unwrap_or_default();
            let end = closing_quote(body).ok_or(BAD)?;
            (body.get(..end).unwrap_or_default(), body.get(end + 1..).unwrap_or_default())
        } else {
            let end = after.iter().position(|c| *c == b';').unwrap_or(after.len());
            (after.get(..end).unwrap_or_default(), after.get(end..).unwrap_or_default())
        };
        let list = match key {
            b"URI" => Some(&mut uris),
            b"DNS" => Some(&mut dns),
            b"By" | b"Hash" | b"Cert" | b"Chain" | b"Subject" => None,
            _ => return Err(BAD),
        };
        if let Some(list) = list {
            // Envoy writes `URI=` when the certificate has no URI SAN.
            if !value.is_empty() {
                list.push(value.to_vec());
                count += 1;
                if count > MAX_PEER_SANS {
                    return Err("every SAN of the peer certificate (more SANs than wasmesh reads)");
                }
            }
        }
        rest = next;
    }
    Ok((uris, dns))
}

/// The end of a quoted value (`\` escapes the next byte, as in Envoy's RFC 2253 subject).
fn closing_quote(body: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(c) = body.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The element's first SAN of a kind must be the one Envoy reports (and the element must list
/// that kind when the certificate has one: `set_current_client_cert_details` may leave it out).
fn check_first(list: &[Vec<u8>], first: Option<&[u8]>, kind: &'static str) -> Result<(), SansError> {
    match (list.first(), first) {
        (None, None) => Ok(()),
        (Some(a), Some(b)) if a.as_slice() == b => Ok(()),
        (None, Some(_)) if kind == "URI" => {
            Err("every SAN of the peer certificate (x-forwarded-client-cert lists no URI SAN: set_current_client_cert_details.uri is off)")
        }
        (None, Some(_)) => {
            Err("every SAN of the peer certificate (x-forwarded-client-cert lists no DNS SAN: set_current_client_cert_details.dns is off)")
        }
        _ => Err("every SAN of the peer certificate (x-forwarded-client-cert disagrees with the connection's first SAN)"),
    }
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).rev().find(|&i| hay.get(i..i + needle.len()) == Some(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "cd5a2eec6a452f4fbfad01802b244c967fb30eb120b8b97c24a7c29fadac30af";
    const A: &[u8] = b"spiffe://cluster.local/ns/foo/sa/allow";

    /// The element Envoy 1.40 wrote for a certificate [allow, deny] + [a.example, b.example]
    /// (captured from real Envoy, APPEND_FORWARD, subject + uri + dns).
    fn envoy_element() -> String {
        format!("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash={D};Subject=\"CN=leaf,O=spike\";URI=spiffe://cluster.local/ns/foo/sa/allow;URI=spiffe://cluster.local/ns/foo/sa/deny;DNS=a.example;DNS=b.example")
    }

    fn sans(xfcc: &[&str], first_uri: Option<&[u8]>, first_dns: Option<&[u8]>) -> Result<Vec<String>, SansError> {
        let values: Vec<&[u8]> = xfcc.iter().map(|v| v.as_bytes()).collect();
        current_sans(&values, D.as_bytes(), first_uri, first_dns)
            .map(|v| v.into_iter().map(|s| String::from_utf8(s).unwrap()).collect())
    }

    #[test]
    fn every_uri_then_every_dns_san_of_the_current_element() {
        let want = vec![
            "spiffe://cluster.local/ns/foo/sa/allow".to_string(),
            "spiffe://cluster.local/ns/foo/sa/deny".into(),
            "a.example".into(),
            "b.example".into(),
        ];
        assert_eq!(sans(&[&envoy_element()], Some(A), Some(b"a.example")).unwrap(), want);
        // A forged prefix (even one naming the same digest) is not the current element.
        let forged = format!("By=x;Hash={D};URI=spiffe://cluster.local/ns/foo/sa/allow,{}", envoy_element());
        assert_eq!(sans(&[&forged], Some(A), Some(b"a.example")).unwrap(), want);
        // An unterminated quote in the client's part does not swallow Envoy's element.
        let quote = format!("By=x;Hash=y;URI=\"spiffe://f,{}", envoy_element());
        assert_eq!(sans(&[&quote], Some(A), Some(b"a.example")).unwrap(), want);
        // The digest compares case-insensitively.
        let upper = envoy_element().replace(D, &D.to_ascii_uppercase());
        assert_eq!(sans(&[&upper], Some(A), Some(b"a.example")).unwrap(), want);
    }

    #[test]
    fn anything_unclear_is_an_error() {
        let e = envoy_element();
        // No header, two header lines, no element for this certificate.
        assert!(sans(&[], Some(A), None).is_err());
        assert!(sans(&[&e, "By=x"], Some(A), Some(b"a.example")).is_err());
        assert!(sans(&["By=x;Hash=00;URI=spiffe://a"], Some(A), None).is_err());
        // The element disagrees with the first SANs Envoy reports, or leaves a kind out.
        assert!(sans(&[&e], Some(b"spiffe://other"), Some(b"a.example")).is_err());
        assert!(sans(&[&e], Some(A), Some(b"b.example")).is_err());
        let no_dns = format!("Hash={D};URI=spiffe://cluster.local/ns/foo/sa/allow");
        assert!(sans(&[&no_dns], Some(A), Some(b"a.example")).is_err());
        assert_eq!(sans(&[&no_dns], Some(A), None).unwrap(), vec![String::from_utf8(A.to_vec()).unwrap()]);
        let no_uri = format!("Hash={D};Subject=\"CN=x\";DNS=a.example");
        assert!(sans(&[&no_uri], Some(A), Some(b"a.example")).is_err());
        // A SAN of the first kind smuggling `;URI=` disagrees with the first SAN.
        let smuggled = format!("Hash={D};URI=spiffe://x;URI=spiffe://cluster.local/ns/foo/sa/allow");
        assert!(sans(&[&smuggled], Some(b"spiffe://x;URI=spiffe://cluster.local/ns/foo/sa/allow"), None).is_err());
        // Malformed: an unknown key, an unterminated quote.
        assert!(sans(&[&format!("Hash={D};Bogus=1")], Some(A), None).is_err());
        assert!(sans(&[&format!("Hash={D};Subject=\"CN=x")], Some(A), None).is_err());
        // Too many SANs.
        let many: String = (0..=MAX_PEER_SANS).map(|i| format!(";URI=spiffe://a/{i}")).collect();
        assert!(sans(&[&format!("Hash={D}{many}")], Some(b"spiffe://a/0"), None).is_err());
        // Without the digest nothing is trusted.
        assert!(current_sans(&[e.as_bytes()], b"", Some(A), Some(b"a.example")).is_err());
    }

    #[test]
    fn quoted_subject_with_escapes_and_empty_uri() {
        let e = format!("Hash={D};Subject=\"CN=a\\\";URI=spiffe://evil\";URI=;DNS=a.example");
        assert_eq!(sans(&[&e], None, Some(b"a.example")).unwrap(), vec!["a.example".to_string()]);
        // No SAN at all: nothing to read.
        assert_eq!(sans(&[], None, None).unwrap(), Vec::<String>::new());
    }
}
