//! What a transition tells a forge: the commit statuses of the runs and jobs
//! whose state it changed, for runs of repositories with a forge connection
//! (`RunRecord::reports_status`, copied to each job), and the states of their
//! deployments ([`of_deployment`]: `StatusRecord::deployment` set), which
//! `forges` sends to the forge's deployments API.
//!
//! [`Tx::commit`](super::tx::Tx::commit) writes them to the `status_outbox`
//! tree in the same commit as the state they report, so a status is never
//! lost and never precedes its state; `forges` sends them. A state the forge
//! has no word for is mapped there; here every state, skips included, gives
//! a status, so a required check never waits forever.

use viaduct_proto::{
    StatusWord,
    v1::{DeploymentState, SourcePlan, Status},
};

use super::Engine;
use crate::{
    error::Result,
    store::{
        T, WriteSet,
        keys::{JobKey, RunId},
        records::{DeploymentRecord, JobRecord, RunRecord, SCHEMA_VERSION, StatusRecord},
    },
};

/// The most a forge shows next to a status (GitHub's limit).
pub const MAX_DESCRIPTION: usize = 140;

/// The key of a status of `repo` in the `status_outbox` tree.
pub fn outbox_key(repo: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.len() + 9);
    k.extend_from_slice(repo.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Whether the status a record reports changed.
fn changed(before: Option<i32>, now: i32) -> bool {
    before != Some(now) && now != Status::Unspecified as i32
}

/// The status of a run, if it reports one and its state changed.
pub fn of_run(id: RunId, before: Option<&RunRecord>, run: &RunRecord) -> Option<(String, StatusRecord)> {
    let source = run.source.as_ref().filter(|s| run.reports_status && !s.repo.is_empty() && !s.commit.is_empty())?;
    if !changed(before.map(|b| b.status), run.status)
        && before.is_some_and(|b| b.awaiting_approval == run.awaiting_approval)
    {
        return None;
    }
    let description = match run.status() {
        Status::Queued if run.awaiting_approval => "Waiting for approval".to_string(),
        Status::Queued | Status::Pending => "Queued".to_string(),
        Status::Running => "Running".to_string(),
        s => ended(s, run.started_ms, run.finished_ms, &run.error),
    };
    let rec = StatusRecord {
        schema: SCHEMA_VERSION,
        commit: source.commit.clone(),
        git_ref: source.r#ref.clone(),
        pipeline: run.pipeline.clone(),
        job: String::new(),
        status: run.status,
        description: shorten(&description),
        run_id: id.to_string(),
        job_id: String::new(),
        time_ms: run.finished_ms.max(run.started_ms).max(run.created_ms),
        attempt: run.retried + 1,
        ..Default::default()
    };
    Some((source.repo.clone(), rec))
}

/// The status of a job, if it reports one and its state changed.
pub fn of_job(key: JobKey, before: Option<&JobRecord>, job: &JobRecord) -> Option<(String, StatusRecord)> {
    let source: &SourcePlan =
        job.source.as_ref().filter(|s| job.reports_status && !s.repo.is_empty() && !s.commit.is_empty())?;
    if !changed(before.map(|b| b.status), job.status) {
        return None;
    }
    // A job skipped because one it needs failed must not pass a required
    // check: it is a failure that says it was skipped. A job whose own `if:`
    // was false is a success that says so.
    let reported = if job.status() == Status::Skipped && job.blocked { Status::Failure } else { job.status() };
    let description = match job.status() {
        Status::Pending => "Waiting for the jobs it needs".to_string(),
        Status::Queued => "Queued".to_string(),
        Status::Running => "Running".to_string(),
        s => ended(s, job.started_ms, job.finished_ms, &job.message),
    };
    let rec = StatusRecord {
        schema: SCHEMA_VERSION,
        commit: source.commit.clone(),
        git_ref: source.r#ref.clone(),
        pipeline: job.pipeline.clone(),
        job: job.name.clone(),
        status: reported as i32,
        description: shorten(&description),
        run_id: key.run.to_string(),
        job_id: key.to_string(),
        time_ms: job.finished_ms.max(job.started_ms).max(job.created_ms),
        attempt: job.attempt,
        ..Default::default()
    };
    Some((source.repo.clone(), rec))
}

/// The state of deployment `id` for the forge's deployments API, if it
/// changed and its run reports statuses (`reports`, asked only then: the run
/// may have to be read). Its `status` is the nearest run state (for logs);
/// the forge is told `deployment_state`.
pub fn of_deployment(
    id: u64,
    before: Option<&DeploymentRecord>,
    d: &DeploymentRecord,
    reports: impl FnOnce(RunId) -> bool,
) -> Option<(String, StatusRecord)> {
    if d.repo.is_empty() || d.commit.is_empty() || before.is_some_and(|b| b.state == d.state) {
        return None;
    }
    let env = &d.environment;
    let why = d.message.lines().next().unwrap_or_default().trim();
    let (status, description) = match DeploymentState::try_from(d.state).unwrap_or(DeploymentState::Unspecified) {
        DeploymentState::Unspecified => return None,
        DeploymentState::Waiting => (Status::Queued, format!("Waiting for approval to deploy to {env}")),
        DeploymentState::Queued => (Status::Queued, format!("Queued to deploy to {env}")),
        DeploymentState::InProgress => (Status::Running, format!("Deploying to {env}")),
        DeploymentState::Success => {
            let took = (d.started_ms > 0 && d.finished_ms >= d.started_ms)
                .then(|| format!(" in {}", duration(d.finished_ms - d.started_ms)));
            (Status::Success, format!("Deployed to {env}{}", took.unwrap_or_default()))
        }
        DeploymentState::Failure if why.is_empty() => (Status::Failure, format!("Failed to deploy to {env}")),
        DeploymentState::Failure => (Status::Failure, format!("Failed to deploy to {env}: {why}")),
        DeploymentState::Cancelled if why.is_empty() => (Status::Cancelled, format!("Deployment to {env} cancelled")),
        DeploymentState::Cancelled => (Status::Cancelled, format!("Deployment to {env} cancelled: {why}")),
        DeploymentState::Refused if why.is_empty() => (Status::Failure, format!("Deployment to {env} refused")),
        DeploymentState::Refused => (Status::Failure, format!("Deployment to {env} refused: {why}")),
    };
    let run = RunId(d.run);
    if !reports(run) {
        return None;
    }
    let rec = StatusRecord {
        schema: SCHEMA_VERSION,
        commit: d.commit.clone(),
        git_ref: d.git_ref.clone(),
        pipeline: d.pipeline.clone(),
        job: d.job_name.clone(),
        status: status as i32,
        description: shorten(&description),
        run_id: run.to_string(),
        job_id: JobKey::new(run, d.job).to_string(),
        time_ms: d.finished_ms.max(d.started_ms).max(d.approved_ms).max(d.created_ms),
        attempt: d.attempt,
        deployment: id,
        environment: env.clone(),
        deployment_state: d.state,
        environment_url: d.url.clone(),
    };
    Some((d.repo.clone(), rec))
}

/// Statuses one transition may write: their sequence numbers are its first
/// event cursor shifted by this many bits, plus their position.
const PER_TRANSITION_BITS: u32 = 20;

/// Adds the `statuses` of the transition whose first event cursor is
/// `first_cursor` to `ws`, in order: cursors grow from one transition to the
/// next, so sequence numbers do too.
pub fn write(ws: &mut WriteSet, first_cursor: u64, statuses: Vec<(String, StatusRecord)>) {
    for (i, (repo, rec)) in statuses.into_iter().enumerate().take(1 << PER_TRANSITION_BITS) {
        ws.put(T::StatusOutbox, outbox_key(&repo, sequence(first_cursor, i)), &rec);
    }
}

/// The sequence number of the `i`th record a transition whose first event
/// cursor is `first_cursor` puts in an outbox (statuses, notifications).
pub fn sequence(first_cursor: u64, i: usize) -> u64 {
    (first_cursor << PER_TRANSITION_BITS) | (i as u64 & ((1 << PER_TRANSITION_BITS) - 1))
}

/// What nothing ran for: a pipeline (and its jobs) a repository event did
/// not start — a pull request into a branch whose pipeline does not run
/// pull requests. Reported as skipped, so a required check does not wait
/// forever for a run that will never come.
pub struct NotRun<'a> {
    /// The repository.
    pub repo: &'a str,
    /// The commit the checks are on.
    pub commit: &'a str,
    /// Its ref.
    pub git_ref: &'a str,
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// Its jobs' names.
    pub jobs: Vec<String>,
    /// Why it did not run.
    pub why: &'a str,
}

impl Engine {
    /// Adds to `ws` the skipped statuses of what did not run, unless a run of
    /// that pipeline at that commit exists (its own statuses speak for it:
    /// a skip must never cover a failure).
    pub fn statuses_not_run(&self, ws: &mut WriteSet, what: &NotRun<'_>) -> Result<()> {
        if self.ran_at(what.repo, what.pipeline, what.commit)? {
            return Ok(());
        }
        // After every status written so far, before any written later: the
        // engine lock holds cursors still, and a not-run status takes the
        // top of the last transition's numbers (each its own).
        let last = {
            let st = self.lock();
            st.next_event.saturating_sub(1)
        };
        let description = shorten(&format!("skipped: {}", what.why));
        let names = std::iter::once(String::new()).chain(what.jobs.iter().cloned());
        for job in names {
            // A store id: unique across restarts too.
            let n = self.store().generate_id()? % (1 << (PER_TRANSITION_BITS - 1));
            let seq = sequence(last, (1 << PER_TRANSITION_BITS) - 1 - n as usize);
            let rec = StatusRecord {
                schema: SCHEMA_VERSION,
                commit: what.commit.to_string(),
                git_ref: what.git_ref.to_string(),
                pipeline: what.pipeline.to_string(),
                job,
                status: Status::Skipped as i32,
                description: description.clone(),
                run_id: String::new(),
                job_id: String::new(),
                time_ms: crate::store::now_ms(),
                attempt: 1,
                ..Default::default()
            };
            ws.put(T::StatusOutbox, outbox_key(what.repo, seq), &rec);
        }
        Ok(())
    }
}

/// How an ended run or job is described: its result, how long it took, and
/// why (a skip's reason, a failure's message).
fn ended(status: Status, started_ms: i64, finished_ms: i64, why: &str) -> String {
    let took = (started_ms > 0 && finished_ms >= started_ms).then(|| duration(finished_ms - started_ms));
    let why = why.lines().next().unwrap_or_default().trim();
    match (status, took) {
        // A required check must not wait for a job that will never run: a
        // skip is final, and says why.
        (Status::Skipped, _) if why.is_empty() => "skipped".to_string(),
        (Status::Skipped, _) => {
            format!("skipped: {}", why.trim_start_matches("will not run: ").trim_start_matches("skipped: "))
        }
        (Status::Success, Some(t)) => format!("Succeeded in {t}"),
        (Status::Success, None) => "Succeeded".to_string(),
        (s, took) => {
            let word = match s {
                Status::Failure => "Failed",
                Status::Cancelled => "Cancelled",
                Status::TimedOut => "Timed out",
                Status::RunnerLost => "Runner lost",
                other => other.word(),
            };
            let took = took.map(|t| format!(" after {t}")).unwrap_or_default();
            if why.is_empty() { format!("{word}{took}") } else { format!("{word}{took}: {why}") }
        }
    }
}

/// `1h2m`, `3m4s`, `5s`.
fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// At most [`MAX_DESCRIPTION`] characters, cut with an ellipsis.
fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_DESCRIPTION {
        return s.to_string();
    }
    let mut out: String = s.chars().take(MAX_DESCRIPTION - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use viaduct_proto::v1::RunSource;

    fn run(status: Status) -> RunRecord {
        RunRecord {
            pipeline: "ci".into(),
            status: status as i32,
            reports_status: true,
            source: Some(RunSource {
                repo: "app".into(),
                commit: "c0ffee".into(),
                r#ref: "refs/heads/main".into(),
                ..Default::default()
            }),
            created_ms: 1,
            ..Default::default()
        }
    }

    fn job(status: Status, message: &str) -> JobRecord {
        JobRecord {
            pipeline: "ci".into(),
            name: "test".into(),
            status: status as i32,
            message: message.into(),
            reports_status: true,
            source: Some(SourcePlan { repo: "app".into(), commit: "c0ffee".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn only_changes_of_reporting_runs_give_statuses() {
        let id = RunId(7);
        let (repo, s) = of_run(id, None, &run(Status::Queued)).expect("a new run reports");
        assert_eq!((repo.as_str(), s.job.as_str(), s.description.as_str()), ("app", "", "Queued"));
        assert!(of_run(id, Some(&run(Status::Running)), &run(Status::Running)).is_none(), "no change, no status");
        let quiet = RunRecord { reports_status: false, ..run(Status::Running) };
        assert!(of_run(id, None, &quiet).is_none());
        let inline = RunRecord { source: None, ..run(Status::Running) };
        assert!(of_run(id, None, &inline).is_none());
        let mut waiting = run(Status::Queued);
        waiting.awaiting_approval = true;
        assert_eq!(of_run(id, Some(&run(Status::Queued)), &waiting).unwrap().1.description, "Waiting for approval");
    }

    fn deployment(state: DeploymentState, message: &str) -> DeploymentRecord {
        DeploymentRecord {
            repo: "app".into(),
            environment: "production".into(),
            state: state as i32,
            message: message.into(),
            run: 7,
            job: 2,
            job_name: "deploy".into(),
            attempt: 1,
            pipeline: "ci".into(),
            git_ref: "refs/heads/main".into(),
            commit: "c0ffee".into(),
            url: "https://app.example".into(),
            created_ms: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_deployment_of_a_reporting_run_reports_each_state_it_reaches() {
        let yes = |_: RunId| true;
        let waiting = deployment(DeploymentState::Waiting, "waiting for approval");
        let (repo, s) = of_deployment(9, None, &waiting, yes).expect("a new deployment reports");
        assert_eq!((repo.as_str(), s.deployment, s.environment.as_str()), ("app", 9, "production"));
        assert_eq!((s.run_id.as_str(), s.job_id.as_str(), s.job.as_str()), ("7", "7.2", "deploy"));
        assert_eq!((s.commit.as_str(), s.git_ref.as_str()), ("c0ffee", "refs/heads/main"));
        assert_eq!(
            (s.deployment_state, s.description.as_str(), s.environment_url.as_str()),
            (DeploymentState::Waiting as i32, "Waiting for approval to deploy to production", "https://app.example")
        );
        assert!(of_deployment(9, Some(&waiting), &waiting, yes).is_none(), "no change, no status");
        let asked = std::cell::Cell::new(false);
        let no = |_: RunId| {
            asked.set(true);
            false
        };
        assert!(of_deployment(9, Some(&waiting), &waiting, no).is_none());
        assert!(!asked.get(), "the run is read only for a change");
        let queued = deployment(DeploymentState::Queued, "");
        assert!(of_deployment(9, Some(&waiting), &queued, no).is_none(), "a run that does not report");
        assert!(asked.get());
        let inline = DeploymentRecord { repo: String::new(), ..queued.clone() };
        assert!(of_deployment(9, None, &inline, yes).is_none(), "no repository, no forge");
        let running = deployment(DeploymentState::InProgress, "");
        assert_eq!(of_deployment(9, Some(&queued), &running, yes).unwrap().1.description, "Deploying to production");
        let mut done = deployment(DeploymentState::Success, "");
        (done.started_ms, done.finished_ms) = (1_000, 63_500);
        let (_, s) = of_deployment(9, Some(&running), &done, yes).unwrap();
        assert_eq!(
            (s.description.as_str(), s.status, s.time_ms),
            ("Deployed to production in 1m2s", Status::Success as i32, 63_500)
        );
        let failed = deployment(DeploymentState::Failure, "step `ship` exited with 1\nmore");
        let (_, s) = of_deployment(9, Some(&running), &failed, yes).unwrap();
        assert_eq!(s.description, "Failed to deploy to production: step `ship` exited with 1");
        let refused = deployment(DeploymentState::Refused, &"no ".repeat(100));
        let (_, s) = of_deployment(9, None, &refused, yes).unwrap();
        assert!(s.description.starts_with("Deployment to production refused: no no"), "{}", s.description);
        assert_eq!(s.description.chars().count(), MAX_DESCRIPTION);
    }

    #[test]
    fn endings_say_how_and_why() {
        let key = JobKey::new(RunId(7), 2);
        let skipped =
            of_job(key, Some(&job(Status::Pending, "")), &job(Status::Skipped, "skipped: `if: false` was false"));
        let (_, s) = skipped.unwrap();
        assert_eq!((s.description.as_str(), s.status), ("skipped: `if: false` was false", Status::Skipped as i32));
        let blocked =
            JobRecord { blocked: true, ..job(Status::Skipped, "skipped: needed job(s) did not succeed: build") };
        let (_, s) = of_job(key, None, &blocked).unwrap();
        assert_eq!(s.status, Status::Failure as i32, "a skip after a failure does not pass a required check");
        assert_eq!(s.description, "skipped: needed job(s) did not succeed: build");
        let skipped = of_job(key, None, &job(Status::Skipped, "will not run: needs `build`, which failed"));
        let (_, s) = skipped.unwrap();
        assert_eq!(s.description, "skipped: needs `build`, which failed");
        assert_eq!((s.job_id, s.job.as_str()), (key.to_string(), "test"));
        let mut failed = job(Status::Failure, "step `test` exited with 1\nmore");
        (failed.started_ms, failed.finished_ms) = (1_000, 63_500);
        assert_eq!(of_job(key, None, &failed).unwrap().1.description, "Failed after 1m2s: step `test` exited with 1");
        let long = job(Status::Failure, &"x".repeat(500));
        assert_eq!(of_job(key, None, &long).unwrap().1.description.chars().count(), MAX_DESCRIPTION);
    }
}
