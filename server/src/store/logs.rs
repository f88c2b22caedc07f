//! Step logs: append-only byte streams stored as chunks keyed
//! `(step key, byte offset)` in the `logs` tree.
//!
//! A chunk is stored only if it continues the stored log exactly; a resent
//! chunk the store already has is a no-op, and a partly known one has its
//! known head trimmed. So however often a runner resends after reconnects,
//! the log has no gap and no duplicate.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::{
    T, Tree, Writes,
    keys::StepKey,
    kv::{Kv, Op},
};
use crate::error::Result;

/// Outcome of [`LogStore::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Append {
    /// New bytes were stored; the log is now this long.
    Stored(u64),
    /// Nothing new: the log already holds these bytes (it is this long).
    Duplicate(u64),
    /// The chunk starts past the end of the log (this long): bytes are
    /// missing in between and the chunk was not stored.
    Gap(u64),
}

/// One stored chunk.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Byte offset in the step log.
    pub offset: u64,
    /// When it was stored (ms since the epoch).
    pub time_ms: i64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// The log tree with a cache of the lengths of logs being written.
pub struct LogStore {
    kv: Arc<dyn Kv>,
    /// The store's writes, which this one's count in.
    writes: Arc<Writes>,
    lengths: Mutex<HashMap<StepKey, u64>>,
}

impl LogStore {
    pub(super) fn new(kv: Arc<dyn Kv>, writes: Arc<Writes>) -> Self {
        Self { kv, writes, lengths: Mutex::new(HashMap::new()) }
    }

    fn tree(&self) -> Tree<'_> {
        Tree { kv: self.kv.as_ref(), t: T::Logs }
    }

    fn commit(&self, ops: &[Op]) -> Result<()> {
        self.writes.write(|| self.kv.commit(ops).map(|()| !ops.is_empty())).map(|_| ())
    }

    /// Appends `data` written at `offset` of `step`'s log.
    pub fn append(&self, step: StepKey, offset: u64, data: &[u8], time_ms: i64) -> Result<Append> {
        let mut lengths = self.lengths.lock().unwrap_or_else(|p| p.into_inner());
        let len = match lengths.get(&step) {
            Some(l) => *l,
            None => self.stored_len(step)?,
        };
        let end = offset + data.len() as u64;
        if offset > len {
            lengths.insert(step, len);
            return Ok(Append::Gap(len));
        }
        if end <= len {
            lengths.insert(step, len);
            return Ok(Append::Duplicate(len));
        }
        // `offset <= len < end`: store the unseen tail at `len`.
        let skip = usize::try_from(len - offset).unwrap_or(usize::MAX);
        let tail = &data[skip..];
        let mut value = Vec::with_capacity(8 + tail.len());
        value.extend_from_slice(&time_ms.to_be_bytes());
        value.extend_from_slice(tail);
        self.commit(&[(T::Logs, step.log_key(len).to_vec(), Some(value))])?;
        lengths.insert(step, end);
        Ok(Append::Stored(end))
    }

    /// Current length of `step`'s log.
    pub fn len(&self, step: StepKey) -> Result<u64> {
        if let Some(l) = self.lengths.lock().unwrap_or_else(|p| p.into_inner()).get(&step) {
            return Ok(*l);
        }
        self.stored_len(step)
    }

    /// Drops the cached length of a finished step.
    pub fn forget(&self, step: StepKey) {
        self.lengths.lock().unwrap_or_else(|p| p.into_inner()).remove(&step);
    }

    fn stored_len(&self, step: StepKey) -> Result<u64> {
        Ok(match self.tree().scan_prefix(step.key()).next_back() {
            Some(kv) => {
                let (k, v) = kv?;
                offset_of(&k) + (v.len() as u64).saturating_sub(8)
            }
            None => 0,
        })
    }

    /// Reads chunks of `step` covering `[from, from + max_bytes)` (fewer if
    /// the log is shorter). The first chunk is trimmed to start at `from`.
    /// Only bytes that follow on from `from` without a gap are returned:
    /// chunks removed while they are read (the log was packed) end the read
    /// there, never with bytes from further on.
    pub fn read(&self, step: StepKey, from: u64, max_bytes: u64) -> Result<Vec<Chunk>> {
        let mut out = Vec::new();
        let mut budget = max_bytes;
        let mut next = from;
        // The chunk containing `from` starts at or before it.
        let start = match self.tree().range(step.log_key(0)..=step.log_key(from)).next_back() {
            Some(kv) => offset_of(&kv?.0),
            None => from,
        };
        for kv in self.tree().range(step.log_key(start)..=step.log_key(u64::MAX)) {
            if budget == 0 {
                break;
            }
            let (k, v) = kv?;
            let offset = offset_of(&k);
            let time_ms = i64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            let body = v.get(8..).unwrap_or(&[]);
            let lo = usize::try_from(from.saturating_sub(offset)).unwrap_or(usize::MAX);
            if lo >= body.len() {
                continue;
            }
            if offset + lo as u64 != next {
                break;
            }
            let take = (body.len() - lo).min(usize::try_from(budget).unwrap_or(usize::MAX));
            let data = body[lo..lo + take].to_vec();
            budget -= take as u64;
            next += take as u64;
            out.push(Chunk { offset: offset + lo as u64, time_ms, data });
        }
        Ok(out)
    }

    /// The chunks of `step` that start at `from` or later, in order, with
    /// their keys.
    pub fn chunks(&self, step: StepKey, from: u64) -> impl Iterator<Item = Result<(Vec<u8>, Chunk)>> + '_ {
        self.tree().range(step.log_key(from)..=step.log_key(u64::MAX)).map(|kv| {
            let (k, v) = kv?;
            let time_ms = i64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
            let chunk = Chunk { offset: offset_of(&k), time_ms, data: v.get(8..).unwrap_or(&[]).to_vec() };
            Ok((k, chunk))
        })
    }

    /// Deletes every chunk of `step`.
    pub fn delete(&self, step: StepKey) -> Result<()> {
        let mut ops = Vec::new();
        for kv in self.tree().scan_prefix(step.key()) {
            ops.push((T::Logs, kv?.0, None));
        }
        self.commit(&ops)?;
        self.forget(step);
        Ok(())
    }
}

fn offset_of(key: &[u8]) -> u64 {
    key.get(20..28).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{JobKey, RunId};

    fn store() -> ((), LogStore) {
        ((), LogStore::new(Arc::new(crate::store::kv::Memory::new()), Arc::default()))
    }

    fn all(s: &LogStore, k: StepKey) -> Vec<u8> {
        s.read(k, 0, u64::MAX).unwrap().into_iter().flat_map(|c| c.data).collect()
    }

    #[test]
    fn resent_and_overlapping_chunks_leave_no_gap_or_duplicate() {
        let (_d, s) = store();
        let k = JobKey::new(RunId(1), 1).step(1, 1);
        assert_eq!(s.append(k, 0, b"hello ", 1).unwrap(), Append::Stored(6));
        assert_eq!(s.append(k, 0, b"hello ", 1).unwrap(), Append::Duplicate(6));
        assert_eq!(s.append(k, 3, b"lo world", 1).unwrap(), Append::Stored(11));
        assert_eq!(s.append(k, 20, b"x", 1).unwrap(), Append::Gap(11));
        assert_eq!(all(&s, k), b"hello world");
        s.forget(k);
        assert_eq!(s.len(k).unwrap(), 11, "length recovered from the tree");
    }

    /// Chunks removed while a log is read (it was packed) end the read:
    /// never bytes from further on, labelled as if they followed.
    #[test]
    fn a_read_stops_at_a_gap() {
        let (_d, s) = store();
        let k = JobKey::new(RunId(1), 1).step(1, 3);
        for (at, part) in [(0u64, &b"abc"[..]), (3, b"def"), (6, b"ghi")] {
            s.append(k, at, part, 1).unwrap();
        }
        s.kv.commit(&[(T::Logs, k.log_key(3).to_vec(), None)]).unwrap();
        let got: Vec<u8> = s.read(k, 1, 100).unwrap().into_iter().flat_map(|c| c.data).collect();
        assert_eq!(got, b"bc");
        assert!(s.read(k, 4, 100).unwrap().is_empty(), "from inside the gap: nothing");
    }

    #[test]
    fn reads_start_mid_chunk_and_respect_the_budget() {
        let (_d, s) = store();
        let k = JobKey::new(RunId(1), 1).step(1, 2);
        s.append(k, 0, b"abcd", 1).unwrap();
        s.append(k, 4, b"efgh", 2).unwrap();
        let got: Vec<u8> = s.read(k, 2, 4).unwrap().into_iter().flat_map(|c| c.data).collect();
        assert_eq!(got, b"cdef");
        let chunks = s.read(k, 5, 100).unwrap();
        assert_eq!((chunks[0].offset, chunks[0].data.as_slice()), (5, &b"fgh"[..]));
        assert!(s.read(k, 8, 100).unwrap().is_empty());
        // Another step's chunks are not mixed in.
        assert!(s.read(JobKey::new(RunId(1), 1).step(1, 3), 0, 100).unwrap().is_empty());
    }
}
