//! Debug shells: an interactive shell in a job's workspace restored from
//! one of its snapshots, relayed between the user (`Debug.Shell`) and the
//! runner that opened it (`RunnerAgent.DebugSession`).
//!
//! Who may: a user with the push role on the job's repository (whoever
//! could run that code on those runners by pushing it). What they get: the
//! job's environment without its secrets (a snapshot never holds one), on
//! a runner that could run the job — so a protected runner never opens a
//! shell for an untrusted run's job. One session per user and job; each
//! ends at its time limit (default 30 minutes, at most 4 hours), enforced
//! by the server and by the runner; opened and ended are written to the
//! audit log (who, which job and step, which runner, how it ended).
//!
//! Sessions live in memory: a server restart ends them (the runner's
//! stream breaks, and it stops the shell).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::mpsc;
use viaduct_proto::v1::{
    DebugAssignment, DebugFromRunner, DebugToRunner, ShellEnded, ShellOpen, ShellOutput, ShellStarted, debug_to_runner,
    shell_output,
};

use crate::{
    audit::{Action, AuditLog},
    engine::Engine,
    error::{Error, Result},
    store::{
        keys::{JobKey, StepKey},
        records::SnapshotRecord,
    },
};

/// A session's time limit when the user gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The longest time limit a user may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// How long a runner has to start the shell (restore, pull an image…).
const ATTACH_TIMEOUT: Duration = Duration::from_secs(180);
/// Open sessions one user may have at once.
pub const MAX_PER_USER: usize = 3;
/// Open sessions in all.
pub const MAX_SESSIONS: usize = 64;
/// How long a runner has to stop a shell past its time limit before the
/// server ends the session itself.
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// Signals a user may send.
pub const SIGNALS: [&str; 10] = ["INT", "TERM", "QUIT", "HUP", "KILL", "TSTP", "CONT", "WINCH", "USR1", "USR2"];

/// What the user's side of a session is sent.
pub type ToUser = mpsc::Sender<std::result::Result<ShellOutput, tonic::Status>>;

struct Session {
    user: String,
    at: StepKey,
    record: SnapshotRecord,
    runner: String,
    to_user: ToUser,
    /// Until the runner attaches: what it will read.
    to_runner: Option<mpsc::Receiver<DebugToRunner>>,
    expires_ms: i64,
    /// The shell runs (the runner said so).
    ready: bool,
    /// Fired when the session ends: the runner's side is cut.
    over: tokio_util::sync::CancellationToken,
}

/// A session as its user holds it.
pub struct Opened {
    /// The session's id.
    pub id: String,
    /// The terminal's output, then the end.
    pub output: mpsc::Receiver<std::result::Result<ShellOutput, tonic::Status>>,
    /// Keystrokes, resizes, signals, close.
    pub input: mpsc::Sender<DebugToRunner>,
}

/// The runner's side of a session.
pub struct Attached {
    /// What the user sends.
    pub input: mpsc::Receiver<DebugToRunner>,
    /// Where the terminal's output goes.
    pub to_user: ToUser,
    /// Fires when the session ends (by the time limit, here): the
    /// runner's side is cut then.
    pub over: tokio_util::sync::CancellationToken,
    /// The user's first message, once the shell runs.
    pub started: ShellStarted,
}

/// The open debug sessions.
pub struct DebugShells {
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    sessions: Mutex<HashMap<String, Session>>,
}

fn end_message(exit_code: Option<i32>, message: &str) -> ShellOutput {
    ShellOutput { msg: Some(shell_output::Msg::Ended(ShellEnded { exit_code, message: message.to_string() })) }
}

impl DebugShells {
    /// No sessions yet.
    pub fn new(engine: Arc<Engine>, audit: Arc<AuditLog>) -> Arc<Self> {
        Arc::new(Self { engine, audit, sessions: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `user` (already allowed) on `job` as `open`
    /// asks: picks the snapshot, sends the shell to a runner, and returns
    /// the user's side. The shell starts when the runner attaches.
    pub fn open(self: &Arc<Self>, user: &str, job: JobKey, open: &ShellOpen) -> Result<Opened> {
        let timeout = match open.timeout_seconds {
            0 => DEFAULT_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        if timeout > MAX_TIMEOUT {
            return Err(Error::invalid(format!(
                "a debug shell lasts at most {} hours; {} seconds were asked for",
                MAX_TIMEOUT.as_secs() / 3600,
                open.timeout_seconds
            )));
        }
        if open.term.len() > 64 || open.term.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(Error::invalid("TERM must be at most 64 printable characters"));
        }
        let size = open.size.unwrap_or_default();
        if size.cols > 1000 || size.rows > 1000 {
            return Err(Error::invalid("a terminal is at most 1000 columns and 1000 rows"));
        }
        // A live shell: the failed attempt's environment its runner holds.
        let (at, record, live_on) = if open.live {
            let (at, runner) = self.engine.live_debug_target(job)?;
            (at, SnapshotRecord::default(), Some(runner))
        } else {
            let (at, record) = self.engine.newest_snapshot(job, open.step)?;
            (at, record, None)
        };
        let id = {
            let mut r = [0u8; 12];
            getrandom::fill(&mut r).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
            format!("dbg_{}", hex::encode(r))
        };
        let (to_user, output) = mpsc::channel(64);
        let (input, to_runner) = mpsc::channel(64);
        let expires_ms = crate::store::now_ms() + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        {
            let mut sessions = self.lock();
            if sessions.values().any(|s| s.user == user && s.at.job == job) {
                return Err(Error::AlreadyExists(format!(
                    "{user} already has a debug shell open on job {job}: one at a time"
                )));
            }
            if sessions.values().filter(|s| s.user == user).count() >= MAX_PER_USER {
                return Err(Error::RateLimited {
                    message: format!("{user} has {MAX_PER_USER} debug shells open: close one first"),
                    retry_after: Duration::from_secs(10),
                });
            }
            if sessions.len() >= MAX_SESSIONS {
                return Err(Error::RateLimited {
                    message: format!("{MAX_SESSIONS} debug shells are open on this server: try again later"),
                    retry_after: Duration::from_secs(30),
                });
            }
            sessions.insert(
                id.clone(),
                Session {
                    user: user.to_string(),
                    at,
                    record,
                    runner: String::new(),
                    to_user: to_user.clone(),
                    to_runner: Some(to_runner),
                    expires_ms,
                    ready: false,
                    over: tokio_util::sync::CancellationToken::new(),
                },
            );
        }
        let assignment = DebugAssignment {
            session_id: id.clone(),
            size: Some(size),
            term: if open.term.is_empty() { "xterm-256color".into() } else { open.term.clone() },
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ..Default::default()
        };
        let assigned = match &live_on {
            Some(runner) => {
                // Known before the runner can attach.
                if let Some(s) = self.lock().get_mut(&id) {
                    s.runner.clone_from(runner);
                }
                self.engine.assign_live_debug(at, runner, assignment).map(|()| runner.clone())
            }
            None => self.engine.assign_debug(at, assignment),
        };
        let runner = match assigned {
            Ok(r) => r,
            Err(e) => {
                self.lock().remove(&id);
                return Err(e);
            }
        };
        if let Some(s) = self.lock().get_mut(&id) {
            s.runner.clone_from(&runner);
        }
        self.audit.record(Action {
            actor: user.to_string(),
            action: "debug shell opened".into(),
            target: format!("job {job} step {} (attempt {}) on runner {runner}, session {id}", at.index, at.attempt),
            outcome: "ok".into(),
            ..Default::default()
        });
        tracing::info!(session = %id, job = %job, step = at.index, runner = %runner, user, "debug shell opened");
        self.spawn_watchdog(id.clone(), timeout, input.clone());
        Ok(Opened { id, output, input })
    }

    /// Ends a session whose shell did not start in time; at its time
    /// limit tells the runner to close it, and ends it here when the
    /// runner has not within [`CLOSE_GRACE`].
    fn spawn_watchdog(self: &Arc<Self>, id: String, timeout: Duration, input: mpsc::Sender<DebugToRunner>) {
        let shells = Arc::clone(self);
        tokio::spawn(async move {
            let start = ATTACH_TIMEOUT.min(timeout);
            tokio::time::sleep(start).await;
            let waiting = shells.lock().get(&id).is_some_and(|s| !s.ready);
            if waiting {
                shells.end(&id, None, "the runner did not start the shell in time");
                return;
            }
            tokio::time::sleep(timeout.saturating_sub(start)).await;
            let close = debug_to_runner::Msg::Close("time limit reached".into());
            let _ = input.try_send(DebugToRunner { msg: Some(close) });
            tokio::time::sleep(CLOSE_GRACE).await;
            shells.end(&id, None, "time limit reached");
        });
    }

    /// The shell of session `id` runs.
    pub fn ready(&self, id: &str) {
        if let Some(s) = self.lock().get_mut(id) {
            s.ready = true;
        }
    }

    /// The snapshot session `id` restores, when `runner` was given it.
    pub fn snapshot_of(&self, runner: &str, id: &str) -> Result<(StepKey, SnapshotRecord)> {
        let sessions = self.lock();
        match sessions.get(id) {
            Some(s) if s.runner == runner && s.record.manifest.is_empty() => {
                Err(Error::precondition(format!("debug session {id} is live: it restores nothing")))
            }
            Some(s) if s.runner == runner => Ok((s.at, s.record.clone())),
            _ => Err(Error::PermissionDenied(format!("runner {runner} has no debug session {id}"))),
        }
    }

    /// The runner's side of session `id`, once.
    pub fn attach(&self, runner: &str, id: &str) -> Result<Attached> {
        let mut sessions = self.lock();
        let s = sessions
            .get_mut(id)
            .filter(|s| s.runner == runner)
            .ok_or_else(|| Error::PermissionDenied(format!("runner {runner} has no debug session {id}")))?;
        let input =
            s.to_runner.take().ok_or_else(|| Error::AlreadyExists(format!("debug session {id} is attached")))?;
        Ok(Attached {
            input,
            to_user: s.to_user.clone(),
            over: s.over.clone(),
            started: ShellStarted {
                session_id: id.to_string(),
                runner_id: runner.to_string(),
                step: s.at.index,
                attempt: s.at.attempt,
                expires: crate::convert::timestamp(s.expires_ms),
            },
        })
    }

    /// Relays the runner's side of session `id` — its messages to the user
    /// until the shell ends, the runner goes away or the session is ended
    /// here — and returns what the runner is to read (the user's input),
    /// which ends with the session.
    pub fn relay_runner(
        self: Arc<Self>,
        id: String,
        mut inbound: tonic::Streaming<DebugFromRunner>,
        attached: Attached,
    ) -> impl futures_util::Stream<Item = DebugToRunner> + Send + 'static {
        use viaduct_proto::v1::debug_from_runner::Msg as FromRunner;
        let Attached { input, to_user, over, started } = attached;
        let (done, relay_over) = tokio::sync::oneshot::channel::<()>();
        let cut = over.clone();
        tokio::spawn(async move {
            let _done = done;
            let mut started = Some(started);
            let (code, why) = loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    () = cut.cancelled() => return,
                };
                let out = match msg {
                    Ok(Some(DebugFromRunner { msg: Some(FromRunner::Ready(_)) })) => match started.take() {
                        Some(s) => {
                            self.ready(&id);
                            shell_output::Msg::Started(s)
                        }
                        None => continue,
                    },
                    Ok(Some(DebugFromRunner { msg: Some(FromRunner::Data(d)) })) => shell_output::Msg::Data(d),
                    Ok(Some(DebugFromRunner { msg: Some(FromRunner::Ended(e)) })) => break (e.exit_code, e.message),
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break (None, "the runner went away".to_string()),
                };
                let sent = tokio::select! {
                    r = to_user.send(Ok(ShellOutput { msg: Some(out) })) => r.is_ok(),
                    () = cut.cancelled() => return,
                };
                if !sent {
                    break (None, "the user left".to_string());
                }
            };
            self.end(&id, code, &why);
        });
        futures_util::StreamExt::take_until(tokio_stream::wrappers::ReceiverStream::new(input), relay_over)
    }

    /// Ends session `id` if no runner attached to it (an attached one ends
    /// when its runner says so, or its stream breaks).
    pub fn end_unattached(&self, id: &str, message: &str) {
        let unattached = self.lock().get(id).is_some_and(|s| s.to_runner.is_some());
        if unattached {
            self.end(id, None, message);
        }
    }

    /// Ends session `id` (once): tells the user how, and audits it.
    pub fn end(&self, id: &str, exit_code: Option<i32>, message: &str) {
        let Some(s) = self.lock().remove(id) else { return };
        s.over.cancel();
        // Behind the output still queued: never dropped for a full queue,
        // but not waited for past a user who stopped reading.
        let (to_user, ended) = (s.to_user.clone(), end_message(exit_code, message));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), to_user.send(Ok(ended))).await;
        });
        let how = match exit_code {
            Some(c) if message.is_empty() => format!("exit code {c}"),
            Some(c) => format!("exit code {c}: {message}"),
            None => message.to_string(),
        };
        self.audit.record(Action {
            actor: s.user.clone(),
            action: "debug shell ended".into(),
            target: format!("job {} step {} on runner {}, session {id}", s.at.job, s.at.index, s.runner),
            outcome: how,
            ..Default::default()
        });
        tracing::info!(session = %id, job = %s.at.job, exit_code, message, "debug shell ended");
    }
}
