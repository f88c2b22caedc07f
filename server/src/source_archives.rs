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
//! s3://…` — streams the blob. A record unused for [`SOURCE_TTL`] is
//! dropped by the depot's retention, and the sweep removes its blob; a
//! record whose blob is gone is built again.
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
        let digest = match self.upload(&path).await {
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
        let rec = SourceArchiveRecord { schema: SCHEMA_VERSION, digest: digest.clone(), used_ms: now_ms() };
        let mut ws = WriteSet::default();
        ws.put(T::SourceArchives, &key, &rec);
        self.store.commit(&ws)?;
        let _ = tokio::fs::remove_file(&path).await;
        self.blobs.open_read(&digest).await
    }

    /// The stored archive under `key`, if its record and blob exist (its
    /// last use noted now and then).
    async fn stored(&self, key: &[u8]) -> Result<Option<(BlobReader, u64)>> {
        let Some(mut rec) = self.store.get::<SourceArchiveRecord>(T::SourceArchives, key)? else { return Ok(None) };
        match self.blobs.open_read(&rec.digest).await {
            Ok(found) => {
                if now_ms() - rec.used_ms > TOUCH_EVERY_MS {
                    rec.used_ms = now_ms();
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

    /// Streams the file at `path` into a blob; its digest.
    async fn upload(&self, path: &PathBuf) -> Result<String> {
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
        Ok(writer.finish().await?.digest)
    }

    /// Drops the records unused for [`SOURCE_TTL`]; how many.
    pub fn expire(&self) -> Result<u64> {
        let cutoff = now_ms() - i64::try_from(SOURCE_TTL.as_millis()).unwrap_or(i64::MAX);
        let mut ws = WriteSet::default();
        let mut n = 0;
        for kv in self.store.tree(T::SourceArchives).iter() {
            let (k, v) = kv?;
            if decode::<SourceArchiveRecord>(T::SourceArchives, &v)?.used_ms < cutoff {
                ws.delete(T::SourceArchives, k);
                n += 1;
            }
        }
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
        let old = SourceArchiveRecord { schema: SCHEMA_VERSION, digest: digests[0].clone(), used_ms: 0 };
        let mut ws = WriteSet::default();
        ws.put(T::SourceArchives, key("repo", "abc"), &old);
        store.commit(&ws).unwrap();
        assert_eq!(sources.expire().unwrap(), 1);
        assert!(sources.digests().unwrap().is_empty());
    }
}
