//! `viaduct admin …` and retention policies (`repos retention`, the
//! `pipelines create` flags).

use std::fmt::Write as _;

use serde_json::json;
use viaduct_sdk::{
    Client,
    proto::v1::{PruneReport, PruneRequest, RetentionPolicy},
};

use super::{
    Failure,
    args::{AdminCommand, RetentionArgs},
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
    }
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
    })
}
