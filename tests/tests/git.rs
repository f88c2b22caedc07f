//! Git and triggers with real git: hosted repositories pushed to with the
//! git CLI (filesystem path and smart HTTP), mirrors of file:// remotes with
//! signed webhooks, pull requests, schedules, manual triggers, restarts.

use std::{process::Command, time::Duration};

use tokio_stream::StreamExt;
use viaduct_tests::{
    Runner, Server, eventually, finished,
    forge::{create_hosted, create_mirror, git, runs_of, sign, upstream, work_tree},
    http, output, step_log, v1, wait_until, within, word,
};

const ON_MAIN: &str = "on:\n  push: { branches: [main] }\n  manual: {}\njobs:\n  build:\n    steps:\n      - run: cat hello.txt; echo \"$VIADUCT_REPO $VIADUCT_BRANCH $VIADUCT_COMMIT $VIADUCT_EVENT\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_hosted_repo_runs_the_pipeline_at_that_commit() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "app").await;
    assert_eq!((repo.kind.as_str(), repo.default_branch.as_str()), ("hosted", "main"));
    let wt = work_tree(ON_MAIN);
    // Over the filesystem path: the hook has told the server before git returns.
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let runs = runs_of(&client, "app").await;
    assert_eq!(runs.len(), 1);
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let sha = git(wt.path(), &["rev-parse", "HEAD"]);
    let src = run.source.clone().unwrap();
    assert_eq!((src.event.as_str(), src.branch.as_str(), src.commit.as_str()), ("push", "main", sha.as_str()));
    assert_eq!(src.author, "Ada Dev <ada@example.com>");
    assert_eq!(src.message, "add the pipeline");
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await, format!("hello from git\napp main {sha} push\n"));

    // Over git smart HTTP, with the token as the password.
    std::fs::write(wt.path().join("hello.txt"), "changed\n").unwrap();
    git(wt.path(), &["commit", "-qam", "change it"]);
    let url = repo.clone_url.replace("http://", &format!("http://viaduct:{}@", server.admin_token()));
    git(wt.path(), &["push", "-q", &url, "main"]);
    let runs = runs_of(&client, "app").await;
    assert_eq!(runs.len(), 2);
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await.lines().next(), Some("changed"));
    // A wrong password is refused, and the repository lists by branch too.
    let bad = repo.clone_url.replace("http://", "http://viaduct:wrong@");
    let out =
        output(Command::new("git").args(["push", &bad, "main"]).current_dir(wt.path()).env("GIT_TERMINAL_PROMPT", "0"));
    assert!(!out.status.success());
    let by_branch = client
        .runs()
        .list(v1::ListRunsRequest { branch: "main".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_branch.runs.len(), 2);
    // Cloning over HTTP works too.
    let clone = tempfile::tempdir().unwrap();
    git(clone.path(), &["clone", "-q", &url, "c"]);
    assert_eq!(std::fs::read_to_string(clone.path().join("c/hello.txt")).unwrap(), "changed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_that_on_does_not_ask_for_start_nothing_and_an_invalid_file_fails_the_run() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "svc").await;
    let wt = work_tree(ON_MAIN);
    git(wt.path(), &["checkout", "-q", "-b", "feature"]);
    git(wt.path(), &["push", "-q", &repo.path, "feature"]);
    assert!(runs_of(&client, "svc").await.is_empty(), "feature is not in on.push.branches");
    // An invalid pipeline file on main: a failed run that shows the error.
    git(wt.path(), &["checkout", "-q", "main"]);
    std::fs::write(wt.path().join(".viaduct/pipeline.yml"), "on: { push: {} }\njobs:\n  build:\n    stpes: []\n")
        .unwrap();
    git(wt.path(), &["commit", "-qam", "break it"]);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let runs = runs_of(&client, "svc").await;
    assert_eq!(runs.len(), 1);
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(word(run.status), "failure");
    assert!(run.jobs.is_empty());
    assert!(run.error.contains(".viaduct/pipeline.yml:4:5: unknown key `stpes`"), "{}", run.error);
    // The CLI shows it.
    let out = output(server.cli().args(["runs", "get", &run.id]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown key `stpes`"));

    // A pushed pipeline file over the 1 MiB limit is not parsed (a hostile
    // repository cannot make the server chew on 100 MB of YAML): the run
    // fails saying so (and does not keep the text: `launch`'s unit test).
    let padding = format!("# {}\n", "x".repeat(200)).repeat(6000);
    std::fs::write(wt.path().join(".viaduct/pipeline.yml"), format!("{padding}{ON_MAIN}")).unwrap();
    git(wt.path(), &["commit", "-qam", "a huge file"]);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let runs = runs_of(&client, "svc").await;
    assert_eq!(runs.len(), 2);
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(word(run.status), "failure");
    assert!(run.error.contains("over the limit of 1048576"), "{}", run.error);
    // Submitted directly, the same file is refused before any run exists.
    let yaml = format!("{padding}{ON_MAIN}");
    let req = v1::SubmitRequest { source: Some(v1::submit_request::Source::PipelineYaml(yaml)), ..Default::default() };
    let err = client.runs().submit(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_syncs_a_mirror_once_and_bad_signatures_are_refused() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let (_u, bare, wt) = upstream(ON_MAIN);
    let url = format!("file://{}", bare.display());
    let repo = create_mirror(&client, "mirrored", &url, "s3cret").await;
    assert_eq!(repo.webhook_url, format!("{}/webhooks/mirrored", server.url()));
    assert!(runs_of(&client, "mirrored").await.is_empty(), "what the mirror already had starts nothing");

    std::fs::write(wt.path().join("hello.txt"), "new upstream commit\n").unwrap();
    git(wt.path(), &["commit", "-qam", "upstream change"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let body = br#"{"ref":"refs/heads/main","after":"x","repository":{"full_name":"team/app"}}"#;
    let signature = sign("s3cret", body);
    let headers = |sig: &str, delivery: &str| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-github-event".into(), "push".into()),
            ("x-github-delivery".into(), delivery.to_string()),
            ("x-hub-signature-256".into(), sig.to_string()),
        ]
    };
    let send = |h: Vec<(String, String)>| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        http(server.addr(), "POST", "/webhooks/mirrored", &h, body)
    };
    // A wrong signature: 401, nothing starts.
    let (code, _) = send(headers(&sign("wrong", body), "d-0"));
    assert_eq!(code, 401);
    assert!(server.log().contains("webhook refused: bad or missing signature"));
    assert!(runs_of(&client, "mirrored").await.is_empty());
    // The right one: fetch, run.
    let (code, reply) = send(headers(&signature, "d-1"));
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&reply));
    let runs = runs_of(&client, "mirrored").await;
    assert_eq!(runs.len(), 1);
    let run = finished(&client, &runs[0].id).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await.lines().next(), Some("new upstream commit"));
    // A replay of the same delivery starts nothing.
    let (code, reply) = send(headers(&signature, "d-1"));
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&reply).contains("duplicate"));
    assert_eq!(runs_of(&client, "mirrored").await.len(), 1);
}

/// A mirror of a remote that wants a password (here the server's own smart
/// HTTP, which takes a token) fetches with the credentials a secret holds;
/// a missing secret or refused credentials fail with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_fetches_with_the_credentials_in_a_secret() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let upstream = create_hosted(&client, "upstream").await;
    let wt = work_tree(ON_MAIN);
    git(wt.path(), &["push", "-q", &upstream.path, "main"]);
    let mirror = |name: &str, credentials: &str| v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: upstream.clone_url.clone(),
            credentials: credentials.into(),
            ..Default::default()
        })),
    };
    let err = client.repos().create(mirror("m0", "GIT_TOKEN")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("secret `GIT_TOKEN` is not set (viaduct secrets set GIT_TOKEN)"),
        "{}",
        err.message()
    );

    let token = server.admin_token();
    for (name, value) in [("WRONG", "viaduct:nope".to_string()), ("GIT_TOKEN", format!("viaduct:{token}"))] {
        client.secrets().set(v1::SetSecretRequest { name: name.into(), value, ..Default::default() }).await.unwrap();
    }
    let err = client.repos().create(mirror("m1", "WRONG")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("authentication failed with secret `WRONG`'s credentials"), "{}", err.message());
    assert!(!err.message().contains("nope"), "the secret's value never shows: {}", err.message());

    let gone = client.repos().get(v1::GetRepoRequest { name: "m1".into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "a mirror whose first fetch failed is not kept");

    let m = client.repos().create(mirror("m1", "GIT_TOKEN")).await.unwrap().into_inner();
    assert_eq!((m.last_error.as_str(), m.credentials.as_str()), ("", "GIT_TOKEN"));
    std::fs::write(wt.path().join("hello.txt"), "mirrored\n").unwrap();
    git(wt.path(), &["commit", "-qam", "for the mirror"]);
    git(wt.path(), &["push", "-q", &upstream.path, "main"]);
    let synced = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "m1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.run_ids.len(), 1);
    let run = finished(&client, &synced.run_ids[0]).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await.lines().next(), Some("mirrored"));
    // A token alone is sent as the password.
    client
        .secrets()
        .set(v1::SetSecretRequest { name: "GIT_TOKEN".into(), value: token, ..Default::default() })
        .await
        .unwrap();
    client.repos().sync(v1::SyncRepoRequest { name: "m1".into(), ..Default::default() }).await.unwrap();
}

/// A mirror of an ssh remote (a real sshd) fetches with the private key a
/// secret holds, and checks the host key against the server user's
/// `~/.ssh/known_hosts` as git does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_mirror_fetches_with_the_key_in_a_secret_and_checks_the_host_key() {
    let Some(sshd) = viaduct_tests::sshd::Sshd::start() else { return };
    let home = tempfile::tempdir().unwrap();
    let known_hosts = home.path().join(".ssh/known_hosts");
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    let server = Server::start_env(&[], &[("HOME", home.path())]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let (_upstream, bare, wt) = upstream(ON_MAIN);
    for (name, value) in [("DEPLOY_KEY", sshd.client_key()), ("OTHER_KEY", sshd.other_key())] {
        client.secrets().set(v1::SetSecretRequest { name: name.into(), value, ..Default::default() }).await.unwrap();
    }
    let mirror = |name: &str, credentials: &str| v1::CreateRepoRequest {
        name: name.into(),
        source: Some(v1::create_repo_request::Source::Mirror(v1::MirrorRepo {
            url: sshd.url(&bare),
            credentials: credentials.into(),
            ..Default::default()
        })),
    };
    let err = client.repos().create(mirror("ssh", "DEPLOY_KEY")).await.unwrap_err();
    assert!(err.message().contains("hostkey"), "an unknown host is refused: {}", err.message());
    std::fs::write(&known_hosts, sshd.known_hosts()).unwrap();
    let err = client.repos().create(mirror("ssh", "OTHER_KEY")).await.unwrap_err();
    assert!(
        err.message().contains("authentication failed with secret `OTHER_KEY`'s credentials"),
        "{}\n(sshd log: {})",
        err.message(),
        sshd.log_path().display()
    );
    let repo = client.repos().create(mirror("ssh", "DEPLOY_KEY")).await.unwrap().into_inner();
    assert_eq!(repo.last_error, "");
    std::fs::write(wt.path().join("hello.txt"), "over ssh\n").unwrap();
    git(wt.path(), &["commit", "-qam", "for the ssh mirror"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "main"]);
    let synced = client
        .repos()
        .sync(v1::SyncRepoRequest { name: "ssh".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(synced.run_ids.len(), 1);
    let run = finished(&client, &synced.run_ids[0]).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await.lines().next(), Some("over ssh"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_webhook_runs_the_head_commit_when_on_asks_for_it() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let pipeline = "on:\n  pull_request: { branches: [main] }\njobs:\n  check:\n    steps:\n      - run: cat hello.txt; echo \"$VIADUCT_EVENT into $VIADUCT_BASE_BRANCH\"\n";
    let (_u, bare, wt) = upstream(pipeline);
    create_mirror(&client, "prs", &format!("file://{}", bare.display()), "k").await;
    // A contributor's branch, published by the forge as refs/pull/7/head.
    git(wt.path(), &["checkout", "-q", "-b", "fix"]);
    std::fs::write(wt.path().join("hello.txt"), "the fix\n").unwrap();
    git(wt.path(), &["commit", "-qam", "fix it"]);
    let head = git(wt.path(), &["rev-parse", "HEAD"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "fix:refs/pull/7/head"]);
    let body = format!(
        r#"{{"action":"opened","number":7,"pull_request":{{"head":{{"sha":"{head}","ref":"fix","repo":{{"full_name":"org/prs"}}}},"base":{{"ref":"main","repo":{{"full_name":"org/prs"}}}},"user":{{"login":"alice"}},"author_association":"MEMBER"}}}}"#
    );
    let sig = sign("k", body.as_bytes());
    let h = [("x-github-event", "pull_request"), ("x-github-delivery", "pr-1"), ("x-hub-signature-256", sig.as_str())];
    let (code, reply) = http(server.addr(), "POST", "/webhooks/prs", &h, body.as_bytes());
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&reply));
    let runs = runs_of(&client, "prs").await;
    assert_eq!(runs.len(), 1);
    let run = finished(&client, &runs[0].id).await;
    let src = run.source.clone().unwrap();
    assert_eq!((src.event.as_str(), src.pull_request, src.commit.as_str()), ("pull_request", 7, head.as_str()));
    assert_eq!(step_log(&client, &format!("{}.1.1", run.id)).await, "the fix\npull_request into main\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_and_a_slot_missed_while_down_fires_once_after_a_restart() {
    // 10 virtual minutes per real second, from now.
    let epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let clock = format!("{epoch}:600");
    let mut server = Server::start_with(&["--test-clock", &clock]);
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let repo = create_hosted(&client, "nightly").await;
    let wt = work_tree("on:\n  schedule: [\"*/10 * * * *\"]\njobs:\n  j:\n    steps:\n      - run: echo scheduled\n");
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let slots = |runs: &[v1::Run]| -> Vec<i64> {
        let mut s: Vec<i64> = runs
            .iter()
            .filter_map(|r| {
                r.source.as_ref().filter(|s| s.event == "schedule").and_then(|s| s.scheduled_for).map(|t| t.seconds)
            })
            .collect();
        s.sort();
        s
    };
    let before = eventually("two scheduled runs", || async {
        let s = slots(&runs_of(&client, "nightly").await);
        (s.len() >= 2).then_some(s)
    })
    .await;
    assert_eq!(before[1] - before[0], 600, "consecutive 10-minute slots: {before:?}");
    let run =
        runs_of(&client, "nightly").await.into_iter().find(|r| r.source.as_ref().unwrap().event == "schedule").unwrap();
    assert_eq!(run.source.unwrap().schedule, "*/10 * * * *");
    // Down for ~3 slots. Slots are judged on the virtual clock, so a run
    // created just before the kill cannot be mistaken for a catch-up.
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let virt = |real: f64| epoch + (real - epoch) * 600.0;
    let killed_at = virt(now());
    server.kill9();
    std::thread::sleep(Duration::from_millis(3500));
    server.restart();
    let restarted_at = virt(now());
    let client = server.client().await;
    let missed = |s: &[i64]| -> Vec<i64> {
        s.iter().copied().filter(|t| (*t as f64) > killed_at && (*t as f64) <= restarted_at).collect()
    };
    let after = eventually("the catch-up run", || async {
        let s = slots(&runs_of(&client, "nightly").await);
        (!missed(&s).is_empty()).then_some(s)
    })
    .await;
    let latest_missed = (restarted_at as i64) / 600 * 600;
    assert_eq!(missed(&after), vec![latest_missed], "only the latest missed slot fires, once: {after:?}");
    let mut unique = after.clone();
    unique.dedup();
    assert_eq!(unique, after, "no slot fired twice");
    for r in runs_of(&client, "nightly").await {
        finished(&client, &r.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_triggers_and_a_runner_that_clones_for_itself() {
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &["--clone-sources"]);
    let client = server.client().await;
    let repo = create_hosted(&client, "tool").await;
    let wt = work_tree(ON_MAIN);
    git(wt.path(), &["tag", "v1"]);
    git(wt.path(), &["push", "-q", &repo.path, "main", "v1"]);
    let first = runs_of(&client, "tool").await;
    finished(&client, &first[0].id).await;
    let out = output(server.cli().args(["trigger", "--repo", "tool", "--ref", "v1", "--follow"]));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello from git\ntool  "), "{stdout}");
    assert!(stdout.trim_end().ends_with("manual"), "{stdout}");
    // A manual trigger of something that does not exist says so.
    let out = output(server.cli().args(["trigger", "--repo", "tool", "--ref", "nope"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no branch, tag or commit `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_made_while_the_server_was_down_run_when_it_starts() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "late").await;
    server.kill9();
    let wt = work_tree(ON_MAIN);
    // The hook cannot reach the server; the push itself still succeeds.
    let out = output(Command::new("git").args(["push", &repo.path, "main"]).current_dir(wt.path()));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not tell the server"));
    server.restart();
    let client = server.client().await;
    let mut events =
        client.runs().watch(v1::WatchRequest { from_start: true, ..Default::default() }).await.unwrap().into_inner();
    within("the run of the missed push", async {
        while let Some(ev) = events.next().await {
            if matches!(ev.unwrap().change, Some(v1::run_event::Change::Run(r)) if word(r.status) == "success") {
                return;
            }
        }
    })
    .await;
    assert_eq!(runs_of(&client, "late").await.len(), 1);
    wait_until("nothing else", || Some(()));
}
