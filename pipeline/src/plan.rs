//! Compiling a [`Pipeline`] and a trigger context into a backend-neutral
//! [`Plan`]: matrix expansion, `needs` resolution and plan-time
//! interpolation.
//!
//! # What is interpolated when
//! - **Job-level fields** (plan `name`, `env`, concurrency group; job `name`,
//!   `runs_on`, `image`, `services`, `env`, `artifacts`): every `${{ }}`
//!   segment that only reads plan-time values — `matrix.*`, `branch`, `tag`,
//!   `event`, `commit`, `repo`, `inputs.*` — and calls no status function is
//!   replaced now. Other segments (e.g. `run_id`, `env.*`, `needs.*`) are
//!   kept verbatim for the runner.
//! - **Step fields** (`name`, `run`, `env`, string values inside `with`,
//!   `working_directory`): only segments that read nothing but `matrix.*` are
//!   replaced now (the matrix is fixed per job); everything else — including
//!   `branch` or `steps.*` — is left as written and interpolated by the runner
//!   with the full run-time context.
//! - **Conditions** (`if`) are never rewritten: [`PlannedJob::condition`] and
//!   [`PlannedStep::condition`] hold the source, and the evaluator must supply
//!   `matrix.*` from [`PlannedJob::matrix`]. `None` means `success()`.
//!
//! Because job-level strings may be interpolated twice (plan, then runner),
//! plan-time values containing `${{` (a branch, tag or input) are rejected so
//! that a crafted ref name cannot inject an expression.
//!
//! Jobs keep declaration order; matrix expansions are contiguous. Job `env`
//! is the pipeline `env` overlaid with the job's own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::diag::{Diagnostic, Pos, sort_diagnostics};
use crate::expr::{Expr, ExprContext, Status, Value, parse_template};
use crate::matrix::Combination;
use crate::spec::{
    DeployedService, EnvironmentSpec, ImageSpec, Job, Network, Notify, Pipeline, ProbeSpec, Resources, ServiceSpec,
    Step,
};

pub use crate::spec::StepAction;

/// The trigger context a plan is made for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanContext {
    /// `"push"`, `"pull_request"`, `"schedule"`, `"manual"` or `"api"`.
    pub event: String,
    /// Branch name, if any.
    pub branch: Option<String>,
    /// Tag name, if any.
    pub tag: Option<String>,
    /// Commit SHA.
    pub commit: Option<String>,
    /// Repository name.
    pub repo: Option<String>,
    /// Manual/API inputs (declared defaults fill in missing ones).
    pub inputs: BTreeMap<String, String>,
}

/// A compiled run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Interpolated pipeline name.
    pub name: String,
    /// Interpolated pipeline environment.
    pub env: BTreeMap<String, String>,
    /// Run priority 0–10.
    pub priority: u8,
    /// Concurrency settings.
    pub concurrency: Option<ConcurrencyPlan>,
    /// Notifications about the run (the pipeline's `notify:`).
    pub notify: Vec<Notify>,
    /// Jobs; `needs` are indices into this list.
    pub jobs: Vec<PlannedJob>,
}

/// Concurrency settings of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyPlan {
    /// Interpolated group name.
    pub group: String,
    /// Whether a new run cancels the running one of the group.
    pub cancel_in_progress: bool,
}

/// One job to run (one matrix combination for matrix jobs).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedJob {
    /// The job key in the file.
    pub key: String,
    /// Display name, e.g. `test (stable, linux)` for matrix expansions
    /// (values in axis order, then include-added values).
    pub name: String,
    /// Matrix values of this expansion (empty without a matrix).
    pub matrix: BTreeMap<String, String>,
    /// Indices into [`Plan::jobs`] of the jobs that must finish first.
    pub needs: Vec<usize>,
    /// The `if` source; `None` means `success()`.
    pub condition: Option<String>,
    /// Runner labels.
    pub runs_on: Vec<String>,
    /// Container image.
    pub image: Option<ImageSpec>,
    /// Service containers.
    pub services: Vec<ServiceSpec>,
    /// Network mode.
    pub network: Network,
    /// Resource limits.
    pub resources: Resources,
    /// Job timeout.
    pub timeout: Option<Duration>,
    /// Retries on failure.
    pub retries: u32,
    /// Priority 0–10 (job override or run priority).
    pub priority: u8,
    /// Environment: pipeline env overlaid with job env.
    pub env: BTreeMap<String, String>,
    /// Secret names to expose.
    pub secrets: Vec<String>,
    /// Steps.
    pub steps: Vec<PlannedStep>,
    /// Artifact paths/globs.
    pub artifacts: Vec<String>,
    /// Notifications about this job (its `notify:`; every expansion of a
    /// matrix job has its job's list).
    pub notify: Vec<Notify>,
    /// Whether a failure leaves the run successful.
    pub continue_on_error: bool,
    /// Whether to keep workspace snapshots (the job's `snapshots:`, else
    /// the pipeline's; `None`: the server's default).
    pub snapshots: Option<bool>,
    /// Whether a failing matrix sibling cancels the others.
    pub fail_fast: bool,
    /// The job key when expanded from a matrix, to find siblings.
    pub matrix_group: Option<String>,
    /// The environment it deploys to, interpolated.
    pub environment: Option<EnvironmentSpec>,
    /// Indices into [`Plan::jobs`] of the jobs whose artifacts it gets.
    pub artifacts_from: Vec<usize>,
}

/// One step to run.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedStep {
    /// Display name: `name:`, else the first line of `run` (truncated to 60
    /// characters), else the `uses` reference.
    pub name: String,
    /// Step id.
    pub id: Option<String>,
    /// What to run (`${{ matrix.* }}` substituted, the rest verbatim).
    pub action: StepAction,
    /// Step environment.
    pub env: BTreeMap<String, String>,
    /// Step timeout.
    pub timeout: Option<Duration>,
    /// Whether a failure leaves the job successful.
    pub continue_on_error: bool,
    /// The `if` source; `None` means `success()`.
    pub condition: Option<String>,
    /// Working directory relative to the workspace.
    pub working_directory: Option<String>,
    /// `reuse: { key_files }` (empty: none).
    pub reuse_key_files: Vec<String>,
    /// The job's secrets a plugin step gets (`allow.secrets`).
    pub allowed_secrets: Vec<String>,
}

/// Maximum length (in characters) of a step name derived from `run`.
const STEP_NAME_MAX: usize = 60;

/// Plan-time values for interpolation.
struct PlanValues<'a> {
    ctx: &'a PlanContext,
    inputs: &'a BTreeMap<String, String>,
    matrix: Option<&'a BTreeMap<String, String>>,
}

impl ExprContext for PlanValues<'_> {
    fn lookup(&self, path: &[&str]) -> Option<Value> {
        let text = match path {
            ["branch"] => self.ctx.branch.clone(),
            ["tag"] => self.ctx.tag.clone(),
            ["event"] => Some(self.ctx.event.clone()),
            ["commit"] => self.ctx.commit.clone(),
            ["repo"] => self.ctx.repo.clone(),
            ["inputs", name] => self.inputs.get(*name).cloned(),
            ["matrix", key] => self.matrix.and_then(|m| m.get(*key).cloned()),
            _ => None,
        };
        text.map(Value::String)
    }

    fn status(&self) -> Status {
        Status::Success
    }
}

/// Which segments may be evaluated at plan time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Job-level fields: matrix and trigger values.
    Job,
    /// Step fields: matrix values only.
    Step,
}

fn resolvable(expr: &Expr, stage: Stage) -> bool {
    !expr.uses_status_function()
        && expr.references().iter().all(|r| match r.path.first().map(String::as_str) {
            Some("matrix") => true,
            Some("branch" | "tag" | "event" | "commit" | "repo" | "inputs") => stage == Stage::Job,
            _ => false,
        })
}

fn mentions_matrix(text: &str) -> bool {
    parse_template(text).is_ok_and(|t| {
        t.expressions().any(|e| e.references().iter().any(|r| r.path.first().is_some_and(|root| root == "matrix")))
    })
}

struct Planner<'a> {
    file: &'a str,
    ctx: &'a PlanContext,
    inputs: BTreeMap<String, String>,
    diags: Vec<Diagnostic>,
}

impl Planner<'_> {
    fn interpolate(&mut self, text: &str, matrix: Option<&BTreeMap<String, String>>, stage: Stage, pos: Pos) -> String {
        let values = PlanValues { ctx: self.ctx, inputs: &self.inputs, matrix };
        let rendered =
            parse_template(text).map_err(Into::into).and_then(|t| t.render_where(&values, &|e| resolvable(e, stage)));
        match rendered {
            Ok(s) => s,
            Err(e) => {
                self.diags.push(Diagnostic::new(self.file, pos, format!("cannot interpolate `{text}`: {}", e.message)));
                text.to_owned()
            }
        }
    }

    fn env(
        &mut self,
        env: &BTreeMap<String, String>,
        matrix: Option<&BTreeMap<String, String>>,
        stage: Stage,
        pos: Pos,
    ) -> BTreeMap<String, String> {
        env.iter().map(|(k, v)| (k.clone(), self.interpolate(v, matrix, stage, pos))).collect()
    }

    fn image(&mut self, image: &ImageSpec, matrix: Option<&BTreeMap<String, String>>, pos: Pos) -> ImageSpec {
        ImageSpec { name: self.interpolate(&image.name, matrix, Stage::Job, pos), ..image.clone() }
    }

    fn job(
        &mut self,
        job: &Job,
        combo: Option<&[(String, String)]>,
        base_env: &BTreeMap<String, String>,
        default_priority: u8,
        needs: Vec<usize>,
    ) -> PlannedJob {
        let matrix: BTreeMap<String, String> = combo.unwrap_or_default().iter().cloned().collect();
        let m = combo.map(|_| &matrix);
        let pos = job.pos;
        let raw_name = job.name.as_deref().unwrap_or(&job.key);
        let mut name = self.interpolate(raw_name, m, Stage::Job, pos);
        if let Some(combo) = combo
            && !job.name.as_deref().is_some_and(mentions_matrix)
        {
            let values: Vec<&str> = combo.iter().map(|(_, v)| v.as_str()).collect();
            name = format!("{name} ({})", values.join(", "));
        }
        let mut env = base_env.clone();
        env.extend(self.env(&job.env, m, Stage::Job, pos));
        let size: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if size > MAX_ENV_BYTES {
            self.diags.push(Diagnostic::new(
                self.file,
                pos,
                format!(
                    "the environment of job `{}` (pipeline and job `env`, interpolated) is {size} bytes; the limit is {MAX_ENV_BYTES}",
                    job.key
                ),
            ));
        }
        PlannedJob {
            key: job.key.clone(),
            name,
            needs,
            condition: job.condition.clone(),
            runs_on: job.runs_on.iter().map(|l| self.interpolate(l, m, Stage::Job, pos)).collect(),
            image: job.image.as_ref().map(|i| self.image(i, m, pos)),
            services: job
                .services
                .iter()
                .map(|s| ServiceSpec {
                    name: s.name.clone(),
                    image: self.image(&s.image, m, pos),
                    env: self.env(&s.env, m, Stage::Job, pos),
                    command: s.command.iter().map(|w| self.interpolate(w, m, Stage::Job, pos)).collect(),
                })
                .collect(),
            network: job.network,
            resources: job.resources,
            timeout: job.timeout,
            retries: job.retries,
            priority: job.priority.unwrap_or(default_priority),
            env,
            secrets: job.secrets.clone(),
            steps: job.steps.iter().map(|s| self.step(s, m)).collect(),
            artifacts: job.artifacts.iter().map(|a| self.interpolate(a, m, Stage::Job, pos)).collect(),
            notify: job.notify.clone(),
            continue_on_error: job.continue_on_error,
            snapshots: job.snapshots,
            fail_fast: job.fail_fast,
            matrix_group: combo.map(|_| job.key.clone()),
            environment: job.environment.as_ref().map(|e| self.environment(e, m)),
            artifacts_from: Vec::new(),
            matrix,
        }
    }

    /// `environment:` interpolated and checked: its name, and its services'
    /// names and probes.
    fn environment(&mut self, e: &EnvironmentSpec, m: Option<&BTreeMap<String, String>>) -> EnvironmentSpec {
        let planned = EnvironmentSpec {
            name: self.interpolate(&e.name, m, Stage::Job, e.pos),
            url: e.url.as_ref().map(|u| self.interpolate(u, m, Stage::Job, e.pos)),
            services: e
                .services
                .iter()
                .map(|s| DeployedService {
                    name: self.interpolate(&s.name, m, Stage::Job, e.pos),
                    endpoints: s.endpoints.clone(),
                    probe: s
                        .probe
                        .as_ref()
                        .map(|p| ProbeSpec { target: self.interpolate(&p.target, m, Stage::Job, e.pos), ..p.clone() }),
                    on_change: s.on_change.clone(),
                })
                .collect(),
            pos: e.pos,
        };
        let mut problems = Vec::new();
        if let Some(why) = environment_name_problem(&planned.name) {
            problems.push(format!("environment `{}`: {why}", planned.name));
        }
        let mut names = Vec::new();
        for s in &planned.services {
            if let Some(why) = environment_name_problem(&s.name) {
                problems.push(format!("service `{}`: {why}", s.name));
            }
            if names.contains(&&s.name) {
                problems.push(format!("service `{}` is declared twice", s.name));
            }
            names.push(&s.name);
            if let Some(why) = s.probe.as_ref().and_then(probe_problem) {
                problems.push(format!("the probe of service `{}`: {why}", s.name));
            }
        }
        for why in problems {
            self.diags.push(Diagnostic::new(self.file, planned.pos, why));
        }
        planned
    }

    fn step(&mut self, step: &Step, m: Option<&BTreeMap<String, String>>) -> PlannedStep {
        let pos = step.pos;
        let action = match &step.action {
            StepAction::Run { script } => StepAction::Run { script: self.interpolate(script, m, Stage::Step, pos) },
            StepAction::Uses { plugin, version, with, allow_network } => StepAction::Uses {
                plugin: plugin.clone(),
                version: version.clone(),
                with: with.iter().map(|(k, v)| (k.clone(), self.json(v, m, pos))).collect(),
                allow_network: *allow_network,
            },
        };
        let name = match &step.name {
            Some(n) => self.interpolate(n, m, Stage::Step, pos),
            None => default_step_name(&action),
        };
        PlannedStep {
            name,
            id: step.id.clone(),
            env: self.env(&step.env, m, Stage::Step, pos),
            timeout: step.timeout,
            continue_on_error: step.continue_on_error,
            condition: step.condition.clone(),
            working_directory: step.working_directory.as_ref().map(|w| self.interpolate(w, m, Stage::Step, pos)),
            reuse_key_files: step.reuse_key_files.iter().map(|k| self.interpolate(k, m, Stage::Step, pos)).collect(),
            allowed_secrets: step.allowed_secrets.iter().map(|s| s.value.clone()).collect(),
            action,
        }
    }

    fn json(&mut self, v: &serde_json::Value, m: Option<&BTreeMap<String, String>>, pos: Pos) -> serde_json::Value {
        use serde_json::Value as J;
        match v {
            J::String(s) => J::String(self.interpolate(s, m, Stage::Step, pos)),
            J::Array(items) => J::Array(items.iter().map(|i| self.json(i, m, pos)).collect()),
            J::Object(map) => J::Object(map.iter().map(|(k, i)| (k.clone(), self.json(i, m, pos))).collect()),
            other => other.clone(),
        }
    }
}

/// First non-empty line of the script (truncated), or the plugin reference.
fn default_step_name(action: &StepAction) -> String {
    match action {
        StepAction::Run { script } => {
            let line = script.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("run");
            if line.chars().count() > STEP_NAME_MAX {
                let cut: String = line.chars().take(STEP_NAME_MAX - 1).collect();
                format!("{}…", cut.trim_end())
            } else {
                line.to_owned()
            }
        }
        StepAction::Uses { plugin, version, .. } if version.is_empty() => plugin.clone(),
        StepAction::Uses { plugin, version, .. } => format!("{plugin}@{version}"),
    }
}

/// Most jobs a run may have, matrices expanded.
pub const MAX_JOBS: usize = 1000;
/// Most steps a job may have (its plugins' post steps not counted).
pub const MAX_STEPS: usize = 500;
/// Most bytes of a job's environment (pipeline and job `env`, names and
/// values): a process gets its environment with its arguments, and Linux
/// allows 2 MiB for both.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Most `artifacts:` patterns of a job.
pub const MAX_ARTIFACT_PATTERNS: usize = 100;
/// Why `name` cannot name an environment or a deployed service, if it
/// cannot: `[a-z0-9][a-z0-9_.-]{0,62}`.
pub fn environment_name_problem(name: &str) -> Option<String> {
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() {
        Some("the name is empty".into())
    } else if name.len() > 63 || !ok_first || !ok_rest {
        Some(
            "expected lower-case letters, digits, `_`, `.` or `-` (at most 63, starting with a letter or digit)".into(),
        )
    } else {
        None
    }
}

/// Why a health probe cannot be used, if it cannot.
fn probe_problem(p: &ProbeSpec) -> Option<String> {
    let t = &p.target;
    let rest = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")).or_else(|| t.strip_prefix("tcp://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    if t.len() > 2048 {
        return Some("the target is longer than 2048 bytes".into());
    }
    match host {
        None => return Some(format!("`{t}` is not `http://…`, `https://…` or `tcp://host:port`")),
        Some(h) if h.is_empty() || h.contains('@') || h.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Some(format!("`{t}` has no valid host (no user, spaces or control characters)"));
        }
        Some(h)
            if t.starts_with("tcp://") && h.rsplit_once(':').is_none_or(|(_, port)| port.parse::<u16>().is_err()) =>
        {
            return Some(format!("`{t}` needs a port: `tcp://host:port`"));
        }
        Some(_) => {}
    }
    if p.interval.is_some_and(|i| i < Duration::from_secs(1) || i > Duration::from_secs(86_400)) {
        return Some("`interval` must be between 1s and 24h".into());
    }
    if p.timeout.is_some_and(|i| i < Duration::from_millis(100) || i > Duration::from_secs(60)) {
        return Some("`timeout` must be between 100ms and 60s".into());
    }
    None
}

/// Most services one `environment:` declares.
pub const MAX_DEPLOYED_SERVICES: usize = 20;
/// Most entries of a `notify:` list (the pipeline's, or a job's).
pub const MAX_NOTIFY: usize = 10;
/// Most addresses of one `notify:` entry's `email`.
pub const MAX_NOTIFY_EMAILS: usize = 10;
/// Most characters of an email address in `notify:`.
pub const MAX_EMAIL_LEN: usize = 254;

/// Compiles `p` for the trigger described by `ctx`.
///
/// Fails when a required manual input is missing, a trigger value contains
/// `${{`, or a plan-time expression cannot be evaluated.
pub fn plan(p: &Pipeline, ctx: &PlanContext) -> Result<Plan, Vec<Diagnostic>> {
    let mut planner = Planner { file: &p.file, ctx, inputs: BTreeMap::new(), diags: Vec::new() };
    let declared = p.triggers.manual.as_ref().map_or(&[][..], |m| &m.inputs[..]);
    for input in declared {
        if let Some(default) = &input.default {
            planner.inputs.insert(input.name.clone(), default.clone());
        }
    }
    planner.inputs.extend(ctx.inputs.iter().map(|(k, v)| (k.clone(), v.clone())));
    if matches!(ctx.event.as_str(), "manual" | "api") {
        for input in declared.iter().filter(|i| i.required) {
            if !planner.inputs.contains_key(&input.name) {
                planner.diags.push(Diagnostic::new(
                    &p.file,
                    input.pos,
                    format!("missing required input `{}`", input.name),
                ));
            }
        }
    }
    let untrusted = [("branch", &ctx.branch), ("tag", &ctx.tag), ("commit", &ctx.commit), ("repo", &ctx.repo)];
    let inputs = planner.inputs.iter().map(|(k, v)| (k.as_str(), v));
    for (what, value) in untrusted.iter().filter_map(|(w, v)| v.as_ref().map(|v| (*w, v))).chain(inputs) {
        if value.contains("${{") {
            planner.diags.push(Diagnostic::new(
                &p.file,
                Pos::START,
                format!("the value of `{what}` contains `${{{{`, which is not allowed"),
            ));
        }
    }
    if !planner.diags.is_empty() {
        sort_diagnostics(&mut planner.diags);
        return Err(planner.diags);
    }

    let name = planner.interpolate(&p.name, None, Stage::Job, Pos::START);
    let env = planner.env(&p.env, None, Stage::Job, Pos::START);
    let concurrency = p.concurrency.as_ref().map(|c| ConcurrencyPlan {
        group: planner.interpolate(&c.group, None, Stage::Job, Pos::START),
        cancel_in_progress: c.cancel_in_progress,
    });

    // Expand matrices and assign plan indices.
    let mut expansions: Vec<Vec<Option<Combination>>> = Vec::new();
    let mut indices: Vec<Vec<usize>> = Vec::new();
    let mut next = 0;
    for job in &p.jobs {
        let combos = match &job.matrix {
            None => vec![None],
            Some(m) => match m.expand() {
                Ok(c) => c.into_iter().map(Some).collect(),
                Err(e) => {
                    planner.diags.push(Diagnostic::new(&p.file, m.pos, format!("{e} (job `{}`)", job.key)));
                    Vec::new()
                }
            },
        };
        if next <= MAX_JOBS && next + combos.len() > MAX_JOBS {
            planner.diags.push(Diagnostic::new(
                &p.file,
                job.pos,
                format!("job `{}` takes the run past {MAX_JOBS} jobs (matrices expanded), the limit", job.key),
            ));
        }
        indices.push((next..next + combos.len()).collect());
        next += combos.len();
        expansions.push(combos);
    }
    if next > MAX_JOBS {
        sort_diagnostics(&mut planner.diags);
        return Err(planner.diags);
    }
    let mut jobs = Vec::with_capacity(next);
    for (job, combos) in p.jobs.iter().zip(&expansions) {
        let mut needs: Vec<usize> = Vec::new();
        for need in &job.needs {
            let target = p.jobs.iter().position(|j| j.key == need.value);
            for i in target.and_then(|t| indices.get(t)).into_iter().flatten() {
                if !needs.contains(i) {
                    needs.push(*i);
                }
            }
        }
        let mut artifacts_from: Vec<usize> = Vec::new();
        for from in &job.artifacts_from {
            let target = p.jobs.iter().position(|j| j.key == from.value);
            for i in target.and_then(|t| indices.get(t)).into_iter().flatten() {
                if !artifacts_from.contains(i) {
                    artifacts_from.push(*i);
                }
            }
        }
        for combo in combos {
            let mut planned = planner.job(job, combo.as_deref(), &env, p.priority, needs.clone());
            planned.artifacts_from = artifacts_from.clone();
            planned.snapshots = planned.snapshots.or(p.snapshots);
            // A step that may be reused needs the snapshot after it.
            if planned.steps.iter().any(|s| !s.reuse_key_files.is_empty()) {
                planned.snapshots = Some(true);
            }
            jobs.push(planned);
        }
    }
    if !planner.diags.is_empty() {
        sort_diagnostics(&mut planner.diags);
        return Err(planner.diags);
    }
    Ok(Plan { name, env, priority: p.priority, concurrency, notify: p.notify.clone(), jobs })
}
