//! The unit of work of a state transition.
//!
//! A [`Tx`] is opened with the engine lock held. It caches every run, job
//! and step record it reads, so a transition that touches the same job
//! twice (finish it, then roll up its run) sees its own writes. On
//! [`Tx::commit`] it writes the records that changed in one sled
//! transaction, together with one `RunEvent` per changed record (steps, then
//! jobs, then runs — so a run's final event comes last) and the run
//! indexes; only then does it wake watchers and send its queued messages to
//! runners. A runner therefore never hears of state the server could lose.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use tokio::sync::mpsc::UnboundedSender;
use viaduct_proto::v1::{RunEvent, ServerMessage, run_event::Change};

use super::{Shared, State};
use crate::{
    convert,
    error::Result,
    store::{
        Store, T, Ticket, WriteSet,
        keys::{JobKey, RunId, StepKey},
        now_ms,
        records::{JobRecord, RunRecord, StepRecord},
    },
};

/// A record as read (`None` when new) and as it is now.
struct Entry<R> {
    before: Option<R>,
    now: R,
}

impl<R: PartialEq> Entry<R> {
    fn changed(&self) -> bool {
        self.before.as_ref() != Some(&self.now)
    }
}

/// One state transition in progress.
pub(crate) struct Tx<'a> {
    pub(crate) sh: &'a Shared,
    pub(crate) st: &'a mut State,
    runs: BTreeMap<RunId, Entry<RunRecord>>,
    jobs: BTreeMap<JobKey, Entry<JobRecord>>,
    steps: BTreeMap<StepKey, Entry<StepRecord>>,
    ws: WriteSet,
    outbox: Vec<(UnboundedSender<ServerMessage>, ServerMessage)>,
}

fn load<K: Ord + Copy, R: Message + Default + Clone>(
    cache: &mut BTreeMap<K, Entry<R>>,
    store: &Store,
    tree: T,
    key: K,
    raw: &[u8],
    what: impl FnOnce() -> String,
) -> Result<()> {
    if let std::collections::btree_map::Entry::Vacant(e) = cache.entry(key) {
        let rec: R = store.get(tree, raw)?.ok_or_else(|| crate::error::Error::not_found(what()))?;
        e.insert(Entry { before: Some(rec.clone()), now: rec });
    }
    Ok(())
}

impl<'a> Tx<'a> {
    pub(crate) fn new(sh: &'a Shared, st: &'a mut State) -> Self {
        Self {
            sh,
            st,
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            steps: BTreeMap::new(),
            ws: WriteSet::default(),
            outbox: Vec::new(),
        }
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.sh.store
    }

    /// A run, for changing.
    pub(crate) fn run(&mut self, id: RunId) -> Result<&mut RunRecord> {
        load(&mut self.runs, &self.sh.store, T::Runs, id, &id.key(), || format!("run {id} not found"))?;
        Ok(&mut self.runs.get_mut(&id).expect("loaded above").now)
    }

    /// A job, for changing.
    pub(crate) fn job(&mut self, key: JobKey) -> Result<&mut JobRecord> {
        load(&mut self.jobs, &self.sh.store, T::Jobs, key, &key.key(), || format!("job {key} not found"))?;
        Ok(&mut self.jobs.get_mut(&key).expect("loaded above").now)
    }

    /// A step of one attempt, for changing.
    pub(crate) fn step(&mut self, key: StepKey) -> Result<&mut StepRecord> {
        load(&mut self.steps, &self.sh.store, T::Steps, key, &key.key(), || format!("step {key} not found"))?;
        Ok(&mut self.steps.get_mut(&key).expect("loaded above").now)
    }

    /// Adds a new run.
    pub(crate) fn insert_run(&mut self, id: RunId, rec: RunRecord) {
        self.runs.insert(id, Entry { before: None, now: rec });
    }

    /// Adds a new job.
    pub(crate) fn insert_job(&mut self, key: JobKey, rec: JobRecord) {
        self.jobs.insert(key, Entry { before: None, now: rec });
    }

    /// Adds a new step.
    pub(crate) fn insert_step(&mut self, key: StepKey, rec: StepRecord) {
        self.steps.insert(key, Entry { before: None, now: rec });
    }

    /// Extra raw writes (queue entries, indexes) committed with the rest.
    pub(crate) fn writes(&mut self) -> &mut WriteSet {
        &mut self.ws
    }

    /// Queues a message to a runner, sent after the commit.
    pub(crate) fn send(&mut self, to: &UnboundedSender<ServerMessage>, msg: ServerMessage) {
        self.outbox.push((to.clone(), msg));
    }

    /// Writes everything that changed, atomically, with its events; then
    /// wakes watchers and sends the queued runner messages.
    pub(crate) fn commit(mut self) -> Result<Ticket> {
        let now = now_ms();
        let mut changes: Vec<(RunId, Change)> = Vec::new();
        for (key, e) in &self.steps {
            if e.changed() {
                self.ws.put(T::Steps, key.key(), &e.now);
                changes.push((key.job.run, Change::Step(convert::step(*key, &e.now, e.now.log_size))));
            }
        }
        for (key, e) in &self.jobs {
            if e.changed() {
                self.ws.put(T::Jobs, key.key(), &e.now);
                changes.push((key.run, Change::Job(convert::job(*key, &e.now))));
            }
        }
        for (id, e) in &self.runs {
            if e.changed() {
                self.ws.put(T::Runs, id.key(), &e.now);
                super::index::update(&mut self.ws, *id, e.before.as_ref(), &e.now);
                changes.push((*id, Change::Run(convert::run(*id, &e.now))));
            }
        }
        let mut touched = BTreeSet::new();
        let first_cursor = self.st.next_event;
        for (run, change) in changes {
            let cursor = self.st.next_event;
            self.st.next_event += 1;
            let ev = RunEvent { cursor, time: convert::timestamp(now), run_id: run.to_string(), change: Some(change) };
            self.ws.put_raw(T::Events, cursor.to_be_bytes(), ev.encode_to_vec());
            touched.insert(run);
        }
        if let Err(e) = self.sh.store.commit(&self.ws) {
            // Memory (queue, leases) and disk would disagree from here on:
            // stop, and let the restart rebuild everything from disk.
            tracing::error!(error = %e, "committing a state transition failed; exiting so that a restart recovers from disk");
            std::process::exit(70);
        }
        let ticket = self.sh.store.ticket();
        if self.st.next_event != first_cursor {
            self.sh.signals.events.send_replace(self.st.next_event - 1);
        }
        for run in touched {
            self.sh.signals.touch_run(run);
        }
        for (to, msg) in self.outbox {
            // A closed channel means the runner just disconnected; its lease
            // logic handles what it missed.
            let _ = to.send(msg);
        }
        Ok(ticket)
    }
}
