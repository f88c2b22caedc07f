//! Rules of the engine, in-process (see [`super::testing`]).

use std::time::Instant;

use super::{Lease, testing::Harness};
use crate::{
    error::Error,
    store::{
        T, WriteSet,
        keys::JobKey,
        records::{SCHEMA_VERSION, SecretRecord},
    },
};

const ONE_JOB: &str = "jobs:\n  j:\n    steps:\n      - run: true\n";

/// A transition that fails part-way leaves memory as it found it: the job
/// it took off the queue (and leased) is still queued, and runs.
#[tokio::test]
async fn a_failed_transition_is_undone_in_memory_too() {
    let h = Harness::new();
    let run = h.submit(ONE_JOB).await;
    let job = JobKey::new(run, 1);
    assert_eq!(h.engine.metrics().queued, 1);
    let failed = h.engine.transition(|t| {
        t.dequeue(job);
        let lease =
            Lease { attempt: 1, runner: "r".into(), expires: Instant::now(), pipeline: String::new(), steps: 1 };
        t.set_lease(job, Some(lease));
        Err::<(), _>(Error::Internal("injected".into()))
    });
    assert!(failed.is_err());
    let m = h.engine.metrics();
    assert_eq!((m.queued, m.running), (1, 0), "memory kept the failed transition's changes");
    let mut runner = h.runner("r1", &[], 1).expect("connect");
    let given: Vec<String> =
        runner.assignments().iter().filter_map(|a| a.job.as_ref().map(|j| j.job_id.clone())).collect();
    assert_eq!(given, vec![job.to_string()]);
}

/// A failed connect (here: the runner was removed) leaves no connection
/// behind that dispatch would send jobs to.
#[tokio::test]
async fn a_refused_connection_is_not_kept() {
    let h = Harness::new();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = h.engine.runner_connected("ghost", super::RunnerHello { slots: 1, ..Default::default() }, tx);
    assert!(err.is_err());
    assert_eq!(h.engine.metrics().runners_connected, 0);
}

/// A secret that cannot be decrypted fails the jobs that list it, with a
/// message naming it, and every other job still runs.
#[tokio::test]
async fn an_unreadable_secret_fails_its_job_and_nothing_else() {
    let h = Harness::new();
    let mut ws = WriteSet::default();
    let garbage = SecretRecord { schema: SCHEMA_VERSION, sealed: vec![7; 40], ..Default::default() };
    ws.put(T::Secrets, b"BROKEN", &garbage);
    h.store.commit(&ws).expect("write");
    let bad = h.submit("jobs:\n  j:\n    secrets: [BROKEN]\n    steps:\n      - run: true\n").await;
    let good = h.submit(ONE_JOB).await;
    let mut runner = h.runner("r1", &[], 2).expect("connect");
    let given: Vec<String> =
        runner.assignments().iter().filter_map(|a| a.job.as_ref().map(|j| j.job_id.clone())).collect();
    assert_eq!(given, vec![JobKey::new(good, 1).to_string()]);
    let run = h.engine.get_run(bad).expect("run");
    let job = &run.jobs[0];
    assert_eq!(job.status, viaduct_proto::v1::Status::Failure as i32);
    assert!(job.message.contains("`BROKEN` cannot be read"), "{}", job.message);
    assert_eq!(h.engine.metrics().queued, 0);
}
