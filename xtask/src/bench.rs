//! `cargo xtask bench`: end-to-end benchmarks against release builds of the
//! real binaries on loopback, each compared with the bare cost of the same
//! work where there is one. Figures are printed, never asserted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_stream::StreamExt;
use viaduct_tests::{Client, Server, StatusWord, v1};

use crate::{cargo, target_dir};

/// Builds release binaries and runs the benchmarks matching `filter`.
pub fn run(filter: Option<&str>) -> Result<()> {
    crate::run(cargo().args(["build", "--release", "--bins"]))?;
    viaduct_tests::set_bin_dir(target_dir().join("release"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f));
    rt.block_on(async {
        if wanted("latency") {
            latency().await?;
        }
        if wanted("steps") {
            steps().await?;
        }
        Ok(())
    })
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
    let server = Server::start();
    let runner = server.runner("linux", 1);
    let client = server.client().await;
    // Wait for the runner: one warm-up run.
    let events = client.runs().watch(v1::WatchRequest::default()).await?.into_inner();
    let id = submit(&client, "jobs:\n  warm:\n    steps:\n      - run: true\n").await?;
    client.wait_for_run(&id).await.context("warm-up run")?;
    Ok((server, runner, client, events))
}

/// Submit → first step running, on an idle connected runner.
async fn latency() -> Result<()> {
    const N: usize = 200;
    let (_server, _runner, client, mut events) = system().await?;
    let yaml = "jobs:\n  j:\n    steps:\n      - run: true\n";
    let mut samples = Vec::with_capacity(N);
    for _ in 0..N {
        let t0 = Instant::now();
        let id = submit(&client, yaml).await?;
        until(&mut events, &id, is_running_step).await?;
        samples.push(t0.elapsed());
        until(&mut events, &id, is_finished_run).await?;
    }
    let (p50, p99, mean) = summary(samples);
    println!(
        "latency  submit → first step running (idle runner, {N} runs): p50 {}  p99 {}  mean {}",
        ms(p50),
        ms(p99),
        ms(mean)
    );
    Ok(())
}

/// A 10-step job of `true`, end to end, vs. 10 × `sh -c true` directly.
async fn steps() -> Result<()> {
    const RUNS: usize = 30;
    let (_server, _runner, client, mut events) = system().await?;
    let mut yaml = String::from("jobs:\n  j:\n    steps:\n");
    for _ in 0..10 {
        yaml.push_str("      - run: true\n");
    }
    let mut viaduct = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        let id = submit(&client, &yaml).await?;
        until(&mut events, &id, is_finished_run).await?;
        viaduct.push(t0.elapsed());
    }
    let mut direct = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        for _ in 0..10 {
            std::process::Command::new("sh").args(["-c", "true"]).status()?;
        }
        direct.push(t0.elapsed());
    }
    let (v50, v99, _) = summary(viaduct);
    let (d50, d99, _) = summary(direct);
    let per_step = (v50.saturating_sub(d50)) / 10;
    println!(
        "steps    10 × `true`: viaduct end-to-end p50 {} p99 {}; direct 10 × sh -c true p50 {} p99 {}; ratio {:.2}×; overhead per step {}",
        ms(v50),
        ms(v99),
        ms(d50),
        ms(d99),
        v50.as_secs_f64() / d50.as_secs_f64(),
        ms(per_step)
    );
    Ok(())
}
