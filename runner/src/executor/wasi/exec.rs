//! The `exec` import: a host program from the plugin's allow-list, run in
//! the job's workspace with the step's env, its output streamed to the
//! step log.
//!
//! The program must be a bare name on the manifest's `exec` list and is
//! looked up on the runner's `PATH` (the plugin cannot choose a path). It
//! runs in its own process group, killed with the whole group when the
//! call is dropped — which is how a cancelled or timed-out plugin step
//! stops the commands it started.

use std::{
    collections::BTreeMap,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
};

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::{io::AsyncReadExt, process::Command, sync::mpsc};

use crate::{executor::host::DEFAULT_PATH, files::paths};

/// Most captured stdout.
const MAX_CAPTURE: usize = 64 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Bare program name.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra env.
    pub env: Vec<(String, String)>,
    /// Workspace-relative working directory.
    pub cwd: Option<String>,
    /// Return stdout instead of logging it.
    pub capture_stdout: bool,
}

/// How it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecExit {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
}

/// Kills the process group when dropped (the call was abandoned).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
}

/// `program` on the runner's PATH.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Runs `req` if `allow` lists it. `Err` means it could not start.
pub async fn run(
    req: ExecRequest,
    allow: &[String],
    workspace: &Path,
    env: &BTreeMap<String, String>,
    log: &mpsc::Sender<Vec<u8>>,
) -> Result<ExecExit, String> {
    let program = req.program.as_str();
    if !allow.iter().any(|a| a == program) {
        let list = if allow.is_empty() { "it has none".to_string() } else { allow.join(", ") };
        return Err(format!("`{program}` is not on this plugin's exec allow-list ({list})"));
    }
    if program.contains('/') {
        return Err(format!("`{program}`: exec takes a program name, not a path"));
    }
    let path =
        which(program).ok_or_else(|| format!("`{program}` is not installed on this runner (not on its PATH)"))?;
    let cwd = paths::resolve(workspace, req.cwd.as_deref().unwrap_or("."))?;
    let job_dir = workspace.parent().unwrap_or(workspace);
    let (home, tmp) = (job_dir.join("home"), job_dir.join("tmp"));
    for d in [&home, &tmp] {
        let _ = std::fs::create_dir_all(d);
    }
    let mut full_env = env.clone();
    full_env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
    full_env.entry("HOME".into()).or_insert_with(|| home.display().to_string());
    full_env.entry("TMPDIR".into()).or_insert_with(|| tmp.display().to_string());
    full_env.extend(req.env.iter().cloned());

    let (out_read, out_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_read, err_write) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut cmd = Command::new(&path);
    cmd.args(&req.args)
        .current_dir(&cwd)
        .env_clear()
        .envs(&full_env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(OwnedFd::from(out_write)))
        .stderr(Stdio::from(OwnedFd::from(err_write)))
        .process_group(0)
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let guard = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw));
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
    async fn runs_allowed_programs_only() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("workspace");
        std::fs::create_dir_all(&ws).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let env = BTreeMap::from([("GREETING".to_string(), "hi".to_string())]);
        let req = |program: &str, args: &[&str], capture| ExecRequest {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            capture_stdout: capture,
        };
        let allow = vec!["sh".to_string()];
        let exit = run(req("sh", &["-c", "echo $GREETING; pwd; exit 3"], true), &allow, &ws, &env, &tx).await.unwrap();
        assert_eq!(exit.code, 3);
        assert_eq!(String::from_utf8(exit.stdout).unwrap(), format!("hi\n{}\n", ws.display()));
        let exit = run(req("sh", &["-c", "echo to-log >&2"], false), &allow, &ws, &env, &tx).await.unwrap();
        assert_eq!(exit.code, 0);
        assert_eq!(rx.recv().await.unwrap(), b"to-log\n");
        let err = run(req("rm", &["-rf", "/"], false), &allow, &ws, &env, &tx).await.unwrap_err();
        assert!(err.contains("not on this plugin's exec allow-list"), "{err}");
        let err = run(req("/bin/sh", &[], false), &["/bin/sh".into()], &ws, &env, &tx).await.unwrap_err();
        assert!(err.contains("not a path"), "{err}");
        let err = run(req("no-such-tool", &[], false), &["no-such-tool".into()], &ws, &env, &tx).await.unwrap_err();
        assert!(err.contains("not installed"), "{err}");
    }
}
