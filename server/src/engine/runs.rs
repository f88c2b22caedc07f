//! Creating runs from a plan, and the run-level operations of the API
//! (cancel, retry).
//!
//! The engine takes a [`NewRun`] — plain data, already validated and
//! expanded (matrix, `needs` as indices) by `launch::resolve` — and
//! writes the run, its jobs and their first attempt's steps in one durable
//! transition. From then on the run survives a crash of anything.

use std::collections::HashMap;

use viaduct_proto::{
    StatusWord,
    v1::{ExprContext, ImagePlan, RunSource, ServicePlan, SourcePlan, Status, StepPlan, Trust},
};

use super::{Engine, lifecycle::index as step_index};
use crate::{
    convert,
    error::{Error, Result},
    store::{
        T, WriteSet,
        keys::{JobKey, RunId},
        records::{JobEnvironment, JobRecord, NotifyRule, RunRecord, SCHEMA_VERSION},
    },
};

/// A run to create.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    /// The pipeline's name.
    pub pipeline: String,
    /// 0–10.
    pub priority: u32,
    /// What started it.
    pub source: RunSource,
    /// `${{ inputs.* }}`.
    pub inputs: HashMap<String, String>,
    /// The pipeline text.
    pub yaml: String,
    /// Stored pipeline name, if triggered from one.
    pub pipeline_ref: String,
    /// Interpolated concurrency group and cancel-in-progress.
    pub concurrency: Option<(String, bool)>,
    /// Jobs in plan order.
    pub jobs: Vec<NewJob>,
    /// Set for a run that fails before any job (an invalid pipeline file
    /// at a pushed commit): the run is recorded as failed with this error.
    pub error: Option<String>,
    /// The code every job checks out (runs of a repository).
    pub checkout: Option<SourcePlan>,
    /// How far its code is trusted (see `trust`).
    pub trust: Trust,
    /// Why it must wait for approval before any job starts; `None`: it
    /// starts at once.
    pub approval: Option<String>,
    /// The submit's key (caller and request id, hashed): a second create
    /// with it returns the first run (see `SubmitRequest.request_id`).
    pub request_key: Option<[u8; 32]>,
    /// Its states and its jobs' become commit statuses (its repository has
    /// a forge connection; see `commit_status`).
    pub reports_status: bool,
    /// Its `notify:` rules (see `notifications`).
    pub notify: Vec<NotifyRule>,
    /// A job that fails keeps its live environment for a debug shell.
    pub keep_on_failure: bool,
}

/// How long a submit's key is remembered.
pub const REQUEST_KEY_TTL_MS: i64 = 24 * 3600 * 1000;

/// A job of a [`NewRun`].
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// Key in the file.
    pub key: String,
    /// Display name.
    pub name: String,
    /// Matrix values.
    pub matrix: HashMap<String, String>,
    /// 1-based indices of jobs it needs (all smaller or larger, no cycles).
    pub needs: Vec<u32>,
    /// `if:` source, empty = success().
    pub condition: String,
    /// Runner labels.
    pub runs_on: Vec<String>,
    /// Container image.
    pub image: Option<ImagePlan>,
    /// Job timeout, 0 = none.
    pub timeout_ms: u64,
    /// Extra attempts on failure.
    pub retries: u32,
    /// 0–10.
    pub priority: u32,
    /// Env (pipeline + job).
    pub env: HashMap<String, String>,
    /// Secret names.
    pub secrets: Vec<String>,
    /// Steps.
    pub steps: Vec<StepPlan>,
    /// Artifact globs.
    pub artifacts: Vec<String>,
    /// Failure does not fail the run.
    pub continue_on_error: bool,
    /// Cancel matrix siblings on failure.
    pub fail_fast: bool,
    /// Matrix job key, empty when not a matrix.
    pub matrix_group: String,
    /// Expression context values.
    pub context: ExprContext,
    /// Its `notify:` rules.
    pub notify: Vec<NotifyRule>,
    /// `snapshots:` (`None`: the server's default).
    pub snapshots: Option<bool>,
    /// Sidecar containers.
    pub services: Vec<ServicePlan>,
    /// Container network mode.
    pub network: String,
    /// CPU limit, 0 = runner default.
    pub cpus: f64,
    /// Memory limit in bytes, 0 = runner default.
    pub memory_bytes: u64,
    /// The environment it deploys to.
    pub environment: Option<JobEnvironment>,
    /// Jobs whose artifacts it gets before its first step.
    pub artifacts_from: Vec<ArtifactsFrom>,
}

/// A job whose artifacts another job gets (`artifacts_from:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactsFrom {
    /// A job of the same run, by 1-based index.
    Index(u32),
    /// A job of an earlier run (a promotion or rollback deploys its
    /// artifacts again), by public id.
    Job(String),
}

impl Engine {
    /// Creates a run; it is durable when this returns.
    pub async fn create_run(&self, new: NewRun) -> Result<RunId> {
        self.create_run_with(new, WriteSet::default()).await
    }

    /// Creates a run and, in the same transaction, applies `extra` — the
    /// trigger's own bookkeeping (the ref tip it acted on, a webhook delivery
    /// id, a schedule slot), so a trigger can neither start a run twice nor
    /// be recorded without its run, whatever crashes when.
    pub async fn create_run_with(&self, new: NewRun, extra: WriteSet) -> Result<RunId> {
        if new.jobs.is_empty() && new.error.is_none() {
            return Err(Error::invalid("a run needs at least one job"));
        }
        self.sh.cfg.room.check()?;
        let (id, ticket) = self.transition(|t| {
            let now = self.sh.now_ms();
            if let Some(key) = &new.request_key
                && let Some(seen) = t.store().tree(T::SubmitKeys).get(key)?
            {
                let first = seen.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                tracing::info!(run = first, "a submit sent again: the run it made is returned");
                return Ok(RunId(first));
            }
            t.writes().extend(extra);
            let id = next_run_id(t)?;
            if let Some(key) = &new.request_key {
                let mut value = Vec::with_capacity(16);
                value.extend_from_slice(&id.0.to_be_bytes());
                value.extend_from_slice(&now.to_be_bytes());
                t.writes().put_raw(T::SubmitKeys, key, value);
            }
            let (group, cancel_in_progress) = new.concurrency.clone().unwrap_or_default();
            // A run can only name groups of its own repository (and pull
            // request): see `trust::concurrency_group`.
            let group = crate::trust::concurrency_group(&new.source, &group);
            let untrusted = new.trust == Trust::Untrusted;
            let facts = crate::trust::RunFacts {
                source: &new.source,
                pipeline: &new.pipeline,
                trust: if untrusted { Trust::Untrusted } else { Trust::Trusted },
                environment: None,
            };
            let run = RunRecord {
                schema: SCHEMA_VERSION,
                pipeline: new.pipeline.clone(),
                status: Status::Queued as i32,
                priority: new.priority,
                source: Some(new.source.clone()),
                created_ms: now,
                inputs: new.inputs.clone(),
                pipeline_ref: new.pipeline_ref.clone(),
                concurrency_group: group.clone(),
                cancel_in_progress,
                job_count: new.jobs.len() as u32,
                yaml: bytes::Bytes::from(new.yaml.clone()),
                trust: if new.trust == Trust::Unspecified { Trust::Trusted as i32 } else { new.trust as i32 },
                approval_reason: new.approval.clone().unwrap_or_default(),
                awaiting_approval: new.approval.is_some(),
                reports_status: new.reports_status,
                notify: new.notify.clone(),
                keep_on_failure: new.keep_on_failure,
                ..Default::default()
            };
            t.insert_run(id, run);
            if let Some(error) = &new.error {
                let r = t.run(id)?;
                r.status = Status::Failure as i32;
                r.error.clone_from(error);
                r.finished_ms = now;
                return Ok(id);
            }
            if !group.is_empty() && t.supersede(id, &group, cancel_in_progress)? {
                t.run(id)?.group_blocked = true;
            }
            for (i, j) in new.jobs.iter().enumerate() {
                let key = JobKey::new(id, step_index(i));
                let mut rec = job_record(j, &new.pipeline, now);
                rec.artifacts_from = j
                    .artifacts_from
                    .iter()
                    .map(|a| match a {
                        ArtifactsFrom::Index(i) => JobKey::new(id, *i).to_string(),
                        ArtifactsFrom::Job(job) => job.clone(),
                    })
                    .collect();
                // An untrusted run keeps none: it could fill the server's
                // disk (it may still start from a trusted run's, `reuse:`).
                rec.snapshots = j.snapshots.unwrap_or(t.sh.cfg.snapshots) && !untrusted;
                rec.source.clone_from(&new.checkout);
                rec.untrusted = untrusted;
                rec.reports_status = new.reports_status;
                // Told at once; enforced when it would start (see
                // `Tx::make_ready`) and again at dispatch.
                let scope_of = |name: &str| crate::secrets::SecretBox::scope(t.store(), name);
                if let Some(why) = crate::trust::job_refusal(&rec, &facts, scope_of)? {
                    tracing::info!(run = %id, job = %j.key, refused = %why, "job refused when planned");
                    rec.message = format!("will not run: {why}");
                }
                t.insert_job(key, rec);
                for (s, plan) in j.steps.iter().enumerate() {
                    t.insert_step(key.step(1, step_index(s)), convert::new_step(plan));
                }
            }
            let run = t.run(id)?;
            if !run.group_blocked && !run.awaiting_approval {
                t.start_roots(id)?;
            }
            t.rollup(id)?;
            t.dispatch()?;
            Ok(id)
        })?;
        self.store().wait_durable(ticket).await;
        tracing::info!(run = %id, pipeline = %new.pipeline, jobs = new.jobs.len(), "run created");
        Ok(id)
    }

    /// Forgets submit keys older than [`REQUEST_KEY_TTL_MS`] (hourly).
    pub fn prune_request_keys(&self) -> Result<usize> {
        let cutoff = self.sh.now_ms() - REQUEST_KEY_TTL_MS;
        let mut ws = crate::store::WriteSet::default();
        let mut n = 0;
        for kv in self.store().tree(T::SubmitKeys).iter() {
            let (k, v) = kv?;
            let at = v.get(8..16).and_then(|b| b.try_into().ok()).map_or(0, i64::from_be_bytes);
            if at < cutoff {
                ws.delete(T::SubmitKeys, k);
                n += 1;
            }
        }
        self.store().commit(&ws)?;
        Ok(n)
    }

    /// Runs still awaiting approval that were accepted before `cutoff_ms`
    /// (through the status index: only runs that have not started).
    pub fn unapproved_before(&self, cutoff_ms: i64) -> Result<Vec<RunId>> {
        let mut out = Vec::new();
        for status in [Status::Unspecified, Status::Pending, Status::Queued] {
            for id in super::index::scan(self.store(), super::index::Field::Status, &[status as u8], None) {
                let id = id?;
                let run: Option<RunRecord> = self.store().get(T::Runs, id.key())?;
                if run.is_some_and(|r| r.awaiting_approval && r.created_ms < cutoff_ms) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Cancels run `id`, saying `why`, if it still awaits approval and was
    /// accepted before `cutoff_ms` — checked in the transition, so a run
    /// approved since it was found runs; whether it did.
    pub async fn expire_unapproved(&self, id: RunId, cutoff_ms: i64, why: &str) -> Result<bool> {
        let (expired, ticket) = self.transition(|t| {
            let run = t.run(id)?;
            if !run.awaiting_approval || run.created_ms >= cutoff_ms || run.status().is_terminal() {
                return Ok(false);
            }
            t.cancel_run(id, why)?;
            Ok(true)
        })?;
        self.store().wait_durable(ticket).await;
        Ok(expired)
    }

    /// Cancels a run's unfinished jobs, saying `why` (e.g. "cancelled by
    /// alice"). A finished run is left as it is.
    pub async fn cancel_run(&self, id: RunId, why: &str) -> Result<()> {
        let ((), ticket) = self.transition(|t| t.cancel_run(id, why))?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// Cancels one job of a run, saying `why` (a finished job is left as
    /// it is).
    pub async fn cancel_job(&self, key: JobKey, why: &str) -> Result<()> {
        let ((), ticket) = self.transition(|t| {
            t.job(key)?;
            t.cancel_job(key, why)?;
            t.rollup(key.run)
        })?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// Lets a run that waits for approval start (`by` names who approved).
    pub async fn approve_run(&self, id: RunId, by: &str) -> Result<()> {
        let ((), ticket) = self.transition(|t| {
            let run = t.run(id)?;
            if !run.awaiting_approval {
                let why = if run.approval_reason.is_empty() {
                    format!("run {id} does not need approval")
                } else {
                    format!("run {id} was already approved by {}", run.approved_by)
                };
                return Err(Error::FailedPrecondition(why));
            }
            run.awaiting_approval = false;
            run.approved_by = by.to_string();
            run.approved_ms = self.sh.now_ms();
            let blocked = run.group_blocked;
            let cancelled = run.status().is_terminal();
            tracing::info!(run = %id, by, "run approved");
            if !blocked && !cancelled {
                t.start_roots(id)?;
            }
            t.rollup(id)?;
            t.dispatch()
        })?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// Re-runs the jobs of a finished run that did not succeed.
    /// With `from`, failed jobs resume from a workspace snapshot (see
    /// `snapshots`) instead of running all their steps again.
    /// With `keep_on_failure`, a job that fails again keeps its live
    /// environment for a debug shell.
    pub async fn retry_run(
        &self,
        id: RunId,
        from: Option<&super::snapshots::ResumeFrom>,
        keep_on_failure: bool,
    ) -> Result<()> {
        self.sh.cfg.room.check()?;
        let ((), ticket) = self.transition(|t| {
            t.run(id)?.keep_on_failure = keep_on_failure;
            t.retry_run(id, from)
        })?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }
}

fn next_run_id(t: &mut super::tx::Tx<'_>) -> Result<RunId> {
    const KEY: &[u8] = b"next_run_id";
    let next = match t.store().tree(T::Meta).get(KEY)? {
        Some(v) => u64::from_be_bytes(v.as_slice().try_into().unwrap_or([0; 8])),
        None => 1,
    };
    t.writes().put_raw(T::Meta, KEY, (next + 1).to_be_bytes().to_vec());
    Ok(RunId(next))
}

fn job_record(j: &NewJob, pipeline: &str, now: i64) -> JobRecord {
    JobRecord {
        schema: SCHEMA_VERSION,
        pipeline: pipeline.to_string(),
        key: j.key.clone(),
        name: j.name.clone(),
        status: Status::Pending as i32,
        matrix: j.matrix.clone(),
        needs: j.needs.clone(),
        runs_on: j.runs_on.clone(),
        priority: j.priority,
        attempt: 1,
        max_attempts: j.retries + 1,
        retries: j.retries,
        created_ms: now,
        image: j.image.clone(),
        condition: j.condition.clone(),
        env: j.env.clone(),
        timeout_ms: j.timeout_ms,
        steps: j.steps.clone(),
        secrets: j.secrets.clone(),
        artifacts: j.artifacts.clone(),
        continue_on_error: j.continue_on_error,
        fail_fast: j.fail_fast,
        matrix_group: j.matrix_group.clone(),
        context: Some(j.context.clone()),
        services: j.services.clone(),
        network: j.network.clone(),
        cpus: j.cpus,
        memory_bytes: j.memory_bytes,
        notify: j.notify.clone(),
        environment: j.environment.clone(),
        ..Default::default()
    }
}
