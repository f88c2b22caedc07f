//! Workspace-relative paths from pipelines and plugins, resolved without
//! leaving the workspace.
//!
//! A path is checked twice: lexically (relative, no `..`) and on disk (its
//! canonical form, or that of its nearest existing ancestor, is inside the
//! canonical workspace), so a symbolic link in the workspace cannot lead a
//! path outside it.

use std::path::{Component, Path, PathBuf};

/// Resolves `rel` against `workspace`. Errors say why the path is refused.
pub fn resolve(workspace: &Path, rel: &str) -> Result<PathBuf, String> {
    let trimmed = rel.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Ok(workspace.to_path_buf());
    }
    let path = Path::new(trimmed);
    let mut out = workspace.to_path_buf();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("`{rel}`: `..` is not allowed in workspace paths")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("`{rel}`: paths must be relative to the workspace"));
            }
        }
    }
    check_inside(workspace, &out).map_err(|e| format!("`{rel}`: {e}"))?;
    Ok(out)
}

/// Checks that `path` (or its nearest existing ancestor), with links
/// followed, is inside `workspace`.
pub fn check_inside(workspace: &Path, path: &Path) -> Result<(), String> {
    let root = workspace.canonicalize().map_err(|e| format!("the workspace is not readable: {e}"))?;
    let mut probe = path;
    loop {
        match probe.canonicalize() {
            Ok(real) if real.starts_with(&root) => return Ok(()),
            Ok(real) => return Err(format!("it leads out of the workspace (to {})", real.display())),
            Err(_) => match probe.parent() {
                Some(parent) => probe = parent,
                None => return Err("it is not inside the workspace".into()),
            },
        }
    }
}

/// `path` relative to `workspace`, with `/` separators (for names).
pub fn relative(workspace: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(workspace).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("etc")).unwrap();
        std::os::unix::fs::symlink("a", ws.join("inner")).unwrap();
        assert_eq!(resolve(&ws, "a/b.txt").unwrap(), ws.join("a/b.txt"));
        assert_eq!(resolve(&ws, "./a/").unwrap(), ws.join("a"));
        assert_eq!(resolve(&ws, "inner/x").unwrap(), ws.join("inner/x"));
        assert!(resolve(&ws, "../x").unwrap_err().contains("`..`"));
        assert!(resolve(&ws, "/etc/passwd").unwrap_err().contains("relative"));
        assert!(resolve(&ws, "etc/passwd").unwrap_err().contains("out of the workspace"));
        assert!(resolve(&ws, "etc/nonexistent/deeper").unwrap_err().contains("out of the workspace"));
        assert_eq!(relative(&ws, &ws.join("a/b.txt")).unwrap(), "a/b.txt");
    }
}
