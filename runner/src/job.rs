//! Running one job attempt: its steps in order, through an executor.
//!
//! For each step the runner evaluates its `if:` (default `success()`: run
//! only while nothing has failed and nothing was cancelled), interpolates
//! `${{ … }}` in its script and env with the step context (including
//! earlier steps' outputs), runs it under the earlier of its own and the
//! job's deadline, and reports its state. A failed step (unless
//! `continue_on_error`) makes later default steps skip; `always()` steps
//! still run. On cancel the running step is stopped and only `always()` /
//! `cancelled()` steps still run. When the job's deadline passes, the
//! running step is stopped and the rest are skipped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use viaduct_pipeline::expr::{self, ExprContext, Value};
use viaduct_proto::{
    StatusWord,
    v1::{
        Executor, ExprContext as Context, JobAssignment, JobRef, JobUpdate, Status, StepPlan, StepUpdate,
        step_plan::Action,
    },
};

use crate::{
    executor::{Backend, JobEnv, JobSetup, StepLog, StepOutcome, StepSpec, StepStop},
    files::Files,
    mask::Secrets,
    plugin_host::{PluginCall, PluginHost, RunInfo},
    report::Reports,
    source::Sources,
};

/// What jobs run with: shared by every job of the runner.
#[derive(Clone)]
pub struct Services {
    /// Where states and logs go (the runner's outbox).
    pub reports: Arc<dyn Reports>,
    /// Prepares job environments and runs `run:` steps.
    pub backend: Arc<dyn Backend>,
    /// Checks out code.
    pub sources: Arc<Sources>,
    /// Artifacts and caches.
    pub files: Arc<Files>,
    /// Runs `uses:` steps (`None`: this runner has no plugin host).
    pub plugins: Option<Arc<PluginHost>>,
    /// This runner's name (plugin metadata).
    pub runner_name: String,
    /// What the runner adds to every job's environment (see
    /// [`crate::environment`]).
    pub env: Arc<crate::environment::RunnerEnv>,
    /// Failed jobs' environments kept for a debug shell.
    pub held: Arc<crate::held::Held>,
}

impl Services {
    /// The executors to advertise: the backend's, and wasi when plugin
    /// steps can run here.
    pub fn executors(&self) -> Vec<Executor> {
        let mut all = self.backend.executors();
        if self.plugins.is_some() {
            all.push(Executor::Wasi);
        }
        all
    }
}

/// How a job is told to stop.
#[derive(Clone, Default)]
pub struct JobStop {
    /// The user cancelled: stop the running step, run only always() steps.
    pub cancel: CancellationToken,
    /// The attempt lost its lease: stop everything, report nothing more.
    pub abandon: CancellationToken,
}

/// The expression context of a step.
struct StepContext<'a> {
    ctx: &'a Context,
    env: &'a HashMap<String, String>,
    steps: &'a HashMap<String, (Status, BTreeMap<String, String>)>,
    status: expr::Status,
}

impl ExprContext for StepContext<'_> {
    fn lookup(&self, path: &[&str]) -> Option<Value> {
        let text = |s: &str| Some(Value::String(s.to_string()));
        match path {
            ["branch"] => text(&self.ctx.branch),
            ["tag"] => text(&self.ctx.tag),
            ["event"] => text(&self.ctx.event),
            ["commit"] => text(&self.ctx.commit),
            ["repo"] => text(&self.ctx.repo),
            ["run_id"] => text(&self.ctx.run_id),
            ["matrix", k] => self.ctx.matrix.get(*k).and_then(|v| text(v)),
            ["inputs", k] => self.ctx.inputs.get(*k).and_then(|v| text(v)),
            ["env", k] => self.env.get(*k).and_then(|v| text(v)),
            ["steps", id, "outputs", name] => self.steps.get(*id)?.1.get(*name).and_then(|v| text(v)),
            ["steps", id, "outcome"] => self.steps.get(*id).and_then(|(s, _)| text(s.word())),
            _ => None,
        }
    }

    fn status(&self) -> expr::Status {
        self.status
    }
}

/// A job's state for the server, its message masked.
fn job_update(job: &JobRef, status: Status, message: &str, secrets: &Secrets) -> JobUpdate {
    JobUpdate { job: Some(job.clone()), status: status as i32, time: None, message: secrets.mask_str(message) }
}

/// A step's state for the server: its message, outputs and summary masked
/// like its log (the runner keeps the real outputs for later steps).
fn step_update(job: &JobRef, index: u32, o: &StepOutcome, summary: String, secrets: &Secrets) -> StepUpdate {
    StepUpdate {
        job: Some(job.clone()),
        step_index: index,
        status: o.status as i32,
        exit_code: o.exit_code,
        time: None,
        message: secrets.mask_str(&o.message),
        outputs: o.outputs.iter().map(|(k, v)| (k.clone(), secrets.mask_str(v))).collect(),
        summary: secrets.mask_str(&summary),
    }
}

fn plain(status: Status) -> StepOutcome {
    StepOutcome { status, exit_code: None, message: String::new(), outputs: BTreeMap::new() }
}

/// A step that did not run, and why (shown where its status is).
fn skipped(why: String) -> StepOutcome {
    StepOutcome { message: why, ..plain(Status::Skipped) }
}

/// Reports every step of the job as not run, because of `why`.
fn skip_all(reports: &Arc<dyn Reports>, job: &JobRef, a: &JobAssignment, why: &str, secrets: &Secrets) {
    let outcome = skipped(format!("not run: {why}"));
    for s in &a.steps {
        reports.step(step_update(job, s.index, &outcome, String::new(), secrets));
    }
}

/// Runs an assigned job attempt to the end, reporting through the
/// services' [`Reports`].
pub async fn run(a: JobAssignment, services: Services, stop: JobStop) {
    let job = a.job.clone().unwrap_or_default();
    let span = tracing::info_span!(
        "job",
        run = %a.run_id,
        job = %job.job_id,
        attempt = job.attempt,
        name = %a.job_name,
        status = tracing::field::Empty
    );
    // Exported traces: under the run's root span (the server's).
    viaduct_telemetry::in_trace(&span, &a.traceparent);
    let reports = Arc::clone(&services.reports);
    async move {
        tracing::info!(name = %a.job_name, steps = a.steps.len(), "job started");
        let secrets = Secrets::new(a.secrets.values().map(String::as_str));
        reports.job(job_update(&job, Status::Running, "", &secrets));
        let Ended { status, message, leftover } = execute(&a, &job, &services, &stop, &secrets).await;
        if stop.abandon.is_cancelled() {
            tracing::warn!("job abandoned: its lease is gone");
            reports.forget(&job);
        } else {
            let message = secrets.mask_str(&message);
            tracing::Span::current().record("status", status.word());
            tracing::info!(status = status.word(), %message, "job finished");
            reports.job(job_update(&job, status, &message, &secrets));
        }
        // The end is reported first and what is left of the job (its
        // processes, its directory) goes while the server moves on: the
        // teardown is not in the time to the next job or to the run's end.
        // The job stays one of this runner's jobs until it is done; a next
        // job on its slot waits for its user only until its processes are
        // dead and its directory closed, and runs as the same user.
        if let Some(env) = leftover {
            env.teardown().await;
        }
    }
    .instrument(span)
    .await;
}

/// How a job attempt ended, and its environment when it is still to be
/// torn down.
struct Ended {
    status: Status,
    message: String,
    leftover: Option<Box<dyn JobEnv>>,
}

impl Ended {
    /// A failure before any step ran (its environment already gone).
    fn failed(why: String) -> Self {
        Self { status: Status::Failure, message: why, leftover: None }
    }
}

async fn execute(a: &JobAssignment, job: &JobRef, services: &Services, stop: &JobStop, secrets: &Secrets) -> Ended {
    let (reports, backend, sources) = (&services.reports, services.backend.as_ref(), &services.sources);
    let job_deadline = (a.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(a.timeout_ms));
    let setup = JobSetup {
        job: job.clone(),
        image: a.image.clone(),
        services: a.services.clone(),
        network: a.network.clone(),
        cpus: a.cpus,
        memory_bytes: a.memory_bytes,
        registry_auth: a.registry_auth.clone(),
        env: a.env.clone().into_iter().collect(),
    };
    let mut env_of_job = match backend.setup(&setup).await {
        Ok(e) => e,
        Err(e) => {
            let why = format!("could not prepare the job: {e}");
            skip_all(reports, job, a, &why, secrets);
            return Ended::failed(why);
        }
    };
    let mut resume_after = a.resume.as_ref().map_or(0, |r| r.after_step);
    let reusable = a.steps.iter().any(|s| s.reuse.is_some());
    let mut snapshots = (a.snapshots || resume_after > 0 || reusable).then(|| snapshots::JobSnapshots::new(a));
    let mut restored = None;
    // A resume from the earlier run's snapshot the last attempt started
    // from (`reuse:`): over this run's own checkout, like that attempt.
    let over_checkout = a.resume.as_ref().is_some_and(|r| r.after_step > 0 && r.from_attempt == 0);
    if let (Some(snaps), true) = (snapshots.as_mut(), resume_after > 0 && !over_checkout) {
        match snaps.restore(&services.files, job, &env_of_job.workspace()).await {
            Ok(r) => {
                env_of_job.adopt_workspace().await;
                tracing::info!(after_step = resume_after, "workspace restored from the snapshot");
                restored = Some(r);
            }
            Err(e) => {
                let why = format!("could not restore the snapshot after step {resume_after}: {e}");
                let rest = JobAssignment {
                    steps: a.steps.iter().filter(|s| s.index > resume_after).cloned().collect(),
                    ..a.clone()
                };
                skip_all(reports, job, &rest, &why, secrets);
                env_of_job.teardown().await;
                return Ended::failed(why);
            }
        }
    } else if let Some(src) = a.source.as_ref().filter(|s| !s.commit.is_empty()) {
        match sources.checkout(job, src, &env_of_job.workspace()).await {
            Ok(summary) => {
                tracing::info!(%summary, "source checked out");
                let reused = match snapshots.as_mut() {
                    Some(snaps) if over_checkout => {
                        resume_over_checkout(snaps, a, services, job, &env_of_job.workspace()).await.map(|r| {
                            restored = Some(r);
                            None
                        })
                    }
                    Some(snaps) => reuse(snaps, (a, job, src), services, &env_of_job.workspace()).await,
                    None => Ok(None),
                };
                env_of_job.adopt_workspace().await;
                match reused {
                    Ok(Some(r)) => {
                        let why = format!(
                            "reused: the workspace after this step comes from run {}'s snapshot (its key files and \
                             steps are unchanged)",
                            r.run_id
                        );
                        for s in a.steps.iter().filter(|s| s.index <= r.after_step) {
                            let outputs = r.restored.outputs.get(&s.id).map(|(_, o)| o.clone()).unwrap_or_default();
                            let outcome = StepOutcome { outputs, ..skipped(why.clone()) };
                            reports.step(step_update(job, s.index, &outcome, String::new(), secrets));
                        }
                        resume_after = r.after_step;
                        restored = Some(r.restored);
                    }
                    Ok(None) => {}
                    Err(why) => {
                        skip_all(reports, job, a, &why, secrets);
                        env_of_job.teardown().await;
                        return Ended::failed(why);
                    }
                }
            }
            Err(e) => {
                let why = format!("checkout of {} failed: {e}", src.repo);
                skip_all(reports, job, a, &why, secrets);
                env_of_job.teardown().await;
                return Ended::failed(why);
            }
        }
    }
    // The artifacts of the jobs it gets them from (a resumed attempt's
    // snapshot already holds them).
    if resume_after == 0 && !a.artifacts_from.is_empty() {
        let workspace = env_of_job.workspace();
        for from in &a.artifacts_from {
            match services.files.fetch_artifacts(job, from, &workspace).await {
                Ok(n) => tracing::info!(from = %from, files = n, "artifacts fetched"),
                Err(why) => {
                    skip_all(reports, job, a, &why, secrets);
                    env_of_job.teardown().await;
                    return Ended::failed(why);
                }
            }
        }
        env_of_job.adopt_workspace().await;
    }
    let context = a.context.clone().unwrap_or_default();
    // Outcomes and outputs of steps with an `id`, by id; post-phase states
    // of plugin steps, by main step index (a resumed attempt's from its
    // snapshot).
    let (mut outputs, mut post_states) = match restored {
        Some(r) => (r.outputs, r.post_states),
        None => (HashMap::new(), HashMap::new()),
    };
    let mut failed: Option<String> = None;
    let mut summary = String::new();
    let log_limits = crate::executor::LogLimits::new(a.max_step_log_bytes, a.max_job_log_bytes);
    let mut step_timed_out = false;
    let mut job_timed_out = false;
    // A cancel stops the running step; this token lets an abandon do too.
    let cancel = CancellationToken::new();
    let watch = {
        let (c, user, abandon) = (cancel.clone(), stop.cancel.clone(), stop.abandon.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = user.cancelled() => {}
                () = abandon.cancelled() => {}
            }
            c.cancel();
        })
    };
    for s in &a.steps {
        if stop.abandon.is_cancelled() {
            break;
        }
        // Restored: the server has their states already.
        if s.index <= resume_after {
            continue;
        }
        if job_deadline.is_some_and(|d| Instant::now() >= d) {
            job_timed_out = true;
        }
        // One snapshot per step: the condition and the choice of stop token
        // must agree on whether this step runs after a cancel.
        let after_cancel = cancel.is_cancelled();
        let status = if after_cancel || job_timed_out {
            expr::Status::Cancelled
        } else if failed.is_some() {
            expr::Status::Failure
        } else {
            expr::Status::Success
        };
        let ctx = StepContext { ctx: &context, env: &a.env, steps: &outputs, status };
        let outcome = match should_run(s, &ctx) {
            Err(e) => StepOutcome::error(format!("cannot evaluate `if: {}`: {e}", s.condition)),
            Ok(false) => skipped(match (&failed, after_cancel, job_timed_out) {
                (_, _, true) => "the job timed out".to_string(),
                (_, true, _) => "the job was cancelled".to_string(),
                (Some(why), ..) if s.condition.trim().is_empty() => format!("because {why}"),
                _ => format!("`if: {}` was false", s.condition.trim()),
            }),
            Ok(true) if job_timed_out => skipped("the job timed out".into()),
            Ok(true) if is_post(s) && !post_states.contains_key(&post_of(s)) => {
                skipped("nothing to do: the main step did not ask for a post phase".into())
            }
            Ok(true) => {
                reports.step(StepUpdate {
                    job: Some(job.clone()),
                    step_index: s.index,
                    status: Status::Running as i32,
                    ..Default::default()
                });
                let step_deadline = (s.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(s.timeout_ms));
                let deadline = match (step_deadline, job_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                // After a cancel, the steps that still run (always()) are
                // stopped only by an abandon or their deadline.
                let token = if after_cancel { stop.abandon.child_token() } else { cancel.child_token() };
                let step_stop = StepStop { cancel: token, deadline };
                let mut log =
                    StepLog::new(Arc::clone(reports), job.clone(), s.index, secrets.clone(), log_limits.clone());
                let span = tracing::info_span!("step", job = %job.job_id, step = s.index, name = %s.name);
                let o = match &s.action {
                    Some(Action::Uses(u)) => {
                        let main = post_states.remove(&u.post_of);
                        let call = Uses { a, job, step: s, uses: u, ctx: &ctx, post_state: main };
                        let place = (env_of_job.workspace(), env_of_job.programs());
                        let r = run_plugin(services, call, place, &mut log, &step_stop).instrument(span).await;
                        summary = r.summary;
                        // What the plugin wrote (a restored cache…) is the job's.
                        env_of_job.adopt_workspace().await;
                        if let (Some(state), "main") = (r.post_state, u.phase.as_str()) {
                            post_states.insert(s.index, state);
                        }
                        r.outcome
                    }
                    _ => match spec(&services.env, a, s, &ctx) {
                        Err(e) => StepOutcome::error(e),
                        Ok(spec) => env_of_job.run_step(&spec, &mut log, &step_stop).instrument(span).await,
                    },
                };
                let worked = o.status == Status::Success && failed.is_none() && !cancel.is_cancelled();
                if let Some(snaps) = snapshots.as_mut().filter(|_| worked && a.snapshots) {
                    let current = viaduct_proto::v1::SnapshotStep {
                        index: s.index,
                        id: s.id.clone(),
                        status: o.status as i32,
                        outputs: o.outputs.clone().into_iter().collect(),
                    };
                    let workspace = env_of_job.workspace();
                    // Under the step's stop: a cancel or its deadline ends it.
                    let taking = snaps.take(&services.files, job, current, &workspace, &post_states);
                    let stopped = async {
                        match step_stop.deadline {
                            Some(d) => tokio::select! {
                                () = step_stop.cancel.cancelled() => "the job was cancelled",
                                () = tokio::time::sleep_until(d.into()) => "the step's time ran out",
                            },
                            None => {
                                step_stop.cancel.cancelled().await;
                                "the job was cancelled"
                            }
                        }
                    };
                    let note = tokio::select! {
                        note = taking => note,
                        why = stopped => Some(format!("taking it was stopped: {why}")),
                    };
                    if let Some(why) = note {
                        log.write(format!("\n[viaduct: no snapshot after this step: {why}]\n").as_bytes()).await;
                    }
                }
                log.finish().await;
                let mut o = o;
                if let Some(cut) = log.cut() {
                    let cut = cut.describe();
                    o.message = if o.message.is_empty() { cut } else { format!("{}; {cut}", o.message) };
                }
                if o.status == Status::TimedOut && job_deadline.is_some_and(|d| Instant::now() >= d) {
                    job_timed_out = true;
                }
                o
            }
        };
        if stop.abandon.is_cancelled() {
            break;
        }
        reports.step(step_update(job, s.index, &outcome, std::mem::take(&mut summary), secrets));
        if let Some(snaps) = snapshots.as_mut() {
            snaps.record(s.index, &s.id, outcome.status, &outcome.outputs);
        }
        if !s.id.is_empty() {
            outputs.insert(s.id.clone(), (outcome.status, outcome.outputs.clone()));
        }
        let failure = matches!(outcome.status, Status::Failure | Status::TimedOut);
        if failure && !s.continue_on_error && failed.is_none() {
            step_timed_out = outcome.status == Status::TimedOut;
            failed = Some(format!("step {} (`{}`) {}", s.index, s.name, describe(&outcome)));
        }
    }
    watch.abort();
    let mut artifact_note = None;
    if !a.artifacts.is_empty() && !stop.abandon.is_cancelled() {
        // Also after a failure: logs and reports are what one inspects then.
        artifact_note = upload_artifacts(services, job, &env_of_job.workspace(), &a.artifacts).await;
    }
    let ended = if let Some(Err(e)) = &artifact_note
        && failed.is_none()
        && !job_timed_out
        && !stop.cancel.is_cancelled()
    {
        (Status::Failure, e.clone())
    } else if stop.cancel.is_cancelled() {
        (Status::Cancelled, "cancelled".into())
    } else if job_timed_out {
        (Status::TimedOut, format!("the job timed out after {}", human(Duration::from_millis(a.timeout_ms))))
    } else if let Some(why) = failed {
        (if step_timed_out { Status::TimedOut } else { Status::Failure }, why)
    } else {
        (Status::Success, artifact_note.and_then(Result::ok).unwrap_or_default())
    };
    let hold = matches!(ended.0, Status::Failure | Status::TimedOut) && a.hold_failed_ms > 0;
    let leftover = if hold && !stop.abandon.is_cancelled() {
        // Held before the end is reported: a debug shell asked for once the
        // job is seen failed finds it.
        services.held.hold(&job.job_id, job.attempt, env_of_job, Duration::from_millis(a.hold_failed_ms)).await;
        None
    } else {
        Some(env_of_job)
    };
    Ended { status: ended.0, message: ended.1, leftover }
}

/// A resume from an earlier run's snapshot: the checkout's paths, then the
/// snapshot over them; `Err` fails the attempt (the server marked its
/// steps restored).
async fn resume_over_checkout(
    snaps: &mut snapshots::JobSnapshots,
    a: &JobAssignment,
    services: &Services,
    job: &JobRef,
    workspace: &std::path::Path,
) -> Result<snapshots::Restored, String> {
    snaps.after_checkout(a, workspace).await?;
    snaps
        .restore_over_checkout(&services.files, job, workspace)
        .await
        .map_err(|e| format!("could not restore the snapshot the job resumes from: {e}"))
}

/// After a fresh checkout of a job that keeps snapshots: the keys of its
/// steps with `reuse:`, and an earlier run's snapshot restored over the
/// checkout when one matches. When that restore fails the workspace is
/// checked out again (every step runs); `Err` only when that fails too.
async fn reuse(
    snaps: &mut snapshots::JobSnapshots,
    (a, job, src): (&JobAssignment, &JobRef, &viaduct_proto::v1::SourcePlan),
    services: &Services,
    workspace: &std::path::Path,
) -> Result<Option<snapshots::Reused>, String> {
    if let Err(e) = snaps.after_checkout(a, workspace).await {
        tracing::warn!(error = %e, "no reuse: the checkout could not be read");
        return Ok(None);
    }
    match snaps.reuse(&services.files, job, workspace).await {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::warn!(error = %e, "could not reuse an earlier run's snapshot: checking out again");
            let mut entries =
                tokio::fs::read_dir(workspace).await.map_err(|e| format!("cannot clear the workspace: {e}"))?;
            while let Ok(Some(entry)) = entries.next_entry().await {
                let path = entry.path();
                let gone = match entry.file_type().await {
                    Ok(t) if t.is_dir() => tokio::fs::remove_dir_all(&path).await,
                    _ => tokio::fs::remove_file(&path).await,
                };
                gone.map_err(|e| format!("cannot clear the workspace ({}): {e}", path.display()))?;
            }
            services
                .sources
                .checkout(job, src, workspace)
                .await
                .map_err(|e| format!("checkout of {} failed: {e}", src.repo))?;
            Ok(None)
        }
    }
}

/// Uploads the job's artifacts: `None` when all went well, `Some(Ok(note))`
/// for patterns that matched nothing (a warning), `Some(Err(why))` when an
/// upload failed.
async fn upload_artifacts(
    services: &Services,
    job: &JobRef,
    workspace: &std::path::Path,
    patterns: &[String],
) -> Option<Result<String, String>> {
    match services.files.upload_artifacts(job, workspace, patterns).await {
        Ok(up) => {
            let bytes: u64 = up.artifacts.iter().map(|a| a.size).sum();
            tracing::info!(files = up.artifacts.len(), bytes, "artifacts uploaded");
            (!up.unmatched.is_empty()).then(|| Ok(format!("no files matched artifacts: {}", up.unmatched.join(", "))))
        }
        Err(e) => {
            tracing::warn!(error = %e, "artifact upload failed");
            Some(Err(format!("uploading artifacts failed: {e}")))
        }
    }
}

fn is_post(s: &StepPlan) -> bool {
    matches!(&s.action, Some(Action::Uses(u)) if u.phase == "post")
}

fn post_of(s: &StepPlan) -> u32 {
    match &s.action {
        Some(Action::Uses(u)) => u.post_of,
        _ => 0,
    }
}

/// A plugin step about to run.
struct Uses<'a> {
    a: &'a JobAssignment,
    job: &'a JobRef,
    step: &'a StepPlan,
    uses: &'a viaduct_proto::v1::UsesAction,
    ctx: &'a StepContext<'a>,
    /// Post phase: the main call's state.
    post_state: Option<String>,
}

/// Where a plugin step runs: the job's workspace, and where its programs
/// run (the job's executor).
type Place = (std::path::PathBuf, std::sync::Arc<dyn crate::executor::programs::Programs>);

/// Runs a `uses:` step on the plugin host.
async fn run_plugin(
    services: &Services,
    u: Uses<'_>,
    (workspace, programs): Place,
    log: &mut StepLog,
    stop: &StepStop,
) -> crate::plugin_host::PluginResult {
    let fail = |m: String| crate::plugin_host::PluginResult {
        outcome: StepOutcome::error(m),
        summary: String::new(),
        post_state: None,
        source: None,
    };
    let Some(host) = &services.plugins else {
        return fail("this runner cannot run plugin steps (its plugin host did not start; see its log)".into());
    };
    let (Some(manifest), false) = (u.uses.manifest.as_ref(), u.uses.digest.is_empty()) else {
        return fail(format!(
            "`uses: {}` was not resolved to a published plugin when the run was planned",
            u.uses.plugin
        ));
    };
    let mut with = Vec::with_capacity(u.uses.with_json.len());
    for (k, v) in &u.uses.with_json {
        match interpolate_json(v, u.ctx) {
            Ok(v) => with.push((k.clone(), v)),
            Err(e) => return fail(format!("in `with.{k}`: {e}")),
        }
    }
    with.sort();
    let mut env: BTreeMap<String, String> = u.a.env.clone().into_iter().collect();
    for (k, v) in &u.step.env {
        match expr::interpolate(v, u.ctx) {
            Ok(v) => env.insert(k.clone(), v),
            Err(e) => return fail(format!("in env `{k}`: {}", e.message)),
        };
    }
    // The job's secrets the step grants the plugin (`allow.secrets`: a
    // deploy plugin's key), over everything else; what the plugin writes is
    // masked like a step's output. It gets no other.
    env.extend(u.a.secrets.iter().filter(|(k, _)| u.uses.secrets.contains(k)).map(|(k, v)| (k.clone(), v.clone())));
    env.insert("VIADUCT_STEP_INDEX".into(), u.step.index.to_string());
    env.insert("VIADUCT_STEP_NAME".into(), u.step.name.clone());
    let c = u.ctx.ctx;
    let call = PluginCall {
        job: u.job,
        digest: &u.uses.digest,
        manifest,
        with,
        allow_network: u.uses.allow_network,
        post_state: (u.uses.phase == "post").then_some(u.post_state),
        workspace,
        env,
        programs,
        meta: RunInfo {
            run_id: u.a.run_id.clone(),
            job_id: u.job.job_id.clone(),
            job_name: u.a.job_name.clone(),
            step_index: u.step.index,
            step_id: u.step.id.clone(),
            pipeline: u.a.pipeline.clone(),
            repo: c.repo.clone(),
            branch: c.branch.clone(),
            tag: c.tag.clone(),
            commit: c.commit.clone(),
            event: c.event.clone(),
            runner: services.runner_name.clone(),
        },
    };
    let scratch_of = call.workspace.clone();
    let result = host.run(call, log, stop).await;
    remove_scratch(&scratch_of);
    result
}

/// A plugin's scratch space: top-level workspace entries named
/// `.viaduct-scratch*` (where `ssh-deploy` keeps its key) are removed after
/// every plugin step, whatever its outcome — also when it was cancelled or
/// timed out, where the plugin's own clean-up never ran. Links are removed,
/// never followed.
pub const SCRATCH_PREFIX: &str = ".viaduct-scratch";

fn remove_scratch(workspace: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(workspace) else { return };
    for e in entries.flatten() {
        if !e.file_name().as_encoded_bytes().starts_with(SCRATCH_PREFIX.as_bytes()) {
            continue;
        }
        let path = e.path();
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        if let Err(err) = removed {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a plugin's scratch space");
        }
    }
}

/// Interpolates `${{ }}` in every string of a JSON value (`with:` values
/// are planned with the plan-time context; step outputs and the like are
/// filled in here).
fn interpolate_json(text: &str, ctx: &StepContext<'_>) -> Result<String, String> {
    fn walk(v: serde_json::Value, ctx: &StepContext<'_>) -> Result<serde_json::Value, String> {
        use serde_json::Value as J;
        Ok(match v {
            J::String(s) if s.contains("${{") => J::String(expr::interpolate(&s, ctx).map_err(|e| e.message)?),
            J::Array(items) => J::Array(items.into_iter().map(|i| walk(i, ctx)).collect::<Result<_, _>>()?),
            J::Object(map) => {
                J::Object(map.into_iter().map(|(k, i)| Ok((k, walk(i, ctx)?))).collect::<Result<_, String>>()?)
            }
            other => other,
        })
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    serde_json::to_string(&walk(value, ctx)?).map_err(|e| e.to_string())
}

fn describe(o: &StepOutcome) -> String {
    match o.status {
        Status::TimedOut => "timed out".into(),
        _ if !o.message.is_empty() => o.message.clone(),
        s => s.word().to_string(),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn should_run(s: &StepPlan, ctx: &StepContext<'_>) -> Result<bool, String> {
    let cond = if s.condition.trim().is_empty() { "success()" } else { s.condition.as_str() };
    expr::eval_condition(cond, ctx).map_err(|e| e.message)
}

/// The step with its script and env interpolated. Precedence, lowest
/// first: the runner's, the pipeline's and job's (`a.env`), the step's, the
/// job's secrets, then the step's own `VIADUCT_*`.
fn spec(
    runner: &crate::environment::RunnerEnv,
    a: &JobAssignment,
    s: &StepPlan,
    ctx: &StepContext<'_>,
) -> Result<StepSpec, String> {
    let script = match &s.action {
        Some(Action::Run(r)) => {
            expr::interpolate(&r.script, ctx).map_err(|e| format!("in the script: {}", e.message))?
        }
        Some(Action::Uses(u)) => return Err(format!("`uses: {}` is a plugin step, not a script", u.plugin)),
        None => return Err("the step has nothing to run".into()),
    };
    let mut env = runner.for_job(a.image.is_some());
    env.extend(a.env.clone());
    for (k, v) in &s.env {
        let v = expr::interpolate(v, ctx).map_err(|e| format!("in env `{k}`: {}", e.message))?;
        env.insert(k.clone(), v);
    }
    // Secrets the job lists, as variables (masked in every log).
    env.extend(a.secrets.clone());
    env.insert("VIADUCT_STEP_INDEX".into(), s.index.to_string());
    env.insert("VIADUCT_STEP_NAME".into(), s.name.clone());
    Ok(StepSpec { index: s.index, name: s.name.clone(), script, env, working_directory: s.working_directory.clone() })
}

mod snapshots;
#[cfg(test)]
mod tests;
