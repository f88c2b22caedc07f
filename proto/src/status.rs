//! The lower-case words of [`Status`](crate::v1::Status) used by the CLI,
//! JSON output and the UI.

use crate::v1::Status;

/// Conversion between [`Status`] and its lower-case word (`queued`,
/// `running`, `success`, …).
pub trait StatusWord: Sized + Copy {
    /// The lower-case word, e.g. `"timed_out"`.
    fn word(self) -> &'static str;
    /// Parses a lower-case word; `None` for unknown words.
    fn from_word(word: &str) -> Option<Self>;
    /// True for states that never change again.
    fn is_terminal(self) -> bool;
    /// True for terminal states that count as a failure of the run.
    fn is_failure(self) -> bool;
}

const WORDS: &[(Status, &str)] = &[
    (Status::Unspecified, "unspecified"),
    (Status::Pending, "pending"),
    (Status::Queued, "queued"),
    (Status::Running, "running"),
    (Status::Success, "success"),
    (Status::Failure, "failure"),
    (Status::Cancelled, "cancelled"),
    (Status::TimedOut, "timed_out"),
    (Status::Skipped, "skipped"),
    (Status::RunnerLost, "runner_lost"),
];

impl StatusWord for Status {
    fn word(self) -> &'static str {
        WORDS.iter().find(|(s, _)| *s == self).map_or("unspecified", |(_, w)| w)
    }

    fn from_word(word: &str) -> Option<Self> {
        WORDS.iter().find(|(_, w)| *w == word).map(|(s, _)| *s)
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Success
                | Status::Failure
                | Status::Cancelled
                | Status::TimedOut
                | Status::Skipped
                | Status::RunnerLost
        )
    }

    fn is_failure(self) -> bool {
        matches!(self, Status::Failure | Status::TimedOut | Status::RunnerLost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for (s, w) in WORDS {
            assert_eq!(s.word(), *w);
            assert_eq!(Status::from_word(w), Some(*s));
        }
        assert_eq!(Status::from_word("Running"), None);
    }
}
