//! Host-name lookup with Istio/Envoy virtual-host precedence: exact names first, then the
//! longest matching `*.suffix` wildcard, then `*`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// FNV-1a, the exact-name index's hash. The table is built from configuration only and a request
/// host is only looked up, never inserted, so a client cannot choose colliding keys: the std
/// hasher's random SipHash keys buy nothing here and cost ~4x per lookup (BENCHMARKS.md, "The
/// router's own code per request").
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

#[derive(Debug, Default)]
pub(crate) struct HostTable {
    exact: HashMap<String, usize, BuildHasherDefault<Fnv>>,
    /// (`.suffix` including the dot, value), longest suffix first.
    wildcards: Vec<(String, usize)>,
    any: Option<usize>,
}

impl HostTable {
    /// Adds `pattern` (lower-case; `*`, `*.suffix` or exact). Returns the existing value when
    /// the pattern is already present, so callers can merge.
    pub(crate) fn insert(&mut self, pattern: &str, value: usize) -> Option<usize> {
        if pattern == "*" {
            if let Some(v) = self.any {
                return Some(v);
            }
            self.any = Some(value);
            return None;
        }
        if let Some(suffix) = pattern.strip_prefix('*') {
            if let Some((_, v)) = self.wildcards.iter().find(|(s, _)| s == suffix) {
                return Some(*v);
            }
            self.wildcards.push((suffix.to_string(), value));
            self.wildcards.sort_by_key(|w| std::cmp::Reverse(w.0.len()));
            return None;
        }
        if let Some(v) = self.exact.get(pattern) {
            return Some(*v);
        }
        self.exact.insert(pattern.to_string(), value);
        None
    }

    /// Every exact (non-wildcard) name with its value, ordered by value (then by name, in the
    /// map's order): one pass, where a scan per value was quadratic in the number of hosts.
    pub(crate) fn exact_names_by_value(&self) -> Vec<(String, usize)> {
        let mut names: Vec<(String, usize)> = self.exact.iter().map(|(k, v)| (k.clone(), *v)).collect();
        names.sort_by_key(|(_, v)| *v);
        names
    }

    /// Every wildcard pattern (`*.suffix`, `*`) with its value.
    pub(crate) fn wildcard_names(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = self.wildcards.iter().map(|(s, v)| (format!("*{s}"), *v)).collect();
        out.extend(self.any.map(|v| ("*".to_string(), v)));
        out
    }

    pub(crate) fn lookup(&self, host: &str) -> Option<usize> {
        if let Some(v) = self.exact.get(host) {
            return Some(*v);
        }
        for (suffix, v) in &self.wildcards {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return Some(*v);
            }
        }
        self.any
    }
}

/// Whether host `h` (exact or wildcard) is matched by pattern `p` (exact or wildcard), i.e.
/// every name `h` stands for is also covered by `p`.
pub(crate) fn covers(p: &str, h: &str) -> bool {
    if p == "*" {
        return true;
    }
    if h == "*" {
        return false;
    }
    match (p.strip_prefix('*'), h.strip_prefix('*')) {
        (None, None) => p == h,
        (None, Some(_)) => false,
        (Some(ps), None) => h.len() > ps.len() && h.ends_with(ps),
        (Some(ps), Some(hs)) => hs.ends_with(ps),
    }
}

/// The intersection of two host patterns, as Istio computes a gateway virtual host's domain
/// from a Gateway server host and a VirtualService host: the more specific one, if they overlap.
pub(crate) fn intersect<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    if covers(a, b) {
        Some(b)
    } else if covers(b, a) {
        Some(a)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_wildcard_beats_any() {
        let mut t = HostTable::default();
        t.insert("*", 0);
        t.insert("*.example.com", 1);
        t.insert("*.api.example.com", 2);
        t.insert("www.example.com", 3);
        assert_eq!(t.lookup("www.example.com"), Some(3));
        assert_eq!(t.lookup("x.api.example.com"), Some(2));
        assert_eq!(t.lookup("x.example.com"), Some(1));
        assert_eq!(t.lookup("example.com"), Some(0), "*.example.com does not match the bare domain");
        assert_eq!(t.lookup("other.org"), Some(0));
    }

    #[test]
    fn insert_reports_existing() {
        let mut t = HostTable::default();
        assert_eq!(t.insert("a.b", 0), None);
        assert_eq!(t.insert("a.b", 1), Some(0));
        assert_eq!(t.insert("*.b", 2), None);
        assert_eq!(t.insert("*.b", 3), Some(2));
    }

    #[test]
    fn intersections() {
        assert_eq!(intersect("*", "bookinfo.com"), Some("bookinfo.com"));
        assert_eq!(intersect("bookinfo.com", "*"), Some("bookinfo.com"));
        assert_eq!(intersect("*.com", "*.bookinfo.com"), Some("*.bookinfo.com"));
        assert_eq!(intersect("a.com", "b.com"), None);
        assert_eq!(intersect("*.a.com", "*.b.com"), None);
    }
}
