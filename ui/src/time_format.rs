//! Times as people read them: "3 min ago", "1m 05s", "2026-04-14 13:05 UTC".
//!
//! All times are Unix milliseconds (`i64`); the browser supplies "now".

use prost_types::Timestamp;

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Milliseconds since the Unix epoch of a protobuf timestamp; `None` when
/// it is unset (the zero timestamp) or absent.
pub fn timestamp_ms(ts: Option<&Timestamp>) -> Option<i64> {
    let ts = ts?;
    if ts.seconds == 0 && ts.nanos == 0 {
        return None;
    }
    Some(ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos / 1_000_000)))
}

/// How long ago (or how far ahead) `then` is from `now`: "just now",
/// "12 s ago", "5 min ago", "3 h ago", "2 d ago", "in 4 min"; past 30 days
/// the date.
pub fn relative(now: i64, then: i64) -> String {
    let delta = now.saturating_sub(then);
    let ahead = delta < 0;
    let d = delta.saturating_abs();
    if d < 10 * SECOND {
        return "just now".to_string();
    }
    let amount = if d < MINUTE {
        format!("{} s", d / SECOND)
    } else if d < HOUR {
        format!("{} min", d / MINUTE)
    } else if d < DAY {
        format!("{} h", d / HOUR)
    } else if d < 30 * DAY {
        format!("{} d", d / DAY)
    } else {
        return date(then);
    };
    if ahead { format!("in {amount}") } else { format!("{amount} ago") }
}

/// A duration: "350 ms", "4.2 s", "42 s", "3m 05s", "2h 03m", "3d 4h".
/// Negative durations (clock skew) read as zero.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < SECOND {
        format!("{ms} ms")
    } else if ms < 10 * SECOND {
        format!("{}.{} s", ms / SECOND, (ms % SECOND) / 100)
    } else if ms < MINUTE {
        format!("{} s", ms / SECOND)
    } else if ms < HOUR {
        format!("{}m {:02}s", ms / MINUTE, (ms % MINUTE) / SECOND)
    } else if ms < DAY {
        format!("{}h {:02}m", ms / HOUR, (ms % HOUR) / MINUTE)
    } else {
        format!("{}d {}h", ms / DAY, (ms % DAY) / HOUR)
    }
}

/// The length of something that started at `start` and finished at
/// `finish`, or is still going (`now`). `None` when it has not started.
pub fn elapsed(start: Option<i64>, finish: Option<i64>, now: i64) -> Option<i64> {
    let start = start?;
    Some(finish.unwrap_or(now).saturating_sub(start).max(0))
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
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

/// The UTC date of `ms`: "2026-04-14".
pub fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Short UTC date for chart axes: "04-14".
pub fn short_date(ms: i64) -> String {
    let (_, m, d) = civil_from_days(ms.div_euclid(DAY));
    format!("{m:02}-{d:02}")
}

/// The UTC time of day of `ms`: "13:05".
pub fn clock(ms: i64) -> String {
    let in_day = ms.rem_euclid(DAY);
    format!("{:02}:{:02}", in_day / HOUR, (in_day % HOUR) / MINUTE)
}

/// A full UTC timestamp for tooltips: "2026-04-14 13:05:22 UTC".
pub fn full(ms: i64) -> String {
    let s = ms.rem_euclid(MINUTE) / SECOND;
    format!("{} {}:{s:02} UTC", date(ms), clock(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_ms(None), None);
        assert_eq!(timestamp_ms(Some(&Timestamp { seconds: 0, nanos: 0 })), None);
        assert_eq!(timestamp_ms(Some(&Timestamp { seconds: 2, nanos: 5_000_000 })), Some(2005));
        assert_eq!(timestamp_ms(Some(&Timestamp { seconds: i64::MAX, nanos: 0 })), Some(i64::MAX));
    }

    #[test]
    fn relative_times() {
        let now = 1_000_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now, now - 9_999), "just now");
        assert_eq!(relative(now, now - 12_000), "12 s ago");
        assert_eq!(relative(now, now - 5 * MINUTE - 3), "5 min ago");
        assert_eq!(relative(now, now - 3 * HOUR), "3 h ago");
        assert_eq!(relative(now, now - 2 * DAY), "2 d ago");
        assert_eq!(relative(now, now + 4 * MINUTE), "in 4 min");
        assert_eq!(relative(now, now - 40 * DAY), date(now - 40 * DAY));
        // Extremes never panic.
        let _ = relative(i64::MAX, i64::MIN);
        let _ = relative(i64::MIN, i64::MAX);
    }

    #[test]
    fn durations() {
        assert_eq!(duration(-5), "0 ms");
        assert_eq!(duration(350), "350 ms");
        assert_eq!(duration(4_250), "4.2 s");
        assert_eq!(duration(42_000), "42 s");
        assert_eq!(duration(3 * MINUTE + 5 * SECOND), "3m 05s");
        assert_eq!(duration(2 * HOUR + 3 * MINUTE), "2h 03m");
        assert_eq!(duration(3 * DAY + 4 * HOUR), "3d 4h");
        let _ = duration(i64::MAX);
    }

    #[test]
    fn elapsed_times() {
        assert_eq!(elapsed(None, None, 10), None);
        assert_eq!(elapsed(Some(4), None, 10), Some(6));
        assert_eq!(elapsed(Some(4), Some(7), 10), Some(3));
        assert_eq!(elapsed(Some(9), Some(7), 10), Some(0));
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        // 2024-02-29 12:34:56 UTC
        let ms = 1_709_210_096_000;
        assert_eq!(date(ms), "2024-02-29");
        assert_eq!(short_date(ms), "02-29");
        assert_eq!(clock(ms), "12:34");
        assert_eq!(full(ms), "2024-02-29 12:34:56 UTC");
        assert_eq!(date(-DAY), "1969-12-31");
        let _ = full(i64::MAX);
        let _ = full(i64::MIN);
    }
}
