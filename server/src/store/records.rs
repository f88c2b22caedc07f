//! The records stored in sled, one type per tree.
//!
//! Records are protobuf messages (prost derive, explicit tags) so that a
//! newer server reads an older record: fields are only ever added with new
//! tags, never renumbered. Each carries `schema` (currently
//! [`SCHEMA_VERSION`]) for the day a change cannot be expressed that way.
//! Where a record holds the same thing as the public API (a step's plan,
//! the run source) it embeds the public message rather than a copy of it.
//!
//! Times are milliseconds since the Unix epoch; 0 means "not yet".

use std::collections::HashMap;

use viaduct_proto::v1::{
    Artifact, AuditEntry, CacheEntry, Executor, ExprContext, Grant, ImagePlan, Plugin, PullRequestPolicy, RunEvent,
    RunSource, SecretScope, ServicePlan, SourcePlan, Status, StepPlan, Trust,
};

/// The schema version written into every record.
pub const SCHEMA_VERSION: u32 = 1;

/// A run: `runs` tree, key [`RunId::key`](super::keys::RunId::key).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The pipeline's `name:`.
    #[prost(string, tag = "2")]
    pub pipeline: String,
    /// Current state.
    #[prost(enumeration = "Status", tag = "3")]
    pub status: i32,
    /// 0–10.
    #[prost(uint32, tag = "4")]
    pub priority: u32,
    /// What started it.
    #[prost(message, optional, tag = "5")]
    pub source: Option<RunSource>,
    /// When it was accepted.
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
    /// When its first job was assigned.
    #[prost(int64, tag = "7")]
    pub started_ms: i64,
    /// When its last job finished.
    #[prost(int64, tag = "8")]
    pub finished_ms: i64,
    /// Why it failed before any job ran.
    #[prost(string, tag = "9")]
    pub error: String,
    /// `${{ inputs.* }}` values.
    #[prost(map = "string, string", tag = "10")]
    pub inputs: HashMap<String, String>,
    /// The stored pipeline it was triggered from.
    #[prost(string, tag = "11")]
    pub pipeline_ref: String,
    /// Interpolated `concurrency.group`.
    #[prost(string, tag = "12")]
    pub concurrency_group: String,
    /// `concurrency.cancel_in_progress`.
    #[prost(bool, tag = "13")]
    pub cancel_in_progress: bool,
    /// Number of jobs (their indices are 1..=job_count).
    #[prost(uint32, tag = "14")]
    pub job_count: u32,
    /// A cancel was requested; unfinished jobs end as cancelled.
    #[prost(bool, tag = "15")]
    pub cancel_requested: bool,
    /// The pipeline file text it was planned from (UTF-8; shared, not
    /// copied, when a transition copies the record: a 1,000-job file is
    /// ~60 KB, and every job's start reads its run).
    #[prost(bytes = "bytes", tag = "16")]
    pub yaml: bytes::Bytes,
    /// Waiting for an older run of its concurrency group to finish.
    #[prost(bool, tag = "17")]
    pub group_blocked: bool,
    /// How far its code is trusted (`Trust`; unspecified in runs recorded
    /// before trust existed, which were all trusted).
    #[prost(enumeration = "Trust", tag = "18")]
    pub trust: i32,
    /// Why it needed approval; empty when it did not.
    #[prost(string, tag = "19")]
    pub approval_reason: String,
    /// Waiting for approval: no job starts until then.
    #[prost(bool, tag = "20")]
    pub awaiting_approval: bool,
    /// Who approved it, and when (ms).
    #[prost(string, tag = "21")]
    pub approved_by: String,
    /// When it was approved (ms).
    #[prost(int64, tag = "22")]
    pub approved_ms: i64,
    /// Times it was retried (`Runs.Retry`): each ending of it is its own
    /// root span in the run's trace.
    #[prost(uint32, tag = "23")]
    pub retried: u32,
    /// Its repository has a forge connection: its states and its jobs'
    /// become commit statuses (see `engine::commit_status`).
    #[prost(bool, tag = "24")]
    pub reports_status: bool,
    /// Its `notify:` rules (see `engine::notifications`).
    #[prost(message, repeated, tag = "25")]
    pub notify: Vec<NotifyRule>,
    /// A job that fails keeps its live environment on its runner for a
    /// while (`keep_on_failure`), for a debug shell.
    #[prost(bool, tag = "26")]
    pub keep_on_failure: bool,
}

/// A job: `jobs` tree, key [`JobKey::key`](super::keys::JobKey::key).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Key in the pipeline file.
    #[prost(string, tag = "2")]
    pub key: String,
    /// Display name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Current state.
    #[prost(enumeration = "Status", tag = "4")]
    pub status: i32,
    /// Matrix values of this expansion.
    #[prost(map = "string, string", tag = "5")]
    pub matrix: HashMap<String, String>,
    /// 1-based indices of the jobs it needs.
    #[prost(uint32, repeated, tag = "6")]
    pub needs: Vec<u32>,
    /// Required runner labels.
    #[prost(string, repeated, tag = "7")]
    pub runs_on: Vec<String>,
    /// 0–10.
    #[prost(uint32, tag = "8")]
    pub priority: u32,
    /// Current attempt, 1-based.
    #[prost(uint32, tag = "9")]
    pub attempt: u32,
    /// 1 + retries.
    #[prost(uint32, tag = "10")]
    pub max_attempts: u32,
    /// Runner of the current attempt.
    #[prost(string, tag = "11")]
    pub runner_id: String,
    /// When it was planned.
    #[prost(int64, tag = "12")]
    pub created_ms: i64,
    /// When the current attempt was assigned.
    #[prost(int64, tag = "13")]
    pub started_ms: i64,
    /// When it reached its final state.
    #[prost(int64, tag = "14")]
    pub finished_ms: i64,
    /// Explanation of the status.
    #[prost(string, tag = "15")]
    pub message: String,
    /// Container image, if any.
    #[prost(message, optional, tag = "16")]
    pub image: Option<ImagePlan>,
    /// Finished earlier attempts.
    #[prost(message, repeated, tag = "17")]
    pub previous_attempts: Vec<AttemptRecord>,
    /// `if:` source; empty = success().
    #[prost(string, tag = "18")]
    pub condition: String,
    /// Job env (pipeline env merged in, matrix interpolated).
    #[prost(map = "string, string", tag = "19")]
    pub env: HashMap<String, String>,
    /// Job timeout; 0 = none.
    #[prost(uint64, tag = "20")]
    pub timeout_ms: u64,
    /// The steps as planned.
    #[prost(message, repeated, tag = "21")]
    pub steps: Vec<StepPlan>,
    /// Secret names it may read.
    #[prost(string, repeated, tag = "22")]
    pub secrets: Vec<String>,
    /// Artifact paths (globs).
    #[prost(string, repeated, tag = "23")]
    pub artifacts: Vec<String>,
    /// A failure of this job does not fail the run.
    #[prost(bool, tag = "24")]
    pub continue_on_error: bool,
    /// A failure cancels its matrix siblings.
    #[prost(bool, tag = "25")]
    pub fail_fast: bool,
    /// The matrix job key it was expanded from (empty when not a matrix).
    #[prost(string, tag = "26")]
    pub matrix_group: String,
    /// A cancel was requested while it ran.
    #[prost(bool, tag = "27")]
    pub cancel_requested: bool,
    /// Not dispatched before this time (retry backoff); 0 = now.
    #[prost(int64, tag = "28")]
    pub not_before_ms: i64,
    /// When it entered the queue (for aging).
    #[prost(int64, tag = "29")]
    pub queued_ms: i64,
    /// Expression context values (branch, event, matrix, …).
    #[prost(message, optional, tag = "30")]
    pub context: Option<ExprContext>,
    /// `retries:` as written (automatic retries after each manual retry).
    #[prost(uint32, tag = "31")]
    pub retries: u32,
    /// The code to check out, for runs of a repository.
    #[prost(message, optional, tag = "32")]
    pub source: Option<SourcePlan>,
    /// Sidecar containers.
    #[prost(message, repeated, tag = "33")]
    pub services: Vec<ServicePlan>,
    /// Container network mode ("bridge", "none").
    #[prost(string, tag = "34")]
    pub network: String,
    /// CPU limit (0 = runner default).
    #[prost(double, tag = "35")]
    pub cpus: f64,
    /// Memory limit in bytes (0 = runner default).
    #[prost(uint64, tag = "36")]
    pub memory_bytes: u64,
    /// The run's pipeline name (plugin metadata, cache scope).
    #[prost(string, tag = "37")]
    pub pipeline: String,
    /// The run is untrusted (copied from the run for dispatch).
    #[prost(bool, tag = "38")]
    pub untrusted: bool,
    /// The runner process it was given to (`Hello.instance`): a runner
    /// that comes back as that same process without the job never got it.
    #[prost(string, tag = "39")]
    pub runner_instance: String,
    /// Its states become commit statuses (copied from the run).
    #[prost(bool, tag = "40")]
    pub reports_status: bool,
    /// Its `notify:` rules.
    #[prost(message, repeated, tag = "41")]
    pub notify: Vec<NotifyRule>,
    /// Skipped because a job it needs did not succeed (not because its own
    /// `if:` was false): reported to forges as a failure.
    #[prost(bool, tag = "42")]
    pub blocked: bool,
    /// Keeps workspace snapshots after its steps (`snapshots:`, else the
    /// server's default; pinned at launch).
    #[prost(bool, tag = "43")]
    pub snapshots: bool,
    /// This attempt resumes from a snapshot of an earlier one.
    #[prost(message, optional, tag = "44")]
    pub resume: Option<ResumeRecord>,
    /// This attempt starts from an earlier run's snapshot (`reuse:`), as
    /// `RunnerAgent.FindReuse` found it: the snapshot's step key.
    #[prost(bytes = "vec", tag = "45")]
    pub reused_from: Vec<u8>,
    /// The environment it deploys to (`environment:`).
    #[prost(message, optional, tag = "46")]
    pub environment: Option<JobEnvironment>,
    /// Its current deployment record (`deployments` tree), 0 before it has
    /// one.
    #[prost(uint64, tag = "47")]
    pub deployment: u64,
    /// Jobs (public ids, `run.index`) whose artifacts it gets before its
    /// first step.
    #[prost(string, repeated, tag = "48")]
    pub artifacts_from: Vec<String>,
}

/// Where a job deploys (`environment:` as planned).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobEnvironment {
    /// The environment's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Where the deployment can be seen.
    #[prost(string, tag = "2")]
    pub url: String,
    /// Services it runs, registered when it succeeds.
    #[prost(message, repeated, tag = "3")]
    pub services: Vec<ServiceDecl>,
    /// A promotion or rollback: the deployment it deploys again.
    #[prost(uint64, tag = "4")]
    pub source_deployment: u64,
    /// "deploy", "promote" or "rollback".
    #[prost(string, tag = "5")]
    pub kind: String,
}

/// A service a deployment declares (`environment.services[]`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceDecl {
    /// Unique in the environment.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Where it answers.
    #[prost(string, repeated, tag = "2")]
    pub endpoints: Vec<String>,
    /// Probe target (`http(s)://…`, `tcp://host:port`); empty: not probed.
    #[prost(string, tag = "3")]
    pub probe: String,
    /// Seconds between probes.
    #[prost(uint32, tag = "4")]
    pub interval_s: u32,
    /// Seconds per probe.
    #[prost(uint32, tag = "5")]
    pub timeout_s: u32,
    /// A stored pipeline started when its health changes.
    #[prost(string, tag = "6")]
    pub on_change: String,
}

/// An environment of a repository: `environments` tree, key `repo \0 name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnvironmentRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Its protection rules.
    #[prost(message, optional, tag = "2")]
    pub rules: Option<viaduct_proto::v1::EnvironmentRules>,
    /// Variables given to deploying jobs.
    #[prost(map = "string, string", tag = "3")]
    pub variables: HashMap<String, String>,
    /// Shown with it.
    #[prost(string, tag = "4")]
    pub url: String,
    /// Shown with it.
    #[prost(string, tag = "5")]
    pub description: String,
    /// Created (ms).
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
    /// Last changed (ms).
    #[prost(int64, tag = "7")]
    pub updated_ms: i64,
}

/// A deployment: `deployments` tree, key the id (big-endian); indexed by
/// `deployment_index` (`repo \0 environment \0 id`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeploymentRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The repository.
    #[prost(string, tag = "2")]
    pub repo: String,
    /// The environment.
    #[prost(string, tag = "3")]
    pub environment: String,
    /// `DeploymentState`.
    #[prost(enumeration = "viaduct_proto::v1::DeploymentState", tag = "4")]
    pub state: i32,
    /// Why it waits, or how it ended.
    #[prost(string, tag = "5")]
    pub message: String,
    /// The deploying job.
    #[prost(uint64, tag = "6")]
    pub run: u64,
    /// Its index in the run.
    #[prost(uint32, tag = "7")]
    pub job: u32,
    /// Its name.
    #[prost(string, tag = "8")]
    pub job_name: String,
    /// The job's attempt that deploys.
    #[prost(uint32, tag = "9")]
    pub attempt: u32,
    /// The run's pipeline.
    #[prost(string, tag = "10")]
    pub pipeline: String,
    /// The run's ref.
    #[prost(string, tag = "11")]
    pub git_ref: String,
    /// The commit.
    #[prost(string, tag = "12")]
    pub commit: String,
    /// Who started the run.
    #[prost(string, tag = "13")]
    pub triggered_by: String,
    /// Who approved it.
    #[prost(string, tag = "14")]
    pub approved_by: String,
    /// When (ms).
    #[prost(int64, tag = "15")]
    pub approved_ms: i64,
    /// Not started before (ms; the wait timer).
    #[prost(int64, tag = "16")]
    pub wait_until_ms: i64,
    /// Created (ms).
    #[prost(int64, tag = "17")]
    pub created_ms: i64,
    /// Its job started (ms).
    #[prost(int64, tag = "18")]
    pub started_ms: i64,
    /// Ended (ms).
    #[prost(int64, tag = "19")]
    pub finished_ms: i64,
    /// Where it can be seen.
    #[prost(string, tag = "20")]
    pub url: String,
    /// "deploy", "promote" or "rollback".
    #[prost(string, tag = "21")]
    pub kind: String,
    /// What a promotion or rollback deploys again.
    #[prost(uint64, tag = "22")]
    pub source_deployment: u64,
    /// Outputs of its plugin steps, `<step>.<name>`.
    #[prost(map = "string, string", tag = "23")]
    pub outputs: HashMap<String, String>,
    /// Services it registered.
    #[prost(string, repeated, tag = "24")]
    pub services: Vec<String>,
    /// Approved (or needing none), waiting for the environment's
    /// deployment in progress to end.
    #[prost(bool, tag = "25")]
    pub held: bool,
    /// The role an approver needs (`Role`, unspecified: none needed),
    /// pinned when it was created.
    #[prost(int32, tag = "26")]
    pub approval_role: i32,
    /// Who started the run as the server knows them — a person through the
    /// API, by hand or by a push over HTTP — or empty when it cannot know
    /// (a push over the filesystem, a forge's webhook, a schedule): what
    /// `prevent_self_approval` compares with.
    #[prost(string, tag = "27")]
    pub starter: String,
}

/// A service a deployment registered: `deployed_services` tree, key `repo
/// \0 environment \0 name`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeployedServiceRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// As declared.
    #[prost(message, optional, tag = "2")]
    pub decl: Option<ServiceDecl>,
    /// What its last successful deployment deployed.
    #[prost(string, tag = "3")]
    pub commit: String,
    /// That deployment.
    #[prost(uint64, tag = "4")]
    pub deployment: u64,
    /// Registered (ms).
    #[prost(int64, tag = "5")]
    pub registered_ms: i64,
    /// What registered it, `pipeline \0 job key`: that job's next success
    /// replaces what it registered.
    #[prost(string, tag = "6")]
    pub origin: String,
}

/// A deployed service's health as probed: `service_health` tree, same key
/// as `deployed_services` (written by the prober only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ServiceHealthRecord {
    /// `Health`.
    #[prost(enumeration = "viaduct_proto::v1::Health", tag = "1")]
    pub health: i32,
    /// Since when (ms).
    #[prost(int64, tag = "2")]
    pub since_ms: i64,
    /// The last probes, newest first (at most 100).
    #[prost(message, repeated, tag = "3")]
    pub history: Vec<viaduct_proto::v1::ProbeResult>,
}

/// Where a resumed attempt starts: the snapshot after `after_step` of
/// attempt `from_attempt` (the steps up to it are not run again).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResumeRecord {
    /// The snapshot's step.
    #[prost(uint32, tag = "1")]
    pub after_step: u32,
    /// The attempt that took it.
    #[prost(uint32, tag = "2")]
    pub from_attempt: u32,
}

/// A workspace snapshot after a step (`snapshots` tree, key
/// [`StepKey::key`](super::keys::StepKey::key)): the manifest blob and
/// the packs it names (see `snapshots`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotRecord {
    /// Schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The manifest (`viaduct.v1.SnapshotManifest`, encoded).
    #[prost(string, tag = "2")]
    pub manifest: String,
    /// Every pack the manifest names (blobs the sweep keeps).
    #[prost(string, repeated, tag = "3")]
    pub packs: Vec<String>,
    /// Bytes of new content this snapshot stored (its own pack).
    #[prost(uint64, tag = "4")]
    pub pack_size: u64,
    /// Bytes of all files of the workspace.
    #[prost(uint64, tag = "5")]
    pub total_size: u64,
    /// When it was taken.
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
    /// The run's repository and pipeline, `repo \0 pipeline` (retention
    /// keeps the last runs of each).
    #[prost(string, tag = "7")]
    pub pipeline: String,
}

/// One `notify:` entry of a run or job: where to tell, on which outcomes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyRule {
    /// Outcomes: "success", "failure", "fixed", "broken".
    #[prost(string, repeated, tag = "1")]
    pub on: Vec<String>,
    /// "webhook", "slack", "matrix" or "email".
    #[prost(string, tag = "2")]
    pub kind: String,
    /// Webhooks, Slack, Matrix: the secret holding the URL.
    #[prost(string, tag = "3")]
    pub url_secret: String,
    /// Webhooks: the secret holding the HMAC key (empty: unsigned).
    #[prost(string, tag = "4")]
    pub key_secret: String,
    /// Email: the addresses.
    #[prost(string, repeated, tag = "5")]
    pub to: Vec<String>,
}

/// A notification waiting to be sent: `notify_outbox` tree, key = sequence
/// (big-endian; as `StatusRecord`'s). Written in the transition that ended
/// the run or job (see `engine::notifications`), deleted once sent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotificationRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Where it goes.
    #[prost(message, optional, tag = "2")]
    pub rule: Option<NotifyRule>,
    /// "success", "failure", "fixed" or "broken".
    #[prost(string, tag = "3")]
    pub event: String,
    /// The run.
    #[prost(string, tag = "4")]
    pub run_id: String,
    /// The job; empty for a run's notification.
    #[prost(string, tag = "5")]
    pub job_id: String,
    /// The run's pipeline.
    #[prost(string, tag = "6")]
    pub pipeline: String,
    /// The job's name.
    #[prost(string, tag = "7")]
    pub job_name: String,
    /// The run's or job's final state (`v1::Status`).
    #[prost(int32, tag = "8")]
    pub status: i32,
    /// Why it ended so (first line).
    #[prost(string, tag = "9")]
    pub message: String,
    /// What the run ran.
    #[prost(message, optional, tag = "10")]
    pub source: Option<viaduct_proto::v1::RunSource>,
    /// When it started and ended (ms).
    #[prost(int64, tag = "11")]
    pub started_ms: i64,
    /// See `started_ms`.
    #[prost(int64, tag = "12")]
    pub finished_ms: i64,
    /// A run's jobs: id, name, state.
    #[prost(message, repeated, tag = "13")]
    pub jobs: Vec<JobBrief>,
}

/// A job in a run's notification.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobBrief {
    /// Its id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Its name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its state (`v1::Status`).
    #[prost(int32, tag = "3")]
    pub status: i32,
}

/// A finished earlier attempt of a job.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttemptRecord {
    /// 1-based.
    #[prost(uint32, tag = "1")]
    pub attempt: u32,
    /// Its final state.
    #[prost(enumeration = "Status", tag = "2")]
    pub status: i32,
    /// Where it ran.
    #[prost(string, tag = "3")]
    pub runner_id: String,
    /// Assigned.
    #[prost(int64, tag = "4")]
    pub started_ms: i64,
    /// Finished.
    #[prost(int64, tag = "5")]
    pub finished_ms: i64,
    /// Explanation.
    #[prost(string, tag = "6")]
    pub message: String,
}

/// A step of one attempt: `steps` tree, key
/// [`StepKey::key`](super::keys::StepKey::key).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StepRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Display name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Current state.
    #[prost(enumeration = "Status", tag = "3")]
    pub status: i32,
    /// Exit code of its process.
    #[prost(int32, optional, tag = "4")]
    pub exit_code: Option<i32>,
    /// Started.
    #[prost(int64, tag = "5")]
    pub started_ms: i64,
    /// Finished.
    #[prost(int64, tag = "6")]
    pub finished_ms: i64,
    /// "run" or "uses".
    #[prost(string, tag = "7")]
    pub kind: String,
    /// Script or plugin reference.
    #[prost(string, tag = "8")]
    pub detail: String,
    /// Final log size (set when the step finishes).
    #[prost(uint64, tag = "9")]
    pub log_size: u64,
    /// Plugin markdown summary.
    #[prost(string, tag = "10")]
    pub summary: String,
    /// Named outputs.
    #[prost(map = "string, string", tag = "11")]
    pub outputs: HashMap<String, String>,
    /// Explanation.
    #[prost(string, tag = "12")]
    pub message: String,
    /// A snapshot of the workspace after this step is kept.
    #[prost(bool, tag = "13")]
    pub snapshot: bool,
    /// Not run in this attempt: restored from this earlier attempt's
    /// snapshot.
    #[prost(uint32, tag = "14")]
    pub restored_from: u32,
}

/// A finished step's log packed into one blob (see `packed_logs`):
/// `packed_logs` tree, key [`StepKey::key`](super::keys::StepKey::key).
/// The blob is a sequence of zstd frames, each holding the log's chunks
/// (time, length, bytes) from `offsets[i]` on; frame `i` is bytes
/// `starts[i]..starts[i + 1]` of the blob (the last ends at `packed_size`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PackedLogRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The blob (`blake3:…`).
    #[prost(string, tag = "2")]
    pub digest: String,
    /// The log's length in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// The blob's length in bytes.
    #[prost(uint64, tag = "4")]
    pub packed_size: u64,
    /// Log offset where each frame starts.
    #[prost(uint64, repeated, tag = "5")]
    pub offsets: Vec<u64>,
    /// Blob offset where each frame starts.
    #[prost(uint64, repeated, tag = "6")]
    pub starts: Vec<u64>,
}

/// A commit's source archive in the blob store (see `source_archives`):
/// `source_archives` tree, key `repo \0 commit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceArchiveRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The blob (`blake3:…`).
    #[prost(string, tag = "2")]
    pub digest: String,
    /// Last fetched (ms since the epoch; noted at most hourly).
    #[prost(int64, tag = "3")]
    pub used_ms: i64,
    /// Bytes of the archive (0 in records from before it was kept: noted
    /// at their next fetch).
    #[prost(uint64, tag = "4")]
    pub size: u64,
}

/// A repository: `repos` tree, key = name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepoRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// "hosted" or "mirror".
    #[prost(string, tag = "2")]
    pub kind: String,
    /// Mirrors: the remote URL.
    #[prost(string, tag = "3")]
    pub url: String,
    /// Default branch (for schedules and manual triggers).
    #[prost(string, tag = "4")]
    pub default_branch: String,
    /// Mirrors: webhook secret.
    #[prost(string, tag = "5")]
    pub webhook_secret: String,
    /// Mirrors: seconds between polls, 0 = none.
    #[prost(uint32, tag = "6")]
    pub poll_interval_s: u32,
    /// Created.
    #[prost(int64, tag = "7")]
    pub created_ms: i64,
    /// Last fetch or ref scan.
    #[prost(int64, tag = "8")]
    pub last_sync_ms: i64,
    /// Why the last fetch failed.
    #[prost(string, tag = "9")]
    pub last_error: String,
    /// The refs present when the mirror was first fetched were recorded
    /// without starting runs (only later moves start runs).
    #[prost(bool, tag = "10")]
    pub baselined: bool,
    /// Mirrors: the name of the secret fetches authenticate with.
    #[prost(string, tag = "11")]
    pub credentials: String,
    /// Who is trusted to run pull requests; `None`: the default policy.
    #[prost(message, optional, tag = "12")]
    pub pull_requests: Option<PullRequestPolicy>,
    /// How long its runs are kept; `None`: the server's defaults.
    #[prost(message, optional, tag = "13")]
    pub retention: Option<viaduct_proto::v1::RetentionPolicy>,
    /// Mirrors: the forge its runs report commit statuses to.
    #[prost(message, optional, tag = "14")]
    pub forge: Option<viaduct_proto::v1::ForgeConnection>,
}

/// A commit status — or a deployment's state (`deployment` ≠ 0) — waiting
/// to be sent to a repository's forge: `status_outbox` tree, key `repo \0
/// sequence` (big-endian; the event cursor of the change it reports).
/// Written in the transition whose state it reports (see
/// `engine::commit_status`), deleted once the forge accepted it or a newer
/// status of the same context (see `forges`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// The commit it is about.
    #[prost(string, tag = "2")]
    pub commit: String,
    /// The ref the run was for (GitLab's `ref`).
    #[prost(string, tag = "3")]
    pub git_ref: String,
    /// The run's pipeline name.
    #[prost(string, tag = "4")]
    pub pipeline: String,
    /// The job's name; empty for the run's own status.
    #[prost(string, tag = "5")]
    pub job: String,
    /// The run's or job's state (`v1::Status`).
    #[prost(int32, tag = "6")]
    pub status: i32,
    /// What the forge shows next to it (at most 140 characters).
    #[prost(string, tag = "7")]
    pub description: String,
    /// The run.
    #[prost(string, tag = "8")]
    pub run_id: String,
    /// The job's id (for the link); empty for the run.
    #[prost(string, tag = "9")]
    pub job_id: String,
    /// When the state was reached (ms).
    #[prost(int64, tag = "10")]
    pub time_ms: i64,
    /// The job's attempt, or 1 + the times the run was retried: a check run
    /// is per attempt, as GitHub's re-runs are.
    #[prost(uint32, tag = "11")]
    pub attempt: u32,
    /// The deployment whose state this reports (to the forge's deployments
    /// API); 0 for a commit status.
    #[prost(uint64, tag = "12")]
    pub deployment: u64,
    /// The deployment's environment ("" for a commit status).
    #[prost(string, tag = "13")]
    pub environment: String,
    /// The deployment's state (`v1::DeploymentState`); `status` then holds
    /// the nearest run state, for logs.
    #[prost(int32, tag = "14")]
    pub deployment_state: i32,
    /// Where the deployed environment can be seen ("" when unknown).
    #[prost(string, tag = "15")]
    pub environment_url: String,
}

/// How reporting to a repository's forge went: `forge_delivery` tree, key =
/// repository name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForgeDeliveryRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Why an attempt last failed (kept after later successes).
    #[prost(string, tag = "2")]
    pub last_error: String,
    /// When it failed (ms).
    #[prost(int64, tag = "3")]
    pub last_error_ms: i64,
    /// When the forge last accepted a status (ms).
    #[prost(int64, tag = "4")]
    pub last_delivered_ms: i64,
    /// Statuses accepted, ever.
    #[prost(uint64, tag = "5")]
    pub delivered: u64,
}

/// The events of one transition: `events` tree, key = the cursor of its
/// first event (big-endian). Cursors are dense across batches.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventBatch {
    /// In cursor order.
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<RunEvent>,
}

/// A queued job: `queue` tree, key (255 − priority, enqueue sequence).
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueueRecord {
    /// [`JobKey::key`](super::keys::JobKey::key) bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub job: Vec<u8>,
    /// Enqueue time.
    #[prost(int64, tag = "2")]
    pub queued_ms: i64,
}

/// A runner: `runners` tree, key = runner id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunnerRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Chosen name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Labels its current connection uses (its Hello's, within
    /// `allowed_labels`).
    #[prost(string, repeated, tag = "3")]
    pub labels: Vec<String>,
    /// Host it last connected from.
    #[prost(string, tag = "4")]
    pub hostname: String,
    /// Registered.
    #[prost(int64, tag = "5")]
    pub registered_ms: i64,
    /// Last connected or disconnected.
    #[prost(int64, tag = "6")]
    pub last_seen_ms: i64,
    /// Takes no new jobs.
    #[prost(bool, tag = "7")]
    pub draining: bool,
    /// Slots from its latest Hello.
    #[prost(uint32, tag = "8")]
    pub slots: u32,
    /// Executors from its latest Hello.
    #[prost(enumeration = "Executor", repeated, tag = "15")]
    pub executors: Vec<i32>,
    /// `executors` as words, in records from before they were an enum
    /// (`Engine::open` rewrites such records).
    #[prost(string, repeated, tag = "9")]
    pub executor_words: Vec<String>,
    /// Runner version.
    #[prost(string, tag = "10")]
    pub version: String,
    /// Takes only jobs of trusted runs (set at registration).
    #[prost(bool, tag = "11")]
    pub protected: bool,
    /// Labels it may advertise, pinned at registration (an admin changes
    /// them). Empty in records from before pinning: its next Hello pins them.
    #[prost(string, repeated, tag = "12")]
    pub allowed_labels: Vec<String>,
    /// Most slots it may use (0: not pinned yet, as above).
    #[prost(uint32, tag = "13")]
    pub max_slots: u32,
    /// Executors it may offer (empty: not pinned yet, as above).
    #[prost(enumeration = "Executor", repeated, tag = "16")]
    pub allowed_executors: Vec<i32>,
    /// `allowed_executors` as words, as above.
    #[prost(string, repeated, tag = "14")]
    pub allowed_executor_words: Vec<String>,
    /// Takes one job, then drains; removed once that job is reported and
    /// it has disconnected.
    #[prost(bool, tag = "17")]
    pub ephemeral: bool,
    /// The one job it may take (from a job-bound registration token);
    /// empty: any.
    #[prost(string, tag = "18")]
    pub bound_job: String,
    /// Toolchain labels it found on its machine (`rust:1.95`…), checked
    /// with `viaduct_pipeline::toolchains::is_label`; matched like labels.
    #[prost(string, repeated, tag = "19")]
    pub toolchains: Vec<String>,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum TokenKind {
    /// Unknown (never written).
    Unspecified = 0,
    /// Every API call.
    Admin = 1,
    /// Registers runners (RunnerAgent.Register only).
    Registration = 2,
    /// One runner's Connect stream.
    Runner = 3,
    /// An API token with grants.
    Api = 4,
    /// A web UI session after single sign-on (a user's, short-lived).
    Session = 5,
}

/// A credential: `tokens` tree, key = blake3 hash of the token.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// What it allows.
    #[prost(enumeration = "TokenKind", tag = "2")]
    pub kind: i32,
    /// For runner tokens: the runner.
    #[prost(string, tag = "3")]
    pub runner_id: String,
    /// Registration tokens: may be used more than once.
    #[prost(bool, tag = "4")]
    pub reusable: bool,
    /// Created.
    #[prost(int64, tag = "5")]
    pub created_ms: i64,
    /// Free-form note ("first-start admin token", …).
    #[prost(string, tag = "6")]
    pub note: String,
    /// Its name (shown in lists and the audit log).
    #[prost(string, tag = "7")]
    pub name: String,
    /// The user it acts for; empty for service tokens.
    #[prost(string, tag = "8")]
    pub owner: String,
    /// What it may do (API tokens; admin tokens are all of it).
    #[prost(message, repeated, tag = "9")]
    pub grants: Vec<Grant>,
    /// When it stops working (ms); 0: never.
    #[prost(int64, tag = "10")]
    pub expires_ms: i64,
    /// Registration tokens: registrations left.
    #[prost(uint32, tag = "11")]
    pub uses_left: u32,
    /// Last used (ms), written back now and then.
    #[prost(int64, tag = "12")]
    pub last_used_ms: i64,
    /// Public id (`tok_…`), for listing and revoking.
    #[prost(string, tag = "13")]
    pub id: String,
    /// Registration tokens bound to one job (`42.1`): the runner it
    /// registers takes that job only.
    #[prost(string, tag = "14")]
    pub job: String,
}

/// A person: `users` tree, key = login.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UserRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Shown name.
    #[prost(string, tag = "2")]
    pub display_name: String,
    /// What they may do.
    #[prost(message, repeated, tag = "3")]
    pub grants: Vec<Grant>,
    /// "local" or "oidc".
    #[prost(string, tag = "4")]
    pub source: String,
    /// Created (ms).
    #[prost(int64, tag = "5")]
    pub created_ms: i64,
    /// Single sign-on groups of the last login.
    #[prost(string, repeated, tag = "6")]
    pub groups: Vec<String>,
}

/// A privileged action: `audit` tree, key = id (big-endian).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuditRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// What the API shows.
    #[prost(message, optional, tag = "2")]
    pub entry: Option<AuditEntry>,
    /// When (ms).
    #[prost(int64, tag = "3")]
    pub time_ms: i64,
}

/// A stored pipeline: `pipelines` tree, key = name.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PipelineRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// YAML text.
    #[prost(string, tag = "2")]
    pub yaml: String,
    /// Created.
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
    /// Last updated.
    #[prost(int64, tag = "4")]
    pub updated_ms: i64,
    /// Job keys in file order.
    #[prost(string, repeated, tag = "5")]
    pub jobs: Vec<String>,
    /// How long its runs are kept; `None`: its repository's or the
    /// server's.
    #[prost(message, optional, tag = "6")]
    pub retention: Option<viaduct_proto::v1::RetentionPolicy>,
}

/// A published plugin version: `plugins` tree, key `name \0 version`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Manifest, digest, size, time.
    #[prost(message, optional, tag = "2")]
    pub plugin: Option<Plugin>,
    /// The manifest as published.
    #[prost(string, tag = "3")]
    pub manifest_toml: String,
}

/// A cache entry: `caches` tree, key `scope \0 branch \0 kind key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CacheRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// What the API shows.
    #[prost(message, optional, tag = "2")]
    pub entry: Option<CacheEntry>,
    /// The blob holding it.
    #[prost(string, tag = "3")]
    pub digest: String,
    /// Last restore (ms); `entry.last_used_at` mirrors it.
    #[prost(int64, tag = "4")]
    pub last_used_ms: i64,
    /// Saved (ms).
    #[prost(int64, tag = "5")]
    pub created_ms: i64,
}

/// A job's artifact: `artifacts` tree, key (run, job index, name).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ArtifactRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// What the API shows (times are filled in on read).
    #[prost(message, optional, tag = "2")]
    pub artifact: Option<Artifact>,
    /// Uploaded (ms).
    #[prost(int64, tag = "3")]
    pub created_ms: i64,
}

/// A secret: `secrets` tree, key the name. (Records written before scopes
/// existed are `created ‖ updated ‖ sealed` without a protobuf frame; they
/// start with a zero byte, which no record of this type does, and read as
/// unscoped secrets.)
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecretRecord {
    /// Record schema version.
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    /// Created (ms).
    #[prost(int64, tag = "2")]
    pub created_ms: i64,
    /// Last replaced (ms).
    #[prost(int64, tag = "3")]
    pub updated_ms: i64,
    /// `nonce ‖ ciphertext` (XChaCha20-Poly1305, the name as associated data).
    #[prost(bytes = "vec", tag = "4")]
    pub sealed: Vec<u8>,
    /// Which runs may have it.
    #[prost(message, optional, tag = "5")]
    pub scope: Option<SecretScope>,
}

/// What a walk over many runs reads of a [`RunRecord`] (retention, stats):
/// the same tags, only the fields it needs — prost skips the others (the
/// pipeline file above all), so a page of runs stays small.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunHead {
    /// `RunRecord::pipeline`.
    #[prost(string, tag = "2")]
    pub pipeline: String,
    /// `RunRecord::status`.
    #[prost(enumeration = "Status", tag = "3")]
    pub status: i32,
    /// `RunRecord::source`.
    #[prost(message, optional, tag = "5")]
    pub source: Option<RunSource>,
    /// `RunRecord::created_ms`.
    #[prost(int64, tag = "6")]
    pub created_ms: i64,
    /// `RunRecord::finished_ms`.
    #[prost(int64, tag = "8")]
    pub finished_ms: i64,
    /// `RunRecord::pipeline_ref`.
    #[prost(string, tag = "11")]
    pub pipeline_ref: String,
    /// `RunRecord::error` (why it failed before any job).
    #[prost(string, tag = "9")]
    pub error: String,
    /// `RunRecord::job_count`.
    #[prost(uint32, tag = "14")]
    pub job_count: u32,
}

impl RunHead {
    /// Its repository (empty for runs without one).
    pub fn repo(&self) -> &str {
        self.source.as_ref().map_or("", |s| s.repo.as_str())
    }

    /// The pipeline it counts under: a stored pipeline's name, else its
    /// file's `name:`.
    pub fn pipeline_name(&self) -> &str {
        if self.pipeline_ref.is_empty() { &self.pipeline } else { &self.pipeline_ref }
    }
}

/// A job's key, name and state, without the rest (for a notification's
/// list of jobs and the job of an earlier run).
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobName {
    /// `JobRecord::key`.
    #[prost(string, tag = "2")]
    pub key: String,
    /// `JobRecord::name`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `JobRecord::status`.
    #[prost(enumeration = "Status", tag = "4")]
    pub status: i32,
}

/// What stats read of a [`JobRecord`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobHead {
    /// `JobRecord::status`.
    #[prost(enumeration = "Status", tag = "4")]
    pub status: i32,
    /// `JobRecord::runs_on`.
    #[prost(string, repeated, tag = "7")]
    pub runs_on: Vec<String>,
    /// `JobRecord::started_ms` (assigned).
    #[prost(int64, tag = "13")]
    pub started_ms: i64,
    /// `JobRecord::queued_ms`.
    #[prost(int64, tag = "29")]
    pub queued_ms: i64,
    /// `JobRecord::not_before_ms` (retry backoff).
    #[prost(int64, tag = "28")]
    pub not_before_ms: i64,
}

impl JobHead {
    /// How long it waited for a runner: from when it could be dispatched
    /// (queued, or its retry backoff ended) to its assignment.
    pub fn queue_wait_ms(&self) -> Option<u64> {
        queue_wait_ms(self.queued_ms, self.not_before_ms, self.started_ms)
    }
}

/// From when a job could be dispatched (`queued_ms`, or `not_before_ms`
/// when its retry backoff ended later) to `started_ms`; `None` before it
/// was assigned.
pub fn queue_wait_ms(queued_ms: i64, not_before_ms: i64, started_ms: i64) -> Option<u64> {
    let ready = queued_ms.max(not_before_ms);
    (queued_ms > 0 && started_ms >= ready).then(|| u64::try_from(started_ms - ready).unwrap_or(0))
}
