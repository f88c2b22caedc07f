//! Nothing accepted is ever lost: real processes killed with SIGKILL (and
//! stopped with SIGSTOP) at bad moments.

use nix::sys::signal::Signal;
use viaduct_tests::{
    Server, eventually, finished, process_gone, run_where, step_log, submit, v1, wait_until, within, word,
};

/// Lines `1..=n`, as `seq` prints them.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_run_loses_no_step_result_and_no_log_line() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  a:\n    steps:\n      - run: for i in $(seq 1 60); do echo $i; sleep 0.03; done\n  b:\n    needs: a\n    steps:\n      - run: echo after\n",
    )
    .await;
    let step = format!("{id}.1.1");
    eventually("ten lines", || async { step_log(&client, &step).await.contains("10\n").then_some(()) }).await;
    server.restart();
    let client = server.client().await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_eq!(step_log(&client, &step).await, seq(60), "no gap, no duplicate");
    assert_eq!(step_log(&client, &format!("{id}.2.1")).await, "after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_during_a_log_burst_keeps_the_log_exact() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    // `seq 1 300000` in 30 slices 50 ms apart: a burst that lasts 1.5 s of
    // wall clock however fast the machine, so the kill lands inside it.
    let burst = "for i in $(seq 0 29); do seq $((i*10000+1)) $((i*10000+10000)); sleep 0.05; done; echo end";
    let id = submit(&client, &format!("jobs:\n  a:\n    steps:\n      - run: {burst}\n")).await;
    let step = format!("{id}.1.1");
    // Kill while the output is streaming in.
    within("the burst to start", async {
        loop {
            let r = client
                .logs()
                .get(v1::GetLogRequest { step_id: step.clone(), limit: 1, ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            if r.size > 50_000 {
                assert!(!r.complete, "the burst ended before the kill: make it longer");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    server.restart();
    let client = server.client().await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    let mut got = Vec::new();
    loop {
        let r = client
            .logs()
            .get(v1::GetLogRequest { step_id: step.clone(), offset: got.len() as u64, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        if r.data.is_empty() {
            break;
        }
        got.extend(r.data);
    }
    let want = seq(300_000) + "end\n";
    assert_eq!(got.len(), want.len(), "log length");
    assert!(got == want.as_bytes(), "the log differs from `seq 1 300000; echo end`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_accepted_just_before_a_kill_all_run_after_the_restart() {
    let mut server = Server::start();
    let client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&client, &format!("jobs:\n  j:\n    steps:\n      - run: echo run {i}\n")).await);
    }
    // SIGKILL right after the last Submit returned.
    server.restart();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    // Through the store's log (`store::wal`), written through before each
    // Submit returned: sled's own files need not have had them yet.
    let log = server.log();
    assert!(log.contains("replayed the store's log into the database"), "{log}");
    for (i, id) in ids.iter().enumerate() {
        let run = finished(&client, id).await;
        assert_eq!(word(run.status), "success");
        assert_eq!(step_log(&client, &format!("{id}.1.1")).await, format!("run {i}\n"));
    }
}

/// Whether the runner contains host jobs in cgroups (it says so at start);
/// without them a process that leaves its process group is out of reach.
fn uses_cgroups(runner: &viaduct_tests::Runner) -> bool {
    wait_until("the runner to start", || {
        let log = runner.log();
        (log.contains("host jobs") || log.contains("no cgroup")).then_some(())
    });
    let contained = runner.log().contains("host jobs are contained by cgroups");
    if !contained {
        viaduct_tests::missing_fixture("no writable cgroup v2 here: detached processes are not contained");
    }
    contained
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_mid_step_gets_its_job_retried_and_its_processes_cleaned_up() {
    let server = Server::start_with(&["--retry-backoff", "50ms"]);
    let mut runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let (pidfile, detached) = (tmp.path().join("pid"), tmp.path().join("detached"));
    // Attempt 1 leaves a process in its group and one that left it.
    let id = submit(
        &client,
        &format!(
            "jobs:\n  j:\n    retries: 1\n    steps:\n      - run: echo attempt $VIADUCT_ATTEMPT; if [ $VIADUCT_ATTEMPT = 1 ]; then \
             setsid sh -c 'echo $$ > {detached}; exec sleep 300' & echo $$ > {pid}; sleep 300; fi\n",
            pid = pidfile.display(),
            detached = detached.display(),
        ),
    )
    .await;
    let step = format!("{id}.1.1");
    let started = |f: &std::path::Path| std::fs::read_to_string(f).ok().filter(|s| s.ends_with('\n'));
    wait_until("attempt 1 to start", || started(&pidfile).and(started(&detached)));
    runner.kill9();
    let orphan: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let detached: i32 = std::fs::read_to_string(&detached).unwrap().trim().parse().unwrap();
    assert!(!process_gone(orphan), "the step outlives a SIGKILLed runner until the runner comes back");
    // The restarted runner (same identity) no longer has the job: the server
    // retries it at once, and the runner kills what the dead one left.
    runner.restart();
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    assert_eq!(run.jobs[0].attempt, 2);
    assert_eq!(word(run.jobs[0].previous_attempts[0].status), "runner_lost");
    assert_eq!(step_log(&client, &step).await, "attempt 2\n");
    // The kill happens before the restarted runner connects: by the time
    // attempt 2 has run, nothing of attempt 1 may be left.
    assert!(process_gone(orphan), "the orphaned step was killed before the runner took work");
    if uses_cgroups(&runner) {
        assert!(process_gone(detached), "the step's detached process was killed too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_detaches_a_process_does_not_leave_it_running() {
    let server = Server::start();
    let runner = server.runner("linux", 1);
    let client = server.client().await;
    let tmp = viaduct_tests::shared_dir();
    let detached = tmp.path().join("detached");
    let id = submit(
        &client,
        &format!(
            "jobs:\n  j:\n    steps:\n      - run: setsid sh -c 'echo $$ > {0}; exec sleep 300' > /dev/null 2>&1 & \
             until [ -s {0} ]; do sleep 0.01; done\n      - run: cat {0}\n",
            detached.display()
        ),
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let pid: i32 = step_log(&client, &format!("{id}.1.2")).await.trim().parse().unwrap();
    if uses_cgroups(&runner) {
        // Step 1 ended before step 2 started, and took its detached process
        // with it: step 2 saw the pid it wrote, and it is gone.
        assert!(process_gone(pid), "a process that left the step's process group outlived the step");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_runner_loses_its_lease_and_cannot_overwrite_the_next_attempt() {
    let server = Server::start_with(&["--lease-ttl", "2s", "--heartbeat-interval", "300ms", "--retry-backoff", "50ms"]);
    let first = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  j:\n    retries: 1\n    steps:\n      - run: echo begin $VIADUCT_ATTEMPT; sleep 3; echo end $VIADUCT_ATTEMPT\n",
    )
    .await;
    let step = format!("{id}.1.1");
    eventually("attempt 1 to log", || async { (step_log(&client, &step).await == "begin 1\n").then_some(()) }).await;
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    let first_id = run.jobs[0].runner_id.clone();
    // The runner goes silent (its step keeps running), its lease lapses…
    first.signal(Signal::SIGSTOP);
    let _second = server.runner("linux", 1);
    let run = run_where(&client, &id, "attempt 2 to run elsewhere", |r| {
        r.jobs[0].attempt == 2 && word(r.jobs[0].status) == "running"
    })
    .await;
    assert_ne!(run.jobs[0].runner_id, first_id, "a silent runner gets no new work");
    assert_eq!(word(run.jobs[0].previous_attempts[0].status), "runner_lost");
    // …and when it wakes up, its late reports are refused.
    first.signal(Signal::SIGCONT);
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success");
    assert_ne!(run.jobs[0].runner_id, first_id);
    assert_eq!(step_log(&client, &step).await, "begin 2\nend 2\n");
    wait_until("the late runner to be told to abandon", || first.log().contains("abandoning job").then_some(()));
    let old = client
        .logs()
        .get(v1::GetLogRequest { step_id: step.clone(), attempt: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.data, b"begin 1\n", "nothing of the stale attempt was stored after its lease was lost");
    let again = client.runs().get(v1::GetRunRequest { id }).await.unwrap().into_inner();
    assert_eq!((word(again.status), again.jobs[0].attempt), ("success", 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_runner_with_no_retries_left_fails_the_job_as_runner_lost() {
    let server = Server::start_with(&["--lease-ttl", "1s", "--heartbeat-interval", "200ms"]);
    let first = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: sleep 30\n").await;
    run_where(&client, &id, "the job to run", |r| word(r.jobs[0].status) == "running").await;
    first.signal(Signal::SIGSTOP);
    let run = finished(&client, &id).await;
    assert_eq!((word(run.status), word(run.jobs[0].status)), ("failure", "runner_lost"));
    assert!(run.jobs[0].message.contains("stopped responding"), "{}", run.jobs[0].message);
    first.signal(Signal::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_even_with_runners_and_watchers_connected() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo kept\n").await;
    finished(&client, &id).await;
    // Streams that never end by themselves: a watcher and a log follower
    // (and the runner's Connect stream).
    let _watch = client.runs().watch(v1::WatchRequest::default()).await.unwrap().into_inner();
    let _follow = client
        .logs()
        .follow(v1::FollowRequest { scope: Some(v1::follow_request::Scope::RunId(id.clone())), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let (took, clean) = server.terminate();
    assert!(clean, "the server did not exit cleanly");
    assert!(took < std::time::Duration::from_secs(20), "SIGTERM took {took:?}");
    server.restart();
    let client = server.client().await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
    assert_eq!(step_log(&client, &format!("{id}.1.1")).await, "kept\n");
}

/// A finished step's log leaves the store for a compressed blob (packed
/// once its attempt ended) and reads exactly as before from every offset,
/// through Get and Follow, also after a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_logs_are_packed_into_blobs_and_read_the_same() {
    let mut server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  a:\n    steps:\n      - run: seq 1 300000\n      - run: printf 'no newline'\n      - run: 'true'\n      - run: head -c 5000000 /dev/zero | tr '\\0' x\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let (lines, step) = (seq(300_000), format!("{id}.1.1"));
    // Three step logs to pack (the third is empty).
    eventually("the logs packed", || async { (server.metric("viaduct_logs_packed_total") >= 3).then_some(()) }).await;
    let raw = server.metric("viaduct_log_bytes_packed_total{form=\"log\"}");
    let packed = server.metric("viaduct_log_bytes_packed_total{form=\"packed\"}");
    assert_eq!(raw, lines.len() as u64 + 10 + 5_000_000);
    assert!(packed * 4 < raw, "{raw} bytes packed into {packed}");
    let check = |client: viaduct_tests::Client| {
        let (lines, step, second, fourth) = (lines.clone(), step.clone(), format!("{id}.1.2"), format!("{id}.1.4"));
        async move {
            assert_eq!(step_log(&client, &step).await, lines);
            assert_eq!(step_log(&client, &second).await, "no newline");
            // A read of a long log fits in one message a client accepts.
            let long = client
                .logs()
                .get(v1::GetLogRequest { step_id: fourth.clone(), ..Default::default() })
                .await
                .expect("a whole read under the 4 MiB message limit")
                .into_inner();
            assert_eq!((long.size, long.data.len() < 4 << 20), (5_000_000, true));
            assert!(long.data.iter().all(|b| *b == b'x'));
            for (offset, limit) in [(0u64, 1u64), (7, 1000), (262_140, 20), (lines.len() as u64 - 3, 100)] {
                let got = client
                    .logs()
                    .get(v1::GetLogRequest { step_id: step.clone(), offset, limit, ..Default::default() })
                    .await
                    .unwrap()
                    .into_inner();
                let end = (offset + limit).min(lines.len() as u64) as usize;
                assert_eq!(got.data, lines.as_bytes()[offset as usize..end], "at {offset}");
                assert_eq!((got.size, got.complete), (lines.len() as u64, true));
            }
            // Follow from the middle: the rest, once, then the end of the step.
            let from = 1_000_003u64;
            let mut stream = client
                .logs()
                .follow(v1::FollowRequest {
                    scope: Some(v1::follow_request::Scope::StepId(step.clone())),
                    from_offset: from,
                    no_follow: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut rest = Vec::new();
            while let Some(ev) = stream.message().await.unwrap() {
                if let Some(v1::log_event::Event::Chunk(c)) = ev.event {
                    assert_eq!(c.offset, from + rest.len() as u64);
                    rest.extend(c.data);
                }
            }
            assert_eq!(rest, lines.as_bytes()[from as usize..]);
        }
    };
    check(client).await;
    server.kill9();
    server.restart();
    check(server.client().await).await;
}
