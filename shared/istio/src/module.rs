//! The module variants `make wasm` writes, and the HTTP callbacks a filter's configuration needs.
//!
//! Envoy (proxy-wasm-cpp-host) calls every `proxy_on_*` callback a module exports and skips the
//! ones it does not (about 2.1k instructions of its worker per callback and request, BENCHMARKS.md
//! "Exports a module does not need"). `wasmesh.wasm` serves every filter, so it exports the
//! response-side callbacks stats, access logs and tracing need; `wasmesh-request.wasm` is the same
//! compiled module without them, for an Envoy whose every wasmesh filter runs only on the request
//! side (tools/strip-exports writes it; `filters/wasmesh/stripped-exports-request.txt`).
//!
//! One rule decides both sides: each filter says which of these callbacks its configuration needs
//! (wasmesh-proxy's `Phase::callbacks`, from the cores' functions); the module refuses, at configure
//! time, a configuration needing one it lacks ([`Variant::lacks`]), and wasmeshctl gives an Envoy
//! the request-side module only when no filter it writes needs one ([`Variant::for_needs`]).

/// A set of the response-side HTTP callbacks a module may lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Callbacks(u8);

impl Callbacks {
    /// `proxy_on_response_headers`.
    pub const RESPONSE_HEADERS: Callbacks = Callbacks(1);
    /// `proxy_on_log` (also called for network filters' connections).
    pub const LOG: Callbacks = Callbacks(4);
    pub const NONE: Callbacks = Callbacks(0);
    /// The conservative answer for a filter that does not say. (`proxy_on_response_body` is no
    /// module's any more: stats counts gRPC messages from Envoy's `grpc_stats` filter state, and
    /// tools/strip-exports' audit fails if a phase implements the response body again.)
    pub const ALL: Callbacks = Callbacks(5);

    /// Each callback, its export, and a word for log lines.
    const NAMES: [(Callbacks, &'static str, &'static str); 2] = [
        (Callbacks::RESPONSE_HEADERS, "proxy_on_response_headers", "response headers"),
        (Callbacks::LOG, "proxy_on_log", "log"),
    ];

    pub const fn union(self, other: Callbacks) -> Callbacks {
        Callbacks(self.0 | other.0)
    }

    pub const fn intersection(self, other: Callbacks) -> Callbacks {
        Callbacks(self.0 & other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, other: Callbacks) -> bool {
        self.0 & other.0 == other.0
    }

    /// The exports of these callbacks, in a fixed order.
    pub fn exports(self) -> Vec<&'static str> {
        Self::NAMES.iter().filter(|(c, _, _)| self.contains(*c)).map(|(_, e, _)| *e).collect()
    }

    /// `response headers, log`.
    pub fn describe(self) -> String {
        let words: Vec<&str> = Self::NAMES.iter().filter(|(c, _, _)| self.contains(*c)).map(|(_, _, w)| *w).collect();
        if words.is_empty() {
            "none".into()
        } else {
            words.join(", ")
        }
    }

    /// The callback an export is (`None`: not one of these).
    pub fn of_export(export: &str) -> Option<Callbacks> {
        Self::NAMES.iter().find(|(_, e, _)| *e == export).map(|(c, _, _)| *c)
    }
}

/// The modules `make wasm` writes from the one compiled `filters/wasmesh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `wasmesh.wasm`: every callback any filter needs.
    Full,
    /// `wasmesh-request.wasm`: without the response-side callbacks ([`Variant::lacks`]).
    RequestSide,
}

/// The bytes a module carries to know which variant it is: [`MARKER_PREFIX`], the variant's
/// [`Variant::name`], spaces up to [`MARKER_LEN`]. `filters/wasmesh` holds the full module's in a
/// static; tools/strip-exports patches the request-side module's copy (the one occurrence of the
/// full marker in its data) and the module reads it back at start.
pub const MARKER_PREFIX: &[u8] = b"wasmesh-module-variant:";
pub const MARKER_LEN: usize = 32;

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Full, Variant::RequestSide];

    /// The name in the marker and in `stripped-exports-<name>.txt`.
    pub const fn name(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::RequestSide => "request",
        }
    }

    /// The file `make wasm` writes (and wasmeshctl points Envoy at).
    pub const fn file_name(self) -> &'static str {
        match self {
            Variant::Full => "wasmesh.wasm",
            Variant::RequestSide => "wasmesh-request.wasm",
        }
    }

    /// The callbacks this module does not export.
    pub const fn lacks(self) -> Callbacks {
        match self {
            Variant::Full => Callbacks::NONE,
            Variant::RequestSide => Callbacks::ALL,
        }
    }

    /// The module for filters needing `needs` together: the request-side one when it lacks none
    /// of them (one module per Envoy: two would double V8's compiled code).
    pub fn for_needs(needs: Callbacks) -> Variant {
        if needs.intersection(Variant::RequestSide.lacks()).is_empty() {
            Variant::RequestSide
        } else {
            Variant::Full
        }
    }

    /// The marker bytes of this variant.
    pub const fn marker(self) -> [u8; MARKER_LEN] {
        let mut out = [b' '; MARKER_LEN];
        let mut i = 0;
        while i < MARKER_PREFIX.len() {
            out[i] = MARKER_PREFIX[i];
            i += 1;
        }
        let name = self.name().as_bytes();
        let mut j = 0;
        while j < name.len() {
            out[i + j] = name[j];
            j += 1;
        }
        out
    }

    /// The variant a marker names (`None`: not a marker, or an unknown name).
    pub fn from_marker(bytes: &[u8]) -> Option<Variant> {
        if bytes.len() != MARKER_LEN {
            return None;
        }
        let name = bytes.strip_prefix(MARKER_PREFIX)?;
        let end = name.iter().position(|b| *b == b' ').unwrap_or(name.len());
        let (word, rest) = name.split_at(end);
        if rest.iter().any(|b| *b != b' ') {
            return None;
        }
        match word {
            b"full" => Some(Variant::Full),
            b"request" => Some(Variant::RequestSide),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_read_back_as_their_variant() {
        for v in Variant::ALL {
            assert_eq!(Variant::from_marker(&v.marker()), Some(v));
            assert!(v.file_name().ends_with(".wasm"));
        }
        assert_eq!(&Variant::Full.marker(), b"wasmesh-module-variant:full     ");
        assert_eq!(Variant::from_marker(b"wasmesh-module-variant:full"), None);
        assert_eq!(Variant::from_marker(b"wasmesh-module-variant:other    "), None);
        assert_eq!(Variant::from_marker(b"wasmesh-module-variant:full x   "), None);
        assert_eq!(Variant::from_marker(b"something else entirely........."), None);
    }

    #[test]
    fn the_request_side_module_serves_filters_needing_no_response_callback() {
        assert_eq!(Variant::for_needs(Callbacks::NONE), Variant::RequestSide);
        for c in [Callbacks::RESPONSE_HEADERS, Callbacks::LOG, Callbacks::ALL] {
            assert_eq!(Variant::for_needs(c), Variant::Full, "{c:?}");
        }
        assert!(Variant::Full.lacks().is_empty());
    }

    #[test]
    fn callbacks_name_their_exports() {
        assert_eq!(Callbacks::ALL.exports(), ["proxy_on_response_headers", "proxy_on_log"]);
        assert_eq!(Callbacks::RESPONSE_HEADERS.union(Callbacks::LOG).describe(), "response headers, log");
        assert_eq!(Callbacks::NONE.describe(), "none");
        assert_eq!(Callbacks::of_export("proxy_on_log"), Some(Callbacks::LOG));
        assert_eq!(Callbacks::of_export("proxy_on_done"), None);
    }
}
