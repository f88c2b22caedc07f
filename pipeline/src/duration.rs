//! Durations (`90s`, `10m`, `1h30m`, `500ms`, `7d`) and memory sizes (`512m`, `2g`).

use std::time::Duration;

const DURATION_HELP: &str = "expected a number and a unit (ms, s, m, h, d), e.g. 90s, 10m, 1h";

/// [`parse_duration`], or `forever` (also `0`) as zero: how retention
/// settings say "keep forever".
pub fn parse_duration_or_forever(text: &str) -> Result<Duration, String> {
    match text.trim() {
        "forever" | "0" => Ok(Duration::ZERO),
        _ => parse_duration(text),
    }
}

/// Parses a duration such as `90s`, `10m`, `1h`, `1h30m` or `500ms`.
///
/// Components are an integer followed by `ms`, `s`, `m`, `h` or `d`; several
/// components add up. A bare number is rejected because its unit would be
/// ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bare_number_error(s));
    }
    let invalid = || format!("invalid duration `{text}`: {DURATION_HELP}");
    let mut rest = s;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('d') {
            (86_400_000, 1)
        } else {
            return Err(invalid());
        };
        rest = &rest[len..];
        let millis = number.checked_mul(unit_ms).ok_or_else(|| format!("invalid duration `{text}`: too large"))?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(|| format!("invalid duration `{text}`: too large"))?;
    }
    Ok(total)
}

/// The error for a number written without a unit.
pub(crate) fn bare_number_error(number: &str) -> String {
    format!("invalid duration `{number}`: a duration needs a unit; add a unit: 90s, 10m, 1h")
}

/// Parses a memory size: a plain number of bytes, or a number followed by a
/// binary unit `k`, `m`, `g` or `t` (optionally `b`, `kb`, `ki`, `kib`, …,
/// case-insensitive). `512m` is 512 MiB, as in Docker.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let s = text.trim().to_ascii_lowercase();
    let invalid = || {
        format!(
            "invalid memory size `{text}`: expected a number of bytes or a number with a unit (k, m, g, t), e.g. 512m, 2g"
        )
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let number: u64 = s[..digits].parse().map_err(|_| invalid())?;
    let unit = s[digits..].trim_start();
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(|| format!("invalid memory size `{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("10 minutes").unwrap_err(),
            "invalid duration `10 minutes`: expected a number and a unit (ms, s, m, h, d), e.g. 90s, 10m, 1h"
        );
        assert!(parse_duration("30").unwrap_err().contains("add a unit: 90s, 10m, 1h"));
        for bad in ["", "m", "1x", "1.5h", "-1s", "99999999999999999999h", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2g"), Ok(2 << 30));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("1024"), Ok(1024));
        assert_eq!(parse_memory("1kb"), Ok(1024));
        for bad in ["", "g", "1x", "1.5g", "99999999999999t", "1 gigabyte", "1bb"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }
}
