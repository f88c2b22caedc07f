//! The `ssh-deploy` plugin end to end: a deployment to an environment whose
//! variables name two real `sshd`s on loopback (each seeing its own
//! directory at the same path) and pin their host keys, whose secret is the
//! key they accept; the release switched on both, and a failing health check
//! on the second host rolling both back.

use std::path::{Path, PathBuf};

use viaduct_tests::{
    Client, Server, eventually, finished,
    forge::{create_hosted, git, runs_of, work_tree},
    output, run_where,
    sshd::Sshd,
    v1, word,
};

fn ok(server: &Server, args: &[&str]) {
    let out = output(server.cli().args(args));
    assert!(out.status.success(), "viaduct {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Where each host sees its own directory: one path for all of them.
fn target_path() -> PathBuf {
    let p = std::env::temp_dir().join(format!("viaduct-ssh-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn pipeline(path: &Path) -> String {
    format!(
        r#"on:
  push: {{ branches: [main] }}
jobs:
  build:
    artifacts: [site/]
    steps:
      - run: mkdir -p site && cp hello.txt site/index.txt
  ship:
    needs: [build]
    artifacts_from: [build]
    environment: production
    secrets: [SSH_PRIVATE_KEY]
    steps:
      - uses: ssh-deploy@1
        id: deploy
        allow: {{ secrets: [SSH_PRIVATE_KEY] }}
        with:
          source: site
          hosts: ${{{{ env.DEPLOY_HOSTS }}}}
          path: {path}
          restart: echo "$VIADUCT_RELEASE" > ../../restarted
          health: test ! -e ../../fail-health
          health_retries: 1
          health_interval: 100ms
          max_unavailable: 1
"#,
        path = path.display()
    )
}

/// The release `current` points at on a host, and its page.
fn current(host: &Sshd) -> (String, String) {
    let link = std::fs::read_link(host.backing().join("current")).unwrap_or_default();
    let page = std::fs::read_to_string(host.backing().join("current/index.txt")).unwrap_or_default();
    (link.display().to_string(), page)
}

async fn approve_and_finish(client: &Client, run: &v1::Run) -> v1::Run {
    let waiting = run_where(client, &run.id, "the deployment to wait for approval", |r| {
        r.jobs.iter().any(|j| j.key == "ship" && j.deployment != 0)
    })
    .await;
    let ship = waiting.jobs.iter().find(|j| j.key == "ship").unwrap();
    client
        .deployments()
        .approve(v1::ReviewDeploymentRequest { job: ship.id.clone(), ..Default::default() })
        .await
        .unwrap();
    finished(client, &run.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_goes_to_two_hosts_and_a_failed_health_check_rolls_both_back() {
    let at = target_path();
    let (Some(a), Some(b)) = (Sshd::start_isolated(&at), Sshd::start_isolated(&at)) else { return };
    b.authorize_key_of(&a);
    let server = Server::with_plugins();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = create_hosted(&client, "site").await;
    let hosts = format!("{},{}", a.login(), b.login());
    let known = format!("{}{}", a.known_hosts(), b.known_hosts());
    ok(
        &server,
        &[
            "environments",
            "put",
            "site",
            "production",
            "--branch",
            "main",
            "--approval",
            "maintain",
            "--var",
            &format!("DEPLOY_HOSTS={hosts}"),
            "--var",
            &format!("SSH_KNOWN_HOSTS={known}"),
        ],
    );
    let key = a.client_key();
    let set = server
        .cli()
        .args(["secrets", "set", "SSH_PRIVATE_KEY", "--repo", "site", "--environment", "production"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        set.stdin.as_ref().unwrap().write_all(key.as_bytes()).unwrap();
    }
    let done = set.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    let wt = work_tree(&pipeline(&at));
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = eventually("the run", || async { runs_of(&client, "site").await.first().cloned() }).await;
    let run = approve_and_finish(&client, &run).await;
    let ship = run.jobs.iter().find(|j| j.key == "ship").unwrap();
    let step = &ship.steps[0];
    let log = viaduct_tests::step_log(&client, &step.id).await;
    assert_eq!(word(run.status), "success", "{}\n{log}", ship.message);
    let release = step.outputs["release"].clone();
    assert_eq!(step.outputs["hosts"], hosts);
    assert!(step.outputs["first_switched_ms"].parse::<u64>().unwrap() > 0);
    for host in [&a, &b] {
        assert_eq!(current(host), (format!("releases/{release}"), "hello from git\n".to_string()));
        let restarted = std::fs::read_to_string(host.backing().join("restarted")).unwrap();
        assert_eq!(restarted.trim(), release);
    }
    // The key never reached the log, the outputs or the summary.
    let key_line = key.lines().nth(1).unwrap();
    assert!(!log.contains(key_line) && !step.summary.contains(key_line), "{log}");
    assert!(step.summary.contains(&a.login()) && step.summary.contains(&b.login()), "{}", step.summary);
    let d = client.deployments().get(v1::GetDeploymentRequest { id: ship.deployment }).await.unwrap().into_inner();
    assert_eq!(d.outputs.get("1.release"), Some(&release));

    // v2 fails its health check on the second host: both go back to v1.
    std::fs::write(b.backing().join("fail-health"), "").unwrap();
    std::fs::write(wt.path().join("hello.txt"), "v2\n").unwrap();
    git(wt.path(), &["commit", "-qam", "v2"]);
    let before = runs_of(&client, "site").await.len();
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let run = eventually("the second run", || async {
        let runs = runs_of(&client, "site").await;
        (runs.len() > before).then(|| runs[0].clone())
    })
    .await;
    let run = approve_and_finish(&client, &run).await;
    assert_eq!(word(run.status), "failure");
    let ship = run.jobs.iter().find(|j| j.key == "ship").unwrap();
    let message = &ship.steps[0].message;
    assert!(message.contains(&b.login()), "{message}");
    for host in [&a, &b] {
        assert_eq!(current(host), (format!("releases/{release}"), "hello from git\n".to_string()), "rolled back");
    }
    let targets = &ship.steps[0].outputs["targets"];
    assert!(targets.contains("rolled_back"), "{targets}");
    let d = client.deployments().get(v1::GetDeploymentRequest { id: ship.deployment }).await.unwrap().into_inner();
    assert_eq!(d.state, v1::DeploymentState::Failure as i32);
    let _ = std::fs::remove_dir(&at);
}
