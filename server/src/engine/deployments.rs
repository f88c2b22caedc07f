//! Deployments: the gates a job with `environment:` passes before it is
//! queued, and its deployment record, kept in step with the job in the
//! same transitions.
//!
//! ```text
//! job ready ──environment missing / ref not admitted──▶ refused (job fails)
//!     │
//!     ├─ approval_role set ──▶ waiting ──Approve──┐      ──Reject──▶ cancelled (job fails)
//!     │                                          ▼
//!     └──────────────────────────────────────▶ queued: wait_until = now + wait timer;
//!                                                held while another deployment of the
//!                                                environment is queued or in progress
//!                                                (or, with cancel_in_progress, that one
//!                                                is cancelled); then the job is enqueued,
//!                                                not before wait_until
//!                                                   │ assigned
//!                                                   ▼
//!                                               in_progress ──job final──▶ success | failure | cancelled
//! ```
//! An environment runs one deployment at a time: when one ends, the oldest
//! held one of its environment starts. A deployment that succeeds becomes
//! the environment's current one and registers the services its
//! `environment.services` declare (`deployed_services`), in the same
//! commit. Automatic retries of the job stay in the same deployment; a
//! `Runs.Retry` makes a new one, through the gates again.

use std::collections::{BTreeSet, HashMap};

use viaduct_proto::{
    RoleWord as _,
    v1::{DeploymentState, Role, Status},
};

use super::tx::Tx;
use crate::{
    error::{Error, Result},
    store::{
        T, WriteSet,
        keys::{JobKey, RunId},
        records::{DeployedServiceRecord, DeploymentRecord, EnvironmentRecord, SCHEMA_VERSION},
    },
    trust,
};

/// Most services an environment holds (its deployments' together).
const MAX_SERVICES: usize = 50;
/// Most outputs a deployment record keeps (of its job's steps).
const MAX_OUTPUTS: usize = 100;
/// Longest output value kept.
const MAX_OUTPUT_LEN: usize = 1024;

/// `repo \0 name`: the key of an environment (and the prefix of its
/// deployments and services, with a trailing `\0`).
pub fn environment_key(repo: &str, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.len() + name.len() + 1);
    k.extend_from_slice(repo.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// `repo \0 environment \0`: the prefix of its deployments and services.
pub fn environment_prefix(repo: &str, name: &str) -> Vec<u8> {
    let mut k = environment_key(repo, name);
    k.push(0);
    k
}

/// The key of a deployment in `deployment_index`.
fn index_key(d: &DeploymentRecord, id: u64) -> Vec<u8> {
    let mut k = environment_prefix(&d.repo, &d.environment);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The id at the end of an index key.
pub fn id_of_index_key(k: &[u8]) -> u64 {
    k.len().checked_sub(8).and_then(|at| k.get(at..)).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// Whether a deployment is over.
pub fn is_final(state: i32) -> bool {
    matches!(
        DeploymentState::try_from(state),
        Ok(DeploymentState::Success | DeploymentState::Failure | DeploymentState::Cancelled | DeploymentState::Refused)
    )
}

/// Writes a changed deployment record, its index entry and its place among
/// the open ones (`Tx::commit`).
pub(crate) fn write(ws: &mut WriteSet, id: u64, rec: &DeploymentRecord) {
    ws.put(T::Deployments, id.to_be_bytes(), rec);
    let key = index_key(rec, id);
    // The value says whether it is still open: the gates read the open
    // ones of an environment through it.
    let open = if is_final(rec.state) { Vec::new() } else { vec![1] };
    ws.put_raw(T::DeploymentIndex, key, open);
}

/// Who started a run, as a deployment records it: the sender (a person
/// through the API or by hand, a pull request's author on the forge), else
/// the commit's author.
fn started_by(source: &viaduct_proto::v1::RunSource) -> String {
    if source.sender.is_empty() { source.author.clone() } else { source.sender.clone() }
}

/// Who started a run as the server itself knows them (see
/// `DeploymentRecord::starter`): the sender of a run started through the
/// API, by hand, by a push over HTTP, or of a promotion or rollback — not a
/// pull request's (a forge login) nor a commit's author.
fn verified_starter(source: &viaduct_proto::v1::RunSource, kind: &str) -> String {
    let redeploy = matches!(kind, "promote" | "rollback");
    if source.event == "pull_request" && !redeploy { String::new() } else { source.sender.clone() }
}

impl Tx<'_> {
    /// An environment as stored (environments change outside transitions,
    /// through the API).
    fn environment_record(&self, repo: &str, name: &str) -> Result<Option<EnvironmentRecord>> {
        self.store().get(T::Environments, environment_key(repo, name))
    }

    /// A job that deploys is ready to run: records its deployment and puts
    /// it through the environment's gates (see the module docs).
    pub(crate) fn open_deployment(&mut self, key: JobKey) -> Result<()> {
        let job = self.job_ref(key)?.clone();
        let Some(target) = job.environment.clone() else { return self.enqueue(key, 0) };
        let run = self.run(key.run)?.clone();
        let source = run.source.clone().unwrap_or_default();
        let env = if source.repo.is_empty() { None } else { self.environment_record(&source.repo, &target.name)? };
        let rules = env.as_ref().and_then(|e| e.rules.clone()).unwrap_or_default();
        let now = self.sh.now_ms();
        let id = self.st.next_deployment;
        self.st.next_deployment += 1;
        let url = match (&target.url, &env) {
            (u, _) if !u.is_empty() => u.clone(),
            (_, Some(e)) => e.url.clone(),
            _ => String::new(),
        };
        let mut d = DeploymentRecord {
            schema: SCHEMA_VERSION,
            repo: source.repo.clone(),
            environment: target.name.clone(),
            state: DeploymentState::Queued as i32,
            run: key.run.0,
            job: key.index,
            job_name: job.name.clone(),
            attempt: job.attempt,
            pipeline: run.pipeline.clone(),
            git_ref: source.r#ref.clone(),
            commit: source.commit.clone(),
            triggered_by: started_by(&source),
            created_ms: now,
            url,
            kind: if target.kind.is_empty() { "deploy".into() } else { target.kind.clone() },
            source_deployment: target.source_deployment,
            approval_role: rules.approval_role,
            starter: verified_starter(&source, &target.kind),
            ..Default::default()
        };
        self.job(key)?.deployment = id;
        let facts = trust::RunFacts {
            source: &source,
            pipeline: &run.pipeline,
            trust: trust::effective(run.trust),
            environment: Some(&target.name),
        };
        let refusal = match &env {
            _ if source.repo.is_empty() => trust::deployment_refusal(&target.name, &rules, &facts),
            None => Some(format!(
                "environment `{}` does not exist in repository `{}` (create it: viaduct environments put {} {})",
                target.name, source.repo, source.repo, target.name
            )),
            Some(_) => trust::deployment_refusal(&target.name, &rules, &facts),
        };
        if let Some(why) = refusal {
            tracing::info!(job = %key, deployment = id, environment = %target.name, refused = %why, "deployment refused");
            d.state = DeploymentState::Refused as i32;
            d.message.clone_from(&why);
            d.finished_ms = now;
            self.insert_deployment(id, d);
            return self.finish_job(key, Status::Failure, &why);
        }
        let role = Role::try_from(rules.approval_role).unwrap_or(Role::Unspecified);
        tracing::info!(job = %key, deployment = id, environment = %target.name, "deployment opened");
        if role != Role::Unspecified {
            d.state = DeploymentState::Waiting as i32;
            d.message = format!("waiting for approval by a person with the {} role on `{}`", role.word(), d.repo);
            self.insert_deployment(id, d);
            self.job(key)?.message = format!(
                "waiting for approval to deploy to `{}` (deployment {id}: viaduct deployments approve {id})",
                target.name
            );
            return Ok(());
        }
        self.insert_deployment(id, d);
        self.proceed_deployment(id)
    }

    /// A deployment approved, or needing no approval: it waits for the
    /// wait timer and for its environment.
    fn proceed_deployment(&mut self, id: u64) -> Result<()> {
        let d = self.deployment(id)?.clone();
        let rules = self.environment_record(&d.repo, &d.environment)?.and_then(|e| e.rules).unwrap_or_default();
        let now = self.sh.now_ms();
        let d = self.deployment(id)?;
        d.state = DeploymentState::Queued as i32;
        d.held = true;
        d.message.clear();
        if rules.wait_seconds > 0 {
            let wait = rules.wait_seconds.min(trust::MAX_WAIT_SECONDS);
            d.wait_until_ms = now + i64::try_from(wait * 1000).unwrap_or(i64::MAX / 2);
        }
        if rules.cancel_in_progress {
            let (repo, env) = (d.repo.clone(), d.environment.clone());
            for other in self.open_deployments(&repo, &env)? {
                if other >= id {
                    continue;
                }
                let o = self.deployment(other)?.clone();
                let why = format!("superseded by deployment {id} to `{env}` (cancel_in_progress)");
                tracing::info!(deployment = other, by = id, "deployment superseded");
                self.cancel_job(JobKey::new(RunId(o.run), o.job), &why)?;
            }
        }
        let (repo, env, key) = {
            let d = self.deployment(id)?;
            (d.repo.clone(), d.environment.clone(), JobKey::new(RunId(d.run), d.job))
        };
        self.release_environment(&repo, &env)?;
        if self.deployment(id)?.held {
            let why = self.held_message(id)?;
            self.job(key)?.message = why;
        }
        Ok(())
    }

    /// The open deployments of an environment, oldest first: the stored
    /// ones, with this transition's changes.
    fn open_deployments(&mut self, repo: &str, env: &str) -> Result<Vec<u64>> {
        let prefix = environment_prefix(repo, env);
        let mut ids = BTreeSet::new();
        for item in self.store().tree(T::DeploymentIndex).scan_prefix(&prefix) {
            let (k, v) = item?;
            if !v.is_empty() {
                ids.insert(id_of_index_key(&k));
            }
        }
        ids.extend(self.deployments_seen().filter(|(_, d)| d.repo == repo && d.environment == env).map(|(id, _)| id));
        let mut open = Vec::new();
        for id in ids {
            if !is_final(self.deployment(id)?.state) {
                open.push(id);
            }
        }
        Ok(open)
    }

    /// Starts the oldest held deployment of an environment, unless one of
    /// its deployments is queued for a runner or in progress.
    fn release_environment(&mut self, repo: &str, env: &str) -> Result<()> {
        let mut next = None;
        for id in self.open_deployments(repo, env)? {
            let d = self.deployment(id)?;
            match DeploymentState::try_from(d.state) {
                Ok(DeploymentState::InProgress) => return Ok(()),
                Ok(DeploymentState::Queued) if !d.held => return Ok(()),
                Ok(DeploymentState::Queued) if next.is_none() => next = Some(id),
                _ => {}
            }
        }
        let Some(id) = next else { return Ok(()) };
        let d = self.deployment(id)?;
        d.held = false;
        let (key, until) = (JobKey::new(RunId(d.run), d.job), d.wait_until_ms);
        let now = self.sh.now_ms();
        if self.job_ref(key)?.status() != Status::Pending {
            return Ok(());
        }
        tracing::info!(deployment = id, environment = env, job = %key, "deployment may start");
        self.job(key)?.message = if until > now {
            format!("waiting for the wait timer of `{env}` (deployment {id})")
        } else {
            String::new()
        };
        self.enqueue(key, if until > now { until } else { 0 })
    }

    /// What a held deployment's job shows: what it waits for.
    fn held_message(&mut self, id: u64) -> Result<String> {
        let d = self.deployment(id)?.clone();
        let busy = self
            .open_deployments(&d.repo, &d.environment)?
            .into_iter()
            .find(|o| *o != id)
            .map_or_else(String::new, |o| format!(": deployment {o} goes first"));
        Ok(format!("waiting for `{}`{busy}", d.environment))
    }

    /// Its job was assigned to a runner: the deployment is in progress.
    pub(crate) fn start_deployment(&mut self, key: JobKey) -> Result<()> {
        let job = self.job(key)?;
        let (id, attempt) = (job.deployment, job.attempt);
        if id == 0 {
            return Ok(());
        }
        let now = self.sh.now_ms();
        let d = self.deployment(id)?;
        if is_final(d.state) {
            return Ok(());
        }
        d.state = DeploymentState::InProgress as i32;
        d.attempt = attempt;
        d.message.clear();
        if d.started_ms == 0 {
            d.started_ms = now;
        }
        Ok(())
    }

    /// Its job ended: so does the deployment (a success becomes the
    /// environment's current one and registers its services), and the next
    /// held deployment of the environment may start.
    pub(crate) fn end_deployment(&mut self, key: JobKey) -> Result<()> {
        let job = self.job_ref(key)?.clone();
        if job.deployment == 0 || is_final(self.deployment(job.deployment)?.state) {
            return Ok(());
        }
        let id = job.deployment;
        let state = match job.status() {
            Status::Success => DeploymentState::Success,
            Status::Failure | Status::TimedOut | Status::RunnerLost => DeploymentState::Failure,
            _ => DeploymentState::Cancelled,
        };
        let mut outputs = HashMap::new();
        for i in 0..job.steps.len() {
            let step = self.step(key.step(job.attempt, super::lifecycle::index(i)))?;
            for (name, value) in &step.outputs {
                if outputs.len() < MAX_OUTPUTS && value.len() <= MAX_OUTPUT_LEN {
                    outputs.insert(format!("{}.{name}", i + 1), value.clone());
                }
            }
        }
        let now = self.sh.now_ms();
        let d = self.deployment(id)?;
        d.state = state as i32;
        d.message.clone_from(&job.message);
        d.finished_ms = now;
        d.attempt = job.attempt;
        d.held = false;
        d.outputs = outputs;
        let d = d.clone();
        tracing::info!(job = %key, deployment = id, environment = %d.environment, state = ?state, "deployment ended");
        if state == DeploymentState::Success
            && let Some(env) = &job.environment
        {
            let prefix = environment_prefix(&d.repo, &d.environment);
            let origin = format!("{}\0{}", d.pipeline, job.key);
            // What this job registered before and no longer declares goes;
            // an environment holds at most MAX_SERVICES.
            let mut others = 0;
            let mut gone = Vec::new();
            for item in self.store().tree(T::DeployedServices).scan_prefix(&prefix) {
                let (k, v) = item?;
                let old: DeployedServiceRecord = crate::store::decode(T::DeployedServices, &v)?;
                let name = old.decl.as_ref().map_or("", |d| d.name.as_str());
                if old.origin != origin {
                    others += 1;
                } else if !env.services.iter().any(|s| s.name == name) {
                    gone.push(k);
                }
            }
            for k in gone {
                self.writes().delete(T::DeployedServices, &k);
                self.writes().delete(T::ServiceHealth, &k);
            }
            let mut names = Vec::new();
            for decl in env.services.iter().take(MAX_SERVICES.saturating_sub(others)) {
                let mut k = prefix.clone();
                k.extend_from_slice(decl.name.as_bytes());
                let rec = DeployedServiceRecord {
                    schema: SCHEMA_VERSION,
                    decl: Some(decl.clone()),
                    commit: d.commit.clone(),
                    deployment: id,
                    registered_ms: now,
                    origin: origin.clone(),
                };
                self.writes().put(T::DeployedServices, k, &rec);
                names.push(decl.name.clone());
            }
            // The prober is woken once this is committed (`Tx::commit`).
            self.deployment(id)?.services = names;
        }
        self.release_environment(&d.repo, &d.environment)
    }

    /// Approves (or rejects) a deployment waiting for approval. The caller
    /// checked the role and the self-approval rule.
    pub(crate) fn review_deployment(&mut self, id: u64, actor: &str, approve: bool, comment: &str) -> Result<()> {
        let now = self.sh.now_ms();
        let d = self.deployment(id)?;
        if d.state != DeploymentState::Waiting as i32 {
            let state = DeploymentState::try_from(d.state).map_or("unknown", |s| s.as_str_name());
            return Err(Error::precondition(format!(
                "deployment {id} does not wait for approval (it is {})",
                state.trim_start_matches("DEPLOYMENT_STATE_").to_ascii_lowercase()
            )));
        }
        let key = JobKey::new(RunId(d.run), d.job);
        let env = d.environment.clone();
        let note = if comment.is_empty() { String::new() } else { format!(": {comment}") };
        if approve {
            d.approved_by = actor.to_string();
            d.approved_ms = now;
            tracing::info!(deployment = id, actor, "deployment approved");
            self.job(key)?.message.clear();
            self.proceed_deployment(id)?;
        } else {
            d.state = DeploymentState::Cancelled as i32;
            d.message = format!("rejected by {actor}{note}");
            d.finished_ms = now;
            tracing::info!(deployment = id, actor, "deployment rejected");
            self.finish_job(key, Status::Failure, &format!("the deployment to `{env}` was rejected by {actor}{note}"))?;
        }
        self.dispatch()
    }

    /// The variables of the environment a job deploys to.
    pub(crate) fn environment_variables(
        &self,
        job: &crate::store::records::JobRecord,
        run: &crate::store::records::RunRecord,
    ) -> Result<HashMap<String, String>> {
        let (Some(target), Some(source)) = (&job.environment, &run.source) else { return Ok(HashMap::new()) };
        let mut vars = match self.environment_record(&source.repo, &target.name)? {
            Some(env) => env.variables,
            None => HashMap::new(),
        };
        vars.insert("VIADUCT_ENVIRONMENT".into(), target.name.clone());
        vars.insert("VIADUCT_DEPLOYMENT".into(), job.deployment.to_string());
        Ok(vars)
    }
}

impl super::Engine {
    /// The deployments waiting for approval since before `cutoff_ms`.
    pub fn deployments_waiting_before(&self, cutoff_ms: i64) -> Result<Vec<u64>> {
        let store = self.store();
        let mut out = Vec::new();
        for item in store.tree(T::DeploymentIndex).iter() {
            let (k, open) = item?;
            if open.is_empty() {
                continue;
            }
            let id = id_of_index_key(&k);
            let Some(d) = store.get::<crate::store::records::DeploymentRecord>(T::Deployments, id.to_be_bytes())?
            else {
                continue;
            };
            if d.state == DeploymentState::Waiting as i32 && d.created_ms < cutoff_ms {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Cancels deployment `id` (and fails its job), saying `why`, if it
    /// still waits for approval since before `cutoff_ms` — checked in the
    /// transition, so one approved since it was found goes on; whether it
    /// did.
    pub async fn expire_deployment(&self, id: u64, cutoff_ms: i64, why: &str) -> Result<bool> {
        let (expired, ticket) = self.transition(|t| {
            let now = t.sh.now_ms();
            let d = t.deployment(id)?;
            if d.state != DeploymentState::Waiting as i32 || d.created_ms >= cutoff_ms {
                return Ok(false);
            }
            d.state = DeploymentState::Cancelled as i32;
            d.message = why.to_string();
            d.finished_ms = now;
            let key = JobKey::new(RunId(d.run), d.job);
            let env = d.environment.clone();
            t.finish_job(key, Status::Failure, &format!("the deployment to `{env}` was {why}"))?;
            Ok(true)
        })?;
        self.store().wait_durable(ticket).await;
        Ok(expired)
    }

    /// Deletes an environment and the services registered in it, in a
    /// transition: refused while one of its deployments is unfinished (so
    /// none can open, under rules that vanish, meanwhile).
    pub async fn delete_environment(&self, repo: &str, name: &str) -> Result<()> {
        let ((), ticket) = self.transition(|t| {
            let key = environment_key(repo, name);
            if t.store().get::<EnvironmentRecord>(T::Environments, &key)?.is_none() {
                return Err(Error::not_found(format!("environment `{name}` of repository `{repo}` not found")));
            }
            if let Some(id) = t.open_deployments(repo, name)?.first() {
                return Err(Error::precondition(format!(
                    "deployment {id} to `{name}` is unfinished: let it end, or cancel its run, first"
                )));
            }
            let services: Vec<Vec<u8>> = t
                .store()
                .tree(T::DeployedServices)
                .scan_prefix(environment_prefix(repo, name))
                .map(|kv| kv.map(|(k, _)| k))
                .collect::<Result<_>>()?;
            t.writes().delete(T::Environments, key);
            for k in services {
                t.writes().delete(T::ServiceHealth, &k);
                t.writes().delete(T::DeployedServices, &k);
            }
            tracing::info!(repo, environment = name, "environment deleted");
            Ok(())
        })?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// Approves or rejects deployment `id` as `actor` (who the API checked
    /// may); durable when this returns.
    pub async fn review_deployment(&self, id: u64, actor: &str, approve: bool, comment: &str) -> Result<()> {
        let ((), ticket) = self.transition(|t| t.review_deployment(id, actor, approve, comment))?;
        self.store().wait_durable(ticket).await;
        Ok(())
    }

    /// Deploys again to `to` what successful deployment `source` deployed
    /// — its job as pinned (commit, steps, plugin digests, image) with the
    /// artifacts its job got — as a new run of one job (`kind`: "promote"
    /// or "rollback"), subject to `to`'s rules like any deployment.
    pub async fn redeploy(&self, source: u64, to: &str, kind: &str, actor: &str) -> Result<RunId> {
        let store = self.store();
        let src: crate::store::records::DeploymentRecord = store
            .get(T::Deployments, source.to_be_bytes())?
            .ok_or_else(|| Error::not_found(format!("deployment {source} not found")))?;
        if src.state != DeploymentState::Success as i32 {
            return Err(Error::precondition(format!(
                "deployment {source} did not succeed: only what succeeded is deployed again"
            )));
        }
        let key = JobKey::new(RunId(src.run), src.job);
        let gone = || Error::precondition(format!("the run of deployment {source} (run {}) was pruned", src.run));
        let job: crate::store::records::JobRecord = store.get(T::Jobs, key.key())?.ok_or_else(gone)?;
        let run: crate::store::records::RunRecord = store.get(T::Runs, key.run.key())?.ok_or_else(gone)?;
        let mut run_source = run.source.clone().unwrap_or_default();
        // Who asked; the event stays the original's, so rules about pull
        // requests still see one.
        run_source.sender = actor.to_string();
        let mut environment = job.environment.clone().unwrap_or_default();
        environment.name = to.to_string();
        environment.kind = kind.to_string();
        environment.source_deployment = source;
        let new_job = super::runs::NewJob {
            key: job.key.clone(),
            name: job.name.clone(),
            matrix: job.matrix.clone(),
            runs_on: job.runs_on.clone(),
            image: job.image.clone(),
            timeout_ms: job.timeout_ms,
            retries: job.retries,
            priority: job.priority,
            env: job.env.clone(),
            secrets: job.secrets.clone(),
            steps: job.steps.clone(),
            artifacts: job.artifacts.clone(),
            fail_fast: job.fail_fast,
            context: job.context.clone().unwrap_or_default(),
            notify: job.notify.clone(),
            snapshots: Some(job.snapshots),
            services: job.services.clone(),
            network: job.network.clone(),
            cpus: job.cpus,
            memory_bytes: job.memory_bytes,
            environment: Some(environment),
            artifacts_from: job.artifacts_from.iter().cloned().map(super::runs::ArtifactsFrom::Job).collect(),
            ..Default::default()
        };
        let new = super::runs::NewRun {
            pipeline: run.pipeline.clone(),
            priority: run.priority,
            source: run_source,
            inputs: run.inputs.clone(),
            yaml: String::from_utf8_lossy(&run.yaml).into_owned(),
            pipeline_ref: run.pipeline_ref.clone(),
            jobs: vec![new_job],
            checkout: job.source.clone(),
            trust: viaduct_proto::v1::Trust::Trusted,
            reports_status: run.reports_status,
            notify: run.notify.clone(),
            ..Default::default()
        };
        let id = self.create_run(new).await?;
        tracing::info!(run = %id, source, to, kind, actor, "deployment run started");
        Ok(id)
    }
}
