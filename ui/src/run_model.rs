//! Keeping runs current from `Runs.Watch` events.
//!
//! Events carry whole entities: a run event has the run's fields without
//! jobs, a job event the job's without steps, a step event the step. So an
//! event is applied by replacing the entity and keeping its children.
//! Applying events again after a fresher snapshot is harmless as long as
//! they are applied in cursor order: each entity ends at its last event.
//! Pages therefore open the watch first, then load the snapshot, then apply
//! every event received since the watch opened.

use viaduct_proto::v1::{Job, Run, RunEvent, Status, Step, run_event::Change};

use crate::{run_filter::RunFilter, status, time_format};

/// The numeric value of a run id ("42" → 42; anything else sorts first).
pub fn run_number(id: &str) -> u64 {
    id.parse().unwrap_or(0)
}

/// The run of a job id ("42.1" → "42").
pub fn run_of_job(job_id: &str) -> &str {
    job_id.split('.').next().unwrap_or(job_id)
}

/// Replaces the run-level fields of `run` with those of `update` (the jobs
/// stay).
pub fn merge_run(run: &mut Run, update: &Run) {
    let jobs = std::mem::take(&mut run.jobs);
    *run = update.clone();
    if run.jobs.is_empty() {
        run.jobs = jobs;
    }
}

/// Replaces or adds `job` in `run` (its steps stay unless it brings some).
pub fn merge_job(run: &mut Run, job: &Job) {
    match run.jobs.iter_mut().find(|j| j.id == job.id) {
        Some(existing) => {
            let steps = std::mem::take(&mut existing.steps);
            let waiting = std::mem::take(&mut existing.waiting);
            *existing = job.clone();
            if existing.steps.is_empty() {
                existing.steps = steps;
            }
            // Events never carry it: kept while the job stays queued.
            if existing.status() == Status::Queued && existing.waiting.is_empty() {
                existing.waiting = waiting;
            }
        }
        None => run.jobs.push(job.clone()),
    }
}

/// Whether a job of `run` is queued (so why it waits is worth asking).
pub fn has_queued(run: &Run) -> bool {
    run.jobs.iter().any(|j| j.status() == Status::Queued)
}

/// Takes why each job waits (`Job.waiting`) from a fresher snapshot of the
/// same run, for the jobs queued in both; nothing else of it (the events
/// may be newer than the snapshot).
pub fn merge_waiting(run: &mut Run, fresh: &Run) {
    for job in run.jobs.iter_mut().filter(|j| j.status() == Status::Queued) {
        if let Some(f) = fresh.jobs.iter().find(|f| f.id == job.id && f.status() == Status::Queued) {
            job.waiting.clone_from(&f.waiting);
        }
    }
}

/// Replaces or adds `step` in its job of `run`; a step of an older attempt
/// than the one shown is ignored.
pub fn merge_step(run: &mut Run, step: &Step) {
    let Some(job) = run.jobs.iter_mut().find(|j| j.id == step.job_id) else { return };
    match job.steps.iter_mut().find(|s| s.index == step.index) {
        Some(existing) if existing.attempt > step.attempt => {}
        Some(existing) => *existing = step.clone(),
        None => {
            let pos = job.steps.partition_point(|s| s.index < step.index);
            job.steps.insert(pos, step.clone());
        }
    }
}

/// Applies one event to `run` (events of other runs are ignored).
pub fn apply(run: &mut Run, event: &RunEvent) {
    if event.run_id != run.id {
        return;
    }
    match &event.change {
        Some(Change::Run(r)) => merge_run(run, r),
        Some(Change::Job(j)) => merge_job(run, j),
        Some(Change::Step(s)) => merge_step(run, s),
        None => {}
    }
}

/// A live list of runs, newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunList {
    /// The runs shown.
    pub runs: Vec<Run>,
    /// The token of the next page (empty: no more).
    pub next_page: String,
}

impl RunList {
    /// Applies an event: updates a listed run; adds a new run that matches
    /// `filter` when it is newer than the oldest listed one (or the list is
    /// not full: no next page).
    pub fn apply(&mut self, event: &RunEvent, filter: &RunFilter) {
        let id = event.run_id.as_str();
        if let Some(run) = self.runs.iter_mut().find(|r| r.id == id) {
            apply(run, event);
            return;
        }
        let Some(Change::Run(r)) = &event.change else { return };
        if !filter.matches(r) {
            return;
        }
        let n = run_number(id);
        let oldest = self.runs.last().map_or(0, |r| run_number(&r.id));
        if !self.next_page.is_empty() && n < oldest {
            return;
        }
        let pos = self.runs.partition_point(|r| run_number(&r.id) > n);
        self.runs.insert(pos, r.clone());
    }

    /// Adds the next page's runs (skipping any already listed).
    pub fn extend(&mut self, runs: Vec<Run>, next_page: String) {
        for r in runs {
            if !self.runs.iter().any(|x| x.id == r.id) {
                self.runs.push(r);
            }
        }
        self.next_page = next_page;
    }
}

/// "repo · branch · abc1234 · push" (the parts a run has).
pub fn source_summary(run: &Run) -> String {
    let Some(src) = &run.source else { return String::new() };
    let mut parts: Vec<String> = Vec::new();
    if !src.repo.is_empty() {
        parts.push(src.repo.clone());
    }
    if !src.branch.is_empty() {
        parts.push(src.branch.clone());
    } else if !src.tag.is_empty() {
        parts.push(src.tag.clone());
    }
    if !src.commit.is_empty() {
        parts.push(short_commit(&src.commit).to_string());
    }
    if src.pull_request > 0 {
        parts.push(format!("#{}", src.pull_request));
    }
    if !src.event.is_empty() {
        parts.push(src.event.clone());
    }
    parts.join(" · ")
}

/// The first 7 characters of a commit id.
pub fn short_commit(commit: &str) -> &str {
    let end = commit.char_indices().nth(7).map_or(commit.len(), |(i, _)| i);
    &commit[..end]
}

/// When it started (or was created) and finished, in ms.
pub fn run_times(run: &Run) -> (Option<i64>, Option<i64>, Option<i64>) {
    let t = run.times.as_ref();
    (
        time_format::timestamp_ms(t.and_then(|t| t.created_at.as_ref())),
        time_format::timestamp_ms(t.and_then(|t| t.started_at.as_ref())),
        time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref())),
    )
}

/// True when the run can be cancelled (something in it is unfinished).
pub fn can_cancel(run: &Run) -> bool {
    !status::is_terminal(run.status())
}

/// True when the run can be retried: it finished and has a job in a state
/// a retry re-runs.
pub fn can_retry(run: &Run) -> bool {
    status::is_terminal(run.status()) && run.jobs.iter().any(|j| status::is_retryable(j.status()))
}

/// True when a retry can resume a job that did not succeed from its failed
/// step: one of its steps before that kept a snapshot (or was restored).
pub fn can_resume(run: &Run) -> bool {
    can_retry(run)
        && run.jobs.iter().filter(|j| status::is_retryable(j.status())).any(|j| {
            j.steps
                .iter()
                .take_while(|s| s.status() == Status::Success || s.restored_from > 0)
                .any(|s| s.snapshot || s.restored_from > 0)
        })
}

/// True when the run waits for someone to approve it.
pub fn can_approve(run: &Run) -> bool {
    run.approval.as_ref().is_some_and(|a| a.pending) && !status::is_terminal(run.status())
}

/// What the run page says about the run's trust: why it waits for
/// approval (or who approved it), and what an untrusted run does not get.
pub fn trust_notice(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(a) = &run.approval {
        out.push(if a.pending {
            format!("Waiting for approval: {}.", a.reason)
        } else {
            format!("Approved by {}: {}.", a.approved_by, a.reason)
        });
    }
    if run.trust == viaduct_proto::v1::Trust::Untrusted as i32 {
        out.push("Untrusted: this run gets no secrets, no registry credentials and no protected runners.".into());
    }
    out
}

/// True when one job can be cancelled.
pub fn can_cancel_job(job: &Job) -> bool {
    status::is_active(job.status())
}

/// True when a debug shell can be opened in the job's workspace: it
/// finished without succeeding, and a step of it left a snapshot.
pub fn can_debug(job: &Job) -> bool {
    let st = job.status();
    status::is_terminal(st) && st != Status::Success && job.steps.iter().any(|s| s.snapshot)
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::{Approval, RunSource, Status, Trust};

    use super::*;

    #[test]
    fn a_debug_shell_opens_on_a_failed_job_with_a_snapshot() {
        let mut j = job("7.1", Status::Failure);
        j.steps = vec![step("7.1", 1, 1, Status::Success), step("7.1", 2, 1, Status::Failure)];
        assert!(!can_debug(&j), "no snapshot");
        j.steps[0].snapshot = true;
        assert!(can_debug(&j));
        j.status = Status::Success as i32;
        assert!(!can_debug(&j), "it succeeded");
        j.status = Status::Running as i32;
        assert!(!can_debug(&j), "it has not finished");
        j.status = Status::Cancelled as i32;
        assert!(can_debug(&j));
    }

    #[test]
    fn waiting_notes_outlive_events_while_queued() {
        let mut r = run("7", Status::Running);
        r.jobs = vec![job("7.1", Status::Queued), job("7.2", Status::Running)];
        assert!(has_queued(&r));
        let mut fresh = r.clone();
        fresh.jobs[0].waiting = "no runner is connected".into();
        fresh.jobs[1].waiting = "ignored".into();
        merge_waiting(&mut r, &fresh);
        assert_eq!(r.jobs[0].waiting, "no runner is connected");
        assert_eq!(r.jobs[1].waiting, "", "only queued jobs wait");
        merge_job(&mut r, &job("7.1", Status::Queued));
        assert_eq!(r.jobs[0].waiting, "no runner is connected", "an event of a job still queued keeps it");
        merge_job(&mut r, &job("7.1", Status::Running));
        assert_eq!(r.jobs[0].waiting, "", "a job that left the queue waits no more");
        assert!(!has_queued(&r));
    }

    #[test]
    fn approval_and_trust_notices() {
        let mut run = Run { status: Status::Queued as i32, ..Default::default() };
        assert!(!can_approve(&run) && trust_notice(&run).is_empty());
        run.trust = Trust::Untrusted as i32;
        run.approval = Some(Approval { reason: "pull request #7 by `m`".into(), pending: true, ..Default::default() });
        assert!(can_approve(&run));
        assert_eq!(trust_notice(&run).len(), 2);
        assert!(trust_notice(&run)[0].starts_with("Waiting for approval: pull request #7"));
        run.status = Status::Cancelled as i32;
        assert!(!can_approve(&run), "a cancelled run cannot be approved");
    }

    fn run(id: &str, status: Status) -> Run {
        Run { id: id.into(), status: status as i32, pipeline: "ci".into(), ..Run::default() }
    }

    fn job(id: &str, status: Status) -> Job {
        Job { id: id.into(), run_id: run_of_job(id).into(), status: status as i32, ..Job::default() }
    }

    fn step(job: &str, index: u32, attempt: u32, status: Status) -> Step {
        Step {
            id: format!("{job}.{index}"),
            job_id: job.into(),
            index,
            attempt,
            status: status as i32,
            ..Step::default()
        }
    }

    fn ev(run_id: &str, change: Change) -> RunEvent {
        RunEvent { run_id: run_id.into(), change: Some(change), ..RunEvent::default() }
    }

    #[test]
    fn events_replace_entities_and_keep_children() {
        let mut r = run("7", Status::Running);
        r.jobs.push(Job { steps: vec![step("7.1", 1, 1, Status::Running)], ..job("7.1", Status::Running) });
        apply(&mut r, &ev("7", Change::Run(run("7", Status::Success))));
        assert_eq!(r.status(), Status::Success);
        assert_eq!(r.jobs.len(), 1);
        apply(&mut r, &ev("7", Change::Job(job("7.1", Status::Success))));
        assert_eq!(r.jobs[0].status(), Status::Success);
        assert_eq!(r.jobs[0].steps.len(), 1);
        apply(&mut r, &ev("7", Change::Step(step("7.1", 1, 1, Status::Success))));
        apply(&mut r, &ev("7", Change::Step(step("7.1", 3, 1, Status::Pending))));
        apply(&mut r, &ev("7", Change::Step(step("7.1", 2, 1, Status::Pending))));
        let idx: Vec<u32> = r.jobs[0].steps.iter().map(|s| s.index).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert_eq!(r.jobs[0].steps[0].status(), Status::Success);
        // A new job, another run's event, a step of an unknown job.
        apply(&mut r, &ev("7", Change::Job(job("7.2", Status::Queued))));
        apply(&mut r, &ev("8", Change::Run(run("8", Status::Failure))));
        apply(&mut r, &ev("7", Change::Step(step("7.9", 1, 1, Status::Running))));
        assert_eq!(r.jobs.len(), 2);
        assert_eq!(r.status(), Status::Success);
    }

    #[test]
    fn older_attempt_steps_do_not_overwrite() {
        let mut r = run("7", Status::Running);
        r.jobs.push(Job { steps: vec![step("7.1", 1, 2, Status::Running)], ..job("7.1", Status::Running) });
        apply(&mut r, &ev("7", Change::Step(step("7.1", 1, 1, Status::Failure))));
        assert_eq!(r.jobs[0].steps[0].attempt, 2);
        assert_eq!(r.jobs[0].steps[0].status(), Status::Running);
    }

    #[test]
    fn replaying_events_after_a_snapshot_converges() {
        // Events e1 (running), e2 (success) both before the snapshot.
        let mut r = run("7", Status::Success);
        apply(&mut r, &ev("7", Change::Run(run("7", Status::Running))));
        apply(&mut r, &ev("7", Change::Run(run("7", Status::Success))));
        assert_eq!(r.status(), Status::Success);
    }

    #[test]
    fn live_list_inserts_in_order_and_filters() {
        let mut list =
            RunList { runs: vec![run("9", Status::Running), run("5", Status::Success)], next_page: "t".into() };
        let all = RunFilter::default();
        list.apply(&ev("10", Change::Run(run("10", Status::Queued))), &all);
        list.apply(&ev("7", Change::Run(run("7", Status::Queued))), &all);
        // Older than the oldest listed, with more pages: belongs to a later page.
        list.apply(&ev("3", Change::Run(run("3", Status::Queued))), &all);
        let ids: Vec<&str> = list.runs.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["10", "9", "7", "5"]);
        list.apply(&ev("9", Change::Run(run("9", Status::Failure))), &all);
        assert_eq!(list.runs[1].status(), Status::Failure);
        // Job events of unlisted runs do nothing.
        list.apply(&ev("11", Change::Job(job("11.1", Status::Queued))), &all);
        assert_eq!(list.runs.len(), 4);
        let failures = RunFilter { statuses: vec![Status::Failure], ..RunFilter::default() };
        list.apply(&ev("12", Change::Run(run("12", Status::Running))), &failures);
        assert_eq!(list.runs.len(), 4);
        list.extend(vec![run("5", Status::Success), run("4", Status::Success)], String::new());
        assert_eq!(list.runs.len(), 5);
        assert!(list.next_page.is_empty());
        list.apply(&ev("1", Change::Run(run("1", Status::Queued))), &all);
        assert_eq!(list.runs.last().map(|r| r.id.as_str()), Some("1"));
    }

    #[test]
    fn summaries_and_actions() {
        let mut r = run("7", Status::Failure);
        r.source = Some(RunSource {
            repo: "app".into(),
            branch: "main".into(),
            commit: "0123456789abcdef".into(),
            event: "push".into(),
            ..RunSource::default()
        });
        assert_eq!(source_summary(&r), "app · main · 0123456 · push");
        assert_eq!(source_summary(&run("1", Status::Queued)), "");
        assert_eq!(short_commit("abc"), "abc");
        assert_eq!(short_commit("日本語日本語日本語"), "日本語日本語日");
        r.jobs = vec![job("7.1", Status::Success), job("7.2", Status::Failure)];
        assert!(can_retry(&r));
        assert!(!can_cancel(&r));
        r.jobs[1].status = Status::Success as i32;
        assert!(!can_retry(&r));
        let running = run("8", Status::Running);
        assert!(can_cancel(&running) && !can_retry(&running));
        assert!(can_cancel_job(&job("8.1", Status::Running)));
        assert!(!can_cancel_job(&job("8.1", Status::Skipped)));
        assert_eq!(run_of_job("42.1"), "42");
        assert_eq!(run_number("42"), 42);
        assert_eq!(run_number("x"), 0);
    }
}
