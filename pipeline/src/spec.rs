//! The typed pipeline specification produced by [`crate::parse`].
//!
//! Strings that may contain `${{ }}` are kept exactly as written; the
//! [`crate::plan`] step interpolates what is known at plan time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cron::CronSchedule;
use crate::diag::Pos;
use crate::glob::Glob;

/// A value together with the position it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// The value.
    pub value: T,
    /// Where it starts in the file.
    pub pos: Pos,
}

/// A parsed and validated pipeline file.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// The file name given to [`crate::parse`] (used in plan diagnostics).
    pub file: String,
    /// Display name (default `pipeline`); may contain `${{ }}`.
    pub name: String,
    /// The events that start the pipeline.
    pub triggers: Triggers,
    /// Pipeline-wide environment variables (values may contain `${{ }}`).
    pub env: BTreeMap<String, String>,
    /// Run priority 0–10 (default 5).
    pub priority: u8,
    /// Concurrency group, if any.
    pub concurrency: Option<Concurrency>,
    /// `notify:` — notifications about the run, in written order.
    pub notify: Vec<Notify>,
    /// `snapshots:` — whether jobs keep workspace snapshots after their
    /// steps (`None`: the server's default).
    pub snapshots: Option<bool>,
    /// Jobs in declaration order.
    pub jobs: Vec<Job>,
}

impl Pipeline {
    /// The job with the given key.
    pub fn job(&self, key: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.key == key)
    }
}

/// `on:` — which events start the pipeline. See [`Triggers::matches_push`],
/// [`Triggers::matches_pull_request`], [`Triggers::schedules`] and
/// [`Triggers::allows_manual`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Triggers {
    /// `on.push`, if present.
    pub push: Option<PushTrigger>,
    /// `on.pull_request`, if present.
    pub pull_request: Option<PullRequestTrigger>,
    /// `on.schedule` entries.
    pub schedule: Vec<CronSpec>,
    /// `on.manual`; also `Some` (without inputs) when `on` is absent.
    pub manual: Option<ManualTrigger>,
}

/// Push filters; `None` means "not filtered on this".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushTrigger {
    /// Branch globs.
    pub branches: Option<Vec<Glob>>,
    /// Tag globs.
    pub tags: Option<Vec<Glob>>,
}

/// Pull request filters on the target branch; `None` matches every branch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullRequestTrigger {
    /// Target branch globs.
    pub branches: Option<Vec<Glob>>,
}

/// One `on.schedule` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    /// The validated schedule.
    pub schedule: CronSchedule,
    /// Where it is written.
    pub pos: Pos,
}

/// `on.manual`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ManualTrigger {
    /// Declared inputs, in declaration order.
    pub inputs: Vec<InputSpec>,
}

/// A declared manual input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Input name (`inputs.<name>`).
    pub name: String,
    /// Default value.
    pub default: Option<String>,
    /// Help text.
    pub description: Option<String>,
    /// Whether a value must be supplied when there is no default.
    pub required: bool,
    /// Where the input is declared.
    pub pos: Pos,
}

/// `concurrency:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// Group name as written (may contain `${{ }}`).
    pub group: String,
    /// Whether a new run cancels the running one of the same group.
    pub cancel_in_progress: bool,
}

/// A job as written (before matrix expansion).
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The job key under `jobs:`.
    pub key: String,
    /// Position of the job key.
    pub pos: Pos,
    /// `name:` as written.
    pub name: Option<String>,
    /// Runner labels.
    pub runs_on: Vec<String>,
    /// Container image.
    pub image: Option<ImageSpec>,
    /// Service containers, in declaration order.
    pub services: Vec<ServiceSpec>,
    /// Container network.
    pub network: Network,
    /// Resource limits.
    pub resources: Resources,
    /// Matrix, if any.
    pub matrix: Option<Matrix>,
    /// Whether the first failing matrix sibling cancels the others.
    pub fail_fast: bool,
    /// Job timeout.
    pub timeout: Option<Duration>,
    /// Retries on failure (0–10).
    pub retries: u32,
    /// Priority override (0–10).
    pub priority: Option<u8>,
    /// Job environment (values may contain `${{ }}`).
    pub env: BTreeMap<String, String>,
    /// Secret names exposed as environment variables.
    pub secrets: Vec<String>,
    /// Keys of jobs this job needs, with positions.
    pub needs: Vec<Spanned<String>>,
    /// `if:` source; `None` means `success()`.
    pub condition: Option<String>,
    /// Whether a failure of this job leaves the run successful.
    pub continue_on_error: bool,
    /// Artifact paths/globs.
    pub artifacts: Vec<String>,
    /// `notify:` — notifications about this job, in written order.
    pub notify: Vec<Notify>,
    /// `snapshots:` — whether the job keeps workspace snapshots after its
    /// steps (`None`: the pipeline's).
    pub snapshots: Option<bool>,
    /// `environment:` — the environment the job deploys to.
    pub environment: Option<EnvironmentSpec>,
    /// `artifacts_from:` — jobs (among `needs`) whose artifacts are put in
    /// the workspace before the first step.
    pub artifacts_from: Vec<Spanned<String>>,
    /// Steps in order.
    pub steps: Vec<Step>,
}

/// `environment:` of a job: where it deploys (values may contain `${{ }}`
/// of the matrix and inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentSpec {
    /// The environment's name.
    pub name: String,
    /// Where the deployed thing can be seen.
    pub url: Option<String>,
    /// Services the deployment runs, registered when it succeeds.
    pub services: Vec<DeployedService>,
    /// Position of `environment:`.
    pub pos: Pos,
}

/// A service a deployment runs (`environment.services[]`), registered on
/// the server and probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployedService {
    /// Its name, unique in the environment.
    pub name: String,
    /// Where it answers (shown, not probed).
    pub endpoints: Vec<String>,
    /// How the server checks its health.
    pub probe: Option<ProbeSpec>,
    /// A stored pipeline started when its health changes.
    pub on_change: Option<String>,
}

/// `probe:` of a deployed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// `http(s)://…` or `tcp://host:port`.
    pub target: String,
    /// Between probes (default 30 s).
    pub interval: Option<Duration>,
    /// Per probe (default 5 s).
    pub timeout: Option<Duration>,
}

/// A container image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Image reference (may contain `${{ }}` in the spec; interpolated in the plan).
    pub name: String,
    /// Pull policy.
    pub pull: PullPolicy,
    /// User to run as.
    pub user: Option<String>,
    /// Secret holding `user:password` for the registry.
    pub credentials: Option<String>,
}

/// When to pull an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PullPolicy {
    /// Pull only if missing locally (default).
    #[default]
    IfNotPresent,
    /// Always pull.
    Always,
    /// Never pull.
    Never,
}

/// A service container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name (its host name on the job network).
    pub name: String,
    /// Image.
    pub image: ImageSpec,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Command instead of the image's (a single string is one word: run it
    /// through a shell with `[sh, -c, "…"]` if it needs one).
    pub command: Vec<String>,
}

/// Container network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// Default bridge network.
    #[default]
    Bridge,
    /// No network.
    None,
}

/// Resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Resources {
    /// CPU limit.
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
}

/// A job matrix as written. Values are strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Axes in declaration order with their values.
    pub axes: Vec<(String, Vec<String>)>,
    /// `include` entries (key/value pairs in written order).
    pub include: Vec<Vec<(String, String)>>,
    /// `exclude` entries.
    pub exclude: Vec<Vec<(String, String)>>,
    /// Position of the `matrix` mapping.
    pub pos: Pos,
}

/// A step as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Position of the step.
    pub pos: Pos,
    /// `name:` as written.
    pub name: Option<String>,
    /// `id:`.
    pub id: Option<String>,
    /// What the step does.
    pub action: StepAction,
    /// Step environment (values may contain `${{ }}`).
    pub env: BTreeMap<String, String>,
    /// Step timeout.
    pub timeout: Option<Duration>,
    /// Whether a failure of this step leaves the job successful.
    pub continue_on_error: bool,
    /// `if:` source; `None` means `success()`.
    pub condition: Option<String>,
    /// Working directory relative to the workspace.
    pub working_directory: Option<String>,
    /// Position of the `run:` or `uses:` value.
    pub action_pos: Pos,
    /// Positions of the keys of `with:` (plugin steps), for diagnostics
    /// about the plugin's inputs.
    pub with_pos: BTreeMap<String, Pos>,
    /// `reuse: { key_files }`: the key files (empty: no `reuse:`).
    pub reuse_key_files: Vec<String>,
    /// `allow: { secrets }`: the job's secrets a plugin step gets.
    pub allowed_secrets: Vec<Spanned<String>>,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepAction {
    /// A shell script.
    Run {
        /// The script.
        script: String,
    },
    /// A plugin.
    Uses {
        /// Plugin name.
        plugin: String,
        /// Requested version: `"1"`, `"1.2"`, `"1.2.3"`, or `""` for the newest.
        version: String,
        /// Parameters.
        with: BTreeMap<String, serde_json::Value>,
        /// Whether network access is granted.
        allow_network: bool,
    },
}

/// One `notify:` entry: where to send, and on which outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// The outcomes it is sent for, without duplicates, in written order
    /// (default `[Failure, Fixed]`).
    pub on: Vec<NotifyOn>,
    /// Where it is sent.
    pub channel: Channel,
    /// Where the entry is written.
    pub pos: Pos,
}

/// An outcome a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyOn {
    /// The run (or job) succeeded.
    Success,
    /// The run (or job) failed.
    Failure,
    /// It succeeded after the previous one failed.
    Fixed,
    /// It failed after the previous one succeeded.
    Broken,
}

impl NotifyOn {
    /// Every outcome, in the order of the words in the file format.
    pub const ALL: [NotifyOn; 4] = [NotifyOn::Success, NotifyOn::Failure, NotifyOn::Fixed, NotifyOn::Broken];

    /// The word for it in `on:` (`success`, `failure`, `fixed`, `broken`).
    pub fn word(self) -> &'static str {
        match self {
            NotifyOn::Success => "success",
            NotifyOn::Failure => "failure",
            NotifyOn::Fixed => "fixed",
            NotifyOn::Broken => "broken",
        }
    }

    /// The outcome a word of `on:` names, if any.
    pub fn from_word(w: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.word() == w)
    }
}

/// Where a notification goes. URLs and keys are given as names of secrets,
/// never as values: a pipeline must not compute where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A generic webhook.
    Webhook {
        /// Name of the secret holding the URL.
        url_secret: String,
        /// Name of the secret holding the HMAC key the body is signed with, if any.
        key_secret: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Name of the secret holding the incoming-webhook URL.
        url_secret: String,
    },
    /// A Matrix (hookshot) incoming webhook.
    Matrix {
        /// Name of the secret holding the incoming-webhook URL.
        url_secret: String,
    },
    /// Email.
    Email {
        /// The addresses (1 to 10).
        to: Vec<String>,
    },
}

impl Channel {
    /// `"webhook"`, `"slack"`, `"matrix"` or `"email"`: the key it is written with.
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Slack { .. } => "slack",
            Channel::Matrix { .. } => "matrix",
            Channel::Email { .. } => "email",
        }
    }

    /// The secrets it names (URL, key), in that order; none for email.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Channel::Webhook { url_secret, key_secret } => {
                std::iter::once(url_secret.as_str()).chain(key_secret.as_deref()).collect()
            }
            Channel::Slack { url_secret } | Channel::Matrix { url_secret } => vec![url_secret.as_str()],
            Channel::Email { .. } => Vec::new(),
        }
    }
}
