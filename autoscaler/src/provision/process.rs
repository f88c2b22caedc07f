//! `viaduct-runner` as a child process of the autoscaler, one per job, in
//! the instance's own directory: its token and work dir (removed when it
//! ends), its log `runner.log` (kept, for the operator) and `pid` (the
//! process and the job, removed when it ends).
//!
//! A runner outlives an autoscaler that was killed (`kill -9`, a crash): it
//! finishes its job and exits. The same autoscaler, restarted on the same
//! state directory, finds it by its `pid` file ([`Provisioner::leftovers`]),
//! counts it while it runs and cleans its directory once it is gone. A pid
//! is believed only with the start time recorded beside it (a pid used
//! again by another process is not the runner).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{errno::Errno, sys::signal::Signal, unistd::Pid};
use tokio::process::{Child, Command};

use super::{Instance, Launch, Leftover, Owner, ProvisionError, Provisioner, Result};

/// Starts runners as local processes. Run as root, each runner runs its
/// job as its own user: `job_user_base + seat`, so concurrent jobs on this
/// machine never share a uid (one could read another's environment, its
/// secrets, through `/proc`). Not as root, jobs run as this user and can
/// read what it can — the instances' tokens included: use containers then.
pub struct Processes {
    /// The runner binary.
    pub runner: PathBuf,
    /// The first job user's uid.
    pub job_user_base: u32,
}

/// The file in an instance's directory saying which process runs it.
const PID_FILE: &str = "pid";
/// How long a runner has to leave after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[async_trait::async_trait]
impl Provisioner for Processes {
    fn describe(&self) -> String {
        format!("local processes of {}", self.runner.display())
    }

    async fn start(&self, launch: &Launch) -> Result<Box<dyn Instance>> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // The job's user enters its working directory as itself: it must
        // pass through the state directory and the instance's (0711: it
        // lists nothing, and what is in them is the autoscaler's, 0600).
        for dir in launch.dir.parent().into_iter().chain([launch.dir.as_path()]) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| ProvisionError::Io(format!("cannot open {} to the job's user: {e}", dir.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(launch.dir.join("runner.log"))
            .map_err(|e| ProvisionError::Io(format!("cannot create the runner's log: {e}")))?;
        let err = log.try_clone().map_err(|e| ProvisionError::Io(e.to_string()))?;
        let (token, work) = (launch.token_file(), launch.dir.join("work"));
        let (Some(token), Some(work)) = (token.to_str(), work.to_str()) else {
            return Err(ProvisionError::Io(format!("{} is not UTF-8", launch.dir.display())));
        };
        let child = Command::new(&self.runner)
            .args(launch.runner_args(token, work))
            .arg(format!("--job-user-base={}", self.job_user_base + launch.seat))
            // Nothing of the autoscaler's environment (its own token) but
            // what a process needs to run.
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| k == "PATH" || k == "HOME" || k == "RUST_LOG"))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProvisionError::Io(format!("cannot start {}: {e}", self.runner.display())))?;
        let mut process = Process { child, dir: launch.dir.clone() };
        let Some(pid) = process.child.id() else {
            let _ = process.stop().await;
            return Err(ProvisionError::Io(format!("{} exited at once", self.runner.display())));
        };
        let record = PidFile { pid: pid as i32, start: start_time(pid as i32), job: launch.job.clone() };
        if let Err(e) = record.write(&launch.dir) {
            let _ = process.stop().await;
            return Err(e);
        }
        Ok(Box::new(process))
    }

    /// The directories of `owner`'s state directory that still have a
    /// `pid` file: runners whose instance was not cleaned, running or not.
    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>> {
        let entries = match std::fs::read_dir(&owner.state_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ProvisionError::Io(format!("cannot read {}: {e}", owner.state_dir.display()))),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = entry.path();
            let Some(record) = PidFile::read(&dir) else { continue };
            let age =
                std::fs::metadata(dir.join(PID_FILE)).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            found.push(Leftover {
                name: entry.file_name().to_string_lossy().into_owned(),
                job: record.job.clone(),
                age,
                instance: Box::new(Orphan { pid: record.pid, start: record.start, dir }),
            });
        }
        Ok(found)
    }
}

/// What `pid` says: the runner's process, its start time (in clock ticks
/// since boot, `/proc/PID/stat`'s 22nd field) when it could be read, and
/// the job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PidFile {
    pid: i32,
    start: Option<u64>,
    job: String,
}

impl PidFile {
    fn write(&self, dir: &Path) -> Result<()> {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let start = self.start.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let text = format!("pid {}\nstart {start}\njob {}\n", self.pid, self.job);
        // Whole or absent: written aside, then renamed.
        let tmp = dir.join(".pid.tmp");
        let io = |e: std::io::Error| ProvisionError::Io(format!("cannot write {}: {e}", dir.join(PID_FILE).display()));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        std::fs::rename(&tmp, dir.join(PID_FILE)).map_err(io)
    }

    fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join(PID_FILE)).ok()?;
        let fields: std::collections::HashMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k, v.trim())).collect();
        let pid = fields.get("pid")?.parse().ok().filter(|p: &i32| *p > 0)?;
        let start = fields.get("start")?.parse().ok();
        let job = fields.get("job").unwrap_or(&"").to_string();
        Some(Self { pid, start, job })
    }
}

/// `pid`'s state letter and start time, from `/proc/PID/stat` (`None`
/// without such a process, or without `/proc`).
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold spaces and parentheses.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields 4 to 21 come before the start time (field 22).
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether `pid` is (still) the process that started at `start`, and not
/// yet a zombie: `kill(pid, 0)` finds it, and `/proc` (where there is one)
/// shows the same start time.
fn alive(pid: i32, start: Option<u64>) -> bool {
    if matches!(nix::sys::signal::kill(Pid::from_raw(pid), None), Err(Errno::ESRCH)) {
        return false;
    }
    match stat(pid) {
        Some((state, now)) => !matches!(state, 'Z' | 'X' | 'x') && start.is_none_or(|s| s == now),
        // No /proc to tell (then kill's answer stands), or it just went.
        None => !Path::new("/proc/self/stat").exists(),
    }
}

/// Removes what an instance leaves in its directory but its log.
fn clean(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("token"));
    let _ = std::fs::remove_dir_all(dir.join("work"));
    let _ = std::fs::remove_file(dir.join(PID_FILE));
}

/// A runner process.
struct Process {
    child: Child,
    dir: PathBuf,
}

#[async_trait::async_trait]
impl Instance for Process {
    async fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait().map_err(|e| ProvisionError::Io(e.to_string()))?.is_none())
    }

    async fn stop(&mut self) -> Result<()> {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: the runner reports what it can and leaves.
            if let Some(pid) = self.child.id() {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        clean(&self.dir);
        Ok(())
    }
}

/// A runner process an earlier autoscaler process started (not a child of
/// this one).
struct Orphan {
    pid: i32,
    start: Option<u64>,
    dir: PathBuf,
}

#[async_trait::async_trait]
impl Instance for Orphan {
    async fn running(&mut self) -> Result<bool> {
        Ok(alive(self.pid, self.start))
    }

    async fn stop(&mut self) -> Result<()> {
        if alive(self.pid, self.start) {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + STOP_GRACE;
            while alive(self.pid, self.start) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Checked again just before: never a pid that is no longer it.
            if alive(self.pid, self.start) {
                let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            }
        }
        clean(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(dir: &Path) -> Owner {
        Owner { id: "0123456789abcdef".into(), state_dir: dir.to_path_buf() }
    }

    fn launch(state: &Path, name: &str, job: &str) -> Launch {
        Launch {
            job: job.into(),
            name: name.into(),
            server: "http://127.0.0.1:1".into(),
            args: vec![],
            dir: state.join(name),
            seat: 0,
            owner: "0123456789abcdef".into(),
        }
    }

    /// A "runner" that ignores its arguments and sleeps.
    fn sleeper(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("runner.sh");
        std::fs::write(&bin, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    #[test]
    fn the_pid_file_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        for record in [
            PidFile { pid: 42, start: Some(123456), job: "7.2".into() },
            PidFile { pid: 9, start: None, job: "".into() },
        ] {
            record.write(dir.path()).unwrap();
            assert_eq!(PidFile::read(dir.path()), Some(record));
        }
        std::fs::write(dir.path().join(PID_FILE), "pid x\nstart 1\n").unwrap();
        assert_eq!(PidFile::read(dir.path()), None);
        std::fs::write(dir.path().join(PID_FILE), "pid -1\nstart 1\n").unwrap();
        assert_eq!(PidFile::read(dir.path()), None);
    }

    #[test]
    fn a_pid_is_believed_only_with_its_start_time() {
        let me = std::process::id() as i32;
        let start = start_time(me);
        assert!(start.is_some(), "this test needs /proc");
        assert!(alive(me, start));
        assert!(alive(me, None));
        assert!(!alive(me, start.map(|s| s + 1)), "a pid used again by another process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = start_time(pid);
        child.wait().unwrap();
        assert!(!alive(pid, start), "an exited process");
    }

    #[tokio::test]
    async fn a_runner_left_by_a_killed_autoscaler_is_found_counted_and_cleaned() {
        let state = tempfile::tempdir().unwrap();
        let p = Processes { runner: sleeper(state.path()), job_user_base: 62000 };
        // Started, then "killed": the instance is forgotten without a stop
        // (kill_on_drop would end it on a drop).
        let l = launch(state.path(), "auto-5-1-aaaaaa", "5.1");
        crate::provision::write_token(&l.dir, "t").unwrap();
        std::mem::forget(p.start(&l).await.unwrap());
        // One that was cleaned, one whose process is gone, and a stray file.
        let cleaned = launch(state.path(), "auto-6-1-bbbbbb", "6.1");
        std::fs::create_dir_all(&cleaned.dir).unwrap();
        let gone = launch(state.path(), "auto-7-1-cccccc", "7.1");
        crate::provision::write_token(&gone.dir, "t").unwrap();
        let mut exited = std::process::Command::new("true").spawn().unwrap();
        PidFile { pid: exited.id() as i32, start: start_time(exited.id() as i32), job: "7.1".into() }
            .write(&gone.dir)
            .unwrap();
        exited.wait().unwrap();
        std::fs::write(state.path().join("id"), "0123456789abcdef\n").unwrap();

        let mut found = p.leftovers(&owner(state.path())).await.unwrap();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<(&str, &str)> = found.iter().map(|l| (l.name.as_str(), l.job.as_str())).collect();
        assert_eq!(names, [("auto-5-1-aaaaaa", "5.1"), ("auto-7-1-cccccc", "7.1")]);
        assert!(found[0].age.is_some_and(|a| a < Duration::from_secs(60)));
        let pid = PidFile::read(&l.dir).unwrap();
        assert!(found[0].instance.running().await.unwrap());
        assert!(!found[1].instance.running().await.unwrap());
        for f in &mut found {
            f.instance.stop().await.unwrap();
        }
        assert!(!alive(pid.pid, pid.start), "the runner was stopped");
        for dir in [&l.dir, &gone.dir] {
            assert!(!dir.join("token").exists() && !dir.join(PID_FILE).exists(), "{} was cleaned", dir.display());
            assert!(dir.join("runner.log").exists() || dir == &gone.dir, "the log is kept");
        }
        assert!(p.leftovers(&owner(state.path())).await.unwrap().is_empty());
    }
}
