//! Workspace snapshots end to end: a failed job resumed from its failed
//! step on another runner (host and container jobs), across a server
//! kill -9; what is refused and why; a debug shell driven by a script.

use std::io::Write;
use std::process::Stdio;

use viaduct_tests::{Runner, Server, container_socket, finished, output, step_log, submit, test_image, v1, word};

/// Three steps: the first two build a tree (modes, links, an empty
/// directory, an old mtime, binary data, an output); the third prints it
/// and passes only where `PASS=yes` (the second runner).
const BUILD: &str = r#"
snapshots: true
jobs:
  build:
    runs_on: [linux]
    steps:
      - id: one
        run: |
          mkdir -p d/e/empty && echo one > d/a.txt && chmod 640 d/a.txt
          head -c 3000000 /dev/urandom > d/rand.bin
          ln -s d/a.txt link && ln -s /nowhere dangling
          touch -d '2021-02-03 04:05:06' d/a.txt
          : > empty.txt
          echo "n=first" >> "$VIADUCT_OUTPUT"
      - run: |
          echo two > b.txt && chmod 755 b.txt && rm d/rand.bin && head -c 100000 /dev/urandom > d/r2.bin
      - run: |
          echo "tree:"
          find . -printf '%p %y %m %s %l\n' | LC_ALL=C sort
          find . -type f -exec sha256sum {} + | LC_ALL=C sort -k2
          stat -c '%n %Y' d/a.txt
          echo "output=${{ steps.one.outputs.n }}"
          echo "end."
          test "$PASS" = yes
"#;

/// Waits until a runner other than `id` is connected; returns its id.
async fn connected_other_than(client: &viaduct_tests::Client, id: &str) -> String {
    viaduct_tests::eventually("another runner to connect", || async {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.ok()?.into_inner().runners;
        list.into_iter().find(|r| r.connected && r.id != id).map(|r| r.id)
    })
    .await
}

/// `viaduct debug ARGS` driven by a script: `input` on its standard
/// input, its output once it exits.
fn debug_cli(server: &Server, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut shell = server
        .cli()
        .arg("debug")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell.stdin.take().unwrap().write_all(input).unwrap();
    shell.wait_with_output().unwrap()
}

/// The part of step 3's log that describes the tree.
fn tree_of(log: &str) -> String {
    let start = log.find("tree:").unwrap_or_else(|| panic!("no tree in {log}"));
    let end = log.find("end.").unwrap_or_else(|| panic!("no end in {log}"));
    log[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_resumes_on_another_runner_with_exactly_the_files_of_its_steps() {
    let mut server = Server::start();
    let mut first = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let id = submit(&client, BUILD).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure", "{run:#?}");
    let steps = &run.jobs[0].steps;
    assert_eq!(steps.iter().map(|s| s.snapshot).collect::<Vec<_>>(), [true, true, false], "{steps:#?}");
    let before = tree_of(&step_log(&client, &steps[2].id).await);
    assert!(before.contains("output=first") || step_log(&client, &steps[2].id).await.contains("output=first"));

    // The server dies hard, and the first runner is gone: the snapshots
    // are durable, and the resumed attempt goes to another runner.
    first.kill9();
    server.restart();
    let second = Runner::start(&server, "linux", 1, &["--env", "PASS=yes"]);
    let out = output(server.cli().args(["retry", &id, "--from-failed"]));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("job build resumes at step 3 (steps 1–2 restored from attempt 1)"), "{said}");
    let client = server.client().await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let job = &run.jobs[0];
    assert_eq!(job.attempt, 2);
    let first_id = job.previous_attempts[0].runner_id.clone();
    assert!(!job.runner_id.is_empty() && job.runner_id != first_id, "another runner ran it: {job:#?}");
    let steps = &job.steps;
    for s in &steps[..2] {
        assert_eq!((word(s.status), s.restored_from, s.log_size), ("skipped", 1, 0), "{s:#?}");
    }
    assert_eq!(steps[0].outputs.get("n").map(String::as_str), Some("first"));
    let log = step_log(&client, &steps[2].id).await;
    assert!(log.contains("output=first"), "the earlier step's output reached step 3: {log}");
    assert_eq!(tree_of(&log), before, "the same files, modes, links, sizes, contents and times");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_is_refused_with_the_reason_when_it_cannot_work() {
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    // No snapshots: the error says how to get them.
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: 'true'\n      - run: exit 1\n").await;
    finished(&client, &id).await;
    let out = output(server.cli().args(["retry", &id, "--from-failed"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("keeps no snapshots") && err.contains("snapshots: true"), "{err}");
    // A step that does not exist, a job that does not exist.
    let out = output(server.cli().args(["retry", &id, "--from", "9"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("there is no step 9"), "{err}");
    let out = output(server.cli().args(["retry", &id, "--from", "2", "--job", "nope"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no job `nope`"), "{err}");
    // `--job` alone means nothing.
    let out = output(server.cli().args(["retry", &id, "--job", "j"]));
    assert_eq!(out.status.code(), Some(2));

    // A step whose output holds a secret leaves no snapshot; the resume
    // starts after the step before it, so that step runs again.
    client
        .secrets()
        .set(v1::SetSecretRequest { name: "TOKEN".into(), value: "s3cr3t-v4lue".into(), ..Default::default() })
        .await
        .unwrap();
    let yaml = r#"
snapshots: true
jobs:
  j:
    secrets: [TOKEN]
    steps:
      - run: echo one > one.txt
      - run: echo "$TOKEN" > leaked.txt
      - run: test -f again
"#;
    let id = submit(&client, yaml).await;
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    assert_eq!(steps.iter().map(|s| s.snapshot).collect::<Vec<_>>(), [true, false, false], "{steps:#?}");
    let log = step_log(&client, &steps[1].id).await;
    assert!(log.contains("no snapshot after this step") && log.contains("leaked.txt"), "{log}");
    assert!(!log.contains("s3cr3t-v4lue"));
    let out = output(server.cli().args(["retry", &id, "--from-failed"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    assert_eq!(
        steps.iter().map(|s| (word(s.status), s.restored_from)).collect::<Vec<_>>(),
        [("skipped", 1), ("success", 0), ("failure", 0)],
        "{steps:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_job_resumes_in_its_image() {
    let Some(socket) = container_socket() else { return };
    let server = Server::start();
    let first = Runner::start(&server, "linux", 1, &["--container-socket", &socket, "--no-host-jobs"]);
    let client = server.client().await;
    let yaml = format!(
        r#"
jobs:
  c:
    image: {image}
    snapshots: true
    steps:
      - run: mkdir -p out && echo built > out/x && ln -s out/x y && chmod 600 out/x
      - run: cat y && ls -l out/x | cut -c1-10 && test -f /workspace/ok
"#,
        image = test_image()
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");
    let first_id = run.jobs[0].runner_id.clone();
    drop(first);
    let _second = Runner::start(&server, "linux", 1, &["--container-socket", &socket, "--no-host-jobs"]);
    connected_other_than(&client, &first_id).await;
    // The retried step finds what it needs: a file made by a step that
    // cannot run again — through a debug shell first.
    let out = debug_cli(&server, &[&format!("{id}.1")], b"cat y; touch ok; id -u; exit 4\n");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("built"), "{said}");
    // The shell's workspace was its own: the job's snapshot is unchanged,
    // so the resumed step still fails there, in the image.
    let out = output(server.cli().args(["retry", &id, "--from-failed"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    let log = step_log(&client, &run.jobs[0].steps[1].id).await;
    assert_eq!(log, "built\n-rw-------\n", "{run:#?}");
    assert_eq!(word(run.status), "failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_shell_runs_a_script_in_the_restored_workspace_and_is_audited() {
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let yaml = "snapshots: true\njobs:\n  j:\n    env: { SHOWN: visible }\n    steps:\n      - run: echo kept > kept.txt\n      - run: echo later > later.txt; exit 1\n";
    let id = submit(&client, yaml).await;
    finished(&client, &id).await;
    let job = format!("{id}.1");
    let out = debug_cli(
        &server,
        &[&job, "--step", "1"],
        b"cat kept.txt; ls; echo \"env=$SHOWN term=$TERM\"; stty size; exit 7\n",
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{said}{err}");
    assert!(said.contains("kept\n") || said.contains("kept\r\n"), "{said}");
    assert!(!said.contains("later.txt"), "the snapshot after step 1: {said}");
    assert!(said.contains("env=visible term=dumb"), "{said}");
    assert!(said.contains("24 80"), "the terminal's size: {said}");
    assert!(err.contains("after step 1 (attempt 1)"), "{err}");
    // The audit log says who opened which, and how it ended.
    let audit = output(server.cli().args(["audit", "--limit", "20"]));
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("debug shell opened") && audit.contains("debug shell ended"), "{audit}");
    assert!(audit.contains("exit code 7"), "{audit}");
    // A time limit ends it.
    let out = debug_cli(&server, &[&job, "--timeout", "2s"], b"sleep 300\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("time limit reached"), "{err}");
    // No snapshot, no shell.
    let plain = submit(&client, "jobs:\n  j:\n    steps:\n      - run: exit 1\n").await;
    finished(&client, &plain).await;
    let out = output(server.cli().args(["debug", &format!("{plain}.1")]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no snapshot"), "{err}");
}

/// A dependency step with `reuse:` and a build step after it.
const REUSE: &str = r#"on:
  push: { branches: [main, feature] }
jobs:
  build:
    steps:
      - id: deps
        run: |
          echo "installing $(cat deps.lock)"
          mkdir -p vendor && cat deps.lock > vendor/installed && date +%s%N > vendor/stamp
          echo "stamp=$(cat vendor/stamp)" >> "$VIADUCT_OUTPUT"
        reuse: { key_files: [deps.lock] }
      - run: |
          cat hello.txt vendor/installed vendor/stamp
          test ! -e old.txt && echo "no old file"
          echo "out=${{ steps.deps.outputs.stamp }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_commit_starts_after_a_step_whose_key_files_did_not_change() {
    use viaduct_tests::forge::{create_hosted, git, runs_of, work_tree};
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let repo = create_hosted(&client, "app").await;
    let wt = work_tree(REUSE);
    std::fs::write(wt.path().join("deps.lock"), "lib 1.0\n").unwrap();
    std::fs::write(wt.path().join("old.txt"), "old\n").unwrap();
    git(wt.path(), &["add", "-A"]);
    git(wt.path(), &["commit", "-qm", "deps"]);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let first = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(word(first.status), "success", "{first:#?}");
    let steps = &first.jobs[0].steps;
    assert!(step_log(&client, &steps[0].id).await.contains("installing lib 1.0"));
    assert!(steps[0].snapshot, "the step with reuse: keeps a snapshot: {steps:#?}");
    let stamp = steps[0].outputs["stamp"].clone();

    // A new commit that changes a source file and deletes another, not
    // the key file: step 1 is reused, step 2 sees the new sources.
    std::fs::write(wt.path().join("hello.txt"), "changed\n").unwrap();
    git(wt.path(), &["rm", "-q", "old.txt"]);
    git(wt.path(), &["commit", "-qam", "change the code"]);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let second = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(word(second.status), "success", "{second:#?}");
    let steps = &second.jobs[0].steps;
    assert_eq!(word(steps[0].status), "skipped", "{steps:#?}");
    assert!(steps[0].message.contains(&format!("run {}'s snapshot", first.id)), "{}", steps[0].message);
    let log = step_log(&client, &steps[1].id).await;
    assert_eq!(log, format!("changed\nlib 1.0\n{stamp}\nno old file\nout={stamp}\n"), "{log}");

    // Another branch never starts from main's snapshot (it may have other
    // secrets): the same commit pushed as `feature` runs step 1.
    git(wt.path(), &["push", "-q", &repo.path, "main:feature"]);
    let branch = finished(&client, &runs_of(&client, "app").await[0].id).await;
    assert_eq!(branch.source.as_ref().map(|s| s.branch.as_str()), Some("feature"));
    assert_eq!(word(branch.jobs[0].steps[0].status), "success", "{branch:#?}");

    // The key file changes: step 1 runs again.
    std::fs::write(wt.path().join("deps.lock"), "lib 2.0\n").unwrap();
    git(wt.path(), &["commit", "-qam", "bump"]);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let third = finished(&client, &runs_of(&client, "app").await[0].id).await;
    let steps = &third.jobs[0].steps;
    assert_eq!(word(steps[0].status), "success", "{steps:#?}");
    assert!(step_log(&client, &steps[0].id).await.contains("installing lib 2.0"));
    assert_ne!(steps[0].outputs["stamp"], stamp);
    assert!(step_log(&client, &steps[1].id).await.starts_with("changed\nlib 2.0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_on_failure_holds_the_live_workspace_for_a_shell_until_its_time_passes() {
    let server = Server::start_with(&["--hold-failed-workspace", "10s"]);
    let runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fails.yml");
    // No snapshots: what the failing step left is only in its workspace.
    std::fs::write(
        &file,
        "jobs:\n  j:\n    steps:\n      - run: |\n          echo left-by-the-failure > failed.txt\n          exit 3\n",
    )
    .unwrap();
    let out = output(server.cli().arg("submit").arg(&file).arg("--keep-on-failure"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.parse::<u64>().ok())
        .unwrap()
        .to_string();
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");
    let held = runner.work_dir().join("jobs").join(format!("{id}.1-a1"));
    assert!(held.join("workspace/failed.txt").exists(), "the failed job's directory is held");
    // The live workspace, twice (a shell gives it back).
    for _ in 0..2 {
        let out = debug_cli(&server, &[&format!("{id}.1"), "--live"], b"cat failed.txt; exit 6\n");
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(6), "{said}{}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains("left-by-the-failure"), "{said}");
    }
    // Its time passes: the environment is torn down.
    viaduct_tests::eventually("the held environment to go", || async { (!held.exists()).then_some(()) }).await;
    let out = output(server.cli().args(["debug", &format!("{id}.1"), "--live"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("it is gone"), "{err}");
    // A run without keep_on_failure keeps nothing live.
    let plain = submit(&client, "jobs:\n  j:\n    steps:\n      - run: exit 1\n").await;
    finished(&client, &plain).await;
    let out = output(server.cli().args(["debug", &format!("{plain}.1"), "--live"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("keeps no failed workspace"), "{err}");
}
