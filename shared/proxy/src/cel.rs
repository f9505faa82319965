//! Several properties in one hostcall: one CEL expression evaluated by Envoy's `expr_evaluate`
//! foreign function returns them all in one buffer, where one `get_property` each would cost a
//! hostcall and a guest allocation apiece.
//!
//! Envoy (1.36, 1.38, 1.40 checked here; `source/extensions/common/wasm/foreign.cc`, under
//! `WASM_USE_CEL_PARSER`, which the official builds define) registers three foreign functions:
//! `expr_create(text)` parses and compiles an expression and returns a 4-byte token;
//! `expr_evaluate(token)` evaluates it against the calling stream and returns the value serialized
//! as `get_property` serializes a property (`serializeValue` in `context.cc`: strings and bytes
//! raw, integers, doubles, durations and timestamps 8 bytes little-endian, bools 1 byte, messages
//! as protobuf, maps and lists in the proxy-wasm pairs encoding, a list's elements as the keys);
//! `expr_delete(token)`. Tokens live in a table of the **root context** of the caller, counted from
//! 0 in each root context.
//!
//! The expression for paths `p1 … pn` is a list `[marker, e1, …, en]`:
//! - each `ei` is `guard ? pi : ""`. An attribute that is absent makes CEL's select an error,
//!   and one error fails the whole evaluation, so each step into a map is guarded with `has()`
//!   (map presence is what `get_property` asks: absent key → `NotFound`). A step into a protobuf
//!   message is not guarded (`get_property` and CEL both give the field's default when unset), a
//!   step into `null` (e.g. `xds.upstream_host_metadata` of a host without metadata) is absent.
//!   Absent gives `""`: `get_property` of an empty value returns no buffer at all (the host
//!   allocates nothing for size 0, the SDK answers `None`), so empty and absent are the same
//!   answer either way.
//! - `marker` is a number unique to the expression in this VM. Several root contexts (listeners
//!   whose filters share one VM) each have their own token table, all counted from 0, and a
//!   stream does not know its root context: token 0 may be this expression in one root and
//!   another expression in the next. The marker proves which expression answered; a wrong or
//!   unknown token is tried no further and the expression is created in the caller's root.
//!   The marker is only given where `request` resolves: `expr_evaluate` evaluates against the
//!   context Envoy called into (`proxy_wasm::current_context_` in foreign.cc), not the effective
//!   one `get_property` reads, so from a root callback that set the effective context to a
//!   stream (a phase resumed after the root's HTTP call) `request.*` fails the evaluation, but
//!   `xds.*` would answer for the root, silently wrong (seen in Envoy 1.40: `has(xds.cluster_name)`
//!   false from the root); the failing `request` makes those reads fall back to `get_property`.
//!   A list with an item that selects from `request` unguarded (`request.total_size`, and in
//!   [`Variant::Fast`] `request.duration`) fails there by itself: its marker is the bare number.
//!
//! Anything unexpected (no such foreign function, a refused expression, a failed evaluation, an
//! answer that does not decode) makes [`Batches::read`] answer `None`, and the caller reads each
//! path with `get_property` as before: the batch is an optimisation, never a different answer.

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, Status};
use std::cell::{Cell, RefCell};

/// Fewer paths than this are read one by one: below it a `get_property` each is cheaper than
/// evaluating an expression. Measured in Envoy 1.40 under callgrind (instructions per request
/// over a no-op filter, one run): N `get_property` 12.8k / 50.0k / 101.8k for N = 1 / 4 / 8 at
/// on_log, one guarded expression 23.3k / 34.7k / 54.1k; through [`crate::stream::Stream`]
/// (its keeping included) 4 paths save 7.8k, 8 save 40.9k, the 12 stats reads 29.0k.
pub const MIN_BATCH: usize = 3;
/// Distinct path lists kept per VM (least recently used evicted).
pub const MAX_LISTS: usize = 16;
/// Tokens kept per path list: one per root context that created it.
pub const MAX_TOKENS_PER_LIST: usize = 4;
/// Expressions this VM may create over its life: the host keeps every one until its root
/// context goes away (a token evicted here cannot be deleted from another root's table), so
/// creation stops past this and the paths are read one by one.
pub const MAX_CREATES_PER_VM: u32 = 256;
/// Failed evaluations in a row after which a list is read one by one for good.
pub const MAX_FAILURES: u32 = 16;

/// The first segments CEL resolves as Envoy attributes (`StreamActivation`), `filter_state`
/// included (its map answers an object by key: a `CelState` as its value, another object with
/// no field reflection as its `serializeAsString`, e.g. `envoy.filters.http.grpc_stats` as
/// `"<requests>,<responses>"`, the same bytes `get_property` returns). Other first segments are
/// wasm-only attributes or the `wasm.`-prefixed filter state of `set_property`: read one by one.
const ROOTS: [&str; 8] =
    ["request", "response", "connection", "upstream", "source", "destination", "xds", "filter_state"];

/// CEL reserved words: not usable as a field selection, asked with an index instead.
const RESERVED: [&str; 19] = [
    "as",
    "break",
    "const",
    "continue",
    "else",
    "false",
    "for",
    "function",
    "if",
    "import",
    "in",
    "let",
    "loop",
    "package",
    "namespace",
    "null",
    "return",
    "true",
    "var",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !RESERVED.contains(&s)
}

/// Characters a segment may have to be written as a CEL string literal without escapes.
fn quotable(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
}

/// Whether a path can be read through an expression: an attribute root, then segments that are
/// identifiers or plain keys (`request.headers.content-type`). A segment starting with a digit
/// would index a list in `get_property` (`services.0`) but a map in CEL: read one by one.
pub fn expressible(path: &[&str]) -> bool {
    match path {
        [root, rest @ ..] if !rest.is_empty() && ROOTS.contains(root) => {
            rest.iter().all(|s| is_identifier(s) || (quotable(s) && !s.starts_with(|c: char| c.is_ascii_digit())))
        }
        _ => false,
    }
}

/// The cheap first test [`crate::stream::Stream::properties`] makes per request: an attribute
/// root and a segment under it. [`expressible`] is asked once per path list, when the list is
/// first seen: a list with a path it refuses is read one by one.
pub fn attribute(path: &[&str]) -> bool {
    path.len() >= 2 && path.first().is_some_and(|r| ROOTS.contains(r))
}

/// `prefix.seg` or `prefix["seg"]`.
fn select(prefix: &str, seg: &str) -> String {
    if is_identifier(seg) {
        format!("{prefix}.{seg}")
    } else {
        format!("{prefix}[\"{seg}\"]")
    }
}

/// Whether `prefix` has `seg`, as a CEL condition.
fn presence(prefix: &str, seg: &str) -> String {
    if is_identifier(seg) {
        format!("has({prefix}.{seg})")
    } else {
        format!("\"{seg}\" in {prefix}")
    }
}

/// Attributes Envoy's wrappers answer in every stream context, at any time of the stream:
/// `source/extensions/filters/common/expr/context.cc` returns a value for them unconditionally
/// (`request.total_size` = bytes received + the request headers' size or 0,
/// `response.total_size` = bytes sent + the response headers' and trailers' sizes or 0,
/// `response.flags` = the response flags' bits, `response.size` = bytes sent), in Envoy 1.36,
/// 1.38 and 1.40 alike (e2e/tests/cel.rs holds the batch that reads them unguarded against
/// `get_property` in each). Their `has()` guard would only evaluate the attribute twice: it
/// costs the host a second lookup per request and never answers false. Were one absent after
/// all, the evaluation fails and the caller reads the paths one by one (the same answers).
/// Not here: `response.code` and `request.duration` (absent on a stream reset before a
/// response, or not yet complete), `request.size` (absent for an unparsable content-length).
const ALWAYS_PRESENT: [[&str; 2]; 4] =
    [["request", "total_size"], ["response", "total_size"], ["response", "flags"], ["response", "size"]];

/// Whether `path` is one of [`ALWAYS_PRESENT`].
fn always_present(path: &[&str]) -> bool {
    ALWAYS_PRESENT.iter().any(|a| a.as_slice() == path)
}

/// Attributes present on nearly every stream when it is logged, though not always: no
/// `response.code` when the stream was reset before any response, no `request.duration` before
/// the request completed (while the request is decided). A list holding one is first evaluated
/// without their guards ([`Variant::Fast`]); when that fails (one of them absent), the guarded
/// expression answers the same request ([`Variant::Guarded`]), so the answer is the same either
/// way and only such a request pays a second evaluation.
const USUALLY_PRESENT: [[&str; 2]; 2] = [["response", "code"], ["request", "duration"]];

fn usually_present(path: &[&str]) -> bool {
    USUALLY_PRESENT.iter().any(|a| a.as_slice() == path)
}

/// Whether the item of `path` in `variant` selects a field of `request` with no guard (see
/// [`item`]): evaluating it fails wherever `request` does not resolve.
fn selects_request_unguarded(path: &[&str], variant: Variant) -> bool {
    path.first() == Some(&"request") && (always_present(path) || (variant == Variant::Fast && usually_present(path)))
}

/// Which expression a list is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Every map step guarded but those of [`ALWAYS_PRESENT`] attributes: the answer whatever
    /// is absent.
    Guarded,
    /// [`USUALLY_PRESENT`] attributes unguarded too: cheaper, fails when one of them is absent.
    Fast,
}

/// `guard ? value : ""` for one path (see the module documentation), or the value alone for an
/// attribute that is [`always_present`]. The root is always a map (Envoy's attribute wrappers);
/// later steps may be maps, messages or null.
fn item(path: &[&str], variant: Variant) -> Option<String> {
    if always_present(path) || (variant == Variant::Fast && usually_present(path)) {
        return Some(path.join("."));
    }
    let (root, rest) = path.split_first()?;
    let mut prefix = (*root).to_string();
    let mut guards = Vec::with_capacity(rest.len());
    for (i, seg) in rest.iter().enumerate() {
        if i == 0 {
            guards.push(presence(&prefix, seg));
        } else {
            guards.push(format!("(type({prefix}) == map ? {} : type({prefix}) != null_type)", presence(&prefix, seg)));
        }
        prefix = select(&prefix, seg);
    }
    Some(format!("{} ? {prefix} : \"\"", guards.join(" && ")))
}

/// The expression reading `paths` (each [`expressible`]), led by `marker`.
pub fn expression(marker: u64, paths: &[&[&str]]) -> Option<String> {
    expression_as(marker, paths, Variant::Guarded)
}

/// [`expression`] in the given [`Variant`].
pub fn expression_as(marker: u64, paths: &[&[&str]], variant: Variant) -> Option<String> {
    let mut items = Vec::with_capacity(paths.len() + 1);
    // `request` resolves in every stream context and in no root context: see the module doc.
    // An item that selects from `request` unguarded already fails the evaluation where it does
    // not resolve, so the marker then needs no test of its own (it cost ~2k per evaluation).
    if paths.iter().any(|p| selects_request_unguarded(p, variant)) {
        items.push(format!("{marker}u"));
    } else {
        items.push(format!("type(request) == map ? {marker}u : 0u"));
    }
    for p in paths {
        if !expressible(p) {
            return None;
        }
        items.push(item(p, variant)?);
    }
    Some(format!("[{}]", items.join(", ")))
}

/// Why an evaluation gave no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The answer is another expression's (its marker differs): the token belongs to another
    /// root context.
    Foreign,
    /// The answer does not decode as `n` values after the marker.
    Malformed,
}

/// Decodes an answer of [`expression`]: the pairs encoding of a list, the marker (8 bytes) then
/// one element per path; an empty element is `None`, as `get_property` answers for it.
pub fn decode(marker: u64, n: usize, bytes: &[u8]) -> Result<Vec<Option<Bytes>>, Miss> {
    // One pass, no intermediate pairs: this runs on every batched read.
    let read_u32 = |at: usize| -> Result<usize, Miss> {
        let b = bytes.get(at..at.checked_add(4).ok_or(Miss::Malformed)?).ok_or(Miss::Malformed)?;
        let arr: [u8; 4] = b.try_into().map_err(|_| Miss::Malformed)?;
        Ok(u32::from_le_bytes(arr) as usize)
    };
    let count = read_u32(0)?;
    if count == 0 || count > bytes.len() / 8 {
        return Err(Miss::Malformed);
    }
    let mut data = 4 + count * 8;
    // The marker first: another expression's answer (another count) is Foreign, not Malformed.
    let marker_at = bytes.get(data..data + read_u32(4)?.min(bytes.len())).ok_or(Miss::Malformed)?;
    if marker_at != marker.to_le_bytes() {
        return Err(Miss::Foreign);
    }
    if count != n.checked_add(1).ok_or(Miss::Malformed)? {
        return Err(Miss::Malformed);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..count {
        let size = read_u32(4 + i * 8)?;
        if read_u32(8 + i * 8)? != 0 {
            return Err(Miss::Malformed); // a map's value: not the list the expression makes
        }
        let end = data.checked_add(size).ok_or(Miss::Malformed)?;
        let value = bytes.get(data..end).ok_or(Miss::Malformed)?;
        // each key and each (empty) value is followed by a NUL
        data = end.checked_add(2).ok_or(Miss::Malformed)?;
        if i > 0 {
            out.push((!value.is_empty()).then(|| value.to_vec()));
        }
    }
    if data > bytes.len() {
        return Err(Miss::Malformed);
    }
    Ok(out)
}

/// Envoy's expression functions, as the batch cache uses them (a trait so that the cache is
/// tested natively).
pub trait ExprHost {
    /// `expr_create`: the token.
    fn create(&mut self, expr: &str) -> Result<u32, Status>;
    /// `expr_evaluate`: the serialized value (empty when the host returned no buffer).
    fn evaluate(&mut self, token: u32) -> Result<Bytes, Status>;
}

/// The real host (`proxy_call_foreign_function`).
pub struct Envoy;

impl ExprHost for Envoy {
    fn create(&mut self, expr: &str) -> Result<u32, Status> {
        let b = hostcalls::call_foreign_function("expr_create", Some(expr.as_bytes()))?.unwrap_or_default();
        let arr: [u8; 4] = b.as_slice().try_into().map_err(|_| Status::SerializationFailure)?;
        Ok(u32::from_le_bytes(arr))
    }

    fn evaluate(&mut self, token: u32) -> Result<Bytes, Status> {
        Ok(hostcalls::call_foreign_function("expr_evaluate", Some(&token.to_le_bytes()))?.unwrap_or_default())
    }
}

type PathKey = Box<[Box<str>]>;

enum State {
    /// Tokens that evaluated (or were created for) this list, most recently right first.
    Active { tokens: Vec<u32>, failures: u32 },
    /// Refused by the host or failing: read one by one.
    Off,
}

struct Entry {
    paths: Vec<PathKey>,
    variant: Variant,
    marker: u64,
    state: State,
    used: u64,
}

impl Entry {
    fn is(&self, paths: &[&[&str]], variant: Variant) -> bool {
        self.variant == variant
            && self.paths.len() == paths.len()
            && self
                .paths
                .iter()
                .zip(paths)
                .all(|(k, p)| k.len() == p.len() && k.iter().zip(*p).all(|(a, b)| &**a == *b))
    }
}

/// The expressions of one VM, one per distinct path list.
pub struct Batches {
    entries: Vec<Entry>,
    /// Markers are `salt + n`: unique per list in this VM, unlikely to match anything else.
    salt: u64,
    next: u64,
    clock: u64,
    creates: u32,
    /// The host has no `expr_create` (an Envoy built without the CEL parser).
    missing: bool,
}

impl Batches {
    pub fn new(salt: u64) -> Batches {
        Batches { entries: Vec::new(), salt, next: 0, clock: 0, creates: 0, missing: false }
    }

    /// The values of `paths` in one evaluation, in order; `None` when the caller must read them
    /// one by one (also, for good, when one of them is not [`expressible`]). A list with a
    /// [`USUALLY_PRESENT`] attribute is evaluated [`Variant::Fast`] first, and [`Variant::Guarded`]
    /// when that gives no answer (a [`Variant::Fast`] expression that keeps failing is turned off
    /// as any other: the list is then read guarded only).
    pub fn read(&mut self, host: &mut impl ExprHost, paths: &[&[&str]]) -> Option<Vec<Option<Bytes>>> {
        if paths.iter().any(|p| usually_present(p)) {
            if let Some(values) = self.read_as(host, paths, Variant::Fast) {
                return Some(values);
            }
        }
        self.read_as(host, paths, Variant::Guarded)
    }

    fn read_as(&mut self, host: &mut impl ExprHost, paths: &[&[&str]], variant: Variant) -> Option<Vec<Option<Bytes>>> {
        if self.missing || paths.is_empty() {
            return None;
        }
        self.clock += 1;
        let at = match self.entries.iter().position(|e| e.is(paths, variant)) {
            Some(i) => i,
            None => self.add(paths, variant),
        };
        let clock = self.clock;
        let entry = self.entries.get_mut(at)?;
        entry.used = clock;
        let State::Active { tokens, failures } = &mut entry.state else { return None };
        let marker = entry.marker;
        // The tokens this list has in other roots first (most recently right first); stop at the
        // first that answers for this list.
        let mut failed = false;
        for i in 0..tokens.len() {
            let token = *tokens.get(i)?;
            match host.evaluate(token).map(|b| decode(marker, paths.len(), &b)) {
                Ok(Ok(values)) => {
                    *failures = 0;
                    if i > 0 {
                        tokens.remove(i);
                        tokens.insert(0, token);
                    }
                    return Some(values);
                }
                // Not this list's token in this root: try the next.
                Err(Status::NotFound) | Ok(Err(Miss::Foreign)) => {}
                // This root's expression failed (or another root's one did): no new one.
                Err(_) | Ok(Err(Miss::Malformed)) => failed = true,
            }
        }
        if failed {
            *failures += 1;
            if *failures >= MAX_FAILURES {
                entry.state = State::Off;
            }
            return None;
        }
        // No expression for this list in the caller's root yet.
        if self.creates >= MAX_CREATES_PER_VM {
            return None;
        }
        let text = expression_as(marker, paths, variant)?;
        self.creates += 1;
        let token = match host.create(&text) {
            Ok(t) => t,
            Err(Status::NotFound) => {
                self.missing = true;
                return None;
            }
            Err(_) => {
                entry.state = State::Off;
                return None;
            }
        };
        // The same number may already stand for this list in another root.
        tokens.retain(|t| *t != token);
        tokens.insert(0, token);
        tokens.truncate(MAX_TOKENS_PER_LIST);
        let values = host.evaluate(token).ok().and_then(|b| decode(marker, paths.len(), &b).ok());
        if values.is_none() {
            *failures += 1;
        }
        values
    }

    /// A new entry for `paths` (evicting the least recently used past [`MAX_LISTS`]).
    fn add(&mut self, paths: &[&[&str]], variant: Variant) -> usize {
        if self.entries.len() >= MAX_LISTS {
            if let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i) {
                self.entries.swap_remove(oldest);
            }
        }
        self.next += 1;
        let state = if paths.iter().all(|p| expressible(p)) {
            State::Active { tokens: Vec::new(), failures: 0 }
        } else {
            State::Off
        };
        self.entries.push(Entry {
            paths: paths.iter().map(|p| p.iter().map(|s| Box::<str>::from(*s)).collect()).collect(),
            variant,
            marker: self.salt.wrapping_add(self.next),
            state,
            used: self.clock,
        });
        self.entries.len() - 1
    }
}

thread_local! {
    static BATCHES: RefCell<Option<Batches>> = const { RefCell::new(None) };
    static ANSWERED: Cell<u64> = const { Cell::new(0) };
}

/// [`Batches::read`] with this VM's cache and the real host.
pub fn read(paths: &[&[&str]]) -> Option<Vec<Option<Bytes>>> {
    let values = BATCHES.with(|b| {
        let mut b = b.try_borrow_mut().ok()?;
        b.get_or_insert_with(|| Batches::new(crate::random_seed())).read(&mut Envoy, paths)
    });
    if values.is_some() {
        ANSWERED.with(|a| a.set(a.get().wrapping_add(1)));
    }
    values
}

/// How many [`read`]s an expression answered in this VM (for tests and benchmarks: the others
/// were read one by one).
pub fn answered() -> u64 {
    ANSWERED.with(Cell::get)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// proxy-wasm pairs of a list: the elements as keys, empty values.
    fn list(items: &[&[u8]]) -> Vec<u8> {
        let mut b = (items.len() as u32).to_le_bytes().to_vec();
        for i in items {
            b.extend((i.len() as u32).to_le_bytes());
            b.extend(0u32.to_le_bytes());
        }
        for i in items {
            b.extend(*i);
            b.extend([0, 0]);
        }
        b
    }

    #[test]
    fn attributes_envoy_always_answers_are_read_unguarded() {
        assert_eq!(
            expression(3, &[&["response", "flags"], &["request", "total_size"], &["response", "total_size"]]).unwrap(),
            "[3u, response.flags, request.total_size, response.total_size]"
        );
        // absent on some streams: still guarded
        for p in [&["response", "code"][..], &["request", "duration"], &["request", "size"]] {
            assert!(item(p, Variant::Guarded).unwrap().starts_with("has("), "{p:?}");
        }
        assert!(!always_present(&["response", "flags", "x"]) && !always_present(&["response"]));
    }

    #[test]
    fn the_marker_tests_request_only_when_no_item_selects_from_it_unguarded() {
        let duration: &[&str] = &["request", "duration"];
        let code: &[&str] = &["response", "code"];
        // Guarded, `request.duration` is behind `has()`: the marker keeps its test.
        assert!(expression_as(5, &[code, duration], Variant::Guarded)
            .unwrap()
            .starts_with("[type(request) == map ? 5u : 0u, "));
        // Fast, it is selected bare and fails wherever `request` does not resolve.
        assert!(expression_as(5, &[code, duration], Variant::Fast)
            .unwrap()
            .starts_with("[5u, response.code, request.duration"));
        // Only `request`'s own fields count: a response field read bare does not.
        assert!(expression_as(5, &[&["response", "flags"]], Variant::Fast)
            .unwrap()
            .starts_with("[type(request) == map"));
        assert!(expression_as(5, &[&["request", "size"]], Variant::Fast).unwrap().starts_with("[type(request) == map"));
    }

    #[test]
    fn the_expression_guards_every_map_step_and_leads_with_the_marker() {
        assert_eq!(
            expression(7, &[&["response", "code"], &["request", "headers", "content-type"]]).unwrap(),
            "[type(request) == map ? 7u : 0u, has(response.code) ? response.code : \"\", has(request.headers) && \
             (type(request.headers) == map ? \"content-type\" in request.headers : type(request.headers) != null_type) \
             ? request.headers[\"content-type\"] : \"\"]"
        );
        let deep =
            expression(1, &[&["xds", "upstream_host_metadata", "filter_metadata", "istio", "workload"]]).unwrap();
        assert!(deep.contains("type(xds.upstream_host_metadata.filter_metadata) == map ? has(xds.upstream_host_metadata.filter_metadata.istio)"), "{deep}");
        assert!(deep.ends_with("? xds.upstream_host_metadata.filter_metadata.istio.workload : \"\"]"), "{deep}");
    }

    #[test]
    fn only_attribute_paths_of_plain_segments_are_expressible() {
        assert!(expressible(&["response", "code"]));
        assert!(expressible(&["request", "headers", "x-b3-traceid"]));
        assert!(expressible(&["xds", "node", "metadata", "namespace"]), "reserved word: an index");
        assert!(!expressible(&["response"]), "a whole wrapper");
        assert!(!expressible(&["wasmesh.authn.identity"]), "filter state");
        assert!(!expressible(&["plugin_name", "x"]));
        assert!(!expressible(&["xds", "cluster_metadata", "filter_metadata", "istio", "services", "0", "name"]));
        assert!(!expressible(&["request", "headers", "a\"b"]));
        assert!(!expressible(&["request", "headers", "a b"]));
        assert!(!expressible(&["request", ""]));
        assert!(expression(1, &[&["response", "code"], &["node", "id"]]).is_none());
        assert_eq!(select("m", "namespace"), "m[\"namespace\"]");
    }

    #[test]
    fn an_envoy_filter_state_object_is_read_by_its_key() {
        let p: &[&str] = &["filter_state", "envoy.filters.http.grpc_stats"];
        assert!(expressible(p) && attribute(p));
        assert_eq!(
            item(p, Variant::Fast).unwrap(),
            "\"envoy.filters.http.grpc_stats\" in filter_state ? filter_state[\"envoy.filters.http.grpc_stats\"] : \"\""
        );
        // The `wasm.`-prefixed filter state of `set_property` is not under `filter_state`.
        assert!(!expressible(&["filter_state"]));
    }

    #[test]
    fn decoding_gives_each_value_as_get_property_would() {
        let code = 200u64.to_le_bytes();
        let b = list(&[&9u64.to_le_bytes(), &code, b"", b"spiffe://cluster.local/ns/a/sa/b", &[1]]);
        let v = decode(9, 4, &b).unwrap();
        assert_eq!(
            v,
            vec![Some(code.to_vec()), None, Some(b"spiffe://cluster.local/ns/a/sa/b".to_vec()), Some(vec![1])]
        );
        // A value that is itself pairs (a map) is kept whole.
        let inner = list(&[b"a"]);
        assert_eq!(decode(9, 1, &list(&[&9u64.to_le_bytes(), &inner])).unwrap(), vec![Some(inner.clone())]);
    }

    #[test]
    fn decoding_refuses_another_expressions_answer_and_bad_bytes() {
        let b = list(&[&9u64.to_le_bytes(), b"x"]);
        assert_eq!(decode(8, 1, &b), Err(Miss::Foreign));
        assert_eq!(decode(9, 2, &b), Err(Miss::Malformed));
        assert_eq!(decode(9, 1, &b[..b.len() - 3]), Err(Miss::Malformed));
        assert_eq!(decode(9, 0, &0u32.to_le_bytes()), Err(Miss::Malformed));
        assert_eq!(decode(9, 1, b""), Err(Miss::Malformed));
        assert_eq!(decode(9, 1, &200u64.to_le_bytes()), Err(Miss::Malformed), "a scalar, not a list");
        // a map (non-empty values) is not the list the expression makes
        let mut map = 1u32.to_le_bytes().to_vec();
        map.extend(8u32.to_le_bytes());
        map.extend(1u32.to_le_bytes());
        map.extend(9u64.to_le_bytes());
        map.extend([0, b'v', 0]);
        assert_eq!(decode(9, 0, &map), Err(Miss::Malformed));
    }

    /// A host with one token table per root context, as Envoy keeps them, evaluating the
    /// expressions it holds from fixed attribute values.
    struct FakeHost {
        root: usize,
        tables: Vec<Vec<Option<String>>>,
        attrs: HashMap<&'static str, Vec<u8>>,
        creates: usize,
        evaluations: usize,
        missing: bool,
        fail: bool,
    }

    impl FakeHost {
        fn new(roots: usize) -> FakeHost {
            let mut attrs = HashMap::new();
            attrs.insert("response.code", 200u64.to_le_bytes().to_vec());
            attrs.insert("xds.cluster_name", b"outbound|80||a".to_vec());
            attrs.insert("connection.mtls", vec![1]);
            FakeHost {
                root: 0,
                tables: vec![Vec::new(); roots],
                attrs,
                creates: 0,
                evaluations: 0,
                missing: false,
                fail: false,
            }
        }
    }

    impl ExprHost for FakeHost {
        fn create(&mut self, expr: &str) -> Result<u32, Status> {
            if self.missing {
                return Err(Status::NotFound);
            }
            self.creates += 1;
            let t = &mut self.tables[self.root];
            t.push(Some(expr.to_string()));
            Ok(t.len() as u32 - 1)
        }

        fn evaluate(&mut self, token: u32) -> Result<Bytes, Status> {
            self.evaluations += 1;
            if self.fail {
                return Err(Status::InternalFailure);
            }
            let expr = self.tables[self.root].get(token as usize).cloned().flatten().ok_or(Status::NotFound)?;
            // `[<marker>u, <guard> ? <path> : "", ...]`
            let body = expr.strip_prefix('[').unwrap().strip_suffix(']').unwrap();
            let mut items = body.split(", ");
            let first = items.next().unwrap();
            let marker: u64 = first.split_once("? ").unwrap().1.strip_suffix("u : 0u").unwrap().parse().unwrap();
            let mut values = vec![marker.to_le_bytes().to_vec()];
            for it in items {
                match it.rsplit_once(" ? ") {
                    Some((_, value)) => {
                        let path = value.strip_suffix(" : \"\"").unwrap();
                        values.push(self.attrs.get(path).cloned().unwrap_or_default());
                    }
                    // Unguarded: an absent attribute fails the whole evaluation, as in CEL.
                    None => values.push(self.attrs.get(it).cloned().ok_or(Status::InternalFailure)?),
                }
            }
            let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            Ok(list(&refs))
        }
    }

    const PATHS: [&[&str]; 3] = [&["response", "code"], &["xds", "cluster_name"], &["upstream", "address"]];

    fn expected() -> Vec<Option<Bytes>> {
        vec![Some(200u64.to_le_bytes().to_vec()), Some(b"outbound|80||a".to_vec()), None]
    }

    #[test]
    fn one_expression_per_list_is_created_then_evaluated_once_per_read() {
        let mut host = FakeHost::new(1);
        let mut b = Batches::new(1000);
        for _ in 0..3 {
            assert_eq!(b.read(&mut host, &PATHS), Some(expected()));
        }
        assert_eq!((host.creates, host.evaluations), (1, 3));
        assert_eq!(b.read(&mut host, &PATHS[..2]), Some(expected()[..2].to_vec()));
        assert_eq!(host.creates, 2, "another list, another expression");
    }

    #[test]
    fn each_root_context_gets_its_own_expression_and_a_foreign_token_is_not_believed() {
        let mut host = FakeHost::new(2);
        let mut b = Batches::new(1000);
        // root 0 creates list A (token 0) then list B (token 1)
        assert!(b.read(&mut host, &PATHS).is_some());
        assert!(b.read(&mut host, &PATHS[..2]).is_some());
        // root 1 asks for B first: its token 1 is unknown there, so B is created as root 1's token 0
        host.root = 1;
        assert_eq!(b.read(&mut host, &PATHS[..2]), Some(expected()[..2].to_vec()));
        // root 1 asks for A: A's token 0 is B in root 1: its marker is refused, A is created
        assert_eq!(b.read(&mut host, &PATHS), Some(expected()));
        assert_eq!(host.creates, 4);
        // from now on both roots find their token without creating anything
        for root in [0, 1, 0, 1] {
            host.root = root;
            assert_eq!(b.read(&mut host, &PATHS), Some(expected()));
            assert_eq!(b.read(&mut host, &PATHS[..2]), Some(expected()[..2].to_vec()));
        }
        assert_eq!(host.creates, 4);
    }

    #[test]
    fn a_list_with_a_path_cel_cannot_express_is_read_one_by_one() {
        let mut host = FakeHost::new(1);
        let mut b = Batches::new(0);
        let paths: [&[&str]; 3] = [&["response", "code"], &["xds", "cluster_name"], &["request", "headers", "a b"]];
        assert!(paths.iter().all(|p| attribute(p)));
        assert_eq!(b.read(&mut host, &paths), None);
        assert_eq!(b.read(&mut host, &paths), None);
        assert_eq!((host.creates, host.evaluations), (0, 0));
        assert!(!attribute(&["response"]) && !attribute(&["wasmesh.authn.identity"]) && !attribute(&[]));
    }

    #[test]
    fn a_host_without_the_functions_is_not_asked_again() {
        let mut host = FakeHost::new(1);
        host.missing = true;
        let mut b = Batches::new(0);
        assert_eq!(b.read(&mut host, &PATHS), None);
        assert_eq!(b.read(&mut host, &PATHS[..1]), None);
        assert_eq!(host.evaluations, 0);
    }

    #[test]
    fn failing_evaluations_answer_none_and_turn_the_list_off_after_a_bound() {
        let mut host = FakeHost::new(1);
        let mut b = Batches::new(0);
        let paths = &PATHS[1..]; // no usually-present attribute: the guarded expression only
        assert!(b.read(&mut host, paths).is_some());
        host.fail = true;
        for _ in 0..MAX_FAILURES {
            assert_eq!(b.read(&mut host, paths), None);
        }
        host.fail = false;
        let before = host.evaluations;
        assert_eq!(b.read(&mut host, paths), None, "off for good");
        assert_eq!(host.evaluations, before);
        assert_eq!(host.creates, 1, "a failure is not a reason to create another expression");
    }

    #[test]
    fn a_usually_present_attribute_is_read_unguarded_and_its_absence_answered_by_the_guarded_expression() {
        let mut host = FakeHost::new(1);
        let mut b = Batches::new(0);
        let fast = expression_as(1, &PATHS, Variant::Fast).unwrap();
        assert!(fast.contains(", response.code, "), "{fast}");
        assert!(expression(1, &PATHS).unwrap().contains("has(response.code) ? response.code"));
        // Present: the fast expression alone.
        assert_eq!(b.read(&mut host, &PATHS), Some(expected()));
        assert_eq!((host.creates, host.evaluations), (1, 1));
        // Absent (a stream reset before any response): the guarded one answers the same request.
        let code = host.attrs.remove("response.code").unwrap();
        let mut without = expected();
        without[0] = None;
        assert_eq!(b.read(&mut host, &PATHS), Some(without.clone()));
        assert_eq!((host.creates, host.evaluations), (2, 3));
        host.attrs.insert("response.code", code);
        assert_eq!(b.read(&mut host, &PATHS), Some(expected()));
        assert_eq!((host.creates, host.evaluations), (2, 4), "fast again, nothing created");
        // Absent on every request: the fast expression is turned off, the guarded one answers.
        host.attrs.remove("response.code");
        for _ in 0..MAX_FAILURES {
            assert_eq!(b.read(&mut host, &PATHS), Some(without.clone()));
        }
        let before = host.evaluations;
        assert_eq!(b.read(&mut host, &PATHS), Some(without));
        assert_eq!(host.evaluations, before + 1, "the guarded expression only");
        assert_eq!(host.creates, 2);
    }

    #[test]
    fn the_cache_and_the_creations_are_bounded() {
        let mut host = FakeHost::new(1);
        let mut b = Batches::new(0);
        let names: Vec<String> = (0..(MAX_CREATES_PER_VM as usize + 10)).map(|i| format!("h{i}")).collect();
        for n in &names {
            let p: [&[&str]; 1] = [&["request", "headers", n]];
            let _ = b.read(&mut host, &p);
            assert!(b.entries.len() <= MAX_LISTS);
        }
        assert_eq!(host.creates, MAX_CREATES_PER_VM as usize);
    }
}
