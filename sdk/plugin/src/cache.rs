//! The runner's build cache.
//!
//! Two kinds of entries, in separate namespaces:
//!
//! - **trees** — directories of the workspace archived by [`save`] and
//!   extracted back by [`restore`] (what the `cache` plugin does);
//! - **blobs** — small byte strings (at most 16 MiB) with [`put`] and [`get`].
//!
//! Entries are immutable: saving or putting a key that exists keeps the old
//! entry. The server scopes keys: a run reads entries saved on its own
//! branch, then on the repository's default branch, and writes to its own
//! branch only.

use crate::{Error, Result, host};

/// A restored tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The key that matched.
    pub key: String,
    /// Whether it is the exact key asked for (not a prefix fallback).
    pub exact: bool,
    /// Size of the stored entry in bytes (compressed).
    pub size: u64,
}

/// What [`save`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Size of the stored entry in bytes (compressed); for a key that
    /// already existed, the size of the kept entry.
    pub size: u64,
    /// Files and directories archived; 0 when the key already existed.
    pub entries: u64,
}

fn strings(items: &[impl AsRef<str>]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// Restores the tree saved under `key` into the workspace or, when there is
/// none, the newest entry whose key starts with one of `prefixes` (tried in
/// order). `Ok(None)` is a miss.
pub fn restore(key: &str, prefixes: &[impl AsRef<str>]) -> Result<Option<Hit>> {
    let hit = host::cache_restore(key, &strings(prefixes))
        .map_err(|e| Error::msg(format!("cannot restore cache `{key}`: {e}")))?;
    Ok(hit.map(|h| Hit { key: h.key, exact: h.exact, size: h.size }))
}

/// Archives `paths` (workspace-relative files or directories; missing ones
/// are skipped) under `key`.
pub fn save(key: &str, paths: &[impl AsRef<str>]) -> Result<Saved> {
    let saved =
        host::cache_save(key, &strings(paths)).map_err(|e| Error::msg(format!("cannot save cache `{key}`: {e}")))?;
    Ok(Saved { size: saved.size, entries: saved.entries })
}

/// Fetches a blob stored with [`put`]; `Ok(None)` when there is none.
pub fn get(key: &str) -> Result<Option<Vec<u8>>> {
    host::cache_get(key).map_err(|e| Error::msg(format!("cannot read cache blob `{key}`: {e}")))
}

/// Stores a blob (at most 16 MiB) under `key`; an existing key is kept.
pub fn put(key: &str, data: &[u8]) -> Result<()> {
    host::cache_put(key, data).map_err(|e| Error::msg(format!("cannot store cache blob `{key}`: {e}")))
}
