//! The request-header map as Envoy serializes it, read in place.
//!
//! `proxy_get_header_map_pairs` hands the guest one buffer (allocated in guest memory through
//! `proxy_on_memory_allocate`): a little-endian `u32` count, then `count` × (`u32` name length,
//! `u32` value length), then each name and each value, each followed by a NUL. The SDK's
//! `get_map_bytes` decodes it into a `Vec<(String, Vec<u8>)>`: two allocations and a UTF-8 check
//! per header (measured: ~9k of the ~20.1k instructions of reading a ~1.4 KB map). Here the buffer
//! is kept as it is, its layout checked once ([`RawMap::parse`]), and lookups are served from it
//! without allocating.
//!
//! A phase's edits (already written through to Envoy) are kept beside it as an [`Overlay`], so a
//! later phase sees the request as Envoy will forward it: a set or a removal hides every earlier
//! value of that name, a set or an add appends a value after all the others.

use proxy_wasm::types::{Bytes, Status};

/// The most headers a map may hold. Envoy's own limit (`max_headers_count`) defaults to 100; a
/// count above this bound is refused (the map reads as a failure: security phases fail closed,
/// telemetry sees no headers) rather than walked.
pub const MAX_HEADERS: usize = 16_384;

/// Bytes of the count, and of each (name length, value length) entry.
const COUNT_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;

/// Why a serialized map was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Shorter than its count, its length table or its names and values say.
    Truncated,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// A name or value is not followed by its NUL.
    MissingNul,
}

impl From<MapError> for Status {
    fn from(_: MapError) -> Status {
        Status::ParseFailure
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<usize> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(b)).ok()
}

/// One serialized header map whose layout has been checked: every name and value lies within
/// the buffer, each followed by a NUL, at most [`MAX_HEADERS`] entries. Names are handed out as
/// bytes (Envoy's are lower-case tokens, ASCII): checking them for UTF-8 on every walk cost more
/// than the walk itself.
#[derive(Debug, Default, Clone)]
pub struct RawMap {
    buf: Bytes,
    count: usize,
}

impl RawMap {
    /// Checks `buf`'s layout (one pass over the length table). An empty buffer is an empty map
    /// (what Envoy hands over for one).
    pub fn parse(buf: Bytes) -> Result<RawMap, MapError> {
        if buf.is_empty() {
            return Ok(RawMap::default());
        }
        let count = read_u32(&buf, 0).ok_or(MapError::Truncated)?;
        if count > MAX_HEADERS {
            return Err(MapError::TooManyHeaders);
        }
        // count ≤ MAX_HEADERS: no overflow.
        let mut data = COUNT_BYTES + count * ENTRY_BYTES;
        if data > buf.len() {
            return Err(MapError::Truncated);
        }
        for i in 0..count {
            let at = COUNT_BYTES + i * ENTRY_BYTES;
            let (name_len, value_len) =
                (read_u32(&buf, at).ok_or(MapError::Truncated)?, read_u32(&buf, at + 4).ok_or(MapError::Truncated)?);
            field(&buf, data, name_len)?;
            data = data + name_len + 1;
            field(&buf, data, value_len)?;
            data = data + value_len + 1;
        }
        Ok(RawMap { buf, count })
    }

    /// The headers in Envoy's order (a repeated header is several entries).
    pub fn iter(&self) -> RawIter<'_> {
        RawIter { buf: &self.buf, next: 0, count: self.count, data: COUNT_BYTES + self.count * ENTRY_BYTES }
    }

    /// The first value of `name`: the length table is walked, a name compared only when its
    /// length matches.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let buf: &[u8] = &self.buf;
        let mut data = COUNT_BYTES + self.count * ENTRY_BYTES;
        for i in 0..self.count {
            let at = COUNT_BYTES + i * ENTRY_BYTES;
            let (name_len, value_len) = (read_u32(buf, at)?, read_u32(buf, at + 4)?);
            let value_at = data + name_len + 1;
            if name_len == name.len() && buf.get(data..data + name_len) == Some(name) {
                return buf.get(value_at..value_at + value_len);
            }
            data = value_at + value_len + 1;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// `len` bytes at `at`, followed by a NUL, within `buf`.
fn field(buf: &[u8], at: usize, len: usize) -> Result<&[u8], MapError> {
    let end = at.checked_add(len).ok_or(MapError::Truncated)?;
    match buf.get(end) {
        Some(0) => buf.get(at..end).ok_or(MapError::Truncated),
        Some(_) => Err(MapError::MissingNul),
        None => Err(MapError::Truncated),
    }
}

/// The headers of a [`RawMap`], borrowed from its buffer.
#[derive(Clone)]
pub struct RawIter<'a> {
    buf: &'a [u8],
    next: usize,
    count: usize,
    /// Where the next name starts.
    data: usize,
}

impl<'a> Iterator for RawIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        // The layout was checked by `RawMap::parse`: none of these fail (and if one did, the
        // walk just ends).
        let at = COUNT_BYTES + self.next * ENTRY_BYTES;
        let (name_len, value_len) = (read_u32(self.buf, at)?, read_u32(self.buf, at + 4)?);
        let name = self.buf.get(self.data..self.data.checked_add(name_len)?)?;
        let value_at = self.data + name_len + 1;
        let value = self.buf.get(value_at..value_at.checked_add(value_len)?)?;
        self.data = value_at + value_len + 1;
        self.next += 1;
        Some((name, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.count - self.next.min(self.count)))
    }
}

/// The edits phases made to a map read before them, in the order Envoy applied them. Grows by
/// one entry per edit a phase makes (each one a hostcall its configuration asked for).
#[derive(Debug, Default, Clone)]
pub struct Overlay {
    /// Names whose values in the map are gone (set or removed since the map was read).
    hidden: Vec<String>,
    /// Values set or added since, in order, after every value of the map.
    appended: Vec<(String, Bytes)>,
}

impl Overlay {
    /// `name` now has just `value` (after every other header).
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.remove(name);
        self.appended.push((name.to_string(), value.to_vec()));
    }

    /// `value` is one more value of `name`, after every other header.
    pub fn add(&mut self, name: &str, value: &[u8]) {
        self.appended.push((name.to_string(), value.to_vec()));
    }

    /// `name` has no value any more.
    pub fn remove(&mut self, name: &str) {
        if !self.hidden.iter().any(|h| h == name) {
            self.hidden.push(name.to_string());
        }
        self.appended.retain(|(n, _)| n != name);
    }

    /// The last value a phase set or added for `name` since the map was read (none when the
    /// header is as Envoy handed it over, or was removed since).
    pub fn edited(&self, name: &str) -> Option<&[u8]> {
        self.appended.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    fn hides(&self, name: &[u8]) -> bool {
        self.hidden.iter().any(|h| h.as_bytes() == name)
    }
}

/// The request headers as Envoy will forward them: the map as read, with the edits made since.
/// Names lower-case (Envoy's map; a phase's edit keeps the name it gave), values raw, in order.
/// Borrowed: nothing is copied.
#[derive(Clone, Copy)]
pub struct RequestHeaders<'a> {
    map: &'a RawMap,
    overlay: &'a Overlay,
}

impl<'a> RequestHeaders<'a> {
    pub fn new(map: &'a RawMap, overlay: &'a Overlay) -> Self {
        RequestHeaders { map, overlay }
    }

    /// Every header, in order (a repeated header is several entries); names as bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let overlay = self.overlay;
        let edited = !overlay.hidden.is_empty();
        self.map
            .iter()
            .filter(move |(n, _)| !(edited && overlay.hides(n)))
            .chain(overlay.appended.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())))
    }

    /// The first value of `name` (compared exactly: Envoy's names are lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        let in_map = if self.overlay.hides(name) { None } else { self.map.get(name) };
        // The map's values come before every edit's.
        in_map.or_else(|| self.overlay.appended.iter().find(|(n, _)| n.as_bytes() == name).map(|(_, v)| v.as_slice()))
    }

    /// Every value of `name`, in order.
    pub fn get_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.iter().filter(move |(n, _)| *n == name.as_bytes()).map(|(_, v)| v)
    }

    /// Whether any header is named `name`, ignoring ASCII case.
    pub fn contains_ignore_case(&self, name: &str) -> bool {
        self.iter().any(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// An owning copy (for the rare paths that keep the headers; a name that is not UTF-8,
    /// which Envoy never hands over, is copied lossily).
    pub fn to_vec(&self) -> Vec<(String, Bytes)> {
        self.iter().map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v.to_vec())).collect()
    }
}

/// Serializes pairs as Envoy does (for tests and for hosts without the map call).
pub fn serialize(pairs: &[(&str, &[u8])]) -> Bytes {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// Envoy's request-header map, read with the raw ABI call and kept as one buffer (wasm only).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub fn read_request_headers() -> Result<RawMap, Status> {
    // proxy-wasm ABI 0.2.1: `MapType::HttpRequestHeaders` is 0.
    const HTTP_REQUEST_HEADERS: u32 = 0;
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize)
            -> u32;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes the two out-pointers, which point at live locals, and nothing
    // else of the guest's memory except the buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a leaked `Box<[u8]>` of `size` bytes).
    let status = unsafe { proxy_get_header_map_pairs(HTTP_REQUEST_HEADERS, &mut data, &mut size) };
    let buf = if data.is_null() || size == 0 {
        // Envoy hands over an empty map without a buffer (a zero-sized box owns no memory).
        Vec::new()
    } else {
        // SAFETY: `data` is the start of `size` bytes the host allocated with
        // `proxy_on_memory_allocate(size)` and filled: a leaked `Box<[u8]>` of length `size`, the
        // same allocation as a `Vec<u8>` of length and capacity `size` (the SDK's `get_map_bytes`
        // takes it back the same way). Owned here exactly once; freed when the map is dropped.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    match status {
        0 => Ok(RawMap::parse(buf)?),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        _ => Err(Status::InternalFailure),
    }
}

/// Off wasm (unit tests of the crates above): the SDK's call, serialized back.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_request_headers() -> Result<RawMap, Status> {
    let pairs = proxy_wasm::hostcalls::get_map_bytes(proxy_wasm::types::MapType::HttpRequestHeaders)?;
    let pairs: Vec<(&str, &[u8])> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    Ok(RawMap::parse(serialize(&pairs))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &[u8])]) -> RawMap {
        RawMap::parse(serialize(pairs)).expect("valid")
    }

    fn all(h: RequestHeaders<'_>) -> Vec<(String, Vec<u8>)> {
        h.to_vec()
    }

    #[test]
    fn a_map_reads_back_in_order_with_repeated_names_and_empty_values() {
        let pairs: &[(&str, &[u8])] =
            &[(":path", b"/a?b"), ("cookie", b"a=1"), ("x-empty", b""), ("cookie", b"b=2"), ("bin", &[0xff, 0, 1])];
        let map = parse(pairs);
        assert_eq!(map.len(), 5);
        let got: Vec<(&[u8], &[u8])> = map.iter().collect();
        let want: Vec<(&[u8], &[u8])> = pairs.iter().map(|(n, v)| (n.as_bytes(), *v)).collect();
        assert_eq!(got, want);
        assert_eq!(map.get(b"cookie"), Some(&b"a=1"[..]));
        assert_eq!(map.get(b"cooki"), None);
        let overlay = Overlay::default();
        let h = RequestHeaders::new(&map, &overlay);
        assert_eq!(h.get("cookie"), Some(&b"a=1"[..]));
        assert_eq!(h.get_all("cookie").collect::<Vec<_>>(), vec![&b"a=1"[..], b"b=2"]);
        assert_eq!(h.get("x-empty"), Some(&b""[..]));
        assert_eq!(h.get("missing"), None);
        assert!(h.contains_ignore_case("COOKIE"));
    }

    #[test]
    fn an_empty_map_is_empty_with_or_without_a_buffer() {
        for buf in [Vec::new(), 0u32.to_le_bytes().to_vec()] {
            let map = RawMap::parse(buf).expect("empty");
            assert!(map.is_empty());
            assert_eq!(map.iter().count(), 0);
        }
    }

    #[test]
    fn truncated_buffers_are_refused_at_every_length() {
        let full = serialize(&[("a", b"1"), ("bb", b"22")]);
        for len in 1..full.len() {
            let err = RawMap::parse(full[..len].to_vec()).expect_err("truncated");
            assert!(matches!(err, MapError::Truncated | MapError::MissingNul), "{len}: {err:?}");
        }
        assert!(RawMap::parse(full).is_ok());
    }

    #[test]
    fn counts_over_the_bound_and_lengths_past_the_buffer_are_refused() {
        let mut over = ((MAX_HEADERS + 1) as u32).to_le_bytes().to_vec();
        over.resize(4 + 8 * (MAX_HEADERS + 1) + 4 * (MAX_HEADERS + 1), 0);
        assert_eq!(RawMap::parse(over).unwrap_err(), MapError::TooManyHeaders);
        assert_eq!(RawMap::parse(u32::MAX.to_le_bytes().to_vec()).unwrap_err(), MapError::TooManyHeaders);
        // A count the buffer's length table cannot hold.
        let mut short = 3u32.to_le_bytes().to_vec();
        short.extend_from_slice(&[0; 8]);
        assert_eq!(RawMap::parse(short).unwrap_err(), MapError::Truncated);
        // Lengths near u32::MAX (would overflow a 32-bit offset).
        let mut huge = serialize(&[("a", b"1")]);
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(RawMap::parse(huge).unwrap_err(), MapError::Truncated);
        let mut huge = serialize(&[("a", b"1")]);
        huge[8..12].copy_from_slice(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(RawMap::parse(huge).unwrap_err(), MapError::Truncated);
    }

    #[test]
    fn missing_nuls_are_refused_and_names_are_bytes() {
        let mut b = serialize(&[("a", b"1"), ("b", b"2")]);
        let nul_after_a = 4 + 16 + 1;
        b[nul_after_a] = b'x';
        assert_eq!(RawMap::parse(b).unwrap_err(), MapError::MissingNul);
        // A name that is not UTF-8 (Envoy never sends one) is still a header, copied lossily.
        let mut b = serialize(&[("a", b"1")]);
        b[4 + 8] = 0xff;
        let map = RawMap::parse(b).expect("bytes");
        assert_eq!(map.iter().next(), Some((&[0xff][..], &b"1"[..])));
        assert_eq!(
            RequestHeaders::new(&map, &Overlay::default()).to_vec(),
            vec![("\u{fffd}".to_string(), b"1".to_vec())]
        );
        // Trailing bytes after the last value are tolerated (the host may round up).
        let mut b = serialize(&[("a", b"1")]);
        b.extend_from_slice(b"junk");
        assert_eq!(RawMap::parse(b).expect("ok").iter().collect::<Vec<_>>(), vec![(&b"a"[..], &b"1"[..])]);
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator over short buffers, some with plausible counts.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 48) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if len >= 4 {
                buf[..4].copy_from_slice(&((x >> 3) as u32 % 4).to_le_bytes());
            }
            if let Ok(map) = RawMap::parse(buf) {
                let n = map.iter().count();
                assert_eq!(n, map.len());
            }
        }
    }

    #[test]
    fn the_overlay_shows_the_request_as_envoy_forwards_it() {
        let map = parse(&[(":path", b"/"), ("a", b"1"), ("b", b"2"), ("a", b"3")]);
        let mut o = Overlay::default();
        // Add appends after everything; set hides every earlier value and appends; remove hides.
        o.add("x", b"1");
        o.set("a", b"new");
        o.add("b", b"4");
        o.remove("c");
        let h = RequestHeaders::new(&map, &o);
        let want: Vec<(String, Vec<u8>)> = [(":path", "/"), ("b", "2"), ("x", "1"), ("a", "new"), ("b", "4")]
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(all(h), want);
        assert_eq!(h.get("a"), Some(&b"new"[..]));
        assert_eq!(h.get_all("b").count(), 2);
        // Set twice: only the last value, at the end.
        o.set("x", b"2");
        o.set("a", b"newer");
        assert_eq!(RequestHeaders::new(&map, &o).get_all("a").collect::<Vec<_>>(), vec![&b"newer"[..]]);
        assert_eq!(RequestHeaders::new(&map, &o).iter().last(), Some((&b"a"[..], &b"newer"[..])));
        // Remove then add: just the added value.
        o.remove("b");
        o.add("b", b"5");
        assert_eq!(RequestHeaders::new(&map, &o).get_all("b").collect::<Vec<_>>(), vec![&b"5"[..]]);
        o.remove("x");
        assert_eq!(RequestHeaders::new(&map, &o).get("x"), None);
    }

    /// The overlay gives what today's editable copy of the decoded map gives, edit for edit.
    #[test]
    fn the_overlay_matches_an_edited_copy() {
        let base: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2"), ("a", b"3"), ("c", b"4")];
        let map = parse(base);
        let names = ["a", "b", "c", "d"];
        let mut x: u64 = 7;
        for _ in 0..500 {
            let mut o = Overlay::default();
            let mut copy: Vec<(String, Vec<u8>)> = base.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
            for step in 0..6u8 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let name = names[(x >> 33) as usize % names.len()];
                let value = [step];
                match (x >> 40) % 3 {
                    0 => {
                        o.set(name, &value);
                        copy.retain(|(n, _)| n != name);
                        copy.push((name.to_string(), value.to_vec()));
                    }
                    1 => {
                        o.add(name, &value);
                        copy.push((name.to_string(), value.to_vec()));
                    }
                    _ => {
                        o.remove(name);
                        copy.retain(|(n, _)| n != name);
                    }
                }
                let h = RequestHeaders::new(&map, &o);
                assert_eq!(all(h), copy);
                for n in names {
                    let first = copy.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_slice());
                    assert_eq!(h.get(n), first, "{n}");
                }
            }
        }
    }
}
