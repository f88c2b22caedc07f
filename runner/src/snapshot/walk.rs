//! Walking a workspace without following links: every directory is opened
//! relative to its parent with `O_NOFOLLOW`, every entry looked at with
//! `fstatat(AT_SYMLINK_NOFOLLOW)`, so a link swapped in while the walk runs
//! leads nowhere outside. Parents come before children, names in byte order.

use std::ffi::{CStr, CString};
use std::os::fd::AsFd;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fstatat};

use super::{Refused, shown};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Link,
    /// A socket, fifo or device (not recorded).
    Special,
}

/// The kind of entry `stat` describes.
pub(super) fn kind(stat: &FileStat) -> Kind {
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Link,
        _ => Kind::Special,
    }
}

/// One entry the walk found.
pub(super) struct Found<'a> {
    /// The directory holding it.
    pub dir: &'a Dir,
    /// Its name there.
    pub name: &'a CStr,
    /// Its path relative to the workspace, `/`-separated.
    pub path: &'a [u8],
    /// Its own metadata (a link's, not its target's).
    pub stat: &'a FileStat,
}

/// Flags of a directory opened to walk it.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the workspace to walk it (not through a link at its own name).
pub(super) fn open_root(workspace: &Path) -> Result<Dir, String> {
    Dir::open(workspace, dir_flags(), Mode::empty())
        .map_err(|e| format!("cannot open the workspace {}: {e}", workspace.display()))
}

/// Calls `visit` for every entry beneath `root`, parents first; entries
/// that vanish while the walk runs are left out.
pub(super) fn walk(root: &mut Dir, visit: &mut dyn FnMut(Found<'_>) -> Result<(), Refused>) -> Result<(), Refused> {
    let mut path = Vec::new();
    walk_dir(root, &mut path, visit)
}

fn walk_dir(
    dir: &mut Dir,
    path: &mut Vec<u8>,
    visit: &mut dyn FnMut(Found<'_>) -> Result<(), Refused>,
) -> Result<(), Refused> {
    let names = names(dir, path)?;
    let dir = &*dir;
    for name in names {
        let len = path.len();
        if len > 0 {
            path.push(b'/');
        }
        path.extend_from_slice(name.to_bytes());
        let walked = entry(dir, &name, path, visit);
        path.truncate(len);
        walked?;
    }
    Ok(())
}

/// One entry, and what is beneath it.
fn entry(
    dir: &Dir,
    name: &CStr,
    path: &mut Vec<u8>,
    visit: &mut dyn FnMut(Found<'_>) -> Result<(), Refused>,
) -> Result<(), Refused> {
    let stat = match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(Refused::Error(format!("cannot stat {}: {e}", shown(path)))),
    };
    visit(Found { dir, name, path, stat: &stat })?;
    if kind(&stat) != Kind::Dir {
        return Ok(());
    }
    match Dir::openat(dir.as_fd(), name, dir_flags(), Mode::empty()) {
        Ok(mut sub) => walk_dir(&mut sub, path, visit),
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Refused::Error(format!("cannot open the directory {}: {e}", shown(path)))),
    }
}

/// The names in `dir`, in byte order (without `.` and `..`).
fn names(dir: &mut Dir, path: &[u8]) -> Result<Vec<CString>, Refused> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| Refused::Error(format!("cannot list {}: {e}", dir_shown(path))))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable_by(|a, b| a.to_bytes().cmp(b.to_bytes()));
    Ok(names)
}

/// A directory's path for messages (`.` for the workspace itself).
pub(super) fn dir_shown(path: &[u8]) -> String {
    if path.is_empty() { ".".to_string() } else { shown(path) }
}
