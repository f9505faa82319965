//! `x-request-id` and the sampling decision Envoy takes on it (spec §5.3, §5.6).
//!
//! Envoy's HCM generates a UUIDv4 `x-request-id` before any filter runs (`generate_request_id`
//! defaults to true, and Istio leaves it), so the phase normally finds one and keeps it; when a
//! listener turns generation off, the phase generates one ([`uuid_v4`]).
//!
//! Sampling follows Envoy's UUID extension as Istio configures it
//! (`use_request_id_for_trace_sampling: true`): the first 8 hex digits of the id as an integer,
//! modulo 10000, against the percentage in hundredths. The same request id gives the same
//! decision in every proxy, and a trace reason already packed into the id's 14th hex digit
//! (`9` sampled, `a` forced by the server, `b` forced by the client) is kept.

use crate::Ids;

/// A random UUIDv4 in its canonical lower-case form.
pub fn uuid_v4(ids: &mut Ids) -> String {
    let hi = (ids.next_u64() & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (ids.next_u64() & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let h = format!("{hi:016x}{lo:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}

/// Whether a UUID packs a trace reason that means "traced" (14th hex digit `9`, `a` or `b`).
pub fn packed_traced(id: &str) -> bool {
    id.len() == 36 && matches!(id.as_bytes().get(14), Some(b'9' | b'a' | b'b'))
}

/// The id with Envoy's "sampled" trace reason packed (14th hex digit `9`), when it is a UUID
/// that carries no reason yet (`4`); `None`: leave it as it is.
pub fn pack_sampled(id: &str) -> Option<String> {
    if id.len() != 36 || id.as_bytes().get(14) != Some(&b'4') {
        return None;
    }
    let mut out = String::with_capacity(36);
    out.push_str(id.get(..14)?);
    out.push('9');
    out.push_str(id.get(15..)?);
    Some(out)
}

/// Envoy's sampling integer of a request id: its first 8 hex digits; `None` when it has none.
pub fn sampling_integer(id: &str) -> Option<u64> {
    let head = id.get(0..8)?;
    u64::from_str_radix(head, 16).ok()
}

/// Sampling in hundredths of a percent (Envoy's `FractionalPercent` over 10000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent {
    pub per_ten_thousand: u32,
}

impl Percent {
    /// A percentage 0–100 (Istio's `randomSamplingPercentage`, a double); `None` outside.
    pub fn new(percent: f64) -> Option<Percent> {
        if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
            return None;
        }
        Some(Percent { per_ten_thousand: (percent * 100.0).round() as u32 })
    }

    /// Istio's default: 1 %.
    pub const ISTIO_DEFAULT: Percent = Percent { per_ten_thousand: 100 };
}

/// Whether this proxy samples a request whose caller deferred the decision.
pub fn sample(request_id: Option<&str>, percent: Percent, ids: &mut Ids) -> bool {
    match request_id {
        Some(id) if packed_traced(id) => true,
        Some(id) => match sampling_integer(id) {
            Some(n) => (n % 10_000) < u64::from(percent.per_ten_thousand),
            // Not a UUID: Envoy cannot trace it by id; a random draw keeps the rate.
            None => (ids.next_u64() % 10_000) < u64::from(percent.per_ten_thousand),
        },
        None => (ids.next_u64() % 10_000) < u64::from(percent.per_ten_thousand),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4_and_distinct() {
        let mut ids = Ids::new(7);
        let a = uuid_v4(&mut ids);
        let b = uuid_v4(&mut ids);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes().get(14), Some(&b'4'));
        assert!(matches!(a.as_bytes().get(19), Some(b'8' | b'9' | b'a' | b'b')));
        assert!(!packed_traced(&a));
        let packed = pack_sampled(&a).unwrap();
        assert!(packed_traced(&packed));
        assert_eq!(pack_sampled(&packed), None, "a reason already packed is kept");
    }

    #[test]
    fn sampling_is_stable_per_request_id() {
        let mut ids = Ids::new(1);
        // 0x00000063 = 99 < 100 (1 %), 0x00000064 = 100 is not.
        assert!(sample(Some("00000063-0000-4000-8000-000000000000"), Percent::ISTIO_DEFAULT, &mut ids));
        assert!(!sample(Some("00000064-0000-4000-8000-000000000000"), Percent::ISTIO_DEFAULT, &mut ids));
        assert!(sample(Some("00000064-0000-9000-8000-000000000000"), Percent::ISTIO_DEFAULT, &mut ids));
        assert!(sample(Some("ffffffff-0000-4000-8000-000000000000"), Percent::new(100.0).unwrap(), &mut ids));
        assert!(!sample(Some("00000000-0000-4000-8000-000000000000"), Percent::new(0.0).unwrap(), &mut ids));
        assert_eq!(Percent::new(101.0), None);
        assert_eq!(Percent::new(0.01).map(|p| p.per_ten_thousand), Some(1));
    }

    #[test]
    fn a_rate_holds_over_many_ids() {
        let mut ids = Ids::new(99);
        let p = Percent::new(10.0).unwrap();
        let n = (0..10_000)
            .filter(|_| {
                let id = uuid_v4(&mut ids);
                sample(Some(&id), p, &mut ids)
            })
            .count();
        assert!((700..1300).contains(&n), "{n}");
    }
}
