//! `viaduct-runner` as a child process of the autoscaler, one per job, in
//! the instance's own directory: its token and work dir (removed when it
//! ends) and its log `runner.log` (kept, for the operator).

use std::path::PathBuf;

use tokio::process::{Child, Command};

use super::{Instance, Launch, ProvisionError, Provisioner, Result};

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

#[async_trait::async_trait]
impl Provisioner for Processes {
    fn describe(&self) -> String {
        format!("local processes of {}", self.runner.display())
    }

    async fn start(&self, launch: &Launch) -> Result<Box<dyn Instance>> {
        let log = std::fs::File::create(launch.dir.join("runner.log"))
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
        Ok(Box::new(Process { child, dir: launch.dir.clone() }))
    }
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
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
        let _ = std::fs::remove_file(self.dir.join("token"));
        let _ = std::fs::remove_dir_all(self.dir.join("work"));
        Ok(())
    }
}
