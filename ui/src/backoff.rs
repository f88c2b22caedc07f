//! Reconnect delays for the live streams: exponential from
//! [`Backoff::FIRST_MS`] up to [`Backoff::MAX_MS`], with jitter so that many
//! tabs do not reconnect in step after a server restart.

/// Delays between reconnect attempts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// First delay.
    pub const FIRST_MS: u32 = 500;
    /// Longest delay.
    pub const MAX_MS: u32 = 10_000;

    /// The delay before the next attempt; `jitter` in 0–1 scales it into
    /// 75–100 %.
    pub fn next_delay(&mut self, jitter: f64) -> u32 {
        let base = Self::FIRST_MS.saturating_mul(1u32 << self.failures.min(16)).min(Self::MAX_MS);
        self.failures = self.failures.saturating_add(1);
        let j = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        (f64::from(base) * (0.75 + 0.25 * j)) as u32
    }

    /// A connection worked: start over.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failed attempts since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let mut b = Backoff::default();
        let d: Vec<u32> = (0..8).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert_eq!(b.next_delay(0.0), 375);
        for _ in 0..100 {
            b.next_delay(f64::NAN);
        }
        assert!(b.next_delay(2.0) <= Backoff::MAX_MS);
    }
}
