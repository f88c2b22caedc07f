//! A planned pipeline as the job assignments a server would send: one
//! [`JobAssignment`] per planned job (matrix expanded), with the same
//! steps (plugin post phases appended), env and `VIADUCT_*` variables.
//!
//! Planned jobs and steps become the API's messages as the server's
//! `launch::resolve` makes them, through the same code
//! ([`viaduct_sdk::planned`]); the job → assignment part mirrors the
//! server's `engine::dispatch::assign`, and
//! `assignment_matches_the_servers_shape` pins what it must produce. Job
//! `if:` conditions are decided by the server's rules
//! ([`viaduct_sdk::planned::job_should_run`], through [`should_run`]).

use std::collections::{BTreeMap, HashMap};

use viaduct_pipeline::plan::{Plan, PlannedJob};
use viaduct_proto::v1::{ExprContext as Context, JobAssignment, JobRef, Status};
use viaduct_sdk::planned::{self, JobCondition};

use super::plugins::Catalog;

/// What the run is about (the server takes it from the event).
#[derive(Debug, Clone, Default)]
pub struct RunFacts {
    /// The run's id (`VIADUCT_RUN_ID`).
    pub run_id: String,
    /// `event` of expressions and `VIADUCT_EVENT`.
    pub event: String,
    /// Branch checked out in the directory, if any.
    pub branch: String,
    /// Its commit, if any.
    pub commit: String,
    /// The repository's name (the directory's).
    pub repo: String,
    /// `--input` values.
    pub inputs: HashMap<String, String>,
}

/// One planned job, ready to run.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// The job key in the file.
    pub key: String,
    /// Display name (`test (sh)` for a matrix expansion).
    pub name: String,
    /// Indices of the jobs it needs.
    pub needs: Vec<usize>,
    /// `if:` as written (empty: `success()`).
    pub condition: String,
    /// Runs again after a failure, this many times.
    pub retries: u32,
    /// Its failure leaves the run successful.
    pub continue_on_error: bool,
    /// A failure cancels its matrix siblings.
    pub fail_fast: bool,
    /// The job key when expanded from a matrix.
    pub matrix_group: String,
    /// Secrets it lists.
    pub secrets: Vec<String>,
    /// The secret holding its image's registry credentials, if any.
    pub credentials: String,
    /// Its `artifacts:` (copied out of the workspace by `exec`).
    pub artifacts: Vec<String>,
    /// The assignment, secrets not yet filled in.
    pub assignment: JobAssignment,
}

/// The jobs of `plan`, `uses:` resolved in `catalog` (already checked).
pub fn jobs(plan: &Plan, catalog: &Catalog, run: &RunFacts) -> Vec<LocalJob> {
    plan.jobs.iter().enumerate().map(|(i, j)| job(plan, i, j, catalog, run)).collect()
}

fn job(plan: &Plan, i: usize, j: &PlannedJob, catalog: &Catalog, run: &RunFacts) -> LocalJob {
    let job_id = format!("{}.{}", run.run_id, i + 1);
    let mut env: HashMap<String, String> = plan.env.clone().into_iter().collect();
    env.extend(j.env.clone());
    for (k, v) in [
        ("CI", "true"),
        ("VIADUCT", "true"),
        ("VIADUCT_LOCAL", "true"),
        ("VIADUCT_RUN_ID", &run.run_id),
        ("VIADUCT_JOB_ID", &job_id),
        ("VIADUCT_JOB_NAME", &j.name),
        ("VIADUCT_JOB_KEY", &j.key),
        ("VIADUCT_ATTEMPT", "1"),
        ("VIADUCT_PIPELINE", &plan.name),
        ("VIADUCT_EVENT", &run.event),
        ("VIADUCT_REPO", &run.repo),
        ("VIADUCT_BRANCH", &run.branch),
        ("VIADUCT_COMMIT", &run.commit),
    ] {
        if !v.is_empty() {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let context = Context {
        branch: run.branch.clone(),
        tag: String::new(),
        event: run.event.clone(),
        commit: run.commit.clone(),
        repo: run.repo.clone(),
        run_id: run.run_id.clone(),
        matrix: j.matrix.clone().into_iter().collect(),
        inputs: run.inputs.clone(),
    };
    let assignment = JobAssignment {
        job: Some(JobRef { job_id, attempt: 1, grant: String::new() }),
        run_id: run.run_id.clone(),
        job_name: j.name.clone(),
        job_key: j.key.clone(),
        steps: planned::steps(&j.steps, |plugin, version| {
            let found = catalog.resolve(plugin, version)?;
            Some((found.digest.clone(), Some(found.manifest.clone())))
        }),
        env,
        timeout_ms: planned::millis(j.timeout),
        image: j.image.as_ref().map(planned::image_plan),
        secrets: HashMap::new(),
        context: Some(context),
        logs: Vec::new(),
        // The workspace is a copy of the directory: nothing to check out.
        source: None,
        services: planned::service_plans(&j.services),
        network: planned::network(j.network),
        cpus: j.resources.cpus.unwrap_or(0.0),
        memory_bytes: j.resources.memory.unwrap_or(0),
        registry_auth: String::new(),
        // Copied out of the workspace by `exec` itself (no server to upload to).
        artifacts: Vec::new(),
        pipeline: plan.name.clone(),
        // The runner's default (a terminal keeps nothing anyway).
        max_step_log_bytes: 0,
        max_job_log_bytes: 0,
        traceparent: String::new(),
        snapshots: false,
        resume: None,
        hold_failed_ms: 0,
        // Every job starts from a copy of the same directory; artifacts
        // stay where `exec` copies them (`artifacts_from` needs a server).
        artifacts_from: Vec::new(),
    };
    LocalJob {
        key: j.key.clone(),
        name: j.name.clone(),
        needs: j.needs.clone(),
        condition: j.condition.clone().unwrap_or_default(),
        retries: j.retries,
        continue_on_error: j.continue_on_error,
        fail_fast: j.fail_fast,
        matrix_group: j.matrix_group.clone().unwrap_or_default(),
        secrets: j.secrets.clone(),
        credentials: j.image.as_ref().and_then(|i| i.credentials.clone()).unwrap_or_default(),
        artifacts: j.artifacts.clone(),
        assignment,
    }
}

/// Whether `job`, its needs ended as `needs` (key, status), runs: `Ok(None)`
/// yes, `Ok(Some(why))` skipped, `Err` a condition that cannot be
/// evaluated. The server's rules: `success()` by default; a skipped need
/// makes `success()` false; a cancelled one makes `cancelled()` true.
pub fn should_run(job: &LocalJob, needs: &[(String, Status)]) -> Result<Option<String>, String> {
    let a = &job.assignment;
    let context = a.context.clone().unwrap_or_default();
    let no_inputs = HashMap::new();
    let facts = JobCondition { condition: &job.condition, context: &context, env: &a.env, run_inputs: &no_inputs };
    // Never asked once the run is interrupted (the jobs left are cancelled).
    if planned::job_should_run(&facts, needs, false)? {
        return Ok(None);
    }
    Ok(Some(if job.condition.is_empty() {
        let failed: Vec<&str> = needs.iter().filter(|(_, s)| *s != Status::Success).map(|(k, _)| k.as_str()).collect();
        format!("skipped: needed job(s) did not succeed: {}", failed.join(", "))
    } else {
        format!("skipped: `if: {}` was false", job.condition)
    }))
}

/// The env a job's secrets give, or the first secret it lists that was not
/// given.
pub fn secrets_of(job: &LocalJob, given: &BTreeMap<String, String>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for name in &job.secrets {
        let value = given.get(name).ok_or_else(|| missing(name))?;
        out.insert(name.clone(), value.clone());
    }
    Ok(out)
}

/// The registry credentials (`user:password`) of a job's image, if it names
/// a secret for them.
pub fn registry_auth(job: &LocalJob, given: &BTreeMap<String, String>) -> Result<String, String> {
    if job.credentials.is_empty() {
        return Ok(String::new());
    }
    given.get(&job.credentials).cloned().ok_or_else(|| missing(&job.credentials))
}

fn missing(name: &str) -> String {
    format!(
        "secret `{name}` is not given: pass --secret {name} with {name} set in the environment, or a --secrets-file \
         with a {name}=… line"
    )
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::step_plan::Action;

    use super::*;

    fn planned(yaml: &str) -> Vec<LocalJob> {
        let pipeline = viaduct_pipeline::parse("p.yml", yaml).unwrap();
        let ctx = viaduct_pipeline::plan::PlanContext { event: "manual".into(), ..Default::default() };
        let plan = viaduct_pipeline::plan::plan(&pipeline, &ctx).unwrap();
        let run = RunFacts { run_id: "local-1".into(), event: "manual".into(), ..Default::default() };
        jobs(&plan, &Catalog::default(), &run)
    }

    #[test]
    fn assignment_matches_the_servers_shape() {
        let jobs = planned(include_str!("../../../examples/hello.yml"));
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["build", "test (sh)", "test (bash)", "report"]);
        assert_eq!(jobs[1].needs, [0]);
        assert_eq!(jobs[3].needs, [1, 2]);
        assert_eq!(jobs[3].condition, "always()");
        let a = &jobs[1].assignment;
        assert_eq!(a.job.as_ref().unwrap().job_id, "local-1.2");
        assert_eq!(a.env["GREETING"], "hello");
        assert_eq!(a.env["VIADUCT_JOB_NAME"], "test (sh)");
        assert_eq!(a.env["VIADUCT_RUN_ID"], "local-1");
        assert_eq!(a.env["CI"], "true");
        assert_eq!(a.context.as_ref().unwrap().matrix["shell"], "sh");
        assert_eq!(a.steps.len(), 1);
        assert_eq!(a.steps[0].index, 1);
        assert_eq!(a.steps[0].timeout_ms, 60_000);
        assert!(matches!(&a.steps[0].action, Some(Action::Run(r)) if r.script.contains("sh -c")));
        assert_eq!(jobs[0].assignment.steps[1].id, "version");
        assert!(a.source.is_none(), "the workspace is a copy: no checkout");
    }

    #[test]
    fn job_conditions_follow_the_servers_rules() {
        let jobs = planned(include_str!("../../../examples/hello.yml"));
        let (test, report) = (&jobs[1], &jobs[3]);
        assert_eq!(should_run(test, &[("build".into(), Status::Success)]).unwrap(), None);
        let why = should_run(test, &[("build".into(), Status::Failure)]).unwrap().unwrap();
        assert_eq!(why, "skipped: needed job(s) did not succeed: build");
        let why = should_run(test, &[("build".into(), Status::Skipped)]).unwrap();
        assert!(why.is_some(), "a skipped need skips a default condition");
        let needs = [("test".into(), Status::Failure), ("test".into(), Status::Skipped)];
        assert_eq!(should_run(report, &needs).unwrap(), None, "always() runs anyway");
    }

    #[test]
    fn secrets_are_taken_from_what_was_given_or_named_when_missing() {
        let yaml = "jobs:\n  j:\n    secrets: [TOKEN]\n    steps:\n      - run: 'true'\n";
        let jobs = planned(yaml);
        let mut given = BTreeMap::new();
        let err = secrets_of(&jobs[0], &given).unwrap_err();
        assert!(err.contains("secret `TOKEN` is not given") && err.contains("--secret TOKEN"), "{err}");
        given.insert("TOKEN".to_string(), "s3cr3t".to_string());
        assert_eq!(secrets_of(&jobs[0], &given).unwrap()["TOKEN"], "s3cr3t");
    }
}
