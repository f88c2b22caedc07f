//! Durable state: ordered trees of records behind the [`kv::Kv`] backend
//! (sled on disk by default; [`postgres`] for a database the server does
//! not own; in memory for tests).
//!
//! One tree per entity (see [`T`]). A state transition is a [`WriteSet`]
//! committed atomically across trees; callers that
//! promise durability (Submit returning, a step result or log chunk being
//! acknowledged) then wait for a [`Ticket`] from the group-commit
//! [`Flusher`], which fsyncs once for every write made before it started.
//!
//! The store knows bytes and records, not rules: which transitions are legal
//! is the engine's business.

pub mod compact;
pub mod keys;
pub mod kv;
pub mod logs;
pub mod postgres;
pub use postgres::{Fence, Leadership, spawn_lease};
pub mod records;
pub mod wal;
pub mod write_back;

use std::{
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prost::Message;
use tokio::sync::watch;

use self::kv::{Entries, Kv};
use crate::error::{Error, Result};

/// The trees of the database. The discriminant indexes [`Store::trees`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum T {
    /// [`records::RunRecord`] by run id.
    Runs = 0,
    /// [`records::JobRecord`] by (run, job).
    Jobs,
    /// [`records::StepRecord`] by (run, job, attempt, step).
    Steps,
    /// [`records::QueueRecord`] by (255 − priority, sequence).
    Queue,
    /// [`records::EventBatch`] by the cursor of its first event.
    Events,
    /// [`records::RunnerRecord`] by runner id.
    Runners,
    /// [`records::TokenRecord`] by token hash.
    Tokens,
    /// [`records::PipelineRecord`] by name.
    Pipelines,
    /// Secondary index of runs: (field, value, run id) → ().
    RunIndex,
    /// Counters and settings.
    Meta,
    /// [`records::RepoRecord`] by name.
    Repos,
    /// Last commit the server acted on, per repository ref: `repo \0 ref` → commit id.
    RefState,
    /// Webhook deliveries already processed: `provider:delivery id` → time (ms, big-endian).
    Deliveries,
    /// Last slot a schedule fired for: `source \0 cron` → unix seconds (big-endian).
    ScheduleState,
    /// Sealed secret values by name (see `secrets`).
    Secrets,
    /// [`records::PluginRecord`] by `name \0 version`.
    Plugins,
    /// Every component digest ever published → `name@version` (kept so runs
    /// planned before a `replace` still find their component).
    PluginBlobs,
    /// [`records::CacheRecord`] by `scope \0 branch \0 kind key`.
    Caches,
    /// [`records::ArtifactRecord`] by (run, job index, name).
    Artifacts,
    /// [`records::UserRecord`] by login.
    Users,
    /// [`records::AuditRecord`] by id (big-endian).
    Audit,
    /// Log chunks by (step key, byte offset) (see [`logs`]).
    Logs,
    /// Submits already answered: blake3(caller, request id) → run id,
    /// time (ms), both big-endian (see `engine::runs`).
    SubmitKeys,
    /// Ended attempts whose step logs are still chunks in [`T::Logs`]:
    /// [`keys::StepKey::attempt_prefix`] → () (see `packed_logs`).
    Unpacked,
    /// [`records::PackedLogRecord`] by step key: a finished step's log,
    /// packed into one blob.
    PackedLogs,
    /// [`records::SourceArchiveRecord`] by `repo \0 commit` (see
    /// `source_archives`).
    SourceArchives,
    /// [`records::StatusRecord`] by `repo \0 sequence`: commit statuses
    /// waiting for a forge (see `forges`).
    StatusOutbox,
    /// [`records::ForgeDeliveryRecord`] by repository name.
    ForgeDelivery,
    /// Ids a forge gave back, by `repo \0 commit \0 what`: GitLab's
    /// pipeline of a run (`pipeline:<run id>`), GitHub's check run of a
    /// context (`check:<context>`) → id, time (ms), attempt, big-endian.
    ForgeIds,
    /// [`records::NotificationRecord`] by sequence: notifications waiting
    /// to be sent (see `notify`).
    NotifyOutbox,
    /// [`records::SnapshotRecord`] by [`keys::StepKey::key`]: the
    /// workspace snapshot taken after that step (see `snapshots`).
    Snapshots,
    /// Snapshots later runs may start from (`reuse:`): `repo \0 pipeline
    /// \0 job key \0 step (big-endian) key` → the snapshot's
    /// [`keys::StepKey::key`]. Written by trusted runs only.
    ReuseIndex,
    /// [`records::EnvironmentRecord`] by `repo \0 name`.
    Environments,
    /// [`records::DeploymentRecord`] by id (big-endian).
    Deployments,
    /// `repo \0 environment \0 id` (big-endian) → empty: each
    /// environment's deployments in order.
    DeploymentIndex,
    /// [`records::DeployedServiceRecord`] by `repo \0 environment \0 name`.
    DeployedServices,
    /// [`records::ServiceHealthRecord`], same keys (the prober's).
    ServiceHealth,
}

impl T {
    /// The tree's name (in the database, and in `Admin.Status`).
    pub fn name(self) -> &'static str {
        TREE_NAMES[self as usize]
    }

    /// Every tree, in the order of [`TREE_NAMES`].
    pub const ALL: [T; 37] = [
        T::Runs,
        T::Jobs,
        T::Steps,
        T::Queue,
        T::Events,
        T::Runners,
        T::Tokens,
        T::Pipelines,
        T::RunIndex,
        T::Meta,
        T::Repos,
        T::RefState,
        T::Deliveries,
        T::ScheduleState,
        T::Secrets,
        T::Plugins,
        T::PluginBlobs,
        T::Caches,
        T::Artifacts,
        T::Users,
        T::Audit,
        T::Logs,
        T::SubmitKeys,
        T::Unpacked,
        T::PackedLogs,
        T::SourceArchives,
        T::StatusOutbox,
        T::ForgeDelivery,
        T::ForgeIds,
        T::NotifyOutbox,
        T::Snapshots,
        T::ReuseIndex,
        T::Environments,
        T::Deployments,
        T::DeploymentIndex,
        T::DeployedServices,
        T::ServiceHealth,
    ];
}

const TREE_NAMES: [&str; 37] = [
    "runs",
    "jobs",
    "steps",
    "queue",
    "events",
    "runners",
    "tokens",
    "pipelines",
    "run_index",
    "meta",
    "repos",
    "ref_state",
    "deliveries",
    "schedule_state",
    "secrets",
    "plugins",
    "plugin_blobs",
    "caches",
    "artifacts",
    "users",
    "audit",
    "logs",
    "submit_keys",
    "unpacked",
    "packed_logs",
    "source_archives",
    "status_outbox",
    "forge_delivery",
    "forge_ids",
    "notify_outbox",
    "snapshots",
    "reuse_index",
    "environments",
    "deployments",
    "deployment_index",
    "deployed_services",
    "service_health",
];

/// The database.
pub struct Store {
    kv: Arc<dyn Kv>,
    /// Log chunks (outside write sets: appends are single inserts, held
    /// and flushed like the rest).
    pub logs: logs::LogStore,
    flusher: Arc<Flusher>,
    /// Every write to `kv` goes through it (the log store's too).
    writes: Arc<Writes>,
}

/// What the store did since it was opened (see `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Write sets committed (engine transitions, log chunks and the rest).
    pub commits: u64,
    /// Group commits: the writes made before each made durable together.
    pub flushes: u64,
}

/// One tree of the store, for reading.
#[derive(Clone, Copy)]
pub struct Tree<'a> {
    kv: &'a dyn Kv,
    t: T,
}

impl<'a> Tree<'a> {
    /// The raw value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        self.kv.get(self.t, key.as_ref())
    }

    /// Whether `key` exists.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Entries<'a> {
        self.kv.range(self.t, Bound::Unbounded, Bound::Unbounded)
    }

    /// The entries whose keys fall in `range`, in key order.
    pub fn range<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Entries<'a> {
        fn bound<K: AsRef<[u8]>>(b: Bound<&K>) -> Bound<&[u8]> {
            match b {
                Bound::Included(k) => Bound::Included(k.as_ref()),
                Bound::Excluded(k) => Bound::Excluded(k.as_ref()),
                Bound::Unbounded => Bound::Unbounded,
            }
        }
        self.kv.range(self.t, bound(range.start_bound()), bound(range.end_bound()))
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Entries<'a> {
        let prefix = prefix.as_ref();
        match kv::prefix_end(prefix) {
            Some(end) => self.kv.range(self.t, Bound::Included(prefix), Bound::Excluded(end.as_slice())),
            None => self.kv.range(self.t, Bound::Included(prefix), Bound::Unbounded),
        }
    }

    /// The entry with the greatest key.
    pub fn last(&self) -> Result<Option<kv::Entry>> {
        self.iter().next_back().transpose()
    }
}

/// A set of writes applied atomically by [`Store::commit`].
#[derive(Default)]
pub struct WriteSet {
    ops: Vec<kv::Op>,
}

impl WriteSet {
    /// Stores a record.
    pub fn put<M: Message>(&mut self, tree: T, key: impl AsRef<[u8]>, record: &M) {
        self.ops.push((tree, key.as_ref().to_vec(), Some(record.encode_to_vec())));
    }

    /// Stores raw bytes.
    pub fn put_raw(&mut self, tree: T, key: impl AsRef<[u8]>, value: Vec<u8>) {
        self.ops.push((tree, key.as_ref().to_vec(), Some(value)));
    }

    /// Removes a key.
    pub fn delete(&mut self, tree: T, key: impl AsRef<[u8]>) {
        self.ops.push((tree, key.as_ref().to_vec(), None));
    }

    /// What this write set does to `key` of `tree`, by its last write:
    /// `Some(Some(value))` stored, `Some(None)` removed, `None` untouched.
    pub fn pending(&self, tree: T, key: &[u8]) -> Option<Option<&[u8]>> {
        self.ops.iter().rev().find(|(t, k, _)| *t == tree && k == key).map(|(_, _, v)| v.as_deref())
    }

    /// How many writes it holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it writes to `tree`.
    pub fn touches(&self, tree: T) -> bool {
        self.ops.iter().any(|(t, _, _)| *t == tree)
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds every write of `other` (after those already here).
    pub fn extend(&mut self, other: WriteSet) {
        self.ops.extend(other.ops);
    }
}

/// Proof of a position in the write order; [`Store::wait_durable`] resolves
/// once everything written before it was taken is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Store {
    /// Opens (or creates) the sled database under `dir` and starts the
    /// flusher thread.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, kv::DEFAULT_CACHE)
    }

    /// [`Store::open`] with `cache` bytes of sled's page cache. Commits
    /// reach sled through [`write_back::WriteBack`]: one append to the
    /// store's log ([`wal`]) per group commit, not one per state transition.
    pub fn open_with_cache(dir: &Path, cache: u64) -> Result<Self> {
        Ok(Self::with(write_back::WriteBack::with_cache(kv::Sled::open_with_cache(dir, cache)?, 0)))
    }

    /// Opens the PostgreSQL database at `url` as its one server (see
    /// [`postgres::hold_server_lock`]), migrating its schema, and starts the
    /// flusher thread. `ca_file` is trusted for TLS besides the system's
    /// roots.
    pub fn postgres(url: &str, password: Option<&str>, ca_file: Option<&Path>) -> Result<Self> {
        postgres::hold_server_lock(url, password, ca_file)?;
        Ok(Self::with(write_back::WriteBack::new(postgres::Postgres::open(url, password, ca_file)?)))
    }

    /// The store of a replica that leads: the database at `url`, every
    /// write checked against `fence` (see [`postgres::spawn_lease`]).
    pub fn postgres_leader(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&Path>,
        fence: postgres::Fence,
    ) -> Result<Self> {
        Ok(Self::with(write_back::WriteBack::new(postgres::Postgres::open(url, password, ca_file)?.fenced(fence))))
    }

    /// A store in memory (tests).
    pub fn memory() -> Self {
        Self::with(Arc::new(kv::Memory::new()))
    }

    /// A store over `kv`.
    pub fn with(kv: Arc<dyn Kv>) -> Self {
        let writes = Arc::new(Writes::default());
        let logs = logs::LogStore::new(Arc::clone(&kv), Arc::clone(&writes));
        let flusher = Flusher::start(Arc::clone(&kv), Arc::clone(&writes));
        Self { kv, logs, flusher, writes }
    }

    /// Commits and group commits so far.
    pub fn counters(&self) -> Counters {
        Counters {
            commits: self.writes.commits.load(Ordering::Relaxed),
            flushes: self.flusher.flushes.load(Ordering::Relaxed),
        }
    }

    /// How long each group commit took to make its writes durable, from
    /// its start (after the gather) until just before its waiters are told
    /// (a failed attempt is not timed): the store's share of every
    /// acknowledgement, for `/metrics`.
    pub fn flush_durations(&self) -> Histogram {
        self.flusher.durations.clone()
    }

    /// The tree `t`.
    pub fn tree(&self, t: T) -> Tree<'_> {
        Tree { kv: self.kv.as_ref(), t }
    }

    /// Records and their bytes (keys and values) in `t`: a scan of the whole
    /// tree.
    pub fn tree_size(&self, t: T) -> Result<(u64, u64)> {
        let (mut records, mut bytes) = (0u64, 0u64);
        for kv in self.tree(t).iter() {
            let (k, v) = kv?;
            records += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        Ok((records, bytes))
    }

    /// Applies `ws` atomically. Not yet durable: take a [`Store::ticket`].
    pub fn commit(&self, ws: &WriteSet) -> Result<()> {
        self.writes.write(|| self.kv.commit(&ws.ops).map(|()| !ws.ops.is_empty())).map(|_| ())
    }

    /// Stores `value` under `key` of `t` unless the key exists; whether it
    /// did. Not yet durable: take a [`Store::ticket`].
    pub fn insert_if_absent(&self, t: T, key: impl AsRef<[u8]>, value: &[u8]) -> Result<bool> {
        self.writes.write(|| self.kv.insert_if_absent(t, key.as_ref(), value))
    }

    /// Reads and decodes a record.
    pub fn get<M: Message + Default>(&self, t: T, key: impl AsRef<[u8]>) -> Result<Option<M>> {
        match self.tree(t).get(key)? {
            Some(bytes) => decode(t, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// A ticket covering every write made so far, flushed now.
    pub fn ticket(&self) -> Ticket {
        self.flusher.request()
    }

    /// A ticket covering every write made so far, for a request that only
    /// read and must not answer before what it read is durable: the flush
    /// under way, or the last one, when nothing was written since it
    /// began (no fsync asked for, none waited for twice), else
    /// [`Store::ticket`].
    pub fn ticket_covering(&self) -> Ticket {
        let begun = *self.flusher.begun.lock().unwrap_or_else(|p| p.into_inner());
        match begun {
            Some((target, mark)) if self.writes.unchanged_since(mark) => Ticket(target),
            _ => self.ticket(),
        }
    }

    /// A ticket covering every write made so far, flushed within
    /// [`SOON`] unless something asks for a flush before: for writes that
    /// no one waits on right now (a step's progress), so that a job of
    /// many short steps costs a few fsyncs, not one per report.
    pub fn ticket_soon(&self) -> Ticket {
        self.flusher.request_soon()
    }

    /// A ticket covering the writes that already have tickets, without
    /// asking for a new fsync: for requests that wrote nothing but must not
    /// be acknowledged before the state they confirm is durable.
    pub fn current_ticket(&self) -> Ticket {
        Ticket(self.flusher.requested.load(Ordering::Acquire))
    }

    /// Runs `f` once the writes covered by `ticket` are durable (at once
    /// when they are), after everything queued here before it: what
    /// announces a transition (an assignment to a runner) never goes out
    /// before the transition could survive a crash, nor out of order.
    /// `f` runs on the flusher's thread, inside the backend's flush (the
    /// store's log and write-back locks held): it must be quick (a channel
    /// send) and must not use the store (a commit, a flush, another
    /// `after_durable`: each could wait on a lock its own thread holds).
    pub fn after_durable(&self, ticket: Ticket, f: impl FnOnce() + Send + 'static) {
        let mut after = self.flusher.after.lock().unwrap_or_else(|p| p.into_inner());
        if after.is_empty() && ticket.0 <= *self.flusher.flushed.borrow() {
            f();
        } else {
            after.push_back((ticket.0, Box::new(f)));
        }
    }

    /// Waits until the writes covered by `ticket` are fsynced.
    pub async fn wait_durable(&self, ticket: Ticket) {
        self.flusher.wait(ticket).await;
    }

    /// Commits and waits for durability.
    pub async fn commit_durable(&self, ws: &WriteSet) -> Result<()> {
        self.commit(ws)?;
        self.wait_durable(self.ticket()).await;
        Ok(())
    }

    /// A fresh, monotonically increasing id (survives restarts).
    pub fn generate_id(&self) -> Result<u64> {
        self.kv.generate_id()
    }

    /// Flushes synchronously (shutdown).
    pub fn flush(&self) -> Result<()> {
        self.kv.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.flusher.stop();
    }
}

/// Decodes a record read from tree `t`.
pub fn decode<M: Message + Default>(t: T, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt { tree: TREE_NAMES[t as usize], detail: e.to_string() })
}

/// How long the flusher gathers writes before an fsync while under load.
/// On sled an fsync of the store's log takes ~0.15 ms: a gather of 1 ms
/// left durable submits at a median 8,100 runs/s (`cargo xtask bench
/// queue`) against 8,800 with this one, for no better pickup under load.
const COMMIT_DELAY: Duration = Duration::from_micros(200);
/// Requests arriving during one fsync that mean "under load".
const BUSY_REQUESTS: u64 = 8;
/// At most how long a [`Store::ticket_soon`] waits for its flush.
pub const SOON: Duration = Duration::from_millis(5);

/// What the flusher is asked to do.
#[derive(Default)]
struct Wake {
    /// Flush now.
    now: bool,
    /// Flush at the latest then.
    soon: Option<Instant>,
    /// Shut down.
    stop: bool,
}

/// What [`Store::after_durable`] runs.
type Deferred = Box<dyn FnOnce() + Send>;

/// The writes to the backend, counted so that the flusher can tell when
/// there is nothing new to make durable: a ticket taken by a request that
/// only read (a watcher confirming events it read) then costs no flush.
#[derive(Default)]
struct Writes {
    /// Writes under way.
    active: AtomicU64,
    /// Writes ended that may have changed something (all but those that
    /// said they changed nothing: a failed one may have): it changes
    /// whenever the backend may hold something a flush has not covered.
    ended: AtomicU64,
    /// Write sets that changed something (see [`Counters::commits`]).
    commits: AtomicU64,
}

impl Writes {
    /// Runs `write`, which tells whether it changed anything. A write is
    /// counted as under way from before it starts until after it ended,
    /// so that whoever could see it, before or after `write` returns, is
    /// covered by the flusher's check (see [`Writes::unchanged_since`]).
    fn write(&self, write: impl FnOnce() -> Result<bool>) -> Result<bool> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let wrote = write();
        if !matches!(wrote, Ok(false)) {
            self.ended.fetch_add(1, Ordering::SeqCst);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        if matches!(wrote, Ok(true)) {
            self.commits.fetch_add(1, Ordering::Relaxed);
        }
        wrote
    }

    /// Where the writes are: compared with the next one by
    /// [`Writes::unchanged_since`]. Taken before a flush, after reading
    /// the ticket the flush is for.
    fn mark(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// Whether nothing was written since `mark` (taken before a flush
    /// began) and nothing is being written: everything a request made
    /// before this call could have seen is covered by that flush (or, if
    /// it failed, by the retry that must succeed before its ticket is
    /// done: the failed batch goes back to be written again). The
    /// count under way is read first: a write that the requester saw and
    /// that has not ended shows there; one that ended shows in `ended`.
    fn unchanged_since(&self, mark: u64) -> bool {
        self.active.load(Ordering::SeqCst) == 0 && self.ended.load(Ordering::SeqCst) == mark
    }
}

/// Group commit: any number of waiters share one fsync, run by one
/// dedicated thread (no thread-pool hop per flush).
struct Flusher {
    requested: AtomicU64,
    /// Flushes done.
    flushes: AtomicU64,
    /// Seconds from each successful flush's start until its writes were
    /// durable (a failed attempt is not timed).
    durations: Histogram,
    flushed: watch::Sender<u64>,
    /// What runs once a ticket is flushed (see [`Store::after_durable`]),
    /// in ticket order; `flushed` advances under this lock.
    after: Mutex<std::collections::VecDeque<(u64, Deferred)>>,
    /// The backend flush begun last: the ticket it is for, and where the
    /// writes were when it began (see [`Store::ticket_covering`]).
    begun: Mutex<Option<(u64, u64)>>,
    wake: Mutex<Wake>,
    cv: Condvar,
}

impl Flusher {
    fn start(kv: Arc<dyn Kv>, writes: Arc<Writes>) -> Arc<Self> {
        let f = Arc::new(Self {
            requested: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            // 62.5 µs … ~2 s: an fdatasync of the log is ~0.15 ms.
            durations: Histogram::new(exponential_buckets(0.000_062_5, 2.0, 16)),
            flushed: watch::Sender::new(0),
            after: Mutex::default(),
            begun: Mutex::default(),
            wake: Mutex::default(),
            cv: Condvar::new(),
        });
        let flusher = Arc::clone(&f);
        let spawned = std::thread::Builder::new().name("viaduct-flush".into()).spawn(move || {
            let mut busy = false;
            // Where the writes were when the last successful flush began.
            let mut flushed_writes = None;
            loop {
                {
                    let mut w = flusher.wake.lock().unwrap_or_else(|p| p.into_inner());
                    loop {
                        if w.stop {
                            return;
                        }
                        let now = Instant::now();
                        match w.soon {
                            _ if w.now => break,
                            Some(at) if at <= now => break,
                            Some(at) => w = flusher.cv.wait_timeout(w, at - now).unwrap_or_else(|p| p.into_inner()).0,
                            None => w = flusher.cv.wait(w).unwrap_or_else(|p| p.into_inner()),
                        }
                    }
                    (w.now, w.soon) = (false, None);
                }
                // Under load (requests kept coming while we flushed), gather
                // more before the next fsync: far fewer, larger writes, at
                // the cost of up to COMMIT_DELAY on acknowledgements — never
                // on dispatch, which does not wait for fsync. Idle, flush now.
                if busy {
                    std::thread::sleep(COMMIT_DELAY);
                }
                let target = flusher.requested.load(Ordering::Acquire);
                if target <= *flusher.flushed.borrow() {
                    continue;
                }
                // Requests that only read (nothing written since the last
                // flush): what they saw is durable already.
                if flushed_writes.is_some_and(|mark| writes.unchanged_since(mark)) {
                    flusher.done(target);
                    busy = false;
                    continue;
                }
                let mark = writes.mark();
                *flusher.begun.lock().unwrap_or_else(|p| p.into_inner()) = Some((target, mark));
                // Waiters go on once the writes are durable, not once the
                // backend has also applied them (sled: after its log's sync).
                // Counted before the waiters go on: what they read next
                // (`/metrics`) includes this flush.
                let mut told = false;
                let began = Instant::now();
                let mut tell = || {
                    if !told {
                        told = true;
                        flusher.durations.observe(began.elapsed().as_secs_f64());
                        flusher.flushes.fetch_add(1, Ordering::Relaxed);
                        flusher.done(target);
                    }
                };
                match kv.flush_then(&mut tell) {
                    Ok(_) => {
                        tell();
                        flushed_writes = Some(mark);
                        // Under load = several requests arrived during the fsync.
                        busy = flusher.requested.load(Ordering::Acquire) >= target + BUSY_REQUESTS;
                    }
                    Err(e) if !kv.flush_retries() => {
                        // Memory and disk would disagree from here on (as
                        // when a commit fails): stop, and let the restart
                        // recover from disk.
                        tracing::error!(error = %e, "flushing the database failed for good; exiting so that a restart recovers from disk");
                        std::process::exit(70);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "flushing the database failed; retrying");
                        std::thread::sleep(Duration::from_millis(100));
                        flusher.wake.lock().unwrap_or_else(|p| p.into_inner()).now = true;
                    }
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the flusher thread");
        }
        f
    }

    /// Marks the tickets up to `target` durable and runs what waited on
    /// them.
    fn done(&self, target: u64) {
        let mut after = self.after.lock().unwrap_or_else(|p| p.into_inner());
        self.flushed.send_replace(target);
        while after.front().is_some_and(|(t, _)| *t <= target) {
            if let Some((_, f)) = after.pop_front() {
                // Called inside the backend's flush (sled: between the
                // log's sync and applying the batch): a panic must not
                // unwind through it and leave the batch unapplied.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
                    tracing::error!("a callback run once writes were durable panicked");
                }
            }
        }
    }

    fn request(&self) -> Ticket {
        let t = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).now = true;
        self.cv.notify_one();
        Ticket(t)
    }

    fn request_soon(&self) -> Ticket {
        let t = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if !w.now && w.soon.is_none() {
            w.soon = Some(Instant::now() + SOON);
            self.cv.notify_one();
        }
        Ticket(t)
    }

    fn stop(&self) {
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.cv.notify_one();
    }

    async fn wait(&self, ticket: Ticket) {
        let mut rx = self.flushed.subscribe();
        // The sender lives as long as the store: an error is impossible.
        let _ = rx.wait_for(|f| *f >= ticket.0).await;
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{JobKey, RunId};

    /// A ticket costs a flush only when something was written since the
    /// last one: a watcher confirming what it read does not fsync again,
    /// nor do writes that changed nothing; every kind of write (a write
    /// set, a log chunk, an insert) does.
    #[tokio::test]
    async fn a_ticket_costs_a_flush_only_after_a_write() {
        let store = Store::memory();
        let flushes = |s: &Store| s.counters().flushes;
        let mut ws = WriteSet::default();
        ws.put_raw(T::Meta, b"k", vec![1]);
        store.commit(&ws).unwrap();
        store.wait_durable(store.ticket()).await;
        assert_eq!(flushes(&store), 1);
        for _ in 0..3 {
            store.wait_durable(store.ticket()).await;
        }
        assert_eq!(flushes(&store), 1, "tickets with nothing written since");
        store.logs.append(JobKey::new(RunId(1), 1).step(1, 0), 0, b"line\n", 1).unwrap();
        store.wait_durable(store.ticket()).await;
        assert_eq!(flushes(&store), 2, "after a log chunk");
        assert!(store.insert_if_absent(T::Caches, b"c", b"v").unwrap());
        store.wait_durable(store.ticket()).await;
        assert_eq!(flushes(&store), 3, "after an insert");
        assert!(!store.insert_if_absent(T::Caches, b"c", b"w").unwrap());
        store.commit(&WriteSet::default()).unwrap();
        store.wait_durable(store.ticket_soon()).await;
        assert_eq!((flushes(&store), store.counters().commits), (3, 3));
    }

    /// A reader's ticket asks for no flush when nothing was written since
    /// the last one began, and for one when something was.
    #[tokio::test]
    async fn a_covering_ticket_asks_for_a_flush_only_after_a_write() {
        let store = Store::memory();
        let write = |v: u8| {
            let mut ws = WriteSet::default();
            ws.put_raw(T::Meta, b"k", vec![v]);
            store.commit(&ws).unwrap();
        };
        let asked = |s: &Store| s.current_ticket().0;
        write(1);
        store.wait_durable(store.ticket()).await;
        let before = asked(&store);
        let covering = store.ticket_covering();
        assert_eq!(asked(&store), before, "nothing written since: no flush asked for");
        store.wait_durable(covering).await;
        write(2);
        let covering = store.ticket_covering();
        assert_eq!(asked(&store), before + 1, "a write since: a flush asked for");
        store.wait_durable(covering).await;
        assert_eq!(store.counters().flushes, 2);
    }
}
