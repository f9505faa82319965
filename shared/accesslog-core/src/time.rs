//! `%START_TIME(<format>)%`: Envoy formats the request's start time with absl's `FormatTime` in
//! UTC, plus its own `%s` (epoch seconds) and `%f`/`%1f`…`%9f` (fractional seconds, 9 digits for
//! `%f`); the default is `%Y-%m-%dT%H:%M:%E3SZ` (envoy `source/common/common/utility.cc`
//! `DateFormatter`, `getDefaultDateFormat`). The format is compiled once; a specifier this does
//! not know is a configuration error naming it.

/// Envoy's default `START_TIME` format.
pub const DEFAULT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Year,
    Year2,
    Month,
    Day,
    DaySpace,
    YearDay,
    Hour,
    Minute,
    Second,
    /// Seconds with `n` fractional digits (`%E<n>S`).
    SecondFrac(u8),
    /// Fractional seconds, `n` digits (`%f` = 9).
    Frac(u8),
    Epoch,
    WeekdayShort,
    MonthShort,
}

/// A compiled `START_TIME` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat {
    pieces: Vec<Piece>,
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

impl TimeFormat {
    pub fn parse(format: &str) -> Result<TimeFormat, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = format.chars().peekable();
        let push = |pieces: &mut Vec<Piece>, lit: &mut String, p: Vec<Piece>| {
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(lit)));
            }
            pieces.extend(p);
        };
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                return Err(format!("START_TIME format {format:?} ends with a lone '%'"));
            };
            let lit_p = |s: &str| Piece::Lit(s.to_string());
            let p = match spec {
                '%' => {
                    lit.push('%');
                    continue;
                }
                'Y' => vec![Piece::Year],
                'y' => vec![Piece::Year2],
                'm' => vec![Piece::Month],
                'd' => vec![Piece::Day],
                'e' => vec![Piece::DaySpace],
                'j' => vec![Piece::YearDay],
                'H' => vec![Piece::Hour],
                'M' => vec![Piece::Minute],
                'S' => vec![Piece::Second],
                's' => vec![Piece::Epoch],
                'f' => vec![Piece::Frac(9)],
                'a' => vec![Piece::WeekdayShort],
                'b' | 'h' => vec![Piece::MonthShort],
                'z' => vec![lit_p("+0000")],
                'Z' => vec![lit_p("UTC")],
                'T' => vec![Piece::Hour, lit_p(":"), Piece::Minute, lit_p(":"), Piece::Second],
                'F' => vec![Piece::Year, lit_p("-"), Piece::Month, lit_p("-"), Piece::Day],
                'D' => vec![Piece::Month, lit_p("/"), Piece::Day, lit_p("/"), Piece::Year2],
                'R' => vec![Piece::Hour, lit_p(":"), Piece::Minute],
                'n' => vec![lit_p("\n")],
                't' => vec![lit_p("\t")],
                d @ '1'..='9' => {
                    if chars.next() != Some('f') {
                        return Err(format!("START_TIME format {format:?}: %{d} must be followed by f (%{d}f)"));
                    }
                    vec![Piece::Frac(d as u8 - b'0')]
                }
                'E' => {
                    let n = chars.next();
                    let s = chars.next();
                    match (n, s) {
                        (Some(n @ '0'..='9'), Some('S')) => vec![Piece::SecondFrac(n as u8 - b'0')],
                        _ => {
                            return Err(format!(
                                "START_TIME format {format:?}: only %E<digit>S of absl's %E specifiers is supported"
                            ))
                        }
                    }
                }
                other => {
                    return Err(format!("START_TIME format {format:?}: unsupported specifier %{other}"));
                }
            };
            push(&mut pieces, &mut lit, p);
        }
        push(&mut pieces, &mut lit, Vec::new());
        Ok(TimeFormat { pieces })
    }

    /// Writes `unix_nanos` (nanoseconds since the epoch, UTC).
    pub fn write(&self, unix_nanos: i64, out: &mut Vec<u8>) {
        let secs = unix_nanos.div_euclid(1_000_000_000);
        let nanos = unix_nanos.rem_euclid(1_000_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (sod / 3600, (sod % 3600) / 60, sod % 60);
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Year => push_num(out, y, 4),
                Piece::Year2 => push_num(out, y.rem_euclid(100), 2),
                Piece::Month => push_num(out, i64::from(m), 2),
                Piece::Day => push_num(out, i64::from(d), 2),
                Piece::DaySpace => {
                    if d < 10 {
                        out.push(b' ');
                    }
                    push_num(out, i64::from(d), 1);
                }
                Piece::YearDay => push_num(out, days - days_from_civil(y, 1, 1) + 1, 3),
                Piece::Hour => push_num(out, hh, 2),
                Piece::Minute => push_num(out, mm, 2),
                Piece::Second => push_num(out, ss, 2),
                Piece::SecondFrac(n) => {
                    push_num(out, ss, 2);
                    if *n > 0 {
                        out.push(b'.');
                        push_frac(out, nanos, *n);
                    }
                }
                Piece::Frac(n) => push_frac(out, nanos, *n),
                Piece::Epoch => push_num(out, secs, 1),
                Piece::WeekdayShort => {
                    let w = WEEKDAYS.get(days.rem_euclid(7) as usize).copied().unwrap_or("");
                    out.extend_from_slice(w.as_bytes());
                }
                Piece::MonthShort => {
                    let name = MONTHS.get((m as usize).wrapping_sub(1)).copied().unwrap_or("");
                    out.extend_from_slice(name.as_bytes());
                }
            }
        }
    }
}

/// `v` in decimal, zero-padded to `width` (a negative number gets its sign before the digits,
/// as `to_string` then padding gave). Written in place: no allocation per field.
pub(crate) fn push_num(out: &mut Vec<u8>, v: i64, width: usize) {
    let mut digits = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut len = 0;
    loop {
        if let Some(d) = digits.get_mut(len) {
            *d = b'0' + (n % 10) as u8;
        }
        len += 1;
        n /= 10;
        if n == 0 || len >= digits.len() {
            break;
        }
    }
    let shown = len + usize::from(v < 0);
    for _ in shown..width {
        out.push(b'0');
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend(digits.iter().take(len).rev());
}

/// The first `n` digits of the nanoseconds (truncated, as Envoy does).
fn push_frac(out: &mut Vec<u8>, nanos: u32, n: u8) {
    let mut div = 100_000_000;
    for _ in 0..n.min(9) {
        out.push(b'0' + ((nanos / div) % 10) as u8);
        div /= 10;
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fmt(f: &str, nanos: i64) -> String {
        let mut out = Vec::new();
        TimeFormat::parse(f).unwrap().write(nanos, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn envoy_default_and_fractions() {
        // 2026-12-06T22:41:05.123456789Z
        let t = 1_796_596_865_123_456_789;
        assert_eq!(fmt(DEFAULT, t), "2026-12-06T22:41:05.123Z");
        assert_eq!(fmt("%s.%3f", t), "1796596865.123");
        assert_eq!(fmt("%f", t), "123456789");
        assert_eq!(fmt("%E6S|%1f|%9f", t), "05.123456|1|123456789");
        assert_eq!(fmt("%a %b %e %T %D %j %z %Z %%", t), "Sun Dec  6 22:41:05 12/06/26 340 +0000 UTC %");
        assert_eq!(fmt(DEFAULT, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt("%F", 951_782_400_000_000_000), "2000-02-29");
    }

    #[test]
    fn unknown_specifiers_are_refused_by_name() {
        for (f, want) in [("%Q", "%Q"), ("%5", "%5f"), ("%E*S", "%E<digit>S"), ("abc%", "lone")] {
            let e = TimeFormat::parse(f).unwrap_err();
            assert!(e.contains(want), "{f}: {e}");
        }
    }
}
