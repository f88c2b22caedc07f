//! The depot: everything the server keeps in its blob store — plugin
//! components, build caches, job artifacts, finished steps' logs, source
//! archives — and their retention.
//!
//! Retention runs at start and then hourly (and after a cache save that
//! takes the caches past their size limit): caches expire and are evicted
//! ([`Caches::enforce`]), artifacts expire ([`Artifacts::expire`]), then the
//! blob sweep deletes every blob no record names any more. The sweep spares
//! files younger than [`SWEEP_GRACE`], so an upload whose record is not yet
//! written is never lost.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::{
    artifacts::{Artifacts, JobQuota},
    blobs::BlobStore,
    caches::{CacheLimits, Caches},
    error::Result,
    packed_logs::PackedLogs,
    plugins::PluginRegistry,
    snapshots::{SnapshotLimits, Snapshots},
    source_archives::SourceArchives,
    store::Store,
};

/// Blobs younger than this are never swept.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3600);
/// How often ended attempts are looked for, to pack their logs.
const PACK_EVERY: Duration = Duration::from_secs(1);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Retention and size settings.
#[derive(Debug, Clone, Copy)]
pub struct DepotConfig {
    /// Cache limits.
    pub caches: CacheLimits,
    /// Artifacts are deleted this long after upload.
    pub artifact_ttl: Duration,
    /// Largest single artifact.
    pub max_artifact_bytes: u64,
    /// What one job attempt may upload as artifacts.
    pub artifacts_per_job: JobQuota,
    /// Most bytes of source archives kept (the least recently used go).
    pub max_source_archive_bytes: u64,
    /// Workspace snapshots' retention and size.
    pub snapshots: SnapshotLimits,
}

impl Default for DepotConfig {
    fn default() -> Self {
        Self {
            caches: CacheLimits {
                max_bytes: 10 << 30,
                max_scope_bytes: 4 << 30,
                max_entry_bytes: 4 << 30,
                ttl: Duration::from_secs(7 * 24 * 3600),
            },
            artifact_ttl: Duration::from_secs(30 * 24 * 3600),
            max_artifact_bytes: 8 << 30,
            artifacts_per_job: JobQuota { files: 1000, bytes: 16 << 30 },
            max_source_archive_bytes: 10 << 30,
            snapshots: SnapshotLimits::default(),
        }
    }
}

/// The blob store and the indexes over it.
pub struct Depot {
    /// Content-addressed files.
    pub blobs: Arc<BlobStore>,
    /// Published plugins.
    pub plugins: Arc<PluginRegistry>,
    /// Build caches.
    pub caches: Caches,
    /// Job artifacts.
    pub artifacts: Artifacts,
    /// Finished steps' logs.
    pub logs: PackedLogs,
    /// Commits' source trees, as runners fetch them.
    pub sources: SourceArchives,
    /// Workspace snapshots.
    pub snapshots: Arc<Snapshots>,
    /// Settings.
    pub config: DepotConfig,
    retention: tokio::sync::Notify,
}

impl Depot {
    /// Up to `limit` bytes of `key`'s log from `offset`, wherever they are
    /// (the store's chunks, or a packed blob), with the log's size and
    /// whether the step has finished.
    pub async fn read_log(
        &self,
        engine: &crate::engine::Engine,
        key: crate::store::keys::StepKey,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<crate::store::logs::Chunk>, u64, bool)> {
        let read = engine.read_log(key, offset, limit)?;
        let chunks = match read.at {
            crate::engine::read::LogAt::Chunks(chunks) => chunks,
            crate::engine::read::LogAt::Packed(rec) => self.logs.read(&rec, offset, read.limit).await?,
        };
        Ok((chunks, read.size, read.finished))
    }

    /// Over the blob store `blobs`; `link_key` signs artifact download
    /// links.
    pub fn new(blobs: BlobStore, store: &Arc<Store>, config: DepotConfig, link_key: [u8; 32]) -> Arc<Self> {
        let blobs = Arc::new(blobs);
        Arc::new(Self {
            plugins: Arc::new(PluginRegistry::new(Arc::clone(store), Arc::clone(&blobs))),
            caches: Caches::new(Arc::clone(store), config.caches),
            artifacts: Artifacts::new(Arc::clone(store), config.artifact_ttl, link_key, config.artifacts_per_job),
            logs: PackedLogs::new(Arc::clone(store), Arc::clone(&blobs)),
            sources: SourceArchives::new(Arc::clone(store), Arc::clone(&blobs)),
            snapshots: Arc::new(Snapshots::new(Arc::clone(store), Arc::clone(&blobs), config.snapshots)),
            blobs,
            config,
            retention: tokio::sync::Notify::new(),
        })
    }

    /// Asks for a retention pass soon (e.g. after a large cache save).
    pub fn request_retention(&self) {
        self.retention.notify_one();
    }

    /// Saves a cache entry (see [`Caches::save`]); when the caches are now
    /// over their total limit, a retention pass evicts the least recently
    /// used soon. Whether it was stored (the first writer of a key wins).
    pub async fn save_cache(
        &self,
        scope: &crate::caches::Scope,
        kind: viaduct_proto::v1::CacheKind,
        key: &str,
        blob: &crate::blobs::Blob,
        run_id: &str,
    ) -> Result<bool> {
        let stored = self.caches.save(scope, kind, key, blob, run_id).await?;
        if stored && (self.caches.over_limit() || self.caches.scope_over_limit(&scope.scope)?) {
            self.request_retention();
        }
        Ok(stored)
    }

    /// One retention pass (`engine` removes expired snapshots).
    pub async fn retain(&self, engine: &crate::engine::Engine) -> Result<()> {
        let limits = self.config.snapshots;
        let older = crate::store::now_ms() - i64::try_from(limits.ttl.as_millis()).unwrap_or(i64::MAX);
        let expired = engine.expire_snapshots(older, limits.keep_runs as usize)?;
        if expired > 0 {
            tracing::info!(snapshots = expired, "expired snapshots removed");
        }
        self.caches.enforce().await?;
        self.artifacts.expire().await?;
        self.sources.expire(self.config.max_source_archive_bytes)?;
        let mut keep: HashSet<String> = self.plugins.digests()?;
        keep.extend(self.caches.digests()?);
        keep.extend(self.artifacts.digests()?);
        keep.extend(self.logs.digests()?);
        keep.extend(self.sources.digests()?);
        keep.extend(self.snapshots.digests()?);
        let swept = self.blobs.sweep(&keep, SWEEP_GRACE).await?;
        if swept.files > 0 {
            tracing::info!(files = swept.files, bytes = swept.bytes, "unreferenced blobs deleted");
        }
        Ok(())
    }

    /// Packs the logs of ended attempts, as they end (polling every
    /// [`PACK_EVERY`] while there is nothing to pack).
    pub fn spawn_packing(self: &Arc<Self>) {
        let depot = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match depot.logs.pack_pending().await {
                    // Progress: more may wait.
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "packing logs failed"),
                }
                tokio::time::sleep(PACK_EVERY).await;
            }
        });
    }

    /// Runs retention now, hourly, and when asked.
    pub fn spawn_retention(self: &Arc<Self>, engine: Arc<crate::engine::Engine>) {
        let depot = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if let Err(e) = depot.retain(&engine).await {
                    tracing::warn!(error = %e, "retention pass failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(RETENTION_EVERY) => {}
                    () = depot.retention.notified() => {}
                }
            }
        });
    }
}
