//! Cache entries: directory trees as zstd-compressed tars, and small blobs.
//!
//! A save archives the listed workspace paths (files, directories, links
//! as links) on a blocking thread that streams the archive to the server
//! while it is being written; a restore streams the entry from the server
//! into the unpacker ([`super::unpack`]: files written in parallel while
//! the stream is read). File times are kept, so incremental build tools
//! (cargo, make) trust restored outputs. Unpacking refuses entries that
//! would land outside the workspace.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use viaduct_proto::v1::{CacheKind, JobRef, RestoreCacheRequest, SaveCacheRequest};

use super::{ChannelWriter, Files, paths, status};

/// zstd level for cache archives: fast, since build outputs are large and
/// the archive is written while the job waits.
const LEVEL: i32 = 1;
/// Largest blob entry (the server's limit too).
pub const MAX_BLOB: usize = 16 * 1024 * 1024;

/// A restored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The key that matched.
    pub key: String,
    /// Whether it was the exact key.
    pub exact: bool,
    /// Stored size in bytes.
    pub size: u64,
}

/// A saved entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// Stored size (compressed) in bytes.
    pub size: u64,
    /// Entries archived; 0 when the key already existed.
    pub entries: u64,
}

/// Writes a tar.zst of `paths` (workspace-relative, existing) into `out`;
/// returns the number of entries.
fn archive(workspace: &Path, paths: &[(PathBuf, String)], out: ChannelWriter) -> Result<u64, String> {
    let encoder = zstd::Encoder::new(out, LEVEL).map_err(|e| format!("cannot start compressing: {e}"))?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    let mut entries = 0;
    for (path, _) in paths {
        for entry in walkdir::WalkDir::new(path).follow_links(false).sort_by_file_name() {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let name = paths::relative(workspace, entry.path())
                .ok_or_else(|| format!("{} is not a UTF-8 path", entry.path().display()))?;
            tar.append_path_with_name(entry.path(), &name).map_err(|e| format!("cannot archive {name}: {e}"))?;
            entries += 1;
        }
    }
    let encoder = tar.into_inner().map_err(|e| format!("cannot finish the archive: {e}"))?;
    let mut out = encoder.finish().map_err(|e| format!("cannot finish compressing: {e}"))?;
    std::io::Write::flush(&mut out).map_err(|e| format!("cannot finish the upload: {e}"))?;
    Ok(entries)
}

/// Unpacks a tar.zst read from `input` into `workspace`; returns entries.
fn unpack(workspace: &Path, input: impl std::io::Read) -> Result<u64, String> {
    let decoder = zstd::Decoder::new(input).map_err(|e| format!("the cache entry is not zstd: {e}"))?;
    super::unpack::unpack(workspace, decoder)
}

impl Files {
    /// Saves the workspace `paths` (missing ones are skipped) under `key`.
    pub async fn save_tree(
        &self,
        job: &JobRef,
        workspace: &Path,
        key: &str,
        paths: &[String],
    ) -> Result<Saved, String> {
        let mut existing = Vec::new();
        for p in paths {
            let path = paths::resolve(workspace, p)?;
            if path.symlink_metadata().is_ok() {
                existing.push((path, p.clone()));
            }
        }
        if existing.is_empty() {
            return Err(format!("nothing to save: none of {} exists in the workspace", paths.join(", ")));
        }
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
        let ws = workspace.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || archive(&ws, &existing, ChannelWriter::new(tx)));
        let header = SaveCacheRequest {
            job: Some(job.clone()),
            kind: CacheKind::Tree as i32,
            key: key.to_string(),
            data: rx.recv().await.unwrap_or_default(),
        };
        let rest = ReceiverStream::new(rx).map(|data| SaveCacheRequest { data, ..Default::default() });
        let sent = self.client.agent().save_cache(tokio_stream::once(header).chain(rest)).await;
        let entries = writer.await.map_err(|e| format!("archive task failed: {e}"))??;
        let resp = sent.map_err(|s| status("saving the cache", &s))?.into_inner();
        Ok(Saved { size: resp.size, entries: if resp.stored { entries } else { 0 } })
    }

    /// Restores the entry `key` (or the newest under one of `prefixes`)
    /// into the workspace; `None` on a miss.
    pub async fn restore_tree(
        &self,
        job: &JobRef,
        workspace: &Path,
        key: &str,
        prefixes: &[String],
    ) -> Result<Option<Hit>, String> {
        let mut stream = self.restore(job, CacheKind::Tree, key, prefixes).await?;
        let Some(first) = stream.next().await else { return Ok(None) };
        let first = first.map_err(|s| status("restoring the cache", &s))?;
        if !first.found {
            return Ok(None);
        }
        let hit = Hit { key: first.key.clone(), exact: first.exact, size: first.size };
        let head = tokio_stream::once(Ok(bytes::Bytes::from(first.data)));
        let rest =
            stream.map(|m| m.map(|c| bytes::Bytes::from(c.data)).map_err(|s| std::io::Error::other(s.to_string())));
        let reader = tokio_util::io::StreamReader::new(head.chain(rest));
        let bridge = tokio_util::io::SyncIoBridge::new(reader);
        let ws = workspace.to_path_buf();
        tokio::task::spawn_blocking(move || unpack(&ws, bridge))
            .await
            .map_err(|e| format!("unpack task failed: {e}"))??;
        Ok(Some(hit))
    }

    /// Stores a small blob under `key`.
    pub async fn put_blob(&self, job: &JobRef, key: &str, data: Vec<u8>) -> Result<(), String> {
        if data.len() > MAX_BLOB {
            return Err(format!("a cache blob may be at most {} MiB", MAX_BLOB >> 20));
        }
        let mut chunks: Vec<SaveCacheRequest> =
            data.chunks(super::CHUNK).map(|c| SaveCacheRequest { data: c.to_vec(), ..Default::default() }).collect();
        if chunks.is_empty() {
            chunks.push(SaveCacheRequest::default());
        }
        chunks[0].job = Some(job.clone());
        chunks[0].kind = CacheKind::Blob as i32;
        chunks[0].key = key.to_string();
        self.client
            .agent()
            .save_cache(tokio_stream::iter(chunks))
            .await
            .map_err(|s| status("saving the cache blob", &s))?;
        Ok(())
    }

    /// Fetches a small blob (`None` when missing).
    pub async fn get_blob(&self, job: &JobRef, key: &str) -> Result<Option<Vec<u8>>, String> {
        let mut stream = self.restore(job, CacheKind::Blob, key, &[]).await?;
        let mut data = Vec::new();
        let mut found = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| status("fetching the cache blob", &s))?;
            found |= chunk.found;
            if data.len() + chunk.data.len() > MAX_BLOB {
                return Err("the cache blob is larger than allowed".into());
            }
            data.extend_from_slice(&chunk.data);
        }
        Ok(found.then_some(data))
    }

    async fn restore(
        &self,
        job: &JobRef,
        kind: CacheKind,
        key: &str,
        prefixes: &[String],
    ) -> Result<tonic::Streaming<viaduct_proto::v1::CacheData>, String> {
        let req = RestoreCacheRequest {
            job: Some(job.clone()),
            kind: kind as i32,
            key: key.to_string(),
            prefixes: prefixes.to_vec(),
        };
        Ok(self.client.agent().restore_cache(req).await.map_err(|s| status("restoring the cache", &s))?.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn archive_then_unpack_round_trips_with_times_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("target/debug")).unwrap();
        std::fs::write(ws.join("target/debug/app"), b"binary").unwrap();
        std::os::unix::fs::symlink("debug/app", ws.join("target/link")).unwrap();
        // Mostly a hole: the archive holds it as a sparse entry.
        let sparse = std::fs::File::create(ws.join("target/sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", (8 << 20) - 3).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let ws2 = ws.clone();
        let paths = vec![(ws.join("target"), "target".to_string())];
        let task = tokio::task::spawn_blocking(move || archive(&ws2, &paths, ChannelWriter::new(tx)));
        let mut bytes = Vec::new();
        while let Some(c) = rx.recv().await {
            bytes.extend(c);
        }
        assert_eq!(task.await.unwrap().unwrap(), 5);
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        assert_eq!(unpack(&out, bytes.as_slice()).unwrap(), 5);
        assert_eq!(std::fs::read(out.join("target/sparse")).unwrap(), std::fs::read(ws.join("target/sparse")).unwrap());
        assert_eq!(std::fs::read(out.join("target/debug/app")).unwrap(), b"binary");
        assert_eq!(std::fs::read_link(out.join("target/link")).unwrap(), Path::new("debug/app"));
        let t = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(
            t(&ws.join("target/debug/app")).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            t(&out.join("target/debug/app")).duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        );
    }
}
