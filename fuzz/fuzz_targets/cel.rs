//! The CEL subset of Telemetry tag overrides (stats-core `expr::parse`, `format_value`).
//! Properties: nothing panics; parsing is deterministic; a refused expression says why; any
//! attribute value the host returns (any bytes) prints or reads as absent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmesh_stats::expr::{format_value, parse, AttrType};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse(&text) {
        Ok(e) => {
            let again = parse(&text).expect("parsing is deterministic");
            assert_eq!(again, e);
        }
        Err(msg) => assert!(!msg.is_empty()),
    }
    for ty in [AttrType::String, AttrType::Int, AttrType::Uint, AttrType::Bool] {
        let _ = format_value(ty, Some(data));
    }
});
