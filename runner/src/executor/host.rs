//! The host executor: steps run as `sh -e -c SCRIPT` directly on the build
//! machine.
//!
//! Each job gets `WORK_DIR/jobs/<job>-a<attempt>/` with `workspace/` (the
//! working directory), `home/` (`$HOME`) and `tmp/` (`$TMPDIR`). A step's
//! process starts with an empty environment plus exactly the variables the
//! job gives it (and a default `PATH`), in its own process group, with
//! stdout and stderr on one pipe so their order is kept.
//!
//! Stopping: on cancel or timeout the whole group gets SIGTERM, then
//! SIGKILL after the grace period. When the step's shell exits, whatever it
//! left running in its group is killed too, so no step leaves orphans.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{io::AsyncReadExt, net::unix::pipe, process::Command};
use viaduct_proto::v1::Status;

use super::{Backend, JobEnv, JobSetup, SetupError, StepLog, StepOutcome, StepSpec, StepStop};
use crate::outputs;

/// `PATH` when the job sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// File in a job directory holding the process group of its running step.
const PGID_FILE: &str = "pgid";

/// Kills process group `pgid` if it still belongs to the job in `dir`: some
/// member's working directory must be inside `dir`, so a recycled process
/// id is never hit.
fn kill_stale_group(pgid: i32, dir: &Path) {
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    let ours = procs.flatten().any(|p| {
        let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
        // Fields after the command name: state, ppid, pgrp, …
        let pgrp = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok());
        pgrp == Some(pgid) && std::fs::read_link(p.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
    });
    if ours {
        tracing::warn!(pgid, dir = %dir.display(), "killing processes left by a previous runner");
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// How long output may still arrive after the step's process group is gone
/// (from a process that left the group and kept the pipe open).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Runs jobs in per-job directories under `root`.
pub struct HostBackend {
    root: PathBuf,
    kill_grace: Duration,
    keep_workspaces: bool,
}

impl HostBackend {
    /// Job directories go under `root/jobs`. `kill_grace` is the time
    /// between SIGTERM and SIGKILL.
    pub fn new(root: &Path, kill_grace: Duration, keep_workspaces: bool) -> Self {
        Self { root: root.join("jobs"), kill_grace, keep_workspaces }
    }

    /// Cleans up after a previous runner process that died without
    /// tearing its jobs down: kills the process groups its steps left
    /// running, then removes their job directories.
    pub fn clean_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let dir = e.path();
            if let Some(pgid) = std::fs::read_to_string(dir.join(PGID_FILE)).ok().and_then(|s| s.trim().parse().ok()) {
                kill_stale_group(pgid, &dir);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[async_trait::async_trait]
impl Backend for HostBackend {
    fn executors(&self) -> Vec<String> {
        vec!["host".into()]
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        if let Some(image) = job.image.as_ref().filter(|_| job.wants_container()) {
            return Err(SetupError(format!("the host executor cannot run image `{}`", image.name)));
        }
        let dir = self.root.join(format!("{}-a{}", job.job.job_id, job.job.attempt));
        let _ = tokio::fs::remove_dir_all(&dir).await;
        for sub in ["workspace", "home", "tmp", "outputs"] {
            tokio::fs::create_dir_all(dir.join(sub))
                .await
                .map_err(|e| SetupError(format!("cannot create {}: {e}", dir.join(sub).display())))?;
        }
        Ok(Box::new(HostJob { dir, kill_grace: self.kill_grace, keep: self.keep_workspaces }))
    }
}

struct HostJob {
    dir: PathBuf,
    kill_grace: Duration,
    keep: bool,
}

#[async_trait::async_trait]
impl JobEnv for HostJob {
    fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }

    async fn run_step(&mut self, step: &StepSpec, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
        let workspace = self.workspace();
        let cwd = workspace.join(&step.working_directory);
        let output_file = self.dir.join("outputs").join(format!("step-{}", step.index));
        let mut env = step.env.clone();
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        env.insert("HOME".into(), self.dir.join("home").display().to_string());
        env.insert("TMPDIR".into(), self.dir.join("tmp").display().to_string());
        env.insert("VIADUCT_WORKSPACE".into(), workspace.display().to_string());
        env.insert("VIADUCT_OUTPUT".into(), output_file.display().to_string());
        let pgid_file = self.dir.join(PGID_FILE);
        let mut outcome = run_process(&step.script, &cwd, &env, log, stop, self.kill_grace, &pgid_file).await;
        // Tiny local files: plain syscalls (µs) beat a blocking-pool hop.
        let _ = std::fs::remove_file(&pgid_file);
        if let Ok(text) = std::fs::read_to_string(&output_file) {
            match outputs::parse(&text) {
                Ok(o) => outcome.outputs = o,
                Err(e) if outcome.status == Status::Success => {
                    outcome = StepOutcome::error(format!("invalid $VIADUCT_OUTPUT: {e}"));
                }
                Err(_) => {}
            }
        }
        outcome
    }

    async fn teardown(self: Box<Self>) {
        if !self.keep
            && let Err(e) = tokio::fs::remove_dir_all(&self.dir).await
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove job directory");
        }
    }
}

/// Why a running step is being stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopping {
    Cancelled,
    TimedOut,
}

/// Runs `sh -e -c script` in its own process group with exactly `env`,
/// streaming merged stdout/stderr to `log`. The group id is written to
/// `pgid_file` while it runs, so that a restarted runner can clean up.
pub async fn run_process(
    script: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    log: &mut StepLog,
    stop: &StepStop,
    kill_grace: Duration,
    pgid_file: &Path,
) -> StepOutcome {
    let (read_end, write_end) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return StepOutcome::error(format!("cannot create a pipe: {e}")),
    };
    let stderr_end = match write_end.try_clone() {
        Ok(w) => w,
        Err(e) => return StepOutcome::error(format!("cannot create a pipe: {e}")),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-e")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(write_end)))
        .stderr(Stdio::from(OwnedFd::from(stderr_end)))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // The command holds our copies of the pipe's write end: drop them, or
    // the pipe never reports end-of-file.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return StepOutcome::error(format!("cannot start `sh` in {}: {e}", cwd.display())),
    };
    let pgid = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    if let Some(pg) = pgid {
        let _ = std::fs::write(pgid_file, pg.to_string());
    }
    let signal_group = |sig: Signal| {
        if let Some(pg) = pgid {
            // ESRCH (the group is already gone) is fine.
            let _ = killpg(pg, sig);
        }
    };
    let mut reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(read_end)) {
        Ok(r) => r,
        Err(e) => {
            signal_group(Signal::SIGKILL);
            return StepOutcome::error(format!("cannot read the step's output: {e}"));
        }
    };

    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut exit = None;
    let mut stopping: Option<Stopping> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    while !(eof && exit.is_some()) {
        tokio::select! {
            read = reader.read(&mut buf), if !eof => match read {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => log.write(&buf[..n]).await,
            },
            status = child.wait(), if exit.is_none() => {
                exit = Some(status);
                // Leftovers of the step (background jobs) die with it.
                signal_group(Signal::SIGKILL);
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
            () = stop.cancel.cancelled(), if stopping.is_none() && exit.is_none() => {
                stopping = Some(Stopping::Cancelled);
                signal_group(Signal::SIGTERM);
                kill_at = Some(Instant::now() + kill_grace);
            }
            () = tokio::time::sleep_until(stop.deadline.unwrap_or(far).into()),
                if stopping.is_none() && exit.is_none() && stop.deadline.is_some() => {
                stopping = Some(Stopping::TimedOut);
                signal_group(Signal::SIGTERM);
                kill_at = Some(Instant::now() + kill_grace);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() && exit.is_none() => {
                signal_group(Signal::SIGKILL);
                kill_at = None;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(far).into()), if drain_until.is_some() && !eof => {
                // A process outside the group holds the pipe open.
                break;
            }
        }
    }
    let code = match exit {
        Some(Ok(s)) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().or_else(|| s.signal().map(|sig| 128 + sig))
        }
        _ => None,
    };
    match stopping {
        Some(Stopping::Cancelled) => StepOutcome {
            status: Status::Cancelled,
            exit_code: code,
            message: "cancelled".into(),
            outputs: BTreeMap::new(),
        },
        Some(Stopping::TimedOut) => StepOutcome {
            status: Status::TimedOut,
            exit_code: code,
            message: "timed out".into(),
            outputs: BTreeMap::new(),
        },
        None => match code {
            Some(0) => StepOutcome {
                status: Status::Success,
                exit_code: code,
                message: String::new(),
                outputs: BTreeMap::new(),
            },
            Some(c) => StepOutcome {
                status: Status::Failure,
                exit_code: code,
                message: format!("exited with code {c}"),
                outputs: BTreeMap::new(),
            },
            None => StepOutcome::error("the step's process could not be waited for"),
        },
    }
}
