//! Environments and deployments end to end: a real server and runner, a
//! hosted repository pushed to with git, the CLI: rules that refuse or
//! admit a ref, approvals (and self-approval refused), environment secrets
//! and variables, artifacts between jobs, promotion and rollback that deploy
//! the same artifacts again, a server killed during a deployment, and
//! service health probes that start a pipeline when health changes.

use std::path::Path;

use viaduct_tests::{
    Client, Server, eventually, finished,
    forge::{create_hosted, git, runs_of, work_tree},
    output, run_where, shared_dir, step_log, v1, wait_until, word,
};

/// Runs `viaduct ARGS` against `server`; (exit code, stdout, stderr).
fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = output(server.cli().args(args));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// Runs `viaduct ARGS` and expects success; its stdout.
fn ok(server: &Server, args: &[&str]) -> String {
    let (code, out, err) = cli(server, args);
    assert_eq!(code, 0, "viaduct {args:?}: {err}");
    out
}

/// The newest run of `repo` after `seen` runs.
async fn new_run(client: &Client, repo: &str, seen: usize) -> v1::Run {
    eventually("a new run", || async {
        let runs = runs_of(client, repo).await;
        (runs.len() > seen).then(|| runs[0].clone())
    })
    .await
}

fn job<'a>(run: &'a v1::Run, key: &str) -> &'a v1::Job {
    run.jobs.iter().find(|j| j.key == key).unwrap_or_else(|| panic!("no job {key} in {run:#?}"))
}

async fn deployment(client: &Client, id: u64) -> v1::Deployment {
    client.deployments().get(v1::GetDeploymentRequest { id }).await.unwrap().into_inner()
}

fn commit_all(wt: &Path, message: &str) {
    git(wt, &["add", "-A"]);
    git(wt, &["commit", "-qm", message]);
}

const RULES_PIPELINE: &str = r#"on:
  push: { branches: [main, feature] }
  manual: {}
jobs:
  build:
    artifacts: [dist/]
    steps:
      - run: mkdir -p dist && cp hello.txt dist/app.txt
  peek:
    secrets: [DEPLOY_KEY]
    steps:
      - run: echo "peek=$DEPLOY_KEY"
  deploy:
    needs: [build]
    artifacts_from: [build]
    environment: production
    secrets: [DEPLOY_KEY]
    steps:
      - run: echo "to=$TARGET env=$VIADUCT_ENVIRONMENT got=$(cat dist/app.txt) key=${#DEPLOY_KEY}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_rules_approvals_and_secrets() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let repo = create_hosted(&client, "app").await;
    ok(
        &server,
        &[
            "environments",
            "put",
            "app",
            "production",
            "--branch",
            "main",
            "--approval",
            "maintain",
            "--prevent-self-approval",
            "--var",
            "TARGET=prod-hosts",
        ],
    );
    // A secret of the environment: only jobs deploying there get it.
    let (code, _, err) =
        cli(&server, &["secrets", "set", "DEPLOY_KEY", "s3cr3t-deploy-key", "--environment", "production"]);
    assert_eq!(code, 2, "an environment scope needs its repositories: {err}");
    ok(&server, &["secrets", "set", "DEPLOY_KEY", "s3cr3t-deploy-key", "--repo", "app", "--environment", "production"]);

    let wt = work_tree(RULES_PIPELINE);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = new_run(&client, "app", 0).await;
    let waiting = run_where(&client, &run.id, "the deployment to wait for approval", |r| {
        job(r, "deploy").deployment != 0 && job(r, "build").status == v1::Status::Success as i32
    })
    .await;
    let deploy = job(&waiting, "deploy");
    assert_eq!(word(deploy.status), "pending");
    assert_eq!(deploy.environment, "production");
    assert!(deploy.message.contains("waiting for approval to deploy to `production`"), "{}", deploy.message);
    let d = deployment(&client, deploy.deployment).await;
    assert_eq!((d.state, d.triggered_by.as_str()), (v1::DeploymentState::Waiting as i32, "Ada Dev <ada@example.com>"));
    let listed = ok(&server, &["environments", "list", "app"]);
    assert!(
        listed.contains("production") && listed.contains("nothing deployed") && listed.contains("1 (waiting)"),
        "{listed}"
    );

    ok(&server, &["deployments", "approve", &deploy.id, "--comment", "ship it"]);
    let run = finished(&client, &run.id).await;
    assert_eq!(word(job(&run, "peek").status), "failure");
    assert!(
        job(&run, "peek").message.contains("belongs to environments `production`"),
        "{}",
        job(&run, "peek").message
    );
    let deploy = job(&run, "deploy");
    assert_eq!(word(deploy.status), "success", "{run:#?}");
    let log = step_log(&client, &format!("{}.1", deploy.id)).await;
    assert_eq!(log, "to=prod-hosts env=production got=hello from git key=17\n");
    let d = deployment(&client, deploy.deployment).await;
    assert_eq!(d.state, v1::DeploymentState::Success as i32);
    assert_eq!((d.approved_by.as_str(), d.r#ref.as_str()), ("first-start admin token", "refs/heads/main"));
    let env = client
        .environments()
        .get(v1::GetEnvironmentRequest { repo: "app".into(), name: "production".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(env.current.as_ref().map(|c| c.id), Some(d.id));
    assert!(env.open.is_empty());

    // A branch the environment does not admit: the job fails, recorded.
    git(wt.path(), &["checkout", "-qb", "feature"]);
    std::fs::write(wt.path().join("hello.txt"), "feature\n").unwrap();
    commit_all(wt.path(), "a feature");
    git(wt.path(), &["push", "-q", &repo.path, "feature"]);
    let run = finished(&client, &new_run(&client, "app", 1).await.id).await;
    let deploy = job(&run, "deploy");
    assert_eq!(word(deploy.status), "failure");
    assert!(deploy.message.contains("admits branches `main` (this run is of branch `feature`)"), "{}", deploy.message);
    assert_eq!(deployment(&client, deploy.deployment).await.state, v1::DeploymentState::Refused as i32);

    // Whoever started a run cannot approve its deployment; a rejection
    // fails the job.
    let started = ok(&server, &["trigger", "--repo", "app", "--ref", "main"]);
    let id = started.trim().to_string();
    let waiting = run_where(&client, &id, "the deployment to wait", |r| job(r, "deploy").deployment != 0).await;
    let deploy_id = job(&waiting, "deploy").id.clone();
    let (code, _, err) = cli(&server, &["deployments", "approve", &deploy_id]);
    assert_ne!(code, 0);
    assert!(err.contains("started this run"), "{err}");
    ok(&server, &["deployments", "reject", &deploy_id, "--comment", "not now"]);
    let run = finished(&client, &id).await;
    assert!(
        job(&run, "deploy").message.contains("rejected by first-start admin token: not now"),
        "{}",
        job(&run, "deploy").message
    );
    let history = ok(&server, &["deployments", "list", "app", "--environment", "production"]);
    assert_eq!(history.lines().count(), 4, "a header and three deployments: {history}");
}

const PROMOTE_PIPELINE: &str = r#"on:
  push: { branches: [main] }
jobs:
  build:
    artifacts: [dist/]
    steps:
      - run: mkdir -p dist && cp hello.txt dist/app.txt
  deploy:
    needs: [build]
    artifacts_from: [build]
    environment: staging
    steps:
      # Jobs may run as different slot users: each deployment replaces the
      # target (a rename) rather than writing into another user's file.
      - run: cp dist/app.txt "$OUT/$TARGET.new" && mv -f "$OUT/$TARGET.new" "$OUT/$TARGET.txt"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_and_rollback_deploy_the_same_artifacts_again() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let repo = create_hosted(&client, "web").await;
    let out = shared_dir();
    let out_var = format!("OUT={}", out.path().display());
    ok(&server, &["environments", "put", "web", "staging", "--var", "TARGET=staging", "--var", &out_var]);
    ok(&server, &["environments", "put", "web", "production", "--var", "TARGET=production", "--var", &out_var]);
    let read = |name: &str| std::fs::read_to_string(out.path().join(name)).unwrap_or_default();

    let wt = work_tree(PROMOTE_PIPELINE);
    std::fs::write(wt.path().join("hello.txt"), "v1\n").unwrap();
    commit_all(wt.path(), "v1");
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let v1_run = finished(&client, &new_run(&client, "web", 0).await.id).await;
    assert_eq!(word(v1_run.status), "success", "{v1_run:#?}");
    assert_eq!(read("staging.txt"), "v1\n");

    // Nothing to roll back to yet; production has nothing to promote.
    let (code, _, err) = cli(&server, &["deploy", "rollback", "staging", "--repo", "web"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no successful deployment before its current one"), "{err}");
    let (code, _, err) = cli(&server, &["deploy", "promote", "production", "staging", "--repo", "web"]);
    assert_eq!(code, 2);
    assert!(err.contains("`production` has no successful deployment to promote"), "{err}");

    let (code, _, err) = cli(&server, &["deploy", "promote", "staging", "production", "--repo", "web", "--follow"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read("production.txt"), "v1\n");

    // v2 goes to staging, then production; a rollback of production
    // deploys v1's artifacts again (the tree now says v2).
    std::fs::write(wt.path().join("hello.txt"), "v2\n").unwrap();
    commit_all(wt.path(), "v2");
    let before = runs_of(&client, "web").await.len();
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let v2_run = finished(&client, &new_run(&client, "web", before).await.id).await;
    assert_eq!(word(v2_run.status), "success");
    assert_eq!(read("staging.txt"), "v2\n");
    ok(&server, &["deploy", "promote", "staging", "production", "--repo", "web", "--follow"]);
    assert_eq!(read("production.txt"), "v2\n");
    let (code, _, err) = cli(&server, &["deploy", "rollback", "production", "--repo", "web", "--follow"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(read("production.txt"), "v1\n");

    let list = client
        .deployments()
        .list(v1::ListDeploymentsRequest { repo: "web".into(), environment: "production".into(), limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .deployments;
    let kinds: Vec<&str> = list.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["rollback", "promote", "promote"]);
    let v1_commit = v1_run.source.as_ref().unwrap().commit.clone();
    assert_eq!(list[0].commit, v1_commit, "the rollback deployed v1's commit");
    assert_eq!(list[2].commit, v1_commit);
    let first_promotion_source = deployment(&client, list[2].source_deployment).await;
    assert_eq!(first_promotion_source.environment, "staging");
    assert_eq!(first_promotion_source.run_id, v1_run.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_deployment_keeps_a_consistent_record() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "svc").await;
    let dir = shared_dir();
    ok(&server, &["environments", "put", "svc", "production"]);
    let pipeline = format!(
        "on:\n  push: {{ branches: [main] }}\njobs:\n  deploy:\n    environment: production\n    steps:\n      - run: \
         touch {d}/started; while [ ! -e {d}/go ]; do sleep 0.05; done; echo deployed\n",
        d = dir.path().display()
    );
    let wt = work_tree(&pipeline);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = new_run(&client, "svc", 0).await;
    wait_until("the deployment to start", || dir.path().join("started").exists().then_some(()));
    let running = client.runs().get(v1::GetRunRequest { id: run.id.clone() }).await.unwrap().into_inner();
    let id = running.jobs[0].deployment;
    assert_eq!(deployment(&client, id).await.state, v1::DeploymentState::InProgress as i32);

    server.kill9();
    server.restart();
    let client = server.client().await;
    let d = deployment(&client, id).await;
    assert_eq!(d.state, v1::DeploymentState::InProgress as i32, "the record survived as it was: {d:?}");
    std::fs::write(dir.path().join("go"), "").unwrap();
    let run = finished(&client, &run.id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let d = deployment(&client, id).await;
    assert_eq!(d.state, v1::DeploymentState::Success as i32);
    let times = d.times.unwrap();
    assert!(times.started_at.is_some() && times.finished_at.is_some());
    let all = client
        .deployments()
        .list(v1::ListDeploymentsRequest { repo: "svc".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deployments;
    assert_eq!(all.len(), 1, "one deployment, not a second one after the restart");
    let env = client
        .environments()
        .get(v1::GetEnvironmentRequest { repo: "svc".into(), name: "production".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(env.current.map(|c| c.id), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_services_are_probed_and_a_change_of_health_starts_a_pipeline() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let repo = create_hosted(&client, "shop").await;
    ok(
        &server,
        &[
            "environments",
            "put",
            "shop",
            "production",
            "--probe-host",
            "127.0.0.1",
            "--on-change-pipeline",
            "health-alert",
        ],
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let alert = "on:\n  manual:\n    inputs:\n      repo: {}\n      environment: {}\n      service: {}\n      health: {}\n\
                 jobs:\n  alert:\n    steps:\n      - run: echo \"${{ inputs.service }} of ${{ inputs.environment }} is ${{ inputs.health }}\"\n";
    client
        .pipelines()
        .create(v1::CreatePipelineRequest { name: "health-alert".into(), yaml: alert.into(), ..Default::default() })
        .await
        .unwrap();
    let pipeline = format!(
        "on:\n  push: {{ branches: [main] }}\njobs:\n  deploy:\n    environment:\n      name: production\n      \
         services:\n        - name: api\n          endpoints: [\"http://127.0.0.1:{port}/\"]\n          probe: {{ target: \
         \"tcp://127.0.0.1:{port}\", interval: 1s, timeout: 1s }}\n          on_change: health-alert\n        - \
         name: metadata\n          probe: {{ target: \"http://169.254.169.254/latest/\", interval: 1s }}\n    \
         steps:\n      - run: echo deployed\n"
    );
    let wt = work_tree(&pipeline);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = finished(&client, &new_run(&client, "shop", 0).await.id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let get = v1::GetServiceRequest { repo: "shop".into(), environment: "production".into(), name: "api".into() };
    let up = eventually("the service to be probed up", || async {
        let s = client.services().get(get.clone()).await.ok()?.into_inner();
        (s.health == v1::Health::Up as i32).then_some(s)
    })
    .await;
    assert_eq!(up.commit, run.source.as_ref().unwrap().commit);
    assert_eq!(up.deployment, run.jobs[0].deployment);
    assert_eq!(up.endpoints, [format!("http://127.0.0.1:{port}/")]);
    // A host the environment does not admit is never probed.
    let not_admitted = v1::GetServiceRequest { name: "metadata".into(), ..get.clone() };
    let skipped = eventually("the other service to be looked at", || async {
        let s = client.services().get(not_admitted.clone()).await.ok()?.into_inner();
        s.history.first().cloned()
    })
    .await;
    assert!(skipped.error.contains("probe_hosts do not admit `169.254.169.254`"), "{skipped:?}");
    assert_eq!(skipped.latency_ms, 0);
    let listed = ok(&server, &["services", "list", "shop"]);
    assert!(listed.contains("api") && listed.contains("up"), "{listed}");

    // Nothing listens any more: down, and the pipeline is started.
    drop(listener);
    eventually("the service to be probed down", || async {
        let s = client.services().get(get.clone()).await.ok()?.into_inner();
        (s.health == v1::Health::Down as i32).then_some(s)
    })
    .await;
    let alert_run = eventually("the health-alert run", || async {
        let req = v1::ListRunsRequest { ..Default::default() };
        let runs = client.runs().list(req).await.ok()?.into_inner().runs;
        runs.into_iter().find(|r| r.pipeline_ref == "health-alert")
    })
    .await;
    let alert_run = finished(&client, &alert_run.id).await;
    assert_eq!(step_log(&client, &format!("{}.1.1", alert_run.id)).await, "api of production is down\n");
    let got = ok(&server, &["services", "get", "shop", "production", "api"]);
    assert!(got.contains("cannot connect"), "{got}");
}

/// `prevent_self_approval` knows who pushed over HTTP (the pusher's token),
/// and a deployment whose starter the server cannot know (a push over the
/// filesystem) needs an administrator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_approval_is_refused_to_whoever_pushed() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "app").await;
    ok(&server, &["environments", "put", "app", "production", "--approval", "maintain", "--prevent-self-approval"]);
    let token = |name: &str| {
        let req = v1::CreateTokenRequest {
            name: name.into(),
            service: true,
            grants: vec![v1::Grant { role: v1::Role::Maintain as i32, repo: "app".into() }],
            ..Default::default()
        };
        let client = client.clone();
        async move { client.tokens().create(req).await.unwrap().into_inner().secret }
    };
    let (mia, max) = (token("mia").await, token("max").await);
    let as_user = |secret: &str| {
        let s = secret.to_string();
        let server = &server;
        async move { viaduct_tests::Client::connect_with(&server.url(), Some(s), &server.transport()).await.unwrap() }
    };
    let pipeline = "on:\n  push: { branches: [main] }\njobs:\n  ship:\n    environment: production\n    steps:\n      \
                    - run: echo shipped\n";
    let wt = work_tree(pipeline);
    // Mia pushes over HTTP: she may not approve, Max may.
    let url = repo.clone_url.replace("http://", &format!("http://mia:{mia}@"));
    git(wt.path(), &["push", "-q", &url, "main"]);
    let run = new_run(&client, "app", 0).await;
    let waiting = run_where(&client, &run.id, "the deployment", |r| r.jobs[0].deployment != 0).await;
    let d = deployment(&client, waiting.jobs[0].deployment).await;
    assert_eq!(d.triggered_by, "mia");
    let review = v1::ReviewDeploymentRequest { id: d.id, ..Default::default() };
    let refused = as_user(&mia).await.deployments().approve(review.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(refused.message().contains("mia started this run"), "{}", refused.message());
    as_user(&max).await.deployments().approve(review).await.unwrap();
    assert_eq!(word(finished(&client, &run.id).await.status), "success");

    // Over the filesystem nobody is known: a maintainer may not approve it.
    std::fs::write(wt.path().join("hello.txt"), "again\n").unwrap();
    commit_all(wt.path(), "again");
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = new_run(&client, "app", 1).await;
    let waiting = run_where(&client, &run.id, "the deployment", |r| r.jobs[0].deployment != 0).await;
    let review = v1::ReviewDeploymentRequest { id: waiting.jobs[0].deployment, ..Default::default() };
    let refused = as_user(&max).await.deployments().approve(review.clone()).await.unwrap_err();
    assert!(refused.message().contains("only an administrator"), "{}", refused.message());
    client.deployments().approve(review).await.unwrap();
    assert_eq!(word(finished(&client, &run.id).await.status), "success");
}
