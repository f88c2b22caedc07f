//! A planned pipeline's jobs as the API's messages.
//!
//! `viaduct_pipeline::plan` turns a pipeline file into planned jobs and
//! steps; the server (which stores and dispatches them) and the runner's
//! local runs (which run them without a server) both need them as
//! `viaduct.v1` messages: [`steps`] (a job's steps, `uses:` resolved, then
//! the post steps of its plugins), [`image_plan`], [`service_plans`],
//! [`network`] and [`millis`]. How a `uses:` plugin is found is the
//! caller's: the server looks in its registry, a local run in its catalog.
//!
//! Also here, so both decide alike: what a job's `if:` means once its needs
//! are final ([`job_should_run`]), and what `uses: NAME@VERSION` asks for
//! ([`version_requirement`]).

use std::{collections::HashMap, time::Duration};

use viaduct_pipeline::{
    expr::{self, Value},
    plan::{PlannedStep, StepAction},
    spec::{ImageSpec, Network, PullPolicy, ServiceSpec},
};
use viaduct_proto::{
    StatusWord,
    v1::{
        ExprContext, ImagePlan, PluginManifest, RunAction, ServicePlan, Status, StepPlan, UsesAction, step_plan::Action,
    },
};

/// A duration as the API's milliseconds (`0`: none).
pub fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A job's or service's image.
pub fn image_plan(i: &ImageSpec) -> ImagePlan {
    ImagePlan {
        name: i.name.clone(),
        pull: match i.pull {
            PullPolicy::IfNotPresent => "if_not_present",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
        .to_string(),
        user: i.user.clone().unwrap_or_default(),
        credentials: i.credentials.clone().unwrap_or_default(),
    }
}

/// A job's services.
pub fn service_plans(services: &[ServiceSpec]) -> Vec<ServicePlan> {
    services
        .iter()
        .map(|s| ServicePlan {
            name: s.name.clone(),
            image: Some(image_plan(&s.image)),
            env: s.env.clone().into_iter().collect(),
            command: s.command.clone(),
        })
        .collect()
}

/// A job's network mode as the API's word.
pub fn network(n: Network) -> String {
    match n {
        Network::Bridge => "bridge",
        Network::None => "none",
    }
    .to_string()
}

/// The steps of a job, then the post steps of its plugins that have one
/// (in reverse order, so the first plugin's post phase runs last).
///
/// `plugin(name, version)` finds the plugin a `uses: name@version` runs:
/// its component's digest and its manifest (`None`: not found, the step
/// then names neither).
pub fn steps<F>(planned: &[PlannedStep], plugin: F) -> Vec<StepPlan>
where
    F: Fn(&str, &str) -> Option<(String, Option<PluginManifest>)>,
{
    let mut steps: Vec<StepPlan> = planned.iter().enumerate().map(|(i, s)| step_plan(i, s, &plugin)).collect();
    let posts: Vec<StepPlan> = steps
        .iter()
        .rev()
        .filter_map(|main| {
            let Some(Action::Uses(u)) = &main.action else { return None };
            let manifest = u.manifest.as_ref().filter(|m| m.post)?;
            let condition = if manifest.post_if.is_empty() { "success()" } else { &manifest.post_if };
            Some(StepPlan {
                name: format!("Post {}", main.name),
                id: String::new(),
                action: Some(Action::Uses(UsesAction { phase: "post".into(), post_of: main.index, ..u.clone() })),
                condition: condition.to_string(),
                reuse: None,
                ..main.clone()
            })
        })
        .collect();
    for mut post in posts {
        post.index = u32::try_from(steps.len() + 1).unwrap_or(u32::MAX);
        steps.push(post);
    }
    steps
}

fn step_plan<F>(i: usize, s: &PlannedStep, plugin: &F) -> StepPlan
where
    F: Fn(&str, &str) -> Option<(String, Option<PluginManifest>)>,
{
    let action = match &s.action {
        StepAction::Run { script } => Action::Run(RunAction { script: script.clone() }),
        StepAction::Uses { plugin: name, version, with, allow_network } => {
            let (digest, manifest) = plugin(name, version).unwrap_or_default();
            Action::Uses(UsesAction {
                plugin: name.clone(),
                version: version.clone(),
                with_json: with.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                allow_network: *allow_network,
                digest,
                manifest,
                phase: "main".into(),
                post_of: 0,
                secrets: s.allowed_secrets.clone(),
            })
        }
    };
    StepPlan {
        index: u32::try_from(i + 1).unwrap_or(u32::MAX),
        name: s.name.clone(),
        id: s.id.clone().unwrap_or_default(),
        action: Some(action),
        env: s.env.clone().into_iter().collect(),
        timeout_ms: millis(s.timeout),
        continue_on_error: s.continue_on_error,
        condition: s.condition.clone().unwrap_or_default(),
        working_directory: s.working_directory.clone().unwrap_or_default(),
        reuse: (!s.reuse_key_files.is_empty())
            .then(|| viaduct_proto::v1::StepReuse { key_files: s.reuse_key_files.clone() }),
    }
}

/// What a job's `if:` is decided on, besides its needs.
#[derive(Debug, Clone, Copy)]
pub struct JobCondition<'a> {
    /// `if:` as written (empty: `success()`).
    pub condition: &'a str,
    /// Its expression context (branch, event, matrix, inputs…).
    pub context: &'a ExprContext,
    /// Its env (`env.*`).
    pub env: &'a HashMap<String, String>,
    /// The run's inputs, for an `inputs.*` its context lacks.
    pub run_inputs: &'a HashMap<String, String>,
}

/// A job's `if:` context once its needs are final.
struct JobContext<'a> {
    job: &'a JobCondition<'a>,
    needs: &'a [(String, Status)],
    status: expr::Status,
}

impl expr::ExprContext for JobContext<'_> {
    fn lookup(&self, path: &[&str]) -> Option<Value> {
        let ctx = self.job.context;
        let text = |s: &str| Some(Value::String(s.to_string()));
        let map = |m: &HashMap<String, String>, k: &str| m.get(k).map(|v| Value::String(v.clone()));
        match path {
            ["branch"] => text(&ctx.branch),
            ["tag"] => text(&ctx.tag),
            ["event"] => text(&ctx.event),
            ["commit"] => text(&ctx.commit),
            ["repo"] => text(&ctx.repo),
            ["run_id"] => text(&ctx.run_id),
            ["matrix", k] => map(&ctx.matrix, k),
            ["inputs", k] => map(&ctx.inputs, k).or_else(|| map(self.job.run_inputs, k)),
            ["env", k] => map(self.job.env, k),
            ["needs", job, "result"] => {
                self.needs.iter().find(|(key, _)| key == job).map(|(_, s)| Value::String(s.word().to_string()))
            }
            _ => None,
        }
    }

    fn status(&self) -> expr::Status {
        self.status
    }
}

/// Whether a job whose needs ended as `needs` (key, status) should run;
/// `cancelling`: its run is being cancelled. An error is a condition that
/// cannot be evaluated.
///
/// Status functions see the needed jobs: `failure()` is true when one of
/// them failed (failure, timed_out, runner_lost), `cancelled()` when one
/// was cancelled or the run is being cancelled, `success()` when all of
/// them succeeded. A skipped need makes `success()` false too, so skips
/// propagate down a chain unless a job asks for `always()` or `failure()`.
/// An absent condition means `success()`.
pub fn job_should_run(job: &JobCondition<'_>, needs: &[(String, Status)], cancelling: bool) -> Result<bool, String> {
    let failed = needs.iter().any(|(_, s)| s.is_failure());
    let cancelled = cancelling || needs.iter().any(|(_, s)| *s == Status::Cancelled);
    let skipped = needs.iter().any(|(_, s)| *s == Status::Skipped);
    let status = if failed {
        expr::Status::Failure
    } else if cancelled {
        expr::Status::Cancelled
    } else {
        expr::Status::Success
    };
    if job.condition.is_empty() {
        return Ok(status == expr::Status::Success && !skipped);
    }
    let ctx = JobContext { job, needs, status };
    let verdict = expr::eval_condition(job.condition, &ctx).map_err(|e| e.to_string())?;
    // A skipped need makes `success()` false: only conditions that hold
    // without it (always(), failure()) run the job.
    if skipped && status == expr::Status::Success {
        let without = JobContext { status: expr::Status::Failure, ..ctx };
        let on_failure = expr::eval_condition(job.condition, &without).map_err(|e| e.to_string())?;
        return Ok(verdict && on_failure);
    }
    Ok(verdict)
}

/// The semantic-version requirement `uses: NAME@VERSION` means: `1` →
/// `^1` (newest 1.x), `1.2` → `~1.2` (newest 1.2.x), `1.2.3` or a
/// pre-release → `=1.2.3` (exactly that), empty → `*` (newest).
pub fn version_requirement(version: &str) -> String {
    let dots = version.matches('.').count();
    match version {
        "" => "*".to_string(),
        v if dots >= 2 || v.contains('-') => format!("={v}"),
        v if dots == 1 => format!("~{v}"),
        v => format!("^{v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requirements_follow_the_pipeline_rules() {
        let req = |v: &str| version_requirement(v);
        assert_eq!(
            [req(""), req("1"), req("1.2"), req("1.2.3"), req("2-rc.1")],
            ["*", "^1", "~1.2", "=1.2.3", "=2-rc.1"]
        );
    }

    #[test]
    fn a_skipped_need_runs_only_conditions_that_hold_without_it() {
        let (context, env, inputs) = (ExprContext::default(), HashMap::new(), HashMap::new());
        let job = |condition| JobCondition { condition, context: &context, env: &env, run_inputs: &inputs };
        let skipped = [("a".to_string(), Status::Skipped)];
        assert!(!job_should_run(&job(""), &skipped, false).unwrap());
        assert!(!job_should_run(&job("success()"), &skipped, false).unwrap());
        assert!(job_should_run(&job("always()"), &skipped, false).unwrap());
        assert!(job_should_run(&job("cancelled()"), &[], true).unwrap());
        assert!(job_should_run(&job("needs.a.result == 'skipped'"), &skipped, false).is_ok());
    }

    #[test]
    fn post_steps_follow_the_main_steps_in_reverse() {
        let yaml = "jobs:\n  j:\n    steps:\n      - uses: a@1\n      - uses: b@1\n      - run: 'true'\n";
        let pipeline = viaduct_pipeline::parse("p.yml", yaml).unwrap();
        let plan = viaduct_pipeline::plan::plan(&pipeline, &Default::default()).unwrap();
        let found = |name: &str, _: &str| {
            let manifest = PluginManifest { name: name.into(), post: true, ..Default::default() };
            Some((format!("blake3:{name}"), Some(manifest)))
        };
        let steps = steps(&plan.jobs[0].steps, found);
        let shape: Vec<(u32, &str, u32)> = steps
            .iter()
            .map(|s| match &s.action {
                Some(Action::Uses(u)) => (s.index, u.digest.as_str(), u.post_of),
                _ => (s.index, "", 0),
            })
            .collect();
        assert_eq!(shape, [(1, "blake3:a", 0), (2, "blake3:b", 0), (3, "", 0), (4, "blake3:b", 2), (5, "blake3:a", 1)]);
        assert_eq!(steps[3].condition, "success()");
    }
}
