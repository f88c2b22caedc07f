//! How jobs and runs move between states.
//!
//! ```text
//! job:  pending ──needs done, `if` true──▶ queued ──assigned──▶ running ──▶ success | failure | timed_out
//!          │                                  ▲                   │          cancelled | runner_lost
//!          └──`if` false / needs failed──▶ skipped               │
//!                                             └── retry (attempt+1, after backoff) ◀── failure, timed_out,
//!                                                                                      lease lapsed
//! run:  queued ──first job assigned──▶ running ──all jobs final──▶ success | failure | timed_out | cancelled
//! ```
//! A job's `if` is evaluated when all its needs are final (see
//! `condition`). Retries never follow a cancel.

use viaduct_proto::{
    StatusWord,
    v1::{JobRef, JobSignal, ServerMessage, Status, server_message::Msg},
};

use super::{condition, ms, queue::durable_key, queued, tx::Tx};
use crate::{
    convert,
    error::{Error, Result},
    store::{
        T,
        keys::{JobKey, RunId, StepKey},
        records::{AttemptRecord, QueueRecord},
    },
};

const MAX_BACKOFF_MS: i64 = 5 * 60 * 1000;

impl Tx<'_> {
    /// A pending job whose needs are all final: queue it, or skip it when
    /// its condition says so.
    pub(crate) fn make_ready(&mut self, key: JobKey) -> Result<()> {
        let job = self.job_ref(key)?.clone();
        if job.status() != Status::Pending {
            return Ok(());
        }
        let run = self.run(key.run)?.clone();
        if run.cancel_requested {
            return self.finish_job(key, Status::Cancelled, "the run was cancelled");
        }
        let mut needs = Vec::with_capacity(job.needs.len());
        for n in &job.needs {
            let dep = self.job(JobKey::new(key.run, *n))?;
            needs.push((dep.key.clone(), dep.status()));
        }
        match condition::job_should_run(&job, &run, &needs) {
            Ok(true) => {
                // A secret its run may not have (with the scopes of now)…:
                // it fails where it would have started, naming the rule.
                let source = run.source.clone().unwrap_or_default();
                let facts = crate::trust::RunFacts {
                    source: &source,
                    pipeline: &run.pipeline,
                    trust: crate::trust::effective(run.trust),
                    environment: None,
                };
                let scope_of = |name: &str| crate::secrets::SecretBox::scope(self.store(), name);
                match crate::trust::job_refusal(&job, &facts, scope_of)? {
                    Some(why) => self.finish_job(key, Status::Failure, &why),
                    // A job that deploys waits for its environment's gates.
                    None if job.environment.is_some() => self.open_deployment(key),
                    None => self.enqueue(key, 0),
                }
            }
            Ok(false) => {
                let blocked = needs.iter().any(|(_, s)| *s != Status::Success);
                self.job(key)?.blocked = blocked;
                let why = if job.condition.is_empty() {
                    let failed: Vec<&str> =
                        needs.iter().filter(|(_, s)| *s != Status::Success).map(|(k, _)| k.as_str()).collect();
                    format!("skipped: needed job(s) did not succeed: {}", failed.join(", "))
                } else {
                    format!("skipped: `if: {}` was false", job.condition)
                };
                self.finish_job(key, Status::Skipped, &why)
            }
            Err(e) => self.finish_job(key, Status::Failure, &format!("cannot evaluate `if: {}`: {e}", job.condition)),
        }
    }

    /// Puts a job in the queue, dispatchable from `not_before_ms` (0 = now).
    pub(crate) fn enqueue(&mut self, key: JobKey, not_before_ms: i64) -> Result<()> {
        let now = self.sh.now_ms();
        let seq = self.st.next_queue_seq;
        self.st.next_queue_seq += 1;
        let pipeline = self.run(key.run)?.pipeline.clone();
        let job = self.job(key)?;
        job.status = Status::Queued as i32;
        job.queued_ms = now;
        job.not_before_ms = not_before_ms;
        let q = queued(key, seq, job, pipeline);
        let durable = durable_key(q.priority, seq);
        self.writes().put(T::Queue, durable, &QueueRecord { job: key.key().to_vec(), queued_ms: now });
        let aging = ms(self.sh.cfg.priority_aging);
        self.queue_push(q, now, aging);
        if not_before_ms > now {
            // The timer must wake up when the backoff ends.
            self.sh.signals.timer.notify_one();
        }
        Ok(())
    }

    /// Takes a job out of the queue (memory and disk) if it is there.
    pub(crate) fn dequeue(&mut self, key: JobKey) {
        if let Some(q) = self.queue_take(key) {
            self.writes().delete(T::Queue, durable_key(q.priority, q.seq));
        }
    }

    /// Ends a job for good with `status`, closes its unfinished steps and
    /// moves the run on (dependants, fail-fast, roll-up).
    pub(crate) fn finish_job(&mut self, key: JobKey, status: Status, message: &str) -> Result<()> {
        if self.job_ref(key)?.status().is_terminal() {
            return Ok(());
        }
        self.dequeue(key);
        self.set_lease(key, None);
        let attempt = self.job_ref(key)?.attempt;
        let step_status = if status == Status::Skipped { Status::Skipped } else { status };
        self.close_steps(key, attempt, step_status, message)?;
        let now = self.sh.now_ms();
        let job = self.job(key)?;
        job.status = status as i32;
        job.finished_ms = now;
        job.message = message.to_string();
        tracing::info!(job = %key, status = status.word(), message, "job finished");
        self.end_deployment(key)?;
        self.release_bound_runners(key, message)?;
        self.after_final(key)
    }

    /// A job attempt ended with `status` on its runner: retry it if it
    /// failed and has attempts left, else finish it.
    pub(crate) fn end_attempt(&mut self, key: JobKey, status: Status, message: &str) -> Result<()> {
        let job = self.job(key)?;
        let retryable = matches!(status, Status::Failure | Status::TimedOut | Status::RunnerLost);
        if retryable && !job.cancel_requested && job.attempt < job.max_attempts {
            self.retry(key, status, message)
        } else if job.cancel_requested && status != Status::Success {
            // Keep the reason given when the cancel was asked for.
            let reason = if job.message.is_empty() { message.to_string() } else { job.message.clone() };
            self.finish_job(key, Status::Cancelled, &reason)
        } else {
            self.finish_job(key, status, message)
        }
    }

    /// A runner came back — as the same process (`instance`) — without an
    /// attempt it was given and of which no step was ever reported started:
    /// the assignment never reached it (lost with a broken stream, or with
    /// a server — a leading replica — that died after committing it). The
    /// attempt goes back to the queue as it was, without counting as a try.
    /// A runner that restarted may have started it before it died, so its
    /// attempt is lost instead. Whether it was queued again.
    pub(crate) fn requeue_unstarted(
        &mut self,
        key: JobKey,
        attempt: u32,
        runner: &str,
        instance: &str,
    ) -> Result<bool> {
        let job = self.job(key)?;
        let same_process = !instance.is_empty() && job.runner_instance == instance;
        if job.attempt != attempt || job.status() != Status::Running || !same_process {
            return Ok(false);
        }
        for i in 0..job.steps.len() {
            if self.step(key.step(attempt, index(i)))?.status() != Status::Pending {
                return Ok(false);
            }
        }
        if self.st.leases.get(&key).is_some_and(|l| l.attempt == attempt) {
            self.set_lease(key, None);
        }
        let job = self.job(key)?;
        job.runner_id.clear();
        job.started_ms = 0;
        job.message = format!("back in the queue: runner {runner} never received it");
        tracing::warn!(job = %key, attempt, runner, "an assignment never reached its runner: queued again");
        self.enqueue(key, 0).map(|()| true)
    }

    /// The runner holding `attempt` of a job is gone (lease lapsed, or it
    /// came back without the job).
    pub(crate) fn lose_job(&mut self, key: JobKey, attempt: u32, reason: &str) -> Result<()> {
        if self.st.leases.get(&key).is_some_and(|l| l.attempt == attempt) {
            self.set_lease(key, None);
        }
        let job = self.job(key)?;
        if job.attempt != attempt || job.status().is_terminal() {
            return Ok(());
        }
        self.end_attempt(key, Status::RunnerLost, reason)
    }

    /// Archives the current attempt and queues the next one after backoff.
    fn retry(&mut self, key: JobKey, status: Status, message: &str) -> Result<()> {
        let old = self.job_ref(key)?.attempt;
        let backoff = ms(self.sh.cfg.retry_backoff).saturating_mul(1 << (old - 1).min(20)).min(MAX_BACKOFF_MS);
        self.new_attempt(key, status, message)?;
        self.job(key)?.message = format!("attempt {old} ended {}: {message}; retrying in {backoff} ms", status.word());
        tracing::info!(job = %key, attempt = old + 1, backoff_ms = backoff, "retrying job");
        self.enqueue(key, self.sh.now_ms() + backoff)
    }

    /// Closes the current attempt as `status` (archived in
    /// `previous_attempts`) and makes the job pending again as attempt + 1,
    /// with fresh steps.
    fn new_attempt(&mut self, key: JobKey, status: Status, message: &str) -> Result<()> {
        self.dequeue(key);
        self.set_lease(key, None);
        let old = self.job_ref(key)?.attempt;
        let closing = if status == Status::RunnerLost { Status::RunnerLost } else { Status::Cancelled };
        self.close_steps(key, old, closing, message)?;
        let now = self.sh.now_ms();
        let job = self.job(key)?;
        job.previous_attempts.push(AttemptRecord {
            attempt: old,
            status: status as i32,
            runner_id: std::mem::take(&mut job.runner_id),
            started_ms: job.started_ms,
            finished_ms: if job.finished_ms > 0 { job.finished_ms } else { now },
            message: message.to_string(),
        });
        job.attempt = old + 1;
        job.started_ms = 0;
        job.finished_ms = 0;
        job.cancel_requested = false;
        job.message.clear();
        job.status = Status::Pending as i32;
        job.resume = None;
        job.reused_from.clear();
        let plans = job.steps.clone();
        for (i, plan) in plans.iter().enumerate() {
            self.insert_step(key.step(old + 1, index(i)), convert::new_step(plan));
        }
        Ok(())
    }

    /// Re-runs the jobs of a finished run that did not succeed (failed,
    /// timed out, cancelled, lost, or skipped because of those); jobs that
    /// succeeded keep their results.
    pub(crate) fn retry_run(&mut self, id: RunId, from: Option<&super::snapshots::ResumeFrom>) -> Result<()> {
        let run = self.run(id)?;
        let status = run.status();
        if !status.is_terminal() {
            return Err(Error::precondition(format!(
                "run {id} is still {}: wait for it to finish or cancel it",
                status.word()
            )));
        }
        if !run.error.is_empty() {
            return Err(Error::precondition(format!(
                "run {id} failed before any job ran ({}): fix the pipeline and start a new run",
                run.error
            )));
        }
        if status == Status::Success {
            return Err(Error::precondition(format!("run {id} succeeded: there is nothing to retry")));
        }
        if run.awaiting_approval {
            return Err(Error::precondition(format!(
                "run {id} was never approved: approve it first ({})",
                run.approval_reason
            )));
        }
        run.cancel_requested = false;
        run.finished_ms = 0;
        run.retried = run.retried.saturating_add(1);
        let count = run.job_count;
        let target = match from {
            Some(super::snapshots::ResumeFrom { job: Some(job), .. }) => Some(self.job_named(id, job)?),
            Some(f) if f.step > 0 => Some(self.only_failed_job(id)?),
            _ => None,
        };
        let mut reset = Vec::new();
        for i in 1..=count {
            let key = JobKey::new(id, i);
            let job = self.job(key)?;
            if job.status() != Status::Success {
                let (status, message) = (job.status(), job.message.clone());
                let resume = match from {
                    Some(f) if target.is_none_or(|t| t == key) => self.resume_point(key, f.step)?,
                    _ => None,
                };
                let reused = self.job_ref(key)?.reused_from.clone();
                self.new_attempt(key, status, &message)?;
                if let Some(resume) = resume {
                    self.resume_attempt(key, resume, reused)?;
                }
                let job = self.job(key)?;
                job.max_attempts = job.attempt + job.retries;
                reset.push(key);
            }
        }
        tracing::info!(run = %id, jobs = reset.len(), "retrying run");
        for key in reset {
            let needs = self.job_ref(key)?.needs.clone();
            let mut ready = true;
            for n in needs {
                ready &= self.job_ref(JobKey::new(id, n))?.status().is_terminal();
            }
            if ready {
                self.make_ready(key)?;
            }
        }
        self.rollup(id)?;
        self.dispatch()
    }

    /// Sets every unfinished step of `attempt` to a final state: running
    /// steps get `running_to`, steps that never started are skipped —
    /// each with `why` the job ended as its message when it has none.
    /// The attempt's logs are final: they wait to be packed.
    fn close_steps(&mut self, key: JobKey, attempt: u32, running_to: Status, why: &str) -> Result<()> {
        self.writes().put_raw(T::Unpacked, StepKey::attempt_prefix(key, attempt), Vec::new());
        let n = self.job_ref(key)?.steps.len();
        let now = self.sh.now_ms();
        for i in 0..n {
            let sk = key.step(attempt, index(i));
            if self.step(sk)?.status().is_terminal() {
                continue;
            }
            let size = self.store().logs.len(sk)?;
            let step = self.step(sk)?;
            if step.status() == Status::Running {
                step.status = running_to as i32;
                step.finished_ms = now;
            } else {
                step.status = Status::Skipped as i32;
            }
            if step.message.is_empty() && !why.is_empty() {
                step.message = if step.status() == Status::Skipped {
                    format!("not run: {}", why.strip_prefix("skipped: ").unwrap_or(why))
                } else {
                    why.to_string()
                };
            }
            step.log_size = size;
            self.store().logs.forget(sk);
        }
        Ok(())
    }

    /// After a job became final: fail-fast its matrix siblings, make ready
    /// the jobs that waited for it, and roll up the run.
    fn after_final(&mut self, key: JobKey) -> Result<()> {
        let job = self.job_ref(key)?.clone();
        let count = self.run(key.run)?.job_count;
        if job.status().is_failure() && job.fail_fast && !job.matrix_group.is_empty() && !job.continue_on_error {
            for i in 1..=count {
                let other = JobKey::new(key.run, i);
                let o = self.job(other)?;
                if other != key && o.matrix_group == job.matrix_group && !o.status().is_terminal() {
                    let reason = format!("cancelled by fail_fast: `{}` failed", job.name);
                    self.cancel_job(other, &reason)?;
                }
            }
        }
        for i in 1..=count {
            let other = JobKey::new(key.run, i);
            let o = self.job_ref(other)?.clone();
            if o.status() != Status::Pending || !o.needs.contains(&key.index) {
                continue;
            }
            let mut all_final = true;
            for n in &o.needs {
                all_final &= self.job_ref(JobKey::new(key.run, *n))?.status().is_terminal();
            }
            if all_final {
                self.make_ready(other)?;
            }
        }
        self.rollup(key.run)
    }

    /// Cancels one job: at once if it has not started, else by asking its
    /// runner (the job ends when the runner reports or its lease lapses).
    pub(crate) fn cancel_job(&mut self, key: JobKey, reason: &str) -> Result<()> {
        let job = self.job(key)?;
        match job.status() {
            Status::Pending | Status::Queued => self.finish_job(key, Status::Cancelled, reason),
            Status::Running => {
                job.cancel_requested = true;
                job.message = reason.to_string();
                let attempt = job.attempt;
                let runner = job.runner_id.clone();
                if let Some(conn) = self.st.runners.get(&runner) {
                    let msg = ServerMessage {
                        msg: Some(Msg::Cancel(JobSignal {
                            job: Some(JobRef { job_id: key.to_string(), attempt, ..Default::default() }),
                            reason: reason.to_string(),
                        })),
                    };
                    let tx = conn.tx.clone();
                    self.send(&tx, msg);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Cancels every unfinished job of a run.
    pub(crate) fn cancel_run(&mut self, id: RunId, reason: &str) -> Result<()> {
        let run = self.run(id)?;
        if run.status().is_terminal() {
            return Ok(());
        }
        run.cancel_requested = true;
        let count = run.job_count;
        for i in 1..=count {
            self.cancel_job(JobKey::new(id, i), reason)?;
        }
        self.rollup(id)
    }

    /// Makes ready the jobs of a run that need nothing.
    pub(crate) fn start_roots(&mut self, id: RunId) -> Result<()> {
        let count = self.run(id)?.job_count;
        for i in 1..=count {
            let key = JobKey::new(id, i);
            if self.job_ref(key)?.needs.is_empty() {
                self.make_ready(key)?;
            }
        }
        Ok(())
    }

    /// Applies `concurrency.group` to new run `id`: with
    /// `cancel_in_progress`, every older unfinished run of the group is
    /// cancelled; without it, older runs that have not started yet are
    /// cancelled (superseded) and the new run waits for the one still
    /// running. Returns whether the new run must wait.
    pub(crate) fn supersede(&mut self, id: RunId, group: &str, cancel_in_progress: bool) -> Result<bool> {
        let older: Vec<RunId> =
            super::index::scan(self.store(), super::index::Field::Group, group.as_bytes(), Some(id))
                .collect::<Result<_>>()?;
        let mut wait = false;
        for old in older {
            let run = self.run(old)?;
            if run.status().is_terminal() {
                continue;
            }
            if cancel_in_progress || run.group_blocked {
                self.cancel_run(old, &format!("superseded by run {id} (concurrency group `{group}`)"))?;
            } else {
                wait = true;
            }
        }
        Ok(wait)
    }

    /// A run of a concurrency group finished: start the oldest run of the
    /// group that waits for it.
    fn release_group(&mut self, group: &str) -> Result<()> {
        let runs: Vec<RunId> = super::index::scan(self.store(), super::index::Field::Group, group.as_bytes(), None)
            .collect::<Result<_>>()?;
        for id in runs.into_iter().rev() {
            let run = self.run(id)?;
            if run.status().is_terminal() {
                continue;
            }
            if run.group_blocked {
                run.group_blocked = false;
                // A run still waiting for approval starts when approved.
                if !run.awaiting_approval {
                    tracing::info!(run = %id, group, "concurrency group free: starting run");
                    self.start_roots(id)?;
                }
                self.rollup(id)?;
            }
            return Ok(());
        }
        Ok(())
    }

    /// Recomputes a run's state from its jobs.
    pub(crate) fn rollup(&mut self, id: RunId) -> Result<()> {
        let count = self.run(id)?.job_count;
        let mut statuses = Vec::with_capacity(count as usize);
        for i in 1..=count {
            let j = self.job(JobKey::new(id, i))?;
            statuses.push((j.status(), j.continue_on_error));
        }
        let now = self.sh.now_ms();
        let run = self.run(id)?;
        let counts = |f: &dyn Fn(Status) -> bool| statuses.iter().any(|(s, coe)| !coe && f(*s));
        let status = if statuses.iter().all(|(s, _)| s.is_terminal()) {
            if run.cancel_requested {
                Status::Cancelled
            } else if counts(&|s| matches!(s, Status::Failure | Status::RunnerLost)) {
                Status::Failure
            } else if counts(&|s| s == Status::TimedOut) {
                Status::TimedOut
            } else if counts(&|s| s == Status::Cancelled) {
                Status::Cancelled
            } else {
                Status::Success
            }
        } else if run.started_ms > 0 {
            Status::Running
        } else {
            Status::Queued
        };
        if run.status() != status {
            run.status = status as i32;
            if status.is_terminal() {
                run.finished_ms = now;
                run.group_blocked = false;
                tracing::info!(run = %id, status = status.word(), "run finished");
                let group = run.concurrency_group.clone();
                if !group.is_empty() {
                    self.release_group(&group)?;
                }
            }
        }
        Ok(())
    }
}

/// A 0-based position as a 1-based index.
pub(crate) fn index(i: usize) -> u32 {
    u32::try_from(i + 1).unwrap_or(u32::MAX)
}
