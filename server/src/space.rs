//! The data directory's free space, as the engine's [`Room`]: below
//! `--min-free-disk` the server refuses new work with `RESOURCE_EXHAUSTED`
//! (webhooks: 503, so forges may redeliver) and says how much is free;
//! reads, running jobs' results and logs go on in the space kept free; and
//! once space returns it accepts work again by itself. Free space is read
//! (statvfs) at most once a second.

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    engine::room::Room,
    error::{Error, Result},
};

/// How long a reading of the free space is used.
const FRESH: Duration = Duration::from_secs(1);

/// Free space of one directory's filesystem against a floor.
#[derive(Debug)]
pub struct DiskRoom {
    dir: PathBuf,
    min_free: u64,
    last: Mutex<Option<(Instant, u64)>>,
    refusing: AtomicBool,
}

impl DiskRoom {
    /// Watches `dir`'s filesystem, keeping `min_free` bytes free.
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        Self { dir, min_free, last: Mutex::new(None), refusing: AtomicBool::new(false) }
    }

    /// The floor kept free.
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Bytes available to the server on `dir`'s filesystem (a recent
    /// reading); `None` when it cannot be read.
    pub fn free(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, free)) = *last
            && at.elapsed() < FRESH
        {
            return Some(free);
        }
        match nix::sys::statvfs::statvfs(&self.dir) {
            Ok(s) => {
                let free = s.blocks_available().saturating_mul(s.fragment_size());
                *last = Some((Instant::now(), free));
                Some(free)
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory");
                None
            }
        }
    }
}

impl Room for DiskRoom {
    fn check(&self) -> Result<()> {
        // Unknown free space does not stop the server.
        let Some(free) = self.free() else { return Ok(()) };
        if free >= self.min_free {
            if self.refusing.swap(false, Ordering::Relaxed) {
                tracing::info!(free_mib = free >> 20, "disk space returned: accepting new work again");
            }
            return Ok(());
        }
        if !self.refusing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                dir = %self.dir.display(),
                free_mib = free >> 20,
                min_free_mib = self.min_free >> 20,
                "the data directory's disk is nearly full: refusing new work until space returns"
            );
        }
        Err(Error::NoRoom(format!(
            "the server's disk is nearly full ({} MiB free; it keeps {} MiB free for work already accepted, \
             --min-free-disk): new work is refused until space returns; reads and running jobs go on",
            free >> 20,
            self.min_free >> 20
        )))
    }
}
