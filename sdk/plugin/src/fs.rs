//! File-system helpers for the sandbox.
//!
//! `std::fs` works inside the sandbox on the preopened directories (the
//! workspace at `/workspace`, and `/<name>` for each manifest mount); this
//! module adds what std lacks on WASI and input validation. To copy files
//! or trees keeping their permission bits (WASI cannot set them), use
//! [`files::copy`](crate::files::copy).

use std::{
    io,
    path::{Component, Path},
};

use crate::{Error, Result};

/// Creates a symbolic link at `link` pointing to `target` (like
/// `std::os::unix::fs::symlink`, which WASI std only has as a nightly API).
///
/// Inside the sandbox the host refuses absolute targets and links that
/// would resolve outside the preopened directory; use relative targets.
pub fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
    imp::symlink(target.as_ref(), link.as_ref())
}

#[cfg(target_os = "wasi")]
mod imp {
    use std::{ffi::CString, io, path::Path};

    fn c_path(p: &Path) -> io::Result<CString> {
        let s = p.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?;
        CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
    }

    pub fn symlink(target: &Path, link: &Path) -> io::Result<()> {
        let (target, link) = (c_path(target)?, c_path(link)?);
        // SAFETY: both are valid NUL-terminated strings that outlive the call;
        // wasi-libc resolves `link` against its preopens and current directory.
        let rc = unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

#[cfg(unix)]
mod imp {
    use std::{io, path::Path};

    pub fn symlink(target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }
}

#[cfg(not(any(unix, target_os = "wasi")))]
mod imp {
    use std::{io, path::Path};

    pub fn symlink(_target: &Path, _link: &Path) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "symbolic links are not supported on this platform"))
    }
}

/// Validates a workspace-relative path given as input `input` and returns
/// it normalised (`./a//b/` → `a/b`; the workspace itself is `.`).
///
/// `/workspace/…` is accepted and made relative; other absolute paths and
/// paths with a `..` component are refused with an error naming the input.
///
/// ```
/// use viaduct_plugin_sdk::fs::workspace_path;
/// assert_eq!(workspace_path("source", "./dist/").unwrap(), "dist");
/// assert_eq!(workspace_path("source", "/workspace/dist").unwrap(), "dist");
/// assert!(workspace_path("source", "../etc").is_err());
/// ```
pub fn workspace_path(input: &str, path: &str) -> Result<String> {
    let trimmed = path.trim();
    if trimmed.is_empty() {
        return Err(Error::msg(format!("`{input}` must not be empty")));
    }
    let p = Path::new(trimmed);
    let rel = if p.is_absolute() {
        p.strip_prefix(crate::WORKSPACE)
            .map_err(|_| Error::msg(format!("`{input}` must be a path relative to the workspace, not `{trimmed}`")))?
    } else {
        p
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::msg(format!("`{input}` must stay inside the workspace (no `..`): `{trimmed}`")));
            }
        }
    }
    Ok(if parts.is_empty() { ".".to_owned() } else { parts.join("/") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths() {
        assert_eq!(workspace_path("p", "a/./b//c/").unwrap(), "a/b/c");
        assert_eq!(workspace_path("p", ".").unwrap(), ".");
        assert_eq!(workspace_path("p", "/workspace").unwrap(), ".");
        let e = workspace_path("p", "/etc/passwd").unwrap_err();
        assert_eq!(e.message(), "`p` must be a path relative to the workspace, not `/etc/passwd`");
        assert!(workspace_path("p", "a/../../b").is_err());
        assert!(workspace_path("p", "a/../b").is_err(), "`..` is refused even when it stays inside");
        assert!(workspace_path("p", "  ").is_err());
    }

    #[test]
    fn symlink_native() {
        let dir = std::env::temp_dir().join(format!("viaduct-sdk-symlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        symlink("target", &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("target"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
