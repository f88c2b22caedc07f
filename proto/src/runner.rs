//! What a runner does with new jobs, in one word (CLI and web UI alike).

use crate::v1::Runner;

impl Runner {
    /// `offline`, `draining` (finishes its jobs, takes none), `paused` (it
    /// takes none by itself for now: see `paused`) or `online`.
    pub fn state_word(&self) -> &'static str {
        match (self.connected, self.draining, self.paused.is_empty()) {
            (false, _, _) => "offline",
            (true, true, _) => "draining",
            (true, false, false) => "paused",
            (true, false, true) => "online",
        }
    }
}
