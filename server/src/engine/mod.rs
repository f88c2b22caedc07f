//! The engine: runs, jobs and steps, the queue, runner sessions and leases.
//!
//! The API handlers translate requests into calls on [`Engine`]; the engine
//! never sees gRPC requests and the handlers never see records. Every state
//! transition happens under one lock in a [`tx::Tx`] and is committed to
//! the store atomically before anything is sent to a runner or a watcher.
//!
//! Submodules by responsibility:
//! - [`runs`]: creating a run (its jobs and steps) from a [`runs::NewRun`],
//!   cancelling and retrying runs;
//! - `lifecycle`: readiness, retries, finishing, cancelling, rolling up;
//! - `dispatch`: matching queued jobs to runners and assigning them;
//! - `session`: runner connections, heartbeats, resume, drain/remove;
//! - `reports`: step/job updates and log data from runners;
//! - [`read`]: queries for the API (get, list, follow scopes);
//! - `queue`, [`index`], `tx`: the dispatch order, run indexes, the unit of
//!   work.

pub mod clock;
pub mod commit_status;
mod condition;
pub mod debug;
pub mod deployments;
pub mod durability;
pub mod index;
mod lease;
mod lifecycle;
pub mod notifications;
pub mod prune;
mod queue;
pub mod read;
pub mod reports;
pub mod room;
pub mod runs;
mod session;
pub mod snapshots;
pub mod telemetry;
mod tx;

mod dispatch;
mod grant;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_deployments;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tokio::sync::{Notify, mpsc::UnboundedSender, watch};
use viaduct_proto::v1::{Executor, ServerMessage, Status};

pub(crate) use self::lease::Lease;
pub(crate) use self::session::job_ref;
pub use self::session::{RunnerChange, RunnerHello};
use self::{
    clock::{Clock, SystemClock},
    lease::Leases,
    queue::{Queue, QueuedJob},
    tx::Tx,
};
use crate::{
    error::Result,
    secrets::SecretBox,
    store::{
        Store, T, Ticket, decode,
        keys::{JobKey, RunId},
        records::{EventBatch, JobRecord, QueueRecord, RunRecord},
    },
};

/// Scheduling settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A job's lease lapses when its runner is silent this long.
    pub lease_ttl: Duration,
    /// How often runners heartbeat.
    pub heartbeat_interval: Duration,
    /// One priority level gained per this much waiting (see `queue`).
    pub priority_aging: Duration,
    /// Most jobs running at once across the fleet (0 = no limit).
    pub max_running_jobs: usize,
    /// Most jobs of one pipeline running at once (0 = no limit).
    pub max_running_per_pipeline: usize,
    /// First retry delay; doubles per attempt, at most 5 minutes.
    pub retry_backoff: Duration,
    /// Where the engine reads the time.
    pub clock: Arc<dyn Clock>,
    /// Messages to runners (assignments above all) leave only once the
    /// transition that made them is durable, so a server that dies has
    /// given no job its store does not know it gave — at the cost of a
    /// group commit on each pickup. Set on PostgreSQL, where another
    /// replica takes over with other runners; on sled a restarted server
    /// adopts such jobs from the runners that come back with them.
    pub durable_sends: bool,
    /// Most bytes of log a step keeps (sent to runners in each assignment;
    /// log data past it, and past room for the runner's marker line, is
    /// refused).
    pub max_step_log_bytes: u64,
    /// Most bytes of log all of a job's steps keep together (sent to
    /// runners in each assignment; log data past it, and past room for a
    /// marker line per step, is refused).
    pub max_job_log_bytes: u64,
    /// Whether there is room for new work (runs, retries, blobs).
    pub room: Arc<dyn room::Room>,
    /// Logs are never packed on this server (replicas with local blobs):
    /// retention removes a run with the log chunks it still holds, instead
    /// of waiting for packing that will not come.
    pub discard_unpacked: bool,
    /// Jobs whose pipeline does not say keep workspace snapshots.
    pub snapshots: bool,
    /// How long a failed job of a run with `keep_on_failure` keeps its
    /// live environment on its runner.
    pub hold_failed: Duration,
}

/// Room past a step's log limit for the line the runner ends it with.
pub(crate) const CUT_MARKER_ROOM: u64 = 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            priority_aging: Duration::from_secs(300),
            max_running_jobs: 0,
            max_running_per_pipeline: 0,
            retry_backoff: Duration::from_secs(2),
            clock: Arc::new(SystemClock),
            durable_sends: false,
            max_step_log_bytes: 128 << 20,
            max_job_log_bytes: 512 << 20,
            room: Arc::new(room::Unbounded),
            discard_unpacked: false,
            snapshots: false,
            hold_failed: Duration::from_secs(30 * 60),
        }
    }
}

/// A connected runner.
#[derive(Clone)]
pub(crate) struct Conn {
    pub conn_id: u64,
    pub labels: HashSet<String>,
    pub slots: u32,
    pub executors: HashSet<Executor>,
    pub draining: bool,
    /// Takes only jobs of trusted runs.
    pub protected: bool,
    /// Takes one job, then drains (see `RegisterRequest.ephemeral`).
    pub ephemeral: bool,
    /// The one job it may take, which waits for it (a job-bound token).
    pub bound_job: Option<JobKey>,
    /// Its process's random id (`Hello.instance`).
    pub instance: String,
    pub tx: UnboundedSender<ServerMessage>,
    pub last_seen_ms: i64,
    /// When its toolchains last changed (at most one change per
    /// [`TOOLCHAINS_EVERY_MS`]; the next Hello brings any it missed).
    pub toolchains_ms: i64,
    /// Why it takes no new jobs now, as it says (its work dir is short of
    /// disk); empty: it takes jobs.
    pub paused: String,
    /// When it last paused or resumed (at most one change per
    /// [`TOOLCHAINS_EVERY_MS`]).
    pub paused_ms: i64,
}

impl Conn {
    /// Whether it may be given new jobs (neither draining nor paused).
    pub fn takes_jobs(&self) -> bool {
        !self.draining && self.paused.is_empty()
    }
}

/// Least time between two changes of a connection's toolchains (or of
/// its pause).
pub(crate) const TOOLCHAINS_EVERY_MS: i64 = 1_000;

/// Everything the engine keeps in memory, under its one lock.
pub(crate) struct State {
    pub queue: Queue,
    pub runners: HashMap<String, Conn>,
    pub leases: Leases,
    /// Cursor of the next event.
    pub next_event: u64,
    pub next_queue_seq: u64,
    pub next_conn: u64,
    /// Id of the next deployment record.
    pub next_deployment: u64,
}

/// Wake-ups for streams that follow state: events and per-run changes.
pub struct Signals {
    /// Cursor of the newest event (0 = none yet).
    pub events: watch::Sender<u64>,
    /// Bumped whenever a runner may have changed (its record, connection
    /// or leases; see `Runners.Watch`).
    pub runners: watch::Sender<u64>,
    /// Bumped whenever a transition wrote commit statuses for a forge (see
    /// `commit_status`).
    pub statuses: watch::Sender<u64>,
    /// Bumped whenever a deployment registered services (the prober
    /// reloads them).
    pub services: watch::Sender<u64>,
    runs: Mutex<HashMap<RunId, watch::Sender<u64>>>,
    timer: Notify,
}

impl Signals {
    /// Wakes the watchers of the fleet.
    pub fn runners_changed(&self) {
        self.runners.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes the sender of commit statuses.
    pub fn statuses_changed(&self) {
        self.statuses.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes the prober of deployed services.
    pub fn services_changed(&self) {
        self.services.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that changes whenever anything of `run` changes (a state,
    /// a log chunk).
    pub fn subscribe_run(&self, run: RunId) -> watch::Receiver<u64> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.entry(run).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes the followers of `run`.
    pub fn touch_run(&self, run: RunId) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = runs.get(&run) {
            if tx.receiver_count() == 0 {
                runs.remove(&run);
            } else {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}

/// Jobs waiting for a runner (see [`Engine::pending_jobs`]).
#[derive(Debug)]
pub struct Pending {
    /// Those listed, in dispatch order.
    pub jobs: Vec<viaduct_proto::v1::PendingJob>,
    /// All jobs waiting.
    pub total: usize,
    /// Those that fit the runner asked about (all without one).
    pub fitting: usize,
}

/// Shared, lock-free parts of the engine.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub cfg: EngineConfig,
    pub signals: Signals,
    pub secrets: Arc<SecretBox>,
    /// Key of the grants assignments carry (see `grant`).
    pub grant_key: [u8; 32],
    /// What transitions observe for `/metrics`.
    pub telemetry: telemetry::Telemetry,
}

impl Shared {
    /// Sends a transition's messages to runners: at once, or once the
    /// transition (`ticket`) is durable (see [`EngineConfig::durable_sends`]).
    /// A closed channel means the runner just disconnected; its lease logic
    /// handles what it missed.
    pub fn send(&self, ticket: Ticket, outbox: Vec<(UnboundedSender<ServerMessage>, ServerMessage)>) {
        if outbox.is_empty() {
            return;
        }
        if !self.cfg.durable_sends {
            for (to, msg) in outbox {
                let _ = to.send(msg);
            }
            return;
        }
        self.store.after_durable(ticket, move || {
            for (to, msg) in outbox {
                let _ = to.send(msg);
            }
        });
    }

    /// Milliseconds since the epoch, by the engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.cfg.clock.now_ms()
    }

    /// A monotonic instant, by the engine's clock.
    pub fn instant(&self) -> Instant {
        self.cfg.clock.instant()
    }
}

/// The engine. Cheap to share (`Arc<Engine>`).
pub struct Engine {
    sh: Shared,
    state: Mutex<State>,
}

impl Engine {
    /// Opens the engine over `store`, rebuilding the queue and leases from
    /// disk: queued jobs are queued again, running jobs keep their runner and
    /// get a fresh lease so their runner can reconnect and resume.
    pub fn open(store: Arc<Store>, cfg: EngineConfig, secrets: Arc<SecretBox>) -> Result<Arc<Self>> {
        session::upgrade_runner_records(&store)?;
        let next_event = match store.tree(T::Events).last()? {
            Some((_, v)) => decode::<EventBatch>(T::Events, &v)?.events.last().map_or(1, |e| e.cursor + 1),
            None => 1,
        };
        let mut st = State {
            queue: Queue::default(),
            runners: HashMap::new(),
            leases: Leases::default(),
            next_event,
            next_queue_seq: 1,
            next_conn: 1,
            next_deployment: match store.tree(T::Deployments).last()? {
                Some((k, _)) => k.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes) + 1,
                None => 1,
            },
        };
        let aging = ms(cfg.priority_aging);
        for kv in store.tree(T::Queue).iter() {
            let (k, v) = kv?;
            let rec: QueueRecord = decode(T::Queue, &v)?;
            let seq = u64::from_be_bytes(k.get(1..9).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            st.next_queue_seq = st.next_queue_seq.max(seq + 1);
            let Some(key) = JobKey::from_key(&rec.job) else { continue };
            let Some(job) = store.get::<JobRecord>(T::Jobs, key.key())? else { continue };
            let pipeline = store.get::<RunRecord>(T::Runs, key.run.key())?.map(|r| r.pipeline).unwrap_or_default();
            st.queue.push(queued(key, seq, &job, pipeline), rec.queued_ms, aging);
        }
        let expires = cfg.clock.instant() + cfg.lease_ttl;
        for id in index::scan(&store, index::Field::Status, &[Status::Running as u8], None) {
            let id = id?;
            let Some(run) = store.get::<RunRecord>(T::Runs, id.key())? else { continue };
            for i in 1..=run.job_count {
                let key = JobKey::new(id, i);
                let Some(job) = store.get::<JobRecord>(T::Jobs, key.key())? else { continue };
                if job.status() == Status::Running {
                    let steps = job.steps.len() as u32;
                    let log_bytes = lease::stored_log(&store, key, job.attempt, steps)?;
                    st.leases.insert(
                        key,
                        Lease {
                            attempt: job.attempt,
                            runner: job.runner_id,
                            expires,
                            pipeline: run.pipeline.clone(),
                            steps,
                            log_bytes,
                        },
                    );
                }
            }
        }
        tracing::info!(queued = st.queue.len(), running = st.leases.len(), next_event, "engine state recovered");
        Ok(Arc::new(Self {
            sh: Shared {
                store,
                cfg,
                signals: Signals {
                    events: watch::Sender::new(next_event - 1),
                    runners: watch::Sender::new(0),
                    statuses: watch::Sender::new(0),
                    services: watch::Sender::new(0),
                    runs: Mutex::default(),
                    timer: Notify::new(),
                },
                grant_key: secrets.derive_key(grant::CONTEXT),
                telemetry: telemetry::Telemetry::new(secrets.derive_key(telemetry::TRACE_CONTEXT)),
                secrets,
            },
            state: Mutex::new(st),
        }))
    }

    /// The store (the engine's own: other modules get theirs at start).
    fn store(&self) -> &Store {
        &self.sh.store
    }

    /// The store's commits and group commits so far (`/metrics`).
    pub fn store_counters(&self) -> crate::store::Counters {
        self.sh.store.counters()
    }

    /// The store's group commits' durations (see
    /// [`crate::store::Store::flush_durations`]).
    pub fn store_flush_durations(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.sh.store.flush_durations()
    }

    /// Waits until the writes covered by `ticket` (from a transition) are
    /// on disk.
    pub async fn wait_durable(&self, ticket: Ticket) {
        self.sh.store.wait_durable(ticket).await;
    }

    /// Waits until `events` (read from the store) are durable: with the
    /// next flush when they [can wait](durability::can_wait), else now.
    pub async fn wait_events_durable(&self, events: &[viaduct_proto::v1::RunEvent]) {
        let store = &self.sh.store;
        if events.is_empty() {
            return;
        }
        let ticket = if durability::can_wait(events.iter().filter_map(|ev| ev.change.as_ref())) {
            store.ticket_soon()
        } else {
            store.ticket_covering()
        };
        store.wait_durable(ticket).await;
    }

    /// `Ok` when there is room for new work (see [`room`]).
    pub fn check_room(&self) -> Result<()> {
        self.sh.cfg.room.check()
    }

    /// Wake-ups for followers.
    pub fn signals(&self) -> &Signals {
        &self.sh.signals
    }

    /// The scheduling settings.
    pub fn config(&self) -> &EngineConfig {
        &self.sh.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` as one transition and commits it; if `f` fails, nothing is
    /// written and its in-memory changes are undone.
    fn transition<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<(R, Ticket)> {
        let mut st = self.lock();
        let mut tx = Tx::new(&self.sh, &mut st);
        match f(&mut tx) {
            Ok(r) => Ok((r, tx.commit()?)),
            Err(e) => {
                tx.rollback();
                Err(e)
            }
        }
    }

    /// Starts the background task that expires leases and wakes delayed
    /// (backed-off) jobs. It sleeps until the next deadline.
    pub fn spawn_timer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let next = match engine.tick() {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler tick failed");
                        Some(Instant::now() + Duration::from_secs(1))
                    }
                };
                let deadline = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
                tokio::select! {
                    () = tokio::time::sleep_until(deadline.into()) => {}
                    () = engine.sh.signals.timer.notified() => {}
                }
            }
        })
    }

    /// Expires lapsed leases, dispatches jobs whose backoff ended, and
    /// returns when it next needs to run.
    fn tick(&self) -> Result<Option<Instant>> {
        let now = self.sh.instant();
        let (next, _) = self.transition(|tx| {
            let lapsed: Vec<(JobKey, u32, String)> = tx
                .st
                .leases
                .iter()
                .filter(|(_, l)| l.expires <= now)
                .map(|(k, l)| (*k, l.attempt, l.runner.clone()))
                .collect();
            for (job, attempt, runner) in lapsed {
                tracing::warn!(job = %job, attempt, runner = %runner, "lease expired: runner silent");
                tx.lose_job(job, attempt, &format!("runner {runner} stopped responding"))?;
            }
            tx.dispatch()?;
            let lease_next = tx.st.leases.iter().map(|(_, l)| l.expires).min();
            let now_ms = tx.sh.now_ms();
            let backoff_next = tx
                .st
                .queue
                .next_not_before(now_ms)
                .map(|t| now + Duration::from_millis(u64::try_from(t - now_ms).unwrap_or(0)));
            Ok(match (lease_next, backoff_next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
        })?;
        Ok(next)
    }
}

/// A duration in whole milliseconds, as i64.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The queue view of a job record.
pub(crate) fn queued(key: JobKey, seq: u64, job: &JobRecord, pipeline: String) -> QueuedJob {
    QueuedJob {
        job: key,
        seq,
        priority: job.priority,
        runs_on: job.runs_on.clone(),
        executor: if job.image.as_ref().is_some_and(|i| !i.name.is_empty()) {
            Executor::Container
        } else {
            Executor::Host
        },
        plugins: job.steps.iter().any(|s| matches!(s.action, Some(viaduct_proto::v1::step_plan::Action::Uses(_)))),
        not_before_ms: job.not_before_ms,
        pipeline,
        untrusted: job.untrusted,
    }
}

/// A snapshot of scheduler gauges for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Metrics {
    /// Jobs in the queue.
    pub queued: usize,
    /// Jobs leased to runners.
    pub running: usize,
    /// Connected runners.
    pub runners_connected: usize,
    /// Slots of connected runners that take jobs (neither draining nor
    /// paused).
    pub slots: usize,
}

impl Engine {
    /// The instruments transitions observe (for `/metrics`).
    pub fn telemetry(&self) -> &telemetry::Telemetry {
        &self.sh.telemetry
    }

    /// Current scheduler gauges.
    pub fn metrics(&self) -> Metrics {
        let st = self.lock();
        Metrics {
            queued: st.queue.len(),
            running: st.leases.len(),
            runners_connected: st.runners.len(),
            slots: st.runners.values().filter(|c| c.takes_jobs()).map(|c| c.slots as usize).sum(),
        }
    }

    /// Up to `limit` queued jobs in dispatch order — only those a runner
    /// like `fit` could take, when given — with what a runner needs to take
    /// each, and how many are queued (and fit) in all.
    pub fn pending_jobs(&self, limit: usize, fit: Option<&viaduct_proto::v1::RunnerFit>) -> Pending {
        let st = self.lock();
        let bound: HashMap<JobKey, &str> =
            st.runners.iter().filter_map(|(id, c)| c.bound_job.map(|j| (j, id.as_str()))).collect();
        let fits = |q: &&QueuedJob| {
            fit.is_none_or(|f| {
                let offers = |e: Executor| f.executors.contains(&(e as i32));
                q.runs_on.iter().all(|l| f.labels.contains(l))
                    && offers(q.executor)
                    && (!q.plugins || offers(Executor::Wasi))
                    && !(q.untrusted && f.protected)
            })
        };
        let fitting = if fit.is_some() { st.queue.iter().filter(fits).count() } else { st.queue.len() };
        let jobs = st
            .queue
            .iter()
            .filter(fits)
            .take(limit)
            .map(|q| viaduct_proto::v1::PendingJob {
                job_id: q.job.to_string(),
                run_id: q.job.run.to_string(),
                pipeline: q.pipeline.clone(),
                runs_on: q.runs_on.clone(),
                executor: q.executor as i32,
                plugins: q.plugins,
                untrusted: q.untrusted,
                not_before: crate::convert::timestamp(q.not_before_ms),
                bound_runner: bound.get(&q.job).map(|r| r.to_string()).unwrap_or_default(),
            })
            .collect();
        Pending { jobs, total: st.queue.len(), fitting }
    }
}
