//! Starting a host step's process (and a plugin's host program) without
//! copying the runner: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`.
//!
//! `std::process::Command` with a `pre_exec` hook (what joining a cgroup,
//! a private `/proc` and dropping to the slot user need) has to `fork`: the
//! kernel copies the runner's page tables, and the child's `exec` then
//! tears the copy down again. Measured, that was a fifth of the runner's
//! CPU on a job of short steps (`perf`, `cargo xtask bench steps`). Here
//! the child borrows the runner's memory until it executes the program (as
//! `posix_spawn` does), so starting a step costs the same whatever the
//! runner's size.
//!
//! The child runs on a stack of its own, in memory it shares with the
//! runner, while the calling thread waits (`CLONE_VFORK`); other runner
//! threads keep running. So between `clone` and `execve` it makes only raw
//! system calls on data prepared beforehand ([`Prepared`]): no allocation,
//! no lock, no libc function that keeps process-wide state. In particular
//! it changes user with the raw `setresuid` system calls: glibc's
//! `setuid` would ask every runner thread to change user too. Signals are
//! blocked around `clone`; the child resets every handler to the default
//! before it unblocks them, so no runner handler ever runs on its stack.
//!
//! What the child does, in order: reset signals; its own process group
//! (on a terminal: its own session, the terminal as its controlling
//! terminal); join its cgroup (or write its process group to a file); a
//! private `/proc`; drop to the slot user (groups, gid, uid); `chdir`;
//! stdin from `/dev/null` (or the terminal), stdout and stderr to the
//! given pipes; `execve`. A failure at any point is reported to the caller
//! (which step, which error) and the child exits with 127 before executing
//! anything.
//!
//! The program is looked for the way `execvp` does, but as the job's user
//! and after `chdir`: the child tries each candidate (every absolute
//! directory of the step's `PATH`) in turn, so the root runner never looks
//! at paths a pipeline chose.
//!
//! The process is waited for through its pidfd, so a recycled process id is
//! never waited for or signalled (Linux ≥ 5.4).

use std::{
    collections::BTreeMap,
    ffi::{CStr, CString, OsStr},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::ExitStatusExt},
    },
    path::Path,
    process::ExitStatus,
    sync::atomic::{AtomicI64, Ordering},
};

use tokio::io::unix::AsyncFd;

use crate::executor::isolation::JobUser;

// The raw uid/gid system calls below take 32-bit ids only on 64-bit
// targets (32-bit ones have `setresuid32`…).
#[cfg(not(target_pointer_width = "64"))]
compile_error!("host::launch changes user with the 64-bit targets' system calls");

/// Where a process goes before it executes anything (see [`Launch::enter`]).
pub enum Enter<'a> {
    /// Nowhere else: it stays in the runner's cgroup.
    Nothing,
    /// Into the cgroup whose `cgroup.procs` file this is.
    Cgroup(&'a CStr),
    /// Its process group id is written to this file (containment without
    /// cgroups).
    PgidFile(&'a CStr),
}

/// A process to start.
pub struct Launch<'a> {
    /// What to execute: the first of these paths that exists and may be
    /// executed by `user` (see [`candidates`]).
    pub programs: &'a [std::path::PathBuf],
    /// `argv[0]`.
    pub name: &'a OsStr,
    /// Its arguments, after `argv[0]`.
    pub args: &'a [&'a OsStr],
    /// Its whole environment.
    pub env: &'a BTreeMap<String, String>,
    /// Its working directory (entered as `user`).
    pub cwd: &'a Path,
    /// Its standard output.
    pub stdout: &'a OwnedFd,
    /// Its standard error.
    pub stderr: &'a OwnedFd,
    /// A terminal (the slave of a pseudo-terminal) to run on: a session of
    /// its own instead of a process group, this as controlling terminal
    /// and standard input. `None`: standard input is `/dev/null`.
    pub terminal: Option<&'a OwnedFd>,
    /// Its containment.
    pub enter: Enter<'a>,
    /// The user it runs as (`None`: the runner's).
    pub user: Option<&'a JobUser>,
}

/// Where the child failed, for the message.
#[derive(Clone, Copy, Debug)]
enum Stage {
    ProcessGroup = 1,
    Cgroup,
    PgidFile,
    PrivateProc,
    User,
    Chdir,
    Stdio,
    Exec,
    Terminal,
}

impl Stage {
    fn of(n: i64) -> Self {
        match n {
            1 => Self::ProcessGroup,
            2 => Self::Cgroup,
            3 => Self::PgidFile,
            4 => Self::PrivateProc,
            5 => Self::User,
            6 => Self::Chdir,
            7 => Self::Stdio,
            9 => Self::Terminal,
            _ => Self::Exec,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::ProcessGroup => "cannot start a process group",
            Self::Cgroup => "cannot join the step's cgroup",
            Self::PgidFile => "cannot record the process group",
            Self::PrivateProc => "cannot enter the mount namespace with the private /proc",
            Self::User => "cannot switch to the job's user",
            Self::Chdir => "cannot enter the working directory",
            Self::Stdio => "cannot connect standard input and output",
            Self::Exec => "cannot execute the program",
            Self::Terminal => "cannot take the terminal",
        }
    }
}

/// Everything the child reads, built before `clone` (the child allocates
/// nothing).
struct Prepared {
    programs: Vec<CString>,
    /// NUL-terminated pointer arrays into `_strings`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    cwd: CString,
    null: OwnedFd,
    stdout: libc::c_int,
    stderr: libc::c_int,
    terminal: Option<libc::c_int>,
    cgroup: Option<CString>,
    pgid_file: Option<CString>,
    /// The mount namespace to enter ([`crate::executor::isolation::StepMounts`]).
    mounts: Option<libc::c_int>,
    user: Option<(libc::uid_t, Vec<libc::gid_t>)>,
    /// Set by a failing child: `stage << 32 | errno`.
    failed: AtomicI64,
}

fn c_string(bytes: &[u8], what: &str) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} contains a NUL byte")))
}

impl Prepared {
    fn new(l: &Launch<'_>) -> io::Result<Self> {
        let programs = l
            .programs
            .iter()
            .map(|p| c_string(p.as_os_str().as_bytes(), "the program's path"))
            .collect::<Result<_, _>>()?;
        let mut strings = Vec::with_capacity(1 + l.args.len() + l.env.len());
        strings.push(c_string(l.name.as_bytes(), "the program's name")?);
        for a in l.args {
            strings.push(c_string(a.as_bytes(), "an argument")?);
        }
        let argc = strings.len();
        for (k, v) in l.env {
            strings.push(c_string(format!("{k}={v}").as_bytes(), "the environment")?);
        }
        let argv = strings[..argc].iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect();
        let envp = strings[argc..].iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect();
        let (cgroup, pgid_file) = match l.enter {
            Enter::Nothing => (None, None),
            Enter::Cgroup(p) => (Some(p.to_owned()), None),
            Enter::PgidFile(p) => (None, Some(p.to_owned())),
        };
        Ok(Self {
            programs,
            argv,
            envp,
            _strings: strings,
            cwd: c_string(l.cwd.as_os_str().as_bytes(), "the working directory")?,
            null: std::fs::File::open("/dev/null")?.into(),
            stdout: l.stdout.as_raw_fd(),
            stderr: l.stderr.as_raw_fd(),
            terminal: l.terminal.map(AsRawFd::as_raw_fd),
            cgroup,
            pgid_file,
            mounts: match l.user {
                // Never without its private /proc.
                Some(u) if u.private_proc() => Some(
                    u.mounts()
                        .ok_or_else(|| io::Error::other("the job has no mount namespace of its own"))?
                        .as_raw_fd(),
                ),
                _ => None,
            },
            user: l.user.map(|u| (u.uid, u.groups().to_vec())),
            failed: AtomicI64::new(0),
        })
    }
}

/// Where `program` may be, by `path` (a `PATH` value): in each of its
/// absolute directories, in order. Nothing is looked at here: the child
/// tries them (see the module's comment).
pub fn candidates(program: &str, path: &str) -> Vec<std::path::PathBuf> {
    std::env::split_paths(path).filter(|d| d.is_absolute()).map(|d| d.join(program)).collect()
}

/// `program` in the directories of `path` (a `PATH` the runner fixed, not
/// the pipeline): the first executable file of that name.
pub fn which(program: &str, path: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Signal numbers are below this (Linux's `_NSIG`).
const SIGNALS: libc::c_int = 65;

/// Size of the child's stack: it only makes system calls.
const STACK: usize = 64 * 1024;

/// The child's stack, with an inaccessible page below it: an overflow
/// faults instead of writing over the runner's memory.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Self> {
        let page = 4096;
        let len = STACK + page;
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let stack = Self { base, len };
            if libc::mprotect(base, page, libc::PROT_NONE) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(stack)
        }
    }

    /// Its top (the stack grows down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        ((self.base as usize + self.len) & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Starts `l`. Returns once the program is executing (or could not be).
pub fn spawn(l: &Launch<'_>) -> io::Result<Child> {
    thread_local! {
        /// This thread's child stack, made once: the thread waits while a
        /// child runs on it, so one is enough.
        static STACK: std::cell::OnceCell<Stack> = const { std::cell::OnceCell::new() };
    }
    let prepared = Prepared::new(l)?;
    let top = STACK.with(|s| match s.get() {
        Some(stack) => Ok(stack.top()),
        None => Stack::new().map(|stack| s.get_or_init(|| stack).top()),
    })?;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: `all` and `old` are valid sigsets; `child` only reads
    // `prepared` (alive until `clone` returns: CLONE_VFORK suspends this
    // thread until the child has executed or exited) and writes its own
    // stack and `prepared.failed`; `pidfd` outlives the call.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            std::ptr::from_ref(&prepared).cast_mut().cast(),
            &mut pidfd as *mut libc::c_int,
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(err);
        }
        pid
    };
    if pidfd < 0 {
        // A kernel without pidfds (before 5.2) ignores CLONE_PIDFD.
        reap_by_pid(pid);
        return Err(io::Error::other("this kernel has no pidfds: host steps need Linux 5.4 or later"));
    }
    // SAFETY: CLONE_PIDFD gave us this descriptor; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let failed = prepared.failed.load(Ordering::Acquire);
    if failed != 0 {
        // It exited without executing anything: reap it.
        let _ = reap(&pidfd, 0);
        let errno = i32::try_from(failed & 0xffff_ffff).unwrap_or(libc::EIO);
        let e = io::Error::from_raw_os_error(errno);
        let stage = Stage::of(failed >> 32);
        let hint = match stage {
            Stage::Chdir if errno == libc::EACCES && l.user.is_some() => {
                " (the job's user cannot reach it: is a directory above the runner's work directory closed to \
                 others? the runner's log says at start)"
            }
            _ => "",
        };
        return Err(io::Error::new(e.kind(), format!("{}: {e}{hint}", stage.describe())));
    }
    // SAFETY: an `OwnedFd` stays open, and is the same descriptor, until
    // the `AsyncFd` is dropped or gives it back.
    match unsafe { AsyncFd::register(pidfd) } {
        Ok(pidfd) => Ok(Child { pid, pidfd: Some(pidfd) }),
        Err(e) => {
            // Cannot be waited for (a pidfd that cannot be polled: Linux
            // 5.2): not left running unwatched.
            let (pidfd, e) = e.into_parts();
            kill_and_reap(pidfd);
            Err(io::Error::new(
                e.kind(),
                format!("cannot wait for the process: {e} (host steps need Linux 5.4 or later)"),
            ))
        }
    }
}

/// The child, between `clone` and `execve` (see the module's comment: raw
/// system calls on prepared data only).
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Prepared` that `spawn` keeps alive while this
    // thread of execution exists (CLONE_VFORK).
    let p = unsafe { &*(arg as *const Prepared) };
    let fail = |stage: Stage| -> libc::c_int {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        p.failed.store(((stage as i64) << 32) | i64::from(errno), Ordering::Release);
        // SAFETY: ends the child at once (no atexit handlers: they are the
        // runner's).
        unsafe { libc::_exit(127) }
    };
    // SAFETY: system calls on valid, NUL-terminated data owned by `p`.
    unsafe {
        // Default handlers (the runner's must not run on this stack, and
        // ignored signals would stay ignored across exec), then unblock.
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..SIGNALS {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Some(tty) = p.terminal {
            // A session leader whose controlling terminal this is (and the
            // leader of its foreground process group, until its shell
            // makes others).
            if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) != 0 {
                return fail(Stage::Terminal);
            }
        } else if libc::setpgid(0, 0) != 0 {
            return fail(Stage::ProcessGroup);
        }
        if let Some(procs) = &p.cgroup {
            // "0" is the writing process itself.
            if write_file(procs, b"0") != 0 {
                return fail(Stage::Cgroup);
            }
        }
        if let Some(file) = &p.pgid_file {
            let mut digits = [0u8; 12];
            let n = decimal(libc::getpid().unsigned_abs(), &mut digits);
            if write_file(file, n) != 0 {
                return fail(Stage::PgidFile);
            }
        }
        if let Some(fd) = p.mounts
            && crate::executor::isolation::StepMounts::enter(fd).is_err()
        {
            return fail(Stage::PrivateProc);
        }
        if let Some((uid, groups)) = &p.user {
            let (uid, len) = (libc::c_long::from(*uid), groups.len());
            if libc::syscall(libc::SYS_setgroups, len, groups.as_ptr()) != 0
                || libc::syscall(libc::SYS_setresgid, uid, uid, uid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                return fail(Stage::User);
            }
        }
        if libc::chdir(p.cwd.as_ptr()) != 0 {
            return fail(Stage::Chdir);
        }
        let stdin = p.terminal.unwrap_or(p.null.as_raw_fd());
        if libc::dup2(stdin, 0) < 0 || libc::dup2(p.stdout, 1) < 0 || libc::dup2(p.stderr, 2) < 0 {
            return fail(Stage::Stdio);
        }
        // As `execvp`: the next candidate when one is missing or may not be
        // executed; "permission denied" if that was all.
        let mut denied = false;
        for program in &p.programs {
            libc::execve(program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR => {}
                _ => return fail(Stage::Exec),
            }
        }
        *libc::__errno_location() = if denied { libc::EACCES } else { libc::ENOENT };
        fail(Stage::Exec)
    }
}

/// Writes `data` to the existing file `path`: 0, or -1 (errno set).
///
/// # Safety
/// Raw system calls only: callable in the child.
unsafe fn write_file(path: &CStr, data: &[u8]) -> libc::c_int {
    // SAFETY: `path` is NUL-terminated; `data` outlives the write.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o600);
        if fd < 0 {
            return -1;
        }
        let written = libc::write(fd, data.as_ptr().cast(), data.len());
        let ok = written == data.len() as isize;
        if written >= 0 && !ok {
            *libc::__errno_location() = libc::EIO;
        }
        libc::close(fd);
        if ok { 0 } else { -1 }
    }
}

/// `n` in decimal, in the end of `buf`.
fn decimal(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Reaps the process behind `pidfd` if it has exited (`flags` 0: waits
/// until it has). `None`: still running.
fn reap(pidfd: &OwnedFd, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    // SAFETY: `info` is a valid siginfo_t to fill; `pidfd` is open.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let id = libc::id_t::try_from(pidfd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        if libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | flags) != 0 {
            return Err(io::Error::last_os_error());
        }
        if info.si_pid() == 0 {
            return Ok(None);
        }
        let status = info.si_status();
        // As `waitpid` would have said it.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        Ok(Some(ExitStatus::from_raw(raw)))
    }
}

/// Kills and reaps a process known only by its id (our own child, not yet
/// reaped: the id cannot have been reused).
fn reap_by_pid(pid: libc::pid_t) {
    // SAFETY: plain system calls on our own unreaped child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

/// Kills the process behind `pidfd`, and reaps it off this thread (a
/// process in uninterruptible sleep may take a while to die).
fn kill_and_reap(pidfd: OwnedFd) {
    // SAFETY: signals the process this pidfd refers to (never another one
    // that reused its id).
    unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
    }
    let _ = std::thread::Builder::new().name("viaduct-reap".into()).spawn(move || reap(&pidfd, 0));
}

/// A started process, killed (and reaped) if dropped before it was waited
/// for.
pub struct Child {
    pid: libc::pid_t,
    /// `None` once reaped.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Child {
    /// Its process id (and process group id).
    pub fn id(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits until it exits, without reaping it: until [`Child::wait`], its
    /// process id (and so its process group's and session's) cannot be
    /// another process's, so what is left of them can be signalled
    /// safely. Cancel-safe.
    pub async fn exited(&self) -> io::Result<ExitStatus> {
        let Some(fd) = &self.pidfd else {
            return Err(io::Error::other("the process was already waited for"));
        };
        loop {
            let mut ready = fd.readable().await?;
            if let Some(status) = reap(fd.get_ref(), libc::WNOHANG | libc::WNOWAIT)? {
                return Ok(status);
            }
            ready.clear_ready();
        }
    }

    /// Waits until it exits, and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let Some(fd) = &self.pidfd else {
            return Err(io::Error::other("the process was already waited for"));
        };
        loop {
            let mut ready = fd.readable().await?;
            if let Some(status) = reap(fd.get_ref(), libc::WNOHANG)? {
                self.pidfd = None;
                return Ok(status);
            }
            ready.clear_ready();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(fd) = self.pidfd.take() {
            kill_and_reap(fd.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        (r.into(), w.into())
    }

    async fn output(r: OwnedFd) -> String {
        let mut f = tokio::fs::File::from_std(std::fs::File::from(r));
        let mut s = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut f, &mut s).await.unwrap();
        s
    }

    #[tokio::test]
    async fn runs_the_program_with_exactly_its_arguments_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (r, w) = pipe();
        let env = BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]);
        let script = "echo \"$GREETING\" \"$1\"; pwd; env | wc -l; echo $$ $(cut -d' ' -f5 /proc/$$/stat); exit 7";
        let args = [OsStr::new("-c"), OsStr::new(script), OsStr::new("sh"), OsStr::new("a b")];
        let launch = Launch {
            programs: &[PathBuf::from("/bin/sh")],
            name: OsStr::new("sh"),
            args: &args,
            env: &env,
            cwd: dir.path(),
            stdout: &w,
            stderr: &w,
            terminal: None,
            enter: Enter::Nothing,
            user: None,
        };
        let mut child = spawn(&launch).unwrap();
        drop(w);
        let out = output(r).await;
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "hi there a b");
        assert_eq!(Path::new(lines[1]).canonicalize().unwrap(), dir.path().canonicalize().unwrap());
        // GREETING, and what sh sets itself (PWD, SHLVL…).
        assert!(lines[2].trim().parse::<u32>().unwrap() <= 4, "{out}");
        // Its own process group.
        let (pid, group) = lines[3].split_once(' ').unwrap();
        assert_eq!((pid, group), (child.id().to_string().as_str(), pid));
    }

    /// `programs` run with `args` in `cwd`, output to `w`.
    fn launch<'a>(programs: &'a [PathBuf], args: &'a [&'a OsStr], cwd: &'a Path, w: &'a OwnedFd) -> Launch<'a> {
        static NO_ENV: BTreeMap<String, String> = BTreeMap::new();
        Launch {
            programs,
            name: OsStr::new("sh"),
            args,
            env: &NO_ENV,
            cwd,
            stdout: w,
            stderr: w,
            terminal: None,
            enter: Enter::Nothing,
            user: None,
        }
    }

    #[tokio::test]
    async fn a_failure_before_exec_says_where() {
        let (_r, w) = pipe();
        let sh = [PathBuf::from("/bin/sh")];
        let e = spawn(&launch(&sh, &[], Path::new("/no/such/dir"), &w)).err().unwrap();
        assert!(e.to_string().starts_with("cannot enter the working directory"), "{e}");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = spawn(&launch(&[PathBuf::from("/no/such/program")], &[], Path::new("/"), &w)).err().unwrap();
        assert!(e.to_string().starts_with("cannot execute the program"), "{e}");
        assert!(spawn(&launch(&[], &[], Path::new("/"), &w)).is_err(), "nothing to execute");
    }

    #[tokio::test]
    async fn the_first_candidate_that_can_be_executed_runs_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let not_executable = dir.path().join("sh");
        std::fs::write(&not_executable, "#!/bin/sh\necho wrong\n").unwrap();
        let programs = [dir.path().join("missing/sh"), not_executable.clone(), PathBuf::from("/bin/sh")];
        let (r, w) = pipe();
        let args = [OsStr::new("-c"), OsStr::new("echo $0")];
        let mut child = spawn(&launch(&programs, &args, dir.path(), &w)).unwrap();
        drop(w);
        assert_eq!(output(r).await, "sh\n");
        assert!(child.wait().await.unwrap().success());
        // Only a file that may not be executed: said so.
        let (_r, w) = pipe();
        let e = spawn(&launch(&[not_executable], &args, dir.path(), &w)).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert_eq!(
            candidates("sh", "relative:/usr/bin::/bin"),
            [PathBuf::from("/usr/bin/sh"), PathBuf::from("/bin/sh")]
        );
    }

    #[tokio::test]
    async fn signals_end_it_and_a_dropped_child_is_killed() {
        let (_r, w) = pipe();
        let env = BTreeMap::new();
        let args = [OsStr::new("-c"), OsStr::new("sleep 30")];
        let launch = Launch {
            programs: &[PathBuf::from("/bin/sh")],
            name: OsStr::new("sh"),
            args: &args,
            env: &env,
            cwd: Path::new("/"),
            stdout: &w,
            stderr: &w,
            terminal: None,
            enter: Enter::Nothing,
            user: None,
        };
        let mut child = spawn(&launch).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id()), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGTERM));
        let child = spawn(&launch).unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id());
        drop(child);
        let gone = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            nix::sys::signal::kill(pid, None).is_err()
        });
        assert!(gone, "a dropped child is killed and reaped");
    }
}
