//! Offline compaction of the sled database (`viaduct-server compact`).
//!
//! sled reuses space freed by deletes only partly and never shrinks its
//! files, so a store that retention keeps small can still occupy what its
//! largest day needed. Compaction copies every live record into a fresh
//! database (sled's `export`/`import`), checks the copy's checksum against
//! the original's, and swaps it in. The server must be stopped: sled's file
//! lock refuses a second opener.
//!
//! Crash safety: the copy is written to `db.compacting` and marked complete
//! (a `COMPLETE` file, fsynced) before anything is renamed; the swap is
//! `db` → `db.before-compaction`, then `db.compacting` → `db`. Opening the
//! store first finishes or undoes an interrupted swap ([`recover`]): with
//! no `db`, a complete copy is moved in, otherwise the original is moved
//! back; leftovers are removed. At every moment one whole database exists.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Marks a finished copy.
const COMPLETE: &str = "COMPLETE";

/// Sizes before and after a compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Bytes of the database's files before.
    pub before: u64,
    /// And after.
    pub after: u64,
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let at = format!("{what} {}", path.display());
    move |e| Error::Storage(format!("{at}: {e}"))
}

/// Finishes or undoes a compaction interrupted by a crash (see the module
/// docs). Called before the database under `dir` is opened.
pub fn recover(dir: &Path) -> Result<()> {
    let copy = sibling(dir, ".compacting");
    let old = sibling(dir, ".before-compaction");
    if !dir.exists() && old.exists() {
        if copy.join(COMPLETE).exists() {
            tracing::warn!(db = %dir.display(), "finishing an interrupted compaction");
            std::fs::rename(&copy, dir).map_err(io("cannot move in", &copy))?;
        } else {
            tracing::warn!(db = %dir.display(), "undoing an interrupted compaction");
            std::fs::rename(&old, dir).map_err(io("cannot move back", &old))?;
        }
    }
    if old.exists() {
        // Both exist: the swap finished only if `db` is the marked copy.
        if !dir.join(COMPLETE).exists() {
            return Err(Error::Storage(format!(
                "{} and {} both exist and the first is not a finished compaction: keep the one to use as {} \
                 and move the other away",
                dir.display(),
                old.display(),
                dir.display()
            )));
        }
        std::fs::remove_dir_all(&old).map_err(io("cannot remove", &old))?;
    }
    if copy.exists() {
        std::fs::remove_dir_all(&copy).map_err(io("cannot remove", &copy))?;
    }
    // The marker goes last: until then, `db` is known to be the copy.
    let _ = std::fs::remove_file(dir.join(COMPLETE));
    Ok(())
}

/// Compacts the sled database under `dir` (the server stopped).
pub fn compact(dir: &Path) -> Result<Compaction> {
    recover(dir)?;
    if !dir.exists() {
        return Err(Error::not_found(format!("no database at {}", dir.display())));
    }
    let before = files_size(dir);
    let free = nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
        .map_err(|e| Error::Storage(format!("cannot read the free space of {}: {e}", dir.display())))?;
    if free < before {
        return Err(Error::NoRoom(format!(
            "compacting needs room for a copy: {} MiB free, the database's files take {} MiB",
            free >> 20,
            before >> 20
        )));
    }
    let copy = sibling(dir, ".compacting");
    {
        let in_use = |path: &Path, e: String| {
            if e.contains("could not acquire lock") {
                Error::precondition(format!("{} is in use: stop the server first", path.display()))
            } else {
                Error::Storage(format!("cannot open {}: {e}", path.display()))
            }
        };
        // Through the store's backend: what its log holds is replayed into
        // the trees first (the copy is made from the trees alone, and the
        // log goes with the old directory).
        let kv = super::kv::Sled::open(dir).map_err(|e| match e {
            Error::Storage(e) => in_use(dir, e),
            e => e,
        })?;
        let old = kv.db();
        let new = sled::Config::new().path(&copy).open().map_err(|e| in_use(&copy, e.to_string()))?;
        new.import(old.export());
        let storage = |e: sled::Error| Error::Storage(e.to_string());
        if old.checksum().map_err(storage)? != new.checksum().map_err(storage)? {
            drop(new);
            let _ = std::fs::remove_dir_all(&copy);
            return Err(Error::Internal("the compacted copy differs from the database: nothing changed".into()));
        }
        new.flush().map_err(storage)?;
    }
    // sled does not fsync every file it writes (its blob files): the copy
    // is made durable, file by file, before it may replace anything.
    sync_tree(&copy)?;
    let marker = copy.join(COMPLETE);
    std::fs::File::create(&marker).and_then(|f| f.sync_all()).map_err(io("cannot write", &marker))?;
    sync_dir(&copy)?;
    let old = sibling(dir, ".before-compaction");
    std::fs::rename(dir, &old).map_err(io("cannot move aside", dir))?;
    std::fs::rename(&copy, dir).map_err(io("cannot move in", &copy))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    recover(dir)?;
    Ok(Compaction { before, after: files_size(dir) })
}

/// fsyncs every file and directory under `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("cannot read", dir))? {
        let path = entry.map_err(io("cannot read", dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_if_present(&path)?;
        }
    }
    sync_dir(dir)
}

/// fsyncs the file or directory at `path`; one gone meanwhile needs
/// nothing (sled removes blob files it no longer needs as it runs).
pub(super) fn sync_if_present(path: &Path) -> Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_all().map_err(io("cannot sync", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot sync", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io("cannot sync", dir))
}

/// Bytes of the files under `dir`.
pub fn files_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => files_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;
    use crate::store::{
        T,
        kv::{Kv, Op, Sled},
    };

    #[test]
    fn compaction_keeps_every_record_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let key = |round: u32, i: u32| [round.to_be_bytes(), i.to_be_bytes()].concat();
        {
            let kv = Sled::open(&db).unwrap();
            for round in 0..20u32 {
                let puts: Vec<Op> = (0..500).map(|i| (T::Logs, key(round, i), Some(vec![7; 1024]))).collect();
                kv.commit(&puts).unwrap();
                if round < 19 {
                    let deletes: Vec<Op> = (0..500).map(|i| (T::Logs, key(round, i), None)).collect();
                    kv.commit(&deletes).unwrap();
                }
            }
            kv.flush().unwrap();
        }
        // sled's I/O pool may hold the files (and their lock) a moment after
        // the last handle is gone; a stopped server's process is gone with
        // them, this one goes on: wait for the lock (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let c = loop {
            match compact(&db) {
                Err(e) if e.to_string().contains("is in use") && std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                }
                r => break r.unwrap(),
            }
        };
        assert!(c.after < c.before, "{c:?}");
        let kv = Sled::open(&db).unwrap();
        assert_eq!(kv.range(T::Logs, Bound::Unbounded, Bound::Unbounded).count(), 500, "every live record is there");
        assert_eq!(kv.get(T::Logs, &key(19, 3)).unwrap(), Some(vec![7; 1024]));
        assert!(!sibling(&db, ".compacting").exists() && !sibling(&db, ".before-compaction").exists());
        // An open database is not compacted under the server's feet.
        let e = compact(&db).unwrap_err();
        assert!(e.to_string().contains("stop the server first"), "{e}");
    }

    #[test]
    fn an_interrupted_swap_is_finished_or_undone() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let (copy, old) = (sibling(&db, ".compacting"), sibling(&db, ".before-compaction"));
        // Moved aside, copy incomplete: the original comes back.
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("original"), b"").unwrap();
        std::fs::create_dir_all(&copy).unwrap();
        recover(&db).unwrap();
        assert!(db.join("original").exists() && !copy.exists() && !old.exists());
        // Moved aside, copy complete: the copy goes in.
        std::fs::rename(&db, &old).unwrap();
        std::fs::create_dir_all(&copy).unwrap();
        std::fs::write(copy.join("compacted"), b"").unwrap();
        std::fs::write(copy.join(COMPLETE), b"").unwrap();
        recover(&db).unwrap();
        assert!(db.join("compacted").exists() && !db.join(COMPLETE).exists() && !old.exists());
        // Both there, `db` not the marked copy (say, an empty one an older
        // binary made): nothing is deleted, the operator is told.
        std::fs::create_dir_all(&old).unwrap();
        let e = recover(&db).unwrap_err();
        assert!(e.to_string().contains("both exist"), "{e}");
        assert!(old.exists() && db.join("compacted").exists());
    }
}
