//! `viaduct debug JOB [--step N] [--timeout D]`: an interactive shell in a
//! job's restored workspace, over `Debug.Shell`.
//!
//! On a terminal, the local terminal goes raw (keys, Ctrl-C included, go
//! to the remote shell; restored on exit) and window size changes are
//! sent as they happen. Piped, standard input is sent as it is and the
//! session stays open until the shell exits, so a script can drive it.
//! The shell's output is the remote terminal's: written as it comes, like
//! ssh does.

use std::io::{IsTerminal, Write};

use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use viaduct_sdk::Client;
use viaduct_sdk::proto::v1::{ShellInput, ShellOpen, TerminalSize, shell_input::Msg, shell_output};

use super::{Failure, args::DebugArgs};

/// The local terminal in raw mode until dropped.
struct Raw {
    saved: nix::sys::termios::Termios,
}

impl Raw {
    fn enable() -> Result<Self, Failure> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| Failure::Usage(format!("cannot read the terminal's mode: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .map_err(|e| Failure::Usage(format!("cannot put the terminal in raw mode: {e}")))?;
        Ok(Self { saved })
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(window_size_ioctl, nix::libc::TIOCGWINSZ, nix::libc::winsize);

/// The local terminal's size (80×24 when it cannot be read).
fn window_size() -> TerminalSize {
    let mut ws = nix::libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer we own.
    let ok = unsafe { window_size_ioctl(nix::libc::STDOUT_FILENO, &mut ws) }.is_ok() && ws.ws_col > 0;
    if ok {
        TerminalSize { cols: ws.ws_col.into(), rows: ws.ws_row.into() }
    } else {
        TerminalSize { cols: 80, rows: 24 }
    }
}

/// `viaduct debug`.
pub async fn debug(client: &Client, a: DebugArgs) -> Result<(), Failure> {
    let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let timeout_seconds = match a.timeout {
        Some(t) => u32::try_from(t.as_secs().max(1)).map_err(|_| Failure::Usage("--timeout is too long".into()))?,
        None => 0,
    };
    let open = ShellOpen {
        job_id: a.job.clone(),
        step: a.step.unwrap_or(0),
        size: Some(window_size()),
        term: if tty { std::env::var("TERM").unwrap_or_default() } else { "dumb".into() },
        timeout_seconds,
        live: a.live,
    };
    // An untrusted run chose the image and environment this shell starts
    // in: its output could pose as a prompt. Said before anything of it.
    if let Some((run, _)) = a.job.split_once('.') {
        let req = viaduct_sdk::proto::v1::GetRunRequest { id: run.to_string() };
        if let Ok(run) = client.runs().get(req).await
            && run.get_ref().trust() == viaduct_sdk::proto::v1::Trust::Untrusted
        {
            eprintln!(
                "viaduct: warning: run {} is untrusted (a pull request from outside): the shell runs in its image and \
                 environment; do not type credentials into it",
                run.get_ref().id
            );
        }
    }
    let (tx, rx) = mpsc::channel::<ShellInput>(64);
    let _ = tx.send(ShellInput { msg: Some(Msg::Open(open)) }).await;
    let mut output = client.debug().shell(ReceiverStream::new(rx)).await?.into_inner();
    let raw = if tty { Some(Raw::enable()?) } else { None };
    let keys = tokio::spawn(send_input(tx.clone()));
    let resizes = tokio::spawn(send_resizes(tx));
    let mut stdout = std::io::stdout();
    let mut ended = None;
    while let Some(msg) = output.next().await {
        match msg.map_err(Failure::from)?.msg {
            Some(shell_output::Msg::Started(s)) => {
                let line = format!(
                    "viaduct: shell on runner {} in job {}'s workspace after step {} (attempt {}); Ctrl-D or `exit` ends it",
                    s.runner_id, a.job, s.step, s.attempt
                );
                eprint!("{line}{}", if tty { "\r\n" } else { "\n" });
            }
            Some(shell_output::Msg::Data(d)) => {
                let _ = stdout.write_all(&d);
                let _ = stdout.flush();
            }
            Some(shell_output::Msg::Ended(e)) => {
                ended = Some(e);
                break;
            }
            None => {}
        }
    }
    keys.abort();
    resizes.abort();
    drop(raw);
    match ended {
        Some(e) => match (e.exit_code, e.message.is_empty()) {
            (Some(code), true) => {
                if code == 0 {
                    Ok(())
                } else {
                    Err(Failure::Exit(u8::try_from(code.clamp(1, 255)).unwrap_or(1)))
                }
            }
            (Some(code), false) => {
                eprintln!("viaduct: the shell ended ({}) with exit code {code}", e.message);
                Err(Failure::Exit(u8::try_from(code.clamp(1, 255)).unwrap_or(1)))
            }
            (None, _) => Err(Failure::Server(format!("the debug shell ended: {}", e.message))),
        },
        None => Err(Failure::Server("the server ended the debug shell without saying why".into())),
    }
}

/// Sends standard input as it is read. At its end the session stays open
/// (the shell decides when it is done).
async fn send_input(tx: mpsc::Sender<ShellInput>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return std::future::pending().await,
            Ok(n) => {
                if tx.send(ShellInput { msg: Some(Msg::Data(buf[..n].to_vec())) }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends the terminal's size each time it changes.
async fn send_resizes(tx: mpsc::Sender<ShellInput>) {
    let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if tx.send(ShellInput { msg: Some(Msg::Resize(window_size())) }).await.is_err() {
            return;
        }
    }
}
