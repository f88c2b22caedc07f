//! What runners report: step and job states, and log data.
//!
//! Every report names (job, attempt). A report from a runner that does not
//! hold that attempt's lease is refused as [`Report::Stale`] — the runner is
//! told to abandon the attempt — so a runner that comes back late can never
//! overwrite a newer attempt. States only move forward, so a report resent
//! after a reconnect is harmless.

use viaduct_proto::{
    StatusWord,
    v1::{JobUpdate, LogData, Status, StepUpdate},
};

use super::{Engine, dispatch::holds, tx::Tx};
use crate::{
    error::{Error, Result},
    store::{Ticket, keys::JobKey, logs::Append},
};

/// The engine's answer to log data.
#[derive(Debug)]
pub enum Report {
    /// Log data applied; the step's durable log will be this long.
    Logged(Ticket, u64),
    /// The runner does not hold this attempt: tell it to abandon it.
    Stale,
}

/// A state report from a runner.
#[derive(Debug, Clone, Copy)]
pub enum Update<'a> {
    /// A step changed state.
    Step(&'a StepUpdate),
    /// The job attempt started or ended.
    Job(&'a JobUpdate),
}

/// The engine's answer to one [`Update`].
#[derive(Debug)]
pub enum Verdict {
    /// Applied (or already known): acknowledge once durable.
    Accepted,
    /// The runner does not hold this attempt: tell it to abandon it.
    Stale,
    /// Malformed (e.g. no such step): log it, do not acknowledge.
    Invalid(Error),
}

fn job_of(r: Option<&viaduct_proto::v1::JobRef>) -> Result<(JobKey, u32)> {
    let r = r.ok_or_else(|| Error::invalid("report without a job"))?;
    Ok((JobKey::parse(&r.job_id)?, r.attempt))
}

impl Engine {
    /// Applies `updates` from `runner`, in order, as one transition (one
    /// lock, one atomic commit, one dispatch for the whole batch).
    /// Returns a verdict per update and the ticket to acknowledge after.
    pub fn apply_updates(&self, runner: &str, updates: &[Update<'_>]) -> Result<(Vec<Verdict>, Ticket)> {
        self.transition(|t| {
            let mut verdicts = Vec::with_capacity(updates.len());
            let mut freed = false;
            for u in updates {
                let verdict = match u {
                    Update::Step(s) => t.apply_step(runner, s),
                    Update::Job(j) => t.apply_job(runner, j).map(|(ok, ended)| {
                        freed |= ended;
                        ok
                    }),
                };
                verdicts.push(match verdict {
                    Ok(true) => Verdict::Accepted,
                    Ok(false) => Verdict::Stale,
                    Err(e) => Verdict::Invalid(e),
                });
                // Each report's changes become their own events.
                t.checkpoint();
            }
            if freed {
                t.dispatch()?;
            }
            Ok(verdicts)
        })
    }

    /// Log bytes of a step from `runner`.
    pub fn log_data(&self, runner: &str, d: &LogData) -> Result<Report> {
        let (job, attempt) = job_of(d.job.as_ref())?;
        let (steps, job_bytes) = match self.lock().leases.get(&job) {
            Some(l) if l.attempt == attempt && l.runner == runner => (l.steps, l.log_bytes),
            _ => return Ok(Report::Stale),
        };
        if d.step_index == 0 || d.step_index > steps {
            return Err(Error::invalid(format!("job {job} has no step {}", d.step_index)));
        }
        let sk = job.step(attempt, d.step_index);
        // Past the limits (with room for the runner's marker lines: one per
        // step) nothing is kept, but it is acknowledged: a runner that does
        // not cut its logs (or was told other limits) is not made to send
        // it forever. The job's limit leaves this chunk what the job's
        // steps have not used.
        // The job's room counts from the step's stored end (a chunk sent
        // again may start before it).
        let cfg = &self.sh.cfg;
        let have = self.store().logs.len(sk)?;
        let job_limit = cfg.max_job_log_bytes.saturating_add(super::CUT_MARKER_ROOM.saturating_mul(u64::from(steps)));
        let limit = cfg
            .max_step_log_bytes
            .saturating_add(super::CUT_MARKER_ROOM)
            .min(d.offset.max(have).saturating_add(job_limit.saturating_sub(job_bytes)));
        let end = d.offset.saturating_add(d.data.len() as u64);
        let data = if end > limit {
            tracing::debug!(step = %sk, limit, "log data past the step's or the job's limit: dropped");
            if d.offset >= limit {
                // Acknowledged once what comes before it is all there (and
                // durable: a ticket of its own, which covers what another
                // connection of the runner may just have appended).
                return Ok(Report::Logged(self.store().ticket(), if have >= limit { end } else { have }));
            }
            &d.data[..usize::try_from(limit - d.offset).unwrap_or(0)]
        } else {
            &d.data[..]
        };
        // What was dropped counts as acknowledged.
        let acked = |len: u64| if end > limit && len >= limit { end } else { len };
        Ok(match self.store().logs.append(sk, d.offset, data, self.sh.now_ms())? {
            Append::Stored(len) => {
                // What this chunk added past the end it found (a chunk of
                // another connection of the runner landing in between is
                // counted twice: never too little).
                let added = len.saturating_sub(have);
                if let Some(l) = self.lock().leases.get_mut(&job).filter(|l| l.attempt == attempt && l.runner == runner)
                {
                    l.log_bytes = l.log_bytes.saturating_add(added);
                }
                self.signals().touch_run(job.run);
                Report::Logged(self.store().ticket(), acked(len))
            }
            // What is there may have been appended by another connection
            // of the runner that has not taken its ticket yet: a ticket of
            // our own covers it (a current one might not).
            Append::Duplicate(len) => Report::Logged(self.store().ticket(), acked(len)),
            Append::Gap(len) => {
                tracing::warn!(step = %sk, offset = d.offset, have = len, "log chunk past the end: bytes missing");
                Report::Logged(self.store().ticket(), len)
            }
        })
    }
}

impl Tx<'_> {
    /// A step changed state: `Ok(false)` when the runner does not hold the
    /// attempt. Validation happens before any change.
    fn apply_step(&mut self, runner: &str, u: &StepUpdate) -> Result<bool> {
        let (job, attempt) = job_of(u.job.as_ref())?;
        let status = u.status();
        if !holds(self.st, runner, job, attempt) {
            return Ok(false);
        }
        if u.step_index == 0 || u.step_index as usize > self.job_ref(job)?.steps.len() {
            return Err(Error::invalid(format!("job {job} has no step {}", u.step_index)));
        }
        let sk = job.step(attempt, u.step_index);
        // The log's length is kept with the step once it ends.
        let size = if status.is_terminal() { self.store().logs.len(sk)? } else { 0 };
        let now = self.sh.now_ms();
        let step = self.step(sk)?;
        let current = step.status();
        if current.is_terminal() || status == Status::Pending || status == current {
            return Ok(true);
        }
        if status == Status::Running {
            step.status = status as i32;
            step.started_ms = now;
        } else if status.is_terminal() {
            if step.started_ms == 0 && status != Status::Skipped {
                step.started_ms = now;
            }
            step.status = status as i32;
            step.finished_ms = if status == Status::Skipped { 0 } else { now };
            step.exit_code = u.exit_code;
            step.message.clone_from(&u.message);
            step.outputs = u.outputs.clone();
            step.summary.clone_from(&u.summary);
            step.log_size = size;
            self.store().logs.forget(sk);
        }
        tracing::debug!(step = %sk, attempt, status = status.word(), "step update");
        Ok(true)
    }

    /// A job attempt started or ended: `Ok((held, ended))`.
    fn apply_job(&mut self, runner: &str, u: &JobUpdate) -> Result<(bool, bool)> {
        let (job, attempt) = job_of(u.job.as_ref())?;
        if !holds(self.st, runner, job, attempt) {
            return Ok((false, false));
        }
        let status = u.status();
        if status.is_terminal() {
            self.end_attempt(job, status, &u.message)?;
            return Ok((true, true));
        }
        Ok((true, false))
    }
}
