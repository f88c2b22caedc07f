//! `viaduct stats`: how runs went over a range (`Stats.Get`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use viaduct_sdk::{
    Client,
    proto::v1::{GroupStats, Percentiles, StatsReport, StatsRequest, StatsSummary},
};

use super::{Failure, args::StatsArgs, view};

/// Runs `viaduct stats`.
pub async fn stats(client: &Client, a: StatsArgs) -> Result<(), Failure> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let from = now.saturating_sub(a.since);
    let ts = |d: Duration| prost_types::Timestamp { seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), nanos: 0 };
    let bucket_seconds = match a.by.as_str() {
        "hour" => 3600,
        "day" => 86_400,
        "week" => 604_800,
        other => return Err(Failure::Usage(format!("--by is hour, day or week, not `{other}`"))),
    };
    // Up to the server's now (the default): the runs of this very second count.
    let req = StatsRequest { from: Some(ts(from)), to: None, bucket_seconds, repo: a.repo, pipeline: a.pipeline };
    let r = client.stats().get(req).await?.into_inner();
    if a.json {
        println!("{}", report_json(&r));
    } else {
        print!("{}", report_text(&r));
    }
    Ok(())
}

fn secs(ms: u64) -> String {
    if ms >= 60_000 { format!("{:.1}m", ms as f64 / 60_000.0) } else { format!("{:.1}s", ms as f64 / 1000.0) }
}

fn row(name: String, s: &StatsSummary) -> Vec<String> {
    let d = s.run_duration.unwrap_or_default();
    let w = s.queue_wait.unwrap_or_default();
    vec![
        name,
        s.runs.to_string(),
        s.succeeded.to_string(),
        s.failed.to_string(),
        s.other.to_string(),
        format!("{:.0}%", s.success_rate * 100.0),
        format!("{}/{}/{}", secs(d.p50_ms), secs(d.p90_ms), secs(d.p99_ms)),
        format!("{}/{}", secs(w.p50_ms), secs(w.p99_ms)),
    ]
}

const HEADER: [&str; 8] =
    ["", "RUNS", "OK", "FAILED", "OTHER", "SUCCESS", "DURATION p50/p90/p99", "QUEUE WAIT p50/p99"];

fn report_text(r: &StatsReport) -> String {
    let mut out = String::new();
    let mut rows: Vec<Vec<String>> = r
        .buckets
        .iter()
        .map(|b| row(view::local(b.start.as_ref()), b.summary.as_ref().unwrap_or(&StatsSummary::default())))
        .collect();
    rows.push(row("total".into(), r.total.as_ref().unwrap_or(&StatsSummary::default())));
    out.push_str(&view::table(&HEADER, &rows));
    let groups = |title: &str, g: &[GroupStats]| {
        let mut header = HEADER;
        header[0] = title;
        let rows: Vec<Vec<String>> =
            g.iter().map(|g| row(g.name.clone(), g.summary.as_ref().unwrap_or(&StatsSummary::default()))).collect();
        view::table(&header, &rows)
    };
    if !r.pipelines.is_empty() {
        out.push('\n');
        out.push_str(&groups("PIPELINE", &r.pipelines));
    }
    if !r.labels.is_empty() {
        // Labels are what jobs ask for: jobs and their queue wait only.
        let rows: Vec<Vec<String>> = r
            .labels
            .iter()
            .map(|g| {
                let s = g.summary.unwrap_or_default();
                let w = s.queue_wait.unwrap_or_default();
                vec![g.name.clone(), s.jobs.to_string(), format!("{}/{}", secs(w.p50_ms), secs(w.p99_ms))]
            })
            .collect();
        out.push('\n');
        out.push_str(&view::table(&["LABEL", "JOBS", "QUEUE WAIT p50/p99"], &rows));
    }
    out.push_str(&format!("\ncache hit rate since the server started: {:.0}%\n", r.cache_hit_rate * 100.0));
    if r.truncated {
        out.push_str(&format!("(only the newest {} runs were read)\n", r.runs_scanned));
    }
    out
}

fn percentiles_json(p: Option<&Percentiles>) -> serde_json::Value {
    let p = p.copied().unwrap_or_default();
    json!({"count": p.count, "p50_ms": p.p50_ms, "p90_ms": p.p90_ms, "p99_ms": p.p99_ms})
}

fn summary_json(s: Option<&StatsSummary>) -> serde_json::Value {
    let s = s.cloned().unwrap_or_default();
    json!({
        "runs": s.runs,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "other": s.other,
        "success_rate": s.success_rate,
        "run_duration": percentiles_json(s.run_duration.as_ref()),
        "jobs": s.jobs,
        "queue_wait": percentiles_json(s.queue_wait.as_ref()),
    })
}

fn report_json(r: &StatsReport) -> serde_json::Value {
    let group = |g: &[GroupStats]| {
        g.iter().map(|g| json!({"name": g.name, "summary": summary_json(g.summary.as_ref())})).collect::<Vec<_>>()
    };
    json!({
        "from": r.from.map(|t| t.seconds),
        "to": r.to.map(|t| t.seconds),
        "bucket_seconds": r.bucket_seconds,
        "buckets": r.buckets.iter().map(|b| json!({
            "start": b.start.map(|t| t.seconds),
            "summary": summary_json(b.summary.as_ref()),
        })).collect::<Vec<_>>(),
        "total": summary_json(r.total.as_ref()),
        "pipelines": group(&r.pipelines),
        "labels": group(&r.labels),
        "runs_scanned": r.runs_scanned,
        "truncated": r.truncated,
        "cache_hit_rate": r.cache_hit_rate,
    })
}
