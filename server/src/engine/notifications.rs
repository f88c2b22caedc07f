//! What a transition tells the people watching: the notifications of the
//! runs and jobs it ended, by their `notify:` rules.
//!
//! An ended run or job has an outcome — success, or failure (failed, timed
//! out, runner lost); a cancelled or skipped one has none and notifies no
//! one. Compared with the same pipeline's previous ended run on the same
//! branch (or pull request) of the same repository, a success after a
//! failure is also `fixed`, a failure after a success also `broken`. A rule
//! fires once, for the most specific of those it asks for.
//!
//! [`Tx::commit`](super::tx::Tx::commit) writes them into `notify_outbox` in
//! the same commit as the end; `notify` sends them. An untrusted run (a pull
//! request from a fork or an untrusted sender) notifies no one, and a rule
//! whose secrets the run may not use (their scopes, as for a job's secrets)
//! is left out, with a line in the log.

use viaduct_proto::{
    StatusWord,
    v1::{Status, Trust},
};

use super::index::{self, Field};
use crate::{
    error::Result,
    store::{
        Store, T,
        keys::{JobKey, RunId},
        records::{JobBrief, JobName, JobRecord, NotificationRecord, NotifyRule, RunHead, RunRecord, SCHEMA_VERSION},
    },
    trust,
};

/// Earlier runs looked at to find the previous outcome.
const LOOK_BACK: usize = 100;

/// `Some(true)` for a success, `Some(false)` for a failure, `None` for an
/// ending that is neither (cancelled, skipped) or no ending yet.
fn outcome(status: Status) -> Option<bool> {
    match status {
        Status::Success => Some(true),
        Status::Failure | Status::TimedOut | Status::RunnerLost => Some(false),
        _ => None,
    }
}

/// The event a rule fires for, given the outcome and the previous one.
fn event(rule: &NotifyRule, success: bool, previous: Option<bool>) -> Option<&'static str> {
    let asks = |w: &str| rule.on.iter().any(|o| o == w);
    let specific = match (success, previous) {
        (true, Some(false)) => Some("fixed"),
        (false, Some(true)) => Some("broken"),
        _ => None,
    };
    let plain = if success { "success" } else { "failure" };
    specific.filter(|w| asks(w)).or_else(|| asks(plain).then_some(plain))
}

/// Whether `status` just ended with an outcome (it was not ended before).
fn just_ended(before: Option<i32>, status: Status) -> Option<bool> {
    let was_ended = before.and_then(|b| Status::try_from(b).ok()).is_some_and(|b| b.is_terminal());
    if was_ended { None } else { outcome(status) }
}

/// The rules of `rules` this run may use: none for an untrusted run; only
/// those whose secrets' scopes admit it.
fn admitted<'r>(store: &Store, run: &RunRecord, rules: &'r [NotifyRule]) -> Result<Vec<&'r NotifyRule>> {
    let source = run.source.clone().unwrap_or_default();
    let facts = trust::RunFacts {
        source: &source,
        pipeline: &run.pipeline,
        trust: trust::effective(run.trust),
        environment: None,
    };
    if facts.trust == Trust::Untrusted {
        if !rules.is_empty() {
            tracing::info!(pipeline = %run.pipeline, "untrusted run: no notifications");
        }
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    'rules: for rule in rules {
        for name in [&rule.url_secret, &rule.key_secret].into_iter().filter(|n| !n.is_empty()) {
            let refusal = match crate::secrets::SecretBox::scope(store, name)? {
                None => Some(format!("secret `{name}` is not set")),
                // A server-only secret (a forge token) is never a notification's:
                // it would go to a URL a pipeline picks, or sign what it writes.
                Some(scope) => trust::secret_refusal(name, &scope, &facts),
            };
            if let Some(why) = refusal {
                tracing::warn!(pipeline = %run.pipeline, kind = %rule.kind, why, "notification left out");
                continue 'rules;
            }
        }
        out.push(rule);
    }
    Ok(out)
}

/// The run of the same pipeline, repository and branch (or pull request)
/// as `run` that ended last before it (by when they ended, not when they
/// started), with an outcome: its id and outcome.
fn previous_run(store: &Store, id: RunId, run: &RunRecord) -> Result<Option<(RunId, bool)>> {
    let lane = |s: &viaduct_proto::v1::RunSource| (s.repo.clone(), s.branch.clone(), s.pull_request, s.tag.clone());
    let ours = lane(&run.source.clone().unwrap_or_default());
    let mut last: Option<(i64, RunId, bool)> = None;
    for older in index::scan(store, Field::Pipeline, run.pipeline.as_bytes(), Some(id)).take(LOOK_BACK) {
        let older = older?;
        let Some(head) = store.get::<RunHead>(T::Runs, older.key())? else { continue };
        if lane(&head.source.clone().unwrap_or_default()) != ours || head.finished_ms > run.finished_ms {
            continue;
        }
        if let Some(ok) = outcome(head.status())
            && last.is_none_or(|(at, ..)| head.finished_ms > at)
        {
            last = Some((head.finished_ms, older, ok));
        }
    }
    Ok(last.map(|(_, id, ok)| (id, ok)))
}

/// A record for `rule` firing `event`.
fn record(rule: &NotifyRule, event: &str, run_id: RunId, run: &RunRecord) -> NotificationRecord {
    NotificationRecord {
        schema: SCHEMA_VERSION,
        rule: Some(rule.clone()),
        event: event.to_string(),
        run_id: run_id.to_string(),
        pipeline: run.pipeline.clone(),
        source: run.source.clone(),
        ..Default::default()
    }
}

/// The notifications of a run that just ended.
pub fn of_run(
    store: &Store,
    id: RunId,
    before: Option<&RunRecord>,
    run: &RunRecord,
    job: &dyn Fn(JobKey) -> Result<Option<JobName>>,
) -> Result<Vec<NotificationRecord>> {
    if run.notify.is_empty() {
        return Ok(Vec::new());
    }
    let Some(success) = just_ended(before.map(|b| b.status), run.status()) else { return Ok(Vec::new()) };
    let rules = admitted(store, run, &run.notify)?;
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    // A retried run (only a run that did not succeed is retried) follows
    // its own earlier ending.
    let previous = if run.retried > 0 { Some(false) } else { previous_run(store, id, run)?.map(|(_, ok)| ok) };
    let mut jobs = Vec::new();
    for i in 1..=run.job_count {
        let key = JobKey::new(id, i);
        if let Some(j) = job(key)? {
            jobs.push(JobBrief { id: key.to_string(), name: j.name, status: j.status });
        }
    }
    let mut out = Vec::new();
    for rule in rules {
        if let Some(event) = event(rule, success, previous) {
            out.push(NotificationRecord {
                status: run.status,
                message: run.error.lines().next().unwrap_or_default().to_string(),
                started_ms: run.started_ms,
                finished_ms: run.finished_ms,
                jobs: jobs.clone(),
                ..record(rule, event, id, run)
            });
        }
    }
    Ok(out)
}

/// The notifications of a job that just ended (`run` is its run).
pub fn of_job(
    store: &Store,
    key: JobKey,
    before: Option<&JobRecord>,
    job: &JobRecord,
    run: &RunRecord,
) -> Result<Vec<NotificationRecord>> {
    if job.notify.is_empty() {
        return Ok(Vec::new());
    }
    let Some(success) = just_ended(before.map(|b| b.status), job.status()) else { return Ok(Vec::new()) };
    let rules = admitted(store, run, &job.notify)?;
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    // The same job in the previous run (by name: a matrix job's expansions
    // share a key).
    let mut previous = None;
    if let Some((older, _)) = previous_run(store, key.run, run)? {
        let count = store.get::<RunHead>(T::Runs, older.key())?.map_or(0, |h| h.job_count);
        for i in 1..=count {
            let other = JobKey::new(older, i);
            if let Some(j) = store.get::<JobName>(T::Jobs, other.key())?
                && j.key == job.key
                && j.name == job.name
            {
                previous = outcome(j.status());
                break;
            }
        }
    }
    let mut out = Vec::new();
    for rule in rules {
        if let Some(event) = event(rule, success, previous) {
            out.push(NotificationRecord {
                job_id: key.to_string(),
                job_name: job.name.clone(),
                status: job.status,
                message: job.message.lines().next().unwrap_or_default().to_string(),
                started_ms: job.started_ms,
                finished_ms: job.finished_ms,
                ..record(rule, event, key.run, run)
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(on: &[&str]) -> NotifyRule {
        NotifyRule { on: on.iter().map(|s| s.to_string()).collect(), kind: "email".into(), ..Default::default() }
    }

    #[test]
    fn a_rule_fires_for_the_most_specific_event_it_asks_for() {
        let both = rule(&["failure", "fixed", "broken", "success"]);
        assert_eq!(event(&both, true, Some(false)), Some("fixed"));
        assert_eq!(event(&both, false, Some(true)), Some("broken"));
        assert_eq!(event(&both, false, Some(false)), Some("failure"));
        assert_eq!(event(&both, true, None), Some("success"));
        let default = rule(&["failure", "fixed"]);
        assert_eq!(event(&default, true, Some(true)), None, "a success after a success is news to no one");
        assert_eq!(event(&default, false, Some(true)), Some("failure"), "broken is also a failure");
        assert_eq!(event(&rule(&["broken"]), false, Some(false)), None, "still failing is not broken");
        assert_eq!(just_ended(Some(Status::Running as i32), Status::Cancelled), None);
        assert_eq!(just_ended(Some(Status::Failure as i32), Status::Failure), None, "ended before");
        assert_eq!(just_ended(None, Status::TimedOut), Some(false));
    }
}
