//! The host executor's interactive shell ("debug shell"): `bash -i` (or
//! `sh -i`) on a pseudo-terminal, started like a step (see [`launch`]) —
//! as the job's user, in a cgroup of the job (or recorded by its session
//! without cgroups), in the workspace — but in a session of its own whose
//! controlling terminal is the pseudo-terminal's slave.
//!
//! One task per shell relays between the master and the [`Shell`]'s
//! channels: output as it is written (not read further while the relay
//! has not taken the last chunk), input written as the terminal takes it,
//! resizes (`TIOCSWINSZ`), signals to the terminal's foreground process
//! group, and a close (SIGHUP, then SIGKILL to everything left after the
//! grace period). When the shell exits, whatever it left running is
//! killed — the whole cgroup, or every process of its session — before it
//! is reaped (its session id stays its own until then), and the output is
//! drained before [`ShellExit`] is sent.

use std::{
    collections::VecDeque,
    ffi::OsStr,
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    process::ExitStatus,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use super::{
    Containment, DRAIN_GRACE,
    launch::{self, Child, Launch},
};
use crate::executor::{
    isolation::JobUser,
    terminal::{self, Shell, ShellControl, ShellEnds, ShellExit},
};

/// Most typed bytes held for a terminal that does not take them; more is
/// dropped. (Controls are always taken: a relay that waits to hand one
/// over while the shell waits for its output to be taken never hangs.)
const MAX_PENDING_INPUT: usize = 1 << 20;

/// A shell to start.
pub(super) struct Start<'a> {
    /// Its working directory.
    pub cwd: &'a Path,
    /// Its whole environment.
    pub env: &'a std::collections::BTreeMap<String, String>,
    /// Terminal size.
    pub cols: u16,
    /// Terminal size.
    pub rows: u16,
    /// What holds its processes (owned by the shell's task from then on).
    pub containment: Containment,
    /// Who it runs as (`None`: the runner's user).
    pub user: Option<&'a JobUser>,
    /// SIGHUP → SIGKILL grace of a close.
    pub kill_grace: Duration,
    /// Cancelled when the job is torn down: everything is killed at once.
    pub cancel: CancellationToken,
}

/// Starts the shell and the task relaying for it.
pub(super) fn start(s: Start<'_>) -> Result<(Shell, tokio::task::JoinHandle<()>), String> {
    let pty = terminal::open_pty(s.cols, s.rows)?;
    if let Some(user) = s.user {
        // Its terminal is its own (programs reopen it by name: `tty`,
        // `script`, editors' suspend).
        nix::unistd::fchown(&pty.slave, Some(user.uid.into()), None)
            .map_err(|e| format!("cannot give the terminal to the job's user: {e}"))?;
    }
    let bash = Path::new("/bin/bash");
    let (program, name) = if bash.exists() { (bash, "bash") } else { (Path::new("/bin/sh"), "sh") };
    let launched = launch::spawn(&Launch {
        programs: &[program.to_path_buf()],
        name: OsStr::new(name),
        args: &[OsStr::new("-i")],
        env: s.env,
        cwd: s.cwd,
        stdout: &pty.slave,
        stderr: &pty.slave,
        terminal: Some(&pty.slave),
        enter: s.containment.enter(),
        user: s.user,
    });
    // Our copy of the terminal: dropped, or the master never reports that
    // every process on it is gone.
    drop(pty.slave);
    let child = launched.map_err(|e| format!("cannot start `{name}` in {}: {e}", s.cwd.display()))?;
    let session = Pid::from_raw(child.id());
    // SAFETY: an `OwnedFd` stays open, and is the same descriptor, until
    // the `AsyncFd` is dropped or gives it back.
    let master = match unsafe { AsyncFd::register(pty.master) } {
        Ok(m) => m,
        Err(e) => {
            let e = e.into_parts().1;
            kill_all(&s.containment, session);
            return Err(format!("cannot read the terminal: {e}"));
        }
    };
    let (shell, ends) = terminal::channels();
    let relay = Relay { master, child, session, containment: s.containment, kill_grace: s.kill_grace };
    let task = tokio::spawn(relay.run(ends, s.cancel));
    Ok((shell, task))
}

/// A running shell, owned by its task.
struct Relay {
    master: AsyncFd<OwnedFd>,
    child: Child,
    /// The shell's process id: its session's (and its own group's).
    session: Pid,
    containment: Containment,
    kill_grace: Duration,
}

/// What the user asked for, or what happened, that ends the shell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Closed,
    UserGone,
    TornDown,
}

impl Ending {
    fn message(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::UserGone => "closed: nobody reads its terminal any more",
            Self::TornDown => "killed: the job's environment was torn down",
        }
    }
}

impl Relay {
    async fn run(mut self, ends: ShellEnds, cancel: CancellationToken) {
        let ShellEnds { output, mut control, ended } = ends;
        let mut buf = vec![0u8; 16 * 1024];
        let mut chunk: Option<Vec<u8>> = None;
        let mut input: VecDeque<u8> = VecDeque::new();
        let (mut eof, mut control_open) = (false, true);
        let mut exit: Option<io::Result<ExitStatus>> = None;
        let mut ending: Option<Ending> = None;
        let mut kill_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        let mut torn_down = false;
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        while !(eof && exit.is_some() && chunk.is_none()) {
            tokio::select! {
                read = read_some(&self.master, &mut buf), if chunk.is_none() && !eof => match read {
                    // EIO: no process has the terminal open any more.
                    Ok(0) | Err(_) => eof = true,
                    Ok(n) => chunk = buf.get(..n).map(<[u8]>::to_vec),
                },
                permit = output.reserve(), if chunk.is_some() => match permit {
                    Ok(p) => p.send(chunk.take().unwrap_or_default()),
                    Err(_) => {
                        // The relay is gone: what the shell writes goes nowhere.
                        chunk = None;
                        if exit.is_none() && ending.is_none() {
                            self.hang_up(Ending::UserGone, &mut ending, &mut kill_at);
                        }
                    }
                },
                written = write_some(&self.master, &mut input), if !input.is_empty() && exit.is_none() => {
                    if written.is_err() {
                        input.clear();
                    }
                }
                ctl = control.recv(), if control_open && exit.is_none() => {
                    match ctl {
                        Some(ShellControl::Input(bytes)) if input.len() + bytes.len() <= MAX_PENDING_INPUT => {
                            input.extend(bytes);
                        }
                        Some(ShellControl::Input(bytes)) => {
                            tracing::debug!(bytes = bytes.len(), "a debug shell's terminal takes no input: dropped");
                        }
                        Some(ShellControl::Resize { cols, rows }) => {
                            if let Err(e) = terminal::set_size(&self.master, cols, rows) {
                                tracing::debug!(error = %e, "cannot resize a debug shell's terminal");
                            }
                        }
                        Some(ShellControl::Signal(name)) => match terminal::signal_name(&name) {
                            Some((_, sig)) => {
                                let _ = killpg(self.foreground(), sig);
                            }
                            None => tracing::debug!(signal = %name, "ignored an unknown signal for a debug shell"),
                        },
                        Some(ShellControl::Close) if ending.is_none() => {
                            self.hang_up(Ending::Closed, &mut ending, &mut kill_at);
                        }
                        Some(ShellControl::Close) => {}
                        None => {
                            control_open = false;
                            if ending.is_none() {
                                self.hang_up(Ending::UserGone, &mut ending, &mut kill_at);
                            }
                        }
                    }
                }
                status = self.child.exited(), if exit.is_none() => {
                    // Not reaped yet: its session is still its own, so what
                    // it left running (background jobs, daemons) dies with
                    // it, and nothing else.
                    kill_all(&self.containment, self.session);
                    exit = Some(match status {
                        Ok(_) => self.child.wait().await,
                        Err(e) => Err(e),
                    });
                    drain_until = Some(Instant::now() + DRAIN_GRACE);
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() && exit.is_none() => {
                    kill_all(&self.containment, self.session);
                    kill_at = None;
                }
                () = cancel.cancelled(), if !torn_down => {
                    torn_down = true;
                    if exit.is_some() {
                        // Its output is not wanted any more.
                        break;
                    }
                    ending = Some(Ending::TornDown);
                    kill_all(&self.containment, self.session);
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or(far).into()),
                    if drain_until.is_some() && (!eof || torn_down) => {
                    // A process that left the session (and, without a
                    // cgroup, out of reach) holds the terminal open; or the
                    // job is torn down and nobody takes the output.
                    break;
                }
            }
        }
        if let Containment::ProcessGroup { path, .. } = &self.containment {
            let _ = std::fs::remove_file(path);
        }
        let exit_code = match &exit {
            Some(Ok(s)) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            }
            _ => None,
        };
        let message = match (&exit, ending) {
            (Some(Err(e)), _) => format!("cannot wait for the shell: {e}"),
            (_, Some(e)) => e.message().to_string(),
            _ => String::new(),
        };
        // Output first: closed before the end is told.
        drop(output);
        let _ = ended.send(ShellExit { exit_code, message });
    }

    /// The terminal's foreground process group, when it is one of the
    /// shell's session (it always is, but for a group that just ended);
    /// else the shell's own.
    fn foreground(&self) -> Pid {
        terminal::foreground_group(&self.master)
            .filter(|pg| nix::unistd::getsid(Some(*pg)).is_ok_and(|sid| sid == self.session))
            .unwrap_or(self.session)
    }

    /// What a terminal's hangup does: SIGHUP (and SIGCONT, for a stopped
    /// job) to the shell and its foreground group; everything is killed
    /// after the grace period.
    fn hang_up(&self, why: Ending, ending: &mut Option<Ending>, kill_at: &mut Option<Instant>) {
        *ending = Some(why);
        let fg = self.foreground();
        for sig in [Signal::SIGHUP, Signal::SIGCONT] {
            let _ = kill(self.session, sig);
            if fg != self.session {
                let _ = killpg(fg, sig);
            }
        }
        *kill_at = Some(Instant::now() + self.kill_grace);
    }
}

/// Kills every process of the shell: its cgroup, or (without one) every
/// process of its session — call only while the shell is not reaped.
fn kill_all(containment: &Containment, session: Pid) {
    match containment {
        Containment::Cgroup(cg) => cg.kill(),
        Containment::ProcessGroup { .. } => kill_session(session, Signal::SIGKILL),
    }
}

/// Sends `sig` to every process of session `sid` (from `/proc`).
pub(super) fn kill_session(sid: Pid, sig: Signal) {
    for pid in session_members(sid, None) {
        let _ = kill(pid, sig);
    }
}

/// The processes of session `sid` (those whose working directory is in
/// `within`, when given).
pub(super) fn session_members(sid: Pid, within: Option<&Path>) -> Vec<Pid> {
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    procs
        .flatten()
        .filter_map(|p| {
            let pid = p.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(p.path().join("stat")).ok()?;
            // Fields after the command name: state, ppid, pgrp, session, …
            let session = stat.rsplit_once(')')?.1.split_whitespace().nth(3)?.parse::<i32>().ok()?;
            let inside =
                || within.is_none_or(|d| std::fs::read_link(p.path().join("cwd")).is_ok_and(|c| c.starts_with(d)));
            (session == sid.as_raw() && inside()).then(|| Pid::from_raw(pid))
        })
        .collect()
}

/// Reads what the terminal has: 0 or EIO once no process has it open.
async fn read_some(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = master.readable().await?;
        // SAFETY: reads into `buf`, which outlives the call.
        let read = ready.try_io(|fd| {
            let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match read {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes what of `input` the terminal takes now, and forgets it.
async fn write_some(master: &AsyncFd<OwnedFd>, input: &mut VecDeque<u8>) -> io::Result<()> {
    loop {
        let mut ready = master.writable().await?;
        let (front, _) = input.as_slices();
        // SAFETY: writes from `front`, which outlives the call.
        let written = ready.try_io(|fd| {
            let n = unsafe { libc::write(fd.get_ref().as_raw_fd(), front.as_ptr().cast(), front.len()) };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match written {
            Ok(Ok(n)) => {
                input.drain(..n.min(input.len()));
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use viaduct_proto::v1::JobRef;

    use crate::executor::{Backend, JobEnv, JobSetup, Shell, ShellControl, ShellExit, ShellSpec, host::HostBackend};

    /// How long any one expectation may take.
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A host job (the runner's user, no cgroup) in `dir`, its SIGHUP →
    /// SIGKILL grace 1 s.
    async fn job(dir: &std::path::Path) -> Box<dyn JobEnv> {
        job_with_grace(dir, Duration::from_secs(1)).await
    }

    /// [`job`] with this SIGHUP → SIGKILL grace.
    async fn job_with_grace(dir: &std::path::Path, grace: Duration) -> Box<dyn JobEnv> {
        let backend = HostBackend::new(dir, grace, false, None, None);
        let job = JobRef { job_id: "debug".into(), attempt: 1, ..Default::default() };
        backend.setup(&JobSetup { job, ..Default::default() }).await.unwrap()
    }

    async fn open(env: &mut dyn JobEnv, term: &str) -> Shell {
        let spec = ShellSpec { env: Default::default(), term: term.into(), cols: 100, rows: 30 };
        env.shell(&spec).await.unwrap()
    }

    async fn send(shell: &Shell, ctl: ShellControl) {
        shell.control.send(ctl).await.unwrap();
    }

    async fn type_in(shell: &Shell, text: &str) {
        send(shell, ShellControl::Input(text.as_bytes().to_vec())).await;
    }

    /// Reads the output into `seen` until it holds `marker`.
    async fn wait_for(shell: &mut Shell, seen: &mut String, marker: &str) {
        let read = async {
            while !seen.contains(marker) {
                match shell.output.recv().await {
                    Some(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                    None => panic!("the output ended without {marker:?}: {seen:?}"),
                }
            }
        };
        if tokio::time::timeout(DEADLINE, read).await.is_err() {
            panic!("no {marker:?} in time: {seen:?}");
        }
    }

    /// Reads the rest of the output into `seen`, then how the shell ended.
    async fn end(shell: Shell, seen: &mut String) -> ShellExit {
        let Shell { mut output, control, ended } = shell;
        let rest = async {
            while let Some(bytes) = output.recv().await {
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
            ended.await.unwrap()
        };
        let exit = tokio::time::timeout(DEADLINE, rest).await;
        drop(control);
        exit.unwrap_or_else(|_| panic!("the shell did not end in time: {seen:?}"))
    }

    #[tokio::test]
    async fn the_shell_has_the_terminal_its_size_and_term_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let shell = open(env.as_mut(), "vt100").await;
        type_in(&shell, "stty size; echo $TERM; pwd; exit 3\n").await;
        let mut seen = String::new();
        let exit = end(shell, &mut seen).await;
        assert!(seen.contains("30 100"), "{seen:?}");
        assert!(seen.contains("\nvt100"), "{seen:?}");
        assert!(seen.contains(&env.workspace().display().to_string()), "it starts in the workspace: {seen:?}");
        assert_eq!(exit, ShellExit { exit_code: Some(3), message: String::new() });
        env.teardown().await;
    }

    #[tokio::test]
    async fn a_resize_reaches_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let shell = open(env.as_mut(), "").await;
        send(&shell, ShellControl::Resize { cols: 50, rows: 20 }).await;
        type_in(&shell, "stty size; echo $TERM; exit\n").await;
        let mut seen = String::new();
        let exit = end(shell, &mut seen).await;
        assert!(seen.contains("20 50"), "{seen:?}");
        assert!(seen.contains(crate::executor::terminal::DEFAULT_TERM), "{seen:?}");
        assert_eq!(exit.exit_code, Some(0));
        env.teardown().await;
    }

    #[tokio::test]
    async fn an_interrupt_ends_the_foreground_job_not_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let mut shell = open(env.as_mut(), "").await;
        let mut seen = String::new();
        // The echo of the typed line says `sta""rted`: only the program
        // prints "started" — once it is the foreground job.
        type_in(&shell, "sh -c 'echo sta\"\"rted; exec sleep 100'\n").await;
        wait_for(&mut shell, &mut seen, "started").await;
        send(&shell, ShellControl::Signal("INT".into())).await;
        type_in(&shell, "echo alive $?; exit\n").await;
        wait_for(&mut shell, &mut seen, "alive 130").await;
        let exit = end(shell, &mut seen).await;
        assert_eq!(exit.exit_code, Some(0), "{seen:?}");
        env.teardown().await;
    }

    #[tokio::test]
    async fn close_hangs_up_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job_with_grace(dir.path(), Duration::from_secs(2)).await;
        let mut shell = open(env.as_mut(), "").await;
        let mut seen = String::new();
        type_in(&shell, "echo re\"\"ady\n").await;
        wait_for(&mut shell, &mut seen, "ready").await;
        send(&shell, ShellControl::Close).await;
        let exit = end(shell, &mut seen).await;
        // The hangup ends it — or, when interactive bash does not act on it
        // (seen under CI, now and then, cause not found), the SIGKILL after
        // the grace does: either way the shell is gone and says why.
        assert_eq!(exit.message, "closed", "{seen:?}");
        assert!(
            matches!(exit.exit_code, Some(c) if c == 128 + libc::SIGHUP || c == 128 + libc::SIGKILL),
            "{exit:?} {seen:?}"
        );
        env.teardown().await;
    }

    #[tokio::test]
    async fn close_kills_a_shell_that_ignores_the_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let mut shell = open(env.as_mut(), "").await;
        let mut seen = String::new();
        type_in(&shell, "trap '' HUP; echo re\"\"ady\n").await;
        wait_for(&mut shell, &mut seen, "ready").await;
        send(&shell, ShellControl::Close).await;
        let exit = end(shell, &mut seen).await;
        assert_eq!(exit, ShellExit { exit_code: Some(128 + libc::SIGKILL), message: "closed".into() });
        env.teardown().await;
    }

    #[tokio::test]
    async fn what_the_shell_left_running_dies_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let mut shell = open(env.as_mut(), "").await;
        let mut seen = String::new();
        type_in(&shell, "sleep 1000 & echo \"pid=$!=\"\n").await;
        wait_for(&mut shell, &mut seen, "=\r\n").await;
        let pid = seen.rsplit_once("pid=").and_then(|(_, p)| p.split('=').next()?.parse::<u32>().ok()).unwrap();
        type_in(&shell, "exit\n").await;
        end(shell, &mut seen).await;
        // Gone, or a zombie its new parent has not reaped yet — once the
        // kill the shell's end sent has been delivered (the kernel may run
        // it a moment longer).
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(state(), None | Some('Z')) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let state = state();
        assert!(matches!(state, None | Some('Z')), "sleep {pid} still runs ({state:?}): {seen:?}");
        env.teardown().await;
    }

    #[tokio::test]
    async fn teardown_ends_a_running_shell() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = job(dir.path()).await;
        let mut shell = open(env.as_mut(), "").await;
        let mut seen = String::new();
        type_in(&shell, "echo re\"\"ady\n").await;
        wait_for(&mut shell, &mut seen, "ready").await;
        tokio::time::timeout(DEADLINE, env.teardown()).await.unwrap();
        let exit = end(shell, &mut seen).await;
        assert_eq!(exit.exit_code, Some(128 + libc::SIGKILL));
        assert!(exit.message.contains("torn down"), "{exit:?}");
    }

    #[tokio::test]
    async fn a_slot_users_shell_is_theirs_and_so_is_its_terminal() {
        let Some((dir, users)) = crate::executor::isolation::SlotUsers::for_tests(61_900) else { return };
        let backend = HostBackend::new(dir.path(), Duration::from_secs(1), false, None, Some(users));
        let job = JobRef { job_id: "debug".into(), attempt: 1, ..Default::default() };
        let mut env = backend.setup(&JobSetup { job, ..Default::default() }).await.unwrap();
        let shell = open(env.as_mut(), "").await;
        type_in(
            &shell,
            "echo uid=$(id -u)=; test -w \"$(tty)\" && echo writ\"\"able; touch f && echo to\"\"uched; exit\n",
        )
        .await;
        let mut seen = String::new();
        let exit = end(shell, &mut seen).await;
        assert!(seen.contains("uid=61900="), "{seen:?}");
        assert!(seen.contains("writable"), "its terminal is its own: {seen:?}");
        assert!(seen.contains("touched"), "it may write in the workspace: {seen:?}");
        assert_eq!(exit.exit_code, Some(0));
        env.teardown().await;
    }

    #[tokio::test]
    async fn the_dummy_executor_has_no_shell() {
        let job = JobSetup::default();
        let mut env = crate::executor::dummy::DummyBackend.setup(&job).await.unwrap();
        let spec = ShellSpec::default();
        assert_eq!(env.shell(&spec).await.err().as_deref(), Some("this executor has no interactive shell"));
        env.teardown().await;
    }
}
