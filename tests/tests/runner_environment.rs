//! A runner's environment and toolchains, end to end: the variables it
//! gives jobs (`--env`, `--inherit-env`; a clean environment without), the
//! toolchains it finds and advertises (probed again on SIGHUP), jobs routed
//! by them, and why a job waits or did not run — through the real server,
//! runner and CLI.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
};

use viaduct_tests::{Runner, Server, finished, output, step_log, submit, v1, wait_until, within, word};

/// A directory holding the toolchain that runs these tests (`cargo`,
/// `rustc`): not on the runner's default `PATH`.
fn rust_bin_dir() -> PathBuf {
    let cargo = PathBuf::from(std::env::var("CARGO").expect("tests are run by cargo"));
    cargo.parent().expect("cargo's directory").to_path_buf()
}

/// Writes a fake program `name` into `dir` that prints `version` (a
/// toolchain appearing on the machine).
fn fake_program(dir: &Path, name: &str, version: &str) {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create program");
    writeln!(f, "#!/bin/sh\necho '{version}'").expect("write program");
    drop(f);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The runner labelled `label` once connected and its toolchains probed
/// (every machine here has some: podman at least).
async fn runner_labelled(client: &viaduct_sdk::Client, label: &str) -> v1::Runner {
    within(&format!("the runner labelled {label} to connect and say its toolchains"), async {
        loop {
            let list = client.runners().list(v1::ListRunnersRequest {}).await.expect("list").into_inner().runners;
            let found = list.into_iter().find(|r| r.connected && r.labels.iter().any(|l| l == label));
            if let Some(r) = found.filter(|r| !r.toolchains.is_empty()) {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toolchain_is_found_only_on_the_path_the_runner_gives_and_jobs_are_routed_by_it() {
    let server = Server::start();
    let client = server.client().await;
    let tools = tempfile::tempdir().expect("temp dir");
    let path = format!("{}:{}:/usr/local/bin:/usr/bin:/bin", rust_bin_dir().display(), tools.path().display());

    // A runner with a clean environment: `cargo` is not found, and the step
    // says where it looked and what to do.
    let _plain = Runner::start_env(&server, "plain", 1, &["--shared-job-user"], &[("PATH", &path)]);
    let plain = runner_labelled(&client, "plain").await;
    assert!(!plain.toolchains.iter().any(|t| t.starts_with("rust")), "{:?}", plain.toolchains);
    let id = submit(&client, "jobs:\n  j:\n    runs_on: [plain]\n    steps:\n      - run: cargo --version\n").await;
    let run = finished(&client, &id).await;
    let step = &run.jobs[0].steps[0];
    assert_eq!(word(step.status), "failure");
    assert!(step.message.contains("exited with code 127 (command not found)"), "{}", step.message);
    assert!(step.message.contains("--inherit-env PATH"), "{}", step.message);

    // The same machine's PATH given to jobs: the toolchain is found,
    // advertised with its version, and `runs_on: [rust]` goes there.
    let tooled = Runner::start_env(
        &server,
        "tooled",
        1,
        &[
            "--shared-job-user",
            "--inherit-env",
            "PATH,NOT_SET_ANYWHERE",
            "--env",
            "GREETING=runner",
            "--env",
            "ONLY=runner",
        ],
        &[("PATH", &path)],
    );
    let r = runner_labelled(&client, "tooled").await;
    for t in ["rust", "cargo"] {
        assert!(r.toolchains.iter().any(|l| l == t), "{t} in {:?}", r.toolchains);
        assert!(r.toolchains.iter().any(|l| l.starts_with(&format!("{t}:1."))), "{t}:1.x in {:?}", r.toolchains);
    }
    let text = output(server.cli().args(["runners", "get", &r.id]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("toolchains") && text.contains("rust:1."), "{text}");
    let rust_minor = r.toolchains.iter().find(|l| l.starts_with("rust:") && l.matches('.').count() == 1).unwrap();
    let yaml = format!(
        "env: {{ GREETING: pipeline }}\njobs:\n  build:\n    runs_on: [{rust_minor}, cargo]\n    steps:\n      - run: cargo --version && echo \"greeting=$GREETING only=$ONLY home=${{HOME#/}}\" && env | grep -c '^VIADUCT_RUNNER' || true\n"
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:?}");
    assert_eq!(run.jobs[0].runner_id, r.id, "routed by the toolchain");
    let log = step_log(&client, &run.jobs[0].steps[0].id).await;
    assert!(log.contains("cargo 1."), "{log}");
    assert!(log.contains("greeting=pipeline only=runner"), "the pipeline's env over the runner's: {log}");
    assert!(log.lines().any(|l| l.trim() == "0"), "no runner variable reaches the job: {log}");

    // A job asking for a toolchain nobody has waits, and says why — in the
    // API and in `submit --follow` — until the runner finds it (SIGHUP).
    let file = tools.path().join("go.yml");
    std::fs::write(&file, "jobs:\n  g:\n    runs_on: [go:1.22]\n    steps:\n      - run: go version\n").unwrap();
    let err = tools.path().join("follow.err");
    let mut follow = server
        .cli()
        .args(["submit", "--follow"])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("viaduct submit --follow");
    let said = wait_until("submit --follow to say why the job waits", || {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        text.contains("queued:").then_some(text)
    });
    assert!(said.contains("no connected runner can take this host job with runs_on [go:1.22]"), "{said}");
    assert!(said.contains("closest: 2 runners lack `go:1.22`"), "{said}");
    assert!(!said.contains(&r.id), "runners are not named to readers of a run: {said}");
    let runs = client.runs().list(v1::ListRunsRequest::default()).await.unwrap().into_inner().runs;
    let go_run = client.runs().get(v1::GetRunRequest { id: runs[0].id.clone() }).await.unwrap().into_inner();
    assert!(go_run.jobs[0].waiting.contains("lack `go:1.22`"), "{:?}", go_run.jobs[0]);

    fake_program(tools.path(), "go", "go version go1.22.1 linux/amd64");
    tooled.signal(nix::sys::signal::Signal::SIGHUP);
    let status = wait_until("submit --follow to end", || follow.try_wait().ok().flatten());
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "{text}");
    let r = client.runners().get(v1::GetRunnerRequest { id: r.id.clone() }).await.unwrap().into_inner();
    assert!(r.toolchains.iter().any(|l| l == "go:1.22.1"), "{:?}", r.toolchains);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_did_not_run_and_cancelled_jobs_say_why() {
    let server = Server::start();
    let client = server.client().await;
    let _runner = server.runner("linux", 1);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("p.yml");
    std::fs::write(
        &file,
        "jobs:\n  a:\n    steps:\n      - name: breaks\n        run: exit 3\n      - name: after\n        run: echo never\n      - name: cleanup\n        if: success()\n        run: echo never\n  b:\n    needs: [a]\n    steps:\n      - run: echo never\n",
    )
    .unwrap();
    let out = output(server.cli().args(["submit", "--follow"]).arg(&file));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a › after: skipped — because step 1 (`breaks`) exited with code 3"), "{err}");
    assert!(err.contains("a › cleanup: skipped — `if: success()` was false"), "{err}");
    assert!(err.contains("── a: failure: step 1 (`breaks`) exited with code 3"), "{err}");
    assert!(err.contains("── b: skipped: needed job(s) did not succeed: a"), "{err}");
    let run = output(server.cli().args(["runs", "get"]).arg(err.split_whitespace().nth(1).unwrap_or("1")));
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("not run: needed job(s) did not succeed: a"), "{text}");

    // Cancelled by whom.
    let id = submit(&client, "jobs:\n  w:\n    runs_on: [nowhere]\n    steps:\n      - run: true\n").await;
    let out = output(server.cli().args(["cancel", &id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "cancelled");
    assert!(run.jobs[0].message.starts_with("cancelled by "), "{}", run.jobs[0].message);
    assert!(run.jobs[0].steps[0].message.starts_with("not run: cancelled by "), "{}", run.jobs[0].steps[0].message);
}
