//! Istio `StringMatch` compiled for per-request use on raw header bytes.
#![deny(clippy::indexing_slicing)]

use crate::simple_regex::SimpleRegex;
use regex::bytes::Regex;
use wasmesh_istio::StringMatch;

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
pub enum StrMatcher {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    /// `exact` under `ignoreUriCase` (the value is stored lower-case).
    ExactIgnoreCase(Vec<u8>),
    /// `prefix` under `ignoreUriCase` (the value is stored lower-case).
    PrefixIgnoreCase(Vec<u8>),
    /// RE2-style regex that must match the whole value. `prefixes`, when known, are literals one
    /// of which every matching value starts with: a byte compare rejects most values before the
    /// regex engine runs (which is expensive inside a wasm VM).
    Regex {
        re: Regex,
        prefixes: Option<Vec<Vec<u8>>>,
    },
    /// A regex of the shape [`SimpleRegex`] matches in one pass without the engine (a literal,
    /// one repeated class or `.`, literal bytes or classes around it); validated by compiling
    /// it as [`StrMatcher::Regex`] would be, then the compiled regex is dropped.
    Simple(SimpleRegex),
    /// `{}` (no oneof set) or `regex: "*"`: the header is present.
    Present,
}

impl StrMatcher {
    /// Compiles a StringMatch. The error is (sub-field such as `.regex`, or empty; message).
    pub fn compile(m: &StringMatch, ignore_case: bool) -> Result<StrMatcher, (&'static str, String)> {
        if m.set_count() > 1 {
            return Err(("", format!("set only one of exact, prefix, regex (got {m:?})")));
        }
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(v), _, _) if ignore_case => StrMatcher::ExactIgnoreCase(v.to_ascii_lowercase().into_bytes()),
            (Some(v), _, _) => StrMatcher::Exact(v.as_bytes().to_vec()),
            (_, Some(v), _) if ignore_case => StrMatcher::PrefixIgnoreCase(v.to_ascii_lowercase().into_bytes()),
            (_, Some(v), _) => StrMatcher::Prefix(v.as_bytes().to_vec()),
            (_, _, Some(r)) if r == "*" => StrMatcher::Present,
            (_, _, Some(r)) => {
                let re = compile_full_match(r).map_err(|e| (".regex", e))?;
                let pattern = re2_perl_classes(r);
                match SimpleRegex::new(&pattern) {
                    Some(simple) => StrMatcher::Simple(simple),
                    None => StrMatcher::Regex { re, prefixes: required_prefixes(&pattern) },
                }
            }
            (None, None, None) => StrMatcher::Present,
        })
    }

    /// Whether a present value matches. (Absence is handled by the caller.)
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            StrMatcher::Exact(v) => value == v.as_slice(),
            StrMatcher::Prefix(v) => value.starts_with(v),
            StrMatcher::ExactIgnoreCase(v) => value.eq_ignore_ascii_case(v),
            StrMatcher::PrefixIgnoreCase(v) => value.get(..v.len()).is_some_and(|p| p.eq_ignore_ascii_case(v)),
            StrMatcher::Regex { re, prefixes } => {
                if let Some(p) = prefixes {
                    if !p.iter().any(|p| starts_with(value, p)) {
                        return false;
                    }
                }
                re.is_match(value)
            }
            StrMatcher::Simple(s) => s.is_match(value),
            StrMatcher::Present => true,
        }
    }

    pub fn is_presence(&self) -> bool {
        matches!(self, StrMatcher::Present)
    }
}

/// `value.starts_with(prefix)` by a byte loop: the prefixes are a few bytes and most values
/// differ in the first one, where the slice compare calls `memcmp` (compiled into the module on
/// wasm) for every route tried.
fn starts_with(value: &[u8], prefix: &[u8]) -> bool {
    value.len() >= prefix.len() && value.iter().zip(prefix).all(|(a, b)| a == b)
}

/// Largest regex accepted, in RE2 program instructions as wasmesh estimates them
/// ([`program_size`]). Envoy refuses a regex whose compiled RE2 program exceeds the runtime
/// value `re2.max_program_size.error_level` (Envoy's default 100); Istio's bootstrap raises it to
/// 32768, so the same VirtualService is refused here exactly where istio-proxy refuses it (up to
/// the estimate).
pub const MAX_REGEX_PROGRAM_SIZE: usize = 32_768;
/// Bound on the memory of one compiled regex (the `regex` crate's `size_limit`): every program
/// within [`MAX_REGEX_PROGRAM_SIZE`] fits (the largest need about 4 MiB).
pub const MAX_REGEX_COMPILED_BYTES: usize = 8 << 20;
/// Bound on the lazy DFA cache of one regex (the `regex` crate's `dfa_size_limit`); past it the
/// engine falls back to slower, cache-free matching instead of growing the VM.
pub const MAX_REGEX_CACHE_BYTES: usize = 1 << 20;

/// RE2's `\d`, `\s`, `\w` and `\b` are ASCII (RE2's syntax page: `\d` ≡ `[0-9]`, `\s` ≡
/// `[\t\n\f\r ]`, `\w` ≡ `[0-9A-Za-z_]`, `\b` an ASCII word boundary); the `regex` crate's
/// are Unicode-aware. `wasmesh_regex` rewrites them as RE2 defines them: each class becomes a bracket
/// class (nested classes are a union in the `regex` crate, so `[a\d]` works as `[a[0-9]]` and
/// `[^\w]` as `[^[0-9A-Za-z_]]`), a negated one `[^…]` in Unicode mode so it still matches a whole
/// UTF-8 character, and `\b`/`\B` the ASCII boundaries `(?-u:\b)`/`(?-u:\B)`. Every other escape
/// (`\\` stays an escaped backslash, `\pL`, `\p{Greek}`, `\x{e9}`, …) is kept as written.
pub fn re2_perl_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('s') => out.push_str(r"[\t\n\x0C\r\x20]"),
            Some('S') => out.push_str(r"[^\t\n\x0C\r\x20]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            Some('b') => out.push_str(r"(?-u:\b)"),
            Some('B') => out.push_str(r"(?-u:\B)"),
            Some(e) => {
                out.push('\\');
                out.push(e);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Compiles a user regex (Istio's RE2) with RE2's ASCII Perl classes ([`re2_perl_classes`]).
pub fn wasmesh_regex(pattern: &str) -> Result<Regex, regex::Error> {
    regex::bytes::RegexBuilder::new(&re2_perl_classes(pattern))
        .size_limit(MAX_REGEX_COMPILED_BYTES)
        .dfa_size_limit(MAX_REGEX_CACHE_BYTES)
        .build()
}

/// Compiles `pattern` so that it must match the whole input (Envoy `safe_regex` semantics), with
/// RE2's ASCII Perl classes ([`re2_perl_classes`]). The `regex` crate is RE2-like: linear time, no
/// backreferences or look-around, which is what Envoy accepts too. Size limits keep a hostile config from exhausting the VM.
pub fn compile_full_match(pattern: &str) -> Result<Regex, String> {
    let pattern_re2 = re2_perl_classes(pattern);
    if let Some(size) = program_size(&pattern_re2) {
        if size > MAX_REGEX_PROGRAM_SIZE {
            return Err(format!(
                "regex {pattern:?} is too large: its RE2 program has about {size} instructions, more than the \
                 {MAX_REGEX_PROGRAM_SIZE} Istio allows (re2.max_program_size.error_level)"
            ));
        }
    }
    regex::bytes::RegexBuilder::new(&format!("^(?:{pattern_re2})$"))
        .size_limit(MAX_REGEX_COMPILED_BYTES)
        .dfa_size_limit(MAX_REGEX_CACHE_BYTES)
        .build()
        .map_err(|e| format!("invalid RE2 regex {pattern:?}: {}", first_line(&e.to_string())))
}

/// An estimate of the size of the RE2 program Envoy would compile for `pattern` (RE2 counts
/// instructions: one per byte range, one per alternative, repetitions unrolled), `None` when the
/// pattern does not parse (the compiler reports that).
pub fn program_size(pattern: &str) -> Option<usize> {
    use regex_syntax::hir::{Class, HirKind};
    fn size(h: &regex_syntax::hir::Hir) -> usize {
        match h.kind() {
            HirKind::Empty => 0,
            HirKind::Look(_) => 1,
            HirKind::Literal(l) => l.0.len(),
            HirKind::Class(Class::Bytes(c)) => c.ranges().len().max(1),
            // Non-ASCII ranges become UTF-8 byte sequences, up to 4 instructions each.
            HirKind::Class(Class::Unicode(c)) => c
                .ranges()
                .iter()
                .map(|r| if u32::from(r.end()) < 0x80 { 1 } else { r.end().len_utf8() })
                .sum::<usize>()
                .max(1),
            HirKind::Capture(c) => size(&c.sub).saturating_add(2),
            HirKind::Concat(hs) => hs.iter().map(size).fold(0, usize::saturating_add),
            HirKind::Alternation(hs) => hs.iter().map(size).fold(hs.len().saturating_sub(1), usize::saturating_add),
            HirKind::Repetition(r) => {
                let sub = size(&r.sub);
                let min = r.min as usize;
                match r.max {
                    // x{n,}: n copies, then a loop.
                    None => sub.saturating_mul(min.max(1)).saturating_add(1),
                    // x{n,m}: n copies, then m-n optional ones.
                    Some(max) => sub
                        .saturating_mul(min)
                        .saturating_add((max as usize).saturating_sub(min).saturating_mul(sub.saturating_add(1))),
                }
            }
        }
    }
    // RE2's `\d`, `\s`, `\w` and `\b` are ASCII, so the pattern is read as RE2 reads those;
    // only a pattern that needs Unicode (`\pL`, non-ASCII literals) is read with it.
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
        .ok()
        .or_else(|| regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern).ok())?;
    // Plus the match instruction and the anchors of a full match.
    Some(size(&hir).saturating_add(3))
}

/// Literal prefixes one of which every full match of `pattern` must start with, or `None` when
/// the pattern can start with anything (or the set would be large).
fn required_prefixes(pattern: &str) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::ParserBuilder::new().utf8(false).build().parse(pattern).ok()?;
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix).limit_total(64);
    let seq = extractor.extract(&hir);
    let lits = seq.literals()?;
    if lits.is_empty() || lits.iter().any(|l| l.as_bytes().is_empty()) {
        return None;
    }
    Some(lits.iter().map(|l| l.as_bytes().to_vec()).collect())
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: StringMatch) -> StrMatcher {
        StrMatcher::compile(&m, false).unwrap()
    }

    #[test]
    fn exact_prefix_regex_presence() {
        assert!(c(StringMatch::exact("jason")).matches(b"jason"));
        assert!(!c(StringMatch::exact("jason")).matches(b"Jason"));
        assert!(c(StringMatch::prefix("/api")).matches(b"/api/v1"));
        assert!(!c(StringMatch::prefix("/api")).matches(b"/ap"));
        assert!(c(StringMatch::default()).matches(b""));
        assert!(c(StringMatch::regex("*")).is_presence());
    }

    #[test]
    fn regex_is_a_full_match() {
        let r = c(StringMatch::regex(r"\d+$"));
        assert!(r.matches(b"123"));
        assert!(!r.matches(b"a123"), "Istio: \\d+$ matches 123 but not a123");
        assert!(c(StringMatch::regex("(?i)JaSoN")).matches(b"jason"));
        assert!(c(StringMatch::regex("a|b")).matches(b"b"));
        assert!(!c(StringMatch::regex("a|b")).matches(b"ab"));
    }

    #[test]
    fn prefilter_keeps_regex_semantics() {
        for (pattern, yes, no) in [
            ("v9-[a-z]+", &["v9-abc"][..], &["v8-abc", "v9-", "xv9-abc", ""][..]),
            ("(?i)jason", &["JASON", "Jason"][..], &["mason"][..]),
            ("(foo|bar)baz", &["foobaz", "barbaz"][..], &["bazbaz"][..]),
            ("a*b", &["b", "aab"][..], &["c"][..]),
            (".*suffix", &["x-suffix", "suffix"][..], &["suffi"][..]),
            ("", &[""][..], &["a"][..]),
        ] {
            let m = c(StringMatch::regex(pattern));
            for y in yes {
                assert!(m.matches(y.as_bytes()), "{pattern} should match {y}");
            }
            for n in no {
                assert!(!m.matches(n.as_bytes()), "{pattern} should not match {n}");
            }
        }
        assert!(matches!(c(StringMatch::regex("(foo|bar)baz")), StrMatcher::Regex { prefixes: Some(_), .. }));
        assert!(matches!(c(StringMatch::regex("(a|.)*x")), StrMatcher::Regex { prefixes: None, .. }));
        // The bench's shape needs no engine at all.
        assert!(matches!(c(StringMatch::regex("v9-[a-z]+")), StrMatcher::Simple(_)));
    }

    #[test]
    fn ignore_case_applies_to_exact_and_prefix() {
        let m = StrMatcher::compile(&StringMatch::prefix("/API"), true).unwrap();
        assert!(m.matches(b"/api/x"));
        let m = StrMatcher::compile(&StringMatch::exact("/Login"), true).unwrap();
        assert!(m.matches(b"/LOGIN"));
        let m = StrMatcher::compile(&StringMatch::regex("/login"), true).unwrap();
        assert!(!m.matches(b"/LOGIN"), "ignoreUriCase does not apply to regex");
    }

    #[test]
    fn regex_program_size_is_bounded_as_istio_bounds_it() {
        assert_eq!(program_size("abc"), Some(6));
        assert!(program_size("(a|b)*c").is_some_and(|n| n < 20));
        assert!(program_size(r"[a-z]{3,5}").is_some_and(|n| n < 20));
        assert_eq!(program_size("("), None);
        // Just below and above the bound: a literal of n bytes is n + 3 instructions.
        let at = "a".repeat(MAX_REGEX_PROGRAM_SIZE - 3);
        assert_eq!(program_size(&at), Some(MAX_REGEX_PROGRAM_SIZE));
        let over = "a".repeat(MAX_REGEX_PROGRAM_SIZE - 2);
        let e = compile_full_match(&over).unwrap_err();
        assert!(e.contains("too large") && e.contains("32768"), "{e}");
        // Counted repetition is unrolled, as RE2 does: a short pattern can be a huge program.
        let e = compile_full_match("(abcdefghij){4000}").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = compile_full_match("x{0,20000}y{0,20000}").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(compile_full_match("[0-9a-f]{1000}").is_ok(), "a few thousand instructions compile");
        // Istio's everyday patterns are far below it.
        for p in [r"^/api/v[0-9]+/.*", r"(?i)jason", r"[^/]+\.example\.com", r"\w{40}", "caf\u{e9}.*"] {
            assert!(program_size(p).is_some_and(|n| n < 4096), "{p}: {:?}", program_size(p));
            assert!(compile_full_match(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let (field, e) = StrMatcher::compile(&StringMatch::regex("(unclosed"), false).unwrap_err();
        assert_eq!(field, ".regex");
        assert!(e.starts_with("invalid RE2 regex \"(unclosed\""), "{e}");
        let (_, e) = StrMatcher::compile(&StringMatch::regex(r"(a)\1"), false).unwrap_err();
        assert!(e.contains("invalid RE2"), "backreferences are not RE2: {e}");
        let two = StringMatch { exact: Some("a".into()), prefix: Some("b".into()), regex: None };
        assert!(StrMatcher::compile(&two, false).unwrap_err().1.contains("only one"));
    }

    /// RE2's Perl classes are ASCII (RE2 syntax page): `\d` [0-9], `\s` [\t\n\f\r ], `\w`
    /// [0-9A-Za-z_], `\b` an ASCII word boundary; Unicode classes (`\pL`) and `.` stay Unicode.
    #[test]
    fn perl_classes_are_ascii_as_in_re2() {
        let m = |p: &str, v: &str| c(StringMatch::regex(p)).matches(v.as_bytes());
        // \d and \D: Arabic-Indic and fullwidth digits are not \d in RE2; \D takes a whole char.
        assert!(m(r"\d+", "0123456789"));
        assert!(!m(r"\d", "٣") && !m(r"\d", "３"));
        assert!(m(r"\D", "٣") && m(r"\D", "é") && !m(r"\D", "7"));
        // \s and \S: exactly tab, LF, FF, CR, space; not VT, NBSP or the ideographic space.
        for ws in ["\t", "\n", "\x0C", "\r", " "] {
            assert!(m(r"\s", ws) && !m(r"\S", ws), "{ws:?}");
        }
        for not_ws in ["\x0B", "\u{a0}", "\u{3000}", "x"] {
            assert!(!m(r"\s", not_ws) && m(r"\S", not_ws), "{not_ws:?}");
        }
        // \w and \W.
        assert!(m(r"\w+", "aZ09_"));
        assert!(!m(r"\w+", "café") && !m(r"\w", "é") && !m(r"\w", "ж"));
        assert!(m(r"\W", "é") && m(r"\W", "ж") && m(r"\W", "-") && !m(r"\W", "a"));
        assert!(m(r"caf\W", "café"), "\\W matches one whole UTF-8 character");
        // (?i) folds \w as RE2 does (Kelvin sign K folds to k), yet é is still not a word char.
        assert!(!m(r"(?i)\w", "é"));
        // Inside classes, plain and negated.
        assert!(m(r"[\d.]+", "1.2") && !m(r"[\d.]+", "١.٢"));
        assert!(m(r"[\w-]+", "a-b_c") && !m(r"[\w-]+", "a-é"));
        assert!(m(r"[^\w]", "é") && !m(r"[^\w]", "a"));
        assert!(m(r"[^\d]", "٣") && !m(r"[^\d]", "3"));
        assert!(m(r"[\s\d]+", " 1\t2") && !m(r"[\s\d]+", "\u{a0}"));
        assert!(m(r"[\W]", "é") && !m(r"[\W]", "_"));
        // \b and \B are ASCII word boundaries: between 'é' and 'x' there is one in RE2.
        assert!(m(r".*\bx", "éx") && !m(r".*\Bx", "éx"));
        assert!(m(r".*\Bx", "ax") && !m(r".*\bx", "ax"));
        // Escaped backslashes are not classes: `\\d` is a backslash then 'd'.
        assert!(m(r"\\d", r"\d") && !m(r"\\d", r"\7"));
        assert!(m(r"\\\d", r"\7") && !m(r"\\\d", r"\d"));
        assert!(m(r"[\\w]+", r"w\w") && !m(r"[\\w]+", "a"));
        // Unicode classes and `.` keep their RE2 meaning.
        assert!(m(r"\pL+", "café") && m(r"\p{Greek}+", "αβγ") && m(r"caf.", "café"));
        // The rewrite helper, on its own.
        assert_eq!(re2_perl_classes(r"a\\w\d[\W]\pL"), r"a\\w[0-9][[^0-9A-Za-z_]]\pL");
    }
}
