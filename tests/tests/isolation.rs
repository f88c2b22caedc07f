//! Jobs cannot reach the runner machine, and a runner token cannot claim
//! other runners' jobs: attacks from a host job (the runner's identity,
//! other jobs' secrets in /proc) and from a stolen runner token (labels,
//! slots and queued jobs it was never given), end to end.

use tokio_stream::StreamExt;
use viaduct_tests::{Client, Runner, Server, finished, output, run_where, step_log, submit, v1, word};

async fn set_secret(client: &Client, name: &str, value: &str) {
    let req = v1::SetSecretRequest { name: name.into(), value: value.into(), ..Default::default() };
    client.secrets().set(req).await.unwrap();
}

/// A host job walks up to the runner's identity file, lists the work
/// directory and reads every process's command line and environment while
/// another job, with a secret on its command line, runs beside it. It runs
/// as its slot's own user and sees nothing of either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_job_cannot_read_the_runner_or_another_job() {
    let server = Server::start();
    let runner = server.runner("linux", 2);
    let client = server.client().await;
    if !viaduct_tests::output(std::process::Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        viaduct_tests::missing_fixture("the runner is not root here: host jobs run as its own user");
        return;
    }
    let secret = "victim-secret-4b1d";
    set_secret(&client, "VICTIM_KEY", secret).await;
    let victim = submit(
        &client,
        "jobs:\n  victim:\n    secrets: [VICTIM_KEY]\n    steps:\n      - run: sh -c 'sleep 30' \"$VICTIM_KEY\"\n",
    )
    .await;
    run_where(&client, &victim, "the victim to run", |r| {
        r.jobs[0].steps.first().is_some_and(|s| word(s.status) == "running")
    })
    .await;
    let attacker = submit(
        &client,
        r#"
jobs:
  attacker:
    steps:
      - run: |
          echo "uid $(id -u)"
          echo "name $(id -un)"
          cat ../../../runner.json 2>&1 | head -c 300; echo
          ls ../.. 2>&1 | head -c 300; echo
          # (processes may end while being read: their errors do not count)
          for p in /proc/[0-9]*; do { tr '\0' ' ' < $p/cmdline; echo; tr '\0' '\n' < $p/environ; } 2>/dev/null || true; done > seen.txt
          echo "processes seen: $(ls -d /proc/[0-9]* 2>/dev/null | wc -l)"
          cat seen.txt
"#,
    )
    .await;
    let run = finished(&client, &attacker).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let log = step_log(&client, &run.jobs[0].steps[0].id).await;
    let uid: u32 = log.lines().next().unwrap().trim_start_matches("uid ").parse().unwrap();
    assert!(uid >= 61000, "the job runs as a slot user: {log}");
    // It has a name (ssh and others look their user up), the machine's
    // own users unchanged.
    assert!(log.lines().nth(1).is_some_and(|l| l.starts_with("name viaduct-slot-")), "{log}");
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!passwd.contains("viaduct-slot-"), "the machine's /etc/passwd is untouched");
    assert!(log.contains("runner.json: Permission denied"), "{log}");
    assert!(
        log.contains("cannot open directory '../..': Permission denied"),
        "the work directory cannot be listed: {log}"
    );
    assert!(!log.contains(secret), "another job's secret was visible: {log}");
    assert!(!log.contains("viaduct-runner") && !log.contains("vdn_"), "the runner was visible: {log}");
    let token = std::fs::read_to_string(runner.work_dir().join("runner.json")).unwrap();
    assert!(token.contains("vdn_"));
    client.runs().cancel(v1::CancelRunRequest { id: victim, ..Default::default() }).await.unwrap();
}

/// A one-slot runner runs every job as its one slot user (an administrator
/// may give it a deploy target), though a job's end is reported before its
/// teardown: the next job waits for the user, and reaches nothing of the
/// job before it — whose directory, full of files, is still being removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_keeps_its_user_and_the_next_job_cannot_reach_the_last_one() {
    let server = Server::start();
    // A base of its own: no other test's runner holds these uids.
    let _runner = Runner::start(&server, "linux", 1, &["--job-user-base", "62700"]);
    let client = server.client().await;
    if !viaduct_tests::output(std::process::Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        viaduct_tests::missing_fixture("the runner is not root here: host jobs run as its own user");
        return;
    }
    let next = r#"
    steps:
      - run: |
          echo "uid $(id -u)"
          prev="../../$(basename "$(dirname "$VIADUCT_WORKSPACE")" | sed 's/\.[0-9]*-a1$//').1-a1"
          test -e "$prev" && echo "the last job's directory is still there"
          cat "$prev/workspace/kept.txt" 2>&1 || true
"#;
    let yaml = format!(
        "jobs:\n  first:\n    steps:\n      - run: echo \"uid $(id -u)\"; echo kept-4e1f > kept.txt; mkdir many && \
         cd many && seq 20000 | xargs touch\n  second:\n    needs: [first]{next}  third:\n    needs: [second]{next}"
    );
    let run = finished(&client, &submit(&client, &yaml).await).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let mut uids = Vec::new();
    for job in &run.jobs {
        let log = step_log(&client, &job.steps[0].id).await;
        assert!(!log.contains("kept-4e1f"), "a job read the last one's file: {log}");
        uids.push(log.lines().next().unwrap_or_default().to_string());
        eprintln!("{}: {log}", job.name);
    }
    assert_eq!(uids, ["uid 62700"; 3], "every job runs as the slot's user");
}

/// A registration token on the command line is refused.
#[test]
fn the_runner_refuses_a_token_on_its_command_line() {
    let out = output(std::process::Command::new(viaduct_tests::bin("viaduct-runner")).args(["--token", "vdr_x"]));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--token is not accepted") && err.contains("--token-file"), "{err}");
}

/// A runner cannot give itself labels, slots or executors it was not
/// registered with; an admin can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_slots_are_pinned_at_registration() {
    let server = Server::with_plugins();
    let mut runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    finished(&client, &id).await;
    // The same runner comes back asking for more.
    runner.set_args(&["--labels", "linux,deploy", "--slots", "8"]);
    runner.restart();
    let deploy = submit(&client, "jobs:\n  d:\n    runs_on: [deploy]\n    steps:\n      - run: echo deployed\n").await;
    // The old connection may still be listed as connected: wait for the
    // new one's refusal before looking at what the server kept.
    viaduct_tests::eventually("the runner to ask for more", || async {
        server.log().contains("runner asks for labels it was not registered with").then_some(())
    })
    .await;
    let me = viaduct_tests::eventually("the runner to reconnect", || async {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.ok()?.into_inner().runners;
        list.into_iter().find(|r| r.connected && r.labels == ["linux"])
    })
    .await;
    assert_eq!(
        (me.labels.clone(), me.slots, me.allowed_labels.clone(), me.max_slots),
        (vec!["linux".to_string()], 1, vec!["linux".to_string()], 1),
        "{me:#?}"
    );
    let run = client.runs().get(v1::GetRunRequest { id: deploy.clone() }).await.unwrap().into_inner();
    assert_eq!(word(run.jobs[0].status), "queued");
    // An admin allows it; the runner already asks for it.
    let out = output(server.cli().args(["runners", "update", &me.id, "--labels", "linux,deploy"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    runner.restart();
    let run = finished(&client, &deploy).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    // Executors are words on the command line and in its JSON; an unknown
    // one is refused before anything is sent.
    let out = output(server.cli().args(["runners", "update", &me.id, "--executors", "host,docker"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`docker` is not an executor (host, container, wasi)"), "{err}");
    let out = output(server.cli().args(["runners", "update", &me.id, "--executors", "host"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["allowed_executors"], serde_json::json!(["host"]), "{json}");
    assert_eq!(json["executors"], serde_json::json!(["host"]), "wasi is no longer offered: {json}");
    // Without wasi, a job with a plugin step finds no runner.
    let plugin = submit(&client, "jobs:\n  p:\n    runs_on: [linux]\n    steps:\n      - uses: detect@1\n").await;
    let run = client.runs().get(v1::GetRunRequest { id: plugin }).await.unwrap().into_inner();
    assert_eq!(word(run.jobs[0].status), "queued", "{run:#?}");
}

/// A stolen runner token lists another runner's queued job in its Hello
/// (as if it had been running it when the server crashed): without the
/// grant that came with the assignment, the server does not give it the
/// job, and the job runs where it belongs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_cannot_claim_a_job_it_was_never_given() {
    let server = Server::start();
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    runs_on: [linux]\n    steps:\n      - run: echo mine\n").await;
    let job = format!("{id}.1");
    // A runner of its own, registered with the server's registration token.
    let anon = Client::connect(&server.url(), None).await.unwrap();
    let reg = anon
        .agent()
        .register(v1::RegisterRequest {
            registration_token: server.runner_token(),
            name: "thief".into(),
            // Not a label of the job: it cannot get the job by dispatch.
            labels: vec!["elsewhere".into()],
            slots: 1,
            executors: vec![v1::Executor::Host as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let thief = Client::connect(&server.url(), Some(reg.runner_token)).await.unwrap();
    let hello = v1::RunnerMessage {
        msg: Some(v1::runner_message::Msg::Hello(v1::Hello {
            labels: vec!["linux".into()],
            slots: 1,
            executors: vec![v1::Executor::Host as i32],
            active_jobs: vec![v1::JobRef { job_id: job.clone(), attempt: 1, grant: "00".repeat(32) }],
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(hello).unwrap();
    let mut inbound =
        thief.agent().connect(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    let welcome = match inbound.next().await.unwrap().unwrap().msg {
        Some(v1::server_message::Msg::Welcome(w)) => w,
        other => panic!("expected a Welcome, got {other:?}"),
    };
    assert_eq!(welcome.resume.len(), 1);
    assert!(!welcome.resume[0].keep, "the server let a runner claim a job it never gave it");
    assert!(server.log().contains("claims a queued job it was never given: refused"));
    drop(tx);
    drop(inbound);
    // The real runner gets it.
    let _runner = server.runner("linux", 1);
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_ne!(run.jobs[0].runner_id, reg.runner_id);
}

/// A plugin's programs run where the job's steps run, with a fixed
/// environment: a container job's inside its container (never on the
/// runner), a host job's as its slot user; a variable that changes what a
/// program loads (`LD_PRELOAD`) is refused, and `nix` settings that load
/// plugins are not passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_programs_run_where_the_job_runs_with_a_fixed_environment() {
    let server = Server::with_plugins();
    server.publish_test_plugin("probe");
    let client = server.client().await;
    let probe = |extra: &str| {
        format!(
            "      - uses: probe\n        id: p\n        with: {{ action: exec, script: 'echo \"uid=$(id -u) preload=$LD_PRELOAD\"; test -e /.viaduct/launcher.sh && echo in-container; exit 0'{extra} }}\n"
        )
    };
    // The pipeline sets LD_PRELOAD for its steps: programs never get it.
    let host = format!("jobs:\n  h:\n    env: {{ LD_PRELOAD: ./evil.so }}\n    steps:\n{}", probe(""));
    let _runner = server.runner("linux", 1);
    let run = finished(&client, &submit(&client, &host).await).await;
    let out = &run.jobs[0].steps[0].outputs;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let stdout = out["stdout"].clone();
    assert!(stdout.contains("preload=\n") || stdout.ends_with("preload="), "{stdout}");
    if output(std::process::Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        assert!(!stdout.contains("uid=0"), "a host job's program runs as its slot user: {stdout}");
    }
    // A plugin that passes LD_PRELOAD on explicitly is refused.
    let forward =
        format!("jobs:\n  h:\n    env: {{ LD_PRELOAD: ./evil.so }}\n    steps:\n{}", probe(", env: [LD_PRELOAD]"));
    let run = finished(&client, &submit(&client, &forward).await).await;
    let step = &run.jobs[0].steps[0];
    assert_eq!(word(step.status), "failure");
    assert!(
        step.message.contains("`LD_PRELOAD` cannot be passed to `sh`: it changes what the program loads"),
        "{}",
        step.message
    );
    // nix-check passes NIX_CONFIG's safe settings only.
    let nix =
        "jobs:\n  n:\n    env: { NIX_CONFIG: \"plugin-files = ./evil.so\" }\n    steps:\n      - uses: nix-check@1\n";
    let run = finished(&client, &submit(&client, nix).await).await;
    assert!(
        run.jobs[0].steps[0].message.contains("NIX_CONFIG: the setting `plugin-files` is not passed to nix"),
        "{run:#?}"
    );

    // A container job's program runs in its container.
    let Some(socket) = viaduct_tests::container_socket() else { return };
    let _containers = Runner::start(&server, "containers", 1, &["--container-socket", &socket, "--no-host-jobs"]);
    let image = viaduct_tests::test_image();
    let yaml = format!(
        "jobs:\n  c:\n    runs_on: [containers]\n    image: {image}\n    env: {{ LD_PRELOAD: ./evil.so }}\n    steps:\n{}      - uses: nix-check@1\n",
        probe("")
    );
    let run = finished(&client, &submit(&client, &yaml).await).await;
    let steps = &run.jobs[0].steps;
    let stdout = &steps[0].outputs["stdout"];
    assert!(stdout.contains("in-container") && stdout.contains("preload="), "{stdout}");
    assert!(!stdout.contains("evil"), "{stdout}");
    // The busybox image has no nix: nix-check says so (it did not run the
    // runner's nix).
    assert_eq!(word(steps[1].status), "failure");
    let log = step_log(&client, &steps[1].id).await;
    assert!(log.contains("`nix` is not installed in the job's image"), "{log}");
}

/// A host job tries to put a link to `/` in place of its workspace (for
/// the runner, root, to follow when it restores a cache or hands files
/// over): its job directory is root's, so neither the move nor the link
/// is allowed, and the step after a plugin step (which hands the
/// workspace over) leaves `/` as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_job_cannot_swap_its_workspace_for_a_link() {
    if !viaduct_tests::output(std::process::Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        viaduct_tests::missing_fixture("the runner is not root here: host jobs run as its own user");
        return;
    }
    let server = Server::with_plugins();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
jobs:
  swap:
    steps:
      - run: |
          mv ../workspace ../moved 2>&1 || true
          ln -s / ../link 2>&1 || true
          ls -ld .. | cut -c1-10
      - uses: detect@1
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    let log = step_log(&client, &run.jobs[0].steps[0].id).await;
    assert_eq!(log.matches("Permission denied").count(), 2, "{log}");
    assert!(log.contains("drwx--x--x"), "the job directory is 0711: {log}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata("/etc").unwrap().uid(), 0, "/ was not handed to the job's user");
    assert_eq!(word(run.status), "success", "{run:#?}");
}
