//! The source of a deploy, checked in the workspace before anything is
//! uploaded: `scp -r` follows symbolic links, so a link that leads out of
//! the source (to the workspace, to the key's directory, to `/etc`) would
//! upload what it points to, and a link to a directory may loop. Both are
//! refused; so are devices, sockets and pipes.

use std::path::{Component, Path, PathBuf};

use viaduct_plugin_sdk::{Error, Result, ResultExt};

use crate::{flow::Upload, keys};

/// What is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// What to upload.
    pub upload: Upload,
    /// Regular files (links to files count as files).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Scans `rel` (a normalised workspace-relative path) under `workspace`.
pub fn scan(workspace: &Path, rel: &str) -> Result<Scanned> {
    if rel.split('/').next().is_some_and(|first| first.starts_with(keys::PREFIX)) {
        return Err(Error::msg(format!("`source` cannot be `{rel}`: it is where the SSH key is kept")));
    }
    let root = workspace.join(rel);
    let meta = std::fs::symlink_metadata(&root)
        .map_err(|_| Error::msg(format!("`source` `{rel}` does not exist in the workspace")))?;
    if meta.file_type().is_symlink() {
        return Err(Error::msg(format!("`source` `{rel}` is a symbolic link: name what it points to")));
    }
    let mut scanned = Scanned { upload: Upload { path: rel.to_owned(), file: meta.is_file() }, files: 0, bytes: 0 };
    if meta.is_file() {
        scanned.files = 1;
        scanned.bytes = meta.len();
        return Ok(scanned);
    }
    if !meta.is_dir() {
        return Err(Error::msg(format!("`source` `{rel}` is neither a file nor a directory")));
    }
    walk(&root, &root, rel, &mut scanned)?;
    Ok(scanned)
}

fn walk(root: &Path, dir: &Path, rel: &str, scanned: &mut Scanned) -> Result<()> {
    let shown = |p: &Path| format!("{rel}/{}", p.strip_prefix(root).unwrap_or(p).display());
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list `{}`", shown(dir)))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list `{}`", shown(dir)))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("cannot read `{}`", shown(&path)))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            walk(root, &path, rel, scanned)?;
        } else if kind.is_file() {
            scanned.files += 1;
            scanned.bytes += meta.len();
        } else if kind.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("cannot read the link `{}`", shown(&path)))?;
            let inside = resolve(root, path.parent().unwrap_or(root), &target);
            let Some(resolved) = inside else {
                return Err(Error::msg(format!(
                    "`{}` links to `{}`, outside `{rel}`: scp would upload what it points to (copy it in instead)",
                    shown(&path),
                    target.display()
                )));
            };
            let to = std::fs::metadata(&resolved).map_err(|_| {
                Error::msg(format!("`{}` links to `{}`, which does not exist", shown(&path), target.display()))
            })?;
            if to.is_dir() {
                return Err(Error::msg(format!(
                    "`{}` links to the directory `{}`: scp would copy it as a second tree (or loop)",
                    shown(&path),
                    target.display()
                )));
            }
            scanned.files += 1;
            scanned.bytes += to.len();
        } else {
            return Err(Error::msg(format!("`{}` is not a file, directory or link", shown(&path))));
        }
    }
    Ok(())
}

/// `target` of a link in `dir`, lexically resolved, if it stays under
/// `root` (absolute targets never do: the host's root is not the
/// sandbox's).
fn resolve(root: &Path, dir: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<_> = dir.strip_prefix(root).ok()?.components().collect();
    for c in target.components() {
        match c {
            Component::Normal(_) => parts.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("viaduct-ssh-deploy-src-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn counts_files_and_refuses_escaping_links() {
        let ws = temp("scan");
        std::fs::create_dir_all(ws.join("dist/assets")).unwrap();
        std::fs::write(ws.join("dist/index.html"), "hello").unwrap();
        std::fs::write(ws.join("dist/assets/app.js"), "js").unwrap();
        symlink("../index.html", ws.join("dist/assets/index.html")).unwrap();
        let s = scan(&ws, "dist").unwrap();
        assert_eq!((s.files, s.bytes, s.upload.file), (3, 12, false));
        let f = scan(&ws, "dist/index.html").unwrap();
        assert_eq!((f.files, f.bytes, f.upload.file), (1, 5, true));

        for (name, target) in [
            ("ws", "../"),
            ("up", "../../.viaduct-scratch-ssh-ab/key"),
            ("abs", "/etc/passwd"),
            ("dotdot", "assets/../../x"),
        ] {
            let link = ws.join("dist").join(name);
            symlink(target, &link).unwrap();
            let e = scan(&ws, "dist").unwrap_err();
            assert!(e.message().contains("outside `dist`"), "{name}: {e}");
            std::fs::remove_file(&link).unwrap();
        }
        symlink("assets", ws.join("dist/loop")).unwrap();
        assert!(scan(&ws, "dist").unwrap_err().message().contains("links to the directory"));
        std::fs::remove_file(ws.join("dist/loop")).unwrap();
        symlink("gone", ws.join("dist/dangling")).unwrap();
        assert!(scan(&ws, "dist").unwrap_err().message().contains("does not exist"));
        std::fs::remove_file(ws.join("dist/dangling")).unwrap();

        symlink("dist", ws.join("link")).unwrap();
        assert!(scan(&ws, "link").unwrap_err().message().contains("is a symbolic link"));
        assert!(scan(&ws, "nope").unwrap_err().message().contains("does not exist"));
        assert!(scan(&ws, ".viaduct-scratch-ssh-ab/key").unwrap_err().message().contains("where the SSH key is kept"));
        std::fs::remove_dir_all(&ws).unwrap();
    }
}
