//! The deploy itself: upload to every host at once, switch in rolling
//! batches with restart and health checks, undo every switch when a batch
//! fails, prune. Everything remote goes through a [`Remote`], so the whole
//! flow runs in native unit tests against a scripted one.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use viaduct_plugin_common::{release, time::Utc};
use viaduct_plugin_sdk::{
    Meta, Result,
    exec::{Command, Exit},
};

use crate::{
    inputs::{Mode, Settings},
    remote::{self, SSH_FAILED, Ssh},
    target::Target,
};

/// What a batch of remote commands is for (the log says it; tests script
/// answers by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Check the release is new, read `current`.
    Prepare,
    /// `scp` the source.
    Upload,
    /// Move the upload into place.
    Finalize,
    /// Remove an unfinished upload.
    Discard,
    /// Switch `current`.
    Switch,
    /// The `restart` command.
    Restart,
    /// The `health` command.
    Health,
    /// Switch `current` back after a failure.
    Undo,
    /// The `restart` command after an undo.
    UndoRestart,
    /// Read `current`, the releases and the log.
    Inspect,
    /// Remove old releases.
    Prune,
}

impl Phase {
    /// Its name in the log.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Upload => "upload",
            Phase::Finalize => "finalize",
            Phase::Discard => "discard",
            Phase::Switch => "switch",
            Phase::Restart => "restart",
            Phase::Health => "health",
            Phase::Undo => "rollback",
            Phase::UndoRestart => "restart after rollback",
            Phase::Inspect => "inspect",
            Phase::Prune => "prune",
        }
    }
}

/// Runs commands on the runner and keeps time: the sandbox's `exec-all`,
/// or a script in tests.
pub trait Remote {
    /// Runs every `(label, command)` at once; one result per command, in
    /// order. `Err`: the command could not be started.
    fn run_all(&mut self, phase: Phase, cmds: &[(String, Command)]) -> Vec<Result<Exit>>;
    /// Unix milliseconds now.
    fn now_ms(&mut self) -> u64;
    /// Waits.
    fn sleep(&mut self, d: Duration);
}

/// Where a host stands at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `current` is the new release.
    Switched,
    /// Switched, then switched back because a host failed.
    RolledBack,
    /// This host failed (or could not be switched back).
    Failed,
    /// Not changed (a later batch, or the upload failed elsewhere).
    Untouched,
}

impl Status {
    /// As in the `targets` output.
    pub fn word(self) -> &'static str {
        match self {
            Status::Switched => "switched",
            Status::RolledBack => "rolled_back",
            Status::Failed => "failed",
            Status::Untouched => "untouched",
        }
    }
}

/// What happened on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// The host.
    pub target: Target,
    /// Its end state.
    pub status: Status,
    /// Where `current` pointed before (as `readlink` printed it).
    pub previous: Option<String>,
    /// The release it was (to be) switched to.
    pub to: Option<String>,
    /// Unix ms its `current` switched to `to`.
    pub switched_ms: Option<u64>,
    /// How long its switch, restart and health check took (its batch's).
    pub took_ms: Option<u64>,
    /// What failed on it.
    pub error: Option<String>,
    /// What was done about it (rolled back to …, rollback failed: …).
    pub note: Option<String>,
}

impl HostReport {
    /// The release that was current before (the name, or the link as read
    /// when it does not point into `releases/`).
    pub fn previous_release(&self) -> Option<&str> {
        self.previous.as_deref().map(|p| remote::release_of(p).unwrap_or(p))
    }
}

/// Deploy or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new release.
    Deploy,
    /// Back to the release before.
    Rollback,
}

impl Action {
    /// `deploy` or `rollback`.
    pub fn word(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
        }
    }
}

/// What a step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Deploy or rollback.
    pub action: Action,
    /// The release deployed (a rollback: the first host's target, if any).
    pub release: Option<String>,
    /// Per host, in the order of `hosts`.
    pub hosts: Vec<HostReport>,
    /// Old releases removed (over all hosts).
    pub removed: Vec<String>,
    /// Problems that did not fail the step.
    pub warnings: Vec<String>,
    /// Why the step failed (naming the host and what failed).
    pub failure: Option<String>,
    /// Unix ms the step started.
    pub started_ms: u64,
    /// How long the upload took (deploys).
    pub upload_ms: Option<u64>,
    /// Unix ms it ended.
    pub finished_ms: u64,
}

impl Report {
    /// The hosts now running the release (switched by this step).
    pub fn switched(&self) -> impl Iterator<Item = &HostReport> {
        self.hosts.iter().filter(|h| h.status == Status::Switched)
    }

    /// When the first host's link switched.
    pub fn first_switched_ms(&self) -> Option<u64> {
        self.hosts.iter().filter_map(|h| h.switched_ms).min()
    }
}

/// The source of a deploy, as scanned in the workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Workspace-relative path.
    pub path: String,
    /// A single file (put into the release) rather than a directory (whose
    /// contents become the release).
    pub file: bool,
}

/// One line of a host's `deployments.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// `deploy`, `rollback` or `undo` (a switch put back after a failure).
    pub action: String,
    /// The release made current (empty: none).
    pub release: String,
    /// The release (or link) current before.
    #[serde(default)]
    pub previous: Option<String>,
    /// Commit SHA of the run.
    #[serde(default)]
    pub commit: String,
    /// Run id.
    #[serde(default)]
    pub run_id: String,
    /// Pipeline.
    #[serde(default)]
    pub pipeline: String,
    /// Job name.
    #[serde(default)]
    pub job: String,
    /// Branch or tag.
    #[serde(default, rename = "ref")]
    pub git_ref: String,
    /// Runner machine.
    #[serde(default)]
    pub runner: String,
}

/// The releases of the log's deploys, oldest first (unreadable lines are
/// skipped).
pub fn deploys(log: &[String]) -> Vec<String> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<Record>(l).ok())
        .filter(|r| r.action == "deploy")
        .map(|r| r.release)
        .collect()
}

/// Everything a run needs besides the settings.
pub struct Context<'a> {
    /// Run metadata (for the log records).
    pub meta: &'a Meta,
    /// How to run `ssh` and `scp`.
    pub ssh: &'a Ssh,
}

struct Flow<'a, R: Remote> {
    s: &'a Settings,
    cx: &'a Context<'a>,
    remote: &'a mut R,
    report: Report,
}

/// Runs the step: a deploy of `upload` (with [`Mode::Deploy`]) or a
/// rollback. Always returns the report; [`Report::failure`] says whether
/// and why it failed.
pub fn execute<R: Remote>(s: &Settings, upload: Option<&Upload>, cx: &Context<'_>, remote: &mut R) -> Report {
    let started_ms = remote.now_ms();
    let (action, release) = match &s.mode {
        Mode::Deploy { release, .. } => (Action::Deploy, Some(release.clone())),
        Mode::Rollback => (Action::Rollback, None),
    };
    let hosts = s
        .targets
        .iter()
        .map(|t| HostReport {
            target: t.clone(),
            status: Status::Untouched,
            previous: None,
            to: release.clone(),
            switched_ms: None,
            took_ms: None,
            error: None,
            note: None,
        })
        .collect();
    let report = Report {
        action,
        release,
        hosts,
        removed: Vec::new(),
        warnings: Vec::new(),
        failure: None,
        started_ms,
        upload_ms: None,
        finished_ms: started_ms,
    };
    let mut flow = Flow { s, cx, remote, report };
    let result = match (&s.mode, upload) {
        (Mode::Deploy { release, .. }, Some(upload)) => flow.deploy(release, upload),
        (Mode::Deploy { .. }, None) => Err("nothing to upload".to_owned()),
        (Mode::Rollback, _) => flow.rollback(),
    };
    if let Err(failure) = result {
        flow.report.failure = Some(failure);
    }
    flow.report.finished_ms = flow.remote.now_ms();
    flow.report
}

/// Why a remote command failed, from its answer.
fn failure(phase: Phase, answer: &Result<Exit>) -> Option<String> {
    match answer {
        Ok(exit) if exit.success() => None,
        Ok(exit) if exit.code == SSH_FAILED => Some(format!(
            "{}: ssh failed (exit code 255: connection, authentication or host key; see the log)",
            phase.name()
        )),
        Ok(exit) if phase == Phase::Prepare && exit.code == remote::EXISTS => {
            Some("the release already exists there".to_owned())
        }
        Ok(exit) => Some(format!("{} failed with exit code {}", phase.name(), exit.code)),
        Err(e) => Some(format!("{}: {}", phase.name(), e.message())),
    }
}

/// The first line of captured output.
fn stdout(answer: &Result<Exit>) -> String {
    answer.as_ref().map(|e| String::from_utf8_lossy(&e.stdout).into_owned()).unwrap_or_default()
}

impl<R: Remote> Flow<'_, R> {
    fn target(&self, i: usize) -> &Target {
        &self.report.hosts[i].target
    }

    /// Runs one command per host of `on`, at once; answers in that order.
    fn run(&mut self, phase: Phase, on: &[usize], command: impl Fn(&Self, usize) -> Command) -> Vec<Result<Exit>> {
        if on.is_empty() {
            return Vec::new();
        }
        let cmds: Vec<(String, Command)> = on.iter().map(|&i| (self.target(i).to_string(), command(self, i))).collect();
        let mut answers = self.remote.run_all(phase, &cmds);
        answers.resize_with(on.len(), || Err(viaduct_plugin_sdk::Error::msg("no answer")));
        answers
    }

    /// Marks the failed hosts of `failed` and every other host that is
    /// still untouched as is; the message names the first failed host.
    fn fail(&mut self, what: &str, failed: &[(usize, String)]) -> String {
        for (i, why) in failed {
            let h = &mut self.report.hosts[*i];
            h.status = Status::Failed;
            h.error = Some(why.clone());
        }
        let (i, why) = &failed[0];
        let more = match failed.len() {
            1 => String::new(),
            n => format!(" (and on {} more host{})", n - 1, if n == 2 { "" } else { "s" }),
        };
        format!("{what} failed on {}: {why}{more}", self.target(*i))
    }

    fn record(&self, action: &str, release: &str, previous: Option<&str>, now_ms: u64) -> String {
        let m = self.cx.meta;
        let record = Record {
            time: Utc::from_unix(now_ms / 1000).rfc3339(),
            action: action.to_owned(),
            release: release.to_owned(),
            previous: previous.map(str::to_owned),
            commit: m.commit.clone(),
            run_id: m.run_id.clone(),
            pipeline: m.pipeline.clone(),
            job: m.job_name.clone(),
            git_ref: m.git_ref().to_owned(),
            runner: m.runner.clone(),
        };
        serde_json::to_string(&record).unwrap_or_default()
    }

    fn deploy(&mut self, release: &str, upload: &Upload) -> Result<(), String> {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let all: Vec<usize> = (0..self.report.hosts.len()).collect();
        let upload_started = self.remote.now_ms();

        // Check the release is new everywhere; read `current`.
        let answers = self.run(Phase::Prepare, &all, |f, i| {
            ssh.ssh_capture(f.target(i), &remote::prepare(base, release, upload.file))
        });
        let failed = self.collect(Phase::Prepare, &all, &answers);
        for (&i, a) in all.iter().zip(&answers) {
            if a.as_ref().is_ok_and(Exit::success) {
                self.report.hosts[i].previous = remote::parse_previous(&stdout(a));
            }
        }
        if !failed.is_empty() {
            let prepared: Vec<usize> = all.iter().copied().filter(|i| !failed.iter().any(|(f, _)| f == i)).collect();
            self.discard(release, &prepared, &[]);
            return Err(self.fail("the upload", &failed));
        }

        // Upload everywhere at once.
        let dest = remote::upload_dest(base, release, upload.file);
        let answers = self.run(Phase::Upload, &all, |f, i| ssh.scp(f.target(i), &upload.path, &dest));
        let failed = self.collect(Phase::Upload, &all, &answers);
        if !failed.is_empty() {
            self.discard(release, &all, &[]);
            return Err(self.fail("the upload", &failed));
        }
        let answers = self.run(Phase::Finalize, &all, |f, i| ssh.ssh(f.target(i), &remote::finalize(base, release)));
        let failed = self.collect(Phase::Finalize, &all, &answers);
        if !failed.is_empty() {
            let placed: Vec<usize> = all.iter().copied().filter(|i| !failed.iter().any(|(f, _)| f == i)).collect();
            self.discard(release, &all, &placed);
            return Err(self.fail("the upload", &failed));
        }
        self.report.upload_ms = Some(self.remote.now_ms().saturating_sub(upload_started));

        self.roll(Action::Deploy)?;
        self.prune(release);
        Ok(())
    }

    /// The failures among `answers` (for the hosts `on`).
    fn collect(&self, phase: Phase, on: &[usize], answers: &[Result<Exit>]) -> Vec<(usize, String)> {
        on.iter().zip(answers).filter_map(|(&i, a)| failure(phase, a).map(|why| (i, why))).collect()
    }

    /// Removes the uploads on `on` (and the release on `placed`), best
    /// effort: the release was refused or never went live there.
    fn discard(&mut self, release: &str, on: &[usize], placed: &[usize]) {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let answers = self
            .run(Phase::Discard, on, |f, i| ssh.ssh(f.target(i), &remote::discard(base, release, placed.contains(&i))));
        for (&i, a) in on.iter().zip(&answers) {
            if let Some(why) = failure(Phase::Discard, a) {
                let msg = format!("{}: cannot remove the unfinished upload of `{release}`: {why}", self.target(i));
                self.report.warnings.push(msg);
            }
        }
    }

    fn rollback(&mut self) -> Result<(), String> {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let all: Vec<usize> = (0..self.report.hosts.len()).collect();
        let answers = self.run(Phase::Inspect, &all, |f, i| ssh.ssh_capture(f.target(i), &remote::inspect(base)));
        let mut failed = self.collect(Phase::Inspect, &all, &answers);
        for (&i, a) in all.iter().zip(&answers) {
            if failed.iter().any(|(f, _)| *f == i) {
                continue;
            }
            let seen = remote::parse_inspect(&stdout(a));
            let h = &mut self.report.hosts[i];
            h.previous = seen.current.clone();
            match rollback_target(&seen) {
                Ok(to) => h.to = Some(to),
                Err(why) => failed.push((i, why)),
            }
        }
        if !failed.is_empty() {
            failed.sort_by_key(|(i, _)| *i);
            return Err(self.fail("the rollback", &failed));
        }
        self.report.release = self.report.hosts.first().and_then(|h| h.to.clone());
        self.roll(Action::Rollback)
    }

    /// Switches every host to its `to`, in batches of `max_unavailable`:
    /// switch, restart, health. When a host of a batch fails, every host
    /// switched so far is switched back (and restarted), later batches are
    /// left alone, and the error names the host.
    fn roll(&mut self, action: Action) -> Result<(), String> {
        let n = self.report.hosts.len();
        let batch_size = self.s.max_unavailable.max(1);
        let mut switched: Vec<usize> = Vec::new();
        for start in (0..n).step_by(batch_size) {
            let batch: Vec<usize> = (start..(start + batch_size).min(n)).collect();
            let started = self.remote.now_ms();
            let failed = self.batch(action, &batch);
            let took = self.remote.now_ms().saturating_sub(started);
            for &i in &batch {
                self.report.hosts[i].took_ms = Some(took);
            }
            // A host whose switch failed may or may not have switched:
            // putting its link back is harmless either way.
            switched.extend(&batch);
            if !failed.is_empty() {
                let message = self.fail(&format!("the {}", action.word()), &failed);
                let undone = self.undo(&switched);
                return Err(format!("{message}; {undone}"));
            }
        }
        Ok(())
    }

    /// One batch: switch, then restart, then health; the failures.
    fn batch(&mut self, action: Action, batch: &[usize]) -> Vec<(usize, String)> {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let now = self.remote.now_ms();
        let lines: Vec<String> = batch
            .iter()
            .map(|&i| {
                let h = &self.report.hosts[i];
                self.record(action.word(), h.to.as_deref().unwrap_or_default(), h.previous_release(), now)
            })
            .collect();
        let answers = self.run(Phase::Switch, batch, |f, i| {
            let h = &f.report.hosts[i];
            let line = &lines[batch.iter().position(|b| *b == i).unwrap_or_default()];
            ssh.ssh_capture(&h.target, &remote::switch(base, h.to.as_deref().unwrap_or_default(), line))
        });
        let after = self.remote.now_ms();
        let failed = self.collect(Phase::Switch, batch, &answers);
        for (&i, a) in batch.iter().zip(&answers) {
            if a.as_ref().is_ok_and(Exit::success) {
                let h = &mut self.report.hosts[i];
                h.status = Status::Switched;
                h.switched_ms = Some(remote::parse_switched(&stdout(a)).unwrap_or(after));
            }
        }
        if !failed.is_empty() {
            return failed;
        }
        if let Some(restart) = &self.s.restart {
            let answers = self.run(Phase::Restart, batch, |f, i| {
                let to = f.report.hosts[i].to.as_deref().unwrap_or_default();
                let dir = format!("{base}/{}/{to}", remote::RELEASES);
                ssh.ssh(f.target(i), &remote::user_command(&dir, to, restart))
            });
            let failed = self.collect(Phase::Restart, batch, &answers);
            if !failed.is_empty() {
                return failed;
            }
        }
        if let Some(health) = &self.s.health {
            return self.health(batch, health);
        }
        Vec::new()
    }

    /// Runs `health` on the hosts of `batch` until it passes on each, at
    /// most `1 + health_retries` times; the hosts where it never did.
    fn health(&mut self, batch: &[usize], health: &str) -> Vec<(usize, String)> {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let tries = self.s.health_retries + 1;
        let mut pending: Vec<usize> = batch.to_vec();
        let mut last: Vec<(usize, String)> = Vec::new();
        for attempt in 1..=tries {
            let answers = self.run(Phase::Health, &pending, |f, i| {
                let to = f.report.hosts[i].to.as_deref().unwrap_or_default();
                let dir = format!("{base}/{}/{to}", remote::RELEASES);
                ssh.ssh(f.target(i), &remote::user_command(&dir, to, health))
            });
            last = self.collect(Phase::Health, &pending, &answers);
            pending = last.iter().map(|(i, _)| *i).collect();
            if pending.is_empty() {
                return Vec::new();
            }
            if attempt < tries {
                viaduct_plugin_sdk::log::info(format!(
                    "health check failed on {} host(s) (try {attempt} of {tries}); trying again in {} ms",
                    pending.len(),
                    self.s.health_interval.as_millis()
                ));
                self.remote.sleep(self.s.health_interval);
            }
        }
        let plural = if tries == 1 { "" } else { "s" };
        last.into_iter()
            .map(|(i, why)| (i, format!("health check failed {tries} time{plural} (last: {why})")))
            .collect()
    }

    /// Switches the hosts of `hosts` back to their previous link (removes
    /// `current` where there was none), restarts them; sets their status.
    /// Returns what to say about it.
    fn undo(&mut self, hosts: &[usize]) -> String {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let now = self.remote.now_ms();
        let answers = self.run(Phase::Undo, hosts, |f, i| {
            let h = &f.report.hosts[i];
            let line = f.record("undo", h.previous_release().unwrap_or_default(), h.to.as_deref(), now);
            ssh.ssh(&h.target, &remote::undo(base, h.previous.as_deref(), &line))
        });
        let mut undone = Vec::new();
        let mut not_undone = Vec::new();
        for (&i, a) in hosts.iter().zip(&answers) {
            let why = failure(Phase::Undo, a);
            let h = &mut self.report.hosts[i];
            match why {
                None => {
                    h.note = Some(match h.previous_release() {
                        Some(p) => format!("rolled back to {p}"),
                        None => "rolled back (no release was current before: `current` removed)".to_owned(),
                    });
                    if h.status != Status::Failed {
                        h.status = Status::RolledBack;
                    }
                    undone.push(i);
                }
                Some(why) => {
                    h.note = Some(format!("rollback failed: {why}"));
                    h.status = Status::Failed;
                    if h.error.is_none() {
                        h.error = Some(format!("could not be rolled back: {why}"));
                    }
                    not_undone.push(i);
                }
            }
        }
        if let Some(restart) = &self.s.restart {
            let restartable: Vec<usize> =
                undone.iter().copied().filter(|&i| self.report.hosts[i].previous.is_some()).collect();
            let answers = self.run(Phase::UndoRestart, &restartable, |f, i| {
                let dir = format!("{base}/{}", remote::CURRENT);
                let prev = f.report.hosts[i].previous_release().unwrap_or_default().to_owned();
                ssh.ssh(f.target(i), &remote::user_command(&dir, &prev, restart))
            });
            for (&i, a) in restartable.iter().zip(&answers) {
                if let Some(why) = failure(Phase::UndoRestart, a) {
                    let msg = format!("{}: rolled back, but {why}", self.target(i));
                    self.report.warnings.push(msg);
                }
            }
        }
        let names = |v: &[usize]| v.iter().map(|&i| self.target(i).to_string()).collect::<Vec<_>>().join(", ");
        match (undone.is_empty(), not_undone.is_empty()) {
            (_, true) => format!("rolled back {}", names(&undone)),
            (true, false) => format!("could NOT roll back {}", names(&not_undone)),
            (false, false) => format!("rolled back {}; could NOT roll back {}", names(&undone), names(&not_undone)),
        }
    }

    /// Removes old releases on every host (beyond `keep`; never the new
    /// one or the one before it). Problems are warnings.
    fn prune(&mut self, release: &str) {
        let (base, ssh) = (self.s.path.as_str(), self.cx.ssh);
        let all: Vec<usize> = (0..self.report.hosts.len()).collect();
        let answers = self.run(Phase::Inspect, &all, |f, i| ssh.ssh_capture(f.target(i), &remote::inspect(base)));
        let mut plan: Vec<(usize, Vec<String>)> = Vec::new();
        for (&i, a) in all.iter().zip(&answers) {
            if let Some(why) = failure(Phase::Inspect, a) {
                self.report.warnings.push(format!("{}: old releases not pruned: {why}", self.target(i)));
                continue;
            }
            let seen = remote::parse_inspect(&stdout(a));
            let previous = self.report.hosts[i].previous_release().map(str::to_owned);
            let remove = prune_plan(&seen, self.s.keep, release, previous.as_deref());
            if !remove.is_empty() {
                plan.push((i, remove));
            }
        }
        let on: Vec<usize> = plan.iter().map(|(i, _)| *i).collect();
        let answers = self.run(Phase::Prune, &on, |f, i| {
            let names = plan.iter().find(|(h, _)| *h == i).map(|(_, n)| n.as_slice()).unwrap_or_default();
            ssh.ssh(f.target(i), &remote::remove(base, names))
        });
        for ((i, names), a) in plan.iter().zip(&answers) {
            match failure(Phase::Prune, a) {
                None => self.report.removed.extend(names.iter().cloned()),
                Some(why) => self.report.warnings.push(format!("{}: old releases not pruned: {why}", self.target(*i))),
            }
        }
        self.report.removed.sort();
        self.report.removed.dedup();
    }
}

/// The release a host rolls back to, from what [`remote::inspect`] saw.
pub fn rollback_target(seen: &remote::Inspected) -> Result<String, String> {
    let link = seen.current.as_deref().ok_or("nothing to roll back: there is no `current` release")?;
    let current = remote::release_of(link)
        .ok_or_else(|| format!("`current` points to `{link}`, not to `releases/<release>`: fix or remove it"))?;
    let deploys = deploys(&seen.log);
    let deploys: Vec<&str> = deploys.iter().map(String::as_str).collect();
    let on_disk = seen.releases.iter().cloned().collect();
    release::rollback_target(&deploys, current, &on_disk)
}

/// The releases a host prunes after deploying `release`: beyond `keep`,
/// never `release`, `previous` or what `current` points to; only names
/// that are release names.
pub fn prune_plan(seen: &remote::Inspected, keep: usize, release: &str, previous: Option<&str>) -> Vec<String> {
    let deploys = deploys(&seen.log);
    let deploys: Vec<&str> = deploys.iter().map(String::as_str).collect();
    let mut protect = vec![release];
    protect.extend(previous);
    protect.extend(seen.current.as_deref().and_then(remote::release_of));
    let on_disk: Vec<String> =
        seen.releases.iter().filter(|r| release::check_name("release", r).is_ok()).cloned().collect();
    release::prunable(&on_disk, &deploys, keep, &protect)
}
