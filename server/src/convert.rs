//! Stored records → public API messages. The only place that knows both.

use prost_types::Timestamp;
use viaduct_proto::v1::{self, StepPlan, step_plan::Action};

use crate::store::{
    keys::{JobKey, RunId, StepKey},
    records::{
        AttemptRecord, DeployedServiceRecord, DeploymentRecord, EnvironmentRecord, JobRecord, RunRecord, RunnerRecord,
        ServiceHealthRecord, StepRecord,
    },
};

/// A millisecond time as a protobuf timestamp; `None` for 0 ("not yet").
pub fn timestamp(ms: i64) -> Option<Timestamp> {
    (ms > 0).then(|| Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 })
}

fn times(created: i64, started: i64, finished: i64) -> Option<v1::Times> {
    Some(v1::Times { created_at: timestamp(created), started_at: timestamp(started), finished_at: timestamp(finished) })
}

/// Milliseconds since the epoch of `t` (the inverse of [`timestamp`]).
pub fn millis(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos / 1_000_000))
}

/// A run without its jobs.
pub fn run(id: RunId, r: &RunRecord) -> v1::Run {
    v1::Run {
        id: id.to_string(),
        pipeline: r.pipeline.clone(),
        status: r.status,
        priority: r.priority,
        source: r.source.clone(),
        times: times(r.created_ms, r.started_ms, r.finished_ms),
        jobs: Vec::new(),
        error: r.error.clone(),
        inputs: r.inputs.clone(),
        pipeline_ref: r.pipeline_ref.clone(),
        concurrency_group: r.concurrency_group.clone(),
        trust: crate::trust::effective(r.trust) as i32,
        approval: (!r.approval_reason.is_empty()).then(|| v1::Approval {
            reason: r.approval_reason.clone(),
            pending: r.awaiting_approval,
            approved_by: r.approved_by.clone(),
            approved_at: timestamp(r.approved_ms),
        }),
    }
}

/// A job without its steps.
pub fn job(key: JobKey, j: &JobRecord) -> v1::Job {
    v1::Job {
        id: key.to_string(),
        run_id: key.run.to_string(),
        key: j.key.clone(),
        name: j.name.clone(),
        status: j.status,
        matrix: j.matrix.clone(),
        needs: j.needs.iter().map(|n| JobKey::new(key.run, *n).to_string()).collect(),
        runs_on: j.runs_on.clone(),
        priority: j.priority,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
        runner_id: j.runner_id.clone(),
        times: times(j.created_ms, j.started_ms, j.finished_ms),
        steps: Vec::new(),
        message: j.message.clone(),
        image: j.image.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
        previous_attempts: j.previous_attempts.iter().map(attempt).collect(),
        waiting: String::new(),
        environment: j.environment.as_ref().map(|e| e.name.clone()).unwrap_or_default(),
        deployment: j.deployment,
    }
}

/// A deployment record.
pub fn deployment(id: u64, d: &DeploymentRecord) -> v1::Deployment {
    v1::Deployment {
        id,
        repo: d.repo.clone(),
        environment: d.environment.clone(),
        state: d.state,
        message: d.message.clone(),
        run_id: RunId(d.run).to_string(),
        job_id: JobKey::new(RunId(d.run), d.job).to_string(),
        job_name: d.job_name.clone(),
        attempt: d.attempt,
        pipeline: d.pipeline.clone(),
        r#ref: d.git_ref.clone(),
        commit: d.commit.clone(),
        triggered_by: d.triggered_by.clone(),
        approved_by: d.approved_by.clone(),
        approved_at: timestamp(d.approved_ms),
        wait_until: timestamp(d.wait_until_ms),
        times: times(d.created_ms, d.started_ms, d.finished_ms),
        url: d.url.clone(),
        kind: d.kind.clone(),
        source_deployment: d.source_deployment,
        outputs: d.outputs.clone(),
        services: d.services.clone(),
    }
}

/// An environment record (without its deployments).
pub fn environment(repo: &str, name: &str, e: &EnvironmentRecord) -> v1::Environment {
    v1::Environment {
        repo: repo.to_string(),
        name: name.to_string(),
        rules: e.rules.clone(),
        variables: e.variables.clone(),
        url: e.url.clone(),
        description: e.description.clone(),
        current: None,
        open: Vec::new(),
        times: times(e.created_ms, e.updated_ms, 0),
    }
}

/// A deployed service with its health (the history only when asked).
pub fn deployed_service(
    repo: &str,
    environment: &str,
    s: &DeployedServiceRecord,
    health: Option<&ServiceHealthRecord>,
    history: bool,
) -> v1::DeployedService {
    let decl = s.decl.clone().unwrap_or_default();
    v1::DeployedService {
        repo: repo.to_string(),
        environment: environment.to_string(),
        name: decl.name.clone(),
        commit: s.commit.clone(),
        version: s.commit.get(..12).unwrap_or(&s.commit).to_string(),
        deployment: s.deployment,
        endpoints: decl.endpoints.clone(),
        probe: (!decl.probe.is_empty()).then(|| v1::HealthProbe {
            target: decl.probe.clone(),
            interval_seconds: decl.interval_s,
            timeout_seconds: decl.timeout_s,
        }),
        health: health.map_or(v1::Health::Unknown as i32, |h| h.health),
        health_since: health.and_then(|h| timestamp(h.since_ms)),
        history: if history { health.map(|h| h.history.clone()).unwrap_or_default() } else { Vec::new() },
        on_change_pipeline: decl.on_change.clone(),
    }
}

fn attempt(a: &AttemptRecord) -> v1::Attempt {
    v1::Attempt {
        attempt: a.attempt,
        status: a.status,
        runner_id: a.runner_id.clone(),
        times: times(0, a.started_ms, a.finished_ms),
        message: a.message.clone(),
    }
}

/// A step; `log_size` is the live length for a running step.
pub fn step(key: StepKey, s: &StepRecord, log_size: u64) -> v1::Step {
    v1::Step {
        id: key.to_string(),
        job_id: key.job.to_string(),
        index: key.index,
        name: s.name.clone(),
        status: s.status,
        exit_code: s.exit_code,
        times: times(0, s.started_ms, s.finished_ms),
        kind: s.kind.clone(),
        detail: s.detail.clone(),
        log_size,
        summary: s.summary.clone(),
        outputs: s.outputs.clone(),
        message: s.message.clone(),
        attempt: key.attempt,
        snapshot: s.snapshot,
        restored_from: s.restored_from,
    }
}

/// The fresh (pending) record of a planned step.
pub fn new_step(plan: &StepPlan) -> StepRecord {
    let (kind, detail) = match &plan.action {
        Some(Action::Run(r)) => ("run", r.script.clone()),
        Some(Action::Uses(u)) => {
            ("uses", if u.version.is_empty() { u.plugin.clone() } else { format!("{}@{}", u.plugin, u.version) })
        }
        None => ("run", String::new()),
    };
    StepRecord {
        schema: crate::store::records::SCHEMA_VERSION,
        name: plan.name.clone(),
        status: v1::Status::Pending as i32,
        kind: kind.to_string(),
        detail,
        ..Default::default()
    }
}

/// A runner as admins see it.
pub fn runner(id: &str, r: &RunnerRecord, live: Option<LiveRunner>) -> v1::Runner {
    let connected = live.is_some();
    let live = live.unwrap_or_default();
    v1::Runner {
        id: id.to_string(),
        name: r.name.clone(),
        labels: r.labels.clone(),
        slots: r.slots,
        executors: r.executors.clone(),
        connected,
        draining: r.draining,
        jobs: live.jobs,
        last_seen: timestamp(live.last_seen_ms.max(r.last_seen_ms)),
        registered_at: timestamp(r.registered_ms),
        version: r.version.clone(),
        hostname: r.hostname.clone(),
        protected: r.protected,
        allowed_labels: r.allowed_labels.clone(),
        max_slots: r.max_slots,
        allowed_executors: r.allowed_executors.clone(),
        ephemeral: r.ephemeral,
        bound_job: r.bound_job.clone(),
        toolchains: r.toolchains.clone(),
        paused: live.paused,
    }
}

/// What only a connected runner has.
#[derive(Default)]
pub struct LiveRunner {
    /// Ids of jobs it runs.
    pub jobs: Vec<String>,
    /// Its latest heartbeat.
    pub last_seen_ms: i64,
    /// Why it takes no new jobs now (empty: it takes them).
    pub paused: String,
}
