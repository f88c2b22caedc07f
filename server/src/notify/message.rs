//! What a notification says, in each channel's form: the JSON payload of a
//! webhook (version 1, described by `docs/notification.schema.json`), a
//! Slack message (`text` in mrkdwn), a Matrix message (`text` and `html`,
//! as Matrix hookshot's generic webhooks take it), an email (subject and
//! plain-text body). Everything from a run is escaped for the form it goes
//! into: a job name cannot turn into a link or markup.

use serde_json::{Value, json};
use viaduct_proto::{StatusWord, v1::Status};

use crate::store::records::NotificationRecord;

/// The payload format's version.
pub const VERSION: u32 = 1;

/// Where the web UI shows the run or job.
pub fn link(base: &str, n: &NotificationRecord) -> String {
    match n.job_id.as_str() {
        "" => format!("{base}/runs/{}", n.run_id),
        job => format!("{base}/runs/{}/jobs/{job}", n.run_id),
    }
}

fn word(status: i32) -> &'static str {
    Status::try_from(status).unwrap_or(Status::Unspecified).word()
}

/// RFC 3339 in UTC, or null for no time.
fn time(ms: i64) -> Value {
    match chrono::DateTime::from_timestamp_millis(ms).filter(|_| ms > 0) {
        Some(t) => json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Value::Null,
    }
}

/// The webhook payload.
pub fn payload(n: &NotificationRecord, delivery: &str, base: &str, sent_ms: i64) -> Value {
    let src = n.source.clone().unwrap_or_default();
    let run_url = format!("{base}/runs/{}", n.run_id);
    let mut body = json!({
        "version": VERSION,
        "delivery": delivery,
        "sent_at": time(sent_ms),
        "event": n.event,
        "kind": if n.job_id.is_empty() { "run" } else { "job" },
        "run": {
            "id": n.run_id,
            "pipeline": n.pipeline,
            "url": run_url,
        },
        "source": {
            "repo": src.repo,
            "event": src.event,
            "ref": src.r#ref,
            "branch": src.branch,
            "tag": src.tag,
            "commit": src.commit,
            "author": src.author,
            "message": src.message,
            "pull_request": src.pull_request,
        },
    });
    let ended = json!({
        "status": word(n.status),
        "message": n.message,
        "started_at": time(n.started_ms),
        "finished_at": time(n.finished_ms),
        "duration_seconds": if n.started_ms > 0 && n.finished_ms >= n.started_ms { json!((n.finished_ms - n.started_ms) as f64 / 1000.0) } else { Value::Null },
    });
    let merge = |target: &mut Value| {
        for (k, v) in ended.as_object().into_iter().flatten() {
            target[k] = v.clone();
        }
    };
    if n.job_id.is_empty() {
        merge(&mut body["run"]);
        body["jobs"] = n.jobs.iter().map(|j| json!({"id": j.id, "name": j.name, "status": word(j.status)})).collect();
    } else {
        body["job"] = json!({"id": n.job_id, "name": n.job_name, "url": link(base, n)});
        merge(&mut body["job"]);
    }
    body
}

/// One line: what ended how, where: "ci failed on main (1a2b3c4)".
fn headline(n: &NotificationRecord) -> String {
    let src = n.source.clone().unwrap_or_default();
    let what = if n.job_id.is_empty() { n.pipeline.clone() } else { format!("{} › {}", n.pipeline, n.job_name) };
    let how = match n.event.as_str() {
        "fixed" => "is fixed",
        "broken" => "is broken",
        "success" => "succeeded",
        _ => "failed",
    };
    let at = if !src.branch.is_empty() {
        format!(" on {}", src.branch)
    } else if src.pull_request > 0 {
        format!(" in pull request #{}", src.pull_request)
    } else if !src.tag.is_empty() {
        format!(" at tag {}", src.tag)
    } else {
        String::new()
    };
    let commit =
        if src.commit.is_empty() { String::new() } else { format!(" ({})", &src.commit[..src.commit.len().min(7)]) };
    format!("{what} {how}{at}{commit}")
}

fn icon(event: &str) -> &'static str {
    match event {
        "success" | "fixed" => "✅",
        _ => "❌",
    }
}

/// Slack's mrkdwn escapes.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// HTML escapes.
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// A Slack incoming-webhook message.
pub fn slack(n: &NotificationRecord, base: &str) -> Value {
    let mut text = format!("{} <{}|{}>", icon(&n.event), link(base, n), slack_escape(&headline(n)));
    if !n.message.is_empty() {
        text.push_str(&format!("\n{}", slack_escape(&n.message)));
    }
    json!({ "text": text })
}

/// A Matrix (hookshot generic webhook) message.
pub fn matrix(n: &NotificationRecord, base: &str) -> Value {
    let line = headline(n);
    let url = link(base, n);
    let mut text = format!("{} {line}: {url}", icon(&n.event));
    let mut html = format!("{} <a href=\"{}\">{}</a>", icon(&n.event), html_escape(&url), html_escape(&line));
    if !n.message.is_empty() {
        text.push_str(&format!("\n{}", n.message));
        html.push_str(&format!("<br>{}", html_escape(&n.message)));
    }
    json!({ "text": text, "html": html, "username": "Viaduct" })
}

/// An email: subject and plain-text body.
pub fn email(n: &NotificationRecord, base: &str) -> (String, String) {
    let subject: String = format!("[viaduct] {}", headline(n)).chars().filter(|c| !c.is_control()).take(200).collect();
    let src = n.source.clone().unwrap_or_default();
    let mut body = format!("{}\n\n{}\n", headline(n), link(base, n));
    if !n.message.is_empty() {
        body.push_str(&format!("\n{}\n", n.message));
    }
    for j in &n.jobs {
        body.push_str(&format!("\n  {:<10} {}", word(j.status), j.name));
    }
    if !src.commit.is_empty() {
        body.push_str(&format!("\n\ncommit {}\nauthor {}\n\n    {}\n", src.commit, src.author, src.message));
    }
    (subject, body)
}

#[cfg(test)]
mod tests {
    use viaduct_proto::v1::RunSource;

    use super::*;
    use crate::store::records::JobBrief;

    fn n() -> NotificationRecord {
        NotificationRecord {
            event: "broken".into(),
            run_id: "7".into(),
            pipeline: "ci".into(),
            status: Status::Failure as i32,
            message: "step `test` <exited> with 1".into(),
            started_ms: 1_000,
            finished_ms: 3_500,
            source: Some(RunSource { branch: "main".into(), commit: "0123456789abcdef".into(), ..Default::default() }),
            jobs: vec![JobBrief { id: "7.1".into(), name: "test".into(), status: Status::Failure as i32 }],
            ..Default::default()
        }
    }

    #[test]
    fn each_form_says_what_ended_and_escapes_what_a_run_wrote() {
        let p = payload(&n(), "d1", "https://ci.example", 5_000);
        assert_eq!(
            (p["event"].as_str(), p["kind"].as_str(), p["run"]["status"].as_str()),
            (Some("broken"), Some("run"), Some("failure"))
        );
        assert_eq!(p["run"]["duration_seconds"], 2.5);
        assert_eq!(p["jobs"][0]["name"], "test");
        assert_eq!(p["run"]["url"], "https://ci.example/runs/7");
        let s = slack(&n(), "https://ci.example")["text"].as_str().unwrap().to_string();
        assert!(
            s.contains("<https://ci.example/runs/7|ci is broken on main (0123456)>") && s.contains("&lt;exited&gt;"),
            "{s}"
        );
        let m = matrix(&n(), "https://ci.example");
        assert!(m["html"].as_str().unwrap().contains("&lt;exited&gt;"));
        let (subject, body) = email(&n(), "https://ci.example");
        assert_eq!(subject, "[viaduct] ci is broken on main (0123456)");
        assert!(body.contains("https://ci.example/runs/7") && body.contains("failure    test"), "{body}");
        let job = NotificationRecord { job_id: "7.1".into(), job_name: "test".into(), jobs: vec![], ..n() };
        let p = payload(&job, "d2", "https://ci.example", 5_000);
        assert_eq!(
            (p["kind"].as_str(), p["job"]["url"].as_str()),
            (Some("job"), Some("https://ci.example/runs/7/jobs/7.1"))
        );
    }
}
