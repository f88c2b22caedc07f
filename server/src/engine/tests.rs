//! Rules of the engine, in-process (see [`super::testing`]).

use std::time::Instant;

use super::{Lease, testing::Harness};
use crate::{
    error::Error,
    store::{
        T, WriteSet,
        keys::JobKey,
        records::{RunnerRecord, SCHEMA_VERSION, SecretRecord},
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
        let lease = Lease {
            attempt: 1,
            runner: "r".into(),
            expires: Instant::now(),
            pipeline: String::new(),
            steps: 1,
            log_bytes: 0,
        };
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

/// Job names (`job_key`) of what the runner was given.
fn names(given: &[viaduct_proto::v1::JobAssignment]) -> Vec<&str> {
    given.iter().map(|a| a.job_key.as_str()).collect()
}

/// A job starts only when what it needs succeeded; a failure skips its
/// dependants and fails the run.
#[tokio::test]
async fn needs_order_jobs_and_a_failure_skips_the_dependants() {
    use viaduct_proto::v1::Status;
    let h = Harness::new();
    let mut r = h.runner("r1", &[], 4).expect("connect");
    let yaml = "jobs:\n  a:\n    steps: [{run: 'true'}]\n  b:\n    needs: [a]\n    steps: [{run: 'true'}]\n  \
                c:\n    needs: [b]\n    steps: [{run: 'true'}]\n  d:\n    steps: [{run: 'true'}]\n";
    let run = h.submit(yaml).await;
    let given = r.assignments();
    assert_eq!(names(&given), ["a", "d"]);
    assert_eq!(h.job_states(run), ["running", "pending", "pending", "running"]);
    h.report(&r, &given[0], Status::Success);
    let next = r.assignments();
    assert_eq!(names(&next), ["b"]);
    h.report(&r, &next[0], Status::Failure);
    h.report(&r, &given[1], Status::Success);
    assert!(r.assignments().is_empty());
    assert_eq!(h.job_states(run), ["success", "failure", "skipped", "success"]);
    let status = h.engine.get_run(run).expect("run").status;
    assert_eq!(status, Status::Failure as i32);
}

/// A one-slot runner takes the highest priority first, then FIFO.
#[tokio::test]
async fn the_highest_priority_goes_first_then_the_oldest() {
    use viaduct_proto::v1::Status;
    let h = Harness::new();
    let low = h.submit("priority: 1\njobs:\n  low:\n    steps: [{run: 'true'}]\n").await;
    let first = h.submit("jobs:\n  first:\n    steps: [{run: 'true'}]\n").await;
    let second = h.submit("jobs:\n  second:\n    steps: [{run: 'true'}]\n").await;
    let urgent = h.submit("priority: 9\njobs:\n  urgent:\n    steps: [{run: 'true'}]\n").await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let mut order = Vec::new();
    for _ in 0..4 {
        let given = r.assignments();
        assert_eq!(given.len(), 1, "one slot, one job at a time");
        order.push(given[0].job_key.clone());
        h.report(&r, &given[0], Status::Success);
    }
    assert_eq!(order, ["urgent", "first", "second", "low"]);
    for run in [low, first, second, urgent] {
        assert_eq!(h.job_states(run), ["success"]);
    }
}

/// A job goes only to a runner with every label it asks for.
#[tokio::test]
async fn labels_decide_where_a_job_runs() {
    let h = Harness::new();
    let run = h.submit("jobs:\n  gpu:\n    runs_on: [linux, gpu]\n    steps: [{run: 'true'}]\n").await;
    let mut plain = h.runner("plain", &["linux"], 2).expect("connect");
    assert!(plain.assignments().is_empty());
    assert_eq!(h.job_states(run), ["queued"]);
    let mut gpu = h.runner("gpu", &["linux", "gpu"], 1).expect("connect");
    assert_eq!(names(&gpu.assignments()), ["gpu"]);
}

/// A runner that comes back without a job it had started loses it: the
/// job is retried when it may be, on whichever runner is free.
#[tokio::test]
async fn a_runner_that_comes_back_without_its_job_loses_it_to_a_retry() {
    use viaduct_proto::v1::Status;
    let h = Harness::new();
    let run = h.submit("jobs:\n  j:\n    retries: 1\n    steps: [{run: 'true'}]\n").await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let given = r.assignments();
    assert_eq!(names(&given), ["j"]);
    h.start_first_step(&r, &given[0]);
    // Reconnects listing nothing (it restarted): attempt 1 is lost.
    let mut again = h.runner("r1", &[], 1).expect("reconnect");
    let job = &h.engine.get_run(run).expect("run").jobs[0];
    assert_eq!(job.attempt, 2, "{job:?}");
    assert!(job.message.contains("no longer runs it"), "{}", job.message);
    // The retry waits out its backoff (2 s by default) in the queue.
    assert_eq!(job.status, Status::Queued as i32);
    assert!(again.assignments().is_empty());
    assert_eq!((h.engine.metrics().queued, h.engine.metrics().running), (1, 0));
    assert!(r.assignments().is_empty(), "the old connection gets nothing more");
}

/// An assignment that never reached its runner (lost with the stream, or
/// with a leading replica that died after committing it) — the runner
/// comes back without the job, and no step of it ever started — goes back
/// to the queue as the same attempt, even with no retries left.
#[tokio::test]
async fn an_assignment_that_never_arrived_is_queued_again_as_the_same_attempt() {
    let h = Harness::new();
    let run = h.submit("jobs:\n  j:\n    steps: [{run: 'true'}]\n").await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    assert_eq!(names(&r.assignments()), ["j"]);
    let mut again = h.runner("r1", &[], 1).expect("reconnect");
    let given = again.assignments();
    assert_eq!(names(&given), ["j"], "given again, to the runner that is free");
    let job = &h.engine.get_run(run).expect("run").jobs[0];
    assert_eq!((job.attempt, job.previous_attempts.len()), (1, 0), "{job:?}");
    h.report(&again, &given[0], viaduct_proto::v1::Status::Success);
    assert_eq!(h.job_states(run), ["success"]);
    assert!(r.assignments().is_empty(), "the old connection gets nothing more");
}

/// A backend whose flushes wait until the test opens the gate.
struct Gated {
    inner: crate::store::kv::Memory,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
}

impl crate::store::kv::Kv for Gated {
    fn get(&self, tree: T, key: &[u8]) -> crate::error::Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }
    fn range(&self, tree: T, lo: std::ops::Bound<&[u8]>, hi: std::ops::Bound<&[u8]>) -> crate::store::kv::Entries<'_> {
        self.inner.range(tree, lo, hi)
    }
    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> crate::error::Result<bool> {
        self.inner.insert_if_absent(tree, key, value)
    }
    fn commit(&self, ops: &[crate::store::kv::Op]) -> crate::error::Result<()> {
        self.inner.commit(ops)
    }
    fn flush(&self) -> crate::error::Result<()> {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
        Ok(())
    }
    fn generate_id(&self) -> crate::error::Result<u64> {
        self.inner.generate_id()
    }
}

/// With durable sends (PostgreSQL), an assignment leaves only once the
/// transition that made it is durable: a server that dies before cannot
/// have given a job its successor does not know about.
#[tokio::test]
async fn with_durable_sends_an_assignment_waits_for_the_disk() {
    let gated = std::sync::Arc::new(Gated {
        inner: crate::store::kv::Memory::new(),
        open: std::sync::Mutex::new(true),
        opened: std::sync::Condvar::new(),
    });
    let h = Harness::over(crate::store::Store::with(gated.clone()), |c| c.durable_sends = true);
    h.submit(ONE_JOB).await;
    *gated.open.lock().unwrap() = false;
    // Connecting dispatches the queued job; the flush it needs cannot end.
    let mut r = h.runner("r1", &[], 1).expect("connect");
    tokio::task::yield_now().await;
    assert!(r.inbox.try_recv().is_err(), "nothing (not even the welcome) before the disk has it");
    *gated.open.lock().unwrap() = true;
    gated.opened.notify_all();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut given = Vec::new();
    while given.is_empty() && Instant::now() < deadline {
        given = r.assignments();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(names(&given), ["j"]);
}

/// A run's end is given to a client that stops there (a follower, whose
/// CLI exits with it; `Runs.Get`) only once it is durable: a crash before
/// the flush could undo it. A run still going is given at once.
#[tokio::test]
async fn a_finished_run_is_announced_only_once_durable() {
    use viaduct_proto::v1::Status;
    let gated = std::sync::Arc::new(Gated {
        inner: crate::store::kv::Memory::new(),
        open: std::sync::Mutex::new(true),
        opened: std::sync::Condvar::new(),
    });
    let h = Harness::over(crate::store::Store::with(gated.clone()), |_| {});
    let run = h.submit(ONE_JOB).await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let given = r.assignments();
    assert_eq!(names(&given), ["j"]);
    *gated.open.lock().unwrap() = false;
    h.start_first_step(&r, &given[0]);
    let going = futures_util::FutureExt::now_or_never(h.engine.get_run_durable_end(run));
    let going = going.expect("a run still going is given at once").expect("the run");
    assert_eq!(going.status, Status::Running as i32);
    h.report(&r, &given[0], Status::Success);
    assert_eq!(h.job_states(run), ["success"], "applied, in memory and in the backend's buffer");
    let mut announced = std::pin::pin!(h.engine.get_run_durable_end(run));
    tokio::task::yield_now().await;
    assert!(futures_util::poll!(announced.as_mut()).is_pending(), "announced before the disk has it");
    *gated.open.lock().unwrap() = true;
    gated.opened.notify_all();
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), announced).await;
    let got = got.expect("announced once durable").expect("the run");
    assert_eq!(got.status, Status::Success as i32);
}

/// A runner that restarted (another process) may have started the job it
/// was given before it died: it comes back without it, and the attempt is
/// lost, not quietly run again.
#[tokio::test]
async fn a_restarted_runner_loses_even_an_attempt_it_never_reported() {
    let h = Harness::new();
    let run = h.submit("jobs:\n  j:\n    steps: [{run: 'true'}]\n").await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    assert_eq!(names(&r.assignments()), ["j"]);
    let _again = h.runner_process("r1", &[], 1, "2").expect("reconnect as a new process");
    assert_eq!(h.job_states(run), ["runner_lost"]);
}

/// A submit sent again with its request key (its reply was lost) gets the
/// run the first one made; another key makes another run; keys are
/// forgotten after a day.
#[tokio::test]
async fn a_submit_sent_again_with_its_key_makes_no_second_run() {
    let h = Harness::new();
    let yaml = "jobs:\n  j:\n    steps: [{run: 'true'}]\n";
    let first = h.submit_keyed(yaml, Some([1; 32])).await;
    assert_eq!(h.submit_keyed(yaml, Some([1; 32])).await, first);
    let other = h.submit_keyed(yaml, Some([2; 32])).await;
    assert_ne!(other, first);
    assert_ne!(h.submit(yaml).await, h.submit(yaml).await, "no key: every submit is a run");
    assert_eq!(h.engine.prune_request_keys().expect("prune"), 0);
    h.advance(25 * 3600 * 1000);
    assert_eq!(h.engine.prune_request_keys().expect("prune"), 2);
    assert_ne!(h.submit_keyed(yaml, Some([1; 32])).await, first, "a day later the key is new again");
}

/// A failed attempt is retried after a backoff that doubles, never before
/// it ends; after the last attempt the job fails for good.
#[tokio::test]
async fn retries_wait_out_a_doubling_backoff() {
    use viaduct_proto::v1::Status;
    let h = Harness::new();
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let run = h.submit("jobs:\n  j:\n    retries: 2\n    steps: [{run: 'false'}]\n").await;
    let mut given = r.assignments();
    for (attempt, backoff_ms) in [(1, 2000), (2, 4000)] {
        assert_eq!(given.iter().map(|a| a.job.as_ref().map_or(0, |j| j.attempt)).collect::<Vec<_>>(), [attempt]);
        h.report(&r, &given[0], Status::Failure);
        assert_eq!(h.job_states(run), ["queued"]);
        h.advance(backoff_ms - 100);
        assert!(r.assignments().is_empty(), "attempt {} started before its backoff ended", attempt + 1);
        h.advance(100);
        given = r.assignments();
    }
    h.report(&r, &given[0], Status::Failure);
    assert_eq!(h.job_states(run), ["failure"]);
    assert_eq!(h.engine.get_run(run).expect("run").jobs[0].attempt, 3);
}

/// A runner that stops heartbeating loses its job when the lease lapses
/// (30 s by default), not before.
#[tokio::test]
async fn a_silent_runner_loses_its_job_when_the_lease_lapses() {
    use viaduct_proto::v1::Status;
    let h = Harness::new();
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let run = h.submit(ONE_JOB).await;
    assert_eq!(r.assignments().len(), 1);
    h.advance(29_000);
    assert_eq!(h.job_states(run), ["running"]);
    h.advance(1_001);
    let job = &h.engine.get_run(run).expect("run").jobs[0];
    assert_eq!(job.status, Status::RunnerLost as i32, "{job:?}");
    assert!(job.message.contains("stopped responding"), "{}", job.message);
    assert_eq!(h.engine.metrics().running, 0);
}

/// A runner record from before executors were an enum (its executors as
/// words) keeps what its runner may offer when the engine opens.
#[tokio::test]
async fn runner_records_with_executor_words_are_upgraded() {
    use viaduct_proto::v1::Executor::{Container, Host, Wasi};
    let h = Harness::new();
    let old = RunnerRecord {
        name: "old".into(),
        max_slots: 2,
        executor_words: vec!["host".into(), "wasi".into()],
        allowed_executor_words: vec!["host".into(), "container".into(), "wasi".into(), "gpu".into()],
        ..Default::default()
    };
    let mut ws = WriteSet::default();
    ws.put(T::Runners, b"old", &old);
    h.store.commit(&ws).expect("write");
    super::session::upgrade_runner_records(&h.store).expect("upgrade");
    let r = h.engine.get_runner("old").expect("the runner");
    assert_eq!(r.executors, [Host as i32, Wasi as i32]);
    assert_eq!(r.allowed_executors, [Host as i32, Container as i32, Wasi as i32]);
    let rec: RunnerRecord = h.store.get(T::Runners, b"old").expect("read").expect("kept");
    assert!(rec.executor_words.is_empty() && rec.allowed_executor_words.is_empty());
}

/// A queued job says why it waits — no runner; the closest runners and
/// what each lacks; all fitting runners busy — and a runner's toolchains
/// are matched like labels, once they are toolchain labels.
#[tokio::test]
async fn a_queued_job_says_why_it_waits_and_toolchains_route_it() {
    let h = Harness::new();
    let run = h.submit("jobs:\n  j:\n    runs_on: [linux, rust:1.95]\n    steps:\n      - run: true\n").await;
    let waiting = |h: &Harness| h.engine.get_run(run).expect("run").jobs[0].waiting.clone();
    assert_eq!(waiting(&h), "no runner is connected");
    let other = super::RunnerHello {
        labels: vec!["linux".into()],
        slots: 1,
        executors: vec![viaduct_proto::v1::Executor::Container],
        ..Default::default()
    };
    let (_other, _) = h.runner_saying("r0", other).expect("connect");
    let hello = super::RunnerHello {
        labels: vec!["linux".into()],
        slots: 1,
        executors: vec![viaduct_proto::v1::Executor::Host],
        // Not toolchain labels: ignored.
        toolchains: vec!["production".into(), "rust:x".into()],
        ..Default::default()
    };
    let (mut r1, conn) = h.runner_saying("r1", hello).expect("connect");
    let w = waiting(&h);
    assert_eq!(
        w,
        "no connected runner can take this host job with runs_on [linux, rust:1.95]; closest: 1 runner lacks \
         `rust:1.95`; 1 runner lacks `rust:1.95`, the host executor"
    );
    assert!(r1.assignments().is_empty());
    let rust: Vec<String> = ["rust", "rust:1", "rust:1.95", "rust:1.95.0"].map(String::from).to_vec();
    h.engine.runner_toolchains("r1", conn, &rust).expect("toolchains");
    let given = r1.assignments();
    assert_eq!(names(&given), ["j"], "routed by the toolchain");
    assert_eq!(waiting(&h), "", "a running job waits no more");
    let next = h.submit("jobs:\n  k:\n    runs_on: [rust]\n    steps:\n      - run: true\n").await;
    let w = h.engine.get_run(next).expect("run").jobs[0].waiting.clone();
    assert_eq!(w, "waiting for a free slot: 1 connected runner(s) fit, all busy");
    let runners = h.engine.list_runners().expect("runners");
    let r1 = runners.iter().find(|r| r.id == "r1").expect("r1");
    assert_eq!(r1.toolchains, rust);
    assert_eq!(r1.labels, ["linux"]);
}

/// Retention over 10,000 finished runs of two pipelines and two branches,
/// a minute apart: a pass keeps exactly what the rules say (checked against
/// a plain re-statement of them), a dry run removes nothing, and a removed
/// run takes its jobs, steps, log chunks and index entries with it.
#[tokio::test]
async fn retention_keeps_what_the_rules_say_over_ten_thousand_runs() {
    use std::collections::{BTreeSet, HashMap};

    use viaduct_proto::v1::{RunSource, Status};

    use super::prune::Rules;
    use crate::store::{
        keys::RunId,
        records::{JobRecord, RunRecord, StepRecord},
    };

    const N: u64 = 10_000;
    const MINUTE: i64 = 60_000;
    let h = Harness::new();
    let now = h.engine.sh.now_ms();
    let runs: Vec<(RunId, RunRecord)> = (1..=N)
        .map(|i| {
            let status = if i % 7 == 0 { Status::Success } else { Status::Failure };
            let rec = RunRecord {
                schema: SCHEMA_VERSION,
                pipeline: if i % 2 == 0 { "a".into() } else { "b".into() },
                status: status as i32,
                source: Some(RunSource {
                    repo: "app".into(),
                    branch: if i % 3 == 0 { "dev".into() } else { "main".into() },
                    ..Default::default()
                }),
                created_ms: now - (N as i64 - i as i64 + 1) * MINUTE - 30_000,
                finished_ms: now - (N as i64 - i as i64) * MINUTE - 30_000,
                job_count: 1,
                ..Default::default()
            };
            (RunId(i), rec)
        })
        .collect();
    // One old run still running: never removed.
    let running = RunId(N + 1);
    let mut open_run = runs[0].1.clone();
    open_run.status = Status::Running as i32;
    open_run.finished_ms = 0;
    for chunk in runs.iter().chain([(running, open_run)].iter()).collect::<Vec<_>>().chunks(500) {
        let mut ws = WriteSet::default();
        for (id, rec) in chunk {
            ws.put(T::Runs, id.key(), rec);
            super::index::update(&mut ws, *id, None, rec);
            let job = JobKey::new(*id, 1);
            ws.put(T::Jobs, job.key(), &JobRecord { schema: SCHEMA_VERSION, status: rec.status, ..Default::default() });
            let step = job.step(1, 1);
            ws.put(T::Steps, step.key(), &StepRecord { schema: SCHEMA_VERSION, ..Default::default() });
            ws.put_raw(T::Logs, step.log_key(0), b"hello\n".to_vec());
        }
        h.store.commit(&ws).expect("write");
    }

    let rules = Rules { keep_for_ms: 24 * 60 * MINUTE, keep_last: 50, keep_last_success: true };
    // The rules, stated plainly: recent, the newest 50 of a pipeline, the
    // newest success of a (pipeline, branch).
    let mut expected: BTreeSet<u64> = BTreeSet::from([running.0]);
    let mut per_pipeline: HashMap<&str, u32> = HashMap::new();
    let mut green: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (id, r) in runs.iter().rev() {
        let n = per_pipeline.entry(r.pipeline.as_str()).or_default();
        let branch = r.source.as_ref().map(|s| s.branch.as_str()).unwrap_or_default();
        let newest_green = r.status() == Status::Success && green.insert((r.pipeline.as_str(), branch));
        if *n < 50 || newest_green || now - r.finished_ms < rules.keep_for_ms {
            expected.insert(id.0);
        }
        *n += 1;
    }

    let dry = h.engine.prune(&|_| rules, 0, true).expect("dry run");
    assert_eq!(dry.examined, N + 1);
    assert_eq!(dry.removed, N + 1 - expected.len() as u64);
    assert_eq!(h.store.tree(T::Runs).iter().count() as u64, N + 1, "a dry run removes nothing");

    let done = h.engine.prune(&|_| rules, 0, false).expect("prune");
    assert_eq!(done.removed, dry.removed, "the dry run said what the pass did");
    assert_eq!(done.records, dry.records);
    assert_eq!(done.kept.get("unfinished"), Some(&1));
    let left: BTreeSet<u64> =
        h.store.tree(T::Runs).iter().map(|kv| RunId::from_key(&kv.expect("read").0).expect("key").0).collect();
    assert_eq!(left, expected);
    let jobs: BTreeSet<u64> =
        h.store.tree(T::Jobs).iter().map(|kv| RunId::from_key(&kv.expect("read").0).expect("key").0).collect();
    assert_eq!(jobs, expected, "jobs go with their runs");
    assert_eq!(h.store.tree(T::Steps).iter().count(), expected.len());
    assert_eq!(h.store.tree(T::Logs).iter().count(), expected.len());
    let indexed: BTreeSet<u64> =
        super::index::scan(&h.store, super::index::Field::Pipeline, b"a", None).map(|id| id.expect("scan").0).collect();
    assert_eq!(indexed, expected.iter().copied().filter(|i| *i % 2 == 0).collect());

    let again = h.engine.prune(&|_| rules, 0, false).expect("prune again");
    assert_eq!(again.removed, 0, "a second pass finds nothing more");
}

/// A run that really ran goes with its records once old; old events go
/// while the newest batch stays (new events continue from its cursor).
#[tokio::test]
async fn retention_removes_a_run_that_ran_and_keeps_the_newest_events() {
    use viaduct_proto::v1::Status;

    use super::prune::Rules;

    let h = Harness::new();
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let run = h.submit(ONE_JOB).await;
    let given = r.assignments();
    h.report(&r, &given[0], Status::Success);
    h.advance(3 * 24 * 3600 * 1000);
    let rules = Rules { keep_for_ms: 24 * 3600 * 1000, keep_last: 0, keep_last_success: false };
    let events_before = h.store.tree(T::Events).iter().count();
    assert!(events_before > 1);
    let unpacked = h.engine.prune(&|_| rules, 0, true).expect("dry run");
    assert_eq!((unpacked.removed, unpacked.kept.get("unfinished")), (0, Some(&1)), "kept until its logs are packed");
    // What packing does once it has moved the logs out.
    let mut ws = WriteSet::default();
    for kv in h.store.tree(T::Unpacked).iter() {
        ws.delete(T::Unpacked, kv.expect("read").0);
    }
    h.store.commit(&ws).expect("write");
    let dry = h.engine.prune(&|_| rules, 1000, true).expect("dry run");
    assert_eq!((dry.removed, dry.event_batches), (1, events_before as u64 - 1));
    let done = h.engine.prune(&|_| rules, 1000, false).expect("prune");
    assert_eq!(done.removed_ids, vec![run]);
    assert!(h.engine.get_run(run).is_err(), "the run is gone");
    assert_eq!(h.store.tree(T::Jobs).iter().count() + h.store.tree(T::Steps).iter().count(), 0);
    assert_eq!(h.store.tree(T::Events).iter().count(), 1, "the newest batch stays");
    // New events continue after the kept cursor.
    let next = h.submit(ONE_JOB).await;
    let (events, _) = h.engine.events_after(0, None, 100).expect("events");
    assert!(events.iter().any(|e| e.run_id == next.to_string()));
    assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
}

/// A job keeps no more log than its limit across its steps, with room for
/// one marker line per step; what is past it is acknowledged (not sent
/// forever) and the count survives a restart of the server.
#[tokio::test]
async fn a_job_keeps_no_more_log_than_its_limit_across_steps_and_restarts() {
    use super::reports::Report;
    use viaduct_proto::v1::LogData;
    let limit = |c: &mut super::EngineConfig| c.max_job_log_bytes = 100;
    let h = Harness::over(crate::store::Store::memory(), limit);
    let run = h.submit("jobs:\n  j:\n    steps: [{run: 'true'}, {run: 'true'}, {run: 'true'}]\n").await;
    let mut r = h.runner("r1", &[], 1).expect("connect");
    let given = r.assignments();
    assert_eq!(given[0].max_job_log_bytes, 100);
    h.start_first_step(&r, &given[0]);
    let log = |h: &Harness, step: u32, offset: u64, len: usize| {
        let d = LogData { job: given[0].job.clone(), step_index: step, offset, data: vec![b'x'; len] };
        match h.engine.log_data("r1", &d).expect("log data") {
            Report::Logged(_, acked) => acked,
            Report::Stale => panic!("stale"),
        }
    };
    let kept = |h: &Harness, step: u32| h.store.logs.len(JobKey::new(run, 1).step(1, step)).expect("length");
    // 100 bytes, and 1024 for a marker line per step: 3172 in all.
    assert_eq!(log(&h, 1, 0, 1000), 1000);
    assert_eq!(log(&h, 2, 0, 1500), 1500);
    let h = h.restarted(limit);
    // Sent again from before the stored end: the job's room counts from it.
    assert_eq!(log(&h, 2, 1000, 5500), 6500, "acknowledged, kept in part");
    assert_eq!((kept(&h, 1), kept(&h, 2)), (1000, 2172));
    assert_eq!(log(&h, 3, 0, 10), 10, "acknowledged, not kept");
    assert_eq!(log(&h, 1, 1000, 10), 1010);
    assert_eq!((kept(&h, 1), kept(&h, 2), kept(&h, 3)), (1000, 2172, 0));
}
