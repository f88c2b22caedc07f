//! The server's state for its operators (`Admin.Status`, `viaduct admin
//! status`): version, store size per tree, the data directory's disk,
//! queue and runners, and retention (the last pass, what a pass would
//! remove now). Reading it scans every tree and walks the runs once (a dry
//! run): admins only, on a blocking thread.

use std::{path::PathBuf, sync::Arc};

use viaduct_proto::v1::{AdminStatus, TreeSize};

use crate::{
    convert,
    engine::Engine,
    error::{Error, Result},
    retention::Retention,
    space::DiskRoom,
    store::{Store, T, compact::files_size},
};

/// What `Admin.Status` reads.
pub struct Status {
    /// The engine (queue and runner gauges).
    pub engine: Arc<Engine>,
    /// The store.
    pub store: Arc<Store>,
    /// Retention (its last pass, its backlog).
    pub retention: Arc<Retention>,
    /// The data directory's free space.
    pub room: Arc<DiskRoom>,
    /// The sled database's directory; `None` on PostgreSQL.
    pub sled_dir: Option<PathBuf>,
    /// When the server started (ms).
    pub started_ms: i64,
    /// Commit statuses sent to forges (their counters).
    pub forges: Arc<crate::forges::Forges>,
    /// Notifications (their counters).
    pub notifier: Arc<crate::notify::Notifier>,
}

impl Status {
    /// The status now.
    pub async fn read(self: &Arc<Self>) -> Result<AdminStatus> {
        let backlog = self.retention.prune(true).await?.runs_removed;
        let this = Arc::clone(self);
        let mut status = tokio::task::spawn_blocking(move || this.read_blocking())
            .await
            .map_err(|e| Error::Internal(format!("status: {e}")))??;
        status.retention_backlog = backlog;
        Ok(status)
    }

    fn read_blocking(&self) -> Result<AdminStatus> {
        let mut trees = Vec::with_capacity(T::ALL.len());
        for t in T::ALL {
            let (records, bytes) = self.store.tree_size(t)?;
            trees.push(TreeSize { name: t.name().to_string(), records, bytes });
        }
        trees.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
        let m = self.engine.metrics();
        let free = self.room.free();
        Ok(AdminStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: convert::timestamp(self.started_ms),
            store: if self.sled_dir.is_some() { "sled" } else { "postgres" }.to_string(),
            trees,
            store_file_bytes: self.sled_dir.as_deref().map_or(0, files_size),
            disk_free_bytes: free.unwrap_or(0),
            min_free_disk_bytes: self.room.min_free(),
            // Unknown free space refuses nothing (see `space`).
            refusing_new_work: free.is_some_and(|f| f < self.room.min_free()),
            queued_jobs: m.queued as u64,
            running_jobs: m.running as u64,
            runners_connected: m.runners_connected as u64,
            runner_slots: m.slots as u64,
            last_prune: self.retention.last_report(),
            retention_backlog: 0,
        })
    }
}
