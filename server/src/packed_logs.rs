//! Packed logs: a finished step's log, moved out of the store into one
//! compressed blob.
//!
//! While a step runs, its log is chunks in the store ([`crate::store::logs`]),
//! appended as the runner sends them. Once its attempt has ended — the
//! engine marks the attempt in [`T::Unpacked`] in the same transition — no
//! byte can be added (a runner's log data needs the attempt's lease). Then
//! [`PackedLogs::pack_pending`] writes each step's chunks into one blob of
//! zstd frames of about [`FRAME`] bytes of log each, and in one write set
//! records it in [`T::PackedLogs`] and removes the chunks and the mark.
//! A read from any offset ([`PackedLogs::read`]) fetches the frames it
//! needs with one ranged read and decompresses only those, and returns the
//! same chunks (offsets, times, bytes) the store would have.
//!
//! The blobs go where every blob goes (`--blob-store`): with replicas and
//! object storage, finished logs are in the bucket, and the database holds
//! only the logs being written. A server that dies mid-pack packs again
//! after its restart (the blob is named by its content: the same blob).
//! The depot's sweep keeps every blob a record names ([`PackedLogs::digests`]).
//!
//! Who can do what: nothing is exposed but through `Logs`, which checks
//! access as before; packing changes no byte of a log (the runner masked
//! secrets before sending it). Bounded: a frame decompresses to at most
//! [`MAX_FRAME_RAW`] bytes, a read fetches at most [`MAX_READ_PACKED`].

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    blobs::BlobStore,
    error::{Error, Result},
    store::{
        Store, T, WriteSet, decode,
        keys::StepKey,
        logs::Chunk,
        records::{PackedLogRecord, SCHEMA_VERSION},
    },
};

/// Bytes of log (with record heads) per zstd frame.
pub const FRAME: usize = 256 << 10;
/// What one frame may decompress to (a frame is refused past it).
pub const MAX_FRAME_RAW: usize = FRAME + 64;
/// Most blob bytes one read fetches.
pub const MAX_READ_PACKED: u64 = 16 << 20;
/// Head of each record in a frame: time (ms, i64) and length (u32), big-endian.
const HEAD: usize = 12;
/// zstd's level: its default, fast to write and ~5–10× on build logs.
const LEVEL: i32 = 3;
/// Bytes of chunks read from the store at a time while packing.
const PAGE_BYTES: usize = 8 << 20;
/// Attempts packed per pass.
const BATCH: usize = 64;

/// What has been packed since the server started.
#[derive(Debug, Default)]
pub struct PackStats {
    /// Step logs packed.
    pub steps: AtomicU64,
    /// Their bytes of log.
    pub raw_bytes: AtomicU64,
    /// Their bytes in blobs.
    pub packed_bytes: AtomicU64,
}

/// See the module docs.
pub struct PackedLogs {
    store: Arc<Store>,
    blobs: Arc<BlobStore>,
    /// The last mark of a full batch: the next pass starts after it.
    cursor: std::sync::Mutex<Option<Vec<u8>>>,
    /// Since the server started.
    pub stats: PackStats,
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt { tree: "packed_logs", detail }
}

/// A frame being filled, and the blob it goes to.
struct Packer {
    blob: crate::blobs::BlobWriter,
    frame: Vec<u8>,
    rec: PackedLogRecord,
}

impl Packer {
    /// Appends a piece of the chunk at log offset `rec.size`.
    async fn push(&mut self, time_ms: i64, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.frame.is_empty() {
                self.rec.offsets.push(self.rec.size);
                self.rec.starts.push(self.rec.packed_size);
            }
            let room = (FRAME - self.frame.len()).saturating_sub(HEAD).max(1);
            let (piece, rest) = data.split_at(room.min(data.len()));
            self.frame.extend_from_slice(&time_ms.to_be_bytes());
            self.frame.extend_from_slice(&(piece.len() as u32).to_be_bytes());
            self.frame.extend_from_slice(piece);
            self.rec.size += piece.len() as u64;
            data = rest;
            if self.frame.len() + HEAD >= FRAME {
                self.close_frame().await?;
            }
        }
        Ok(())
    }

    async fn close_frame(&mut self) -> Result<()> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let frame = std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME));
        let packed = tokio::task::spawn_blocking(move || zstd::bulk::compress(&frame, LEVEL))
            .await
            .map_err(|e| Error::Internal(format!("compressing a log frame: {e}")))?
            .map_err(|e| Error::Internal(format!("compressing a log frame: {e}")))?;
        self.blob.write(&packed).await?;
        self.rec.packed_size += packed.len() as u64;
        Ok(())
    }
}

impl PackedLogs {
    /// Packs logs of `store` into `blobs`.
    pub fn new(store: Arc<Store>, blobs: Arc<BlobStore>) -> Self {
        Self { store, blobs, cursor: std::sync::Mutex::default(), stats: PackStats::default() }
    }

    /// Packs the logs of up to [`BATCH`] ended attempts, going on from
    /// where the last pass stopped (an attempt that cannot be packed now is
    /// logged and left for a later round, never blocking those behind it);
    /// how many it packed.
    pub async fn pack_pending(&self) -> Result<usize> {
        let after = self.cursor.lock().unwrap_or_else(|p| p.into_inner()).take();
        let tree = self.store.tree(T::Unpacked);
        let marks: Vec<Vec<u8>> = match &after {
            Some(a) => tree.range::<&[u8]>((std::ops::Bound::Excluded(a.as_slice()), std::ops::Bound::Unbounded)),
            None => tree.iter(),
        }
        .take(BATCH)
        .map(|kv| kv.map(|(k, _)| k))
        .collect::<Result<_>>()?;
        let mut packed = 0;
        for mark in &marks {
            match self.pack_attempt(mark).await {
                Ok(()) => packed += 1,
                Err(e) => tracing::warn!(error = %e, attempt = %hex::encode(mark), "cannot pack an attempt's logs yet"),
            }
            // See `pack_attempt`: the same between attempts.
            tokio::task::yield_now().await;
        }
        // A full batch: the next pass goes on after it; else from the start.
        if marks.len() == BATCH {
            *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = marks.last().cloned();
        }
        Ok(packed)
    }

    /// Packs every step log of the attempt `mark` names, then removes the
    /// chunks and the mark in one write set.
    async fn pack_attempt(&self, mark: &[u8]) -> Result<()> {
        let mut steps = Vec::new();
        for kv in self.store.tree(T::Steps).scan_prefix(mark) {
            steps.extend(StepKey::from_key(&kv?.0));
        }
        let mut ws = WriteSet::default();
        for step in steps {
            // A step whose log is empty awaits nothing (a non-empty one
            // awaits its compression): without a yield, a backlog of quiet
            // steps held this async worker for the whole backlog while the
            // submits, dispatches and events queued behind it waited.
            tokio::task::yield_now().await;
            if self.store.tree(T::PackedLogs).contains_key(step.key())? {
                continue;
            }
            let Some((rec, chunks)) = self.pack_step(step).await? else { continue };
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            self.stats.raw_bytes.fetch_add(rec.size, Ordering::Relaxed);
            self.stats.packed_bytes.fetch_add(rec.packed_size, Ordering::Relaxed);
            tracing::debug!(step = %step, bytes = rec.size, packed = rec.packed_size, "log packed");
            ws.put(T::PackedLogs, step.key(), &rec);
            for k in chunks {
                ws.delete(T::Logs, k);
            }
        }
        ws.delete(T::Unpacked, mark);
        self.store.commit(&ws)
    }

    /// Writes `step`'s chunks into a blob: its record and the chunks' keys
    /// (`None`: the log is empty).
    async fn pack_step(&self, step: StepKey) -> Result<Option<(PackedLogRecord, Vec<Vec<u8>>)>> {
        // An empty log (a quiet step) needs no blob: staging one costs a
        // file created and removed (an upload begun and aborted, in a
        // bucket).
        if self.store.logs.chunks(step, 0).next().transpose()?.is_none() {
            return Ok(None);
        }
        let mut packer = Packer {
            blob: self.blobs.writer(u64::MAX).await?,
            frame: Vec::with_capacity(FRAME),
            rec: PackedLogRecord { schema: SCHEMA_VERSION, ..Default::default() },
        };
        let mut keys = Vec::new();
        // Read a page of chunks at a time: the store's iterator must not
        // live across an await.
        let mut from = 0u64;
        loop {
            // At most PAGE_BYTES of chunks (and one more) in memory at once.
            let mut page: Vec<(Vec<u8>, Chunk)> = Vec::new();
            let mut bytes = 0;
            for c in self.store.logs.chunks(step, from) {
                let c = c?;
                bytes += c.1.data.len();
                page.push(c);
                if bytes >= PAGE_BYTES {
                    break;
                }
            }
            let Some(last) = page.last() else { break };
            from = last.1.offset + 1;
            for (k, chunk) in page {
                if chunk.offset != packer.rec.size {
                    return Err(corrupt(format!(
                        "log of step {step}: a chunk at {} where {} was expected",
                        chunk.offset, packer.rec.size
                    )));
                }
                packer.push(chunk.time_ms, &chunk.data).await?;
                keys.push(k);
            }
        }
        packer.close_frame().await?;
        if packer.rec.size == 0 {
            return Ok(None);
        }
        packer.rec.digest = packer.blob.finish().await?.digest;
        Ok(Some((packer.rec, keys)))
    }

    /// Up to `limit` bytes of the packed log `rec` from `offset`, as chunks.
    pub async fn read(&self, rec: &PackedLogRecord, offset: u64, limit: u64) -> Result<Vec<Chunk>> {
        let n = rec.offsets.len();
        let increasing =
            |v: &[u64], last: u64| v.windows(2).all(|w| w[0] < w[1]) && v.last().is_some_and(|l| *l <= last);
        if n != rec.starts.len()
            || n == 0
            || rec.offsets[0] != 0
            || rec.starts[0] != 0
            || !increasing(&rec.offsets, rec.size)
            || !increasing(&rec.starts, rec.packed_size)
        {
            return Err(corrupt(format!("{}: frames out of order or out of bounds", rec.digest)));
        }
        if offset >= rec.size || limit == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(limit).min(rec.size);
        let first = rec.offsets.partition_point(|&o| o <= offset).saturating_sub(1);
        let mut last = rec.offsets.partition_point(|&o| o < end).max(first + 1);
        let start_of = |i: usize| if i < n { rec.starts[i] } else { rec.packed_size };
        while last > first + 1 && start_of(last) - start_of(first) > MAX_READ_PACKED {
            last -= 1;
        }
        let (lo, hi) = (start_of(first), start_of(last));
        if lo > hi || hi > rec.packed_size {
            return Err(corrupt(format!("{}: frame bounds {lo}..{hi}", rec.digest)));
        }
        let bytes = self.blobs.read_range(&rec.digest, lo..hi).await?;
        if bytes.len() as u64 != hi - lo {
            return Err(corrupt(format!("{}: {} bytes where {} were expected", rec.digest, bytes.len(), hi - lo)));
        }
        let frames: Vec<(u64, std::ops::Range<usize>)> = (first..last)
            .map(|i| (rec.offsets[i], (start_of(i) - lo) as usize..(start_of(i + 1) - lo) as usize))
            .collect();
        let digest = rec.digest.clone();
        tokio::task::spawn_blocking(move || unpack(&digest, &bytes, &frames, offset, end))
            .await
            .map_err(|e| Error::Internal(format!("reading a packed log: {e}")))?
    }

    /// Every blob a packed log is in (for the depot's sweep).
    pub fn digests(&self) -> Result<Vec<String>> {
        self.store
            .tree(T::PackedLogs)
            .iter()
            .map(|kv| Ok(decode::<PackedLogRecord>(T::PackedLogs, &kv?.1)?.digest))
            .collect()
    }
}

/// The chunks between `offset` and `end` in `frames` of `bytes` (each:
/// the log offset it starts at, its bytes).
fn unpack(
    digest: &str,
    bytes: &[u8],
    frames: &[(u64, std::ops::Range<usize>)],
    offset: u64,
    end: u64,
) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    for (at, range) in frames {
        let packed = bytes.get(range.clone()).ok_or_else(|| corrupt(format!("{digest}: a frame out of bounds")))?;
        let raw = zstd::bulk::decompress(packed, MAX_FRAME_RAW)
            .map_err(|e| corrupt(format!("{digest}: a frame does not decompress: {e}")))?;
        let (mut pos, mut rest) = (*at, raw.as_slice());
        while !rest.is_empty() {
            let head = rest.get(..HEAD).ok_or_else(|| corrupt(format!("{digest}: a record cut short")))?;
            let time_ms = i64::from_be_bytes(head[..8].try_into().unwrap_or([0; 8]));
            let len = u32::from_be_bytes(head[8..].try_into().unwrap_or([0; 4])) as usize;
            let data = rest.get(HEAD..HEAD + len).ok_or_else(|| corrupt(format!("{digest}: a record cut short")))?;
            rest = &rest[HEAD + len..];
            let (lo, hi) = (pos, pos.saturating_add(len as u64));
            pos = hi;
            if hi <= offset || lo >= end {
                continue;
            }
            let from = (offset.saturating_sub(lo)) as usize;
            let to = (end.min(hi) - lo) as usize;
            out.push(Chunk { offset: lo + from as u64, time_ms, data: data[from..to].to_vec() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{JobKey, RunId};

    fn numbered(lines: u32) -> Vec<u8> {
        (1..=lines)
            .flat_map(|i| format!("line {i} of a build log: compiling crate_{}\n", i % 97).into_bytes())
            .collect()
    }

    /// A log packed reads the same from every offset, times and all, and
    /// its chunks are gone from the store.
    #[tokio::test]
    async fn a_packed_log_reads_as_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::memory());
        let blobs = Arc::new(BlobStore::local(dir.path()).unwrap());
        let packed = PackedLogs::new(Arc::clone(&store), blobs);
        let job = JobKey::new(RunId(7), 1);
        let step = job.step(1, 1);
        let mut ws = WriteSet::default();
        ws.put(T::Steps, step.key(), &crate::store::records::StepRecord::default());
        ws.put_raw(T::Unpacked, StepKey::attempt_prefix(job, 1), Vec::new());
        store.commit(&ws).unwrap();
        // Chunks of every size, one larger than a frame.
        let log = numbered(40_000);
        let (mut at, mut time) = (0usize, 1000i64);
        for size in [1usize, 10, 700, 3000, FRAME * 2 + 5, 65_536].iter().cycle() {
            if at >= log.len() {
                break;
            }
            let end = (at + size).min(log.len());
            store.logs.append(step, at as u64, &log[at..end], time).unwrap();
            (at, time) = (end, time + 1);
        }
        let before = store.logs.read(step, 0, u64::MAX).unwrap();
        assert_eq!(packed.pack_pending().await.unwrap(), 1);
        assert_eq!(store.logs.chunks(step, 0).count(), 0, "the chunks are gone");
        assert_eq!(store.tree(T::Unpacked).iter().count(), 0, "the mark is gone");
        let rec: PackedLogRecord = store.get(T::PackedLogs, step.key()).unwrap().unwrap();
        assert_eq!(rec.size, log.len() as u64);
        assert!(rec.packed_size * 5 < rec.size, "{} → {}", rec.size, rec.packed_size);
        assert_eq!(packed.digests().unwrap(), std::slice::from_ref(&rec.digest));
        let all: Vec<u8> = packed.read(&rec, 0, u64::MAX).await.unwrap().into_iter().flat_map(|c| c.data).collect();
        assert_eq!(all, log);
        for (offset, limit) in
            [(0, 1), (5, 100), (FRAME as u64 - 3, 10), (FRAME as u64 * 2 + 1, 300_000), (log.len() as u64 - 2, 10)]
        {
            let got: Vec<u8> =
                packed.read(&rec, offset, limit).await.unwrap().into_iter().flat_map(|c| c.data).collect();
            let end = (offset + limit).min(log.len() as u64) as usize;
            assert_eq!(got, log[offset as usize..end], "at {offset} for {limit}");
        }
        assert!(packed.read(&rec, log.len() as u64, 10).await.unwrap().is_empty());
        // Times are kept: each byte has the time of the chunk it came in.
        let times = |chunks: Vec<Chunk>| -> Vec<i64> {
            chunks.into_iter().flat_map(|c| std::iter::repeat_n(c.time_ms, c.data.len())).collect()
        };
        assert_eq!(times(packed.read(&rec, 0, u64::MAX).await.unwrap()), times(before));
        // Packing again finds nothing to do.
        assert_eq!(packed.pack_pending().await.unwrap(), 0);
    }

    /// Packing yields for every step, even when none of them awaits
    /// anything (empty logs): a backlog of ended attempts must not hold an
    /// async worker while submits and dispatches queue behind it. On this
    /// single-threaded runtime the task spawned first runs only when
    /// packing yields: here, before the first attempt's mark is gone.
    #[tokio::test]
    async fn packing_yields_for_every_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::memory());
        let packed = PackedLogs::new(Arc::clone(&store), Arc::new(BlobStore::local(dir.path()).unwrap()));
        let mut ws = WriteSet::default();
        for run in 1..=3 {
            let job = JobKey::new(RunId(run), 1);
            ws.put(T::Steps, job.step(1, 1).key(), &crate::store::records::StepRecord::default());
            ws.put_raw(T::Unpacked, StepKey::attempt_prefix(job, 1), Vec::new());
        }
        store.commit(&ws).unwrap();
        // The other task notes how many attempts were still to pack when it
        // ran: all three if packing yields before its first attempt.
        let seen = Arc::new(AtomicU64::new(u64::MAX));
        let (other, of) = (Arc::clone(&seen), Arc::clone(&store));
        let task =
            tokio::spawn(async move { other.store(of.tree(T::Unpacked).iter().count() as u64, Ordering::SeqCst) });
        assert_eq!(packed.pack_pending().await.unwrap(), 3);
        assert_eq!(seen.load(Ordering::SeqCst), 3, "another task ran before the first attempt was packed");
        task.await.unwrap();
        assert_eq!(store.tree(T::Unpacked).iter().count(), 0, "every mark is gone");
    }

    /// A damaged record or blob is refused with an error, never a panic.
    #[tokio::test]
    async fn a_damaged_packed_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::local(dir.path()).unwrap());
        let packed = PackedLogs::new(Arc::new(Store::memory()), Arc::clone(&blobs));
        let blob = blobs.put(b"not zstd at all").await.unwrap();
        let rec = PackedLogRecord {
            digest: blob.digest,
            size: 100,
            packed_size: blob.size,
            offsets: vec![0],
            starts: vec![0],
            ..Default::default()
        };
        assert!(packed.read(&rec, 0, 10).await.is_err());
        assert!(packed.read(&PackedLogRecord { offsets: vec![], ..rec.clone() }, 0, 10).await.is_err());
        assert!(packed.read(&PackedLogRecord { packed_size: 1 << 40, ..rec.clone() }, 0, 10).await.is_err());
        // Frames out of order or past the ends: refused before any read.
        for (offsets, starts) in
            [(vec![0, 50, 20], vec![0, 1, 2]), (vec![0, 200], vec![0, 1]), (vec![0, 1], vec![0, 0])]
        {
            let bad = PackedLogRecord { offsets, starts, ..rec.clone() };
            assert!(packed.read(&bad, 60, 10).await.is_err(), "{bad:?}");
        }
    }
}
