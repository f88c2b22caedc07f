//! The content-addressed blob store: plugin components, cache archives and
//! artifacts, as files under `DATA_DIR/blobs`.
//!
//! A blob is named by the blake3 hash of its bytes (`blake3:<hex>`) and
//! stored at `blobs/<first two hex digits>/<hex>`. Writes stream through a
//! [`BlobWriter`] into `blobs/tmp/`, hashing as they go; `finish` fsyncs the
//! file, renames it into place and fsyncs the directory, so a blob either
//! exists whole under its name or not at all — a crash leaves only a
//! temporary file, which the next sweep deletes. Identical content is stored
//! once.
//!
//! The store does not know who uses a blob: the records that reference one
//! (plugins, caches, artifacts) live in the store, and [`BlobStore::sweep`]
//! deletes the blobs none of them names (see `retention`).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// Prefix of every digest.
pub const DIGEST_PREFIX: &str = "blake3:";

/// The blob directory.
pub struct BlobStore {
    dir: PathBuf,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `blake3:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files deleted.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// Checks that `digest` is `blake3:` + 64 lowercase hex digits, so that it
/// can name a file.
pub fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix(DIGEST_PREFIX)
        .ok_or_else(|| Error::invalid(format!("`{digest}` is not a digest (expected blake3:<64 hex digits>)")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::invalid(format!("`{digest}` is not a digest (expected blake3:<64 hex digits>)")));
    }
    Ok(hex)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

impl BlobStore {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        let hex = parse_digest(digest)?;
        Ok(self.dir.join(&hex[..2]).join(hex))
    }

    /// Whether the blob exists.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|p| p.is_file())
    }

    /// Opens a blob for reading, with its size.
    pub async fn open_read(&self, digest: &str) -> Result<(tokio::fs::File, u64)> {
        let path = self.path(digest)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::not_found(format!("blob {digest} is not in the store")),
            _ => io("cannot open", &path, e),
        })?;
        let size = file.metadata().await.map_err(|e| io("cannot stat", &path, e))?.len();
        Ok((file, size))
    }

    /// Starts writing a blob of at most `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter> {
        let mut name = [0u8; 12];
        getrandom::fill(&mut name).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let tmp = self.dir.join("tmp").join(hex::encode(name));
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| io("cannot create", &tmp, e))?;
        Ok(BlobWriter {
            dir: self.dir.clone(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            hasher: blake3::Hasher::new(),
            size: 0,
            limit,
        })
    }

    /// Stores `data` (small blobs).
    pub async fn put(&self, data: &[u8]) -> Result<Blob> {
        let mut w = self.writer(data.len() as u64).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Deletes every blob not in `keep`, and temporary files, that is older
    /// than `grace` (so uploads in progress, whose records are not written
    /// yet, survive).
    pub fn sweep(&self, keep: &HashSet<String>, grace: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        let now = SystemTime::now();
        let old = |m: &std::fs::Metadata| m.modified().ok().and_then(|t| now.duration_since(t).ok()) >= Some(grace);
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io("cannot list", &self.dir, e))?;
        for shard in entries.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            let is_tmp = shard.file_name() == "tmp";
            for f in files.flatten() {
                let Ok(meta) = f.metadata() else { continue };
                let name = f.file_name().to_string_lossy().into_owned();
                let referenced = !is_tmp && keep.contains(&format!("{DIGEST_PREFIX}{name}"));
                if !referenced && meta.is_file() && old(&meta) && std::fs::remove_file(f.path()).is_ok() {
                    swept.files += 1;
                    swept.bytes += meta.len();
                }
            }
        }
        Ok(swept)
    }
}

/// A blob being written; see [`BlobStore::writer`].
pub struct BlobWriter {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hasher: blake3::Hasher,
    size: u64,
    limit: u64,
}

impl BlobWriter {
    /// Appends bytes; fails past the size limit.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(Error::TooLarge(format!("larger than the limit of {} bytes", self.limit)));
        }
        self.hasher.update(data);
        let file = self.file.as_mut().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        file.write_all(data).await.map_err(|e| io("cannot write", &self.tmp, e))
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable under its digest.
    pub async fn finish(mut self) -> Result<Blob> {
        let mut file = self.file.take().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        file.flush().await.map_err(|e| io("cannot write", &self.tmp, e))?;
        let file = file.into_inner();
        file.sync_all().await.map_err(|e| io("cannot sync", &self.tmp, e))?;
        drop(file);
        let hex = self.hasher.finalize().to_hex().to_string();
        let shard = self.dir.join(&hex[..2]);
        let dest = shard.join(&hex);
        let tmp = self.tmp.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&shard).map_err(|e| io("cannot create", &shard, e))?;
            // Same name = same bytes: an existing blob stays as it is.
            std::fs::rename(&tmp, &dest).map_err(|e| io("cannot store", &dest, e))?;
            std::fs::File::open(&shard).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync", &shard, e))
        })
        .await
        .map_err(|e| Error::Internal(format!("blob store task: {e}")))??;
        Ok(Blob { digest: format!("{DIGEST_PREFIX}{hex}"), size: self.size })
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Abandoned (error, client gone): remove the partial file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_content_and_sweeps_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let a = store.put(b"hello").await.unwrap();
        let b = store.put(b"hello").await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest, format!("blake3:{}", blake3::hash(b"hello").to_hex()));
        let c = store.put(b"other").await.unwrap();
        assert!(store.contains(&a.digest) && store.contains(&c.digest));
        let keep: HashSet<String> = [a.digest.clone()].into();
        assert_eq!(store.sweep(&keep, Duration::from_secs(3600)).unwrap(), Swept::default());
        let swept = store.sweep(&keep, Duration::ZERO).unwrap();
        assert_eq!(swept, Swept { files: 1, bytes: 5 });
        assert!(store.contains(&a.digest) && !store.contains(&c.digest));
    }

    #[tokio::test]
    async fn enforces_the_limit_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer(4).await.unwrap();
        w.write(b"abc").await.unwrap();
        assert!(matches!(w.write(b"de").await, Err(Error::TooLarge(_))));
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn digests_are_checked_before_naming_files() {
        assert!(parse_digest("blake3:../../etc/passwd").is_err());
        assert!(parse_digest("sha256:00").is_err());
        assert!(parse_digest(&format!("blake3:{}", "a".repeat(64))).is_ok());
    }
}
