//! The store's own write-ahead log in front of sled: a group commit is one
//! write of a file the store owns, written through to the device by the
//! committing thread.
//!
//! Why: sled makes writes durable through its log buffers, which its own
//! I/O threads write. A sled transaction seals the buffer before and after
//! its batch, so each group commit was two writes, each written through
//! (`sync_file_range`) on one of sled's threads — the second waiting for
//! the first, as both touch the same page — and the hops there and back:
//! ~0.5–0.7 ms a group commit here, and at 1,000 runs/s about two fifths of
//! the server's CPU (sled's threads and the flusher's transaction). One
//! write through of blocks the file already has takes ~0.1 ms
//! (docs/scaling.md).
//!
//! How: [`Sled`](super::kv::Sled) appends each write set to this log and
//! waits until it is on the device *before* applying it to sled's trees,
//! and applies it without a sled transaction. sled writes its trees out on
//! its own (every 200 ms, and at each checkpoint), so after a crash sled's
//! files may hold any part of the write sets applied since its last flush;
//! the log holds all of them. Opening replays the log into sled, in order:
//! a write set is whole values and removals, so applying it again over any
//! part of itself ends in the same state. A write set whose append did not
//! finish is not in the log, and none of it reached sled (it is applied
//! only once written through): after a crash every write set is there
//! whole or not at all.
//!
//! Durability is what sled's own log gave: a record is written through to
//! the device (`sync_file_range`, waiting for the write) within blocks the
//! file has had since it was made (written with zeros and `fdatasync`ed),
//! so it survives the server's crash and the operating system's, and no
//! metadata is involved. A disk with a volatile write cache holds it in
//! that cache until the next cache flush — sled's flusher `fsync`s its own
//! file every 200 ms, which flushes the device's whole cache — so a power
//! cut on such a disk can lose the last ~200 ms, as before. A per-commit
//! `fdatasync` (a cache flush each time) measured ~0.15 ms more at the
//! median and ~0.5 ms more at the 99th percentile under 1,000 runs/s.
//!
//! Checkpoint: once the log passes [`CHECKPOINT_BYTES`], sled is flushed
//! and its file `fsync`ed (everything applied so far is then durable in
//! its own files), and the log starts again at its beginning under a new
//! epoch ([`Wal::restart`]). The file keeps its blocks.
//!
//! Format (little-endian). A header: [`MAGIC`], the epoch (random, new at
//! each restart), and a checksum of both. Then records: the payload's
//! length (u32), the epoch (u64), a sequence number (u64: 1, 2, … within
//! the epoch), the payload (the write set), and a checksum (the first 8
//! bytes of BLAKE3 over all that). Reading stops at the first record that
//! is torn, of another epoch or out of sequence: past the last append of
//! this epoch lie an older epoch's leftovers. A header that does not check
//! out is a restart cut short, which only ever follows a finished
//! checkpoint: nothing before it is needed.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
};

use super::{T, kv::Op};
use crate::error::{Error, Result};

/// The log's file name, in sled's directory (compaction replaces that
/// directory only after replaying the log: see `compact`).
pub const FILE: &str = "viaduct.wal";
/// Bytes of log past which the next write set checkpoints first.
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// The first bytes of the file (the last one: the format's version).
const MAGIC: [u8; 8] = *b"VDCTWAL\x01";
/// Magic, epoch, checksum.
const HEADER_LEN: u64 = 24;
/// Length, epoch, sequence number (the checksum follows the payload).
const RECORD_HEAD: usize = 20;
const SUM_LEN: usize = 8;
/// A payload longer than this is not a record (a torn length field).
const MAX_PAYLOAD: usize = 1 << 31;

/// The log: where the next record goes, and under which epoch.
pub struct Wal {
    file: File,
    epoch: u64,
    /// Sequence number of the last record appended in this epoch.
    seq: u64,
    /// Offset of the next record.
    end: u64,
    /// The file's length as last made durable: writes within it change no
    /// metadata.
    blocks: u64,
    /// Reused for encoding.
    buf: Vec<u8>,
}

fn io_error(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let at = format!("{what} the store's log {}", path.display());
    move |e| Error::Storage(format!("{at}: {e}"))
}

fn sum(bytes: &[u8]) -> [u8; SUM_LEN] {
    let hash = blake3::hash(bytes);
    let mut out = [0; SUM_LEN];
    out.copy_from_slice(&hash.as_bytes()[..SUM_LEN]);
    out
}

fn header(epoch: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&epoch.to_le_bytes());
    let s = sum(&h[..16]);
    h[16..].copy_from_slice(&s);
    h
}

fn new_epoch() -> Result<u64> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Storage(format!("no randomness for the store's log: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

impl Wal {
    /// Opens (or creates) the log at `path`: the log, positioned after its
    /// last record, and the write sets it holds, oldest first. Replay them
    /// into the trees, make the trees durable, then [`Wal::restart`].
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
        let mut wal = Self { file, epoch: 0, seq: 0, end: HEADER_LEN, blocks: bytes.len() as u64, buf: Vec::new() };
        let Some(epoch) = read_header(&bytes) else {
            // New, or a restart cut short: start an epoch, in blocks that
            // are already the file's.
            if wal.blocks < CHECKPOINT_BYTES {
                wal.fill().map_err(io_error("cannot fill", path))?;
            }
            wal.restart()?;
            // Its entry in the directory survives a crash too.
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("cannot sync the directory of", path))?;
            }
            return Ok((wal, Vec::new()));
        };
        wal.epoch = epoch;
        let mut sets = Vec::new();
        let mut at = HEADER_LEN as usize;
        while let Some((seq, payload, next)) = read_record(&bytes, at, epoch, wal.seq + 1) {
            sets.push(decode(payload).map_err(|e| Error::Corrupt {
                tree: "log",
                detail: format!("record {seq} at byte {at} of {}: {e}", path.display()),
            })?);
            (wal.seq, at) = (seq, next);
        }
        wal.end = at as u64;
        Ok((wal, sets))
    }

    /// Appends `ops` as one record and waits until it is on disk.
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
            .map_err(|e| Error::Storage(format!("writing the store's log: {e}")))?;
        let end = self.end + self.buf.len() as u64;
        self.write_through(self.end, end).map_err(|e| Error::Storage(format!("syncing the store's log: {e}")))?;
        (self.seq, self.end) = (seq, end);
        Ok(())
    }

    /// Waits until bytes `from..to` are on the device. Within the file's
    /// blocks (see [`Wal::fill`]) that is `sync_file_range`, as sled does
    /// for its own log: the data reaches the device, and no metadata
    /// needs to; past them (a record longer than the rest of the file) it
    /// is `fdatasync`, which also makes the new length durable.
    fn write_through(&mut self, from: u64, to: u64) -> io::Result<()> {
        if to > self.blocks {
            self.file.sync_data()?;
            self.blocks = to;
            return Ok(());
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (from, len) = (i64::try_from(from).unwrap_or(i64::MAX), i64::try_from(to - from).unwrap_or(0));
            // SAFETY: a plain system call on a descriptor `self.file` keeps
            // open; it reads no memory of ours.
            let rc = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    from,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            };
            if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
        }
        #[cfg(not(target_os = "linux"))]
        self.file.sync_data()
    }

    /// Writes zeros up to [`CHECKPOINT_BYTES`] and makes them durable: a
    /// record then rewrites blocks the file has, and writing it through
    /// changes no size or extent of the file (growing it costs a journal
    /// commit: ~0.15–0.6 ms a record here, against ~0.1 ms).
    fn fill(&mut self) -> io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.blocks;
        while at < CHECKPOINT_BYTES {
            let n = (CHECKPOINT_BYTES - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()?;
        self.blocks = at;
        Ok(())
    }

    /// Whether the log is long enough to start again (after sled's flush).
    pub fn is_full(&self) -> bool {
        self.end >= CHECKPOINT_BYTES
    }

    /// Starts the log again, empty, under a new epoch. Only once everything
    /// it holds is durable in sled's own files: the records are dropped.
    pub fn restart(&mut self) -> Result<()> {
        let epoch = new_epoch()?;
        let restarted = self.file.write_all_at(&header(epoch), 0);
        restarted
            .and_then(|()| self.write_through(0, HEADER_LEN))
            .map_err(|e| Error::Storage(format!("restarting the store's log: {e}")))?;
        (self.epoch, self.seq, self.end) = (epoch, 0, HEADER_LEN);
        Ok(())
    }
}

fn read_header(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER_LEN as usize)?;
    (h[..8] == MAGIC && h[16..] == sum(&h[..16])).then(|| u64::from_le_bytes(h[8..16].try_into().expect("8 bytes")))
}

/// The record at `at` if it is whole, of `epoch` and numbered `seq`: its
/// number, payload and the offset after it.
fn read_record(bytes: &[u8], at: usize, epoch: u64, seq: u64) -> Option<(u64, &[u8], usize)> {
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
    (s == sum(covered) && e == epoch && n == seq).then(|| (n, &covered[RECORD_HEAD..], end))
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

    fn reopen(path: &Path) -> Vec<Vec<Op>> {
        Wal::open(path).unwrap().1
    }

    #[test]
    fn write_sets_come_back_in_order_and_a_restart_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (mut wal, sets) = Wal::open(&path).unwrap();
        assert!(sets.is_empty());
        for i in 1..=3 {
            wal.append(&set(i)).unwrap();
        }
        drop(wal);
        assert_eq!(reopen(&path), vec![set(1), set(2), set(3)]);
        // Reopened, it goes on after them.
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&set(4)).unwrap();
        assert_eq!(reopen(&path), vec![set(1), set(2), set(3), set(4)]);
        // Restarted: empty, and an older epoch's records after the header
        // are not read as this one's.
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.restart().unwrap();
        assert!(reopen(&path).is_empty());
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&set(9)).unwrap();
        assert_eq!(reopen(&path), vec![set(9)], "the leftovers of the epoch before are not replayed");
    }

    #[test]
    fn a_torn_tail_or_a_torn_header_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.append(&set(1)).unwrap();
        let first_end = wal.end;
        wal.append(&set(2)).unwrap();
        let second_end = wal.end as usize;
        drop(wal);
        let whole = std::fs::read(&path).unwrap();
        // The second record cut anywhere: only the first comes back.
        for cut in [first_end as usize + 1, first_end as usize + RECORD_HEAD + 3, second_end - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            assert_eq!(reopen(&path), vec![set(1)], "cut at {cut}");
        }
        // A bit flipped in its payload: the same.
        let mut flipped = whole.clone();
        flipped[first_end as usize + RECORD_HEAD + 2] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(reopen(&path), vec![set(1)]);
        // A header that does not check out (a restart cut short): nothing,
        // and the log starts a new epoch.
        let mut torn = whole.clone();
        torn[9] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        assert!(reopen(&path).is_empty());
        assert!(read_header(&std::fs::read(&path).unwrap()).is_some(), "a fresh header");
    }

    #[test]
    fn a_record_that_checks_out_but_does_not_decode_is_an_error_not_a_silent_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let (mut wal, _) = Wal::open(&path).unwrap();
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
        let err = Wal::open(&path).err().expect("refused").to_string();
        assert!(err.contains("record 1") && err.contains("unknown tree"), "{err}");
    }

    #[test]
    fn a_new_log_has_its_blocks_before_its_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        drop(Wal::open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), CHECKPOINT_BYTES);
    }

    #[test]
    fn the_log_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        drop(Wal::open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
