//! What the snapshots of a job know of its workspace: each file's stat key
//! and contents, and where each content's frame is.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::stat::FileStat;
use viaduct_proto::v1::{SnapshotManifest, snapshot_entry};

use super::walk::{self, Found, Kind};
use super::{from_hex, now_ns, racy_grace, to_ns};

/// What changes when a file does: when none of it changed since its
/// contents were read, they are taken to be the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    /// Also the time of the last change: see [`super::trusted`].
    pub ctime_ns: i64,
    mode: u32,
}

impl StatKey {
    /// The key of the file `stat` describes.
    pub fn of(stat: &FileStat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: to_ns(stat.st_mtime, stat.st_mtime_nsec),
            ctime_ns: to_ns(stat.st_ctime, stat.st_ctime_nsec),
            mode: stat.st_mode,
        }
    }
}

/// A file as the last snapshot recorded it.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    /// Its stat key then; `None` when it cannot be trusted (the file was
    /// changing then): its contents are read again next time.
    pub stat: Option<StatKey>,
    /// blake3 of its contents.
    pub hash: [u8; 32],
    /// Bytes.
    pub size: u64,
}

/// Where a content's zstd frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Extent {
    /// Index in [`Known::packs`].
    pub pack: u32,
    /// Offset of the frame in its pack.
    pub offset: u64,
    /// Bytes of the frame.
    pub length: u64,
}

/// What a snapshot knows of the files it recorded, to make the next one
/// incremental: each file's stat key and contents, and the frame in a
/// stored pack of every content the job's snapshots hold.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Pack digests; `""` for the pack of the last snapshot until
    /// [`Known::pack_stored`] names it.
    pub(super) packs: Vec<String>,
    /// Frames by content (blake3).
    pub(super) contents: HashMap<[u8; 32], Extent>,
    /// Files by path relative to the workspace.
    pub(super) files: HashMap<Box<[u8]>, Recorded>,
}

impl Known {
    /// Nothing known (first snapshot of a fresh workspace).
    pub fn new() -> Self {
        Self::default()
    }

    /// After a restore: what `manifest` holds, and the stat keys of the
    /// files as restored at `workspace` (so the first snapshot after a
    /// restore does not re-hash unchanged files). Call it right after
    /// [`super::restore`], before anything else writes to the workspace;
    /// it waits (at most about a second) until a change to a restored file
    /// can no longer leave its stat key as it was. A file it cannot look at
    /// is read again by the next snapshot.
    pub fn after_restore(manifest: &SnapshotManifest, workspace: &Path) -> Self {
        let mut known = Self { packs: manifest.packs.clone(), ..Self::default() };
        let mut wanted = HashMap::new();
        for e in manifest.entries.iter().filter(|e| e.kind == snapshot_entry::Kind::File as i32) {
            let Some(hash) = from_hex(&e.blake3) else { continue };
            if e.size > 0 && (e.pack as usize) < known.packs.len() {
                let extent = Extent { pack: e.pack, offset: e.offset, length: e.length };
                known.contents.entry(hash).or_insert(extent);
            }
            wanted.insert(e.path.as_slice(), (hash, e.size));
        }
        let newest = known.stat_restored(workspace, &wanted);
        settle(newest);
        known
    }

    /// The stat keys of the restored files that are as `wanted` says;
    /// returns the newest ctime among them.
    fn stat_restored(&mut self, workspace: &Path, wanted: &HashMap<&[u8], ([u8; 32], u64)>) -> Option<i64> {
        let mut root = walk::open_root(workspace).ok()?;
        let now = now_ns();
        let mut newest = None;
        let mut visit = |f: Found<'_>| {
            let Some(&(hash, size)) = wanted.get(f.path) else { return Ok(()) };
            let key = StatKey::of(f.stat);
            if walk::kind(f.stat) != Kind::File || u64::try_from(f.stat.st_size).ok() != Some(size) {
                return Ok(());
            }
            // A change time ahead of the clock cannot be waited out.
            let stat = (key.ctime_ns <= now).then_some(key);
            if stat.is_some() {
                newest = newest.max(Some(key.ctime_ns));
            }
            self.files.insert(f.path.into(), Recorded { stat, hash, size });
            Ok(())
        };
        // What could not be walked is read again next time.
        walk::walk(&mut root, &mut visit).ok();
        newest
    }

    /// The pack of the snapshot this came from was stored as `digest`:
    /// the next snapshot refers to its frames by that digest. Until this
    /// is called, that pack counts as lost and the next snapshot writes
    /// its contents anew.
    pub fn pack_stored(&mut self, digest: &str) {
        if digest.is_empty() {
            return;
        }
        for pack in self.packs.iter_mut().filter(|p| p.is_empty()) {
            *pack = digest.to_string();
        }
    }

    /// Files known.
    pub fn files(&self) -> usize {
        self.files.len()
    }

    /// Contents known (each in a pack).
    pub fn contents(&self) -> usize {
        self.contents.len()
    }
}

/// Waits until a change to a file last changed at `newest` would change
/// its stat key.
fn settle(newest: Option<i64>) {
    let Some(newest) = newest else { return };
    let wait = newest.saturating_add(racy_grace(newest)).saturating_sub(now_ns());
    if let Ok(wait) = u64::try_from(wait) {
        std::thread::sleep(Duration::from_nanos(wait.min(super::RACY_COARSE_NS as u64)));
    }
}
