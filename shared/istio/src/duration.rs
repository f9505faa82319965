//! Durations as Istio YAML writes them: `10s`, `1.5s`, `250ms`, `1h30m`, `24h`.

use std::time::Duration;

/// Parses a Go/Istio duration string. `0` and `0s` are zero. Errors say what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("an empty duration; expected e.g. \"10s\", \"250ms\" or \"1h\"".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("duration {text:?} is negative; expected a positive duration"));
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("duration {text:?} has no number before {rest:?}; expected e.g. \"10s\""));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("duration {text:?}: {:?} is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "duration {text:?} has a number without a unit; expected one of ns, us, ms, s, m, h"
                ))
            }
            other => {
                return Err(format!(
                    "duration {text:?} has unknown unit {other:?}; expected one of ns, us, ms, s, m, h"
                ))
            }
        };
        total_ns += number * scale;
    }
    if !total_ns.is_finite() || total_ns > 315_576_000_000.0 * 1e9 {
        return Err(format!("duration {text:?} is out of range"));
    }
    Ok(Duration::from_nanos(total_ns.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
    }

    #[test]
    fn rejects_bad_durations_with_reason() {
        assert!(parse_duration("10").unwrap_err().contains("without a unit"));
        assert!(parse_duration("10 sec").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1..2s").is_err());
    }
}
