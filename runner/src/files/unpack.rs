//! Unpacking a cache archive (a tar stream) into the workspace at disk speed.
//!
//! One thread reads the stream — decompressing and parsing as it goes —
//! and makes directories and links; regular files go to a few writer
//! threads, each file whole to one writer, so that the many small files
//! of a build tree are created in parallel while the stream is still
//! being read and downloaded. Creating files one after another is where
//! a plain `tar -x` spends its time.
//!
//! Every path is resolved beneath the workspace by the kernel, through
//! one directory handle (`cap-std`: `openat2` with `RESOLVE_BENEATH`, or
//! a checked walk where that is missing): an entry with `..` or an
//! absolute name is refused, and so is one whose parent is a link leading
//! out — even a link a job process swaps in while the restore runs (the
//! path is never checked first and opened later). Files are created
//! anew (`O_EXCL`), never written through a link at their own name; links
//! are made as links, whatever they point at, and are only ever followed
//! beneath the workspace. Modes keep the permission bits only (no
//! set-user-id); file and directory times are kept, directories' set last.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use std::os::unix::fs::OpenOptionsExt as _;

/// Writer threads: file creation is mostly kernel time, which overlaps
/// well with the reading thread's decompression even on two cores.
const WRITERS: usize = 4;
/// Bytes of a file handed to a writer at a time (a larger file is several).
const PIECE: usize = 1 << 20;
/// Pieces queued per writer: with [`PIECE`], at most 16 MiB per writer.
const QUEUE: usize = 16;
/// Permission bits restored (no set-user-id, set-group-id or sticky bit).
const MODE_BITS: u32 = 0o777;

/// What a writer is handed.
enum Work {
    /// A new file at `path` with its first bytes; `whole` when that is all.
    Open { path: PathBuf, mode: u32, mtime: SystemTime, data: Vec<u8>, whole: bool },
    /// More bytes of the file this writer opened last; `last` ends it.
    More { data: Vec<u8>, last: bool },
    /// Answered once everything handed before it is done.
    Flush(SyncSender<()>),
}

/// A file being written.
struct Open {
    file: std::fs::File,
    path: PathBuf,
    mode: u32,
    mtime: SystemTime,
}

/// Unpacks the tar stream `input` into `workspace`; returns the entries read.
pub fn unpack(workspace: &Path, input: impl Read) -> Result<u64, String> {
    // Not through a link: the job owns the directory holding its
    // workspace and could have put a link to `/` in its place.
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(workspace)
        .map(Dir::from_std_file)
        .map_err(|e| format!("cannot open the workspace {}: {e}", workspace.display()))?;
    let failed = OnceLock::new();
    let (entries, dirs) = std::thread::scope(|s| {
        let writers: Vec<SyncSender<Work>> = (0..WRITERS)
            .map(|_| {
                let (tx, rx) = sync_channel(QUEUE);
                let (root, failed) = (&root, &failed);
                s.spawn(move || write_files(root, rx, failed));
                tx
            })
            .collect();
        read_entries(&root, input, &writers, &failed)
    })?;
    if let Some(e) = failed.get() {
        return Err(e.clone());
    }
    // Deepest first, so that setting a directory's time is not undone by
    // touching one inside it.
    let mut dirs: Vec<_> = dirs.into_iter().collect();
    dirs.sort_by_key(|(path, _)| std::cmp::Reverse(path.components().count()));
    let mut options = OpenOptions::new();
    // Read-only, as a file (a handle `open_dir` gives cannot change modes);
    // never a link, nor a pipe or device a job process put there.
    options.read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK);
    for (path, (mode, mtime)) in dirs {
        let dir = root.open_with(&path, &options).map_err(|e| cannot("restore", &path, &e))?.into_std();
        dir.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| cannot("restore", &path, &e))?;
        dir.set_times(times(mtime)).map_err(|e| cannot("restore", &path, &e))?;
    }
    Ok(entries)
}

/// Directories to give their mode and time once their files are in (one
/// entry per directory, however often the archive names it).
type Unfinished = HashMap<PathBuf, (u32, SystemTime)>;

/// The reading thread: every entry in order; files go to `writers`.
/// Returns the entries read and the directories to finish, in order.
fn read_entries(
    root: &Dir,
    input: impl Read,
    writers: &[SyncSender<Work>],
    failed: &OnceLock<String>,
) -> Result<(u64, Unfinished), String> {
    let mut archive = tar::Archive::new(input);
    let mut made = HashSet::new();
    let mut dirs = HashMap::new();
    let mut n = 0;
    let mut next = 0;
    for entry in archive.entries().map_err(|e| format!("bad cache entry: {e}"))? {
        if let Some(e) = failed.get() {
            return Err(e.clone());
        }
        let mut entry = entry.map_err(|e| format!("bad cache entry: {e}"))?;
        let path = relative(&entry.path().map_err(|e| format!("bad cache entry: {e}"))?)?;
        n += 1;
        let Some(path) = path else { continue };
        let head = entry.header();
        let mode = head.mode().unwrap_or(0o644) & MODE_BITS;
        let mtime = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(head.mtime().unwrap_or(0)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let kind = head.entry_type();
        if kind.is_dir() {
            make_dir(root, &path, &mut made)?;
            dirs.insert(path, (mode, mtime));
            continue;
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            make_dir(root, parent, &mut made)?;
        }
        if kind.is_symlink() {
            let target = entry.link_name().map_err(|e| format!("bad cache entry: {e}"))?.unwrap_or_default();
            symlink(root, &target, &path).map_err(|e| cannot("restore", &path, &e))?;
        } else if kind.is_hard_link() {
            let target = entry.link_name().map_err(|e| format!("bad cache entry: {e}"))?.unwrap_or_default();
            let target =
                relative(&target)?.ok_or_else(|| format!("bad cache entry: {} links to nothing", path.display()))?;
            // The file it names may still be with a writer.
            barrier(writers)?;
            replacing(root, &path, || root.hard_link(&target, root, &path))
                .map_err(|e| cannot("restore", &path, &e))?;
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            // (A sparse file reads with its holes filled in.)
            let size = entry.size();
            let first = read_piece(&mut entry, size, &path)?;
            let whole = first.len() as u64 == size;
            let work = Work::Open { path: path.clone(), mode, mtime, data: first, whole };
            let writer = hand(writers, next, work)?;
            next = writer + 1;
            let mut left = size - if whole { size } else { PIECE as u64 };
            while left > 0 {
                if let Some(e) = failed.get() {
                    return Err(e.clone());
                }
                let data = read_piece(&mut entry, left, &path)?;
                left -= data.len() as u64;
                send(&writers[writer], Work::More { data, last: left == 0 })?;
            }
        }
        // Devices and pipes are not restored (nothing a build caches).
    }
    Ok((n, dirs))
}

/// `path` from an archive as a plain relative path; `None` for the root
/// itself; an error for `..`, an absolute name or a prefix.
fn relative(path: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(format!("bad cache entry: {} would land outside the workspace", path.display())),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Makes the directory `path` and its parents (known ones are skipped).
fn make_dir(root: &Dir, path: &Path, made: &mut HashSet<PathBuf>) -> Result<(), String> {
    if made.contains(path) {
        return Ok(());
    }
    root.create_dir_all(path).map_err(|e| cannot("restore", path, &e))?;
    let mut at = Some(path);
    while let Some(p) = at.filter(|p| !p.as_os_str().is_empty()) {
        if !made.insert(p.to_path_buf()) {
            break;
        }
        at = p.parent();
    }
    Ok(())
}

/// Up to [`PIECE`] bytes of the entry's `left` bytes.
fn read_piece(entry: &mut impl Read, left: u64, path: &Path) -> Result<Vec<u8>, String> {
    let len = left.min(PIECE as u64) as usize;
    let mut data = vec![0; len];
    entry.read_exact(&mut data).map_err(|e| format!("bad cache entry: {} is cut short: {e}", path.display()))?;
    Ok(data)
}

/// Hands a new file to the first writer with room, from `from` on (so
/// files spread over writers); waits on that one when all are busy.
fn hand(writers: &[SyncSender<Work>], from: usize, work: Work) -> Result<usize, String> {
    let mut work = work;
    for i in 0..writers.len() {
        let at = (from + i) % writers.len();
        match writers[at].try_send(work) {
            Ok(()) => return Ok(at),
            Err(TrySendError::Full(w)) => work = w,
            Err(TrySendError::Disconnected(_)) => return Err(stopped()),
        }
    }
    let at = from % writers.len();
    send(&writers[at], work)?;
    Ok(at)
}

fn send(writer: &SyncSender<Work>, work: Work) -> Result<(), String> {
    writer.send(work).map_err(|_| stopped())
}

fn stopped() -> String {
    "a writer stopped".to_string()
}

/// Waits until every writer has finished what it was handed.
fn barrier(writers: &[SyncSender<Work>]) -> Result<(), String> {
    let (tx, rx) = sync_channel(writers.len());
    for w in writers {
        send(w, Work::Flush(tx.clone()))?;
    }
    for _ in writers {
        rx.recv().map_err(|_| stopped())?;
    }
    Ok(())
}

/// A writer thread: creates and fills the files it is handed, in order;
/// the first failure (of any writer) is kept in `failed` and the rest of
/// the work is skipped.
fn write_files(root: &Dir, rx: Receiver<Work>, failed: &OnceLock<String>) {
    let mut open: Option<Open> = None;
    for work in rx {
        let done = match work {
            Work::Flush(done) => {
                done.send(()).ok();
                continue;
            }
            _ if failed.get().is_some() => continue,
            Work::Open { path, mode, mtime, data, whole } => {
                let o = create(root, &path).and_then(|mut file| {
                    file.write_all(&data)?;
                    Ok(Open { file, path: path.clone(), mode, mtime })
                });
                match o {
                    Ok(o) if whole => finish(&o).map_err(|e| (o.path, e)),
                    Ok(o) => {
                        open = Some(o);
                        Ok(())
                    }
                    Err(e) => Err((path, e)),
                }
            }
            Work::More { data, last } => match open.take() {
                Some(mut o) => match o.file.write_all(&data).and_then(|()| if last { finish(&o) } else { Ok(()) }) {
                    Ok(()) => {
                        if !last {
                            open = Some(o);
                        }
                        Ok(())
                    }
                    Err(e) => Err((o.path, e)),
                },
                None => Ok(()),
            },
        };
        if let Err((path, e)) = done {
            failed.set(cannot("restore", &path, &e)).ok();
        }
    }
}

/// Creates `path` anew beneath `root`, removing a file (or link) in its way.
fn create(root: &Dir, path: &Path) -> io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    replacing(root, path, || root.open_with(path, &options)).map(|f| f.into_std())
}

/// Runs `make`; when something is already at `path`, removes it (a
/// directory in the way is an error) and runs `make` again.
fn replacing<T>(root: &Dir, path: &Path, mut make: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    match make() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            root.remove_file(path)?;
            make()
        }
        other => other,
    }
}

/// Makes the link `path` → `target` (any target: links are followed only
/// beneath the workspace), in `path`'s parent opened beneath `root`.
fn symlink(root: &Dir, target: &Path, path: &Path) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::other("no name"))?;
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => root.open_dir(p)?,
        None => root.try_clone()?,
    };
    replacing(&parent, Path::new(name), || {
        nix::unistd::symlinkat(target, &parent, Path::new(name)).map_err(io::Error::from)
    })
}

/// Sets mode and times of a fully written file.
fn finish(o: &Open) -> io::Result<()> {
    o.file.set_permissions(std::fs::Permissions::from_mode(o.mode))?;
    o.file.set_times(times(o.mtime))
}

fn times(mtime: SystemTime) -> std::fs::FileTimes {
    std::fs::FileTimes::new().set_modified(mtime).set_accessed(mtime)
}

fn cannot(what: &str, path: &Path, e: &io::Error) -> String {
    format!("cannot {what} {}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry whose name is written raw (so `..` and `/` get in).
    fn entry(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    /// Kind, name, link target and data of an entry.
    type Raw<'a> = (tar::EntryType, &'a str, &'a str, &'a [u8]);

    fn archive(entries: &[Raw]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (kind, name, link, data) in entries {
            entry(&mut b, *kind, name, link, data);
        }
        b.into_inner().unwrap()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn files_of_every_size_links_and_times_land_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..PIECE * 2 + 17).map(|i| (i % 251) as u8).collect();
        let small: Vec<Vec<u8>> = (0..200).map(|i| format!("file {i}").into_bytes()).collect();
        let mut list: Vec<(tar::EntryType, String, &str, &[u8])> =
            vec![(D, "t/".into(), "", b""), (F, "t/big".into(), "", &big), (F, "t/empty".into(), "", b"")];
        for (i, s) in small.iter().enumerate() {
            list.push((F, format!("t/d{}/f{i}", i % 7), "", s));
        }
        list.push((L, "t/link".into(), "big", b""));
        list.push((L, "t/abs".into(), "/etc", b""));
        list.push((H, "t/hard".into(), "t/d0/f0", b""));
        let refs: Vec<_> = list.iter().map(|(k, n, l, d)| (*k, n.as_str(), *l, *d)).collect();
        let n = unpack(dir.path(), archive(&refs).as_slice()).unwrap();
        assert_eq!(n, 206);
        let t = dir.path().join("t");
        assert_eq!(std::fs::read(t.join("big")).unwrap(), big);
        assert_eq!(std::fs::read(t.join("empty")).unwrap(), b"");
        assert_eq!(std::fs::read(t.join("d3/f199")).unwrap(), b"file 199");
        assert_eq!(std::fs::read_link(t.join("link")).unwrap(), Path::new("big"));
        assert_eq!(std::fs::read_link(t.join("abs")).unwrap(), Path::new("/etc"));
        assert_eq!(std::fs::read(t.join("hard")).unwrap(), b"file 0");
        let meta = std::fs::metadata(t.join("big")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        let secs = |p: &Path| {
            std::fs::symlink_metadata(p)
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(secs(&t.join("big")), 1_000_000);
        assert_eq!(secs(&t), 1_000_000, "a directory's time is set after its files");
    }

    #[test]
    fn existing_files_and_links_are_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::fs::write(ws.join("old"), b"old").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("trap")).unwrap();
        unpack(&ws, archive(&[(F, "old", "", b"new"), (F, "trap", "", b"mine")]).as_slice()).unwrap();
        assert_eq!(std::fs::read(ws.join("old")).unwrap(), b"new");
        assert_eq!(std::fs::read(ws.join("trap")).unwrap(), b"mine");
        assert!(!std::fs::symlink_metadata(ws.join("trap")).unwrap().is_symlink());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn a_workspace_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("ws")).unwrap();
        let err = unpack(&dir.path().join("ws"), archive(&[(F, "f", "", b"x")]).as_slice()).unwrap_err();
        assert!(err.contains("cannot open the workspace"), "{err}");
        assert!(!dir.path().join("elsewhere/f").exists());
    }

    #[test]
    fn a_directory_named_again_and_again_is_finished_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut entries: Vec<Raw> = vec![(D, "d/", "", b""); 1000];
        entries.push((F, "d/f", "", b"x"));
        assert_eq!(unpack(dir.path(), archive(&entries).as_slice()).unwrap(), 1001);
        assert_eq!(std::fs::read(dir.path().join("d/f")).unwrap(), b"x");
    }

    #[test]
    fn nothing_lands_outside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let out = dir.path().display().to_string();
        // A link already in the workspace (a hostile checkout) and one the
        // archive brings, absolute or relative, followed by a file through it.
        std::os::unix::fs::symlink(dir.path(), ws.join("up")).unwrap();
        let cases: Vec<Vec<Raw>> = vec![
            vec![(F, "../escaped", "", b"x")],
            vec![(F, "/escaped", "", b"x")],
            vec![(F, "up/escaped", "", b"x")],
            vec![(L, "abs", &out, b""), (F, "abs/escaped", "", b"x")],
            vec![(L, "rel", "..", b""), (F, "rel/escaped", "", b"x")],
            vec![(L, "rel2", "..", b""), (D, "rel2/sub/", "", b""), (F, "rel2/sub/escaped", "", b"x")],
            vec![(H, "hard", "../outside", b"")],
        ];
        for case in cases {
            let err = unpack(&ws, archive(&case).as_slice()).expect_err(&format!("{case:?}"));
            assert!(!err.is_empty());
            assert!(!dir.path().join("escaped").exists(), "{case:?} wrote outside");
            assert!(!dir.path().join("sub").exists(), "{case:?} made a directory outside");
        }
    }
}
