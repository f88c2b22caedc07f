//! The store's own write-ahead log in front of sled: a group commit is one
//! write and one `fdatasync` of a file the store owns, made by the
//! committing thread.
//!
//! Why: sled makes writes durable through its log buffers, which its own
//! I/O threads write. A sled transaction seals the buffer before and after
//! its batch, so each group commit was two writes, each with its own
//! `sync_file_range`, on two of sled's threads — the second waiting for the
//! first, as both touch the same page — and the hops there and back:
//! ~0.6 ms a group commit here, and at 1,000 runs/s about two fifths of the
//! server's CPU (sled's threads and the flusher's transaction). One write
//! and one `fdatasync` of blocks the file already has take ~0.1 ms
//! (docs/scaling.md).
//!
//! How: [`Sled`](super::kv::Sled) appends each write set to this log and
//! waits until it is durable *before* applying it to sled's trees, and
//! applies it without a sled transaction. sled writes its trees out on its
//! own (every 200 ms, and at each checkpoint), so after a crash sled's
//! files may hold any part of the write sets applied since its last flush;
//! the log holds all of them. Opening replays the log into sled, in order
//! and through to its last write set: write sets are whole values and
//! removals, so applying all of them again, over whatever part of them
//! sled's files kept, ends in the state after the last. (Replaying only a
//! front part would set keys back: the log never leaves one to read — see
//! [`Segment::restart`].) A write set whose append did not finish is not
//! in the log, and none of it reached sled (it is applied only once
//! durable): after a crash every write set is there whole or not at all.
//!
//! Durable means `fdatasync`: the record and the file's length on the
//! device's stable storage, its write cache flushed — so a power cut loses
//! nothing acknowledged, and no later write of sled's can reach the disk
//! before the record it comes from. (sled's own log was written with
//! `sync_file_range`, which leaves both to its 200 ms `fsync`: half a
//! millisecond cheaper under load, measured, but not safe here — without
//! sled's transactions a power cut could then keep part of a write set.)
//!
//! Checkpoint: the log has two files ([`FILES`]). Once the one written to
//! passes [`CHECKPOINT_BYTES`], the log goes on in the other, started
//! again empty ([`Wal::switch`]), and the full one is checkpointed on a
//! thread of its own: sled flushed and its files synced (its log file, and
//! the files it wrote large items to since the last checkpoint). Commits
//! do not wait for it (~15 ms measured under load, once every few
//! seconds); only the next switch does, as that reuses the file, and a
//! checkpoint that failed refuses that switch and every commit after it
//! (the store then stops: `kv::Sled`). So the two files hold every write
//! set since the last finished checkpoint, the older file's first; a
//! header's generation tells which is older. Each file is written with
//! zeros to its length when made (without room for that, it grows as it is
//! written), so that on a filesystem that overwrites in place (ext4, XFS) a
//! record's `fdatasync` usually has no new size or extent to commit to the
//! journal.
//!
//! Format (little-endian). A header: [`MAGIC`], the epoch (random, new at
//! each restart), the generation, and a checksum of them. Then records: the payload's
//! length (u32), the epoch (u64), a sequence number (u64: 1, 2, … within
//! the epoch), the payload (the write set), and a checksum (the first 8
//! bytes of BLAKE3 over all that). Reading stops at the first record that
//! is torn, of another epoch or out of sequence: past the last append of
//! this epoch lie an older epoch's leftovers. A damaged record with a
//! later record of the same epoch after it, or a damaged header, is
//! damage rather than an end, and opening is refused.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use super::{T, kv::Op};
use crate::error::{Error, Result};

/// The log's two files, in sled's directory (compaction replaces that
/// directory only after replaying the log: see `compact`).
pub const FILES: [&str; 2] = ["viaduct.0.wal", "viaduct.1.wal"];
/// Bytes of a file of the log past which the log moves to the other file
/// and the first is checkpointed.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// The first bytes of the file (the last one: the format's version).
const MAGIC: [u8; 8] = *b"VDCTWAL\x01";
/// Magic, epoch, generation, checksum.
const HEADER_LEN: u64 = 32;
/// Length, epoch, sequence number (the checksum follows the payload).
const RECORD_HEAD: usize = 20;
const SUM_LEN: usize = 8;
/// A payload longer than this is not a record (a torn length field).
const MAX_PAYLOAD: usize = 1 << 31;

/// The log: two files, written one after the other (see the module doc).
pub struct Wal {
    segments: [Segment; 2],
    /// The one written to.
    active: usize,
}

impl Wal {
    /// Opens (or creates) the log in `dir`: the log, and the write sets it
    /// holds, oldest first (the older file's, then the newer's). Replay
    /// them into the trees, make the trees durable, then
    /// [`Wal::restart`]. Refused as [`Segment::open`] refuses.
    pub fn open(dir: &Path) -> Result<(Self, Vec<Vec<Op>>)> {
        let (a, mut sets) = Segment::open(&dir.join(FILES[0]))?;
        let (b, later) = Segment::open(&dir.join(FILES[1]))?;
        if a.generation == b.generation && !sets.is_empty() && !later.is_empty() {
            // Only two empty files ever share one (both new).
            return Err(Error::Corrupt {
                tree: "log",
                detail: format!("both files of the store's log in {} hold records of one generation", dir.display()),
            });
        }
        let active = usize::from(b.generation > a.generation);
        if active == 1 {
            sets.extend(later);
        } else {
            sets.splice(0..0, later);
        }
        Ok((Self { segments: [a, b], active }, sets))
    }

    /// Appends `ops` as one record and waits until it is durable.
    pub fn append(&mut self, ops: &[Op]) -> Result<()> {
        self.segments[self.active].append(ops)
    }

    /// Whether the file written to is full: time to [`Wal::switch`].
    pub fn is_full(&self) -> bool {
        self.segments[self.active].is_full()
    }

    /// Goes on in the other file, started again empty. Only once what that
    /// file held is durable in sled's own files (the checkpoint that began
    /// when the log last switched to the file now full has ended).
    pub fn switch(&mut self) -> Result<()> {
        let next = 1 - self.active;
        let generation = self.segments[self.active].generation + 1;
        self.segments[next].restart(generation)?;
        self.active = next;
        Ok(())
    }

    /// Starts both files again, empty: once everything the log held is
    /// durable in sled's own files.
    pub fn restart(&mut self) -> Result<()> {
        let generation = self.segments[0].generation.max(self.segments[1].generation);
        self.segments[1 - self.active].restart(generation + 1)?;
        self.segments[self.active].restart(generation + 2)
    }
}

/// One file of the log: where the next record goes, and under which epoch.
pub struct Segment {
    file: File,
    epoch: u64,
    /// Orders the two files: the one written to last has the higher.
    generation: u64,
    /// Sequence number of the last record appended in this epoch.
    seq: u64,
    /// Offset of the next record.
    end: u64,
    /// Reused for encoding.
    buf: Vec<u8>,
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let at = format!("{what} the store's log {}", path.display());
    move |e| Error::Storage(format!("{at}: {e}"))
}

fn corrupt(path: &Path, detail: String) -> Error {
    Error::Corrupt { tree: "log", detail: format!("{}: {detail}", path.display()) }
}

fn sum(bytes: &[u8]) -> [u8; SUM_LEN] {
    let hash = blake3::hash(bytes);
    let mut out = [0; SUM_LEN];
    out.copy_from_slice(&hash.as_bytes()[..SUM_LEN]);
    out
}

fn header(epoch: u64, generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&epoch.to_le_bytes());
    h[16..24].copy_from_slice(&generation.to_le_bytes());
    let s = sum(&h[..24]);
    h[24..].copy_from_slice(&s);
    h
}

fn new_epoch() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Storage(format!("no randomness for the store's log: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

impl Segment {
    /// Opens (or creates) a file of the log at `path`: positioned after its
    /// last record, and the write sets it holds, oldest first.
    ///
    /// Refused (`Corrupt`), so that nothing is replayed or dropped
    /// silently: a header that is not this format's (it is only ever
    /// written whole, a sector, and synced), a record that checks out but
    /// does not decode, and a damaged record followed by a later one of the
    /// same epoch (the log's end is where records stop for good).
    pub fn open(path: &Path) -> Result<(Self, Vec<Vec<Op>>)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io_error("cannot open", path))?;
        let bytes = std::fs::read(path).map_err(io_error("cannot read", path))?;
        let mut wal = Self { file, epoch: 0, generation: 0, seq: 0, end: HEADER_LEN, buf: Vec::new() };
        let head = &bytes[..bytes.len().min(HEADER_LEN as usize)];
        if head.iter().all(|b| *b == 0) {
            // New, or made and not yet started: start an epoch.
            wal.fill(bytes.len() as u64, path);
            wal.restart(0)?;
            // Its entry in the directory survives a crash too.
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("cannot sync the directory of", path))?;
            }
            return Ok((wal, Vec::new()));
        }
        let (epoch, generation) =
            read_header(&bytes).ok_or_else(|| corrupt(path, "its header is damaged or not a log's".into()))?;
        (wal.epoch, wal.generation) = (epoch, generation);
        let mut sets = Vec::new();
        let mut at = HEADER_LEN as usize;
        while let Some((seq, payload, next)) = read_record(&bytes, at, epoch, Some(wal.seq + 1)) {
            sets.push(decode(payload).map_err(|e| corrupt(path, format!("record {seq} at byte {at}: {e}")))?);
            (wal.seq, at) = (seq, next);
        }
        if let Some(later) = later_record(&bytes, at, epoch, wal.seq) {
            return Err(corrupt(
                path,
                format!("the record after {} (byte {at}) is damaged, and record {later} follows it", wal.seq),
            ));
        }
        wal.end = at as u64;
        Ok((wal, sets))
    }

    /// Appends `ops` as one record and waits until it is durable
    /// (`fdatasync`: on the device's stable storage, its cache flushed).
    pub fn append(&mut self, ops: &[Op]) -> Result<()> {
        let seq = self.seq + 1;
        self.buf.clear();
        self.buf.extend_from_slice(&[0; RECORD_HEAD]);
        encode(ops, &mut self.buf);
        let len = self.buf.len() - RECORD_HEAD;
        let len = u32::try_from(len)
            .ok()
            .filter(|l| (*l as usize) <= MAX_PAYLOAD)
            .ok_or_else(|| Error::Storage(format!("a write set of {len} bytes is too large for the store's log")))?;
        self.buf[..4].copy_from_slice(&len.to_le_bytes());
        self.buf[4..12].copy_from_slice(&self.epoch.to_le_bytes());
        self.buf[12..20].copy_from_slice(&seq.to_le_bytes());
        let s = sum(&self.buf);
        self.buf.extend_from_slice(&s);
        self.file
            .write_all_at(&self.buf, self.end)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::Storage(format!("writing the store's log: {e}")))?;
        (self.seq, self.end) = (seq, self.end + self.buf.len() as u64);
        Ok(())
    }

    /// Writes zeros from `from` up to [`CHECKPOINT_BYTES`] and makes them
    /// durable, so that a record rewrites blocks the file has and its
    /// `fdatasync` commits no new size or extent to the filesystem's
    /// journal (~0.09 ms a record here, against ~0.15 ms appending). Only
    /// that: without room for it (a full disk) the log grows as it goes.
    fn fill(&mut self, from: u64, path: &Path) {
        let zeros = vec![0u8; 1 << 20];
        let mut at = from;
        let mut filled = Ok(());
        while at < CHECKPOINT_BYTES && filled.is_ok() {
            let n = (CHECKPOINT_BYTES - at).min(zeros.len() as u64) as usize;
            filled = self.file.write_all_at(&zeros[..n], at);
            at += n as u64;
        }
        if let Err(e) = filled.and_then(|()| self.file.sync_data()) {
            tracing::warn!(log = %path.display(), error = %e, "cannot give the store's log its blocks ahead; it grows as it is written");
            let _ = self.file.set_len(from);
        }
    }

    /// Whether the file is long enough to leave for the other.
    pub fn is_full(&self) -> bool {
        self.end >= CHECKPOINT_BYTES
    }

    /// Starts the file again, empty, under a new epoch and `generation`:
    /// its records are dropped. A file that a large write set grew past
    /// [`CHECKPOINT_BYTES`] is cut back to it.
    pub fn restart(&mut self, generation: u64) -> Result<()> {
        let epoch = new_epoch()?;
        // The header first, durable: from then on the old records are
        // another epoch's and never read. Cut first, a crash could leave
        // the old header over the records' front part alone, and a replay
        // of part of a file's write sets (not through to the last) would
        // set keys back to older values.
        self.file
            .write_all_at(&header(epoch, generation), 0)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::Storage(format!("restarting the store's log: {e}")))?;
        (self.epoch, self.generation, self.seq, self.end) = (epoch, generation, 0, HEADER_LEN);
        // Only space: a cut that does not last costs nothing.
        if self.file.metadata().is_ok_and(|m| m.len() > CHECKPOINT_BYTES) {
            let _ = self.file.set_len(CHECKPOINT_BYTES);
        }
        Ok(())
    }
}

/// The epoch and generation of a header that checks out.
fn read_header(bytes: &[u8]) -> Option<(u64, u64)> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    (h[..8] == MAGIC && h[24..] == sum(&h[..24])).then(|| (word(8), word(16)))
}

/// The number of a whole record of `epoch` numbered above `after` that
/// starts anywhere past `from`: one would mean the log was damaged before
/// its end, not cut short at it. The epoch (random, 8 bytes) is searched
/// for first.
fn later_record(bytes: &[u8], from: usize, epoch: u64, after: u64) -> Option<u64> {
    let rest = bytes.get(from..)?;
    memchr::memmem::find_iter(rest, &epoch.to_le_bytes())
        .filter_map(|found| (from + found).checked_sub(4))
        .filter_map(|start| read_record(bytes, start, epoch, None))
        .map(|(seq, _, _)| seq)
        .find(|seq| *seq > after)
}

/// The record at `at` if it is whole, of `epoch` and numbered `seq` (any
/// number when `None`): its number, payload and the offset after it.
fn read_record(bytes: &[u8], at: usize, epoch: u64, seq: Option<u64>) -> Option<(u64, &[u8], usize)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEAD)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD {
        return None;
    }
    let body_end = at.checked_add(RECORD_HEAD)?.checked_add(len)?;
    let end = body_end.checked_add(SUM_LEN)?;
    let record = bytes.get(at..end)?;
    let (covered, s) = record.split_at(RECORD_HEAD + len);
    let (e, n) = (u64::from_le_bytes(head[4..12].try_into().ok()?), u64::from_le_bytes(head[12..20].try_into().ok()?));
    (e == epoch && seq.is_none_or(|seq| n == seq) && s == sum(covered)).then(|| (n, &covered[RECORD_HEAD..], end))
}

/// A write set as bytes: per write, the tree, the key's length and the
/// key, then 0 (a removal) or 1, the value's length and the value.
fn encode(ops: &[Op], out: &mut Vec<u8>) {
    for (t, k, v) in ops {
        out.push(*t as u8);
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

fn decode(mut b: &[u8]) -> std::result::Result<Vec<Op>, &'static str> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], &'static str> {
        if b.len() < n {
            return Err("a write is cut short");
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> std::result::Result<usize, &'static str> {
        Ok(u32::from_le_bytes(take(b, 4)?.try_into().expect("4 bytes")) as usize)
    }
    let mut ops = Vec::new();
    while !b.is_empty() {
        let t = *T::ALL.get(take(&mut b, 1)?[0] as usize).ok_or("an unknown tree")?;
        let n = len(&mut b)?;
        let k = take(&mut b, n)?.to_vec();
        let v = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return Err("neither a value nor a removal"),
        };
        ops.push((t, k, v));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(i: u8) -> Vec<Op> {
        vec![(T::Meta, vec![i], Some(vec![i; 3])), (T::Runs, vec![i, i], None), (T::Logs, vec![], Some(vec![]))]
    }

    /// A new file of the log, in a directory of its own.
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Segment) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILES[0]);
        let (wal, sets) = Segment::open(&path).unwrap();
        assert!(sets.is_empty());
        (dir, path, wal)
    }

    fn reopen(path: &Path) -> Vec<Vec<Op>> {
        Segment::open(path).unwrap().1
    }

    #[test]
    fn write_sets_come_back_in_order_and_a_restart_drops_them() {
        let (_dir, path, mut wal) = fresh();
        for i in 1..=3 {
            wal.append(&set(i)).unwrap();
        }
        drop(wal);
        assert_eq!(reopen(&path), vec![set(1), set(2), set(3)]);
        // Reopened, it goes on after them.
        let (mut wal, _) = Segment::open(&path).unwrap();
        wal.append(&set(4)).unwrap();
        assert_eq!(reopen(&path), vec![set(1), set(2), set(3), set(4)]);
        // Restarted: empty, and an older epoch's records after the header
        // are not read as this one's.
        let (mut wal, _) = Segment::open(&path).unwrap();
        wal.restart(1).unwrap();
        assert!(reopen(&path).is_empty());
        let (mut wal, _) = Segment::open(&path).unwrap();
        wal.append(&set(9)).unwrap();
        assert_eq!(reopen(&path), vec![set(9)], "the leftovers of the epoch before are not replayed");
    }

    #[test]
    fn a_torn_last_record_ends_the_log_and_damage_before_the_end_is_refused() {
        let (_dir, path, mut wal) = fresh();
        wal.append(&set(1)).unwrap();
        let first_end = wal.end as usize;
        wal.append(&set(2)).unwrap();
        let second_end = wal.end as usize;
        wal.append(&set(3)).unwrap();
        let third_end = wal.end as usize;
        drop(wal);
        let whole = std::fs::read(&path).unwrap();
        // The last record cut anywhere (a crash while it was written): the
        // two before it come back.
        for cut in [second_end + 1, second_end + RECORD_HEAD + 3, third_end - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            assert_eq!(reopen(&path), vec![set(1), set(2)], "cut at {cut}");
        }
        // A bit flipped in the last one: the same.
        let mut flipped = whole.clone();
        flipped[second_end + RECORD_HEAD + 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(reopen(&path), vec![set(1), set(2)]);
        // In the second, with the third whole after it: damage, not an end.
        // Refused, and the file left as it is for whoever looks at it.
        let mut flipped = whole.clone();
        flipped[first_end + RECORD_HEAD + 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let err = Segment::open(&path).err().expect("refused").to_string();
        assert!(err.contains("the record after 1") && err.contains("record 3 follows"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), flipped);
        // A header that does not check out: refused too.
        let mut torn = whole.clone();
        torn[9] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        let err = Segment::open(&path).err().expect("refused").to_string();
        assert!(err.contains("header is damaged"), "{err}");
        // All zeros (made, never started): a new log.
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(reopen(&path).is_empty());
        assert!(read_header(&std::fs::read(&path).unwrap()).is_some(), "a fresh header");
    }

    #[test]
    fn a_record_that_checks_out_but_does_not_decode_is_an_error_not_a_silent_end() {
        let (_dir, path, mut wal) = fresh();
        // A write to a tree that does not exist (say, a newer binary's).
        wal.append(&set(1)).unwrap();
        drop(wal);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = HEADER_LEN as usize + RECORD_HEAD;
        bytes[at] = 250;
        let len = RECORD_HEAD + u32::from_le_bytes(bytes[HEADER_LEN as usize..][..4].try_into().unwrap()) as usize;
        let s = sum(&bytes[HEADER_LEN as usize..][..len]);
        bytes[HEADER_LEN as usize + len..][..SUM_LEN].copy_from_slice(&s);
        std::fs::write(&path, &bytes).unwrap();
        let err = Segment::open(&path).err().expect("refused").to_string();
        assert!(err.contains("record 1") && err.contains("unknown tree"), "{err}");
    }

    #[test]
    fn the_two_files_are_replayed_older_first_and_a_restart_empties_both() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, sets) = Wal::open(dir.path()).unwrap();
        assert!(sets.is_empty());
        wal.append(&set(1)).unwrap();
        wal.switch().unwrap();
        wal.append(&set(2)).unwrap();
        drop(wal);
        let (mut wal, sets) = Wal::open(dir.path()).unwrap();
        assert_eq!(sets, vec![set(1), set(2)]);
        // Back to the first file, started again: what it held is gone, and
        // the second's comes first.
        wal.switch().unwrap();
        wal.append(&set(3)).unwrap();
        drop(wal);
        let (mut wal, sets) = Wal::open(dir.path()).unwrap();
        assert_eq!(sets, vec![set(2), set(3)]);
        wal.restart().unwrap();
        wal.append(&set(4)).unwrap();
        drop(wal);
        assert_eq!(Wal::open(dir.path()).unwrap().1, vec![set(4)]);
    }

    #[test]
    fn a_new_log_has_its_blocks_before_its_first_record() {
        let (_dir, path, _) = fresh();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CHECKPOINT_BYTES);
    }

    #[test]
    fn the_log_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path, _) = fresh();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
