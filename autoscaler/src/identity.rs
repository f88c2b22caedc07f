//! The autoscaler's identity: an id made once and kept in its state
//! directory (`STATE_DIR/id`, 0600, 16 hex digits), so that an autoscaler
//! restarted on the same directory is the same one and finds what it
//! started before ([`crate::provision::Provisioner::leftovers`]); every
//! container, Kubernetes Job and Secret it starts carries it
//! ([`crate::provision::OWNER_LABEL`]).
//!
//! The directory is locked for as long as the process lives
//! (`STATE_DIR/lock`, released by the kernel however it ends): two live
//! autoscalers of one identity would each take the other's instances for
//! leftovers of their own.

use std::{
    fs::File,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// The file holding the id.
pub const ID_FILE: &str = "id";
/// The file locked while an autoscaler uses the directory.
pub const LOCK_FILE: &str = "lock";

/// An autoscaler's identity, and its hold on its state directory.
#[derive(Debug)]
pub struct Identity {
    id: String,
    dir: PathBuf,
    /// Locked until dropped (or the process ends).
    _lock: File,
}

impl Identity {
    /// Locks `state_dir` (made if missing) and reads its id, or makes one
    /// when it has none. Fails when another process holds the directory.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let at = |what: &str, path: &Path, e: std::io::Error| anyhow::anyhow!("cannot {what} {}: {e}", path.display());
        std::fs::create_dir_all(state_dir).map_err(|e| at("create", state_dir, e))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| at("open", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is in use by another autoscaler (it holds {}): give each its own --state-dir",
                state_dir.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => return Err(at("lock", &lock_path, e)),
        }
        let path = state_dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim();
                anyhow::ensure!(
                    valid(id),
                    "{} does not hold an autoscaler id (1 to 63 of a-z, 0-9 and `-`): remove it to make a new one \
                     (what the old one started is then not cleaned up by this autoscaler)",
                    path.display()
                );
                id.to_string()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let id = hex::encode(bytes);
                // Whole or absent: written aside, synced, then renamed.
                let tmp = state_dir.join(format!(".{ID_FILE}.tmp"));
                let write = || -> std::io::Result<()> {
                    let mut f =
                        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                    f.write_all(format!("{id}\n").as_bytes())?;
                    f.sync_all()?;
                    std::fs::rename(&tmp, &path)?;
                    File::open(state_dir)?.sync_all()
                };
                write().map_err(|e| at("write", &path, e))?;
                id
            }
            Err(e) => return Err(at("read", &path, e)),
        };
        Ok(Self { id, dir: state_dir.to_path_buf(), _lock: lock })
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The state directory it holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether `id` can be an id: a label value of lower-case letters, digits
/// and `-` (neither first nor last).
fn valid(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Opens `dir` once the lock just dropped is free. Another test in
    /// this process may be spawning a child right then: between its fork
    /// and its exec the child shares every open file, the lock's too, so
    /// the lock outlives our `drop` by that moment (bounded: 10 s).
    fn reopen(dir: &Path) -> Identity {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Identity::open(dir) {
                Err(e) if e.to_string().contains("in use") && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                held => return held.unwrap(),
            }
        }
    }

    #[test]
    fn the_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = Identity::open(&state).unwrap();
        let id = first.id().to_string();
        assert_eq!(id.len(), 16, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
        let mode = std::fs::metadata(state.join(ID_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(first.dir(), state);
        drop(first);
        assert_eq!(reopen(&state).id(), id, "restarted: the same autoscaler");
        let other = dir.path().join("other");
        assert_ne!(Identity::open(&other).unwrap().id(), id, "another state dir, another autoscaler");
    }

    #[test]
    fn a_state_dir_is_held_by_one_autoscaler_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::open(dir.path()).unwrap();
        let e = Identity::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another autoscaler"), "{e}");
        drop(first);
        reopen(dir.path());
    }

    #[test]
    fn an_id_file_that_holds_no_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ID_FILE), "owner=x\n").unwrap();
        let e = Identity::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("does not hold an autoscaler id"), "{e}");
        std::fs::write(dir.path().join(ID_FILE), "site-a-1\n").unwrap();
        assert_eq!(Identity::open(dir.path()).unwrap().id(), "site-a-1", "one set by hand");
        assert!(!valid("") && !valid("-a") && !valid("a-") && !valid("A") && !valid(&"a".repeat(64)));
    }
}
