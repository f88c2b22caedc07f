//! A nearly full disk under the server's data directory (a small tmpfs):
//! new runs are refused with RESOURCE_EXHAUSTED saying how much is free,
//! reads go on, a job already running finishes with its whole log, and
//! once space returns runs are accepted again without a restart.

use std::{path::PathBuf, process::Command};

use tokio_stream::StreamExt;

use viaduct_tests::{
    Runner, Server, eventually, finished,
    forge::{create_mirror, sign, upstream},
    http, output, run_where, step_log, submit, v1, within, word,
};

/// A signed GitHub push webhook for mirror `app`: (status, body).
fn push_webhook(server: &Server, delivery: &str) -> (u16, String) {
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig = sign("s3cret", body);
    let h = [("x-github-event", "push"), ("x-github-delivery", delivery), ("x-hub-signature-256", &sig)];
    let (code, reply) = http(server.addr(), "POST", "/webhooks/app", &h, body);
    (code, String::from_utf8_lossy(&reply).into_owned())
}

/// A tmpfs mounted at a path, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// A tmpfs of `size` (`64m`) mounted at `dir` (made first).
    fn tmpfs(dir: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let mounted =
            output(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir));
        assert!(mounted.status.success(), "mount: {}", String::from_utf8_lossy(&mounted.stderr));
        Self(dir.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_runs_keeps_running_ones_and_recovers() {
    if !output(Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        viaduct_tests::missing_fixture("mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let _mount = Mounted::tmpfs(&data, "96m");
    let server = Server::start_in(dir, &["--min-free-disk", "32m"], &[]);
    let _runner = server.runner("linux", 2);
    let client = server.client().await;

    let (_upstream, bare, _wt) =
        upstream("on:\n  push: { branches: [main] }\njobs:\n  j:\n    steps:\n      - run: true\n");
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "s3cret").await;

    // A job that runs until the test lets it end, started with room.
    let gate = tempfile::tempdir().expect("gate dir");
    let marker = gate.path().join("go");
    let long = submit(
        &client,
        &format!(
            "jobs:\n  long:\n    steps:\n      - run: |\n          echo before\n          \
             while [ ! -e {} ]; do sleep 0.05; done\n          echo after-the-disk-filled\n",
            marker.display()
        ),
    )
    .await;
    run_where(&client, &long, "the long job to run", |r| word(r.status) == "running").await;

    // Fill the disk to under the floor.
    let free = nix::sys::statvfs::statvfs(&data).expect("statvfs");
    let free = free.blocks_available() * free.fragment_size();
    let filler = data.join("filler");
    std::fs::write(&filler, vec![7u8; usize::try_from(free - (16 << 20)).expect("size")]).expect("fill");

    let refused = eventually("a submit to be refused", || async {
        let req = v1::SubmitRequest {
            source: Some(v1::submit_request::Source::PipelineYaml(
                "jobs:\n  j:\n    steps:\n      - run: true\n".into(),
            )),
            ..Default::default()
        };
        client.runs().submit(req).await.err()
    })
    .await;
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("disk is nearly full") && refused.message().contains("MiB free"), "{refused}");
    // Retries too; reads go on.
    let e =
        client.runs().retry(v1::RetryRunRequest { id: long.clone(), ..Default::default() }).await.expect_err("refused");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
    client.runs().list(v1::ListRunsRequest::default()).await.expect("reads go on");
    // A forge's webhook is told to come back (503), and not recorded.
    let (code, reply) = push_webhook(&server, "delivery-1");
    assert_eq!(code, 503, "{reply}");
    assert!(reply.contains("disk is nearly full"), "{reply}");
    let status = client.admin().status(v1::AdminStatusRequest {}).await.expect("status").into_inner();
    assert!(status.refusing_new_work && status.disk_free_bytes < (32 << 20), "{status:?}");

    // The running job finishes, its log whole.
    std::fs::write(&marker, b"").expect("marker");
    let run = finished(&client, &long).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let log = step_log(&client, &format!("{long}.1.1")).await;
    assert!(log.contains("before") && log.contains("after-the-disk-filled"), "{log}");

    // Space returns: runs are accepted again, without a restart.
    std::fs::remove_file(&filler).expect("free");
    let id = eventually("a submit to be accepted again", || async {
        let req = v1::SubmitRequest {
            source: Some(v1::submit_request::Source::PipelineYaml(
                "jobs:\n  j:\n    steps:\n      - run: echo back\n".into(),
            )),
            ..Default::default()
        };
        client.runs().submit(req).await.ok().map(|r| r.into_inner().run_id)
    })
    .await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
    // The forge's redelivery is acted on, not taken for a duplicate.
    let (code, reply) = push_webhook(&server, "delivery-1");
    assert_eq!(code, 200, "{reply}");
    assert!(!reply.contains("duplicate"), "{reply}");
    assert!(server.log().contains("disk space returned"), "the server says so");
}

/// A runner whose work dir runs short of disk pauses: it says why (shown
/// on the runner), is given no new job (the job says it waits for a
/// runner short of disk), and takes the job once space returns, without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_short_of_disk_pauses_and_takes_jobs_again_when_space_returns() {
    if !output(Command::new("id").arg("-u")).stdout.starts_with(b"0\n") {
        viaduct_tests::missing_fixture("mounting a small tmpfs needs root");
        return;
    }
    let server = Server::start();
    let client = server.client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let work = dir.path().join("work");
    let _mount = Mounted::tmpfs(&work, "64m");
    let _runner = Runner::start_in(dir, &server, "linux", 1, &["--min-free-disk", "32m"], &[]);
    let runner = |client: viaduct_sdk::Client| async move {
        let list = client.runners().list(v1::ListRunnersRequest {}).await.expect("list").into_inner();
        list.runners.into_iter().find(|r| r.connected)
    };
    eventually("the runner connects", || async { runner(client.clone()).await }).await;
    assert_eq!(finished(&client, &submit(&client, JOB).await).await.status, v1::Status::Success as i32);

    let mut events = client.runners().watch(v1::WatchRunnersRequest {}).await.expect("watch").into_inner();
    let mut pushed = async |kind: v1::RunnerEventKind| loop {
        let e = within("a runner event", events.next()).await.expect("open").expect("event");
        if e.kind() == kind {
            return e.runner.unwrap_or_default();
        }
    };

    // 40 of 64 MiB taken: under the 32 MiB floor.
    let filler = work.join("filler");
    std::fs::write(&filler, vec![7u8; 40 << 20]).expect("fill the work dir");
    let why = eventually("the runner pauses", || async {
        runner(client.clone()).await.map(|r| r.paused).filter(|p| !p.is_empty())
    })
    .await;
    assert!(why.starts_with("its work dir has ") && why.ends_with("under its --min-free-disk of 32.0 MiB"), "{why}");
    assert_eq!(pushed(v1::RunnerEventKind::Paused).await.paused, why, "pushed to watchers");
    let id = submit(&client, JOB).await;
    let waiting = eventually("the job says why it waits", || async {
        let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.expect("get").into_inner();
        Some(run.jobs[0].waiting.clone()).filter(|w| w.contains("paused"))
    })
    .await;
    assert_eq!(waiting, "no connected runner takes it now: 1 runner that fits is paused for want of disk");

    // Space returns: the runner takes the job by itself.
    std::fs::remove_file(&filler).expect("free the work dir");
    assert_eq!(finished(&client, &id).await.status, v1::Status::Success as i32);
    assert_eq!(runner(client.clone()).await.expect("connected").paused, "");
    assert_eq!(pushed(v1::RunnerEventKind::Resumed).await.state_word(), "online");
}

const JOB: &str = "jobs:\n  j:\n    steps:\n      - run: echo ran\n";
