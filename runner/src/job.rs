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
    v1::{ExprContext as Context, JobAssignment, JobRef, JobUpdate, Status, StepPlan, StepUpdate, step_plan::Action},
};

use crate::{
    executor::{Backend, JobSetup, StepLog, StepOutcome, StepSpec, StepStop},
    mask::Secrets,
    outbox::Outbox,
    source::Sources,
};

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

fn job_update(job: &JobRef, status: Status, message: &str) -> JobUpdate {
    JobUpdate { job: Some(job.clone()), status: status as i32, time: None, message: message.to_string() }
}

fn step_update(job: &JobRef, index: u32, o: &StepOutcome) -> StepUpdate {
    StepUpdate {
        job: Some(job.clone()),
        step_index: index,
        status: o.status as i32,
        exit_code: o.exit_code,
        time: None,
        message: o.message.clone(),
        outputs: o.outputs.clone().into_iter().collect(),
        summary: String::new(),
    }
}

fn plain(status: Status) -> StepOutcome {
    StepOutcome { status, exit_code: None, message: String::new(), outputs: BTreeMap::new() }
}

/// Runs an assigned job attempt to the end and reports it through `outbox`.
pub async fn run(
    a: JobAssignment,
    outbox: Arc<Outbox>,
    backend: Arc<dyn Backend>,
    sources: Arc<Sources>,
    stop: JobStop,
) {
    let job = a.job.clone().unwrap_or_default();
    let span = tracing::info_span!("job", run = %a.run_id, job = %job.job_id, attempt = job.attempt);
    async move {
        tracing::info!(name = %a.job_name, steps = a.steps.len(), "job started");
        outbox.job(job_update(&job, Status::Running, ""));
        let (status, message) = execute(&a, &job, &outbox, backend.as_ref(), &sources, &stop).await;
        if stop.abandon.is_cancelled() {
            tracing::warn!("job abandoned: its lease is gone");
            outbox.forget(&job);
            return;
        }
        tracing::info!(status = status.word(), %message, "job finished");
        outbox.job(job_update(&job, status, &message));
    }
    .instrument(span)
    .await;
}

async fn execute(
    a: &JobAssignment,
    job: &JobRef,
    outbox: &Arc<Outbox>,
    backend: &dyn Backend,
    sources: &Sources,
    stop: &JobStop,
) -> (Status, String) {
    let job_deadline = (a.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(a.timeout_ms));
    let setup = JobSetup {
        job: job.clone(),
        image: a.image.clone(),
        services: a.services.clone(),
        network: a.network.clone(),
        cpus: a.cpus,
        memory_bytes: a.memory_bytes,
        registry_auth: a.registry_auth.clone(),
    };
    let mut env_of_job = match backend.setup(&setup).await {
        Ok(e) => e,
        Err(e) => {
            for s in &a.steps {
                outbox.step(step_update(job, s.index, &plain(Status::Skipped)));
            }
            return (Status::Failure, format!("could not prepare the job: {e}"));
        }
    };
    if let Some(src) = a.source.as_ref().filter(|s| !s.commit.is_empty()) {
        match sources.checkout(job, src, &env_of_job.workspace()).await {
            Ok(summary) => tracing::info!(%summary, "source checked out"),
            Err(e) => {
                for s in &a.steps {
                    outbox.step(step_update(job, s.index, &plain(Status::Skipped)));
                }
                env_of_job.teardown().await;
                return (Status::Failure, format!("checkout of {} failed: {e}", src.repo));
            }
        }
    }
    let context = a.context.clone().unwrap_or_default();
    let secrets = Secrets::new(a.secrets.values().map(String::as_str));
    let mut outputs: HashMap<String, (Status, BTreeMap<String, String>)> = HashMap::new();
    let mut failed: Option<String> = None;
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
            Ok(false) => plain(Status::Skipped),
            Ok(true) if job_timed_out => plain(Status::Skipped),
            Ok(true) => {
                outbox.step(StepUpdate {
                    job: Some(job.clone()),
                    step_index: s.index,
                    status: Status::Running as i32,
                    ..Default::default()
                });
                match spec(a, s, &ctx) {
                    Err(e) => StepOutcome::error(e),
                    Ok(spec) => {
                        let step_deadline =
                            (s.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(s.timeout_ms));
                        let deadline = match (step_deadline, job_deadline) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        // After a cancel, the steps that still run (always()) are
                        // stopped only by an abandon or their deadline.
                        let token = if after_cancel { stop.abandon.child_token() } else { cancel.child_token() };
                        let step_stop = StepStop { cancel: token, deadline };
                        let mut log = StepLog::new(Arc::clone(outbox), job.clone(), s.index, secrets.clone());
                        let span = tracing::info_span!("step", step = s.index, name = %s.name);
                        let o = env_of_job.run_step(&spec, &mut log, &step_stop).instrument(span).await;
                        log.finish().await;
                        if o.status == Status::TimedOut && job_deadline.is_some_and(|d| Instant::now() >= d) {
                            job_timed_out = true;
                        }
                        o
                    }
                }
            }
        };
        if stop.abandon.is_cancelled() {
            break;
        }
        outbox.step(step_update(job, s.index, &outcome));
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
    env_of_job.teardown().await;
    if stop.cancel.is_cancelled() {
        (Status::Cancelled, "cancelled".into())
    } else if job_timed_out {
        (Status::TimedOut, format!("the job timed out after {}", human(Duration::from_millis(a.timeout_ms))))
    } else if let Some(why) = failed {
        (if step_timed_out { Status::TimedOut } else { Status::Failure }, why)
    } else {
        (Status::Success, String::new())
    }
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

/// The step with its script and env interpolated.
fn spec(a: &JobAssignment, s: &StepPlan, ctx: &StepContext<'_>) -> Result<StepSpec, String> {
    let script = match &s.action {
        Some(Action::Run(r)) => {
            expr::interpolate(&r.script, ctx).map_err(|e| format!("in the script: {}", e.message))?
        }
        Some(Action::Uses(u)) => {
            return Err(format!("`uses: {}` needs the wasi executor, which this runner does not have yet", u.plugin));
        }
        None => return Err("the step has nothing to run".into()),
    };
    let mut env: BTreeMap<String, String> = a.env.clone().into_iter().collect();
    // Secrets the job lists, as variables (masked in every log).
    env.extend(a.secrets.clone());
    for (k, v) in &s.env {
        let v = expr::interpolate(v, ctx).map_err(|e| format!("in env `{k}`: {}", e.message))?;
        env.insert(k.clone(), v);
    }
    env.insert("VIADUCT_STEP_INDEX".into(), s.index.to_string());
    env.insert("VIADUCT_STEP_NAME".into(), s.name.clone());
    Ok(StepSpec { index: s.index, name: s.name.clone(), script, env, working_directory: s.working_directory.clone() })
}
