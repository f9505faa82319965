//! Istio's Wasm-era encoding of tags in a metric name, and the bootstrap regexes that turn them
//! back into real Envoy tags (and so Prometheus labels).
//!
//! A metric is defined as `<tag>=.=<value>;.;<tag>=.=<value>;.;…;.;istio_requests_total`
//! (istio/proxy `extensions/stats/plugin.h`: value separator `=.=`, field separator `;.;`).
//! Envoy stores it as `wasmcustom.<that>`; `stats_config.stats_tags` regexes extract each tag and
//! remove it from the name, which leaves `wasmcustom.istio_requests_total`; `/stats/prometheus`
//! strips the registered `wasmcustom` namespace and prints `istio_requests_total{tag="value",…}`.

/// Longest label value kept (longer values are cut at a character boundary).
pub const MAX_VALUE_BYTES: usize = 256;

/// Appends `name=.=value;.;`, with the value made safe for extraction.
pub fn push_tag(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str("=.=");
    push_value(out, value);
    out.push_str(";.;");
}

fn needs_care(c: char) -> bool {
    c == ';' || c == '=' || c == '"' || c == '\\' || c.is_control()
}

/// A value must not contain `=.=` or `;.;`, nor end in `;.` (which would end early on the
/// separator that follows); quotes, backslashes and control characters become `_` so the
/// Prometheus text stays well-formed.
fn push_value(out: &mut String, value: &str) {
    let mut v = value;
    if v.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !v.is_char_boundary(end) {
            end -= 1;
        }
        v = &v[..end];
    }
    if !v.chars().any(needs_care) {
        out.push_str(v);
        return;
    }
    let start = out.len();
    for c in v.chars() {
        out.push(if c == '"' || c == '\\' || c.is_control() { '_' } else { c });
    }
    // Break separator look-alikes in what was just written.
    loop {
        let written = &out[start..];
        let hit = written.find("=.=").or_else(|| written.find(";.;"));
        match hit {
            Some(i) => out.replace_range(start + i + 1..start + i + 2, "_"),
            None => break,
        }
    }
    if out[start..].ends_with(";.") {
        let len = out.len();
        out.replace_range(len - 1..len, "_");
    }
}

/// The `stats_config.stats_tags` entry for a tag. The name must follow `.` (after `wasmcustom`) or
/// the previous tag's `;.;`, so a tag called `service` does not match inside
/// `destination_service=.=…`.
pub fn stats_tag_regex(tag: &str) -> String {
    format!(r"(?:\.|;\.;)({tag}=\.=(.*?);\.;)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(pairs: &[(&str, &str)], metric: &str) -> String {
        let mut s = String::from("wasmcustom.");
        for (n, v) in pairs {
            push_tag(&mut s, n, v);
        }
        s.push_str(metric);
        s
    }

    /// What Envoy's tag extraction does with the regexes: each regex runs on the full name; group
    /// 1 is removed and group 2 is the value.
    fn extract(name: &str, tags: &[&str]) -> (String, Vec<(String, String)>) {
        let mut removed: Vec<(usize, usize)> = Vec::new();
        let mut out = Vec::new();
        for t in tags {
            let re = regex_lite(t);
            if let Some((g1, value)) = re(name) {
                removed.push(g1);
                out.push((t.to_string(), value));
            }
        }
        let mut rest = String::new();
        for (i, c) in name.char_indices() {
            if !removed.iter().any(|(s, e)| i >= *s && i < *e) {
                rest.push(c);
            }
        }
        (rest, out)
    }

    /// A hand-rolled matcher equivalent to `stats_tag_regex(tag)` (the core has no regex crate):
    /// finds `tag=.=` preceded by `.` or `;.;`, then the shortest value followed by `;.;`.
    fn regex_lite(tag: &str) -> impl Fn(&str) -> Option<((usize, usize), String)> + '_ {
        move |name: &str| {
            let needle = format!("{tag}=.=");
            let mut from = 0;
            while let Some(pos) = name[from..].find(&needle) {
                let at = from + pos;
                let before = &name[..at];
                if before.ends_with(";.;") || before.ends_with('.') {
                    let vstart = at + needle.len();
                    let vend = vstart + name[vstart..].find(";.;")?;
                    return Some(((at, vend + 3), name[vstart..vend].to_string()));
                }
                from = at + 1;
            }
            None
        }
    }

    #[test]
    fn round_trips_through_extraction() {
        let pairs = [
            ("reporter", "source"),
            ("destination_service", "reviews.bookinfo.svc.cluster.local"),
            ("service", "x"),
            ("source_principal", "spiffe://cluster.local/ns/a/sa/b"),
            ("response_code", "200"),
            ("grpc_response_status", ""),
        ];
        let name = enc(&pairs, "istio_requests_total");
        let tags: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        let (rest, got) = extract(&name, &tags);
        assert_eq!(rest, "wasmcustom.istio_requests_total");
        for (n, v) in pairs {
            assert!(got.contains(&(n.to_string(), v.to_string())), "{n}");
        }
    }

    #[test]
    fn hostile_values_cannot_break_extraction() {
        for evil in [
            "a;.;reporter=.=x",
            "x;.",
            ";.;",
            "=.=",
            "a;",
            ";.;.;",
            "quote\"back\\slash\nnl",
            "Mozilla/5.0 (X11; Linux x86_64)",
        ] {
            let pairs = [("reporter", "source"), ("request_host", evil), ("response_code", "200")];
            let name = enc(&pairs, "istio_requests_total");
            let (rest, got) = extract(&name, &["reporter", "request_host", "response_code"]);
            assert_eq!(rest, "wasmcustom.istio_requests_total", "value {evil:?} → {name}");
            assert_eq!(got.len(), 3);
            assert!(got.contains(&("reporter".into(), "source".into())));
            assert!(got.contains(&("response_code".into(), "200".into())));
        }
        let mut s = String::new();
        push_value(&mut s, "Mozilla/5.0 (X11; Linux x86_64)");
        assert_eq!(s, "Mozilla/5.0 (X11; Linux x86_64)", "ordinary semicolons are kept");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(300);
        let mut s = String::new();
        push_value(&mut s, &long);
        assert!(s.len() <= MAX_VALUE_BYTES);
        assert!(s.chars().all(|c| c == 'é'));
    }

    #[test]
    fn regex_text() {
        assert_eq!(stats_tag_regex("reporter"), r"(?:\.|;\.;)(reporter=\.=(.*?);\.;)");
    }
}
