//! `viaduct-autoscaler` against a real server: one ephemeral runner per
//! waiting job, bound to it (no other job can take the machine), at most
//! `--max-runners` at once, none left when the queue is empty; jobs its
//! runners do not fit are left alone; an instance that never connects is
//! stopped, its token revoked, and the job given up on after 3 tries; the
//! container provisioner runs each runner in a fresh container of an image
//! made from the local binaries; the Kubernetes provisioner, in a Job (only
//! where a cluster is given); an autoscaler killed -9 and started again on
//! the same state directory adopts the runner it left: counted against the
//! cap until it ends, then cleaned up.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use viaduct_tests::{Server, bin, eventually, finished, output, submit, v1, word};

/// A running autoscaler; stopped on drop.
struct Autoscaler {
    child: Child,
    /// Its token, log and state directory (shared by the autoscalers
    /// started again in it).
    dir: Arc<tempfile::TempDir>,
}

impl Autoscaler {
    fn start(server: &Server, args: &[&str]) -> Self {
        Self::start_in(server, Arc::new(tempfile::tempdir().unwrap()), args)
    }

    /// An autoscaler on `dir`'s state directory (that of an earlier one),
    /// its log appended to the same file.
    fn start_in(server: &Server, dir: Arc<tempfile::TempDir>, args: &[&str]) -> Self {
        let token = dir.path().join("admin-token");
        std::fs::write(&token, server.admin_token()).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(dir.path().join("autoscaler.log")).unwrap();
        let child = Command::new(bin("viaduct-autoscaler"))
            .args(["--server", &server.url(), "--interval", "200ms", "--token-file"])
            .arg(&token)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .env("RUST_LOG", "info,viaduct_autoscaler=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start viaduct-autoscaler");
        Self { child, dir }
    }

    fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.dir.path().join("autoscaler.log")).unwrap_or_default();
        for d in std::fs::read_dir(self.state()).into_iter().flatten().flatten() {
            if let Ok(r) = std::fs::read_to_string(d.path().join("runner.log")) {
                log.push_str(&format!("\n--- {}\n{r}", d.path().display()));
            }
        }
        log
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Token files still on disk.
    fn tokens_left(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.state())
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path().join("token"))
            .filter(|t| t.exists())
            .collect()
    }

    /// Its identity (once it has made it).
    fn id(&self) -> String {
        let file = self.state().join("id");
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", file.display(), self.log()))
            .trim()
            .into()
    }

    /// Kills it with SIGKILL: it cleans up nothing.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Waits until `scaler`, at `--max-runners`, holds back the job of `run`
/// — having started nothing itself (the seat is an adopted instance's) —
/// and returns its log.
async fn held_back_at_the_cap(scaler: &Autoscaler, run: &str) -> String {
    eventually("the cap holds the second job back", || async {
        scaler.log().lines().any(|l| l.contains("at --max-runners") && l.contains(&format!("{run}.1"))).then_some(())
    })
    .await;
    let log = scaler.log();
    assert_eq!(log.matches("instance started").count(), 1, "only the first autoscaler's: {log}");
    log
}

async fn runners(client: &viaduct_tests::Client) -> Vec<v1::Runner> {
    client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners
}

fn ms(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_runner_per_job_at_most_the_cap_and_none_when_idle() {
    let server = Server::start();
    let client = server.client().await;
    let scaler = Autoscaler::start(
        &server,
        &[
            "--labels",
            "linux,autoscaled",
            "--max-runners",
            "2",
            "--runner-bin",
            bin("viaduct-runner").to_str().unwrap(),
            "--runner-arg=--no-containers",
            "--runner-arg=--kill-grace=1s",
        ],
    );
    // Not its runners' kind: left waiting.
    let gpu = submit(&client, "jobs:\n  train:\n    runs_on: [gpu]\n    steps:\n      - run: echo never\n").await;
    let id = submit(
        &client,
        r#"
jobs:
  a: { runs_on: [autoscaled], steps: [ { run: "sleep 1; echo ran $VIADUCT_JOB_ID" } ] }
  b: { runs_on: [autoscaled], steps: [ { run: "sleep 1; echo ran $VIADUCT_JOB_ID" } ] }
  c: { runs_on: [autoscaled], steps: [ { run: "sleep 1; echo ran $VIADUCT_JOB_ID" } ] }
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", scaler.log());
    // Each job on a runner of its own, made for it.
    let mut ids: Vec<&str> = run.jobs.iter().map(|j| j.runner_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{run:#?}");
    // Never more than 2 at once: of 3 one-second jobs, some two did not overlap.
    let spans: Vec<(i64, i64)> = run
        .jobs
        .iter()
        .map(|j| {
            let t = j.times.as_ref().unwrap();
            (ms(&t.started_at), ms(&t.finished_at))
        })
        .collect();
    let overlap = |a: (i64, i64), b: (i64, i64)| a.0 < b.1 && b.0 < a.1;
    assert!(
        !(overlap(spans[0], spans[1]) && overlap(spans[1], spans[2]) && overlap(spans[0], spans[2])),
        "three at once with --max-runners 2: {spans:?}"
    );
    // Scaled to zero: no runner left, no token on disk.
    eventually("no runner left", || async { runners(&client).await.is_empty().then_some(()) }).await;
    eventually("no token file left", || async { scaler.tokens_left().is_empty().then_some(()) }).await;
    let log = scaler.log();
    assert_eq!(log.matches("instance started").count(), 3, "{log}");

    // The gpu job waits, listed as pending with what it needs.
    let pending = client.runners().pending(v1::PendingJobsRequest::default()).await.unwrap().into_inner();
    assert_eq!((pending.total, pending.fitting), (1, 1), "{pending:#?}");
    assert_eq!(
        (pending.jobs[0].job_id.as_str(), pending.jobs[0].runs_on.as_slice()),
        (&*format!("{gpu}.1"), &["gpu".to_string()][..])
    );
    assert!(pending.jobs[0].bound_runner.is_empty());
    let out = output(server.cli().args(["runners", "pending"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("RUNS ON") && text.contains(&format!("{gpu}.1")) && text.contains(" gpu "), "{text}");
    // Asked for what its runners fit, the server lists none of it; a gpu
    // runner without the wasi executor fits it, a protected one too (the
    // run is trusted).
    let fit = |labels: &[&str], protected: bool| v1::PendingJobsRequest {
        fit: Some(v1::RunnerFit {
            labels: labels.iter().map(ToString::to_string).collect(),
            executors: vec![v1::Executor::Host as i32],
            protected,
        }),
        ..Default::default()
    };
    let linux = client.runners().pending(fit(&["linux"], false)).await.unwrap().into_inner();
    assert_eq!((linux.total, linux.fitting, linux.jobs.len()), (1, 0, 0), "{linux:#?}");
    let gpu_fit = client.runners().pending(fit(&["linux", "gpu"], true)).await.unwrap().into_inner();
    assert_eq!((gpu_fit.fitting, gpu_fit.jobs.len()), (1, 1), "{gpu_fit:#?}");
    let gpu_run = client.runs().get(v1::GetRunRequest { id: gpu.clone() }).await.unwrap().into_inner();
    assert_eq!(word(gpu_run.jobs[0].status), "queued");
    client.runs().cancel(v1::CancelRunRequest { id: gpu, ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_connects_is_stopped_and_its_token_revoked() {
    let server = Server::start();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    // A "runner" that hangs without ever connecting (a broken machine).
    let hang = dir.path().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\necho $$ >> \"$(dirname \"$0\")/pids\"\nexec sleep 600\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).unwrap();
    let scaler = Autoscaler::start(&server, &["--runner-bin", hang.to_str().unwrap(), "--connect-timeout", "1s"]);
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo hi\n").await;
    let log = eventually("the autoscaler gives up", || async {
        let log = scaler.log();
        log.contains("giving up on it").then_some(log)
    })
    .await;
    assert_eq!(log.matches("instance started").count(), 3, "{log}");
    assert_eq!(log.matches("its runner never connected").count(), 3, "{log}");
    // Every hung process was stopped, no token is on disk or still valid.
    let pids = std::fs::read_to_string(dir.path().join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 3, "{pids}");
    for pid in pids.lines() {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} was left running");
    }
    assert!(scaler.tokens_left().is_empty(), "{:?}", scaler.tokens_left());
    let tokens = client.tokens().list(v1::ListTokensRequest::default()).await.unwrap().into_inner().tokens;
    assert!(!tokens.iter().any(|t| t.kind == "registration" && t.name.contains(&format!("job {id}.1"))), "{tokens:#?}");
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(word(run.jobs[0].status), "queued", "the job still waits for a runner that can take it");
    client.runs().cancel(v1::CancelRunRequest { id, ..Default::default() }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_autoscaler_adopts_the_runner_it_left_and_counts_it_against_the_cap() {
    let server = Server::start();
    let client = server.client().await;
    let runner = bin("viaduct-runner");
    let args = [
        "--labels",
        "linux,autoscaled",
        "--runner-bin",
        runner.to_str().unwrap(),
        "--runner-arg=--no-containers",
        "--runner-arg=--kill-grace=1s",
    ];
    let mut first = Autoscaler::start(&server, &args);
    // A job that runs until the test lets it end (or ends, its dir gone).
    let flags = viaduct_tests::shared_dir();
    let release = flags.path().join("release");
    let long = submit(
        &client,
        &format!(
            "jobs:\n  long:\n    runs_on: [autoscaled]\n    steps:\n      - run: until [ -e {} ] || [ ! -d {} ]; do sleep \
             0.02; done\n",
            release.display(),
            flags.path().display()
        ),
    )
    .await;
    eventually("the first job runs on its runner", || async {
        let run = client.runs().get(v1::GetRunRequest { id: long.clone() }).await.unwrap().into_inner();
        (word(run.jobs[0].status) == "running").then_some(())
    })
    .await;
    let id = std::fs::read_to_string(first.state().join("id")).unwrap();
    first.kill();
    // Its runner outlives it, and its token file is still there.
    assert_eq!(first.tokens_left().len(), 1, "{}", first.log());

    let second = Autoscaler::start_in(&server, first.dir.clone(), &[&args[..], &["--max-runners", "1"]].concat());
    eventually("the runner left behind is adopted", || async {
        second.log().contains("adopted an instance left by an earlier run").then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(second.state().join("id")).unwrap(), id, "the same autoscaler");
    let short =
        submit(&client, "jobs:\n  short:\n    runs_on: [autoscaled]\n    steps:\n      - run: echo short\n").await;
    // The adopted runner fills the one seat: the second job waits for it.
    held_back_at_the_cap(&second, &short).await;
    std::fs::write(&release, "").unwrap();
    let run = finished(&client, &short).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", second.log());
    let first_run = finished(&client, &long).await;
    assert_eq!(word(first_run.status), "success", "{first_run:#?}");
    let ended = ms(&first_run.jobs[0].times.as_ref().unwrap().finished_at);
    let began = ms(&run.jobs[0].times.as_ref().unwrap().started_at);
    assert!(began >= ended, "the second job started ({began}) before the adopted runner's ended ({ended})");
    assert_ne!(run.jobs[0].runner_id, first_run.jobs[0].runner_id);
    // The adopted instance was cleaned up like its own: no token left.
    eventually("no runner left", || async { runners(&client).await.is_empty().then_some(()) }).await;
    eventually("no token or pid file left", || async {
        let pids = std::fs::read_dir(second.state()).unwrap().flatten().filter(|d| d.path().join("pid").exists());
        (second.tokens_left().is_empty() && pids.count() == 0).then_some(())
    })
    .await;
    let log = second.log();
    assert_eq!(log.matches("instance started").count(), 2, "{log}");
}

/// An image built by a test; removed on drop, with every container of it
/// (whether the test passed or not).
struct Image(String);

/// Builds and removals of test images, one at a time: the tests' images
/// share layers (the same libraries copied), and removing one image while
/// another is being built can take a layer the build is using ("layer not
/// known").
static IMAGES: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Drop for Image {
    fn drop(&mut self) {
        let _one = IMAGES.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

/// An image with `viaduct-runner` (and the libraries it links) on the test
/// image's busybox, built from the local binary; `tag` tells the tests'
/// apart.
fn runner_image(tag: &str) -> Image {
    let name = format!("localhost/viaduct-test/runner:{}-{tag}", std::process::id());
    let ctx = tempfile::tempdir().unwrap();
    let runner = bin("viaduct-runner");
    std::fs::copy(&runner, ctx.path().join("viaduct-runner")).unwrap();
    let ldd = output(Command::new("ldd").arg(&runner));
    let mut copies = String::new();
    for lib in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|w| w.starts_with('/')) {
        let file = Path::new(lib).file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(lib, ctx.path().join(&file)).unwrap();
        copies.push_str(&format!("COPY {file} {lib}\n"));
    }
    std::fs::write(
        ctx.path().join("Containerfile"),
        format!("FROM {}\n{copies}COPY viaduct-runner /bin/viaduct-runner\n", viaduct_tests::test_image()),
    )
    .unwrap();
    let _one = IMAGES.lock().unwrap_or_else(|p| p.into_inner());
    viaduct_tests::podman(&["build", "-q", "-t", &name, ctx.path().to_str().unwrap()]);
    Image(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_provisioner_runs_each_runner_in_a_fresh_container() {
    let Some(socket) = viaduct_tests::container_socket() else { return };
    let server = Server::start();
    let client = server.client().await;
    let image = runner_image("fresh");
    let image = &image.0;
    let scaler = Autoscaler::start(&server, &in_containers(image, &socket));
    let id = submit(
        &client,
        r#"
jobs:
  a: { steps: [ { run: "test -f /run/.containerenv && echo in-a-container" } ] }
  b: { steps: [ { run: "hostname" } ] }
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", scaler.log());
    let log = viaduct_tests::step_log(&client, &run.jobs[0].steps[0].id).await;
    assert_eq!(log, "in-a-container\n");
    assert_ne!(run.jobs[0].runner_id, run.jobs[1].runner_id);
    // The containers are gone once their runners left.
    let id = scaler.id();
    eventually("containers removed", || async { containers_of(&id).is_empty().then_some(()) }).await;
    eventually("no runner left", || async { runners(&client).await.is_empty().then_some(()) }).await;
}

/// Names of the containers (running or not) labelled as started by the
/// autoscaler `id`.
fn containers_of(id: &str) -> Vec<String> {
    let filter = format!("label=dev.viaduct.autoscaler.owner={id}");
    viaduct_tests::podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", &filter])
        .lines()
        .map(String::from)
        .collect()
}

/// Autoscaler arguments for runners in containers of `image` through the
/// engine at `socket` (host network; the runner runs jobs on its host).
fn in_containers<'a>(image: &'a str, socket: &'a str) -> Vec<&'a str> {
    vec![
        "--provisioner",
        "container",
        "--image",
        image,
        "--container-socket",
        socket,
        "--container-network",
        "host",
        "--runner-arg=--no-containers",
        "--runner-arg=--shared-job-user",
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_autoscaler_adopts_its_containers_and_no_others() {
    let Some(socket) = viaduct_tests::container_socket() else { return };
    let server = Server::start();
    let client = server.client().await;
    let image = runner_image("adopt");
    let image = &image.0;
    let args = [in_containers(image, &socket), vec!["--labels", "linux,in-containers"]].concat();
    let mut first = Autoscaler::start(&server, &args);
    let long = submit(
        &client,
        "jobs:\n  long:\n    runs_on: [in-containers]\n    steps:\n      - run: until [ -e /tmp/release ]; do sleep 0.05; \
         done\n",
    )
    .await;
    eventually("the first job runs in its container", || async {
        let run = client.runs().get(v1::GetRunRequest { id: long.clone() }).await.unwrap().into_inner();
        (word(run.jobs[0].status) == "running").then_some(())
    })
    .await;
    let id = first.id();
    first.kill();
    let [container] = &containers_of(&id)[..] else { panic!("one container: {:?}", containers_of(&id)) };
    // An exited container of its own (its runner died while it was down),
    // and one of another autoscaler on the same engine.
    let suffix = std::process::id();
    let exited = format!("auto-0-1-{suffix}");
    let other = format!("viaduct-test-other-owner-{suffix}");
    for (name, owner) in [(&exited, id.as_str()), (&other, "0000000000000000")] {
        viaduct_tests::podman(&[
            "create",
            "--name",
            name,
            "--label",
            &format!("dev.viaduct.autoscaler.owner={owner}"),
            "--label",
            "dev.viaduct.autoscaler.job=0.1",
            image,
            "true",
        ]);
    }

    let second = Autoscaler::start_in(&server, first.dir.clone(), &[&args[..], &["--max-runners", "1"]].concat());
    // The exited one goes at once; the running one is kept and counted.
    eventually("its exited container removed", || async { (containers_of(&id) == [container.clone()]).then_some(()) })
        .await;
    let short =
        submit(&client, "jobs:\n  short:\n    runs_on: [in-containers]\n    steps:\n      - run: echo short\n").await;
    let log = held_back_at_the_cap(&second, &short).await;
    assert_eq!(log.matches("adopted an instance").count(), 2, "{log}");
    viaduct_tests::podman(&["exec", container, "touch", "/tmp/release"]);
    let run = finished(&client, &short).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", second.log());
    let first_run = finished(&client, &long).await;
    assert_eq!(word(first_run.status), "success", "{first_run:#?}");
    let ended = ms(&first_run.jobs[0].times.as_ref().unwrap().finished_at);
    let began = ms(&run.jobs[0].times.as_ref().unwrap().started_at);
    assert!(began >= ended, "the second job started ({began}) before the adopted runner's ended ({ended})");
    eventually("its containers removed", || async { containers_of(&id).is_empty().then_some(()) }).await;
    eventually("no token file left", || async { second.tokens_left().is_empty().then_some(()) }).await;
    // Another autoscaler's container is not its to touch.
    assert_eq!(containers_of("0000000000000000"), std::slice::from_ref(&other));
    viaduct_tests::podman(&["rm", "-f", &other]);
}

/// Needs a cluster: `VIADUCT_TEST_KUBECONFIG` (a kubeconfig whose current
/// context may make Jobs and Secrets in `default`), `VIADUCT_TEST_KUBE_IMAGE`
/// (an image with `viaduct-runner` on its PATH, pullable by the cluster)
/// and, unless its pods reach this machine's loopback (a cluster on the
/// host network), `VIADUCT_TEST_KUBE_SERVER`: the URL they reach the test
/// server at, `{port}` standing for its port (a forward you set up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_provisioner_runs_each_runner_as_a_job() {
    let Ok(kubeconfig) = std::env::var("VIADUCT_TEST_KUBECONFIG") else {
        eprintln!("skipped: no Kubernetes cluster reachable (set VIADUCT_TEST_KUBECONFIG)");
        return;
    };
    let image = std::env::var("VIADUCT_TEST_KUBE_IMAGE")
        .expect("with VIADUCT_TEST_KUBECONFIG, set VIADUCT_TEST_KUBE_IMAGE: an image with viaduct-runner");
    let server = Server::start();
    let client = server.client().await;
    let mut args = vec![
        "--provisioner".to_string(),
        "kubernetes".into(),
        "--kube-config".into(),
        kubeconfig,
        "--image".into(),
        image,
        "--runner-arg=--no-containers".into(),
        "--runner-arg=--shared-job-user".into(),
    ];
    if let Ok(url) = std::env::var("VIADUCT_TEST_KUBE_SERVER") {
        let port = server.addr().rsplit(':').next().unwrap_or_default().to_string();
        args.extend(["--runner-server".into(), url.replace("{port}", &port), "--runner-arg=--insecure".into()]);
    }
    let scaler = Autoscaler::start(&server, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo in a pod\n").await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", scaler.log());
    // Its runner was the one started for it: an `auto-` Job.
    let log = scaler.log();
    assert!(log.lines().any(|l| l.contains("instance started") && l.contains("auto-")), "{log}");
    eventually("no runner left", || async { runners(&client).await.is_empty().then_some(()) }).await;
    eventually("no token file left", || async { scaler.tokens_left().is_empty().then_some(()) }).await;
}
