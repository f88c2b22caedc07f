//! Containment of host jobs' processes: one cgroup (v2) per job attempt,
//! a child cgroup for its steps (a step gets a new one while what the last
//! left in it is still there).
//!
//! A process group is not a container: a step can `setsid` out of it, and
//! a runner killed with SIGKILL cannot say which group its step had until
//! it has written the group id down — after the step already runs. A
//! cgroup fixes both. The runner creates the job's cgroup and records its
//! path in the job directory *before* any step starts, and each step's
//! process moves itself into its step's cgroup before it executes the
//! step (in the forked child, before `exec`), so no process of a job ever
//! exists outside the recorded cgroup. Killing a cgroup (`cgroup.kill`)
//! kills every process in it, however it detached; a restarted runner
//! reads the recorded paths and kills what the dead one left.
//!
//! Layout: `<cgroup2 mount><the runner's own cgroup>/viaduct-<runner id>-
//! <job>-a<attempt>/step-<n>`. No controller is enabled, so this works in
//! any cgroup the runner may write to (as root, or delegated by systemd's
//! `Delegate=yes`). Where cgroup v2 is missing or not writable the host
//! executor falls back to process groups (see `host`).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long [`JobCgroup::kill`] waits for killed processes to be gone.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Where this runner's job cgroups go.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The runner's own cgroup: job cgroups are its children.
    parent: PathBuf,
    /// `viaduct-<runner id>-`: job cgroups of different runners sharing a
    /// cgroup never collide.
    prefix: String,
}

impl Cgroups {
    /// Job cgroups for runner `runner_id`, created under the runner's own
    /// cgroup; `None` (with the reason logged) when cgroup v2 is not
    /// mounted or not writable here.
    pub fn detect(runner_id: &str) -> Option<Self> {
        match Self::try_detect(runner_id) {
            Ok(c) => {
                tracing::info!(cgroup = %c.parent.display(), "host jobs are contained by cgroups");
                Some(c)
            }
            Err(why) => {
                tracing::warn!(
                    %why,
                    "no cgroup v2 for host jobs: steps are contained by process groups only (a step that \
                     leaves its group can outlive its job)"
                );
                None
            }
        }
    }

    fn try_detect(runner_id: &str) -> Result<Self, String> {
        let (mount, options) = cgroup2_mount().ok_or("cgroup v2 is not mounted")?;
        favor_migrations(&mount, &options);
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).ok_or("this process has no cgroup v2 path")?;
        let cgroups = Self { parent: mount.join(own.trim_start_matches('/')), prefix: format!("viaduct-{runner_id}-") };
        // Prove it: create a cgroup, move nothing, remove it.
        let probe = cgroups.path_of(&format!("probe-{}", std::process::id()));
        std::fs::create_dir(&probe).map_err(|e| format!("cannot create {}: {e}", probe.display()))?;
        let writable = std::fs::OpenOptions::new().write(true).open(probe.join("cgroup.procs"));
        let _ = std::fs::remove_dir(&probe);
        writable.map_err(|e| format!("{}: {e}", probe.join("cgroup.procs").display()))?;
        Ok(cgroups)
    }

    /// Where the cgroup of job attempt `name` is (or will be).
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.parent.join(format!("{}{name}", self.prefix))
    }

    /// Creates the cgroup of one job attempt (`name` is unique per attempt
    /// on this runner). What an earlier runner process left under the same
    /// name is killed first.
    pub fn job(&self, name: &str) -> std::io::Result<JobCgroup> {
        let cg = JobCgroup { path: self.path_of(name) };
        if cg.path.exists() {
            cg.kill();
        }
        std::fs::create_dir(&cg.path)?;
        Ok(cg)
    }
}

/// The cgroup v2 mount point and its super options, from
/// `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // … mount-point … - fstype source super-options
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        let mut fields = right.split_whitespace();
        (fields.next()? == "cgroup2").then(|| (PathBuf::from(mount), fields.nth(1).unwrap_or_default().to_string()))
    })
}

/// Every step's process moves itself into its cgroup, and moving a process
/// waits for an RCU grace period unless the hierarchy is mounted with
/// `favordynmods` (Linux ≥ 6.0): without it a step's start costs ~0.2 ms
/// more on average and several ms at the 99th percentile (measured with
/// `cargo xtask bench steps` and `latency`). As root, the runner remounts
/// cgroup2 with it (keeping its other options) and says so; where that is
/// refused, steps just start a little slower.
fn favor_migrations(mount: &std::path::Path, options: &str) {
    let opts: Vec<&str> = options.split(',').filter(|o| !o.is_empty() && *o != "rw" && *o != "ro").collect();
    if opts.contains(&"favordynmods") || !nix::unistd::geteuid().is_root() {
        return;
    }
    let data = opts.iter().copied().chain(["favordynmods"]).collect::<Vec<_>>().join(",");
    let remounted =
        nix::mount::mount(None::<&str>, mount, None::<&str>, nix::mount::MsFlags::MS_REMOUNT, Some(data.as_str()));
    match remounted {
        Ok(()) => {
            tracing::info!(mount = %mount.display(), options = %data, "cgroup2 remounted with favordynmods: cheap step starts")
        }
        Err(e) => {
            tracing::info!(error = %e, "cgroup2 cannot be remounted with favordynmods: step starts cost an RCU grace period")
        }
    }
}

/// The cgroup of one job attempt.
#[derive(Debug, Clone)]
pub struct JobCgroup {
    path: PathBuf,
}

impl JobCgroup {
    /// A job cgroup recorded earlier (by a runner process now gone).
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// Its directory (what the job directory records).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The (new) cgroup of step `index`: the step's process moves itself
    /// there before it executes anything (see [`StepCgroup::procs`]).
    pub fn step(&self, index: u32) -> std::io::Result<StepCgroup> {
        let path = self.path.join(format!("step-{index}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(StepCgroup { path, procs })
    }

    /// Kills every process of the job (all its steps, detached or not) and
    /// waits until they are gone, then removes the cgroups.
    pub fn kill(&self) {
        let _ = self.kill_only();
        self.remove();
    }

    /// Kills every process of the job and waits until they are gone:
    /// `false` when some were still there after [`EXIT_WAIT`] (stuck in the
    /// kernel, or forking faster than an old kernel's kill loop). The
    /// cgroups stay ([`JobCgroup::remove`]).
    pub fn kill_only(&self) -> bool {
        kill_tree(&self.path);
        let deadline = Instant::now() + EXIT_WAIT;
        let mut left = populated(&self.path);
        while left && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            // Again: on kernels without cgroup.kill, a fork may have raced.
            kill_tree(&self.path);
            left = populated(&self.path);
        }
        !left
    }

    /// Removes the job's (empty) cgroups.
    pub fn remove(&self) {
        remove_tree(&self.path);
    }
}

/// The cgroup of one step.
#[derive(Debug)]
pub struct StepCgroup {
    path: PathBuf,
    procs: CString,
}

impl StepCgroup {
    /// Kills every process in the step's cgroup — also those that left
    /// its process group — without waiting.
    pub fn kill(&self) {
        kill_tree(&self.path);
    }

    /// Whether any process is still in it.
    pub fn populated(&self) -> bool {
        populated(&self.path)
    }

    /// Its `cgroup.procs` file: a process writing "0" there moves itself
    /// into the cgroup (see `host::launch`).
    pub fn procs(&self) -> &std::ffi::CStr {
        &self.procs
    }
}

/// `cgroup.kill` on `dir` (kernel ≥ 5.14): every process in the subtree.
/// On older kernels, SIGKILL to each listed process, repeated while new
/// ones appear (a fork racing with the kill).
fn kill_tree(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for _ in 0..100 {
        let pids = pids_in(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Every process in the subtree at `dir`.
fn pids_in(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in subdirs(dir) {
        pids.extend(pids_in(&child));
    }
    pids
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Whether any process is in the subtree at `dir` (`cgroup.events`).
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|e| e.lines().any(|l| l == "populated 1"))
        .unwrap_or_else(|_| !pids_in(dir).is_empty())
}

/// Removes the (empty) cgroups of a subtree, leaves first.
fn remove_tree(dir: &Path) {
    for child in subdirs(dir) {
        remove_tree(&child);
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove a job's cgroup");
    }
}
