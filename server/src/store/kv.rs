//! The storage backend: ordered trees of byte keys and values, behind the
//! small [`Kv`] trait — the only place that names a database. [`Sled`] is
//! the default (embedded, on disk); [`Memory`] serves tests. Every backend
//! passes the one [`conformance`] suite.
//!
//! What a backend must give: reads of single keys and of key ranges in
//! both directions, a write set applied atomically across trees, an
//! insert that happens only when the key is absent, a durable flush (after
//! it returns, every write before it survives a crash), and ids that only
//! grow, across restarts.

use std::{
    collections::{BTreeMap, HashSet},
    ops::Bound,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{T, TREE_NAMES};
use crate::error::{Error, Result};

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries of a range in key order (`next_back` for the reverse).
pub type Entries<'a> = Box<dyn DoubleEndedIterator<Item = Result<Entry>> + 'a>;

/// One write of a write set: a value to store, or `None` to remove the key.
pub type Op = (T, Vec<u8>, Option<Vec<u8>>);

/// A storage backend.
pub trait Kv: Send + Sync {
    /// The value of `key` in `tree`.
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The entries of `tree` with keys between `lo` and `hi`.
    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Entries<'_>;
    /// Stores `value` under `key` unless the key exists; whether it did.
    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> Result<bool>;
    /// Applies every write, atomically: all of them or none.
    fn commit(&self, ops: &[Op]) -> Result<()>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<()>;
    /// [`Kv::commit`] and [`Kv::flush`] of `ops`, calling `durable` once
    /// they are durable — which a backend may do before it applies them,
    /// so that whoever waits for durability is not kept waiting for that:
    /// until this returns, reads must not be served through this backend
    /// for the keys of `ops` (`WriteBack` serves them from memory).
    /// `durable` is called at most once, and always before `Ok`; the
    /// backend may hold its own locks while it runs.
    fn commit_then(&self, ops: &[Op], durable: &mut dyn FnMut()) -> Result<()> {
        self.commit(ops)?;
        self.flush()?;
        durable();
        Ok(())
    }
    /// [`Kv::flush`], calling `durable` once every write so far is durable
    /// (as [`Kv::commit_then`]: perhaps before they are all applied).
    fn flush_then(&self, durable: &mut dyn FnMut()) -> Result<()> {
        self.flush()?;
        durable();
        Ok(())
    }
    /// A fresh id, greater than every id given before (also before a
    /// restart).
    fn generate_id(&self) -> Result<u64>;

    /// Whether a flush that failed may succeed if tried again (a database
    /// server that restarts). When not (sled: its I/O errors are
    /// permanent), the store cannot go on: what it holds would never be
    /// durable.
    fn flush_retries(&self) -> bool {
        false
    }
}

/// The first key after every key that starts with `prefix` (`None`: there
/// is none, the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Whether a range's bounds cross (it is empty: sled answers so, and
/// `BTreeMap::range` would panic).
pub fn crossed(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Excluded(a), Bound::Excluded(b)) => a >= b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a > b,
        _ => false,
    }
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// sled: the embedded database on disk, behind the store's own log
/// ([`super::wal`]): a write set is durable once appended there, and sled
/// writes its trees out on its own. A commit is whole or absent across a
/// crash; concurrent readers of a bare `Sled` may see it half applied
/// (the store reads it through [`super::write_back::WriteBack`], which
/// serves a batch from memory until it is applied).
pub struct Sled {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// Every write set goes there first, in commit order (the lock orders
    /// them: the log's order is the trees' order).
    log: std::sync::Mutex<Logged>,
    /// sled's directory (its files are synced at a checkpoint).
    dir: std::path::PathBuf,
}

/// Bytes of sled's page cache unless told otherwise (`--store-cache`).
pub const DEFAULT_CACHE: u64 = 64 << 20;

impl Sled {
    /// Opens (or creates) the database under `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE)
    }

    /// [`Sled::open`] with `cache` bytes of page cache.
    pub fn open_with_cache(dir: &std::path::Path, cache: u64) -> Result<Self> {
        super::compact::recover(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache)
            // Background flush as a safety net; durability promises use
            // explicit flushes (the store's group commit).
            .flush_every_ms(Some(200))
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(storage)?;
        let trees = TREE_NAMES.iter().map(|n| db.open_tree(n)).collect::<sled::Result<Vec<_>>>().map_err(storage)?;
        // Only now, under sled's lock: no other process has the log open.
        let (wal, unsettled) = super::wal::Wal::open(dir)?;
        let log = std::sync::Mutex::new(Logged { wal, checkpoint: None, synced_blobs: HashSet::new(), failed: None });
        let kv = Self { db, trees, log, dir: dir.to_path_buf() };
        // An empty log (a new store, or none written since its files were
        // started again) has nothing to replay nor to drop: it goes on as
        // it is, and the first switch's checkpoint syncs every blob file.
        if !unsettled.is_empty() {
            // Written before the last stop or crash: each whole (see
            // `wal`), in order.
            for ops in &unsettled {
                apply(&kv.trees, ops)?;
            }
            tracing::info!(write_sets = unsettled.len(), "replayed the store's log into the database");
            // Every blob file: which of them sled's last run synced is not known.
            let mut log = kv.log();
            log.synced_blobs = checkpoint(&kv.db, &kv.dir, HashSet::new())?;
            log.wal.restart()?;
        }
        Ok(kv)
    }

    fn tree(&self, t: T) -> &sled::Tree {
        &self.trees[t as usize]
    }

    /// The database itself (compaction copies it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Logs `ops`, calls `durable`, and applies them, the log held. When
    /// the log's file is full, the log goes on in its other file and the
    /// full one is checkpointed on a thread of its own — waiting first for
    /// the checkpoint before, which the other file's reuse needs.
    fn commit_logged(&self, log: &mut Logged, ops: &[Op], durable: &mut dyn FnMut()) -> Result<()> {
        if log.wal.is_full() {
            log.settle()?;
            log.wal.switch()?;
            let (db, dir, synced) = (self.db.clone(), self.dir.clone(), std::mem::take(&mut log.synced_blobs));
            let spawned = std::thread::Builder::new()
                .name("viaduct-checkpoint".into())
                .spawn(move || checkpoint(&db, &dir, synced));
            match spawned {
                Ok(handle) => log.checkpoint = Some(handle),
                // No thread: checkpointed here (every blob: the set went
                // with the closure), the commit waiting.
                Err(_) => log.checked(Some(checkpoint(&self.db, &self.dir, HashSet::new())))?,
            }
        }
        log.wal.append(ops)?;
        // A crash from here on replays them: durable before they are in
        // the trees (whose readers, through `WriteBack`, do not look there
        // for them until this returns).
        durable();
        apply(&self.trees, ops)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Logged> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Sled {
    fn drop(&mut self) {
        // A checkpoint under way holds the database (and its lock).
        let _ = self.log().settle();
    }
}

/// The log, and the checkpoint of its other file while one runs.
struct Logged {
    wal: super::wal::Wal,
    checkpoint: Option<std::thread::JoinHandle<Result<HashSet<u64>>>>,
    /// sled's blob files (named by the LSN they were written at) that a
    /// finished checkpoint synced.
    synced_blobs: HashSet<u64>,
    /// Why a checkpoint failed: the log can then never drop its records
    /// again, so every later commit is refused with it (the store stops).
    failed: Option<String>,
}

impl Logged {
    /// Waits for the checkpoint under way, if any. Its failure is kept and
    /// returned from then on: the file it was for must never be reused.
    fn settle(&mut self) -> Result<()> {
        let done = self.checkpoint.take().map(|handle| {
            handle.join().unwrap_or_else(|_| Err(Error::Internal("the checkpoint of the store's log panicked".into())))
        });
        self.checked(done)
    }

    /// A checkpoint's outcome (`None`: none ran), kept when it failed; the
    /// first failure kept otherwise.
    fn checked(&mut self, done: Option<Result<HashSet<u64>>>) -> Result<()> {
        if let Some(why) = &self.failed {
            return Err(Error::Storage(why.clone()));
        }
        match done {
            None => Ok(()),
            Some(Ok(synced)) => {
                self.synced_blobs = synced;
                Ok(())
            }
            Some(Err(e)) => {
                let why = format!("a checkpoint of the store's log failed: {e}");
                tracing::error!("{why}");
                self.failed = Some(why.clone());
                Err(Error::Storage(why))
            }
        }
    }
}

/// Makes everything applied to sled's trees so far durable in sled's own
/// files (what a checkpoint of the log needs before dropping records):
/// sled flushed — which writes its log to the device without flushing the
/// device's cache or its file's new length — then its files synced: its
/// own (`db`, `conf`, snapshots), and the files it writes large items to
/// (`blobs/`, never synced by sled) but those in `synced_blobs`. Every blob
/// of the writes applied before it started exists once sled's flush
/// returned (a blob is written before its reservation completes); blobs of
/// later writes may be listed or not, and are synced by the next one if
/// not. Returns the blobs synced now or before that still exist.
fn checkpoint(db: &sled::Db, dir: &std::path::Path, synced_blobs: HashSet<u64>) -> Result<HashSet<u64>> {
    db.flush().map_err(storage)?;
    let sync = super::compact::sync_if_present;
    let listed = |dir: &std::path::Path| match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()).collect::<Vec<_>>()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(storage(format!("reading {}: {e}", dir.display()))),
    };
    let blobs = dir.join("blobs");
    let mut synced = HashSet::new();
    for entry in listed(&blobs)? {
        let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
        if !synced_blobs.contains(&lsn) {
            sync(&entry.path())?;
        }
        synced.insert(lsn);
    }
    sync(&blobs)?;
    for entry in listed(dir)? {
        let name = entry.file_name();
        let ours = super::wal::FILES.iter().any(|f| name == *f);
        if !ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            sync(&entry.path())?;
        }
    }
    sync(dir)?;
    Ok(synced)
}

/// Applies a logged write set to sled's trees. Not a sled transaction: the
/// log makes it whole across a crash, and the store's readers see a write
/// set only once it is applied (`WriteBack` holds it until then).
fn apply(trees: &[sled::Tree], ops: &[Op]) -> Result<()> {
    for (t, k, v) in ops {
        let tree = &trees[*t as usize];
        match v {
            Some(v) => tree.insert(k.as_slice(), v.as_slice()).map(drop),
            None => tree.remove(k.as_slice()).map(drop),
        }
        .map_err(storage)?;
    }
    Ok(())
}

impl Kv for Sled {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(tree).get(key).map_err(storage)?.map(|v| v.to_vec()))
    }

    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Entries<'_> {
        Box::new(
            self.tree(tree)
                .range::<&[u8], _>((lo, hi))
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(storage)),
        )
    }

    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> Result<bool> {
        // Under the log's lock: no commit comes between the look and the write.
        let mut log = self.log();
        if self.tree(tree).contains_key(key).map_err(storage)? {
            return Ok(false);
        }
        self.commit_logged(&mut log, &[(tree, key.to_vec(), Some(value.to_vec()))], &mut || ())?;
        Ok(true)
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        self.commit_then(ops, &mut || ())
    }

    fn flush(&self) -> Result<()> {
        // Every commit is durable when it returns (its log record synced).
        Ok(())
    }

    fn commit_then(&self, ops: &[Op], durable: &mut dyn FnMut()) -> Result<()> {
        if ops.is_empty() {
            durable();
            return Ok(());
        }
        // Durable once logged and synced; then applied.
        let mut log = self.log();
        self.commit_logged(&mut log, ops, durable)
    }

    fn generate_id(&self) -> Result<u64> {
        self.db.generate_id().map_err(storage)
    }
}

/// In memory: for tests (nothing survives the process).
#[derive(Default)]
pub struct Memory {
    trees: RwLock<Vec<BTreeMap<Vec<u8>, Vec<u8>>>>,
    ids: AtomicU64,
}

impl Memory {
    /// An empty store.
    pub fn new() -> Self {
        Self { trees: RwLock::new(vec![BTreeMap::new(); TREE_NAMES.len()]), ids: AtomicU64::new(0) }
    }
}

impl Kv for Memory {
    fn get(&self, tree: T, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        Ok(trees[tree as usize].get(key).cloned())
    }

    fn range(&self, tree: T, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Entries<'_> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        let found: Vec<Result<Entry>> = if crossed(lo, hi) {
            Vec::new()
        } else {
            trees[tree as usize].range::<[u8], _>((lo, hi)).map(|(k, v)| Ok((k.clone(), v.clone()))).collect()
        };
        Box::new(found.into_iter())
    }

    fn insert_if_absent(&self, tree: T, key: &[u8], value: &[u8]) -> Result<bool> {
        let mut trees = self.trees.write().unwrap_or_else(|p| p.into_inner());
        let t = &mut trees[tree as usize];
        if t.contains_key(key) {
            return Ok(false);
        }
        t.insert(key.to_vec(), value.to_vec());
        Ok(true)
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        let mut trees = self.trees.write().unwrap_or_else(|p| p.into_inner());
        for (t, k, v) in ops {
            match v {
                Some(v) => trees[*t as usize].insert(k.clone(), v.clone()),
                None => trees[*t as usize].remove(k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn generate_id(&self) -> Result<u64> {
        Ok(self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

/// The behaviour every backend must have. Each backend's tests call
/// [`conformance::run`] on a fresh instance.
#[cfg(test)]
pub mod conformance {
    use std::ops::Bound::{Excluded, Included, Unbounded};

    use super::{Kv, T, prefix_end};

    fn keys(it: super::Entries<'_>) -> Vec<Vec<u8>> {
        it.map(|r| r.expect("read").0).collect()
    }

    /// Runs every check on `kv`, which must be empty.
    pub fn run(kv: &dyn Kv) {
        // Absent keys, writes across trees, removal.
        assert_eq!(kv.get(T::Runs, b"a").unwrap(), None);
        let ops = vec![
            (T::Runs, b"a".to_vec(), Some(b"1".to_vec())),
            (T::Runs, b"b".to_vec(), Some(b"2".to_vec())),
            (T::Jobs, b"a".to_vec(), Some(b"j".to_vec())),
            (T::Runs, b"c".to_vec(), Some(b"3".to_vec())),
            (T::Runs, b"c".to_vec(), None),
        ];
        kv.commit(&ops).unwrap();
        assert_eq!(kv.get(T::Runs, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(kv.get(T::Jobs, b"a").unwrap().as_deref(), Some(&b"j"[..]), "trees are separate");
        assert_eq!(kv.get(T::Runs, b"c").unwrap(), None, "a later op in the set wins");
        kv.commit(&[]).unwrap();

        // Ranges in both directions, with every kind of bound.
        let mut ops = Vec::new();
        for k in [&b"ab"[..], b"abc", b"abd", b"b", b"\xff", b"\xff\xff"] {
            ops.push((T::Meta, k.to_vec(), Some(k.to_vec())));
        }
        kv.commit(&ops).unwrap();
        let all = keys(kv.range(T::Meta, Unbounded, Unbounded));
        assert_eq!(all, [&b"ab"[..], b"abc", b"abd", b"b", b"\xff", b"\xff\xff"]);
        let back: Vec<Vec<u8>> = kv.range(T::Meta, Unbounded, Unbounded).rev().map(|r| r.unwrap().0).collect();
        assert_eq!(back.first().map(Vec::as_slice), Some(&b"\xff\xff"[..]));
        assert_eq!(keys(kv.range(T::Meta, Included(&b"abc"[..]), Excluded(&b"b"[..]))), [&b"abc"[..], b"abd"]);
        assert_eq!(keys(kv.range(T::Meta, Excluded(&b"abc"[..]), Included(&b"b"[..]))), [&b"abd"[..], b"b"]);
        assert!(keys(kv.range(T::Meta, Included(&b"c"[..]), Excluded(&b"a"[..]))).is_empty(), "crossed bounds");
        let mut it = kv.range(T::Meta, Included(&b"ab"[..]), Unbounded);
        assert_eq!(it.next_back().unwrap().unwrap().0, b"\xff\xff");
        assert_eq!(it.next().unwrap().unwrap().0, b"ab");
        // Prefix scans through `prefix_end`, including at the top of the key space.
        let end = prefix_end(b"ab").unwrap();
        assert_eq!(
            keys(kv.range(T::Meta, Included(&b"ab"[..]), Excluded(end.as_slice()))),
            [&b"ab"[..], b"abc", b"abd"]
        );
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert!(keys(kv.range(T::Jobs, Included(&b"z"[..]), Unbounded)).is_empty());
        // Values come back as written.
        let v = kv.range(T::Meta, Included(&b"b"[..]), Included(&b"b"[..])).next().unwrap().unwrap();
        assert_eq!(v, (b"b".to_vec(), b"b".to_vec()));

        // Insert only when absent.
        assert!(kv.insert_if_absent(T::Caches, b"k", b"first").unwrap());
        assert!(!kv.insert_if_absent(T::Caches, b"k", b"second").unwrap());
        assert_eq!(kv.get(T::Caches, b"k").unwrap().as_deref(), Some(&b"first"[..]));

        // Ids only grow; flush works.
        let a = kv.generate_id().unwrap();
        let b = kv.generate_id().unwrap();
        assert!(b > a);
        kv.flush().unwrap();
        // Durability is told once, and before the call returns.
        let mut told = 0;
        kv.commit_then(&[(T::Meta, b"told".to_vec(), Some(b"1".to_vec()))], &mut || told += 1).unwrap();
        assert_eq!(told, 1);
        assert_eq!(kv.get(T::Meta, b"told").unwrap().as_deref(), Some(&b"1"[..]));
        kv.commit_then(&[], &mut || told += 1).unwrap();
        kv.flush_then(&mut || told += 1).unwrap();
        assert_eq!(told, 3);

        // Large values and many keys.
        let big = vec![7u8; 1 << 20];
        let ops: Vec<_> = (0u32..2000).map(|i| (T::Logs, i.to_be_bytes().to_vec(), Some(big[..64].to_vec()))).collect();
        kv.commit(&ops).unwrap();
        kv.commit(&[(T::Logs, b"big".to_vec(), Some(big.clone()))]).unwrap();
        assert_eq!(kv.get(T::Logs, b"big").unwrap().map(|v| v.len()), Some(1 << 20));
        assert_eq!(kv.range(T::Logs, Unbounded, Excluded(&b"big"[..])).count(), 2000);
    }

    /// Through a [`WriteBack`](crate::store::write_back::WriteBack): what
    /// is held in memory and what is in the backend read as one, from
    /// either end, before and after a flush.
    pub fn run_held(kv: &dyn Kv) {
        use std::ops::Bound;
        let key = |i: u32| i.to_be_bytes().to_vec();
        // In the backend: 0..300, value 1.
        kv.commit(&(0..300).map(|i| (T::Meta, key(i), Some(vec![1]))).collect::<Vec<_>>()).unwrap();
        kv.flush().unwrap();
        // Held: every third key removed, every fifth rewritten (2), 300..320 added (3).
        let mut ops: Vec<super::Op> = (0..300).step_by(3).map(|i| (T::Meta, key(i), None)).collect();
        ops.extend((0..300).step_by(5).map(|i| (T::Meta, key(i), Some(vec![2]))));
        ops.extend((300..320).map(|i| (T::Meta, key(i), Some(vec![3]))));
        kv.commit(&ops).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..320)
            .filter_map(|i| match i {
                300.. => Some((key(i), vec![3])),
                _ if i % 5 == 0 => Some((key(i), vec![2])),
                _ if i % 3 == 0 => None,
                _ => Some((key(i), vec![1])),
            })
            .collect();
        let check = |when: &str| {
            let forward: Vec<_> = kv.range(T::Meta, Bound::Unbounded, Bound::Unbounded).map(Result::unwrap).collect();
            assert_eq!(forward, expected, "{when}: forward");
            let mut backward: Vec<_> =
                kv.range(T::Meta, Bound::Unbounded, Bound::Unbounded).rev().map(Result::unwrap).collect();
            backward.reverse();
            assert_eq!(backward, expected, "{when}: backward");
            // Alternate ends over a sub-range: every entry once, in order.
            let (lo, hi) = (key(7), key(311));
            let mut it = kv.range(T::Meta, Bound::Included(&lo[..]), Bound::Excluded(&hi[..]));
            let (mut front, mut back) = (Vec::new(), Vec::new());
            loop {
                match (it.next(), it.next_back()) {
                    (None, None) => break,
                    (f, b) => {
                        front.extend(f.map(Result::unwrap));
                        back.extend(b.map(Result::unwrap));
                    }
                }
            }
            back.reverse();
            front.extend(back);
            let sub: Vec<_> = expected.iter().filter(|(k, _)| *k >= lo && *k < hi).cloned().collect();
            assert_eq!(front, sub, "{when}: both ends");
            assert_eq!(kv.get(T::Meta, &key(3)).unwrap(), None, "{when}: removed");
            assert_eq!(kv.get(T::Meta, &key(10)).unwrap(), Some(vec![2]), "{when}: rewritten");
            assert_eq!(kv.get(T::Meta, &key(310)).unwrap(), Some(vec![3]), "{when}: added");
        };
        check("held");
        // Insert-if-absent sees both: absent where removed, present where only the backend has it.
        assert!(kv.insert_if_absent(T::Meta, &key(6), &[4]).unwrap());
        assert!(!kv.insert_if_absent(T::Meta, &key(1), &[4]).unwrap());
        kv.commit(&[(T::Meta, key(6), None)]).unwrap();
        kv.flush().unwrap();
        check("flushed");
        // A flush while a range is read, after the backend's part of it
        // ran out: what the flush wrote comes once (it was held), not again
        // from a backend iterator that finds it there now.
        kv.commit(&[(T::Meta, key(1000), Some(vec![5])), (T::Meta, key(1001), Some(vec![5]))]).unwrap();
        let mut it = kv.range(T::Meta, Bound::Included(&key(999)[..]), Bound::Unbounded);
        assert_eq!(it.next().map(Result::unwrap), Some((key(1000), vec![5])));
        kv.flush().unwrap();
        let rest: Vec<_> = it.map(Result::unwrap).collect();
        assert_eq!(rest, vec![(key(1001), vec![5])], "each entry once across a flush");
    }

    #[test]
    fn trees_are_listed_in_order() {
        for (i, t) in T::ALL.iter().enumerate() {
            assert_eq!(*t as usize, i);
        }
    }

    #[test]
    fn memory_through_write_back_conforms() {
        run(crate::store::write_back::WriteBack::new(super::Memory::new()).as_ref());
        run_held(crate::store::write_back::WriteBack::new(super::Memory::new()).as_ref());
    }

    #[test]
    fn sled_conforms() {
        let dir = tempfile::tempdir().unwrap();
        run(&super::Sled::open(dir.path()).unwrap());
    }

    /// As the server opens it: through write-back, with no read cache.
    #[test]
    fn sled_through_write_back_conforms() {
        for held in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let kv = crate::store::write_back::WriteBack::with_cache(super::Sled::open(dir.path()).unwrap(), 0);
            if held { run_held(kv.as_ref()) } else { run(kv.as_ref()) }
        }
    }

    /// Through write-back, a batch told durable before sled applied it
    /// (see `sled_reports_a_commit_durable_once_logged_before_applying_it`)
    /// is read meanwhile, by key and in ranges, from memory.
    #[test]
    fn write_back_serves_a_batch_told_durable_before_sled_applied_it() {
        use std::ops::Bound::Unbounded;
        let dir = tempfile::tempdir().unwrap();
        let wb = crate::store::write_back::WriteBack::with_cache(super::Sled::open(dir.path()).unwrap(), 0);
        let put = |k: &[u8], v: &[u8]| (T::Runs, k.to_vec(), Some(v.to_vec()));
        wb.commit(&[put(b"r", b"1")]).unwrap();
        wb.flush().unwrap();
        wb.commit(&[put(b"r", b"2"), put(b"s", b"3")]).unwrap();
        let mut seen = None;
        wb.flush_then(&mut || {
            let entries: Vec<_> = wb.range(T::Runs, Unbounded, Unbounded).map(|e| e.unwrap()).collect();
            seen = Some((wb.get(T::Runs, b"r").unwrap(), entries));
        })
        .unwrap();
        let entries = vec![(b"r".to_vec(), b"2".to_vec()), (b"s".to_vec(), b"3".to_vec())];
        assert_eq!(seen, Some((Some(b"2".to_vec()), entries)));
    }

    #[test]
    fn memory_conforms() {
        run(&super::Memory::new());
    }

    /// A fresh database on the test PostgreSQL server
    /// (`VIADUCT_TEST_POSTGRES`, started by `cargo xtask test`); `None`
    /// (after saying why) where there is none.
    fn fresh_postgres(name: &str) -> Option<String> {
        let Ok(base) = std::env::var("VIADUCT_TEST_POSTGRES") else {
            assert!(
                std::env::var_os("VIADUCT_FIXTURES_REQUIRED").is_none(),
                "VIADUCT_TEST_POSTGRES is not set: run the tests with `cargo xtask test`"
            );
            eprintln!("skipped: no PostgreSQL (VIADUCT_TEST_POSTGRES; `cargo xtask test` starts one)");
            return None;
        };
        let db = format!("kv_{name}_{}", std::process::id());
        assert!(db.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{db}");
        let mut admin = crate::store::postgres::client(&format!("{base}/postgres"), None).expect("connect");
        // One statement each: neither runs inside a transaction block.
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\"")).expect("drop");
        admin.batch_execute(&format!("CREATE DATABASE \"{db}\"")).expect("create");
        Some(format!("{base}/{db}"))
    }

    #[test]
    fn postgres_conforms() {
        let Some(url) = fresh_postgres("conforms") else { return };
        run(&crate::store::postgres::Postgres::open(&url, None, None).expect("open"));
        let Some(url) = fresh_postgres("conforms_held") else { return };
        let held =
            crate::store::write_back::WriteBack::new(crate::store::postgres::Postgres::open(&url, None, None).unwrap());
        run(held.as_ref());
        // What a flush wrote, a fresh connection reads.
        let again = crate::store::postgres::Postgres::open(&url, None, None).unwrap();
        assert_eq!(again.get(T::Runs, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        let Some(url) = fresh_postgres("held") else { return };
        run_held(
            crate::store::write_back::WriteBack::new(crate::store::postgres::Postgres::open(&url, None, None).unwrap())
                .as_ref(),
        );
    }

    /// Ranges longer than a page read the same from both ends, also when
    /// the two ends meet in the middle.
    #[test]
    fn postgres_pages_long_ranges_from_both_ends() {
        use std::ops::Bound;
        let Some(url) = fresh_postgres("pages") else { return };
        let kv = crate::store::postgres::Postgres::open(&url, None, None).expect("open");
        let ops: Vec<super::Op> = (0u32..1500).map(|i| (T::Meta, i.to_be_bytes().to_vec(), Some(vec![1]))).collect();
        kv.commit(&ops).unwrap();
        let all = |it: super::Entries<'_>| it.map(|e| e.unwrap().0).collect::<Vec<_>>();
        let forward = all(kv.range(T::Meta, Bound::Unbounded, Bound::Unbounded));
        assert_eq!(forward.len(), 1500);
        let mut backward = all(Box::new(kv.range(T::Meta, Bound::Unbounded, Bound::Unbounded).rev()));
        backward.reverse();
        assert_eq!(forward, backward);
        // Alternate ends: every key once, in order from each end.
        let mut it =
            kv.range(T::Meta, Bound::Included(&5u32.to_be_bytes()[..]), Bound::Excluded(&1400u32.to_be_bytes()[..]));
        let (mut front, mut back) = (Vec::new(), Vec::new());
        loop {
            match (it.next(), it.next_back()) {
                (None, None) => break,
                (f, b) => {
                    front.extend(f.map(|e| e.unwrap().0));
                    back.extend(b.map(|e| e.unwrap().0));
                }
            }
        }
        back.reverse();
        front.extend(back);
        let expected: Vec<Vec<u8>> = (5u32..1400).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(front, expected);
    }

    /// A second server on the same database finds the schema migrated and
    /// the ids still growing; a database from a newer server is refused.
    #[test]
    fn postgres_migrates_once_and_refuses_a_newer_schema() {
        let Some(url) = fresh_postgres("migrate") else { return };
        let first = crate::store::postgres::Postgres::open(&url, None, None).expect("open");
        let id = first.generate_id().unwrap();
        let second = crate::store::postgres::Postgres::open(&url, None, None).expect("open again");
        assert!(second.generate_id().unwrap() > id);
        let mut c = crate::store::postgres::client(&url, None).unwrap();
        c.execute("INSERT INTO viaduct_migrations (version, name) VALUES (9999, 'from the future')", &[]).unwrap();
        let err = crate::store::postgres::Postgres::open(&url, None, None).err().expect("refused").to_string();
        assert!(err.contains("newer than this server knows"), "{err}");
    }

    /// TLS to the test PostgreSQL server over TCP (`VIADUCT_TEST_POSTGRES_TLS`,
    /// its certificate for `localhost` and `127.0.0.1` from the CA in
    /// `VIADUCT_TEST_POSTGRES_CA`; `cargo xtask test` starts it with no
    /// plaintext TCP): a fresh database there, as a URL without parameters,
    /// and the CA file.
    fn fresh_postgres_tls(name: &str) -> Option<(String, std::path::PathBuf)> {
        let (Ok(base), Ok(ca)) =
            (std::env::var("VIADUCT_TEST_POSTGRES_TLS"), std::env::var("VIADUCT_TEST_POSTGRES_CA"))
        else {
            assert!(
                std::env::var_os("VIADUCT_FIXTURES_REQUIRED").is_none(),
                "VIADUCT_TEST_POSTGRES_TLS or _CA is not set: run the tests with `cargo xtask test`"
            );
            eprintln!(
                "skipped: no PostgreSQL over TLS (VIADUCT_TEST_POSTGRES_TLS, _CA; `cargo xtask test` starts one)"
            );
            return None;
        };
        let url = fresh_postgres(name)?;
        let (_, db) = url.rsplit_once('/').expect("a database in the URL");
        Some((format!("{base}/{db}"), ca.into()))
    }

    /// With TLS the database's certificate is verified — its chain (the
    /// CA file or the system's roots) and its name — and a failure says
    /// what failed; `prefer` (the default) verifies alike; `disable` goes
    /// without, and the test server refuses plaintext over TCP.
    #[test]
    fn postgres_over_tls_verifies_the_database() {
        use crate::store::postgres::{Postgres, client};
        let Some((url, ca)) = fresh_postgres_tls("tls") else { return };
        let required = format!("{url}?sslmode=require");
        let kv = Postgres::open(&required, None, Some(&ca)).expect("open over verified TLS");
        kv.commit(&[(T::Meta, b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
        assert_eq!(kv.get(T::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
        for url in [&required, &url] {
            let mut c = client(url, Some(&ca)).expect("connect");
            let tls: bool =
                c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).unwrap().get(0);
            assert!(tls, "{url} without TLS");
        }

        // Not signed by a CA it trusts: refused, naming the database and why.
        for url in [&required, &url] {
            let err = Postgres::open(url, None, None).err().expect("an unknown issuer is refused").to_string();
            assert!(err.contains("TLS to database `kv_tls_") && err.contains("UnknownIssuer"), "{err}");
            assert!(err.contains("--store-ca-file"), "{err}");
        }
        // Signed by the CA, but for another name than the URL's host.
        let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
        let db = url.rsplit_once('/').unwrap().1;
        let other = format!("postgresql://viaduct@db.invalid:{port}/{db}?hostaddr=127.0.0.1&sslmode=require");
        let err = Postgres::open(&other, None, Some(&ca)).err().expect("another name is refused").to_string();
        assert!(err.contains("TLS to database") && err.contains("not valid for name"), "{err}");
        // Without TLS: the test server has no plaintext TCP.
        let err = Postgres::open(&format!("{url}?sslmode=disable"), None, Some(&ca)).err().expect("refused");
        let err = err.to_string();
        assert!(err.contains("no pg_hba.conf entry") && err.contains("sslmode=disable"), "{err}");
        // TLS is never asked of a Unix socket.
        if let Ok(unix) = std::env::var("VIADUCT_TEST_POSTGRES") {
            client(&format!("{unix}/postgres?sslmode=prefer"), Some(&ca)).expect("a Unix socket without TLS");
        }
    }

    #[test]
    fn a_store_ca_file_that_is_not_pem_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let url = "postgresql://viaduct@127.0.0.1:1/db?sslmode=require";
        let err = crate::store::postgres::Postgres::open(url, None, Some(&file)).err().expect("refused").to_string();
        assert!(err.contains("--store-ca-file") && err.contains("ca.pem") && err.contains("no PEM"), "{err}");
        let err = crate::store::postgres::Postgres::open(url, None, Some(&dir.path().join("missing.pem")))
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("cannot read --store-ca-file") && err.contains("missing.pem"), "{err}");
    }

    /// sled under `dir` opened again: the dropped database's flusher
    /// thread may hold sled's lock for a moment (a restarted process would
    /// not see it), so this waits for it.
    fn reopen(dir: &std::path::Path) -> super::Sled {
        let mut tries = 0;
        loop {
            match super::Sled::open(dir) {
                Ok(kv) => break kv,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("reopening: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reopen: {e}"),
            }
        }
    }

    #[test]
    fn sled_keeps_ids_growing_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let kv = super::Sled::open(dir.path()).unwrap();
            let id = kv.generate_id().unwrap();
            kv.commit(&[(T::Meta, b"k".to_vec(), Some(b"v".to_vec()))]).unwrap();
            kv.flush().unwrap();
            id
        };
        let kv = reopen(dir.path());
        assert!(kv.generate_id().unwrap() > first);
        assert_eq!(kv.get(T::Meta, b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    /// A crash after a write set was logged and before sled's files had it:
    /// opening replays it, whole, once.
    #[test]
    fn sled_replays_what_its_log_holds_and_its_trees_missed() {
        let dir = tempfile::tempdir().unwrap();
        let a = |v: &[u8]| (T::Meta, b"a".to_vec(), Some(v.to_vec()));
        {
            let kv = super::Sled::open(dir.path()).unwrap();
            kv.commit(&[a(b"1")]).unwrap();
            // Logged; the process dies before applying it to the trees.
            kv.log()
                .wal
                .append(&[(T::Meta, b"a".to_vec(), None), (T::Runs, b"b".to_vec(), Some(b"2".to_vec()))])
                .unwrap();
            assert_eq!(kv.get(T::Meta, b"a").unwrap().as_deref(), Some(&b"1"[..]), "not in the trees yet");
        }
        let kv = reopen(dir.path());
        assert_eq!(kv.get(T::Meta, b"a").unwrap(), None, "the removal replayed");
        assert_eq!(kv.get(T::Runs, b"b").unwrap().as_deref(), Some(&b"2"[..]), "with the rest of its write set");
        // And the store goes on from there.
        kv.commit(&[a(b"3")]).unwrap();
        drop(kv);
        assert_eq!(reopen(dir.path()).get(T::Meta, b"a").unwrap().as_deref(), Some(&b"3"[..]));
    }

    /// Copies sled's files (`only_log`: the log's files instead) from the
    /// data directory `from` to `to`: what a crash leaves, put together.
    fn copy(from: &std::path::Path, to: &std::path::Path, only_log: bool) {
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let log = crate::store::wal::FILES.iter().any(|f| name == *f);
            if log != only_log {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(to.join(&name)).unwrap();
                for inner in std::fs::read_dir(entry.path()).unwrap() {
                    let inner = inner.unwrap();
                    std::fs::copy(inner.path(), to.join(&name).join(inner.file_name())).unwrap();
                }
            } else {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }

    /// A commit is reported durable as soon as its log record is synced,
    /// before sled's trees have it: a crash at that moment (sled's files as
    /// before the commit, the log's as then) recovers it.
    #[test]
    fn sled_reports_a_commit_durable_once_logged_before_applying_it() {
        let (live, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let kv = super::Sled::open(live.path()).unwrap();
        kv.db().flush().unwrap();
        copy(live.path(), crashed.path(), false);
        let (mut told, mut applied_then) = (0, None);
        let ops = [(T::Runs, b"r".to_vec(), Some(b"1".to_vec())), (T::Jobs, b"j".to_vec(), None)];
        kv.commit_then(&ops, &mut || {
            told += 1;
            applied_then = Some(kv.get(T::Runs, b"r").unwrap());
            copy(live.path(), crashed.path(), true);
        })
        .unwrap();
        assert_eq!(told, 1, "told once");
        assert_eq!(applied_then, Some(None), "told before the trees had it");
        assert_eq!(kv.get(T::Runs, b"r").unwrap().as_deref(), Some(&b"1"[..]), "applied when it returns");
        drop(kv);
        assert_eq!(reopen(crashed.path()).get(T::Runs, b"r").unwrap().as_deref(), Some(&b"1"[..]));
    }

    /// sled's files as a crash can leave them — as of a checkpoint, before
    /// the log's files moved on — and the log's files as they are at the
    /// end: every write set since that checkpoint comes back from the two
    /// files of the log, the older one first.
    #[test]
    fn sled_recovers_from_its_log_alone_what_its_files_lack() {
        let (live, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let value = vec![7u8; 64 << 10];
        // A file and a half of the log: it moved to its other file once.
        let sets = (crate::store::wal::CHECKPOINT_BYTES / (64 << 10)) as u32 * 3 / 2;
        let key = |i: u32| i.to_be_bytes().to_vec();
        {
            let kv = super::Sled::open(live.path()).unwrap();
            kv.commit(&[(T::Meta, b"before".to_vec(), Some(b"1".to_vec()))]).unwrap();
            // sled's files as of here.
            kv.db().flush().unwrap();
            copy(live.path(), crashed.path(), false);
            for i in 0..sets {
                kv.commit(&[(T::Logs, key(i), Some(value.clone()))]).unwrap();
            }
            kv.commit(&[(T::Meta, b"before".to_vec(), None)]).unwrap();
            kv.log().settle().unwrap();
            copy(live.path(), crashed.path(), true);
        }
        let kv = reopen(crashed.path());
        assert_eq!(
            kv.range(T::Logs, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded).count(),
            sets as usize,
            "every write set since the copy, from the log"
        );
        assert_eq!(kv.get(T::Logs, &key(sets - 1)).unwrap(), Some(value));
        assert_eq!(kv.get(T::Meta, b"before").unwrap(), None, "the last removal, replayed last");
    }

    /// A checkpoint that failed is the store's failure from then on: the
    /// file it was for is never reused, and no commit is taken.
    #[test]
    fn a_failed_checkpoint_refuses_every_later_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = crate::store::wal::Wal::open(dir.path()).unwrap();
        let mut log = super::Logged { wal, checkpoint: None, synced_blobs: Default::default(), failed: None };
        log.checkpoint = Some(std::thread::spawn(|| Err(crate::error::Error::Storage("disk on fire".into()))));
        let first = log.settle().unwrap_err().to_string();
        assert!(first.contains("disk on fire"), "{first}");
        assert!(log.settle().unwrap_err().to_string().contains("disk on fire"), "still, with no thread left");
        assert!(log.checked(Some(Ok(Default::default()))).is_err(), "a later success does not clear it");
        log.checkpoint = Some(std::thread::spawn(|| panic!("checkpoint panicked")));
        assert!(log.settle().is_err());
    }

    /// Past a file's length the log goes on in its other file while the
    /// full one is checkpointed (the next switch waits for that); across
    /// a restart every write set survives, in order, the last ones from
    /// the log alone.
    #[test]
    fn sled_moves_its_log_between_files_and_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![7u8; 64 << 10];
        let sets = 3 * (crate::store::wal::CHECKPOINT_BYTES / (64 << 10)) as u32 + 8;
        let key = |i: u32| i.to_be_bytes().to_vec();
        {
            let kv = super::Sled::open(dir.path()).unwrap();
            for i in 0..sets {
                kv.commit(&[(T::Logs, key(i), Some(value.clone()))]).unwrap();
            }
            assert!(kv.log().checkpoint.is_some(), "a checkpoint was started");
            // Logged; the process dies before applying them to the trees.
            let mut log = kv.log();
            log.wal.append(&[(T::Meta, b"last".to_vec(), Some(b"1".to_vec()))]).unwrap();
            log.wal.append(&[(T::Logs, key(0), None)]).unwrap();
        }
        let kv = reopen(dir.path());
        assert_eq!(
            kv.range(T::Logs, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded).count(),
            sets as usize - 1
        );
        assert_eq!(kv.get(T::Logs, &key(0)).unwrap(), None, "the removal, replayed last");
        assert_eq!(kv.get(T::Logs, &key(sets - 1)).unwrap(), Some(value));
        assert_eq!(kv.get(T::Meta, b"last").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
