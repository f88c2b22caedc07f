//! Commit statuses reported to forges, end to end: the real server and runner
//! against `forge_api`, a stand-in for GitHub's, GitLab's and Gitea's
//! status APIs that checks what it receives and can fail on demand.

use std::path::PathBuf;

use viaduct_tests::{
    Client, Server, eventually, finished,
    forge::{git, push_and_sync, runs_of, upstream},
    forge_api::{Delivery, ForgeApi},
    output, v1, word,
};

/// A run whose second job fails, so the third is skipped (blocked: a
/// failure to the forge); the fourth's `if:` is false (a success).
const PIPELINE: &str = "name: ci\non:\n  push: {}\njobs:\n  build:\n    steps:\n      - run: echo building\n  test:\n    needs: [build]\n    steps:\n      - run: exit 3\n  deploy:\n    needs: [test]\n    steps:\n      - run: echo never\n  docs:\n    needs: [build]\n    if: branch == 'nope'\n    steps:\n      - run: echo never\n";

const TOKEN: &str = "forge-token-9f2c51";

/// Where a state stands: waiting, running, ended.
fn rank(state: &str) -> u8 {
    match state {
        "pending" | "queued" => 0,
        "running" | "in_progress" => 1,
        _ => 2,
    }
}

/// The states of each context never go back, and end in `last`.
fn assert_in_order(forge: &ForgeApi, sha: &str, context: &str, last: &str) -> Vec<String> {
    let states = forge.states_of(sha, context);
    assert_eq!(states.last().map(String::as_str), Some(last), "{context}: {states:?}");
    assert!(states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "{context} went back: {states:?}");
    assert_eq!(states.iter().filter(|s| rank(s) == 2).count(), 1, "{context} ended once: {states:?}");
    states
}

/// The webhook secret of the mirrors.
const HOOK_SECRET: &str = "hook-secret";

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

/// A mirror `name` of a new upstream with `pipeline`, reporting through
/// `forge` (its secret set to `secret`, scoped to the mirror); then a pushed
/// commit and the run it started: (upstream dir, bare repo, work tree,
/// commit).
async fn reporting_mirror(
    client: &Client,
    name: &str,
    pipeline: &str,
    forge: v1::ForgeConnection,
    secret: &str,
) -> (tempfile::TempDir, PathBuf, tempfile::TempDir, String) {
    let (dir, bare, wt) = upstream(pipeline);
    let secret_name = if forge.app_id.is_empty() { forge.token_secret.clone() } else { forge.app_key_secret.clone() };
    client
        .secrets()
        .set(v1::SetSecretRequest {
            name: secret_name,
            value: secret.into(),
            scope: Some(v1::SecretScope { repos: vec![name.into()], server_only: true, ..Default::default() }),
        })
        .await
        .unwrap();
    let req = v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: format!("file://{}", bare.display()),
            webhook_secret: HOOK_SECRET.into(),
            forge: Some(forge),
            ..Default::default()
        })),
    };
    client.repos().create(req).await.unwrap();
    let (sha, _) = push_and_sync(client, wt.path(), &bare, name).await;
    (dir, bare, wt, sha)
}

fn final_of<'a>(d: &'a [Delivery], sha: &str, context: &str) -> Option<&'a Delivery> {
    d.iter().rev().find(|d| d.sha == sha && d.context == context && rank(&d.state) == 2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_and_each_job_report_to_github_in_order_and_a_skipped_job_ends_too() {
    let forge = ForgeApi::start(TOKEN);
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let (_u, _bare, _wt, sha) =
        reporting_mirror(&client, "app", PIPELINE, with_token("app", "github", forge.url()), TOKEN).await;
    let run = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(word(run.status), "failure");

    let contexts = ["viaduct/ci", "viaduct/ci/build", "viaduct/ci/test", "viaduct/ci/deploy", "viaduct/ci/docs"];
    forge
        .wait_for("every context's final status", |d| {
            contexts.iter().all(|c| final_of(d, &sha, c).is_some()).then_some(())
        })
        .await;
    assert_in_order(&forge, &sha, "viaduct/ci", "failure");
    assert_in_order(&forge, &sha, "viaduct/ci/build", "success");
    assert_in_order(&forge, &sha, "viaduct/ci/test", "failure");
    // A required check must not wait forever: a skip is final and says
    // why. Skipped because `test` failed, `deploy` must not pass either;
    // `docs`, skipped by its own `if:`, passes.
    assert_in_order(&forge, &sha, "viaduct/ci/deploy", "failure");
    assert_in_order(&forge, &sha, "viaduct/ci/docs", "success");
    let all = forge.deliveries();
    let deploy = final_of(&all, &sha, "viaduct/ci/deploy").unwrap();
    assert!(deploy.description.starts_with("skipped: needed job(s) did not succeed: test"), "{deploy:?}");
    let docs = final_of(&all, &sha, "viaduct/ci/docs").unwrap();
    assert!(docs.description.starts_with("skipped: `if:"), "{docs:?}");
    let test = final_of(&all, &sha, "viaduct/ci/test").unwrap();
    assert!(test.description.starts_with("Failed"), "{test:?}");
    assert_eq!(final_of(&all, &sha, "viaduct/ci").unwrap().target_url, format!("{}/runs/{}", server.url(), run.id));
    assert!(test.target_url.starts_with(&format!("{}/runs/{}/jobs/", server.url(), run.id)), "{test:?}");
    assert!(all.iter().all(|d| d.project == "org/app" && d.description.chars().count() <= 140));
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());

    // What the repository says, and /metrics.
    let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    let delivery = repo.forge_delivery.expect("delivery");
    assert_eq!((delivery.pending, delivery.last_error.as_str()), (0, ""), "{delivery:?}");
    assert!(delivery.delivered >= 4, "{delivery:?}");
    assert!(server.metric("viaduct_forge_statuses_total{result=\"delivered\"}") >= 4);
    let shown = output(server.cli().args(["repos", "get", "app"]));
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("reports to   github org/app") && text.contains("waiting"), "{text}");
    // The token went only to the forge: never into the server's log.
    assert!(!server.log().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_groups_a_runs_statuses_in_one_pipeline_and_gitea_gets_its_own_words() {
    let forge = ForgeApi::start(TOKEN);
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let (_g, _gb, _gw, gl_sha) =
        reporting_mirror(&client, "gl", PIPELINE, with_token("gl", "gitlab", format!("{}/api/v4", forge.url())), TOKEN)
            .await;
    let (_t, _tb, _tw, tea_sha) = reporting_mirror(
        &client,
        "tea",
        PIPELINE,
        with_token("tea", "forgejo", format!("{}/api/v1", forge.url())),
        TOKEN,
    )
    .await;
    for repo in ["gl", "tea"] {
        let run = finished(&client, &runs_of(&client, repo).await[0].id).await;
        assert_eq!(word(run.status), "failure");
    }
    let contexts = ["viaduct/ci", "viaduct/ci/build", "viaduct/ci/test", "viaduct/ci/deploy", "viaduct/ci/docs"];
    forge
        .wait_for("every context's final status on both forges", |d| {
            contexts
                .iter()
                .all(|c| final_of(d, &gl_sha, c).is_some() && final_of(d, &tea_sha, c).is_some())
                .then_some(())
        })
        .await;
    let states = assert_in_order(&forge, &gl_sha, "viaduct/ci/test", "failed");
    assert!(states.iter().any(|s| s == "running"), "GitLab has a word for running: {states:?}");
    assert_in_order(&forge, &gl_sha, "viaduct/ci/deploy", "failed");
    assert_in_order(&forge, &gl_sha, "viaduct/ci/docs", "success");
    let pipelines: std::collections::BTreeSet<Option<u64>> =
        forge.deliveries().iter().filter(|d| d.sha == gl_sha).map(|d| d.pipeline_id).collect();
    assert_eq!(pipelines.len(), 1, "one GitLab pipeline for the run: {pipelines:?}");
    assert!(pipelines.iter().all(Option::is_some));
    assert!(forge.deliveries().iter().filter(|d| d.sha == gl_sha).all(|d| d.project == "org/gl"));

    assert_in_order(&forge, &tea_sha, "viaduct/ci/test", "failure");
    assert_in_order(&forge, &tea_sha, "viaduct/ci", "failure");
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_as_the_forge_asks_and_shown_on_the_repository() {
    let forge = ForgeApi::start(TOKEN);
    // Server errors, then GitHub's secondary rate limit: all retried.
    forge.fail_next(2, 502, &[]);
    forge.fail_next(1, 403, &[("retry-after", "1")]);
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let (_u, _bare, _wt, sha) =
        reporting_mirror(&client, "app", PIPELINE, with_token("app", "github", forge.url()), TOKEN).await;
    finished(&client, &runs_of(&client, "app").await[0].id).await;
    forge
        .wait_for("the run's final status despite the failures", |d| final_of(d, &sha, "viaduct/ci").map(|_| ()))
        .await;
    assert_in_order(&forge, &sha, "viaduct/ci", "failure");
    assert_in_order(&forge, &sha, "viaduct/ci/deploy", "failure");
    let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    let delivery = repo.forge_delivery.unwrap();
    assert!(delivery.last_error.contains("rate limited") || delivery.last_error.contains("HTTP 502"), "{delivery:?}");
    assert!(server.metric("viaduct_forge_statuses_total{result=\"retried\"}") >= 3);

    // The forge down: statuses wait, visible, and go once it is back.
    forge.set_available(false);
    let before = forge.deliveries().len();
    client
        .runs()
        .retry(v1::RetryRunRequest { id: runs_of(&client, "app").await[0].id.clone(), ..Default::default() })
        .await
        .unwrap();
    eventually("statuses waiting for the forge", || {
        let client = client.clone();
        async move {
            let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
            let d = repo.forge_delivery.unwrap();
            (d.pending > 0 && d.last_error.contains("HTTP 503")).then_some(())
        }
    })
    .await;
    assert_eq!(forge.deliveries().len(), before);
    forge.set_available(true);
    forge
        .wait_for("the retried run's statuses", |d| {
            d[before..]
                .iter()
                .any(|d| d.sha == sha && d.context == "viaduct/ci/test" && d.state == "failure")
                .then_some(())
        })
        .await;
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_connects_a_forge_with_a_secret_of_that_repository_over_https() {
    let server = Server::start();
    let client = server.client().await;
    let (_u, bare, _wt) = upstream(PIPELINE);
    let url = format!("file://{}", bare.display());
    let mirror = |name: &str, forge: v1::ForgeConnection| v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: url.clone(),
            forge: Some(forge),
            ..Default::default()
        })),
    };
    let conn = |api: &str, secret: &str| v1::ForgeConnection {
        kind: "github".into(),
        api_url: api.into(),
        project: "org/app".into(),
        token_secret: secret.into(),
        ..Default::default()
    };
    let set = |name: &str, repos: Vec<String>, server_only: bool| v1::SetSecretRequest {
        name: name.into(),
        value: TOKEN.into(),
        scope: Some(v1::SecretScope { repos, server_only, ..Default::default() }),
    };
    client.secrets().set(set("ANY", vec![], true)).await.unwrap();
    client.secrets().set(set("OTHERS", vec!["other".into()], true)).await.unwrap();
    client.secrets().set(set("SHARED", vec!["app".into(), "other".into()], true)).await.unwrap();
    client.secrets().set(set("JOBS_TOO", vec!["app".into()], false)).await.unwrap();
    client.secrets().set(set("APPS", vec!["app".into()], true)).await.unwrap();
    // Only a server-only secret of this one repository: no job can read it.
    let refusals = [
        ("ANY", "scoped to repository `app` alone"),
        ("OTHERS", "scoped to repository `app` alone"),
        ("SHARED", "scoped to repository `app` alone"),
        ("JOBS_TOO", "for the server only"),
        ("NONE", "is not set"),
    ];
    for (secret, why) in refusals {
        let e = client.repos().create(mirror("app", conn("http://127.0.0.1:1", secret))).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
        assert!(e.message().contains(why), "{e}");
    }
    let e = client.repos().create(mirror("app", conn("http://forge.example", "APPS"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("use https://"), "{e}");
    let e = client
        .repos()
        .create(mirror("app", v1::ForgeConnection { kind: "svn".into(), ..conn("", "APPS") }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let repo =
        client.repos().create(mirror("app", conn("https://ghe.example/api/v3/", "APPS"))).await.unwrap().into_inner();
    let f = repo.forge.unwrap();
    assert_eq!((f.api_url.as_str(), f.context_prefix.as_str()), ("https://ghe.example/api/v3", "viaduct"));

    // A maintainer of the repository may not point its token elsewhere.
    let req = v1::CreateTokenRequest {
        name: "app maintainer".into(),
        service: true,
        grants: vec![v1::Grant { role: v1::Role::Maintain as i32, repo: "app".into() }],
        ..Default::default()
    };
    let token = client.tokens().create(req).await.unwrap().into_inner().secret;
    let theirs = Client::connect(&server.url(), Some(token)).await.unwrap();
    let change = v1::UpdateRepoRequest {
        name: "app".into(),
        forge: Some(conn("https://attacker.example", "APPS")),
        ..Default::default()
    };
    let e = theirs.repos().update(change.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    // The CLI, as the admin: remove it.
    let removed = output(server.cli().args(["repos", "forge", "app", "--remove"]));
    assert!(removed.status.success(), "{removed:?}");
    let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    assert!(repo.forge.is_none() && repo.forge_delivery.is_none(), "{repo:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_burst_of_100_runs_leaves_every_context_in_its_final_state() {
    const ONE_JOB: &str = "name: ci\non:\n  push: {}\njobs:\n  check:\n    steps:\n      - run: \"true\"\n";
    let forge = ForgeApi::start(TOKEN);
    let mut server = Server::start();
    let _runner = server.runner("linux", 4);
    let client = server.client().await;
    let (_u, bare, wt, first) =
        reporting_mirror(&client, "app", ONE_JOB, with_token("app", "github", forge.url()), TOKEN).await;
    let mut shas = vec![first];
    for i in 1..100 {
        git(wt.path(), &["checkout", "-q", "-b", &format!("b{i}")]);
        git(wt.path(), &["commit", "-q", "--allow-empty", "-m", &format!("commit {i}")]);
        shas.push(git(wt.path(), &["rev-parse", "HEAD"]));
    }
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "--all"]);
    let sync = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "app".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sync.run_ids.len(), 99);
    // Killed in the middle of the burst.
    forge.wait_for("a quarter of the statuses", |d| (d.len() >= 100).then_some(())).await;
    server.kill9();
    let killed_at = forge.deliveries().len();
    server.restart();
    let client = server.client().await;
    let req = v1::ListRunsRequest {
        repo: "app".into(),
        page: Some(v1::PageRequest { page_size: 200, ..Default::default() }),
        ..Default::default()
    };
    let runs = client.runs().list(req).await.unwrap().into_inner().runs;
    assert_eq!(runs.len(), 100, "every run accepted before the kill is still there");
    for run in &runs {
        let run = finished(&client, &run.id).await;
        assert_eq!(word(run.status), "success", "{run:#?}");
    }
    let contexts = ["viaduct/ci", "viaduct/ci/check"];
    forge
        .wait_for("every context of every commit in its final state", |d| {
            shas.iter().all(|sha| contexts.iter().all(|c| final_of(d, sha, c).is_some())).then_some(())
        })
        .await;
    for sha in &shas {
        for context in contexts {
            let states = forge.states_of(sha, context);
            assert!(states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])), "{context} went back: {states:?}");
            // A status sent just before the kill (its deletion not yet on
            // disk) is read back from the forge after the restart, not sent
            // again: each context ends once, in its final state.
            assert_eq!(
                states.iter().filter(|s| rank(s) == 2).collect::<Vec<_>>(),
                ["success"],
                "{context}: {states:?}"
            );
        }
    }
    let repeated = shas
        .iter()
        .flat_map(|sha| contexts.iter().map(move |c| (sha, *c)))
        .filter(|(sha, c)| forge.states_of(sha, c).iter().filter(|s| rank(s) == 2).count() > 1)
        .count();
    println!(
        "statuses: {} delivered, {killed_at} before the kill; final states sent twice: {repeated}; reads after the restart: {}",
        forge.deliveries().len(),
        forge.gets()
    );
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
}

/// A GitHub App's private key and its public half (made for these tests only).
const APP_KEY: &str = include_str!("../fixtures/github-app-test-key.pem");
const APP_PUBLIC_KEY: &str = include_str!("../fixtures/github-app-test-key.pub.pem");
/// The GitHub App's webhook secret.
const APP_HOOK_SECRET: &str = "app-hook-secret-5e1d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_app_reports_check_runs_with_the_failure_and_its_rerun_retries_the_run() {
    const APP: u64 = 4242;
    const FAILING: &str = "name: ci\non:\n  push: {}\njobs:\n  build:\n    steps:\n      - run: echo building\n  test:\n    needs: [build]\n    steps:\n      - run: \"echo 'src/lib.rs:12:5: error: expected `;`'; exit 1\"\n  deploy:\n    needs: [test]\n    steps:\n      - run: echo never\n";
    let forge = ForgeApi::start(TOKEN);
    forge.add_app(APP, APP_PUBLIC_KEY, 77);
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let app = v1::ForgeConnection {
        kind: "github".into(),
        api_url: forge.url(),
        project: "org/app".into(),
        app_id: APP.to_string(),
        app_key_secret: "GH_APP_KEY".into(),
        app_webhook_secret: "GH_APP_HOOK".into(),
        check_logs: true,
        ..Default::default()
    };
    let hook_secret = v1::SecretScope { repos: vec!["app".into()], server_only: true, ..Default::default() };
    let req =
        v1::SetSecretRequest { name: "GH_APP_HOOK".into(), value: APP_HOOK_SECRET.into(), scope: Some(hook_secret) };
    client.secrets().set(req).await.unwrap();
    let (_u, _bare, _wt, sha) = reporting_mirror(&client, "app", FAILING, app, APP_KEY).await;
    let run = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(word(run.status), "failure");
    let check =
        |name: &str| forge.check_runs().into_iter().filter(|c| c.name == name && c.head_sha == sha).collect::<Vec<_>>();
    forge
        .wait_for("the check runs to complete", |_| {
            ["viaduct/ci", "viaduct/ci/build", "viaduct/ci/test", "viaduct/ci/deploy"]
                .iter()
                .all(|n| forge.check_runs().iter().any(|c| &c.name == n && c.status == "completed"))
                .then_some(())
        })
        .await;
    let test = check("viaduct/ci/test").pop().unwrap();
    assert_eq!(test.conclusion.as_deref(), Some("failure"), "{test:?}");
    assert!(
        test.summary.contains("src/lib.rs:12:5: error: expected `;`"),
        "the failing step's last lines: {}",
        test.summary
    );
    assert!(test.summary.contains("exit 1"), "{}", test.summary);
    let a = &test.annotations;
    assert!(
        a.iter().any(|a| a["path"] == "src/lib.rs" && a["start_line"] == 12 && a["annotation_level"] == "failure"),
        "{a:?}"
    );
    assert!(test.details_url.starts_with(&format!("{}/runs/{}/jobs/", server.url(), run.id)), "{test:?}");
    let deploy = check("viaduct/ci/deploy").pop().unwrap();
    assert_eq!(deploy.conclusion.as_deref(), Some("failure"), "skipped after a failure: {deploy:?}");
    assert!(deploy.title.starts_with("skipped"), "{deploy:?}");
    let whole = check("viaduct/ci").pop().unwrap();
    assert!(whole.summary.contains("| `test` | failure |"), "{}", whole.summary);
    assert!(forge.deliveries().iter().all(|d| d.check_run.is_some()), "an app reports check runs, not statuses");
    assert!(forge.refused_except_revoked().is_empty(), "{:?}", forge.refused_except_revoked());
    assert_eq!(forge.tokens_issued(), 1, "one installation token, kept");

    // "Re-run" on the failed job's check run, after GitHub revoked the token:
    // the run is retried, its retried jobs get new check runs.
    forge.revoke_tokens();
    // GitHub sends it to the app's webhook, signed with the app's secret.
    let send = |app: u64, event: &str, body: &str, secret: &str, delivery: &str| {
        let sig = viaduct_tests::forge::sign(secret, body.as_bytes());
        let h = [("x-github-event", event), ("x-github-delivery", delivery), ("x-hub-signature-256", sig.as_str())];
        let path = format!("/webhooks/github-app/{app}");
        let (code, reply) = viaduct_tests::http(server.addr(), "POST", &path, &h, body.as_bytes());
        (code, String::from_utf8_lossy(&reply).into_owned())
    };
    let rerun = forge.rerequested_payload(test.id, APP, "octocat");
    let (code, _) =
        send(APP + 1, "check_run", &forge.rerequested_payload(test.id, APP + 1, "octocat"), APP_HOOK_SECRET, "r-0");
    assert_eq!(code, 401, "another app's webhook");
    let (code, _) = send(APP, "check_run", &rerun, "not-the-secret", "r-1");
    assert_eq!(code, 401, "a forged signature");
    assert_eq!(
        client.runs().get(v1::GetRunRequest { id: run.id.clone() }).await.unwrap().into_inner().status,
        run.status
    );
    let (code, reply) = send(APP, "check_run", &rerun, APP_HOOK_SECRET, "r-2");
    assert_eq!(code, 200, "{reply}");
    assert!(reply.contains(&format!("\"retried\":[\"{}\"]", run.id)), "{reply}");
    let (code, reply) = send(APP, "check_run", &rerun, APP_HOOK_SECRET, "r-2");
    assert!(code == 200 && reply.contains("duplicate"), "a delivery acted on once: {reply}");
    forge
        .wait_for("new check runs for the retried jobs", |_| {
            let again = check("viaduct/ci/test");
            (again.len() == 2 && again.iter().all(|c| c.status == "completed")).then_some(())
        })
        .await;
    assert_eq!(check("viaduct/ci/build").len(), 1, "a job that succeeded is not run again");
    assert!(forge.tokens_issued() >= 2, "a revoked token is replaced");
    // "Re-run all checks": every run of the commit that reported checks.
    let suite = serde_json::json!({
        "action": "rerequested",
        "check_suite": {"id": 1, "head_sha": sha, "app": {"id": APP}},
        "repository": {"full_name": "org/app"},
        "sender": {"login": "octocat"},
    })
    .to_string();
    let (code, reply) = send(APP, "check_suite", &suite, APP_HOOK_SECRET, "r-3");
    assert!(code == 200 && reply.contains(&run.id), "{reply}");
    forge
        .wait_for("a third attempt's check run", |_| {
            let again = check("viaduct/ci/test");
            (again.len() == 3 && again.iter().all(|c| c.status == "completed")).then_some(())
        })
        .await;
    assert!(forge.refused_except_revoked().is_empty(), "{:?}", forge.refused_except_revoked());
    assert!(!server.log().contains("BEGIN RSA PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_the_pipeline_does_not_run_still_gets_final_checks_unless_a_run_speaks_for_it() {
    const PUSH_ONLY: &str = "name: ci\non:\n  push: {}\njobs:\n  build:\n    steps:\n      - run: \"true\"\n";
    let forge = ForgeApi::start(TOKEN);
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let (_u, bare, wt, pushed) =
        reporting_mirror(&client, "app", PUSH_ONLY, with_token("app", "github", forge.url()), TOKEN).await;
    finished(&client, &runs_of(&client, "app").await[0].id).await;
    forge.wait_for("the push run's checks", |d| final_of(d, &pushed, "viaduct/ci").map(|_| ())).await;
    // A pull request into main: its pipeline runs pushes only.
    let pr = |number: u32, head: &str, delivery: &str| {
        let body = format!(
            r#"{{"action":"opened","number":{number},"pull_request":{{"head":{{"sha":"{head}","ref":"fix","repo":{{"full_name":"org/app"}}}},"base":{{"ref":"main","repo":{{"full_name":"org/app"}}}},"user":{{"login":"alice"}},"author_association":"MEMBER"}}}}"#
        );
        let sig = viaduct_tests::forge::sign(HOOK_SECRET, body.as_bytes());
        let h = [
            ("x-github-event", "pull_request"),
            ("x-github-delivery", delivery),
            ("x-hub-signature-256", sig.as_str()),
        ];
        let (code, reply) = viaduct_tests::http(server.addr(), "POST", "/webhooks/app", &h, body.as_bytes());
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&reply));
    };
    git(wt.path(), &["checkout", "-q", "-b", "fix"]);
    git(wt.path(), &["commit", "-q", "--allow-empty", "-m", "the fix"]);
    let head = git(wt.path(), &["rev-parse", "HEAD"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "fix:refs/pull/7/head"]);
    pr(7, &head, "pr-7");
    let checks = ["viaduct/ci", "viaduct/ci/build"];
    forge
        .wait_for("final checks for the pull request", |d| {
            checks.iter().all(|c| final_of(d, &head, c).is_some()).then_some(())
        })
        .await;
    for c in checks {
        let d = final_of(&forge.deliveries(), &head, c).cloned().unwrap();
        assert_eq!(d.state, "success", "{d:?}");
        assert!(d.description.contains("does not run pull requests"), "{d:?}");
        assert_eq!(d.target_url, format!("{}/repos/app", server.url()));
    }
    assert_eq!(runs_of(&client, "app").await.len(), 1, "and no run");
    // The same for a commit a run already reported on: the run speaks for
    // it (a skip must never cover a failure).
    git(wt.path(), &["push", "-q", "-f", bare.to_str().unwrap(), &format!("{pushed}:refs/pull/8/head")]);
    let before = forge.deliveries().len();
    pr(8, &pushed, "pr-8");
    // Anything written was written before the webhook's answer: nothing
    // waits, and nothing new came for that commit.
    let repo = client.repos().get(v1::GetRepoRequest { name: "app".into() }).await.unwrap().into_inner();
    assert_eq!(repo.forge_delivery.unwrap().pending, 0);
    let reported = forge.states_of(&pushed, "viaduct/ci");
    assert_eq!(reported.iter().filter(|s| s.as_str() == "success").count(), 1, "{reported:?}");
    assert!(forge.deliveries()[before..].iter().all(|d| d.sha != pushed), "nothing new for the pushed commit");
    assert!(forge.refused().is_empty(), "{:?}", forge.refused());
}
