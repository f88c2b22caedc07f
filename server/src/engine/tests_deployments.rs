//! The gates of deployments, in-process (see `deployments`): refusal,
//! approval, the wait timer and one deployment at a time.

use viaduct_proto::v1::{DeploymentState, EnvironmentRules, Role, Status};

use super::{clock::Clock as _, testing::Harness};
use crate::{
    environments::{self, EnvironmentSpec},
    store::{T, WriteSet, keys::RunId, records::RepoRecord},
};

const DEPLOY: &str = "jobs:\n  deploy:\n    environment: production\n    steps: [{run: 'true'}]\n";

async fn with_environment(h: &Harness, rules: EnvironmentRules) {
    let mut ws = WriteSet::default();
    ws.put(T::Repos, b"app", &RepoRecord::default());
    h.store.commit(&ws).expect("repo");
    let spec = EnvironmentSpec { rules, ..Default::default() };
    environments::put(&h.store, "app", "production", spec, 0).await.expect("environment");
}

fn deployment_of(h: &Harness, run: RunId) -> (u64, i32, String) {
    let job = &h.engine.get_run(run).expect("run").jobs[0];
    let d = environments::deployment(&h.store, job.deployment).expect("deployment");
    (job.deployment, d.state, d.message)
}

#[tokio::test]
async fn a_missing_environment_or_an_unadmitted_branch_fails_the_job() {
    let h = Harness::new();
    let run = h.submit_from(DEPLOY, "app", "main", "ann").await;
    assert_eq!(h.job_states(run), ["failure"]);
    let (_, state, message) = deployment_of(&h, run);
    assert_eq!(state, DeploymentState::Refused as i32);
    assert!(message.contains("does not exist"), "{message}");
    with_environment(&h, EnvironmentRules { branches: vec!["main".into()], ..Default::default() }).await;
    let run = h.submit_from(DEPLOY, "app", "feature", "ann").await;
    assert_eq!(h.job_states(run), ["failure"]);
    let msg = &h.engine.get_run(run).expect("run").jobs[0].message;
    assert!(msg.contains("admits branches `main` (this run is of branch `feature`)"), "{msg}");
    let run = h.submit_from(DEPLOY, "app", "main", "ann").await;
    assert_eq!(h.job_states(run), ["queued"]);
}

#[tokio::test]
async fn an_approval_then_the_wait_timer_then_the_job_runs() {
    let h = Harness::new();
    let rules = EnvironmentRules { approval_role: Role::Maintain as i32, wait_seconds: 2, ..Default::default() };
    with_environment(&h, rules).await;
    let mut r = h.runner("r1", &[], 2).expect("connect");
    let run = h.submit_from(DEPLOY, "app", "main", "ann").await;
    assert_eq!(h.job_states(run), ["pending"]);
    let (id, state, _) = deployment_of(&h, run);
    assert_eq!(state, DeploymentState::Waiting as i32);
    assert!(r.assignments().is_empty());
    h.engine.review_deployment(id, "bob", true, "").await.expect("approve");
    let again = h.engine.review_deployment(id, "bob", true, "").await.unwrap_err();
    assert!(again.to_string().contains("does not wait for approval"), "{again}");
    assert_eq!(h.job_states(run), ["queued"]);
    assert!(r.assignments().is_empty(), "the wait timer holds it");
    h.advance(1_000);
    assert!(r.assignments().is_empty(), "still waiting");
    h.advance(1_100);
    let given = r.assignments();
    assert_eq!(given.len(), 1);
    assert_eq!(deployment_of(&h, run).1, DeploymentState::InProgress as i32);
    assert_eq!(given[0].env.get("VIADUCT_ENVIRONMENT").map(String::as_str), Some("production"));
    h.report(&r, &given[0], Status::Success);
    let d = environments::deployment(&h.store, id).expect("deployment");
    assert_eq!(
        (d.state, d.approved_by.as_str(), d.triggered_by.as_str()),
        (DeploymentState::Success as i32, "bob", "ann")
    );
    assert_eq!(environments::successes(&h.store, "app", "production", 5).expect("history").len(), 1);
}

#[tokio::test]
async fn a_deployment_never_approved_expires() {
    let h = Harness::new();
    with_environment(&h, EnvironmentRules { approval_role: Role::Push as i32, ..Default::default() }).await;
    let run = h.submit_from(DEPLOY, "app", "main", "ann").await;
    let (id, _, _) = deployment_of(&h, run);
    let now = h.clock.now_ms();
    assert!(h.engine.deployments_waiting_before(now).expect("scan").is_empty(), "not older than now");
    h.advance(10);
    let cutoff = h.clock.now_ms();
    assert_eq!(h.engine.deployments_waiting_before(cutoff).expect("scan"), [id]);
    let why = "not approved within 30d (--approvals-expire-after)";
    assert!(h.engine.expire_deployment(id, cutoff, why).await.expect("expire"));
    assert!(!h.engine.expire_deployment(id, cutoff, why).await.expect("again"), "once");
    assert_eq!(h.job_states(run), ["failure"]);
    let (_, state, message) = deployment_of(&h, run);
    assert_eq!((state, message.as_str()), (DeploymentState::Cancelled as i32, why));
}

#[tokio::test]
async fn a_rejection_fails_the_job() {
    let h = Harness::new();
    with_environment(&h, EnvironmentRules { approval_role: Role::Push as i32, ..Default::default() }).await;
    let run = h.submit_from(DEPLOY, "app", "main", "ann").await;
    let (id, _, _) = deployment_of(&h, run);
    h.engine.review_deployment(id, "bob", false, "not today").await.expect("reject");
    assert_eq!(h.job_states(run), ["failure"]);
    let (_, state, message) = deployment_of(&h, run);
    assert_eq!(state, DeploymentState::Cancelled as i32);
    assert_eq!(message, "rejected by bob: not today");
}

#[tokio::test]
async fn one_deployment_at_a_time_in_order_or_the_newest_cancels() {
    let h = Harness::new();
    with_environment(&h, EnvironmentRules::default()).await;
    let mut r = h.runner("r1", &[], 4).expect("connect");
    let first = h.submit_from(DEPLOY, "app", "main", "ann").await;
    let second = h.submit_from(DEPLOY, "app", "main", "ann").await;
    let third = h.submit_from(DEPLOY, "app", "main", "ann").await;
    let given = r.assignments();
    assert_eq!(given.len(), 1, "one at a time");
    assert_eq!(h.job_states(second), ["pending"]);
    assert!(h.engine.get_run(second).expect("run").jobs[0].message.contains("goes first"));
    h.report(&r, &given[0], Status::Success);
    let next = r.assignments();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].run_id, second.to_string(), "the oldest waiting goes next");
    assert_eq!(h.job_states(third), ["pending"]);
    // With cancel_in_progress, a new one cancels those before it.
    with_environment(&h, EnvironmentRules { cancel_in_progress: true, ..Default::default() }).await;
    let fourth = h.submit_from(DEPLOY, "app", "main", "ann").await;
    assert_eq!(h.job_states(third), ["cancelled"]);
    assert_eq!(h.job_states(first), ["success"]);
    // The running one was asked to stop; when it does, the newest starts.
    h.report(&r, &next[0], Status::Cancelled);
    let last = r.assignments();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].run_id, fourth.to_string());
}
