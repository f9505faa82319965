//! The request as the router reads it: the headers Envoy hands over, and the per-request view
//! the routes are matched against.
//!
//! The route table knows at configure time which headers any route can examine
//! ([`HeaderSlots`]: `:authority` first, then `:path`, `:method`, `:scheme` and every
//! `headers`/`withoutHeaders` name, each with a slot number). Per request the headers are read
//! once into a [`RequestView`] indexed by slot, and `:path` is split into path and query once;
//! the matchers then index by slot instead of searching headers by name.
//!
//! Everything here reads bytes a client sent: no indexing that could panic.
#![deny(clippy::indexing_slicing)]

/// Longest `:authority` host (without port) the router looks up. DNS names are at most 253
/// bytes; Envoy itself accepts any `:authority` within its header limits and finds no virtual
/// host for such a name, so a longer one is "no route" (404) here too.
pub const MAX_HOST_BYTES: usize = 256;

/// The request headers as Envoy gives them. Header names are lower-case; pseudo-headers
/// (`:authority`, `:path`, `:method`, `:scheme`) are in `headers` as Envoy gives them.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> Request<'a> {
    pub fn new(headers: &'a [(String, Vec<u8>)]) -> Self {
        Request { headers }
    }

    /// Every value of a header (names compare case-insensitively), in order.
    pub fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
    }

    fn first(&self, name: &str) -> &'a [u8] {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice()).unwrap_or(b"")
    }

    pub fn authority(&self) -> &'a [u8] {
        self.first(":authority")
    }

    /// `:path` without query and fragment: what Envoy's path matchers compare.
    pub fn path(&self) -> &'a [u8] {
        split_path(self.first(":path")).0
    }

    /// The query string (after `?`, before `#`), empty when there is none.
    pub fn query(&self) -> &'a [u8] {
        split_path(self.first(":path")).1
    }
}

/// Whether `name` is `lower` (a lower-case slot name) in any case: one case conversion per byte
/// instead of two, and the length compared first.
fn eq_lower(lower: &[u8], name: &[u8]) -> bool {
    lower.len() == name.len() && lower.iter().zip(name).all(|(l, c)| *l == c.to_ascii_lowercase())
}

/// Splits a `:path` into the path (before the first `?` or `#`) and the query (after the first
/// `?`, before the next `#`).
pub fn split_path(full: &[u8]) -> (&[u8], &[u8]) {
    let end = full.iter().position(|c| *c == b'?' || *c == b'#').unwrap_or(full.len());
    let path = full.get(..end).unwrap_or_default();
    let query = match full.iter().position(|c| *c == b'?') {
        None => b"",
        Some(q) => full.get(q + 1..).unwrap_or_default().split(|c| *c == b'#').next().unwrap_or_default(),
    };
    (path, query)
}

/// The headers a route table examines, each with its slot (its index in [`HeaderSlots::names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSlots {
    /// Lower-case names; `:authority` is slot 0.
    names: Vec<String>,
    path: Option<usize>,
    method: Option<usize>,
    scheme: Option<usize>,
}

impl Default for HeaderSlots {
    fn default() -> Self {
        HeaderSlots { names: vec![AUTHORITY.to_string()], path: None, method: None, scheme: None }
    }
}

const AUTHORITY: &str = ":authority";

impl HeaderSlots {
    /// The slot of `name` (lower-case), added when new.
    pub(crate) fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.names.push(name.to_string());
        let i = self.names.len() - 1;
        match name {
            ":path" => self.path = Some(i),
            ":method" => self.method = Some(i),
            ":scheme" => self.scheme = Some(i),
            _ => {}
        }
        i
    }

    /// The slot of a name already added.
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Header names by slot: what a filter must fetch (`:authority` first).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn method(&self) -> Option<usize> {
        self.method
    }

    pub(crate) fn scheme(&self) -> Option<usize> {
        self.scheme
    }
}

/// Fetches one request header by name (its first value), for a [`RequestView::lazy`].
pub type FetchHeader<'a> = &'a dyn Fn(&str) -> Option<Vec<u8>>;

/// One request's header values indexed by slot, each read at most once: all up front (from the
/// header map, or values a filter fetched) or, from a [`RequestView::lazy`], when a route
/// condition first examines it, so a header only routes never reached examine (another virtual
/// host's, or behind a condition that already failed) costs no hostcall.
pub struct RequestView<'a> {
    /// The first value of each slot's header.
    first: Cells<'a>,
    /// Further values of repeated headers, in order (rare; from the header map only).
    more: Vec<(usize, &'a [u8])>,
    /// Where a slot not yet read comes from (`None`: every slot is read).
    fetch: Option<(FetchHeader<'a>, &'a HeaderSlots)>,
    /// The slot of `:path`, split into path and query when first needed.
    path_slot: Option<usize>,
    split: std::cell::OnceCell<(usize, usize, usize)>,
}

/// One slot's first value: unset until read.
type Cell<'a> = std::cell::OnceCell<Option<std::borrow::Cow<'a, [u8]>>>;

/// Tables that examine at most this many headers keep a request's values inline: no allocation
/// per request (BENCHMARKS.md, "The router's own code per request").
const INLINE_SLOTS: usize = 8;

/// The cells of a [`RequestView`], by slot. Inline, a slot past the table's is never set (absent).
#[derive(Debug)]
enum Cells<'a> {
    Inline([Cell<'a>; INLINE_SLOTS]),
    Heap(Vec<Cell<'a>>),
}

impl<'a> Cells<'a> {
    fn new(n: usize) -> Self {
        if n <= INLINE_SLOTS {
            Cells::Inline(std::array::from_fn(|_| Cell::new()))
        } else {
            Cells::Heap((0..n).map(|_| Cell::new()).collect())
        }
    }

    fn get(&self, slot: usize) -> Option<&Cell<'a>> {
        match self {
            Cells::Inline(a) => a.get(slot),
            Cells::Heap(v) => v.get(slot),
        }
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Cell<'a>> {
        match self {
            Cells::Inline(a) => a.get_mut(slot),
            Cells::Heap(v) => v.get_mut(slot),
        }
    }
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView").field("first", &self.first).field("more", &self.more).finish_non_exhaustive()
    }
}

impl<'a> RequestView<'a> {
    /// From the full header list (or any list holding at least the slotted headers): one pass
    /// over the headers.
    pub fn from_headers(slots: &HeaderSlots, headers: &'a [(String, Vec<u8>)]) -> Self {
        Self::from_pairs(slots, headers.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())))
    }

    /// From headers as (name, value) pairs borrowed from wherever the filter keeps them (the
    /// serialized map Envoy handed over): one pass, nothing copied.
    pub fn from_pairs<'n>(slots: &HeaderSlots, headers: impl IntoIterator<Item = (&'n [u8], &'a [u8])>) -> Self {
        // The cells are filled in place (no intermediate list of values).
        let mut first = Cells::new(slots.names.len());
        let mut more = Vec::new();
        for (name, value) in headers {
            let Some(slot) = slots.names.iter().position(|n| eq_lower(n.as_bytes(), name)) else { continue };
            let Some(cell) = first.get_mut(slot) else { continue };
            if cell.get().is_some() {
                more.push((slot, value));
            } else {
                *cell = std::cell::OnceCell::from(Some(std::borrow::Cow::Borrowed(value)));
            }
        }
        // A cell left empty is an absent header (no `fetch`: [`RequestView::first`]).
        RequestView { first, more, fetch: None, path_slot: slots.path, split: std::cell::OnceCell::new() }
    }

    /// From one value per slot (what a filter fetched header by header, in
    /// [`HeaderSlots::names`] order; a missing entry is an absent header).
    pub fn from_values(slots: &HeaderSlots, values: &'a [Option<Vec<u8>>]) -> Self {
        let mut first = Cells::new(slots.names.len());
        for (i, v) in values.iter().enumerate().take(slots.names.len()) {
            if let (Some(cell), Some(v)) = (first.get_mut(i), v) {
                *cell = Cell::from(Some(std::borrow::Cow::Borrowed(v.as_slice())));
            }
        }
        RequestView { first, more: Vec::new(), fetch: None, path_slot: slots.path, split: std::cell::OnceCell::new() }
    }

    /// Each slot's header fetched by `fetch` when a condition first examines it (its first value,
    /// as one-by-one fetching gives it).
    pub fn lazy(slots: &'a HeaderSlots, fetch: FetchHeader<'a>) -> Self {
        RequestView {
            first: Cells::new(slots.names.len()),
            more: Vec::new(),
            fetch: Some((fetch, slots)),
            path_slot: slots.path,
            split: std::cell::OnceCell::new(),
        }
    }

    /// The first value of a slot's header.
    pub fn first(&self, slot: usize) -> Option<&[u8]> {
        let cell = self.first.get(slot)?;
        let value = match (cell.get(), self.fetch) {
            (Some(v), _) => v,
            (None, Some((fetch, slots))) => {
                cell.get_or_init(|| slots.names.get(slot).and_then(|n| fetch(n)).map(std::borrow::Cow::Owned))
            }
            (None, None) => return None,
        };
        value.as_deref()
    }

    /// Whether some examined header was sent more than once (only from the header map).
    pub fn has_repeated(&self) -> bool {
        !self.more.is_empty()
    }

    /// Every value of a slot's header, in order.
    pub fn values(&self, slot: usize) -> impl Iterator<Item = &[u8]> + '_ {
        self.first(slot).into_iter().chain(self.more.iter().filter(move |(s, _)| *s == slot).map(|(_, v)| *v))
    }

    pub fn authority(&self) -> &[u8] {
        self.first(0).unwrap_or_default()
    }

    /// `:path` and where its path and query are: (path end, query start, query end).
    fn full_path(&self) -> (&[u8], (usize, usize, usize)) {
        let full = self.path_slot.and_then(|s| self.first(s)).unwrap_or_default();
        let at = *self.split.get_or_init(|| {
            let (path, query) = split_path(full);
            let start = if query.is_empty() { full.len() } else { query.as_ptr() as usize - full.as_ptr() as usize };
            (path.len(), start, start + query.len())
        });
        (full, at)
    }

    /// `:path` without query and fragment (empty unless a route examines `:path`).
    pub fn path(&self) -> &[u8] {
        let (full, (end, _, _)) = self.full_path();
        full.get(..end).unwrap_or_default()
    }

    /// The query string (empty unless a route examines `:path`).
    pub fn query(&self) -> &[u8] {
        let (full, (_, start, end)) = self.full_path();
        full.get(start..end).unwrap_or_default()
    }
}

/// The first value of query parameter `name`, `Some("")` for `?name`. Like Envoy 1.40's route
/// matcher (checked against it), names and values are compared as sent, not percent-decoded.
pub fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    for pair in query.split(|c| *c == b'&') {
        let mut kv = pair.splitn(2, |c| *c == b'=');
        let k = kv.next().unwrap_or_default();
        if k == name {
            return Some(kv.next().unwrap_or_default());
        }
    }
    None
}

/// Splits `host:port` (and `[v6]:port`); the port is `None` when absent or not a number.
pub fn split_host_port(authority: &[u8]) -> (&[u8], Option<u32>) {
    if authority.first() == Some(&b'[') {
        if let Some(close) = authority.iter().position(|c| *c == b']') {
            let (host, rest) = authority.split_at(close + 1);
            let port = rest.strip_prefix(b":").and_then(parse_port);
            return (host, port);
        }
        return (authority, None);
    }
    match authority.iter().rposition(|c| *c == b':') {
        Some(colon) => {
            let (host, rest) = authority.split_at(colon);
            match rest.get(1..).and_then(parse_port) {
                Some(p) => (host, Some(p)),
                None => (authority, None),
            }
        }
        None => (authority, None),
    }
}

fn parse_port(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse::<u32>().ok().filter(|p| *p <= 65535)
}

/// Lower-cases a host into `buf` without allocating; `None` if it is longer than
/// [`MAX_HOST_BYTES`] or not UTF-8.
pub fn lowercase_into<'b>(host: &[u8], buf: &'b mut [u8; MAX_HOST_BYTES]) -> Option<&'b str> {
    let out = buf.get_mut(..host.len())?;
    for (o, c) in out.iter_mut().zip(host) {
        *o = c.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn path_and_query_split_once() {
        assert_eq!(split_path(b"/a/b?x=1&y#frag"), (&b"/a/b"[..], &b"x=1&y"[..]));
        assert_eq!(split_path(b"/a#f?x"), (&b"/a"[..], &b"x"[..]));
        assert_eq!(split_path(b"/a?"), (&b"/a"[..], &b""[..]));
        assert_eq!(split_path(b""), (&b""[..], &b""[..]));
        assert_eq!(query_param(b"a=1&b&c=", b"b"), Some(&b""[..]));
        assert_eq!(query_param(b"a=1&b&c=", b"c"), Some(&b""[..]));
        assert_eq!(query_param(b"a=1=2", b"a"), Some(&b"1=2"[..]));
        assert_eq!(query_param(b"", b"a"), None);
    }

    #[test]
    fn view_indexes_by_slot_and_keeps_repeated_values() {
        let mut slots = HeaderSlots::default();
        let p = slots.slot(":path");
        let x = slots.slot("x-version");
        assert_eq!(slots.slot("x-version"), x, "a name has one slot");
        assert_eq!(slots.names(), &[":authority", ":path", "x-version"]);
        let headers = h(&[
            (":authority", "reviews"),
            (":path", "/r?q=1"),
            ("X-Version", "v1"),
            ("other", "z"),
            ("x-version", "v2"),
        ]);
        let v = RequestView::from_headers(&slots, &headers);
        assert_eq!(v.authority(), b"reviews");
        assert_eq!((v.path(), v.query()), (&b"/r"[..], &b"q=1"[..]));
        assert_eq!(v.values(x).collect::<Vec<_>>(), vec![&b"v1"[..], &b"v2"[..]]);
        assert_eq!(v.first(p), Some(&b"/r?q=1"[..]));
        assert_eq!(v.first(99), None);
        let fetched = vec![Some(b"reviews:9080".to_vec()), None, Some(b"v3".to_vec())];
        let v = RequestView::from_values(&slots, &fetched);
        assert_eq!(v.authority(), b"reviews:9080");
        assert_eq!(v.path(), b"");
        assert_eq!(v.values(x).collect::<Vec<_>>(), vec![&b"v3"[..]]);
        // Fewer values than slots: the rest are absent.
        let v = RequestView::from_values(&slots, &[]);
        assert_eq!(v.authority(), b"");
    }

    #[test]
    fn a_lazy_view_fetches_each_header_once_and_only_when_examined() {
        let mut slots = HeaderSlots::default();
        let p = slots.slot(":path");
        let x = slots.slot("x-version");
        let asked = std::cell::RefCell::new(Vec::new());
        let fetch = |name: &str| {
            asked.borrow_mut().push(name.to_string());
            match name {
                ":authority" => Some(b"reviews".to_vec()),
                ":path" => Some(b"/r?q=1#f".to_vec()),
                _ => None,
            }
        };
        let v = RequestView::lazy(&slots, &fetch);
        assert!(asked.borrow().is_empty(), "nothing before it is examined");
        assert_eq!(v.authority(), b"reviews");
        assert_eq!(v.authority(), b"reviews");
        assert_eq!(*asked.borrow(), [":authority"], "once");
        assert_eq!((v.path(), v.query()), (&b"/r"[..], &b"q=1"[..]));
        assert_eq!(v.first(p), Some(&b"/r?q=1#f"[..]));
        assert_eq!(v.values(x).count(), 0, "absent");
        assert_eq!(v.first(x), None);
        assert_eq!(v.first(99), None);
        assert_eq!(*asked.borrow(), [":authority", ":path", "x-version"]);
        // No query: the path is all of it.
        let fetch = |name: &str| (name == ":path").then(|| b"/only".to_vec());
        let v = RequestView::lazy(&slots, &fetch);
        assert_eq!((v.path(), v.query()), (&b"/only"[..], &b""[..]));
    }

    #[test]
    fn authorities() {
        assert_eq!(split_host_port(b"a:80"), (&b"a"[..], Some(80)));
        assert_eq!(split_host_port(b"[::1]:8080"), (&b"[::1]"[..], Some(8080)));
        assert_eq!(split_host_port(b"[::1"), (&b"[::1"[..], None));
        assert_eq!(split_host_port(b"a:99999"), (&b"a:99999"[..], None));
        assert_eq!(split_host_port(b"a:"), (&b"a:"[..], None));
        let mut buf = [0u8; MAX_HOST_BYTES];
        assert_eq!(lowercase_into(b"ReViews", &mut buf), Some("reviews"));
        let long = vec![b'a'; MAX_HOST_BYTES + 1];
        assert_eq!(lowercase_into(&long, &mut buf), None, "longer than any DNS name");
        assert!(lowercase_into(&long[..MAX_HOST_BYTES], &mut buf).is_some());
    }
}
