//! `ssh-deploy`: a workspace directory (or file) deployed to remote hosts
//! over SSH as an atomic release, uploaded to every host at once, switched
//! in rolling batches with a restart and a health check, rolled back when
//! a host fails.
//!
//! ```yaml
//! - run: npm run build
//! - uses: ssh-deploy@1
//!   with:
//!     source: dist
//!     hosts: [deploy@web-1.example.com, "deploy@[2001:db8::5]:2222"]
//!     path: /srv/website
//!     restart: sudo systemctl reload nginx
//!     health: curl -fsS http://127.0.0.1/health
//!     max_unavailable: 1
//! ```
//!
//! On each host, under `path` (the layout of the `deploy` plugin):
//!
//! ```text
//! releases/<release>/    one directory per release, never modified once in place
//! current -> releases/<release>   relative link, switched atomically
//! deployments.log        one JSON object per line: every switch (deploy, rollback, undo)
//! ```
//!
//! The flow:
//!
//! 1. The private key (`$SSH_PRIVATE_KEY`, or the variable `key_env`
//!    names) and the pinned host keys (`$SSH_KNOWN_HOSTS`) go into a fresh
//!    `.viaduct-scratch-ssh-<random>/` of the workspace ([`keys`]), removed again
//!    on every way out. Both are required: no host key is ever trusted on
//!    first use.
//! 2. On every host at once (the `exec-all` import): check the release is
//!    new and read `current`; `scp` the source into a hidden directory;
//!    move it into place. A failure anywhere removes the uploads and fails
//!    the step before anything is switched.
//! 3. In batches of `max_unavailable` hosts, in the order given: switch
//!    `current` (a new link renamed over it), run `restart`, run `health`
//!    until it passes (`health_retries`, `health_interval`). When a host of
//!    a batch fails, every host switched so far is switched back to its
//!    previous release and restarted, later batches are not touched, and
//!    the step fails naming the host and what failed.
//! 4. Old releases beyond `keep` are removed (never the new or previous
//!    one).
//!
//! `rollback: true` switches every host back to the release deployed
//! before its current one (per its `deployments.log`), in the same batches
//! with restart and health checks.
//!
//! Every `ssh` and `scp` runs with `-F /dev/null -o BatchMode=yes -o
//! IdentitiesOnly=yes -o IdentityFile=<key> -o StrictHostKeyChecking=yes
//! -o UserKnownHostsFile=<known_hosts> -o GlobalKnownHostsFile=/dev/null
//! -o ConnectTimeout=10` ([`remote::Ssh`]). The key is never in a command
//! line, the log, an output or the summary; the remote commands are logged.

#![warn(missing_docs)]

pub mod flow;
pub mod inputs;
pub mod keys;
pub mod remote;
pub mod source;
pub mod target;

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use viaduct_plugin_common::time::Utc;
use viaduct_plugin_sdk::{
    exec::{self, Command, Exit, MAX_RUN_ALL},
    markdown::{Table, bytes, code},
    prelude::*,
};

use crate::{
    flow::{Action, Phase, Remote, Report, Status},
    inputs::{Mode, With},
};

/// Runs the step.
pub fn run(ctx: Context) -> Result<Output> {
    let w: With = ctx.with()?;
    let started = SystemTime::now();
    let settings = inputs::settings(&w, ctx.meta(), Utc::from_system(started))?;
    let secrets = inputs::secrets(&w, |name| ctx.env(name))?;
    // The workspace is the current directory (`exec` runs programs there too).
    let workspace = Path::new(".");
    let scanned = match &settings.mode {
        Mode::Deploy { source, .. } => Some(source::scan(workspace, source)?),
        Mode::Rollback => None,
    };
    for stale in keys::sweep(workspace) {
        ctx.warn(format!("removed `{stale}`, a key directory an earlier step left behind"));
    }
    let key_dir = keys::KeyDir::create(workspace, &keys::random_suffix(), &secrets, |cmd| {
        let exit = cmd.run()?;
        ensure!(exit.success(), "`{cmd}` failed with exit code {}", exit.code);
        Ok(())
    })
    .context("cannot put the SSH key in place")?;
    drop(secrets);
    let ssh = key_dir.ssh();
    if let (Some(s), Mode::Deploy { release, .. }) = (&scanned, &settings.mode) {
        ctx.info(format!(
            "deploying `{}` ({} files, {}) as release `{release}` to {} host(s), {} at a time",
            s.upload.path,
            s.files,
            bytes(s.bytes),
            settings.targets.len(),
            settings.max_unavailable
        ));
    }
    let cx = flow::Context { meta: ctx.meta(), ssh: &ssh };
    let report = flow::execute(&settings, scanned.as_ref().map(|s| &s.upload), &cx, &mut Exec);
    // The key goes whatever happened; a failure to remove it fails the step.
    let removed = key_dir.remove();
    for w in &report.warnings {
        ctx.warn(w);
    }
    let out = outputs(&report, scanned.as_ref());
    match (&report.failure, removed) {
        (Some(failure), Err(e)) => Err(out.fail(format!("{failure}; also {}", e.message()))),
        (Some(failure), Ok(())) => Err(out.fail(failure)),
        (None, Err(e)) => Err(out.fail(e.message())),
        (None, Ok(())) => {
            ctx.info(format!(
                "{}: {} host(s) now on `{}`",
                report.action.word(),
                report.switched().count(),
                report.release.as_deref().unwrap_or_default()
            ));
            Ok(out)
        }
    }
}

/// The sandbox's `exec-all`, at most [`MAX_RUN_ALL`] commands per call.
struct Exec;

impl Remote for Exec {
    fn run_all(&mut self, phase: Phase, cmds: &[(String, Command)]) -> Vec<Result<Exit>> {
        log_commands(phase, cmds);
        cmds.chunks(MAX_RUN_ALL).flat_map(exec::run_all).collect()
    }

    fn now_ms(&mut self) -> u64 {
        unix_ms(SystemTime::now())
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What a command does on its host, for the log: the remote script of an
/// `ssh`, the source and destination of an `scp` (no options: they only
/// name the key's file, but say nothing useful).
pub fn describe(cmd: &Command) -> String {
    let args = cmd.get_args();
    match cmd.program() {
        "ssh" => args.last().cloned().unwrap_or_default(),
        "scp" => {
            let at = args.iter().position(|a| a == "--").map_or(0, |i| i + 1);
            format!("scp -r -p {}", args[at..].join(" "))
        }
        _ => cmd.to_string(),
    }
}

/// Logs the commands of a phase: each distinct one once, with its hosts.
fn log_commands(phase: Phase, cmds: &[(String, Command)]) {
    let mut by_command: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut order = Vec::new();
    for (label, cmd) in cmds {
        let d = describe(cmd);
        if !by_command.contains_key(&d) {
            order.push(d.clone());
        }
        by_command.entry(d).or_default().push(label);
    }
    for d in order {
        let hosts = &by_command[&d];
        let shown = if hosts.len() > 4 {
            format!("{} and {} more", hosts[..3].join(", "), hosts.len() - 3)
        } else {
            hosts.join(", ")
        };
        log::info(format!("{} on {shown}: {d}", phase.name()));
    }
}

/// The outputs and the summary of a report.
pub fn outputs(r: &Report, scanned: Option<&source::Scanned>) -> Output {
    let first = r.hosts.first();
    let switched: Vec<String> = r.switched().map(|h| h.target.to_string()).collect();
    let targets: Vec<serde_json::Value> = r
        .hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "host": h.target.to_string(),
                "status": h.status.word(),
                "previous": h.previous_release(),
                "switched_ms": h.switched_ms,
            })
        })
        .collect();
    Output::new()
        .set("release", r.release.as_deref().unwrap_or_default())
        .set("previous", first.and_then(|h| h.previous_release()).unwrap_or_default())
        .set("hosts", switched.join(","))
        .set("targets", serde_json::Value::Array(targets))
        .set("first_switched_ms", r.first_switched_ms().map(|t| t.to_string()).unwrap_or_default())
        .set("removed", r.removed.join(","))
        .summary(summary(r, scanned))
}

/// Milliseconds for people: `850 ms`, `2.4 s`.
fn millis(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

/// The markdown summary: what was deployed, then a table of the hosts.
pub fn summary(r: &Report, scanned: Option<&source::Scanned>) -> String {
    let release = r.release.as_deref().map_or_else(|| "—".to_owned(), code);
    let n = r.hosts.len();
    let title = match (r.action, &r.failure) {
        (Action::Deploy, None) => format!("### Deployed {release} to {n} host{}", if n == 1 { "" } else { "s" }),
        (Action::Rollback, None) => format!("### Rolled back {n} host{}", if n == 1 { "" } else { "s" }),
        (Action::Deploy, Some(_)) => format!("### Deploy of {release} failed"),
        (Action::Rollback, Some(_)) => "### Rollback failed".to_owned(),
    };
    let mut md = format!("{title}\n\n");
    if let Some(failure) = &r.failure {
        md.push_str(&format!("**{}**\n\n", markdown::escape(failure)));
    }
    if let Some(s) = scanned {
        md.push_str(&format!("Source {} — {} files, {}", code(&s.upload.path), s.files, bytes(s.bytes)));
        if let Some(ms) = r.upload_ms {
            md.push_str(&format!(", uploaded in {}", millis(ms)));
        }
        md.push_str(".\n\n");
    }
    let mut t = Table::new(["Host", "Status", "Previous → release", "Switched", "Took", "Notes"]);
    for h in &r.hosts {
        let status = match h.status {
            Status::Switched => "✅ switched",
            Status::RolledBack => "↩️ rolled back",
            Status::Failed => "❌ failed",
            Status::Untouched => "untouched",
        };
        let change = format!(
            "{} → {}",
            h.previous_release().map_or_else(|| "—".to_owned(), code),
            h.to.as_deref().map_or_else(|| "—".to_owned(), code)
        );
        let at = h.switched_ms.map(|t| format!("+{}", millis(t.saturating_sub(r.started_ms)))).unwrap_or_default();
        let took = h.took_ms.map(millis).unwrap_or_default();
        let notes: Vec<&str> = [h.error.as_deref(), h.note.as_deref()].into_iter().flatten().collect();
        t.row([code(&h.target.to_string()), status.to_owned(), change, at, took, notes.join("; ")]);
    }
    md.push_str(&t.to_string());
    if !r.removed.is_empty() {
        let removed: Vec<String> = r.removed.iter().map(|x| code(x)).collect();
        md.push_str(&format!("\nRemoved old releases: {}.\n", removed.join(", ")));
    }
    if !r.warnings.is_empty() {
        md.push('\n');
        for w in &r.warnings {
            md.push_str(&format!("- ⚠️ {}\n", markdown::escape(w)));
        }
    }
    md.push_str(&format!("\nTotal {}.\n", millis(r.finished_ms.saturating_sub(r.started_ms))));
    md
}

viaduct_plugin_sdk::export!(run);

#[cfg(test)]
mod tests;
