//! Scheduling through the real server and runners: DAGs, conditions,
//! matrices, priorities, routing, capacity, limits, concurrency groups and
//! retries.

use std::{collections::HashMap, time::Duration};

use tokio_stream::StreamExt;
use viaduct_tests::{Runner, Server, finished, output, run_where, step_log, submit, v1, wait_until, within, word};

fn job<'a>(run: &'a v1::Run, name: &str) -> &'a v1::Job {
    run.jobs.iter().find(|j| j.name == name).unwrap_or_else(|| panic!("no job `{name}` in {run:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_jobs_run_in_parallel_on_free_slots() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Each job waits for the other's file: they can only both finish if
    // they run at the same time.
    let yaml = format!(
        "jobs:\n  a:\n    timeout: 30s\n    steps:\n      - run: touch {a}; while [ ! -f {b} ]; do sleep 0.02; done\n  b:\n    timeout: 30s\n    steps:\n      - run: touch {b}; while [ ! -f {a} ]; do sleep 0.02; done\n",
        a = a.display(),
        b = b.display()
    );
    let id = submit(&client, &yaml).await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_see_event_branch_matrix_env_and_needs() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
env: { DEPLOY: "yes" }
jobs:
  build:
    matrix: { os: [a, b] }
    if: ${{ matrix.os == 'b' }}
    steps:
      - run: echo build
  on-api:
    if: event == 'api' && env.DEPLOY == 'yes'
    steps:
      - run: echo api
  on-main:
    if: branch == 'main'
    steps:
      - run: echo main
  after:
    needs: [on-api]
    if: needs.on-api.result == 'success'
    steps:
      - run: echo after
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(job(&run, "build (a)").status), "skipped");
    assert_eq!(word(job(&run, "build (b)").status), "success");
    assert_eq!(word(job(&run, "on-api").status), "success");
    assert_eq!(word(job(&run, "on-main").status), "skipped");
    assert_eq!(word(job(&run, "after").status), "success");
    assert_eq!(word(run.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_expands_with_include_and_exclude_into_named_jobs() {
    let server = Server::start();
    let _runner = server.runner("linux", 4);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
jobs:
  test:
    matrix:
      tc: [stable, beta]
      os: [linux, mac]
      exclude: [{ tc: beta, os: mac }]
      include: [{ tc: nightly, os: linux }]
    steps:
      - run: echo "${{ matrix.tc }} on ${{ matrix.os }}"
  report:
    needs: test
    steps:
      - run: echo all done
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let names: Vec<&str> = run.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(
        names,
        ["test (stable, linux)", "test (stable, mac)", "test (beta, linux)", "test (nightly, linux)", "report"]
    );
    let nightly = job(&run, "test (nightly, linux)");
    assert_eq!(nightly.matrix.get("tc").map(String::as_str), Some("nightly"));
    assert_eq!(step_log(&client, &nightly.steps[0].id).await, "nightly on linux\n");
    // `needs: test` waits for every expansion.
    assert_eq!(job(&run, "report").needs.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_the_matrix_siblings_and_can_be_turned_off() {
    let server = Server::start();
    let _runner = server.runner("linux", 3);
    let client = server.client().await;
    let yaml = |fail_fast: bool| {
        format!(
            "jobs:\n  t:\n    fail_fast: {fail_fast}\n    matrix: {{ n: [1, 2, 3] }}\n    steps:\n      - run: if [ ${{{{ matrix.n }}}} = 1 ]; then sleep 0.3; exit 1; else sleep {}; fi\n",
            if fail_fast { 60 } else { 1 }
        )
    };
    let id = submit(&client, &yaml(true)).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "failure");
    assert_eq!(word(job(&run, "t (1)").status), "failure");
    for n in ["t (2)", "t (3)"] {
        let j = job(&run, n);
        assert_eq!(word(j.status), "cancelled", "{j:?}");
        assert!(j.message.contains("fail_fast"), "{}", j.message);
    }
    let id = submit(&client, &yaml(false)).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(job(&run, "t (2)").status), "success");
    assert_eq!(word(job(&run, "t (3)").status), "success");
    assert_eq!(word(run.status), "failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_1000_runs_is_dispatched_by_priority_then_age_across_4_runners() {
    const RUNS: usize = 1000;
    let server = Server::start();
    let client = server.client().await;
    let mut priority_of = HashMap::new();
    for i in 0..RUNS {
        // A spread of priorities in an order unrelated to them.
        let p = ((i * 7) % 11) as u32;
        let req = v1::SubmitRequest {
            source: Some(v1::submit_request::Source::Job(v1::InlineJob {
                name: format!("flood-{i}"),
                steps: vec![v1::InlineStep { run: "true".into(), ..Default::default() }],
                ..Default::default()
            })),
            priority: Some(p),
            ..Default::default()
        };
        let id = client.runs().submit(req).await.unwrap().into_inner().run_id;
        priority_of.insert(id, p);
    }
    let mut events =
        client.runs().watch(v1::WatchRequest { from_start: true, ..Default::default() }).await.unwrap().into_inner();
    let _runners: Vec<Runner> = (0..4).map(|_| server.runner("linux", 1)).collect();
    let mut order = Vec::with_capacity(RUNS);
    let mut done = 0;
    within("all runs to finish", async {
        while done < RUNS {
            let ev = events.next().await.unwrap().unwrap();
            match ev.change {
                Some(v1::run_event::Change::Job(j)) if word(j.status) == "running" => order.push(j.run_id.clone()),
                Some(v1::run_event::Change::Run(r)) if word(r.status) == "success" => done += 1,
                Some(v1::run_event::Change::Run(r))
                    if viaduct_tests::Status::try_from(r.status).is_ok_and(viaduct_tests::StatusWord::is_terminal) =>
                {
                    panic!("run {} ended {}", r.id, word(r.status))
                }
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(order.len(), RUNS, "every job dispatched exactly once");
    let keys: Vec<(std::cmp::Reverse<u32>, u64)> =
        order.iter().map(|id| (std::cmp::Reverse(priority_of[id]), id.parse::<u64>().unwrap())).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "dispatch order is priority (high first), then submission order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aging_lets_a_long_waiting_low_priority_job_go_first() {
    // One priority level per 100 ms of waiting.
    let server = Server::start_with(&["--priority-aging", "100ms"]);
    let client = server.client().await;
    let inline = |name: &str, p: u32| v1::SubmitRequest {
        source: Some(v1::submit_request::Source::Job(v1::InlineJob {
            name: name.into(),
            steps: vec![v1::InlineStep { run: "true".into(), ..Default::default() }],
            ..Default::default()
        })),
        priority: Some(p),
        ..Default::default()
    };
    let low = client.runs().submit(inline("low", 0)).await.unwrap().into_inner().run_id;
    // After 1.5 s the priority-0 job has aged past a fresh priority-10 job.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let high = client.runs().submit(inline("high", 10)).await.unwrap().into_inner().run_id;
    let _runner = server.runner("linux", 1);
    let (low, high) = (finished(&client, &low).await, finished(&client, &high).await);
    let started = |r: &v1::Run| r.jobs[0].times.as_ref().unwrap().started_at.unwrap();
    let (l, h) = (started(&low), started(&high));
    assert!((l.seconds, l.nanos) < (h.seconds, h.nanos), "the aged low-priority job started first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_routes_jobs_to_runners_with_every_label() {
    let server = Server::start();
    let _cpu = server.runner("linux,x86", 1);
    let _gpu = server.runner("linux,gpu", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  g:\n    runs_on: [linux, gpu]\n    steps:\n      - run: true\n  arm:\n    runs_on: arm\n    steps:\n      - run: true\n").await;
    let run = run_where(&client, &id, "the gpu job to finish", |r| word(job(r, "g").status) == "success").await;
    let runners = client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners;
    let gpu = runners.iter().find(|r| r.labels.contains(&"gpu".to_string())).unwrap();
    assert_eq!(job(&run, "g").runner_id, gpu.id);
    // No runner has `arm`: the job waits, without blocking anything…
    assert_eq!(word(job(&run, "arm").status), "queued");
    // …until one connects.
    let _arm = server.runner("arm", 1);
    assert_eq!(word(finished(&client, &id).await.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_runner_finishes_its_job_takes_no_new_one_and_can_be_removed() {
    let server = Server::start();
    let mut runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let flag = tmp.path().join("go");
    let first = submit(
        &client,
        &format!("jobs:\n  j:\n    steps:\n      - run: while [ ! -f {} ]; do sleep 0.02; done\n", flag.display()),
    )
    .await;
    let run = run_where(&client, &first, "the first job to run", |r| word(r.jobs[0].status) == "running").await;
    let runner_id = run.jobs[0].runner_id.clone();
    let out = output(server.cli().args(["runners", "drain", &runner_id]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("draining"), "{out:?}");
    let second = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    std::fs::write(&flag, "").unwrap();
    assert_eq!(word(finished(&client, &first).await.status), "success");
    // Draining: the second job stays queued while the runner is idle.
    let run = client.runs().get(v1::GetRunRequest { id: second.clone() }).await.unwrap().into_inner();
    assert_eq!(word(run.jobs[0].status), "queued");
    let listed = client.runners().get(v1::GetRunnerRequest { id: runner_id.clone() }).await.unwrap().into_inner();
    assert!(listed.draining && listed.connected);
    output(server.cli().args(["runners", "drain", &runner_id, "--undo"]));
    assert_eq!(word(finished(&client, &second).await.status), "success");
    // Removing it revokes its token: the runner process gives up.
    let out = output(server.cli().args(["runners", "remove", &runner_id]));
    assert!(out.status.success(), "{out:?}");
    wait_until("the removed runner to exit", || (!runner.alive()).then_some(()));
    assert!(runner.log().contains("rejected this runner"), "{}", runner.log());
    let err = client.runners().get(v1::GetRunnerRequest { id: runner_id }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// Runs of pipeline `name` whose job appends start/end lines to `log`.
/// A pipeline that logs its start and end to `log`. Jobs of different slots
/// run as different users: the log is made writable for all of them.
fn logging_pipeline(name: &str, log: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    if !log.exists() {
        std::fs::write(log, "").unwrap();
        std::fs::set_permissions(log, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    format!(
        "name: {name}\njobs:\n  j:\n    steps:\n      - run: echo start-{name} >> {l}; sleep 0.3; echo end-{name} >> {l}\n",
        l = log.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_running_limit_holds_across_runners() {
    let server = Server::start_with(&["--max-running-jobs", "1"]);
    let _a = server.runner("linux", 2);
    let _b = server.runner("linux", 2);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let log = tmp.path().join("log");
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(submit(&client, &logging_pipeline(name, &log)).await);
    }
    for id in &ids {
        finished(&client, id).await;
    }
    let lines: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(String::from).collect();
    for pair in lines.chunks(2) {
        assert!(pair[0].starts_with("start-") && pair[1].starts_with("end-"), "jobs overlapped: {lines:?}");
        assert_eq!(pair[0][6..], pair[1][4..]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_pipeline_limit_serialises_one_pipeline_only() {
    let server = Server::start_with(&["--max-running-per-pipeline", "1"]);
    let _runner = server.runner("linux", 4);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let (plog, qlog) = (tmp.path().join("p"), tmp.path().join("q"));
    let ids = [
        submit(&client, &logging_pipeline("p", &plog)).await,
        submit(&client, &logging_pipeline("p", &plog)).await,
        submit(&client, &logging_pipeline("q", &qlog)).await,
        submit(&client, &logging_pipeline("q", &qlog)).await,
    ];
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(finished(&client, id).await);
    }
    for log in [&plog, &qlog] {
        let text = std::fs::read_to_string(log).unwrap();
        let kinds: Vec<&str> = text.lines().map(|l| &l[..l.find('-').unwrap()]).collect();
        assert_eq!(kinds, ["start", "end", "start", "end"], "{text}");
    }
    // The two pipelines did overlap: q's first run started before p's second ended.
    let t = |r: &v1::Run, f: fn(&v1::Times) -> Option<prost_types::Timestamp>| {
        let ts = f(r.jobs[0].times.as_ref().unwrap()).unwrap();
        (ts.seconds, ts.nanos)
    };
    assert!(t(&runs[2], |x| x.started_at) < t(&runs[0], |x| x.finished_at));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_in_progress_supersedes_the_older_run_of_a_group() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let yaml = "concurrency: { group: \"ci-${{ event }}\", cancel_in_progress: true }\njobs:\n  j:\n    steps:\n      - run: sleep 60\n";
    let old = submit(&client, yaml).await;
    run_where(&client, &old, "the old run to start", |r| word(r.jobs[0].status) == "running").await;
    let new = submit(&client, &yaml.replace("sleep 60", "true")).await;
    let old = finished(&client, &old).await;
    assert_eq!(word(old.status), "cancelled");
    assert!(old.jobs[0].message.contains(&format!("superseded by run {new}")), "{}", old.jobs[0].message);
    assert_eq!(old.concurrency_group, "ci-api");
    assert_eq!(word(finished(&client, &new).await.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_without_cancel_runs_one_at_a_time_and_keeps_only_the_newest_waiting() {
    let server = Server::start();
    let _runner = server.runner("linux", 3);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let flag = tmp.path().join("go");
    let yaml = |step: &str| format!("concurrency: deploy\njobs:\n  j:\n    steps:\n      - run: {step}\n");
    let first = submit(&client, &yaml(&format!("while [ ! -f {} ]; do sleep 0.02; done", flag.display()))).await;
    run_where(&client, &first, "the first run to start", |r| word(r.jobs[0].status) == "running").await;
    let second = submit(&client, &yaml("true")).await;
    let third = submit(&client, &yaml("true")).await;
    let second = finished(&client, &second).await;
    assert_eq!(word(second.status), "cancelled", "a waiting run is superseded by a newer one");
    let waiting = client.runs().get(v1::GetRunRequest { id: third.clone() }).await.unwrap().into_inner();
    assert_eq!(word(waiting.status), "queued");
    assert_eq!(word(waiting.jobs[0].status), "pending", "it waits for the group, not in the queue");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(word(finished(&client, &first).await.status), "success");
    assert_eq!(word(finished(&client, &third).await.status), "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_retried_with_backoff_and_attempts_are_visible() {
    let server = Server::start_with(&["--retry-backoff", "200ms"]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  flaky:\n    retries: 2\n    steps:\n      - run: echo attempt $VIADUCT_ATTEMPT; [ $VIADUCT_ATTEMPT = 3 ]\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let j = &run.jobs[0];
    assert_eq!((j.attempt, j.max_attempts), (3, 3));
    let prev: Vec<(&str, u32)> = j.previous_attempts.iter().map(|a| (word(a.status), a.attempt)).collect();
    assert_eq!(prev, [("failure", 1), ("failure", 2)]);
    assert_eq!(step_log(&client, &j.steps[0].id).await, "attempt 3\n");
    // Earlier attempts' logs are kept.
    let first = client
        .logs()
        .get(v1::GetLogRequest { step_id: j.steps[0].id.clone(), attempt: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.data, b"attempt 1\n");
    // Backoff: 200 ms before attempt 2, 400 ms before attempt 3.
    let a2 = j.previous_attempts[1].times.unwrap().started_at.unwrap();
    let a1_end = j.previous_attempts[0].times.unwrap().finished_at.unwrap();
    let gap_ms = (a2.seconds - a1_end.seconds) * 1000 + i64::from((a2.nanos - a1_end.nanos) / 1_000_000);
    assert!(gap_ms >= 190, "retried after {gap_ms} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_is_never_retried() {
    let server = Server::start_with(&["--retry-backoff", "50ms"]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    retries: 3\n    steps:\n      - run: sleep 60\n").await;
    run_where(&client, &id, "the job to run", |r| word(r.jobs[0].status) == "running").await;
    client.runs().cancel(v1::CancelRunRequest { id: id.clone(), ..Default::default() }).await.unwrap();
    let run = finished(&client, &id).await;
    assert_eq!((word(run.status), run.jobs[0].attempt), ("cancelled", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_cancelled_and_only_its_dependants_are_skipped() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let yaml = "jobs:\n  slow:\n    steps:\n      - run: sleep 60\n  after:\n    needs: slow\n    steps:\n      - run: true\n  other:\n    steps:\n      - run: sleep 1\n";
    let id = submit(&client, yaml).await;
    run_where(&client, &id, "the slow job to run", |r| word(r.jobs[0].status) == "running").await;

    // A job of another run, and a malformed id, are refused precisely.
    let err = client.runs().cancel(v1::CancelRunRequest { id: id.clone(), job_id: "999.1".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains(&format!("not a job of run {id}")), "{}", err.message());
    let err = client.runs().cancel(v1::CancelRunRequest { id: id.clone(), job_id: "x".into() }).await.unwrap_err();
    assert!(err.message().contains("is not a job id"), "{}", err.message());

    // Through the CLI: `viaduct cancel RUN --job JOB`.
    let out = output(server.cli().args(["cancel", &id, "--job", &format!("{id}.1")]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = finished(&client, &id).await;
    let statuses: Vec<&str> = run.jobs.iter().map(|j| word(j.status)).collect();
    assert_eq!(statuses, ["cancelled", "skipped", "success"]);
    assert_eq!(word(run.status), "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_only_what_failed_and_what_was_skipped_because_of_it() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let marker = tmp.path().join("fixed");
    let yaml = format!(
        "jobs:\n  a:\n    steps:\n      - run: echo a $VIADUCT_ATTEMPT\n  b:\n    needs: a\n    steps:\n      - run: '[ -f {} ]'\n  c:\n    needs: b\n    steps:\n      - run: echo c\n",
        marker.display()
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    let statuses: Vec<&str> = run.jobs.iter().map(|j| word(j.status)).collect();
    assert_eq!(statuses, ["success", "failure", "skipped"]);
    // Retrying a run that is still running, or one that succeeded, is refused.
    std::fs::write(&marker, "").unwrap();
    let out = output(server.cli().args(["retry", &id]));
    assert!(out.status.success(), "{out:?}");
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let attempts: Vec<u32> = run.jobs.iter().map(|j| j.attempt).collect();
    assert_eq!(attempts, [1, 2, 2], "a kept its first attempt");
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "a 1\n");
    let err = client.runs().retry(v1::RetryRunRequest { id: id.clone(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("nothing to retry"), "{}", err.message());
}

/// An ephemeral runner (a fresh machine or container per job) takes one
/// job even when more are queued and it asked for more slots, reports it,
/// exits, and is removed from the server with its token; the other job
/// waits for another runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_runner_takes_one_job_then_leaves() {
    let server = Server::start();
    let client = server.client().await;
    let first = submit(&client, "jobs:\n  one:\n    steps:\n      - run: echo first\n").await;
    let second = submit(&client, "jobs:\n  two:\n    steps:\n      - run: echo second\n").await;
    let mut ephemeral = Runner::start(&server, "linux", 4, &["--ephemeral"]);
    let run = finished(&client, &first).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    wait_until("the ephemeral runner to exit", || (!ephemeral.alive()).then_some(()));
    assert!(ephemeral.log().contains("its job is done and reported; exiting"), "{}", ephemeral.log());
    assert!(!ephemeral.work_dir().join("runner.json").exists(), "an ephemeral runner keeps no identity");
    viaduct_tests::eventually("the server to remove it", || async {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.ok()?.into_inner().runners;
        list.is_empty().then_some(())
    })
    .await;
    let waiting = client.runs().get(v1::GetRunRequest { id: second.clone() }).await.unwrap().into_inner();
    assert_eq!(word(waiting.jobs[0].status), "queued", "{waiting:#?}");
    let _next = server.runner("linux", 1);
    let run = finished(&client, &second).await;
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "second\n");
}

/// A registration token bound to one job (a just-in-time runner): the
/// runner it registers takes that job even though another waits before it,
/// no other, and leaves; a token for a job that no longer waits is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_made_for_a_job_takes_that_job_only() {
    let server = Server::start();
    let client = server.client().await;
    let first = submit(&client, "jobs:\n  one:\n    steps:\n      - run: echo first\n").await;
    let second = submit(&client, "jobs:\n  two:\n    steps:\n      - run: echo second\n").await;
    let out = output(server.cli().args(["runners", "token", "--job", &format!("{second}.1")]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let token_path = token_file.display().to_string();
    let mut jit = Runner::start(&server, "linux", 1, &["--token-file", &token_path, "--ephemeral"]);
    let run = finished(&client, &second).await;
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "second\n");
    wait_until("the just-in-time runner to exit", || (!jit.alive()).then_some(()));
    let waiting = client.runs().get(v1::GetRunRequest { id: first.clone() }).await.unwrap().into_inner();
    assert_eq!(word(waiting.jobs[0].status), "queued", "the other job was not its to take: {waiting:#?}");
    // The job is done: a runner for it would have nothing to do.
    let out = output(server.cli().args(["runners", "token", "--job", &format!("{second}.1")]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not waiting to run"), "{err}");
    let _any = server.runner("linux", 1);
    assert_eq!(word(finished(&client, &first).await.status), "success");
    // A runner made for a job that then ran elsewhere finds nothing to do,
    // leaves, and is removed.
    let third = submit(&client, "jobs:\n  three:\n    runs_on: [later]\n    steps:\n      - run: true\n").await;
    let out = output(server.cli().args(["runners", "token", "--job", &format!("{third}.1")]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&token_file, &out.stdout).unwrap();
    let _later = server.runner("later", 1);
    assert_eq!(word(finished(&client, &third).await.status), "success");
    let mut late = Runner::start(&server, "later", 1, &["--token-file", &token_path, "--ephemeral"]);
    wait_until("the runner with nothing to do to exit", || (!late.alive()).then_some(()));
    assert!(late.log().contains("the server has no job for it"), "{}", late.log());
    viaduct_tests::eventually("the server to remove it", || async {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.ok()?.into_inner().runners;
        (list.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_waiting_for_its_job_leaves_when_the_job_is_cancelled() {
    // One job at a time: the bound runner connects but cannot start its
    // job while another runs.
    let server = Server::start_with(&["--max-running-jobs", "1"]);
    let client = server.client().await;
    let _busy = server.runner("linux", 1);
    let long = submit(&client, "jobs:\n  long:\n    steps:\n      - run: sleep 60\n").await;
    run_where(&client, &long, "running", |r| word(r.status) == "running").await;
    let waiting = submit(&client, "jobs:\n  later:\n    steps:\n      - run: echo never\n").await;
    let out = output(server.cli().args(["runners", "token", "--job", &format!("{waiting}.1")]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let mut jit =
        Runner::start(&server, "linux", 1, &["--token-file", &token_file.display().to_string(), "--ephemeral"]);
    viaduct_tests::eventually("the bound runner to connect and wait", || async {
        let p = client.runners().pending(v1::PendingJobsRequest::default()).await.ok()?.into_inner();
        p.jobs.iter().any(|j| j.job_id == format!("{waiting}.1") && !j.bound_runner.is_empty()).then_some(())
    })
    .await;
    assert!(jit.alive());
    client.runs().cancel(v1::CancelRunRequest { id: waiting.clone(), ..Default::default() }).await.unwrap();
    wait_until("the bound runner to leave", || (!jit.alive()).then_some(()));
    assert!(jit.log().contains("drained by the server"), "{}", jit.log());
    viaduct_tests::eventually("the server to remove it", || async {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.ok()?.into_inner().runners;
        (list.len() == 1).then_some(())
    })
    .await;
    client.runs().cancel(v1::CancelRunRequest { id: long, ..Default::default() }).await.unwrap();
}
