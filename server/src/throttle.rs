//! Abuse limits: failed authentications per client address, and API calls
//! per token (GCRA rate limiters from `governor`).
//!
//! A client whose failed authentications exceed the quota is refused —
//! before its token is even looked at, so it learns nothing more — until
//! the quota allows another attempt; the refusal says when
//! (`RESOURCE_EXHAUSTED` with a retry delay). Calls per token are limited
//! only when configured (`--token-rate-limit`).

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::error::{Error, Result};

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failed authentications a client address may make per minute
    /// (0: unlimited).
    pub auth_failures_per_minute: u32,
    /// API calls a token may make per second, bursts up to ten times that
    /// (0: unlimited).
    pub calls_per_second: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self { auth_failures_per_minute: 30, calls_per_second: 0 }
    }
}

/// Addresses being refused, at most this many remembered (the oldest
/// refusals are forgotten first when more arrive).
const MAX_BLOCKED: usize = 100_000;

/// The rate limiters.
pub struct Throttle {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    calls: Option<DefaultKeyedRateLimiter<[u8; 32]>>,
    /// Until when an address is refused.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
}

impl Throttle {
    /// Limiters for `limits`.
    pub fn new(limits: Limits) -> Self {
        let failures = NonZeroU32::new(limits.auth_failures_per_minute)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n).allow_burst(n)));
        let calls = NonZeroU32::new(limits.calls_per_second).map(|n| {
            let burst = n.saturating_mul(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN));
            RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
        });
        Self { failures, calls, blocked: Mutex::default(), clock: DefaultClock::default() }
    }

    /// Refuses a client that made too many failed authentications.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<()> {
        let Some(ip) = client else { return Ok(()) };
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        match blocked.get(&ip) {
            Some(until) if *until > now => Err(too_many_failures(ip, *until - now)),
            Some(_) => {
                blocked.remove(&ip);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication of `client`; the error to answer with
    /// once it is over the quota.
    pub fn failed(&self, client: Option<IpAddr>) -> Option<Error> {
        let (Some(ip), Some(limiter)) = (client, &self.failures) else { return None };
        let not_until = limiter.check_key(&ip).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        if blocked.len() >= MAX_BLOCKED {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_BLOCKED {
                blocked.clear();
            }
            limiter.retain_recent();
        }
        blocked.insert(ip, Instant::now() + wait);
        tracing::warn!(client = %ip, retry_after = ?wait, "too many failed authentications: refusing the client");
        Some(too_many_failures(ip, wait))
    }

    /// Counts a call of the token with `hash`.
    pub fn call(&self, hash: &[u8; 32], name: &str) -> Result<()> {
        let Some(limiter) = &self.calls else { return Ok(()) };
        match limiter.check_key(hash) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(Error::RateLimited {
                message: format!("token `{name}` is over its rate limit"),
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
        }
    }
}

fn too_many_failures(ip: IpAddr, wait: Duration) -> Error {
    Error::RateLimited { message: format!("too many failed authentications from {ip}"), retry_after: wait }
}
