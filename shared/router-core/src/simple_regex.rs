//! Full-match regexes of one simple shape, matched without the regex engine.
//!
//! Most VirtualService regexes are a literal, a literal with one repeated class (`v1-[a-z]+`,
//! `/api/v[0-9]+`, `[0-9a-f]{32}`) or a literal prefix or suffix around `.*`. Such a pattern is a
//! sequence of one-byte elements (a byte, or a set of bytes) with at most one repeated element:
//! for a full match the elements before the repetition cover the value's first bytes, those
//! after it its last bytes, and the repetition exactly what is left, so matching is a single
//! pass with no choice to make. The `regex` crate pays a fixed cost per search (its meta engine,
//! cache pool, start state and end-of-input handling: ~380 instructions natively on an 8-byte
//! value, BENCHMARKS.md "The router's own code per request"), several times what the pass costs.
//!
//! Anything else (alternation, groups, non-ASCII classes other than `.`, look-around other than
//! a leading `^` or trailing `$`, several repetitions) is `None`: the caller keeps the regex.
//! Both read the same parsed pattern, so the semantics are the `regex` crate's, which is what the
//! router's RE2 handling is defined against (`re2_perl_classes`).
#![deny(clippy::indexing_slicing)]

use regex_syntax::hir::{Class, Hir, HirKind, Look};

/// Longest fixed part accepted (elements before and after the repetition together): a counted
/// repetition `x{n}` is unrolled into it.
const MAX_FIXED: usize = 256;

/// One element that matches exactly one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Byte {
    One(u8),
    /// A 256-bit set.
    Set([u64; 4]),
}

impl Byte {
    fn matches(&self, b: u8) -> bool {
        match self {
            Byte::One(x) => *x == b,
            Byte::Set(set) => set.get(usize::from(b >> 6)).is_some_and(|w| w & (1u64 << (b & 63)) != 0),
        }
    }
}

/// The repeated element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repeated {
    /// A one-byte element, counted in bytes.
    Byte(Byte),
    /// `.` (`any_lf`: any character but `\n`) or `(?s).`: any UTF-8 character, counted in characters.
    AnyChar { except_lf: bool },
}

/// A compiled pattern of the simple shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleRegex {
    head: Vec<Byte>,
    /// The repetition and its bounds (`None` as max: unbounded).
    middle: Option<(Repeated, u32, Option<u32>)>,
    tail: Vec<Byte>,
}

impl SimpleRegex {
    /// The simple form of `pattern` (already rewritten by `re2_perl_classes`, parsed as the
    /// router's `regex::bytes` regex parses it), or `None` when it has another shape.
    pub fn new(pattern: &str) -> Option<SimpleRegex> {
        let hir = regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern).ok()?;
        let items: Vec<&Hir> = match hir.kind() {
            HirKind::Concat(hs) => hs.iter().collect(),
            _ => vec![&hir],
        };
        let last = items.len().saturating_sub(1);
        let mut out = SimpleRegex { head: Vec::new(), middle: None, tail: Vec::new() };
        for (i, h) in items.iter().enumerate() {
            match h.kind() {
                HirKind::Empty => {}
                // A full match: `^` first and `$` last say nothing more.
                HirKind::Look(Look::Start) if i == 0 => {}
                HirKind::Look(Look::End) if i == last => {}
                HirKind::Literal(l) => {
                    for b in l.0.iter() {
                        out.push_fixed(Byte::One(*b))?;
                    }
                }
                HirKind::Class(_) => out.push_fixed(one_byte(h)?)?,
                HirKind::Repetition(r) => {
                    if r.max == Some(r.min) {
                        // x{n}: n fixed elements.
                        let b = one_byte(&r.sub)?;
                        let n = usize::try_from(r.min).ok().filter(|n| *n <= MAX_FIXED)?;
                        for _ in 0..n {
                            out.push_fixed(b.clone())?;
                        }
                    } else {
                        if out.middle.is_some() {
                            return None;
                        }
                        let rep = match one_byte(&r.sub) {
                            Some(b) => Repeated::Byte(b),
                            None => Repeated::AnyChar { except_lf: any_char(&r.sub)? },
                        };
                        out.middle = Some((rep, r.min, r.max));
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    }

    fn push_fixed(&mut self, b: Byte) -> Option<()> {
        if self.head.len() + self.tail.len() >= MAX_FIXED {
            return None;
        }
        if self.middle.is_none() { &mut self.head } else { &mut self.tail }.push(b);
        Some(())
    }

    /// Whether the whole value matches.
    pub fn is_match(&self, value: &[u8]) -> bool {
        let fixed = self.head.len() + self.tail.len();
        if value.len() < fixed || (self.middle.is_none() && value.len() != fixed) {
            return false;
        }
        let Some((head, rest)) = value.split_at_checked(self.head.len()) else { return false };
        let Some((middle, tail)) = rest.len().checked_sub(self.tail.len()).and_then(|m| rest.split_at_checked(m))
        else {
            return false;
        };
        if !self.head.iter().zip(head).all(|(e, b)| e.matches(*b))
            || !self.tail.iter().zip(tail).all(|(e, b)| e.matches(*b))
        {
            return false;
        }
        let Some((rep, min, max)) = &self.middle else { return true };
        let count = match rep {
            Repeated::Byte(e) => {
                if !middle.iter().all(|b| e.matches(*b)) {
                    return false;
                }
                middle.len()
            }
            Repeated::AnyChar { except_lf } => {
                let Ok(s) = std::str::from_utf8(middle) else { return false };
                if *except_lf && middle.contains(&b'\n') {
                    return false;
                }
                if min.saturating_add(max.unwrap_or(0)) == 0 {
                    0 // `.*`: any count; not worth counting.
                } else {
                    s.chars().count()
                }
            }
        };
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        count >= *min && max.is_none_or(|m| count <= m)
    }
}

/// The element when `h` matches exactly one byte: a one-byte literal, a byte class, or a
/// Unicode class of ASCII characters only.
fn one_byte(h: &Hir) -> Option<Byte> {
    match h.kind() {
        HirKind::Literal(l) => match l.0.as_ref() {
            [b] => Some(Byte::One(*b)),
            _ => None,
        },
        HirKind::Class(Class::Bytes(c)) => {
            let mut set = [0u64; 4];
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    add(&mut set, b);
                }
            }
            Some(Byte::Set(set))
        }
        HirKind::Class(Class::Unicode(c)) => {
            let mut set = [0u64; 4];
            for r in c.ranges() {
                let (start, end) = (u8::try_from(u32::from(r.start())).ok()?, u8::try_from(u32::from(r.end())).ok()?);
                if end >= 0x80 {
                    return None;
                }
                for b in start..=end {
                    add(&mut set, b);
                }
            }
            Some(Byte::Set(set))
        }
        _ => None,
    }
}

/// `Some(true)` for `.` (any character but `\n`), `Some(false)` for `(?s).` (any character).
fn any_char(h: &Hir) -> Option<bool> {
    let HirKind::Class(Class::Unicode(c)) = h.kind() else { return None };
    let ranges: Vec<(u32, u32)> = c.ranges().iter().map(|r| (u32::from(r.start()), u32::from(r.end()))).collect();
    match ranges.as_slice() {
        [(0, 0x10_FFFF)] => Some(false),
        [(0, 9), (11, 0x10_FFFF)] => Some(true),
        _ => None,
    }
}

fn add(set: &mut [u64; 4], b: u8) {
    if let Some(w) = set.get_mut(usize::from(b >> 6)) {
        *w |= 1u64 << (b & 63);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::{compile_full_match, re2_perl_classes};

    fn simple(p: &str) -> Option<SimpleRegex> {
        SimpleRegex::new(&re2_perl_classes(p))
    }

    #[test]
    fn shapes_taken_and_refused() {
        for p in [
            "v9-[a-z]+",
            "abc",
            "",
            r"/api/v[0-9]+",
            r"[0-9a-f]{32}",
            r"\d+$",
            "^/login$",
            ".*suffix",
            "prefix.*",
            "(?s)a.*",
            r"\w{2,5}-x",
            "caf\u{e9}",
            ".{2,3}",
            "(?-u:[\\x80-\\xff])+",
            "a|b",
        ] {
            assert!(simple(p).is_some(), "{p} is simple");
        }
        for p in [
            "ab|cd", "(ab)+", "a+b+", r"[^a]+", "é+", r"\bx", "(?m)a$", "a^", r"\pL+", r"(?i)\w", "(a)", "[α-ω]",
            r"caf\W",
        ] {
            assert!(simple(p).is_none(), "{p} is not simple");
        }
    }

    /// Every simple pattern decides exactly as the regex it stands for, on values chosen around
    /// its edges (lengths at the bounds, non-ASCII, invalid UTF-8, newlines).
    #[test]
    fn the_same_answers_as_the_regex() {
        let patterns = [
            "v9-[a-z]+",
            "abc",
            "",
            r"/api/v[0-9]+",
            r"[0-9a-f]{4}",
            r"\d+$",
            "^/login$",
            ".*suffix",
            "prefix.*",
            "(?s)a.*",
            r"\w{2,5}-x",
            "caf\u{e9}",
            ".{2,3}",
            "a.?b",
            "x*",
            "ab?c",
            "[a-c]{0,2}d",
            r"\s*z",
            "(?-u:[\\x80-\\xff])+",
            "(?-u:.)+",
            "(?i)x-[a-f]+",
            "a|b",
        ];
        let values: Vec<Vec<u8>> = [
            "",
            "a",
            "b",
            "ab",
            "abc",
            "abcd",
            "v9-",
            "v9-match",
            "v9-Match",
            "v9-m1",
            "xv9-a",
            "JASON",
            "Jason",
            "jason ",
            "/api/v1",
            "/api/v",
            "/api/v12x",
            "dead",
            "beef0",
            "DEAD",
            "123",
            "12a",
            "/login",
            "/login/",
            "suffix",
            "x-suffix",
            "suffi",
            "prefix",
            "prefix\n",
            "a\nb",
            "a\n",
            "ab-x",
            "abcde-x",
            "abcdef-x",
            "a-x",
            "café",
            "cafe",
            "caf",
            "caf\u{e9}",
            "é",
            "éé",
            "ééé",
            "a\u{2028}",
            "ab",
            "aXb",
            "a\nb",
            "",
            "xxx",
            "ac",
            "abbc",
            "d",
            "ccd",
            "cccd",
            " \t\nz",
            "\u{a0}z",
            "z",
            "k",
            "K",
            "\u{212a}",
        ]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .chain([vec![0xff], vec![0x80, 0x81], b"a\xffb".to_vec(), b"prefix\xff".to_vec(), b"\xe9".to_vec()])
        .collect();
        for p in patterns {
            let s = simple(p).unwrap_or_else(|| panic!("{p} should be simple"));
            let re = compile_full_match(p).unwrap();
            for v in &values {
                assert_eq!(s.is_match(v), re.is_match(v), "{p} on {:?}", String::from_utf8_lossy(v));
            }
        }
    }
}
