//! Leases: which runner holds which job attempt, until when.
//!
//! The only way to add or drop a lease is [`Leases::insert`] /
//! [`Leases::remove`], which keep a per-runner count in step, so dispatch
//! knows each runner's free slots without scanning every lease.

use std::{collections::HashMap, time::Instant};

use crate::store::keys::JobKey;

/// A job attempt held by a runner.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub attempt: u32,
    pub runner: String,
    pub expires: Instant,
    pub pipeline: String,
    /// Number of steps of the job (validates step indices in reports).
    pub steps: u32,
    /// Bytes of log its steps have stored (the job's log limit).
    pub log_bytes: u64,
}

/// Bytes of log the steps of `job`'s `attempt` have stored (a lease taken
/// over after a restart or from a runner coming back).
pub(crate) fn stored_log(
    store: &crate::store::Store,
    job: JobKey,
    attempt: u32,
    steps: u32,
) -> crate::error::Result<u64> {
    (1..=steps).try_fold(0u64, |sum, i| Ok(sum.saturating_add(store.logs.len(job.step(attempt, i))?)))
}

/// All leases, with per-runner counts.
#[derive(Default)]
pub(crate) struct Leases {
    by_job: HashMap<JobKey, Lease>,
    busy: HashMap<String, u32>,
}

impl Leases {
    /// Grants (or replaces) the lease of `job`; returns the one it replaced.
    pub fn insert(&mut self, job: JobKey, lease: Lease) -> Option<Lease> {
        *self.busy.entry(lease.runner.clone()).or_default() += 1;
        let old = self.by_job.insert(job, lease);
        if let Some(old) = &old {
            self.uncount(&old.runner);
        }
        old
    }

    /// Drops the lease of `job`.
    pub fn remove(&mut self, job: &JobKey) -> Option<Lease> {
        let old = self.by_job.remove(job)?;
        self.uncount(&old.runner);
        Some(old)
    }

    fn uncount(&mut self, runner: &str) {
        if let Some(n) = self.busy.get_mut(runner) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(runner);
            }
        }
    }

    /// The lease of `job`.
    pub fn get(&self, job: &JobKey) -> Option<&Lease> {
        self.by_job.get(job)
    }

    /// The lease of `job`, to extend it.
    pub fn get_mut(&mut self, job: &JobKey) -> Option<&mut Lease> {
        self.by_job.get_mut(job)
    }

    /// Whether `job` is leased.
    pub fn contains(&self, job: &JobKey) -> bool {
        self.by_job.contains_key(job)
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.by_job.len()
    }

    /// Every lease.
    pub fn iter(&self) -> impl Iterator<Item = (&JobKey, &Lease)> {
        self.by_job.iter()
    }

    /// How many jobs `runner` holds.
    pub fn busy(&self, runner: &str) -> u32 {
        self.busy.get(runner).copied().unwrap_or(0)
    }

    /// The (job, attempt)s `runner` holds (a scan: not for hot paths).
    pub fn of<'a>(&'a self, runner: &'a str) -> impl Iterator<Item = (JobKey, u32)> + 'a {
        self.by_job.iter().filter(move |(_, l)| l.runner == runner).map(|(k, l)| (*k, l.attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::RunId;

    fn lease(runner: &str) -> Lease {
        Lease {
            attempt: 1,
            runner: runner.into(),
            expires: Instant::now(),
            pipeline: String::new(),
            steps: 1,
            log_bytes: 0,
        }
    }

    #[test]
    fn busy_counts_follow_inserts_replacements_and_removals() {
        let mut l = Leases::default();
        let (a, b) = (JobKey::new(RunId(1), 1), JobKey::new(RunId(1), 2));
        l.insert(a, lease("r1"));
        l.insert(b, lease("r1"));
        assert_eq!(l.busy("r1"), 2);
        l.insert(b, lease("r2"));
        assert_eq!((l.busy("r1"), l.busy("r2")), (1, 1));
        l.remove(&a);
        l.remove(&a);
        assert_eq!((l.busy("r1"), l.busy("r2"), l.len()), (0, 1, 1));
    }
}
