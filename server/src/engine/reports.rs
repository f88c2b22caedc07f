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

use super::{Engine, dispatch::holds};
use crate::{
    error::{Error, Result},
    store::{Ticket, keys::JobKey, logs::Append, now_ms},
};

/// The engine's answer to a report.
#[derive(Debug)]
pub enum Report {
    /// Applied (or already known); acknowledge once `Ticket` is durable.
    Accepted(Ticket),
    /// Log data applied; the step's durable log will be this long.
    Logged(Ticket, u64),
    /// The runner does not hold this attempt: tell it to abandon it.
    Stale,
}

fn job_of(r: Option<&viaduct_proto::v1::JobRef>) -> Result<(JobKey, u32)> {
    let r = r.ok_or_else(|| Error::invalid("report without a job"))?;
    Ok((JobKey::parse(&r.job_id)?, r.attempt))
}

impl Engine {
    /// A step changed state on `runner`.
    pub fn step_update(&self, runner: &str, u: &StepUpdate) -> Result<Report> {
        let (job, attempt) = job_of(u.job.as_ref())?;
        let status = u.status();
        let (report, ticket) = self.transition(|t| {
            if !holds(t.st, runner, job, attempt) {
                return Ok(false);
            }
            if u.step_index == 0 || u.step_index as usize > t.job(job)?.steps.len() {
                return Err(Error::invalid(format!("job {job} has no step {}", u.step_index)));
            }
            let sk = job.step(attempt, u.step_index);
            let size = t.store().logs.len(sk)?;
            let step = t.step(sk)?;
            let current = step.status();
            if current.is_terminal() || status == Status::Pending || status == current {
                return Ok(true);
            }
            let now = now_ms();
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
                t.store().logs.forget(sk);
            }
            tracing::debug!(step = %sk, attempt, status = status.word(), "step update");
            Ok(true)
        })?;
        Ok(if report { Report::Accepted(ticket) } else { Report::Stale })
    }

    /// A job attempt started or ended on `runner`.
    pub fn job_update(&self, runner: &str, u: &JobUpdate) -> Result<Report> {
        let (job, attempt) = job_of(u.job.as_ref())?;
        let status = u.status();
        let (report, ticket) = self.transition(|t| {
            if !holds(t.st, runner, job, attempt) {
                return Ok(false);
            }
            if status.is_terminal() {
                t.end_attempt(job, status, &u.message)?;
                t.dispatch()?;
            }
            Ok(true)
        })?;
        Ok(if report { Report::Accepted(ticket) } else { Report::Stale })
    }

    /// Log bytes of a step from `runner`.
    pub fn log_data(&self, runner: &str, d: &LogData) -> Result<Report> {
        let (job, attempt) = job_of(d.job.as_ref())?;
        let steps = match self.lock().leases.get(&job) {
            Some(l) if l.attempt == attempt && l.runner == runner => l.steps,
            _ => return Ok(Report::Stale),
        };
        if d.step_index == 0 || d.step_index > steps {
            return Err(Error::invalid(format!("job {job} has no step {}", d.step_index)));
        }
        let sk = job.step(attempt, d.step_index);
        let len = match self.store().logs.append(sk, d.offset, &d.data, now_ms())? {
            Append::Stored(len) => {
                self.signals().touch_run(job.run);
                len
            }
            Append::Duplicate(len) => len,
            Append::Gap(len) => {
                tracing::warn!(step = %sk, offset = d.offset, have = len, "log chunk past the end: bytes missing");
                len
            }
        };
        Ok(Report::Logged(self.store().ticket(), len))
    }
}
