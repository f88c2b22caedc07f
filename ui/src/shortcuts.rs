//! Keyboard shortcuts: key presses in, actions out. Two-key sequences
//! (`g` then a letter) must be typed within [`SEQUENCE_MS`]. While focus is
//! in a text field only `Escape` counts, so typing is never hijacked.

/// How long the second key of a sequence may take.
pub const SEQUENCE_MS: f64 = 1500.0;

/// What a shortcut does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Go to the runs list.
    GoRuns,
    /// Go to the runners.
    GoRunners,
    /// Go to the pipelines.
    GoPipelines,
    /// Go to the repositories.
    GoRepos,
    /// Go to the statistics.
    GoStats,
    /// Focus the page's search or filter field.
    FocusSearch,
    /// Select the next item of a list.
    Next,
    /// Select the previous item of a list.
    Prev,
    /// Open the selected item.
    Open,
    /// Show the shortcut help.
    Help,
    /// Close overlays, leave the field.
    Escape,
}

/// One key press, as the browser reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Key<'a> {
    /// `KeyboardEvent.key`.
    pub key: &'a str,
    /// Ctrl held.
    pub ctrl: bool,
    /// Meta (⌘) held.
    pub meta: bool,
    /// Alt held.
    pub alt: bool,
    /// Focus is in an input, textarea, select or editable element.
    pub in_field: bool,
}

/// The shortcuts for the help overlay: keys, then what they do.
pub const HELP: &[(&str, &str)] = &[
    ("g r", "Runs"),
    ("g n", "Runners"),
    ("g p", "Pipelines"),
    ("g o", "Repositories"),
    ("g s", "Stats"),
    ("/", "Search or filter"),
    ("j / k", "Next / previous item"),
    ("Enter", "Open the selected item"),
    ("?", "This help"),
    ("Esc", "Close, leave a field"),
];

/// Turns key presses into actions, remembering a pending `g`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sequencer {
    g_at: Option<f64>,
}

impl Sequencer {
    /// Feeds one key press at time `now` (ms); the action it completes, if
    /// any.
    pub fn feed(&mut self, k: Key<'_>, now: f64) -> Option<Action> {
        let pending = self.g_at.take().is_some_and(|t| now - t <= SEQUENCE_MS && now >= t);
        if k.ctrl || k.meta || k.alt {
            return None;
        }
        if k.key == "Escape" {
            return Some(Action::Escape);
        }
        if k.in_field {
            return None;
        }
        if pending {
            return match k.key {
                "r" => Some(Action::GoRuns),
                "n" => Some(Action::GoRunners),
                "p" => Some(Action::GoPipelines),
                "o" => Some(Action::GoRepos),
                "s" => Some(Action::GoStats),
                _ => None,
            };
        }
        match k.key {
            "g" => {
                self.g_at = Some(now);
                None
            }
            "/" => Some(Action::FocusSearch),
            "j" | "ArrowDown" => Some(Action::Next),
            "k" | "ArrowUp" => Some(Action::Prev),
            "Enter" => Some(Action::Open),
            "?" => Some(Action::Help),
            _ => None,
        }
    }

    /// True while a `g` waits for its second key (so the page does not act
    /// on the second key itself).
    pub fn is_pending(&self) -> bool {
        self.g_at.is_some()
    }
}

/// Moves a list selection: `current` (none yet) by `delta` within `len`
/// items, staying at the ends.
pub fn step_selection(current: Option<usize>, delta: isize, len: usize) -> Option<usize> {
    if len == 0 {
        return None;
    }
    Some(match current {
        None if delta >= 0 => 0,
        None => len - 1,
        Some(i) => i.min(len - 1).saturating_add_signed(delta).min(len - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Key<'_> {
        Key { key: k, ..Key::default() }
    }

    #[test]
    fn g_sequences() {
        let mut s = Sequencer::default();
        assert_eq!(s.feed(key("g"), 0.0), None);
        assert!(s.is_pending());
        assert_eq!(s.feed(key("r"), 100.0), Some(Action::GoRuns));
        assert!(!s.is_pending());
        for (k, a) in
            [("n", Action::GoRunners), ("p", Action::GoPipelines), ("s", Action::GoStats), ("o", Action::GoRepos)]
        {
            s.feed(key("g"), 0.0);
            assert_eq!(s.feed(key(k), 10.0), Some(a));
        }
        // Too slow: the second key is a plain key.
        s.feed(key("g"), 0.0);
        assert_eq!(s.feed(key("j"), SEQUENCE_MS + 1.0), Some(Action::Next));
        // Unknown second key cancels.
        s.feed(key("g"), 0.0);
        assert_eq!(s.feed(key("x"), 1.0), None);
        assert_eq!(s.feed(key("r"), 2.0), None);
    }

    #[test]
    fn single_keys() {
        let mut s = Sequencer::default();
        assert_eq!(s.feed(key("/"), 0.0), Some(Action::FocusSearch));
        assert_eq!(s.feed(key("j"), 0.0), Some(Action::Next));
        assert_eq!(s.feed(key("k"), 0.0), Some(Action::Prev));
        assert_eq!(s.feed(key("Enter"), 0.0), Some(Action::Open));
        assert_eq!(s.feed(key("?"), 0.0), Some(Action::Help));
        assert_eq!(s.feed(key("Escape"), 0.0), Some(Action::Escape));
        assert_eq!(s.feed(key("x"), 0.0), None);
    }

    #[test]
    fn fields_and_modifiers() {
        let mut s = Sequencer::default();
        let typing = |k| Key { key: k, in_field: true, ..Key::default() };
        assert_eq!(s.feed(typing("j"), 0.0), None);
        assert_eq!(s.feed(typing("g"), 0.0), None);
        assert_eq!(s.feed(typing("r"), 0.0), None);
        assert_eq!(s.feed(typing("Escape"), 0.0), Some(Action::Escape));
        assert_eq!(s.feed(Key { key: "r", ctrl: true, ..Key::default() }, 0.0), None);
        assert_eq!(s.feed(Key { key: "/", meta: true, ..Key::default() }, 0.0), None);
    }

    #[test]
    fn selection_steps() {
        assert_eq!(step_selection(None, 1, 0), None);
        assert_eq!(step_selection(None, 1, 3), Some(0));
        assert_eq!(step_selection(None, -1, 3), Some(2));
        assert_eq!(step_selection(Some(0), -1, 3), Some(0));
        assert_eq!(step_selection(Some(2), 1, 3), Some(2));
        assert_eq!(step_selection(Some(1), 1, 3), Some(2));
        assert_eq!(step_selection(Some(9), -1, 3), Some(1));
    }
}
