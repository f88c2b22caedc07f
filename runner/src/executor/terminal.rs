//! Interactive shells on a terminal ("debug shell"): what an executor's
//! [`JobEnv::shell`](super::JobEnv::shell) is given and returns, and the
//! pseudo-terminal helpers of the host executor.
//!
//! A [`Shell`] is three channels: the terminal's output (closed once the
//! shell has ended and its output was drained), the [`ShellControl`]s of
//! the user (keystrokes, resizes, signals, close) and, last, how it ended
//! ([`ShellExit`]). Whoever holds it relays bytes; the executor's task
//! behind it owns the processes. Dropping the control sender (or the
//! output receiver) closes the shell as [`ShellControl::Close`] does.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

/// `TERM` when the user's terminal says none.
pub const DEFAULT_TERM: &str = "xterm-256color";

/// Chunks of output buffered between the executor and the relay.
const OUTPUT_CHUNKS: usize = 64;
/// Controls buffered between the relay and the executor.
const CONTROLS: usize = 64;

/// What a shell is started with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellSpec {
    /// Its environment, on top of what the executor sets (`HOME`,
    /// `TMPDIR`, `PATH` by default…), like a step's.
    pub env: BTreeMap<String, String>,
    /// `TERM` (empty: [`DEFAULT_TERM`]).
    pub term: String,
    /// Columns of the terminal (0: left as the terminal starts).
    pub cols: u16,
    /// Rows of the terminal (0: left as the terminal starts).
    pub rows: u16,
}

impl ShellSpec {
    /// Its `TERM`.
    pub fn term(&self) -> &str {
        if self.term.is_empty() { DEFAULT_TERM } else { &self.term }
    }
}

/// What the user does to a running shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellControl {
    /// Bytes typed.
    Input(Vec<u8>),
    /// The terminal's new size (the shell's foreground job gets SIGWINCH).
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A signal for the terminal's foreground process group, by name: INT,
    /// TERM, QUIT, HUP, KILL, TSTP, CONT, WINCH, USR1 or USR2 (see
    /// [`signal_name`]); any other is ignored.
    Signal(String),
    /// Ends the shell: a hangup, then whatever is left is killed after a
    /// grace period.
    Close,
}

/// A running shell: its terminal's output (closed at the end), how to
/// control it, and how it ended. Read `output` until it is closed, then
/// `ended`.
#[derive(Debug)]
pub struct Shell {
    /// The terminal's output, as it is written.
    pub output: mpsc::Receiver<Vec<u8>>,
    /// What the user does (dropping it closes the shell).
    pub control: mpsc::Sender<ShellControl>,
    /// Fires once the shell has exited and its output was drained.
    pub ended: oneshot::Receiver<ShellExit>,
}

/// How a shell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellExit {
    /// The shell's exit code (128 + signal when killed); `None` when it is
    /// unknown.
    pub exit_code: Option<i32>,
    /// Why it ended, when not by itself (empty when it did).
    pub message: String,
}

/// The executor's ends of a [`Shell`]'s channels.
pub(crate) struct ShellEnds {
    /// Where the terminal's output goes.
    pub output: mpsc::Sender<Vec<u8>>,
    /// What the user does.
    pub control: mpsc::Receiver<ShellControl>,
    /// How it ended.
    pub ended: oneshot::Sender<ShellExit>,
}

/// A [`Shell`] and the executor's ends of its channels.
pub(crate) fn channels() -> (Shell, ShellEnds) {
    let (out_tx, out_rx) = mpsc::channel(OUTPUT_CHUNKS);
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROLS);
    let (end_tx, end_rx) = oneshot::channel();
    (
        Shell { output: out_rx, control: ctl_tx, ended: end_rx },
        ShellEnds { output: out_tx, control: ctl_rx, ended: end_tx },
    )
}

/// The signals a user may send, by name.
const SIGNALS: [(&str, Signal); 10] = [
    ("INT", Signal::SIGINT),
    ("TERM", Signal::SIGTERM),
    ("QUIT", Signal::SIGQUIT),
    ("HUP", Signal::SIGHUP),
    ("KILL", Signal::SIGKILL),
    ("TSTP", Signal::SIGTSTP),
    ("CONT", Signal::SIGCONT),
    ("WINCH", Signal::SIGWINCH),
    ("USR1", Signal::SIGUSR1),
    ("USR2", Signal::SIGUSR2),
];

/// The canonical name (`INT`…) and number of a signal a user may send:
/// `name` in any case, with or without `SIG`. `None` for any other.
pub fn signal_name(name: &str) -> Option<(&'static str, Signal)> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == bare).copied()
}

/// Ctrl-C, Ctrl-\ and Ctrl-Z: the bytes a terminal turns into SIGINT,
/// SIGQUIT and SIGTSTP (with the default `stty` settings).
pub fn control_character(sig: Signal) -> Option<u8> {
    match sig {
        Signal::SIGINT => Some(0x03),
        Signal::SIGQUIT => Some(0x1c),
        Signal::SIGTSTP => Some(0x1a),
        _ => None,
    }
}

/// Both ends of a new pseudo-terminal. Both are close-on-exec (a process
/// another thread starts meanwhile inherits neither); the master is
/// non-blocking.
pub(crate) struct Pty {
    /// What the runner reads and writes.
    pub master: OwnedFd,
    /// The shell's terminal.
    pub slave: OwnedFd,
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Opens a pseudo-terminal of `cols` × `rows` (0: the default size).
pub(crate) fn open_pty(cols: u16, rows: u16) -> Result<Pty, String> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: plain system calls; each descriptor is owned as soon as it
    // exists.
    unsafe {
        let fd = libc::posix_openpt(flags | libc::O_NONBLOCK);
        if fd < 0 {
            return Err(os_error("cannot open a pseudo-terminal"));
        }
        let master = OwnedFd::from_raw_fd(fd);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(os_error("cannot unlock the pseudo-terminal"));
        }
        // Linux ≥ 4.13: the peer without a path lookup; before, by name.
        let mut fd = libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags);
        if fd < 0 {
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
                return Err(os_error("cannot name the pseudo-terminal"));
            }
            fd = libc::open(name.as_ptr(), flags);
            if fd < 0 {
                return Err(os_error("cannot open the pseudo-terminal's terminal"));
            }
        }
        let pty = Pty { master, slave: OwnedFd::from_raw_fd(fd) };
        if cols > 0 && rows > 0 {
            set_size(&pty.master, cols, rows)?;
        }
        Ok(pty)
    }
}

/// Sets the size of the terminal of `fd` (either end); the kernel sends
/// SIGWINCH to its foreground process group.
pub(crate) fn set_size(fd: impl AsFd, cols: u16, rows: u16) -> Result<(), String> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a `winsize`, which outlives the call.
    if unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(os_error("cannot resize the terminal"));
    }
    Ok(())
}

/// The foreground process group of the terminal whose master is `fd`.
pub(crate) fn foreground_group(fd: impl AsFd) -> Option<nix::unistd::Pid> {
    // SAFETY: a plain system call on an open descriptor.
    let pgrp = unsafe { libc::tcgetpgrp(fd.as_fd().as_raw_fd()) };
    (pgrp > 0).then(|| nix::unistd::Pid::from_raw(pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name("INT"), Some(("INT", Signal::SIGINT)));
        assert_eq!(signal_name("sigusr2"), Some(("USR2", Signal::SIGUSR2)));
        assert_eq!(signal_name(" Winch "), Some(("WINCH", Signal::SIGWINCH)));
        assert_eq!(signal_name("STOP"), None);
        assert_eq!(signal_name("-1"), None);
        assert_eq!(control_character(Signal::SIGQUIT), Some(0x1c));
        assert_eq!(control_character(Signal::SIGTERM), None);
    }

    #[test]
    fn a_pty_has_the_size_it_was_given() {
        let pty = open_pty(100, 30).unwrap();
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ fills a `winsize`.
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 30));
        set_size(&pty.master, 50, 20).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) }, 0);
        assert_eq!((size.ws_col, size.ws_row), (50, 20));
    }
}
