//! The engine in-process, for tests: a real store in a temporary
//! directory, and fake runners that are nothing but the channel the engine
//! already sends a connection's messages to. Tests drive the engine through
//! its own calls and read what a runner would have received.

use std::sync::Arc;

use tempfile::TempDir;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use viaduct_proto::v1::{Executor, JobAssignment, JobUpdate, ServerMessage, Status, server_message::Msg};

use super::{Engine, EngineConfig, RunnerHello, clock::ManualClock, reports::Update};
use crate::{
    blobs::BlobStore,
    launch::{Cause, resolve},
    plugins::PluginRegistry,
    secrets::SecretBox,
    store::{Store, T, WriteSet, keys::RunId, now_ms, records::RunnerRecord},
};

/// An engine over a fresh in-memory store, on a clock that moves only
/// when the test says.
pub(crate) struct Harness {
    pub engine: Arc<Engine>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<Store>,
    plugins: PluginRegistry,
    _dir: TempDir,
}

/// A fake runner: what the engine sent to its connection.
pub(crate) struct FakeRunner {
    pub id: String,
    pub inbox: UnboundedReceiver<ServerMessage>,
}

impl FakeRunner {
    /// The assignments received so far (other messages are dropped).
    pub fn assignments(&mut self) -> Vec<JobAssignment> {
        let mut out = Vec::new();
        while let Ok(m) = self.inbox.try_recv() {
            if let Some(Msg::Assign(a)) = m.msg {
                out.push(a);
            }
        }
        out
    }
}

/// An engine over `store` on `clock`, its settings changed by `set`.
fn open(
    store: &Arc<Store>,
    clock: &Arc<ManualClock>,
    secrets: Arc<SecretBox>,
    set: impl FnOnce(&mut EngineConfig),
) -> Arc<Engine> {
    let mut cfg = EngineConfig { clock: Arc::clone(clock) as Arc<dyn super::clock::Clock>, ..EngineConfig::default() };
    set(&mut cfg);
    Engine::open(Arc::clone(store), cfg, secrets).expect("engine")
}

impl Harness {
    pub fn new() -> Self {
        Self::over(Store::memory(), |_| {})
    }

    /// An engine over `store`, its settings changed by `set`.
    pub fn over(store: Store, set: impl FnOnce(&mut EngineConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(store);
        let secrets = Arc::new(SecretBox::open(dir.path()).expect("secret box"));
        let blobs = Arc::new(BlobStore::local(&dir.path().join("blobs")).expect("blobs"));
        let plugins = PluginRegistry::new(Arc::clone(&store), blobs);
        let clock = Arc::new(ManualClock::default());
        let engine = open(&store, &clock, secrets, set);
        Self { engine, clock, store, plugins, _dir: dir }
    }

    /// A new engine over this one's store and clock (the server
    /// restarted), its settings changed by `set`.
    pub fn restarted(self, set: impl FnOnce(&mut EngineConfig)) -> Self {
        let Self { engine, clock, store, plugins, _dir } = self;
        drop(engine);
        let secrets = Arc::new(SecretBox::open(_dir.path()).expect("secret box"));
        let engine = open(&store, &clock, secrets, set);
        Self { engine, clock, store, plugins, _dir }
    }

    /// Registers runner `id` with `labels` and `slots` (host executor) and
    /// connects it.
    pub fn runner(&self, id: &str, labels: &[&str], slots: u32) -> crate::error::Result<FakeRunner> {
        self.runner_process(id, labels, slots, "1")
    }

    /// [`Harness::runner`] as runner process `instance` (another one is a
    /// runner that restarted).
    pub fn runner_process(
        &self,
        id: &str,
        labels: &[&str],
        slots: u32,
        instance: &str,
    ) -> crate::error::Result<FakeRunner> {
        let hello = RunnerHello {
            labels: labels.iter().map(ToString::to_string).collect(),
            slots,
            executors: vec![Executor::Host],
            instance: format!("{id}@{instance}"),
            ..Default::default()
        };
        self.runner_saying(id, hello).map(|(runner, _)| runner)
    }

    /// Registers runner `id` and connects it with `hello`; the runner and
    /// its connection's id.
    pub fn runner_saying(&self, id: &str, hello: RunnerHello) -> crate::error::Result<(FakeRunner, u64)> {
        let mut ws = WriteSet::default();
        let rec = RunnerRecord { name: id.into(), registered_ms: now_ms(), ..Default::default() };
        ws.put(T::Runners, id.as_bytes(), &rec);
        self.store.commit(&ws)?;
        let (tx, inbox) = unbounded_channel();
        let conn = self.engine.runner_connected(id, hello, tx)?;
        Ok((FakeRunner { id: id.to_string(), inbox }, conn))
    }

    /// `runner` reports that the job of `assignment` ended with `status`.
    pub fn report(&self, runner: &FakeRunner, assignment: &JobAssignment, status: Status) {
        let update = JobUpdate { job: assignment.job.clone(), status: status as i32, ..Default::default() };
        let (verdicts, _) = self.engine.apply_updates(&runner.id, &[Update::Job(&update)]).expect("apply");
        assert!(matches!(verdicts[..], [super::reports::Verdict::Accepted]), "{verdicts:?}");
    }

    /// `runner` reports that the first step of `assignment`'s job started.
    pub fn start_first_step(&self, runner: &FakeRunner, assignment: &JobAssignment) {
        let update = viaduct_proto::v1::StepUpdate {
            job: assignment.job.clone(),
            step_index: 1,
            status: Status::Running as i32,
            ..Default::default()
        };
        let (verdicts, _) = self.engine.apply_updates(&runner.id, &[Update::Step(&update)]).expect("apply");
        assert!(matches!(verdicts[..], [super::reports::Verdict::Accepted]), "{verdicts:?}");
    }

    /// The status word of each job of `run`, in plan order.
    pub fn job_states(&self, run: RunId) -> Vec<&'static str> {
        let run = self.engine.get_run(run).expect("the run");
        run.jobs
            .iter()
            .map(|j| viaduct_proto::StatusWord::word(Status::try_from(j.status).unwrap_or_default()))
            .collect()
    }

    /// Moves time forward by `ms` and lets the engine's timer act (lapsed
    /// leases, ended backoffs).
    pub fn advance(&self, ms: u64) {
        self.clock.advance(std::time::Duration::from_millis(ms));
        self.engine.tick().expect("tick");
    }

    /// Plans and creates a run of `yaml`.
    pub async fn submit(&self, yaml: &str) -> RunId {
        self.submit_keyed(yaml, None).await
    }

    /// Plans and creates a run of `yaml` as if pushed to `branch` of
    /// repository `repo` by `sender`.
    pub async fn submit_from(&self, yaml: &str, repo: &str, branch: &str, sender: &str) -> RunId {
        let source = viaduct_proto::v1::RunSource {
            event: "push".into(),
            repo: repo.into(),
            r#ref: format!("refs/heads/{branch}"),
            branch: branch.into(),
            commit: "c0ffee".into(),
            sender: sender.into(),
            ..Default::default()
        };
        let cause = Cause { source, ..Default::default() };
        let new = resolve::from_yaml("pipeline.yml", yaml, &cause, &self.plugins).expect("a valid file");
        self.engine.create_run(new).await.expect("create the run")
    }

    /// [`Harness::submit`] with a submit's request key.
    pub async fn submit_keyed(&self, yaml: &str, request_key: Option<[u8; 32]>) -> RunId {
        let cause = Cause { request_key, ..Default::default() };
        let new = resolve::from_yaml("pipeline.yml", yaml, &cause, &self.plugins).expect("a valid file");
        self.engine.create_run(new).await.expect("create the run")
    }
}
