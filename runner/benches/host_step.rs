//! Where a host step's time goes, measured inside the runner: a `run: true`
//! step through the host executor with each layer of containment added in
//! turn (nothing, the step's cgroup, the slot user with its private
//! `/proc`), against the bare cost of the same process (`/bin/sh -e -c
//! true` spawned and waited for).
//!
//! `cargo bench -p viaduct-runner --bench host_step` (`cargo xtask bench
//! steps` runs it too). The cgroup and user layers need root (and cgroup v2);
//! they are left out, with a note, elsewhere.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use viaduct_proto::v1::JobRef;
use viaduct_runner::{
    executor::{
        Backend, JobSetup, LogLimits, StepLog, StepSpec, StepStop, cgroup::Cgroups, host::HostBackend,
        isolation::SlotUsers,
    },
    mask::Secrets,
    outbox::Outbox,
    report::Reports,
};

const WARMUP: usize = 30;
const STEPS: usize = 500;

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// p50 and p99 of `run: true` steps in one job of `backend`.
async fn steps(backend: &HostBackend, job: &JobRef) -> (Duration, Duration) {
    let outbox: Arc<dyn Reports> = Arc::new(Outbox::default());
    let stop = StepStop { cancel: CancellationToken::new(), deadline: None };
    let mut env = backend.setup(&JobSetup { job: job.clone(), ..Default::default() }).await.unwrap();
    let mut took = Vec::with_capacity(STEPS);
    for i in 0..WARMUP + STEPS {
        let spec = StepSpec {
            index: u32::try_from(i % 100).unwrap() + 1,
            name: "true".into(),
            script: "true".into(),
            env: BTreeMap::new(),
            working_directory: String::new(),
        };
        let mut log =
            StepLog::new(Arc::clone(&outbox), job.clone(), spec.index, Secrets::default(), LogLimits::new(0, 0));
        let t = Instant::now();
        let o = env.run_step(&spec, &mut log, &stop).await;
        if i >= WARMUP {
            took.push(t.elapsed());
        }
        assert_eq!(o.exit_code, Some(0), "{}", o.message);
    }
    env.teardown().await;
    median(took)
}

/// p50 and p99 of spawning and waiting for `/bin/sh -e -c true` directly.
fn bare() -> (Duration, Duration) {
    let mut took = Vec::with_capacity(STEPS);
    for i in 0..WARMUP + STEPS {
        let t = Instant::now();
        // Without what `cargo bench` adds to this process's environment:
        // with LD_LIBRARY_PATH's build directories, `sh` looks for its
        // libraries in each of them first (the executor's steps never
        // carry it).
        let s = std::process::Command::new("/bin/sh")
            .args(["-e", "-c", "true"])
            .env_remove("LD_LIBRARY_PATH")
            .status()
            .unwrap();
        if i >= WARMUP {
            took.push(t.elapsed());
        }
        assert!(s.success());
    }
    median(took)
}

fn line(what: &str, (p50, p99): (Duration, Duration), floor: Duration) {
    println!(
        "  {what:<44} p50 {:>7}  p99 {:>7}  ({:.2}× bare)",
        us(p50),
        us(p99),
        p50.as_secs_f64() / floor.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let job = |n: u32| JobRef { job_id: format!("{n}.1"), attempt: 1, ..Default::default() };
    let grace = Duration::from_secs(1);
    let floor = bare();
    println!("host step `run: true`, {STEPS} steps in one job (after {WARMUP} to warm up):");
    line("bare: /bin/sh -e -c true, spawned and waited", floor, floor.0);
    let plain = HostBackend::new(&dir("plain"), grace, false, None, None);
    line("executor, process group only", steps(&plain, &job(1)).await, floor.0);
    let cgroups = Cgroups::detect(&format!("bench{}", std::process::id()));
    match &cgroups {
        Some(c) => {
            let contained = HostBackend::new(&dir("cgroup"), grace, false, Some(c.clone()), None);
            line("executor, step cgroup", steps(&contained, &job(2)).await, floor.0);
        }
        None => println!("  (no writable cgroup v2 here: the cgroup layers are left out)"),
    }
    match SlotUsers::new(60_000, 1, &[], tmp.path()) {
        Some(users) => {
            let isolated = HostBackend::new(&dir("user"), grace, false, cgroups, Some(users));
            line("executor, step cgroup + slot user + own /proc", steps(&isolated, &job(3)).await, floor.0);
        }
        None => println!("  (not root: the slot-user layer is left out)"),
    }
}
