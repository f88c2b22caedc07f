//! The container executor's interactive shell ("debug shell"): an exec in
//! the job's container with a terminal (`bash -i`, else `sh -i`), as the
//! container's user, in `/workspace`, through the Docker Engine API.
//!
//! The engine owns the terminal, so what the host shell does with it is
//! done here through the API and the container:
//! - input goes to the exec's attached stream (through a task of its own:
//!   a terminal that does not take input never stops the output);
//! - a resize is `resize_exec`;
//! - INT, QUIT and TSTP are the terminal's control characters (Ctrl-C,
//!   Ctrl-\, Ctrl-Z); any other signal is sent by a short second exec
//!   ([`SIGNAL`]) to the terminal's foreground process group. The engine's
//!   process id of the exec (`inspect_exec`) is the host's, not the
//!   container's, so that exec finds the shell itself: the process started
//!   from outside the container (parent 0) whose environment carries this
//!   shell's random `VIADUCT_SHELL_ID`. It never signals anything else:
//!   not the container's init, nor the launcher;
//! - a close is a hangup (SIGHUP to the shell and its foreground group),
//!   then SIGKILL to every process of the shell after the grace period.
//!
//! Once the shell has exited (`inspect_exec`, checked every second — the
//! engine keeps the stream open while a background job holds the
//! terminal), what it left running is killed, the output drained, and its
//! exit code reported.

use std::{
    collections::{BTreeMap, VecDeque},
    pin::Pin,
    time::{Duration, Instant},
};

use bollard::{
    Docker,
    exec::{ResizeExecOptions, StartExecOptions, StartExecResults},
    models::ExecConfig,
};
use futures_util::{Stream, StreamExt};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

use super::engine_error;
use crate::executor::terminal::{self, Shell, ShellControl, ShellEnds, ShellExit, ShellSpec};

/// The shell: bash if the image has it.
const SHELL: &str = "if [ -x /bin/bash ]; then exec /bin/bash -i; fi; exec /bin/sh -i";

/// Signals what belongs to the shell marked `$2`: `$1` is the signal,
/// `$3` what gets it — `fg` the terminal's foreground process group (the
/// shell itself when there is none), `hup` the shell and that group, `all`
/// every process of its session and every process that carries its mark.
const SIGNAL: &str = r#"sig=$1 mark=$2 what=$3 shell= fg= marked=
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = "$$" ] && continue
  tr '\0' '\n' 2>/dev/null <"$d/environ" | grep -qxF "VIADUCT_SHELL_ID=$mark" || continue
  marked="$marked $p"
  s=$(cat "$d/stat" 2>/dev/null) || continue
  set -- ${s##*") "}
  [ "$2" = 0 ] && shell=$p fg=$6
done
case $what in
fg)
  [ -n "$shell" ] || exit 1
  if [ "${fg:-0}" -gt 0 ] && kill -s "$sig" -- "-$fg"; then :; else kill -s "$sig" "$shell"; fi ;;
hup)
  [ -n "$shell" ] || exit 1
  kill -s "$sig" "$shell"
  [ "${fg:-0}" -gt 0 ] && kill -s "$sig" -- "-$fg" ;;
all)
  if [ -n "$shell" ]; then
    for d in /proc/[0-9]*; do
      s=$(cat "$d/stat" 2>/dev/null) || continue
      set -- ${s##*") "}
      [ "$4" = "$shell" ] && kill -s "$sig" "${d#/proc/}"
    done
  fi
  for p in $marked; do kill -s "$sig" "$p"; done ;;
esac 2>/dev/null
exit 0
"#;

/// How long a signal's exec may take.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long output may still come once the shell has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How often whether the shell still runs is asked.
const POLL: Duration = Duration::from_secs(1);
/// Most typed bytes held for an exec that does not take them; more is
/// dropped. (Controls are always taken: a relay that waits to hand one
/// over while the shell waits for its output to be taken never hangs.)
const MAX_PENDING_INPUT: usize = 1 << 20;

type Output = Pin<Box<dyn Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// Starts a shell in `container` and the task relaying for it.
pub(super) async fn start(
    docker: &Docker,
    container: &str,
    spec: &ShellSpec,
    kill_grace: Duration,
) -> Result<Shell, String> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| format!("cannot mark the shell: no randomness: {e}"))?;
    let mark = hex::encode(id);
    let mut env: BTreeMap<String, String> = spec
        .env
        .iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains(['=', '\0']))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.insert("VIADUCT_WORKSPACE".into(), "/workspace".into());
    env.insert("TERM".into(), spec.term().to_string());
    env.insert("VIADUCT_SHELL_ID".into(), mark.clone());
    let sized = spec.cols > 0 && spec.rows > 0;
    let config = ExecConfig {
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        console_size: sized.then(|| vec![usize::from(spec.rows), usize::from(spec.cols)]),
        env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), SHELL.into()]),
        working_dir: Some("/workspace".into()),
        ..Default::default()
    };
    let exec = docker
        .create_exec(container, config)
        .await
        .map_err(|e| format!("cannot create the shell in the job container: {}", engine_error(&e)))?
        .id;
    let opts = StartExecOptions { detach: false, tty: true, output_capacity: None };
    let (output, input) = match docker.start_exec(&exec, Some(opts)).await {
        Ok(StartExecResults::Attached { output, input }) => (output, input),
        Ok(StartExecResults::Detached) => return Err("the engine started the shell detached".into()),
        Err(e) => return Err(format!("cannot start the shell in the job container: {}", engine_error(&e))),
    };
    let (shell, ends) = terminal::channels();
    let relay = Relay { docker: docker.clone(), container: container.to_string(), exec, mark, kill_grace };
    tokio::spawn(relay.run(output, input, ends, sized.then_some((spec.cols, spec.rows))));
    Ok(shell)
}

/// A running shell, owned by its task.
struct Relay {
    docker: Docker,
    container: String,
    exec: String,
    /// Its `VIADUCT_SHELL_ID`.
    mark: String,
    kill_grace: Duration,
}

/// Why the shell is being ended.
#[derive(Clone, Copy)]
enum Ending {
    Closed,
    UserGone,
}

impl Relay {
    async fn run(self, mut output: Output, input: Input, ends: ShellEnds, size: Option<(u16, u16)>) {
        let ShellEnds { output: out, mut control, ended } = ends;
        if let Some((cols, rows)) = size {
            self.initial_size(cols, rows).await;
        }
        // Input through a task of its own: a write the exec does not take
        // never holds up the output (which could be what it waits for).
        let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(16);
        let writer = tokio::spawn(async move {
            let mut input = input;
            while let Some(bytes) = in_rx.recv().await {
                if input.write_all(&bytes).await.is_err() || input.flush().await.is_err() {
                    break;
                }
            }
            // Dropped only now: the attached stream lives as long as it.
            drop(input);
        });
        let mut chunk: Option<Vec<u8>> = None;
        let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
        let mut pending_bytes = 0usize;
        let (mut eof, mut control_open) = (false, true);
        let mut ending: Option<Ending> = None;
        let mut failure: Option<String> = None;
        let mut exit: Option<Option<i32>> = None;
        let mut kill_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        while !(eof && chunk.is_none()) {
            tokio::select! {
                item = output.next(), if chunk.is_none() && !eof => match item {
                    Some(Ok(o)) => {
                        let bytes = o.into_bytes();
                        if !bytes.is_empty() {
                            chunk = Some(bytes.to_vec());
                        }
                    }
                    Some(Err(e)) => {
                        eof = true;
                        failure = Some(format!("the shell's terminal stream failed: {}", engine_error(&e)));
                    }
                    None => eof = true,
                },
                permit = out.reserve(), if chunk.is_some() => match permit {
                    Ok(p) => p.send(chunk.take().unwrap_or_default()),
                    Err(_) => {
                        chunk = None;
                        if ending.is_none() && exit.is_none() {
                            ending = Some(Ending::UserGone);
                            kill_at = Some(self.hang_up());
                        }
                    }
                },
                permit = in_tx.reserve(), if !pending.is_empty() => {
                    let bytes = pending.pop_front().unwrap_or_default();
                    pending_bytes -= bytes.len().min(pending_bytes);
                    if let Ok(p) = permit {
                        p.send(bytes);
                    }
                }
                ctl = control.recv(), if control_open && exit.is_none() && !eof => {
                    match ctl {
                        Some(ShellControl::Input(bytes)) if pending_bytes + bytes.len() <= MAX_PENDING_INPUT => {
                            pending_bytes += bytes.len();
                            pending.push_back(bytes);
                        }
                        Some(ShellControl::Input(bytes)) => {
                            tracing::debug!(bytes = bytes.len(), "a debug shell's terminal takes no input: dropped");
                        }
                        Some(ShellControl::Resize { cols, rows }) => {
                            if let Err(e) = self.resize(cols, rows).await {
                                tracing::debug!(error = %e, "cannot resize a debug shell's terminal");
                            }
                        }
                        Some(ShellControl::Signal(name)) => match terminal::signal_name(&name) {
                            Some((name, sig)) => match terminal::control_character(sig) {
                                // What the terminal turns into the signal.
                                Some(c) => {
                                    pending_bytes += 1;
                                    pending.push_back(vec![c]);
                                }
                                None => self.signal(name, "fg"),
                            },
                            None => tracing::debug!(signal = %name, "ignored an unknown signal for a debug shell"),
                        },
                        Some(ShellControl::Close) => {
                            if ending.is_none() {
                                ending = Some(Ending::Closed);
                                kill_at = Some(self.hang_up());
                            }
                        }
                        None => {
                            control_open = false;
                            if ending.is_none() {
                                ending = Some(Ending::UserGone);
                                kill_at = Some(self.hang_up());
                            }
                        }
                    }
                }
                _ = poll.tick(), if exit.is_none() => {
                    if let Ok(Some(code)) = self.exit_code().await {
                        // What it left running (holding the terminal, so
                        // the stream open) dies with it.
                        exit = Some(code);
                        self.signal("KILL", "all");
                        drain_until = Some(Instant::now() + DRAIN_GRACE);
                    }
                }
                () = tokio::time::sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() => {
                    self.signal("KILL", "all");
                    kill_at = None;
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or(far).into()), if drain_until.is_some() => break,
            }
        }
        drop(in_tx);
        writer.abort();
        let exit_code = match exit {
            Some(code) => code,
            None => self.final_exit_code(&mut failure).await,
        };
        let message = match (failure, ending) {
            (Some(f), _) => f,
            (None, Some(Ending::Closed)) => "closed".to_string(),
            (None, Some(Ending::UserGone)) => "closed: nobody reads its terminal any more".to_string(),
            (None, None) => String::new(),
        };
        drop(out);
        let _ = ended.send(ShellExit { exit_code, message });
    }

    /// The terminal's first size: the engine may refuse it until the
    /// process runs, so it is tried a few times.
    async fn initial_size(&self, cols: u16, rows: u16) {
        for attempt in 1..=5u64 {
            if self.resize(cols, rows).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
        }
        tracing::debug!("cannot size a debug shell's terminal");
    }

    async fn resize(&self, cols: u16, rows: u16) -> Result<(), String> {
        self.docker
            .resize_exec(&self.exec, ResizeExecOptions { width: cols, height: rows })
            .await
            .map_err(|e| engine_error(&e))
    }

    /// The shell's exit code once it has exited (`Ok(None)`: it runs).
    async fn exit_code(&self) -> Result<Option<Option<i32>>, String> {
        let info = self.docker.inspect_exec(&self.exec).await.map_err(|e| engine_error(&e))?;
        if info.running.unwrap_or(false) {
            return Ok(None);
        }
        Ok(Some(info.exit_code.and_then(|c| i32::try_from(c).ok())))
    }

    /// The exit code once the stream has ended: the engine may take a
    /// moment to say the process is gone.
    async fn final_exit_code(&self, failure: &mut Option<String>) -> Option<i32> {
        for _ in 0..20 {
            match self.exit_code().await {
                Ok(Some(code)) => return code,
                Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    failure.get_or_insert_with(|| format!("cannot learn how the shell ended: {e}"));
                    return None;
                }
            }
        }
        // Still running with its terminal closed: not left behind.
        self.signal("KILL", "all");
        failure.get_or_insert_with(|| "the shell's terminal closed while it still ran; it was killed".into());
        None
    }

    /// A hangup: SIGHUP to the shell and its foreground group. Returns
    /// when everything left is to be killed.
    fn hang_up(&self) -> Instant {
        self.signal("HUP", "hup");
        Instant::now() + self.kill_grace
    }

    /// Sends `sig` (a name of [`terminal::signal_name`]) to `what` (see
    /// [`SIGNAL`]) through an exec of its own, in the background.
    fn signal(&self, sig: &'static str, what: &'static str) {
        let (docker, container, mark) = (self.docker.clone(), self.container.clone(), self.mark.clone());
        tokio::spawn(async move {
            let run = signal_exec(&docker, &container, sig, &mark, what);
            match tokio::time::timeout(SIGNAL_TIMEOUT, run).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, signal = sig, "cannot signal a debug shell"),
                Err(_) => tracing::debug!(signal = sig, "signalling a debug shell timed out"),
            }
        });
    }
}

/// Runs [`SIGNAL`] in `container` to its end.
async fn signal_exec(docker: &Docker, container: &str, sig: &str, mark: &str, what: &str) -> Result<(), String> {
    let cmd = ["/bin/sh", "-c", SIGNAL, "viaduct-signal", sig, mark, what];
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd.iter().map(|s| (*s).to_string()).collect()),
        ..Default::default()
    };
    let exec = docker.create_exec(container, config).await.map_err(|e| engine_error(&e))?.id;
    match docker.start_exec(&exec, None).await.map_err(|e| engine_error(&e))? {
        StartExecResults::Attached { mut output, .. } => while output.next().await.is_some() {},
        StartExecResults::Detached => {}
    }
    Ok(())
}
