//! Time as the engine sees it: wall-clock milliseconds (what records say,
//! retry backoff) and a monotonic instant (lease deadlines). The engine
//! never reads the system clock itself, so tests can move time by hand
//! ([`ManualClock`]) and check backoff, leases and aging deterministically.

use std::{fmt::Debug, time::Instant};

/// A source of time.
pub trait Clock: Debug + Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// A monotonic instant.
    fn instant(&self) -> Instant;
}

/// The system's clocks.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests).
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock {
    start: (i64, Instant),
    moved: std::sync::Mutex<std::time::Duration>,
}

#[cfg(test)]
impl Default for ManualClock {
    /// A clock standing at the system's present time.
    fn default() -> Self {
        Self {
            start: (crate::store::now_ms(), Instant::now()),
            moved: std::sync::Mutex::new(std::time::Duration::ZERO),
        }
    }
}

#[cfg(test)]
impl ManualClock {
    /// Moves time forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        *self.moved.lock().unwrap_or_else(|p| p.into_inner()) += d;
    }

    fn moved(&self) -> std::time::Duration {
        *self.moved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.start.0 + i64::try_from(self.moved().as_millis()).unwrap_or(i64::MAX)
    }

    fn instant(&self) -> Instant {
        self.start.1 + self.moved()
    }
}
