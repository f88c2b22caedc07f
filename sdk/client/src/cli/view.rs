//! How runs, jobs, steps and runners are shown: JSON (stable field names,
//! statuses as lower-case words, times as RFC 3339) and text for people.

use std::fmt::Write;

use prost_types::Timestamp;
use serde_json::{Value, json};
use viaduct_sdk::proto::{
    StatusWord, executor_words,
    v1::{Job, Repo, Run, Runner, Status, Step, Times},
};

/// A status as its word.
pub fn word(status: i32) -> &'static str {
    Status::try_from(status).map_or("unspecified", StatusWord::word)
}

fn ts(t: Option<&Timestamp>) -> Option<jiff::Timestamp> {
    t.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
}

/// A time as RFC 3339 JSON (null when unset).
pub fn rfc3339(t: Option<&Timestamp>) -> Value {
    ts(t).map_or(Value::Null, |t| Value::String(t.to_string()))
}

/// Local wall-clock time, or "-".
pub fn local(t: Option<&Timestamp>) -> String {
    ts(t).map_or_else(
        || "-".to_string(),
        |t| t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Elapsed time of something that started (until it finished, or now).
pub fn duration(times: Option<&Times>) -> String {
    let Some(times) = times else { return "-".into() };
    let Some(start) = ts(times.started_at.as_ref()) else { return "-".into() };
    let end = ts(times.finished_at.as_ref()).unwrap_or_else(jiff::Timestamp::now);
    let ms = (end.as_millisecond() - start.as_millisecond()).max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

fn times_json(t: Option<&Times>) -> (Value, Value, Value) {
    let t = t.cloned().unwrap_or_default();
    (rfc3339(t.created_at.as_ref()), rfc3339(t.started_at.as_ref()), rfc3339(t.finished_at.as_ref()))
}

/// A step as JSON.
pub fn step_json(s: &Step) -> Value {
    let (_, started, finished) = times_json(s.times.as_ref());
    json!({
        "id": s.id, "index": s.index, "name": s.name, "status": word(s.status), "exit_code": s.exit_code,
        "kind": s.kind, "attempt": s.attempt, "started_at": started, "finished_at": finished,
        "log_size": s.log_size, "message": s.message, "outputs": s.outputs, "summary": s.summary,
    })
}

/// A job as JSON (with steps when present).
pub fn job_json(j: &Job) -> Value {
    let (created, started, finished) = times_json(j.times.as_ref());
    json!({
        "id": j.id, "key": j.key, "name": j.name, "status": word(j.status), "attempt": j.attempt,
        "max_attempts": j.max_attempts, "runner_id": j.runner_id, "needs": j.needs, "matrix": j.matrix,
        "runs_on": j.runs_on, "priority": j.priority, "image": j.image, "message": j.message, "waiting": j.waiting,
        "created_at": created, "started_at": started, "finished_at": finished,
        "previous_attempts": j.previous_attempts.iter().map(|a| json!({
            "attempt": a.attempt, "status": word(a.status), "runner_id": a.runner_id, "message": a.message,
        })).collect::<Vec<_>>(),
        "steps": j.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}

/// A run as JSON.
pub fn run_json(r: &Run) -> Value {
    let (created, started, finished) = times_json(r.times.as_ref());
    let src = r.source.clone().unwrap_or_default();
    json!({
        "id": r.id, "pipeline": r.pipeline, "status": word(r.status), "priority": r.priority,
        "event": src.event, "repo": src.repo, "ref": src.r#ref, "branch": src.branch, "commit": src.commit,
        "created_at": created, "started_at": started, "finished_at": finished, "error": r.error,
        "inputs": r.inputs, "jobs": r.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

/// A runner as JSON.
pub fn runner_json(r: &Runner) -> Value {
    json!({
        "id": r.id, "name": r.name, "labels": r.labels, "slots": r.slots, "executors": executor_words(&r.executors),
        "connected": r.connected, "draining": r.draining, "jobs": r.jobs, "version": r.version,
        "hostname": r.hostname, "last_seen": rfc3339(r.last_seen.as_ref()), "protected": r.protected,
        "allowed_labels": r.allowed_labels, "max_slots": r.max_slots, "allowed_executors": executor_words(&r.allowed_executors),
        "toolchains": r.toolchains, "ephemeral": r.ephemeral, "bound_job": r.bound_job, "paused": r.paused,
    })
}

/// A runner, for people.
pub fn runner_text(r: &Runner) -> String {
    let state = r.state_word();
    let mut out = String::new();
    let _ = writeln!(out, "runner {}  {}  {state}{}", r.id, r.name, if r.protected { ", protected" } else { "" });
    if !r.paused.is_empty() {
        let _ = writeln!(out, "  paused      {}", r.paused);
    }
    let _ = writeln!(out, "  host        {}  (viaduct-runner {})", r.hostname, r.version);
    let _ = writeln!(out, "  labels      {}", r.labels.join(", "));
    let _ =
        writeln!(out, "  toolchains  {}", if r.toolchains.is_empty() { "-".into() } else { r.toolchains.join(", ") });
    let _ = writeln!(out, "  executors   {}", executor_words(&r.executors).join(", "));
    let _ = writeln!(out, "  jobs        {}/{} {}", r.jobs.len(), r.slots, r.jobs.join(", "));
    let _ = writeln!(out, "  last seen   {}", local(r.last_seen.as_ref()));
    super::terminal::plain(&out)
}

fn mark(status: i32) -> &'static str {
    match Status::try_from(status).unwrap_or(Status::Unspecified) {
        Status::Success => "✓",
        Status::Failure | Status::TimedOut | Status::RunnerLost => "✗",
        Status::Cancelled => "⊘",
        Status::Skipped => "-",
        Status::Running => "▶",
        _ => "·",
    }
}

/// A run as a tree of jobs and steps, for people.
pub fn run_text(r: &Run) -> String {
    let mut out = String::new();
    let src = r.source.clone().unwrap_or_default();
    let _ = writeln!(
        out,
        "run {}  {}  {}  ({})  created {}  took {}",
        r.id,
        word(r.status),
        r.pipeline,
        src.event,
        local(r.times.as_ref().and_then(|t| t.created_at.as_ref())),
        duration(r.times.as_ref())
    );
    if !r.error.is_empty() {
        let _ = writeln!(out, "  error: {}", r.error);
    }
    if r.trust == viaduct_sdk::proto::v1::Trust::Untrusted as i32 {
        let _ = writeln!(out, "  untrusted: no secrets, no registry credentials, no protected runners");
    }
    if let Some(a) = &r.approval {
        if a.pending {
            let _ = writeln!(out, "  waiting for approval: {} (viaduct runs approve {})", a.reason, r.id);
        } else {
            let _ = writeln!(out, "  approved by {} ({})", a.approved_by, a.reason);
        }
    }
    for j in &r.jobs {
        let attempt = if j.attempt > 1 { format!("  attempt {}/{}", j.attempt, j.max_attempts) } else { String::new() };
        let _ = writeln!(
            out,
            "  {} {}  [{}]  {}  {}{}",
            mark(j.status),
            j.name,
            j.id,
            word(j.status),
            duration(j.times.as_ref()),
            attempt
        );
        if !j.message.is_empty() {
            let _ = writeln!(out, "      {}", j.message);
        }
        if !j.waiting.is_empty() {
            let _ = writeln!(out, "      queued: {}", j.waiting);
        }
        for s in &j.steps {
            let code = s.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
            let _ = writeln!(
                out,
                "      {} {}. {}  {}{}  {}",
                mark(s.status),
                s.index,
                s.name,
                word(s.status),
                code,
                duration(s.times.as_ref())
            );
            if !s.message.is_empty() && s.status != Status::Success as i32 {
                let _ = writeln!(out, "           {}", s.message);
            }
            for line in s.summary.lines() {
                let _ = writeln!(out, "           │ {line}");
            }
        }
    }
    // Names, messages and summaries come from pipeline files and jobs.
    super::terminal::plain(&out)
}

/// Rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.iter().map(ToString::to_string).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// A repository as JSON.
pub fn repo_json(r: &Repo) -> Value {
    json!({
        "name": r.name, "kind": r.kind, "url": r.url, "clone_url": r.clone_url, "path": r.path,
        "default_branch": r.default_branch, "webhook_url": r.webhook_url, "webhook_secret": r.webhook_secret,
        "poll_interval_seconds": r.poll_interval_seconds, "last_sync": rfc3339(r.last_sync.as_ref()),
        "last_error": r.last_error, "credentials": r.credentials,
        "forge": r.forge.as_ref().map(|f| json!({
            "kind": f.kind, "api_url": f.api_url, "project": f.project, "token_secret": f.token_secret,
            "context_prefix": f.context_prefix, "app_id": f.app_id, "app_key_secret": f.app_key_secret,
            "installation_id": f.installation_id, "check_logs": f.check_logs, "app_webhook_secret": f.app_webhook_secret,
        })),
        "forge_delivery": r.forge_delivery.as_ref().map(|d| json!({
            "delivered": d.delivered, "pending": d.pending, "last_error": d.last_error,
            "last_error_time": rfc3339(d.last_error_time.as_ref()), "last_delivered": rfc3339(d.last_delivered.as_ref()),
        })),
    })
}

/// A repository, for people: how to push to it or point a forge at it.
pub fn repo_text(r: &Repo) -> String {
    let mut out = format!("repository {} ({}), default branch {}\n", r.name, r.kind, r.default_branch);
    if r.kind == "mirror" {
        let _ = writeln!(out, "  follows      {}", r.url);
        let _ = writeln!(out, "  webhook URL  {}", r.webhook_url);
        let _ = writeln!(out, "  secret       {}", r.webhook_secret);
        if r.poll_interval_seconds > 0 {
            let _ = writeln!(out, "  polls every  {}s", r.poll_interval_seconds);
        }
        if !r.credentials.is_empty() {
            let _ = writeln!(out, "  fetches with secret {}", r.credentials);
        }
    } else {
        let _ = writeln!(
            out,
            "  push over HTTP   git push http://viaduct:$TOKEN@{}",
            r.clone_url.trim_start_matches("http://")
        );
        let _ = writeln!(out, "  or on the server git push {}", r.path);
    }
    if let Some(p) = &r.pull_requests {
        let senders = if p.trusted_senders.is_empty() { "none".into() } else { p.trusted_senders.join(", ") };
        let assoc = if p.trusted_associations.is_empty() { "none".into() } else { p.trusted_associations.join(", ") };
        let _ = writeln!(out, "  trusts pull requests of senders {senders}; associations {assoc}");
    }
    if let Some(p) = r.retention.filter(|p| *p != Default::default()) {
        let _ = writeln!(out, "  {}", super::admin::policy_text(&p));
    }
    if let Some(f) = &r.forge {
        let auth = if f.app_id.is_empty() {
            format!("token: secret {}", f.token_secret)
        } else {
            format!("GitHub App {}, key: secret {}; check runs", f.app_id, f.app_key_secret)
        };
        let _ = writeln!(
            out,
            "  reports to   {} {} at {} as {}/… ({auth})",
            f.kind, f.project, f.api_url, f.context_prefix
        );
    }
    if let Some(d) = &r.forge_delivery {
        let _ = writeln!(out, "  statuses     {} delivered, {} waiting", d.delivered, d.pending);
        if !d.last_error.is_empty() {
            let _ = writeln!(out, "  forge error  {} ({})", d.last_error, local(d.last_error_time.as_ref()));
        }
    }
    if !r.last_error.is_empty() {
        let _ = writeln!(out, "  last error   {}", r.last_error);
    }
    out
}

/// A secret's scope in one line ("any run" when it has no rule).
pub fn scope_text(s: Option<&viaduct_sdk::proto::v1::SecretScope>) -> String {
    let Some(s) = s else { return "any run".into() };
    let mut rules = Vec::new();
    for (what, list) in
        [("repos", &s.repos), ("pipelines", &s.pipelines), ("branches", &s.branches), ("environments", &s.environments)]
    {
        if !list.is_empty() {
            rules.push(format!("{what} {}", list.join(",")));
        }
    }
    if s.pull_requests {
        rules.push("trusted pull requests".into());
    }
    if !s.registry.is_empty() {
        rules.push(format!("registry {}", s.registry));
    }
    if !s.pull_requests {
        rules.push("no pull requests".into());
    }
    if s.server_only {
        rules.push("server only".into());
    }
    rules.join("; ")
}
