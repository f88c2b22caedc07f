//! `viaduct admin …` and retention policies (`repos retention`, the
//! `pipelines create` flags).

use std::fmt::Write as _;

use serde_json::json;
use viaduct_sdk::{
    Client,
    proto::v1::{AdminStatus, AdminStatusRequest, PruneReport, PruneRequest, RetentionPolicy},
};

use super::{
    Failure,
    args::{AdminCommand, RetentionArgs},
    view,
};

/// Runs `viaduct admin …`.
pub async fn admin(client: &Client, cmd: AdminCommand) -> Result<(), Failure> {
    match cmd {
        AdminCommand::Prune { dry_run, json } => {
            let r = client.admin().prune(PruneRequest { dry_run }).await?.into_inner();
            if json {
                println!("{}", report_json(&r));
            } else {
                print!("{}", report_text(&r));
            }
            Ok(())
        }
        AdminCommand::Status { json } => {
            let s = client.admin().status(AdminStatusRequest {}).await?.into_inner();
            if json {
                println!("{}", status_json(&s));
            } else {
                print!("{}", status_text(&s));
            }
            Ok(())
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn status_text(s: &AdminStatus) -> String {
    let mut out = String::new();
    let records: u64 = s.trees.iter().map(|t| t.bytes).sum();
    let _ = writeln!(out, "viaduct-server {}, up since {}", s.version, view::local(s.started_at.as_ref()));
    let files = if s.store == "sled" { format!(", files {}", mib(s.store_file_bytes)) } else { String::new() };
    let _ = writeln!(out, "store   {}: records {}{files}", s.store, mib(records));
    let state = if s.refusing_new_work { "REFUSING NEW WORK" } else { "accepting new work" };
    let _ =
        writeln!(out, "disk    {} free (keeps {} free): {state}", mib(s.disk_free_bytes), mib(s.min_free_disk_bytes));
    let _ = writeln!(out, "queue   {} queued, {} running", s.queued_jobs, s.running_jobs);
    let _ = writeln!(out, "runners {} connected, {} slots", s.runners_connected, s.runner_slots);
    match &s.last_prune {
        Some(p) => {
            let _ = writeln!(
                out,
                "retention last pass {}: removed {} runs ({}); a pass now would remove {} runs",
                view::local(p.started_at.as_ref()),
                p.runs_removed,
                mib(p.bytes_removed),
                s.retention_backlog
            );
        }
        None => {
            let _ = writeln!(out, "retention no pass yet; a pass now would remove {} runs", s.retention_backlog);
        }
    }
    let rows: Vec<Vec<String>> =
        s.trees.iter().map(|t| vec![t.name.clone(), t.records.to_string(), mib(t.bytes)]).collect();
    out.push_str(&view::table(&["TREE", "RECORDS", "BYTES"], &rows));
    out
}

fn status_json(s: &AdminStatus) -> serde_json::Value {
    json!({
        "version": s.version,
        "store": s.store,
        "trees": s.trees.iter().map(|t| json!({"name": t.name, "records": t.records, "bytes": t.bytes})).collect::<Vec<_>>(),
        "store_file_bytes": s.store_file_bytes,
        "disk_free_bytes": s.disk_free_bytes,
        "min_free_disk_bytes": s.min_free_disk_bytes,
        "refusing_new_work": s.refusing_new_work,
        "queued_jobs": s.queued_jobs,
        "running_jobs": s.running_jobs,
        "runners_connected": s.runners_connected,
        "runner_slots": s.runner_slots,
        "last_prune": s.last_prune.as_ref().map(report_json),
        "retention_backlog": s.retention_backlog,
    })
}

impl RetentionArgs {
    /// The policy the flags set; `None` when no flag was given.
    pub fn policy(&self) -> Option<RetentionPolicy> {
        let p = RetentionPolicy {
            keep_for_seconds: self.keep_for.map(|d| d.as_secs()),
            keep_last: self.keep_last,
            keep_last_success: self.keep_last_success,
        };
        (p != RetentionPolicy::default()).then_some(p)
    }
}

/// A policy in words ("keeps runs 30d, at least the last 10, …"); unset
/// fields are the server's.
pub fn policy_text(p: &RetentionPolicy) -> String {
    let mut parts = Vec::new();
    match p.keep_for_seconds {
        Some(0) => parts.push("forever".to_string()),
        Some(s) if s % 86_400 == 0 => parts.push(format!("for {}d", s / 86_400)),
        Some(s) => parts.push(format!("for {s}s")),
        None => parts.push("for the server's time".to_string()),
    }
    if let Some(n) = p.keep_last {
        parts.push(format!("at least the last {n}"));
    }
    match p.keep_last_success {
        Some(true) => parts.push("always the last success of each branch".into()),
        Some(false) => parts.push("not the last success of each branch".into()),
        None => {}
    }
    format!("keeps runs {}", parts.join(", "))
}

fn report_text(r: &PruneReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let _ = writeln!(
        out,
        "{verb} {} of {} runs ({} records, {} bytes) and {} event batches in {} ms",
        r.runs_removed, r.runs_examined, r.records_removed, r.bytes_removed, r.event_batches_removed, r.took_ms
    );
    let _ = writeln!(
        out,
        "kept: {} unfinished, {} among the last of their pipeline, {} last successes, {} recent, {} kept forever",
        r.kept_unfinished, r.kept_last, r.kept_last_success, r.kept_recent, r.kept_forever
    );
    if r.approvals_expired > 0 {
        let verb = if r.dry_run { "would cancel" } else { "cancelled" };
        let _ = writeln!(out, "{verb} {} runs that waited too long for approval", r.approvals_expired);
    }
    if !r.removed_run_ids.is_empty() {
        let more = if r.runs_removed > r.removed_run_ids.len() as u64 { ", …" } else { "" };
        let _ = writeln!(out, "runs: {}{more}", r.removed_run_ids.join(", "));
    }
    out
}

fn report_json(r: &PruneReport) -> serde_json::Value {
    json!({
        "dry_run": r.dry_run,
        "runs_examined": r.runs_examined,
        "runs_removed": r.runs_removed,
        "removed_run_ids": r.removed_run_ids,
        "kept_unfinished": r.kept_unfinished,
        "kept_last": r.kept_last,
        "kept_last_success": r.kept_last_success,
        "kept_recent": r.kept_recent,
        "kept_forever": r.kept_forever,
        "records_removed": r.records_removed,
        "bytes_removed": r.bytes_removed,
        "event_batches_removed": r.event_batches_removed,
        "took_ms": r.took_ms,
        "approvals_expired": r.approvals_expired,
    })
}
