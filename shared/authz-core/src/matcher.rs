//! The matchers Istio's AuthorizationPolicy translation produces, evaluated on raw bytes.
//!
//! istiod turns every policy value into an Envoy `StringMatcher` (exact, prefix, suffix or an
//! RE2 `safe_regex` that must match the whole value), a `HeaderMatcher`, a CIDR range or a
//! `uri_template`. Every regex istiod writes is a *glob*: literal text, `.*`, `.+`, `[^/]*`, and
//! for path templates the RFC 3986 `pchar` classes. [`Glob`] implements exactly those, so the
//! filter needs no regex engine and every value is matched in linear time.

use std::net::IpAddr;

/// A character class a [`Glob`] item can consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// RE2 `.`: any byte except `\n`.
    AnyButNewline,
    /// `[^/]`.
    NotSlash,
    /// Envoy's uri-template literal class `[a-zA-Z0-9-._~%!$&'()+,;:@=]` (RFC 3986 pchar minus `*`).
    Pchar,
    /// `[pchar/]`, what a `**` template operator consumes.
    PcharOrSlash,
}

impl Class {
    #[inline]
    pub fn contains(self, c: u8) -> bool {
        match self {
            Class::AnyButNewline => c != b'\n',
            Class::NotSlash => c != b'/',
            Class::Pchar => is_pchar(c),
            Class::PcharOrSlash => c == b'/' || is_pchar(c),
        }
    }
}

/// Envoy's `kLiteral` class for uri templates.
pub fn is_pchar(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'+'
                | b','
                | b';'
                | b':'
                | b'@'
                | b'='
        )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Byte(u8),
    /// Exactly one byte of the class.
    One(Class),
    /// Zero or more bytes of the class.
    Star(Class),
}

/// A pattern that must match the whole input: literal bytes and class repetitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Glob {
    items: Vec<Item>,
}

impl Glob {
    pub fn new() -> Self {
        Glob::default()
    }
    pub fn lit(mut self, text: &[u8]) -> Self {
        self.items.extend(text.iter().map(|b| Item::Byte(*b)));
        self
    }
    /// `class*`
    pub fn star(mut self, class: Class) -> Self {
        self.items.push(Item::Star(class));
        self
    }
    /// `class+`
    pub fn plus(mut self, class: Class) -> Self {
        self.items.push(Item::One(class));
        self.items.push(Item::Star(class));
        self
    }

    /// Full match, by simulating the automaton (no backtracking: linear in input × pattern).
    /// The state sets live on the stack for globs of up to [`STACK_GLOB_ITEMS`] items (every
    /// glob istiod's translation makes from a value within [`crate::compile::MAX_VALUE_BYTES`]),
    /// so a match allocates nothing; a longer glob still matches, with two heap sets.
    pub fn matches(&self, input: &[u8]) -> bool {
        let words = (self.items.len() + 1).div_ceil(64);
        let mut cur = [0u64; STACK_WORDS];
        let mut next = [0u64; STACK_WORDS];
        match (cur.get_mut(..words), next.get_mut(..words)) {
            (Some(cur), Some(next)) => self.run(input, cur, next),
            _ => self.run(input, &mut vec![0u64; words], &mut vec![0u64; words]),
        }
    }

    fn run<'s>(&self, input: &[u8], mut cur: &'s mut [u64], mut next: &'s mut [u64]) -> bool {
        let n = self.items.len();
        set(cur, 0);
        self.close(cur);
        for &c in input {
            next.iter_mut().for_each(|w| *w = 0);
            let mut any = false;
            for (i, item) in self.items.iter().enumerate() {
                if !get(cur, i) {
                    continue;
                }
                let to = match *item {
                    Item::Byte(b) if b == c => i + 1,
                    Item::One(cl) if cl.contains(c) => i + 1,
                    Item::Star(cl) if cl.contains(c) => i,
                    _ => continue,
                };
                set(next, to);
                any = true;
            }
            if !any {
                return false;
            }
            self.close(next);
            std::mem::swap(&mut cur, &mut next);
        }
        get(cur, n)
    }

    /// The number of items (bytes and class repetitions).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Epsilon closure: a `Star` may be skipped.
    fn close(&self, states: &mut [u64]) {
        for (i, item) in self.items.iter().enumerate() {
            if matches!(item, Item::Star(_)) && get(states, i) {
                set(states, i + 1);
            }
        }
    }
}

/// Words of the on-stack state sets of [`Glob::matches`].
const STACK_WORDS: usize = 16;
/// Most items of a glob matched without allocating (one state more than items).
pub const STACK_GLOB_ITEMS: usize = STACK_WORDS * 64 - 1;

#[inline]
fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}
#[inline]
fn set(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

/// An Envoy `StringMatcher` as istiod writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    /// `ignore_case: true` variants; the stored value is ASCII lower-case.
    ExactIgnoreCase(Box<[u8]>),
    PrefixIgnoreCase(Box<[u8]>),
    SuffixIgnoreCase(Box<[u8]>),
    /// `safe_regex: ".+"`: non-empty and no newline.
    NonEmpty,
    /// Any of these globs (a `safe_regex` with alternatives).
    Globs(Box<[Glob]>),
}

impl StrMatch {
    pub fn matches(&self, v: &[u8]) -> bool {
        match self {
            StrMatch::Exact(x) => v == &x[..],
            StrMatch::Prefix(x) => v.starts_with(x),
            StrMatch::Suffix(x) => v.ends_with(x),
            StrMatch::ExactIgnoreCase(x) => v.eq_ignore_ascii_case(x),
            StrMatch::PrefixIgnoreCase(x) => v.len() >= x.len() && v[..x.len()].eq_ignore_ascii_case(x),
            StrMatch::SuffixIgnoreCase(x) => v.len() >= x.len() && v[v.len() - x.len()..].eq_ignore_ascii_case(x),
            StrMatch::NonEmpty => !v.is_empty() && !v.contains(&b'\n'),
            StrMatch::Globs(gs) => gs.iter().any(|g| g.matches(v)),
        }
    }

    pub fn glob(g: Glob) -> StrMatch {
        StrMatch::Globs(vec![g].into_boxed_slice())
    }

    /// istiod `matcher.StringMatcherWithPrefix(v, prefix)`: `*` → `.+` (prefix ignored);
    /// `*x` → suffix `x` (or regex `prefix.*x` when a prefix is added); `x*` → prefix
    /// `prefix+x`; otherwise exact `prefix+v`. Checked in that order, so `*a*` is the suffix `a*`.
    pub fn istio(v: &str, prefix: &str) -> StrMatch {
        if v == "*" {
            StrMatch::NonEmpty
        } else if let Some(rest) = v.strip_prefix('*') {
            if prefix.is_empty() {
                StrMatch::Suffix(rest.as_bytes().into())
            } else {
                StrMatch::glob(Glob::new().lit(prefix.as_bytes()).star(Class::AnyButNewline).lit(rest.as_bytes()))
            }
        } else if let Some(rest) = v.strip_suffix('*') {
            StrMatch::Prefix(format!("{prefix}{rest}").into_bytes().into())
        } else {
            StrMatch::Exact(format!("{prefix}{v}").into_bytes().into())
        }
    }
}

/// An Envoy `HeaderMatcher` as istiod writes them (`matcher.HeaderMatcher` / `HostMatcher`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderMatch {
    /// `present_match: true` (istiod's translation of `*`): the header exists, even empty.
    Present,
    Str(StrMatch),
}

impl HeaderMatch {
    /// `*` → present; `*x` → suffix; `x*` → prefix; otherwise exact. `ignore_case` for hosts.
    pub fn istio(v: &str, ignore_case: bool) -> HeaderMatch {
        let lower = |s: &str| -> Box<[u8]> {
            if ignore_case {
                s.to_ascii_lowercase().into_bytes().into()
            } else {
                s.as_bytes().into()
            }
        };
        if v == "*" {
            HeaderMatch::Present
        } else if let Some(rest) = v.strip_prefix('*') {
            HeaderMatch::Str(if ignore_case {
                StrMatch::SuffixIgnoreCase(lower(rest))
            } else {
                StrMatch::Suffix(lower(rest))
            })
        } else if let Some(rest) = v.strip_suffix('*') {
            HeaderMatch::Str(if ignore_case {
                StrMatch::PrefixIgnoreCase(lower(rest))
            } else {
                StrMatch::Prefix(lower(rest))
            })
        } else {
            HeaderMatch::Str(if ignore_case { StrMatch::ExactIgnoreCase(lower(v)) } else { StrMatch::Exact(lower(v)) })
        }
    }

    /// Envoy's header matcher over every value of the header: true when any value matches
    /// (present: when there is any value).
    pub fn matches_any<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        values.any(|v| self.matches(Some(v)))
    }

    /// `value`: one value of the header, `None` when absent.
    pub fn matches(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (_, None) => false,
            (HeaderMatch::Present, Some(_)) => true,
            (HeaderMatch::Str(m), Some(v)) => m.matches(v),
        }
    }
}

/// A CIDR range (Envoy `CidrRange`): a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// istiod `util.AddrStrToCidrRange`: `a.b.c.d`, `a.b.c.d/n`, IPv6 likewise. Host bits may be
    /// set (`10.1.2.3/16` is `10.1.0.0/16`, as Envoy masks the prefix).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        if s.is_empty() {
            return Err("empty address".into());
        }
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => {
                if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || (l.len() > 1 && l.starts_with('0')) {
                    return Err(format!("{s:?}: bad prefix length {l:?}"));
                }
                let n: u32 = l.parse().map_err(|_| format!("{s:?}: bad prefix length {l:?}"))?;
                if n > max as u32 {
                    return Err(format!("{s:?}: prefix length {n} exceeds {max}"));
                }
                n as u8
            }
        };
        Ok(Cidr { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An Istio path template (`{*}`, `{**}`), as Envoy's `uri_template` matcher evaluates it
/// after istiod rewrote `{*}` to `*` and `{**}` to `**`: `*` is one segment `[pchar]+`, `**`
/// is `[pchar/]*`, a trailing `/` is kept, everything else is literal.
pub fn path_template(value: &str) -> Result<Glob, String> {
    let template = value.replace("{**}", "**").replace("{*}", "*");
    if !template.starts_with('/') || !template.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("path template {value:?} must start with '/' and contain only printable characters"));
    }
    let mut g = Glob::new().lit(b"/");
    let mut rest = &template[1..];
    let mut seen_text_glob = false;
    let mut first = true;
    while !rest.is_empty() {
        if !first {
            g = g.lit(b"/");
        }
        first = false;
        if let Some(r) = rest.strip_prefix("**") {
            if seen_text_glob {
                return Err(format!("path template {value:?}: {{**}} must be the last operator"));
            }
            seen_text_glob = true;
            g = g.star(Class::PcharOrSlash);
            rest = r;
        } else if let Some(r) = rest.strip_prefix('*') {
            if seen_text_glob {
                return Err(format!("path template {value:?}: {{**}} must be the last operator"));
            }
            g = g.plus(Class::Pchar);
            rest = r;
        } else {
            let end = rest.find('/').unwrap_or(rest.len());
            let literal = &rest[..end];
            if literal.is_empty() || !literal.bytes().all(is_pchar) {
                return Err(format!("path template {value:?}: segment {literal:?} is not a valid literal"));
            }
            g = g.lit(literal.as_bytes());
            rest = &rest[end..];
        }
        if rest.is_empty() {
            break;
        }
        if rest == "/" {
            g = g.lit(b"/");
            break;
        }
        if let Some(r) = rest.strip_prefix('/') {
            rest = r;
        } else {
            // An operator followed by literal text in the same segment: Envoy's "suffix".
            if rest.contains('/') || !rest.bytes().all(is_pchar) {
                return Err(format!("path template {value:?}: unsupported text {rest:?} after an operator"));
            }
            g = g.lit(rest.as_bytes());
            break;
        }
    }
    Ok(g)
}

/// Istio's `security.ContainsPathTemplate`.
pub fn contains_path_template(v: &str) -> bool {
    v.contains("{*}") || v.contains("{**}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Globs up to [`STACK_GLOB_ITEMS`] match on the stack; longer ones match the same way.
    #[test]
    fn long_globs_match_on_either_side_of_the_stack_bound() {
        for len in [STACK_GLOB_ITEMS - 2, STACK_GLOB_ITEMS, STACK_GLOB_ITEMS + 1, 3 * STACK_GLOB_ITEMS] {
            let body = vec![b'a'; len - 1];
            let g = Glob::new().lit(&body).star(Class::NotSlash);
            assert_eq!(g.len(), len);
            let mut input = body.clone();
            assert!(g.matches(&input), "{len}");
            input.extend_from_slice(b"xyz");
            assert!(g.matches(&input), "{len}");
            input.push(b'/');
            assert!(!g.matches(&input), "{len}");
            assert!(!g.matches(&body[1..]), "{len}");
        }
    }

    #[test]
    fn glob_semantics() {
        let g = Glob::new().star(Class::AnyButNewline).lit(b"/ns/").lit(b"foo").lit(b"/").star(Class::AnyButNewline);
        assert!(g.matches(b"spiffe://cluster.local/ns/foo/sa/bar"));
        assert!(!g.matches(b"spiffe://cluster.local/ns/foobar/sa/bar"));
        assert!(!g.matches(b"spiffe://td/ns/foo/sa\nx"), "RE2 . does not match newline");
        let p = Glob::new().plus(Class::AnyButNewline);
        assert!(p.matches(b"x"));
        assert!(!p.matches(b""));
        let td = Glob::new().lit(b"spiffe://").lit(b"a").star(Class::NotSlash).lit(b"z/").star(Class::AnyButNewline);
        assert!(td.matches(b"spiffe://abcz/ns/x"));
        assert!(!td.matches(b"spiffe://ab/cz/ns/x"));
        // Many stars stay linear.
        let mut g = Glob::new();
        for _ in 0..40 {
            g = g.star(Class::AnyButNewline).lit(b"a");
        }
        assert!(!g.matches(&[b'a'; 39]));
        assert!(g.matches(&[b'a'; 4000]));
        // Patterns longer than 64 items use several bitset words.
        let long = "x".repeat(200);
        assert!(Glob::new().lit(long.as_bytes()).matches(long.as_bytes()));
        assert!(!Glob::new().lit(long.as_bytes()).matches(&long.as_bytes()[1..]));
    }

    #[test]
    fn istio_string_matcher_forms() {
        assert_eq!(StrMatch::istio("*", "spiffe://"), StrMatch::NonEmpty);
        assert!(StrMatch::istio("*", "").matches(b"a"));
        assert!(!StrMatch::istio("*", "").matches(b""));
        assert!(StrMatch::istio("*/sa/bar", "spiffe://").matches(b"spiffe://td/ns/x/sa/bar"));
        assert!(!StrMatch::istio("*/sa/bar", "spiffe://").matches(b"td/ns/x/sa/bar"), "prefix kept");
        assert!(StrMatch::istio("td/ns/*", "spiffe://").matches(b"spiffe://td/ns/a/sa/b"));
        assert!(StrMatch::istio("abc", "").matches(b"abc"));
        assert!(!StrMatch::istio("abc", "").matches(b"abcd"));
        // `*a*` is a suffix match on the literal `a*`.
        assert!(StrMatch::istio("*a*", "").matches(b"xa*"));
        assert!(!StrMatch::istio("*a*", "").matches(b"xab"));
    }

    #[test]
    fn header_and_host_matchers() {
        assert!(HeaderMatch::istio("*", false).matches(Some(b"")), "present_match accepts an empty value");
        assert!(!HeaderMatch::istio("*", false).matches(None));
        let host = HeaderMatch::istio("Example.COM", true);
        assert!(host.matches(Some(b"example.com")));
        assert!(!host.matches(Some(b"example.com:80")), "exact host does not match host:port");
        assert!(HeaderMatch::istio("*.Example.com", true).matches(Some(b"a.EXAMPLE.com")));
        assert!(HeaderMatch::istio("api.*", true).matches(Some(b"API.x")));
        assert!(!HeaderMatch::istio("GET", false).matches(Some(b"get")), "methods are case-sensitive");
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.2.3/16").unwrap();
        assert!(c.contains("10.1.200.1".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(!Cidr::parse("1.2.3.4").unwrap().contains("1.2.3.5".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(!Cidr::parse("0.0.0.0/0").unwrap().contains("::1".parse().unwrap()), "families differ");
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("::/0").unwrap().contains("::1".parse().unwrap()));
        for bad in ["", "1.2.3", "1.2.3.4/33", "1.2.3.4/", "1.2.3.4/a", "::1/129", "01.2.3.4", "x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_templates_follow_envoy_uri_template() {
        let t = |p: &str| path_template(p).unwrap();
        assert!(t("/foo/{*}").matches(b"/foo/bar"));
        assert!(!t("/foo/{*}").matches(b"/foo/bar/baz"));
        assert!(!t("/foo/{*}").matches(b"/foo/"));
        assert!(t("/foo/{**}").matches(b"/foo/bar/baz"));
        assert!(t("/foo/{**}").matches(b"/foo/"));
        assert!(!t("/foo/{**}").matches(b"/foo"));
        assert!(t("/foo/{**}/").matches(b"/foo/bar/"));
        assert!(t("/foo/{**}/").matches(b"/foo//"));
        assert!(!t("/foo/{**}/").matches(b"/foo/bar"));
        assert!(t("/{*}/bar/{**}").matches(b"/x/bar/y/z"));
        assert!(!t("/{*}/bar/{**}").matches(b"/x/y/bar/z"));
        assert!(!t("/foo/{*}").matches(b"/foo/a\"b"), "only pchar in a segment");
        assert!(t("/foo/{*}").matches(b"/foo/%2e"));
        assert!(t("/a/{**}/b").matches(b"/a/x/y/b"));
        assert!(path_template("/foo/{**}/{*}").is_err());
        assert!(path_template("foo/{*}").is_err());
        assert!(path_template("/foo//{*}").is_err());
        assert!(path_template("/foo/{x}").is_err());
    }
}
