//! How environments, deployments and deployed services read: a
//! deployment's state as a word, a label and the run state whose badge it
//! borrows; a service's health likewise; an environment's rules in words;
//! and what a job that deploys says about it on its run page.

use std::collections::HashMap;

use viaduct_proto::{
    RoleWord as _,
    v1::{Deployment, DeploymentState, EnvironmentRules, Health, Job, Role, Status},
};

use crate::{run_model, time_format};

/// The lower-case word of a deployment state (the `data-state`
/// attribute), as the CLI prints it: `waiting`, `in_progress`, …
pub fn word(s: DeploymentState) -> &'static str {
    match s {
        DeploymentState::Waiting => "waiting",
        DeploymentState::Queued => "queued",
        DeploymentState::InProgress => "in_progress",
        DeploymentState::Success => "success",
        DeploymentState::Failure => "failure",
        DeploymentState::Cancelled => "cancelled",
        DeploymentState::Refused => "refused",
        DeploymentState::Unspecified => "unknown",
    }
}

/// What a person reads: "Waiting for approval", "In progress", …
pub fn label(s: DeploymentState) -> &'static str {
    match s {
        DeploymentState::Waiting => "Waiting for approval",
        DeploymentState::Queued => "Queued",
        DeploymentState::InProgress => "In progress",
        DeploymentState::Success => "Succeeded",
        DeploymentState::Failure => "Failed",
        DeploymentState::Cancelled => "Cancelled",
        DeploymentState::Refused => "Refused",
        DeploymentState::Unspecified => "Unknown",
    }
}

/// The run state whose badge (colour and icon) a deployment state
/// borrows: waiting reads as pending, in progress as running, a refusal
/// (its job fails) as a failure.
pub fn look(s: DeploymentState) -> Status {
    match s {
        DeploymentState::Waiting => Status::Pending,
        DeploymentState::Queued => Status::Queued,
        DeploymentState::InProgress => Status::Running,
        DeploymentState::Success => Status::Success,
        DeploymentState::Failure | DeploymentState::Refused => Status::Failure,
        DeploymentState::Cancelled => Status::Cancelled,
        DeploymentState::Unspecified => Status::Unspecified,
    }
}

/// True while it can still change (waiting, queued, in progress).
pub fn is_open(s: DeploymentState) -> bool {
    matches!(s, DeploymentState::Waiting | DeploymentState::Queued | DeploymentState::InProgress)
}

/// True when it can be approved or rejected.
pub fn can_review(s: DeploymentState) -> bool {
    s == DeploymentState::Waiting
}

/// A deployment's kind as written: `deploy` (also when unset), `promote`
/// or `rollback`.
pub fn kind(d: &Deployment) -> &str {
    if d.kind.is_empty() { "deploy" } else { &d.kind }
}

/// A key that changes whenever a deployment's row would look different.
pub fn row_key(d: &Deployment) -> String {
    let t = d.times.as_ref();
    let finished = time_format::timestamp_ms(t.and_then(|t| t.finished_at.as_ref()));
    format!("{}|{}|{}|{}|{:?}", d.id, d.state, d.message, d.approved_by, finished)
}

/// The lower-case word of a health: `up`, `down` or `unknown`.
pub fn health_word(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown | Health::Unspecified => "unknown",
    }
}

/// What a person reads: "Up", "Down", "Unknown".
pub fn health_label(h: Health) -> &'static str {
    match h {
        Health::Up => "Up",
        Health::Down => "Down",
        Health::Unknown | Health::Unspecified => "Unknown",
    }
}

/// The run state whose badge a health borrows.
pub fn health_look(h: Health) -> Status {
    match h {
        Health::Up => Status::Success,
        Health::Down => Status::Failure,
        Health::Unknown | Health::Unspecified => Status::Unspecified,
    }
}

/// "branch `main`", "branches `main`, `release/*`" (`one`, `many`: the
/// noun).
fn globs(one: &str, many: &str, items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    format!("{} {}", if items.len() == 1 { one } else { many }, quoted.join(", "))
}

/// Seconds as the largest whole unit that fits: "45 s", "10 min", "2 h",
/// "3 d"; else as a duration ("1m 30s").
pub fn wait_words(seconds: u64) -> String {
    match seconds {
        0 => "0 s".to_string(),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s if s < 60 => format!("{s} s"),
        s => time_format::duration(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
    }
}

/// An environment's rules in words, one sentence each: which refs may
/// deploy, pull requests, approval, the wait timer, one at a time.
pub fn rules_in_words(rules: Option<&EnvironmentRules>) -> Vec<String> {
    let default = EnvironmentRules::default();
    let r = rules.unwrap_or(&default);
    let mut out = Vec::new();
    let refs: Vec<String> = [("branch", "branches", &r.branches), ("tag", "tags", &r.tags)]
        .into_iter()
        .filter(|(_, _, items)| !items.is_empty())
        .map(|(one, many, items)| globs(one, many, items))
        .collect();
    out.push(if refs.is_empty() {
        "Runs of any branch or tag may deploy.".to_string()
    } else {
        format!("Only runs of {} may deploy.", refs.join(" or "))
    });
    out.push(if r.pull_requests {
        "Runs of trusted pull requests may deploy.".to_string()
    } else {
        "Pull requests may not deploy.".to_string()
    });
    let role = Role::try_from(r.approval_role).unwrap_or(Role::Unspecified);
    out.push(match role {
        Role::Unspecified => "No approval needed.".to_string(),
        role => format!(
            "Each deployment needs approval by someone with the {} role{}.",
            role.word(),
            if r.prevent_self_approval { ", not the one who started the run" } else { "" }
        ),
    });
    if r.wait_seconds > 0 {
        let after = if role == Role::Unspecified { "once ready" } else { "after approval" };
        out.push(format!("Waits {} {after} before it starts.", wait_words(r.wait_seconds)));
    }
    out.push(if r.cancel_in_progress {
        "One deployment at a time: a new one cancels the one in progress.".to_string()
    } else {
        "One deployment at a time: a new one waits for the one in progress.".to_string()
    });
    if !r.probe_hosts.is_empty() {
        out.push(format!("The server probes services on {}.", code_list(&r.probe_hosts)));
    }
    if !r.on_change_pipelines.is_empty() {
        out.push(format!("A change of health may start {}.", code_list(&r.on_change_pipelines)));
    }
    out
}

/// `a`, `b` or `c`, as code.
fn code_list(items: &[String]) -> String {
    items.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ")
}

/// Variables sorted by name.
pub fn sorted(vars: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    v.sort();
    v
}

/// Whether `url` may be a link: `http://` or `https://` only (never
/// `javascript:` or the like from a pipeline file).
pub fn is_web_link(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// The path of a repository's environments page.
pub fn environments_href(repo: &str) -> String {
    format!("/repos/{repo}/environments")
}

/// The id of an environment's section on that page (a link's fragment).
pub fn environment_anchor(name: &str) -> String {
    format!("env-{name}")
}

/// "deploys to `production` (deployment 7)" for a job with an
/// environment; none without one.
pub fn job_note(job: &Job) -> Option<String> {
    if job.environment.is_empty() {
        return None;
    }
    Some(if job.deployment == 0 {
        format!("deploys to {}", job.environment)
    } else {
        format!("deploys to {} (deployment {})", job.environment, job.deployment)
    })
}

/// Whether a job waits for its deployment to be approved (so its run
/// page can offer Approve and Reject): pending, with a deployment, and
/// its message saying so.
pub fn job_waits_for_approval(job: &Job) -> bool {
    job.deployment != 0
        && !job.environment.is_empty()
        && job.status() == Status::Pending
        && job.message.starts_with("waiting for approval")
}

/// "abc1234 · main" (what a deployment deployed), or a dash.
pub fn what(d: &Deployment) -> String {
    let parts: Vec<&str> =
        [run_model::short_commit(&d.commit), d.r#ref.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
    if parts.is_empty() { "—".to_string() } else { parts.join(" · ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [DeploymentState; 8] = [
        DeploymentState::Unspecified,
        DeploymentState::Waiting,
        DeploymentState::Queued,
        DeploymentState::InProgress,
        DeploymentState::Success,
        DeploymentState::Failure,
        DeploymentState::Cancelled,
        DeploymentState::Refused,
    ];

    #[test]
    fn every_state_has_a_word_a_label_and_a_look() {
        for s in ALL {
            assert!(!word(s).is_empty());
            assert!(!label(s).is_empty());
            assert_eq!(is_open(s), crate::status::is_active(look(s)), "{s:?}");
        }
        assert_eq!(word(DeploymentState::InProgress), "in_progress");
        assert_eq!(look(DeploymentState::Waiting), Status::Pending);
        assert_eq!(look(DeploymentState::Refused), Status::Failure);
        assert!(can_review(DeploymentState::Waiting));
        assert!(!can_review(DeploymentState::Queued));
        // Unknown wire values read as unspecified.
        let d = Deployment { state: 99, ..Deployment::default() };
        assert_eq!(word(d.state()), "unknown");
        assert_eq!(kind(&d), "deploy");
        assert_eq!(kind(&Deployment { kind: "rollback".into(), ..d }), "rollback");
    }

    #[test]
    fn health_reads_as_a_badge() {
        assert_eq!((health_word(Health::Up), health_look(Health::Up)), ("up", Status::Success));
        assert_eq!((health_word(Health::Down), health_look(Health::Down)), ("down", Status::Failure));
        assert_eq!(health_label(Health::Unspecified), "Unknown");
        assert_eq!(health_look(Health::Unknown), Status::Unspecified);
    }

    #[test]
    fn rules_read_as_sentences() {
        assert_eq!(
            rules_in_words(None),
            [
                "Runs of any branch or tag may deploy.",
                "Pull requests may not deploy.",
                "No approval needed.",
                "One deployment at a time: a new one waits for the one in progress.",
            ]
        );
        let strict = EnvironmentRules {
            branches: vec!["main".into(), "release/*".into(), "hotfix".into()],
            tags: vec!["v*".into()],
            pull_requests: true,
            approval_role: Role::Maintain as i32,
            prevent_self_approval: true,
            wait_seconds: 600,
            cancel_in_progress: true,
            ..Default::default()
        };
        assert_eq!(
            rules_in_words(Some(&strict)),
            [
                "Only runs of branches `main`, `release/*`, `hotfix` or tag `v*` may deploy.",
                "Runs of trusted pull requests may deploy.",
                "Each deployment needs approval by someone with the maintain role, not the one who started the run.",
                "Waits 10 min after approval before it starts.",
                "One deployment at a time: a new one cancels the one in progress.",
            ]
        );
        let tags = EnvironmentRules { tags: vec!["v1".into(), "v2".into()], wait_seconds: 30, ..Default::default() };
        let words = rules_in_words(Some(&tags));
        assert_eq!(words[0], "Only runs of tags `v1`, `v2` may deploy.");
        assert_eq!(words[3], "Waits 30 s once ready before it starts.");
    }

    #[test]
    fn waits_in_whole_units() {
        assert_eq!(wait_words(45), "45 s");
        assert_eq!(wait_words(600), "10 min");
        assert_eq!(wait_words(7200), "2 h");
        assert_eq!(wait_words(3 * 86_400), "3 d");
        assert_eq!(wait_words(90), "1m 30s");
        assert_eq!(wait_words(0), "0 s");
        let _ = wait_words(u64::MAX);
    }

    #[test]
    fn links_and_variables() {
        assert!(is_web_link("https://app.example.com"));
        assert!(is_web_link("HTTP://x"));
        assert!(!is_web_link("javascript:alert(1)"));
        assert!(!is_web_link("tcp://db:5432"));
        let vars = HashMap::from([("B".to_string(), "2".to_string()), ("A".to_string(), "1".to_string())]);
        assert_eq!(sorted(&vars), [("A".to_string(), "1".to_string()), ("B".to_string(), "2".to_string())]);
        assert_eq!(environments_href("app"), "/repos/app/environments");
        assert_eq!(environment_anchor("production"), "env-production");
    }

    #[test]
    fn jobs_that_deploy() {
        let plain = Job { id: "4.1".into(), ..Job::default() };
        assert_eq!(job_note(&plain), None);
        assert!(!job_waits_for_approval(&plain));
        let mut job = Job {
            environment: "production".into(),
            deployment: 7,
            status: Status::Pending as i32,
            message: "waiting for approval to deploy to `production` (deployment 7: …)".into(),
            ..plain
        };
        assert_eq!(job_note(&job).as_deref(), Some("deploys to production (deployment 7)"));
        assert!(job_waits_for_approval(&job));
        job.status = Status::Running as i32;
        assert!(!job_waits_for_approval(&job));
        job.deployment = 0;
        assert_eq!(job_note(&job).as_deref(), Some("deploys to production"));
    }

    #[test]
    fn what_was_deployed_and_row_keys() {
        let d = Deployment { id: 3, commit: "0123456789".into(), r#ref: "main".into(), ..Deployment::default() };
        assert_eq!(what(&d), "0123456 · main");
        assert_eq!(what(&Deployment::default()), "—");
        let approved = Deployment { approved_by: "ada".into(), ..d.clone() };
        assert_ne!(row_key(&d), row_key(&approved));
    }
}
