//! `cargo xtask bench`: end-to-end benchmarks against release builds of the
//! real binaries on loopback, each compared with the bare cost of the same
//! work where there is one. Figures are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_stream::StreamExt;
use viaduct_tests::{Client, Server, StatusWord, v1};

use crate::{cargo, target_dir};

/// The binaries as a release builds them ([`crate::dist::build_binaries`]:
/// the CLI with its own profile), in one directory, `target/bench-bin`:
/// hard links (a copy across file systems), so each sees its siblings
/// beside it (`viaduct exec` looks for the runner there) and a rebuild
/// during a run does not change them.
fn released_binaries() -> Result<std::path::PathBuf> {
    let built = crate::dist::build_binaries(&[])?;
    let dir = target_dir().join("bench-bin");
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    std::fs::create_dir_all(&dir)?;
    for (bin, path) in built {
        let link = dir.join(bin);
        if std::fs::hard_link(&path, &link).is_err() {
            std::fs::copy(&path, &link)?;
        }
    }
    Ok(dir)
}

/// Builds release binaries and runs the benchmarks matching `filter`.
pub fn run(filter: Option<&str>, bin_dir: Option<std::path::PathBuf>) -> Result<()> {
    // `cargo run` puts seven directories on this process's LD_LIBRARY_PATH
    // (the build's, the toolchain's libraries), which every process started
    // from here would inherit: each dynamically linked one (a floor's `sh`,
    // the bare `tar` and `zstd`) would then look for each of its libraries
    // in all of them first — 10 × `sh -c true` took 7.66 ms with them
    // against 6.58 ms without. The runner's steps never carry them.
    // Measured against the floor a user's machine has; what the user put
    // there stays.
    if let Some(path) = std::env::var_os("LD_LIBRARY_PATH") {
        let rustup = std::env::var_os("RUSTUP_HOME").map(std::path::PathBuf::from);
        let kept = without_cargo_dirs(&path, &crate::target_dir(), rustup.as_deref());
        // SAFETY: no other thread exists yet (no runtime, nothing spawned),
        // so nothing reads the environment while it changes.
        unsafe {
            match kept {
                Some(kept) => std::env::set_var("LD_LIBRARY_PATH", kept),
                None => std::env::remove_var("LD_LIBRARY_PATH"),
            }
        }
    }
    let bin_dir = match bin_dir {
        Some(dir) => dir,
        None => released_binaries()?,
    };
    eprintln!("xtask: benchmarking the binaries in {}", bin_dir.display());
    viaduct_tests::set_bin_dir(bin_dir);
    viaduct_tests::production_logs();
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    if wanted("ui") {
        crate::ui::build()?;
    }
    if wanted("plugins") || wanted("cache") || wanted("crate") || wanted("deploy") {
        crate::plugins::build(false)?;
    }
    if wanted("plugins") {
        // The runner's plugin host in-process: compile, deserialize, call.
        crate::run(cargo().args(["bench", "-p", "viaduct-runner", "--bench", "plugin_host"]))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        if wanted("latency") {
            latency().await?;
        }
        if wanted("steps") {
            steps().await?;
        }
        if wanted("tls") {
            tls().await?;
        }
        if wanted("traces") {
            traces().await?;
        }
        if wanted("memory") {
            memory().await?;
        }
        if wanted("store") {
            store().await?;
        }
        if wanted("queue") {
            queue().await?;
        }
        if wanted("retention") {
            retention().await?;
        }
        if wanted("replicas") {
            replicas().await?;
        }
        if wanted("blobs") {
            blobs().await?;
        }
        if wanted("logs") {
            logs().await?;
        }
        if wanted("autoscaler") {
            autoscaler().await?;
        }
        if wanted("git") {
            git_push().await?;
        }
        if wanted("containers") {
            containers().await?;
        }
        if wanted("plugins") {
            plugins().await?;
        }
        if wanted("cache") {
            cache().await?;
        }
        if wanted("snapshots") {
            snapshots().await?;
        }
        if wanted("crate") {
            real_crate().await?;
        }
        if wanted("deploy") {
            deploy().await?;
        }
        if wanted("ui") {
            ui().await?;
        }
        Ok(())
    })
}

/// `LD_LIBRARY_PATH` without the directories cargo and rustup add to it
/// (under the target directory or `RUSTUP_HOME`); `None` when nothing is
/// left.
fn without_cargo_dirs(
    path: &std::ffi::OsStr,
    target: &std::path::Path,
    rustup: Option<&std::path::Path>,
) -> Option<std::ffi::OsString> {
    let ours = |p: &std::path::Path| p.starts_with(target) || rustup.is_some_and(|r| p.starts_with(r));
    let kept: Vec<_> = std::env::split_paths(path).filter(|p| !p.as_os_str().is_empty() && !ours(p)).collect();
    if kept.is_empty() { None } else { std::env::join_paths(kept).ok() }
}

/// Sorted samples → (p50, p99, mean).
fn summary(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    (at(0.5), at(0.99), mean)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn submit(client: &Client, yaml: &str) -> Result<String> {
    let req = v1::SubmitRequest {
        source: Some(v1::submit_request::Source::PipelineYaml(yaml.to_string())),
        ..Default::default()
    };
    Ok(client.runs().submit(req).await?.into_inner().run_id)
}

/// Waits on `events` until `pred` holds for an event of run `id`.
async fn until(
    events: &mut tonic::Streaming<v1::RunEvent>,
    id: &str,
    pred: impl Fn(&v1::run_event::Change) -> bool,
) -> Result<()> {
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if ev.run_id == id && ev.change.as_ref().is_some_and(&pred) {
            return Ok(());
        }
    }
    anyhow::bail!("the event stream ended")
}

fn is_running_step(c: &v1::run_event::Change) -> bool {
    matches!(c, v1::run_event::Change::Step(s) if s.status == v1::Status::Running as i32)
}

fn is_finished_run(c: &v1::run_event::Change) -> bool {
    matches!(c, v1::run_event::Change::Run(r) if v1::Status::try_from(r.status).is_ok_and(StatusWord::is_terminal))
}

async fn system() -> Result<(Server, viaduct_tests::Runner, Client, tonic::Streaming<v1::RunEvent>)> {
    system_on(Server::start()).await
}

/// [`system`] on `server` (e.g. one speaking TLS).
async fn system_on(server: Server) -> Result<(Server, viaduct_tests::Runner, Client, tonic::Streaming<v1::RunEvent>)> {
    let runner = server.runner("linux", 1);
    warmed(server, runner).await
}

/// `server` and `runner` after one run.
async fn warmed(
    server: Server,
    runner: viaduct_tests::Runner,
) -> Result<(Server, viaduct_tests::Runner, Client, tonic::Streaming<v1::RunEvent>)> {
    let client = server.client().await;
    // Wait for the runner: one warm-up run, whose events are drained from
    // the stream so that the next event read belongs to the next run.
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let id = submit(&client, "jobs:\n  warm:\n    steps:\n      - run: true\n").await?;
    until(&mut events, &id, is_finished_run).await.context("warm-up run")?;
    Ok((server, runner, client, events))
}

/// Submit → first step running, on an idle connected runner.
async fn latency() -> Result<()> {
    const N: usize = 200;
    let (_server, _runner, client, mut events) = system().await?;
    let (p50, p99, mean) = pickup(&client, &mut events, N).await?;
    println!(
        "latency  submit → first step running (idle runner, {N} runs): p50 {}  p99 {}  mean {}",
        ms(p50),
        ms(p99),
        ms(mean)
    );
    Ok(())
}

/// Submit → first step running, `n` times: (p50, p99, mean).
async fn pickup(
    client: &Client,
    events: &mut tonic::Streaming<v1::RunEvent>,
    n: usize,
) -> Result<(Duration, Duration, Duration)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        samples.push(pickup_once(client, events).await?);
    }
    Ok(summary(samples))
}

/// Submit → first step running, once (then waits for the run to end).
async fn pickup_once(client: &Client, events: &mut tonic::Streaming<v1::RunEvent>) -> Result<Duration> {
    let t0 = Instant::now();
    let id = submit(client, "jobs:\n  j:\n    steps:\n      - run: true\n").await?;
    until(events, &id, is_running_step).await?;
    let took = t0.elapsed();
    until(events, &id, is_finished_run).await?;
    Ok(took)
}

/// Finished logs packed into blobs (`packed_logs`): their bytes as
/// written and packed, against zstd -3 of the whole log at once (the bare
/// cost: no frames, no chunk times); and reading a whole log — `Logs.Get`
/// in 4 MiB pages, and `Logs.Follow` from 0 — while it is chunks in the
/// store (its job still running) and once it is packed.
async fn logs() -> Result<()> {
    let (server, _runner, client, _events) = system().await?;
    let awk = r#"awk 'BEGIN { for (i = 0; i < 60000; i++) { printf "   Compiling crate_%d v0.%d.%d (/build/src/crate_%d)\n", i, i % 13, i % 7, i; printf "     Running `/usr/bin/rustc --crate-name crate_%d --edition=2021 src/lib.rs --error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 -C embed-bitcode=no -C metadata=%08x%08x -C extra-filename=-%08x --out-dir /build/target/release/deps -L dependency=/build/target/release/deps --cap-lints allow`\n", i, i * 2654435761 % 4294967296, i * 40503 % 4294967296, i * 69069 % 4294967296 } }'"#;
    for (name, script) in [("build-like log", awk.to_string()), ("seq flood", "seq 1 1000000".to_string())] {
        let yaml = format!("jobs:\n  j:\n    steps:\n      - run: {}\n      - run: sleep 3\n", yaml_quote(&script));
        let id = submit(&client, &yaml).await?;
        let step = format!("{id}.1.1");
        // While the job runs (its second step sleeps), the log is chunks.
        let done = |r: &v1::Run| {
            r.jobs.first().and_then(|j| j.steps.first()).is_some_and(|s| s.status == v1::Status::Success as i32)
        };
        viaduct_tests::run_where(&client, &id, "the first step done", done).await;
        let (log, get_chunks) = read_whole(&client, &step).await?;
        let follow_chunks = follow_whole(&client, &step, log.len()).await?;
        let before = server.metric("viaduct_logs_packed_total");
        viaduct_tests::finished(&client, &id).await;
        let (raw0, packed0) = (
            server.metric("viaduct_log_bytes_packed_total{form=\"log\"}"),
            server.metric("viaduct_log_bytes_packed_total{form=\"packed\"}"),
        );
        viaduct_tests::eventually("the log packed", || async {
            (server.metric("viaduct_logs_packed_total") > before).then_some(())
        })
        .await;
        let raw = server.metric("viaduct_log_bytes_packed_total{form=\"log\"}") - raw0;
        let packed = server.metric("viaduct_log_bytes_packed_total{form=\"packed\"}") - packed0;
        let (again, get_packed) = read_whole(&client, &step).await?;
        anyhow::ensure!(again == log, "the packed log differs");
        let follow_packed = follow_whole(&client, &step, log.len()).await?;
        let t0 = Instant::now();
        let bare = zstd::bulk::compress(&log, 3)?;
        let bare_pack = t0.elapsed();
        let t0 = Instant::now();
        zstd::bulk::decompress(&bare, log.len())?;
        let bare_unpack = t0.elapsed();
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "logs     {name}: {:.1} MB → packed {:.2} MB ({:.1}×; bare zstd -3 of the whole log {:.2} MB, {:.1}×, {} to pack, {} to unpack); \
             read whole: Get {} as chunks, {} packed; Follow {} as chunks, {} packed",
            mb(raw),
            mb(packed),
            raw as f64 / packed.max(1) as f64,
            mb(bare.len() as u64),
            log.len() as f64 / bare.len().max(1) as f64,
            ms(bare_pack),
            ms(bare_unpack),
            ms(get_chunks),
            ms(get_packed),
            ms(follow_chunks),
            ms(follow_packed),
        );
    }
    Ok(())
}

/// `s` as a single-quoted YAML scalar.
fn yaml_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A step's whole log through `Logs.Get` (4 MiB pages), and the time it took.
async fn read_whole(client: &Client, step: &str) -> Result<(Vec<u8>, Duration)> {
    let t0 = Instant::now();
    let mut log = Vec::new();
    loop {
        let req = v1::GetLogRequest { step_id: step.to_string(), offset: log.len() as u64, ..Default::default() };
        let r = client.logs().get(req).await?.into_inner();
        if r.data.is_empty() {
            break;
        }
        log.extend(r.data);
    }
    Ok((log, t0.elapsed()))
}

/// The time `Logs.Follow` (without following) takes to stream a step's
/// `size` bytes from 0.
async fn follow_whole(client: &Client, step: &str, size: usize) -> Result<Duration> {
    let t0 = Instant::now();
    let req = v1::FollowRequest {
        scope: Some(v1::follow_request::Scope::StepId(step.to_string())),
        no_follow: true,
        ..Default::default()
    };
    let mut stream = client.logs().follow(req).await?.into_inner();
    let mut got = 0;
    while let Some(ev) = stream.message().await? {
        if let Some(v1::log_event::Event::Chunk(c)) = ev.event {
            got += c.data.len();
        }
    }
    anyhow::ensure!(got == size, "followed {got} bytes of {size}");
    Ok(t0.elapsed())
}

/// What TLS costs: pickup latency and the marginal cost of a step, on a
/// plaintext server and on the same server speaking TLS (client, runner
/// and server all verify and encrypt).
async fn tls() -> Result<()> {
    const N: usize = 200;
    const RUNS: usize = 30;
    for tls in [false, true] {
        let server = if tls { Server::start_tls(&[]) } else { Server::start() };
        let (_server, _runner, client, mut events) = system_on(server).await?;
        let (p50, p99, mean) = pickup(&client, &mut events, N).await?;
        let ten = job_of_steps(&client, &mut events, 10, RUNS, None).await?;
        let one = job_of_steps(&client, &mut events, 1, RUNS, None).await?;
        println!(
            "tls      {:<9} submit → first step running ({N} runs): p50 {}  p99 {}  mean {};  \
             10-step job p50 {}, each further step {}",
            if tls { "TLS" } else { "plaintext" },
            ms(p50),
            ms(p99),
            ms(mean),
            ms(ten),
            ms(ten.saturating_sub(one) / 9),
        );
    }
    Ok(())
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in
/// bytes.
fn resident(pid: Option<u32>) -> Result<(u64, u64)> {
    let pid = pid.context("the server is not running")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name}"))?;
        let kb: u64 = line.split_whitespace().nth(1).context("a value")?.parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The server's memory while 100,000 jobs wait (100 runs of 1,000 jobs no
/// runner takes): idle, after the submissions (and their peak), and after a
/// restart with them queued — with the store's cache at its default and at
/// 16m. The bare cost: the idle server.
async fn memory() -> Result<()> {
    const RUNS: usize = 100;
    const JOBS: usize = 1000;
    let pipeline = |jobs: usize| {
        let mut yaml = String::from("jobs:\n");
        for i in 0..jobs {
            yaml.push_str(&format!("  j{i}: {{runs_on: [n], steps: [{{run: true}}]}}\n"));
        }
        yaml
    };
    // The largest run a pipeline file may hold (docs/limits.md).
    let yaml = pipeline(JOBS);
    for cache in ["64m", "16m"] {
        let mut server = Server::start_with(&["--store-cache", cache]);
        let client = server.client().await;
        let (idle, _) = resident(server.pid())?;
        let t0 = Instant::now();
        for _ in 0..RUNS {
            submit(&client, &yaml).await?;
        }
        let took = t0.elapsed();
        let (after, peak) = resident(server.pid())?;
        // What stays once the server has been idle a moment.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (settled, _) = resident(server.pid())?;
        server.restart();
        let client = server.client().await;
        let queued = client.runners().stats(v1::FleetStatsRequest {}).await?.into_inner().queued;
        let (restarted, _) = resident(server.pid())?;
        let per_job = settled.saturating_sub(idle) / (RUNS * JOBS) as u64;
        println!(
            "memory   --store-cache {cache}: idle {};  {} jobs queued in {RUNS} runs ({:.1} s): {} just after, {} settled \
             (peak {}, {per_job} B per job);  after a restart with {queued} queued: {}",
            mib(idle),
            RUNS * JOBS,
            took.as_secs_f64(),
            mib(after),
            mib(settled),
            mib(peak),
            mib(restarted),
        );
    }
    Ok(())
}

/// Pickup and a 10-step job with traces off, then exported over OTLP by
/// the server and the runner to a collector on this machine (the bare
/// cost: the same work without them).
async fn traces() -> Result<()> {
    const N: usize = 200;
    const RUNS: usize = 30;
    for on in [false, true] {
        let collector = viaduct_tests::otlp::Collector::default();
        let url = collector.start().await;
        let otlp: &[&str] = if on { &["--otlp-endpoint", &url] } else { &[] };
        let server = Server::start_with(otlp);
        let runner = viaduct_tests::Runner::start(&server, "linux", 1, otlp);
        let (_server, _runner, client, mut events) = warmed(server, runner).await?;
        let (p50, p99, mean) = pickup(&client, &mut events, N).await?;
        let ten = job_of_steps(&client, &mut events, 10, RUNS, None).await?;
        // Let the last batch go out before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "traces   {:<4} submit → first step running ({N} runs): p50 {}  p99 {}  mean {};  10-step job p50 {};  \
             {} spans received",
            if on { "on" } else { "off" },
            ms(p50),
            ms(p99),
            ms(mean),
            ms(ten),
            collector.spans().len(),
        );
    }
    Ok(())
}

/// End-to-end time of a job of `n` `true` steps (p50 over `runs`), in
/// `image` when given.
async fn job_of_steps(
    client: &Client,
    events: &mut tonic::Streaming<v1::RunEvent>,
    n: usize,
    runs: usize,
    image: Option<&str>,
) -> Result<Duration> {
    job_of(client, events, "run: true", n, runs, image).await
}

/// End-to-end time of a job of `n` copies of `step` (one YAML flow
/// mapping body, e.g. `run: true` or `uses: noop`), p50 over `runs`.
async fn job_of(
    client: &Client,
    events: &mut tonic::Streaming<v1::RunEvent>,
    step: &str,
    n: usize,
    runs: usize,
    image: Option<&str>,
) -> Result<Duration> {
    let mut yaml = String::from("jobs:\n  j:\n");
    if let Some(i) = image {
        yaml.push_str(&format!("    image: {i}\n"));
    }
    yaml.push_str("    steps:\n");
    for _ in 0..n {
        yaml.push_str(&format!("      - {step}\n"));
    }
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let id = submit(client, &yaml).await?;
        until(events, &id, is_finished_run).await?;
        samples.push(t0.elapsed());
    }
    Ok(summary(samples).0)
}

/// A 10-step job of `true`, end to end, vs. 10 × `sh -c true` directly; and
/// the marginal cost of one more step (10-step minus 1-step job, over 9).
async fn steps() -> Result<()> {
    // Enough for a steady p50: rounds minutes apart still differ more than
    // their samples do (the machine drifts), which is why each CLI job is
    // timed next to its floor.
    const RUNS: usize = 100;
    let (server, _runner, client, mut events) = system().await?;
    let store = || (server.metric("viaduct_store_commits_total"), server.metric("viaduct_store_flushes_total"));
    let before = store();
    let ten = job_of_steps(&client, &mut events, 10, RUNS, None).await?;
    let after = store();
    let one = job_of_steps(&client, &mut events, 1, RUNS, None).await?;
    // The watch ends here: left unread, it still had the server send this
    // process every event of the CLI's jobs (its stream window is 4 MiB),
    // ~1.5 ms of work a job for the two of them on the cores the steps run
    // on: a cost of the benchmark, not of the CLI's job.
    drop(events);
    // The same 10-step job as a user starts it: the CLI process, which
    // submits, follows the logs and exits with the outcome.
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), format!("jobs:\n  j:\n    steps:\n{}", "      - run: true\n".repeat(10)))?;
    // Each CLI job is followed by its floor, ten `sh -c true`: the two
    // are compared at the same moments (this machine's speed drifts). A
    // pause before each keeps either from being timed while the runner
    // removes the last job's leftovers (5 ms after its end: see the host
    // executor's `LEFTOVERS_AFTER`).
    const APART: Duration = Duration::from_millis(10);
    let (mut cli, mut direct) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for _ in 0..RUNS {
        tokio::time::sleep(APART).await;
        let t0 = Instant::now();
        let out = server.cli().args(["submit", "--follow"]).arg(file.path()).output()?;
        cli.push(t0.elapsed());
        anyhow::ensure!(out.status.success(), "viaduct submit --follow: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(APART).await;
        let t0 = Instant::now();
        for _ in 0..10 {
            // Like a step, which never carries one (not even the user's).
            std::process::Command::new("/bin/sh").args(["-c", "true"]).env_remove("LD_LIBRARY_PATH").status()?;
        }
        direct.push(t0.elapsed());
    }
    let (cli50, _, _) = summary(cli);
    let (d50, _, _) = summary(direct);
    let marginal = ten.saturating_sub(one) / 9;
    println!(
        "steps    10 × `true`: viaduct end-to-end p50 {} vs direct 10 × sh -c true p50 {} (ratio {:.2}×); \
         a 1-step job takes {}; each further step {} = direct {} + executor overhead {}",
        ms(ten),
        ms(d50),
        ten.as_secs_f64() / d50.as_secs_f64(),
        ms(one),
        ms(marginal),
        ms(d50 / 10),
        ms(marginal.saturating_sub(d50 / 10)),
    );
    println!(
        "steps    the same job through the CLI (`viaduct submit --follow`, a process each time): p50 {} ({:.2}× direct)",
        ms(cli50),
        cli50.as_secs_f64() / d50.as_secs_f64(),
    );
    let per_job = |a: u64, b: u64| (b - a) as f64 / RUNS as f64;
    println!(
        "steps    the store, per 10-step job: {:.1} commits, {:.1} group commits (fsyncs)",
        per_job(before.0, after.0),
        per_job(before.1, after.1),
    );
    // Where a step's time goes inside the runner (in-process, by layer of
    // containment).
    crate::run(cargo().args(["bench", "-p", "viaduct-runner", "--bench", "host_step"]))?;
    Ok(())
}

/// Inline no-op job runs, submitted by `concurrency` tasks at once; returns
/// the run ids and submit times.
async fn flood(client: &Client, n: usize, concurrency: usize) -> Result<Vec<(String, Instant)>> {
    let per_task = n.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let req = v1::SubmitRequest {
                    source: Some(v1::submit_request::Source::Job(v1::InlineJob {
                        name: "noop".into(),
                        steps: vec![v1::InlineStep { run: "true".into(), ..Default::default() }],
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                let t0 = Instant::now();
                let id = client.runs().submit(req).await?.into_inner().run_id;
                out.push((id, t0));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Figures of a backlog: durable submits/s, then dispatched and completed
/// jobs/s once 4 runner connections (dummy executor, 512 slots each)
/// start.
struct Backlog {
    submits: f64,
    dispatched: f64,
    completed: f64,
}

/// Submits `n` one-job runs (32 concurrent clients), then drains them with
/// 4 dummy runners (which it returns, still connected). No other runner may
/// be connected: runs finished before the drain would not be counted.
/// A runner of `server` with the dummy executor and 512 slots.
fn dummy_runner(server: &Server) -> viaduct_tests::Runner {
    viaduct_tests::Runner::start(server, "linux", 512, &["--dummy-executor"])
}

async fn backlog(
    client: &Client,
    n: usize,
    runner: impl Fn() -> viaduct_tests::Runner,
) -> Result<(Backlog, Vec<viaduct_tests::Runner>)> {
    let t0 = Instant::now();
    flood(client, n, 32).await?;
    let submits = n as f64 / t0.elapsed().as_secs_f64();
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let t0 = Instant::now();
    let runners: Vec<_> = (0..4).map(|_| runner()).collect();
    let (mut dispatched, mut done) = (0, 0);
    let mut dispatched_at = None;
    while done < n {
        let ev = events.next().await.context("event stream ended")??;
        match ev.change {
            Some(v1::run_event::Change::Job(j)) if j.status == v1::Status::Running as i32 => {
                dispatched += 1;
                if dispatched == n {
                    dispatched_at = Some(t0.elapsed());
                }
            }
            Some(c) if is_finished_run(&c) => done += 1,
            _ => {}
        }
    }
    let all_done = t0.elapsed();
    let dispatched_at = dispatched_at.unwrap_or(all_done);
    let figures = Backlog {
        submits,
        dispatched: n as f64 / dispatched_at.as_secs_f64(),
        completed: n as f64 / all_done.as_secs_f64(),
    };
    Ok((figures, runners))
}

/// Durable queue throughput: a backlog drained by 4 runner connections
/// (dummy executor, many slots), then submit → started latency under a
/// sustained load.
async fn queue() -> Result<()> {
    const BACKLOG: usize = 20_000;
    let server = Server::start();
    let client = server.client().await;
    let (b, runners) = backlog(&client, BACKLOG, || dummy_runner(&server)).await?;
    println!("queue    submit {BACKLOG} runs (32 concurrent clients, each durable): {:.0} runs/s", b.submits);
    println!(
        "queue    backlog of {BACKLOG} → 4 runners × 512 slots: dispatched {:.0} jobs/s, completed {:.0} jobs/s (incl. runner start)",
        b.dispatched, b.completed
    );

    // The store's group commits during each phase, and how many of them
    // were slow to make their writes durable (`/metrics`).
    let commits = || {
        // One scrape: a flush between two would make them disagree.
        let v = server.metrics(&[
            "viaduct_store_flush_duration_seconds_count",
            "viaduct_store_flush_duration_seconds_bucket{le=\"0.004\"}",
        ]);
        (v[0], v[1])
    };
    // Latency under a sustained load: runs submitted at a fixed rate (below
    // capacity, so this measures the scheduler, not a growing queue), 2 s
    // of it before the 4 s counted.
    let (warm_up, counted) = (Duration::from_secs(2), Duration::from_secs(4));
    for rate in [1000u32, 2500] {
        let before = commits();
        let paced = match paced(&client, rate, warm_up, counted).await {
            Ok(r) => r,
            Err(e) => {
                let log = server.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("server log (last lines, newest first):\n{}", tail.join("\n"));
                return Err(e);
            }
        };
        println!(
            "queue    under a sustained {rate} runs/s ({:.0} achieved): submit → step running p50 {}  p99 {}  (of which submit → acknowledged p50 {}  p99 {}; \
             in the {} s of warm-up before, p99 {})",
            paced.achieved,
            ms(paced.running.0),
            ms(paced.running.1),
            ms(paced.acknowledged.0),
            ms(paced.acknowledged.1),
            warm_up.as_secs(),
            paced.warm_up_p99.map_or_else(|| "-".into(), ms),
        );
        let after = commits();
        println!(
            "queue    … the store's group commits meanwhile (warm-up included): {}, of which {} took over 4 ms to be durable",
            after.0 - before.0,
            (after.0 - after.1) - (before.0 - before.1),
        );
    }
    drop(runners);
    Ok(())
}

/// Retention over 100,000 finished runs (`--keep-runs-for 1s`, the last 10
/// kept): the store's size and pickup latency on an idle runner before the
/// runs, with them, while one pass removes them (pickups one after another
/// for as long as the pass lasts) and after; the pass's own figures.
async fn retention() -> Result<()> {
    const RUNS: usize = 100_000;
    const N: usize = 200;
    let args =
        ["--keep-runs-for", "1s", "--keep-runs-last", "10", "--keep-events-for", "1s", "--retention-every", "forever"];
    let (server, runner, client, mut events) = system_on(Server::start_with(&args)).await?;
    let data = server.data_dir();
    let (e50, e99, _) = pickup(&client, &mut events, N).await?;
    let empty = dir_size(&data.join("db"));
    drop(runner);
    drop(events);
    let (b, runners) = backlog(&client, RUNS, || dummy_runner(&server)).await?;
    println!("retention {RUNS} one-job runs made (dummy executor): {:.0} runs/s completed", b.completed);
    drop(runners);
    // Their logs are packed in the background; a run waits for that.
    let dry = loop {
        let r = client.admin().prune(v1::PruneRequest { dry_run: true }).await?.into_inner();
        if r.kept_unfinished == 0 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "retention dry run over {} runs: would remove {} in {} ms",
        dry.runs_examined, dry.runs_removed, dry.took_ms
    );
    let full = dir_size(&data.join("db"));
    let runner = server.runner("linux", 1);
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let id = submit(&client, "jobs:\n  warm:\n    steps:\n      - run: true\n").await?;
    until(&mut events, &id, is_finished_run).await.context("warm-up run")?;
    let (f50, f99, _) = pickup(&client, &mut events, N).await?;

    let admin = client.clone();
    let pass = tokio::spawn(async move { admin.admin().prune(v1::PruneRequest { dry_run: false }).await });
    let mut during = Vec::new();
    while !pass.is_finished() {
        during.push(pickup_once(&client, &mut events).await?);
    }
    let report = pass.await??.into_inner();
    let samples = during.len();
    let (d50, d99, _) = summary(during);
    let (a50, a99, _) = pickup(&client, &mut events, N).await?;
    let after = dir_size(&data.join("db"));
    drop(runner);
    // sled reuses freed space only in part and never shrinks its files:
    // `viaduct-server compact` (the server stopped) gives it back.
    let mut server = server;
    server.terminate();
    let t0 = Instant::now();
    let compact = std::process::Command::new(viaduct_tests::bin("viaduct-server"))
        .args(["compact", "--data-dir"])
        .arg(&data)
        .output()?;
    anyhow::ensure!(compact.status.success(), "compact: {}", String::from_utf8_lossy(&compact.stderr));
    let compact_took = t0.elapsed();
    let compacted = dir_size(&data.join("db"));
    server.restart();
    let client = server.client().await;
    let status = client.admin().status(v1::AdminStatusRequest {}).await?.into_inner();
    let largest: Vec<String> = status
        .trees
        .iter()
        .take(4)
        .map(|t| format!("{} {} records {:.1} MiB", t.name, t.records, t.bytes as f64 / f64::from(1 << 20)))
        .collect();
    println!("retention after the pass, largest trees: {}", largest.join("; "));
    // Another 100,000 runs on the compacted store.
    let (_, runners) = backlog(&client, RUNS, || dummy_runner(&server)).await?;
    drop(runners);
    let again = dir_size(&data.join("db"));
    let mb = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    println!(
        "retention pass: removed {} of {} runs ({} records, {}) in {} ms",
        report.runs_removed,
        report.runs_examined,
        report.records_removed,
        mb(report.bytes_removed),
        report.took_ms
    );
    println!("retention pickup p50/p99: empty store {}/{}", ms(e50), ms(e99));
    println!("retention pickup p50/p99: {RUNS} runs stored {}/{}", ms(f50), ms(f99));
    println!("retention pickup p50/p99: during the pass ({samples} runs) {}/{}", ms(d50), ms(d99));
    println!("retention pickup p50/p99: after the pass {}/{}", ms(a50), ms(a99));
    println!(
        "retention sled files: empty {}, with {RUNS} runs {}, after the pass {}, compacted {} (in {} ms), \
         after {RUNS} more runs {}",
        mb(empty),
        mb(full),
        mb(after),
        mb(compacted),
        compact_took.as_millis(),
        mb(again)
    );
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The same work on each store, side by side: sled (embedded) and
/// PostgreSQL (a private server, as `cargo xtask test` starts): pickup
/// latency on an idle runner, durable submits/s and the drain of a backlog.
async fn store() -> Result<()> {
    const N: usize = 200;
    const BACKLOG: usize = 20_000;
    let postgres = crate::setup::PostgresServer::start()?;
    let url = format!("{}/postgres", postgres.url);
    for (name, args) in [("sled", vec![]), ("postgres", vec!["--store", url.as_str()])] {
        let (server, runner, client, mut events) = system_on(Server::start_with(&args)).await?;
        let (p50, p99, _) = pickup(&client, &mut events, N).await?;
        // The backlog is the dummy runners' alone.
        drop(runner);
        let (b, _runners) = backlog(&client, BACKLOG, || dummy_runner(&server)).await?;
        println!(
            "store    {name:<8} submit → first step running p50 {}  p99 {};  {BACKLOG} durable submits: {:.0} runs/s;  \
             backlog → 4 runners: dispatched {:.0} jobs/s, completed {:.0} jobs/s",
            ms(p50),
            ms(p99),
            b.submits,
            b.dispatched,
            b.completed
        );
    }
    Ok(())
}

/// Three replicas on one PostgreSQL: pickup latency with the client and the
/// runner on the leader and on a follower (one forwarding hop each way),
/// durable submits through a follower, and the time from a kill -9 of the
/// leader to the next accepted submit through a follower.
async fn replicas() -> Result<()> {
    const N: usize = 200;
    const BACKLOG: usize = 20_000;
    let postgres = crate::setup::PostgresServer::start()?;
    let url = format!("{}/postgres", postgres.url);
    let keys = tempfile::tempdir()?;
    let key = keys.path().join("secret-key");
    let key_arg = key.display().to_string();
    let args = ["--store", url.as_str(), "--replica", "--secret-key-file", key_arg.as_str()];
    let mut leader = Server::start_with(&args);
    while !leader.data_dir().join("admin-token").exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let follower = Server::start_with(&args);
    let _third = Server::start_with(&args);
    let token = leader.admin_token();
    let registration = leader.data_dir().join("runner-token");
    let mut figures = Vec::new();
    for (name, server) in [("leader", &leader), ("follower", &follower)] {
        let runner = viaduct_tests::Runner::start_replicas(&server.url(), &registration, "linux", 1);
        let client = Client::connect_with(&server.url(), Some(token.clone()), &server.transport()).await?;
        let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
        let warm = submit(&client, "jobs:\n  warm:\n    steps:\n      - run: true\n").await?;
        until(&mut events, &warm, is_finished_run).await?;
        let (p50, p99, _) = pickup(&client, &mut events, N).await?;
        figures.push(format!("via the {name}: p50 {} p99 {}", ms(p50), ms(p99)));
        drop(runner);
    }
    // The backlog through a follower: submits, and runners connected there.
    let client = Client::connect_with(&follower.url(), Some(token.clone()), &follower.transport()).await?;
    let (b, runners) = backlog(&client, BACKLOG, || {
        viaduct_tests::Runner::start_replicas_with(&follower.url(), &registration, "linux", 512, &["--dummy-executor"])
    })
    .await?;
    drop(runners);
    leader.kill9();
    let t0 = Instant::now();
    let yaml = "jobs:\n  after:\n    steps:\n      - run: true\n";
    loop {
        match submit(&client, yaml).await {
            Ok(_) => break,
            Err(_) if t0.elapsed() < Duration::from_secs(60) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.context("no replica took over within 60 s")),
        }
    }
    let failover = t0.elapsed();
    println!(
        "replicas 3 on PostgreSQL: submit → first step running {}; through a follower: {BACKLOG} durable submits \
         (32 clients) {:.0} runs/s, backlog → 4 runners dispatched {:.0} jobs/s, completed {:.0} jobs/s; leader killed \
         -9 → next submit accepted through a follower: {}",
        figures.join(", "),
        b.submits,
        b.dispatched,
        b.completed,
        ms(failover)
    );
    Ok(())
}

/// Blobs on the local disk and in an S3 bucket (s3s-fs on loopback): a
/// 256 MiB artifact uploaded at the end of its job and downloaded by the
/// CLI, against the bare cost of writing the same bytes durably
/// (`dd conv=fsync`).
async fn blobs() -> Result<()> {
    const MIB: usize = 256;
    const RUNS: usize = 3;
    let s3 = crate::setup::S3Server::start()?;
    std::fs::create_dir_all(s3.root.join("bench"))?;
    let tmp = tempfile::tempdir()?;
    let secret = tmp.path().join("s3-secret");
    std::fs::write(&secret, &s3.secret_key)?;
    let spec = format!("s3://bench/ci?endpoint={}&access_key_id={}", s3.endpoint, s3.access_key);
    let secret_arg = secret.display().to_string();
    let sh = |script: &str| timed_shell(tmp.path(), script);
    sh(&format!("head -c {MIB}M /dev/urandom > big"))?;
    sync()?;
    let bare = sh("dd if=big of=copy bs=1M conv=fsync status=none")?;
    let mut figures = Vec::new();
    for (name, args) in [
        ("local", vec![]),
        ("s3", vec!["--blob-store", spec.as_str(), "--blob-store-secret-file", secret_arg.as_str()]),
    ] {
        let (server, _runner, client, mut events) = system_on(Server::start_with(&args)).await?;
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let id = submit(
                &client,
                &format!(
                    "jobs:
  a:
    artifacts: [big]
    steps:
      - run: head -c {MIB}M /dev/urandom > big
"
                ),
            )
            .await?;
            until(&mut events, &id, is_finished_run).await?;
            let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await?.into_inner();
            anyhow::ensure!(run.status == v1::Status::Success as i32, "bench run {id} did not succeed");
            let job = run.jobs.first().context("no job")?;
            let step_end = job.steps.last().and_then(|s| s.times.as_ref()).and_then(|t| t.finished_at.as_ref());
            let job_end = job.times.as_ref().and_then(|t| t.finished_at.as_ref());
            ups.push(Duration::from_millis(u64::try_from(ms_of(job_end) - ms_of(step_end)).unwrap_or(0)));
            sync()?;
            let out = tempfile::tempdir()?;
            let t0 = Instant::now();
            let got = server.cli().args(["artifacts", "get", &id, "big", "-o"]).arg(out.path()).output()?;
            anyhow::ensure!(got.status.success(), "download: {}", String::from_utf8_lossy(&got.stderr));
            downs.push(t0.elapsed());
        }
        let (up, _, _) = summary(ups);
        let (down, _, _) = summary(downs);
        let rate = |d: Duration| MIB as f64 / d.as_secs_f64();
        figures.push(format!(
            "{name}: upload {} ({:.0} MiB/s), download {} ({:.0} MiB/s)",
            ms(up),
            rate(up),
            ms(down),
            rate(down)
        ));
    }
    println!(
        "blobs    a {MIB} MiB artifact, p50 of {RUNS}: {}; bare dd conv=fsync {} ({:.0} MiB/s)",
        figures.join("; "),
        ms(bare),
        MIB as f64 / bare.as_secs_f64()
    );
    Ok(())
}

/// Submit → first step running when the runner is made for the job by
/// `viaduct-autoscaler` (process provisioner, polling every 100 ms),
/// against an idle runner that is already connected.
async fn autoscaler() -> Result<()> {
    const N: usize = 20;
    let (server, runner, client, mut events) = system().await?;
    let (idle50, _, _) = pickup(&client, &mut events, N).await?;
    drop(runner);
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("admin-token");
    std::fs::write(&token, server.admin_token())?;
    let mut scaler = std::process::Command::new(viaduct_tests::bin("viaduct-autoscaler"))
        .args(["--server", &server.url(), "--interval", "100ms", "--runner-arg=--no-containers", "--token-file"])
        .arg(&token)
        .arg("--runner-bin")
        .arg(viaduct_tests::bin("viaduct-runner"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Wait until the idle runner has left the fleet.
    while !client.runners().list(v1::ListRunnersRequest {}).await?.into_inner().runners.iter().all(|r| !r.connected) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = pickup(&client, &mut events, N).await;
    let _ = scaler.kill();
    let _ = scaler.wait();
    let (p50, p99, _) = result?;
    println!(
        "autoscaler  submit → first step running, a runner started for the job (process, 100 ms poll; {N} runs): p50 {}  p99 {}  (an idle connected runner: p50 {})",
        ms(p50),
        ms(p99),
        ms(idle50)
    );
    Ok(())
}

/// Latency under a paced load (see [`paced`]).
struct Paced {
    /// Submit → its first step running: p50, p99.
    running: (Duration, Duration),
    /// Submit → acknowledged (durable): p50, p99.
    acknowledged: (Duration, Duration),
    /// Runs submitted per second.
    achieved: f64,
    /// Submit → its first step running during the warm-up (if any): p99.
    warm_up_p99: Option<Duration>,
}

/// Submits no-op runs at `rate` per second: for `warm_up` first, not
/// counted, then for `secs`, counted. (Started cold, the first second
/// also measured the phase before it: it held the largest cluster of late
/// pickups in 7 of 8 runs.)
async fn paced(client: &Client, rate: u32, warm_up: Duration, secs: Duration) -> Result<Paced> {
    let warm = (f64::from(rate) * warm_up.as_secs_f64()) as usize;
    let n = warm + (f64::from(rate) * secs.as_secs_f64()) as usize;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let watcher = tokio::spawn(async move {
        let mut running = std::collections::HashMap::new();
        while running.len() < n {
            let Some(Ok(ev)) = events.next().await else { break };
            if ev.change.as_ref().is_some_and(is_running_step) {
                running.entry(ev.run_id.clone()).or_insert_with(Instant::now);
            }
        }
        running
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut counted_from = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let due = tick.tick().await;
        if i == warm {
            // From when its first submit was due, not sent: a burst
            // catching up on a warm-up that fell behind does not inflate
            // the rate achieved.
            counted_from = due.into_std();
        }
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = v1::SubmitRequest {
                source: Some(v1::submit_request::Source::Job(v1::InlineJob {
                    name: "noop".into(),
                    steps: vec![v1::InlineStep { run: "true".into(), ..Default::default() }],
                    ..Default::default()
                })),
                ..Default::default()
            };
            let start = Instant::now();
            let id = client.runs().submit(req).await?.into_inner().run_id;
            anyhow::Ok((id, start, start.elapsed()))
        }));
    }
    let mut submitted = Vec::with_capacity(n);
    for t in tasks {
        submitted.push(t.await??);
    }
    let achieved = (n - warm) as f64 / counted_from.elapsed().as_secs_f64();
    let running = tokio::time::timeout(Duration::from_secs(60), watcher).await.context("runs did not start")??;
    let lat: Vec<Duration> =
        submitted.iter().filter_map(|(id, t, _)| running.get(id).map(|r| r.saturating_duration_since(*t))).collect();
    anyhow::ensure!(lat.len() == n, "only {} of {n} runs started", lat.len());
    let warm_up_p99 = (warm > 0).then(|| summary(lat[..warm].to_vec()).1);
    let (p50, p99, _) = summary(lat[warm..].to_vec());
    let (a50, a99, _) = summary(submitted[warm..].iter().map(|(_, _, acked)| *acked).collect());
    Ok(Paced { running: (p50, p99), acknowledged: (a50, a99), achieved, warm_up_p99 })
}

fn git(dir: &std::path::Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "Bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()?;
    anyhow::ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// The run started by the next push: waits on `events` for its job to start
/// (assignment) and its first step to run; returns (run id, push → step
/// running, job start → step running = checkout).
async fn next_pushed_run(
    events: &mut tonic::Streaming<v1::RunEvent>,
    t0: Instant,
) -> Result<(String, Duration, Duration)> {
    let mut job_started = None;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        match &ev.change {
            Some(v1::run_event::Change::Job(j)) if j.status == v1::Status::Running as i32 => {
                job_started.get_or_insert_with(Instant::now);
            }
            Some(c) if is_running_step(c) => {
                let now = Instant::now();
                return Ok((ev.run_id.clone(), now - t0, now - job_started.unwrap_or(now)));
            }
            _ => {}
        }
    }
    anyhow::bail!("the event stream ended")
}

fn ms_of(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Server-side time from a run's job being assigned to its first step
/// starting: the runner's checkout.
async fn checkout_time(client: &Client, id: &str) -> Result<Duration> {
    let run = client.runs().get(v1::GetRunRequest { id: id.to_string() }).await?.into_inner();
    let job = run.jobs.first().context("no job")?;
    let assigned = ms_of(job.times.as_ref().and_then(|t| t.started_at.as_ref()));
    let step = ms_of(job.steps.first().and_then(|s| s.times.as_ref()).and_then(|t| t.started_at.as_ref()));
    Ok(Duration::from_millis(u64::try_from(step - assigned).unwrap_or(0)))
}

/// Push → first step running for a hosted repository, and the time to get
/// a 50 MB source tree into a runner's workspace.
async fn git_push() -> Result<()> {
    const PUSHES: usize = 30;
    let (server, _runner, client, mut events) = system().await?;
    let repo = client
        .repos()
        .create(v1::CreateRepoRequest {
            name: "bench".into(),
            source: Some(v1::create_repo_request::Source::Hosted(v1::HostedRepo::default())),
        })
        .await?
        .into_inner();
    let wt = tempfile::tempdir()?;
    let dir = wt.path();
    git(dir, &["init", "-q", "-b", "main"])?;
    std::fs::create_dir_all(dir.join(".viaduct"))?;
    std::fs::write(
        dir.join(".viaduct/pipeline.yml"),
        "on: { push: {}, manual: {} }\njobs:\n  j:\n    steps:\n      - run: true\n",
    )?;
    let http_url = repo.clone_url.replace("http://", &format!("http://bench:{}@", server.admin_token()));
    for (label, url) in [("filesystem", repo.path.clone()), ("smart HTTP", http_url)] {
        let mut samples = Vec::with_capacity(PUSHES);
        for i in 0..PUSHES {
            std::fs::write(dir.join("n"), format!("{i}"))?;
            git(dir, &["add", "-A"])?;
            git(dir, &["commit", "-qm", "bench"])?;
            let t0 = Instant::now();
            git(dir, &["push", "-q", &url, "main"])?;
            let (id, latency, _) = next_pushed_run(&mut events, t0).await?;
            samples.push(latency);
            until(&mut events, &id, is_finished_run).await?;
        }
        let (p50, p99, _) = summary(samples);
        println!("git      push ({label}) → first step running: p50 {}  p99 {}  ({PUSHES} pushes)", ms(p50), ms(p99));
    }

    // A 50 MB tree: 400 files of 128 KiB of varied text.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    std::fs::create_dir_all(dir.join("data"))?;
    for f in 0..400 {
        let mut text = String::with_capacity(131_072);
        while text.len() < 131_072 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(&format!("{seed:016x} line {f}\n"));
        }
        std::fs::write(dir.join("data").join(format!("f{f:03}.txt")), &text[..131_072])?;
    }
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-qm", "50 MB"])?;
    let t0 = Instant::now();
    git(dir, &["push", "-q", &repo.path, "main"])?;
    let (id, _, _) = next_pushed_run(&mut events, t0).await?;
    until(&mut events, &id, is_finished_run).await?;
    let cold = checkout_time(&client, &id).await?;
    let req = v1::TriggerRequest { repo: "bench".into(), ..Default::default() };
    let id = client.runs().trigger(req).await?.into_inner().run_id;
    until(&mut events, &id, is_finished_run).await?;
    let warm = checkout_time(&client, &id).await?;
    let archive: u64 = std::fs::read_dir(server.data_dir().join("sources/bench"))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    println!(
        "git      50 MB tree (400 files) into a runner workspace: first time {} (archive built, {:.1} MB zstd), cached {}",
        ms(cold),
        archive as f64 / 1e6,
        ms(warm)
    );
    Ok(())
}

/// Container jobs through Podman: job start with the image present, the
/// marginal cost of a step in the running container, against a host step
/// and against `podman exec`.
async fn containers() -> Result<()> {
    const RUNS: usize = 15;
    let conf = crate::setup::podman()?;
    let podman = crate::setup::PodmanService::start(&conf, None)?;
    let image = crate::setup::TEST_IMAGE;
    let server = Server::start();
    let socket = podman.socket.display().to_string();
    let _runner = viaduct_tests::Runner::start(&server, "linux", 1, &["--container-socket", &socket]);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let warm = submit(&client, &format!("jobs:\n  w:\n    image: {image}\n    steps:\n      - run: true\n")).await?;
    until(&mut events, &warm, is_finished_run).await?;

    // Job start: assigned → first step running (server-side times).
    let mut starts = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let id = submit(&client, &format!("jobs:\n  j:\n    image: {image}\n    steps:\n      - run: true\n")).await?;
        until(&mut events, &id, is_finished_run).await?;
        starts.push(checkout_time(&client, &id).await?);
    }
    let (start50, start99, _) = summary(starts);
    let ten = job_of_steps(&client, &mut events, 10, RUNS, Some(image)).await?;
    let one = job_of_steps(&client, &mut events, 1, RUNS, Some(image)).await?;
    let container_step = ten.saturating_sub(one) / 9;
    let host_ten = job_of_steps(&client, &mut events, 10, RUNS, None).await?;
    let host_one = job_of_steps(&client, &mut events, 1, RUNS, None).await?;
    let host_step = host_ten.saturating_sub(host_one) / 9;

    // Plain `podman exec` into a running container.
    let podman_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new("podman");
        c.args(args)
            .env("CONTAINERS_CONF", &conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let name = format!("viaduct-bench-{}", std::process::id());
    anyhow::ensure!(
        podman_cmd(&["run", "-d", "--name", &name, image, "sleep", "600"]).status()?.success(),
        "podman run failed"
    );
    let mut execs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        podman_cmd(&["exec", &name, "true"]).status()?;
        execs.push(t0.elapsed());
    }
    let _ = podman_cmd(&["rm", "-f", &name]).status();
    let (exec50, _, _) = summary(execs);
    println!(
        "containers  job start (image present, container created and started): p50 {} p99 {}",
        ms(start50),
        ms(start99)
    );
    println!(
        "containers  each step in a running job container {} vs a host step {} (overhead {}); `podman exec … true` {}",
        ms(container_step),
        ms(host_step),
        ms(container_step.saturating_sub(host_step)),
        ms(exec50)
    );
    Ok(())
}

/// Runner-reported duration of the step of run `id`'s first job named `name`.
async fn step_time(client: &Client, id: &str, name: &str) -> Result<Duration> {
    let run = client.runs().get(v1::GetRunRequest { id: id.to_string() }).await?.into_inner();
    anyhow::ensure!(run.status == v1::Status::Success as i32, "bench run {id} did not succeed");
    let job = run.jobs.first().context("no job")?;
    let step = job.steps.iter().find(|s| s.name == name).with_context(|| format!("no step {name:?}"))?;
    let t = step.times.as_ref().context("no step times")?;
    let d = ms_of(t.finished_at.as_ref()) - ms_of(t.started_at.as_ref());
    Ok(Duration::from_millis(u64::try_from(d).unwrap_or(0)))
}

/// Runs `sh -e -c script` in `dir`; how long it took (its error output
/// in the error when it fails).
fn timed_shell(dir: &std::path::Path, script: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let out = std::process::Command::new("sh").args(["-e", "-c", script]).current_dir(dir).output()?;
    anyhow::ensure!(out.status.success(), "`{script}` failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(t0.elapsed())
}

/// Flushes dirty pages to disk, so a timed step does not pay for the
/// writes of the one before.
fn sync() -> Result<()> {
    anyhow::ensure!(std::process::Command::new("sync").status()?.success(), "sync failed");
    Ok(())
}

/// A real crate's own test suite through server and runner, against the
/// same commands in a shell: `viaduct-pipeline` (this repository's pipeline
/// file format, with its dependencies from the registry) from this
/// repository's HEAD. Cold: an empty target dir. Warm: the target dir
/// restored by `cache@1` from an earlier run; directly, an earlier run's
/// target dir moved in (free). Sources are copied anew each time (new file
/// times, as a checkout gives), so a warm run rebuilds the crate itself
/// but none of its dependencies, as CI does. Also the cold run's log (a
/// real `cargo test -v`) as stored and packed.
async fn real_crate() -> Result<()> {
    const WARM: usize = 3;
    let prep = tempfile::tempdir()?;
    let sh = timed_shell;
    sh(prep.path(), &format!("git -C {} archive HEAD | tar -xf -", crate::root().display()))?;
    let copy = format!("cp -r {}/. .", prep.path().display());
    let test = "cargo test --offline -v -p viaduct-pipeline 2>&1";

    let plugins = viaduct_tests::plugins_dir().display().to_string();
    let server = Server::start_with(&["--plugins-dir", &plugins]);
    // Jobs as the runner's user (this machine's toolchain is in root's
    // home), with the toolchain's variables.
    let home = |var: &str, dir: &str| {
        std::env::var(var).unwrap_or_else(|_| format!("{}/{dir}", std::env::var("HOME").unwrap_or_default()))
    };
    let (cargo_home, rustup_home) = (
        format!("CARGO_HOME={}", home("CARGO_HOME", ".cargo")),
        format!("RUSTUP_HOME={}", home("RUSTUP_HOME", ".rustup")),
    );
    let toolchain =
        ["--shared-job-user", "--inherit-env", "PATH", "--env", cargo_home.as_str(), "--env", rustup_home.as_str()];
    let _runner = viaduct_tests::Runner::start(&server, "linux", 1, &toolchain);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();

    // Cold, and its log.
    let packed_before = server.metric("viaduct_logs_packed_total");
    let (raw0, packed0) = (
        server.metric("viaduct_log_bytes_packed_total{form=\"log\"}"),
        server.metric("viaduct_log_bytes_packed_total{form=\"packed\"}"),
    );
    let cold =
        through(&client, &mut events, format!("jobs:\n  test:\n    steps:\n      - run: {copy} && {test}\n")).await?.1;
    viaduct_tests::eventually("the log packed", || async {
        (server.metric("viaduct_logs_packed_total") > packed_before).then_some(())
    })
    .await;
    let raw = server.metric("viaduct_log_bytes_packed_total{form=\"log\"}") - raw0;
    let packed = server.metric("viaduct_log_bytes_packed_total{form=\"packed\"}") - packed0;
    let mut dirs = vec![tempfile::tempdir()?];
    let cold_direct = sh(dirs[0].path(), &format!("{copy} && {test} > /dev/null"))?;

    // Warm: the first cached run misses and saves; the next ones restore.
    let cached = format!(
        "jobs:\n  test:\n    steps:\n      - run: {copy}\n      - name: cache\n        uses: cache@1\n        \
         with: {{ key: crate, key_files: [], paths: [target] }}\n      - run: {test}\n"
    );
    through(&client, &mut events, cached.clone()).await?;
    let (mut warm, mut warm_direct) = (Vec::new(), Vec::new());
    for _ in 0..WARM {
        warm.push(through(&client, &mut events, cached.clone()).await?.1);
        let next = tempfile::tempdir()?;
        let moved = format!(
            "{copy} && mv {}/target . && {test} > /dev/null",
            dirs.last().map(|d| d.path().display().to_string()).unwrap_or_default()
        );
        warm_direct.push(sh(next.path(), &moved)?);
        dirs.push(next);
    }
    let (warm, _, _) = summary(warm);
    let (warm_direct, _, _) = summary(warm_direct);
    println!(
        "crate    viaduct-pipeline's test suite, submission to finished run: cold {} vs direct {} ({:+.1} %); \
         warm (p50 of {WARM}) {} vs direct {} ({:+.1} %); its cold log (cargo test -v) {:.1} KB packed to {:.1} KB ({:.1}×)",
        ms(cold),
        ms(cold_direct),
        (cold.as_secs_f64() / cold_direct.as_secs_f64() - 1.0) * 100.0,
        ms(warm),
        ms(warm_direct),
        (warm.as_secs_f64() / warm_direct.as_secs_f64() - 1.0) * 100.0,
        raw as f64 / 1e3,
        packed as f64 / 1e3,
        raw as f64 / packed.max(1) as f64,
    );
    Ok(())
}

/// Submits `yaml` and waits for its run to succeed: (run id, time taken
/// from the submission to the finished run seen).
async fn through(
    client: &Client,
    events: &mut tonic::Streaming<v1::RunEvent>,
    yaml: String,
) -> Result<(String, Duration)> {
    let t0 = Instant::now();
    let id = submit(client, &yaml).await?;
    until(events, &id, is_finished_run).await?;
    let took = t0.elapsed();
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await?.into_inner();
    anyhow::ensure!(run.status == v1::Status::Success as i32, "bench run {id} did not succeed");
    Ok((id, took))
}

/// A fresh ext4 filesystem (journaled, as on a build machine) in a
/// loop-mounted image, for the cache benchmark. This VM's root filesystem
/// is ext4 without a journal, where for a minute after files are deleted
/// every file created scans the recently deleted inodes (`recently_deleted`
/// in the kernel's profile): creating 20,000 files takes 8 s of system time
/// instead of 0.5 s, for `tar -x` as for the runner, drowning what is
/// measured. Without root it is a plain temp dir, and says so.
struct Scratch {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl Scratch {
    fn ext4(size: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (image, fs) = (dir.path().join("image"), dir.path().join("fs"));
        std::fs::create_dir(&fs)?;
        let ok = |cmd: &mut std::process::Command| cmd.output().is_ok_and(|o| o.status.success());
        let mounted = ok(std::process::Command::new("truncate").args(["-s", size]).arg(&image))
            && ok(std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))
            && ok(std::process::Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&fs));
        if !mounted {
            println!("cache    (cannot mount a scratch ext4 here: on {}, whose figures may be swamped)", fs.display());
        }
        Ok(Self { dir, mounted })
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("fs")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// The shell that makes the cache benchmark's data: `mib` MiB in files of
/// `file` bytes, half random (incompressible) and half text.
fn cache_data_script(mib: usize, file: usize) -> String {
    let half = mib / 2;
    format!(
        "mkdir -p data/random data/text && head -c {half}M /dev/urandom | (cd data/random && split -a 5 -b {file} - r_) \
         && yes 'fn main() {{ let source_like = text; }} // compresses well' | head -c {half}M | (cd data/text && split -a 5 -b {file} - t_)"
    )
}

/// Plugin steps end to end: the marginal cost of a `uses: noop` step
/// against a `run: true` step (caches: [`cache`]).
async fn plugins() -> Result<()> {
    const RUNS: usize = 20;
    let server = Server::with_plugins();
    server.publish_test_plugin("noop");
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    // Warm-up: the runner fetches and compiles the noop plugin once.
    let warm = submit(&client, "jobs:\n  w:\n    steps:\n      - uses: noop\n").await?;
    until(&mut events, &warm, is_finished_run).await?;

    let uses_ten = job_of(&client, &mut events, "uses: noop", 10, RUNS, None).await?;
    let uses_one = job_of(&client, &mut events, "uses: noop", 1, RUNS, None).await?;
    let run_ten = job_of(&client, &mut events, "run: true", 10, RUNS, None).await?;
    let run_one = job_of(&client, &mut events, "run: true", 1, RUNS, None).await?;
    let plugin_step = uses_ten.saturating_sub(uses_one) / 9;
    let shell_step = run_ten.saturating_sub(run_one) / 9;
    println!(
        "plugins  each further step: `uses: noop` {} vs `run: true` {} (a 10-step job: {} vs {})",
        ms(plugin_step),
        ms(shell_step),
        ms(uses_ten),
        ms(run_ten)
    );

    Ok(())
}

/// Caches end to end: the cache plugin's save (its post step) and restore
/// of a tree through server and runner, against bare `tar | zstd -1` and
/// `zstd -d | tar -x` of the same tree on this machine; at 200 MiB and
/// 1 GiB, in 10 KiB files and in a few large ones.
async fn cache() -> Result<()> {
    let scratch = Scratch::ext4("8G")?;
    let plugins = viaduct_tests::plugins_dir().display().to_string();
    let server = Server::start_in(tempfile::tempdir_in(scratch.path())?, &["--plugins-dir", &plugins], &[]);
    let _runner = viaduct_tests::Runner::start_in(tempfile::tempdir_in(scratch.path())?, &server, "linux", 1, &[], &[]);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    for (mib, file, runs) in [(200, 10 << 10, 3), (200, 50 << 20, 3), (1024, 10 << 10, 1), (1024, 256 << 20, 1)] {
        let script = cache_data_script(mib, file);
        let cache =
            "name: cache\n        uses: cache@1\n        with: { key: bench-KEY, key_files: [], paths: [data] }";
        let (mut saves, mut restores) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let step = cache.replace("KEY", &format!("{mib}-{file}-{i}"));
            let save = submit(
                &client,
                &format!("jobs:\n  save:\n    steps:\n      - {step}\n      - run: |\n          {script}\n"),
            )
            .await?;
            until(&mut events, &save, is_finished_run).await?;
            saves.push(step_time(&client, &save, "Post cache").await?);
            // Written-back first: the save job's dirty pages would
            // otherwise be flushed during (and charged to) the restore.
            sync()?;
            let restore = submit(&client, &format!("jobs:\n  restore:\n    steps:\n      - {step}\n")).await?;
            until(&mut events, &restore, is_finished_run).await?;
            restores.push(step_time(&client, &restore, "cache").await?);
            sync()?;
        }
        let (save50, _, _) = summary(saves);
        let (restore50, _, _) = summary(restores);

        // Bare: the same tree through tar and zstd -1 on the same disk.
        let tmp = tempfile::tempdir_in(scratch.path())?;
        let sh = |script: &str| timed_shell(tmp.path(), script);
        sh(&script)?;
        sync()?;
        // Made durable, as the server makes a saved cache before it answers.
        let bare_pack = sh("tar -cf - data | zstd -q -1 -o data.tar.zst && sync data.tar.zst")?;
        sh("rm -rf data")?;
        sync()?;
        let bare_unpack = sh("zstd -q -dc data.tar.zst | tar -xf -")?;
        sync()?;
        let packed = std::fs::metadata(tmp.path().join("data.tar.zst"))?.len();
        let shape =
            if file < 1 << 20 { format!("{} KiB files", file >> 10) } else { format!("{} MiB files", file >> 20) };
        println!(
            "cache    {mib} MiB in {shape} (half random, half text; {:.0} MiB packed): \
             save {} ({:.0} MiB/s) vs bare tar | zstd -1 && sync {} ({:.2}×); restore {} ({:.0} MiB/s) vs bare zstd -d | tar -x {} ({:.2}×)",
            packed as f64 / 1048576.0,
            ms(save50),
            mib as f64 / save50.as_secs_f64(),
            ms(bare_pack),
            save50.as_secs_f64() / bare_pack.as_secs_f64(),
            ms(restore50),
            mib as f64 / restore50.as_secs_f64(),
            ms(bare_unpack),
            restore50.as_secs_f64() / bare_unpack.as_secs_f64(),
        );
    }
    Ok(())
}

/// Workspace snapshots: first in-process (the runner's `snapshots` bench:
/// take and restore of a ~1 GiB tree against `tar | zstd -1` and back),
/// then end to end: a job with `snapshots: true` whose step 1 makes the
/// same kind of tree (`VIADUCT_BENCH_SNAPSHOT_MB`, default 1024), step 2
/// changes one file and step 3 fails, against the same job without
/// snapshots (the difference per step is what its snapshot cost); then
/// the retry from the failed step (its workspace restored) against a plain
/// retry (steps 1 and 2 run again), from the call to step 3 running. On a
/// scratch ext4, as [`cache`].
async fn snapshots() -> Result<()> {
    crate::run(cargo().args(["bench", "-p", "viaduct-runner", "--bench", "snapshots"]))?;
    let mb: usize = std::env::var("VIADUCT_BENCH_SNAPSHOT_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let scratch = Scratch::ext4("16G")?;
    let server = Server::start_in(tempfile::tempdir_in(scratch.path())?, &[], &[]);
    let runner = viaduct_tests::Runner::start_in(tempfile::tempdir_in(scratch.path())?, &server, "linux", 1, &[], &[]);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let tree = snapshot_tree_script(mb);
    let mut runs = Vec::new();
    for snapshots in [true, false] {
        let yaml = snapshot_job(snapshots, &tree);
        let id = submit(&client, &yaml).await?;
        until(&mut events, &id, is_finished_run).await?;
        sync()?;
        let steps = step_durations(&client, &id, snapshots).await?;
        runs.push((id, steps));
    }
    let saved = saved_ms(&runner.log());
    let [(with, s), (without, p)] = <[_; 2]>::try_from(runs).map_err(|_| anyhow::anyhow!("two runs"))?;

    let resume = v1::RetryFrom { job: String::new(), step: 0 };
    let resumed = retried(&client, &mut events, &with, Some(resume)).await?;
    let run = client.runs().get(v1::GetRunRequest { id: with.clone() }).await?.into_inner();
    let restored = run.jobs.first().is_some_and(|j| j.steps.iter().take(2).all(|s| s.restored_from > 0));
    anyhow::ensure!(restored, "the retry of {with} did not restore steps 1 and 2: {run:#?}");
    let plain = retried(&client, &mut events, &without, None).await?;
    let plain_with = retried(&client, &mut events, &with, None).await?;

    let line = |what: &str, took: Duration, vs: Option<Duration>| {
        let diff = vs.map_or(String::new(), |v| {
            format!(
                "{:>+10.0} ms ({:+.1} %)",
                (took.as_secs_f64() - v.as_secs_f64()) * 1e3,
                (took.as_secs_f64() / v.as_secs_f64() - 1.0) * 100.0
            )
        });
        println!("snapshots  {what:<62} {:>10}  {diff}", ms(took));
    };
    println!("snapshots  end to end, a tree of ~{mb} MiB made by step 1 (step times as recorded):");
    line("step 1 (makes the tree), without snapshots", p[0], None);
    line("step 1 with snapshots: its first snapshot (everything new)", s[0], Some(p[0]));
    line("step 2 (rewrites one 1 MiB file), without snapshots", p[1], None);
    line("step 2 with snapshots: an incremental snapshot", s[1], Some(p[1]));
    if !saved.is_empty() {
        let saved: Vec<String> = saved.iter().map(|m| format!("{m} ms")).collect();
        println!("snapshots  the runner's `snapshot saved` times: {}", saved.join(", "));
    }
    println!("snapshots  Runs.Retry → step 3 running:");
    line("plain retry of the job without snapshots (steps 1–2 again)", plain, None);
    line("retry from the failed step (workspace restored)", resumed, Some(plain));
    line("plain retry of the job with snapshots (steps 1–2 and snapshots)", plain_with, Some(plain));
    Ok(())
}

/// Shell making a build-like tree of about `mb` MiB in the workspace:
/// files of 1 MiB in nested directories, half random and half text (each
/// its own), and five times as many small files (6 KiB random, 3 KiB text).
fn snapshot_tree_script(mb: usize) -> String {
    let big = (mb * 1000 / 1024).max(2);
    let dirs = (big / 100).max(1);
    let per = (big / dirs / 2).max(1);
    let small = per * 5;
    let text = |file: &str| {
        format!(
            r#"awk -v f="{file}" 'BEGIN {{ for (n = 0; n < 30000; n++) printf "    let value_%d = compute(&items[%d], \"%s\")?; // line %d\n", n, n % 97, f, n }}'"#
        )
    };
    format!(
        "for d in $(seq 1 {dirs}); do\n\
         \x20 mkdir -p assets/g$d/a assets/g$d/b target/debug/c$d/deps target/debug/c$d/src\n\
         \x20 for j in $(seq 1 {per}); do\n\
         \x20   head -c 1048576 /dev/urandom > assets/g$d/a/f$j.bin\n\
         \x20   {} | head -c 1048576 > assets/g$d/b/f$j.txt\n\
         \x20 done\n\
         \x20 head -c $(({small} * 6144)) /dev/urandom | (cd target/debug/c$d/deps && split -a 4 -b 6144 - o_)\n\
         \x20 {} | head -c $(({small} * 3072)) | (cd target/debug/c$d/src && split -a 4 -b 3072 - s_)\n\
         done\n",
        text("$d.$j"),
        text("small $d"),
    )
}

/// The benchmark's job: step 1 runs `tree`, step 2 rewrites one large
/// file, step 3 fails.
fn snapshot_job(snapshots: bool, tree: &str) -> String {
    let mut yaml = String::from(if snapshots { "snapshots: true\n" } else { "" });
    yaml.push_str("jobs:\n  j:\n    steps:\n      - run: |\n");
    for line in tree.lines() {
        yaml.push_str(&format!("          {line}\n"));
    }
    yaml.push_str("      - run: head -c 1048576 /dev/urandom > assets/g1/a/f1.bin\n      - run: exit 1\n");
    yaml
}

/// The recorded durations of the steps of run `id`'s first job, which
/// must have failed at step 3 (and kept snapshots after steps 1 and 2 when
/// `snapshots`).
async fn step_durations(client: &Client, id: &str, snapshots: bool) -> Result<Vec<Duration>> {
    let run = client.runs().get(v1::GetRunRequest { id: id.to_string() }).await?.into_inner();
    let job = run.jobs.first().context("no job")?;
    let outcome: Vec<(i32, bool)> = job.steps.iter().map(|s| (s.status, s.snapshot)).collect();
    let (ok, failed) = (v1::Status::Success as i32, v1::Status::Failure as i32);
    anyhow::ensure!(
        outcome == [(ok, snapshots), (ok, snapshots), (failed, false)],
        "bench run {id} did not go as planned: {job:#?}"
    );
    Ok(job
        .steps
        .iter()
        .map(|s| {
            let t = s.times.unwrap_or_default();
            let d = ms_of(t.finished_at.as_ref()) - ms_of(t.started_at.as_ref());
            Duration::from_millis(u64::try_from(d).unwrap_or(0))
        })
        .collect())
}

/// Retries run `id` (resuming `from` a snapshot, or whole): the time from
/// the call to step 3 of the new attempt running; then waits for the run
/// to end.
async fn retried(
    client: &Client,
    events: &mut tonic::Streaming<v1::RunEvent>,
    id: &str,
    from: Option<v1::RetryFrom>,
) -> Result<Duration> {
    let t0 = Instant::now();
    client.runs().retry(v1::RetryRunRequest { id: id.to_string(), from, ..Default::default() }).await?;
    let third = |c: &v1::run_event::Change| matches!(c, v1::run_event::Change::Step(s) if s.index == 3 && s.attempt > 1 && s.status == v1::Status::Running as i32);
    until(events, id, third).await?;
    let took = t0.elapsed();
    until(events, id, is_finished_run).await?;
    sync()?;
    Ok(took)
}

/// The times the runner logged for the snapshots it saved (`snapshot
/// saved … ms=N`), in ms.
fn saved_ms(log: &str) -> Vec<u64> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("snapshot saved"))
        .filter_map(|l| {
            let after = l.rsplit_once("ms=")?.1;
            after.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect()
}

/// `line` without its terminal escape sequences (`ESC [ … letter`): the
/// runners of `--bin-dir` builds before bcdf7c1 coloured their logs.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The web UI in headless Chromium on loopback: time to the first paint
/// (the boot screen) and to the first meaningful paint (the runs list with
/// its rows), cold (empty HTTP cache) and warm; and a finished log of
/// 100,000 lines, from navigation to its last line on screen.
async fn ui() -> Result<()> {
    use viaduct_tests::browser::{Browser, Driver, ui_dir, wait_for_js};
    const LOADS: usize = 10;
    let ui = ui_dir();
    let server = Server::start_with(&["--ui-dir", &ui.display().to_string()]);
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let mut last = String::new();
    for _ in 0..20 {
        last = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await?;
    }
    until(&mut events, &last, is_finished_run).await?;
    let big = submit(&client, "jobs:\n  log:\n    steps:\n      - run: seq 1 100000 | sed 's/^/line /'\n").await?;
    until(&mut events, &big, is_finished_run).await?;
    let token = server.admin_token();
    let url = server.url();
    // One page load: (first contentful paint, runs list with rows), in ms
    // since navigation started.
    async fn load(c: &Driver, url: &str) -> (f64, f64) {
        c.goto(&format!("{url}/")).await.expect("open runs");
        wait_for_js(c, "the runs list", "document.querySelector('[data-run-id]')").await;
        let meaningful = c.execute("return performance.now();", vec![]).await.expect("js");
        let first = c
            .execute(
                "return (performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint') || {}).startTime || 0;",
                vec![],
            )
            .await
            .expect("js");
        (first.as_f64().unwrap_or(0.0), meaningful.as_f64().unwrap_or(0.0))
    }
    // Signs in without loading the app (so the first load is cold): the
    // token goes into the origin's storage from a plain-text page.
    async fn sign_in(c: &Driver, url: &str, token: &str) {
        c.goto(&format!("{url}/healthz")).await.expect("open");
        c.execute(&format!("localStorage.setItem('viaduct.token', '{token}');"), vec![]).await.expect("js");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..LOADS {
        // Cold: a new browser profile, so nothing is cached.
        let (tx, url, token) = (tx.clone(), url.clone(), token.clone());
        Browser::run(|c| async move {
            sign_in(&c, &url, &token).await;
            let cold = load(&c, &url).await;
            let warm = load(&c, &url).await;
            let _ = tx.send((cold, warm));
        })
        .await;
    }
    let (cold, warm): (Vec<_>, Vec<_>) = rx.try_iter().unzip();
    let (tx, rx) = std::sync::mpsc::channel();
    Browser::run(|c| async move {
        sign_in(&c, &url, &token).await;
        c.goto(&format!("{url}/runs/{big}/jobs/{big}.1")).await.expect("open log");
        wait_for_js(
            &c,
            "the last of 100,000 lines",
            "[...document.querySelectorAll('#log .log-line .lt')].some(l => l.textContent.trim() === 'line 100000')",
        )
        .await;
        let log = c.execute("return performance.now();", vec![]).await.expect("js");
        let rows = c.execute("return document.querySelectorAll('#log .log-line').length;", vec![]).await.expect("js");
        let _ = tx.send((log.as_f64().unwrap_or(0.0), rows.as_u64().unwrap_or(0)));
    })
    .await;
    let (log, rows) = rx.recv()?;
    let p50 = |v: &[(f64, f64)], pick: fn(&(f64, f64)) -> f64| {
        let mut xs: Vec<f64> = v.iter().map(pick).collect();
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    println!(
        "ui  first paint (boot screen) p50: cold {:.0} ms, warm {:.0} ms; first meaningful paint (runs list with rows) p50: cold {:.0} ms, warm {:.0} ms ({LOADS} loads each)",
        p50(&cold, |s| s.0),
        p50(&warm, |s| s.0),
        p50(&cold, |s| s.1),
        p50(&warm, |s| s.1),
    );
    println!("ui  log of 100,000 lines: navigation → last line on screen {log:.0} ms; {rows} line rows in the DOM");
    Ok(())
}

/// `ssh-deploy` to two `sshd`s on loopback through a protected environment:
/// from the approval to the first host's switch (the plugin's
/// `first_switched_ms`), and the job's parts (approval → assigned → step
/// started → switched), against the bare cost of the same work from here:
/// `ssh mkdir`, `scp -r` and `ssh ln && mv` to one host.
async fn deploy() -> Result<()> {
    use viaduct_tests::sshd::Sshd;
    const ROUNDS: usize = 10;
    let at = std::env::temp_dir().join(format!("viaduct-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&at)?;
    let (Some(a), Some(b)) = (Sshd::start_isolated(&at), Sshd::start_isolated(&at)) else {
        println!("deploy     skipped: needs root and sshd (cargo xtask setup)");
        return Ok(());
    };
    b.authorize_key_of(&a);
    let server = Server::with_plugins();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let repo = client
        .repos()
        .create(v1::CreateRepoRequest {
            name: "site".into(),
            source: Some(v1::create_repo_request::Source::Hosted(v1::HostedRepo::default())),
        })
        .await?
        .into_inner();
    let vars = [
        ("DEPLOY_HOSTS".to_string(), format!("{},{}", a.login(), b.login())),
        ("SSH_KNOWN_HOSTS".to_string(), format!("{}{}", a.known_hosts(), b.known_hosts())),
    ];
    client
        .environments()
        .put(v1::PutEnvironmentRequest {
            repo: "site".into(),
            name: "production".into(),
            rules: Some(v1::EnvironmentRules { approval_role: v1::Role::Maintain as i32, ..Default::default() }),
            variables: vars.into_iter().collect(),
            ..Default::default()
        })
        .await?;
    let scope =
        v1::SecretScope { repos: vec!["site".into()], environments: vec!["production".into()], ..Default::default() };
    let key = a.client_key();
    client
        .secrets()
        .set(v1::SetSecretRequest { name: "SSH_PRIVATE_KEY".into(), value: key.clone(), scope: Some(scope) })
        .await?;
    let wt = tempfile::tempdir()?;
    let dir = wt.path();
    git(dir, &["init", "-q", "-b", "main"])?;
    std::fs::create_dir_all(dir.join(".viaduct"))?;
    std::fs::create_dir_all(dir.join("site"))?;
    let pipeline = format!(
        "on: {{ push: {{ branches: [main] }} }}\njobs:\n  ship:\n    environment: production\n    secrets: \
         [SSH_PRIVATE_KEY]\n    steps:\n      - uses: ssh-deploy@1\n        allow: {{ secrets: [SSH_PRIVATE_KEY] }}\n        with:\n          source: site\n          \
         hosts: ${{{{ env.DEPLOY_HOSTS }}}}\n          path: {}\n          max_unavailable: 1\n          keep: 3\n",
        at.display()
    );
    std::fs::write(dir.join(".viaduct/pipeline.yml"), pipeline)?;
    let mut events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let (mut total, mut assigned, mut started, mut switched) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..=ROUNDS {
        std::fs::write(dir.join("site/index.html"), format!("<p>release {i}</p>\n"))?;
        git(dir, &["add", "-A"])?;
        git(dir, &["commit", "-qm", "bench"])?;
        git(dir, &["push", "-q", &repo.path, "main"])?;
        let (id, job) = loop {
            let runs = client
                .runs()
                .list(v1::ListRunsRequest { repo: "site".into(), ..Default::default() })
                .await?
                .into_inner()
                .runs;
            let newest = runs.into_iter().next().context("the pushed run")?;
            let job = newest.jobs.first().cloned().unwrap_or_default();
            if job.deployment != 0 && newest.jobs.len() == 1 && job.status == v1::Status::Pending as i32 {
                break (newest.id, job);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let approved_ms = now_ms();
        client.deployments().approve(v1::ReviewDeploymentRequest { id: job.deployment, ..Default::default() }).await?;
        until(&mut events, &id, is_finished_run).await?;
        let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await?.into_inner();
        let step = &run.jobs[0].steps[0];
        anyhow::ensure!(run.status == v1::Status::Success as i32, "the deployment failed: {run:#?}");
        let at_ms =
            |t: Option<&prost_types::Timestamp>| t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        let first: i64 = step.outputs.get("first_switched_ms").context("first_switched_ms")?.parse()?;
        let job_started = at_ms(run.jobs[0].times.as_ref().and_then(|t| t.started_at.as_ref()));
        let step_started = at_ms(step.times.as_ref().and_then(|t| t.started_at.as_ref()));
        if i == 0 {
            continue; // warm-up: the plugin compiled, sshd and the page cache warm
        }
        let d = |from: i64, to: i64| Duration::from_millis(u64::try_from(to - from).unwrap_or(0));
        total.push(d(approved_ms, first));
        assigned.push(d(approved_ms, job_started));
        started.push(d(job_started, step_started));
        switched.push(d(step_started, first));
    }
    // The same work by hand: one host, from this process.
    let keyfile = tempfile::NamedTempFile::new()?;
    std::fs::write(keyfile.path(), &key)?;
    let known = tempfile::NamedTempFile::new()?;
    std::fs::write(known.path(), a.known_hosts())?;
    let port = a.login().rsplit(':').next().unwrap_or("22").to_string();
    let opts = |c: &mut std::process::Command| {
        c.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
        ])
        .arg("-o")
        .arg(format!("IdentityFile={}", keyfile.path().display()))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known.path().display()));
    };
    let mut bare = Vec::new();
    for i in 0..ROUNDS {
        let release = format!("bare-{i}-{}", now_ms());
        let t0 = Instant::now();
        let base = at.display().to_string();
        let mut mk = std::process::Command::new("ssh");
        opts(&mut mk);
        mk.args(["-p", &port, "root@127.0.0.1", &format!("mkdir -p {base}/releases/.tmp")]);
        anyhow::ensure!(mk.status()?.success(), "ssh mkdir");
        let mut cp = std::process::Command::new("scp");
        opts(&mut cp);
        cp.args(["-q", "-r", "-p", "-P", &port])
            .arg(dir.join("site"))
            .arg(format!("root@127.0.0.1:{base}/releases/{release}"));
        anyhow::ensure!(cp.status()?.success(), "scp");
        let mut sw = std::process::Command::new("ssh");
        opts(&mut sw);
        sw.args([
            "-p",
            &port,
            "root@127.0.0.1",
            &format!("cd {base} && ln -sfn releases/{release} .current-{release} && mv -T .current-{release} current"),
        ]);
        anyhow::ensure!(sw.status()?.success(), "ssh switch");
        bare.push(t0.elapsed());
    }
    let show = |what: &str, v: Vec<Duration>| {
        let (p50, p99, _) = summary(v);
        println!("deploy     {what:<58} p50 {:>10}  p99 {:>10}", ms(p50), ms(p99));
    };
    println!("deploy     ssh-deploy to 2 hosts on loopback, {ROUNDS} approved deployments:");
    show("approved → first host switched", total);
    show("  approved → job assigned to the runner", assigned);
    show("  job assigned → plugin step started (checkout)", started);
    show("  step started → first host switched (key, upload x2, switch)", switched);
    show("bare: ssh mkdir + scp -r + ssh ln && mv, one host, from here", bare);
    let _ = std::fs::remove_dir(&at);
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::{ffi::OsStr, path::Path};

    use super::without_cargo_dirs;

    #[test]
    fn only_the_users_own_library_directories_stay() {
        let target = Path::new("/w/target");
        let rustup = Some(Path::new("/root/.rustup"));
        let cargo = "/w/target/debug/deps:/w/target/debug/build/ring-1/out:/root/.rustup/toolchains/stable/lib";
        assert_eq!(without_cargo_dirs(OsStr::new(cargo), target, rustup), None);
        let mixed = format!("/opt/podman/lib:{cargo}:/usr/local/lib");
        assert_eq!(
            without_cargo_dirs(OsStr::new(&mixed), target, rustup).as_deref(),
            Some(OsStr::new("/opt/podman/lib:/usr/local/lib"))
        );
        // A sibling whose name only starts the same is not under the target.
        assert_eq!(
            without_cargo_dirs(OsStr::new("/w/target-other/lib"), target, None).as_deref(),
            Some(OsStr::new("/w/target-other/lib"))
        );
    }
}
