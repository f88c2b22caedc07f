//! Server replicas on one PostgreSQL (`--replica`), end to end: three
//! replicas, four runners that know all three (each starting at a different
//! one), 500 runs submitted through whichever replica is up (sent again
//! with their request id when no reply came), and the
//! leading replica killed -9 twice in the middle of the burst. Every run
//! completes; every job ran on a runner exactly once; every step's log has
//! its 20 numbered lines, none missing, none twice; a killed replica comes
//! back as a follower.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use viaduct_tests::{Client, Runner, S3Bucket, Server, postgres_database, v1, wait_until, word};

const RUNS: usize = 500;
const LINES: usize = 20;

/// The live replica that leads now (its log says so last of all).
fn leader(replicas: &[Server], dead: &HashSet<usize>) -> Option<usize> {
    (0..replicas.len()).filter(|i| !dead.contains(i)).find(|i| replicas[*i].log().contains("this replica leads"))
}

fn retryable(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal)
}

/// Submits `yaml` as a client of replicas should: sent again on
/// `UNAVAILABLE` (a failover under way), with `request_id` so that a
/// submit whose reply was lost makes one run, not two; for at most 60 s.
async fn submit_with_retries(client: &Client, yaml: &str, request_id: &str) -> String {
    let t0 = Instant::now();
    loop {
        let req = v1::SubmitRequest {
            source: Some(v1::submit_request::Source::PipelineYaml(yaml.into())),
            request_id: request_id.into(),
            ..Default::default()
        };
        match client.runs().submit(req).await {
            Ok(r) => return r.into_inner().run_id,
            Err(s) if retryable(&s) => {
                assert!(t0.elapsed() < Duration::from_secs(60), "no replica accepted a submit: {s:?}");
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_nothing_when_the_leader_is_killed_twice() {
    let Some(url) = postgres_database("replicas") else { return };
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secret-key");
    let mut args: Vec<String> =
        ["--store", url.as_str(), "--replica", "--secret-key-file", key.to_str().unwrap()].map(String::from).to_vec();
    // Blobs in a bucket they share (topology 6): finished logs are packed
    // there by one leader and read by the next.
    let bucket = S3Bucket::new("replicas");
    args.extend(bucket.iter().flat_map(S3Bucket::args));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut replicas = vec![Server::start_with(&args)];
    wait_until("the first replica to lead", || replicas[0].data_dir().join("admin-token").exists().then_some(()));
    replicas.push(Server::start_with(&args));
    replicas.push(Server::start_with(&args));
    let token = replicas[0].admin_token();
    let urls: Vec<String> = replicas.iter().map(Server::url).collect();
    let registration = replicas[0].data_dir().join("runner-token");
    let runners: Vec<Runner> = (0..4)
        .map(|i| {
            let mut order = urls.clone();
            order.rotate_left(i % 3);
            Runner::start_replicas(&order.join(","), &registration, "linux", 2)
        })
        .collect();
    let transport = replicas[0].transport();
    let clients: Vec<Client> =
        urls.iter().map(|u| Client::lazy_with(u, Some(&token), &transport).expect("client")).collect();

    // The burst, through whichever replica answers.
    let dead: Arc<Mutex<HashSet<usize>>> = Arc::default();
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let yaml =
        format!("jobs:\n  count:\n    steps:\n      - run: for i in $(seq 1 {LINES}); do echo \"line $i\"; done\n");
    let burst = {
        let (clients, dead, submitted) = (clients.clone(), Arc::clone(&dead), Arc::clone(&submitted));
        tokio::spawn(async move {
            let mut turn = 0;
            let t0 = Instant::now();
            for n in 0..RUNS {
                // Sent again (to another replica) when no answer came: the
                // request id makes that one submit, not two.
                let request_id = format!("burst-{n}");
                loop {
                    turn += 1;
                    let i = turn % clients.len();
                    if dead.lock().unwrap().contains(&i) {
                        continue;
                    }
                    let req = v1::SubmitRequest {
                        source: Some(v1::submit_request::Source::PipelineYaml(yaml.clone())),
                        request_id: request_id.clone(),
                        ..Default::default()
                    };
                    match clients[i].runs().submit(req).await {
                        Ok(r) => {
                            submitted.lock().unwrap().push(r.into_inner().run_id);
                            break;
                        }
                        Err(s) if retryable(&s) => {
                            assert!(t0.elapsed() < Duration::from_secs(120), "no replica accepted a submit: {s:?}");
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(s) => panic!("submit refused: {s:?}"),
                    }
                }
            }
        })
    };

    // Kill the leader twice, mid-burst; time each failover.
    let mut failovers = Vec::new();
    for at in [RUNS * 3 / 10, RUNS * 7 / 10] {
        wait_until("the burst to reach the kill", || (submitted.lock().unwrap().len() >= at).then_some(()));
        let killed = leader(&replicas, &dead.lock().unwrap()).expect("a leader");
        dead.lock().unwrap().insert(killed);
        replicas[killed].kill9();
        let t0 = Instant::now();
        let dead_now = dead.lock().unwrap().clone();
        let next = wait_until("another replica to lead", || leader(&replicas, &dead_now));
        failovers.push((killed, next, t0.elapsed()));
    }
    eprintln!("failovers (killed, new leader, time to lead): {failovers:?}");
    burst.await.expect("the burst");
    // A killed replica comes back, as a follower.
    let (first_killed, _, _) = failovers[0];
    replicas[first_killed].restart();
    dead.lock().unwrap().remove(&first_killed);
    wait_until("the restarted replica to follow", || replicas[first_killed].log().contains("following").then_some(()));

    // Every run the system accepted completes (a submit whose reply was
    // lost to a kill and was sent again made a run too: all are checked).
    let live = (0..replicas.len()).find(|i| !dead.lock().unwrap().contains(i)).unwrap();
    let client = &clients[live];
    let ids: Vec<String> = submitted.lock().unwrap().clone();
    assert_eq!(ids.len(), RUNS);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut runs: HashMap<String, v1::Run> = HashMap::new();
    let mut pending: Vec<String> = ids.clone();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} runs never finished, e.g. {}", pending.len(), pending[0]);
        let mut still = Vec::new();
        for id in pending {
            match client.runs().get(v1::GetRunRequest { id: id.clone() }).await {
                Ok(r) if v1::Status::try_from(r.get_ref().status).is_ok_and(viaduct_tests::StatusWord::is_terminal) => {
                    runs.insert(id, r.into_inner());
                }
                Ok(_) => still.push(id),
                Err(s) if retryable(&s) => still.push(id),
                Err(s) => panic!("run {id}: {s:?}"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // No other run exists: a submit whose reply was lost to a kill and was
    // sent again returned the run it had made.
    let all = loop {
        let page = v1::PageRequest { page_size: 1000, ..Default::default() };
        let listed = client.runs().list(v1::ListRunsRequest { page: Some(page), ..Default::default() }).await;
        let all = match listed {
            Ok(l) => l.into_inner().runs,
            Err(s) if retryable(&s) => Vec::new(),
            Err(s) => panic!("{s:?}"),
        };
        let done = all.len() >= ids.len()
            && all.iter().all(|r| v1::Status::try_from(r.status).is_ok_and(viaduct_tests::StatusWord::is_terminal));
        if done {
            break all;
        }
        let open: Vec<&String> = all.iter().filter(|r| word(r.status) != "success").map(|r| &r.id).collect();
        assert!(Instant::now() < deadline, "runs never finished: {open:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(all.len(), RUNS, "one run per submit");
    for run in &all {
        assert_eq!(word(run.status), "success", "{run:#?}");
    }
    // Each job ran on a runner exactly once, and its log is whole.
    let mut started: HashMap<String, usize> = HashMap::new();
    for r in &runners {
        for line in r.log().lines().filter(|l| l.contains("job started")) {
            if let Some(job) = line.split("job=").nth(1).and_then(|s| s.split([' ', '}']).next()) {
                *started.entry(job.to_string()).or_default() += 1;
            }
        }
    }
    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    for listed in &all {
        let id = &listed.id;
        let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
        let job = &run.jobs[0];
        assert_eq!(started.get(&job.id).copied(), Some(1), "job {} started {:?} times", job.id, started.get(&job.id));
        let log = viaduct_tests::step_log(client, &job.steps[0].id).await;
        assert_eq!(log, expected, "run {id}: the log has gaps or repeats");
    }
    if let Some(bucket) = &bucket {
        assert!(!bucket.blobs().is_empty(), "finished logs were packed into the bucket");
    }
    drop(runners);
}

/// A leader that is paused (not dead: its connections stay open) loses its
/// lease; a follower takes over and serves; when the old leader wakes up it
/// writes nothing — its store's fence refuses, or its lease renewal finds
/// the lead taken — and it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_out_when_it_wakes() {
    use nix::sys::signal::Signal;
    let Some(url) = postgres_database("fenced") else { return };
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("secret-key");
    let args = ["--store", url.as_str(), "--replica", "--secret-key-file", key.to_str().unwrap()];
    let mut first = Server::start_with(&args);
    wait_until("the first replica to lead", || first.data_dir().join("admin-token").exists().then_some(()));
    let second = Server::start_with(&args);
    let token = first.admin_token();
    let urls = format!("{},{}", second.url(), first.url());
    let _runner = Runner::start_replicas(&urls, &first.data_dir().join("runner-token"), "linux", 1);
    let client = Client::lazy_with(&second.url(), Some(&token), &second.transport()).unwrap();
    let yaml = "jobs:\n  j:\n    steps:\n      - run: echo served\n";
    let send = |id: &'static str| submit_with_retries(&client, yaml, id);
    let before = send("before").await;
    assert_eq!(word(viaduct_tests::finished(&client, &before).await.status), "success");
    // The leader saw the client, not the follower: the follower signed the
    // client's address (port 0: an address without a connection).
    let audit = client.audit().list(v1::ListAuditRequest::default()).await.unwrap().into_inner().entries;
    let submit = audit.iter().find(|e| e.action.ends_with("Runs/Submit")).expect("the submit is audited");
    assert_eq!(submit.peer, "127.0.0.1:0", "{submit:?}");

    first.signal(Signal::SIGSTOP);
    let t0 = Instant::now();
    wait_until("the follower to take the lead", || second.log().contains("this replica leads").then_some(()));
    eprintln!("a paused leader replaced in {:?}", t0.elapsed());
    // Served by the new leader: runs submitted now complete.
    let after = send("after").await;
    eprintln!("submitted {after} at {:?}", t0.elapsed());
    assert_eq!(word(viaduct_tests::finished(&client, &after).await.status), "success");
    eprintln!("finished {after} at {:?}", t0.elapsed());

    // The old leader wakes: it must not write, and leaves.
    first.signal(Signal::SIGCONT);
    let status = wait_until("the old leader to exit", || first.exited());
    eprintln!("the old leader exited at {:?}", t0.elapsed());
    assert!(!status.success(), "{status}");
    let log = first.log();
    assert!(log.contains("lost its lead") || log.contains("was taken over by another: the write is refused"), "{log}");
    // Nothing of the new leader's was undone.
    let run = client.runs().get(v1::GetRunRequest { id: after.clone() }).await.unwrap().into_inner();
    assert_eq!(word(run.status), "success");
    assert_eq!(viaduct_tests::step_log(&client, &run.jobs[0].steps[0].id).await, "served\n");
}

/// Replicas speak TLS to clients, runners and each other: a follower
/// serves HTTPS with the replicas' certificate and forwards over HTTPS,
/// verifying the leader's against `--replica-ca-file`; a replica that
/// takes over serves HTTPS on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_speak_tls_to_clients_runners_and_each_other() {
    let Some(url) = postgres_database("tls") else { return };
    let pki = tempfile::tempdir().unwrap();
    let ca = viaduct_tests::pki::Ca::new("Viaduct replicas CA");
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (cert, key) =
        ca.server(&["localhost", "127.0.0.1"], viaduct_tests::pki::Validity::Current).write(pki.path(), "replica");
    let secret = pki.path().join("secret-key");
    let (cert, key, ca_arg, secret) = (
        cert.display().to_string(),
        key.display().to_string(),
        ca_file.display().to_string(),
        secret.display().to_string(),
    );
    let args = [
        "--store",
        url.as_str(),
        "--replica",
        "--secret-key-file",
        secret.as_str(),
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--replica-ca-file",
        ca_arg.as_str(),
    ];
    let start = || Server::start_tls_files(tempfile::tempdir().unwrap(), &ca_file, &args);
    let mut first = start();
    wait_until("the first replica to lead", || first.data_dir().join("admin-token").exists().then_some(()));
    let second = start();
    assert!(first.url().starts_with("https://") && second.url().starts_with("https://"));
    let token = first.admin_token();
    let urls = format!("{},{}", second.url(), first.url());
    let runner = Runner::start_replicas_with(
        &urls,
        &first.data_dir().join("runner-token"),
        "linux",
        1,
        &["--ca-cert", ca_arg.as_str()],
    );
    let client = Client::lazy_with(&second.url(), Some(&token), &second.transport()).unwrap();
    let submit = |name: &'static str| {
        let yaml = format!("jobs:\n  j:\n    steps:\n      - run: echo {name}\n");
        let client = client.clone();
        async move { submit_with_retries(&client, &yaml, name).await }
    };
    // Through the follower (HTTPS in, HTTPS to the leader).
    let before = submit("before").await;
    let run = viaduct_tests::finished(&client, &before).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", runner.log());
    assert_eq!(viaduct_tests::step_log(&client, &run.jobs[0].steps[0].id).await, "before\n");
    assert!(second.log().contains("following"), "{}", second.log());
    // The leader goes; the follower leads, serving HTTPS on its address.
    first.kill9();
    wait_until("the follower to take the lead", || second.log().contains("this replica leads").then_some(()));
    let after = submit("after").await;
    let run = viaduct_tests::finished(&client, &after).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", runner.log());
    assert_eq!(viaduct_tests::step_log(&client, &run.jobs[0].steps[0].id).await, "after\n");

    // A follower that does not trust the leader's certificate forwards
    // nothing to it.
    let unsure = Server::start_tls_files(tempfile::tempdir().unwrap(), &ca_file, &args[..args.len() - 2]);
    wait_until("the third replica to follow", || unsure.log().contains("following").then_some(()));
    let client = Client::lazy_with(&unsure.url(), Some(&token), &unsure.transport()).unwrap();
    let refused = client.runs().get(v1::GetRunRequest { id: after }).await.expect_err("not forwarded");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let log = unsure.log();
    assert!(log.contains("cannot reach the leader") && log.contains("UnknownIssuer"), "{log}");
}
