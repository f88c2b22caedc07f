//! The host executor: steps run as `sh -e -c SCRIPT` directly on the build
//! machine.
//!
//! Each job gets `WORK_DIR/jobs/<job>-a<attempt>/` with `workspace/` (the
//! working directory), `home/` (`$HOME`) and `tmp/` (`$TMPDIR`). A step's
//! process starts with an empty environment plus exactly the variables the
//! job gives it (and a default `PATH`), in its own process group, with
//! stdout and stderr on one pipe so their order is kept.
//!
//! Containment: each job has a cgroup and its steps a child cgroup of it
//! (see [`super::cgroup`] and [`HostJob::step_cgroup`]), recorded in the
//! job directory before the step starts. Where cgroup v2 is not available, the step's process group is
//! recorded instead — by the step's own process, before it executes the
//! script, so a runner killed at any moment has always written it down.
//!
//! Stopping: on cancel or timeout the whole group gets SIGTERM, then
//! SIGKILL (the whole cgroup) after the grace period. When the step's
//! shell exits, whatever it left running is killed too — with a cgroup,
//! also what left the process group (`setsid`) — so no step leaves
//! orphans. A restarted runner kills what its dead predecessor's steps
//! left, from the records in the job directories.
//!
//! A debug shell runs the same way, on a pseudo-terminal, in a session of
//! its own (see the `shell` module).

use std::{
    collections::BTreeMap,
    ffi::{CString, OsStr},
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{io::AsyncReadExt, net::unix::pipe};
use viaduct_proto::v1::Status;

use self::launch::{Enter, Launch};
use super::{
    Backend, JobEnv, JobSetup, SetupError, Shell, ShellSpec, StepLog, StepOutcome, StepSpec, StepStop,
    cgroup::{Cgroups, JobCgroup, StepCgroup},
    isolation::{JobUser, SPARE_MOUNTS_AGE, SlotUser, SlotUsers},
};
use crate::outputs;

mod launch;
pub mod programs;
mod shell;

/// `PATH` when the job sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// File in a job directory holding the process group of its running step
/// (without cgroups).
const PGID_FILE: &str = "pgid";
/// File in a job directory holding the path of the job's cgroup.
const CGROUP_FILE: &str = "cgroup";
/// File in a job directory holding the session of its interactive shell
/// (without cgroups).
const SHELL_PGID_FILE: &str = "shell-pgid";

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

/// How long a connected runner's host job leaves its leftovers after its
/// end is reported (see [`HostBackend::leftovers_after`]): its directory's
/// and cgroup's removal, and a spare mount namespace for a later job.
/// Whatever the job left running is killed, its directory closed and its
/// user given back at once (the slot's next job may start); the rest
/// waits on a timer — not on the end's delivery, which the runner does not
/// see — long enough for the run's end to reach its client on a small
/// machine (~1–2 ms on 2 cores), because it ran on the cores that end
/// needs: the server's last commit, the followers told, the client
/// printing the end and exiting. On a 2-core machine a 10-step job through
/// the CLI ended 0.22–0.25 ms sooner (three rounds of 300 jobs, alternating
/// with a runner without the wait, 30 ms apart); lowering the rest's CPU
/// priority (nice 19) instead gained nothing measurable. The work is moved,
/// not saved: a job that starts within the wait meets it.
pub const LEFTOVERS_AFTER: Duration = Duration::from_millis(5);

/// Runs jobs in per-job directories under `root`.
pub struct HostBackend {
    root: PathBuf,
    kill_grace: Duration,
    keep_workspaces: bool,
    cgroups: Option<Cgroups>,
    users: Option<std::sync::Arc<SlotUsers>>,
    leftovers_after: Duration,
}

impl HostBackend {
    /// Job directories go under `root/jobs`. `kill_grace` is the time
    /// between SIGTERM and SIGKILL. `cgroups`: where jobs' cgroups go
    /// (`None`: process groups only). `users`: the slot users jobs run as
    /// (`None`: the runner's own user).
    pub fn new(
        root: &Path,
        kill_grace: Duration,
        keep_workspaces: bool,
        cgroups: Option<Cgroups>,
        users: Option<std::sync::Arc<SlotUsers>>,
    ) -> Self {
        let jobs = root.join("jobs");
        if users.is_some() {
            // Jobs pass through to their own directory; they list nothing.
            let _ = std::fs::create_dir_all(&jobs);
            super::isolation::restrict(root, 0o711);
            super::isolation::restrict(&jobs, 0o711);
            super::isolation::check_reachable(root);
        }
        Self { root: jobs, kill_grace, keep_workspaces, cgroups, users, leftovers_after: Duration::ZERO }
    }

    /// Leaves each job's leftovers (directory, cgroup, a spare namespace)
    /// `after` its end, rather than at once: [`LEFTOVERS_AFTER`] for a
    /// runner whose jobs' ends go out to a server and its clients; none
    /// where nothing is waiting on another process (`viaduct exec`, whose
    /// next job would only wait).
    #[must_use]
    pub fn leftovers_after(mut self, after: Duration) -> Self {
        self.leftovers_after = after;
        self
    }

    /// Cleans up after a previous runner process that died without
    /// tearing its jobs down: kills every process its jobs left (from the
    /// cgroup or process group each job directory records), then removes
    /// the job directories.
    pub fn clean_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let dir = e.path();
            if let Ok(cgroup) = std::fs::read_to_string(dir.join(CGROUP_FILE)) {
                let cgroup = JobCgroup::at(PathBuf::from(cgroup.trim()));
                if cgroup.path().exists() {
                    tracing::warn!(cgroup = %cgroup.path().display(), "killing processes left by a previous runner");
                    cgroup.kill();
                }
            }
            if let Some(pgid) = std::fs::read_to_string(dir.join(PGID_FILE)).ok().and_then(|s| s.trim().parse().ok()) {
                kill_stale_group(pgid, &dir);
            }
            if let Some(sid) =
                std::fs::read_to_string(dir.join(SHELL_PGID_FILE)).ok().and_then(|s| s.trim().parse().ok())
            {
                // Its session, if it is still the job's: a member works
                // in the job's directory.
                let sid = Pid::from_raw(sid);
                if !shell::session_members(sid, Some(&dir)).is_empty() {
                    tracing::warn!(session = %sid, dir = %dir.display(), "killing a shell left by a previous runner");
                    shell::kill_session(sid, Signal::SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

#[async_trait::async_trait]
impl Backend for HostBackend {
    fn executors(&self) -> Vec<viaduct_proto::v1::Executor> {
        vec![viaduct_proto::v1::Executor::Host]
    }

    async fn setup(&self, job: &JobSetup) -> Result<Box<dyn JobEnv>, SetupError> {
        if let Some(image) = job.image.as_ref().filter(|_| job.wants_container()) {
            return Err(SetupError(format!("the host executor cannot run image `{}`", image.name)));
        }
        let name = format!("{}-a{}", job.job.job_id, job.job.attempt);
        let dir = self.root.join(&name);
        let mut user = match &self.users {
            Some(users) => Some(users.take().await),
            None => None,
        };
        let (cgroups, d, uid) = (self.cgroups.clone(), dir.clone(), user.as_ref().map(|u| u.user.uid));
        // The slot users, when the job gets a mount namespace of its own.
        let namespaces = self.users.clone().filter(|_| user.as_ref().is_some_and(|u| u.user.private_proc()));
        let spares = namespaces.clone();
        // One hop off the async workers for all of it.
        let (cgroup, mounts) = tokio::task::spawn_blocking(move || {
            // First: failing, it leaves nothing to clean up.
            let mounts = namespaces
                .map(|users| users.mounts())
                .transpose()
                .map_err(|e| format!("cannot make the job's mount namespace: {e}"))?;
            Ok::<_, String>((prepare(&d, &name, uid, cgroups.as_ref())?, mounts))
        })
        .await
        .map_err(|e| SetupError(format!("cannot prepare the job's directory: {e}")))?
        .map_err(SetupError)?;
        if let (Some(u), Some(m)) = (user.as_mut(), mounts) {
            u.user.set_mounts(m);
        }
        let programs = std::sync::Arc::new(programs::HostPrograms {
            dir: dir.clone(),
            cgroup: cgroup.clone(),
            user: user.as_ref().map(|u| u.user.clone()),
            next: std::sync::atomic::AtomicU32::new(0),
        });
        Ok(Box::new(HostJob {
            dir,
            kill_grace: self.kill_grace,
            keep: self.keep_workspaces,
            leftovers_after: self.leftovers_after,
            cgroup,
            spare: None,
            spare_mounts: spares,
            user,
            programs,
            shells: Vec::new(),
        }))
    }
}

/// Makes the job's directory (its user's, nobody else's, when it has one)
/// and its cgroup. Blocking.
fn prepare(dir: &Path, name: &str, uid: Option<u32>, cgroups: Option<&Cgroups>) -> Result<Option<JobCgroup>, String> {
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["workspace", "home", "tmp", "outputs"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
    }
    if let Some(uid) = uid {
        // The job directory stays root's (0711): the job cannot rename its
        // workspace and put a link in its place, which the runner — root —
        // would then follow when it checks out, restores a cache or hands
        // files over. What is in it is the job's, and only the job's.
        let give = || -> std::io::Result<()> {
            use std::os::unix::fs::PermissionsExt;
            for p in ["workspace", "home", "tmp", "outputs"] {
                std::os::unix::fs::lchown(dir.join(p), Some(uid), Some(uid))?;
                std::fs::set_permissions(dir.join(p), std::fs::Permissions::from_mode(0o700))?;
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        };
        give().map_err(|e| format!("cannot give the job's directory to its user: {e}"))?;
    }
    cgroups.map(|c| job_cgroup(c, name, dir)).transpose().map_err(|e| format!("cannot create the job's cgroup: {e}"))
}

/// The job's cgroup, recorded in its directory before it exists (a runner
/// killed in between leaves a record of nothing, never a cgroup without a
/// record).
fn job_cgroup(cgroups: &Cgroups, name: &str, dir: &Path) -> std::io::Result<JobCgroup> {
    let path = cgroups.path_of(name);
    std::fs::write(dir.join(CGROUP_FILE), path.as_os_str().as_encoded_bytes())?;
    cgroups.job(name)
}

struct HostJob {
    dir: PathBuf,
    kill_grace: Duration,
    keep: bool,
    /// See [`HostBackend::leftovers_after`].
    leftovers_after: Duration,
    cgroup: Option<JobCgroup>,
    /// The last step's cgroup, the next step's once it reads empty
    /// ([`HostJob::step_cgroup`]).
    spare: Option<StepCgroup>,
    /// The slot users, when this job had a mount namespace of its own: the
    /// next job's is made at this one's end ([`make_spare_mounts`]).
    spare_mounts: Option<std::sync::Arc<SlotUsers>>,
    user: Option<SlotUser>,
    programs: std::sync::Arc<programs::HostPrograms>,
    /// The interactive shells started (stopped at teardown).
    shells: Vec<(tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl HostJob {
    /// The cgroup step `index` runs in (`None` without cgroups): the last
    /// step's once nothing is left in it (a step's leftovers are killed at
    /// its end; one still dying, or one that would not die, gets the step
    /// a new cgroup), so that a job makes and removes one cgroup directory
    /// in the kernel's tree rather than one a step. (From Linux 6.19 a
    /// cgroup can read populated for a moment after its last process's exit
    /// was reported: the step then gets a new one, which costs only time.)
    fn step_cgroup(&mut self, index: u32) -> Option<std::io::Result<StepCgroup>> {
        let job = self.cgroup.as_ref()?;
        Some(match self.spare.take().filter(|cg| !cg.populated()) {
            Some(cg) => Ok(cg),
            None => job.step(index),
        })
    }
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
        let containment = match self.step_cgroup(step.index) {
            Some(Ok(cg)) => Containment::Cgroup(cg),
            Some(Err(e)) => return StepOutcome::error(format!("cannot create the step's cgroup: {e}")),
            None => match Containment::pgid_file(&self.dir.join(PGID_FILE)) {
                Ok(c) => c,
                Err(e) => return StepOutcome::error(e),
            },
        };
        let process = Process {
            script: &step.script,
            cwd: &cwd,
            env: &env,
            kill_grace: self.kill_grace,
            containment: &containment,
            user: self.user.as_ref().map(|u| &u.user),
        };
        let mut outcome = run_process(&process, log, stop).await;
        if outcome.exit_code == Some(127) && outcome.status == Status::Failure {
            // The shell's "command not found": say where it looked.
            outcome.message = format!(
                "exited with code 127 (command not found) — the step's PATH is {}; a toolchain installed for the \
                 runner machine's user needs `--inherit-env PATH` (or `--env PATH=…`) on the runner, or `env: PATH` \
                 in the pipeline",
                env.get("PATH").map_or("empty", String::as_str)
            );
        }
        // Tiny local files: plain syscalls (µs) beat a blocking-pool hop.
        match containment {
            Containment::ProcessGroup { path, .. } => {
                let _ = std::fs::remove_file(path);
            }
            Containment::Cgroup(cg) => self.spare = Some(cg),
        }
        // Written by the job: read the way it cannot redirect (the runner
        // may be root).
        match outputs::read(&output_file) {
            Ok(None) => {}
            Ok(Some(text)) => match outputs::parse(&text) {
                Ok(o) => outcome.outputs = o,
                Err(e) if outcome.status == Status::Success => {
                    outcome = StepOutcome::error(format!("invalid $VIADUCT_OUTPUT: {e}"));
                }
                Err(_) => {}
            },
            Err(e) => outcome = StepOutcome::error(e),
        }
        outcome
    }

    fn programs(&self) -> std::sync::Arc<dyn super::programs::Programs> {
        self.programs.clone()
    }

    async fn adopt_workspace(&mut self) {
        if let Some(user) = &self.user {
            let (uid, ws) = (user.user.uid, self.workspace());
            let _ = tokio::task::spawn_blocking(move || super::isolation::give(uid, &ws)).await;
        }
    }

    async fn shell(&mut self, spec: &ShellSpec) -> Result<Shell, String> {
        let workspace = self.workspace();
        let mut env = spec.env.clone();
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        env.insert("HOME".into(), self.dir.join("home").display().to_string());
        env.insert("TMPDIR".into(), self.dir.join("tmp").display().to_string());
        env.insert("VIADUCT_WORKSPACE".into(), workspace.display().to_string());
        env.insert("TERM".into(), spec.term().to_string());
        // A cgroup of the job no step or program uses (they count up from
        // 1 and 1000).
        let n = u32::try_from(self.shells.len()).unwrap_or(u32::MAX);
        let containment = match &self.cgroup {
            Some(job) => Containment::Cgroup(
                job.step(u32::MAX - n).map_err(|e| format!("cannot create the shell's cgroup: {e}"))?,
            ),
            None => Containment::pgid_file(&self.dir.join(SHELL_PGID_FILE))?,
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let (shell, task) = shell::start(shell::Start {
            cwd: &workspace,
            env: &env,
            cols: spec.cols,
            rows: spec.rows,
            containment,
            user: self.user.as_ref().map(|u| &u.user),
            kill_grace: self.kill_grace,
            cancel: cancel.clone(),
        })?;
        self.shells.push((cancel, task));
        Ok(shell)
    }

    async fn teardown(mut self: Box<Self>) {
        if let Some(user) = &self.user {
            user.releasing();
        }
        for (cancel, task) in std::mem::take(&mut self.shells) {
            // Killed at once; its task ends once the output is drained.
            cancel.cancel();
            let _ = task.await;
        }
        let (cgroup, dir, closed) = (self.cgroup.clone(), self.dir.clone(), self.user.is_some());
        // Whatever any step left running (detached or not) dies here, and
        // the job's directory (root's) is closed to its user: the next job
        // of the slot, as the same user, reaches nothing of this one — then
        // the user is let go, before the (maybe long) removals. Without
        // cgroups (process groups only: a documented weaker containment)
        // nothing more can be known.
        let clean = tokio::task::spawn_blocking(move || {
            let dead = cgroup.is_none_or(|c| c.kill_only());
            let closed = !closed || {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok()
            };
            dead && closed
        })
        .await
        .unwrap_or(false);
        let spare = match self.user.take() {
            Some(user) if clean => {
                drop(user);
                self.spare_mounts.take()
            }
            Some(user) => {
                // A process of the job may still run as it, or its directory
                // is still open to it: no other job gets it.
                tracing::warn!(
                    uid = user.user.uid,
                    dir = %self.dir.display(),
                    "a job's processes did not all die, or its directory could not be closed: its user is not given \
                     to another job until the runner restarts"
                );
                user.quarantine();
                None
            }
            None => None,
        };
        if !clean {
            // Its directory records its cgroup: a restarted runner kills what
            // is left from there, then removes both.
            return;
        }
        // The rest off the run's end (see `LEFTOVERS_AFTER`).
        if !self.leftovers_after.is_zero() {
            tokio::time::sleep(self.leftovers_after).await;
        }
        // A spare namespace for a later job, made now rather than at this
        // job's start, when its first step, the client's follow and the
        // server's submit compete for the cores (its first step's start
        // measured ~0.1–0.3 ms slower).
        if let Some(users) = spare {
            make_spare_mounts(users);
        }
        let (cgroup, dir, keep) = (self.cgroup.clone(), self.dir.clone(), self.keep);
        let removed = tokio::task::spawn_blocking(move || {
            if let Some(cgroup) = cgroup {
                cgroup.remove();
            }
            if keep { Ok(()) } else { std::fs::remove_dir_all(&dir) }
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove job directory");
        }
    }
}

/// Makes the next job's mount namespace, off the async workers, and drops
/// it once too old to be given if no job took it.
fn make_spare_mounts(users: std::sync::Arc<SlotUsers>) {
    let maker = std::sync::Arc::clone(&users);
    tokio::task::spawn_blocking(move || maker.make_spare_mounts());
    tokio::spawn(async move {
        tokio::time::sleep(SPARE_MOUNTS_AGE + Duration::from_secs(1)).await;
        let _ = tokio::task::spawn_blocking(move || users.drop_stale_mounts()).await;
    });
}

/// What holds a step's processes, so that they can all be killed — now,
/// or by a restarted runner.
pub enum Containment {
    /// The step's cgroup.
    Cgroup(StepCgroup),
    /// Its process group only; the group id is written to `file` by the
    /// step's process itself, before it executes the script.
    ProcessGroup {
        /// Where the group id goes.
        path: PathBuf,
        /// The same, NUL-terminated for the step's process.
        file: CString,
    },
}

impl Containment {
    /// Process-group containment recording the group in `path`.
    pub fn pgid_file(path: &Path) -> Result<Self, String> {
        let file =
            CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("{} is not a valid path", path.display()))?;
        Ok(Self::ProcessGroup { path: path.to_path_buf(), file })
    }

    /// Where the step's process goes before it executes anything.
    fn enter(&self) -> Enter<'_> {
        match self {
            Self::Cgroup(cg) => Enter::Cgroup(cg.procs()),
            Self::ProcessGroup { file, .. } => Enter::PgidFile(file),
        }
    }

    /// Kills whatever is left of the step (without waiting).
    fn kill_rest(&self, pgid: Option<Pid>) {
        if let Some(pg) = pgid {
            // ESRCH (the group is already gone) is fine.
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if let Self::Cgroup(cg) = self {
            cg.kill();
        }
    }
}

/// Why a running step is being stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopping {
    Cancelled,
    TimedOut,
}

/// A step's process: what it runs, where, and how it is held.
pub struct Process<'a> {
    /// The script (`sh -e -c`).
    pub script: &'a str,
    /// Its working directory.
    pub cwd: &'a Path,
    /// Its whole environment.
    pub env: &'a BTreeMap<String, String>,
    /// SIGTERM → SIGKILL grace.
    pub kill_grace: Duration,
    /// What holds its processes.
    pub containment: &'a Containment,
    /// The user it runs as (`None`: the runner's).
    pub user: Option<&'a JobUser>,
}

/// Runs `p` (`sh -e -c script` in its own process group with exactly its
/// env), streaming merged stdout/stderr to `log`.
pub async fn run_process(p: &Process<'_>, log: &mut StepLog, stop: &StepStop) -> StepOutcome {
    let Process { script, cwd, env, kill_grace, containment, user } = *p;
    let (read_end, write_end) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return StepOutcome::error(format!("cannot create a pipe: {e}")),
    };
    let stderr_end = match write_end.try_clone() {
        Ok(w) => w,
        Err(e) => return StepOutcome::error(format!("cannot create a pipe: {e}")),
    };
    // Looked for on the step's own PATH, by the step's process.
    let sh = launch::candidates("sh", env.get("PATH").map_or(DEFAULT_PATH, String::as_str));
    let (write_end, stderr_end) = (OwnedFd::from(write_end), OwnedFd::from(stderr_end));
    let launched = launch::spawn(&Launch {
        programs: &sh,
        name: OsStr::new("sh"),
        args: &[OsStr::new("-e"), OsStr::new("-c"), OsStr::new(script)],
        env,
        cwd,
        stdout: &write_end,
        stderr: &stderr_end,
        terminal: None,
        enter: containment.enter(),
        user,
    });
    // Our copies of the pipe's write end: dropped, or the pipe never
    // reports end-of-file.
    drop((write_end, stderr_end));
    let mut child = match launched {
        Ok(c) => c,
        Err(e) => return StepOutcome::error(format!("cannot start `sh` in {}: {e}", cwd.display())),
    };
    let pgid = Some(Pid::from_raw(child.id()));
    let signal_group = |sig: Signal| {
        if let Some(pg) = pgid {
            // ESRCH (the group is already gone) is fine.
            let _ = killpg(pg, sig);
        }
    };
    let mut reader = match pipe::Receiver::from_owned_fd(OwnedFd::from(read_end)) {
        Ok(r) => r,
        Err(e) => {
            containment.kill_rest(pgid);
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
                // Leftovers of the step (background jobs, daemons) die with it.
                containment.kill_rest(pgid);
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
                containment.kill_rest(pgid);
                kill_at = None;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(far).into()), if drain_until.is_some() && !eof => {
                // A process outside the group (and, without a cgroup, out
                // of reach) holds the pipe open.
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use tokio_util::sync::CancellationToken;
    use viaduct_proto::v1::{JobRef, JobUpdate, StepUpdate};

    use super::*;
    use crate::{
        executor::{Backend, JobSetup, LogLimits, StepLog, StepSpec, StepStop},
        mask::Secrets,
        report::Reports,
    };

    /// Reports nothing: the steps here note what they see in files.
    struct Discard;

    #[async_trait::async_trait]
    impl Reports for Discard {
        fn job(&self, _: JobUpdate) {}
        fn step(&self, _: StepUpdate) {}
        async fn log(&self, _: &JobRef, _: u32, _: &[u8]) {}
        fn forget(&self, _: &JobRef) {}
    }

    /// Runs step `index` of `env`, which notes the cgroup it ran in; returns
    /// that cgroup's last path component.
    async fn cgroup_of_step(env: &mut dyn JobEnv, index: u32) -> String {
        let spec = StepSpec {
            index,
            name: "where".into(),
            script: format!("cat /proc/self/cgroup > \"$VIADUCT_WORKSPACE/cg-{index}\""),
            env: BTreeMap::new(),
            working_directory: String::new(),
        };
        let job = JobRef { job_id: "cgtest".into(), attempt: 1, ..Default::default() };
        let mut log = StepLog::new(Arc::new(Discard), job, index, Secrets::default(), LogLimits::new(0, 0));
        let stop = StepStop { cancel: CancellationToken::new(), deadline: None };
        let o = env.run_step(&spec, &mut log, &stop).await;
        assert_eq!(o.exit_code, Some(0), "{}", o.message);
        let text = std::fs::read_to_string(env.workspace().join(format!("cg-{index}"))).unwrap();
        text.trim().rsplit('/').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn steps_share_a_cgroup_until_one_leaves_something_in_it() {
        let Some(cgroups) = Cgroups::detect(&format!("hosttest{}", std::process::id())) else {
            eprintln!("skipped: no writable cgroup v2 here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let backend = HostBackend::new(dir.path(), Duration::from_secs(1), false, Some(cgroups.clone()), None);
        let job = JobRef { job_id: "cgtest".into(), attempt: 1, ..Default::default() };
        let mut env = backend.setup(&JobSetup { job, ..Default::default() }).await.unwrap();
        let job_cgroup = cgroups.path_of("cgtest-a1");
        assert_eq!(cgroup_of_step(env.as_mut(), 1).await, "step-1");
        emptied(&job_cgroup.join("step-1")).await;
        assert_eq!(cgroup_of_step(env.as_mut(), 2).await, "step-1", "an empty cgroup is the next step's");
        // Something is left in it (a leftover still dying, or one that
        // would not die): the next step gets its own.
        let mut leftover = Leftover(std::process::Command::new("sleep").arg("1000").spawn().unwrap());
        let first = job_cgroup.join("step-1");
        std::fs::write(first.join("cgroup.procs"), leftover.0.id().to_string()).unwrap();
        assert_eq!(cgroup_of_step(env.as_mut(), 3).await, "step-3");
        emptied(&job_cgroup.join("step-3")).await;
        assert_eq!(cgroup_of_step(env.as_mut(), 4).await, "step-3");
        env.teardown().await;
        // The teardown killed the job's every process, the leftover too.
        assert!(leftover.0.wait().unwrap().code().is_none(), "killed by a signal");
        assert!(!first.exists(), "the job's cgroups are removed");
    }

    /// A process the test put in the job's cgroup: killed if the test
    /// fails before the teardown does.
    struct Leftover(std::process::Child);

    impl Drop for Leftover {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Waits (10 s at most) until `cgroup` reads empty: since Linux 6.19 a
    /// cgroup reads populated until its last process's last context
    /// switch, a moment after its exit was reported.
    async fn emptied(cgroup: &std::path::Path) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap().contains("populated 1")
            && std::time::Instant::now() < deadline
        {
            tokio::task::yield_now().await;
        }
    }
}
