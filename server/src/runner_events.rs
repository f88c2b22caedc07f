//! The fleet's changes as `Runners.Watch` events: what changed between two
//! readings of the runners, one event per change of each runner, in a
//! fixed order (registered or connected first, removed last). Readings are
//! compared with `last_seen` to the half minute: a heartbeat alone is not a
//! change, but a runner heard from is shown so every 30 s.
//!
//! One [`Feed`] per server reads the fleet once per change (changes close
//! together read together) and hands the events to every watcher, at most
//! [`MAX_WATCHERS`] at once; a watcher that falls behind is told to watch
//! again.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use viaduct_proto::v1::{Runner, RunnerEventKind as Kind};

use crate::error::{Error, Result};

/// Most watchers at once (more are refused with `RESOURCE_EXHAUSTED`).
pub const MAX_WATCHERS: usize = 256;

/// How long the feed waits after a change for the ones that come with it
/// (a dispatch changes several runners at once), so they are read together.
const GATHER: Duration = Duration::from_millis(100);

/// Batches of events a watcher may fall behind by.
const BACKLOG: usize = 256;

/// One batch of events: what one reading changed.
pub type Batch = Arc<Vec<(Kind, Runner)>>;

/// Reads every runner.
pub type Read = Box<dyn Fn() -> Result<Vec<Runner>> + Send + Sync>;

/// The fleet as last read, and its changes, shared by the watchers.
pub struct Feed {
    read: Read,
    /// The fleet as last sent; `None` while nobody watches.
    fleet: Mutex<Option<Fleet>>,
    tx: broadcast::Sender<Batch>,
    watchers: Arc<Semaphore>,
}

/// What a new watcher starts from.
pub struct Watch {
    /// Every runner now.
    pub snapshot: Vec<Runner>,
    /// The changes after it.
    pub changes: broadcast::Receiver<Batch>,
    /// Its place among the watchers (released when dropped).
    pub permit: OwnedSemaphorePermit,
}

impl Feed {
    /// A feed reading the fleet with `read` whenever `changes` moves; its
    /// task runs until `changes`' sender goes.
    pub fn start(read: Read, mut changes: watch::Receiver<u64>) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BACKLOG);
        let feed =
            Arc::new(Self { read, fleet: Mutex::new(None), tx, watchers: Arc::new(Semaphore::new(MAX_WATCHERS)) });
        let me = Arc::clone(&feed);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                tokio::time::sleep(GATHER).await;
                changes.borrow_and_update();
                me.read_changes();
            }
        });
        feed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fleet>> {
        self.fleet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the fleet and sends what changed (nothing while nobody
    /// watches: the next watcher reads it afresh).
    fn read_changes(&self) {
        let mut fleet = self.lock();
        if self.tx.receiver_count() == 0 {
            *fleet = None;
            return;
        }
        let Some(f) = fleet.as_mut() else { return };
        match (self.read)() {
            Ok(now) => {
                let events = f.update(now);
                if !events.is_empty() {
                    let _ = self.tx.send(Arc::new(events));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the fleet for its watchers failed"),
        }
    }

    /// A new watcher: the fleet now and every change after it (none lost
    /// between the two: both are taken under one lock).
    pub fn watch(&self) -> Result<Watch> {
        let permit = Arc::clone(&self.watchers)
            .try_acquire_owned()
            .map_err(|_| Error::TooLarge(format!("{MAX_WATCHERS} watchers of the fleet already; try again later")))?;
        let mut fleet = self.lock();
        if fleet.is_none() {
            *fleet = Some(Fleet::new((self.read)()?));
        }
        let snapshot = fleet.as_ref().map(|f| f.runners().cloned().collect()).unwrap_or_default();
        Ok(Watch { snapshot, changes: self.tx.subscribe(), permit })
    }
}

/// The runners by id, as last sent.
#[derive(Default)]
pub struct Fleet {
    runners: BTreeMap<String, Runner>,
}

/// `r` with its last heartbeat to the half minute (each heartbeat is not
/// a change).
fn settled(r: &Runner) -> Runner {
    let last_seen =
        r.last_seen.map(|t| prost_types::Timestamp { seconds: t.seconds - t.seconds.rem_euclid(30), nanos: 0 });
    Runner { last_seen, ..r.clone() }
}

impl Fleet {
    /// A fleet of `runners` (the snapshot a watch starts with).
    pub fn new(runners: Vec<Runner>) -> Self {
        Self { runners: runners.into_iter().map(|r| (r.id.clone(), r)).collect() }
    }

    /// Every runner, by id.
    pub fn runners(&self) -> impl Iterator<Item = &Runner> {
        self.runners.values()
    }

    /// Moves to `now`, returning the events that lead there.
    pub fn update(&mut self, now: Vec<Runner>) -> Vec<(Kind, Runner)> {
        let mut events = Vec::new();
        let mut gone = std::mem::take(&mut self.runners);
        for r in now {
            match gone.remove(&r.id) {
                None => {
                    events.push((Kind::Registered, r.clone()));
                    if r.connected {
                        events.push((Kind::Connected, r.clone()));
                    }
                    if r.draining {
                        events.push((Kind::Draining, r.clone()));
                    }
                    if !r.paused.is_empty() {
                        events.push((Kind::Paused, r.clone()));
                    }
                }
                Some(old) => events.extend(changes(&old, &r).into_iter().map(|k| (k, r.clone()))),
            }
            self.runners.insert(r.id.clone(), r);
        }
        events.extend(gone.into_keys().map(|id| (Kind::Removed, Runner { id, ..Runner::default() })));
        events
    }
}

/// What changed from `old` to `new` (the same runner).
fn changes(old: &Runner, new: &Runner) -> Vec<Kind> {
    let mut kinds = Vec::new();
    let flip = |was: bool, is: bool, on: Kind, off: Kind| match (was, is) {
        (false, true) => Some(on),
        (true, false) => Some(off),
        _ => None,
    };
    kinds.extend(flip(old.connected, new.connected, Kind::Connected, Kind::Disconnected));
    kinds.extend(flip(old.draining, new.draining, Kind::Draining, Kind::Undrained));
    kinds.extend(flip(!old.paused.is_empty(), !new.paused.is_empty(), Kind::Paused, Kind::Resumed));
    let rest = |r: &Runner| Runner { connected: false, draining: false, paused: String::new(), ..settled(r) };
    // A new reason to pause is a change too.
    if rest(old) != rest(new) || (kinds.is_empty() && old.paused != new.paused) {
        kinds.push(Kind::Updated);
    }
    kinds
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;

    use super::*;

    fn runner(id: &str) -> Runner {
        Runner { id: id.into(), slots: 1, last_seen: Some(Timestamp { seconds: 1, nanos: 0 }), ..Runner::default() }
    }

    fn kinds(events: &[(Kind, Runner)]) -> Vec<(Kind, &str)> {
        events.iter().map(|(k, r)| (*k, r.id.as_str())).collect()
    }

    #[test]
    fn each_change_of_each_runner_is_one_event_and_heartbeats_are_none() {
        let mut fleet = Fleet::new(vec![runner("a"), Runner { connected: true, ..runner("b") }]);
        let beat = |r: Runner| Runner { last_seen: Some(Timestamp { seconds: 9, nanos: 0 }), ..r };
        let later = |r: Runner| Runner { last_seen: Some(Timestamp { seconds: 31, nanos: 0 }), ..r };
        assert!(fleet.update(vec![beat(runner("a")), Runner { connected: true, ..beat(runner("b")) }]).is_empty());
        let now = vec![
            Runner { connected: true, draining: true, ..runner("a") },
            Runner { connected: true, paused: "short of disk".into(), jobs: vec!["j".into()], ..runner("b") },
            Runner { connected: true, ..runner("c") },
        ];
        assert_eq!(
            kinds(&fleet.update(now)),
            [
                (Kind::Connected, "a"),
                (Kind::Draining, "a"),
                (Kind::Paused, "b"),
                (Kind::Updated, "b"),
                (Kind::Registered, "c"),
                (Kind::Connected, "c"),
            ]
        );
        let now = vec![Runner { connected: true, paused: "still short".into(), ..runner("b") }];
        assert_eq!(kinds(&fleet.update(now)), [(Kind::Updated, "b"), (Kind::Removed, "a"), (Kind::Removed, "c")]);
        assert_eq!(fleet.runners().count(), 1);
        // Heard from half a minute later: shown.
        let now = vec![later(Runner { connected: true, paused: "still short".into(), ..runner("b") })];
        assert_eq!(kinds(&fleet.update(now)), [(Kind::Updated, "b")]);
    }

    /// Watchers share one reading per change; a new one starts from the
    /// fleet as it is and misses nothing after.
    #[tokio::test]
    async fn watchers_share_the_readings_of_one_feed() {
        let fleet = Arc::new(Mutex::new(vec![runner("a")]));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (bump, changes) = watch::channel(0u64);
        let (f, n) = (Arc::clone(&fleet), Arc::clone(&reads));
        let read: Read = Box::new(move || {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(f.lock().unwrap().clone())
        });
        let feed = Feed::start(read, changes);
        let mut one = feed.watch().expect("watch");
        let mut two = feed.watch().expect("watch");
        assert_eq!(one.snapshot.len(), 1);
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 1, "the second watcher reads no fleet");
        fleet.lock().unwrap().push(Runner { connected: true, ..runner("b") });
        bump.send_modify(|v| *v += 1);
        for w in [&mut one, &mut two] {
            let batch = w.changes.recv().await.expect("a batch");
            assert_eq!(kinds(&batch), [(Kind::Registered, "b"), (Kind::Connected, "b")]);
        }
        assert_eq!(reads.load(std::sync::atomic::Ordering::SeqCst), 2, "one reading for both");
    }
}
