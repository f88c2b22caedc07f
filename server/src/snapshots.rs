//! Workspace snapshots in the blob store: receiving one from a runner,
//! streaming one back for a resumed attempt or a debug shell, and what
//! the sweep must keep.
//!
//! A snapshot is a manifest (`viaduct.v1.SnapshotManifest`, stored
//! zstd-compressed as a blob) and the packs it names: the pack uploaded
//! with it, holding the contents no earlier snapshot of the job had, and
//! earlier packs of the same job. The runner decides what is new; the
//! server checks that a manifest points only into packs of its own job
//! (a runner cannot make a resumed attempt read another job's files),
//! that its entries are sane, and stores it with its step's record
//! (`engine::snapshots`). Retention: `--snapshot-ttl` and
//! `--snapshot-keep-runs` (see `retention`), and a run's removal.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use prost::Message;
use tokio::sync::mpsc;
use tonic::Streaming;
use viaduct_proto::v1::{SaveSnapshotRequest, SnapshotData, SnapshotManifest, save_snapshot_request::Part};

use crate::{
    blobs::BlobStore,
    error::{Error, Result},
    store::{
        Store, T, decode,
        records::{SCHEMA_VERSION, SnapshotRecord},
    },
};

/// Most bytes of an encoded manifest (about half a million entries).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// Manifests checked at once (each is held in memory, decoded and
/// compressed): the rest wait.
const MANIFESTS_AT_ONCE: usize = 4;
/// Bytes per message when a manifest is streamed.
const CHUNK: usize = 256 * 1024;

/// Snapshot retention and size limits.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotLimits {
    /// Snapshots are deleted this long after they were taken.
    pub ttl: Duration,
    /// Snapshots are kept for this many of each pipeline's newest runs.
    pub keep_runs: u32,
    /// Most bytes of new content (one pack) per snapshot.
    pub max_pack_bytes: u64,
    /// Most bytes of new content all snapshots of one job store together
    /// (every attempt).
    pub max_job_bytes: u64,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7 * 24 * 3600),
            keep_runs: 10,
            max_pack_bytes: 8 << 30,
            max_job_bytes: 16 << 30,
        }
    }
}

/// What a saved snapshot stored.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The record to keep with the step.
    pub record: SnapshotRecord,
    /// Files in the manifest.
    pub entries: usize,
    /// The pack of this upload, when the manifest uses it.
    pub pack: Option<String>,
}

/// Snapshots' blobs.
pub struct Snapshots {
    store: Arc<Store>,
    blobs: Arc<BlobStore>,
    manifests: tokio::sync::Semaphore,
    /// Limits.
    pub limits: SnapshotLimits,
}

impl Snapshots {
    /// Over `store` (records) and `blobs`.
    pub fn new(store: Arc<Store>, blobs: Arc<BlobStore>, limits: SnapshotLimits) -> Self {
        Self { store, blobs, limits, manifests: tokio::sync::Semaphore::new(MANIFESTS_AT_ONCE) }
    }

    /// Receives the rest of an upload (the pack, then the manifest) for a
    /// job whose earlier snapshots stored `known` packs of `used` bytes;
    /// stores the pack and the manifest. The caller records the result with
    /// its step; `scope` (repository and pipeline) is what retention keeps
    /// the last runs of.
    pub async fn receive(
        &self,
        stream: &mut Streaming<SaveSnapshotRequest>,
        (known, used): (&BTreeSet<String>, u64),
        scope: &str,
    ) -> Result<Saved> {
        let room = self.limits.max_job_bytes.saturating_sub(used);
        if room == 0 {
            return Err(Error::TooLarge(format!(
                "this job's snapshots hold {used} bytes, the server's --max-snapshot-size-per-job: no more are kept"
            )));
        }
        let limit = self.limits.max_pack_bytes.min(room);
        let mut pack = self.blobs.writer(limit).await?;
        let mut manifest = Vec::new();
        let _turn = self.manifests.acquire().await.map_err(|_| Error::Internal("the server is stopping".into()))?;
        loop {
            let msg = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(Error::invalid(format!("snapshot upload interrupted: {}", e.message()))),
            };
            match msg.part {
                Some(Part::Pack(data)) if manifest.is_empty() => pack.write(&data).await.map_err(|e| match e {
                    Error::TooLarge(_) => Error::TooLarge(format!(
                        "the snapshot's new content is over {limit} bytes (the server's --max-snapshot-size, or what \
                         is left of --max-snapshot-size-per-job)"
                    )),
                    e => e,
                })?,
                Some(Part::Manifest(data)) => {
                    if manifest.len() + data.len() > MAX_MANIFEST_BYTES {
                        return Err(Error::TooLarge(format!(
                            "a snapshot manifest is over {MAX_MANIFEST_BYTES} bytes (too many files)"
                        )));
                    }
                    manifest.extend_from_slice(&data);
                }
                Some(Part::Pack(_)) => return Err(Error::invalid("snapshot pack data after the manifest")),
                Some(Part::Header(_)) | None => return Err(Error::invalid("a second snapshot header")),
            }
        }
        if manifest.is_empty() {
            return Err(Error::invalid("the snapshot upload ended without its manifest"));
        }
        let pack_size = pack.size();
        let pack = pack.finish().await?;
        let mut manifest = SnapshotManifest::decode(manifest.as_slice())
            .map_err(|e| Error::invalid(format!("the snapshot manifest does not decode: {e}")))?;
        check(&manifest, known, pack_size)?;
        for p in &mut manifest.packs {
            if p.is_empty() {
                p.clone_from(&pack.digest);
            }
        }
        let packs: BTreeSet<String> = manifest.packs.iter().cloned().collect();
        let new_pack = packs.contains(&pack.digest).then(|| pack.digest.clone());
        let encoded = zstd::bulk::compress(&manifest.encode_to_vec(), 3)
            .map_err(|e| Error::Internal(format!("compressing a snapshot manifest: {e}")))?;
        let stored = self.blobs.put(&encoded).await?;
        let record = SnapshotRecord {
            schema: SCHEMA_VERSION,
            manifest: stored.digest,
            packs: packs.into_iter().collect(),
            pack_size: if manifest.packs.contains(&pack.digest) { pack_size } else { 0 },
            total_size: manifest.total_size,
            created_ms: crate::store::now_ms(),
            pipeline: scope.to_string(),
        };
        Ok(Saved { record, entries: manifest.entries.len(), pack: new_pack })
    }

    /// The manifest of `record`.
    pub async fn manifest(&self, record: &SnapshotRecord) -> Result<SnapshotManifest> {
        let _turn = self.manifests.acquire().await.map_err(|_| Error::Internal("the server is stopping".into()))?;
        let stored = self.blobs.read_all(&record.manifest, MAX_MANIFEST_BYTES as u64).await?;
        let bytes = zstd::bulk::decompress(&stored, MAX_MANIFEST_BYTES)
            .map_err(|e| Error::Internal(format!("a stored snapshot manifest does not decompress: {e}")))?;
        SnapshotManifest::decode(bytes.as_slice())
            .map_err(|e| Error::Internal(format!("a stored snapshot manifest does not decode: {e}")))
    }

    /// The snapshot `record` as a stream: the manifest in chunks, then each
    /// pack it uses, in order.
    pub async fn stream(
        self: &Arc<Self>,
        record: &SnapshotRecord,
    ) -> Result<mpsc::Receiver<std::result::Result<SnapshotData, tonic::Status>>> {
        let manifest = self.manifest(record).await?;
        let used: BTreeSet<u32> = manifest.entries.iter().filter(|e| e.length > 0).map(|e| e.pack).collect();
        let packs = manifest.packs.clone();
        let encoded = manifest.encode_to_vec();
        let (tx, rx) = mpsc::channel(8);
        let blobs = Arc::clone(&self.blobs);
        tokio::spawn(async move {
            for chunk in encoded.chunks(CHUNK) {
                if tx.send(Ok(SnapshotData { manifest: chunk.to_vec(), ..Default::default() })).await.is_err() {
                    return;
                }
            }
            for index in used {
                let Some(digest) = packs.get(index as usize) else { return };
                if let Err(e) = send_pack(&blobs, digest, index, &tx).await {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Every blob a snapshot names (what the sweep keeps).
    pub fn digests(&self) -> Result<BTreeSet<String>> {
        let mut out = BTreeSet::new();
        for kv in self.store.tree(T::Snapshots).iter() {
            let (_, v) = kv?;
            let rec: SnapshotRecord = decode(T::Snapshots, &v)?;
            out.insert(rec.manifest);
            out.extend(rec.packs);
        }
        Ok(out)
    }
}

/// Streams pack `digest` as the messages of pack `index`.
async fn send_pack(
    blobs: &BlobStore,
    digest: &str,
    index: u32,
    tx: &mpsc::Sender<std::result::Result<SnapshotData, tonic::Status>>,
) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let (mut file, _) = blobs.open_read(digest).await?;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await.map_err(|e| Error::Internal(format!("reading pack {digest}: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        buf.truncate(n);
        if tx.send(Ok(SnapshotData { pack: index, data: buf, ..Default::default() })).await.is_err() {
            return Ok(());
        }
    }
}

/// Checks a manifest from a runner: it names only packs of its own job
/// (or the one it came with, `""`), its entries point into them, and its
/// paths stay relative.
fn check(m: &SnapshotManifest, known: &BTreeSet<String>, pack_size: u64) -> Result<()> {
    for p in &m.packs {
        if !p.is_empty() && !known.contains(p) {
            return Err(Error::PermissionDenied(format!(
                "the snapshot manifest names pack {p}, which no earlier snapshot of this job stored"
            )));
        }
    }
    for e in &m.entries {
        let path = String::from_utf8_lossy(&e.path);
        let bad_path = e.path.is_empty()
            || e.path.starts_with(b"/")
            || e.path.split(|b| *b == b'/').any(|c| c.is_empty() || c == b".." || c == b".");
        if bad_path {
            return Err(Error::invalid(format!(
                "the snapshot manifest has an entry `{path}`, which is not a relative path"
            )));
        }
        if e.length == 0 {
            continue;
        }
        let pack = m.packs.get(e.pack as usize).ok_or_else(|| {
            Error::invalid(format!(
                "entry `{path}` of the snapshot manifest names pack {}, which it does not list",
                e.pack
            ))
        })?;
        if pack.is_empty() && e.offset.checked_add(e.length).is_none_or(|end| end > pack_size) {
            return Err(Error::invalid(format!("entry `{path}` of the snapshot manifest points past the pack's end")));
        }
    }
    Ok(())
}
