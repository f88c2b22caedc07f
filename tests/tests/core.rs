//! The core slice end to end: real server and runner processes on
//! loopback, real shell steps, the real CLI.

use tokio_stream::StreamExt;
use viaduct_tests::{
    Server, eventually, finished, output, process_gone, run_where, step_log, submit, v1, wait_until, within, word,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_step_job_succeeds_with_logs_in_order() {
    let server = Server::start();
    let runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
name: ordered
jobs:
  build:
    steps:
      - name: one
        run: |
          echo first
          echo second >&2
          echo third
      - name: two
        run: printf 'a\nb\n'
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:?}");
    let job = &run.jobs[0];
    assert_eq!((word(job.status), job.steps.len()), ("success", 2));
    for s in &job.steps {
        assert_eq!((word(s.status), s.exit_code), ("success", Some(0)));
    }
    assert_eq!(step_log(&client, &job.steps[0].id).await, "first\nsecond\nthird\n");
    assert_eq!(step_log(&client, &job.steps[1].id).await, "a\nb\n");
    assert_eq!(job.steps[0].log_size, 19);
    // Their stderr is a file here, as under systemd: plain text, no colour
    // codes, each line greppable as written (`run=7`, not `run\e[2m=\e[0m7`).
    for (who, log) in [("server", server.log()), ("runner", runner.log())] {
        assert!(!log.contains('\u{1b}'), "the {who}'s log has terminal escapes:\n{log}");
    }
    assert!(runner.log().contains(&format!("run={id} ")), "{}", runner.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_propagates_its_exit_code_and_skips_the_rest() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  j:\n    steps:\n      - run: echo before; exit 7\n      - run: echo never\n      - run: echo cleanup\n        if: always()\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");
    let steps = &run.jobs[0].steps;
    assert_eq!((word(steps[0].status), steps[0].exit_code), ("failure", Some(7)));
    assert_eq!(word(steps[1].status), "skipped");
    assert_eq!(word(steps[2].status), "success");
    assert!(run.jobs[0].message.contains("exited with code 7"), "{}", run.jobs[0].message);
    assert_eq!(step_log(&client, &steps[0].id).await, "before\n");
    assert_eq!(step_log(&client, &steps[1].id).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_on_error_lets_the_job_go_on_and_succeed() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  j:\n    steps:\n      - run: exit 3\n        continue_on_error: true\n      - run: echo after\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let steps = &run.jobs[0].steps;
    assert_eq!((word(steps[0].status), steps[0].exit_code), ("failure", Some(3)));
    assert_eq!(word(steps[1].status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_kills_the_whole_process_group() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let pidfile = tmp.path().join("pid");
    let yaml = format!(
        "jobs:\n  j:\n    steps:\n      - run: sleep 300 & echo $! > {}; sleep 300\n        timeout: 1s\n      - run: echo never\n",
        pidfile.display()
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    assert_eq!(word(steps[0].status), "timed_out");
    assert_eq!(word(steps[1].status), "skipped");
    assert_eq!(word(run.jobs[0].status), "timed_out");
    assert_eq!(word(run.status), "timed_out");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_until("the background sleep to be killed", || process_gone(pid).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_timeout_ends_the_job_as_timed_out() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id =
        submit(&client, "jobs:\n  j:\n    timeout: 1s\n    steps:\n      - run: sleep 30\n      - run: echo never\n")
            .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "timed_out");
    assert!(run.jobs[0].message.contains("timed out after 1s"), "{}", run.jobs[0].message);
    assert_eq!(word(run.jobs[0].steps[1].status), "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_running_step_and_leaves_no_orphan() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let pidfile = tmp.path().join("pid");
    let yaml = format!(
        "jobs:\n  j:\n    steps:\n      - run: sleep 300 & echo $! > {}; echo started; sleep 300\n      - run: echo never\n      - run: echo cleanup\n        if: always()\n",
        pidfile.display()
    );
    let id = submit(&client, &yaml).await;
    let step = format!("{id}.1.1");
    let mut logs = client.follow(&step, true).await.unwrap();
    within("the step to start", async {
        let mut seen = String::new();
        while !seen.contains("started") {
            if let Some(v1::log_event::Event::Chunk(c)) = logs.next().await.unwrap().unwrap().event {
                seen.push_str(&String::from_utf8_lossy(&c.data));
            }
        }
    })
    .await;
    let out = output(server.cli().args(["cancel", &id]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "cancelled");
    let steps = &run.jobs[0].steps;
    assert_eq!(word(steps[0].status), "cancelled");
    assert_eq!(word(steps[1].status), "skipped");
    assert_eq!(word(steps[2].status), "success", "always() steps run after a cancel");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_until("the background sleep to be killed", || process_gone(pid).then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_needs_waits_for_its_dependency() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  second:\n    needs: first\n    steps:\n      - run: echo second\n  first:\n    steps:\n      - run: sleep 0.5\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let (second, first) = (&run.jobs[0], &run.jobs[1]);
    assert_eq!(second.needs, vec![first.id.clone()]);
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
    let first_end = ts(&first.times.as_ref().unwrap().finished_at);
    let second_start = ts(&second.times.as_ref().unwrap().started_at);
    assert!(second_start >= first_end, "second started {second_start:?} before first finished {first_end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_dependency_failed_is_skipped() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  a:\n    steps:\n      - run: exit 1\n  b:\n    needs: a\n    steps:\n      - run: echo b\n  c:\n    needs: a\n    if: failure()\n    steps:\n      - run: echo c\n",
    )
    .await;
    let run = finished(&client, &id).await;
    let by_key = |k: &str| run.jobs.iter().find(|j| j.key == k).unwrap();
    assert_eq!(word(by_key("a").status), "failure");
    assert_eq!(word(by_key("b").status), "skipped");
    assert_eq!(word(by_key("c").status), "success");
    assert_eq!(word(run.status), "failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_submitted_with_no_runner_starts_when_one_connects() {
    let server = Server::start();
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo hello\n").await;
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!((word(run.status), word(run.jobs[0].status)), ("queued", "queued"));
    let _runner = server.runner("linux", 1);
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_joining_mid_run_gets_history_then_live_lines() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let flag = tmp.path().join("go");
    let yaml = format!(
        "jobs:\n  j:\n    steps:\n      - run: |\n          echo one\n          echo two\n          while [ ! -f {} ]; do sleep 0.05; done\n          echo three\n",
        flag.display()
    );
    let id = submit(&client, &yaml).await;
    let step = format!("{id}.1.1");
    // Wait until "two" is stored, while the step is still running.
    let first = run_where(&client, &id, "the step to run", |r| word(r.jobs[0].steps[0].status) == "running").await;
    assert_eq!(word(first.status), "running");
    eventually("two lines", || async { (step_log(&client, &step).await == "one\ntwo\n").then_some(()) }).await;
    // A follower that joins now gets the history first…
    let mut follower = client.follow(&id, true).await.unwrap();
    let mut got = String::new();
    let mut boundaries = Vec::new();
    while got != "one\ntwo\n" {
        match within("history", follower.next()).await.unwrap().unwrap().event.unwrap() {
            v1::log_event::Event::Chunk(c) => got.push_str(&String::from_utf8_lossy(&c.data)),
            v1::log_event::Event::Step(b) => boundaries.push(b.finished),
            v1::log_event::Event::Ended(r) => panic!("the run ended early: {r:?}"),
        }
    }
    // …then the live line once the step goes on, and the stream ends with
    // the run as it finished.
    std::fs::write(&flag, "").unwrap();
    let mut ended = None;
    while let Some(ev) = within("live lines", follower.next()).await {
        assert!(ended.is_none(), "an event after the run's end");
        match ev.unwrap().event.unwrap() {
            v1::log_event::Event::Chunk(c) => got.push_str(&String::from_utf8_lossy(&c.data)),
            v1::log_event::Event::Step(b) => boundaries.push(b.finished),
            v1::log_event::Event::Ended(r) => ended = Some(r),
        }
    }
    assert_eq!(got, "one\ntwo\nthree\n");
    assert_eq!(boundaries, vec![false, true], "a start and an end marker");
    let ended = ended.expect("the stream ends with the run");
    assert_eq!(ended, finished(&client, &id).await, "what Runs.Get says");
    assert_eq!(word(ended.status), "success");
    // A job's stream, or one that does not follow, ends without it.
    for (scope, follow) in [(format!("{id}.1"), true), (id.clone(), false)] {
        let mut stream = client.follow(&scope, follow).await.unwrap();
        while let Some(ev) = within("the stored log", stream.next()).await {
            let ev = ev.unwrap().event.unwrap();
            assert!(!matches!(ev, v1::log_event::Event::Ended(_)), "{scope} (follow: {follow}): {ev:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_pipelines_are_rejected_with_line_and_column() {
    use tonic_types::StatusExt;
    let server = Server::start();
    let client = server.client().await;
    let submit = |yaml: &str| {
        let req = v1::SubmitRequest {
            source: Some(v1::submit_request::Source::PipelineYaml(yaml.to_string())),
            file_name: ".viaduct/pipeline.yml".into(),
            ..Default::default()
        };
        let mut runs = client.runs();
        async move { runs.submit(req).await.unwrap_err() }
    };
    let err = submit("jobs:\n  build:\n    stpes:\n      - run: x\n").await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(".viaduct/pipeline.yml:3:5: unknown key `stpes`"), "{}", err.message());
    assert!(err.message().contains("did you mean `steps`"), "{}", err.message());
    let details = err.get_details_bad_request().expect("BadRequest details");
    let unknown = details.field_violations.iter().find(|v| v.description.contains("stpes")).expect("a violation");
    assert_eq!(unknown.field, ".viaduct/pipeline.yml:3:5");
    // Every problem is reported, not just the first: the job also has no steps.
    assert!(err.message().contains(".viaduct/pipeline.yml:2:3:"), "{}", err.message());

    let err = submit("jobs:\n  build:\n    steps: [\n").await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with(".viaduct/pipeline.yml:"), "{}", err.message());

    let err =
        submit("jobs:\n  a:\n    needs: [b]\n    steps: [{run: x}]\n  b:\n    needs: [a]\n    steps: [{run: x}]\n")
            .await;
    assert!(err.message().contains("dependency cycle"), "{}", err.message());

    // Nothing was stored.
    let list = client.runs().list(v1::ListRunsRequest::default()).await.unwrap().into_inner();
    assert!(list.runs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_refused() {
    let server = Server::start();
    let anonymous = viaduct_tests::Client::connect(&server.url(), None).await.unwrap();
    let err = anonymous.runs().list(v1::ListRunsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("authorization"), "{}", err.message());
    let wrong = viaduct_tests::Client::connect(&server.url(), Some("vda_wrong".into())).await.unwrap();
    let err = wrong.runs().get(v1::GetRunRequest { id: "1".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // A registration token cannot call the user API.
    let reg = viaduct_tests::Client::connect(&server.url(), Some(server.runner_token())).await.unwrap();
    let err = reg.runs().list(v1::ListRunsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The CLI says so in one line and exits 3.
    let out = output(server.cli().env("VIADUCT_TOKEN", "nope").args(["runs", "list"]));
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unauthenticated"), "{stderr}");
    // Token files are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin-token", "runner-token"] {
        let mode = std::fs::metadata(server.data_dir().join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_follows_and_reports_outcomes() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let tmp = viaduct_tests::shared_dir();
    let good = tmp.path().join("good.yml");
    std::fs::write(
        &good,
        "name: good\njobs:\n  j:\n    steps:\n      - name: greet\n        run: echo hello from viaduct\n",
    )
    .unwrap();
    let out = output(server.cli().args(["submit"]).arg(&good).arg("--follow"));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from viaduct\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("success"));

    let bad = tmp.path().join("bad.yml");
    std::fs::write(&bad, "jobs:\n  j:\n    steps:\n      - run: echo failing; exit 4\n").unwrap();
    let out = output(server.cli().args(["submit"]).arg(&bad).arg("--follow"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "failing\n");

    // Without --follow: the run id alone on stdout.
    let out = output(server.cli().args(["submit"]).arg(&good));
    assert!(out.status.success());
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.parse::<u64>().is_ok(), "{id}");
    let client = server.client().await;
    finished(&client, &id).await;

    let out = output(server.cli().args(["runs", "get", &id, "--json"]));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["id"], id.as_str());
    assert_eq!(run["status"], "success");
    assert_eq!(run["jobs"][0]["name"], "j");
    assert_eq!(run["jobs"][0]["status"], "success");
    assert_eq!(run["jobs"][0]["steps"][0]["name"], "greet");
    assert_eq!(run["jobs"][0]["steps"][0]["status"], "success");

    let out = output(server.cli().args(["runs", "list", "--json", "--status", "failure"]));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = list["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["status"], "failure");

    let out = output(server.cli().args(["logs", &id]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from viaduct\n");

    let out = output(server.cli().args(["runners", "list"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("online"));
}

#[test]
fn the_cli_validates_files_offline_with_exit_code_2() {
    let tmp = viaduct_tests::shared_dir();
    let f = tmp.path().join("p.yml");
    std::fs::write(&f, "jobs:\n  build:\n    runs_on: linux\n    stpes: []\n").unwrap();
    let out = output(std::process::Command::new(viaduct_tests::bin("viaduct")).arg("validate").arg(&f));
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{}:4:5: unknown key `stpes`", f.display())), "{stdout}");
    std::fs::write(&f, "jobs:\n  build:\n    steps:\n      - run: make\n").unwrap();
    let out = output(std::process::Command::new(viaduct_tests::bin("viaduct")).arg("validate").arg(&f));
    assert_eq!(out.status.code(), Some(0));
    // A usage error is exit 2 too.
    let out = output(std::process::Command::new(viaduct_tests::bin("viaduct")).arg("submit"));
    assert_eq!(out.status.code(), Some(2));
}
