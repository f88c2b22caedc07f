//! The dispatch order of ready jobs.
//!
//! The durable queue is the `queue` tree, keyed `(255 − priority,
//! enqueue sequence)`; this is its in-memory view, ordered for dispatch.
//!
//! # Order and aging
//! A job's rank is `enqueued_at − priority × aging`, smallest first, ties
//! broken by enqueue sequence. So a higher priority always goes first among
//! jobs enqueued at about the same time, jobs of one priority are strictly
//! FIFO, and a waiting job gains one priority level per `aging` interval
//! (default 5 minutes): a priority-0 job that has waited 10 × aging is
//! dispatched before a priority-10 job that just arrived. No job starves, and
//! because the rank never changes while a job waits, nothing is re-sorted.

use std::collections::{BTreeMap, HashMap};

use viaduct_proto::v1::Executor;

use crate::store::keys::JobKey;

/// What dispatch needs to know about a queued job without reading it.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    /// The job.
    pub job: JobKey,
    /// Its enqueue sequence (the durable queue key's second half).
    pub seq: u64,
    /// 0–10.
    pub priority: u32,
    /// Labels a runner must have.
    pub runs_on: Vec<String>,
    /// The executor of its `run:` steps: host or container.
    pub executor: Executor,
    /// It has `uses:` steps: the runner needs the wasi executor too.
    pub plugins: bool,
    /// Not before this time (retry backoff), ms; 0 = now.
    pub not_before_ms: i64,
    /// Pipeline name, for per-pipeline concurrency limits.
    pub pipeline: String,
    /// Of an untrusted run: never given to a protected runner.
    pub untrusted: bool,
}

/// Ready jobs in dispatch order.
#[derive(Default)]
pub struct Queue {
    order: BTreeMap<(i64, u64), JobKey>,
    jobs: HashMap<JobKey, ((i64, u64), QueuedJob)>,
}

/// A queued job with its place in the order.
pub type Ranked = ((i64, u64), QueuedJob);

impl Queue {
    /// Adds a job enqueued at `queued_ms`; returns what it replaced.
    pub fn push(&mut self, q: QueuedJob, queued_ms: i64, aging_ms: i64) -> Option<Ranked> {
        let rank = (queued_ms - i64::from(q.priority) * aging_ms, q.seq);
        let old = self.take(q.job);
        self.put((rank, q));
        old
    }

    /// Takes a job out; returns it with its place if it was queued.
    pub fn take(&mut self, job: JobKey) -> Option<Ranked> {
        let (rank, q) = self.jobs.remove(&job)?;
        self.order.remove(&rank);
        Some((rank, q))
    }

    /// Puts a job back in its place (undoing a [`Queue::take`]).
    pub fn put(&mut self, (rank, q): Ranked) {
        self.order.insert(rank, q.job);
        self.jobs.insert(q.job, (rank, q));
    }

    /// A queued job.
    pub fn get(&self, job: JobKey) -> Option<&QueuedJob> {
        self.jobs.get(&job).map(|(_, q)| q)
    }

    /// Queued jobs in dispatch order.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedJob> {
        self.order.values().filter_map(|k| self.jobs.get(k).map(|(_, q)| q))
    }

    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// The earliest `not_before` in the future, if any.
    pub fn next_not_before(&self, now_ms: i64) -> Option<i64> {
        self.jobs.values().map(|(_, q)| q.not_before_ms).filter(|t| *t > now_ms).min()
    }
}

/// The durable queue key: `(255 − priority, sequence)`.
pub fn durable_key(priority: u32, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = 255 - u8::try_from(priority.min(255)).unwrap_or(255);
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::RunId;

    fn q(run: u64, priority: u32, seq: u64) -> QueuedJob {
        QueuedJob {
            job: JobKey::new(RunId(run), 1),
            seq,
            priority,
            runs_on: vec![],
            executor: Executor::Host,
            plugins: false,
            not_before_ms: 0,
            pipeline: String::new(),
            untrusted: false,
        }
    }

    #[test]
    fn priority_first_then_fifo_and_aging_lifts_old_jobs() {
        let aging = 1000;
        let mut queue = Queue::default();
        queue.push(q(1, 5, 1), 0, aging);
        queue.push(q(2, 9, 2), 10, aging);
        queue.push(q(3, 5, 3), 20, aging);
        let order: Vec<u64> = queue.iter().map(|j| j.job.run.0).collect();
        assert_eq!(order, [2, 1, 3]);
        // A priority-0 job that waited 10 aging intervals ties with a fresh
        // priority-10 job and, being older, goes first.
        let mut queue = Queue::default();
        queue.push(q(1, 0, 1), 0, aging);
        queue.push(q(2, 10, 2), 10 * aging, aging);
        assert_eq!(queue.iter().next().unwrap().job.run.0, 1);
        assert!(queue.take(JobKey::new(RunId(1), 1)).is_some());
        assert_eq!(queue.len(), 1);
    }
}
