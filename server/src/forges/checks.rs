//! GitHub check runs (for connections that sign in as a GitHub App): one
//! check run per context, created when its first state is sent and updated
//! after (`POST`/`PATCH /repos/{owner}/{repo}/check-runs`). A state that goes
//! back (a retried job after its end) starts a new check run, as GitHub's own
//! re-runs do. An ended one carries a summary in markdown (the jobs of a run;
//! a job's steps and its failing step's last log lines) and annotations from
//! the `file:line` messages of that step's log — at most 50 per request, as
//! the API requires, sent in further updates beyond the first 50, at most
//! [`MAX_ANNOTATIONS`] in all.

use serde_json::{Value, json};
use viaduct_proto::v1::{self, Status};

/// Annotations sent per check run, at most.
pub const MAX_ANNOTATIONS: usize = 200;
/// Annotations per request (GitHub's limit).
pub const PER_REQUEST: usize = 50;
/// Log lines shown in a failed job's summary.
pub const TAIL_LINES: usize = 30;
/// GitHub's limit on a summary.
const MAX_SUMMARY: usize = 65_535;

/// GitHub's `status` and `conclusion` for a state.
pub fn state(status: Status) -> (&'static str, Option<&'static str>) {
    match status {
        Status::Unspecified | Status::Pending | Status::Queued => ("queued", None),
        Status::Running => ("in_progress", None),
        // A skip of a job whose `if:` was false passes a required check; its
        // title says it was skipped (one after a failed need is a failure).
        Status::Success | Status::Skipped => ("completed", Some("success")),
        Status::Failure | Status::RunnerLost => ("completed", Some("failure")),
        Status::Cancelled => ("completed", Some("cancelled")),
        Status::TimedOut => ("completed", Some("timed_out")),
    }
}

/// Where a state stands: 0 waiting, 1 running, 2 ended.
pub fn rank(status: Status) -> u8 {
    match state(status).0 {
        "queued" => 0,
        "in_progress" => 1,
        _ => 2,
    }
}

/// What an ended check run says beyond its title.
#[derive(Debug, Default)]
pub struct Output {
    /// Markdown.
    pub summary: String,
    /// `file:line` messages of the failing step.
    pub annotations: Vec<Value>,
}

/// The body of a create (`name`, `head_sha`) or update request.
pub fn body(
    create: Option<(&str, &str)>,
    status: Status,
    title: &str,
    details_url: &str,
    external_id: &str,
    output: &Output,
) -> Value {
    let (state, conclusion) = state(status);
    let mut body = json!({
        "status": state,
        "details_url": details_url,
        "external_id": external_id,
        "output": {
            "title": title,
            "summary": if output.summary.is_empty() { title } else { &output.summary },
        },
    });
    if let Some((name, sha)) = create {
        body["name"] = json!(name);
        body["head_sha"] = json!(sha);
    }
    if let Some(c) = conclusion {
        body["conclusion"] = json!(c);
        body["output"]["annotations"] = json!(output.annotations.iter().take(PER_REQUEST).collect::<Vec<_>>());
    }
    body
}

/// The summary of a run: its jobs and how each ended.
pub fn run_summary(run: &v1::Run) -> String {
    let mut out = String::from("| job | result | |\n|---|---|---|\n");
    for job in &run.jobs {
        let status = Status::try_from(job.status).unwrap_or(Status::Unspecified);
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!("| {} | {} | {} |\n", cell(&job.name), word(status), cell(&job.message)),
        );
    }
    cap(out)
}

/// The summary of a job: its steps, and the failing step's last log lines.
pub fn job_summary(job: &v1::Job, failing_log: Option<(&str, &str)>) -> String {
    let mut out = String::from("| step | result | |\n|---|---|---|\n");
    for step in &job.steps {
        let status = Status::try_from(step.status).unwrap_or(Status::Unspecified);
        let code = step.exit_code.map(|c| format!("exit {c}")).unwrap_or_default();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!("| {} | {} | {} |\n", cell(&step.name), word(status), cell(&code)),
        );
    }
    if let Some((step, log)) = failing_log {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
        let tail = strip_escapes(&tail).replace("```", "ˋˋˋ");
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!("\n**{}** — last lines of its log:\n\n```\n{tail}\n```\n", cell(step)),
        );
    }
    cap(out)
}

/// `file:line[:column]: message` lines of a log (compilers, linters, test
/// runners), and rustc's `--> file:line:column` under its `error:` line, as
/// annotations: a path with no spaces that is relative and does not climb.
pub fn annotations(log: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut last_message: Option<(&str, String)> = None;
    for raw in log.lines() {
        let line = strip_escapes(raw);
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("error").or_else(|| line.strip_prefix("warning")) {
            let level = if line.starts_with("error") { "failure" } else { "warning" };
            if let Some((_, msg)) = rest.split_once(": ") {
                last_message = Some((level, msg.to_string()));
            }
        }
        let found = if let Some(at) = line.strip_prefix("--> ") {
            location(at).zip(last_message.take()).map(|((path, l), (level, msg))| (path, l, level, msg))
        } else {
            location_with_message(line)
        };
        if let Some((path, line_no, level, message)) = found {
            out.push(json!({
                "path": path,
                "start_line": line_no,
                "end_line": line_no,
                "annotation_level": level,
                "message": message.chars().take(1000).collect::<String>(),
            }));
            if out.len() == MAX_ANNOTATIONS {
                break;
            }
        }
    }
    out
}

/// `path:line[:col]` at the start of `s`; (path, line).
fn location(s: &str) -> Option<(String, u64)> {
    let mut parts = s.splitn(3, ':');
    let path = parts.next()?;
    let line: u64 = parts.next()?.trim().parse().ok()?;
    let path_ok = !path.is_empty()
        && path.len() <= 300
        && !path.starts_with('/')
        && !path.contains(char::is_whitespace)
        && path.contains(['.', '/'])
        && !path.split('/').any(|p| p == "..");
    (path_ok && line > 0).then(|| (path.trim_start_matches("./").to_string(), line))
}

/// `path:line[:col]: [error|warning:] message`.
fn location_with_message(line: &str) -> Option<(String, u64, &'static str, String)> {
    let (path, line_no) = location(line)?;
    let after = line.splitn(3, ':').nth(2)?;
    // Skip a column number.
    let after = match after.split_once(':') {
        Some((col, rest)) if col.trim().chars().all(|c| c.is_ascii_digit()) && !col.trim().is_empty() => rest,
        _ => after,
    };
    let message = after.trim();
    if message.is_empty() {
        return None;
    }
    let lower = message.to_ascii_lowercase();
    let level = if lower.starts_with("warning") {
        "warning"
    } else if lower.starts_with("note") {
        "notice"
    } else {
        "failure"
    };
    Some((path, line_no, level, message.to_string()))
}

fn word(s: Status) -> &'static str {
    use viaduct_proto::StatusWord;
    s.word()
}

/// A table cell: what a pipeline or a job wrote, as inline code — so a
/// step named `[passed](https://…)` or `<img …>` is text, not a link or an
/// image — one line, without backticks or pipes that would end it.
fn cell(s: &str) -> String {
    let line: String = s.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect();
    if line.is_empty() {
        return String::new();
    }
    format!("`{}`", line.replace('`', "ˋ").replace('|', "\\|"))
}

/// Without ANSI escape sequences (colours) and other control characters.
fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\n' || c == '\t' {
            out.push(c);
        }
    }
    out
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_SUMMARY {
        let mut end = MAX_SUMMARY - 10;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("\n…");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_line_messages_become_annotations() {
        let log = "\u{1b}[31msrc/lib.rs:12:5: error: expected `;`\u{1b}[0m\n\
                   tests/a_test.py:40: AssertionError\n\
                   warning: unused variable: `x`\n  --> src/main.rs:3:9\n\
                   /etc/passwd:1: absolute\n../up.rs:2: climbs\nhttp://example.com:80: not a path\nplain line\n";
        let a = annotations(log);
        let got: Vec<(&str, u64, &str)> = a
            .iter()
            .map(|v| {
                (
                    v["path"].as_str().unwrap(),
                    v["start_line"].as_u64().unwrap(),
                    v["annotation_level"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("src/lib.rs", 12, "failure"), ("tests/a_test.py", 40, "failure"), ("src/main.rs", 3, "warning")]
        );
        assert_eq!(a[2]["message"], "unused variable: `x`");
        let many = "f.rs:1: x\n".repeat(500);
        assert_eq!(annotations(&many).len(), MAX_ANNOTATIONS);
    }

    #[test]
    fn bodies_follow_the_api() {
        let out = Output { summary: "s".into(), annotations: (0..60).map(|i| json!({"n": i})).collect() };
        let b = body(Some(("viaduct/ci", "abc")), Status::Running, "Running", "u", "1", &out);
        assert_eq!(
            (b["status"].as_str(), b.get("conclusion"), b["name"].as_str()),
            (Some("in_progress"), None, Some("viaduct/ci"))
        );
        assert!(b["output"].get("annotations").is_none(), "annotations come with the end");
        let b = body(None, Status::Skipped, "skipped: x", "u", "1", &out);
        assert_eq!(
            (b["conclusion"].as_str(), b["output"]["annotations"].as_array().unwrap().len()),
            (Some("success"), PER_REQUEST)
        );
        assert!(b.get("name").is_none());
        let job = v1::Job {
            steps: vec![v1::Step {
                name: "te|st".into(),
                status: Status::Failure as i32,
                exit_code: Some(3),
                ..Default::default()
            }],
            ..Default::default()
        };
        let log = (1..=40).map(|i| format!("line {i}")).collect::<Vec<_>>().join("\n") + "\n```evil";
        let s = job_summary(&job, Some(("te|st", &log)));
        assert!(
            s.contains("| `te\\|st` | failure | `exit 3` |") && !s.contains("line 10\n") && s.contains("line 40"),
            "{s}"
        );
        assert!(!s.contains("```evil"), "the log cannot close the code block");
    }
}
