//! The incoming trace context and the headers the upstream receives.
//!
//! Formats (facts in /work/shared/spec/envoy-wasm-telemetry-routing.md §5.1, §5.2):
//! - W3C `traceparent: 00-{32 hex trace}-{16 hex parent}-{2 hex flags}`, lower-case only, all-zero
//!   ids invalid, version `ff` invalid, a higher version parsed on its first four fields when
//!   followed by `-` or the end; `tracestate` only read when `traceparent` is valid, at most
//!   [`MAX_TRACESTATE_MEMBERS`] `key=value` members, dropped whole when malformed.
//! - B3 single `b3: {trace}-{span}[-{sampling}[-{parent}]]` or `b3: {sampling}`, taking precedence
//!   over the multi-header form `x-b3-traceid`/`x-b3-spanid`/`x-b3-sampled`/`x-b3-flags`.
//!
//! Which format is read first follows the provider, as Istio's Envoy tracers do: OpenTelemetry
//! reads W3C then B3, Zipkin reads B3 then W3C. Both formats are always sent upstream.

use crate::{hex, parse_lower_hex};

/// Most `tracestate` members (W3C: 32).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` kept (W3C asks vendors to propagate at least 512 characters).
pub const MAX_TRACESTATE_LEN: usize = 4096;

/// Which format is read first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    W3c,
    B3,
}

/// The caller's span, from the incoming headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: u128,
    /// The trace id came as 128 bits (B3 allows 64; W3C is always 128).
    pub trace_id_128: bool,
    pub span_id: u64,
    /// The caller's own parent, when B3 said it (only reported, never propagated).
    pub grandparent_span_id: Option<u64>,
}

/// What the incoming headers say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Incoming {
    pub parent: Option<Parent>,
    /// The caller's sampling decision; `None`: deferred to this proxy.
    pub sampled: Option<bool>,
    /// A valid `tracestate`, passed on unchanged.
    pub tracestate: Option<String>,
    /// The request carried a single `b3` header (it is rewritten, so it cannot contradict the
    /// multi headers upstream).
    pub had_b3_single: bool,
    /// Which header the context came from (`traceparent`, `b3`, `x-b3-*`), for logs and tests.
    pub source: Option<&'static str>,
}

/// W3C `traceparent`: `(trace id, parent id, flags)`; `None` when it must be ignored.
pub fn parse_traceparent(v: &str) -> Option<(u128, u64, u8)> {
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    let version = v.get(0..2)?;
    let version = u8::try_from(parse_lower_hex(version, 2)?).ok()?;
    if version == 0xff {
        return None;
    }
    if version == 0 && v.len() != 55 {
        return None;
    }
    if v.len() < 55 {
        return None;
    }
    if v.get(2..3)? != "-" || v.get(35..36)? != "-" || v.get(52..53)? != "-" {
        return None;
    }
    if version > 0 && v.len() > 55 && v.get(55..56)? != "-" {
        return None;
    }
    let trace = parse_lower_hex(v.get(3..35)?, 32)?;
    let parent = u64::try_from(parse_lower_hex(v.get(36..52)?, 16)?).ok()?;
    let flags = u8::try_from(parse_lower_hex(v.get(53..55)?, 2)?).ok()?;
    if trace == 0 || parent == 0 {
        return None;
    }
    Some((trace, parent, flags))
}

/// Whether a `tracestate` value is valid (W3C list rules); empty members are allowed and skipped.
pub fn valid_tracestate(v: &str) -> bool {
    if v.len() > MAX_TRACESTATE_LEN {
        return false;
    }
    let mut members = 0usize;
    for member in v.split(',') {
        let m = member.trim_matches(|c| c == ' ' || c == '\t');
        if m.is_empty() {
            continue;
        }
        members += 1;
        if members > MAX_TRACESTATE_MEMBERS {
            return false;
        }
        let Some((key, value)) = m.split_once('=') else { return false };
        if !valid_key(key) || !valid_value(value) {
            return false;
        }
    }
    true
}

fn valid_key(key: &str) -> bool {
    let simple = |k: &str, max: usize| {
        let mut b = k.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
            && k.len() <= max
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-*/".contains(&c))
    };
    match key.split_once('@') {
        None => simple(key, 256),
        Some((tenant, system)) => simple(tenant, 241) && simple(system, 14),
    }
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && !value.ends_with(' ')
        && value.bytes().all(|c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// A B3 id of 16 or 32 lower-hex digits: `(id, is 128-bit)`.
fn b3_trace_id(s: &str) -> Option<(u128, bool)> {
    let id = match s.len() {
        16 => (parse_lower_hex(s, 16)?, false),
        32 => (parse_lower_hex(s, 32)?, true),
        _ => return None,
    };
    (id.0 != 0).then_some(id)
}

fn b3_span_id(s: &str) -> Option<u64> {
    u64::try_from(parse_lower_hex(s, 16)?).ok().filter(|v| *v != 0)
}

/// A B3 sampling state: `1`/`d` (debug) sampled, `0` not; lenient `true`/`false` in the multi
/// header form.
fn b3_sampling(s: &str, lenient: bool) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        "true" if lenient => Some(true),
        "false" if lenient => Some(false),
        _ => None,
    }
}

/// Single `b3`: `None` when malformed (ignored: the multi headers are read instead).
pub fn parse_b3_single(v: &str) -> Option<(Option<Parent>, Option<bool>)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    match parts.as_slice() {
        [s] => b3_sampling(s, false).map(|s| (None, Some(s))),
        [t, s, rest @ ..] if rest.len() <= 2 => {
            let (trace_id, trace_id_128) = b3_trace_id(t)?;
            let span_id = b3_span_id(s)?;
            let sampled = match rest.first() {
                Some(x) => Some(b3_sampling(x, false)?),
                None => None,
            };
            let grandparent_span_id = match rest.get(1) {
                Some(p) => Some(b3_span_id(p)?),
                None => None,
            };
            Some((Some(Parent { trace_id, trace_id_128, span_id, grandparent_span_id }), sampled))
        }
        _ => None,
    }
}

/// B3 multi headers: the parent when trace and span ids are both valid; the sampling state from
/// `x-b3-flags: 1` (debug) or `x-b3-sampled`.
pub fn parse_b3_multi(
    trace_id: Option<&str>,
    span_id: Option<&str>,
    parent_id: Option<&str>,
    sampled: Option<&str>,
    flags: Option<&str>,
) -> (Option<Parent>, Option<bool>) {
    let parent = match (trace_id.and_then(b3_trace_id), span_id.and_then(b3_span_id)) {
        (Some((trace_id, trace_id_128)), Some(span_id)) => {
            Some(Parent { trace_id, trace_id_128, span_id, grandparent_span_id: parent_id.and_then(b3_span_id) })
        }
        _ => None,
    };
    let sampled = if flags == Some("1") { Some(true) } else { sampled.and_then(|s| b3_sampling(s, true)) };
    (parent, sampled)
}

/// Reads the incoming context; `header` gives a request header's first value.
pub fn extract<'a>(header: impl Fn(&str) -> Option<&'a str>, prefer: Prefer) -> Incoming {
    let had_b3_single = header("b3").is_some();
    let w3c = || -> Option<Incoming> {
        let (trace_id, span_id, flags) = parse_traceparent(header("traceparent")?)?;
        let tracestate = header("tracestate").filter(|t| valid_tracestate(t)).map(str::to_string);
        Some(Incoming {
            parent: Some(Parent { trace_id, trace_id_128: true, span_id, grandparent_span_id: None }),
            sampled: Some(flags & 1 == 1),
            tracestate,
            had_b3_single,
            source: Some("traceparent"),
        })
    };
    let b3 = || -> Option<Incoming> {
        if let Some((parent, sampled)) = header("b3").and_then(parse_b3_single) {
            return Some(Incoming { parent, sampled, tracestate: None, had_b3_single, source: Some("b3") });
        }
        let (parent, sampled) = parse_b3_multi(
            header("x-b3-traceid"),
            header("x-b3-spanid"),
            header("x-b3-parentspanid"),
            header("x-b3-sampled"),
            header("x-b3-flags"),
        );
        (parent.is_some() || sampled.is_some()).then_some(Incoming {
            parent,
            sampled,
            tracestate: None,
            had_b3_single,
            source: Some("x-b3-*"),
        })
    };
    let found = match prefer {
        Prefer::W3c => w3c().or_else(b3),
        Prefer::B3 => match b3() {
            // A B3 sampling state alone still lets a W3C parent be used.
            Some(i) if i.parent.is_none() => {
                w3c().map(|w| Incoming { sampled: i.sampled.or(w.sampled), ..w }).or(Some(i))
            }
            found => found.or_else(w3c),
        },
    };
    found.unwrap_or(Incoming { had_b3_single, ..Incoming::default() })
}

/// The proxy's span in the trace: what the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub trace_id: u128,
    pub trace_id_128: bool,
    pub span_id: u64,
    /// The caller's span (this span's parent).
    pub parent_span_id: Option<u64>,
    pub sampled: bool,
    pub tracestate: Option<String>,
    pub b3_single: bool,
}

impl Outgoing {
    /// The context of a child span `span_id` of this one (Envoy's `spawnChild`: same trace,
    /// sampling and `tracestate`, this span as its parent): what the upstream receives when the
    /// proxy reports a separate upstream span.
    pub fn child(&self, span_id: u64) -> Outgoing {
        Outgoing { span_id, parent_span_id: Some(self.span_id), ..self.clone() }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(self.trace_id, if self.trace_id_128 { 32 } else { 16 })
    }

    /// Headers to set (name, value) and to remove, in that order.
    pub fn headers(&self) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
        let span = hex(u128::from(self.span_id), 16);
        let flag = if self.sampled { "1" } else { "0" };
        let mut set = vec![
            ("traceparent", format!("00-{}-{span}-{}", hex(self.trace_id, 32), if self.sampled { "01" } else { "00" })),
            ("x-b3-traceid", self.trace_id_hex()),
            ("x-b3-spanid", span.clone()),
            ("x-b3-sampled", flag.to_string()),
        ];
        let mut remove = vec!["x-b3-flags"];
        match self.parent_span_id {
            Some(p) => set.push(("x-b3-parentspanid", hex(u128::from(p), 16))),
            None => remove.push("x-b3-parentspanid"),
        }
        match &self.tracestate {
            Some(t) => set.push(("tracestate", t.clone())),
            None => remove.push("tracestate"),
        }
        if self.b3_single {
            let mut v = format!("{}-{span}-{flag}", self.trace_id_hex());
            if let Some(p) = self.parent_span_id {
                v.push('-');
                v.push_str(&hex(u128::from(p), 16));
            }
            set.push(("b3", v));
        }
        (set, remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn from<'a>(h: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |n| h.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    }

    #[test]
    fn traceparent_validation() {
        assert_eq!(parse_traceparent(TP), Some((0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331, 1)));
        let bad = [
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b), None, "{b}");
        }
        // A higher version: the first four fields, then '-' or the end.
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-what").is_some());
        assert!(parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03x").is_none());
    }

    #[test]
    fn tracestate_validation() {
        assert!(valid_tracestate("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"));
        assert!(valid_tracestate("tenant@system=1,,"));
        assert!(!valid_tracestate("Congo=1"));
        assert!(!valid_tracestate("congo"));
        assert!(!valid_tracestate("congo=a=b"));
        let many = (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
        assert!(!valid_tracestate(&many));
    }

    #[test]
    fn a_child_context_is_sent_under_its_parent() {
        let parent = Outgoing {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c,
            trace_id_128: true,
            span_id: 0x1111,
            parent_span_id: Some(0xb7ad6b7169203331),
            sampled: true,
            tracestate: Some("congo=t61rcWkgMzE".into()),
            b3_single: true,
        };
        let child = parent.child(0x2222);
        assert_eq!((child.trace_id, child.span_id, child.parent_span_id), (parent.trace_id, 0x2222, Some(0x1111)));
        let (set, _) = child.headers();
        let get = |n: &str| set.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("traceparent"), Some("00-0af7651916cd43dd8448eb211c80319c-0000000000002222-01"));
        assert_eq!(get("x-b3-parentspanid"), Some("0000000000001111"));
        assert_eq!(get("tracestate"), Some("congo=t61rcWkgMzE"));
        assert_eq!(get("b3"), Some("0af7651916cd43dd8448eb211c80319c-0000000000002222-1-0000000000001111"));
    }

    #[test]
    fn w3c_sampled_bit_is_tested_not_compared() {
        let h = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03")];
        assert_eq!(extract(from(&h), Prefer::W3c).sampled, Some(true));
        let h = [("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02")];
        assert_eq!(extract(from(&h), Prefer::W3c).sampled, Some(false));
    }

    #[test]
    fn tracestate_is_ignored_without_a_valid_traceparent() {
        let h = [("traceparent", "00-zz"), ("tracestate", "a=b")];
        assert_eq!(extract(from(&h), Prefer::W3c), Incoming::default());
        let h = [("traceparent", TP), ("tracestate", "A=b")];
        let i = extract(from(&h), Prefer::W3c);
        assert!(i.parent.is_some());
        assert_eq!(i.tracestate, None);
    }

    #[test]
    fn b3_single_takes_precedence_over_multi() {
        let h = [
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"),
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ];
        let i = extract(from(&h), Prefer::B3);
        let p = i.parent.unwrap();
        assert_eq!(p.trace_id, 0x80f198ee56343ba864fe8b2a57d3eff7);
        assert_eq!(p.span_id, 0xe457b5a2e4d86bd1);
        assert_eq!(p.grandparent_span_id, Some(0x05e3ac9a4f6e3b90));
        assert_eq!(i.sampled, Some(true));
        assert!(i.had_b3_single);
    }

    #[test]
    fn b3_forms() {
        assert_eq!(parse_b3_single("0"), Some((None, Some(false))));
        assert_eq!(parse_b3_single("d").map(|x| x.1), Some(Some(true)));
        assert!(parse_b3_single("-").is_none());
        assert!(parse_b3_single("").is_none());
        assert!(parse_b3_single("463ac35c9f6413ad-a2fb4a1d1a96d312-x").is_none());
        let (p, s) = parse_b3_single("463ac35c9f6413ad-a2fb4a1d1a96d312").unwrap();
        assert!(!p.unwrap().trace_id_128);
        assert_eq!(s, None);
        let (p, s) = parse_b3_multi(Some("463ac35c9f6413ad"), Some("a2fb4a1d1a96d312"), None, Some("true"), None);
        assert!(p.is_some());
        assert_eq!(s, Some(true));
        let (_, s) = parse_b3_multi(None, None, None, Some("0"), Some("1"));
        assert_eq!(s, Some(true), "debug implies sampled");
        let (p, _) = parse_b3_multi(Some("463AC35C9F6413AD"), Some("a2fb4a1d1a96d312"), None, None, None);
        assert!(p.is_none(), "upper-case hex is malformed");
    }

    #[test]
    fn the_preferred_format_wins_when_both_come() {
        let h = [("traceparent", TP), ("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312")];
        assert_eq!(extract(from(&h), Prefer::W3c).source, Some("traceparent"));
        assert_eq!(extract(from(&h), Prefer::B3).source, Some("x-b3-*"));
        // An invalid traceparent falls back to B3.
        let h = [("traceparent", "00-bad"), ("x-b3-traceid", "463ac35c9f6413ad"), ("x-b3-spanid", "a2fb4a1d1a96d312")];
        assert_eq!(extract(from(&h), Prefer::W3c).source, Some("x-b3-*"));
    }

    #[test]
    fn outgoing_headers_carry_both_formats() {
        let o = Outgoing {
            trace_id: 0x463ac35c9f6413ad,
            trace_id_128: false,
            span_id: 0x1,
            parent_span_id: Some(0xa2fb4a1d1a96d312),
            sampled: true,
            tracestate: Some("a=b".into()),
            b3_single: true,
        };
        let (set, remove) = o.headers();
        let get = |n: &str| set.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("traceparent"), Some("00-0000000000000000463ac35c9f6413ad-0000000000000001-01"));
        assert_eq!(get("x-b3-traceid"), Some("463ac35c9f6413ad"));
        assert_eq!(get("x-b3-parentspanid"), Some("a2fb4a1d1a96d312"));
        assert_eq!(get("b3"), Some("463ac35c9f6413ad-0000000000000001-1-a2fb4a1d1a96d312"));
        assert_eq!(get("tracestate"), Some("a=b"));
        assert_eq!(remove, vec!["x-b3-flags"]);
    }
}
