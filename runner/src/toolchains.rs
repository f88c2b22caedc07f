//! Toolchains this machine can run for host jobs, found at start and on
//! `SIGHUP`, advertised as labels (`rust`, `rust:1.95`, `node:20`…; see
//! `viaduct_pipeline::toolchains`).
//!
//! Each known program is run the way a host job would find it: with the
//! job environment the runner gives (its `--env`, `--env-file`,
//! `--inherit-env`, else the default `PATH`), an empty `HOME`, and — when
//! host jobs run as per-slot users — as the first slot user, so a toolchain
//! only root can reach is not advertised. A program that is missing, fails,
//! prints no version or takes over 10 s is left out; each runs in its own
//! process group, killed once it is done, and at most 64 KiB of its output
//! is read.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::io::AsyncReadExt as _;

use viaduct_pipeline::toolchains::{self, KNOWN};

use crate::{environment::RunnerEnv, executor::host::DEFAULT_PATH};

/// How long one program may take to print its version.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most output read from one program (a version is a line).
const PROBE_OUTPUT: u64 = 64 * 1024;

/// Who probes: the user host jobs run as (`None`: the runner's own).
#[derive(Debug, Clone, Copy)]
pub struct Prober<'a> {
    /// The jobs' environment.
    pub env: &'a RunnerEnv,
    /// The uid (and gid) host jobs run as, when not the runner's own.
    pub uid: Option<u32>,
    /// An empty directory to be `HOME` (owned by `uid`).
    pub home: &'a Path,
    /// The mount namespace the programs run in, as jobs' do: a private
    /// `/proc` (a job of the same uid must not reach the machine's through
    /// a probe's `/proc/PID/root`).
    pub mounts: Option<&'a crate::executor::isolation::StepMounts>,
}

impl Prober<'_> {
    /// The toolchain labels of every program found, sorted.
    pub async fn probe(&self) -> Vec<String> {
        let found = futures_util::future::join_all(KNOWN.iter().map(|(name, program, args)| async move {
            let version = self.version(program, args).await?;
            tracing::debug!(toolchain = name, %version, "toolchain found");
            Some(toolchains::labels(name, &version))
        }))
        .await;
        let mut labels: Vec<String> = found.into_iter().flatten().flatten().collect();
        labels.sort();
        labels.truncate(toolchains::MAX_LABELS);
        labels
    }

    async fn version(&self, program: &str, args: &[&str]) -> Option<String> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(self.env.for_job(false))
            .env("HOME", self.home)
            .current_dir(self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if self.env.host_path().is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
        match (self.uid, self.mounts) {
            (Some(uid), Some(mounts)) => {
                // The namespace first (it needs root, and resets the working
                // directory), then the user and the directory: Command's own
                // uid and directory are set before a pre-exec hook runs.
                let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(mounts));
                let home = std::ffi::CString::new(self.home.as_os_str().as_encoded_bytes()).ok()?;
                // SAFETY: plain system calls on a descriptor and a string
                // that outlive the child's start (`self` and `home` are
                // borrowed until it is waited for).
                unsafe {
                    cmd.pre_exec(move || {
                        crate::executor::isolation::StepMounts::enter(fd)?;
                        let (id, none) = (libc::c_long::from(uid), std::ptr::null::<libc::gid_t>());
                        if libc::syscall(libc::SYS_setgroups, 0, none) != 0
                            || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
                            || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
                            || libc::chdir(home.as_ptr()) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            (Some(uid), None) => {
                cmd.uid(uid).gid(uid);
            }
            _ => {}
        }
        let mut child = cmd.spawn().ok()?;
        let group = child.id().and_then(|id| i32::try_from(id).ok()).map(nix::unistd::Pid::from_raw);
        let (mut stdout, mut stderr) =
            (child.stdout.take()?.take(PROBE_OUTPUT), child.stderr.take()?.take(PROBE_OUTPUT));
        let done = tokio::time::timeout(PROBE_TIMEOUT, async {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
            child.wait().await.ok().map(|status| (status, out, err))
        })
        .await;
        // Whatever it left behind, or all of it when it took too long.
        if let Some(group) = group {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let (status, out, err) = done.ok()??;
        if !status.success() {
            return None;
        }
        // Some print it on stderr (`java -version`).
        let text = String::from_utf8_lossy(if out.is_empty() { &err } else { &out });
        toolchains::version_in(&text)
    }
}
