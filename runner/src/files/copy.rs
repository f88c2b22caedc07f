//! Copying a file or tree between directories a plugin may use (the
//! `files.copy` import), keeping what WASI cannot: permission bits,
//! modification times and symbolic links.
//!
//! The copy is built under a temporary name beside `dest` and renamed into
//! place at the end, so `dest` appears whole or not at all. A link whose
//! target leads outside the copied tree is refused (it would point
//! somewhere else once copied).

use std::path::{Component, Path, PathBuf};

/// What a copy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Regular files.
    pub files: u64,
    /// Symbolic links.
    pub links: u64,
    /// Bytes of the files.
    pub bytes: u64,
}

/// Whether `target`, a link found in directory `dir_in_tree` (relative to
/// the tree's root), stays inside the tree.
fn stays_inside(dir_in_tree: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = dir_in_tree.components().count() as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

fn copy_file(from: &Path, to: &Path) -> Result<u64, String> {
    let n = std::fs::copy(from, to).map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    if let Ok(mtime) = std::fs::metadata(from).and_then(|m| m.modified()) {
        let _ = std::fs::File::options().write(true).open(to).and_then(|f| f.set_modified(mtime));
    }
    Ok(n)
}

fn copy_into(source: &Path, tmp: &Path) -> Result<Copied, String> {
    let mut copied = Copied::default();
    let meta = std::fs::metadata(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    if meta.is_file() {
        copied.bytes = copy_file(source, tmp)?;
        copied.files = 1;
        return Ok(copied);
    }
    if !meta.is_dir() {
        return Err(format!("{} is neither a file nor a directory", source.display()));
    }
    std::fs::create_dir(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let mut dirs = vec![(source.to_path_buf(), tmp.to_path_buf())];
    for entry in walkdir::WalkDir::new(source).min_depth(1).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", source.display()))?;
        let rel = entry.path().strip_prefix(source).map_err(|e| e.to_string())?;
        let to = tmp.join(rel);
        let ft = entry.file_type();
        if ft.is_symlink() {
            let target =
                std::fs::read_link(entry.path()).map_err(|e| format!("cannot read link {}: {e}", rel.display()))?;
            if !stays_inside(rel.parent().unwrap_or(Path::new("")), &target) {
                return Err(format!(
                    "{} is a link to {}, outside the copied tree: copy what it points to instead",
                    rel.display(),
                    target.display()
                ));
            }
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| format!("cannot create link {}: {e}", rel.display()))?;
            copied.links += 1;
        } else if ft.is_dir() {
            std::fs::create_dir(&to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
            dirs.push((entry.path().to_path_buf(), to));
        } else if ft.is_file() {
            copied.bytes += copy_file(entry.path(), &to)?;
            copied.files += 1;
        }
    }
    // Directory modes last: a read-only directory is filled first.
    for (from, to) in dirs.iter().rev() {
        if let Ok(m) = std::fs::metadata(from) {
            let _ = std::fs::set_permissions(to, m.permissions());
        }
    }
    Ok(copied)
}

/// Copies `source` (a file or a directory) to `dest`, which must not exist
/// and whose parent must.
pub fn copy(source: &Path, dest: &Path) -> Result<Copied, String> {
    if dest.symlink_metadata().is_ok() {
        return Err(format!("{} already exists", dest.display()));
    }
    let parent = dest
        .parent()
        .filter(|p| p.is_dir())
        .ok_or_else(|| format!("the parent of {} does not exist", dest.display()))?;
    let name = dest.file_name().ok_or_else(|| format!("{} has no file name", dest.display()))?;
    let tmp: PathBuf = parent.join(format!(".{}.viaduct-copy-{}", name.to_string_lossy(), std::process::id()));
    let result = copy_into(source, &tmp).and_then(|c| {
        std::fs::rename(&tmp, dest).map_err(|e| format!("cannot move the copy into {}: {e}", dest.display()))?;
        Ok(c)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp).or_else(|_| std::fs::remove_file(&tmp));
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn keeps_modes_times_and_inner_links_and_refuses_outer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(src.join("bin/app"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("bin/app", src.join("app")).unwrap();
        let c = copy(&src, &dir.path().join("dest")).unwrap();
        assert_eq!(c, Copied { files: 1, links: 1, bytes: 18 });
        let mode = std::fs::metadata(dir.path().join("dest/bin/app")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(std::fs::read_link(dir.path().join("dest/app")).unwrap(), Path::new("bin/app"));
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(mtime(&src.join("bin/app")), mtime(&dir.path().join("dest/bin/app")));
        assert!(copy(&src, &dir.path().join("dest")).unwrap_err().contains("already exists"));

        std::os::unix::fs::symlink("../../etc/passwd", src.join("bin/passwd")).unwrap();
        let err = copy(&src, &dir.path().join("dest2")).unwrap_err();
        assert!(err.contains("outside the copied tree"), "{err}");
        assert!(!dir.path().join("dest2").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary copy left");
    }
}
