//! Trust-domain aliases (meshConfig `trustDomainAliases`), as istiod's `trustdomain.Bundle`
//! migrates policy values: a principal in any trust domain of the bundle is written for every
//! trust domain of it, a `trustDomains` value for every alias.

/// `Bundle.ReplaceTrustDomainAliases`.
pub fn replace_trust_domain_aliases(bundle: &[String], principals: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in principals {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() != 5 || parts[0] == "*" {
            out.push(p.clone());
            continue;
        }
        let td = parts[0];
        if td_string_match(td, bundle) || td == "cluster.local" {
            let mut for_aliases: Vec<String> = Vec::new();
            for b in bundle {
                let np = if suffix_match(b, td) { p.clone() } else { format!("{b}/{}", parts[1..].join("/")) };
                if !for_aliases.contains(&np) {
                    for_aliases.push(np);
                }
            }
            out.extend(for_aliases);
        } else {
            out.push(p.clone());
        }
    }
    out
}

/// `Bundle.ExpandTrustDomainAliases`.
pub fn expand_trust_domain_aliases(bundle: &[String], values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        let add: Vec<String> = if bundle.contains(v) { bundle.to_vec() } else { vec![v.clone()] };
        for a in add {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// trustdomain `stringMatch`: the pattern may be on either side.
fn td_string_match(a: &str, list: &[String]) -> bool {
    list.iter().any(|s| {
        a == s || s == "*" || prefix_match(a, s) || prefix_match(s, a) || suffix_match(a, s) || suffix_match(s, a)
    })
}
fn prefix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_suffix('*').is_some_and(|p| a.starts_with(p))
}
fn suffix_match(a: &str, pattern: &str) -> bool {
    pattern.strip_prefix('*').is_some_and(|p| a.ends_with(p))
}
