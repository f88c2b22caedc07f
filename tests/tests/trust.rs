//! Trust boundaries, attacked end to end through the real server, runner,
//! git and webhook paths: pull requests from strangers, scoped secrets,
//! protected runners, concurrency groups, caches, masking, git over HTTP,
//! and what reaches a terminal. Each test performs the attack and checks
//! that it fails with a clear message (see docs/security.md).

use std::process::Command;

use base64::Engine as _;
use viaduct_tests::{
    Client, Runner, Server, eventually, finished,
    forge::{PullRequest, create_hosted, create_mirror, git, runs_of, upstream},
    http, output, run_where, step_log, submit, v1, word,
};

const DEPLOY_KEY: &str = "dk-9f8e7d6c5b4a-deploy";

async fn set_secret(client: &Client, name: &str, value: &str, scope: v1::SecretScope) {
    let req = v1::SetSecretRequest { name: name.into(), value: value.into(), scope: Some(scope) };
    client.secrets().set(req).await.unwrap();
}

/// Every form of the secret a log could show it in.
fn leaked(text: &str, secret: &str) -> bool {
    let reversed: String = secret.chars().rev().collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    [secret, reversed.as_str(), b64.as_str(), hex::encode(secret).as_str()].iter().any(|f| text.contains(f))
}

/// All the text a run shows: logs of every step, messages, outputs,
/// summaries, errors.
async fn everything_shown(client: &Client, run: &v1::Run) -> String {
    let mut all = format!("{run:?}");
    for j in &run.jobs {
        for s in &j.steps {
            all.push_str(&step_log(client, &s.id).await);
        }
    }
    all
}

fn job<'a>(run: &'a v1::Run, key: &str) -> &'a v1::Job {
    run.jobs.iter().find(|j| j.key == key).unwrap_or_else(|| panic!("no job {key} in {run:#?}"))
}

/// A contributor's commit on `branch` of the working copy, published by the
/// forge as `refs/pull/<n>/head` of the bare repository; returns its id.
fn push_pull_request(wt: &std::path::Path, bare: &std::path::Path, branch: &str, n: u32, pipeline: &str) -> String {
    let _ = Command::new("git").args(["checkout", "-q", "-B", branch]).current_dir(wt).status();
    std::fs::write(wt.join(".viaduct/pipeline.yml"), pipeline).unwrap();
    std::fs::write(wt.join("hello.txt"), format!("change {n} {}\n", pipeline.len())).unwrap();
    git(wt, &["commit", "-qam", "contribution"]);
    let head = git(wt, &["rev-parse", "HEAD"]);
    git(wt, &["push", "-q", "-f", bare.to_str().unwrap(), &format!("{branch}:refs/pull/{n}/head")]);
    head
}

fn fork_pr(number: u32, head_sha: &str, head_ref: &str) -> PullRequest {
    PullRequest {
        number,
        head_sha: head_sha.into(),
        head_ref: head_ref.into(),
        head_repo: "mallory/app".into(),
        base_ref: "main".into(),
        base_repo: "org/app".into(),
        author: "mallory".into(),
        association: "FIRST_TIME_CONTRIBUTOR".into(),
    }
}

/// The attack of the issue: a stranger's pull request adds
/// `on: pull_request` and a job that prints a deploy key reversed. The base
/// branch's pipeline decides whether it runs (it does not); once main runs
/// pull requests, the stranger's run waits for approval, and even approved
/// it gets no secret — the job fails naming the secret and the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_pull_request_cannot_run_itself_nor_read_a_secret() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    // Even a secret that admits trusted pull requests.
    set_secret(&client, "DEPLOY_KEY", DEPLOY_KEY, v1::SecretScope { pull_requests: true, ..Default::default() }).await;
    let base = "on:\n  push: { branches: [main] }\njobs:\n  build:\n    steps:\n      - run: echo build\n";
    let (_u, bare, wt) = upstream(base);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "hook-secret").await;

    let evil = "on:\n  pull_request: {}\njobs:\n  test:\n    steps:\n      - run: cat hello.txt\n  steal:\n    \
                secrets: [DEPLOY_KEY]\n    steps:\n      - run: printf %s \"$DEPLOY_KEY\" | rev; echo\n";
    let head = push_pull_request(wt.path(), &bare, "feature", 7, evil);
    let (code, reply) = fork_pr(7, &head, "feature").deliver(&server, "app", "hook-secret", "d-1");
    assert_eq!(code, 200, "{reply}");
    assert!(runs_of(&client, "app").await.is_empty(), "the head's `on:` started a run: {reply}");
    assert!(server.log().contains("the base branch's pipeline does not run pull requests into it"));

    // The maintainers decide to run pull requests.
    git(wt.path(), &["checkout", "-q", "main"]);
    std::fs::write(wt.path().join(".viaduct/pipeline.yml"), base.replace("on:\n", "on:\n  pull_request: {}\n"))
        .unwrap();
    git(wt.path(), &["commit", "-qam", "run pull requests"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    client.repos().sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() }).await.unwrap();
    let pushed = runs_of(&client, "app").await.len();

    let head = push_pull_request(wt.path(), &bare, "feature", 7, &format!("{evil}# again\n"));
    let (code, reply) = fork_pr(7, &head, "feature").deliver(&server, "app", "hook-secret", "d-2");
    assert_eq!(code, 200, "{reply}");
    let runs = runs_of(&client, "app").await;
    assert_eq!(runs.len(), pushed + 1, "{runs:#?}");
    let id = runs[0].id.clone();
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(run.trust, v1::Trust::Untrusted as i32);
    let approval = run.approval.clone().unwrap();
    assert!(approval.pending, "{run:#?}");
    assert!(approval.reason.contains("`mallory` from a fork (mallory/app)"), "{}", approval.reason);
    assert!(run.jobs.iter().all(|j| word(j.status) == "pending"), "nothing starts before approval: {run:#?}");
    let shown = String::from_utf8_lossy(&output(server.cli().args(["runs", "get", &id])).stdout).into_owned();
    assert!(shown.contains("waiting for approval: pull request #7 by `mallory`"), "{shown}");
    // Retry cannot start it either.
    let err = client.runs().retry(v1::RetryRunRequest { id: id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let out = output(server.cli().args(["runs", "approve", &id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    assert_eq!(word(job(&run, "test").status), "success", "the contribution itself runs: {run:#?}");
    let steal = job(&run, "steal");
    assert_eq!(word(steal.status), "failure");
    assert!(
        steal.message.contains("secret `DEPLOY_KEY` is refused: this run is an untrusted pull request"),
        "{}",
        steal.message
    );
    assert_eq!(word(steal.steps[0].status), "skipped", "the step never ran: {steal:#?}");
    assert!(!leaked(&everything_shown(&client, &run).await, DEPLOY_KEY));
    let again = client.runs().approve(v1::ApproveRunRequest { id: id.clone() }).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
}

/// A pull request from the repository itself by a member runs at once and
/// gets exactly the secrets scoped for pull requests.
/// A stranger's pull request nobody approves does not wait forever: past
/// `--approvals-expire-after` the retention pass cancels its run, saying
/// why, and counts it (a dry run first only counts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_nobody_approves_expires() {
    let server = Server::start_with(&["--approvals-expire-after", "1s", "--retention-every", "0"]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let base =
        "on:\n  push: { branches: [main] }\n  pull_request: {}\njobs:\n  build:\n    steps:\n      - run: echo build\n";
    let (_u, bare, wt) = upstream(base);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "hook-secret").await;
    let head = push_pull_request(wt.path(), &bare, "feature", 9, base);
    let (code, reply) = fork_pr(9, &head, "feature").deliver(&server, "app", "hook-secret", "d-9");
    assert_eq!(code, 200, "{reply}");
    let id = eventually("the pull request's run", || async {
        runs_of(&client, "app").await.into_iter().find(|r| r.approval.as_ref().is_some_and(|a| a.pending)).map(|r| r.id)
    })
    .await;
    let prune = |dry_run: bool| {
        let mut admin = client.admin();
        async move { admin.prune(v1::PruneRequest { dry_run }).await.expect("prune").into_inner() }
    };
    // Once it is a second old, a dry run counts it and changes nothing.
    let counted = eventually("the run to be old enough", || async {
        Some(prune(true).await.approvals_expired).filter(|n| *n > 0)
    })
    .await;
    assert_eq!(counted, 1);
    let get = || {
        let mut runs = client.runs();
        let id = id.clone();
        async move { runs.get(v1::GetRunRequest { id }).await.expect("get").into_inner() }
    };
    assert!(get().await.approval.is_some_and(|a| a.pending), "the dry run changed nothing");
    assert_eq!(prune(false).await.approvals_expired, 1);
    let run = get().await;
    assert_eq!(word(run.status), "cancelled", "{run:#?}");
    assert!(
        run.jobs.iter().all(|j| j.message.contains("not approved within 1s (--approvals-expire-after)")),
        "{run:#?}"
    );
    assert_eq!(prune(false).await.approvals_expired, 0, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_pull_request_gets_only_secrets_that_admit_pull_requests() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    set_secret(&client, "DEPLOY_KEY", DEPLOY_KEY, v1::SecretScope::default()).await;
    set_secret(
        &client,
        "TEST_TOKEN",
        "tt-1234-for-tests",
        v1::SecretScope { pull_requests: true, ..Default::default() },
    )
    .await;
    let pipeline = "on:\n  pull_request: {}\njobs:\n  deploy:\n    secrets: [DEPLOY_KEY]\n    steps:\n      - run: echo \"$DEPLOY_KEY\"\n  \
                    test:\n    secrets: [TEST_TOKEN]\n    steps:\n      - run: 'echo \"token: $TEST_TOKEN\"'\n";
    let (_u, bare, wt) = upstream(pipeline);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "k").await;
    let head = push_pull_request(wt.path(), &bare, "fix", 3, pipeline);
    let pr = PullRequest {
        head_repo: "org/app".into(),
        author: "alice".into(),
        association: "MEMBER".into(),
        ..fork_pr(3, &head, "fix")
    };
    let (code, reply) = pr.deliver(&server, "app", "k", "d-1");
    assert_eq!(code, 200, "{reply}");
    let runs = runs_of(&client, "app").await;
    assert_eq!(runs.len(), 1, "{reply}\n{}", server.log());
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(run.trust, v1::Trust::Trusted as i32);
    assert!(run.approval.is_none(), "{run:#?}");
    let deploy = job(&run, "deploy");
    assert_eq!(word(deploy.status), "failure");
    assert!(
        deploy.message.contains("secret `DEPLOY_KEY` is refused: its scope does not admit pull requests"),
        "{}",
        deploy.message
    );
    let test = job(&run, "test");
    assert_eq!(word(test.status), "success", "{test:#?}");
    assert_eq!(step_log(&client, &test.steps[0].id).await, "token: ***\n");
    assert!(!leaked(&everything_shown(&client, &run).await, DEPLOY_KEY));
}

/// Secrets scoped by repository, branch and pipeline, and registry
/// credentials bound to a host: each refusal names the secret and the rule,
/// before anything runs. Values too short to mask are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_scopes_refuse_with_the_rule_that_applies() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    set_secret(
        &client,
        "WEB_KEY",
        "web-key-value",
        v1::SecretScope { repos: vec!["web".into()], ..Default::default() },
    )
    .await;
    let release = v1::SecretScope { branches: vec!["release/*".into()], ..Default::default() };
    set_secret(&client, "RELEASE_KEY", "release-key-value", release).await;
    set_secret(&client, "REG", "user:password", v1::SecretScope { registry: "ghcr.io".into(), ..Default::default() })
        .await;
    let pipeline = "on:\n  push: { branches: ['**'] }\njobs:\n  web:\n    secrets: [WEB_KEY]\n    steps:\n      - run: echo web\n  \
                    release:\n    secrets: [RELEASE_KEY]\n    steps:\n      - run: echo \"got $RELEASE_KEY\"\n";
    let repo = create_hosted(&client, "app").await;
    let wt = viaduct_tests::forge::work_tree(pipeline);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = finished(&client, &runs_of(&client, "app").await[0].id).await;
    let web = job(&run, "web");
    assert!(
        web.message.contains("secret `WEB_KEY` is refused: its scope admits repositories `web` (this run is of `app`)"),
        "{}",
        web.message
    );
    let rel = job(&run, "release");
    assert!(
        rel.message.contains(
            "secret `RELEASE_KEY` is refused: its scope admits branches `release/*` (this run is of branch `main`)"
        ),
        "{}",
        rel.message
    );
    assert!(run.jobs.iter().all(|j| j.steps.iter().all(|s| s.log_size == 0)), "nothing ran: {run:#?}");
    // The branch the scope names gets it.
    git(wt.path(), &["push", "-q", &repo.path, "main:release/1"]);
    let id = eventually("the release branch's run", || async {
        runs_of(&client, "app").await.into_iter().find(|r| r.source.as_ref().is_some_and(|s| s.branch == "release/1"))
    })
    .await
    .id;
    let run = finished(&client, &id).await;
    assert_eq!(word(job(&run, "release").status), "success");
    assert_eq!(step_log(&client, &job(&run, "release").steps[0].id).await, "got ***\n");

    // Registry credentials for another registry's image: refused before any
    // runner (none here has containers) is asked.
    let id = submit(
        &client,
        "jobs:\n  j:\n    image: { name: \"evil.test/app:1\", credentials: REG }\n    steps:\n      - run: true\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert!(
        run.jobs[0].message.contains(
            "secret `REG` is refused as registry credentials for `evil.test/app:1`: it is bound to registry `ghcr.io`"
        ),
        "{}",
        run.jobs[0].message
    );
    // Too short to be masked: refused.
    let req = v1::SetSecretRequest { name: "PIN".into(), value: "123".into(), ..Default::default() };
    let err = client.secrets().set(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at least 4"), "{}", err.message());
    // The CLI sets and shows scopes.
    let out =
        output(server.cli().args(["secrets", "set", "CLI_KEY", "cli-key-value", "--repo", "app", "--branch", "main"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&output(server.cli().args(["secrets", "list"])).stdout).into_owned();
    assert!(listed.contains("repos app; branches main; no pull requests"), "{listed}");
}

/// A protected runner never takes a job of an untrusted run, whatever
/// labels the job asks for; the same job from a push runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_runners_never_take_untrusted_jobs() {
    let server = Server::start();
    let protected = Runner::start(&server, "deploy", 1, &["--protected"]);
    let _open = server.runner("linux", 1);
    let client = server.client().await;
    let pipeline = "on:\n  pull_request: {}\n  push: { branches: [main] }\njobs:\n  build:\n    runs_on: [linux]\n    steps:\n      - run: echo built\n  \
                    ship:\n    runs_on: [deploy]\n    steps:\n      - run: echo shipped\n";
    let (_u, bare, wt) = upstream(pipeline);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "k").await;
    let listed = client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners;
    assert!(listed.iter().any(|r| r.protected && r.labels == ["deploy"]), "{listed:#?}");
    // A member's fork: no approval needed, but untrusted.
    let head = push_pull_request(wt.path(), &bare, "fork-main", 9, pipeline);
    let pr = PullRequest { author: "alice".into(), association: "MEMBER".into(), ..fork_pr(9, &head, "fork-main") };
    let (code, reply) = pr.deliver(&server, "app", "k", "d-1");
    assert_eq!(code, 200, "{reply}");
    let id = runs_of(&client, "app").await[0].id.clone();
    let run = run_where(&client, &id, "build to finish", |r| word(job(r, "build").status) == "success").await;
    assert_eq!(run.trust, v1::Trust::Untrusted as i32);
    // The protected runner is idle, and the job stays queued.
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(word(job(&run, "ship").status), "queued", "{run:#?}");
    // A push's job runs there at once (while the untrusted one still waits).
    git(wt.path(), &["checkout", "-q", "main"]);
    git(wt.path(), &["commit", "-q", "--allow-empty", "-m", "release"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let push_id = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run_ids[0]
        .clone();
    let pushed = finished(&client, &push_id).await;
    assert_eq!(word(job(&pushed, "ship").status), "success", "{pushed:#?}");
    let protected_id = listed.iter().find(|r| r.protected).unwrap().id.clone();
    assert_eq!(job(&pushed, "ship").runner_id, protected_id, "the push ran on the protected runner");
    drop(protected);
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(word(job(&run, "ship").status), "queued");
    client.runs().cancel(v1::CancelRunRequest { id, ..Default::default() }).await.unwrap();
}

/// A pull request's (or another repository's) `concurrency.group` with
/// `cancel_in_progress` cannot cancel a repository's deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_groups_belong_to_their_repository() {
    let server = Server::start();
    let _runner = server.runner("linux", 4);
    let client = server.client().await;
    let deploy = "on:\n  push: { branches: [main] }\n  pull_request: {}\nconcurrency: { group: deploy, cancel_in_progress: true }\n\
                  jobs:\n  deploy:\n    steps:\n      - run: sleep 30\n";
    let (_u, bare, wt) = upstream(deploy);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "k").await;
    git(wt.path(), &["commit", "-q", "--allow-empty", "-m", "deploy"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let deploying = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run_ids[0]
        .clone();
    let run = run_where(&client, &deploying, "the deploy to run", |r| word(r.status) == "running").await;
    assert_eq!(run.concurrency_group, "app/deploy");

    let quick = deploy.replace("sleep 30", "echo quick");
    let head = push_pull_request(wt.path(), &bare, "x", 5, &quick);
    let pr = PullRequest {
        head_repo: "org/app".into(),
        author: "alice".into(),
        association: "MEMBER".into(),
        ..fork_pr(5, &head, "x")
    };
    let (code, reply) = pr.deliver(&server, "app", "k", "d-1");
    assert_eq!(code, 200, "{reply}");
    let pr_run = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(pr_run.concurrency_group, "app/pr/5/deploy");
    assert_eq!(word(pr_run.status), "success");
    // Another repository's group of the same name.
    let other = create_hosted(&client, "other").await;
    let wt2 = viaduct_tests::forge::work_tree(&quick);
    git(wt2.path(), &["push", "-q", &other.path, "main"]);
    let other_run = finished(&client, &runs_of(&client, "other").await[0].id).await;
    assert_eq!((other_run.concurrency_group.as_str(), word(other_run.status)), ("other/deploy", "success"));
    let still = client.runs().get(v1::GetRunRequest { id: deploying.clone() }).await.unwrap().into_inner();
    assert_eq!(word(still.status), "running", "the deploy was not cancelled: {still:#?}");
    client.runs().cancel(v1::CancelRunRequest { id: deploying, ..Default::default() }).await.unwrap();
}

/// A fork's branch called `main` restores main's cache but cannot write
/// into it: what it saves lives under `pr/<n>` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_cannot_poison_its_base_branchs_cache() {
    let server = Server::start();
    server.publish_test_plugin("probe");
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let put = |value: &str| {
        format!(
            "on:\n  push: {{ branches: [main] }}\n  pull_request: {{}}\njobs:\n  c:\n    steps:\n      - uses: probe\n        id: get\n        \
             with: {{ action: [cache-get], cache_key: shared }}\n      - uses: probe\n        with: {{ action: [cache-put], cache_key: shared, value: {value} }}\n"
        )
    };
    let (_u, bare, wt) = upstream(&put("from-main"));
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "k").await;
    git(wt.path(), &["commit", "-q", "--allow-empty", "-m", "warm"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let id = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run_ids[0]
        .clone();
    assert_eq!(word(finished(&client, &id).await.status), "success");

    // The fork's branch is called main too.
    let head = push_pull_request(wt.path(), &bare, "main", 11, &put("poison"));
    let pr = PullRequest { author: "alice".into(), association: "MEMBER".into(), ..fork_pr(11, &head, "main") };
    let (code, reply) = pr.deliver(&server, "app", "k", "d-1");
    assert_eq!(code, 200, "{reply}");
    let pr_run = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(word(pr_run.status), "success", "{pr_run:#?}");
    let got = &pr_run.jobs[0].steps[0].outputs;
    assert_eq!((got["cache_found"].as_str(), got["cache_value"].as_str()), ("true", "from-main"), "it starts warm");

    let entries = client
        .caches()
        .list(v1::ListCachesRequest { scope: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let branches: Vec<&str> = entries.entries.iter().map(|e| e.branch.as_str()).collect();
    assert!(branches.contains(&"pr/11") && branches.contains(&"main"), "{branches:?}");
    // Main's entry is still main's.
    git(wt.path(), &["checkout", "-q", "-B", "release", &head]);
    std::fs::write(wt.path().join(".viaduct/pipeline.yml"), put("again")).unwrap();
    git(wt.path(), &["commit", "-qam", "main again"]);
    git(wt.path(), &["push", "-q", "-f", bare.to_str().unwrap(), "release:main"]);
    let id = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .run_ids[0]
        .clone();
    let main_run = finished(&client, &id).await;
    assert_eq!(main_run.jobs[0].steps[0].outputs["cache_value"], "from-main", "{main_run:#?}");
}

/// Every form of a secret is masked in every place a job can show it:
/// logs (raw, base64, hex, reversed, cut short at the end), step outputs,
/// step and job messages, plugin outputs and summaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_logs_outputs_messages_and_summaries() {
    let server = Server::start();
    server.publish_test_plugin("probe");
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let secret = "s3cr3t/Value+with=chars";
    set_secret(&client, "K", secret, v1::SecretScope::default()).await;
    let yaml = r#"
jobs:
  j:
    secrets: [K]
    steps:
      - id: s
        run: |
          echo "raw $K"
          printf %s "$K" | base64
          printf %s "$K" | od -An -tx1 | tr -d ' \n'; echo
          printf %s "$K" | rev; echo
          echo "leak=$K" >> "$VIADUCT_OUTPUT"
          echo "b64=$(printf %s "$K" | base64)" >> "$VIADUCT_OUTPUT"
          printf 'cut: %s' "$(printf %s "$K" | cut -c1-12)"
      - uses: probe
        with: { message: "${{ steps.s.outputs.leak }}", fail: "failing with ${{ steps.s.outputs.leak }}" }
"#;
    let id = submit(&client, yaml).await;
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    assert_eq!(word(steps[0].status), "success");
    assert_eq!(word(steps[1].status), "failure");
    let log = step_log(&client, &steps[0].id).await;
    assert_eq!(log.matches("***").count(), 5, "{log}");
    assert!(log.ends_with("cut: ***"), "a secret cut short at the end is masked: {log}");
    assert_eq!(steps[0].outputs["leak"], "***");
    assert_eq!(steps[0].outputs["b64"], "***");
    assert!(steps[1].message.contains("failing with ***"), "{}", steps[1].message);
    assert!(steps[1].summary.contains("***") && steps[1].outputs["with_message"] == "***", "{:#?}", steps[1]);
    assert!(run.jobs[0].message.contains("***"), "{}", run.jobs[0].message);
    let all = everything_shown(&client, &run).await;
    assert!(!leaked(&all, secret), "{all}");
    assert!(!all.contains("s3cr3t/Value"), "{all}");
}

/// git over HTTP: the repository is the whole path segment, whether a
/// repository exists is told only after authentication, and a runner token
/// reads only a repository of a job it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_over_http_serves_only_what_a_token_may_read() {
    let server = Server::start();
    let runner = server.runner("linux", 1);
    let client = server.client().await;
    let pipeline = "on:\n  push: { branches: [main] }\njobs:\n  j:\n    steps:\n      - run: sleep 30\n";
    for name in ["a", "a.github"] {
        let repo = create_hosted(&client, name).await;
        let wt = viaduct_tests::forge::work_tree(pipeline);
        git(wt.path(), &["push", "-q", &repo.path, "main"]);
    }
    let runner_token = eventually("the runner's identity", || async {
        let text = std::fs::read_to_string(runner.work_dir().join("runner.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(v["token"].as_str()?.to_string())
    })
    .await;
    let refs = |repo: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        http(server.addr(), "GET", &format!("/git/{repo}.git/info/refs?service=git-upload-pack"), &h, b"").0
    };
    // No token: 401 for repositories that exist and for those that do not.
    assert_eq!((refs("a", None), refs("nope", None)), (401, 401));
    assert_eq!(refs("nope", Some(&server.admin_token())), 404);
    // The path names `a.github`, not `a`; no dumb-protocol paths.
    assert_eq!(refs("a.github", Some(&server.admin_token())), 200);
    let dumb = http(
        server.addr(),
        "GET",
        "/git/a.git/HEAD",
        &[("authorization", &format!("Bearer {}", server.admin_token()))],
        b"",
    )
    .0;
    assert_eq!(dumb, 404);
    // The runner holds the job of one repository (only one slot: the other
    // queues), and reads only that one.
    let running = eventually("a job to run", || async {
        let list = client.runs().list(v1::ListRunsRequest::default()).await.ok()?.into_inner().runs;
        list.into_iter().find(|r| word(r.status) == "running")
    })
    .await;
    let held = running.source.unwrap().repo;
    let other = if held == "a" { "a.github" } else { "a" };
    assert_eq!(refs(&held, Some(&runner_token)), 200);
    assert_eq!(refs(other, Some(&runner_token)), 403);
    // Webhooks: a repository that does not exist looks like a bad signature.
    let (code, body) = http(server.addr(), "POST", "/webhooks/nope", &[("x-github-event", "push")], b"{}");
    assert_eq!((code, String::from_utf8_lossy(&body).contains("bad or missing webhook signature")), (401, true));
    for r in client.runs().list(v1::ListRunsRequest::default()).await.unwrap().into_inner().runs {
        client.runs().cancel(v1::CancelRunRequest { id: r.id, ..Default::default() }).await.unwrap();
    }
}

/// A log can colour a terminal, never retitle it, write its clipboard,
/// plant links or move the cursor to forge lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_colours_but_no_other_escape_sequence_on_a_terminal() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let yaml = "jobs:\n  j:\n    steps:\n      - name: \"title\\e]0;pwned\\a\"\n        \
                run: printf '\\033[31mred\\033[0m \\033]0;pwned\\007\\033]52;c;ZXZpbA==\\007\\033[2Kok\\n'\n";
    let id = submit(&client, yaml).await;
    finished(&client, &id).await;
    let cli = viaduct_tests::bin("viaduct");
    let cmd = format!("{} --server {} logs {id}", cli.display(), server.url());
    // `script` gives the CLI a terminal as stdout.
    let out = output(
        Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]).env("VIADUCT_TOKEN", server.admin_token()),
    );
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("\x1b[31mred\x1b[0m ok"), "colours stay: {shown:?}");
    assert!(!shown.contains("pwned") && !shown.contains("\x1b]") && !shown.contains("\x1b[2K"), "{shown:?}");
    // To a pipe, the exact bytes.
    let piped = output(server.cli().args(["logs", &id]));
    assert!(String::from_utf8_lossy(&piped.stdout).contains("\x1b]52;c;ZXZpbA==\x07"));
}
