//! `/metrics` after real runs, read by a real parser: Python's
//! `prometheus_client` OpenMetrics parser (strict: it refuses a malformed
//! exposition), checking the series an operator graphs — runs by result,
//! queue wait, pickup and step duration histograms, queue and runner
//! gauges, store and disk size.

use std::{collections::HashMap, io::Write, process::Stdio};

use viaduct_tests::{Server, finished, http, submit, word};

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
    let probe = std::process::Command::new("python3").args(["-c", "import prometheus_client"]).output().ok()?;
    if !probe.status.success() {
        return None;
    }
    let mut child = std::process::Command::new("python3")
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
    let run = finished(&client, "1").await;
    assert_eq!(word(run.status), "success");
}
