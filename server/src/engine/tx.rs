//! The unit of work of a state transition.
//!
//! A [`Tx`] is opened with the engine lock held. It caches every run, job
//! and step record it reads, so a transition that touches the same job
//! twice (finish it, then roll up its run) sees its own writes. On
//! [`Tx::commit`] it writes the records that changed in one atomic
//! commit, together with one `RunEvent` per changed record (steps, then
//! jobs, then runs — so a run's final event comes last) and the run
//! indexes; only then does it wake watchers and send its queued messages to
//! runners. A runner therefore never hears of state the server could lose.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tokio::sync::mpsc::UnboundedSender;
use viaduct_proto::v1::{RunEvent, ServerMessage, run_event::Change};

use super::{
    Conn, Shared, State,
    lease::Lease,
    queue::{QueuedJob, Ranked},
};
use crate::{
    convert,
    error::Result,
    store::{
        Store, T, Ticket, WriteSet,
        keys::{JobKey, RunId, StepKey},
        records::{DeploymentRecord, EventBatch, JobName, JobRecord, NotificationRecord, RunRecord, StepRecord},
    },
};

/// A record as read (`None` when new, or not lent yet), as of the last
/// checkpoint, and as it is now.
struct Entry<R> {
    before: Option<R>,
    /// As of the last checkpoint; `None` until the first checkpoint that
    /// found a change (until then it equals `before`: no copy is kept).
    seen: Option<R>,
    now: R,
    touched: bool,
    /// Handed out for changing ([`Cache::get`]) or new: only then can it
    /// differ from `before`. A record only read is never compared (a job
    /// record, with its plan, costs a few microseconds a comparison).
    lent: bool,
}

impl<R: PartialEq + Clone> Entry<R> {
    /// Changed since it was read: must be written.
    fn changed(&self) -> bool {
        self.lent && self.before.as_ref() != Some(&self.now)
    }

    /// Changed since the last checkpoint: needs an event. Marks it seen.
    fn changed_since_checkpoint(&mut self) -> bool {
        self.touched = false;
        if !self.lent || self.seen.as_ref().or(self.before.as_ref()) == Some(&self.now) {
            return false;
        }
        self.seen = Some(self.now.clone());
        true
    }
}

/// The records of one kind a transition has read, with the keys handed out
/// for change since the last checkpoint (so a checkpoint looks only at
/// those).
struct Cache<K, R> {
    map: BTreeMap<K, Entry<R>>,
    touched: Vec<K>,
}

impl<K: Ord + Copy, R: Message + Default + Clone + PartialEq> Cache<K, R> {
    fn new() -> Self {
        Self { map: BTreeMap::new(), touched: Vec::new() }
    }

    /// The record, read from `tree` on first use, for changing.
    fn get(&mut self, store: &Store, tree: T, key: K, raw: &[u8], what: impl FnOnce() -> String) -> Result<&mut R> {
        let e = Self::entry(&mut self.map, store, tree, key, raw, what)?;
        if !e.lent {
            // Only read so far: as stored.
            e.before = Some(e.now.clone());
            e.lent = true;
        }
        if !e.touched {
            e.touched = true;
            self.touched.push(key);
        }
        Ok(&mut e.now)
    }

    /// The record as this transition has it (read from `tree` on first
    /// use), for reading only: it costs no comparison at a checkpoint or
    /// at the commit.
    fn read(&mut self, store: &Store, tree: T, key: K, raw: &[u8], what: impl FnOnce() -> String) -> Result<&R> {
        Ok(&Self::entry(&mut self.map, store, tree, key, raw, what)?.now)
    }

    fn entry<'m>(
        map: &'m mut BTreeMap<K, Entry<R>>,
        store: &Store,
        tree: T,
        key: K,
        raw: &[u8],
        what: impl FnOnce() -> String,
    ) -> Result<&'m mut Entry<R>> {
        Ok(match map.entry(key) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let rec: R = store.get(tree, raw)?.ok_or_else(|| crate::error::Error::not_found(what()))?;
                // `before` is kept once it is lent (it is `now` until then).
                v.insert(Entry { before: None, seen: None, now: rec, touched: false, lent: false })
            }
        })
    }

    /// A new record.
    fn insert(&mut self, key: K, rec: R) {
        self.map.insert(key, Entry { before: None, seen: None, now: rec, touched: true, lent: true });
        self.touched.push(key);
    }

    /// Keys changed since the last checkpoint, each marked seen.
    fn checkpoint(&mut self) -> Vec<(K, &R)> {
        let keys = std::mem::take(&mut self.touched);
        let mut changed = Vec::new();
        for key in keys {
            if self.map.get_mut(&key).is_some_and(Entry::changed_since_checkpoint) {
                changed.push(key);
            }
        }
        changed.into_iter().filter_map(|k| self.map.get(&k).map(|e| (k, &e.now))).collect()
    }

    /// Records changed since they were read: (key, before, now).
    fn written(&self) -> impl Iterator<Item = (&K, Option<&R>, &R)> {
        self.map.iter().filter(|(_, e)| e.changed()).map(|(k, e)| (k, e.before.as_ref(), &e.now))
    }
}

/// An in-memory change of a transition, as what to restore if the
/// transition fails before its commit (see [`Tx::rollback`]).
enum Undo {
    /// A job was queued, over what the queue held for it.
    Queued(JobKey, Option<Ranked>),
    /// A job left the queue.
    Dequeued(Ranked),
    /// A job's lease was granted or dropped, over this one.
    Lease(JobKey, Option<Lease>),
    /// A runner's connection was set, changed or dropped, over this one.
    Conn(String, Option<Conn>),
}

/// One state transition in progress.
///
/// Records go to disk only at [`Tx::commit`]; the in-memory state (queue,
/// leases, connections) changes as the transition goes, through the
/// journaled methods below (`queue_push`, `queue_take`, `set_lease`,
/// `set_conn`, `conn_mut`) — never directly — so that a transition that
/// fails part-way is undone in memory too ([`Tx::rollback`]): memory never
/// disagrees with disk.
pub(crate) struct Tx<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) st: &'a mut State,
    runs: Cache<RunId, RunRecord>,
    jobs: Cache<JobKey, JobRecord>,
    steps: Cache<StepKey, StepRecord>,
    deployments: Cache<u64, DeploymentRecord>,
    ws: WriteSet,
    /// Events of the checkpoints so far, in order.
    changes: Vec<(RunId, Change)>,
    outbox: Vec<(UnboundedSender<ServerMessage>, ServerMessage)>,
    /// In-memory changes so far, oldest first.
    undo: Vec<Undo>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(sh: &'a Shared, st: &'a mut State) -> Self {
        Self {
            sh,
            st,
            runs: Cache::new(),
            jobs: Cache::new(),
            steps: Cache::new(),
            deployments: Cache::new(),
            ws: WriteSet::default(),
            changes: Vec::new(),
            outbox: Vec::new(),
            undo: Vec::new(),
        }
    }

    /// Puts a job in the in-memory queue.
    pub(crate) fn queue_push(&mut self, q: QueuedJob, queued_ms: i64, aging_ms: i64) {
        let job = q.job;
        let old = self.st.queue.push(q, queued_ms, aging_ms);
        self.undo.push(Undo::Queued(job, old));
    }

    /// Takes a job out of the in-memory queue.
    pub(crate) fn queue_take(&mut self, job: JobKey) -> Option<QueuedJob> {
        let taken = self.st.queue.take(job)?;
        let q = taken.1.clone();
        self.undo.push(Undo::Dequeued(taken));
        Some(q)
    }

    /// Grants (`Some`) or drops (`None`) the lease of a job.
    pub(crate) fn set_lease(&mut self, job: JobKey, lease: Option<Lease>) {
        let old = match lease {
            Some(l) => self.st.leases.insert(job, l),
            None => self.st.leases.remove(&job),
        };
        if old.is_some() || self.st.leases.contains(&job) {
            self.undo.push(Undo::Lease(job, old));
        }
    }

    /// Sets (`Some`) or drops (`None`) the connection of a runner.
    pub(crate) fn set_conn(&mut self, runner: &str, conn: Option<Conn>) {
        let old = match conn {
            Some(c) => self.st.runners.insert(runner.to_string(), c),
            None => self.st.runners.remove(runner),
        };
        self.undo.push(Undo::Conn(runner.to_string(), old));
    }

    /// The connection of a runner, for changing.
    pub(crate) fn conn_mut(&mut self, runner: &str) -> Option<&mut Conn> {
        let before = self.st.runners.get(runner)?.clone();
        self.undo.push(Undo::Conn(runner.to_string(), Some(before)));
        self.st.runners.get_mut(runner)
    }

    /// Undoes the in-memory changes of a transition that failed before its
    /// commit, newest first; nothing was written and no message was sent.
    pub(crate) fn rollback(self) {
        if !self.undo.is_empty() {
            tracing::debug!(changes = self.undo.len(), "transition failed: undoing its in-memory changes");
        }
        for undo in self.undo.into_iter().rev() {
            match undo {
                Undo::Queued(job, old) => {
                    self.st.queue.take(job);
                    if let Some(old) = old {
                        self.st.queue.put(old);
                    }
                }
                Undo::Dequeued(taken) => self.st.queue.put(taken),
                Undo::Lease(job, Some(old)) => {
                    self.st.leases.insert(job, old);
                }
                Undo::Lease(job, None) => {
                    self.st.leases.remove(&job);
                }
                Undo::Conn(runner, Some(old)) => {
                    self.st.runners.insert(runner, old);
                }
                Undo::Conn(runner, None) => {
                    self.st.runners.remove(&runner);
                }
            }
        }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.sh.store
    }

    /// A run, for changing.
    pub(crate) fn run(&mut self, id: RunId) -> Result<&mut RunRecord> {
        self.runs.get(&self.sh.store, T::Runs, id, &id.key(), || format!("run {id} not found"))
    }

    /// A job, for changing.
    pub(crate) fn job(&mut self, key: JobKey) -> Result<&mut JobRecord> {
        self.jobs.get(&self.sh.store, T::Jobs, key, &key.key(), || format!("job {key} not found"))
    }

    /// A job, for reading only (as this transition has it so far).
    pub(crate) fn job_ref(&mut self, key: JobKey) -> Result<&JobRecord> {
        self.jobs.read(&self.sh.store, T::Jobs, key, &key.key(), || format!("job {key} not found"))
    }

    /// A step of one attempt, for changing.
    pub(crate) fn step(&mut self, key: StepKey) -> Result<&mut StepRecord> {
        self.steps.get(&self.sh.store, T::Steps, key, &key.key(), || format!("step {key} not found"))
    }

    /// A deployment record, for changing.
    pub(crate) fn deployment(&mut self, id: u64) -> Result<&mut DeploymentRecord> {
        self.deployments
            .get(&self.sh.store, T::Deployments, id, &id.to_be_bytes(), || format!("deployment {id} not found"))
    }

    /// Adds a new deployment record.
    pub(crate) fn insert_deployment(&mut self, id: u64, rec: DeploymentRecord) {
        self.deployments.insert(id, rec);
    }

    /// The ids of the deployments this transition has read or made.
    pub(crate) fn deployments_seen(&self) -> impl Iterator<Item = (u64, &DeploymentRecord)> {
        self.deployments.map.iter().map(|(id, e)| (*id, &e.now))
    }

    /// Adds a new run.
    pub(crate) fn insert_run(&mut self, id: RunId, rec: RunRecord) {
        self.runs.insert(id, rec);
    }

    /// Adds a new job.
    pub(crate) fn insert_job(&mut self, key: JobKey, rec: JobRecord) {
        self.jobs.insert(key, rec);
    }

    /// Adds a new step.
    pub(crate) fn insert_step(&mut self, key: StepKey, rec: StepRecord) {
        self.steps.insert(key, rec);
    }

    /// Extra raw writes (queue entries, indexes) committed with the rest.
    pub(crate) fn writes(&mut self) -> &mut WriteSet {
        &mut self.ws
    }

    /// Queues a message to a runner, sent after the commit.
    pub(crate) fn send(&mut self, to: &UnboundedSender<ServerMessage>, msg: ServerMessage) {
        self.outbox.push((to.clone(), msg));
    }

    /// Records an event for every record changed since the last checkpoint
    /// (steps, then jobs, then runs). A transition that applies several
    /// reports calls this after each, so every intermediate state (a step's
    /// `running` before its `success`) is an event, while each record is
    /// still written once.
    pub(crate) fn checkpoint(&mut self) {
        for (key, rec) in self.steps.checkpoint() {
            self.changes.push((key.job.run, Change::Step(convert::step(key, rec, rec.log_size))));
        }
        for (key, rec) in self.jobs.checkpoint() {
            self.changes.push((key.run, Change::Job(convert::job(key, rec))));
        }
        for (id, rec) in self.runs.checkpoint() {
            self.changes.push((id, Change::Run(convert::run(id, rec))));
        }
    }

    /// Tells the engine's telemetry what this (committed) transition changed.
    fn observe(&self) {
        let tel = &self.sh.telemetry;
        for (key, before, rec) in self.steps.written() {
            let assigned = || match self.jobs.map.get(&key.job) {
                Some(e) => e.now.started_ms,
                None => {
                    self.sh.store.get::<JobRecord>(T::Jobs, key.job.key()).ok().flatten().map_or(0, |j| j.started_ms)
                }
            };
            tel.step(key.index, before, rec, assigned);
        }
        for (key, before, rec) in self.jobs.written() {
            let retried = || match self.runs.map.get(&key.run) {
                Some(e) => e.now.retried,
                None => self.sh.store.get::<RunRecord>(T::Runs, key.run.key()).ok().flatten().map_or(0, |r| r.retried),
            };
            tel.job(*key, before, rec, retried);
        }
        for (id, before, rec) in self.runs.written() {
            tel.run(*id, before, rec);
        }
    }

    /// The notifications owed for a job that ended (none if they cannot be
    /// read: a notification never stops a transition).
    fn job_notifications(&self, key: JobKey, before: Option<&JobRecord>, rec: &JobRecord) -> Vec<NotificationRecord> {
        let store = &self.sh.store;
        let run = match self.runs.map.get(&key.run) {
            Some(e) => Ok(Some(e.now.clone())),
            None => store.get::<RunRecord>(T::Runs, key.run.key()),
        };
        let found = run.and_then(|run| match run {
            Some(run) => super::notifications::of_job(store, key, before, rec, &run),
            None => Ok(Vec::new()),
        });
        found.unwrap_or_else(|e| {
            tracing::warn!(job = %key, error = %e, "cannot work out the job's notifications");
            Vec::new()
        })
    }

    /// The notifications owed for a run that ended.
    fn run_notifications(&self, id: RunId, before: Option<&RunRecord>, rec: &RunRecord) -> Vec<NotificationRecord> {
        let store = &self.sh.store;
        let job = |key: JobKey| -> Result<Option<JobName>> {
            match self.jobs.map.get(&key) {
                Some(e) => Ok(Some(JobName { key: e.now.key.clone(), name: e.now.name.clone(), status: e.now.status })),
                None => store.get::<JobName>(T::Jobs, key.key()),
            }
        };
        super::notifications::of_run(store, id, before, rec, &job).unwrap_or_else(|e| {
            tracing::warn!(run = %id, error = %e, "cannot work out the run's notifications");
            Vec::new()
        })
    }

    /// Writes everything that changed, atomically, with its events; then
    /// wakes watchers and sends the queued runner messages.
    pub(crate) fn commit(mut self) -> Result<Ticket> {
        self.checkpoint();
        let now = self.sh.now_ms();
        for (key, _, rec) in self.steps.written() {
            self.ws.put(T::Steps, key.key(), rec);
        }
        let mut statuses = Vec::new();
        let mut notifications = Vec::new();
        for (key, before, rec) in self.jobs.written() {
            self.ws.put(T::Jobs, key.key(), rec);
            statuses.extend(super::commit_status::of_job(*key, before, rec));
            if !rec.notify.is_empty() {
                notifications.extend(self.job_notifications(*key, before, rec));
            }
        }
        for (id, before, rec) in self.deployments.written() {
            super::deployments::write(&mut self.ws, *id, rec);
            // Its run as this transition left it, else as stored.
            let reports = |run: RunId| match self.runs.map.get(&run) {
                Some(e) => e.now.reports_status,
                None => match self.sh.store.get::<RunRecord>(T::Runs, run.key()) {
                    Ok(found) => found.is_some_and(|r| r.reports_status),
                    // A report never stops a transition.
                    Err(e) => {
                        let why = "cannot read a deployment's run: its state is not reported to the forge";
                        tracing::warn!(run = %run, deployment = id, error = %e, "{why}");
                        false
                    }
                },
            };
            statuses.extend(super::commit_status::of_deployment(*id, before, rec, reports));
        }
        for (id, before, rec) in self.runs.written() {
            self.ws.put(T::Runs, id.key(), rec);
            super::index::update(&mut self.ws, *id, before, rec);
            statuses.extend(super::commit_status::of_run(*id, before, rec));
            if !rec.notify.is_empty() {
                notifications.extend(self.run_notifications(*id, before, rec));
            }
        }
        // The steps of a job between its first step's start and its end
        // are waited on by no one right now (their runner's
        // acknowledgement, a watcher's view of them can wait a few ms):
        // such transitions share the next flush instead of each forcing
        // one (see `durability`).
        let soon = super::durability::can_wait(self.changes.iter().map(|(_, c)| c));
        let mut touched = BTreeSet::new();
        let first_cursor = self.st.next_event;
        let mut batch = EventBatch::default();
        for (run, change) in std::mem::take(&mut self.changes) {
            let cursor = self.st.next_event;
            self.st.next_event += 1;
            batch.events.push(RunEvent {
                cursor,
                time: convert::timestamp(now),
                run_id: run.to_string(),
                change: Some(change),
            });
            touched.insert(run);
        }
        if !batch.events.is_empty() {
            self.ws.put(T::Events, first_cursor.to_be_bytes(), &batch);
        }
        // Every record whose status changed has an event in this batch, so
        // its first cursor orders the statuses across transitions.
        let reports_status = !statuses.is_empty();
        super::commit_status::write(&mut self.ws, first_cursor, statuses);
        let notifies = !notifications.is_empty();
        for (i, n) in notifications.iter().enumerate() {
            self.ws.put(T::NotifyOutbox, super::commit_status::sequence(first_cursor, i).to_be_bytes(), n);
        }
        let fleet =
            self.ws.touches(T::Runners) || self.undo.iter().any(|u| matches!(u, Undo::Lease(..) | Undo::Conn(..)));
        if fleet {
            self.sh.signals.runners_changed();
        }
        if self.ws.is_empty() {
            // Nothing changed; the messages may still go out.
            let ticket = self.sh.store.current_ticket();
            self.sh.send(ticket, self.outbox);
            return Ok(ticket);
        }
        if let Err(e) = self.sh.store.commit(&self.ws) {
            // Memory (queue, leases) and disk would disagree from here on:
            // stop, and let the restart rebuild everything from disk.
            tracing::error!(error = %e, "committing a state transition failed; exiting so that a restart recovers from disk");
            std::process::exit(70);
        }
        let ticket = if soon { self.sh.store.ticket_soon() } else { self.sh.store.ticket() };
        if self.ws.touches(T::DeployedServices) {
            // Read by the prober: only once written.
            self.sh.signals.services_changed();
        }
        if reports_status || notifies {
            self.sh.signals.statuses_changed();
        }
        self.observe();
        if self.st.next_event != first_cursor {
            self.sh.signals.events.send_replace(self.st.next_event - 1);
        }
        for run in touched {
            self.sh.signals.touch_run(run);
        }
        self.sh.send(ticket, self.outbox);
        Ok(ticket)
    }
}
