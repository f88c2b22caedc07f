//! File operations WASI cannot express — permission bits, modification
//! times, links — done by the host.
//!
//! `std::fs` in the sandbox can read and write files but cannot set their
//! mode (WASI has no `chmod`), so a copy made with it loses the execute bit
//! of every program. [`copy`] asks the host to do the copy instead.
//!
//! ```no_run
//! use viaduct_plugin_sdk::{Result, files};
//! # fn demo() -> Result<()> {
//! // `bin/` keeps its executables executable.
//! let copied = files::copy("dist", "/deploy/app/releases/42")?;
//! println!("{} files, {} bytes", copied.files, copied.bytes);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use crate::{Error, Result, host};

/// What [`copy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Copied {
    /// Regular files copied.
    pub files: u64,
    /// Symbolic links recreated.
    pub links: u64,
    /// Bytes copied.
    pub bytes: u64,
}

/// Copies the file or directory tree `source` to `dest`, keeping permission
/// bits, modification times and symbolic links. The host does the copy,
/// so it is also faster than one through WASI.
///
/// Both are paths as the plugin sees them: `/workspace/…`, `/<mount>/…`, or
/// relative to the current directory (the workspace), which the SDK makes
/// absolute before asking the host. The host refuses:
///
/// - a `dest` that exists, or whose parent does not;
/// - a symbolic link inside `source` that leads outside `source`;
/// - any path outside the plugin's preopened directories.
///
/// On error nothing of `dest` is left behind. Compiled natively (unit
/// tests), it fails like the other host imports.
pub fn copy(source: impl AsRef<Path>, dest: impl AsRef<Path>) -> Result<Copied> {
    let (source, dest) = (source.as_ref(), dest.as_ref());
    let fail = |e: &dyn std::fmt::Display| {
        Error::msg(format!("cannot copy `{}` to `{}`: {e}", source.display(), dest.display()))
    };
    let (from, to) = (absolute(source).map_err(|e| fail(&e))?, absolute(dest).map_err(|e| fail(&e))?);
    let copied = host::files_copy(&from, &to).map_err(|e| fail(&e))?;
    Ok(Copied { files: copied.files, links: copied.links, bytes: copied.bytes })
}

/// `path` as a UTF-8 absolute path: relative paths are joined to the
/// current directory (lexically; `..` is left for the host to refuse).
fn absolute(path: &Path) -> Result<String, String> {
    if path.as_os_str().is_empty() {
        return Err("empty path".to_owned());
    }
    let path: PathBuf = if path.has_root() {
        path.to_path_buf()
    } else {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from(crate::WORKSPACE));
        cwd.join(path)
    };
    path.into_os_string().into_string().map_err(|p| format!("`{}` is not UTF-8", Path::new(&p).display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_absolute() {
        assert_eq!(absolute(Path::new("/deploy/x")).unwrap(), "/deploy/x");
        let rel = absolute(Path::new("dist/app")).unwrap();
        assert!(Path::new(&rel).is_absolute() && rel.ends_with("/dist/app"), "{rel}");
        assert!(absolute(Path::new("")).is_err());
    }

    #[test]
    fn natively_the_host_is_missing() {
        let e = copy("a", "/deploy/b").unwrap_err();
        assert!(e.message().starts_with("cannot copy `a` to `/deploy/b`: the host import `files.copy`"), "{e}");
    }
}
