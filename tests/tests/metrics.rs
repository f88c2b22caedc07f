//! `/metrics` after real runs, read by a real parser: Python's
//! `prometheus_client` OpenMetrics parser (strict: it refuses a malformed
//! exposition), checking the series an operator graphs — runs by result,
//! queue wait, pickup and step duration histograms, queue and runner
//! gauges, store and disk size.

use std::{collections::HashMap, io::Write, process::Stdio};

use viaduct_tests::{Server, finished, http, submit, word};

/// Debian's Python, where the set-up installs `python3-prometheus-client`
/// (not whichever `python3` comes first on `PATH`).
const PYTHON: &str = "/usr/bin/python3";

/// Parses an OpenMetrics exposition with Python's `prometheus_client`:
/// `name{labels}` → value, for every sample; `None` without the module.
fn parse(text: &str) -> Option<HashMap<String, f64>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps(out))
"#;
    let probe = std::process::Command::new(PYTHON).args(["-c", "import prometheus_client"]).output().ok()?;
    if !probe.status.success() {
        return None;
    }
    let mut child = std::process::Command::new(PYTHON)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("parser");
    assert!(out.status.success(), "the exposition does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_happened() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    for exit in [0, 1] {
        let id =
            submit(&client, &format!("jobs:\n  j:\n    steps:\n      - run: exit {exit}\n      - run: true\n")).await;
        finished(&client, &id).await;
    }
    let bearer = format!("Bearer {}", server.admin_token());
    let (code, body) = http(server.addr(), "GET", "/metrics", &[("authorization", &bearer)], b"");
    assert_eq!(code, 200);
    let text = String::from_utf8(body).expect("UTF-8");
    let Some(samples) = parse(&text) else {
        viaduct_tests::missing_fixture("Python's prometheus_client (Debian python3-prometheus-client)");
        return;
    };
    let get = |name: &str| samples.get(name).copied().unwrap_or_else(|| panic!("{name} missing from\n{text}"));
    assert_eq!(get("viaduct_runs_finished_total{result=\"success\"}"), 1.0);
    assert_eq!(get("viaduct_runs_finished_total{result=\"failure\"}"), 1.0);
    assert_eq!(get("viaduct_jobs_finished_total{result=\"failure\"}"), 1.0);
    assert_eq!(get("viaduct_job_queue_wait_seconds_count"), 2.0);
    assert_eq!(get("viaduct_job_pickup_seconds_count"), 2.0);
    // Three steps ran (the failed job's second step was skipped).
    assert_eq!(get("viaduct_step_duration_seconds_count"), 3.0);
    assert_eq!(get("viaduct_run_duration_seconds_count"), 2.0);
    assert_eq!(get("viaduct_job_queue_wait_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(get("viaduct_queue_depth"), 0.0);
    assert_eq!(get("viaduct_runners_connected"), 1.0);
    assert_eq!(get("viaduct_runner_slots"), 1.0);
    assert!(get("viaduct_store_files_bytes") > 0.0);
    assert!(get("viaduct_data_disk_free_bytes") > 0.0);
    // Two runs' transitions were committed, and made durable in groups.
    let (commits, flushes) = (get("viaduct_store_commits_total"), get("viaduct_store_flushes_total"));
    assert!(commits >= 8.0, "{commits} commits");
    assert!(flushes >= 1.0 && flushes <= commits, "{flushes} flushes for {commits} commits");
    // Each group commit's time to durable (observed before it is counted;
    // the histogram is read after the counter).
    let timed = get("viaduct_store_flush_duration_seconds_count");
    assert!(timed >= flushes, "{timed} group commits timed of {flushes}");
    assert!(get("viaduct_store_flush_duration_seconds_sum") > 0.0);
    assert_eq!(get("viaduct_store_flush_duration_seconds_bucket{le=\"+Inf\"}"), timed);
    let run = finished(&client, "1").await;
    assert_eq!(word(run.status), "success");
}

/// `Stats.Get` through the CLI: the two runs of the last day, by result,
/// with their durations and queue waits, per pipeline; bad ranges refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_aggregate_runs_on_the_server() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    for (name, exit) in [("green", 0), ("red", 1), ("green", 0)] {
        let id = submit(
            &client,
            &format!("name: {name}\njobs:\n  j:\n    runs_on: [linux]\n    steps:\n      - run: exit {exit}\n"),
        )
        .await;
        finished(&client, &id).await;
    }
    let out = viaduct_tests::output(server.cli().args(["stats", "--since", "1d", "--by", "hour", "--json"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let total = &r["total"];
    assert_eq!(
        (total["runs"].as_u64(), total["succeeded"].as_u64(), total["failed"].as_u64()),
        (Some(3), Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(total["jobs"], 3);
    assert_eq!(total["queue_wait"]["count"], 3);
    assert_eq!(total["run_duration"]["count"], 3);
    // One bucket an hour: 24, and one more for the part of a second
    // between the CLI's clock and the server's.
    assert!(matches!(r["buckets"].as_array().map(Vec::len), Some(24 | 25)), "one bucket an hour");
    assert_eq!(r["pipelines"][0]["name"], "green");
    assert_eq!(r["pipelines"][0]["summary"]["success_rate"], 1.0);
    assert_eq!(r["labels"][0]["name"], "linux");
    assert_eq!(r["labels"][0]["summary"]["jobs"], 3);
    let text = String::from_utf8(viaduct_tests::output(server.cli().args(["stats"])).stdout).unwrap();
    assert!(text.contains("SUCCESS") && text.contains("total"), "{text}");

    // Bounded: too many buckets, a width not offered.
    let req = viaduct_tests::v1::StatsRequest {
        from: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
        bucket_seconds: 3600,
        ..Default::default()
    };
    let e = client.stats().get(req).await.expect_err("too many buckets");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let req = viaduct_tests::v1::StatsRequest { bucket_seconds: 60, ..Default::default() };
    assert_eq!(client.stats().get(req).await.expect_err("60 s").code(), tonic::Code::InvalidArgument);
}
