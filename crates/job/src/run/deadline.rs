//! When a job must be done: `--completion-window` (counted from the job's first start) or an
//! absolute `--deadline` in RFC 3339.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    None,
    /// This long after the job first started.
    Window(Duration),
    /// At this Unix time (seconds, fractional part in nanoseconds).
    At(SystemTime),
}

impl Deadline {
    /// The absolute time for a job that first started at `started_at_ms` (Unix milliseconds).
    pub fn resolve(self, started_at_ms: u64) -> Option<SystemTime> {
        match self {
            Deadline::None => None,
            Deadline::Window(d) => Some(UNIX_EPOCH + Duration::from_millis(started_at_ms) + d),
            Deadline::At(t) => Some(t),
        }
    }
}

/// Parses `2026-11-28T09:30:00Z`, `2026-11-28T09:30:00.5+02:00` and the like.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "{text:?} is not an RFC 3339 time; write e.g. 2026-11-28T18:00:00Z or \
             2026-11-28T18:00:00+01:00"
        )
    };
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        t.get(range)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &t[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<9}", &frac[..digits.min(9)]);
        nanos = padded.parse().map_err(|_| bad())?;
        rest = &frac[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let h: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let m: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| bad())?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(t: SystemTime) -> f64 {
        t.duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_secs_f64()
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(
            unix(parse_rfc3339("1970-01-01T00:00:00Z").expect("ok")),
            0.0
        );
        assert_eq!(
            unix(parse_rfc3339("2026-11-28T09:30:00Z").expect("ok")),
            1_795_858_200.0
        );
        assert_eq!(
            unix(parse_rfc3339("2026-11-28T10:30:00+01:00").expect("ok")),
            1_795_858_200.0
        );
        assert_eq!(
            unix(parse_rfc3339("2026-11-28T08:00:00-01:30").expect("ok")),
            1_795_858_200.0
        );
        assert_eq!(
            unix(parse_rfc3339("2000-02-29T12:00:00.25Z").expect("ok")),
            951_825_600.25
        );
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T09:30:00",
            "2026-13-01T00:00:00Z",
            "tomorrow",
            "2026-11-28T09:30:00.Z",
            "2026-11-28T09:30:00+0100",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_counts_from_the_first_start() {
        let d = Deadline::Window(Duration::from_secs(90));
        assert_eq!(
            d.resolve(1_000_500),
            Some(UNIX_EPOCH + Duration::from_millis(1_090_500))
        );
        assert_eq!(Deadline::None.resolve(1000), None);
    }
}
