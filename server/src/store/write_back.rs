//! Write-back: commits land in memory and reach the backend in batches.
//!
//! A backend whose every commit is costly caps the engine — which commits
//! each state transition under its one lock — at that backend's commit
//! rate: PostgreSQL's commit is a durable round trip; on sled, a commit is
//! a write and an `fdatasync` of the store's log (`store::wal`). [`WriteBack`] takes that
//! cost off the transition: a commit is applied to memory at once (every
//! read sees it), and [`Kv::flush`] — the store's group commit, which every
//! transition that promises durability waits for — writes everything
//! committed since the last flush as **one** backend commit. A write is
//! durable once a flush that started after it returned has made the batch
//! durable — which on sled is when the store's log is synced, before the
//! flush has applied it to sled's trees ([`Kv::flush_then`]): nothing is
//! acknowledged before that, and the batch is read from memory until
//! applied.
//!
//! Two layers are held: `pending` (commits since the last flush began) and
//! `inflight` (the batch a flush is writing). Reads look in `pending`, then
//! `inflight`, then the backend; ranges merge the held entries (removals
//! included) into the backend's, from either end. A batch the backend
//! refuses goes back under the newer pending writes, for the next flush.
//! A write set is never split: a flush takes whole commits.
//!
//! Values read from the backend and values a flush wrote are kept in a
//! [`Cache`] ([`CACHE_BYTES`] for PostgreSQL; none for sled, whose page
//! cache holds them), so the engine's reads of records it just wrote or
//! read cost no round trip.
//!
//! Only one process may write through a `WriteBack` to a backend (what it
//! holds and caches, no other process sees): the server lock and the
//! replicas' lease make sure of that. Bounded: past [`HELD_BYTES`] held, a
//! commit flushes first — and is refused, not applied, when that fails; a
//! background flush every [`FLUSH_EVERY`] writes what nobody waits for.
//!
//! A range is a snapshot of what is held merged into the backend's pages
//! as they are read: like sled's iterators, not isolated from writes made
//! while it is read (readers that need contiguity check it: see
//! `store::logs`).

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use super::{
    T, TREE_NAMES,
    kv::{Entries, Entry, Kv, Op, crossed},
};
use crate::error::Result;

/// Bytes held in memory past which a commit writes them out first.
pub const HELD_BYTES: usize = 64 << 20;
/// Bytes of values kept in the read cache (about; two generations of half).
pub const CACHE_BYTES: usize = 64 << 20;
/// How often held writes that nobody waits for are flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Held writes per tree: a value, or `None` for a removal.
type Layer = Vec<BTreeMap<Vec<u8>, Option<Vec<u8>>>>;

fn empty_layer() -> Layer {
    vec![BTreeMap::new(); TREE_NAMES.len()]
}

#[derive(Default)]
struct Held {
    pending: Layer,
    pending_bytes: usize,
    inflight: Option<Arc<Layer>>,
    /// What the backend has, as far as it is known.
    cache: Cache,
    /// Flushes that ended: a value read from the backend before one ended
    /// may be older than what it wrote, and is not cached.
    flushes: u64,
}

/// Values (or absence) the backend is known to hold, by tree and key: two
/// generations, the older dropped whole when the younger fills its half of
/// `limit` bytes — an LRU's behaviour at a hash map's cost. A limit of 0
/// keeps nothing.
#[derive(Default)]
struct Cache {
    young: std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    old: std::collections::HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    young_bytes: usize,
    limit: usize,
}

impl Cache {
    fn get(&mut self, tree: T, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let k = (tree as u8, key.to_vec());
        if let Some(v) = self.young.get(&k) {
            return Some(v.clone());
        }
        let v = self.old.remove(&k)?;
        self.put(k, v.clone());
        Some(v)
    }

    fn put(&mut self, k: (u8, Vec<u8>), v: Option<Vec<u8>>) {
        if self.limit == 0 {
            return;
        }
        self.young_bytes += k.1.len() + v.as_ref().map_or(0, Vec::len) + 64;
        self.young.insert(k, v);
        if self.young_bytes > self.limit / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
    }
}

impl Held {
    /// What the held writes say of `key`: `Some(None)` removed, `None` not held.
    fn lookup(&self, tree: T, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let t = tree as usize;
        self.pending[t].get(key).or_else(|| self.inflight.as_ref().and_then(|l| l[t].get(key))).cloned()
    }

    /// The held entries of `tree` in the range, newest layer winning.
    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> VecDeque<(Vec<u8>, Option<Vec<u8>>)> {
        let t = tree as usize;
        let mut merged: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(inflight) = &self.inflight {
            merged.extend(inflight[t].range::<[u8], _>((lo, hi)).map(|(k, v)| (k.as_slice(), v)));
        }
        merged.extend(self.pending[t].range::<[u8], _>((lo, hi)).map(|(k, v)| (k.as_slice(), v)));
        merged.into_iter().map(|(k, v)| (k.to_vec(), v.clone())).collect()
    }
}

/// See the module docs.
pub struct WriteBack<K> {
    inner: K,
    held: Mutex<Held>,
    /// One flush at a time.
    flushing: Mutex<()>,
    /// One insert-if-absent at a time (it reads the backend between looks
    /// at what is held).
    inserting: Mutex<()>,
}

impl<K: Kv + 'static> WriteBack<K> {
    /// Holds writes to `inner`, with a read cache of [`CACHE_BYTES`], and
    /// flushes what nobody waits for every [`FLUSH_EVERY`] on a thread of
    /// its own (gone with the last handle).
    pub fn new(inner: K) -> Arc<Self> {
        Self::with_cache(inner, CACHE_BYTES)
    }

    /// [`WriteBack::new`] with a read cache of `cache_bytes` (0: none, for
    /// a backend whose reads are in memory already, as sled's cached pages
    /// are).
    pub fn with_cache(inner: K, cache_bytes: usize) -> Arc<Self> {
        let cache = Cache { limit: cache_bytes, ..Cache::default() };
        let wb = Arc::new(Self {
            inner,
            held: Mutex::new(Held { pending: empty_layer(), cache, ..Held::default() }),
            flushing: Mutex::new(()),
            inserting: Mutex::new(()),
        });
        let weak: Weak<Self> = Arc::downgrade(&wb);
        let spawned = std::thread::Builder::new().name("viaduct-write-back".into()).spawn(move || {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(wb) = weak.upgrade() else { return };
                if wb.lock().pending_bytes > 0
                    && let Err(e) = wb.flush()
                {
                    if !wb.inner.flush_retries() {
                        tracing::error!(error = %e, "writing held writes to the database failed for good; exiting so that a restart recovers from disk");
                        std::process::exit(70);
                    }
                    tracing::warn!(error = %e, "writing held writes to the database failed; retrying");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the write-back thread: held writes are written only when waited for");
        }
        wb
    }
}

impl<K> WriteBack<K> {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<K: Kv> Kv for WriteBack<K> {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let flushes = {
            let mut h = self.lock();
            if let Some(held) = h.lookup(tree, key) {
                return Ok(held);
            }
            if let Some(known) = h.cache.get(tree, key) {
                return Ok(known);
            }
            h.flushes
        };
        // Nothing leaves the held layers before it is in the backend.
        let v = self.inner.get(tree, key)?;
        let mut h = self.lock();
        // Unless a write of the key was held or flushed meanwhile, this is
        // what the backend has.
        if h.flushes == flushes && h.lookup(tree, key).is_none() {
            h.cache.put((tree as u8, key.to_vec()), v.clone());
        }
        Ok(v)
    }

    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Entries<'_> {
        if crossed(lo, hi) {
            return Box::new(std::iter::empty());
        }
        let held = self.lock().range(tree, lo, hi);
        if held.is_empty() {
            return self.inner.range(tree, lo, hi);
        }
        // Fused: a backend's iterator that ran out may find entries a
        // flush wrote since — entries `held` has already given.
        let base = Box::new(self.inner.range(tree, lo, hi).fuse());
        Box::new(Merged { base, base_front: None, base_back: None, held })
    }

    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> Result<bool> {
        let _one = self.inserting.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let flushes = self.lock().flushes;
            let absent = self.get(tree, key)?.is_none();
            let mut h = self.lock();
            // A commit may have written the key while the backend was read
            // (held, or already flushed: then read again).
            if !absent || h.lookup(tree, key).is_some_and(|v| v.is_some()) {
                return Ok(false);
            }
            if h.flushes != flushes {
                continue;
            }
            h.pending_bytes += key.len() + value.len();
            h.pending[tree as usize].insert(key.to_vec(), Some(value.to_vec()));
            return Ok(true);
        }
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        // Past the bound, what is held is written first: a backend that
        // cannot take it refuses this commit, which is then not applied.
        if self.lock().pending_bytes > HELD_BYTES {
            self.flush()?;
        }
        let mut h = self.lock();
        for (t, k, v) in ops {
            h.pending_bytes += k.len() + v.as_ref().map_or(0, Vec::len);
            h.pending[*t as usize].insert(k.clone(), v.clone());
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.flush_then(&mut || ())
    }

    fn flush_then(&self, durable: &mut dyn FnMut()) -> Result<()> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = {
            let mut h = self.lock();
            if h.pending_bytes == 0 && h.pending.iter().all(BTreeMap::is_empty) {
                drop(h);
                return self.inner.flush_then(durable);
            }
            let batch = Arc::new(std::mem::replace(&mut h.pending, empty_layer()));
            h.pending_bytes = 0;
            h.inflight = Some(Arc::clone(&batch));
            batch
        };
        let ops: Vec<Op> =
            T::ALL.iter().flat_map(|t| batch[*t as usize].iter().map(|(k, v)| (*t, k.clone(), v.clone()))).collect();
        // The batch stays `inflight` (read from here) until the backend
        // has applied it, which may be after it is durable.
        let written = self.inner.commit_then(&ops, durable);
        let mut h = self.lock();
        let h = &mut *h;
        h.inflight = None;
        h.flushes += 1;
        for (t, k, v) in ops {
            if written.is_ok() {
                // What the backend has now.
                h.cache.put((t as u8, k), v);
            } else if let std::collections::btree_map::Entry::Vacant(e) = h.pending[t as usize].entry(k) {
                // Back under the newer writes, for the next flush.
                h.pending_bytes += e.key().len() + v.as_ref().map_or(0, Vec::len);
                e.insert(v);
            }
        }
        written
    }

    fn generate_id(&self) -> Result<u64> {
        self.inner.generate_id()
    }

    fn flush_retries(&self) -> bool {
        self.inner.flush_retries()
    }
}

/// The backend's entries of a range with the held ones merged in, from
/// either end: a held value replaces the backend's, a held removal hides it.
struct Merged<'a> {
    base: Entries<'a>,
    /// The backend's next entry from the front, read ahead.
    base_front: Option<Entry>,
    /// The backend's next entry from the back, read ahead.
    base_back: Option<Entry>,
    held: VecDeque<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Merged<'_> {
    fn fill_front(&mut self) -> Result<()> {
        if self.base_front.is_none() {
            self.base_front = match self.base.next() {
                Some(e) => Some(e?),
                // What the back read ahead is all the backend has left.
                None => self.base_back.take(),
            };
        }
        Ok(())
    }

    fn fill_back(&mut self) -> Result<()> {
        if self.base_back.is_none() {
            self.base_back = match self.base.next_back() {
                Some(e) => Some(e?),
                None => self.base_front.take(),
            };
        }
        Ok(())
    }
}

impl Iterator for Merged<'_> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Err(e) = self.fill_front() {
                return Some(Err(e));
            }
            let held_first = match (&self.base_front, self.held.front()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(b), Some(h)) => h.0 <= b.0,
            };
            if !held_first {
                return self.base_front.take().map(Ok);
            }
            let (k, v) = self.held.pop_front()?;
            if self.base_front.as_ref().is_some_and(|b| b.0 == k) {
                self.base_front = None;
            }
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

impl DoubleEndedIterator for Merged<'_> {
    fn next_back(&mut self) -> Option<Result<Entry>> {
        loop {
            if let Err(e) = self.fill_back() {
                return Some(Err(e));
            }
            let held_last = match (&self.base_back, self.held.back()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(b), Some(h)) => h.0 >= b.0,
            };
            if !held_last {
                return self.base_back.take().map(Ok);
            }
            let (k, v) = self.held.pop_back()?;
            if self.base_back.as_ref().is_some_and(|b| b.0 == k) {
                self.base_back = None;
            }
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}
