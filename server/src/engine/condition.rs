//! Job `if:` conditions, evaluated by the server when a job's needs are all
//! final. (Step conditions are evaluated by the runner.)
//!
//! Status functions see the needed jobs: `failure()` is true when one of
//! them failed (failure, timed_out, runner_lost), `cancelled()` when one was
//! cancelled or the run is being cancelled, `success()` when all of them
//! succeeded. A needed job that was *skipped* makes `success()` false too,
//! so skips propagate down a chain unless a job asks for `always()` or
//! `failure()`. An absent condition means `success()`.

use std::collections::HashMap;

use viaduct_pipeline::expr::{self, ExprContext, Value};
use viaduct_proto::{StatusWord, v1::Status};

use crate::store::records::{JobRecord, RunRecord};

struct JobContext<'a> {
    job: &'a JobRecord,
    run: &'a RunRecord,
    needs: &'a [(String, Status)],
    status: expr::Status,
}

impl ExprContext for JobContext<'_> {
    fn lookup(&self, path: &[&str]) -> Option<Value> {
        let ctx = self.job.context.clone().unwrap_or_default();
        let text = |s: &str| Some(Value::String(s.to_string()));
        let map = |m: &HashMap<String, String>, k: &str| m.get(k).map(|v| Value::String(v.clone()));
        match path {
            ["branch"] => text(&ctx.branch),
            ["tag"] => text(&ctx.tag),
            ["event"] => text(&ctx.event),
            ["commit"] => text(&ctx.commit),
            ["repo"] => text(&ctx.repo),
            ["run_id"] => text(&ctx.run_id),
            ["matrix", k] => map(&ctx.matrix, k),
            ["inputs", k] => map(&ctx.inputs, k).or_else(|| map(&self.run.inputs, k)),
            ["env", k] => map(&self.job.env, k),
            ["needs", job, "result"] => {
                self.needs.iter().find(|(key, _)| key == job).map(|(_, s)| Value::String(s.word().to_string()))
            }
            _ => None,
        }
    }

    fn status(&self) -> expr::Status {
        self.status
    }
}

/// Whether a job whose needs ended as `needs` (key, status) should run.
/// An error is a condition that cannot be evaluated.
pub(crate) fn job_should_run(job: &JobRecord, run: &RunRecord, needs: &[(String, Status)]) -> Result<bool, String> {
    let failed = needs.iter().any(|(_, s)| s.is_failure());
    let cancelled = run.cancel_requested || needs.iter().any(|(_, s)| *s == Status::Cancelled);
    let skipped = needs.iter().any(|(_, s)| *s == Status::Skipped);
    let status = if failed {
        expr::Status::Failure
    } else if cancelled {
        expr::Status::Cancelled
    } else {
        expr::Status::Success
    };
    if job.condition.is_empty() {
        return Ok(status == expr::Status::Success && !skipped);
    }
    let ctx = JobContext { job, run, needs, status };
    let verdict = expr::eval_condition(&job.condition, &ctx).map_err(|e| e.to_string())?;
    // A skipped need makes `success()` false: only conditions that hold
    // without it (always(), failure()) run the job.
    if skipped && status == expr::Status::Success {
        let without = JobContext { status: expr::Status::Failure, ..ctx };
        let on_failure = expr::eval_condition(&job.condition, &without).map_err(|e| e.to_string())?;
        return Ok(verdict && on_failure);
    }
    Ok(verdict)
}
