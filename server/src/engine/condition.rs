//! Job `if:` conditions, evaluated by the server when a job's needs are all
//! final. (Step conditions are evaluated by the runner.)
//!
//! Status functions see the needed jobs: `failure()` is true when one of
//! them failed (failure, timed_out, runner_lost), `cancelled()` when one was
//! cancelled or the run is being cancelled, `success()` when all of them
//! succeeded. A needed job that was *skipped* makes `success()` false too,
//! so skips propagate down a chain unless a job asks for `always()` or
//! `failure()`. An absent condition means `success()`.
//!
//! The rules live in `viaduct_sdk::planned::job_should_run`, which the
//! runner's local runs share.

use viaduct_proto::v1::Status;
use viaduct_sdk::planned::{self, JobCondition};

use crate::store::records::{JobRecord, RunRecord};

/// Whether a job whose needs ended as `needs` (key, status) should run.
/// An error is a condition that cannot be evaluated.
pub(crate) fn job_should_run(job: &JobRecord, run: &RunRecord, needs: &[(String, Status)]) -> Result<bool, String> {
    let context = job.context.clone().unwrap_or_default();
    let facts = JobCondition { condition: &job.condition, context: &context, env: &job.env, run_inputs: &run.inputs };
    planned::job_should_run(&facts, needs, run.cancel_requested)
}
