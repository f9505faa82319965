//! Envoy response flags: the `response.flags` bit set as the short codes of
//! `ResponseFlagUtils::toShortString` (envoy `source/common/stream_info/utility.h`
//! `CORE_RESPONSE_FLAGS`; bit i = `CoreResponseFlag` i).

use std::borrow::Cow;

/// Short codes by bit index.
pub const SHORT_CODES: [&str; 29] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI", "IH",
    "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
];

/// `-` when no flag is set, else the set codes joined with `,` in bit order. Bits Envoy may add
/// later (beyond the table) are ignored.
pub fn short_string(bits: u64) -> Cow<'static, str> {
    if bits == 0 {
        return Cow::Borrowed("-");
    }
    let mut out = String::new();
    for (i, code) in SHORT_CODES.iter().enumerate() {
        if bits & (1u64 << i) != 0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(code);
        }
    }
    if out.is_empty() {
        return Cow::Borrowed("-");
    }
    // The common single-flag cases need no allocation.
    match SHORT_CODES.iter().find(|c| **c == out) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_in_bit_order() {
        assert_eq!(short_string(0), "-");
        assert_eq!(short_string(1 << 5), "UF");
        assert_eq!(short_string(1 << 8), "NR");
        assert_eq!(short_string((1 << 5) | (1 << 15)), "UF,URX");
        assert_eq!(short_string(1 << 12), "UAEX");
        assert_eq!(short_string(1 << 28), "DR");
        assert_eq!(short_string(1 << 40), "-", "unknown future bits are ignored");
        assert!(matches!(short_string(1 << 2), Cow::Borrowed("UT")));
    }
}
