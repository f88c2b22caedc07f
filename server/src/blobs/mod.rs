//! The content-addressed blob store: plugin components, cache archives and
//! artifacts — on the local disk (the default) or in an S3-protocol object
//! store.
//!
//! A blob is named by the blake3 hash of its bytes (`blake3:<hex>`) and
//! stored under `blobs/<first two hex digits>/<hex>` (a directory under
//! `DATA_DIR`, or keys under the bucket's prefix). Writes stream through a
//! [`BlobWriter`], hashing as they go, into a temporary name (`tmp/…`);
//! `finish` makes the bytes durable and only then gives them their name, so
//! a blob either exists whole under its name or not at all — a crash or an
//! abandoned upload leaves only a temporary, which the next sweep deletes.
//! Identical content is stored once. Nothing is ever held whole in memory:
//! reads are streams, writes go out in bounded parts.
//!
//! The store does not know who uses a blob: the records that reference one
//! (plugins, caches, artifacts) live in the store, and [`BlobStore::sweep`]
//! deletes the blobs none of them names (see `depot`).
//!
//! Backends: [`local`] (files) and [`object`] (the `object_store` crate's
//! S3 client); both pass the one [`conformance`] suite.

pub mod local;
pub mod object;

use std::{collections::HashSet, path::Path, pin::Pin, time::Duration};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// Prefix of every digest.
pub const DIGEST_PREFIX: &str = "blake3:";

/// Where blobs live (`--blob-store`).
#[derive(Debug, Clone, Default)]
pub enum BlobConfig {
    /// Files under `DATA_DIR/blobs` (the default).
    #[default]
    Local,
    /// An S3-protocol bucket.
    S3(object::S3Config),
}

impl BlobConfig {
    /// `local`, or `s3://BUCKET[/PREFIX]?endpoint=…` (see
    /// [`object::S3Config::parse`]) with its secret key in `secret_file`.
    pub fn parse(spec: &str, secret_file: Option<&Path>) -> anyhow::Result<Self> {
        if spec == "local" {
            anyhow::ensure!(secret_file.is_none(), "--blob-store-secret-file goes with an s3:// --blob-store");
            return Ok(Self::Local);
        }
        Ok(Self::S3(object::S3Config::parse(spec, secret_file)?))
    }
}

/// The blob store.
pub struct BlobStore {
    backend: Backend,
}

enum Backend {
    Local(local::LocalBlobs),
    Object(object::ObjectBlobs),
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `blake3:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// A blob's bytes, streamed.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Blobs and temporaries deleted.
    pub files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// Checks that `digest` is `blake3:` + 64 lowercase hex digits, so that it
/// can name a file or a key; returns the hex.
pub fn parse_digest(digest: &str) -> Result<&str> {
    let hex = digest
        .strip_prefix(DIGEST_PREFIX)
        .ok_or_else(|| Error::invalid(format!("`{digest}` is not a digest (expected blake3:<64 hex digits>)")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Error::invalid(format!("`{digest}` is not a digest (expected blake3:<64 hex digits>)")));
    }
    Ok(hex)
}

/// A fresh random name for a temporary.
fn temporary_name() -> Result<String> {
    let mut name = [0u8; 12];
    getrandom::fill(&mut name).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(hex::encode(name))
}

/// The most bytes [`BlobStore::read_range`] reads at once.
pub const MAX_RANGE: u64 = 64 << 20;

/// Whether a stored name is a blob's (its hex), as opposed to anything
/// else a sweep may find.
fn is_blob_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    /// Opens the store `config` names; local blobs go under `data_dir/blobs`.
    /// An object store is checked (its bucket listed) before the server
    /// starts, so a wrong endpoint, bucket or key fails here.
    pub async fn open(config: &BlobConfig, data_dir: &Path) -> Result<Self> {
        let backend = match config {
            BlobConfig::Local => Backend::Local(local::LocalBlobs::open(&data_dir.join("blobs"))?),
            BlobConfig::S3(s3) => Backend::Object(object::ObjectBlobs::open(s3).await?),
        };
        Ok(Self { backend })
    }

    /// A store of files under `dir`.
    pub fn local(dir: &Path) -> Result<Self> {
        Ok(Self { backend: Backend::Local(local::LocalBlobs::open(dir)?) })
    }

    /// Where the blobs are, for the logs (never a secret).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local(b) => b.describe(),
            Backend::Object(b) => b.describe(),
        }
    }

    /// Whether the blob exists.
    pub async fn contains(&self, digest: &str) -> Result<bool> {
        let hex = parse_digest(digest)?;
        match &self.backend {
            Backend::Local(b) => Ok(b.contains(hex)),
            Backend::Object(b) => b.contains(hex).await,
        }
    }

    /// Opens a blob for reading, with its size. `NotFound` if absent.
    pub async fn open_read(&self, digest: &str) -> Result<(BlobReader, u64)> {
        let hex = parse_digest(digest)?;
        let found = match &self.backend {
            Backend::Local(b) => b.open_read(hex).await?,
            Backend::Object(b) => b.open_read(hex).await?,
        };
        found.ok_or_else(|| Error::not_found(format!("blob {digest} is not in the store")))
    }

    /// Bytes `range` of a blob (fewer where it ends first): one request,
    /// however large the blob. At most [`MAX_RANGE`] bytes.
    pub async fn read_range(&self, digest: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let hex = parse_digest(digest)?;
        if range.end.saturating_sub(range.start) > MAX_RANGE {
            return Err(Error::TooLarge(format!("a read of more than {MAX_RANGE} bytes of a blob at once")));
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let found = match &self.backend {
            Backend::Local(b) => b.read_range(hex, range).await?,
            Backend::Object(b) => b.read_range(hex, range).await?,
        };
        found.ok_or_else(|| Error::not_found(format!("blob {digest} is not in the store")))
    }

    /// Reads a whole blob of at most `limit` bytes (plugin components, which
    /// are checked as a whole).
    pub async fn read_all(&self, digest: &str, limit: u64) -> Result<Vec<u8>> {
        let (reader, size) = self.open_read(digest).await?;
        if size > limit {
            return Err(Error::TooLarge(format!("blob {digest} is {size} bytes, over the limit of {limit}")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| Error::Internal(format!("reading blob {digest}: {e}")))?;
        if bytes.len() as u64 != size {
            return Err(Error::Internal(format!("blob {digest}: {size} bytes announced, {} read", bytes.len())));
        }
        Ok(bytes)
    }

    /// Starts writing a blob of at most `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter> {
        let (sink, limit) = match &self.backend {
            Backend::Local(b) => (Sink::Local(b.stage().await?), limit),
            Backend::Object(b) => (Sink::Object(b.stage()?), limit.min(object::MAX_OBJECT_BYTES)),
        };
        Ok(BlobWriter { sink, hasher: blake3::Hasher::new(), size: 0, limit })
    }

    /// Stores `data` (small blobs).
    pub async fn put(&self, data: &[u8]) -> Result<Blob> {
        let mut w = self.writer(data.len() as u64).await?;
        w.write(data).await?;
        w.finish().await
    }

    /// Deletes every blob not in `keep`, and temporaries, older than `grace`
    /// (so uploads in progress, whose records are not written yet, survive).
    pub async fn sweep(&self, keep: &HashSet<String>, grace: Duration) -> Result<Swept> {
        let keep_hex: HashSet<&str> = keep.iter().filter_map(|d| d.strip_prefix(DIGEST_PREFIX)).collect();
        match &self.backend {
            Backend::Local(b) => b.sweep(&keep_hex, grace).await,
            Backend::Object(b) => b.sweep(&keep_hex, grace).await,
        }
    }
}

/// A blob being written; see [`BlobStore::writer`]. Dropped before
/// [`finish`](Self::finish) (an error, a client gone), its temporary is
/// removed.
pub struct BlobWriter {
    sink: Sink,
    hasher: blake3::Hasher,
    size: u64,
    limit: u64,
}

enum Sink {
    Local(local::Staged),
    Object(object::Staged),
}

impl BlobWriter {
    /// The most bytes it takes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Appends bytes; fails past the size limit.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(Error::TooLarge(format!("larger than the limit of {} bytes", self.limit)));
        }
        self.hasher.update(data);
        match &mut self.sink {
            Sink::Local(s) => s.write(data).await,
            Sink::Object(s) => s.write(data).await,
        }
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable under its digest.
    pub async fn finish(self) -> Result<Blob> {
        let hex = self.hasher.finalize().to_hex().to_string();
        match self.sink {
            Sink::Local(s) => s.finish(&hex).await?,
            Sink::Object(s) => s.finish(&hex).await?,
        }
        Ok(Blob { digest: format!("{DIGEST_PREFIX}{hex}"), size: self.size })
    }
}

#[cfg(test)]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_naming_files() {
        assert!(parse_digest("blake3:../../etc/passwd").is_err());
        assert!(parse_digest("sha256:00").is_err());
        assert!(parse_digest(&format!("blake3:{}", "A".repeat(64))).is_err());
        assert!(parse_digest(&format!("blake3:{}", "a".repeat(64))).is_ok());
    }

    /// A fresh bucket on the S3 server `cargo xtask test` starts
    /// (`VIADUCT_TEST_S3*`), as a `--blob-store` config; `None` (skipped)
    /// without one, unless fixtures are required.
    pub fn test_bucket(name: &str) -> Option<BlobConfig> {
        let Ok(endpoint) = std::env::var("VIADUCT_TEST_S3") else {
            assert!(
                std::env::var_os("VIADUCT_FIXTURES_REQUIRED").is_none(),
                "VIADUCT_TEST_S3 is not set: run the tests with `cargo xtask test`"
            );
            eprintln!("skipped: no S3 server (VIADUCT_TEST_S3; `cargo xtask test` starts one)");
            return None;
        };
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} goes with VIADUCT_TEST_S3"));
        let bucket = format!("{name}-{}", std::process::id());
        // s3s-fs keeps a bucket as a directory of its root.
        let dir = std::path::Path::new(&var("VIADUCT_TEST_S3_ROOT")).join(&bucket);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), var("VIADUCT_TEST_S3_SECRET_KEY")).unwrap();
        let spec = format!(
            "s3://{bucket}/some/prefix?endpoint={endpoint}&access_key_id={}",
            var("VIADUCT_TEST_S3_ACCESS_KEY")
        );
        Some(BlobConfig::parse(&spec, Some(secret.path())).unwrap())
    }

    #[tokio::test]
    async fn s3_blobs_conform() {
        let Some(config) = test_bucket("conform") else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&config, dir.path()).await.unwrap();
        conformance::run(&store).await;
        assert!(!dir.path().join("blobs").exists(), "nothing went to the local disk");
    }

    #[tokio::test]
    async fn a_wrong_bucket_or_key_fails_at_open() {
        let Some(BlobConfig::S3(mut config)) = test_bucket("open") else { return };
        let dir = tempfile::tempdir().unwrap();
        let good = config.clone();
        config.bucket = "no-such-bucket".into();
        let e = BlobStore::open(&BlobConfig::S3(config), dir.path()).await.err().unwrap().to_string();
        assert!(e.contains("cannot list s3://no-such-bucket/"), "{e}");
        let mut config = good;
        config.access_key_id = Some("nobody".into());
        let e = BlobStore::open(&BlobConfig::S3(config), dir.path()).await.err().unwrap().to_string();
        assert!(e.contains("cannot list"), "{e}");
    }

    #[tokio::test]
    async fn local_blobs_conform() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&BlobStore::local(dir.path()).unwrap()).await;
        // Nothing is left in the temporary directory.
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
