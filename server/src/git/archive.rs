//! The source tree of a commit as a zstd-compressed tar: what runners get
//! instead of credentials to the forge.
//!
//! Archives are cached by commit under `DATA_DIR/sources/<repo>/<commit>.tar.zst`
//! and written atomically (temporary file, then rename), so a reader never
//! sees half an archive and a crash leaves nothing to clean but a `.tmp`.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use crate::error::{Error, Result};

/// zstd level: fast to make, still several times smaller than the tree.
const LEVEL: i32 = 3;

/// The cached archive of `sha` for the repository at `repo_path`, built if
/// missing. Returns its path.
pub fn cached(repo_path: &Path, cache_dir: &Path, sha: &str) -> Result<PathBuf> {
    let file = cache_dir.join(format!("{sha}.tar.zst"));
    if file.exists() {
        return Ok(file);
    }
    std::fs::create_dir_all(cache_dir).map_err(io)?;
    // Unique per build: two jobs of one commit may ask at once, and each
    // must write its own file (the second rename just replaces the first
    // archive with an identical one).
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache_dir.join(format!("{sha}.{}-{n}.tmp", std::process::id()));
    let out = std::fs::File::create(&tmp).map_err(io)?;
    let result = write(repo_path, sha, out);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &file).map_err(io)?;
    Ok(file)
}

fn io(e: std::io::Error) -> Error {
    Error::Internal(format!("source archive: {e}"))
}

/// Writes the tree of commit `sha` as tar.zst to `out`.
fn write(repo_path: &Path, sha: &str, out: impl Write) -> Result<()> {
    let repo = Repository::open_bare(repo_path)?;
    let commit =
        repo.find_commit(Oid::from_str(sha).map_err(|_| Error::invalid(format!("`{sha}` is not a commit id")))?)?;
    let mtime = u64::try_from(commit.time().seconds()).unwrap_or(0);
    let tree = commit.tree()?;
    let encoder = zstd::Encoder::new(out, LEVEL).map_err(io)?;
    let mut tar = tar::Builder::new(encoder);
    let mut failure: Option<Error> = None;
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() != Some(ObjectType::Blob) {
            // Directories are implied by their files; submodules are not
            // part of this commit's content.
            return TreeWalkResult::Ok;
        }
        let Ok(name) = entry.name() else { return TreeWalkResult::Skip };
        let path = format!("{dir}{name}");
        let added = repo.find_blob(entry.id()).map_err(Error::from).and_then(|blob| {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            if entry.filemode() == 0o120_000 {
                let target = String::from_utf8_lossy(blob.content()).into_owned();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                tar.append_link(&mut h, &path, &target).map_err(io)
            } else {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(blob.content().len() as u64);
                h.set_mode(if entry.filemode() == 0o100_755 { 0o755 } else { 0o644 });
                tar.append_data(&mut h, &path, blob.content()).map_err(io)
            }
        });
        match added {
            Ok(()) => TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                TreeWalkResult::Abort
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let encoder = tar.into_inner().map_err(io)?;
    encoder.finish().map_err(io)?.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two jobs of one commit asking for its archive at once both get a
    /// whole archive (each build writes its own temporary file).
    #[test]
    fn concurrent_builds_of_one_archive_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let blob = repo.blob(&vec![b'x'; 1 << 20]).unwrap();
        let mut tb = repo.treebuilder(None).unwrap();
        tb.insert("big.txt", blob, 0o100_644).unwrap();
        let tree = repo.find_tree(tb.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@t").unwrap();
        let sha = repo.commit(None, &sig, &sig, "m", &tree, &[]).unwrap().to_string();
        let cache = dir.path().join("cache");
        let built: Vec<Result<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| cached(&dir.path().join("r.git"), &cache, &sha))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for b in built {
            let path = b.expect("every build succeeds");
            let mut tar = tar::Archive::new(zstd::Decoder::new(std::fs::File::open(path).unwrap()).unwrap());
            assert_eq!(tar.entries().unwrap().count(), 1);
        }
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "no temporary file is left");
    }
}
