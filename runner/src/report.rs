//! Where a job attempt's reports go: its states, its steps' states and
//! their logs.
//!
//! The job runner ([`crate::job`]) and the executors' [`StepLog`](crate::executor::StepLog)
//! speak only this trait. The runner hands them its outbox (reliable,
//! resumable delivery to the server); the job runner's in-process tests
//! hand them a recorder.

use viaduct_proto::v1::{JobRef, JobUpdate, StepUpdate};

/// See the module docs.
#[async_trait::async_trait]
pub trait Reports: Send + Sync {
    /// A job attempt's state: running, then how it ended.
    fn job(&self, update: JobUpdate);

    /// A step's state: running, then how it ended.
    fn step(&self, update: StepUpdate);

    /// Output of a step, already masked; waits while too much is
    /// unacknowledged (backpressure on the step).
    async fn log(&self, job: &JobRef, step: u32, data: &[u8]);

    /// The attempt was abandoned (its lease is gone): drop everything of it
    /// not yet delivered.
    fn forget(&self, job: &JobRef);
}
