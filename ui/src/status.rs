//! How a run, job or step state looks: its word (for `data-status` and CSS
//! classes), a label, and an icon drawn as inline SVG.

use viaduct_proto::{StatusWord, v1::Status};

/// The state of something from its wire value (unknown values read as
/// unspecified rather than failing).
pub fn from_i32(v: i32) -> Status {
    Status::try_from(v).unwrap_or(Status::Unspecified)
}

/// The lower-case word, e.g. `timed_out` (the `data-status` attribute).
pub fn word(s: Status) -> &'static str {
    s.word()
}

/// What a person reads: "Succeeded", "Timed out", …
pub fn label(s: Status) -> &'static str {
    match s {
        Status::Unspecified => "Unknown",
        Status::Pending => "Pending",
        Status::Queued => "Queued",
        Status::Running => "Running",
        Status::Success => "Succeeded",
        Status::Failure => "Failed",
        Status::Cancelled => "Cancelled",
        Status::TimedOut => "Timed out",
        Status::Skipped => "Skipped",
        Status::RunnerLost => "Runner lost",
    }
}

/// The CSS class giving its colour: `st-success`, `st-failure`, …
pub fn class(s: Status) -> String {
    format!("st st-{}", s.word())
}

/// True while it can still change (pending, queued, running).
pub fn is_active(s: Status) -> bool {
    matches!(s, Status::Pending | Status::Queued | Status::Running)
}

/// True for terminal states.
pub fn is_terminal(s: Status) -> bool {
    s.is_terminal()
}

/// True for the states a retry re-runs (failure, cancelled, timed out,
/// runner lost).
pub fn is_retryable(s: Status) -> bool {
    matches!(s, Status::Failure | Status::Cancelled | Status::TimedOut | Status::RunnerLost)
}

/// The icon of a state: SVG path data in a 16×16 box, drawn with
/// `stroke="currentColor"` (so the icon takes the state's colour). The
/// shapes differ, not only the colours, so states read without colour too.
pub fn icon_path(s: Status) -> &'static str {
    match s {
        // A check in a circle.
        Status::Success => "M8 1.5a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M5 8.2l2 2l4-4.4",
        // A cross in a circle.
        Status::Failure => "M8 1.5a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M5.6 5.6l4.8 4.8M10.4 5.6l-4.8 4.8",
        // A three-quarter ring (spun by CSS).
        Status::Running => "M8 1.5a6.5 6.5 0 1 1-6.5 6.5",
        // A clock.
        Status::Queued => "M8 1.5a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M8 4.5v3.8l2.4 1.4",
        // A dotted circle.
        Status::Pending | Status::Unspecified => {
            "M8 1.5v0M12.6 3.4v0M14.5 8v0M12.6 12.6v0M8 14.5v0M3.4 12.6v0M1.5 8v0M3.4 3.4v0"
        }
        // A circle struck through.
        Status::Cancelled => "M8 1.5a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M3.4 12.6l9.2-9.2",
        // An hourglass.
        Status::TimedOut => "M4 1.5h8M4 14.5h8M5 1.5c0 4 6 4.5 6 6.5s-6 2.5-6 6.5M11 1.5c0 4-6 4.5-6 6.5s6 2.5 6 6.5",
        // A circle with a dash: not run.
        Status::Skipped => "M8 1.5a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13M5 8h6",
        // A warning triangle.
        Status::RunnerLost => "M8 1.8l6.5 12H1.5zM8 6.2v3.6M8 11.8v.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 10] = [
        Status::Unspecified,
        Status::Pending,
        Status::Queued,
        Status::Running,
        Status::Success,
        Status::Failure,
        Status::Cancelled,
        Status::TimedOut,
        Status::Skipped,
        Status::RunnerLost,
    ];

    #[test]
    fn every_state_has_a_word_label_and_icon() {
        for s in ALL {
            assert!(!word(s).is_empty());
            assert!(!label(s).is_empty());
            assert!(icon_path(s).starts_with('M'));
            assert_eq!(class(s), format!("st st-{}", word(s)));
        }
        assert_eq!(word(Status::TimedOut), "timed_out");
        assert_eq!(word(Status::Success), "success");
    }

    #[test]
    fn unknown_wire_values_are_unspecified() {
        assert_eq!(from_i32(3), Status::Running);
        assert_eq!(from_i32(99), Status::Unspecified);
        assert_eq!(from_i32(-1), Status::Unspecified);
    }

    #[test]
    fn classes_of_states() {
        assert!(is_active(Status::Queued) && is_active(Status::Running) && is_active(Status::Pending));
        assert!(!is_active(Status::Success));
        assert!(is_retryable(Status::RunnerLost) && !is_retryable(Status::Skipped));
        assert!(is_terminal(Status::Skipped) && !is_terminal(Status::Running));
    }
}
