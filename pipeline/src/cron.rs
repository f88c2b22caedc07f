//! Validated 5-field cron schedules (UTC), backed by the `croner` crate.

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use croner::time::CronDateTime;

/// A validated 5-field cron expression (`minute hour day-of-month month
/// day-of-week`), evaluated in UTC.
///
/// Uses the same `croner` parser the server uses to compute fire times, so a
/// schedule that validates here always schedules there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CronSchedule {
    source: String,
    cron: Cron,
}

impl CronSchedule {
    /// Parses and validates a 5-field cron expression.
    pub fn parse(expr: &str) -> Result<CronSchedule, String> {
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "invalid cron expression `{expr}`: expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron = parser.parse(expr).map_err(|e| format!("invalid cron expression `{expr}`: {e}"))?;
        Ok(CronSchedule { source: expr.to_owned(), cron })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The underlying `croner` schedule.
    pub fn cron(&self) -> &Cron {
        &self.cron
    }

    /// The first fire time strictly after `after` (pass a UTC time, e.g. a
    /// `chrono::DateTime<Utc>`), or `None` if there is none.
    pub fn next_after<T: CronDateTime>(&self, after: &T) -> Option<T> {
        self.cron.find_next_occurrence(after, false).ok()
    }

    /// The latest time at or before `t` that the schedule fires at.
    pub fn latest_at_or_before<T: CronDateTime>(&self, t: &T) -> Option<T> {
        self.cron.find_previous_occurrence(t, true).ok()
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::CronSchedule;

    #[test]
    fn validates_five_fields() {
        assert!(CronSchedule::parse("0 3 * * *").is_ok());
        assert!(CronSchedule::parse("*/15 * * * mon-fri").is_ok());
        let e = CronSchedule::parse("0 3 * *").unwrap_err();
        assert!(e.contains("expected 5 fields"), "{e}");
        assert!(CronSchedule::parse("0 0 3 * * *").is_err());
        assert!(CronSchedule::parse("@daily").is_err());
        let e = CronSchedule::parse("61 3 * * *").unwrap_err();
        assert!(e.starts_with("invalid cron expression `61 3 * * *`: "), "{e}");
    }
}
