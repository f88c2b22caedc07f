//! Executors of `run:` steps ("backends"): how a job's environment is made
//! and a script step actually runs. (`uses:` steps run on the
//! [`plugin_host`](crate::plugin_host), beside the job's environment.)
//!
//! The job runner (`job`) knows the order of steps, their conditions and
//! timeouts; an executor knows only how to run one step in one job's
//! environment. The contract, in the order a job uses it:
//!
//! 1. [`Backend::setup`] prepares a job's environment (workspace, container…)
//!    and returns its [`JobEnv`];
//! 2. [`JobEnv::run_step`] starts a step, streams its output into the
//!    [`StepLog`] as it is written (the "tail logs" of other CI systems), and
//!    waits for it — or stops it when its [`StepStop`] says so;
//! 3. [`JobEnv::teardown`] removes everything the job created, whatever
//!    happened.
//!
//! Executors: [`host`] (processes on the machine, held in a [`cgroup`] per
//! job), [`container`] (one container per job through the Docker Engine
//! API) and [`dummy`] (no processes: for benchmarks of the scheduler, and tests
//! of the job runner and the protocol that set each step's behaviour
//! through its env).

pub mod cgroup;
pub mod container;
pub mod dummy;
pub mod host;
pub mod isolation;
pub mod programs;
pub mod terminal;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Instant};

use tokio_util::sync::CancellationToken;
use viaduct_proto::v1::{Executor, ImagePlan, JobRef, ServicePlan, Status};

pub use self::terminal::{Shell, ShellControl, ShellExit, ShellSpec};
use crate::{
    mask::{Masker, Secrets},
    report::Reports,
};

/// What an executor needs to prepare a job.
#[derive(Debug, Clone, Default)]
pub struct JobSetup {
    /// The job attempt.
    pub job: JobRef,
    /// Container image; `None` for host jobs.
    pub image: Option<ImagePlan>,
    /// Sidecar containers.
    pub services: Vec<ServicePlan>,
    /// Container network mode ("bridge", "none").
    pub network: String,
    /// CPU limit, 0 = the runner's default.
    pub cpus: f64,
    /// Memory limit in bytes, 0 = the runner's default.
    pub memory_bytes: u64,
    /// `user:password` for the image's registry.
    pub registry_auth: String,
    /// The job's `env:` (every step has it too).
    pub env: BTreeMap<String, String>,
}

impl JobSetup {
    /// Whether the job runs in a container.
    pub fn wants_container(&self) -> bool {
        self.image.as_ref().is_some_and(|i| !i.name.is_empty())
    }
}

/// Sends each job to the executor it needs: a container job to the
/// container executor, any other to the host executor — when this runner
/// has them.
pub struct Router {
    /// Host jobs (None with `--no-host-jobs`).
    pub host: Option<Arc<dyn Backend>>,
    /// Container jobs (None without a container engine).
    pub container: Option<Arc<dyn Backend>>,
}

#[async_trait::async_trait]
impl Backend for Router {
    fn executors(&self) -> Vec<Executor> {
        self.host.iter().chain(self.container.iter()).flat_map(|b| b.executors()).collect()
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        match (job.wants_container(), &self.host, &self.container) {
            (true, _, Some(c)) => c.setup(job).await,
            (true, _, None) => Err(SetupError("this runner has no container engine".into())),
            (false, Some(h), _) => h.setup(job).await,
            (false, None, _) => Err(SetupError("this runner does not run host jobs (--no-host-jobs)".into())),
        }
    }
}

/// One step, ready to run: expressions already interpolated.
#[derive(Debug, Clone)]
pub struct StepSpec {
    /// 1-based.
    pub index: u32,
    /// Display name.
    pub name: String,
    /// The shell script.
    pub script: String,
    /// The complete environment of the step's process.
    pub env: BTreeMap<String, String>,
    /// Relative directory in the workspace to run in.
    pub working_directory: String,
}

/// Why a step must stop early.
#[derive(Debug, Clone)]
pub struct StepStop {
    /// Cancelled by the user (or the attempt was abandoned).
    pub cancel: CancellationToken,
    /// Step or job deadline, whichever comes first.
    pub deadline: Option<Instant>,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// success, failure, timed_out or cancelled.
    pub status: Status,
    /// Exit code of the step's process (128 + signal when killed).
    pub exit_code: Option<i32>,
    /// A human explanation (empty on success).
    pub message: String,
    /// Outputs the step wrote (`name=value` lines in `$VIADUCT_OUTPUT`).
    pub outputs: BTreeMap<String, String>,
}

impl StepOutcome {
    /// A step that could not even start.
    pub fn error(message: impl Into<String>) -> Self {
        Self { status: Status::Failure, exit_code: None, message: message.into(), outputs: BTreeMap::new() }
    }
}

/// Most bytes of log a step keeps when its assignment sets no limit.
pub const DEFAULT_MAX_STEP_LOG: u64 = 128 << 20;

/// Most bytes of log a job's steps keep together when its assignment sets
/// no limit.
pub const DEFAULT_MAX_JOB_LOG: u64 = 512 << 20;

/// The log limits of one job: each step's, and all steps' together (what
/// the steps before sent, shared by the job's [`StepLog`]s).
#[derive(Clone)]
pub struct LogLimits {
    step: u64,
    job: u64,
    job_sent: Arc<std::sync::atomic::AtomicU64>,
}

impl LogLimits {
    /// Limits of `step` and `job` bytes (0: the defaults).
    pub fn new(step: u64, job: u64) -> Self {
        let or = |v: u64, d: u64| if v == 0 { d } else { v };
        Self { step: or(step, DEFAULT_MAX_STEP_LOG), job: or(job, DEFAULT_MAX_JOB_LOG), job_sent: Arc::default() }
    }

    fn job_sent(&self) -> u64 {
        self.job_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn add(&self, n: u64) {
        self.job_sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Which limit cut a step's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The step's own, of this many bytes.
    Step(u64),
    /// The job's, of this many bytes (for all its steps).
    Job(u64),
}

impl Cut {
    /// The line that ends the log.
    fn marker(self) -> String {
        match self {
            Cut::Step(n) => format!(
                "\n[viaduct: this step's log reached its limit of {n} bytes; the rest of its output is not kept]\n"
            ),
            Cut::Job(n) => format!(
                "\n[viaduct: this job's log reached its limit of {n} bytes; the rest of this step's output is not kept]\n"
            ),
        }
    }

    /// What the step's message says.
    pub fn describe(self) -> String {
        match self {
            Cut::Step(n) => format!("its log was cut at the limit of {n} bytes"),
            Cut::Job(n) => format!("its log was cut at the job's limit of {n} bytes"),
        }
    }
}

/// Where a step's output goes: through the secret masker into the job's
/// [`Reports`], tagged with the step — up to the step's log limit and what
/// is left of the job's, then a marker line once, then nothing (the step
/// goes on).
pub struct StepLog {
    reports: Arc<dyn Reports>,
    job: JobRef,
    step: u32,
    written: u64,
    masker: Masker,
    /// Bytes of log sent so far (masked).
    sent: u64,
    limits: LogLimits,
    cut: Option<Cut>,
}

impl StepLog {
    /// A log for `step` of `job`, masking `secrets`, within `limits`.
    pub fn new(reports: Arc<dyn Reports>, job: JobRef, step: u32, secrets: Secrets, limits: LogLimits) -> Self {
        Self { reports, job, step, written: 0, masker: Masker::new(secrets), sent: 0, limits, cut: None }
    }

    /// Appends output; waits while too much is unacknowledged (backpressure).
    pub async fn write(&mut self, data: &[u8]) {
        self.written += data.len() as u64;
        let masked = self.masker.feed(data);
        self.send(&masked).await;
    }

    /// Emits what the masker still holds (the step has ended).
    pub async fn finish(&mut self) {
        let rest = self.masker.finish();
        self.send(&rest).await;
    }

    /// Sends what fits under the limits; the marker once when one is reached.
    async fn send(&mut self, masked: &[u8]) {
        if self.cut.is_some() || masked.is_empty() {
            return;
        }
        let step_room = self.limits.step.saturating_sub(self.sent);
        let job_room = self.limits.job.saturating_sub(self.limits.job_sent());
        let room = step_room.min(job_room);
        if masked.len() as u64 <= room {
            self.reports.log(&self.job, self.step, masked).await;
            self.sent += masked.len() as u64;
            self.limits.add(masked.len() as u64);
            return;
        }
        let cut = if step_room <= job_room { Cut::Step(self.limits.step) } else { Cut::Job(self.limits.job) };
        let mut last = masked[..usize::try_from(room).unwrap_or(usize::MAX)].to_vec();
        last.extend_from_slice(cut.marker().as_bytes());
        self.reports.log(&self.job, self.step, &last).await;
        self.sent += room;
        self.limits.add(room);
        self.cut = Some(cut);
    }

    /// Whether the output passed a log limit (and the rest was dropped).
    pub fn cut(&self) -> Option<Cut> {
        self.cut
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// An error preparing a job.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

/// Prepares job environments. One per runner, shared by its jobs.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The executors it offers (host, container), advertised to the server
    /// for routing.
    fn executors(&self) -> Vec<Executor>;

    /// Prepares the environment of one job attempt.
    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError>;
}

/// One job's environment.
#[async_trait::async_trait]
pub trait JobEnv: Send {
    /// The workspace directory as the step sees it.
    fn workspace(&self) -> PathBuf;

    /// Runs one step to completion (or until `stop`), streaming its output.
    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome;

    /// The runner wrote into the workspace (a checkout, a plugin step):
    /// make what it wrote the job's (host jobs of a slot user).
    async fn adopt_workspace(&mut self) {}

    /// Where the job's plugin steps run programs: where its steps run.
    fn programs(&self) -> std::sync::Arc<dyn programs::Programs>;

    /// Starts an interactive shell on a terminal in the job's workspace,
    /// as its steps run (same user, containment, environment defaults),
    /// for a user to debug the job (see [`terminal`]). Teardown ends it.
    async fn shell(&mut self, spec: &ShellSpec) -> Result<Shell, String> {
        let _ = spec;
        Err("this executor has no interactive shell".into())
    }

    /// Removes everything the job created.
    async fn teardown(self: Box<Self>);
}
