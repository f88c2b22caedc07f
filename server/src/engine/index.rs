//! Secondary indexes of runs in the `run_index` tree, kept in step with the
//! `runs` tree by [`Tx::commit`](super::tx::Tx::commit).
//!
//! Key: `field (1 byte) ‖ value ‖ 0x00 ‖ run id (8 bytes, big-endian)`, value
//! empty. Scanning one `(field, value)` prefix backwards lists the matching
//! runs newest first, which is what paging needs.

use std::collections::BinaryHeap;

use crate::{
    error::Result,
    store::{Store, T, WriteSet, keys::RunId, records::RunRecord},
};

/// An indexed field of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    /// Current status (value: the status number as one byte).
    Status = 1,
    /// The pipeline's name.
    Pipeline = 2,
    /// Repository id.
    Repo = 3,
    /// Branch.
    Branch = 4,
    /// Interpolated concurrency group.
    Group = 5,
}

fn key(field: Field, value: &[u8], id: Option<RunId>) -> Vec<u8> {
    let mut k = Vec::with_capacity(value.len() + 10);
    k.push(field as u8);
    k.extend_from_slice(value);
    k.push(0);
    if let Some(id) = id {
        k.extend_from_slice(&id.key());
    }
    k
}

fn entries(r: &RunRecord) -> Vec<(Field, Vec<u8>)> {
    let mut out = vec![(Field::Status, vec![u8::try_from(r.status).unwrap_or(0)])];
    let mut text = |f: Field, v: &str| {
        if !v.is_empty() {
            out.push((f, v.as_bytes().to_vec()));
        }
    };
    text(Field::Pipeline, &r.pipeline);
    if let Some(src) = &r.source {
        text(Field::Repo, &src.repo);
        text(Field::Branch, &src.branch);
    }
    text(Field::Group, &r.concurrency_group);
    out
}

/// Adds the index writes for a run changing from `before` to `now`.
pub fn update(ws: &mut WriteSet, id: RunId, before: Option<&RunRecord>, now: &RunRecord) {
    let old = before.map(entries).unwrap_or_default();
    let new = entries(now);
    for e in &old {
        if !new.contains(e) {
            ws.delete(T::RunIndex, key(e.0, &e.1, Some(id)));
        }
    }
    for e in &new {
        if !old.contains(e) {
            ws.put_raw(T::RunIndex, key(e.0, &e.1, Some(id)), Vec::new());
        }
    }
}

/// The index keys of run `id` (to delete them with the run).
pub fn entries_of(id: RunId, run: &RunRecord) -> Vec<Vec<u8>> {
    entries(run).into_iter().map(|(f, v)| key(f, &v, Some(id))).collect()
}

/// Ids of runs with `field == value`, newest first, older than `before`.
pub fn scan<'s>(
    store: &'s Store,
    field: Field,
    value: &[u8],
    before: Option<RunId>,
) -> impl Iterator<Item = Result<RunId>> + use<'s> {
    let lo = key(field, value, Some(RunId(0)));
    let hi = key(field, value, Some(before.unwrap_or(RunId(u64::MAX))));
    store
        .tree(T::RunIndex)
        .range(lo..hi)
        .rev()
        .map(|kv| kv.map(|(k, _)| RunId::from_key(&k[k.len() - 8..]).unwrap_or(RunId(0))))
}

/// Merges several newest-first id streams into one newest-first stream.
pub fn merge_desc(
    mut streams: Vec<Box<dyn Iterator<Item = Result<RunId>> + '_>>,
) -> impl Iterator<Item = Result<RunId>> + '_ {
    let mut heap = BinaryHeap::new();
    let mut failed = None;
    for (i, s) in streams.iter_mut().enumerate() {
        match s.next() {
            Some(Ok(id)) => heap.push((id, i)),
            Some(Err(e)) => failed = Some(e),
            None => {}
        }
    }
    std::iter::from_fn(move || {
        if let Some(e) = failed.take() {
            return Some(Err(e));
        }
        let (id, i) = heap.pop()?;
        match streams[i].next() {
            Some(Ok(next)) => heap.push((next, i)),
            Some(Err(e)) => failed = Some(e),
            None => {}
        }
        Some(Ok(id))
    })
}
