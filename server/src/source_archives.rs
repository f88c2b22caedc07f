//! Source archives in the blob store: the tree of a commit as runners
//! fetch it, kept once per (repository, commit) where every replica finds
//! it.
//!
//! `git::archive` builds an archive on the machine that holds the
//! repository (under `DATA_DIR/sources`). With replicas the leader changes,
//! and a hosted repository lives on one replica's disk: the archive of a
//! commit a run was started for must outlive the machine that made it. So
//! the first fetch of a commit builds the archive, stores it as a blob,
//! records `repo \0 commit → digest` in [`T::SourceArchives`] and removes
//! the local copy; every later fetch — on any replica, with `--blob-store
//! s3://…` — streams the blob. The depot's retention drops a record unused
//! for [`SOURCE_TTL`], and past `--max-source-archives-size` the least
//! recently used ones, and the sweep removes their blobs; a record whose
//! blob is gone is built again.
//!
//! Who can do what: only a runner holding a job of a run of that commit
//! fetches it (`RunnerAgent.FetchSource` checks the lease); blobs are named
//! by their content and reachable through nothing else.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use tokio::io::AsyncReadExt;

use crate::{
    blobs::{BlobReader, BlobStore},
    error::{Error, Result},
    store::{
        Store, T, WriteSet, decode, now_ms,
        records::{SCHEMA_VERSION, SourceArchiveRecord},
    },
};

/// An archive not fetched for this long is dropped.
pub const SOURCE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How stale a record's last use may be before a fetch writes it again.
const TOUCH_EVERY_MS: i64 = 3600 * 1000;

/// See the module docs.
pub struct SourceArchives {
    store: Arc<Store>,
    blobs: Arc<BlobStore>,
}

fn key(repo: &str, commit: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(repo.len() + 1 + commit.len());
    k.extend_from_slice(repo.as_bytes());
    k.push(0);
    k.extend_from_slice(commit.as_bytes());
    k
}

impl SourceArchives {
    /// Archives of `store`'s repositories in `blobs`.
    pub fn new(store: Arc<Store>, blobs: Arc<BlobStore>) -> Self {
        Self { store, blobs }
    }

    /// The archive of `commit` of `repo` and its size: the stored blob, or
    /// — the first time, or when the blob is gone — what `build` makes (a
    /// local file, moved into the blob store).
    pub async fn open(
        &self,
        repo: &str,
        commit: &str,
        build: impl Future<Output = Result<PathBuf>>,
    ) -> Result<(BlobReader, u64)> {
        let key = key(repo, commit);
        if let Some(found) = self.stored(&key).await? {
            return Ok(found);
        }
        let path = build.await?;
        let blob = match self.upload(&path).await {
            Ok(d) => d,
            // Another fetch of the same commit moved it first.
            Err(Error::NotFound(_)) => {
                return self
                    .stored(&key)
                    .await?
                    .ok_or_else(|| Error::Internal(format!("the archive of {repo}@{commit} vanished")));
            }
            Err(e) => return Err(e),
        };
        let rec = SourceArchiveRecord {
            schema: SCHEMA_VERSION,
            digest: blob.digest.clone(),
            used_ms: now_ms(),
            size: blob.size,
        };
        let mut ws = WriteSet::default();
        ws.put(T::SourceArchives, &key, &rec);
        self.store.commit(&ws)?;
        let _ = tokio::fs::remove_file(&path).await;
        self.blobs.open_read(&blob.digest).await
    }

    /// The stored archive under `key`, if its record and blob exist (its
    /// last use noted now and then).
    async fn stored(&self, key: &[u8]) -> Result<Option<(BlobReader, u64)>> {
        let Some(mut rec) = self.store.get::<SourceArchiveRecord>(T::SourceArchives, key)? else { return Ok(None) };
        match self.blobs.open_read(&rec.digest).await {
            Ok(found) => {
                if now_ms() - rec.used_ms > TOUCH_EVERY_MS || rec.size != found.1 {
                    rec.used_ms = now_ms();
                    rec.size = found.1;
                    let mut ws = WriteSet::default();
                    ws.put(T::SourceArchives, key, &rec);
                    self.store.commit(&ws)?;
                }
                Ok(Some(found))
            }
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams the file at `path` into a blob.
    async fn upload(&self, path: &PathBuf) -> Result<crate::blobs::Blob> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::not_found(format!("{} is gone", path.display())));
            }
            Err(e) => return Err(Error::Internal(format!("source archive {}: {e}", path.display()))),
        };
        let mut writer = self.blobs.writer(u64::MAX).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| Error::Internal(format!("source archive {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]).await?;
        }
        writer.finish().await
    }

    /// Drops the records unused for [`SOURCE_TTL`], then, while the rest
    /// hold more than `max_bytes`, the least recently used; how many.
    pub fn expire(&self, max_bytes: u64) -> Result<u64> {
        let cutoff = now_ms() - i64::try_from(SOURCE_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut ws = WriteSet::default();
        let mut kept = Vec::new();
        for kv in self.store.tree(T::SourceArchives).iter() {
            let (k, v) = kv?;
            let rec = decode::<SourceArchiveRecord>(T::SourceArchives, &v)?;
            if rec.used_ms < cutoff {
                ws.delete(T::SourceArchives, k);
            } else {
                kept.push((rec.used_ms, rec.size, k));
            }
        }
        // Newest first: what fits stays. One fetched within the last two
        // touches (its use is noted at most hourly) may be streaming now:
        // it stays whatever its size (its blob would go with the sweep).
        kept.sort_by_key(|k| std::cmp::Reverse(k.0));
        let in_use = now_ms() - 2 * TOUCH_EVERY_MS;
        let mut total = 0u64;
        for (used_ms, size, k) in kept {
            total = total.saturating_add(size);
            if total > max_bytes && used_ms < in_use {
                ws.delete(T::SourceArchives, k);
            }
        }
        let n = ws.len() as u64;
        self.store.commit(&ws)?;
        Ok(n)
    }

    /// Every blob a record names (for the depot's sweep).
    pub fn digests(&self) -> Result<Vec<String>> {
        self.store
            .tree(T::SourceArchives)
            .iter()
            .map(|kv| Ok(decode::<SourceArchiveRecord>(T::SourceArchives, &kv?.1)?.digest))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    async fn read(found: (BlobReader, u64)) -> Vec<u8> {
        let (mut r, size) = found;
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len() as u64, size);
        out
    }

    /// Built once, then served from the blob store (the local copy gone);
    /// built again when the blob is gone; dropped after its time unused.
    #[tokio::test]
    async fn an_archive_is_built_once_and_served_from_the_blob_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::memory());
        let blobs = Arc::new(BlobStore::local(&dir.path().join("blobs")).unwrap());
        let sources = SourceArchives::new(Arc::clone(&store), Arc::clone(&blobs));
        let builds = AtomicU32::new(0);
        let file = dir.path().join("abc.tar.zst");
        let build = || async {
            builds.fetch_add(1, Ordering::SeqCst);
            tokio::fs::write(&file, b"the tree of abc").await.unwrap();
            Ok(file.clone())
        };
        assert_eq!(read(sources.open("repo", "abc", build()).await.unwrap()).await, b"the tree of abc");
        assert!(!file.exists(), "moved into the blob store");
        assert_eq!(read(sources.open("repo", "abc", build()).await.unwrap()).await, b"the tree of abc");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        let digests = sources.digests().unwrap();
        assert_eq!(digests.len(), 1);
        // The blob swept away: built again.
        blobs.sweep(&Default::default(), Duration::ZERO).await.unwrap();
        assert_eq!(read(sources.open("repo", "abc", build()).await.unwrap()).await, b"the tree of abc");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
        // Unused past its time: the record goes.
        let old = SourceArchiveRecord { schema: SCHEMA_VERSION, digest: digests[0].clone(), used_ms: 0, size: 15 };
        let mut ws = WriteSet::default();
        ws.put(T::SourceArchives, key("repo", "abc"), &old);
        store.commit(&ws).unwrap();
        assert_eq!(sources.expire(u64::MAX).unwrap(), 1);
        assert!(sources.digests().unwrap().is_empty());
    }

    /// Past the size limit the least recently used archives go, newest
    /// kept first.
    #[tokio::test]
    async fn past_their_size_the_least_recently_used_archives_go() {
        let store = Arc::new(Store::memory());
        let dir = tempfile::tempdir().unwrap();
        let blobs = Arc::new(BlobStore::local(&dir.path().join("blobs")).unwrap());
        let sources = SourceArchives::new(Arc::clone(&store), blobs);
        let mut ws = WriteSet::default();
        let hour = 3_600_000;
        for (commit, ago_ms, size) in
            [("a", 5 * hour, 400), ("b", 4 * hour, 400), ("c", 3 * hour, 400), ("d", hour, 1200)]
        {
            let rec =
                SourceArchiveRecord { schema: SCHEMA_VERSION, digest: commit.into(), used_ms: now_ms() - ago_ms, size };
            ws.put(T::SourceArchives, key("repo", commit), &rec);
        }
        store.commit(&ws).unwrap();
        // d (fetched an hour ago: maybe streaming now) stays, over the
        // limit alone; the older ones go.
        assert_eq!(sources.expire(1000).unwrap(), 3);
        assert_eq!(sources.digests().unwrap(), ["d"]);
        assert_eq!(sources.expire(1000).unwrap(), 0);
        let mut ws = WriteSet::default();
        for (commit, ago_ms) in [("e", 4 * hour), ("f", 3 * hour)] {
            let rec = SourceArchiveRecord {
                schema: SCHEMA_VERSION,
                digest: commit.into(),
                used_ms: now_ms() - ago_ms,
                size: 400,
            };
            ws.put(T::SourceArchives, key("repo", commit), &rec);
        }
        store.commit(&ws).unwrap();
        let mut all = sources.digests().unwrap();
        all.sort();
        assert_eq!(all, ["d", "e", "f"]);
        assert_eq!(sources.expire(1900).unwrap(), 1, "1200 + 400 fit in 1900, not 400 more");
        let mut left = sources.digests().unwrap();
        left.sort();
        assert_eq!(left, ["d", "f"]);
    }
}
