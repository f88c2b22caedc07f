//! Blobs as files under a directory (`DATA_DIR/blobs`): `<hh>/<hex>`, and
//! `tmp/<random>` while being written. `finish` fsyncs the file, renames it
//! into place and fsyncs the directory.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::io::AsyncWriteExt;

use super::{BlobReader, Swept, is_blob_name, temporary_name};
use crate::error::{Error, Result};

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// The blob directory.
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// Opens (creating) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// For the logs.
    pub fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Whether the blob `hex` exists.
    pub fn contains(&self, hex: &str) -> bool {
        self.path(hex).is_file()
    }

    /// The blob `hex` and its size, or `None`.
    pub async fn open_read(&self, hex: &str) -> Result<Option<(BlobReader, u64)>> {
        let path = self.path(hex);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot open", &path, e)),
        };
        let size = file.metadata().await.map_err(|e| io("cannot stat", &path, e))?.len();
        Ok(Some((Box::pin(file), size)))
    }

    /// Bytes `range` of the blob `hex` (fewer where it ends), or `None`.
    pub async fn read_range(&self, hex: &str, range: std::ops::Range<u64>) -> Result<Option<Vec<u8>>> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(hex);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot open", &path, e)),
        };
        file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(|e| io("cannot seek in", &path, e))?;
        let mut out = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
        file.take(range.end - range.start).read_to_end(&mut out).await.map_err(|e| io("cannot read", &path, e))?;
        Ok(Some(out))
    }

    /// A temporary file to write a blob into.
    pub async fn stage(&self) -> Result<Staged> {
        let tmp = self.dir.join("tmp").join(temporary_name()?);
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| io("cannot create", &tmp, e))?;
        let behind = file.try_clone().await.map_err(|e| io("cannot open", &tmp, e))?.into_std().await;
        Ok(Staged {
            dir: self.dir.clone(),
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            behind: WriteBehind { file: std::sync::Arc::new(behind), written: 0, started: 0 },
        })
    }

    /// See [`super::BlobStore::sweep`].
    pub async fn sweep(&self, keep: &HashSet<&str>, grace: Duration) -> Result<Swept> {
        let dir = self.dir.clone();
        let keep: HashSet<String> = keep.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || sweep_dir(&dir, &keep, grace))
            .await
            .map_err(|e| Error::Internal(format!("blob sweep: {e}")))?
    }
}

fn sweep_dir(dir: &Path, keep: &HashSet<String>, grace: Duration) -> Result<Swept> {
    let mut swept = Swept::default();
    let now = SystemTime::now();
    let old = |m: &std::fs::Metadata| m.modified().ok().and_then(|t| now.duration_since(t).ok()) >= Some(grace);
    let entries = std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    for shard in entries.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
        let is_tmp = shard.file_name() == "tmp";
        for f in files.flatten() {
            let Ok(meta) = f.metadata() else { continue };
            let name = f.file_name().to_string_lossy().into_owned();
            let referenced = !is_tmp && is_blob_name(&name) && keep.contains(&name);
            if !referenced && meta.is_file() && old(&meta) && std::fs::remove_file(f.path()).is_ok() {
                swept.files += 1;
                swept.bytes += meta.len();
            }
        }
    }
    Ok(swept)
}

/// A blob being written to its temporary file.
pub struct Staged {
    dir: PathBuf,
    tmp: PathBuf,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    behind: WriteBehind,
}

/// Starts writing a blob's pages to disk while it is still being received
/// (`sync_file_range`), so that the fsync at the end has little left to
/// do: a large upload is durable about when its last byte arrives, not a
/// whole disk write later.
struct WriteBehind {
    /// A second handle on the file (the first is busy with writes).
    file: std::sync::Arc<std::fs::File>,
    written: u64,
    started: u64,
}

impl WriteBehind {
    /// Bytes written before disk writes of them are started.
    const EVERY: u64 = 8 << 20;
    /// Bytes that may not have reached the file yet: the buffer (1 MiB)
    /// and tokio's write in flight (at most 2 MiB).
    const LAG: u64 = 4 << 20;

    async fn wrote(&mut self, n: usize) {
        self.written += n as u64;
        let upto = self.written.saturating_sub(Self::LAG);
        if upto < self.started + Self::EVERY {
            return;
        }
        let (file, from) = (self.file.clone(), self.started);
        self.started = upto;
        let started = tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let (from, len) = (i64::try_from(from).unwrap_or(i64::MAX), i64::try_from(upto - from).unwrap_or(0));
            // SAFETY: the descriptor is open for as long as `file` lives; the
            // call only starts writeback of that range.
            let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
            if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        })
        .await;
        // Only a head start: the fsync at the end is what makes it durable.
        if let Ok(Err(e)) = started {
            tracing::debug!(error = %e, "sync_file_range failed");
        }
    }
}

impl Staged {
    /// Appends bytes.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let file = self.file.as_mut().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        file.write_all(data).await.map_err(|e| io("cannot write", &self.tmp, e))?;
        self.behind.wrote(data.len()).await;
        Ok(())
    }

    /// Makes the file durable under the name `hex`.
    pub async fn finish(mut self, hex: &str) -> Result<()> {
        let mut file = self.file.take().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        file.flush().await.map_err(|e| io("cannot write", &self.tmp, e))?;
        let file = file.into_inner();
        file.sync_all().await.map_err(|e| io("cannot sync", &self.tmp, e))?;
        drop(file);
        let shard = self.dir.join(&hex[..2]);
        let dest = shard.join(hex);
        let tmp = self.tmp.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            std::fs::create_dir_all(&shard).map_err(|e| io("cannot create", &shard, e))?;
            // Same name = same bytes: an existing blob stays as it is.
            std::fs::rename(&tmp, &dest).map_err(|e| io("cannot store", &dest, e))?;
            std::fs::File::open(&shard).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync", &shard, e))
        })
        .await
        .map_err(|e| Error::Internal(format!("blob store task: {e}")))?
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Abandoned (error, client gone): remove the partial file.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
