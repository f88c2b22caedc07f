//! The engine's instruments for `/metrics`: what transitions observe as
//! they commit (queue wait, pickup, step and run durations, runs and jobs
//! by result). Recorded by [`super::tx::Tx::commit`] from each changed
//! record's before and after, so every path that changes a state is
//! counted once, and only once it is written. Scrape-time values (queue
//! depth, runners) are read by the HTTP handler from the engine's gauges.
//!
//! The same observations export spans when traces are on (see
//! `viaduct_telemetry`): a run's root span when it ends, and each job
//! attempt's wait in the queue (`queued`) when it is assigned.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use viaduct_proto::v1::Status;

use crate::store::{
    keys::{JobKey, RunId},
    records::{JobRecord, RunRecord, StepRecord, queue_wait_ms},
};

/// A final state, as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success`, `failure`, `cancelled`, `timed_out`, `skipped`, `runner_lost`.
    pub result: &'static str,
}

/// The engine's instruments.
#[derive(Debug)]
pub struct Telemetry {
    queue_wait: Histogram,
    pickup: Histogram,
    step_duration: Histogram,
    run_duration: Histogram,
    runs: Family<ResultLabel, Counter>,
    jobs: Family<ResultLabel, Counter>,
    /// Keys the runs' trace ids (see `viaduct_telemetry::RunTrace`).
    trace_key: [u8; 32],
}

/// What the key of the runs' trace ids is derived for.
pub(crate) const TRACE_CONTEXT: &str = "viaduct 2026-12 run trace ids";

impl Telemetry {
    /// The instruments, with runs' trace ids keyed by `trace_key`.
    pub fn new(trace_key: [u8; 32]) -> Self {
        // 5 ms … ~5.5 min; 10 ms … ~2.9 h; 100 ms … ~3.6 h.
        let short = || Histogram::new(exponential_buckets(0.005, 2.0, 17));
        let wait = || Histogram::new(exponential_buckets(0.01, 2.0, 21));
        let long = || Histogram::new(exponential_buckets(0.1, 2.0, 18));
        Self {
            queue_wait: wait(),
            pickup: short(),
            step_duration: long(),
            run_duration: long(),
            runs: Family::default(),
            jobs: Family::default(),
            trace_key,
        }
    }

    /// The trace of `run`'s ending after `retried` retries.
    pub fn run_trace(&self, run: RunId, retried: u32) -> viaduct_telemetry::RunTrace {
        viaduct_telemetry::RunTrace::of(&self.trace_key, &run.to_string(), retried)
    }
}

fn result(status: Status) -> Option<&'static str> {
    Some(match status {
        Status::Success => "success",
        Status::Failure => "failure",
        Status::Cancelled => "cancelled",
        Status::TimedOut => "timed_out",
        Status::Skipped => "skipped",
        Status::RunnerLost => "runner_lost",
        _ => return None,
    })
}

fn seconds(from_ms: i64, to_ms: i64) -> Option<f64> {
    (from_ms > 0 && to_ms >= from_ms).then(|| (to_ms - from_ms) as f64 / 1000.0)
}

impl Telemetry {
    /// Adds the instruments to `registry` (names under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "job_queue_wait",
            "Time from a job entering the queue to its assignment to a runner.",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        registry.register_with_unit(
            "job_pickup",
            "Time from a job's assignment to its first step running on the runner.",
            Unit::Seconds,
            self.pickup.clone(),
        );
        registry.register_with_unit(
            "step_duration",
            "Time from a step starting to its end.",
            Unit::Seconds,
            self.step_duration.clone(),
        );
        registry.register_with_unit(
            "run_duration",
            "Time from a run being accepted to its end.",
            Unit::Seconds,
            self.run_duration.clone(),
        );
        registry.register("runs_finished", "Runs that ended, by result.", self.runs.clone());
        registry.register("jobs_finished", "Jobs that ended, by result.", self.jobs.clone());
    }

    /// A job changed from `before` to `now`. An assignment is a new
    /// `started_ms` (whatever states a transition went through); its wait
    /// runs from when the job could be dispatched (see
    /// [`queue_wait_ms`]).
    /// `retried` says how often its run was retried (its trace's root).
    pub fn job(&self, key: JobKey, before: Option<&JobRecord>, now: &JobRecord, retried: impl FnOnce() -> u32) {
        let was = before.map(JobRecord::status);
        if now.started_ms > 0
            && before.is_none_or(|b| b.started_ms != now.started_ms)
            && let Some(ms) = queue_wait_ms(now.queued_ms, now.not_before_ms, now.started_ms)
        {
            self.queue_wait.observe(ms as f64 / 1000.0);
            if !viaduct_telemetry::traces_on() {
                return self.job_result(was, now);
            }
            viaduct_telemetry::export_in_run(viaduct_telemetry::Ended {
                name: "queued",
                trace: self.run_trace(key.run, retried()),
                start_ms: now.started_ms.saturating_sub(i64::try_from(ms).unwrap_or(0)),
                end_ms: now.started_ms,
                attributes: vec![
                    ("job", key.to_string()),
                    ("attempt", now.attempt.to_string()),
                    ("name", now.name.clone()),
                    ("runner", now.runner_id.clone()),
                ],
                error: None,
            });
        }
        self.job_result(was, now);
    }

    fn job_result(&self, was: Option<Status>, now: &JobRecord) {
        if let Some(r) = result(now.status())
            && was.and_then(result).is_none()
        {
            self.jobs.get_or_create(&ResultLabel { result: r }).inc();
        }
    }

    /// Step `index` of a job changed from `before` to `now`; `assigned_ms`
    /// is when its job was assigned (for the first step's pickup).
    pub fn step(&self, index: u32, before: Option<&StepRecord>, now: &StepRecord, assigned_ms: impl FnOnce() -> i64) {
        let was = before.map(StepRecord::status);
        // Started: its start time set (even if it also ended in the same
        // batch of reports).
        if index == 1
            && now.started_ms > 0
            && before.is_none_or(|b| b.started_ms == 0)
            && let Some(s) = seconds(assigned_ms(), now.started_ms)
        {
            self.pickup.observe(s);
        }
        if result(now.status()).is_some()
            && was.and_then(result).is_none()
            && let Some(s) = seconds(now.started_ms, now.finished_ms)
        {
            self.step_duration.observe(s);
        }
    }

    /// A run changed from `before` to `now`.
    pub fn run(&self, id: RunId, before: Option<&RunRecord>, now: &RunRecord) {
        let was = before.map(RunRecord::status);
        if let Some(r) = result(now.status())
            && was.and_then(result).is_none()
        {
            self.runs.get_or_create(&ResultLabel { result: r }).inc();
            // Each ending is a root of the run's trace; its error is the
            // result's word (a run's own error text stays in the API).
            let failed = !matches!(now.status(), Status::Success | Status::Skipped);
            viaduct_telemetry::export_root(viaduct_telemetry::Ended {
                name: "run",
                trace: self.run_trace(id, now.retried),
                start_ms: now.created_ms,
                end_ms: now.finished_ms.max(now.created_ms),
                attributes: vec![
                    ("run", id.to_string()),
                    ("pipeline", now.pipeline.clone()),
                    ("status", r.into()),
                    ("retried", now.retried.to_string()),
                ],
                error: failed.then(|| r.to_string()),
            });
            // A run that failed before any job has no duration worth one.
            if now.error.is_empty()
                && let Some(s) = seconds(now.created_ms, now.finished_ms)
            {
                self.run_duration.observe(s);
            }
        }
    }
}
