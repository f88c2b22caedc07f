//! Programs of a host job's plugin steps (see `executor::programs`): run
//! like its steps — as the job's user, in a cgroup of the job (or, without
//! cgroups, their own process group), in its workspace — found on the
//! fixed `PATH`, killed with everything they started when the call ends or
//! is dropped.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{io::AsyncReadExt, sync::mpsc};

use super::{
    DEFAULT_PATH,
    launch::{self, Enter, Launch},
};
use crate::{
    executor::{
        cgroup::{JobCgroup, StepCgroup},
        isolation::JobUser,
        programs::{ExecExit, ExecRequest, MAX_CAPTURE, Programs},
    },
    files::paths,
};

/// Kills what a program left when dropped (the call ended or was
/// abandoned).
struct Guard {
    group: Option<Pid>,
    cgroup: Option<StepCgroup>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pg) = self.group {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            cg.kill();
        }
    }
}

/// The programs of one host job.
pub struct HostPrograms {
    /// The job directory (`workspace`, `home`, `tmp`).
    pub dir: PathBuf,
    /// The job's cgroup, if it has one.
    pub cgroup: Option<JobCgroup>,
    /// Its user, when it runs as one.
    pub user: Option<JobUser>,
    /// Numbers the programs' cgroups.
    pub next: AtomicU32,
}

impl HostPrograms {
    /// The environment of a program of this job.
    fn environment(&self, req: &ExecRequest) -> BTreeMap<String, String> {
        let path = |sub: &str| self.dir.join(sub).display().to_string();
        crate::executor::programs::environment(req, DEFAULT_PATH, &path("home"), &path("tmp"))
    }
}

#[async_trait::async_trait]
impl Programs for HostPrograms {
    async fn run(&self, req: &ExecRequest, log: &mpsc::Sender<Vec<u8>>) -> Result<ExecExit, String> {
        let program = req.program.as_str();
        let env = self.environment(req);
        // On the fixed `PATH`: the plugin cannot choose a path.
        let path = launch::which(program, DEFAULT_PATH)
            .ok_or_else(|| format!("`{program}` is not installed on this runner (not on its PATH)"))?;
        let workspace = self.dir.join("workspace");
        let cwd = paths::resolve(&workspace, req.cwd.as_deref().unwrap_or("."))?;
        run(&path, req, &cwd, &env, self, log).await
    }
}

async fn run(
    path: &Path,
    req: &ExecRequest,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    job: &HostPrograms,
    log: &mpsc::Sender<Vec<u8>>,
) -> Result<ExecExit, String> {
    let program = req.program.as_str();
    let cgroup = match &job.cgroup {
        Some(cg) => Some(
            cg.step(1000 + job.next.fetch_add(1, Ordering::Relaxed))
                .map_err(|e| format!("cannot create `{program}`'s cgroup: {e}"))?,
        ),
        None => None,
    };
    let (out_read, out_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_read, err_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let args: Vec<&OsStr> = req.args.iter().map(OsStr::new).collect();
    let (out_write, err_write) = (OwnedFd::from(out_write), OwnedFd::from(err_write));
    let launched = launch::spawn(&Launch {
        programs: &[path.to_path_buf()],
        name: path.as_os_str(),
        args: &args,
        env,
        cwd,
        stdout: &out_write,
        stderr: &err_write,
        terminal: None,
        enter: cgroup.as_ref().map_or(Enter::Nothing, |cg| Enter::Cgroup(cg.procs())),
        user: job.user.as_ref(),
    });
    // Our copies of the write ends: dropped, or the pipes never end.
    drop((out_write, err_write));
    let mut child = launched.map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let guard = Guard { group: Some(Pid::from_raw(child.id())), cgroup };
    let mut stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(out_read))
        .map_err(|e| format!("cannot read `{program}`'s output: {e}"))?;
    let mut stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(err_read))
        .map_err(|e| format!("cannot read `{program}`'s output: {e}"))?;

    let mut captured = Vec::new();
    let (mut out_eof, mut err_eof) = (false, false);
    let (mut obuf, mut ebuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    while !(out_eof && err_eof) {
        tokio::select! {
            r = stdout.read(&mut obuf), if !out_eof => match r {
                Ok(0) | Err(_) => out_eof = true,
                Ok(n) if req.capture_stdout => {
                    if captured.len() + n > MAX_CAPTURE {
                        return Err(format!("`{program}` wrote more than {} MiB to stdout", MAX_CAPTURE >> 20));
                    }
                    captured.extend_from_slice(&obuf[..n]);
                }
                Ok(n) => { let _ = log.send(obuf[..n].to_vec()).await; }
            },
            r = stderr.read(&mut ebuf), if !err_eof => match r {
                Ok(0) | Err(_) => err_eof = true,
                Ok(n) => { let _ = log.send(ebuf[..n].to_vec()).await; }
            },
        }
    }
    let status = child.wait().await.map_err(|e| format!("cannot wait for `{program}`: {e}"))?;
    // Background leftovers die with the command.
    drop(guard);
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1);
    Ok(ExecExit { code, stdout: captured })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_a_program_with_exactly_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["workspace", "home", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let programs =
            HostPrograms { dir: dir.path().to_path_buf(), cgroup: None, user: None, next: AtomicU32::new(0) };
        let (tx, mut rx) = mpsc::channel(16);
        let req = |args: &[&str], capture| ExecRequest {
            program: "sh".into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![("GREETING".into(), "hi".into())],
            cwd: None,
            capture_stdout: capture,
        };
        let r = req(&["-c", "echo $GREETING $HOME; env | cut -d= -f1; exit 3"], true);
        let exit = programs.run(&r, &tx).await.unwrap();
        assert_eq!(exit.code, 3);
        let out = String::from_utf8(exit.stdout).unwrap();
        let home = dir.path().join("home");
        assert!(out.starts_with(&format!("hi {}\n", home.display())), "{out}");
        let allowed = ["CI", "GREETING", "HOME", "LANG", "PATH", "TMPDIR", "VIADUCT", "PWD", "SHLVL", "OLDPWD", "_"];
        assert!(out.lines().skip(1).all(|v| allowed.contains(&v)), "nothing of the runner's environment: {out}");
        let r = req(&["-c", "echo to-log >&2"], false);
        assert_eq!(programs.run(&r, &tx).await.unwrap().code, 0);
        assert_eq!(rx.recv().await.unwrap(), b"to-log\n");
        let missing = ExecRequest { program: "no-such-tool".into(), ..Default::default() };
        let err = programs.run(&missing, &tx).await.unwrap_err();
        assert!(err.contains("not installed"), "{err}");
    }
}
