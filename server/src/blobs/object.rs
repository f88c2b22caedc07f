//! Blobs in an S3-protocol bucket, through the `object_store` crate:
//! `<prefix>/blobs/<hh>/<hex>`, and `<prefix>/tmp/<random>` while being
//! written.
//!
//! Writes stream out in parts of [`PART_BYTES`] (a multipart upload once a
//! blob outgrows one part; at most [`PARTS_IN_FLIGHT`] parts in memory), so
//! memory per upload is bounded whatever the blob's size. `finish` completes
//! the upload under the temporary name — the bytes are durable when the
//! store acknowledges it — then copies it to the blob's name (server side)
//! and deletes the temporary: a reader never sees half a blob under a
//! digest. An abandoned upload is aborted; if the server dies first, the
//! sweep deletes the temporary object (incomplete multipart uploads are the
//! bucket's lifecycle rule's to clean: see docs/scaling.md).
//!
//! Reads stream too, in ranged requests of [`READ_RANGE_BYTES`], each with
//! its own timeout — a stalled connection fails one range, not a 4 GiB
//! download after an hour.
//!
//! Credentials never go in the `--blob-store` URL: the access key id may
//! (it is not secret), the secret key comes from a file or the standard
//! `AWS_*` variables (which also give session tokens and instance roles).

use std::{collections::HashSet, path::Path as FsPath, sync::Arc, time::Duration};

use futures_util::{StreamExt, TryStreamExt};
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig, aws::AmazonS3Builder,
    buffered::BufWriter, path::Path,
};
use tokio::io::AsyncWriteExt;

use super::{BlobReader, Swept, is_blob_name, temporary_name};
use crate::error::{Error, Result};

/// Bytes per uploaded part (S3 wants at least 5 MiB per part but the last).
pub const PART_BYTES: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Bytes per ranged read request.
pub const READ_RANGE_BYTES: u64 = 64 << 20;
/// The largest blob an object store keeps: S3's server-side copy (which
/// names a finished upload by its digest) takes at most 5 GiB.
pub const MAX_OBJECT_BYTES: u64 = 5 << 30;

/// Query keys `--blob-store` accepts.
const KEYS: &str = "endpoint, region, access_key_id, allow_http";

/// An S3-protocol bucket (`--blob-store s3://BUCKET[/PREFIX]?…`).
#[derive(Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`).
    pub prefix: String,
    /// The S3 endpoint (`https://…`; default: AWS, or `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION`, else us-east-1).
    pub region: Option<String>,
    /// The access key id (default: `AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret key, from `--blob-store-secret-file`.
    secret_access_key: Option<String>,
    /// Plain HTTP to a non-loopback endpoint, on purpose.
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn loopback(host: Option<url::Host<&str>>) -> bool {
    match host {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl S3Config {
    /// Parses `s3://BUCKET[/PREFIX]?endpoint=URL&region=R&access_key_id=ID
    /// &allow_http=true`; the secret key is read from `secret_file`. A URL
    /// carrying a secret is refused without being repeated.
    pub fn parse(spec: &str, secret_file: Option<&FsPath>) -> anyhow::Result<Self> {
        let usage = "--blob-store must be `local` or s3://BUCKET[/PREFIX]?endpoint=URL&region=R&access_key_id=ID";
        let url = url::Url::parse(spec).map_err(|e| anyhow::anyhow!("{usage} ({e})"))?;
        anyhow::ensure!(url.scheme() == "s3", "{usage}");
        anyhow::ensure!(
            url.username().is_empty() && url.password().is_none(),
            "--blob-store's URL carries credentials (not repeated here): give access_key_id=… in it and the \
             secret key in --blob-store-secret-file or AWS_SECRET_ACCESS_KEY"
        );
        let bucket = url.host_str().unwrap_or_default().to_string();
        anyhow::ensure!(
            valid_bucket(&bucket),
            "--blob-store: `{bucket}` is not a bucket name (3–63 lowercase letters, digits, `.` or `-`)"
        );
        let prefix = url.path().trim_matches('/').to_string();
        anyhow::ensure!(
            prefix.split('/').all(|p| prefix.is_empty() || (!p.is_empty() && p != "." && p != "..")),
            "--blob-store: the prefix `{prefix}` has an empty, `.` or `..` segment"
        );
        let mut cfg = Self {
            bucket,
            prefix,
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
        };
        for (k, v) in url.query_pairs() {
            match &*k {
                "endpoint" => cfg.endpoint = Some(v.into_owned()),
                "region" => cfg.region = Some(v.into_owned()),
                "access_key_id" => cfg.access_key_id = Some(v.into_owned()),
                "allow_http" => {
                    cfg.allow_http =
                        v.parse().map_err(|_| anyhow::anyhow!("--blob-store: allow_http is true or false"))?
                }
                k if k.contains("secret") || k.contains("token") || k.contains("password") => anyhow::bail!(
                    "--blob-store: secrets do not go in the URL (the value is not repeated here): use \
                     --blob-store-secret-file or AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN"
                ),
                k => anyhow::bail!("--blob-store: unknown setting `{k}` (known: {KEYS})"),
            }
        }
        if let Some(endpoint) = &cfg.endpoint {
            let e = url::Url::parse(endpoint).map_err(|e| anyhow::anyhow!("--blob-store: endpoint: {e}"))?;
            anyhow::ensure!(
                matches!(e.scheme(), "http" | "https"),
                "--blob-store: the endpoint must be an http(s) URL"
            );
            anyhow::ensure!(
                e.scheme() == "https" || cfg.allow_http || loopback(e.host()),
                "--blob-store: plain http to {} would send blobs and signed requests unencrypted; use https, \
                 or add allow_http=true on purpose",
                e.host_str().unwrap_or_default()
            );
        }
        cfg.secret_access_key = secret_file
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|p| p.trim_end_matches(['\r', '\n']).to_string())
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))
            })
            .transpose()?;
        let env = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        anyhow::ensure!(
            cfg.access_key_id.is_none() || cfg.secret_access_key.is_some() || env("AWS_SECRET_ACCESS_KEY"),
            "--blob-store names an access_key_id but no secret key is given (--blob-store-secret-file)"
        );
        anyhow::ensure!(
            cfg.secret_access_key.is_none() || cfg.access_key_id.is_some() || env("AWS_ACCESS_KEY_ID"),
            "--blob-store-secret-file is given but no access_key_id (in the URL or AWS_ACCESS_KEY_ID)"
        );
        Ok(cfg)
    }
}

/// Blobs in a bucket.
pub struct ObjectBlobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    describe: String,
}

fn store_error(what: &str, e: object_store::Error) -> Error {
    Error::Internal(format!("object store: {what}: {e}"))
}

impl ObjectBlobs {
    /// Connects to the bucket and lists it once (a wrong endpoint, bucket
    /// or key fails here, not at the first upload).
    pub async fn open(cfg: &S3Config) -> Result<Self> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&cfg.bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // A part or a read range, not a whole blob.
                    .with_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig { max_retries: 5, retry_timeout: Duration::from_secs(60), ..Default::default() });
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &cfg.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &cfg.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &cfg.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| store_error("configuration", e))?);
        let describe =
            format!("s3://{}/{} at {}", cfg.bucket, cfg.prefix, cfg.endpoint.as_deref().unwrap_or("the AWS endpoint"));
        let blobs = Self { store, prefix: cfg.prefix.clone(), describe };
        blobs
            .store
            .list_with_delimiter(blobs.under("").as_ref())
            .await
            .map_err(|e| store_error(&format!("cannot list {}", blobs.describe), e))?;
        Ok(blobs)
    }

    /// For the logs.
    pub fn describe(&self) -> String {
        self.describe.clone()
    }

    /// `<prefix>/<rest>` (`None` for the bucket's root).
    fn under(&self, rest: &str) -> Option<Path> {
        let full = [self.prefix.as_str(), rest].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join("/");
        (!full.is_empty()).then(|| Path::from(full))
    }

    fn blob_path(&self, hex: &str) -> Path {
        self.under(&format!("blobs/{}/{hex}", &hex[..2])).unwrap_or_default()
    }

    /// Whether the blob `hex` exists.
    pub async fn contains(&self, hex: &str) -> Result<bool> {
        match self.store.head(&self.blob_path(hex)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("head", e)),
        }
    }

    /// The blob `hex` and its size, or `None`; read in ranged requests.
    pub async fn open_read(&self, hex: &str) -> Result<Option<(BlobReader, u64)>> {
        let path = self.blob_path(hex);
        let size = match self.store.head(&path).await {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(store_error("head", e)),
        };
        let store = Arc::clone(&self.store);
        let ranges =
            (0..size).step_by(READ_RANGE_BYTES as usize).map(move |start| start..(start + READ_RANGE_BYTES).min(size));
        let bytes = futures_util::stream::iter(ranges)
            .then(move |range| {
                let (store, path) = (Arc::clone(&store), path.clone());
                async move {
                    let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
                    store.get_opts(&path, options).await.map(|r| r.into_stream())
                }
            })
            .try_flatten()
            .map_err(std::io::Error::other);
        Ok(Some((Box::pin(tokio_util::io::StreamReader::new(bytes)), size)))
    }

    /// Bytes `range` of the blob `hex` (fewer where it ends), or `None`:
    /// one ranged GET.
    pub async fn read_range(&self, hex: &str, range: std::ops::Range<u64>) -> Result<Option<Vec<u8>>> {
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        match self.store.get_opts(&self.blob_path(hex), options).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_error("get", e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("get", e)),
        }
    }

    /// A temporary object to write a blob into.
    pub fn stage(&self) -> Result<Staged> {
        let tmp = self.under(&format!("tmp/{}", temporary_name()?)).unwrap_or_default();
        let writer = BufWriter::with_capacity(Arc::clone(&self.store), tmp.clone(), PART_BYTES)
            .with_max_concurrency(PARTS_IN_FLIGHT);
        Ok(Staged {
            store: Arc::clone(&self.store),
            tmp,
            dest: self.under("blobs").unwrap_or_default(),
            writer: Some(writer),
        })
    }

    /// See [`super::BlobStore::sweep`]: lists `blobs/` and `tmp/` under the
    /// prefix — nothing else in the bucket is ever touched — and deletes
    /// one by one.
    pub async fn sweep(&self, keep: &HashSet<&str>, grace: Duration) -> Result<Swept> {
        let mut swept = Swept::default();
        for (dir, blobs) in [("blobs", true), ("tmp", false)] {
            self.sweep_under(dir, blobs, keep, grace, &mut swept).await?;
        }
        Ok(swept)
    }

    async fn sweep_under(
        &self,
        dir: &str,
        blobs: bool,
        keep: &HashSet<&str>,
        grace: Duration,
        swept: &mut Swept,
    ) -> Result<()> {
        let now = chrono::Utc::now();
        let mut listing = self.store.list(self.under(dir).as_ref());
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| store_error("list", e))?;
            let key = meta.location.as_ref();
            let name = key.rsplit('/').next().unwrap_or_default();
            // Under blobs/, only names that are digests are ours to judge.
            if blobs && !is_blob_name(name) {
                continue;
            }
            let referenced = blobs && keep.contains(name);
            let age = (now - meta.last_modified).to_std().unwrap_or_default();
            if referenced || age < grace {
                continue;
            }
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    swept.files += 1;
                    swept.bytes += meta.size;
                }
                Err(e) => tracing::warn!(key, error = %e, "cannot delete an unreferenced blob"),
            }
        }
        Ok(())
    }
}

/// A blob being uploaded under its temporary name.
pub struct Staged {
    store: Arc<dyn ObjectStore>,
    tmp: Path,
    /// `<prefix>/blobs`.
    dest: Path,
    writer: Option<BufWriter>,
}

impl Staged {
    /// Appends bytes (a part goes out whenever one is full).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let writer = self.writer.as_mut().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        writer.write_all(data).await.map_err(|e| Error::Internal(format!("object store: upload: {e}")))
    }

    /// Completes the upload, then names it `hex`.
    pub async fn finish(mut self, hex: &str) -> Result<()> {
        let mut writer = self.writer.take().ok_or_else(|| Error::Internal("blob writer already finished".into()))?;
        if let Err(e) = writer.shutdown().await {
            let _ = writer.abort().await;
            let _ = self.store.delete(&self.tmp).await;
            return Err(Error::Internal(format!("object store: completing an upload: {e}")));
        }
        let dest = Path::from(format!("{}/{}/{hex}", self.dest, &hex[..2]));
        // Same name = same bytes; copied even when the blob exists, so its
        // time is new: a sweep that began before this upload was recorded
        // (and does not count it) leaves a blob younger than its grace.
        let named = self.store.copy(&self.tmp, &dest).await;
        let _ = self.store.delete(&self.tmp).await;
        named.map_err(|e| store_error("naming an upload", e))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Abandoned (error, client gone): abort the upload, delete what
        // went out. Without a runtime the sweep does it later.
        if let (Some(mut writer), Ok(rt)) = (self.writer.take(), tokio::runtime::Handle::try_current()) {
            let (store, tmp) = (Arc::clone(&self.store), self.tmp.clone());
            rt.spawn(async move {
                let _ = writer.abort().await;
                let _ = store.delete(&tmp).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> anyhow::Result<S3Config> {
        S3Config::parse(spec, None)
    }

    #[test]
    fn urls_are_checked_and_secrets_never_echoed() {
        let ok = parse("s3://ci-blobs/viaduct/prod?endpoint=http://127.0.0.1:9000&region=eu-1").unwrap();
        assert_eq!((ok.bucket.as_str(), ok.prefix.as_str()), ("ci-blobs", "viaduct/prod"));
        assert_eq!(ok.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        for (bad, says) in [
            ("s3://AK:hunter2@bucket", "carries credentials"),
            ("s3://bucket?secret_access_key=hunter2", "secrets do not go in the URL"),
            ("s3://bucket?session_token=hunter2", "secrets do not go in the URL"),
            ("s3://bucket?endpoint=http://10.0.0.5:9000", "allow_http=true"),
            ("s3://bucket?colour=blue", "unknown setting `colour`"),
            ("s3://Bucket_1", "not a bucket name"),
            ("s3://bucket/a//b", "empty"),
            ("gs://bucket", "must be `local` or s3://"),
            ("s3://bucket?access_key_id=AK", "no secret key"),
        ] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains("hunter2"), "{bad} echoed its secret: {e}");
        }
        assert!(parse("s3://bucket?endpoint=http://10.0.0.5:9000&allow_http=true").is_ok());
        assert!(parse("s3://bucket?endpoint=https://s3.example.com").is_ok());
    }

    #[test]
    fn the_secret_comes_from_its_file_and_stays_out_of_debug() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "hunter2\n").unwrap();
        let cfg = S3Config::parse("s3://bucket?access_key_id=AK", Some(&file)).unwrap();
        assert_eq!(cfg.secret_access_key.as_deref(), Some("hunter2"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
