//! One Connect stream to the server, from Hello to its end.
//!
//! Jobs outlive sessions: when the stream breaks, running jobs go on and
//! their reports wait in the [`Outbox`](crate::outbox::Outbox); the next session resumes them (the
//! server says which attempts this runner still holds and how much of each
//! log it has) and resends what was not acknowledged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use viaduct_proto::v1::{
    Heartbeat, Hello, JobRef, Pause, RunnerMessage, ServerMessage, Toolchains, Welcome, runner_message::Msg as Out,
    server_message::Msg as In,
};

use crate::{
    identity::Identity,
    job::{self, JobStop},
    outbox::Outbox,
    report::Reports,
};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    /// The server refused the runner token: the runner was removed, or the
    /// server's data was reset.
    #[error("the server refused this runner's token: {0}")]
    Rejected(String),
    /// Anything else: reconnect after a backoff.
    #[error("{0}")]
    Broken(String),
    /// An ephemeral runner the server has no job for (its job ran
    /// elsewhere, or was cancelled): it is done.
    #[error("the server has no job for this ephemeral runner")]
    Idle,
}

/// What sessions share: the outbox, the running jobs, the executor.
pub struct Shared {
    /// What jobs run with (their reports go to `outbox`).
    pub services: job::Services,
    /// Reports not yet acknowledged, resent by each new session.
    pub outbox: Arc<Outbox>,
    /// Job attempts running now.
    pub jobs: Mutex<HashMap<(String, u32), JobStop>>,
    /// Labels to advertise.
    pub labels: Vec<String>,
    /// Slots to advertise.
    pub slots: u32,
    /// Ask to be protected (take only jobs of trusted runs).
    pub protected: bool,
    /// How to reach the server.
    pub transport: viaduct_sdk::Transport,
    /// Job attempts that ended here (an ephemeral runner exits after one).
    pub finished: std::sync::atomic::AtomicUsize,
    /// Takes one job in its life (see `Config::ephemeral`).
    pub ephemeral: bool,
    /// This process's random id, sent in every Hello (see `Hello.instance`).
    pub instance: String,
    /// Toolchain labels found on this machine (see [`crate::toolchains`]):
    /// sent in every Hello, and to the open session when they change.
    pub toolchains: tokio::sync::watch::Sender<Vec<String>>,
    /// Why it takes no new jobs now (see [`crate::space`]; empty: it
    /// takes them): sent in every Hello, and to the open session when it
    /// changes.
    pub paused: tokio::sync::watch::Sender<String>,
}

impl Shared {
    fn stop_of(&self, job: &JobRef) -> Option<JobStop> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).get(&(job.job_id.clone(), job.attempt)).cloned()
    }

    /// Stops a job and forgets everything of it.
    fn abandon(&self, job: &JobRef) {
        if let Some(stop) = self.stop_of(job) {
            stop.abandon.cancel();
        }
        self.outbox.forget(job);
    }

    /// Abandons every running job (runner shutdown).
    pub fn abandon_all(&self) {
        for stop in self.jobs.lock().unwrap_or_else(|p| p.into_inner()).values() {
            stop.abandon.cancel();
        }
    }

    /// Number of running jobs.
    pub fn running(&self) -> usize {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether it has neither run nor runs a job.
    fn idle(&self) -> bool {
        self.running() == 0 && self.finished.load(std::sync::atomic::Ordering::SeqCst) == 0
    }
}

/// How long a server may take from the connection to its Welcome: one
/// that accepts connections but does not answer (a stalled machine, a
/// paused replica) is left for the next URL instead of waiting for
/// keep-alives to give up.
const WELCOME_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs one session until the stream ends.
pub async fn run(shared: &Arc<Shared>, server: &str, id: &Identity) -> Result<(), SessionEnd> {
    let started = tokio::time::timeout(WELCOME_WITHIN, start(shared, server, id)).await;
    let (tx, inbound, welcome, changes) =
        started.map_err(|_| SessionEnd::Broken(format!("{server} did not answer within {WELCOME_WITHIN:?}")))??;
    serve(shared, tx, inbound, welcome, changes).await
}

/// What a session starts with: the stream both ways, the Welcome, and
/// what the Hello said of the runner (its later changes go to the
/// session).
type Started = (mpsc::UnboundedSender<RunnerMessage>, tonic::Streaming<ServerMessage>, Welcome, Changes);

/// What the runner says of itself after its Hello when it changes.
struct Changes {
    toolchains: watch::Receiver<Vec<String>>,
    paused: watch::Receiver<String>,
}

/// Connects, says Hello and reads the Welcome.
async fn start(shared: &Arc<Shared>, server: &str, id: &Identity) -> Result<Started, SessionEnd> {
    let client = viaduct_sdk::Client::connect_with(server, Some(id.token.clone()), &shared.transport)
        .await
        .map_err(|e| SessionEnd::Broken(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut changes = Changes { toolchains: shared.toolchains.subscribe(), paused: shared.paused.subscribe() };
    let hello = Hello {
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: crate::hostname(),
        labels: shared.labels.clone(),
        slots: shared.slots,
        executors: shared.services.executors().into_iter().map(|e| e as i32).collect(),
        active_jobs: shared.outbox.active(),
        protected: shared.protected,
        instance: shared.instance.clone(),
        toolchains: changes.toolchains.borrow_and_update().clone(),
        paused: changes.paused.borrow_and_update().clone(),
    };
    let _ = tx.send(RunnerMessage { msg: Some(Out::Hello(hello)) });
    let mut inbound = match client.agent().connect(UnboundedReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unauthenticated => {
            return Err(SessionEnd::Rejected(s.message().to_string()));
        }
        Err(s) => return Err(SessionEnd::Broken(viaduct_sdk::status_line(&s))),
    };
    let welcome = match inbound.message().await {
        Ok(Some(m)) => match m.msg {
            Some(In::Welcome(w)) => w,
            _ => return Err(SessionEnd::Broken("the server did not start with Welcome".into())),
        },
        Ok(None) => return Err(SessionEnd::Broken("the server closed the stream".into())),
        Err(s) => return Err(SessionEnd::Broken(viaduct_sdk::status_line(&s))),
    };
    Ok((tx, inbound, welcome, changes))
}

/// The session after its Welcome, until the stream ends.
async fn serve(
    shared: &Arc<Shared>,
    tx: mpsc::UnboundedSender<RunnerMessage>,
    mut inbound: tonic::Streaming<ServerMessage>,
    welcome: Welcome,
    changes: Changes,
) -> Result<(), SessionEnd> {
    for r in &welcome.resume {
        let Some(job) = &r.job else { continue };
        if r.keep {
            shared.outbox.resume(&r.logs);
        } else {
            tracing::warn!(job = %job.job_id, attempt = job.attempt, "server says this attempt is no longer ours; stopping it");
            shared.abandon(job);
        }
    }
    tracing::info!(runner = %welcome.runner_id, draining = welcome.draining, resumed = welcome.resume.len(), "connected");
    if shared.ephemeral && welcome.draining && shared.idle() {
        return Err(SessionEnd::Idle);
    }
    shared.outbox.attach(tx.clone());
    let heartbeat = {
        let (tx, outbox) = (tx.clone(), Arc::clone(&shared.outbox));
        let every = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let hb = Heartbeat { active_jobs: outbox.active() };
                if tx.send(RunnerMessage { msg: Some(Out::Heartbeat(hb)) }).is_err() {
                    break;
                }
            }
        })
    };
    let toolchains = forward(changes.toolchains, tx.clone(), |names| Out::Toolchains(Toolchains { names }));
    let paused = forward(changes.paused, tx.clone(), |reason| Out::Pause(Pause { reason }));
    let end = loop {
        match inbound.message().await {
            Ok(Some(m)) => {
                if let Some(end) = handle(shared, m.msg) {
                    break end;
                }
            }
            Ok(None) => break SessionEnd::Broken("the server closed the stream".into()),
            Err(s) if s.code() == tonic::Code::Unauthenticated => break SessionEnd::Rejected(s.message().to_string()),
            Err(s) => break SessionEnd::Broken(viaduct_sdk::status_line(&s)),
        }
    };
    heartbeat.abort();
    toolchains.abort();
    paused.abort();
    shared.outbox.detach();
    Err(end)
}

/// Sends each change of `rx` on the stream, as `message` makes it.
fn forward<T: Clone + Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
    tx: mpsc::UnboundedSender<RunnerMessage>,
    message: fn(T) -> Out,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            if tx.send(RunnerMessage { msg: Some(message(now)) }).is_err() {
                break;
            }
        }
    })
}

/// Acts on one message from the server; `Some` ends the session.
fn handle(shared: &Arc<Shared>, msg: Option<In>) -> Option<SessionEnd> {
    match msg {
        Some(In::Assign(a)) => {
            let job = a.job.clone()?;
            let key = (job.job_id.clone(), job.attempt);
            let stop = JobStop::default();
            {
                let mut jobs = shared.jobs.lock().unwrap_or_else(|p| p.into_inner());
                if jobs.contains_key(&key) {
                    return None;
                }
                // The server gives an ephemeral runner one job; a second is
                // never run (its lease lapses and it goes elsewhere).
                let taken = !jobs.is_empty() || shared.finished.load(std::sync::atomic::Ordering::SeqCst) > 0;
                if shared.ephemeral && taken {
                    tracing::warn!(job = %job.job_id, "an ephemeral runner was given a second job: not running it");
                    return None;
                }
                jobs.insert(key.clone(), stop.clone());
            }
            shared.outbox.begin(&job);
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                job::run(a, shared.services.clone(), stop).await;
                // Counted before it leaves the table: never neither.
                shared.finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                shared.jobs.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            });
        }
        Some(In::Cancel(sig)) => {
            if let Some(stop) = sig.job.as_ref().and_then(|j| shared.stop_of(j)) {
                tracing::info!(job = ?sig.job, reason = %sig.reason, "cancelling job");
                stop.cancel.cancel();
            }
        }
        Some(In::Abandon(sig)) => {
            if let Some(job) = &sig.job {
                tracing::warn!(job = %job.job_id, attempt = job.attempt, reason = %sig.reason, "abandoning job");
                shared.abandon(job);
            }
        }
        Some(In::Ack(ack)) => shared.outbox.ack(&ack),
        Some(In::Debug(d)) => {
            tracing::info!(session = %d.session_id, "debug shell assigned");
            tokio::spawn(crate::debug::run(d, shared.services.clone()));
        }
        Some(In::Drain(d)) => {
            tracing::info!(reason = %d.reason, "drained by the server");
            // An ephemeral runner that never got its job has nothing to wait for.
            if shared.ephemeral && shared.idle() {
                return Some(SessionEnd::Idle);
            }
        }
        Some(In::Welcome(_)) | None => {}
    }
    None
}
