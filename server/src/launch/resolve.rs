//! Resolving pipeline files and inline jobs into the runs the engine
//! creates ([`NewRun`]).
//!
//! Parsing, validation, matrix expansion and plan-time interpolation belong
//! to the `viaduct-pipeline` crate; this module adapts its output to the
//! engine's [`NewRun`] and its diagnostics to the API's, and resolves
//! `uses:` against the plugin registry: every plugin step of a plan names
//! the exact component (digest) and manifest it runs, its `with:` keys are
//! checked against the manifest's inputs, and plugins with a post phase get
//! a post step after the job's last step. The conversion of planned jobs
//! into the API's messages is `viaduct_sdk::planned`, shared with the
//! runner's local runs.

use std::collections::HashMap;

use viaduct_pipeline::{
    plan::{Plan, PlanContext, PlannedJob, StepAction},
    spec::Pipeline,
};
use viaduct_proto::v1::{
    self, ExprContext, ImagePlan, InlineJob, Plugin, RunAction, RunSource, StepPlan, step_plan::Action,
};
use viaduct_sdk::planned;

use crate::{
    engine::runs::{ArtifactsFrom, NewJob, NewRun},
    error::{Error, Result},
    plugins::PluginRegistry,
    store::records::{JobEnvironment, NotifyRule, ServiceDecl},
};

/// Resolved plugins by (name, version requirement) as written.
type Resolved = HashMap<(String, String), Plugin>;

/// What started a run, besides the file.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    /// Event, repository, ref, commit…
    pub source: RunSource,
    /// `${{ inputs.* }}`.
    pub inputs: HashMap<String, String>,
    /// Overrides the run's priority (and that of jobs that inherit it).
    pub priority: Option<u32>,
    /// Stored pipeline name, if any.
    pub pipeline_ref: String,
    /// How far the run's code is trusted (see `trust`); unspecified means
    /// trusted (the API, pushes, schedules).
    pub trust: v1::Trust,
    /// Why the run must wait for approval, if it must.
    pub approval: Option<String>,
    /// A submit's key (see `engine::NewRun::request_key`).
    pub request_key: Option<[u8; 32]>,
    /// Its states become commit statuses on its repository's forge.
    pub reports_status: bool,
    /// A job that fails keeps its live environment for a debug shell.
    pub keep_on_failure: bool,
}

fn diagnostics(diags: Vec<viaduct_pipeline::Diagnostic>) -> Vec<v1::Diagnostic> {
    diags
        .into_iter()
        .map(|d| v1::Diagnostic { file: d.file, line: d.line, column: d.column, message: d.message })
        .collect()
}

fn context(cause: &Cause) -> PlanContext {
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let src = &cause.source;
    PlanContext {
        event: src.event.clone(),
        branch: opt(&src.branch),
        tag: opt(&src.tag),
        commit: opt(&src.commit),
        repo: opt(&src.repo),
        inputs: cause.inputs.clone().into_iter().collect(),
    }
}

/// Parses a pipeline file.
pub fn parse(file: &str, yaml: &str) -> Result<Pipeline, Vec<v1::Diagnostic>> {
    viaduct_pipeline::parse(file, yaml).map_err(diagnostics)
}

/// Every problem in a pipeline file that can be found without a trigger
/// (empty when valid), including plugins that are not published and
/// `with:` keys they do not accept.
pub fn validate(file: &str, yaml: &str, plugins: &PluginRegistry) -> Result<Vec<v1::Diagnostic>> {
    let errors = diagnostics(viaduct_pipeline::check(file, yaml));
    if !errors.is_empty() {
        return Ok(errors);
    }
    match viaduct_pipeline::parse(file, yaml) {
        Ok(p) => match resolve_plugins(&p, plugins) {
            Ok(_) => Ok(Vec::new()),
            Err(Error::InvalidFile(d)) => Ok(d),
            Err(e) => Err(e),
        },
        Err(d) => Ok(diagnostics(d)),
    }
}

/// Checks a file for storing: its job keys, or every error.
pub fn check(file: &str, yaml: &str, plugins: &PluginRegistry) -> Result<Vec<String>> {
    let errors = validate(file, yaml, plugins)?;
    if !errors.is_empty() {
        return Err(Error::InvalidFile(errors));
    }
    let pipeline = viaduct_pipeline::parse(file, yaml).map_err(|d| Error::InvalidFile(diagnostics(d)))?;
    Ok(pipeline.jobs.iter().map(|j| j.key.clone()).collect())
}

/// Resolves every `uses:` of `pipeline`; unknown plugins or versions,
/// unknown or missing inputs and ungrantable network access are
/// diagnostics at the step.
fn resolve_plugins(pipeline: &Pipeline, plugins: &PluginRegistry) -> Result<Resolved> {
    let mut resolved = Resolved::new();
    let mut diags = Vec::new();
    let mut diag = |pos: viaduct_pipeline::Pos, message: String| {
        diags.push(v1::Diagnostic { file: pipeline.file.clone(), line: pos.line, column: pos.column, message });
    };
    for step in pipeline.jobs.iter().flat_map(|j| j.steps.iter()) {
        let StepAction::Uses { plugin, version, with, allow_network } = &step.action else { continue };
        let wanted = if version.is_empty() { plugin.clone() } else { format!("{plugin}@{version}") };
        let found = match resolved.get(&(plugin.clone(), version.clone())) {
            Some(p) => p.clone(),
            None => match plugins.resolve(plugin, version)? {
                Some(p) => p,
                None => {
                    let message = match plugins.get(&wanted) {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("plugin `{wanted}` is not published"),
                    };
                    diag(step.action_pos, message);
                    continue;
                }
            },
        };
        let manifest = found.manifest.clone().unwrap_or_default();
        let exact = format!("{}@{}", manifest.name, manifest.version);
        let mut inputs: Vec<&str> = manifest.inputs.keys().map(String::as_str).collect();
        inputs.sort_unstable();
        for key in with.keys() {
            if !manifest.inputs.contains_key(key) {
                let pos = step.with_pos.get(key).copied().unwrap_or(step.action_pos);
                let known = if inputs.is_empty() { "none".to_string() } else { inputs.join(", ") };
                let hint = viaduct_pipeline::suggestion(key, inputs.iter().copied());
                diag(pos, format!("`{key}` is not an input of {exact} (inputs: {known}){hint}"));
            }
        }
        for name in inputs.iter().filter(|n| manifest.inputs[**n].required && !with.contains_key(**n)) {
            diag(step.action_pos, format!("{exact} needs the input `{name}` (under `with:`)"));
        }
        if *allow_network && !manifest.capabilities.as_ref().is_some_and(|c| c.network) {
            diag(step.action_pos, format!("{exact} does not use the network: `allow.network` cannot be granted"));
        }
        resolved.insert((plugin.clone(), version.clone()), found);
    }
    if diags.is_empty() { Ok(resolved) } else { Err(Error::InvalidFile(diags)) }
}

/// The JSON Schema of the file format.
pub fn json_schema() -> String {
    viaduct_pipeline::json_schema().to_string()
}

/// Plans a run of a pipeline file.
pub fn from_yaml(file: &str, yaml: &str, cause: &Cause, plugins: &PluginRegistry) -> Result<NewRun> {
    let pipeline = parse(file, yaml).map_err(Error::InvalidFile)?;
    from_pipeline(&pipeline, yaml, cause, plugins)
}

/// Plans a run of a parsed pipeline (`yaml` is its text, kept with the run).
pub fn from_pipeline(pipeline: &Pipeline, yaml: &str, cause: &Cause, plugins: &PluginRegistry) -> Result<NewRun> {
    let resolved = resolve_plugins(pipeline, plugins)?;
    let plan: Plan =
        viaduct_pipeline::plan::plan(pipeline, &context(cause)).map_err(|d| Error::InvalidFile(diagnostics(d)))?;
    let run_priority = u32::from(plan.priority);
    let priority = cause.priority.unwrap_or(run_priority);
    let ctx = expr_context(cause);
    let jobs = plan
        .jobs
        .iter()
        .map(|j| {
            let mut env: HashMap<String, String> = plan.env.clone().into_iter().collect();
            env.extend(j.env.clone());
            // A run-level override moves the jobs that inherit the run's
            // priority; jobs that set their own keep it.
            let job_priority = u32::from(j.priority);
            let job_priority = if job_priority == run_priority { priority } else { job_priority };
            new_job(j, env, job_priority, &ctx, &resolved)
        })
        .collect();
    Ok(NewRun {
        pipeline: plan.name.clone(),
        priority,
        source: cause.source.clone(),
        inputs: cause.inputs.clone(),
        yaml: yaml.to_string(),
        pipeline_ref: cause.pipeline_ref.clone(),
        concurrency: plan.concurrency.as_ref().map(|c| (c.group.clone(), c.cancel_in_progress)),
        jobs,
        notify: notify_rules(&plan.notify),
        error: None,
        checkout: None,
        trust: cause.trust,
        approval: cause.approval.clone(),
        request_key: cause.request_key,
        reports_status: cause.reports_status,
        keep_on_failure: cause.keep_on_failure,
    })
}

fn expr_context(cause: &Cause) -> ExprContext {
    let src = &cause.source;
    ExprContext {
        branch: src.branch.clone(),
        tag: src.tag.clone(),
        event: src.event.clone(),
        commit: src.commit.clone(),
        repo: src.repo.clone(),
        run_id: String::new(),
        matrix: HashMap::new(),
        inputs: cause.inputs.clone(),
    }
}

fn new_job(
    j: &PlannedJob,
    env: HashMap<String, String>,
    priority: u32,
    ctx: &ExprContext,
    resolved: &Resolved,
) -> NewJob {
    NewJob {
        key: j.key.clone(),
        name: j.name.clone(),
        matrix: j.matrix.clone().into_iter().collect(),
        needs: j.needs.iter().map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX)).collect(),
        condition: j.condition.clone().unwrap_or_default(),
        runs_on: j.runs_on.clone(),
        image: j.image.as_ref().map(planned::image_plan),
        services: planned::service_plans(&j.services),
        network: planned::network(j.network),
        cpus: j.resources.cpus.unwrap_or(0.0),
        memory_bytes: j.resources.memory.unwrap_or(0),
        timeout_ms: planned::millis(j.timeout),
        retries: j.retries,
        priority,
        env,
        secrets: j.secrets.clone(),
        steps: planned::steps(&j.steps, |plugin, version| {
            let found = resolved.get(&(plugin.to_string(), version.to_string()))?;
            Some((found.digest.clone(), found.manifest.clone()))
        }),
        artifacts: j.artifacts.clone(),
        continue_on_error: j.continue_on_error,
        fail_fast: j.fail_fast,
        matrix_group: j.matrix_group.clone().unwrap_or_default(),
        context: ExprContext { matrix: j.matrix.clone().into_iter().collect(), ..ctx.clone() },
        notify: notify_rules(&j.notify),
        snapshots: j.snapshots,
        environment: j.environment.as_ref().map(job_environment),
        artifacts_from: j
            .artifacts_from
            .iter()
            .map(|i| ArtifactsFrom::Index(u32::try_from(i + 1).unwrap_or(u32::MAX)))
            .collect(),
    }
}

/// `environment:` as the engine keeps it.
fn job_environment(e: &viaduct_pipeline::spec::EnvironmentSpec) -> JobEnvironment {
    let secs = |d: Option<std::time::Duration>, default: u32| d.map_or(default, |d| d.as_secs().max(1) as u32);
    JobEnvironment {
        name: e.name.clone(),
        url: e.url.clone().unwrap_or_default(),
        services: e
            .services
            .iter()
            .map(|s| ServiceDecl {
                name: s.name.clone(),
                endpoints: s.endpoints.clone(),
                probe: s.probe.as_ref().map(|p| p.target.clone()).unwrap_or_default(),
                interval_s: secs(s.probe.as_ref().and_then(|p| p.interval), 30),
                timeout_s: secs(s.probe.as_ref().and_then(|p| p.timeout), 5),
                on_change: s.on_change.clone().unwrap_or_default(),
            })
            .collect(),
        source_deployment: 0,
        kind: "deploy".into(),
    }
}

/// `notify:` entries as the engine keeps them.
fn notify_rules(list: &[viaduct_pipeline::spec::Notify]) -> Vec<NotifyRule> {
    use viaduct_pipeline::spec::Channel;
    list.iter()
        .map(|n| {
            let (url_secret, key_secret, to) = match &n.channel {
                Channel::Webhook { url_secret, key_secret } => {
                    (url_secret.clone(), key_secret.clone().unwrap_or_default(), Vec::new())
                }
                Channel::Slack { url_secret } | Channel::Matrix { url_secret } => {
                    (url_secret.clone(), String::new(), Vec::new())
                }
                Channel::Email { to } => (String::new(), String::new(), to.clone()),
            };
            NotifyRule {
                on: n.on.iter().map(|o| o.word().to_string()).collect(),
                kind: n.channel.kind().to_string(),
                url_secret,
                key_secret,
                to,
            }
        })
        .collect()
}

/// Plans a run of one inline job (`Runs.Submit` with `job`).
pub fn from_inline(job: &InlineJob, cause: &Cause) -> Result<NewRun> {
    if job.steps.is_empty() {
        return Err(Error::invalid("job.steps: an inline job needs at least one step"));
    }
    let mut steps = Vec::with_capacity(job.steps.len());
    for (i, s) in job.steps.iter().enumerate() {
        if s.run.trim().is_empty() {
            return Err(Error::invalid(format!("job.steps[{i}].run: a step needs a command")));
        }
        let name = if s.name.is_empty() {
            s.run.lines().next().unwrap_or_default().chars().take(60).collect()
        } else {
            s.name.clone()
        };
        steps.push(StepPlan {
            index: u32::try_from(i + 1).unwrap_or(u32::MAX),
            name,
            action: Some(Action::Run(RunAction { script: s.run.clone() })),
            env: s.env.clone(),
            timeout_ms: u64::from(s.timeout_seconds) * 1000,
            continue_on_error: s.continue_on_error,
            ..Default::default()
        });
    }
    let name = if job.name.is_empty() { "job".to_string() } else { job.name.clone() };
    let priority = cause.priority.unwrap_or(5);
    let image = (!job.image.is_empty()).then(|| ImagePlan {
        name: job.image.clone(),
        pull: "if_not_present".into(),
        ..Default::default()
    });
    Ok(NewRun {
        pipeline: name.clone(),
        priority,
        source: cause.source.clone(),
        inputs: cause.inputs.clone(),
        yaml: String::new(),
        pipeline_ref: String::new(),
        concurrency: None,
        jobs: vec![NewJob {
            key: name.clone(),
            name,
            runs_on: job.runs_on.clone(),
            image,
            timeout_ms: u64::from(job.timeout_seconds) * 1000,
            priority,
            env: job.env.clone(),
            steps,
            context: expr_context(cause),
            ..Default::default()
        }],
        error: None,
        checkout: None,
        trust: cause.trust,
        approval: cause.approval.clone(),
        request_key: cause.request_key,
        reports_status: cause.reports_status,
        keep_on_failure: cause.keep_on_failure,
        notify: Vec::new(),
    })
}
