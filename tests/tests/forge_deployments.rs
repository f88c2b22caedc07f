//! Deployments reported to forges' deployments APIs, end to end: the real
//! server and runner against `forge_api` (a stand-in for GitHub's, GitLab's
//! and Gitea's APIs that checks what it receives), a mirror whose pipeline
//! deploys to an environment that needs an approval.

use std::path::PathBuf;

use viaduct_tests::{
    Client, Server, finished,
    forge::{push_and_sync, runs_of, upstream},
    forge_api::{Deployment, ForgeApi},
    run_where, v1, word,
};

/// A build, then a deployment to `production` (which needs an approval).
const PIPELINE: &str = "name: ci\non:\n  push: {}\njobs:\n  build:\n    steps:\n      - run: echo building\n  ship:\n    needs: [build]\n    environment: production\n    steps:\n      - run: echo shipping\n";

const TOKEN: &str = "forge-token-5d0e7a";

/// Where `production` can be seen.
const APP_URL: &str = "https://app.example";

/// GitHub's deployment status states.
const GITHUB_STATES: &[&str] = &["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];

/// Where a deployment state stands: waiting, running, ended.
fn rank(state: &str) -> u8 {
    match state {
        "pending" | "queued" | "created" => 0,
        "in_progress" | "running" => 1,
        _ => 2,
    }
}

/// A connection to a forge of `kind` at `api` with the token in secret
/// `<NAME>_TOKEN`.
fn with_token(name: &str, kind: &str, api: String) -> v1::ForgeConnection {
    v1::ForgeConnection {
        kind: kind.into(),
        api_url: api,
        project: format!("org/{name}"),
        token_secret: format!("{}_TOKEN", name.to_uppercase()),
        ..Default::default()
    }
}

/// A mirror `name` of a new upstream with [`PIPELINE`], reporting through
/// `forge`, with environment `production` (an approval by a maintainer,
/// [`APP_URL`]); then a pushed commit and the run it started: (upstream
/// dir, bare repo, work tree, commit, run id).
async fn deploying_mirror(
    client: &Client,
    name: &str,
    forge: v1::ForgeConnection,
) -> (tempfile::TempDir, PathBuf, tempfile::TempDir, String, String) {
    let (dir, bare, wt) = upstream(PIPELINE);
    let scope = v1::SecretScope { repos: vec![name.into()], server_only: true, ..Default::default() };
    let secret = v1::SetSecretRequest { name: forge.token_secret.clone(), value: TOKEN.into(), scope: Some(scope) };
    client.secrets().set(secret).await.unwrap();
    let req = v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: format!("file://{}", bare.display()),
            forge: Some(forge),
            ..Default::default()
        })),
    };
    client.repos().create(req).await.unwrap();
    let env = v1::PutEnvironmentRequest {
        repo: name.into(),
        name: "production".into(),
        rules: Some(v1::EnvironmentRules { approval_role: v1::Role::Maintain as i32, ..Default::default() }),
        url: APP_URL.into(),
        ..Default::default()
    };
    client.environments().put(env).await.unwrap();
    let (sha, run) = push_and_sync(client, wt.path(), &bare, name).await;
    (dir, bare, wt, sha, run)
}

/// The deploying job, once its deployment waits for an approval.
async fn waiting_deploy(client: &Client, run: &str) -> v1::Job {
    let run = run_where(client, run, "the deployment to wait for approval", |r| {
        r.jobs.iter().any(|j| j.key == "ship" && j.deployment != 0 && word(j.status) == "pending")
    })
    .await;
    run.jobs.into_iter().find(|j| j.key == "ship").unwrap()
}

/// Approves the deployment of job `job` (its id, `<run>.<index>`).
async fn approve(client: &Client, job: &str) {
    let req = v1::ReviewDeploymentRequest { job: job.into(), comment: "ship it".into(), ..Default::default() };
    client.deployments().approve(req).await.unwrap();
}

/// The forge's deployments of `sha`.
fn deployments_of(forge: &ForgeApi, sha: &str) -> Vec<Deployment> {
    forge.deployments().into_iter().filter(|d| d.sha == sha).collect()
}

/// The states a deployment was given, in order.
fn states(d: &Deployment) -> Vec<String> {
    d.statuses.iter().map(|s| s.state.clone()).collect()
}

/// Its states never go back, and end once, in `last`.
fn assert_in_order(d: &Deployment, last: &str) {
    let states = states(d);
    assert_eq!(states.last().map(String::as_str), Some(last), "{d:#?}");
    assert!(states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "went back: {states:?}");
    assert_eq!(states.iter().filter(|s| rank(s) == 2).count(), 1, "ended once: {states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_created_on_github_once_and_given_each_state_despite_failures_and_a_kill() {
    let forge = ForgeApi::start(TOKEN);
    let mut server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let (_u, _bare, _wt, sha, run) = deploying_mirror(&client, "app", with_token("app", "github", forge.url())).await;
    let ship = waiting_deploy(&client, &run).await;
    // Waiting for approval is already a deployment on GitHub, queued.
    let waiting = forge
        .wait_for("the waiting deployment on GitHub", |_| {
            deployments_of(&forge, &sha).into_iter().find(|d| !d.statuses.is_empty())
        })
        .await;
    assert_eq!(states(&waiting), ["queued"]);
    assert!(
        waiting.statuses[0].description.starts_with("Waiting for approval to deploy to production"),
        "{waiting:#?}"
    );

    // Killed, and GitHub failing for a while: still one deployment.
    server.restart();
    let client = server.client().await;
    forge.fail_next(3, 502, &[]);
    approve(&client, &ship.id).await;
    let run = finished(&client, &run).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let done = forge
        .wait_for("the deployment's success on GitHub", |_| {
            deployments_of(&forge, &sha).into_iter().find(|d| d.status == "success")
        })
        .await;
    let all = deployments_of(&forge, &sha);
    println!("GitHub: {} deployment(s); states {:?}; requests {}", all.len(), states(&done), forge.requests());
    assert_eq!(all.len(), 1, "one deployment for the commit: {all:#?}");
    assert_in_order(&done, "success");
    assert!(states(&done).iter().all(|s| GITHUB_STATES.contains(&s.as_str())), "{done:#?}");
    assert_eq!(states(&done)[0], "queued");
    assert_eq!(
        (done.project.as_str(), done.environment.as_str(), done.git_ref.as_str(), done.task.as_str()),
        ("org/app", "production", sha.as_str(), "deploy")
    );
    assert_eq!(done.payload["viaduct_deployment"].as_u64(), Some(ship.deployment), "{done:#?}");
    assert_eq!(done.payload["run"].as_u64(), run.id.parse().ok(), "{done:#?}");
    assert_eq!(done.production_environment, Some(true));
    let last = done.statuses.last().unwrap();
    assert!(last.description.starts_with("Deployed to production"), "{last:?}");
    assert_eq!(last.log_url, format!("{}/runs/{}/jobs/{}", server.url(), run.id, ship.id));
    assert_eq!(last.environment_url, APP_URL);
    assert!(done.statuses.iter().all(|s| s.description.chars().count() <= 140));
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
    // The commit's own statuses went on as before.
    forge
        .wait_for("the run's final commit status", |d| {
            d.iter().any(|d| d.sha == sha && d.context == "viaduct/ci" && d.state == "success").then_some(())
        })
        .await;
    let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    let delivery = repo.forge_delivery.expect("delivery");
    assert!(delivery.last_error.contains("HTTP 502"), "the failures are shown: {delivery:?}");
    assert!(!server.log().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_gets_a_deployment_once_it_runs_and_gitea_none() {
    let forge = ForgeApi::start(TOKEN);
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let (_g, _gb, _gw, gl_sha, gl_run) =
        deploying_mirror(&client, "gl", with_token("gl", "gitlab", format!("{}/api/v4", forge.url()))).await;
    let (_t, _tb, _tw, tea_sha, tea_run) =
        deploying_mirror(&client, "tea", with_token("tea", "forgejo", format!("{}/api/v1", forge.url()))).await;
    for run in [&gl_run, &tea_run] {
        let ship = waiting_deploy(&client, run).await;
        approve(&client, &ship.id).await;
        assert_eq!(word(finished(&client, run).await.status), "success");
    }
    let done = forge
        .wait_for("the deployment's success on GitLab", |_| {
            deployments_of(&forge, &gl_sha).into_iter().find(|d| d.status == "success")
        })
        .await;
    println!("GitLab: states {:?}", states(&done));
    assert_eq!(deployments_of(&forge, &gl_sha).len(), 1);
    // GitLab's API makes deployments running or ended: waiting is not told.
    assert_in_order(&done, "success");
    assert!(states(&done).iter().all(|s| ["running", "success"].contains(&s.as_str())), "{done:#?}");
    assert_eq!(
        (done.project.as_str(), done.environment.as_str(), done.git_ref.as_str(), done.tag),
        ("org/gl", "production", "main", Some(false))
    );
    // Gitea and Forgejo have no deployments API: their states leave the
    // outbox unsent, and the commit statuses go on.
    forge
        .wait_for("Gitea's final commit status", |d| {
            d.iter().any(|d| d.sha == tea_sha && d.context == "viaduct/ci" && d.state == "success").then_some(())
        })
        .await;
    viaduct_tests::eventually("nothing waiting for Gitea", || {
        let client = client.clone();
        async move {
            let repo = client.repos().get(v1::GetRepoRequest { name: "tea".into() }).await.unwrap().into_inner();
            (repo.forge_delivery.unwrap().pending == 0).then_some(())
        }
    })
    .await;
    assert!(deployments_of(&forge, &tea_sha).is_empty());
    assert_eq!(runs_of(&client, "tea").await.len(), 1);
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
}
